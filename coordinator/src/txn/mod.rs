//! The state machine of global transactions and their branches: where every transition is
//! decided.
//!
//! Everything here is pure: a transition takes the [`Current`] state of a transaction (read
//! under lock by the store) and the command's inputs, and returns the [`Change`] it wants, or
//! an error for an illegal transition. Nothing here reads a clock, a database or a network;
//! [`crate::apply`] carries the decisions out through the store.
//!
//! Global statuses move `prepared → submitted → succeed` and `prepared → aborting → failed`;
//! branch operations move `prepared → succeed | failed`. Re-applying a transition that already
//! happened is [`Decision::AlreadyDone`], never an error.
//!
//! # Layout
//! - One transition per file: [`prepare`], [`register`], [`submit`], [`abort`],
//!   [`force_stop`], [`roll_back`] (a timeout passed, or a saga's action failed),
//!   [`check_back`] (a msg's check-back answer), [`branch`] (what a branch call's answer
//!   means), [`delivered`] (the broker acknowledged messages), [`finish`], and [`lease`]
//!   (renewing, releasing, a round's progress, and the retry schedule of an unfinished
//!   round).
//! - One file per transaction type behind [`policy`]: [`tcc`], [`msg`], [`saga`], [`xa`].
//! - The types they share: [`change`] (the intent a transition returns), [`model`],
//!   [`status`], [`outbox`], [`target`] (where a step goes), [`topic`] (a msg's fan-out),
//!   [`timeout`], [`error`]; [`retry`] computes backoff.

pub mod abort;
pub mod branch;
pub mod change;
pub mod check_back;
pub mod delivered;
pub mod error;
pub mod finish;
pub mod force_stop;
pub mod lease;
pub mod model;
pub mod msg;
pub mod outbox;
pub mod policy;
pub mod prepare;
pub mod register;
pub mod retry;
pub mod roll_back;
pub mod saga;
pub mod status;
pub mod submit;
pub mod target;
pub mod tcc;
pub mod timeout;
pub mod topic;
pub mod xa;

pub use change::{Change, Current, Lease, LeaseWrite};
pub use error::TxnError;
pub use model::{BranchOp, GlobalTxn, NewBranch, TransOptions};
pub use outbox::{OutboxMessage, OutboxState, SentMessage};
pub use status::{BranchStatus, GlobalStatus, Op, TransType};

/// `next_cron_time` of a transaction that needs no more work: never due.
pub const NEVER: i64 = i64::MAX / 4;

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
