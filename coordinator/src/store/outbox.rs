//! The outbox: messages to deliver to brokers once their transaction committed.
//!
//! A message enters the outbox in the database transaction that commits it (a msg's submit
//! or check-back, a TCC's submit), and takes the next sequence number of its sharding key
//! there, under that key's row lock: for one key, sequence order is commit order. A TCC's
//! messages wait as `held` until every confirm succeeded. The dispatcher claims, per key, a
//! run starting at the lowest sequence not yet sent and stopping before anything it may not
//! send yet, so a message never overtakes an earlier one of its key, while keys proceed
//! independently. Acknowledgements are recorded by the batched writer (see
//! [`crate::txn::delivered`]).

use sqlx::Row;

use super::{marks, Result, Store};

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
    /// Claims what may be delivered now, for up to `max_keys` sharding keys: each key's run of
    /// messages from its lowest not yet sent (at most `per_key` of them, one topic, pending,
    /// due, not leased and with consecutive sequence numbers, so that nothing of the key is
    /// skipped), plus up to `max_keys` due messages without a key. Returns the rows claimed for
    /// `owner` (unique to this claim), each key's in sequence order.
    ///
    /// # Errors
    /// A database error.
    pub async fn claim_outbox(
        &self,
        owner: &str,
        now: i64,
        lease_expire: i64,
        max_keys: i64,
        per_key: i64,
    ) -> Result<Vec<OutboxRow>> {
        let heads = "SELECT o.sharding_key, o.seq FROM outbox o JOIN (SELECT sharding_key, MIN(seq) AS s \
                     FROM outbox WHERE status IN ('held', 'pending') AND sharding_key <> '' GROUP BY sharding_key) h \
                     ON o.sharding_key = h.sharding_key AND o.seq = h.s \
                     WHERE o.status = 'pending' AND o.next_attempt_time <= ? AND o.lease_expire <= ? \
                     ORDER BY o.next_attempt_time LIMIT ?";
        // The heads (at most `max_keys`) drive the join, each reading its run by the
        // (sharding_key, seq) index: left to itself, the optimizer may scan the whole table,
        // sent rows included.
        let runs = format!(
            "SELECT o.id, o.sharding_key, o.seq, o.topic, o.status, o.next_attempt_time, o.lease_expire \
             FROM ({heads}) h {} outbox o ON o.sharding_key = h.sharding_key \
             AND o.seq >= h.seq AND o.seq < h.seq + ? \
             WHERE o.status IN ('held', 'pending') ORDER BY o.sharding_key, o.seq",
            self.dialect().ordered_join()
        );
        let keyless = "SELECT id FROM outbox WHERE sharding_key = '' AND status = 'pending' \
                       AND next_attempt_time <= ? AND lease_expire <= ? ORDER BY id LIMIT ?";
        let fetch = format!(
            "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE owner = ? ORDER BY sharding_key, seq, id"
        );
        on_writer!(self, pool => {
            let mut ids: Vec<i64> = Vec::new();
            let rows = sqlx::query(&runs)
                .bind(now)
                .bind(now)
                .bind(max_keys)
                .bind(per_key)
                .fetch_all(pool)
                .await?;
            // The run being read: its key, the sequence it continues with (none once it
            // ended) and its topic. A key's first row is its head.
            let mut run: Option<(String, Option<i64>, String)> = None;
            for r in &rows {
                let key: String = r.try_get_unchecked(1)?;
                let seq: Option<i64> = r.try_get_unchecked(2)?;
                let topic: String = r.try_get_unchecked(3)?;
                let status: String = r.try_get_unchecked(4)?;
                let due: i64 = r.try_get(5)?;
                let leased: i64 = r.try_get(6)?;
                let Some(seq) = seq else { continue };
                let (expected, run_topic) = match run.take() {
                    Some((k, next, t)) if k == key => (next, t),
                    _ => (Some(seq), topic.clone()),
                };
                let deliverable =
                    status == OutboxState::Pending.as_str() && due <= now && leased <= now;
                let next = if expected == Some(seq) && run_topic == topic && deliverable {
                    ids.push(r.try_get(0)?);
                    Some(seq + 1)
                } else {
                    None
                };
                run = Some((key, next, run_topic));
            }
            for r in sqlx::query(keyless).bind(now).bind(now).bind(max_keys).fetch_all(pool).await? {
                ids.push(r.try_get::<i64, _>(0)?);
            }
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let claim = format!(
                "UPDATE outbox SET owner = ?, lease_expire = ? WHERE id IN ({}) \
                 AND status = 'pending' AND lease_expire <= ?",
                marks(ids.len())
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

    /// Gives claimed messages back untouched (they were not tried).
    ///
    /// # Errors
    /// A database error.
    pub async fn outbox_release(&self, owner: &str, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE outbox SET owner = '', lease_expire = 0 WHERE owner = ? AND id IN ({})",
            marks(ids.len())
        );
        on_writer!(self, pool => {
            let mut q = sqlx::query(&sql).bind(owner);
            for id in ids {
                q = q.bind(*id);
            }
            q.execute(pool).await?;
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
