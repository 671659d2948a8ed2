//! What only a TCC knows.
//!
//! Branches register their confirm and cancel while the transaction is prepared (the
//! initiator calls each Try itself). A submit may carry messages, which are committed held
//! and go out once every confirm succeeded. Phase 2 confirms (after submit) or cancels (after
//! abort or timeout) every branch, last registered first; a TCC still prepared after
//! `timeout_to_fail` rolls back.

use super::outbox::OutboxState;
use super::policy::{DuePrepared, Order, Policy, Stage};
use super::{GlobalStatus, GlobalTxn, NewBranch, Op, TransType};

/// The TCC policy.
#[derive(Debug, Clone, Copy)]
pub struct Tcc;

const CONFIRM_THEN_DELIVER: &[Stage] = &[
    Stage {
        op: Op::Confirm,
        order: Order::Reverse,
        releases_held: false,
    },
    Stage {
        op: Op::Action,
        order: Order::Given,
        releases_held: true,
    },
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

    fn steps_at_submit(&self) -> bool {
        true
    }

    fn steps_at_prepare(&self) -> bool {
        false
    }

    fn outbox_at_commit(&self) -> OutboxState {
        OutboxState::Held
    }

    fn on_timeout(&self, txn: &GlobalTxn) -> DuePrepared {
        DuePrepared::Abort(format!(
            "Timeout after {} seconds",
            txn.options.timeout_to_fail
        ))
    }

    fn phase_two(&self, status: GlobalStatus) -> &'static [Stage] {
        match status {
            GlobalStatus::Submitted => CONFIRM_THEN_DELIVER,
            GlobalStatus::Aborting => CANCEL,
            _ => &[],
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

    #[test]
    fn a_tcc_that_timed_out_rolls_back_with_dtms_reason() {
        let t = sample(TransType::Tcc, GlobalStatus::Prepared);
        assert_eq!(
            Tcc.on_due_prepared(&t, 1_034_999),
            DuePrepared::NotYet(1_035_000)
        );
        assert_eq!(
            Tcc.on_due_prepared(&t, 1_035_000),
            DuePrepared::Abort("Timeout after 35 seconds".into())
        );
    }

    #[test]
    fn phase_two_confirms_then_delivers_after_submit_and_cancels_after_abort() {
        let ops = |s| Tcc.phase_two(s).iter().map(|st| st.op).collect::<Vec<_>>();
        assert_eq!(ops(GlobalStatus::Submitted), [Op::Confirm, Op::Action]);
        assert_eq!(ops(GlobalStatus::Aborting), [Op::Cancel]);
        assert!(ops(GlobalStatus::Prepared).is_empty());
        assert!(Tcc.phase_two(GlobalStatus::Submitted)[1].releases_held);
        assert_eq!(Tcc.outbox_at_commit(), OutboxState::Held);
    }

    #[test]
    fn a_tcc_branch_registers_cancel_then_confirm() {
        let [a, b] = branch_ops("01", "{}", "http://c/confirm", "http://c/cancel");
        assert_eq!((a.op, a.url.as_str()), (Op::Cancel, "http://c/cancel"));
        assert_eq!((b.op, b.url.as_str()), (Op::Confirm, "http://c/confirm"));
    }
}
