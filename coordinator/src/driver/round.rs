//! One round on a claimed transaction: one that came due past its timeout is first rolled
//! back (a TCC, a saga) or checked back (a msg), as its type's policy says; then phase 2
//! runs.

use tracing::info;

use super::{Driver, RoundEnd};
use crate::store::{Claimed, StoreError};
use crate::txn::change::RetryNote;
use crate::txn::check_back::CheckBack;
use crate::txn::lease::RoundLeft;
use crate::txn::policy::{policy, Due, Limit, Policy};
use crate::txn::retry::{jitter, retry_delay_ms, wait_delay_ms};
use crate::txn::{GlobalStatus, GlobalTxn, NEVER};

impl Driver {
    /// Runs one round of work on a transaction whose lease this instance holds.
    ///
    /// # Errors
    /// A lost lease if another instance took the transaction over; a database error.
    #[tracing::instrument(skip_all, fields(gid = %c.txn.gid))]
    pub async fn round(&self, mut c: Claimed) -> Result<RoundEnd, StoreError> {
        let apply = &self.inner.apply;
        let Some(policy) = policy(c.txn.trans_type) else {
            // A type accepted on the wire that Settle does not drive.
            apply.release(&c, NEVER).await?;
            return Ok(RoundEnd::Left);
        };
        match policy.on_due(&c.txn, apply.clock().now_ms()) {
            Due::NotYet(due) => {
                apply.release(&c, due).await?;
                return Ok(RoundEnd::Left);
            }
            Due::RollBack(reason) => {
                info!(status = "aborting", reason = %reason, "transaction timed out");
                c = apply.roll_back(&c, reason, Vec::new(), Vec::new()).await?;
            }
            Due::CheckBack => {
                // The answer must come back while the lease still holds.
                self.ensure_lease(&c, c.txn.lease_expire).await?;
                match self.check_back(&c.txn).await {
                    CheckBack::AskAgain { ongoing, detail } => {
                        info!(detail = %detail, "check-back undecided; will ask again");
                        self.retry(&c, policy, ongoing, detail).await?;
                        return Ok(RoundEnd::Retrying(c.txn.status));
                    }
                    answer => {
                        c = apply.check_back(&c, answer).await?;
                        info!(status = %c.txn.status, "check-back answered");
                    }
                }
            }
            Due::Drive => {}
        }
        if c.txn.status == GlobalStatus::Submitted {
            // The check-back, or the initiator's submit meanwhile, committed a message that
            // waits for its delay: nobody drives it before then.
            if let Due::NotYet(due) = policy.on_due(&c.txn, apply.clock().now_ms()) {
                apply.release(&c, due).await?;
                return Ok(RoundEnd::Left);
            }
        }
        match c.txn.status {
            GlobalStatus::Prepared => {
                apply.release(&c, c.txn.next_cron_time).await?;
                Ok(RoundEnd::Left)
            }
            status if status.is_final() => {
                if c.txn.lease_token.is_empty() {
                    return Ok(RoundEnd::Finished(status));
                }
                apply.release(&c, NEVER).await?;
                Ok(RoundEnd::Finished(status))
            }
            _ => self.phase_two(c, policy).await,
        }
    }

    /// Ends a round that did nothing but ask again later (an undecided check-back): schedules
    /// the next attempt; `ongoing` (the initiator said "not yet") keeps the interval fixed.
    async fn retry(
        &self,
        c: &Claimed,
        policy: &dyn Policy,
        ongoing: bool,
        last_error: String,
    ) -> Result<(), StoreError> {
        let now = self.inner.apply.clock().now_ms();
        let pause = if ongoing {
            Pause::Fixed
        } else {
            Pause::Backoff
        };
        let (next, note) = self.schedule(&c.txn, false, pause, last_error, now);
        let next = match policy.after_failures(&c.txn, note.count) {
            Limit::Retry | Limit::RollBack(_) => next,
            Limit::Stop => NEVER,
        };
        self.inner
            .apply
            .schedule_retry(
                c,
                RoundLeft {
                    done: Vec::new(),
                    release_held: false,
                    next_cron_time: next,
                    retry: note,
                    stopped: None,
                },
            )
            .await
    }

    /// When the next attempt after a round that did not finish is due, and the retry
    /// bookkeeping to record: `progressed` restarts the backoff; `pause` says how long the
    /// next one waits.
    pub(super) fn schedule(
        &self,
        txn: &GlobalTxn,
        progressed: bool,
        pause: Pause,
        last_error: String,
        now: i64,
    ) -> (i64, RetryNote) {
        let failures = if progressed { 0 } else { txn.retry_count };
        let cap_s = self.inner.settings.retry_cap_s;
        let mut last_error = last_error;
        crate::store::truncate_utf8(&mut last_error, 2000);
        let (delay, count) = match pause {
            Pause::Backoff | Pause::Fixed => {
                let (exponent, count) = if pause == Pause::Fixed {
                    (0, failures)
                } else {
                    (failures, failures + 1)
                };
                let delay = retry_delay_ms(
                    txn.options.retry_interval,
                    cap_s,
                    exponent,
                    jitter(&(txn.gid.as_str(), txn.retry_count)),
                );
                (delay, count)
            }
            Pause::Waiting => {
                // The same wait as the last round's: look again less often.
                let previous = if txn.last_error == last_error {
                    txn.next_cron_interval
                } else {
                    0
                };
                (
                    wait_delay_ms(txn.options.retry_interval, previous, cap_s),
                    failures,
                )
            }
        };
        (
            now + delay,
            RetryNote {
                interval_s: (delay + 999) / 1000,
                count,
                last_error,
            },
        )
    }
}

/// How long the next round waits after one that did not finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pause {
    /// Something failed: the interval doubles with each failed round in a row.
    Backoff,
    /// The participant said "not yet": the same interval again.
    Fixed,
    /// Only deliveries are left, which the dispatcher records: looked at less and less
    /// often while the wait lasts.
    Waiting,
}
