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

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{oneshot, Notify};

use crate::clock::Clock;
use crate::store::{Applied, Claimed, Result, Stamp, Store};
use crate::telemetry::Metrics;
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
    waiters: Arc<Waiters>,
}

/// Requests waiting for transactions to finish (`wait_result`), by gid.
type Waiters = std::sync::Mutex<HashMap<String, Vec<oneshot::Sender<GlobalStatus>>>>;

/// A request waiting for a transaction to finish: resolves with its final status when this
/// instance writes it. Dropped (the transaction finished elsewhere, or the wait ran out), it
/// leaves nothing behind.
pub struct Waiter {
    rx: oneshot::Receiver<GlobalStatus>,
    gid: String,
    waiters: Arc<Waiters>,
}

impl std::future::Future for Waiter {
    type Output = std::result::Result<GlobalStatus, oneshot::error::RecvError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx).poll(cx)
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.rx.close();
        let mut waiters = self
            .waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(list) = waiters.get_mut(&self.gid) {
            list.retain(|w| !w.is_closed());
            if list.is_empty() {
                waiters.remove(&self.gid);
            }
        }
    }
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
            waiters: Arc::default(),
        }
    }

    /// Resolves when this instance writes a final status for `gid` (a transaction finished by
    /// another instance is not seen: callers also look at the store now and then). Dropping
    /// the waiter forgets it.
    pub fn when_finished(&self, gid: &str) -> Waiter {
        let (tx, rx) = oneshot::channel();
        let mut waiters = self
            .waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let list = waiters.entry(gid.to_owned()).or_default();
        // Waiters that gave up are dropped here, so the list stays short.
        list.retain(|w| !w.is_closed());
        list.push(tx);
        Waiter {
            rx,
            gid: gid.to_owned(),
            waiters: self.waiters.clone(),
        }
    }

    /// How many gids have requests waiting for them to finish.
    pub fn waiting(&self) -> usize {
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// The clock transitions are timed by.
    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }

    /// Counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Wakes the delivery dispatcher (messages became deliverable outside a transition).
    pub fn wake_dispatcher(&self) {
        self.dispatch.notify_one();
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

    /// The lease a batch grants this instance (the batch's token, from the batch's time).
    fn lease(owner: &str, lease_ms: i64, stamp: &Stamp) -> Lease {
        Lease {
            owner: owner.to_owned(),
            token: stamp.token.clone(),
            expire: stamp.now.saturating_add(lease_ms),
        }
    }

    /// Wakes the dispatcher if the transaction has broker-bound steps (its write may have
    /// committed or released messages); a transaction without any leaves it asleep.
    fn wake_for(&self, current: &Current) {
        if current
            .branches
            .iter()
            .any(|b| txn::target::is_broker(&b.url))
        {
            self.dispatch.notify_one();
        }
    }

    fn finished(&self, applied: &Applied) {
        if let Some(t) = &applied.current.txn {
            if !applied.duplicate && t.status.is_final() {
                let now = self.clock.now_ms();
                self.metrics.transaction_finished(
                    t.trans_type.as_str(),
                    t.status,
                    now - t.create_time,
                    t.submit_time.map(|s| now - s),
                    t.retry_count + 1,
                );
            }
            if t.status.is_final() {
                let waiting = self
                    .waiters
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&t.gid);
                for w in waiting.into_iter().flatten() {
                    let _ = w.send(t.status);
                }
            }
        }
    }

    /// Writes a change decided under the lease `c` was claimed with: `decide` gets the
    /// current state, the lease token and the batch's time.
    async fn under_lease<F>(&self, c: &Claimed, decide: F) -> Result<Applied>
    where
        F: Fn(&Current, &str, i64) -> Result<txn::Decision<txn::Change>, txn::TxnError>
            + Send
            + Sync
            + 'static,
    {
        let token = c.txn.lease_token.clone();
        self.store
            .write(&c.txn.gid, move |cur, s| decide(cur, &token, s.now))
            .await
    }

    /// `prepare`: opens `txn` (built with [`GlobalTxn::new`]) with the steps it carries.
    ///
    /// # Errors
    /// [`crate::store::StoreError::Txn`] for an illegal prepare; a database error.
    pub async fn prepare(&self, txn: GlobalTxn, steps: Vec<NewBranch>) -> Result<Applied> {
        let gid = txn.gid.clone();
        self.store
            .write(&gid, move |c, _| txn::prepare::prepare(c, &txn, &steps))
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
        max_branches: usize,
    ) -> Result<Applied> {
        self.store
            .write(gid, move |c, s| {
                txn::register::register(c, trans_type, &branches, max_branches, s.now)
            })
            .await
    }

    /// `submit`: commits the transaction (creating `txn` if it was never prepared) with the
    /// steps it carries, taking its lease for this instance. Returns what phase 2 must drive,
    /// or `None` if it was already submitted or its phase 2 waits for a delay.
    ///
    /// # Errors
    /// [`crate::store::StoreError::Txn`] for an illegal submit; a database error.
    pub async fn submit(&self, txn: GlobalTxn, carried: Vec<NewBranch>) -> Result<Option<Claimed>> {
        let (owner, lease_ms) = (self.instance_id.clone(), self.lease_ms);
        let gid = txn.gid.clone();
        let applied = self
            .store
            .write(&gid, move |c, s| {
                let lease = Self::lease(&owner, lease_ms, s);
                txn::submit::submit(c, &txn, &carried, &lease, s.now)
            })
            .await?;
        if applied.duplicate {
            return Ok(None);
        }
        self.wake_for(&applied.current);
        if applied
            .current
            .txn
            .as_ref()
            .is_some_and(|t| t.lease_token.is_empty())
        {
            // Delayed: the scheduler takes it when it comes due.
            return Ok(None);
        }
        Ok(claimed(applied.current))
    }

    /// `abort`: rolls a prepared transaction back with `reason`, taking its lease for this
    /// instance. Returns what phase 2 must drive, or `None` if it was already rolling back.
    ///
    /// # Errors
    /// [`crate::store::StoreError::Txn`] for an illegal abort; a database error.
    pub async fn abort(&self, gid: &str, reason: String) -> Result<Option<Claimed>> {
        let (owner, lease_ms) = (self.instance_id.clone(), self.lease_ms);
        let applied = self
            .store
            .write(gid, move |c, s| {
                let lease = Self::lease(&owner, lease_ms, s);
                txn::abort::abort(c, &reason, &lease, s.now)
            })
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
        let applied = self
            .store
            .write(gid, |c, s| txn::force_stop::force_stop(c, s.now))
            .await?;
        self.finished(&applied);
        Ok(applied)
    }

    /// A transaction this instance drives turns to rolling back with `reason` (a prepared
    /// one timed out; a running saga cannot complete), recording what the round did (`done`
    /// succeeded, `failed` failed) and keeping the lease to undo its branches. Returns the
    /// transaction as it is now.
    ///
    /// # Errors
    /// A lost lease; a database error.
    pub async fn roll_back(
        &self,
        c: &Claimed,
        reason: String,
        done: Vec<(String, Op)>,
        failed: Vec<(String, Op)>,
    ) -> Result<Claimed> {
        let applied = self
            .under_lease(c, move |cur, token, now| {
                txn::roll_back::roll_back(cur, token, &reason, &done, &failed, now)
            })
            .await?;
        Ok(claimed(applied.current).unwrap_or_else(|| c.clone()))
    }

    /// Records what a round on a claimed transaction has done so far (`done` succeeded),
    /// keeping the lease. Returns the transaction as it is now.
    ///
    /// # Errors
    /// A lost lease; a database error.
    pub async fn progress(&self, c: &Claimed, done: Vec<(String, Op)>) -> Result<Claimed> {
        let applied = self
            .under_lease(c, move |cur, token, now| {
                txn::lease::progress(cur, token, done.clone(), now)
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
        let applied = self
            .under_lease(c, move |cur, token, now| {
                txn::check_back::decide(cur, token, &answer, now)
            })
            .await?;
        self.finished(&applied);
        if applied.current.txn.as_ref().map(|t| t.status) == Some(GlobalStatus::Submitted) {
            self.wake_for(&applied.current);
        }
        Ok(claimed(applied.current).unwrap_or_else(|| c.clone()))
    }

    /// Phase 2 of a claimed transaction completed: the operations in `done` succeeded and
    /// the transaction reaches its end, in one write. Returns its final status.
    ///
    /// # Errors
    /// A lost lease; a database error.
    pub async fn finish(&self, c: &Claimed, done: Vec<(String, Op)>) -> Result<GlobalStatus> {
        let applied = self
            .under_lease(c, move |cur, token, now| {
                txn::finish::finish(cur, token, done.clone(), now)
            })
            .await?;
        // A TCC's held messages go out now.
        self.wake_for(&applied.current);
        self.finished(&applied);
        Ok(applied
            .current
            .txn
            .map(|t| t.status)
            .unwrap_or(c.txn.status))
    }

    /// The broker acknowledged the messages `sent` of the transaction `gid`: they are
    /// recorded as sent (while their claims hold) and their steps as done; a transaction that
    /// waited only for them finishes in the same write. Returns whether it finished.
    ///
    /// # Errors
    /// [`crate::store::StoreError::Txn`] with a lost lease when a claim no longer holds; a
    /// database error.
    pub async fn delivered(&self, gid: &str, sent: Vec<txn::SentMessage>) -> Result<bool> {
        let finishes = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = finishes.clone();
        let applied = self
            .store
            .write(gid, move |c, s| {
                let d = txn::delivered::delivered(c, &sent, s.now)?;
                let ends = matches!(&d, txn::Decision::Apply(change) if change.to.is_some());
                flag.store(ends, std::sync::atomic::Ordering::Relaxed);
                Ok(d)
            })
            .await?;
        let finished = finishes.load(std::sync::atomic::Ordering::Relaxed);
        if finished {
            self.finished(&applied);
        }
        Ok(finished)
    }

    /// A round on a claimed transaction ended without finishing: record what succeeded and
    /// when to try again, and give the lease up.
    ///
    /// # Errors
    /// A lost lease; a database error.
    pub async fn schedule_retry(&self, c: &Claimed, left: RoundLeft) -> Result<()> {
        let wakes = left.release_held || left.stopped.is_some();
        self.under_lease(c, move |cur, token, now| {
            txn::lease::schedule_retry(cur, token, left.clone(), now)
        })
        .await?;
        if wakes {
            self.dispatch.notify_one();
        }
        Ok(())
    }

    /// Gives up the lease of a claimed transaction, due again at `next_cron_time`.
    ///
    /// # Errors
    /// A lost lease; a database error.
    pub async fn release(&self, c: &Claimed, next_cron_time: i64) -> Result<()> {
        self.under_lease(c, move |cur, token, now| {
            txn::lease::release(cur, token, next_cron_time, now)
        })
        .await?;
        Ok(())
    }

    /// Extends the lease of a claimed transaction until `expire`.
    ///
    /// # Errors
    /// A lost lease; a database error.
    pub async fn renew(&self, c: &Claimed, expire: i64) -> Result<()> {
        self.under_lease(c, move |cur, token, now| {
            txn::lease::renew(cur, token, expire, now)
        })
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ConnectOptions, StoreError};
    use crate::txn::change::RetryNote;
    use crate::txn::tcc::branch_ops;
    use crate::txn::{BranchStatus, TxnError};

    /// An orchestrator on an in-memory SQLite store whose clock reads 1,000,000 ms and moves
    /// only when the test advances it. (A stepped clock rather than tokio's paused one:
    /// sqlx waits for SQLite on threads of its own, which a paused tokio clock does not see,
    /// so it would jump ahead to the store's timeouts on its own.)
    async fn orchestrator() -> Orchestrator {
        let clock = Clock::stepped(1_000_000);
        let store = Store::connect(&ConnectOptions {
            clock: clock.clone(),
            ..ConnectOptions::new("sqlite::memory:")
        })
        .await
        .expect("in-memory store");
        Orchestrator::new(
            store,
            clock,
            "me".into(),
            10_000,
            Arc::new(Metrics::default()),
            Arc::new(Notify::new()),
        )
    }

    fn txn(gid: &str, trans_type: TransType, status: GlobalStatus) -> GlobalTxn {
        GlobalTxn {
            gid: gid.into(),
            ..crate::txn::model::sample(trans_type, status)
        }
    }

    /// The ids of the messages the dispatcher may deliver at `now` (claimed by `owner`).
    async fn deliverable(o: &Orchestrator, owner: &str, now: i64) -> Vec<String> {
        o.store()
            .claim_outbox(owner, now, now + 10_000, 10, 64)
            .await
            .unwrap()
            .rows
            .into_iter()
            .map(|r| r.message_id)
            .collect()
    }

    fn message(id: &str, key: &str) -> NewBranch {
        NewBranch {
            branch_id: id.into(),
            op: Op::Action,
            url: format!("rocketmq://Events?key={key}"),
            data: "{}".into(),
        }
    }

    async fn prepared_tcc(o: &Orchestrator, gid: &str) {
        o.prepare(txn(gid, TransType::Tcc, GlobalStatus::Prepared), vec![])
            .await
            .unwrap();
        let ops = branch_ops("01", "{}", "http://127.0.0.1:1/c", "http://127.0.0.1:1/x");
        o.register(gid, TransType::Tcc, ops.to_vec(), 100)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_nothing_behind() {
        let o = orchestrator().await;
        for gid in ["w1", "w2", "w2"] {
            drop(o.when_finished(gid));
        }
        assert_eq!(
            o.waiting(),
            0,
            "requests that stopped waiting (another instance finished it, or the wait ran out) are forgotten"
        );
        let kept = o.when_finished("w3");
        assert_eq!(o.waiting(), 1);
        drop(kept);
        assert_eq!(o.waiting(), 0);
    }

    #[tokio::test]
    async fn a_tcc_is_prepared_registered_submitted_and_finished_once() {
        let o = orchestrator().await;
        prepared_tcc(&o, "g").await;
        let c = o
            .submit(txn("g", TransType::Tcc, GlobalStatus::Submitted), vec![])
            .await
            .unwrap()
            .expect("submitted");
        assert_eq!(c.txn.status, GlobalStatus::Submitted);
        assert_eq!(c.txn.owner, "me");
        assert!(!c.txn.lease_token.is_empty());
        assert_eq!(c.branches.len(), 2, "phase 2 gets the branches in memory");
        assert!(o
            .submit(txn("g", TransType::Tcc, GlobalStatus::Submitted), vec![])
            .await
            .unwrap()
            .is_none());
        let status = o
            .finish(&c, vec![("01".into(), Op::Confirm)])
            .await
            .unwrap();
        assert_eq!(status, GlobalStatus::Succeeded);
        let stored = o.store().find("g").await.unwrap().unwrap();
        assert_eq!(
            (stored.status, stored.owner.as_str()),
            (GlobalStatus::Succeeded, "")
        );
        let branches = o.store().find_branches("g").await.unwrap();
        let confirm = branches.iter().find(|b| b.op == Op::Confirm).unwrap();
        assert_eq!(confirm.status, BranchStatus::Succeeded);
    }

    #[tokio::test]
    async fn a_registration_after_submit_is_refused_and_writes_nothing() {
        let o = orchestrator().await;
        prepared_tcc(&o, "g").await;
        o.submit(txn("g", TransType::Tcc, GlobalStatus::Submitted), vec![])
            .await
            .unwrap();
        let late = branch_ops("02", "{}", "http://127.0.0.1:1/c", "http://127.0.0.1:1/x");
        let err = o
            .register("g", TransType::Tcc, late.to_vec(), 100)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Txn(TxnError::Conflict { .. })),
            "{err}"
        );
        assert_eq!(o.store().find_branches("g").await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn an_abort_cancels_and_fails_every_pending_branch() {
        let o = orchestrator().await;
        prepared_tcc(&o, "g").await;
        let c = o
            .abort("g", "no stock".into())
            .await
            .unwrap()
            .expect("aborting");
        assert_eq!(c.txn.status, GlobalStatus::Aborting);
        assert_eq!(c.txn.rollback_reason, "no stock");
        let status = o.finish(&c, vec![("01".into(), Op::Cancel)]).await.unwrap();
        assert_eq!(status, GlobalStatus::Failed);
        let branches = o.store().find_branches("g").await.unwrap();
        let statuses: Vec<_> = branches.iter().map(|b| (b.op, b.status)).collect();
        assert_eq!(
            statuses,
            [
                (Op::Cancel, BranchStatus::Succeeded),
                (Op::Confirm, BranchStatus::Failed)
            ]
        );
    }

    #[tokio::test]
    async fn force_stop_of_a_submitted_tcc_drops_its_held_messages() {
        let o = orchestrator().await;
        prepared_tcc(&o, "g").await;
        o.submit(
            txn("g", TransType::Tcc, GlobalStatus::Submitted),
            vec![message("m1", "k")],
        )
        .await
        .unwrap()
        .expect("submitted");
        // A later message of the same key waits behind the held one.
        o.submit(
            txn("next", TransType::Msg, GlobalStatus::Submitted),
            vec![message("01", "k")],
        )
        .await
        .unwrap();
        let now = o.clock().now_ms();
        assert!(deliverable(&o, "me/1", now).await.is_empty());
        let stopped = o.force_stop("g").await.unwrap();
        assert_eq!(
            stopped.current.txn.as_ref().map(|t| t.status),
            Some(GlobalStatus::Failed)
        );
        assert!(stopped
            .current
            .branches
            .iter()
            .all(|b| b.status == BranchStatus::Failed));
        assert_eq!(
            deliverable(&o, "me/2", o.clock().now_ms()).await,
            ["next-01"],
            "the key moves on"
        );
        assert!(o.force_stop("g").await.unwrap().duplicate);
    }

    #[tokio::test]
    async fn a_claimed_transaction_times_out_retries_and_releases_under_its_lease() {
        let o = orchestrator().await;
        prepared_tcc(&o, "g").await;
        // The 35 s timeout_to_fail passes, on the test's clock alone.
        o.clock().advance(std::time::Duration::from_secs(40));
        let now = o.clock().now_ms();
        let mut claimed = o
            .store()
            .claim_due("me", "tok", now, now + 10_000, 10)
            .await
            .unwrap();
        let c = claimed.pop().expect("due after its timeout");
        let c = o
            .roll_back(&c, "Timeout after 35 seconds".into(), vec![], vec![])
            .await
            .unwrap();
        assert_eq!(c.txn.status, GlobalStatus::Aborting);
        assert_eq!(
            (c.txn.rollback_time, c.txn.update_time),
            (Some(now), now),
            "written at the clock's time"
        );
        o.renew(&c, now + 20_000).await.unwrap();
        o.schedule_retry(
            &c,
            RoundLeft {
                done: vec![("01".into(), Op::Cancel)],
                release_held: false,
                next_cron_time: now + 30_000,
                retry: RetryNote {
                    interval_s: 10,
                    count: 1,
                    last_error: "HTTP 500".into(),
                },
                stopped: None,
            },
        )
        .await
        .unwrap();
        let stored = o.store().find("g").await.unwrap().unwrap();
        assert_eq!(
            (
                stored.next_cron_time,
                stored.retry_count,
                stored.lease_token.as_str()
            ),
            (now + 30_000, 1, "")
        );
        // The round's token is spent: nothing more is written with it.
        assert!(o.release(&c, now).await.unwrap_err().is_lease_lost());
    }

    #[tokio::test]
    async fn a_check_back_commits_or_drops_a_message() {
        let o = orchestrator().await;
        for gid in ["yes", "no"] {
            let mut t = txn(gid, TransType::Msg, GlobalStatus::Prepared);
            t.query_prepared = "http://127.0.0.1:1/query".into();
            o.prepare(t, vec![message("01", gid)]).await.unwrap();
        }
        // The 35 s timeout_to_fail passes, on the test's clock alone.
        o.clock().advance(std::time::Duration::from_secs(40));
        let now = o.clock().now_ms();
        let claimed = o
            .store()
            .claim_due("me", "tok", now, now + 10_000, 10)
            .await
            .unwrap();
        for c in claimed {
            let answer = if c.txn.gid == "yes" {
                CheckBack::Commit
            } else {
                CheckBack::Rollback
            };
            let after = o.check_back(&c, answer).await.unwrap();
            let want = if c.txn.gid == "yes" {
                GlobalStatus::Submitted
            } else {
                GlobalStatus::Failed
            };
            assert_eq!(after.txn.status, want, "{}", c.txn.gid);
        }
        assert_eq!(
            deliverable(&o, "me/1", now).await,
            ["yes-01"],
            "only the committed message goes out"
        );
    }
}
