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
//! - [`alert`]: tells the operators' webhook about transactions that need attention.
//! - [`callback`]: posts a finished transaction's outcome to its initiator's callback URL.
//! - [`app`]: wires these into a running server; [`cli`] is the `settle` command;
//!   [`bench`] the load generator; [`ops`] the operator commands; [`config`],
//!   [`telemetry`], [`otlp`] and [`clock`] support them.
//!
//! # Fail points
//! Built with the `failpoints` feature, these named places can be made to fail (`return`:
//! the error a lost connection would give there), crash (`panic`: the `settle` binary then
//! stops, as after a kill) or stall (`delay(ms)`), through the `FAILPOINTS` environment
//! variable (`store::after_commit=1*panic`) or `fail::cfg`. Without the feature they are
//! compiled out.
//!
//! | name | where |
//! |---|---|
//! | `store::before_commit` | a batch has written everything but its `COMMIT` |
//! | `store::after_commit` | a batch committed; nobody has been answered |
//! | `driver::before_call` | a status is durable; the branch has not been called |
//! | `driver::after_answer` | a branch answered; its outcome is not recorded |
//! | `scheduler::after_claim` | due transactions are leased; no round started |
//! | `delivery::after_claim` | outbox messages are leased; nothing published |
//! | `delivery::before_publish` | messages are about to go to the broker |
//! | `delivery::after_publish` | the broker answered; acknowledgements not recorded |

pub mod access;
pub mod alert;
pub mod api;
pub mod app;
pub mod apply;
pub mod bench;
pub mod callback;
pub mod cli;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod driver;
pub mod ops;
pub mod otlp;
pub mod scheduler;
pub mod store;
pub mod telemetry;
pub mod txn;

pub use app::Application;
pub use config::Config;
