//! `forceStop`: an operator ends a transaction that must not be driven any further.

use super::{Decision, GlobalStatus, TxnError};

/// Decides a force stop: any unfinished transaction becomes `failed`.
///
/// # Errors
/// [`TxnError::NotFound`] if the transaction does not exist; [`TxnError::Conflict`] if it
/// already succeeded.
pub fn force_stop(gid: &str, status: Option<GlobalStatus>) -> Result<Decision<()>, TxnError> {
    match status {
        None => Err(TxnError::NotFound {
            gid: gid.to_owned(),
        }),
        Some(GlobalStatus::Failed) => Ok(Decision::AlreadyDone),
        Some(status @ GlobalStatus::Succeeded) => Err(TxnError::Conflict {
            gid: gid.to_owned(),
            status,
            action: "force stop",
        }),
        Some(GlobalStatus::Prepared | GlobalStatus::Submitted | GlobalStatus::Aborting) => {
            Ok(Decision::Apply(()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GlobalStatus::*;

    #[test]
    fn an_unfinished_transaction_can_be_stopped() {
        for s in [Prepared, Submitted, Aborting] {
            assert_eq!(force_stop("g", Some(s)), Ok(Decision::Apply(())));
        }
    }

    #[test]
    fn stopping_a_failed_transaction_is_a_duplicate_and_a_succeeded_one_a_conflict() {
        assert_eq!(force_stop("g", Some(Failed)), Ok(Decision::AlreadyDone));
        assert!(matches!(
            force_stop("g", Some(Succeeded)),
            Err(TxnError::Conflict { .. })
        ));
        assert!(matches!(
            force_stop("g", None),
            Err(TxnError::NotFound { .. })
        ));
    }
}
