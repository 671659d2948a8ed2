//! Completion callbacks: a finished transaction whose options name a `callback_url` carries
//! `callback_due` (set by the same write that finished it) until its outcome was posted.
//! Any instance may post it: a claim moves `callback_due` forward, so that another instance
//! finds it due only if the one that claimed it did not finish the delivery in time.

use sqlx::Row;

use super::{Result, Store};
use crate::txn::TransOptions;

/// A finished transaction whose outcome is due to be posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueCallback {
    /// The transaction.
    pub gid: String,
    /// `tcc` or `msg`.
    pub trans_type: String,
    /// `succeed` or `failed`.
    pub status: String,
    /// Where to post it.
    pub url: String,
    /// Why it rolled back (empty if it did not).
    pub rollback_reason: String,
    /// When it finished, ms.
    pub finish_time: i64,
    /// Deliveries tried so far.
    pub attempts: i64,
    /// When it was due, ms (what [`Store::claim_callback`] compares against).
    pub due: i64,
    /// Its messages, by what became of them when the outcome was read.
    pub messages: MessageCounts,
}

/// A transaction's outbox messages by state, as its outcome reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MessageCounts {
    /// Taken by the broker.
    pub sent: i64,
    /// Still to go (held back by its key, or on its way).
    pub pending: i64,
    /// Never to be sent: dropped with a rollback, withdrawn when the transaction ended
    /// failed, or discarded by an operator.
    pub dropped: i64,
    /// Refused by the broker, waiting for an operator.
    pub dead: i64,
}

/// Where a transaction's callback stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackState {
    /// When it is next to be posted, ms (none: nothing left to post).
    pub due_ms: Option<i64>,
    /// Deliveries tried.
    pub attempts: i64,
    /// When it was delivered, ms.
    pub delivered_ms: Option<i64>,
    /// Why the last delivery failed (empty after a success).
    pub error: String,
}

impl Store {
    /// Where `gid`'s callback stands; `None` for an unknown gid.
    ///
    /// # Errors
    /// A database error.
    pub async fn callback_state(&self, gid: &str) -> Result<Option<CallbackState>> {
        let sql = "SELECT callback_due, callback_attempts, callback_time, callback_error \
                   FROM trans_global WHERE gid = ?";
        on_pool!(self, pool => {
            let Some(r) = sqlx::query(sql).bind(gid).fetch_optional(pool).await? else {
                return Ok(None);
            };
            Ok(Some(CallbackState {
                due_ms: r.try_get(0)?,
                attempts: r.try_get(1)?,
                delivered_ms: r.try_get(2)?,
                error: r.try_get_unchecked(3)?,
            }))
        })
    }

    /// Callbacks due at `now`, the most overdue first; at most `limit`.
    ///
    /// # Errors
    /// A database error.
    pub async fn due_callbacks(&self, now: i64, limit: i64) -> Result<Vec<DueCallback>> {
        // Held messages of a finished transaction are about to be dropped or released, as
        // the write that finished it decided: counted with what they become.
        let count = |states: &str| {
            format!(
                "(SELECT COUNT(*) FROM outbox o WHERE o.gid = trans_global.gid AND o.status IN ({states}))"
            )
        };
        let sql = format!(
            "SELECT gid, trans_type, status, options, rollback_reason, finish_time, \
             callback_attempts, callback_due, {}, {}, {}, {} FROM trans_global \
             WHERE callback_due IS NOT NULL AND callback_due <= ? \
             ORDER BY callback_due LIMIT ?",
            count("'sent'"),
            count("'pending', 'held'"),
            count("'dropped'"),
            count("'dead'"),
        );
        on_pool!(self, pool => {
            let rows = sqlx::query(&sql).bind(now).bind(limit).fetch_all(pool).await?;
            rows.iter()
                .map(|r| {
                    let options: String = r.try_get_unchecked(3)?;
                    let url = serde_json::from_str::<TransOptions>(&options)
                        .map(|o| o.callback_url)
                        .unwrap_or_default();
                    Ok(DueCallback {
                        gid: r.try_get_unchecked(0)?,
                        trans_type: r.try_get_unchecked(1)?,
                        status: r.try_get_unchecked(2)?,
                        url,
                        rollback_reason: r.try_get_unchecked(4)?,
                        finish_time: r.try_get::<Option<i64>, _>(5)?.unwrap_or_default(),
                        attempts: r.try_get::<i64, _>(6)?,
                        due: r.try_get(7)?,
                        messages: MessageCounts {
                            sent: r.try_get(8)?,
                            pending: r.try_get(9)?,
                            dropped: r.try_get(10)?,
                            dead: r.try_get(11)?,
                        },
                    })
                })
                .collect()
        })
    }

    /// Takes `callback` for delivery until `until` (ms). `false`: another instance took it
    /// first.
    ///
    /// # Errors
    /// A database error.
    pub async fn claim_callback(&self, callback: &DueCallback, until: i64) -> Result<bool> {
        let sql = "UPDATE trans_global SET callback_due = ? WHERE gid = ? AND callback_due = ?";
        on_writer!(self, pool => {
            let n = sqlx::query(sql)
                .bind(until)
                .bind(&callback.gid)
                .bind(callback.due)
                .execute(pool)
                .await?;
            Ok(n.rows_affected() == 1)
        })
    }

    /// Records the end of a delivery of `callback` claimed until `claimed_until`: delivered
    /// at `now` (`next` is `None`), or failed with `error` and due again at `next`. `false`:
    /// the claim had run out and another instance took the callback over.
    ///
    /// # Errors
    /// A database error.
    pub async fn callback_tried(
        &self,
        callback: &DueCallback,
        claimed_until: i64,
        now: i64,
        error: &str,
        next: Option<i64>,
    ) -> Result<bool> {
        let mut error = error.to_owned();
        super::truncate_utf8(&mut error, 1024);
        let delivered = next.is_none() && error.is_empty();
        let sql = "UPDATE trans_global SET callback_due = ?, callback_attempts = \
                   callback_attempts + 1, callback_error = ?, \
                   callback_time = CASE WHEN ? THEN ? ELSE callback_time END \
                   WHERE gid = ? AND callback_due = ?";
        on_writer!(self, pool => {
            let n = sqlx::query(sql)
                .bind(next)
                .bind(&error)
                .bind(delivered)
                .bind(now)
                .bind(&callback.gid)
                .bind(claimed_until)
                .execute(pool)
                .await?;
            Ok(n.rows_affected() == 1)
        })
    }
}
