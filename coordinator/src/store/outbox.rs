//! The outbox: messages to deliver to brokers once their transaction committed.
//!
//! A message enters the outbox in the database transaction that commits it (a msg's submit
//! or check-back, a TCC's submit), and takes the next sequence number of its sharding key
//! there, under that key's row lock: for one key, sequence order is commit order. A TCC's
//! messages wait as `held` until every confirm succeeded. The dispatcher claims, per key, a
//! run starting at the lowest sequence not yet sent and stopping before anything it may not
//! send yet, so a message never overtakes an earlier one of its key, while keys proceed
//! independently. It leases the key (its `outbox_key_seq` row), not the messages, until it
//! gives the key back. Acknowledgements are recorded by the batched writer (see
//! [`crate::txn::delivered`]), fenced by that lease.

use std::collections::{BTreeMap, HashMap};

use sqlx::Row;

use super::{marks, Result, Store};
use crate::txn::NEVER;

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
    /// Of those, permanent refusals of the message itself.
    pub refusals: i64,
    /// Who holds it.
    pub owner: String,
    /// The W3C `traceparent` of the request that created its transaction (as stored; the
    /// dispatcher makes it its publish's own span before handing it to the sink); empty:
    /// none.
    pub traceparent: String,
}

/// An outbox message as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OutboxEntry {
    /// Row id.
    pub id: i64,
    /// Transaction.
    pub gid: String,
    /// Its step.
    pub branch_id: String,
    /// Topic.
    pub topic: String,
    /// Sharding key, empty for none.
    pub sharding_key: String,
    /// Sequence within the key.
    pub seq: Option<i64>,
    /// `held`, `pending`, `sent`, `dropped` or `dead`.
    pub status: String,
    /// Failed attempts.
    pub attempts: i64,
    /// Of those, refusals of the message itself.
    pub refusals: i64,
    /// Next attempt, ms since the epoch.
    pub next_attempt_time: i64,
    /// The last delivery error.
    pub last_error: String,
}

/// One sharding key's undelivered messages, as operators see them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyBacklog {
    /// Topic.
    pub topic: String,
    /// Sharding key, empty for none.
    pub sharding_key: String,
    /// Messages held, pending or dead.
    pub unsent: i64,
    /// Creation time of the oldest, ms.
    pub oldest_create_time: i64,
    /// Of those, dead letters (they block nothing, but wait for an operator).
    pub dead: i64,
}

/// How a delivery failed, as [`Store::outbox_retry`] records it.
#[derive(Debug, Clone)]
pub struct Failed<'a> {
    /// When to try again.
    pub next_attempt_time: i64,
    /// What the broker or client said.
    pub error: &'a str,
    /// The broker refused the message itself.
    pub refused: bool,
    /// Set the message aside as a dead letter.
    pub dead: bool,
}

/// An unsent message of a key, as a claim reads it.
#[derive(Debug, Clone)]
struct Unsent {
    id: i64,
    seq: i64,
    topic: String,
    /// Pending (not held).
    pending: bool,
    /// Next attempt time, ms.
    due: i64,
}

/// What a claim does with a key it leased.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyPlan {
    /// Deliver these messages: the key's run from its first unsent message. `complete`: the
    /// run holds every unsent message of the key.
    Claim { ids: Vec<i64>, complete: bool },
    /// Nothing to send now: give the key back, to look at it again at this time ([`NEVER`]
    /// to wait for a wake).
    Sleep(i64),
}

impl KeyPlan {
    /// Decides from the key's unsent messages, in sequence order.
    fn of(unsent: &[Unsent], now: i64, per_key: i64) -> Self {
        let Some(head) = unsent.first() else {
            return Self::Sleep(NEVER);
        };
        if !head.pending {
            // Held: its transaction's release (or drop) wakes the key.
            return Self::Sleep(NEVER);
        }
        if head.due > now {
            return Self::Sleep(head.due);
        }
        let limit = usize::try_from(per_key.max(1)).unwrap_or(1);
        let ids: Vec<i64> = unsent
            .iter()
            .enumerate()
            .take_while(|(i, m)| {
                m.seq == head.seq + *i as i64 && m.topic == head.topic && m.pending && m.due <= now
            })
            .take(limit)
            .map(|(_, m)| m.id)
            .collect();
        Self::Claim {
            complete: ids.len() == unsent.len(),
            ids,
        }
    }
}

/// A sharding key a claim leased, as the dispatcher gives it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedKey {
    /// The key.
    pub sharding_key: String,
    /// Its wake count when it was leased: a change since then (a message committed behind
    /// the run, a redrive) keeps it from going to sleep.
    pub wake: i64,
    /// The run claimed holds every message the key had unsent: once it is delivered, the key
    /// has nothing left until a change wakes it.
    pub complete: bool,
}

/// What one claim holds: messages to publish (each key's in sequence order) and the keys
/// it leased for them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxClaim {
    /// The messages, each carrying the claim as its `owner`.
    pub rows: Vec<OutboxRow>,
    /// The keys leased, each until the claim's lease runs out or it is given back.
    pub keys: Vec<ClaimedKey>,
}

/// A leased key given back: due at `next_due` if no change woke it since it was leased
/// (`wake`), at once otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRelease<'a> {
    /// The key.
    pub sharding_key: &'a str,
    /// Its wake count when it was leased.
    pub wake: i64,
    /// When to look at it again, ms ([`NEVER`]: when a change wakes it).
    pub next_due: i64,
}

/// Gives back `n` keys leased by a claim, due at a time if no wake came since they were
/// leased: binds the time, the owner, the `n` keys (for the primary key's range), then each
/// key with its wake count.
fn release_keys_sql(n: usize) -> String {
    let pairs = vec!["(?, ?)"; n].join(", ");
    format!(
        "UPDATE outbox_key_seq SET owner = '', lease_expire = 0, next_due = ? WHERE owner = ? \
         AND sharding_key IN ({}) AND (sharding_key, wake) IN ({pairs})",
        marks(n)
    )
}

/// Gives back keys leased by a claim, due at once: binds the owner, then the `n` keys.
fn wake_keys_sql(n: usize) -> String {
    format!(
        "UPDATE outbox_key_seq SET owner = '', lease_expire = 0, next_due = 0, wake = wake + 1 \
         WHERE owner = ? AND sharding_key IN ({})",
        marks(n)
    )
}

const OUTBOX_COLUMNS: &str =
    "id, gid, branch_id, topic, tag, sharding_key, seq, message_id, body, attempts, refusals, owner, \
     traceparent";

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
        refusals: row.try_get_unchecked("refusals")?,
        owner: row.try_get_unchecked("owner")?,
        traceparent: row.try_get_unchecked("traceparent")?,
    })
}

impl Store {
    /// Claims what may be delivered now, for up to `max_keys` sharding keys: each key's run of
    /// messages from its lowest not yet sent (at most `per_key` of them, one topic, pending,
    /// due and with consecutive sequence numbers, so that nothing of the key is skipped),
    /// plus up to `max_keys` due messages without a key. Returns the rows claimed for `owner`
    /// (unique to this claim), each key's in sequence order, and the keys leased.
    ///
    /// A claim leases keys, not messages: one conditional `UPDATE` of the keys' rows
    /// (`outbox_key_seq`) makes `owner` the only one to publish a key until `lease_expire`
    /// or until it gives the key back ([`Store::outbox_release_keys`]); the messages' rows
    /// are not written until they are acknowledged. A message without a key is leased on
    /// its own row. Only keys that are due are read (`next_due`, see the migration that
    /// added it): a claim costs what it claims, whatever the backlog. A key found with
    /// nothing to send now is given back at once, asleep until the time it may send
    /// (never, for a key whose next message is held or that has none) unless it was woken
    /// since it was leased.
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
    ) -> Result<OutboxClaim> {
        let due = "SELECT sharding_key, lease_expire FROM outbox_key_seq WHERE next_due <= ? \
                   ORDER BY next_due LIMIT ?";
        let keyless = "SELECT id FROM outbox WHERE status = 'pending' AND sharding_key = '' \
                       AND next_attempt_time <= ? AND lease_expire <= ? ORDER BY id LIMIT ?";
        // 1. Lease the due keys nobody holds; a key held by another claim is looked at
        // again when that lease runs out (its holder gives it back earlier, waking it).
        let mut keys: Vec<(String, i64)> = Vec::new();
        let mut held: Vec<(String, i64)> = Vec::new();
        on_writer!(self, pool => {
            keys.clear();
            held.clear();
            let mut free: Vec<String> = Vec::new();
            for r in sqlx::query(due).bind(now).bind(max_keys).fetch_all(pool).await? {
                let key: String = r.try_get_unchecked(0)?;
                let until: i64 = r.try_get(1)?;
                if until > now {
                    held.push((key, until));
                } else {
                    free.push(key);
                }
            }
            if !free.is_empty() {
                let lease = format!(
                    "UPDATE outbox_key_seq SET owner = ?, lease_expire = ?, next_due = ? \
                     WHERE sharding_key IN ({}) AND lease_expire <= ?",
                    marks(free.len())
                );
                let mut q = sqlx::query(&lease).bind(owner).bind(lease_expire).bind(lease_expire);
                for k in &free {
                    q = q.bind(k);
                }
                q.bind(now).execute(pool).await?;
                let mine = format!(
                    "SELECT sharding_key, wake FROM outbox_key_seq WHERE sharding_key IN ({}) \
                     AND owner = ? ORDER BY sharding_key",
                    marks(free.len())
                );
                let mut q = sqlx::query(&mine);
                for k in &free {
                    q = q.bind(k);
                }
                for r in q.bind(owner).fetch_all(pool).await? {
                    keys.push((r.try_get_unchecked(0)?, r.try_get(1)?));
                }
            }
            // Keys held by others sleep until their lease runs out (their holder wakes them
            // when it gives them back earlier): one statement per lease expiry.
            let mut by_expiry: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
            for (key, until) in &held {
                by_expiry.entry(*until).or_default().push(key);
            }
            for (until, group) in &by_expiry {
                let sleep = format!(
                    "UPDATE outbox_key_seq SET next_due = ? WHERE sharding_key IN ({}) \
                     AND lease_expire = ?",
                    marks(group.len())
                );
                let mut q = sqlx::query(&sleep).bind(*until);
                for k in group {
                    q = q.bind(*k);
                }
                q.bind(*until).execute(pool).await?;
            }
            Ok(())
        })?;

        // 2. Read the leased keys' unsent messages and decide each key's run.
        let mut plans: Vec<(ClaimedKey, KeyPlan)> = Vec::with_capacity(keys.len());
        let mut ids: Vec<i64> = Vec::new();
        on_writer!(self, pool => {
            plans.clear();
            ids.clear();
            if !keys.is_empty() {
                let unsent = format!(
                    "SELECT id, sharding_key, seq, topic, status, next_attempt_time \
                     FROM outbox{} WHERE status IN ('held', 'pending') AND sharding_key IN ({}) \
                     ORDER BY sharding_key, seq",
                    self.dialect().use_index("idx_unsent"),
                    marks(keys.len())
                );
                let mut q = sqlx::query(&unsent);
                for (k, _) in &keys {
                    q = q.bind(k);
                }
                let mut by_key: HashMap<String, Vec<Unsent>> = HashMap::new();
                for r in q.fetch_all(pool).await? {
                    let key: String = r.try_get_unchecked(1)?;
                    by_key.entry(key).or_default().push(Unsent {
                        id: r.try_get(0)?,
                        seq: r.try_get_unchecked::<Option<i64>, _>(2)?.unwrap_or(0),
                        topic: r.try_get_unchecked(3)?,
                        pending: r.try_get_unchecked::<String, _>(4)? == OutboxState::Pending.as_str(),
                        due: r.try_get(5)?,
                    });
                }
                for (key, wake) in &keys {
                    let rows = by_key.remove(key).unwrap_or_default();
                    let plan = KeyPlan::of(&rows, now, per_key);
                    let complete = match &plan {
                        KeyPlan::Claim { ids: run, complete } => {
                            ids.extend(run);
                            *complete
                        }
                        KeyPlan::Sleep(_) => true,
                    };
                    let key = ClaimedKey {
                        sharding_key: key.clone(),
                        wake: *wake,
                        complete,
                    };
                    plans.push((key, plan));
                }
            }
            // Messages without a key are leased one by one.
            let mut loose: Vec<i64> = Vec::new();
            for r in sqlx::query(keyless).bind(now).bind(now).bind(max_keys).fetch_all(pool).await? {
                loose.push(r.try_get::<i64, _>(0)?);
            }
            if !loose.is_empty() {
                let claim = format!(
                    "UPDATE outbox SET owner = ?, lease_expire = ? WHERE id IN ({}) \
                     AND status = 'pending' AND sharding_key = '' AND lease_expire <= ?",
                    marks(loose.len())
                );
                let mut q = sqlx::query(&claim).bind(owner).bind(lease_expire);
                for id in &loose {
                    q = q.bind(*id);
                }
                q.bind(now).execute(pool).await?;
                ids.extend(loose);
            }
            Ok(())
        })?;

        // 3. Fetch what was claimed (the keys' runs, and the keyless messages this claim
        // won), and give back the keys with nothing to send.
        let sleeping: Vec<KeyRelease<'_>> = plans
            .iter()
            .filter_map(|(k, p)| match p {
                KeyPlan::Sleep(until) => Some(KeyRelease {
                    sharding_key: &k.sharding_key,
                    wake: k.wake,
                    next_due: *until,
                }),
                KeyPlan::Claim { .. } => None,
            })
            .collect();
        self.outbox_release_keys(owner, &sleeping).await?;
        let mut rows = Vec::new();
        if !ids.is_empty() {
            let fetch = format!(
                "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id IN ({}) \
                 AND (sharding_key <> '' OR owner = ?) ORDER BY sharding_key, seq, id",
                marks(ids.len())
            );
            rows = on_writer!(self, pool => {
                let mut q = sqlx::query(&fetch);
                for id in &ids {
                    q = q.bind(*id);
                }
                let found = q.bind(owner).fetch_all(pool).await?;
                found.iter().map(decode).collect::<Result<Vec<_>>>()
            })?;
            for r in &mut rows {
                // A keyed message is this claim's through its key's lease.
                r.owner = owner.to_owned();
            }
        }
        let keys = plans
            .into_iter()
            .filter(|(_, p)| matches!(p, KeyPlan::Claim { .. }))
            .map(|(k, _)| k)
            .collect();
        Ok(OutboxClaim { rows, keys })
    }

    /// Gives back keys `owner` leased: each is due again at its `next_due` if no change woke
    /// it since it was leased, at once otherwise. A key no longer `owner`'s (its lease ran
    /// out and another claim took it) is left alone.
    ///
    /// # Errors
    /// A database error.
    pub async fn outbox_release_keys(&self, owner: &str, keys: &[KeyRelease<'_>]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        // Grouped by when they are due: one statement per time, not per key (most sleep until
        // a wake, or are due at once).
        let mut by_time: BTreeMap<i64, Vec<&KeyRelease<'_>>> = BTreeMap::new();
        for k in keys {
            by_time.entry(k.next_due).or_default().push(k);
        }
        let all: Vec<&str> = keys.iter().map(|k| k.sharding_key).collect();
        on_writer!(self, pool => {
            for (until, group) in &by_time {
                if *until == 0 {
                    continue;
                }
                let sql = release_keys_sql(group.len());
                let mut q = sqlx::query(&sql).bind(*until).bind(owner);
                for k in group {
                    q = q.bind(k.sharding_key);
                }
                for k in group {
                    q = q.bind(k.sharding_key).bind(k.wake);
                }
                q.execute(pool).await?;
            }
            // What is still held: woken since, or due at once.
            let sql = wake_keys_sql(all.len());
            let mut q = sqlx::query(&sql).bind(owner);
            for k in &all {
                q = q.bind(*k);
            }
            q.execute(pool).await?;
            Ok(())
        })
    }

    /// Gives claimed messages back untried: a message without a key is free again, and the
    /// key of a keyed one is given back, due at once.
    ///
    /// # Errors
    /// A database error.
    pub async fn outbox_release(&self, owner: &str, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let loose = format!(
            "UPDATE outbox SET owner = '', lease_expire = 0 WHERE owner = ? AND id IN ({})",
            marks(ids.len())
        );
        let wake = format!(
            "UPDATE outbox_key_seq SET owner = '', lease_expire = 0, next_due = 0, wake = wake + 1 \
             WHERE owner = ? AND sharding_key IN (SELECT sharding_key FROM outbox WHERE id IN ({}))",
            marks(ids.len())
        );
        on_writer!(self, pool => {
            let mut q = sqlx::query(&wake).bind(owner);
            for id in ids {
                q = q.bind(*id);
            }
            q.execute(pool).await?;
            let mut q = sqlx::query(&loose).bind(owner);
            for id in ids {
                q = q.bind(*id);
            }
            q.execute(pool).await?;
            Ok(())
        })
    }

    /// Records a failed delivery: the message is due again at `next_attempt_time`, or, when
    /// `dead`, set aside as a dead letter and its key's next message may go at once. A keyed
    /// message's key is given back, due when its head may go. The error is shown on the
    /// transaction. Returns whether the message was still this claim's.
    ///
    /// # Errors
    /// A database error.
    pub async fn outbox_retry(&self, row: &OutboxRow, failed: &Failed<'_>) -> Result<bool> {
        let keyed = !row.sharding_key.is_empty();
        // The claim holds a keyed message through its key's lease, a keyless one itself.
        let sql = format!(
            "UPDATE outbox SET attempts = attempts + 1, refusals = refusals + ?, \
             next_attempt_time = ?, last_error = ?, status = ?, owner = '', lease_expire = 0 \
             WHERE id = ? AND {}",
            if keyed {
                "sharding_key IN (SELECT sharding_key FROM outbox_key_seq WHERE sharding_key = ? AND owner = ?)"
            } else {
                "sharding_key = ? AND owner = ?"
            }
        );
        let key_due = "UPDATE outbox_key_seq SET owner = '', lease_expire = 0, next_due = ?, \
                       wake = wake + 1 WHERE sharding_key = ? AND owner = ?";
        // Operators see the error on the transaction too (`query`).
        let visible =
            "UPDATE trans_global SET last_error = ? WHERE gid = ? AND status = 'submitted'";
        let mut error = failed.error.to_owned();
        super::truncate_utf8(&mut error, 1900);
        let error = &error;
        let shown = &if failed.dead {
            format!(
                "delivery of step {}: dead-lettered after {} refusals by the broker (redrive it with POST /api/admin/redrive once fixed): {error}",
                row.branch_id,
                row.refusals + 1
            )
        } else {
            format!("delivery of step {}: {error}", row.branch_id)
        };
        let status = if failed.dead {
            OutboxState::Dead
        } else {
            OutboxState::Pending
        };
        // A dead letter is out of its key's way: the next message may go now.
        let key_due_at = if failed.dead {
            0
        } else {
            failed.next_attempt_time
        };
        on_writer!(self, pool => {
            let n = sqlx::query(&sql)
                .bind(i64::from(failed.refused))
                .bind(failed.next_attempt_time)
                .bind(error)
                .bind(status.as_str())
                .bind(row.id)
                .bind(&row.sharding_key)
                .bind(&row.owner)
                .execute(pool)
                .await?
                .rows_affected();
            if n > 0 && keyed {
                sqlx::query(key_due)
                    .bind(key_due_at)
                    .bind(&row.sharding_key)
                    .bind(&row.owner)
                    .execute(pool)
                    .await?;
            }
            if n > 0 && !error.is_empty() {
                sqlx::query(visible).bind(shown).bind(&row.gid).execute(pool).await?;
            }
            Ok(n > 0)
        })
    }

    /// Puts a transaction's dead-lettered messages (all, or the one of `branch_id`) back to
    /// deliver now, with their refusals forgotten. Returns how many.
    ///
    /// # Errors
    /// A database error.
    pub async fn outbox_redrive(
        &self,
        gid: &str,
        branch_id: Option<&str>,
        now: i64,
    ) -> Result<u64> {
        self.on_dead_letters(
            gid,
            branch_id,
            now,
            "status = 'pending', refusals = 0, owner = '', lease_expire = 0",
            true,
        )
        .await
    }

    /// Discards a transaction's dead-lettered messages (all, or the one of `branch_id`):
    /// they will never be sent, and say so (`dropped`, "discarded by an operator"), so that
    /// retention may delete their transaction. Returns how many.
    ///
    /// # Errors
    /// A database error.
    pub async fn outbox_discard(
        &self,
        gid: &str,
        branch_id: Option<&str>,
        now: i64,
    ) -> Result<u64> {
        let set = format!(
            "status = 'dropped', last_error = {}",
            self.dialect()
                .concat("'discarded by an operator; '", "last_error")
        );
        self.on_dead_letters(gid, branch_id, now, &set, false).await
    }

    /// Sets `set` on a transaction's dead letters (all, or the one of `branch_id`), due at
    /// `now`; then, if `wake`, wakes their keys. Returns how many.
    async fn on_dead_letters(
        &self,
        gid: &str,
        branch_id: Option<&str>,
        now: i64,
        set: &str,
        wake: bool,
    ) -> Result<u64> {
        let which = if branch_id.is_some() {
            " AND branch_id = ?"
        } else {
            ""
        };
        let wake_sql = format!(
            "UPDATE outbox_key_seq SET next_due = 0, wake = wake + 1 WHERE sharding_key IN \
             (SELECT sharding_key FROM outbox WHERE gid = ?{which})"
        );
        let sql = format!(
            "UPDATE outbox SET {set}, next_attempt_time = ? WHERE gid = ? AND status = 'dead'{which}"
        );
        // The change first, then the wake: a dispatcher that read the key before it was
        // woken cannot put it back to sleep.
        on_writer!(self, pool => {
            let mut q = sqlx::query(&sql).bind(now).bind(gid);
            if let Some(b) = branch_id {
                q = q.bind(b);
            }
            let n = q.execute(pool).await?.rows_affected();
            if wake {
                let mut q = sqlx::query(&wake_sql).bind(gid);
                if let Some(b) = branch_id {
                    q = q.bind(b);
                }
                q.execute(pool).await?;
            }
            Ok(n)
        })
    }

    /// Outbox messages for operators, newest first: all, or those in `status`; at most
    /// `limit`.
    ///
    /// # Errors
    /// A database error.
    pub async fn outbox_list(
        &self,
        status: Option<OutboxState>,
        gid: Option<&str>,
        limit: i64,
    ) -> Result<Vec<OutboxEntry>> {
        let mut filter = String::from("WHERE 1 = 1");
        if status.is_some() {
            filter.push_str(" AND status = ?");
        }
        if gid.is_some() {
            filter.push_str(" AND gid = ?");
        }
        let sql = format!(
            "SELECT id, gid, branch_id, topic, sharding_key, seq, status, attempts, refusals, \
             next_attempt_time, last_error FROM outbox {filter} ORDER BY id DESC LIMIT ?"
        );
        on_pool!(self, pool => {
            let mut q = sqlx::query(&sql);
            if let Some(s) = status {
                q = q.bind(s.as_str());
            }
            if let Some(g) = gid {
                q = q.bind(g);
            }
            let rows = q.bind(limit).fetch_all(pool).await?;
            rows.iter()
                .map(|r| {
                    Ok(OutboxEntry {
                        id: r.try_get(0)?,
                        gid: r.try_get_unchecked(1)?,
                        branch_id: r.try_get_unchecked(2)?,
                        topic: r.try_get_unchecked(3)?,
                        sharding_key: r.try_get_unchecked(4)?,
                        seq: r.try_get_unchecked(5)?,
                        status: r.try_get_unchecked(6)?,
                        attempts: r.try_get(7)?,
                        refusals: r.try_get(8)?,
                        next_attempt_time: r.try_get(9)?,
                        last_error: r.try_get_unchecked(10)?,
                    })
                })
                .collect()
        })
    }

    /// Dead-lettered messages.
    ///
    /// # Errors
    /// A database error.
    pub async fn outbox_dead(&self) -> Result<i64> {
        let sql = "SELECT COUNT(*) FROM outbox WHERE status = 'dead'";
        on_writer!(self, pool => {
            Ok(sqlx::query(sql).fetch_one(pool).await?.try_get::<i64, _>(0)?)
        })
    }

    /// The keys with the most messages not yet acknowledged (held, pending or dead), per
    /// topic: how many, the oldest one's creation time (ms) and its status, most first; at
    /// most `limit` keys.
    ///
    /// # Errors
    /// A database error.
    pub async fn outbox_backlog_by_key(&self, limit: i64) -> Result<Vec<KeyBacklog>> {
        let sql = "SELECT topic, sharding_key, COUNT(*), MIN(create_time), \
                   COUNT(CASE WHEN status = 'dead' THEN 1 END) \
                   FROM outbox WHERE status IN ('held', 'pending', 'dead') \
                   GROUP BY topic, sharding_key ORDER BY COUNT(*) DESC, MIN(create_time) LIMIT ?";
        on_pool!(self, pool => {
            let rows = sqlx::query(sql).bind(limit).fetch_all(pool).await?;
            rows.iter()
                .map(|r| {
                    Ok(KeyBacklog {
                        topic: r.try_get_unchecked(0)?,
                        sharding_key: r.try_get_unchecked(1)?,
                        unsent: r.try_get(2)?,
                        oldest_create_time: r.try_get(3)?,
                        dead: r.try_get(4)?,
                    })
                })
                .collect()
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

    /// Committed messages waiting for their broker, per topic: how many, and when the oldest
    /// was committed (ms). Reads only unsent rows.
    ///
    /// # Errors
    /// A database error.
    pub async fn outbox_pending_by_topic(&self) -> Result<Vec<(String, i64, i64)>> {
        let sql = "SELECT topic, COUNT(*), MIN(create_time) FROM outbox \
                   WHERE status = 'pending' GROUP BY topic";
        on_pool!(self, pool => {
            let rows = sqlx::query(sql).fetch_all(pool).await?;
            rows.iter()
                .map(|r| Ok((r.try_get_unchecked(0)?, r.try_get(1)?, r.try_get(2)?)))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsent(id: i64, seq: i64, pending: bool) -> Unsent {
        Unsent {
            id,
            seq,
            topic: "T".into(),
            pending,
            due: 0,
        }
    }

    #[test]
    fn a_key_with_nothing_unsent_or_a_held_head_sleeps_until_woken() {
        assert_eq!(KeyPlan::of(&[], 10, 64), KeyPlan::Sleep(NEVER));
        let held = [unsent(1, 1, false), unsent(2, 2, true)];
        assert_eq!(KeyPlan::of(&held, 10, 64), KeyPlan::Sleep(NEVER));
    }

    #[test]
    fn a_key_whose_head_waits_sleeps_until_its_retry() {
        let mut head = unsent(1, 1, true);
        head.due = 50;
        assert_eq!(KeyPlan::of(&[head], 10, 64), KeyPlan::Sleep(50));
    }

    #[test]
    fn a_run_stops_at_a_gap_a_held_message_another_topic_or_the_limit() {
        let run = [unsent(1, 1, true), unsent(2, 2, true), unsent(3, 4, true)];
        let claim = |ids: Vec<i64>, complete: bool| KeyPlan::Claim { ids, complete };
        assert_eq!(KeyPlan::of(&run, 10, 64), claim(vec![1, 2], false));
        assert_eq!(KeyPlan::of(&run, 10, 1), claim(vec![1], false));
        assert_eq!(KeyPlan::of(&run[..2], 10, 64), claim(vec![1, 2], true));
        let held = [unsent(1, 1, true), unsent(2, 2, false), unsent(3, 3, true)];
        assert_eq!(KeyPlan::of(&held, 10, 64), claim(vec![1], false));
        let mut other = unsent(2, 2, true);
        other.topic = "U".into();
        assert_eq!(
            KeyPlan::of(&[unsent(1, 1, true), other], 10, 64),
            claim(vec![1], false)
        );
    }
}
