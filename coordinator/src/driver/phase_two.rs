//! Phase 2: confirm, cancel or deliver every branch operation not yet done, stage after
//! stage as the transaction type's policy says, from the state in memory.
//!
//! Within a stage, operations are called one at a time (in the stage's order), or all at
//! once when the transaction asked for `concurrent`. Broker-bound steps are not called: the
//! dispatcher delivers them from the outbox and marks them done. The round ends with one
//! write: the finished transaction, or what succeeded and when to try again.

use tracing::info;

use super::{Driver, RoundEnd};
use crate::store::{Claimed, StoreError};
use crate::txn::branch::{after_call, BranchStep};
use crate::txn::policy::{Order, Policy};
use crate::txn::target::is_broker;
use crate::txn::{BranchOp, BranchStatus, Decision, Op};

/// Lease left that a call must fit in, beyond its own timeout, ms.
const LEASE_MARGIN_MS: i64 = 5_000;

impl Driver {
    /// Runs phase 2 of a claimed transaction.
    ///
    /// # Errors
    /// A lost lease; a database error.
    pub(super) async fn phase_two(
        &self,
        c: Claimed,
        policy: &dyn Policy,
    ) -> Result<RoundEnd, StoreError> {
        let mut lease_until = c.txn.lease_expire;
        let mut done: Vec<(String, Op)> = Vec::new();
        let mut release_held = false;
        for stage in policy.phase_two(c.txn.status) {
            let mut pending: Vec<&BranchOp> = c
                .branches
                .iter()
                .filter(|b| b.op == stage.op && b.status == BranchStatus::Prepared)
                .collect();
            if pending.is_empty() {
                continue;
            }
            release_held |= stage.releases_held;
            if stage.order == Order::Reverse {
                pending.reverse();
            }
            let (waiting, calls): (Vec<&BranchOp>, Vec<&BranchOp>) =
                pending.into_iter().partition(|b| is_broker(&b.url));
            let mut failure: Option<(bool, String)> = None;
            if c.txn.options.concurrent && calls.len() > 1 {
                // The calls run at once: one lease check covers them all.
                lease_until = self.ensure_lease(&c, lease_until).await?;
                // At most max_concurrent_calls at a time, answers in the branches' order.
                let room =
                    tokio::sync::Semaphore::new(self.inner.settings.max_concurrent_calls.max(1));
                let txn = &c.txn;
                let results = futures_util::future::join_all(calls.iter().map(|b| {
                    let room = &room;
                    async move {
                        let _turn = room.acquire().await;
                        self.call(txn, b).await
                    }
                }))
                .await;
                for (b, r) in calls.iter().zip(results) {
                    match self.outcome(&c, b, r) {
                        None => done.push((b.branch_id.clone(), b.op)),
                        Some(f) => failure = failure.or(Some(f)),
                    }
                }
            } else {
                for b in &calls {
                    lease_until = self.ensure_lease(&c, lease_until).await?;
                    let r = self.call(&c.txn, b).await;
                    match self.outcome(&c, b, r) {
                        None => done.push((b.branch_id.clone(), b.op)),
                        Some(f) => {
                            failure = Some(f);
                            break;
                        }
                    }
                }
            }
            if failure.is_none() && !waiting.is_empty() {
                // Not a failure: look again after a fixed interval, or as soon as the
                // dispatcher records a delivery.
                let detail = if c.txn.last_error.starts_with("delivery of step") {
                    // Keep the dispatcher's report of why delivery fails (or that a message
                    // was dead-lettered).
                    c.txn.last_error.clone()
                } else {
                    format!(
                        "waiting for the broker to acknowledge {} message(s)",
                        waiting.len()
                    )
                };
                failure = Some((true, detail));
            }
            if let Some((ongoing, detail)) = failure {
                let progressed = !done.is_empty();
                self.retry(&c, done, release_held, progressed, ongoing, detail)
                    .await?;
                return Ok(RoundEnd::Retrying);
            }
        }
        let status = self.inner.apply.finish(&c, done).await?;
        info!(gid = %c.txn.gid, status = %status, "transaction finished");
        Ok(RoundEnd::Finished(status))
    }

    /// Renews the lease when less than a call's worth of it is left. Returns its new expiry.
    pub(super) async fn ensure_lease(
        &self,
        c: &Claimed,
        lease_until: i64,
    ) -> Result<i64, StoreError> {
        let apply = &self.inner.apply;
        let now = apply.clock().now_ms();
        let needed = c.txn.options.request_timeout.saturating_mul(1000) + LEASE_MARGIN_MS;
        if lease_until - now >= needed {
            return Ok(lease_until);
        }
        let until = now + apply.lease_ms().max(needed);
        apply.renew(c, until).await?;
        Ok(until)
    }

    /// What a call's result means: `None` when the branch is done, or the failure to
    /// schedule a retry for (`ongoing`, detail).
    fn outcome(
        &self,
        c: &Claimed,
        branch: &BranchOp,
        result: super::call::CallResult,
    ) -> Option<(bool, String)> {
        match after_call(branch.status, result.outcome) {
            BranchStep::Done(Decision::Apply(_) | Decision::AlreadyDone) => None,
            BranchStep::Retry { ongoing } => {
                info!(
                    gid = %c.txn.gid, branch_id = %branch.branch_id, op = %branch.op,
                    outcome = result.outcome.as_str(), detail = %result.detail,
                    "branch not done; will retry"
                );
                Some((
                    ongoing,
                    format!(
                        "{} {} of branch {}: {}",
                        branch.op,
                        result.outcome.as_str(),
                        branch.branch_id,
                        result.detail
                    ),
                ))
            }
        }
    }
}
