//! The store: durable state of global transactions and branch operations.
//!
//! One type, two databases through sqlx: MySQL (production; MariaDB works) and SQLite (the
//! embedded default). Each operation is written once and runs on either pool (the
//! [`on_pool!`] macro expands it for both); the few places where the SQL dialects differ go
//! through [`Dialect`]. Migrations ship inside the binary and run on [`Store::connect`].
//!
//! Every status change is one database transaction, conditioned on the status it was decided
//! from and, while a transaction is being driven, on the lease token of the instance driving
//! it (a fencing token), so two instances never both act on one transaction.
//!
//! Times are milliseconds since the Unix epoch, passed in by the caller.

mod migrate;
mod rows;

use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;

use crate::txn::{self, BranchOp, GlobalStatus, GlobalTxn, NewBranch, Op, TransType, TxnError};

pub use rows::format_time;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrating the schema failed.
    #[error("migrating the database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database URL names no database Settle supports.
    #[error("unsupported database URL '{0}': use mysql://... or sqlite:...")]
    UnsupportedUrl(String),
    /// Another instance took over the transaction: this instance must stop driving it.
    #[error("lease on transaction '{gid}' was lost")]
    LeaseLost {
        /// The transaction.
        gid: String,
    },
    /// A stored value could not be read back.
    #[error("stored transaction '{gid}' is unreadable: {reason}")]
    Corrupt {
        /// The transaction.
        gid: String,
        /// What is wrong.
        reason: String,
    },
    /// The state machine refused the change.
    #[error(transparent)]
    Txn(#[from] TxnError),
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// `next_cron_time` of a transaction that needs no more work: never due.
pub const NEVER: i64 = i64::MAX / 4;

/// The SQL dialect of the backing database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// MySQL or MariaDB.
    MySql,
    /// SQLite.
    Sqlite,
}

impl Dialect {
    /// `INSERT` that skips rows violating a unique key.
    fn insert_ignore(self) -> &'static str {
        match self {
            Self::MySql => "INSERT IGNORE",
            Self::Sqlite => "INSERT OR IGNORE",
        }
    }

    /// Suffix that locks the selected row for the rest of the transaction (SQLite has one
    /// writer at a time, so it needs none).
    fn for_update(self) -> &'static str {
        match self {
            Self::MySql => " FOR UPDATE",
            Self::Sqlite => "",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Backend {
    MySql(MySqlPool),
    Sqlite(SqlitePool),
}

/// Runs the same block on whichever pool backs the store. The block is one database
/// transaction (or one statement); when the database aborts it for a deadlock or a lock
/// timeout, which leaves nothing written, it is run again after a short pause.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {{
        let mut attempt = 0_u32;
        loop {
            let result = match &$store.backend {
                $crate::store::Backend::MySql($pool) => $crate::store::typed(async { $body }).await,
                $crate::store::Backend::Sqlite($pool) => {
                    $crate::store::typed(async { $body }).await
                }
            };
            match result {
                Err($crate::store::StoreError::Database(ref e))
                    if $crate::store::is_transient(e)
                        && attempt < $crate::store::TRANSIENT_RETRIES =>
                {
                    attempt += 1;
                    $crate::store::pause_before_retry(attempt).await;
                }
                other => break other,
            }
        }
    }};
}

/// Registers branch operations (all `prepared`, created at `$now`) in one multi-row
/// statement `$sql` from [`Store::insert_branch_sql`], inside the open transaction `$tx`.
macro_rules! insert_branches {
    ($tx:ident, $sql:expr, $gid:expr, $branches:expr, $now:expr) => {{
        let mut q = sqlx::query($sql);
        for b in $branches {
            q = q
                .bind($gid)
                .bind(&b.branch_id)
                .bind(b.op.as_str())
                .bind(&b.url)
                .bind(&b.data)
                .bind(txn::BranchStatus::Prepared.as_str())
                .bind($now)
                .bind($now);
        }
        q.execute(&mut *$tx).await?;
    }};
}

pub mod outbox;

pub use outbox::{OutboxMessage, OutboxRow, OutboxState};

/// How many times an operation is run again after a deadlock or lock timeout.
pub(crate) const TRANSIENT_RETRIES: u32 = 8;

/// Gives an operation's block its result type.
pub(crate) async fn typed<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    f.await
}

/// Whether the database aborted the statement for a deadlock or a lock timeout (MySQL 1213
/// and 1205, SQLite BUSY and LOCKED): nothing was written, and running it again is safe.
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return matches!(my.number(), 1213 | 1205);
    }
    matches!(db.code().as_deref(), Some("5" | "6" | "517" | "262"))
}

pub(crate) async fn pause_before_retry(attempt: u32) {
    let base = 2_u64.saturating_pow(attempt.min(8));
    let jitter = rand::random::<u64>() % (base + 1);
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}

/// Options for connecting to the store.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `mysql://user:password@host:port/database` or `sqlite:path` (`sqlite::memory:` for a
    /// throwaway store).
    pub url: String,
    /// Most connections the pool opens (MySQL; SQLite always uses one writer).
    pub max_connections: u32,
    /// How long to wait for a connection.
    pub acquire_timeout: Duration,
}

/// How a status change treats the transaction's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseWrite {
    /// Leave owner, token and expiry as they are.
    Keep,
    /// Take the lease: this instance drives the transaction now.
    Acquire {
        /// Instance id.
        owner: String,
        /// New fencing token.
        token: String,
        /// Expiry, ms.
        expire: i64,
    },
    /// Give the lease up: any instance may take the transaction when it is due.
    Release,
}

/// A change of a global transaction's status.
#[derive(Debug, Clone)]
pub struct StatusChange {
    /// The status to move to.
    pub to: GlobalStatus,
    /// When, ms.
    pub now: i64,
    /// Rollback reason to record (on a move to `aborting`).
    pub rollback_reason: Option<String>,
    /// When the transaction is next due, ms.
    pub next_cron_time: i64,
    /// What happens to the lease.
    pub lease: LeaseWrite,
    /// Apply only while this lease token is held.
    pub fence: Option<String>,
    /// Branch operations to add in the same database transaction (a TCC's messages, given
    /// with its submit).
    pub new_branches: Vec<NewBranch>,
    /// Put the transaction's broker-bound steps in the outbox, in this state, in the same
    /// database transaction: this change commits them.
    pub enqueue_steps: Option<OutboxState>,
}

/// The schedule written after a round of phase 2 that did not finish.
#[derive(Debug, Clone)]
pub struct RetrySchedule {
    /// When to try again, ms.
    pub next_cron_time: i64,
    /// The interval used, s.
    pub next_cron_interval: i64,
    /// Failed attempts in a row.
    pub retry_count: i64,
    /// What went wrong.
    pub last_error: String,
    /// When, ms.
    pub now: i64,
}

/// Filter of [`Store::list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this gid.
    pub gid: Option<String>,
    /// Only transactions in this status.
    pub status: Option<GlobalStatus>,
    /// Only transactions of this type.
    pub trans_type: Option<TransType>,
    /// Created at or after, ms.
    pub create_time_start: Option<i64>,
    /// Created at or before, ms.
    pub create_time_end: Option<i64>,
    /// Continue after this position (from the previous page).
    pub position: Option<i64>,
    /// Page size.
    pub limit: i64,
}

/// Durable state of transactions, on MySQL or SQLite.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
}

const GLOBAL_COLUMNS: &str = "id, gid, trans_type, status, custom_data, steps, payloads, \
     query_prepared, protocol, options, rollback_reason, create_time, update_time, finish_time, \
     rollback_time, next_cron_time, next_cron_interval, owner, lease_token, lease_expire, \
     retry_count, last_error";

const BRANCH_COLUMNS: &str =
    "id, gid, branch_id, op, url, data, status, create_time, update_time, finish_time";

impl Store {
    /// Connects to the database named by the URL and migrates it.
    ///
    /// # Errors
    /// An unsupported URL, an unreachable database, or a failed migration.
    pub async fn connect(options: &ConnectOptions) -> Result<Self> {
        let url = options.url.as_str();
        let backend = if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            let url = url.replacen("mariadb://", "mysql://", 1);
            let connect = MySqlConnectOptions::from_str(&url)?;
            let pool = MySqlPoolOptions::new()
                .max_connections(options.max_connections.max(1))
                .acquire_timeout(options.acquire_timeout)
                // Read committed: an UPDATE locks only the rows it changes, not every row
                // its scan passes, so claims and status changes do not block each other.
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        sqlx::query("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                            .execute(conn)
                            .await
                            .map(drop)
                    })
                })
                .connect_with(connect)
                .await?;
            Backend::MySql(pool)
        } else if url.starts_with("sqlite:") {
            let connect = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect)
                .await?;
            Backend::Sqlite(pool)
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        let store = Self { backend };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        match &self.backend {
            Backend::MySql(pool) => migrate::mysql().run(pool).await?,
            Backend::Sqlite(pool) => migrate::sqlite().run(pool).await?,
        }
        Ok(())
    }

    /// The SQL dialect of the database.
    pub fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::MySql(_) => Dialect::MySql,
            Backend::Sqlite(_) => Dialect::Sqlite,
        }
    }

    /// Closes every connection.
    pub async fn close(&self) {
        match &self.backend {
            Backend::MySql(pool) => pool.close().await,
            Backend::Sqlite(pool) => pool.close().await,
        }
    }

    /// Inserts a new global transaction with its branch operations, in one database
    /// transaction. Returns `false`, writing nothing, if the gid already exists.
    ///
    /// # Errors
    /// A database error.
    pub async fn insert_global(&self, txn: &GlobalTxn, branches: &[NewBranch]) -> Result<bool> {
        self.insert_global_enqueue(txn, branches, None).await
    }

    /// [`Store::insert_global`], also putting the broker-bound steps among `branches` in the
    /// outbox, in state `enqueue`, in the same database transaction.
    ///
    /// # Errors
    /// A database error.
    pub async fn insert_global_enqueue(
        &self,
        txn: &GlobalTxn,
        branches: &[NewBranch],
        enqueue: Option<OutboxState>,
    ) -> Result<bool> {
        let insert = format!(
            "{} INTO trans_global (gid, trans_type, status, custom_data, steps, payloads, \
             query_prepared, protocol, options, rollback_reason, create_time, update_time, \
             finish_time, rollback_time, next_cron_time, next_cron_interval, owner, lease_token, \
             lease_expire, retry_count, last_error) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            self.dialect().insert_ignore()
        );
        let encoded = rows::EncodedGlobal::new(txn);
        let branch_sql = self.insert_branch_sql(branches.len());
        let dialect = self.dialect();
        let messages = if enqueue.is_some() {
            OutboxMessage::from_steps(branches)
        } else {
            Vec::new()
        };
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let insert_global = sqlx::query(&insert)
                .bind(&txn.gid)
                .bind(txn.trans_type.as_str())
                .bind(txn.status.as_str())
                .bind(&txn.custom_data)
                .bind(&encoded.steps)
                .bind(&encoded.payloads)
                .bind(&txn.query_prepared)
                .bind(&txn.protocol)
                .bind(&encoded.options)
                .bind(&txn.rollback_reason)
                .bind(txn.create_time)
                .bind(txn.update_time)
                .bind(txn.finish_time)
                .bind(txn.rollback_time)
                .bind(txn.next_cron_time)
                .bind(txn.next_cron_interval)
                .bind(&txn.owner)
                .bind(&txn.lease_token)
                .bind(txn.lease_expire)
                .bind(txn.retry_count)
                .bind(&txn.last_error);
            if branches.is_empty() {
                // One statement needs no transaction of its own.
                drop(tx);
                return Ok(insert_global.execute(pool).await?.rows_affected() == 1);
            }
            let inserted = insert_global.execute(&mut *tx).await?.rows_affected();
            if inserted == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            insert_branches!(tx, &branch_sql, &txn.gid, branches, txn.create_time);
            if let Some(state) = enqueue {
                outbox::enqueue_in_tx!(tx, dialect, &txn.gid, &messages, state, txn.create_time);
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    /// `INSERT` of `rows` branch operations in one statement, skipping registered ones.
    fn insert_branch_sql(&self, rows: usize) -> String {
        let mut sql = format!(
            "{} INTO trans_branch_op (gid, branch_id, op, url, data, status, create_time, \
             update_time) VALUES ",
            self.dialect().insert_ignore()
        );
        for i in 0..rows {
            sql.push_str(if i == 0 {
                "(?, ?, ?, ?, ?, ?, ?, ?)"
            } else {
                ", (?, ?, ?, ?, ?, ?, ?, ?)"
            });
        }
        sql
    }

    /// The global transaction with this gid, if any.
    ///
    /// # Errors
    /// A database error, or a stored row Settle cannot read.
    pub async fn find(&self, gid: &str) -> Result<Option<GlobalTxn>> {
        let sql = format!("SELECT {GLOBAL_COLUMNS} FROM trans_global WHERE gid = ?");
        on_pool!(self, pool => {
            let row = sqlx::query(&sql).bind(gid).fetch_optional(pool).await?;
            row.as_ref().map(rows::decode_global).transpose()
        })
    }

    /// The branch operations of a transaction, in registration order.
    ///
    /// # Errors
    /// A database error, or a stored row Settle cannot read.
    pub async fn find_branches(&self, gid: &str) -> Result<Vec<BranchOp>> {
        let sql = format!("SELECT {BRANCH_COLUMNS} FROM trans_branch_op WHERE gid = ? ORDER BY id");
        on_pool!(self, pool => {
            let rows = sqlx::query(&sql).bind(gid).fetch_all(pool).await?;
            rows.iter().map(rows::decode_branch).collect()
        })
    }

    /// Moves a transaction from status `from` as `change` says. Returns `false`, writing
    /// nothing, if it is no longer in `from` or (with a fence) its lease token changed.
    ///
    /// # Errors
    /// A database error.
    pub async fn change_status(
        &self,
        gid: &str,
        from: GlobalStatus,
        change: &StatusChange,
    ) -> Result<bool> {
        let mut sql =
            String::from("UPDATE trans_global SET status = ?, update_time = ?, next_cron_time = ?");
        if change.rollback_reason.is_some() {
            sql.push_str(", rollback_reason = ?, rollback_time = ?");
        }
        if change.to.is_final() {
            sql.push_str(", finish_time = ?");
        }
        match change.lease {
            LeaseWrite::Keep => {}
            LeaseWrite::Acquire { .. } => {
                sql.push_str(", owner = ?, lease_token = ?, lease_expire = ?");
            }
            LeaseWrite::Release => sql.push_str(", owner = '', lease_token = '', lease_expire = 0"),
        }
        sql.push_str(" WHERE gid = ? AND status = ?");
        if change.fence.is_some() {
            sql.push_str(" AND lease_token = ?");
        }
        let dialect = self.dialect();
        let insert_branches = self.insert_branch_sql(change.new_branches.len());
        let steps_sql = "SELECT branch_id, op, url, data FROM trans_branch_op WHERE gid = ? AND op = ? ORDER BY id";
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut q = sqlx::query(&sql)
                .bind(change.to.as_str())
                .bind(change.now)
                .bind(change.next_cron_time);
            if let Some(reason) = &change.rollback_reason {
                q = q.bind(reason).bind(change.now);
            }
            if change.to.is_final() {
                q = q.bind(change.now);
            }
            if let LeaseWrite::Acquire { owner, token, expire } = &change.lease {
                q = q.bind(owner).bind(token).bind(*expire);
            }
            q = q.bind(gid).bind(from.as_str());
            if let Some(token) = &change.fence {
                q = q.bind(token);
            }
            if change.new_branches.is_empty() && change.enqueue_steps.is_none() {
                // One statement needs no transaction of its own.
                drop(tx);
                return Ok(q.execute(pool).await?.rows_affected() == 1);
            }
            if q.execute(&mut *tx).await?.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            if !change.new_branches.is_empty() {
                insert_branches!(tx, &insert_branches, gid, &change.new_branches, change.now);
            }
            if let Some(state) = change.enqueue_steps {
                let rows = sqlx::query(steps_sql).bind(gid).bind(Op::Action.as_str()).fetch_all(&mut *tx).await?;
                let mut steps = Vec::with_capacity(rows.len());
                for r in &rows {
                    steps.push(NewBranch {
                        branch_id: r.try_get_unchecked(0)?,
                        op: rows::parse_code(gid, &r.try_get_unchecked::<String, _>(1)?)?,
                        url: r.try_get_unchecked(2)?,
                        data: r.try_get_unchecked(3)?,
                    });
                }
                let messages = OutboxMessage::from_steps(&steps);
                outbox::enqueue_in_tx!(tx, dialect, gid, &messages, state, change.now);
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Registers branch operations with a prepared transaction of type `trans_type`, locking
    /// the transaction's row so that a concurrent submit or abort waits. Operations already
    /// registered are left as they are.
    ///
    /// # Errors
    /// [`StoreError::Txn`] if the transaction does not exist, has another type or is no longer
    /// prepared (nothing is written); a database error.
    pub async fn register_branches(
        &self,
        gid: &str,
        trans_type: TransType,
        branches: &[NewBranch],
        now: i64,
    ) -> Result<()> {
        let select = format!(
            "SELECT status, trans_type FROM trans_global WHERE gid = ?{}",
            self.dialect().for_update()
        );
        let insert = self.insert_branch_sql(branches.len());
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let row = sqlx::query(&select).bind(gid).fetch_optional(&mut *tx).await?;
            let existing = match row {
                None => None,
                Some(row) => {
                    let status: String = row.try_get_unchecked(0)?;
                    let ty: String = row.try_get_unchecked(1)?;
                    Some((rows::parse_code(gid, &status)?, rows::parse_code(gid, &ty)?))
                }
            };
            if let Err(e) = txn::register::register(gid, trans_type, existing) {
                tx.rollback().await?;
                return Err(e.into());
            }
            if !branches.is_empty() {
                insert_branches!(tx, &insert, gid, branches, now);
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Claims up to `limit` transactions that are due at `now` and not leased by a live
    /// instance, in one conditional UPDATE, and returns them. Each gets `owner`, `token` and a
    /// lease until `lease_expire`, and is due again then, in case this instance dies.
    ///
    /// # Errors
    /// A database error, or a stored row Settle cannot read.
    pub async fn claim_due(
        &self,
        owner: &str,
        token: &str,
        now: i64,
        lease_expire: i64,
        limit: i64,
    ) -> Result<Vec<GlobalTxn>> {
        let due = "status IN ('prepared', 'submitted', 'aborting') AND next_cron_time <= ? \
                   AND lease_expire <= ?";
        let claim = match self.dialect() {
            Dialect::MySql => format!(
                "UPDATE trans_global SET owner = ?, lease_token = ?, lease_expire = ?, \
                 next_cron_time = ? WHERE {due} ORDER BY next_cron_time LIMIT ?"
            ),
            Dialect::Sqlite => format!(
                "UPDATE trans_global SET owner = ?, lease_token = ?, lease_expire = ?, \
                 next_cron_time = ? WHERE id IN (SELECT id FROM trans_global WHERE {due} \
                 ORDER BY next_cron_time LIMIT ?)"
            ),
        };
        let fetch = format!("SELECT {GLOBAL_COLUMNS} FROM trans_global WHERE lease_token = ?");
        on_pool!(self, pool => {
            let claimed = sqlx::query(&claim)
                .bind(owner)
                .bind(token)
                .bind(lease_expire)
                .bind(lease_expire)
                .bind(now)
                .bind(now)
                .bind(limit)
                .execute(pool)
                .await?
                .rows_affected();
            if claimed == 0 {
                return Ok(Vec::new());
            }
            let rows = sqlx::query(&fetch).bind(token).fetch_all(pool).await?;
            rows.iter().map(rows::decode_global).collect()
        })
    }

    /// Extends the lease held with `token` until `lease_expire`.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`] if the token is no longer the transaction's; a database
    /// error.
    pub async fn renew_lease(&self, gid: &str, token: &str, lease_expire: i64) -> Result<()> {
        let sql = "UPDATE trans_global SET lease_expire = ?, next_cron_time = ? \
                   WHERE gid = ? AND lease_token = ?";
        on_pool!(self, pool => {
            let n = sqlx::query(sql)
                .bind(lease_expire)
                .bind(lease_expire)
                .bind(gid)
                .bind(token)
                .execute(pool)
                .await?
                .rows_affected();
            lease_held(gid, n)
        })
    }

    /// Records that a branch operation succeeded, in one statement that applies only while
    /// `token` is still the transaction's lease token. The lease itself is renewed by
    /// [`Store::renew_lease`] when it runs short.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`] (nothing is written) if the token is no longer the
    /// transaction's or the branch was already recorded by someone else; a database error.
    pub async fn complete_branch(
        &self,
        gid: &str,
        token: &str,
        branch_id: &str,
        op: Op,
        now: i64,
    ) -> Result<()> {
        let sql = "UPDATE trans_branch_op SET status = ?, update_time = ?, finish_time = ? \
                   WHERE gid = ? AND branch_id = ? AND op = ? AND status = ? AND EXISTS \
                   (SELECT 1 FROM trans_global WHERE gid = ? AND lease_token = ?)";
        on_pool!(self, pool => {
            let n = sqlx::query(sql)
                .bind(txn::BranchStatus::Succeeded.as_str())
                .bind(now)
                .bind(now)
                .bind(gid)
                .bind(branch_id)
                .bind(op.as_str())
                .bind(txn::BranchStatus::Prepared.as_str())
                .bind(gid)
                .bind(token)
                .execute(pool)
                .await?
                .rows_affected();
            lease_held(gid, n)
        })
    }

    /// Marks every branch operation of a transaction that is not done as `failed`: it will
    /// never be called (the transaction rolled back or was stopped).
    ///
    /// # Errors
    /// A database error.
    pub async fn fail_pending_branches(&self, gid: &str, now: i64) -> Result<u64> {
        let sql = "UPDATE trans_branch_op SET status = ?, update_time = ?, finish_time = ? \
                   WHERE gid = ? AND status = ?";
        on_pool!(self, pool => {
            Ok(sqlx::query(sql)
                .bind(txn::BranchStatus::Failed.as_str())
                .bind(now)
                .bind(now)
                .bind(gid)
                .bind(txn::BranchStatus::Prepared.as_str())
                .execute(pool)
                .await?
                .rows_affected())
        })
    }

    /// Writes the retry schedule of a transaction whose phase 2 did not finish, and gives up
    /// the lease held with `token` so any instance can take it when it is due.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`] if the token is no longer the transaction's; a database
    /// error.
    pub async fn schedule_retry(
        &self,
        gid: &str,
        token: &str,
        schedule: &RetrySchedule,
    ) -> Result<()> {
        let sql = "UPDATE trans_global SET next_cron_time = ?, next_cron_interval = ?, \
                   retry_count = ?, last_error = ?, update_time = ?, owner = '', \
                   lease_token = '', lease_expire = 0 WHERE gid = ? AND lease_token = ?";
        let mut error = schedule.last_error.clone();
        truncate_utf8(&mut error, 2000);
        on_pool!(self, pool => {
            let n = sqlx::query(sql)
                .bind(schedule.next_cron_time)
                .bind(schedule.next_cron_interval)
                .bind(schedule.retry_count)
                .bind(&error)
                .bind(schedule.now)
                .bind(gid)
                .bind(token)
                .execute(pool)
                .await?
                .rows_affected();
            lease_held(gid, n)
        })
    }

    /// Gives up the lease held with `token` and makes the transaction due at
    /// `next_cron_time`, changing nothing else.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`] if the token is no longer the transaction's; a database
    /// error.
    pub async fn release(&self, gid: &str, token: &str, next_cron_time: i64) -> Result<()> {
        let sql = "UPDATE trans_global SET next_cron_time = ?, owner = '', lease_token = '', \
                   lease_expire = 0 WHERE gid = ? AND lease_token = ?";
        on_pool!(self, pool => {
            let n = sqlx::query(sql)
                .bind(next_cron_time)
                .bind(gid)
                .bind(token)
                .execute(pool)
                .await?
                .rows_affected();
            lease_held(gid, n)
        })
    }

    /// Makes unfinished transactions due now and restarts their retry schedule: the one with
    /// `gid`, or every one when `gid` is `None`. Leases held by live instances are kept.
    /// Returns how many were touched.
    ///
    /// # Errors
    /// A database error.
    pub async fn reset_cron(&self, gid: Option<&str>, now: i64) -> Result<u64> {
        let mut sql = String::from(
            "UPDATE trans_global SET next_cron_time = ?, retry_count = 0 \
             WHERE status IN ('submitted', 'aborting') AND next_cron_time > ?",
        );
        if gid.is_some() {
            sql.push_str(" AND gid = ?");
        }
        on_pool!(self, pool => {
            let mut q = sqlx::query(&sql).bind(now).bind(now);
            if let Some(gid) = gid {
                q = q.bind(gid);
            }
            Ok(q.execute(pool).await?.rows_affected())
        })
    }

    /// One page of transactions, newest first, and the position of the next page (`None` on
    /// the last page).
    ///
    /// # Errors
    /// A database error, or a stored row Settle cannot read.
    pub async fn list(&self, filter: &ListFilter) -> Result<(Vec<GlobalTxn>, Option<i64>)> {
        let mut sql = format!("SELECT {GLOBAL_COLUMNS} FROM trans_global WHERE 1 = 1");
        let mut strings: Vec<&str> = Vec::new();
        let mut ints: Vec<i64> = Vec::new();
        // Strings bind first, then integers: the clauses are pushed in that order.
        if let Some(gid) = &filter.gid {
            sql.push_str(" AND gid = ?");
            strings.push(gid);
        }
        if let Some(s) = filter.status {
            sql.push_str(" AND status = ?");
            strings.push(s.as_str());
        }
        if let Some(t) = filter.trans_type {
            sql.push_str(" AND trans_type = ?");
            strings.push(t.as_str());
        }
        if let Some(t) = filter.create_time_start {
            sql.push_str(" AND create_time >= ?");
            ints.push(t);
        }
        if let Some(t) = filter.create_time_end {
            sql.push_str(" AND create_time <= ?");
            ints.push(t);
        }
        if let Some(p) = filter.position {
            sql.push_str(" AND id < ?");
            ints.push(p);
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        let limit = filter.limit.clamp(1, 1000);
        ints.push(limit);
        on_pool!(self, pool => {
            let mut q = sqlx::query(&sql);
            for s in &strings {
                q = q.bind(*s);
            }
            for i in &ints {
                q = q.bind(*i);
            }
            let rows = q.fetch_all(pool).await?;
            let mut last_id = None;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                last_id = Some(row.try_get::<i64, _>("id")?);
                out.push(rows::decode_global(row)?);
            }
            let next = if i64::try_from(out.len()).unwrap_or(i64::MAX) == limit { last_id } else { None };
            Ok((out, next))
        })
    }

    /// Counts unfinished transactions by status (for metrics and operators).
    ///
    /// # Errors
    /// A database error.
    pub async fn count_unfinished(&self) -> Result<Vec<(String, i64)>> {
        let sql = "SELECT status, COUNT(*) FROM trans_global \
                   WHERE status IN ('prepared', 'submitted', 'aborting') GROUP BY status";
        on_pool!(self, pool => {
            let rows = sqlx::query(sql).fetch_all(pool).await?;
            rows.iter()
                .map(|r| Ok((r.try_get_unchecked::<String, _>(0)?, r.try_get::<i64, _>(1)?)))
                .collect()
        })
    }
}

fn lease_held(gid: &str, rows: u64) -> Result<()> {
    if rows == 1 {
        Ok(())
    } else {
        Err(StoreError::LeaseLost {
            gid: gid.to_owned(),
        })
    }
}

/// Cuts a string to at most `max` bytes on a character boundary.
pub fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// The URL without its password, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("mysql://root:secret@127.0.0.1:3306/settle"),
            "mysql://root:***@127.0.0.1:3306/settle"
        );
        assert_eq!(
            redact_url("mysql://root@127.0.0.1/settle"),
            "mysql://root@127.0.0.1/settle"
        );
        assert_eq!(redact_url("sqlite:settle.db"), "sqlite:settle.db");
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        let mut s = "ééé".to_owned();
        truncate_utf8(&mut s, 3);
        assert_eq!(s, "é");
    }
}
