//! `registerBranch`: add a branch to a prepared global transaction.

use super::change::{Change, Current};
use super::{Decision, GlobalStatus, NewBranch, TransType, TxnError};

/// Decides registering `branches` with the transaction. Registering the same operations
/// again is a duplicate (the first registration is kept).
///
/// # Errors
/// [`TxnError::NotFound`] if the transaction does not exist; [`TxnError::Conflict`] once it
/// has left `prepared`; [`TxnError::TypeMismatch`] if it is not of the branch's type;
/// [`TxnError::TooMany`] if it would then have more than `max_branches` branches.
pub fn register(
    current: &Current,
    requested: TransType,
    branches: &[NewBranch],
    max_branches: usize,
    now: i64,
) -> Result<Decision<Change>, TxnError> {
    let t = current.existing()?;
    if t.trans_type != requested {
        return Err(TxnError::TypeMismatch {
            gid: t.gid.clone(),
            existing: t.trans_type,
            requested,
        });
    }
    if t.status != GlobalStatus::Prepared {
        return Err(TxnError::Conflict {
            gid: t.gid.clone(),
            status: t.status,
            action: "register a branch",
        });
    }
    let new: Vec<NewBranch> = branches
        .iter()
        .filter(|b| {
            !current
                .branches
                .iter()
                .any(|o| o.branch_id == b.branch_id && o.op == b.op)
        })
        .cloned()
        .collect();
    if new.is_empty() {
        return Ok(Decision::AlreadyDone);
    }
    let ids: std::collections::BTreeSet<&str> = current
        .branches
        .iter()
        .map(|b| b.branch_id.as_str())
        .chain(new.iter().map(|b| b.branch_id.as_str()))
        .collect();
    if ids.len() > max_branches {
        return Err(TxnError::TooMany {
            gid: t.gid.clone(),
            what: "branches",
            max: max_branches,
            would: ids.len(),
        });
    }
    let mut change = Change::at(now);
    change.add_branches = new;
    Ok(Decision::Apply(change))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::model::sample;
    use crate::txn::tcc::branch_ops;

    fn stored(status: GlobalStatus) -> Current {
        Current {
            gid: "g".into(),
            txn: Some(sample(TransType::Tcc, status)),
            branches: vec![],
        }
    }

    #[test]
    fn a_branch_registers_only_while_prepared() {
        let ops = branch_ops("01", "{}", "http://c/confirm", "http://c/cancel");
        for status in GlobalStatus::ALL {
            let r = register(&stored(*status), TransType::Tcc, &ops, 8, 5);
            if *status == GlobalStatus::Prepared {
                assert!(matches!(r, Ok(Decision::Apply(c)) if c.add_branches.len() == 2));
            } else {
                assert!(matches!(
                    r,
                    Err(TxnError::Conflict {
                        action: "register a branch",
                        ..
                    })
                ));
            }
        }
    }

    #[test]
    fn a_branch_registered_again_is_a_duplicate() {
        let ops = branch_ops("01", "{}", "http://c/confirm", "http://c/cancel");
        let mut c = stored(GlobalStatus::Prepared);
        let Ok(Decision::Apply(change)) = register(&c, TransType::Tcc, &ops, 8, 5) else {
            panic!("registers");
        };
        c.apply(change).unwrap();
        assert_eq!(
            register(&c, TransType::Tcc, &ops, 8, 6),
            Ok(Decision::AlreadyDone)
        );
    }

    #[test]
    fn a_branch_beyond_the_limit_is_refused_but_one_already_there_is_a_duplicate() {
        let mut c = stored(GlobalStatus::Prepared);
        for id in ["01", "02"] {
            let ops = branch_ops(id, "{}", "http://c/confirm", "http://c/cancel");
            let Ok(Decision::Apply(change)) = register(&c, TransType::Tcc, &ops, 2, 5) else {
                panic!("registers {id}");
            };
            c.apply(change).unwrap();
        }
        let third = branch_ops("03", "{}", "http://c/confirm", "http://c/cancel");
        assert!(matches!(
            register(&c, TransType::Tcc, &third, 2, 6),
            Err(TxnError::TooMany {
                max: 2,
                would: 3,
                ..
            })
        ));
        let again = branch_ops("02", "{}", "http://c/confirm", "http://c/cancel");
        assert_eq!(
            register(&c, TransType::Tcc, &again, 2, 6),
            Ok(Decision::AlreadyDone)
        );
    }

    #[test]
    fn a_branch_of_an_unknown_transaction_is_not_found() {
        assert!(matches!(
            register(&Current::default(), TransType::Tcc, &[], 8, 1),
            Err(TxnError::NotFound { .. })
        ));
    }
}
