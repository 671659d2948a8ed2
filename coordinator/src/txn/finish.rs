//! Finishing phase 2: every branch operation is done, so the transaction reaches its end.

use super::change::{Change, Current, LeaseWrite};
use super::{Decision, GlobalStatus, Op, TxnError, NEVER};

/// Decides the end of a transaction whose phase 2 completed in a round run under `token`:
/// the operations in `done` succeeded, and the transaction succeeds (after submit) or fails
/// (after abort), never to be due again. One write records it all.
///
/// # Errors
/// [`TxnError::LeaseLost`] if another instance took the transaction over;
/// [`TxnError::Conflict`] for a transaction still `prepared`: it has no phase 2 to finish.
pub fn finish(
    current: &Current,
    token: &str,
    done: Vec<(String, Op)>,
    now: i64,
) -> Result<Decision<Change>, TxnError> {
    let t = current.fenced(token)?;
    let to = match t.status {
        GlobalStatus::Submitted => GlobalStatus::Succeeded,
        GlobalStatus::Aborting => GlobalStatus::Failed,
        GlobalStatus::Succeeded | GlobalStatus::Failed => return Ok(Decision::AlreadyDone),
        status @ GlobalStatus::Prepared => {
            return Err(TxnError::Conflict {
                gid: t.gid.clone(),
                status,
                action: "finish",
            })
        }
    };
    let mut change = Change::at(now).to(to).due(NEVER).lease(LeaseWrite::Release);
    change.complete = done;
    Ok(Decision::Apply(change))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::model::sample;
    use crate::txn::TransType;
    use GlobalStatus::*;

    fn leased(status: GlobalStatus) -> Current {
        let mut t = sample(TransType::Tcc, status);
        t.lease_token = "mine".into();
        Current {
            gid: "g".into(),
            txn: Some(t),
            branches: vec![],
        }
    }

    fn to(status: GlobalStatus) -> Option<GlobalStatus> {
        match finish(&leased(status), "mine", vec![], 5) {
            Ok(Decision::Apply(c)) => c.to,
            _ => None,
        }
    }

    #[test]
    fn a_submitted_transaction_succeeds_and_an_aborting_one_fails() {
        assert_eq!(to(Submitted), Some(Succeeded));
        assert_eq!(to(Aborting), Some(Failed));
    }

    #[test]
    fn finishing_a_finished_transaction_is_a_duplicate() {
        for s in [Succeeded, Failed] {
            assert_eq!(
                finish(&leased(s), "mine", vec![], 5),
                Ok(Decision::AlreadyDone)
            );
        }
    }

    #[test]
    fn a_prepared_transaction_cannot_finish() {
        assert!(matches!(
            finish(&leased(Prepared), "mine", vec![], 5),
            Err(TxnError::Conflict { .. })
        ));
    }

    #[test]
    fn finishing_needs_the_lease() {
        assert!(matches!(
            finish(&leased(Submitted), "stale", vec![], 5),
            Err(TxnError::LeaseLost { .. })
        ));
    }
}
