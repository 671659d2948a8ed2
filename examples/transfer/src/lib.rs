//! Money transfer between two banks by TCC, or by saga, through Settle.
//!
//! Each bank is an account service with its own MySQL database and barrier table. A transfer
//! moves `amount` from an account at one bank to an account at the other in one TCC global
//! transaction with two branches:
//!
//! | branch | Try | Confirm | Cancel |
//! |---|---|---|---|
//! | debit (source bank) | move `amount` from `balance` to `frozen`, refusing if short | drop it from `frozen` | move it back to `balance` |
//! | credit (destination bank) | record `amount` as `incoming` | move it from `incoming` to `balance` | drop it from `incoming` |
//!
//! As a saga (`Mode::Saga`), the same transfer is two steps the coordinator runs: TransOut
//! takes the amount from the source account (refusing if short), then TransIn adds it to the
//! destination; if a step fails, the coordinator compensates what ran, TransInRevert then
//! TransOutRevert, last step first.
//!
//! Every branch runs inside the SDK's barrier, so retries, duplicates, a Cancel before its Try
//! and a Try after its Cancel all leave the books right. [`run`] drives many concurrent
//! transfers (optionally failing a share of Tries and Confirms on purpose), waits for every
//! transaction to settle, and checks that no money was created or lost.

pub mod bank;
pub mod driver;

pub use driver::{run, Mode, Options, Report, Transfer};
