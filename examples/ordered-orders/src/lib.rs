//! Ordered orders: state changes of orders reach their consumers in order, exactly as the
//! order service committed them, through transactional messages and RocketMQ.
//!
//! - The **order service** moves each order through `created → paid → shipped → completed`.
//!   Every change is a local MySQL transaction that also writes the barrier row of a
//!   transactional message keyed by the order id ([`settle_sdk::Msg::do_and_submit_db`]);
//!   its check-back endpoint answers from the barrier table.
//! - The **sequence checker** consumes the topic orderly, drops redeliveries by message id,
//!   and records every order whose events arrive out of sequence.
//! - The **cache consumer** ([`settle_sdk::consumer::CacheConsumer`]) keeps `order:{id}` in
//!   Redis with versioned writes.
//!
//! [`run`] drives many orders concurrently, restarts the broker once in the middle, waits
//! for every event, and compares the cache with the database.

pub mod checker;
pub mod service;

mod driver;

pub use driver::{decoder, run, Options, Report};

/// The states an order moves through, in order.
pub const STATES: [&str; 4] = ["created", "paid", "shipped", "completed"];

/// The body of an order event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OrderEvent {
    /// Order id.
    pub order: i64,
    /// Its new state.
    pub state: String,
    /// Position of the state in [`STATES`].
    pub step: usize,
    /// Row version after the change (1 for `created`).
    pub version: i64,
}
