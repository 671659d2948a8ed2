//! Transaction types, statuses and branch operations, with their stored string codes.
//!
//! The codes are DTM's strings, stored as they are and converted by `as_str` / `FromStr`,
//! never by discriminant order.

use std::fmt;
use std::str::FromStr;

use settle_protocol::names;

use super::TxnError;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident => $code:expr),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and wire code.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $code),+
                }
            }
        }

        impl FromStr for $name {
            type Err = TxnError;

            fn from_str(s: &str) -> Result<Self, TxnError> {
                match s {
                    $(c if c == $code => Ok($name::$variant),)+
                    other => Err(TxnError::UnknownCode { what: $what, code: other.to_owned() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum! {
    /// The kind of a global transaction.
    TransType, "trans_type" {
        /// Try / confirm / cancel.
        Tcc => names::TCC,
        /// Two-phase message.
        Msg => names::MSG,
        /// Saga: forward actions, compensated in reverse when one fails.
        Saga => names::SAGA,
        /// XA: branches prepared in their own databases, committed or rolled back.
        Xa => names::XA,
        /// Workflow (accepted on the wire, not driven by Settle yet).
        Workflow => names::WORKFLOW,
    }
}

string_enum! {
    /// Status of a global transaction.
    GlobalStatus, "global status" {
        /// Open: branches may register.
        Prepared => names::STATUS_PREPARED,
        /// Committed: phase 2 confirms every branch.
        Submitted => names::STATUS_SUBMITTED,
        /// Rolled back: phase 2 cancels every branch.
        Aborting => names::STATUS_ABORTING,
        /// Every confirm succeeded.
        Succeeded => names::STATUS_SUCCEED,
        /// Every cancel succeeded (or the transaction was stopped).
        Failed => names::STATUS_FAILED,
    }
}

string_enum! {
    /// Status of one branch operation.
    BranchStatus, "branch status" {
        /// Not done yet.
        Prepared => names::STATUS_PREPARED,
        /// Done.
        Succeeded => names::STATUS_SUCCEED,
        /// Will not be done, or its effect is rolled back: a step of a dropped msg, a saga
        /// action that failed or was under way when its saga turned to compensation.
        Failed => names::STATUS_FAILED,
    }
}

string_enum! {
    /// A branch operation the coordinator may call.
    Op, "branch op" {
        /// TCC try (called by the initiator).
        Try => names::OP_TRY,
        /// TCC confirm.
        Confirm => names::OP_CONFIRM,
        /// TCC cancel.
        Cancel => names::OP_CANCEL,
        /// msg or saga action.
        Action => names::OP_ACTION,
        /// saga compensation.
        Compensate => names::OP_COMPENSATE,
        /// XA commit.
        Commit => names::OP_COMMIT,
        /// XA rollback.
        Rollback => names::OP_ROLLBACK,
    }
}

impl GlobalStatus {
    /// Whether the transaction has reached its end.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_string() {
        for t in TransType::ALL {
            assert_eq!(t.as_str().parse::<TransType>().ok(), Some(*t));
        }
        for s in GlobalStatus::ALL {
            assert_eq!(s.as_str().parse::<GlobalStatus>().ok(), Some(*s));
        }
        for s in BranchStatus::ALL {
            assert_eq!(s.as_str().parse::<BranchStatus>().ok(), Some(*s));
        }
        for o in Op::ALL {
            assert_eq!(o.as_str().parse::<Op>().ok(), Some(*o));
        }
    }

    #[test]
    fn stored_codes_are_dtm_strings() {
        assert_eq!(GlobalStatus::Succeeded.as_str(), "succeed");
        assert_eq!(GlobalStatus::Aborting.as_str(), "aborting");
        assert_eq!(BranchStatus::Prepared.as_str(), "prepared");
        assert_eq!(TransType::Tcc.as_str(), "tcc");
    }

    #[test]
    fn an_unknown_code_is_an_error_naming_it() {
        let err = "tcx".parse::<TransType>().unwrap_err();
        assert!(err.to_string().contains("tcx"), "{err}");
    }
}
