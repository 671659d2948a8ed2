//! Phase 2: call every branch operation the transaction type's policy says is next, from the
//! state in memory, until nothing is left to call now.
//!
//! The policy picks the operations ([`Policy::next`]): a TCC's confirms last registered
//! first, a msg's steps in order, a saga's actions along its chain or DAG and its
//! compensations back along it. Several picked at once are called at once (at most
//! `--max-concurrent-calls`). Broker-bound steps are not called: the dispatcher delivers them
//! from the outbox and marks them done. The round ends with one write: the finished
//! transaction, or what succeeded and when to try again. Before the calls that need it (a
//! saga's later steps), what the round did so far is written first; when the forward path
//! cannot complete (a saga's action failed), the transaction turns to rolling back and the
//! round goes on undoing it.

use tracing::info;

use super::call::CallResult;
use super::round::Pause;
use super::{Driver, RoundEnd};
use crate::store::{Claimed, StoreError};
use crate::txn::branch::BranchStep;
use crate::txn::lease::RoundLeft;
use crate::txn::policy::{Due, Limit, Next, Policy};
use crate::txn::{BranchStatus, Decision, Op, NEVER};

/// Lease left that a call must fit in, beyond its own timeout, ms.
const LEASE_MARGIN_MS: i64 = 5_000;

/// How [`Driver::end_round`] ended.
enum Ended {
    /// The round is over.
    Round(RoundEnd),
    /// The transaction turned to rolling back; the round goes on with it.
    Turned(Box<(Claimed, Progress)>),
}

/// What a round did that is not yet written.
#[derive(Default)]
struct Progress {
    /// Operations that succeeded.
    done: Vec<(String, Op)>,
    /// Operations that failed for good.
    failed: Vec<(String, Op)>,
    /// The answer that failed an operation for good, as the rollback reason.
    failure: Option<String>,
    /// Held messages may go out.
    release_held: bool,
}

impl Driver {
    /// Runs phase 2 of a claimed transaction.
    ///
    /// # Errors
    /// A lost lease; a database error.
    pub(super) async fn phase_two(
        &self,
        mut c: Claimed,
        policy: &dyn Policy,
    ) -> Result<RoundEnd, StoreError> {
        let apply = &self.inner.apply;
        let mut lease_until = c.txn.lease_expire;
        let mut round = Progress::default();
        loop {
            let (ops, checkpoint) = match policy.next(&c.txn, &c.branches) {
                Next::Finish => {
                    let status = apply.finish(&c, round.done).await?;
                    info!(gid = %c.txn.gid, status = %status, "transaction finished");
                    return Ok(RoundEnd::Finished(status));
                }
                Next::Wait { release_held } => {
                    round.release_held |= release_held;
                    // Not a failure: look again after a fixed interval, or as soon as the
                    // dispatcher records a delivery.
                    let detail = if c.txn.last_error.starts_with("delivery of step") {
                        // Keep the dispatcher's report of why delivery fails (or that a
                        // message was dead-lettered).
                        c.txn.last_error.clone()
                    } else {
                        let waiting = c
                            .branches
                            .iter()
                            .filter(|b| b.status == BranchStatus::Prepared && b.op == Op::Action)
                            .count();
                        format!("waiting for the broker to acknowledge {waiting} message(s)")
                    };
                    match self
                        .end_round(c, policy, round, Pause::Waiting, detail)
                        .await?
                    {
                        Ended::Round(end) => return Ok(end),
                        Ended::Turned(turned) => {
                            (c, round) = *turned;
                            continue;
                        }
                    }
                }
                Next::RollBack => {
                    let reason = round.failure.take().unwrap_or_else(|| {
                        "an operation failed for good (its answer was not kept)".to_owned()
                    });
                    info!(gid = %c.txn.gid, reason = %reason, "rolling back");
                    c = self.turn(&c, reason, &mut round).await?;
                    continue;
                }
                Next::Call {
                    ops,
                    release_held,
                    checkpoint,
                } => {
                    round.release_held |= release_held;
                    (ops, checkpoint)
                }
            };
            if checkpoint && !round.done.is_empty() {
                c = apply.progress(&c, std::mem::take(&mut round.done)).await?;
            }
            if let Due::RollBack(reason) = policy.on_due(&c.txn, apply.clock().now_ms()) {
                info!(gid = %c.txn.gid, reason = %reason, "timed out; rolling back");
                c = self.turn(&c, reason, &mut round).await?;
                continue;
            }
            // The calls run at once: one lease check covers them all.
            lease_until = self.ensure_lease(&c, lease_until).await?;
            let results = if let [one] = ops.as_slice() {
                vec![self.call(&c.txn, &c.branches[*one]).await]
            } else {
                // At most max_concurrent_calls at a time, answers in the operations' order.
                let room =
                    tokio::sync::Semaphore::new(self.inner.settings.max_concurrent_calls.max(1));
                let (txn, branches) = (&c.txn, &c.branches);
                futures_util::future::join_all(ops.iter().map(|i| {
                    let room = &room;
                    async move {
                        let _turn = room.acquire().await;
                        self.call(txn, &branches[*i]).await
                    }
                }))
                .await
            };
            let mut retry: Option<(bool, String)> = None;
            let mut failed_now = false;
            for (i, result) in ops.into_iter().zip(results) {
                let answer = format!(
                    "{} of branch {} answered {}: {}",
                    c.branches[i].op,
                    c.branches[i].branch_id,
                    result.outcome.as_str(),
                    result.detail
                );
                match self.outcome(&c, policy, i, result) {
                    Ok(Some(status)) => {
                        let b = &mut c.branches[i];
                        b.status = status;
                        let id = (b.branch_id.clone(), b.op);
                        if status == BranchStatus::Failed {
                            failed_now = true;
                            round.failed.push(id);
                            round.failure.get_or_insert(answer);
                        } else {
                            round.done.push(id);
                        }
                    }
                    Ok(None) => {}
                    Err((ongoing, detail)) => {
                        if retry.is_none() {
                            retry = Some((ongoing, detail));
                        }
                    }
                }
            }
            if failed_now {
                // The policy decides what a failure does (a saga rolls back).
                continue;
            }
            if let Some((ongoing, detail)) = retry {
                let pause = if ongoing {
                    Pause::Fixed
                } else {
                    Pause::Backoff
                };
                match self.end_round(c, policy, round, pause, detail).await? {
                    Ended::Round(end) => return Ok(end),
                    Ended::Turned(turned) => (c, round) = *turned,
                }
            }
        }
    }

    /// Turns the transaction to rolling back with `reason`, writing what the round did.
    async fn turn(
        &self,
        c: &Claimed,
        reason: String,
        round: &mut Progress,
    ) -> Result<Claimed, StoreError> {
        self.inner
            .apply
            .roll_back(
                c,
                reason,
                std::mem::take(&mut round.done),
                std::mem::take(&mut round.failed),
            )
            .await
    }

    /// Ends a round that cannot go on now: records what succeeded and schedules the next
    /// one. Past its retry limit, a transaction stops being retried, or, if its policy says
    /// so, rolls back (and the round goes on undoing it).
    async fn end_round(
        &self,
        c: Claimed,
        policy: &dyn Policy,
        mut round: Progress,
        pause: Pause,
        detail: String,
    ) -> Result<Ended, StoreError> {
        let progressed = !round.done.is_empty();
        let now = self.inner.apply.clock().now_ms();
        let (next, note) = self.schedule(&c.txn, progressed, pause, detail, now);
        let mut stopped = None;
        let next = match policy.after_failures(&c.txn, note.count) {
            Limit::Retry => next,
            Limit::Stop => {
                stopped = Some(format!(
                    "its transaction stopped retrying after {} failed rounds (retry_limit); redrive sends it: {}",
                    note.count, note.last_error
                ));
                NEVER
            }
            Limit::RollBack(reason) => {
                info!(gid = %c.txn.gid, reason = %reason, last_error = %note.last_error, "retry limit passed; rolling back");
                let c = self.turn(&c, reason, &mut round).await?;
                return Ok(Ended::Turned(Box::new((c, round))));
            }
        };
        // A running transaction's timeout is looked at when it passes, not a retry later.
        let next = policy.deadline(&c.txn).map_or(next, |d| next.min(d));
        self.inner
            .apply
            .schedule_retry(
                &c,
                RoundLeft {
                    done: round.done,
                    release_held: round.release_held,
                    next_cron_time: next,
                    retry: note,
                    stopped,
                },
            )
            .await?;
        Ok(Ended::Round(RoundEnd::Retrying(c.txn.status)))
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

    /// What a call's result means for operation `i`: its new status (`None`: nothing
    /// changes), or the failure to schedule a retry for (`ongoing`, detail).
    fn outcome(
        &self,
        c: &Claimed,
        policy: &dyn Policy,
        i: usize,
        result: CallResult,
    ) -> Result<Option<BranchStatus>, (bool, String)> {
        let branch = &c.branches[i];
        let described = || {
            format!(
                "{} {} of branch {}: {}",
                branch.op,
                result.outcome.as_str(),
                branch.branch_id,
                result.detail
            )
        };
        match policy.after_call(&c.txn, branch, result.outcome) {
            BranchStep::Done(Decision::Apply(status)) => {
                if status == BranchStatus::Failed {
                    info!(
                        gid = %c.txn.gid, branch_id = %branch.branch_id, op = %branch.op,
                        detail = %result.detail, "branch failed"
                    );
                }
                Ok(Some(status))
            }
            BranchStep::Done(Decision::AlreadyDone) => Ok(None),
            BranchStep::Retry { ongoing } => {
                info!(
                    gid = %c.txn.gid, branch_id = %branch.branch_id, op = %branch.op,
                    outcome = result.outcome.as_str(), detail = %result.detail,
                    "branch not done; will retry"
                );
                Err((ongoing, described()))
            }
        }
    }
}
