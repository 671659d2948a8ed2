//! `forceStop`: an operator ends a transaction that must not be driven any further.

use super::change::{Change, Current, LeaseWrite};
use super::{Decision, GlobalStatus, TxnError, NEVER};

/// Why a force-stopped transaction ended.
pub const REASON: &str = "stopped by an operator (forceStop)";

/// Decides a force stop: any unfinished transaction becomes `failed` (its pending branches
/// fail and its held messages are dropped, as on every path to `failed`).
///
/// # Errors
/// [`TxnError::NotFound`] if the transaction does not exist; [`TxnError::Conflict`] if it
/// already succeeded.
pub fn force_stop(current: &Current, now: i64) -> Result<Decision<Change>, TxnError> {
    let t = current.existing()?;
    match t.status {
        GlobalStatus::Failed => Ok(Decision::AlreadyDone),
        status @ GlobalStatus::Succeeded => Err(TxnError::Conflict {
            gid: t.gid.clone(),
            status,
            action: "force stop",
        }),
        GlobalStatus::Prepared | GlobalStatus::Submitted | GlobalStatus::Aborting => {
            Ok(Decision::Apply(
                Change::at(now)
                    .to(GlobalStatus::Failed)
                    .reason(REASON)
                    .due(NEVER)
                    .lease(LeaseWrite::Release),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::model::sample;
    use crate::txn::TransType;
    use GlobalStatus::*;

    fn stored(status: GlobalStatus) -> Current {
        Current {
            gid: "g".into(),
            txn: Some(sample(TransType::Tcc, status)),
            branches: vec![],
        }
    }

    #[test]
    fn an_unfinished_transaction_can_be_stopped() {
        for s in [Prepared, Submitted, Aborting] {
            let Ok(Decision::Apply(change)) = force_stop(&stored(s), 5) else {
                panic!("stops {s}");
            };
            assert_eq!(change.to, Some(Failed));
            assert_eq!(change.lease, LeaseWrite::Release);
        }
    }

    #[test]
    fn stopping_a_failed_transaction_is_a_duplicate_and_a_succeeded_one_a_conflict() {
        assert_eq!(force_stop(&stored(Failed), 5), Ok(Decision::AlreadyDone));
        assert!(matches!(
            force_stop(&stored(Succeeded), 5),
            Err(TxnError::Conflict { .. })
        ));
        assert!(matches!(
            force_stop(&Current::default(), 5),
            Err(TxnError::NotFound { .. })
        ));
    }
}
