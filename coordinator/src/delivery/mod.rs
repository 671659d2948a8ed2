//! Delivery: where the steps of a committed transaction go.
//!
//! A step's action is either an HTTP endpoint, called as DTM calls a branch, or a RocketMQ
//! topic written as a URL, `rocketmq://TOPIC?key=SHARDING_KEY&tag=TAG` (a Settle extension).
//!
//! # Layout
//! - [`target`]: parsing and checking step URLs.

pub mod target;

pub use target::Target;
