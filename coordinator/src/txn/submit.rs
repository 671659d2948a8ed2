//! `submit`: commit a global transaction, starting phase 2 (confirm every branch).

use super::{Decision, GlobalStatus, TransType, TxnError};

/// How a submit changes the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitChange {
    /// The transaction was never prepared: create it as submitted (as DTM does for msg, and
    /// for a TCC with no branches).
    Create,
    /// Move the prepared transaction to submitted.
    FromPrepared,
}

/// Decides a `submit`. Submitting a transaction that is already submitted or succeeded is a
/// duplicate.
///
/// # Errors
/// [`TxnError::Conflict`] if it is rolling back or rolled back;
/// [`TxnError::TypeMismatch`] if it exists with another type.
pub fn submit(
    gid: &str,
    requested: TransType,
    existing: Option<(GlobalStatus, TransType)>,
) -> Result<Decision<SubmitChange>, TxnError> {
    match existing {
        None => Ok(Decision::Apply(SubmitChange::Create)),
        Some((_, t)) if t != requested => Err(TxnError::TypeMismatch {
            gid: gid.to_owned(),
            existing: t,
            requested,
        }),
        Some((GlobalStatus::Prepared, _)) => Ok(Decision::Apply(SubmitChange::FromPrepared)),
        Some((GlobalStatus::Submitted | GlobalStatus::Succeeded, _)) => Ok(Decision::AlreadyDone),
        Some((status @ (GlobalStatus::Aborting | GlobalStatus::Failed), _)) => {
            Err(TxnError::Conflict {
                gid: gid.to_owned(),
                status,
                action: "submit",
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GlobalStatus::*;

    fn tcc(status: GlobalStatus) -> Option<(GlobalStatus, TransType)> {
        Some((status, TransType::Tcc))
    }

    #[test]
    fn submit_of_an_unknown_transaction_creates_it_submitted() {
        assert_eq!(
            submit("g", TransType::Msg, None),
            Ok(Decision::Apply(SubmitChange::Create))
        );
    }

    #[test]
    fn submit_moves_a_prepared_transaction_to_submitted() {
        assert_eq!(
            submit("g", TransType::Tcc, tcc(Prepared)),
            Ok(Decision::Apply(SubmitChange::FromPrepared))
        );
    }

    #[test]
    fn submit_again_is_a_duplicate() {
        assert_eq!(
            submit("g", TransType::Tcc, tcc(Submitted)),
            Ok(Decision::AlreadyDone)
        );
        assert_eq!(
            submit("g", TransType::Tcc, tcc(Succeeded)),
            Ok(Decision::AlreadyDone)
        );
    }

    #[test]
    fn submit_after_abort_is_a_conflict() {
        for status in [Aborting, Failed] {
            let err = submit("g", TransType::Tcc, tcc(status)).unwrap_err();
            assert!(matches!(
                err,
                TxnError::Conflict {
                    action: "submit",
                    ..
                }
            ));
            assert!(err.to_string().contains("cannot submit"), "{err}");
        }
    }

    #[test]
    fn submit_with_another_type_is_rejected() {
        let err = submit("g", TransType::Msg, tcc(Prepared)).unwrap_err();
        assert!(matches!(err, TxnError::TypeMismatch { .. }));
    }
}
