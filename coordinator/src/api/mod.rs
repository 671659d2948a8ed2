//! The HTTP API: DTM's routes under `/api/dtmsvr`, plus `/api/metrics`.
//!
//! Handlers validate their input completely and hand the command to the orchestration layer
//! ([`crate::apply`]), which decides and writes it; they answer once it is durable. Work that
//! follows (phase 2) is handed to the driver with the state in memory.
//!
//! # Layout
//! - [`global`]: `prepare`, `submit`, `abort`, `forceStop`.
//! - [`branch`]: `registerBranch` and its aliases.
//! - [`read`]: `query`, `all`, `newGid`, `version`, the cron resets and metrics.
//! - [`validate`]: input rules; [`body`]: extractors with clear errors; [`error`]: answers.

pub mod body;
pub mod branch;
pub mod error;
pub mod global;
pub mod read;
pub mod validate;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use settle_protocol::API_PREFIX;

use crate::apply::Orchestrator;
use crate::config::Config;
use crate::driver::Driver;
use crate::store::Store;
use crate::telemetry::Metrics;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The store (reads).
    pub store: Store,
    /// Carries out every transition.
    pub apply: Orchestrator,
    /// Runs phase 2.
    pub driver: Driver,
    /// Resolved configuration (option defaults, lease).
    pub config: Arc<Config>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// Whether `rocketmq://` steps can be delivered.
    pub fn rocketmq_enabled(&self) -> bool {
        !self.config.rocketmq_namesrv.is_empty()
    }
}

/// The router of the whole API.
pub fn router(state: AppState) -> Router {
    let limit = state.config.body_limit_bytes;
    let dtm = Router::new()
        .route("/version", get(read::version))
        .route("/newGid", get(read::new_gid))
        .route("/prepare", post(global::prepare))
        .route("/submit", post(global::submit))
        .route("/abort", post(global::abort))
        .route("/forceStop", post(global::force_stop))
        .route("/registerBranch", post(branch::register_branch))
        .route("/registerTccBranch", post(branch::register_branch))
        .route("/registerXaBranch", post(branch::register_branch))
        .route("/query", get(read::query))
        .route("/all", get(read::all))
        .route("/resetCronTime", get(read::reset_cron_time))
        .route("/resetNextCronTime", post(read::reset_next_cron_time));
    Router::new()
        .nest(API_PREFIX, dtm)
        .route("/api/metrics", get(read::metrics))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}
