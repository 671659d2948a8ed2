//! Orchestration: where every transition is carried out.
//!
//! The API handlers and the driver both come here; nothing else changes a transaction. Each
//! method is one transition, done the same way: **read** the transaction under lock and
//! **decide** with the pure transition of [`crate::txn`] (both inside the store's batched
//! writer, so the decision is made against the state it is written over), **write** the
//! change in the batch's database transaction, and only once it is durable **notify**: answer
//! the caller with the state after the change (so phase 2 runs from memory), wake the
//! dispatcher when messages were committed or released, count finished transactions.
//!
//! Module arrows point one way: api → apply → store, driver → apply → store.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::clock::Clock;
use crate::store::{Applied, Claimed, Result, Store};
use crate::telemetry::Metrics;
use crate::txn::change::RetryNote;
use crate::txn::check_back::CheckBack;
use crate::txn::lease::RoundLeft;
use crate::txn::{self, Current, GlobalStatus, GlobalTxn, Lease, NewBranch, Op, TransType};

/// A new fencing token.
pub fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Carries out transitions: read, decide, write, notify.
#[derive(Clone)]
pub struct Orchestrator {
    store: Store,
    clock: Clock,
    instance_id: Arc<str>,
    lease_ms: i64,
    metrics: Arc<Metrics>,
    dispatch: Arc<Notify>,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

fn claimed(current: Current) -> Option<Claimed> {
    current.txn.map(|txn| Claimed {
        txn,
        branches: current.branches,
    })
}

impl Orchestrator {
    /// An orchestrator writing through `store` for the instance `instance_id`, whose leases
    /// last `lease_ms`; `dispatch` wakes the delivery dispatcher.
    pub fn new(
        store: Store,
        clock: Clock,
        instance_id: Arc<str>,
        lease_ms: i64,
        metrics: Arc<Metrics>,
        dispatch: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            clock,
            instance_id,
            lease_ms,
            metrics,
            dispatch,
        }
    }

    /// The clock transitions are timed by.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The store written through.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// This instance's id in leases.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// How long a lease lasts, ms.
    pub fn lease_ms(&self) -> i64 {
        self.lease_ms
    }

    fn new_lease(&self, now: i64) -> Lease {
        Lease {
            owner: self.instance_id.to_string(),
            token: new_token(),
            expire: now.saturating_add(self.lease_ms),
        }
    }

    fn finished(&self, applied: &Applied) {
        if let Some(t) = &applied.current.txn {
            if !applied.duplicate && t.status.is_final() {
                self.metrics.transaction_finished(t.status);
            }
        }
    }

    /// `prepare`: opens `txn` (built with [`GlobalTxn::new`]) with the steps it carries.
    ///
    /// # Errors
    /// [`crate::store::StoreError::Txn`] for an illegal prepare; a database error.
    pub async fn prepare(&self, txn: GlobalTxn, steps: Vec<NewBranch>) -> Result<Applied> {
        let gid = txn.gid.clone();
        self.store
            .write(&gid, move |c| txn::prepare::prepare(c, &txn, &steps))
            .await
    }

    /// `registerBranch`: adds branch operations to a prepared transaction.
    ///
    /// # Errors
    /// [`crate::store::StoreError::Txn`] for an unknown or no longer prepared transaction; a
    /// database error.
    pub async fn register(
        &self,
        gid: &str,
        trans_type: TransType,
        branches: Vec<NewBranch>,
    ) -> Result<Applied> {
        let now = self.clock.now_ms();
        self.store
            .write(gid, move |c| {
                txn::register::register(c, trans_type, &branches, now)
            })
            .await
    }

    /// `submit`: commits the transaction (creating `txn` if it was never prepared) with the
    /// steps it carries, taking its lease for this instance. Returns what phase 2 must drive,
    /// or `None` if it was already submitted.
    ///
    /// # Errors
    /// [`crate::store::StoreError::Txn`] for an illegal submit; a database error.
    pub async fn submit(&self, txn: GlobalTxn, carried: Vec<NewBranch>) -> Result<Option<Claimed>> {
        let now = self.clock.now_ms();
        let lease = self.new_lease(now);
        let gid = txn.gid.clone();
        let applied = self
            .store
            .write(&gid, move |c| {
                txn::submit::submit(c, &txn, &carried, &lease, now)
            })
            .await?;
        if applied.duplicate {
            return Ok(None);
        }
        self.dispatch.notify_one();
        Ok(claimed(applied.current))
    }

    /// `abort`: rolls a prepared transaction back with `reason`, taking its lease for this
    /// instance. Returns what phase 2 must drive, or `None` if it was already rolling back.
    ///
    /// # Errors
    /// [`crate::store::StoreError::Txn`] for an illegal abort; a database error.
    pub async fn abort(&self, gid: &str, reason: String) -> Result<Option<Claimed>> {
        let now = self.clock.now_ms();
        let lease = self.new_lease(now);
        let applied = self
            .store
            .write(gid, move |c| txn::abort::abort(c, &reason, &lease, now))
            .await?;
        Ok(if applied.duplicate {
            None
        } else {
            claimed(applied.current)
        })
    }

    /// `forceStop`: an operator ends an unfinished transaction as failed.
    ///
    /// # Errors
    /// [`crate::store::StoreError::Txn`] for an unknown or succeeded transaction; a database
    /// error.
    pub async fn force_stop(&self, gid: &str) -> Result<Applied> {
        let now = self.clock.now_ms();
        let applied = self
            .store
            .write(gid, move |c| txn::force_stop::force_stop(c, now))
            .await?;
        self.finished(&applied);
        Ok(applied)
    }

    /// A prepared transaction this instance claimed timed out: roll it back with `reason`,
    /// keeping the lease to cancel its branches. Returns the transaction as it is now.
    ///
    /// # Errors
    /// A lost lease; a database error.
    pub async fn time_out(&self, c: &Claimed, reason: String) -> Result<Claimed> {
        let now = self.clock.now_ms();
        let token = c.txn.lease_token.clone();
        let applied = self
            .store
            .write(&c.txn.gid, move |cur| {
                txn::timeout::time_out(cur, &token, &reason, now)
            })
            .await?;
        Ok(claimed(applied.current).unwrap_or_else(|| c.clone()))
    }

    /// A prepared msg's check-back answered `answer`: a commit submits it (this instance
    /// keeps the lease to deliver it), a rollback fails it. Returns the transaction as it
    /// is now.
    ///
    /// # Errors
    /// A lost lease; a database error.
    pub async fn check_back(&self, c: &Claimed, answer: CheckBack) -> Result<Claimed> {
        let now = self.clock.now_ms();
        let token = c.txn.lease_token.clone();
        let applied = self
            .store
            .write(&c.txn.gid, move |cur| {
                txn::check_back::decide(cur, &token, &answer, now)
            })
            .await?;
        self.finished(&applied);
        if applied.current.txn.as_ref().map(|t| t.status) == Some(GlobalStatus::Submitted) {
            self.dispatch.notify_one();
        }
        Ok(claimed(applied.current).unwrap_or_else(|| c.clone()))
    }

    /// Phase 2 of a claimed transaction completed: the operations in `done` succeeded and
    /// the transaction reaches its end, in one write. Returns its final status.
    ///
    /// # Errors
    /// A lost lease; a database error.
    pub async fn finish(&self, c: &Claimed, done: Vec<(String, Op)>) -> Result<GlobalStatus> {
        let now = self.clock.now_ms();
        let token = c.txn.lease_token.clone();
        let applied = self
            .store
            .write(&c.txn.gid, move |cur| {
                txn::finish::finish(cur, &token, done.clone(), now)
            })
            .await?;
        self.finished(&applied);
        Ok(applied
            .current
            .txn
            .map(|t| t.status)
            .unwrap_or(c.txn.status))
    }

    /// A round on a claimed transaction ended without finishing: record what succeeded and
    /// when to try again, and give the lease up.
    ///
    /// # Errors
    /// A lost lease; a database error.
    pub async fn schedule_retry(
        &self,
        c: &Claimed,
        done: Vec<(String, Op)>,
        release_held: bool,
        next_cron_time: i64,
        retry: RetryNote,
    ) -> Result<()> {
        let now = self.clock.now_ms();
        let token = c.txn.lease_token.clone();
        let left = RoundLeft {
            done,
            release_held,
            next_cron_time,
            retry,
        };
        self.store
            .write(&c.txn.gid, move |cur| {
                txn::lease::schedule_retry(cur, &token, left.clone(), now)
            })
            .await?;
        if release_held {
            self.dispatch.notify_one();
        }
        Ok(())
    }

    /// Gives up the lease of a claimed transaction, due again at `next_cron_time`.
    ///
    /// # Errors
    /// A lost lease; a database error.
    pub async fn release(&self, c: &Claimed, next_cron_time: i64) -> Result<()> {
        let now = self.clock.now_ms();
        let token = c.txn.lease_token.clone();
        self.store
            .write(&c.txn.gid, move |cur| {
                txn::lease::release(cur, &token, next_cron_time, now)
            })
            .await?;
        Ok(())
    }

    /// Extends the lease of a claimed transaction until `expire`.
    ///
    /// # Errors
    /// A lost lease; a database error.
    pub async fn renew(&self, c: &Claimed, expire: i64) -> Result<()> {
        let now = self.clock.now_ms();
        let token = c.txn.lease_token.clone();
        self.store
            .write(&c.txn.gid, move |cur| {
                txn::lease::renew(cur, &token, expire, now)
            })
            .await?;
        Ok(())
    }
}
