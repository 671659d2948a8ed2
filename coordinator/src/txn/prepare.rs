//! `prepare`: open a global transaction.

use super::change::{Change, Current};
use super::{Decision, GlobalStatus, GlobalTxn, NewBranch, TxnError};

/// Decides a `prepare` of `txn` (as it would be created, `prepared`) with the steps it
/// carries. Preparing an already prepared transaction is a duplicate.
///
/// # Errors
/// [`TxnError::Conflict`] once the transaction has left `prepared`;
/// [`TxnError::TypeMismatch`] if it exists with another type.
pub fn prepare(
    current: &Current,
    txn: &GlobalTxn,
    steps: &[NewBranch],
) -> Result<Decision<Change>, TxnError> {
    match &current.txn {
        None => {
            let mut change = Change::at(txn.create_time);
            change.create = Some(txn.clone());
            change.add_branches = steps.to_vec();
            Ok(Decision::Apply(change))
        }
        Some(t) if t.trans_type != txn.trans_type => Err(TxnError::TypeMismatch {
            gid: t.gid.clone(),
            existing: t.trans_type,
            requested: txn.trans_type,
        }),
        Some(t) if t.status == GlobalStatus::Prepared => Ok(Decision::AlreadyDone),
        Some(t) => Err(TxnError::Conflict {
            gid: t.gid.clone(),
            status: t.status,
            action: "prepare",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::model::sample;
    use crate::txn::TransType;

    fn stored(t: GlobalTxn) -> Current {
        Current {
            gid: t.gid.clone(),
            txn: Some(t),
            branches: vec![],
        }
    }

    #[test]
    fn prepare_creates_a_new_transaction() {
        let t = sample(TransType::Tcc, GlobalStatus::Prepared);
        let Ok(Decision::Apply(change)) = prepare(&Current::default(), &t, &[]) else {
            panic!("a new transaction is created");
        };
        assert_eq!(change.create, Some(t));
    }

    #[test]
    fn prepare_twice_is_a_duplicate() {
        let t = sample(TransType::Tcc, GlobalStatus::Prepared);
        assert_eq!(
            prepare(&stored(t.clone()), &t, &[]),
            Ok(Decision::AlreadyDone)
        );
    }

    #[test]
    fn prepare_after_the_transaction_moved_on_is_a_conflict() {
        let t = sample(TransType::Tcc, GlobalStatus::Prepared);
        for status in GlobalStatus::ALL
            .iter()
            .filter(|s| **s != GlobalStatus::Prepared)
        {
            let err = prepare(&stored(sample(TransType::Tcc, *status)), &t, &[]).unwrap_err();
            assert!(
                matches!(
                    err,
                    TxnError::Conflict {
                        action: "prepare",
                        ..
                    }
                ),
                "{status}"
            );
        }
    }

    #[test]
    fn prepare_with_another_type_is_rejected() {
        let t = sample(TransType::Msg, GlobalStatus::Prepared);
        let err = prepare(
            &stored(sample(TransType::Tcc, GlobalStatus::Prepared)),
            &t,
            &[],
        );
        assert!(matches!(err, Err(TxnError::TypeMismatch { .. })));
    }
}
