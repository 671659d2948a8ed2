//! Settle's SDK for microservices: what a service links to take part in global transactions.
//!
//! # Layout
//! - [`client`]: talking to the coordinator (any DTM-compatible server): new gids, queries.
//! - [`tcc`]: the initiator side of TCC: open a transaction, register and Try branches,
//!   submit on success and abort on any error.
//! - [`saga`]: the initiator side of a saga: steps (action and compensation), their order,
//!   messages sent once it succeeded; one submit.
//! - [`xa`]: XA on MySQL: the initiator (prepare, call branches, submit or abort) and the
//!   participant (its local transaction prepared as an XA branch, committed or rolled back
//!   by the coordinator).
//! - [`barrier`]: the participant side: DTM's barrier on MySQL, so that each Try, Confirm and
//!   Cancel runs at most once, a Cancel before its Try does nothing, and a Try after its Cancel
//!   is refused.
//! - [`msg`]: the sender side of transactional messages: prepare, run the local transaction
//!   with its barrier, submit; and the check-back handler that answers from the barrier.
//! - [`cache`] (feature `cache`): a Redis cache kept consistent by versioned writes, with a
//!   reload lock for misses.
//! - [`consumer`] (feature `rocketmq`): the orderly RocketMQ consumer that applies delivered
//!   changes to that cache, deduplicating by message id.
//! - [`handler`]: axum glue for participant endpoints: read the branch from the query string,
//!   answer with the status codes the coordinator understands.
//!
//! The SDK speaks only the DTM wire protocol ([`settle_protocol`]); it never depends on the
//! coordinator.

pub mod barrier;
#[cfg(feature = "cache")]
pub mod cache;
pub mod client;
#[cfg(feature = "rocketmq")]
pub mod consumer;
pub mod handler;
pub mod msg;
pub mod saga;
pub mod tcc;
pub mod xa;

pub use barrier::{BarrierError, BarrierOutcome, BarrierTable, BranchBarrier};
pub use client::{SdkError, SettleClient};
pub use handler::{BranchQuery, BranchResponse};
pub use msg::Msg;
pub use saga::Saga;
pub use settle_protocol as protocol;
pub use tcc::Tcc;
pub use xa::Xa;
