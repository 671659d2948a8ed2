//! What only a transactional message (msg) knows.
//!
//! Its steps are given at prepare (or at a submit that was never prepared) and go out once it
//! commits, with no confirm to wait for. A msg still prepared after `timeout_to_fail` is not
//! rolled back but checked back: its initiator says whether the local transaction committed.
//! A rolled-back msg has nothing to undo.

use super::outbox::OutboxState;
use super::policy::{DuePrepared, Order, Policy, Stage};
use super::{GlobalStatus, GlobalTxn, Op, TransType};

/// The delay a msg's `custom_data` asks for, in seconds: `{"delay": N}` with N a positive
/// integer. `None` when it asks for none (a delay that is not such a number is refused at the
/// API, see [`delay_problem`]).
pub fn delay_s(custom_data: &str) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_str(custom_data).ok()?;
    v.get("delay")?.as_i64().filter(|d| *d > 0)
}

/// What is wrong with the delay a msg's `custom_data` asks for, if anything.
pub fn delay_problem(custom_data: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(custom_data).ok()?;
    let d = v.get("delay")?;
    match d.as_i64() {
        Some(n) if (0..=MAX_DELAY_S).contains(&n) => None,
        _ => Some(format!(
            "custom_data delay must be a whole number of seconds from 0 to {MAX_DELAY_S}, got {d}"
        )),
    }
}

/// Longest delay of a msg, in seconds (30 days).
pub const MAX_DELAY_S: i64 = 30 * 86_400;

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

    /// DTM's delayed message: `custom_data` `{"delay": N}` defers its steps by N seconds.
    fn delay_ms(&self, txn: &GlobalTxn) -> i64 {
        delay_s(&txn.custom_data).map_or(0, |s| s.saturating_mul(1000))
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

    #[test]
    fn a_delay_is_read_from_custom_data_and_a_bad_one_is_named() {
        assert_eq!(delay_s(r#"{"delay": 5}"#), Some(5));
        assert_eq!(delay_s(r#"{"delay": 0}"#), None);
        assert_eq!(delay_s("not json"), None);
        assert_eq!(delay_s(r#"{"other": 1}"#), None);
        assert_eq!(delay_problem(r#"{"delay": 5}"#), None);
        assert!(delay_problem(r#"{"delay": -1}"#).is_some_and(|p| p.contains("got -1")));
        assert!(delay_problem(r#"{"delay": "5"}"#).is_some());
        assert!(delay_problem(r#"{"delay": 99999999}"#).is_some());
    }
}
