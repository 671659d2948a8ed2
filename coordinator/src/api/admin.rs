//! The admin UI at `/admin` and the operator routes it reads (`/api/admin/...`).
//!
//! The page, its script and its style sheet are compiled into the binary and served without
//! a token (they hold no data); everything they show comes from operator routes, which need
//! the operator token when one is configured (the page asks for it). Actions reuse the routes
//! operators already have: `resetNextCronTime`, `forceStop` and `/api/admin/redrive`.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Extension;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use settle_protocol::TransGlobalView;

use super::body::{JsonBody, QueryParams};
use super::error::ApiError;
use super::read::{branch_view, global_view};
use super::{validate, AppState};
use crate::access::Grant;
use crate::store::ListFilter;
use crate::txn::{GlobalStatus, GlobalTxn, TransType, NEVER};

const INDEX: &str = include_str!("../../admin/index.html");
const SCRIPT: &str = include_str!("../../admin/app.js");
const STYLE: &str = include_str!("../../admin/app.css");

/// Content security policy of the page: nothing is loaded from anywhere but this server.
const POLICY: &str = "default-src 'self'; style-src 'self'; script-src 'self'; \
                      img-src 'self' data:; frame-ancestors 'none'";

/// `GET /admin`: the page.
pub async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
}

/// `GET /admin/app.js`.
pub async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
}

/// `GET /admin/app.css`.
pub async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLE,
    )
}

/// Which transactions: the filters of the list and of bulk retry. Times are ms since the
/// epoch.
#[derive(Debug, Default, Deserialize)]
pub struct Filter {
    /// Only this status.
    #[serde(default)]
    status: String,
    /// Only this type.
    #[serde(default, rename = "type")]
    trans_type: String,
    /// Only gids starting with this.
    #[serde(default)]
    gid_prefix: String,
    /// Created at or after.
    #[serde(default)]
    from: Option<i64>,
    /// Created at or before.
    #[serde(default)]
    to: Option<i64>,
    /// Only unfinished transactions due for more than [`OVERDUE_MS`] that nobody drove.
    #[serde(default)]
    overdue: bool,
    /// Only unfinished transactions whose rounds failed more than this many times in a row.
    #[serde(default)]
    retried_more_than: Option<i64>,
}

/// How long past its due time an unfinished transaction counts as overdue, ms: longer than a
/// scheduler pass and a round, so that a healthy coordinator shows none.
pub const OVERDUE_MS: i64 = 30_000;

impl Filter {
    /// The store's filter at `now`.
    fn to_list(&self, now: i64) -> Result<ListFilter, ApiError> {
        let mut f = ListFilter::default();
        if !self.status.is_empty() {
            f.status = Some(
                self.status
                    .parse::<GlobalStatus>()
                    .map_err(|e| ApiError::bad("invalid_query", e.to_string()))?,
            );
        }
        if !self.trans_type.is_empty() {
            f.trans_type = Some(
                self.trans_type
                    .parse::<TransType>()
                    .map_err(|e| ApiError::bad("invalid_query", e.to_string()))?,
            );
        }
        if !self.gid_prefix.is_empty() {
            validate::id("gid", &self.gid_prefix)?;
            f.gid_prefix = Some(self.gid_prefix.clone());
        }
        f.create_time_start = self.from;
        f.create_time_end = self.to;
        if self.overdue {
            f.due_before = Some(now - OVERDUE_MS);
        }
        if let Some(n) = self.retried_more_than {
            if n < 0 {
                return Err(ApiError::bad(
                    "invalid_query",
                    format!("retried_more_than must be 0 or more, got {n}"),
                ));
            }
            f.retried_more_than = Some(n);
        }
        Ok(f)
    }
}

/// Paging of `GET /api/admin/transactions` (read from the same query string as the
/// [`Filter`]).
#[derive(Debug, Deserialize)]
pub struct Paging {
    #[serde(default)]
    position: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
}

/// A transaction as the admin page lists it: DTM's view, plus times in ms.
#[derive(Debug, Serialize)]
pub struct AdminTxn {
    #[serde(flatten)]
    view: TransGlobalView,
    /// Created, ms.
    create_ms: i64,
    /// Next attempt (or timeout), ms; absent when none is planned.
    next_cron_ms: Option<i64>,
    /// Lease expiry, ms; absent when nobody holds it.
    lease_expire_ms: Option<i64>,
    /// Due for more than [`OVERDUE_MS`] and not finished.
    overdue: bool,
}

fn admin_txn(t: &GlobalTxn, now: i64, operator: bool) -> AdminTxn {
    AdminTxn {
        view: global_view(t, operator),
        create_ms: t.create_time,
        next_cron_ms: (t.next_cron_time < NEVER).then_some(t.next_cron_time),
        lease_expire_ms: (!t.owner.is_empty() && t.lease_expire > now).then_some(t.lease_expire),
        overdue: !t.status.is_final() && t.next_cron_time < now - OVERDUE_MS,
    }
}

/// `GET /api/admin/transactions`: one page of transactions, newest first, by [`Filter`]
/// (`status`, `type`, `gid_prefix`, `from`, `to`, `overdue`, `retried_more_than`), with
/// `position` and `limit` (1..=1000, default 50) for paging.
///
/// # Errors
/// 400 for a bad filter.
pub async fn transactions(
    State(state): State<AppState>,
    Extension(grant): Extension<Grant>,
    QueryParams(f): QueryParams<Filter>,
    QueryParams(p): QueryParams<Paging>,
) -> Result<Json<Value>, ApiError> {
    let now = state.apply.clock().now_ms();
    let mut filter = f.to_list(now)?;
    filter.position = p.position;
    filter.limit = p.limit.unwrap_or(50);
    if !(1..=1000).contains(&filter.limit) {
        return Err(ApiError::bad(
            "invalid_query",
            format!("limit must be between 1 and 1000, got {}", filter.limit),
        ));
    }
    let (txns, next) = state.store.list(&filter).await?;
    let rows: Vec<AdminTxn> = txns
        .iter()
        .map(|t| admin_txn(t, now, grant.operator))
        .collect();
    Ok(Json(
        json!({"transactions": rows, "next_position": next, "now": now}),
    ))
}

/// `GET /api/admin/transaction?gid=`: a transaction with its branches, its timeline of
/// unsettled rounds and its messages.
///
/// # Errors
/// 400 for a malformed gid, 404 for an unknown one.
pub async fn transaction(
    State(state): State<AppState>,
    Extension(grant): Extension<Grant>,
    QueryParams(p): QueryParams<super::read::GidParam>,
) -> Result<Json<Value>, ApiError> {
    let gid = p.gid();
    validate::id("gid", gid)?;
    let now = state.apply.clock().now_ms();
    let Some(txn) = state.store.find(gid).await? else {
        return Err(ApiError::NotFound(format!(
            "no transaction has gid '{gid}'"
        )));
    };
    let (branches, attempts, messages) = tokio::try_join!(
        state.store.find_branches(gid),
        state.store.attempts(gid, 200),
        state.store.outbox_list(None, Some(gid), 1000),
    )?;
    let callback = if txn.options.callback_url.is_empty() {
        None
    } else {
        state.store.callback_state(gid).await?
    };
    let branch_times: Vec<Value> = branches
        .iter()
        .map(|b| json!({"create_ms": b.create_time, "finish_ms": b.finish_time}))
        .collect();
    Ok(Json(json!({
        "transaction": admin_txn(&txn, now, grant.operator),
        "finish_ms": txn.finish_time,
        "rollback_ms": txn.rollback_time,
        "submit_ms": txn.submit_time,
        "callback": callback.map(|c| json!({
            "url": txn.options.callback_url,
            "due_ms": c.due_ms,
            "attempts": c.attempts,
            "delivered_ms": c.delivered_ms,
            "error": c.error,
        })),
        "branches": branches.iter().map(branch_view).collect::<Vec<_>>(),
        "branch_times": branch_times,
        "attempts": attempts,
        "messages": messages,
        "now": now,
    })))
}

/// `POST /api/admin/retry` with a [`Filter`]: makes every unfinished transaction it selects
/// that waits for a retry due now, restarting its backoff. Answers how many.
///
/// # Errors
/// 400 for a bad filter.
pub async fn retry(
    State(state): State<AppState>,
    JsonBody(filter): JsonBody<Filter>,
) -> Result<Json<Value>, ApiError> {
    let now = state.apply.clock().now_ms();
    let n = state
        .store
        .reset_cron_where(&filter.to_list(now)?, now)
        .await?;
    tracing::info!(transactions = n, "retry now, by filter");
    Ok(Json(json!({"retried": n})))
}

/// Query of `GET /api/admin/backlog`.
#[derive(Debug, Deserialize)]
pub struct BacklogParams {
    #[serde(default)]
    limit: Option<i64>,
}

/// `GET /api/admin/backlog[?limit=100]`: undelivered messages per topic and sharding key,
/// largest first.
///
/// # Errors
/// 400 for a limit outside 1..=1000.
pub async fn backlog(
    State(state): State<AppState>,
    QueryParams(p): QueryParams<BacklogParams>,
) -> Result<Json<Value>, ApiError> {
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad(
            "invalid_query",
            format!("limit must be between 1 and 1000, got {limit}"),
        ));
    }
    let (keys, (total, _)) = tokio::try_join!(
        state.store.outbox_backlog_by_key(limit),
        state.store.outbox_backlog(),
    )?;
    Ok(Json(json!({
        "keys": keys,
        "unsent": total,
        "now": state.apply.clock().now_ms(),
    })))
}

/// `GET /api/admin/instances`: the coordinators sharing the database, and what each holds.
///
/// # Errors
/// 500 if the store cannot be read.
pub async fn instances(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let now = state.apply.clock().now_ms();
    let instances = state.store.instances(now).await?;
    Ok(Json(json!({
        "instances": instances,
        "me": state.apply.instance_id(),
        "now": now,
    })))
}
