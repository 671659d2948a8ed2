//! `registerBranch`: add a branch to a prepared global transaction.

use super::{GlobalStatus, NewBranch, Op, TransType, TxnError};

/// Checks that a branch may register with the transaction. Registering the same branch twice
/// is harmless: the store ignores the second copy.
///
/// # Errors
/// [`TxnError::NotFound`] if the transaction does not exist; [`TxnError::Conflict`] once it
/// has left `prepared`; [`TxnError::TypeMismatch`] if it is not of the branch's type.
pub fn register(
    gid: &str,
    requested: TransType,
    existing: Option<(GlobalStatus, TransType)>,
) -> Result<(), TxnError> {
    match existing {
        None => Err(TxnError::NotFound {
            gid: gid.to_owned(),
        }),
        Some((_, t)) if t != requested => Err(TxnError::TypeMismatch {
            gid: gid.to_owned(),
            existing: t,
            requested,
        }),
        Some((GlobalStatus::Prepared, _)) => Ok(()),
        Some((status, _)) => Err(TxnError::Conflict {
            gid: gid.to_owned(),
            status,
            action: "register a branch",
        }),
    }
}

/// The two operations a TCC branch registers, in DTM's order: cancel, then confirm.
pub fn tcc_branch_ops(branch_id: &str, data: &str, confirm: &str, cancel: &str) -> [NewBranch; 2] {
    let op = |op, url: &str| NewBranch {
        branch_id: branch_id.to_owned(),
        op,
        url: url.to_owned(),
        data: data.to_owned(),
    };
    [op(Op::Cancel, cancel), op(Op::Confirm, confirm)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_branch_registers_only_while_prepared() {
        for status in GlobalStatus::ALL {
            let r = register("g", TransType::Tcc, Some((*status, TransType::Tcc)));
            if *status == GlobalStatus::Prepared {
                assert_eq!(r, Ok(()));
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
    fn a_branch_of_an_unknown_transaction_is_not_found() {
        assert!(matches!(
            register("g", TransType::Tcc, None),
            Err(TxnError::NotFound { .. })
        ));
    }

    #[test]
    fn a_tcc_branch_registers_cancel_then_confirm() {
        let [a, b] = tcc_branch_ops("01", "{}", "http://c/confirm", "http://c/cancel");
        assert_eq!((a.op, a.url.as_str()), (Op::Cancel, "http://c/cancel"));
        assert_eq!((b.op, b.url.as_str()), (Op::Confirm, "http://c/confirm"));
    }
}
