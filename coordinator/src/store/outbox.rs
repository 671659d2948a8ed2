//! The outbox: messages to deliver to brokers once their transaction committed.
//!
//! A message enters the outbox in the database transaction that commits it (a msg's submit
//! or check-back, a TCC's submit), and takes the next sequence number of its sharding key
//! there, under that key's row lock: for one key, sequence order is commit order. A TCC's
//! messages wait as `held` until every confirm succeeded. The dispatcher delivers, per key,
//! only the lowest sequence not yet sent, so a message never overtakes an earlier one of
//! its key, while keys proceed independently.

use sqlx::Row;

use super::{Result, Store};
use crate::txn::{self, Op, TxnError};

pub use crate::txn::{OutboxMessage, OutboxState};

/// A message in the outbox, claimed for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Row id.
    pub id: i64,
    /// Transaction.
    pub gid: String,
    /// Its step.
    pub branch_id: String,
    /// Topic.
    pub topic: String,
    /// Tag, empty for none.
    pub tag: String,
    /// Sharding key, empty for none.
    pub sharding_key: String,
    /// Sequence within the key.
    pub seq: Option<i64>,
    /// Unique id consumers dedupe by: `GID-BRANCH`.
    pub message_id: String,
    /// Body.
    pub body: String,
    /// Failed attempts so far.
    pub attempts: i64,
    /// Who holds it.
    pub owner: String,
}

const OUTBOX_COLUMNS: &str =
    "id, gid, branch_id, topic, tag, sharding_key, seq, message_id, body, attempts, owner";

fn decode<R>(row: &R) -> Result<OutboxRow>
where
    R: Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(OutboxRow {
        id: row.try_get_unchecked("id")?,
        gid: row.try_get_unchecked("gid")?,
        branch_id: row.try_get_unchecked("branch_id")?,
        topic: row.try_get_unchecked("topic")?,
        tag: row.try_get_unchecked("tag")?,
        sharding_key: row.try_get_unchecked("sharding_key")?,
        seq: row.try_get_unchecked("seq")?,
        message_id: row.try_get_unchecked("message_id")?,
        body: row.try_get_unchecked("body")?,
        attempts: row.try_get_unchecked("attempts")?,
        owner: row.try_get_unchecked("owner")?,
    })
}

impl Store {
    /// Claims up to `limit` messages that may be delivered now: for each sharding key, its
    /// lowest sequence not yet sent, if that one is pending, due and not leased; plus due
    /// messages without a key. `owner` must be unique to this claim.
    ///
    /// # Errors
    /// A database error.
    pub async fn claim_outbox_heads(
        &self,
        owner: &str,
        now: i64,
        lease_expire: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRow>> {
        let heads = "SELECT o.id FROM outbox o JOIN (SELECT sharding_key, MIN(seq) AS s FROM outbox \
                     WHERE status IN ('held', 'pending') AND sharding_key <> '' GROUP BY sharding_key) h \
                     ON o.sharding_key = h.sharding_key AND o.seq = h.s \
                     WHERE o.status = 'pending' AND o.next_attempt_time <= ? AND o.lease_expire <= ? \
                     ORDER BY o.next_attempt_time LIMIT ?";
        let keyless = "SELECT id FROM outbox WHERE sharding_key = '' AND status = 'pending' \
                       AND next_attempt_time <= ? AND lease_expire <= ? ORDER BY id LIMIT ?";
        let fetch = format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE owner = ? ORDER BY id");
        on_writer!(self, pool => {
            let mut ids: Vec<i64> = Vec::new();
            for sql in [heads, keyless] {
                let rows = sqlx::query(sql).bind(now).bind(now).bind(limit).fetch_all(pool).await?;
                for r in rows {
                    ids.push(r.try_get::<i64, _>(0)?);
                }
            }
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let marks = vec!["?"; ids.len()].join(", ");
            let claim = format!(
                "UPDATE outbox SET owner = ?, lease_expire = ? WHERE id IN ({marks}) \
                 AND status = 'pending' AND lease_expire <= ?"
            );
            let mut q = sqlx::query(&claim).bind(owner).bind(lease_expire);
            for id in &ids {
                q = q.bind(*id);
            }
            q.bind(now).execute(pool).await?;
            let rows = sqlx::query(&fetch).bind(owner).fetch_all(pool).await?;
            rows.iter().map(decode).collect()
        })
    }

    /// Claims the next message of `sharding_key` if it is now the key's head and deliverable.
    ///
    /// # Errors
    /// A database error.
    pub async fn claim_next_for_key(
        &self,
        sharding_key: &str,
        owner: &str,
        now: i64,
        lease_expire: i64,
    ) -> Result<Option<OutboxRow>> {
        let head = "SELECT id, status, next_attempt_time, lease_expire FROM outbox \
                    WHERE sharding_key = ? AND status IN ('held', 'pending') ORDER BY seq LIMIT 1";
        let claim = "UPDATE outbox SET owner = ?, lease_expire = ? WHERE id = ? AND status = 'pending' AND lease_expire <= ?";
        let fetch = format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id = ? AND owner = ?");
        on_writer!(self, pool => {
            let Some(row) = sqlx::query(head).bind(sharding_key).fetch_optional(pool).await? else {
                return Ok(None);
            };
            let id: i64 = row.try_get(0)?;
            let status: String = row.try_get_unchecked(1)?;
            let due: i64 = row.try_get(2)?;
            let leased: i64 = row.try_get(3)?;
            if status != OutboxState::Pending.as_str() || due > now || leased > now {
                return Ok(None);
            }
            let n = sqlx::query(claim).bind(owner).bind(lease_expire).bind(id).bind(now).execute(pool).await?.rows_affected();
            if n == 0 {
                return Ok(None);
            }
            let row = sqlx::query(&fetch).bind(id).bind(owner).fetch_optional(pool).await?;
            row.as_ref().map(decode).transpose()
        })
    }

    /// Records that the broker acknowledged a message: it is sent, its step is done, and its
    /// transaction is due now so it can finish.
    ///
    /// # Errors
    /// [`TxnError::LeaseLost`] if the claim is no longer `owner`'s; a database error.
    pub async fn outbox_sent(&self, row: &OutboxRow, now: i64) -> Result<()> {
        let lock = format!(
            "SELECT status FROM trans_global WHERE gid = ?{}",
            self.dialect().for_update()
        );
        let sent =
            "UPDATE outbox SET status = 'sent', sent_time = ?, owner = '', lease_expire = 0 \
                    WHERE id = ? AND owner = ? AND status = 'pending'";
        let step = "UPDATE trans_branch_op SET status = ?, update_time = ?, finish_time = ? \
                    WHERE gid = ? AND branch_id = ? AND op = ? AND status = ?";
        let poke =
            "UPDATE trans_global SET next_cron_time = ? WHERE gid = ? AND status = 'submitted' \
                    AND lease_expire <= ? AND next_cron_time > ?";
        on_writer!(self, pool => {
            let mut tx = pool.begin().await?;
            // The transaction's row first, as every batch locks it first: no lock cycles.
            sqlx::query(&lock).bind(&row.gid).fetch_optional(&mut *tx).await?;
            let n = sqlx::query(sent).bind(now).bind(row.id).bind(&row.owner).execute(&mut *tx).await?.rows_affected();
            if n != 1 {
                tx.rollback().await?;
                return Err(TxnError::LeaseLost { gid: row.gid.clone() }.into());
            }
            sqlx::query(step)
                .bind(txn::BranchStatus::Succeeded.as_str())
                .bind(now)
                .bind(now)
                .bind(&row.gid)
                .bind(&row.branch_id)
                .bind(Op::Action.as_str())
                .bind(txn::BranchStatus::Prepared.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query(poke).bind(now).bind(&row.gid).bind(now).bind(now).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Gives a message back after a failed delivery, due again at `next_attempt_time`.
    ///
    /// # Errors
    /// A database error.
    pub async fn outbox_retry(
        &self,
        row: &OutboxRow,
        next_attempt_time: i64,
        last_error: &str,
    ) -> Result<()> {
        let sql =
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_time = ?, last_error = ?, \
                   owner = '', lease_expire = 0 WHERE id = ? AND owner = ?";
        // Operators see the error on the transaction too (`query`).
        let visible =
            "UPDATE trans_global SET last_error = ? WHERE gid = ? AND status = 'submitted'";
        let mut error = last_error.to_owned();
        super::truncate_utf8(&mut error, 1900);
        let error = &error;
        let shown = &format!("delivery of step {}: {error}", row.branch_id);
        on_writer!(self, pool => {
            sqlx::query(sql).bind(next_attempt_time).bind(error).bind(row.id).bind(&row.owner).execute(pool).await?;
            if !error.is_empty() {
                sqlx::query(visible).bind(shown).bind(&row.gid).execute(pool).await?;
            }
            Ok(())
        })
    }

    /// Messages not yet acknowledged by the broker, and the greatest delivery error text
    /// among them (for operators).
    ///
    /// # Errors
    /// A database error.
    pub async fn outbox_backlog(&self) -> Result<(i64, String)> {
        let sql = "SELECT COUNT(*), COALESCE(MAX(last_error), '') FROM outbox WHERE status IN ('held', 'pending')";
        on_writer!(self, pool => {
            let row = sqlx::query(sql).fetch_one(pool).await?;
            Ok((row.try_get::<i64, _>(0)?, row.try_get_unchecked::<String, _>(1)?))
        })
    }
}
