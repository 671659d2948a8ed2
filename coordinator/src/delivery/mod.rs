//! Delivery: where the steps of a committed transaction go.
//!
//! A step's action is either an HTTP endpoint, called by the driver as DTM calls a branch,
//! or a RocketMQ topic written as a URL, `rocketmq://TOPIC?key=SHARDING_KEY&tag=TAG` (a
//! Settle extension). Broker-bound steps enter the outbox when their transaction commits
//! (see [`crate::store::outbox`]) and are published by the [`dispatcher`], in commit order
//! per sharding key.
//!
//! # Layout
//! - [`dispatcher`]: delivering the outbox, per key in order, with retries.
//! - [`rocketmq`]: the RocketMQ sink.

pub mod dispatcher;
pub mod rocketmq;

pub use crate::txn::target::Target;
pub use dispatcher::{DispatchSettings, Dispatcher, Failure, Sink};
