//! Retention: transactions that finished long ago are deleted, with their branch operations,
//! their attempts and their outbox rows, in small batches that never hold locks for long.
//! A transaction with a message not yet sent (a dead letter included) is kept until the
//! message is sent, or an operator redrives or discards it.
//!
//! A key's sequence row goes too once no outbox row of the key is left; it is locked first,
//! so a commit taking the key's next sequence at the same moment either waits and starts the
//! key afresh, or keeps the row.

use std::time::Duration;

use sqlx::{Connection, Row};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{marks, Result, Store};
use crate::clock::Clock;

/// The first column of each row, as text.
fn first_strings<R>(rows: &[R]) -> Result<Vec<String>>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(rows
        .iter()
        .map(|r| r.try_get_unchecked::<String, _>(0))
        .collect::<std::result::Result<_, _>>()?)
}

/// Keeps a transaction that has a message not yet sent.
const UNDELIVERED: &str = " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.gid = trans_global.gid \
                           AND o.status IN ('held', 'pending', 'dead'))";

/// What one purge deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Global transactions.
    pub transactions: u64,
    /// Branch operations.
    pub branches: u64,
    /// Outbox messages.
    pub messages: u64,
}

impl Store {
    /// Deletes up to `limit` transactions that finished (succeeded or failed) before
    /// `finished_before` (ms), with their branch operations and outbox messages, in one
    /// database transaction.
    ///
    /// # Errors
    /// A database error.
    pub async fn purge_finished(&self, finished_before: i64, limit: i64) -> Result<Purged> {
        // A transaction whose outcome is still to be posted to its callback stays, and so
        // does one with a message not yet sent (held, pending, or a dead letter an operator
        // has not redriven or discarded): nothing undelivered is deleted.
        let find = format!(
            "SELECT gid FROM trans_global WHERE status IN ('succeed', 'failed') \
             AND finish_time < ? AND callback_due IS NULL{UNDELIVERED} ORDER BY finish_time LIMIT ?"
        );
        let for_update = self.dialect().for_update();
        let (by_gid, by_key) = (
            self.dialect().use_index("uniq_gid"),
            self.dialect().use_index("PRIMARY"),
        );
        on_writer!(self, pool => {
            let gids = first_strings(&sqlx::query(&find)
                .bind(finished_before)
                .bind(limit.max(1))
                .fetch_all(pool)
                .await?)?;
            if gids.is_empty() {
                return Ok(Purged::default());
            }
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin().await?;
            let list = marks(gids.len());
            // Lock the transactions first, as every batch does.
            let lock = format!(
                "SELECT gid FROM trans_global{by_gid} WHERE gid IN ({list}) AND status IN ('succeed', 'failed') AND callback_due IS NULL{UNDELIVERED} ORDER BY gid{for_update}"
            );
            let mut q = sqlx::query(&lock);
            for g in &gids {
                q = q.bind(g);
            }
            let gids = first_strings(&q
                .fetch_all(&mut *tx)
                .await?)?;
            if gids.is_empty() {
                tx.rollback().await?;
                return Ok(Purged::default());
            }
            let list = marks(gids.len());
            let keys_sql = format!("SELECT DISTINCT sharding_key FROM outbox WHERE gid IN ({list}) AND sharding_key <> ''");
            let mut q = sqlx::query(&keys_sql);
            for g in &gids {
                q = q.bind(g);
            }
            let keys = first_strings(&q
                .fetch_all(&mut *tx)
                .await?)?;
            let mut purged = Purged::default();
            for (table, counter) in [("outbox", 0), ("trans_branch_op", 1), ("trans_attempt", 3), ("trans_global", 2)] {
                let sql = format!("DELETE FROM {table} WHERE gid IN ({list})");
                let mut q = sqlx::query(&sql);
                for g in &gids {
                    q = q.bind(g);
                }
                let n = q.execute(&mut *tx).await?.rows_affected();
                match counter {
                    0 => purged.messages = n,
                    1 => purged.branches = n,
                    2 => purged.transactions = n,
                    _ => {}
                }
            }
            if !keys.is_empty() {
                let klist = marks(keys.len());
                let lock = format!("SELECT sharding_key FROM outbox_key_seq{by_key} WHERE sharding_key IN ({klist}) ORDER BY sharding_key{for_update}");
                let used = format!("SELECT DISTINCT sharding_key FROM outbox WHERE sharding_key IN ({klist})");
                let mut q = sqlx::query(&lock);
                for k in &keys {
                    q = q.bind(k);
                }
                q.fetch_all(&mut *tx).await?;
                let mut q = sqlx::query(&used);
                for k in &keys {
                    q = q.bind(k);
                }
                let used = first_strings(&q
                    .fetch_all(&mut *tx)
                    .await?)?;
                let free: Vec<&String> = keys.iter().filter(|k| !used.contains(k)).collect();
                if !free.is_empty() {
                    let sql = format!("DELETE FROM outbox_key_seq WHERE sharding_key IN ({})", marks(free.len()));
                    let mut q = sqlx::query(&sql);
                    for k in &free {
                        q = q.bind(*k);
                    }
                    q.execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
            Ok(purged)
        })
    }
}

/// Settings of the retention job.
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// How long a finished transaction is kept; zero keeps everything.
    pub keep: Duration,
    /// Transactions deleted per database transaction.
    pub batch: i64,
    /// Pause between passes when nothing (more) is due.
    pub interval: Duration,
}

/// Deletes what finished more than `keep` ago, a batch at a time, until `shutdown` turns
/// true. A full batch is followed by a short pause, so the job never competes with the hot
/// path for long.
pub async fn run(
    store: Store,
    clock: Clock,
    settings: RetentionSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    if settings.keep.is_zero() {
        return;
    }
    let keep_ms = i64::try_from(settings.keep.as_millis()).unwrap_or(i64::MAX / 4);
    loop {
        let pause = match store
            .purge_finished(clock.now_ms().saturating_sub(keep_ms), settings.batch)
            .await
        {
            Ok(p) if p.transactions >= u64::try_from(settings.batch).unwrap_or(u64::MAX) => {
                info!(
                    transactions = p.transactions,
                    branches = p.branches,
                    messages = p.messages,
                    "retention deleted finished transactions; more are due"
                );
                Duration::from_millis(50)
            }
            Ok(p) => {
                if p.transactions > 0 {
                    info!(
                        transactions = p.transactions,
                        branches = p.branches,
                        messages = p.messages,
                        "retention deleted finished transactions"
                    );
                }
                settings.interval
            }
            Err(e) => {
                warn!(error = %crate::telemetry::error_chain(&e), "retention pass failed");
                settings.interval
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return,
        }
    }
}
