//! `submit`: commit a global transaction, starting phase 2 (confirm every branch, deliver
//! every step).

use super::change::{Change, Current, Lease, LeaseWrite};
use super::policy::require;
use super::{Decision, GlobalStatus, GlobalTxn, NewBranch, TxnError};

/// Decides a `submit`. `txn` is the transaction as it would be created if it was never
/// prepared (as DTM does for a msg, and for a TCC with no branches); `carried` are the steps
/// the request carries. The submitting instance takes `lease` to run phase 2 at once.
/// Submitting a transaction that is already submitted or succeeded is a duplicate.
///
/// # Errors
/// [`TxnError::Conflict`] if it is rolling back or rolled back;
/// [`TxnError::TypeMismatch`] if it exists with another type;
/// [`TxnError::Unsupported`] for a type Settle does not drive.
pub fn submit(
    current: &Current,
    txn: &GlobalTxn,
    carried: &[NewBranch],
    lease: &Lease,
    now: i64,
) -> Result<Decision<Change>, TxnError> {
    let policy = require(txn.trans_type)?;
    let commit = |mut change: Change| {
        change.enqueue = Some(policy.outbox_at_commit());
        let delay = policy.delay_ms(txn);
        if delay > 0 {
            // Nothing goes out before the delay: phase 2 is not started now but when the
            // transaction comes due, by whichever instance claims it.
            change.deliver_from = Some(now.saturating_add(delay));
            return change
                .to(GlobalStatus::Submitted)
                .due(now.saturating_add(delay));
        }
        change
            .to(GlobalStatus::Submitted)
            .due(lease.expire)
            .lease(LeaseWrite::Acquire(lease.clone()))
    };
    match &current.txn {
        None => {
            let mut change = Change::at(now);
            let mut created = txn.clone();
            created.status = GlobalStatus::Submitted;
            change.create = Some(created);
            change.add_branches = carried.to_vec();
            Ok(Decision::Apply(commit(change)))
        }
        Some(t) if t.trans_type != txn.trans_type => Err(TxnError::TypeMismatch {
            gid: t.gid.clone(),
            existing: t.trans_type,
            requested: txn.trans_type,
        }),
        Some(t) => match t.status {
            GlobalStatus::Prepared => {
                let mut change = Change::at(now);
                if policy.steps_at_submit() {
                    change.add_branches = carried.to_vec();
                }
                Ok(Decision::Apply(commit(change)))
            }
            GlobalStatus::Submitted | GlobalStatus::Succeeded => Ok(Decision::AlreadyDone),
            status @ (GlobalStatus::Aborting | GlobalStatus::Failed) => Err(TxnError::Conflict {
                gid: t.gid.clone(),
                status,
                action: "submit",
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::model::sample;
    use crate::txn::outbox::OutboxState;
    use crate::txn::{Op, TransType};
    use GlobalStatus::*;

    fn lease() -> Lease {
        Lease {
            owner: "me".into(),
            token: "t1".into(),
            expire: 2_000_000,
        }
    }

    fn stored(trans_type: TransType, status: GlobalStatus) -> Current {
        Current {
            gid: "g".into(),
            txn: Some(sample(trans_type, status)),
            branches: vec![],
        }
    }

    fn message() -> NewBranch {
        NewBranch {
            branch_id: "m1".into(),
            op: Op::Action,
            url: "rocketmq://t?key=k".into(),
            data: "{}".into(),
        }
    }

    #[test]
    fn submit_of_an_unknown_transaction_creates_it_submitted_and_leased() {
        let t = sample(TransType::Msg, Prepared);
        let Ok(Decision::Apply(change)) =
            submit(&Current::default(), &t, &[message()], &lease(), 7)
        else {
            panic!("created");
        };
        let mut c = Current::default();
        let effect = c.apply(change).unwrap();
        let created = c.txn.unwrap();
        assert_eq!(created.status, Submitted);
        assert_eq!(created.lease_token, "t1");
        assert_eq!(created.next_cron_time, 2_000_000);
        assert_eq!(effect.enqueue.unwrap().0, OutboxState::Pending);
    }

    #[test]
    fn submit_moves_a_prepared_tcc_to_submitted_with_its_messages_held() {
        let mut c = stored(TransType::Tcc, Prepared);
        let t = sample(TransType::Tcc, Prepared);
        let Ok(Decision::Apply(change)) = submit(&c, &t, &[message()], &lease(), 7) else {
            panic!("submitted");
        };
        let effect = c.apply(change).unwrap();
        assert_eq!(c.txn.unwrap().status, Submitted);
        assert_eq!(c.branches.len(), 1);
        assert_eq!(effect.enqueue.unwrap().0, OutboxState::Held);
    }

    #[test]
    fn a_prepared_msg_keeps_the_steps_it_was_prepared_with() {
        let c = stored(TransType::Msg, Prepared);
        let t = sample(TransType::Msg, Prepared);
        let Ok(Decision::Apply(change)) = submit(&c, &t, &[message()], &lease(), 7) else {
            panic!("submitted");
        };
        assert!(change.add_branches.is_empty());
    }

    #[test]
    fn submit_again_is_a_duplicate() {
        let t = sample(TransType::Tcc, Prepared);
        for status in [Submitted, Succeeded] {
            assert_eq!(
                submit(&stored(TransType::Tcc, status), &t, &[], &lease(), 7),
                Ok(Decision::AlreadyDone)
            );
        }
    }

    #[test]
    fn submit_after_abort_is_a_conflict() {
        let t = sample(TransType::Tcc, Prepared);
        for status in [Aborting, Failed] {
            let err = submit(&stored(TransType::Tcc, status), &t, &[], &lease(), 7).unwrap_err();
            assert!(matches!(
                err,
                TxnError::Conflict {
                    action: "submit",
                    ..
                }
            ));
            assert!(err.to_string().contains("cannot submit"), "{err}");
        }
    }

    #[test]
    fn submit_with_another_type_is_rejected() {
        let t = sample(TransType::Msg, Prepared);
        let err = submit(&stored(TransType::Tcc, Prepared), &t, &[], &lease(), 7);
        assert!(matches!(err, Err(TxnError::TypeMismatch { .. })));
    }

    #[test]
    fn a_delayed_msg_commits_without_a_lease_and_comes_due_after_its_delay() {
        let mut t = sample(TransType::Msg, Submitted);
        t.custom_data = r#"{"delay": 30}"#.into();
        let Ok(Decision::Apply(change)) =
            submit(&Current::default(), &t, &[message()], &lease(), 1_000)
        else {
            panic!("submits");
        };
        assert_eq!(change.to, Some(Submitted));
        assert_eq!(change.next_cron_time, Some(31_000));
        assert_eq!(change.deliver_from, Some(31_000));
        assert_eq!(
            change.lease,
            LeaseWrite::Keep,
            "nobody drives it before then"
        );
        t.custom_data = r#"{"delay": 0}"#.into();
        let Ok(Decision::Apply(now)) = submit(&Current::default(), &t, &[], &lease(), 1_000) else {
            panic!("submits");
        };
        assert_eq!(now.deliver_from, None);
        assert!(matches!(now.lease, LeaseWrite::Acquire(_)));
    }
}
