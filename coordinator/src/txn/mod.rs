//! The state machine of global transactions and their branches.
//!
//! Everything here is pure: a transition takes the current state (and the command's inputs)
//! and returns what must change, or an error for an illegal transition. Nothing here reads a
//! clock, a database or a network; the API and the driver apply the decisions through the
//! store, conditioned on the state they were made from.
//!
//! Global statuses move `prepared → submitted → succeed` and `prepared → aborting → failed`;
//! branch operations move `prepared → succeed | failed`. Re-applying a transition that already
//! happened is [`Decision::AlreadyDone`], never an error.
//!
//! # Layout
//! One transition per file: [`prepare`], [`submit`], [`abort`], [`register`], [`timeout`],
//! [`check_back`] (a msg's check-back), [`branch`] (recording a branch call's outcome),
//! [`finish`] and [`force_stop`]; the types
//! they share live in [`status`] and [`model`], and [`retry`] computes retry schedules.

pub mod abort;
pub mod branch;
pub mod check_back;
pub mod error;
pub mod finish;
pub mod force_stop;
pub mod model;
pub mod prepare;
pub mod register;
pub mod retry;
pub mod status;
pub mod submit;
pub mod timeout;

pub use error::TxnError;
pub use model::{BranchOp, GlobalTxn, NewBranch, TransOptions};
pub use status::{BranchStatus, GlobalStatus, Op, TransType};

/// What a transition decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<T> {
    /// Apply this change.
    Apply(T),
    /// The transition already happened: nothing to write, answer success.
    AlreadyDone,
}

impl<T> Decision<T> {
    /// Whether the transition had already been applied.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Self::AlreadyDone)
    }
}
