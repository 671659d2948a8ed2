//! `abort`: roll a prepared global transaction back, starting phase 2 (cancel every branch).

use super::{Decision, GlobalStatus, TransType, TxnError};

/// Decides an `abort` of an existing transaction. Aborting a transaction that is already
/// rolling back or rolled back is a duplicate.
///
/// # Errors
/// [`TxnError::NotFound`] if it does not exist; [`TxnError::Conflict`] once it is submitted;
/// [`TxnError::Unsupported`] for a saga.
pub fn abort(
    gid: &str,
    existing: Option<(GlobalStatus, TransType)>,
) -> Result<Decision<()>, TxnError> {
    let Some((status, trans_type)) = existing else {
        return Err(TxnError::NotFound {
            gid: gid.to_owned(),
        });
    };
    if trans_type == TransType::Saga {
        return Err(TxnError::Unsupported {
            trans_type,
            action: "be aborted",
        });
    }
    match status {
        GlobalStatus::Prepared => Ok(Decision::Apply(())),
        GlobalStatus::Aborting | GlobalStatus::Failed => Ok(Decision::AlreadyDone),
        GlobalStatus::Submitted | GlobalStatus::Succeeded => Err(TxnError::Conflict {
            gid: gid.to_owned(),
            status,
            action: "abort",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GlobalStatus::*;

    #[test]
    fn abort_moves_a_prepared_transaction_to_aborting() {
        for t in [TransType::Tcc, TransType::Msg] {
            assert_eq!(abort("g", Some((Prepared, t))), Ok(Decision::Apply(())));
        }
    }

    #[test]
    fn abort_again_is_a_duplicate() {
        for status in [Aborting, Failed] {
            assert_eq!(
                abort("g", Some((status, TransType::Tcc))),
                Ok(Decision::AlreadyDone)
            );
        }
    }

    #[test]
    fn abort_after_submit_is_a_conflict() {
        for status in [Submitted, Succeeded] {
            let err = abort("g", Some((status, TransType::Tcc))).unwrap_err();
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
        assert!(matches!(abort("g", None), Err(TxnError::NotFound { .. })));
    }

    #[test]
    fn a_saga_cannot_be_aborted() {
        let err = abort("g", Some((Prepared, TransType::Saga))).unwrap_err();
        assert!(matches!(err, TxnError::Unsupported { .. }));
    }
}
