//! Claiming due work: transactions whose next attempt is due, or whose owner died.
//!
//! A claim is one conditional UPDATE that writes this instance's id, a fresh fencing token
//! and a lease expiry on a batch of due, unleased transactions; a transaction whose owner
//! died becomes claimable again once its lease runs out. Every later write made while
//! driving a claimed transaction goes through the batched writer and presents the token.
//!
//! A claimed row that cannot be read is set aside on its own (never due again, its reason in
//! `last_error`, counted by [`Store::set_aside_count`]) so that it never holds back the
//! others of its claim.

use sqlx::Row;
use tracing::warn;

use super::connect::Dialect;
use super::{rows, Result, Store, GLOBAL_COLUMNS};
use crate::txn::{BranchOp, GlobalTxn, NEVER};

/// A transaction this instance holds the lease of, with its branch operations: what the
/// driver may drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The transaction (its lease fields are this instance's).
    pub txn: GlobalTxn,
    /// Its branch operations, in registration order.
    pub branches: Vec<BranchOp>,
}

impl Store {
    /// Transactions this store set aside as unreadable since it was opened.
    pub fn set_aside_count(&self) -> u64 {
        self.set_aside.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Hands back every lease `owner` holds (on transactions, sharding keys and keyless
    /// outbox messages), so
    /// that another instance takes the work over at once instead of when the leases run out.
    /// A round of `owner` still running is fenced out: its next write finds its lease gone.
    /// Returns how many transactions, and how many keys and keyless messages, were handed
    /// back.
    ///
    /// # Errors
    /// A database error.
    pub async fn release_leases(&self, owner: &str, now: i64) -> Result<(u64, u64)> {
        let txns = "UPDATE trans_global SET owner = '', lease_token = '', lease_expire = 0, \
                    next_cron_time = ? WHERE owner = ? AND lease_expire > ? \
                    AND status IN ('prepared', 'submitted', 'aborting')";
        // The dispatcher's claims are `OWNER/TOKEN`.
        let mine = super::like_prefix(&format!("{owner}/"));
        let messages = "UPDATE outbox SET owner = '', lease_expire = 0 \
                        WHERE owner LIKE ? ESCAPE '!' AND status = 'pending' AND sharding_key = ''";
        let keys = "UPDATE outbox_key_seq SET owner = '', lease_expire = 0, next_due = 0, \
                    wake = wake + 1 WHERE owner LIKE ? ESCAPE '!'";
        on_writer!(self, pool => {
            let t = sqlx::query(txns).bind(now).bind(owner).bind(now).execute(pool).await?.rows_affected();
            let k = sqlx::query(keys).bind(&mine).execute(pool).await?.rows_affected();
            let m = sqlx::query(messages).bind(&mine).execute(pool).await?.rows_affected();
            Ok((t, k + m))
        })
    }

    /// Claims up to `limit` transactions that are due at `now` and not leased by a live
    /// instance, and returns them with their branch operations. Each gets `owner`, `token`
    /// and a lease until `lease_expire`, and is due again then, in case this instance dies.
    /// Rows that cannot be read are set aside instead of returned.
    ///
    /// # Errors
    /// A database error.
    pub async fn claim_due(
        &self,
        owner: &str,
        token: &str,
        now: i64,
        lease_expire: i64,
        limit: i64,
    ) -> Result<Vec<Claimed>> {
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
        let set_aside =
            "UPDATE trans_global SET next_cron_time = ?, owner = '', lease_token = '', \
                         lease_expire = 0, last_error = ? WHERE id = ? AND lease_token = ?";
        let txns: Vec<GlobalTxn> = on_writer!(self, pool => {
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
            let mut txns = Vec::with_capacity(rows.len());
            for row in &rows {
                match rows::decode_global(row, rows::Reading::Strict) {
                    Ok(t) => txns.push(t),
                    Err(e) => {
                        // Set it aside on its own: never due again, lease given up, the
                        // reason shown to operators. The others go on.
                        let id: i64 = row.try_get("id")?;
                        let gid: String = row.try_get_unchecked("gid").unwrap_or_default();
                        let mut reason = format!("{}{e}", rows::UNREADABLE);
                        super::truncate_utf8(&mut reason, 2000);
                        warn!(gid = %gid, error = %e, "a stored transaction is unreadable; it is set aside and never driven");
                        sqlx::query(set_aside)
                            .bind(NEVER)
                            .bind(&reason)
                            .bind(id)
                            .bind(token)
                            .execute(pool)
                            .await?;
                        self.set_aside.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            Ok(txns)
        })?;
        let gids: Vec<&str> = txns.iter().map(|t| t.gid.as_str()).collect();
        let mut branches = self.find_branches_of(&gids).await?;
        Ok(txns
            .into_iter()
            .map(|txn| {
                let (mine, rest): (Vec<BranchOp>, Vec<BranchOp>) =
                    branches.drain(..).partition(|b| b.gid == txn.gid);
                branches = rest;
                Claimed {
                    txn,
                    branches: mine,
                }
            })
            .collect())
    }
}
