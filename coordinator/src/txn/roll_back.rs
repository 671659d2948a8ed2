//! Rolling back a transaction this instance drives: a prepared one whose timeout passed, or
//! a running one whose forward path cannot complete (a saga whose action failed, whose
//! timeout passed, or which failed more rounds than its retry limit allows).

use super::change::{Change, Current};
use super::policy::require;
use super::{BranchStatus, Decision, GlobalStatus, Op, TxnError};

/// Decides turning the transaction to `aborting` with `reason`, by the instance holding its
/// lease under `token` (which keeps it to undo the branches). What the round did is recorded
/// in the same write: the operations in `done` succeeded, those in `failed` failed; and the
/// type's policy marks failed what may have run without answering, so it is undone too.
///
/// # Errors
/// [`TxnError::LeaseLost`] if another instance (or a client's submit or abort) took the
/// transaction over.
pub fn roll_back(
    current: &Current,
    token: &str,
    reason: &str,
    done: &[(String, Op)],
    failed: &[(String, Op)],
    now: i64,
) -> Result<Decision<Change>, TxnError> {
    let t = current.fenced(token)?;
    if !matches!(t.status, GlobalStatus::Prepared | GlobalStatus::Submitted) {
        return Ok(Decision::AlreadyDone);
    }
    let policy = require(t.trans_type)?;
    let mut after = current.branches.clone();
    for (list, status) in [
        (done, BranchStatus::Succeeded),
        (failed, BranchStatus::Failed),
    ] {
        for (id, op) in list {
            if let Some(b) = after
                .iter_mut()
                .find(|b| &b.branch_id == id && b.op == *op && b.status == BranchStatus::Prepared)
            {
                b.status = status;
            }
        }
    }
    let mut change = Change::at(now).to(GlobalStatus::Aborting).reason(reason);
    change.complete = done.to_vec();
    change.fail = failed.to_vec();
    change.fail.extend(
        policy
            .on_roll_back(t, &after)
            .into_iter()
            .map(|i| (after[i].branch_id.clone(), after[i].op)),
    );
    Ok(Decision::Apply(change))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::model::sample;
    use crate::txn::{BranchOp, NewBranch, TransType};

    fn leased(trans_type: TransType, status: GlobalStatus) -> Current {
        let mut t = sample(trans_type, status);
        t.lease_token = "mine".into();
        Current {
            gid: "g".into(),
            txn: Some(t),
            branches: vec![],
        }
    }

    #[test]
    fn a_timed_out_transaction_rolls_back_under_its_lease() {
        let c = leased(TransType::Tcc, GlobalStatus::Prepared);
        let Ok(Decision::Apply(change)) =
            roll_back(&c, "mine", "Timeout after 35 seconds", &[], &[], 5)
        else {
            panic!("rolls back");
        };
        assert_eq!(change.to, Some(GlobalStatus::Aborting));
        assert!(matches!(
            roll_back(&c, "other", "x", &[], &[], 5),
            Err(TxnError::LeaseLost { .. })
        ));
        let done = leased(TransType::Tcc, GlobalStatus::Aborting);
        assert_eq!(
            roll_back(&done, "mine", "x", &[], &[], 5),
            Ok(Decision::AlreadyDone)
        );
    }

    #[test]
    fn a_saga_that_turns_records_its_round_and_fails_what_may_have_run() {
        let mut c = leased(TransType::Saga, GlobalStatus::Submitted);
        if let Some(t) = c.txn.as_mut() {
            t.custom_data = r#"{"concurrent": true}"#.into();
            t.steps = vec![Default::default(); 3];
        }
        for id in ["01", "02", "03"] {
            for op in [Op::Compensate, Op::Action] {
                c.branches.push(BranchOp::new(
                    "g",
                    NewBranch {
                        branch_id: id.into(),
                        op,
                        url: "http://s/x".into(),
                        data: String::new(),
                    },
                    1,
                ));
            }
        }
        let done = [("01".to_owned(), Op::Action)];
        let failed = [("02".to_owned(), Op::Action)];
        let Ok(Decision::Apply(change)) = roll_back(&c, "mine", "no stock", &done, &failed, 5)
        else {
            panic!("rolls back");
        };
        c.apply(change).unwrap();
        let actions: Vec<(&str, BranchStatus)> = c
            .branches
            .iter()
            .filter(|b| b.op == Op::Action)
            .map(|b| (b.branch_id.as_str(), b.status))
            .collect();
        assert_eq!(
            actions,
            [
                ("01", BranchStatus::Succeeded),
                ("02", BranchStatus::Failed),
                ("03", BranchStatus::Failed)
            ]
        );
        assert_eq!(
            c.txn.map(|t| t.rollback_reason).as_deref(),
            Some("no stock")
        );
    }
}
