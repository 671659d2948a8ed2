//! What operators see besides the transactions themselves: each transaction's timeline of
//! unsettled rounds, and the coordinator instances sharing the database with what each
//! holds.

use sqlx::Row;

use super::{Result, Store};

/// A round that did not settle its transaction, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AttemptRow {
    /// When, ms.
    pub at: i64,
    /// Failed rounds in a row, this one included.
    pub round: i64,
    /// What went wrong (its beginning).
    pub error: String,
    /// When the next round was due, ms.
    pub next_retry: i64,
}

/// A coordinator instance, as it last reported itself, and the leases it holds now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Instance {
    /// Its id (the owner in leases).
    pub id: String,
    /// The address it serves its API on.
    pub address: String,
    /// Its version.
    pub version: String,
    /// When it started, ms.
    pub started_time: i64,
    /// When it last reported, ms.
    pub seen_time: i64,
    /// Transactions it holds the lease of.
    pub transactions: i64,
    /// What it is delivering: sharding keys it leased (each with its run of messages), and
    /// messages without a key.
    pub messages: i64,
}

/// How an instance describes itself in [`Store::heartbeat`].
#[derive(Debug, Clone)]
pub struct Heartbeat<'a> {
    /// Its id.
    pub id: &'a str,
    /// Its API address.
    pub address: &'a str,
    /// Its version.
    pub version: &'a str,
    /// When it started, ms.
    pub started_time: i64,
}

/// Instances not heard of for this long are forgotten, ms.
pub const FORGET_INSTANCE_MS: i64 = 24 * 3600 * 1000;

impl Store {
    /// The last `limit` unsettled rounds of `gid`, oldest first.
    ///
    /// # Errors
    /// A database error.
    pub async fn attempts(&self, gid: &str, limit: i64) -> Result<Vec<AttemptRow>> {
        let sql = "SELECT at_time, round, error, next_retry FROM trans_attempt \
                   WHERE gid = ? ORDER BY id DESC LIMIT ?";
        on_pool!(self, pool => {
            let rows = sqlx::query(sql).bind(gid).bind(limit).fetch_all(pool).await?;
            let mut out = rows
                .iter()
                .map(|r| {
                    Ok(AttemptRow {
                        at: r.try_get(0)?,
                        round: r.try_get(1)?,
                        error: r.try_get_unchecked(2)?,
                        next_retry: r.try_get(3)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            out.reverse();
            Ok(out)
        })
    }

    /// Records that the instance `me` is alive at `now` (ms), and forgets instances silent
    /// for [`FORGET_INSTANCE_MS`].
    ///
    /// # Errors
    /// A database error.
    pub async fn heartbeat(&self, me: &Heartbeat<'_>, now: i64) -> Result<()> {
        let update = "UPDATE settle_instance SET address = ?, version = ?, started_time = ?, \
                      seen_time = ? WHERE id = ?";
        let insert = "INSERT INTO settle_instance (id, address, version, started_time, seen_time) \
                      VALUES (?, ?, ?, ?, ?)";
        let forget = "DELETE FROM settle_instance WHERE seen_time < ?";
        on_writer!(self, pool => {
            let n = sqlx::query(update)
                .bind(me.address)
                .bind(me.version)
                .bind(me.started_time)
                .bind(now)
                .bind(me.id)
                .execute(pool)
                .await?
                .rows_affected();
            if n == 0 {
                let inserted = sqlx::query(insert)
                    .bind(me.id)
                    .bind(me.address)
                    .bind(me.version)
                    .bind(me.started_time)
                    .bind(now)
                    .execute(pool)
                    .await;
                // Another writer of the same id inserted first: it is alive, which is all
                // this row says.
                if let Err(e) = inserted {
                    if !super::batch::is_duplicate_key(&e) {
                        return Err(e.into());
                    }
                }
            }
            sqlx::query(forget).bind(now - FORGET_INSTANCE_MS).execute(pool).await?;
            Ok(())
        })
    }

    /// The instances that reported in the last [`FORGET_INSTANCE_MS`], most recently seen
    /// first, with the leases each holds at `now`. Leases of an instance that never reported
    /// (an older version) are listed under its id with an empty address.
    ///
    /// # Errors
    /// A database error.
    pub async fn instances(&self, now: i64) -> Result<Vec<Instance>> {
        let known = "SELECT id, address, version, started_time, seen_time FROM settle_instance";
        let txns = "SELECT owner, COUNT(*) FROM trans_global WHERE owner <> '' \
                    AND lease_expire > ? AND status IN ('prepared', 'submitted', 'aborting') \
                    GROUP BY owner";
        // The dispatcher's claims are `OWNER/TOKEN`: on sharding keys, and on messages
        // without one.
        let keys = "SELECT owner, COUNT(*) FROM outbox_key_seq WHERE owner <> '' \
                    AND lease_expire > ? GROUP BY owner";
        let messages = "SELECT owner, COUNT(*) FROM outbox WHERE owner <> '' \
                        AND lease_expire > ? AND status = 'pending' AND sharding_key = '' \
                        GROUP BY owner";
        on_pool!(self, pool => {
            let mut out: Vec<Instance> = sqlx::query(known)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| {
                    Ok(Instance {
                        id: r.try_get_unchecked(0)?,
                        address: r.try_get_unchecked(1)?,
                        version: r.try_get_unchecked(2)?,
                        started_time: r.try_get(3)?,
                        seen_time: r.try_get(4)?,
                        transactions: 0,
                        messages: 0,
                    })
                })
                .collect::<Result<_>>()?;
            for (sql, is_txn) in [(txns, true), (keys, false), (messages, false)] {
                for r in sqlx::query(sql).bind(now).fetch_all(pool).await? {
                    let owner: String = r.try_get_unchecked(0)?;
                    let n: i64 = r.try_get(1)?;
                    let id = owner.split('/').next().unwrap_or_default().to_owned();
                    let i = match out.iter().position(|i| i.id == id) {
                        Some(i) => i,
                        None => {
                            out.push(Instance {
                                id,
                                address: String::new(),
                                version: String::new(),
                                started_time: 0,
                                seen_time: 0,
                                transactions: 0,
                                messages: 0,
                            });
                            out.len() - 1
                        }
                    };
                    if is_txn {
                        out[i].transactions += n;
                    } else {
                        out[i].messages += n;
                    }
                }
            }
            out.sort_by(|a, b| b.seen_time.cmp(&a.seen_time).then(a.id.cmp(&b.id)));
            Ok(out)
        })
    }
}
