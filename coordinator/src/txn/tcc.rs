//! What only a TCC knows.
//!
//! Branches register their confirm and cancel while the transaction is prepared (the
//! initiator calls each Try itself). A submit may carry messages, which are committed held
//! and go out once every confirm succeeded. Phase 2 confirms (after submit) or cancels (after
//! abort or timeout) every branch, last registered first; a TCC still prepared after
//! `timeout_to_fail` rolls back.

use settle_protocol::{GlobalRequest, RegisterBranchRequest};

use super::outbox::OutboxState;
use super::policy::{
    field, messages_at_submit, staged, Moment, Next, Order, Policy, Refusal, Stage, Subscribers,
    DELIVER_HELD,
};
use super::{BranchOp, GlobalStatus, GlobalTxn, NewBranch, Op, TransType};

/// The TCC policy.
#[derive(Debug, Clone, Copy)]
pub struct Tcc;

const CONFIRM_THEN_DELIVER: &[Stage] = &[
    Stage {
        op: Op::Confirm,
        order: Order::Reverse,
        releases_held: false,
    },
    DELIVER_HELD,
];

const CANCEL: &[Stage] = &[Stage {
    op: Op::Cancel,
    order: Order::Reverse,
    releases_held: false,
}];

impl Policy for Tcc {
    fn trans_type(&self) -> TransType {
        TransType::Tcc
    }

    fn can_abort(&self) -> bool {
        true
    }

    fn steps(
        &self,
        req: &GlobalRequest,
        at: Moment,
        _subscribers: &Subscribers,
    ) -> Result<Vec<NewBranch>, Refusal> {
        messages_at_submit("a TCC's messages", req, at)
    }

    fn steps_at_submit(&self) -> bool {
        true
    }

    fn register(&self, req: &RegisterBranchRequest) -> Result<Vec<NewBranch>, Refusal> {
        for name in ["confirm", "cancel"] {
            if field(req, name).is_empty() {
                return Err(Refusal::new(
                    "invalid_url",
                    format!("{name} is missing or empty"),
                ));
            }
        }
        Ok(branch_ops(
            field(req, "branch_id"),
            field(req, "data"),
            field(req, "confirm"),
            field(req, "cancel"),
        )
        .to_vec())
    }

    fn outbox_at_commit(&self) -> OutboxState {
        OutboxState::Held
    }

    fn next(&self, txn: &GlobalTxn, branches: &[BranchOp]) -> Next {
        match txn.status {
            GlobalStatus::Submitted => staged(txn, branches, CONFIRM_THEN_DELIVER, |_| true),
            GlobalStatus::Aborting => staged(txn, branches, CANCEL, |_| true),
            _ => Next::Finish,
        }
    }
}

/// The two operations a TCC branch registers, in DTM's order: cancel, then confirm.
pub fn branch_ops(branch_id: &str, data: &str, confirm: &str, cancel: &str) -> [NewBranch; 2] {
    let op = |op, url: &str| NewBranch {
        branch_id: branch_id.to_owned(),
        op,
        url: url.to_owned(),
        data: data.to_owned(),
    };
    [op(Op::Cancel, cancel), op(Op::Confirm, confirm)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::model::sample;
    use crate::txn::policy::Due;

    #[test]
    fn a_tcc_that_timed_out_rolls_back_with_dtms_reason() {
        let t = sample(TransType::Tcc, GlobalStatus::Prepared);
        assert_eq!(Tcc.on_due(&t, 1_034_999), Due::NotYet(1_035_000));
        assert_eq!(
            Tcc.on_due(&t, 1_035_000),
            Due::RollBack("Timeout after 35 seconds".into())
        );
    }

    #[test]
    fn phase_two_confirms_last_first_then_delivers_and_cancels_after_abort() {
        let ops = branch_ops("01", "{}", "http://c/confirm", "http://c/cancel");
        let mut branches: Vec<BranchOp> = ops
            .into_iter()
            .chain(branch_ops(
                "02",
                "{}",
                "http://c/confirm",
                "http://c/cancel",
            ))
            .map(|b| BranchOp::new("g", b, 1))
            .collect();
        let submitted = sample(TransType::Tcc, GlobalStatus::Submitted);
        let call = |ops: Vec<usize>| Next::Call {
            ops,
            release_held: false,
            checkpoint: false,
        };
        assert_eq!(Tcc.next(&submitted, &branches), call(vec![3]));
        branches[3].status = crate::txn::BranchStatus::Succeeded;
        assert_eq!(Tcc.next(&submitted, &branches), call(vec![1]));
        let aborting = sample(TransType::Tcc, GlobalStatus::Aborting);
        assert_eq!(Tcc.next(&aborting, &branches), call(vec![2]));
        assert_eq!(Tcc.outbox_at_commit(), OutboxState::Held);
    }

    #[test]
    fn messages_come_with_the_submit_only() {
        let mut req = GlobalRequest::new("g", "tcc");
        req.steps = vec![[("action".to_owned(), "http://a/x".to_owned())].into()];
        req.payloads = vec!["{}".into()];
        let none = Subscribers::new();
        assert!(Tcc.steps(&req, Moment::Prepare, &none).is_err());
        let ops = Tcc.steps(&req, Moment::Submit, &none).unwrap();
        assert_eq!(
            ops[0].branch_id, "m01",
            "a TCC's messages are branches m01, m02, ..."
        );
    }

    #[test]
    fn a_tcc_branch_registers_cancel_then_confirm() {
        let [a, b] = branch_ops("01", "{}", "http://c/confirm", "http://c/cancel");
        assert_eq!((a.op, a.url.as_str()), (Op::Cancel, "http://c/cancel"));
        assert_eq!((b.op, b.url.as_str()), (Op::Confirm, "http://c/confirm"));
    }
}
