//! The branch barrier on MySQL: DTM's algorithm and table, so a participant can move between
//! DTM and Settle.
//!
//! A barrier row is keyed by `(gid, branch_id, op, barrier_id)` and written with
//! insert-or-ignore inside the participant's own database transaction, together with the
//! business SQL. That makes each Try, Confirm and Cancel run at most once, turns a Cancel that
//! arrives before its Try into an empty rollback (it writes the Try's row, which also blocks a
//! late Try), and refuses a Try that arrives after its Cancel.
//!
//! ```no_run
//! # async fn f(pool: sqlx::MySqlPool, params: settle_sdk::protocol::BranchParams) -> Result<(), Box<dyn std::error::Error>> {
//! use settle_sdk::{BarrierTable, BranchBarrier};
//! let barrier = BranchBarrier::new(params, BarrierTable::default())?;
//! let outcome = barrier
//!     .call(&pool, |tx| Box::pin(async move {
//!         sqlx::query("UPDATE account SET frozen = frozen + 30 WHERE id = 1").execute(&mut *tx).await?;
//!         Ok::<_, sqlx::Error>(())
//!     }))
//!     .await?;
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU32, Ordering};

use futures_util::future::BoxFuture;
use settle_protocol::{names, BranchParams};
use sqlx::{MySqlConnection, MySqlPool, Row};

/// The barrier table: DTM's schema, by default `dtm_barrier.barrier`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BarrierTable {
    name: String,
}

impl Default for BarrierTable {
    fn default() -> Self {
        Self {
            name: "dtm_barrier.barrier".to_owned(),
        }
    }
}

impl BarrierTable {
    /// A barrier table with another name (`table` or `schema.table`).
    ///
    /// # Errors
    /// [`BarrierError::Invalid`] unless the name is made of `[A-Za-z0-9_]` parts joined by
    /// at most one dot.
    pub fn named(name: &str) -> Result<Self, BarrierError<std::convert::Infallible>> {
        let parts: Vec<&str> = name.split('.').collect();
        let ok = parts.len() <= 2
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if !ok {
            return Err(BarrierError::Invalid(format!(
                "barrier table name '{name}' is not schema.table"
            )));
        }
        Ok(Self {
            name: name.to_owned(),
        })
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the table (and its schema, if the name has one) when missing, with DTM's
    /// columns and unique key, compared byte for byte (`utf8mb4_bin`): gids and branch ids
    /// are case-sensitive, so `Order-1` and `order-1` are two transactions. A table that
    /// exists already (DTM's own SQL creates it with the server's default collation, which
    /// ignores case) has its key columns converted to that collation; this only makes
    /// distinct what was wrongly one, so rows already there stay valid and DTM's clients
    /// keep working with it.
    ///
    /// # Errors
    /// A database error.
    pub async fn create(&self, pool: &MySqlPool) -> Result<(), sqlx::Error> {
        if let Some((schema, _)) = self.name.split_once('.') {
            sqlx::query(&format!("CREATE DATABASE IF NOT EXISTS {schema}"))
                .execute(pool)
                .await?;
        }
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {} (
               id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
               trans_type VARCHAR(45) DEFAULT '',
               gid VARCHAR(128) DEFAULT '',
               branch_id VARCHAR(128) DEFAULT '',
               op VARCHAR(45) DEFAULT '',
               barrier_id VARCHAR(45) DEFAULT '',
               reason VARCHAR(45) DEFAULT '' COMMENT 'the branch type who insert this record',
               create_time DATETIME DEFAULT NOW(),
               update_time DATETIME DEFAULT NOW(),
               KEY (create_time),
               KEY (update_time),
               UNIQUE KEY (gid, branch_id, op, barrier_id)
             ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin",
            self.name
        );
        sqlx::query(&ddl).execute(pool).await?;
        let columns = sqlx::query(&format!("SHOW FULL COLUMNS FROM {}", self.name))
            .fetch_all(pool)
            .await?;
        let mut folding = 0;
        for c in &columns {
            let field: String = c.try_get_unchecked("Field")?;
            let collation: Option<String> = c.try_get_unchecked("Collation")?;
            if matches!(field.as_str(), "gid" | "branch_id" | "op" | "barrier_id")
                && collation.as_deref() != Some("utf8mb4_bin")
            {
                folding += 1;
            }
        }
        if folding > 0 {
            let column = |name: &str, len: u32| {
                format!("MODIFY {name} VARCHAR({len}) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT ''")
            };
            let alter = format!(
                "ALTER TABLE {} {}, {}, {}, {}",
                self.name,
                column("gid", 128),
                column("branch_id", 128),
                column("op", 45),
                column("barrier_id", 45)
            );
            sqlx::query(&alter).execute(pool).await?;
        }
        Ok(())
    }
}

/// What a barrier call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BarrierOutcome<T> {
    /// The business code ran and committed, returning this.
    Done(T),
    /// This operation already ran: nothing was done again. Answer success.
    Duplicate,
    /// A Cancel (or compensation) arrived before its Try ever ran: nothing to undo. Answer
    /// success; the Try is now blocked.
    EmptyRollback,
    /// A Try arrived after its Cancel (or a saga's action after its compensation): refused,
    /// nothing was done. Answer failure.
    RejectedAfterCancel,
}

/// Rows an insert added: 0 when its key was there already.
fn inserted(r: Result<sqlx::mysql::MySqlQueryResult, sqlx::Error>) -> Result<u64, sqlx::Error> {
    match r {
        Ok(done) => Ok(done.rows_affected()),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(0),
        Err(e) => Err(e),
    }
}

/// Errors of a barrier call.
#[derive(Debug, thiserror::Error)]
pub enum BarrierError<E> {
    /// The branch parameters are incomplete.
    #[error("invalid branch barrier: {0}")]
    Invalid(String),
    /// The database failed; the transaction was rolled back.
    #[error("barrier database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The business code failed; the transaction (barrier rows included) was rolled back.
    #[error("business error: {0}")]
    Business(E),
}

/// The barrier of one branch operation, built from the query parameters of a branch call.
#[derive(Debug)]
pub struct BranchBarrier {
    params: BranchParams,
    table: BarrierTable,
    barrier_id: AtomicU32,
}

/// Async business code run inside the barrier's database transaction.
pub type BusinessFn<'c, T, E> = BoxFuture<'c, Result<T, E>>;

impl BranchBarrier {
    /// The barrier of the branch call described by `params`.
    ///
    /// # Errors
    /// [`BarrierError::Invalid`] if `gid`, `branch_id`, `op` or `trans_type` is empty, or
    /// longer than its column (128, 128, 45 and 45 characters): a value cut to fit would
    /// make two branches share one barrier row.
    pub fn new(
        params: BranchParams,
        table: BarrierTable,
    ) -> Result<Self, BarrierError<std::convert::Infallible>> {
        for (name, value, max) in [
            ("gid", &params.gid, 128),
            ("branch_id", &params.branch_id, 128),
            ("op", &params.op, 45),
            ("trans_type", &params.trans_type, 45),
        ] {
            if value.is_empty() {
                return Err(BarrierError::Invalid(format!(
                    "{name} is missing from the branch call"
                )));
            }
            if value.chars().count() > max {
                return Err(BarrierError::Invalid(format!(
                    "{name} is {} characters long; the barrier table holds at most {max}",
                    value.chars().count()
                )));
            }
        }
        Ok(Self {
            params,
            table,
            barrier_id: AtomicU32::new(0),
        })
    }

    /// The branch call's parameters.
    pub fn params(&self) -> &BranchParams {
        &self.params
    }

    async fn insert(
        &self,
        conn: &mut MySqlConnection,
        op: &str,
        barrier_id: &str,
        reason: &str,
    ) -> Result<u64, sqlx::Error> {
        if op.is_empty() {
            return Ok(0);
        }
        // A plain INSERT whose duplicate key counts as "already there": INSERT IGNORE would
        // also turn a value that does not fit into a warning and store it cut.
        let sql = format!(
            "INSERT INTO {} (trans_type, gid, branch_id, op, barrier_id, reason) VALUES (?, ?, ?, ?, ?, ?)",
            self.table.name
        );
        inserted(
            sqlx::query(&sql)
                .bind(&self.params.trans_type)
                .bind(&self.params.gid)
                .bind(&self.params.branch_id)
                .bind(op)
                .bind(barrier_id)
                .bind(reason)
                .execute(&mut *conn)
                .await,
        )
    }

    /// Runs `business` at most once for this branch operation, in one database transaction
    /// with the barrier rows. Each call on the same barrier uses the next barrier id (`01`,
    /// `02`, ...), as DTM does for several barrier calls in one handler.
    ///
    /// # Errors
    /// [`BarrierError::Database`] or [`BarrierError::Business`]; either way nothing was
    /// committed.
    pub async fn call<T, E, F>(
        &self,
        pool: &MySqlPool,
        business: F,
    ) -> Result<BarrierOutcome<T>, BarrierError<E>>
    where
        F: for<'c> FnOnce(&'c mut MySqlConnection) -> BusinessFn<'c, T, E>,
    {
        let bid = format!("{:02}", self.barrier_id.fetch_add(1, Ordering::Relaxed) + 1);
        let op = self.params.op.as_str();
        let origin = match op {
            names::OP_CANCEL => names::OP_TRY,
            names::OP_COMPENSATE => names::OP_ACTION,
            _ => "",
        };
        let mut tx = pool.begin().await?;
        let origin_affected = self.insert(&mut tx, origin, &bid, op).await?;
        let current_affected = self.insert(&mut tx, op, &bid, op).await?;
        if !origin.is_empty() && origin_affected > 0 {
            tx.commit().await?;
            return Ok(BarrierOutcome::EmptyRollback);
        }
        if current_affected == 0 {
            let undone_by = match op {
                names::OP_TRY => names::OP_CANCEL,
                names::OP_ACTION => names::OP_COMPENSATE,
                _ => "",
            };
            let outcome = if !undone_by.is_empty()
                && self.reason(&mut tx, op, &bid).await?.as_deref() == Some(undone_by)
            {
                BarrierOutcome::RejectedAfterCancel
            } else {
                BarrierOutcome::Duplicate
            };
            tx.commit().await?;
            return Ok(outcome);
        }
        match business(&mut tx).await {
            Ok(value) => {
                tx.commit().await?;
                Ok(BarrierOutcome::Done(value))
            }
            Err(e) => {
                tx.rollback().await?;
                Err(BarrierError::Business(e))
            }
        }
    }

    async fn reason(
        &self,
        conn: &mut MySqlConnection,
        op: &str,
        barrier_id: &str,
    ) -> Result<Option<String>, sqlx::Error> {
        let sql = format!(
            "SELECT reason FROM {} WHERE gid = ? AND branch_id = ? AND op = ? AND barrier_id = ?",
            self.table.name
        );
        let row = sqlx::query(&sql)
            .bind(&self.params.gid)
            .bind(&self.params.branch_id)
            .bind(op)
            .bind(barrier_id)
            .fetch_optional(&mut *conn)
            .await?;
        // Unchecked: MySQL reports binary-collated text as VARBINARY, which the checked
        // decode of `String` refuses.
        row.map(|r| r.try_get_unchecked::<String, _>(0)).transpose()
    }

    /// Answers a transactional message's check-back from the barrier table: `true` if the
    /// local transaction committed. If it never did, this writes the row that makes a late
    /// commit fail, so the answer stays true forever.
    ///
    /// # Errors
    /// A database error.
    pub async fn query_prepared(&self, pool: &MySqlPool) -> Result<bool, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        let sql = format!(
            "INSERT INTO {} (trans_type, gid, branch_id, op, barrier_id, reason) VALUES (?, ?, '00', 'msg', '01', 'rollback')",
            self.table.name
        );
        inserted(
            sqlx::query(&sql)
                .bind(&self.params.trans_type)
                .bind(&self.params.gid)
                .execute(&mut *conn)
                .await,
        )?;
        let select = format!(
            "SELECT reason FROM {} WHERE gid = ? AND branch_id = '00' AND op = 'msg' AND barrier_id = '01'",
            self.table.name
        );
        let reason: Option<String> = sqlx::query(&select)
            .bind(&self.params.gid)
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| r.try_get_unchecked(0))
            .transpose()?;
        Ok(reason.as_deref() != Some("rollback"))
    }
}
