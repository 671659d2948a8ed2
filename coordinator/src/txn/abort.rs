//! `abort`: roll a prepared global transaction back, starting phase 2 (cancel every branch).

use super::change::{Change, Current, Lease, LeaseWrite};
use super::policy::require;
use super::{Decision, GlobalStatus, TxnError};

/// Decides an `abort`, recording `reason`; the aborting instance takes `lease` to run phase 2
/// at once. Aborting a transaction that is already rolling back or rolled back is a
/// duplicate.
///
/// # Errors
/// [`TxnError::NotFound`] if it does not exist; [`TxnError::Conflict`] once it is submitted;
/// [`TxnError::Unsupported`] for a type that cannot be aborted.
pub fn abort(
    current: &Current,
    reason: &str,
    lease: &Lease,
    now: i64,
) -> Result<Decision<Change>, TxnError> {
    let t = current.existing()?;
    let policy = require(t.trans_type)?;
    if !policy.can_abort() {
        return Err(TxnError::Unsupported {
            trans_type: t.trans_type,
            action: "be aborted",
        });
    }
    match t.status {
        GlobalStatus::Prepared => Ok(Decision::Apply(
            Change::at(now)
                .to(GlobalStatus::Aborting)
                .reason(reason)
                .due(lease.expire)
                .lease(LeaseWrite::Acquire(lease.clone())),
        )),
        GlobalStatus::Aborting | GlobalStatus::Failed => Ok(Decision::AlreadyDone),
        status @ (GlobalStatus::Submitted | GlobalStatus::Succeeded) => Err(TxnError::Conflict {
            gid: t.gid.clone(),
            status,
            action: "abort",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::model::sample;
    use crate::txn::TransType;
    use GlobalStatus::*;

    fn lease() -> Lease {
        Lease {
            owner: "me".into(),
            token: "t".into(),
            expire: 9,
        }
    }

    fn stored(trans_type: TransType, status: GlobalStatus) -> Current {
        Current {
            gid: "g".into(),
            txn: Some(sample(trans_type, status)),
            branches: vec![],
        }
    }

    #[test]
    fn abort_moves_a_prepared_transaction_to_aborting() {
        for t in [TransType::Tcc, TransType::Msg] {
            let Ok(Decision::Apply(change)) = abort(&stored(t, Prepared), "why", &lease(), 5)
            else {
                panic!("aborts");
            };
            assert_eq!(change.to, Some(Aborting));
            assert_eq!(change.rollback_reason.as_deref(), Some("why"));
        }
    }

    #[test]
    fn abort_again_is_a_duplicate() {
        for status in [Aborting, Failed] {
            assert_eq!(
                abort(&stored(TransType::Tcc, status), "", &lease(), 5),
                Ok(Decision::AlreadyDone)
            );
        }
    }

    #[test]
    fn abort_after_submit_is_a_conflict() {
        for status in [Submitted, Succeeded] {
            let err = abort(&stored(TransType::Tcc, status), "", &lease(), 5).unwrap_err();
            assert!(matches!(
                err,
                TxnError::Conflict {
                    action: "abort",
                    ..
                }
            ));
        }
    }

    #[test]
    fn abort_of_an_unknown_transaction_is_not_found() {
        assert!(matches!(
            abort(&Current::default(), "", &lease(), 5),
            Err(TxnError::NotFound { .. })
        ));
    }

    #[test]
    fn a_saga_cannot_be_aborted() {
        let err = abort(&stored(TransType::Saga, Prepared), "", &lease(), 5).unwrap_err();
        assert!(matches!(err, TxnError::Unsupported { .. }));
    }
}
