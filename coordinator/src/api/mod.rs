//! The HTTP API: DTM's routes under `/api/dtmsvr`, plus `/api/metrics`.
//!
//! Handlers validate their input completely, ask the state machine what to do, and apply
//! that through the store, conditioned on the state the decision was made from. Work that
//! follows (phase 2) is handed to the driver.
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

use crate::config::Config;
use crate::driver::Driver;
use crate::store::Store;
use crate::telemetry::Metrics;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Store,
    /// Runs phase 2.
    pub driver: Driver,
    /// Resolved configuration (option defaults, lease).
    pub config: Arc<Config>,
    /// This instance's id, written into the leases it takes.
    pub instance_id: Arc<str>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Wakes the delivery dispatcher when a commit put messages in the outbox.
    pub dispatch: Arc<tokio::sync::Notify>,
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
