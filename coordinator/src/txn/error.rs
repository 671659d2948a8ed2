//! Errors of the state machine: illegal transitions and unknown codes.

use super::{GlobalStatus, TransType};

/// Why a transition cannot happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    /// No global transaction has this gid.
    #[error("no transaction with gid '{gid}'")]
    NotFound {
        /// The gid asked for.
        gid: String,
    },
    /// The transaction is in a status where the action is illegal (DTM answers FAILURE).
    #[error("transaction '{gid}' is {status}: cannot {action}")]
    Conflict {
        /// The transaction.
        gid: String,
        /// Its current status.
        status: GlobalStatus,
        /// What was asked: `submit`, `abort`, `register a branch`, ...
        action: &'static str,
    },
    /// The transaction exists with another type than the request names.
    #[error("transaction '{gid}' is a {existing} transaction, not {requested}")]
    TypeMismatch {
        /// The transaction.
        gid: String,
        /// Its stored type.
        existing: TransType,
        /// The type in the request.
        requested: TransType,
    },
    /// The transaction type has no such operation (a saga cannot be aborted).
    #[error("a {trans_type} transaction cannot {action}")]
    Unsupported {
        /// The type.
        trans_type: TransType,
        /// The operation asked for.
        action: &'static str,
    },
    /// A stored or received code is not one Settle knows.
    #[error("unknown {what} '{code}'")]
    UnknownCode {
        /// Which kind of code.
        what: &'static str,
        /// The code.
        code: String,
    },
    /// The transaction would hold more than the server allows.
    #[error("transaction '{gid}' may have at most {max} {what}; this would make {would}")]
    TooMany {
        /// The transaction.
        gid: String,
        /// What is counted: `branches`.
        what: &'static str,
        /// The server's limit.
        max: usize,
        /// How many there would be.
        would: usize,
    },
    /// Another instance took the transaction over (its lease token changed): this instance
    /// must stop driving it.
    #[error("lease on transaction '{gid}' was lost")]
    LeaseLost {
        /// The transaction.
        gid: String,
    },
}
