//! Finishing phase 2: every branch operation is done, so the transaction reaches its end.

use super::{Decision, GlobalStatus, TxnError};

/// Decides the final status of a transaction whose phase 2 has completed.
///
/// # Errors
/// [`TxnError::Conflict`] for a transaction still `prepared`: it has no phase 2 to finish.
pub fn finish(gid: &str, status: GlobalStatus) -> Result<Decision<GlobalStatus>, TxnError> {
    match status {
        GlobalStatus::Submitted => Ok(Decision::Apply(GlobalStatus::Succeeded)),
        GlobalStatus::Aborting => Ok(Decision::Apply(GlobalStatus::Failed)),
        GlobalStatus::Succeeded | GlobalStatus::Failed => Ok(Decision::AlreadyDone),
        GlobalStatus::Prepared => Err(TxnError::Conflict {
            gid: gid.to_owned(),
            status,
            action: "finish",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GlobalStatus::*;

    #[test]
    fn a_submitted_transaction_succeeds_and_an_aborting_one_fails() {
        assert_eq!(finish("g", Submitted), Ok(Decision::Apply(Succeeded)));
        assert_eq!(finish("g", Aborting), Ok(Decision::Apply(Failed)));
    }

    #[test]
    fn finishing_a_finished_transaction_is_a_duplicate() {
        assert_eq!(finish("g", Succeeded), Ok(Decision::AlreadyDone));
        assert_eq!(finish("g", Failed), Ok(Decision::AlreadyDone));
    }

    #[test]
    fn a_prepared_transaction_cannot_finish() {
        assert!(matches!(
            finish("g", Prepared),
            Err(TxnError::Conflict { .. })
        ));
    }
}
