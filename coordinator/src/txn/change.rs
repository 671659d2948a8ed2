//! Changes: what a transition wants done to one transaction, as intent.
//!
//! A transition (one file each beside this one) looks at the [`Current`] state of a
//! transaction and returns a [`Change`]. The store carries changes out: it reads the current
//! state under a lock, lets the transition decide, applies the change to that state with
//! [`Current::apply`] and writes the difference, many transactions' changes in one database
//! transaction. Nothing here writes anything.
//!
//! Some consequences are part of a status and not left to each transition: reaching `failed`
//! always fails the branches still pending and drops the messages still held, whichever path
//! got there (rollback, check-back, force stop).

use super::outbox::{OutboxMessage, OutboxState, SentMessage};
use super::{BranchOp, BranchStatus, GlobalStatus, GlobalTxn, NewBranch, Op, TxnError};

/// A transaction as read under lock, with its branch operations in registration order.
/// `txn` is `None` when no transaction has the gid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Current {
    /// The gid asked for.
    pub gid: String,
    /// The stored transaction, if any.
    pub txn: Option<GlobalTxn>,
    /// Its branch operations (read only when the transition needs them).
    pub branches: Vec<BranchOp>,
}

/// A lease on a transaction: which instance drives it, until when, under which fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Instance id.
    pub owner: String,
    /// Fencing token: writes made while driving the transaction must present it.
    pub token: String,
    /// Expiry, ms.
    pub expire: i64,
}

/// What a change does to the lease.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LeaseWrite {
    /// Leave it as it is.
    #[default]
    Keep,
    /// Take it: this instance drives the transaction now.
    Acquire(Lease),
    /// Extend it until this time, ms.
    Renew(i64),
    /// Give it up: any instance may take the transaction when it is due.
    Release,
}

/// The retry bookkeeping of a round that did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryNote {
    /// The interval used, s.
    pub interval_s: i64,
    /// Failed attempts in a row.
    pub count: i64,
    /// What went wrong.
    pub last_error: String,
}

/// What a transition wants done to one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// When, ms.
    pub now: i64,
    /// Create this transaction (there is none with its gid).
    pub create: Option<GlobalTxn>,
    /// Move to this status.
    pub to: Option<GlobalStatus>,
    /// Record why it rolls back.
    pub rollback_reason: Option<String>,
    /// When it is next due, ms.
    pub next_cron_time: Option<i64>,
    /// Retry bookkeeping.
    pub retry: Option<RetryNote>,
    /// What happens to the lease.
    pub lease: LeaseWrite,
    /// Branch operations to add (those already registered are skipped).
    pub add_branches: Vec<NewBranch>,
    /// Branch operations done: they become `succeed`.
    pub complete: Vec<(String, Op)>,
    /// Branch operations that will not be done, or whose effect is rolled back: they become
    /// `failed` (a saga's failed action, and those that may have run when it turned).
    pub fail: Vec<(String, Op)>,
    /// Commit the transaction's broker-bound steps to the outbox, in this state.
    pub enqueue: Option<OutboxState>,
    /// When the enqueued messages may go out, ms (a delayed msg); `None`: at once.
    pub deliver_from: Option<i64>,
    /// Let the transaction's held messages go out.
    pub release_held: bool,
    /// Set the transaction's held messages aside as dead letters, with this reason (it
    /// stopped retrying): out of their keys' way, kept for an operator to redrive.
    pub dead_letter_held: Option<String>,
    /// Messages the broker acknowledged: recorded as sent, if their claims still hold.
    pub sent: Vec<SentMessage>,
}

impl Change {
    /// A change made at `now` that does nothing yet.
    pub fn at(now: i64) -> Self {
        Self {
            now,
            create: None,
            to: None,
            rollback_reason: None,
            next_cron_time: None,
            retry: None,
            lease: LeaseWrite::Keep,
            add_branches: Vec::new(),
            complete: Vec::new(),
            fail: Vec::new(),
            enqueue: None,
            deliver_from: None,
            release_held: false,
            dead_letter_held: None,
            sent: Vec::new(),
        }
    }

    /// Moves to `status`.
    pub fn to(mut self, status: GlobalStatus) -> Self {
        self.to = Some(status);
        self
    }

    /// Sets when the transaction is next due.
    pub fn due(mut self, next_cron_time: i64) -> Self {
        self.next_cron_time = Some(next_cron_time);
        self
    }

    /// Writes the lease.
    pub fn lease(mut self, lease: LeaseWrite) -> Self {
        self.lease = lease;
        self
    }

    /// Records a rollback reason.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.rollback_reason = Some(reason.into());
        self
    }
}

/// What a change does to the outbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxEffect {
    /// Messages committed now, in step order, and the state they enter in.
    pub enqueue: Option<(OutboxState, Vec<OutboxMessage>)>,
    /// When they may go out, ms.
    pub deliver_from: i64,
    /// Held messages go out now.
    pub release_held: bool,
    /// Held messages will never go out.
    pub drop_held: bool,
    /// Held messages become dead letters, with this reason.
    pub dead_held: Option<String>,
    /// Messages acknowledged by the broker.
    pub sent: Vec<SentMessage>,
    /// Sharding keys whose next message may go now (held messages released or dropped).
    pub wake_keys: Vec<String>,
    /// The transaction's own row changed (not only its branches).
    pub global_changed: bool,
    /// A round that did not finish, for the transaction's timeline.
    pub attempt: Option<Attempt>,
}

/// A round of phase 2 (or a check-back) that did not settle its transaction, as its
/// timeline shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// When, ms.
    pub at: i64,
    /// Failed rounds in a row, this one included.
    pub count: i64,
    /// What went wrong (the answer's beginning, or the error).
    pub error: String,
    /// When the next round is due, ms.
    pub next_retry: i64,
}

impl Current {
    /// Applies `change` to this state and returns what it does to the outbox.
    ///
    /// # Errors
    /// [`TxnError::NotFound`] for a change to a transaction that does not exist.
    pub fn apply(&mut self, change: Change) -> Result<OutboxEffect, TxnError> {
        let now = change.now;
        let mut effect = OutboxEffect {
            global_changed: change.create.is_some()
                || change.to.is_some()
                || change.rollback_reason.is_some()
                || change.next_cron_time.is_some()
                || change.retry.is_some()
                || change.lease != LeaseWrite::Keep,
            ..OutboxEffect::default()
        };
        if let Some(created) = change.create {
            self.txn = Some(created);
            self.branches.clear();
        }
        let Some(txn) = self.txn.as_mut() else {
            return Err(TxnError::NotFound {
                gid: self.gid.clone(),
            });
        };
        if effect.global_changed {
            txn.update_time = now;
        }
        if let Some(reason) = change.rollback_reason {
            txn.rollback_reason = reason;
            txn.rollback_time = Some(now);
        }
        if let Some(t) = change.next_cron_time {
            txn.next_cron_time = t;
        }
        if let Some(r) = change.retry {
            txn.next_cron_interval = r.interval_s;
            // A round that ended as the one before it did (the same wait, no new failure)
            // is not a new event for the timeline.
            let repeated = r.count == txn.retry_count && r.last_error == txn.last_error;
            txn.retry_count = r.count;
            if !repeated {
                effect.attempt = Some(Attempt {
                    at: now,
                    count: r.count,
                    error: r.last_error.clone(),
                    next_retry: txn.next_cron_time,
                });
            }
            txn.last_error = r.last_error;
        }
        match change.lease {
            LeaseWrite::Keep => {}
            LeaseWrite::Acquire(lease) => {
                txn.owner = lease.owner;
                txn.lease_token = lease.token;
                txn.lease_expire = lease.expire;
            }
            LeaseWrite::Renew(expire) => txn.lease_expire = expire,
            LeaseWrite::Release => {
                txn.owner.clear();
                txn.lease_token.clear();
                txn.lease_expire = 0;
            }
        }
        for b in change.add_branches {
            let known = self
                .branches
                .iter()
                .any(|o| o.branch_id == b.branch_id && o.op == b.op);
            if !known {
                self.branches.push(BranchOp::new(&self.gid, b, now));
            }
        }
        for (done, status) in [
            (&change.complete, BranchStatus::Succeeded),
            (&change.fail, BranchStatus::Failed),
        ] {
            for (branch_id, op) in done {
                if let Some(b) = self.branches.iter_mut().find(|b| {
                    &b.branch_id == branch_id && b.op == *op && b.status == BranchStatus::Prepared
                }) {
                    b.finish(status, now);
                }
            }
        }
        if let Some(to) = change.to {
            txn.status = to;
            if to == GlobalStatus::Submitted {
                txn.submit_time = Some(now);
            }
            if to.is_final() {
                txn.finish_time = Some(now);
                if !txn.options.callback_url.is_empty() {
                    txn.callback_due = Some(now);
                }
            }
            if to == GlobalStatus::Failed {
                for b in &mut self.branches {
                    if b.status == BranchStatus::Prepared {
                        b.finish(BranchStatus::Failed, now);
                    }
                }
                effect.drop_held = true;
            }
        }
        effect.deliver_from = change.deliver_from.unwrap_or(now);
        if let Some(state) = change.enqueue {
            let messages = OutboxMessage::from_branches(&self.branches);
            if !messages.is_empty() {
                effect.enqueue = Some((state, messages));
            }
        }
        effect.release_held = change.release_held;
        effect.dead_held = change.dead_letter_held;
        if effect.release_held || effect.drop_held || effect.dead_held.is_some() {
            effect.wake_keys = OutboxMessage::keys_of(&self.branches);
        }
        effect.sent = change.sent;
        Ok(effect)
    }

    /// The stored transaction, or [`TxnError::NotFound`].
    ///
    /// # Errors
    /// [`TxnError::NotFound`] if there is none.
    pub fn existing(&self) -> Result<&GlobalTxn, TxnError> {
        self.txn.as_ref().ok_or_else(|| TxnError::NotFound {
            gid: self.gid.clone(),
        })
    }

    /// The stored transaction, if this instance still holds its lease under `token`.
    ///
    /// # Errors
    /// [`TxnError::LeaseLost`] if the transaction is gone or another lease replaced ours.
    pub fn fenced(&self, token: &str) -> Result<&GlobalTxn, TxnError> {
        match &self.txn {
            Some(t) if !token.is_empty() && t.lease_token == token => Ok(t),
            _ => Err(TxnError::LeaseLost {
                gid: self.gid.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::model::sample;
    use crate::txn::TransType;

    fn current(status: GlobalStatus) -> Current {
        let txn = sample(TransType::Tcc, status);
        let branches = ["01", "02"]
            .iter()
            .flat_map(|id| {
                [Op::Cancel, Op::Confirm].map(|op| {
                    BranchOp::new(
                        "g",
                        NewBranch {
                            branch_id: (*id).into(),
                            op,
                            url: "http://127.0.0.1:1/x".into(),
                            data: String::new(),
                        },
                        1,
                    )
                })
            })
            .collect();
        Current {
            gid: "g".into(),
            txn: Some(txn),
            branches,
        }
    }

    #[test]
    fn failing_fails_pending_branches_and_drops_held_messages() {
        let mut c = current(GlobalStatus::Submitted);
        c.branches[1].finish(BranchStatus::Succeeded, 5);
        let effect = c.apply(Change::at(9).to(GlobalStatus::Failed)).unwrap();
        assert!(effect.drop_held);
        let statuses: Vec<_> = c.branches.iter().map(|b| b.status).collect();
        assert_eq!(
            statuses,
            [
                BranchStatus::Failed,
                BranchStatus::Succeeded,
                BranchStatus::Failed,
                BranchStatus::Failed
            ]
        );
        assert_eq!(c.txn.as_ref().unwrap().finish_time, Some(9));
    }

    #[test]
    fn finishing_marks_the_callback_due_when_there_is_one() {
        let mut c = current(GlobalStatus::Submitted);
        c.apply(Change::at(9).to(GlobalStatus::Succeeded)).unwrap();
        assert_eq!(c.txn.as_ref().and_then(|t| t.callback_due), None);
        for (to, at) in [(GlobalStatus::Submitted, 4), (GlobalStatus::Failed, 9)] {
            let mut c = current(GlobalStatus::Prepared);
            if let Some(t) = c.txn.as_mut() {
                t.options.callback_url = "http://127.0.0.1:1/done".into();
            }
            c.apply(Change::at(at).to(to)).unwrap();
            let due = c.txn.as_ref().and_then(|t| t.callback_due);
            assert_eq!(due, to.is_final().then_some(at), "{to:?}");
        }
    }

    #[test]
    fn adding_branches_leaves_the_transactions_row_alone() {
        let mut c = current(GlobalStatus::Prepared);
        let before = c.txn.clone();
        let mut change = Change::at(3);
        change.add_branches = vec![NewBranch {
            branch_id: "03".into(),
            op: Op::Confirm,
            url: "http://127.0.0.1:1/x".into(),
            data: String::new(),
        }];
        let effect = c.apply(change).unwrap();
        assert!(!effect.global_changed);
        assert_eq!(c.txn, before);
        assert_eq!(c.branches.len(), 5);
    }

    #[test]
    fn a_branch_registered_twice_is_kept_once() {
        let mut c = current(GlobalStatus::Prepared);
        let mut change = Change::at(3);
        change.add_branches = vec![NewBranch {
            branch_id: "01".into(),
            op: Op::Confirm,
            url: "http://127.0.0.1:1/other".into(),
            data: String::new(),
        }];
        c.apply(change).unwrap();
        assert_eq!(c.branches.len(), 4);
        assert_eq!(c.branches[1].url, "http://127.0.0.1:1/x");
    }

    #[test]
    fn only_broker_bound_steps_are_enqueued() {
        let mut c = current(GlobalStatus::Prepared);
        let mut change = Change::at(3).to(GlobalStatus::Submitted);
        change.add_branches = vec![
            NewBranch {
                branch_id: "m1".into(),
                op: Op::Action,
                url: "rocketmq://Orders?key=o-1".into(),
                data: "{}".into(),
            },
            NewBranch {
                branch_id: "m2".into(),
                op: Op::Action,
                url: "http://127.0.0.1:1/hook".into(),
                data: "{}".into(),
            },
        ];
        change.enqueue = Some(OutboxState::Held);
        let effect = c.apply(change).unwrap();
        let (state, messages) = effect.enqueue.unwrap();
        assert_eq!(state, OutboxState::Held);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].sharding_key, "o-1");
    }

    #[test]
    fn the_same_wait_is_recorded_in_the_timeline_once() {
        let mut c = current(GlobalStatus::Submitted);
        let wait = |count: i64, error: &str| {
            let mut change = Change::at(10).due(20);
            change.retry = Some(RetryNote {
                interval_s: 1,
                count,
                last_error: error.to_owned(),
            });
            change
        };
        let waiting = "waiting for the broker to acknowledge 1 message(s)";
        assert!(
            c.apply(wait(0, waiting)).unwrap().attempt.is_some(),
            "the first wait"
        );
        assert!(
            c.apply(wait(0, waiting)).unwrap().attempt.is_none(),
            "the same wait again is not a new event"
        );
        assert!(
            c.apply(wait(1, waiting)).unwrap().attempt.is_some(),
            "a failed round is"
        );
        assert!(
            c.apply(wait(1, "HTTP 500")).unwrap().attempt.is_some(),
            "so is another error"
        );
    }

    #[test]
    fn a_stale_token_is_a_lost_lease() {
        let mut c = current(GlobalStatus::Submitted);
        c.txn.as_mut().unwrap().lease_token = "mine".into();
        assert!(c.fenced("mine").is_ok());
        assert!(matches!(c.fenced("old"), Err(TxnError::LeaseLost { .. })));
        assert!(matches!(c.fenced(""), Err(TxnError::LeaseLost { .. })));
    }
}
