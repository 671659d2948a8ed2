//! `prepare`: open a global transaction.

use super::{Decision, GlobalStatus, TransType, TxnError};

/// Decides a `prepare` of `gid` with type `requested`, given the stored status and type if the
/// transaction exists. Preparing an already prepared transaction is a duplicate.
///
/// # Errors
/// [`TxnError::Conflict`] once the transaction has left `prepared`;
/// [`TxnError::TypeMismatch`] if it exists with another type.
pub fn prepare(
    gid: &str,
    requested: TransType,
    existing: Option<(GlobalStatus, TransType)>,
) -> Result<Decision<()>, TxnError> {
    match existing {
        None => Ok(Decision::Apply(())),
        Some((_, t)) if t != requested => Err(TxnError::TypeMismatch {
            gid: gid.to_owned(),
            existing: t,
            requested,
        }),
        Some((GlobalStatus::Prepared, _)) => Ok(Decision::AlreadyDone),
        Some((status, _)) => Err(TxnError::Conflict {
            gid: gid.to_owned(),
            status,
            action: "prepare",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_creates_a_new_transaction() {
        assert_eq!(prepare("g", TransType::Tcc, None), Ok(Decision::Apply(())));
    }

    #[test]
    fn prepare_twice_is_a_duplicate() {
        let d = prepare(
            "g",
            TransType::Tcc,
            Some((GlobalStatus::Prepared, TransType::Tcc)),
        );
        assert_eq!(d, Ok(Decision::AlreadyDone));
    }

    #[test]
    fn prepare_after_the_transaction_moved_on_is_a_conflict() {
        for status in GlobalStatus::ALL
            .iter()
            .filter(|s| **s != GlobalStatus::Prepared)
        {
            let err = prepare("g", TransType::Tcc, Some((*status, TransType::Tcc))).unwrap_err();
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
        let err = prepare(
            "g",
            TransType::Msg,
            Some((GlobalStatus::Prepared, TransType::Tcc)),
        );
        assert!(matches!(err, Err(TxnError::TypeMismatch { .. })));
    }
}
