//! Settle's coordinator: a DTM-compatible distributed transaction server.
//!
//! # Layout
//! Data flows top to bottom:
//! - [`api`]: the HTTP API (DTM's `/api/dtmsvr` routes), validating commands.
//! - [`apply`]: the orchestration layer carrying out every transition (read, decide, write,
//!   notify) for the API and the driver alike.
//! - [`txn`]: the pure state machine deciding every transition, one file per transition and
//!   one per transaction type.
//! - [`store`]: durable state on MySQL or SQLite, written by a batched writer.
//! - [`driver`]: runs phase 2 (branch calls with timeouts and backoff).
//! - [`scheduler`]: claims due transactions by lease and hands them to the driver.
//! - [`delivery`]: where committed steps go (HTTP endpoints, RocketMQ topics).
//! - [`app`]: wires these into a running server; [`cli`] is the `settle` command;
//!   [`bench`] the load generator; [`ops`] the operator commands; [`config`],
//!   [`telemetry`] and [`clock`] support them.

pub mod access;
pub mod api;
pub mod app;
pub mod apply;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod driver;
pub mod ops;
pub mod scheduler;
pub mod store;
pub mod telemetry;
pub mod txn;

pub use app::Application;
pub use config::Config;
