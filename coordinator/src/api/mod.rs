//! The HTTP API: DTM's routes under `/api/dtmsvr`, plus `/api/metrics`, the operator routes
//! under `/api/admin` and the admin UI at `/admin`.
//!
//! Each route needs a scope ([`crate::access::tokens`]): `client` for running transactions
//! and reading them, `operator` for steering them and for metrics.
//!
//! Handlers validate their input completely and hand the command to the orchestration layer
//! ([`crate::apply`]), which decides and writes it; they answer once it is durable. Work that
//! follows (phase 2) is handed to the driver with the state in memory.
//!
//! # Layout
//! - [`global`]: `prepare`, `submit`, `abort`, `forceStop`.
//! - [`branch`]: `registerBranch` and its aliases.
//! - [`topics`]: `subscribe`, `unsubscribe`, `topic/{name}`, `scanKV`, `queryKV`.
//! - [`read`]: `query`, `all`, `newGid`, `version`, the cron resets and metrics.
//! - [`admin`]: the admin UI and the operator routes it reads.
//! - [`validate`]: input rules; [`body`]: extractors with clear errors; [`error`]: answers.

pub mod admin;
pub mod body;
pub mod branch;
pub mod error;
pub mod global;
pub mod read;
pub mod serve;
pub mod topics;
pub mod validate;

use crate::otlp::{new_span_id, Kind, Span};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::Response;
use axum::routing::{any, delete, get, post};
use axum::Router;
use settle_protocol::API_PREFIX;

use crate::access::{Allowlist, Scope, Tokens};
use crate::apply::Orchestrator;
use crate::config::Config;
use crate::driver::Driver;
use crate::store::Store;
use crate::telemetry::{ApiOp, Metrics};
use error::ApiError;

/// What every handler can reach: a handle on [`Shared`], cloned for every request.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// A handle on `shared`.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts every handler reaches, shared by all requests.
pub struct Shared {
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
    /// Destinations the coordinator may call.
    pub allowlist: Arc<Allowlist>,
    /// Bearer tokens of the two scopes.
    pub tokens: Arc<Tokens>,
}

impl Shared {
    /// Whether `rocketmq://` steps can be delivered.
    pub fn rocketmq_enabled(&self) -> bool {
        !self.config.rocketmq_namesrv.is_empty()
    }
}

/// The router of the whole API. Every route needs the `client` or the `operator` scope
/// (open when no token of that scope is configured); the caller's [`crate::access::Grant`] is left in the
/// request's extensions for handlers that show more to operators.
pub fn router(state: AppState) -> Router {
    let limit = state.config.body_limit_bytes;
    let client = Router::new()
        .route("/version", get(read::version))
        .route("/newGid", get(read::new_gid))
        .route("/prepare", post(global::prepare))
        .route("/submit", post(global::submit))
        .route("/abort", post(global::abort))
        .route("/registerBranch", post(branch::register_branch))
        .route("/registerTccBranch", post(branch::register_branch))
        .route("/registerXaBranch", post(branch::register_branch))
        .route("/query", get(read::query))
        .route_layer(from_fn_with_state(state.clone(), client_scope));
    // Listing every tenant's transactions is an operator's view; a client reads its own by
    // gid (`query`).
    let operator = Router::new()
        .route("/all", get(read::all))
        .route("/forceStop", post(global::force_stop))
        .route("/resetCronTime", get(read::reset_cron_time))
        .route("/resetNextCronTime", post(read::reset_next_cron_time))
        .route("/subscribe", get(topics::subscribe))
        .route("/unsubscribe", get(topics::unsubscribe))
        .route("/topic/{name}", delete(topics::delete_topic))
        .route("/scanKV", get(topics::scan_kv))
        .route("/queryKV", get(topics::query_kv))
        .route_layer(from_fn_with_state(state.clone(), operator_scope));
    let metrics = Router::new()
        .route("/api/metrics", get(read::metrics))
        .route("/api/admin/redrive", post(read::redrive))
        .route("/api/admin/discard", post(read::discard))
        .route("/api/admin/outbox", get(read::outbox))
        .route("/api/admin/transactions", get(admin::transactions))
        .route("/api/admin/transaction", get(admin::transaction))
        .route("/api/admin/retry", post(admin::retry))
        .route("/api/admin/backlog", get(admin::backlog))
        .route("/api/admin/instances", get(admin::instances))
        .route_layer(from_fn_with_state(state.clone(), operator_scope));
    // Probes need no token: they tell only whether the process and its store are up. Nor
    // do the admin page's files: they hold no data.
    let health = Router::new()
        .route("/admin", get(admin::index))
        .route("/admin/", get(admin::index))
        .route("/admin/app.js", get(admin::script))
        .route("/admin/app.css", get(admin::style))
        .route("/api/ping", any(read::ping))
        .route("/livez", get(read::livez))
        .route("/readyz", get(read::readyz));
    Router::new()
        .nest(API_PREFIX, client.merge(operator))
        .merge(metrics)
        .merge(health)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(body::close_when_unread))
        .layer(from_fn_with_state(state.clone(), measure))
        .with_state(state)
}

/// Counts and times every request, as DTM's `dtm_server_*` metrics do (by the last segment
/// of the path), and records it as a span of the caller's trace when spans are exported.
async fn measure(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let api = request
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let tracer = state.metrics.tracer();
    let span = tracer.is_on().then(|| {
        let traceparent = request
            .headers()
            .get(settle_protocol::trace::HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        Span::start(
            format!("{} {api}", request.method()),
            Kind::Server,
            traceparent,
            new_span_id(),
        )
        .with("http.request.method", request.method().as_str())
        .with("url.path", request.uri().path())
    });
    let response = next.run(request).await;
    let status = response.status().as_u16();
    state.metrics.http_request(&api, status, started.elapsed());
    if let Some(span) = span {
        tracer.record(
            span.with("http.response.status_code", status.to_string())
                .end(status >= 500),
        );
    }
    response
}

async fn authorize(
    state: &AppState,
    scope: Scope,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(axum::http::HeaderValue::as_bytes);
    let grant = state.tokens.check(header, scope).inspect_err(|_| {
        state.metrics.request(ApiOp::Rejected);
    })?;
    request.extensions_mut().insert(grant);
    Ok(next.run(request).await)
}

async fn client_scope(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    authorize(&state, Scope::Client, request, next).await
}

async fn operator_scope(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    authorize(&state, Scope::Operator, request, next).await
}
