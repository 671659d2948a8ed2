//! The broker acknowledged messages: their steps are done, and a transaction whose phase 2
//! waited only for them succeeds, in the same write.

use super::change::{Change, Current, LeaseWrite};
use super::policy::{require, Next};
use super::{BranchStatus, Decision, GlobalStatus, Op, SentMessage, TxnError, NEVER};

/// Decides what the acknowledgement of the messages `sent` (steps of one transaction) does.
/// They are recorded as sent whatever the transaction's status (a stopped transaction's
/// released messages still go out). In a submitted transaction their steps succeed, and when
/// no other operation of phase 2 is left the transaction succeeds, never to be due again.
///
/// # Errors
/// [`TxnError::NotFound`] if the transaction is gone; [`TxnError::Unsupported`] for a type
/// Settle does not drive.
pub fn delivered(
    current: &Current,
    sent: &[SentMessage],
    now: i64,
) -> Result<Decision<Change>, TxnError> {
    let t = current.existing()?;
    let mut change = Change::at(now);
    change.sent = sent.to_vec();
    if t.status != GlobalStatus::Submitted {
        return Ok(Decision::Apply(change));
    }
    let policy = require(t.trans_type)?;
    let mut after = current.branches.clone();
    for b in &mut after {
        let acknowledged = sent.iter().any(|m| m.branch_id == b.branch_id);
        if b.op == Op::Action && b.status == BranchStatus::Prepared && acknowledged {
            b.status = BranchStatus::Succeeded;
            change.complete.push((b.branch_id.clone(), Op::Action));
        }
    }
    if policy.next(t, &after) == Next::Finish {
        change = change
            .to(GlobalStatus::Succeeded)
            .due(NEVER)
            .lease(LeaseWrite::Release);
    }
    Ok(Decision::Apply(change))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::model::sample;
    use crate::txn::{BranchOp, NewBranch, TransType};

    fn step(id: &str, op: Op) -> BranchOp {
        BranchOp::new(
            "g",
            NewBranch {
                branch_id: id.into(),
                op,
                url: format!("rocketmq://T?key={id}"),
                data: "{}".into(),
            },
            1,
        )
    }

    fn msg(status: GlobalStatus, steps: &[&str]) -> Current {
        Current {
            gid: "g".into(),
            txn: Some(sample(TransType::Msg, status)),
            branches: steps.iter().map(|s| step(s, Op::Action)).collect(),
        }
    }

    fn ack(ids: &[&str]) -> Vec<SentMessage> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| SentMessage {
                id: i as i64 + 1,
                branch_id: (*id).into(),
                sharding_key: (*id).into(),
                owner: "me/1".into(),
            })
            .collect()
    }

    fn applied(c: &Current, ids: &[&str]) -> Change {
        match delivered(c, &ack(ids), 9) {
            Ok(Decision::Apply(change)) => change,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_last_message_of_a_msg_finishes_it() {
        let c = msg(GlobalStatus::Submitted, &["01", "02"]);
        let first = applied(&c, &["01"]);
        assert_eq!(first.to, None);
        assert_eq!(first.complete, vec![("01".to_owned(), Op::Action)]);
        assert_eq!(first.sent.len(), 1);
        let both = applied(&c, &["01", "02"]);
        assert_eq!(both.to, Some(GlobalStatus::Succeeded));
        assert_eq!(both.next_cron_time, Some(NEVER));
        assert_eq!(both.lease, LeaseWrite::Release);
    }

    #[test]
    fn a_tcc_with_a_confirm_left_does_not_finish() {
        let mut c = msg(GlobalStatus::Submitted, &["m1"]);
        c.txn = Some(sample(TransType::Tcc, GlobalStatus::Submitted));
        c.branches.push(step("01", Op::Confirm));
        assert_eq!(applied(&c, &["m1"]).to, None);
        c.branches[1].finish(BranchStatus::Succeeded, 5);
        assert_eq!(applied(&c, &["m1"]).to, Some(GlobalStatus::Succeeded));
    }

    #[test]
    fn a_stopped_transactions_message_is_only_recorded_as_sent() {
        let c = msg(GlobalStatus::Failed, &["01"]);
        let change = applied(&c, &["01"]);
        assert_eq!(change.to, None);
        assert!(change.complete.is_empty());
        assert_eq!(change.sent.len(), 1);
    }

    #[test]
    fn a_vanished_transaction_is_not_found() {
        assert!(matches!(
            delivered(&Current::default(), &ack(&["01"]), 9),
            Err(TxnError::NotFound { .. })
        ));
    }
}
