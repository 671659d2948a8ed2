//! What happens when a prepared transaction comes due: past `timeout_to_fail`, a TCC rolls
//! back and a msg is checked back (see each type's policy). This file carries out the
//! rollback.

use super::change::{Change, Current};
use super::{Decision, GlobalStatus, TxnError};

/// When a transaction created at `create_time` (ms) times out.
pub fn timeout_deadline(create_time: i64, timeout_to_fail_s: i64) -> i64 {
    create_time.saturating_add(timeout_to_fail_s.saturating_mul(1000))
}

/// Decides rolling back a prepared transaction that timed out, with `reason`, by the
/// instance holding its lease under `token` (which keeps it to cancel the branches).
///
/// # Errors
/// [`TxnError::LeaseLost`] if another instance (or a client's submit or abort) took the
/// transaction over.
pub fn time_out(
    current: &Current,
    token: &str,
    reason: &str,
    now: i64,
) -> Result<Decision<Change>, TxnError> {
    let t = current.fenced(token)?;
    if t.status != GlobalStatus::Prepared {
        return Ok(Decision::AlreadyDone);
    }
    Ok(Decision::Apply(
        Change::at(now).to(GlobalStatus::Aborting).reason(reason),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::model::sample;
    use crate::txn::TransType;

    #[test]
    fn a_timed_out_transaction_rolls_back_under_its_lease() {
        let mut t = sample(TransType::Tcc, GlobalStatus::Prepared);
        t.lease_token = "mine".into();
        let c = Current {
            gid: "g".into(),
            txn: Some(t),
            branches: vec![],
        };
        let Ok(Decision::Apply(change)) = time_out(&c, "mine", "Timeout after 35 seconds", 5)
        else {
            panic!("rolls back");
        };
        assert_eq!(change.to, Some(GlobalStatus::Aborting));
        assert!(matches!(
            time_out(&c, "other", "x", 5),
            Err(TxnError::LeaseLost { .. })
        ));
    }

    #[test]
    fn the_deadline_is_the_creation_plus_the_timeout() {
        assert_eq!(timeout_deadline(1_000, 35), 36_000);
        assert_eq!(timeout_deadline(i64::MAX - 1, 35), i64::MAX);
    }
}
