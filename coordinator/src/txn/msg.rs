//! What only a transactional message (msg) knows.
//!
//! Its steps are given at prepare (or at a submit that was never prepared) and go out once it
//! commits, with no confirm to wait for. A msg still prepared after `timeout_to_fail` is not
//! rolled back but checked back: its initiator says whether the local transaction committed.
//! A rolled-back msg has nothing to undo.

use super::outbox::OutboxState;
use super::policy::{DuePrepared, Order, Policy, Stage};
use super::{GlobalStatus, GlobalTxn, Op, TransType};

/// The msg policy.
#[derive(Debug, Clone, Copy)]
pub struct Msg;

const DELIVER: &[Stage] = &[Stage {
    op: Op::Action,
    order: Order::Given,
    releases_held: false,
}];

impl Policy for Msg {
    fn trans_type(&self) -> TransType {
        TransType::Msg
    }

    fn can_abort(&self) -> bool {
        true
    }

    fn steps_at_submit(&self) -> bool {
        false
    }

    fn steps_at_prepare(&self) -> bool {
        true
    }

    fn outbox_at_commit(&self) -> OutboxState {
        OutboxState::Pending
    }

    fn on_timeout(&self, _txn: &GlobalTxn) -> DuePrepared {
        DuePrepared::CheckBack
    }

    fn phase_two(&self, status: GlobalStatus) -> &'static [Stage] {
        match status {
            GlobalStatus::Submitted => DELIVER,
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::model::sample;

    #[test]
    fn a_msg_that_timed_out_is_checked_back() {
        let t = sample(TransType::Msg, GlobalStatus::Prepared);
        assert_eq!(Msg.on_due_prepared(&t, 2_000_000), DuePrepared::CheckBack);
    }

    #[test]
    fn a_committed_msg_delivers_its_steps_and_a_rolled_back_one_does_nothing() {
        assert_eq!(Msg.phase_two(GlobalStatus::Submitted)[0].op, Op::Action);
        assert!(Msg.phase_two(GlobalStatus::Aborting).is_empty());
        assert_eq!(Msg.outbox_at_commit(), OutboxState::Pending);
    }
}
