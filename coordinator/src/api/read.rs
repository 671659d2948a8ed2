//! Reading routes and operator helpers: `query`, `all`, `newGid`, `version`,
//! `resetCronTime`, `resetNextCronTime` and `/api/metrics`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Extension;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use settle_protocol::answer::{AllAnswer, NewGidAnswer};
use settle_protocol::{names, DtmResult, QueryAnswer, TransBranchView, TransGlobalView};

use super::body::{JsonBody, QueryParams};
use super::error::ApiError;
use super::{validate, AppState};
use crate::access::Grant;
use crate::store::{format_time, ListFilter};
use crate::telemetry::ApiOp;
use crate::txn::NEVER;
use crate::txn::{BranchOp, GlobalStatus, GlobalTxn, TransType};

/// What `query` and `all` show instead of a `branch_headers` value to callers without the
/// operator scope (the headers often carry credentials).
pub const HIDDEN: &str = "<hidden>";

/// The options as shown: `branch_headers` values only to operators.
fn options_view(t: &GlobalTxn, operator: bool) -> String {
    if operator || t.options.branch_headers.is_empty() {
        return serde_json::to_string(&t.options).unwrap_or_default();
    }
    let mut options = t.options.clone();
    for value in options.branch_headers.values_mut() {
        HIDDEN.clone_into(value);
    }
    serde_json::to_string(&options).unwrap_or_default()
}

/// The view `query` and `all` show of a transaction; `operator` says whether the caller may
/// see `branch_headers`.
pub fn global_view(t: &GlobalTxn, operator: bool) -> TransGlobalView {
    TransGlobalView {
        gid: t.gid.clone(),
        trans_type: t.trans_type.as_str().to_owned(),
        status: t.status.as_str().to_owned(),
        steps: t.steps.clone(),
        payloads: t.payloads.clone(),
        query_prepared: t.query_prepared.clone(),
        protocol: t.protocol.clone(),
        create_time: format_time(t.create_time),
        update_time: format_time(t.update_time),
        finish_time: t.finish_time.map(format_time),
        rollback_time: t.rollback_time.map(format_time),
        options: options_view(t, operator),
        custom_data: t.custom_data.clone(),
        next_cron_interval: t.next_cron_interval,
        next_cron_time: (t.next_cron_time < NEVER).then(|| format_time(t.next_cron_time)),
        owner: t.owner.clone(),
        rollback_reason: t.rollback_reason.clone(),
        retry_count: t.retry_count,
        last_error: t.last_error.clone(),
    }
}

/// The view `query` shows of a branch operation.
pub fn branch_view(b: &BranchOp) -> TransBranchView {
    TransBranchView {
        gid: b.gid.clone(),
        url: b.url.clone(),
        data: b.data.clone(),
        branch_id: b.branch_id.clone(),
        op: b.op.as_str().to_owned(),
        status: b.status.as_str().to_owned(),
        create_time: format_time(b.create_time),
        update_time: format_time(b.update_time),
        finish_time: b.finish_time.map(format_time),
    }
}

/// `/api/ping` (any method), as DTM answers it: `{"msg":"pong"}`.
pub async fn ping() -> Json<Value> {
    Json(json!({"msg": "pong"}))
}

/// `GET /livez`: the process serves requests.
pub async fn livez() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 while the store answers (within 2 s), 503 naming why otherwise.
pub async fn readyz(State(state): State<AppState>) -> axum::response::Response {
    let probe = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        state.store.database_now_ms(),
    )
    .await;
    let why = match probe {
        Ok(Ok(_)) => return (StatusCode::OK, Json(json!({"status": "ready"}))).into_response(),
        Ok(Err(e)) => format!(
            "the store cannot be reached: {}",
            crate::telemetry::error_chain(&e)
        ),
        Err(_) => "the store did not answer within 2 s".to_owned(),
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "not ready", "reason": why})),
    )
        .into_response()
}

/// `GET version`.
pub async fn version() -> Json<Value> {
    Json(json!({"version": concat!("settle-", env!("CARGO_PKG_VERSION"))}))
}

/// `GET newGid`: a fresh, unique gid.
pub async fn new_gid() -> Json<NewGidAnswer> {
    Json(NewGidAnswer {
        gid: uuid::Uuid::new_v4().simple().to_string(),
        dtm_result: names::RESULT_SUCCESS.to_owned(),
    })
}

/// Query of `query`.
#[derive(Debug, Deserialize)]
pub struct GidParam {
    #[serde(default)]
    gid: String,
}

impl GidParam {
    /// The gid asked for (empty when none).
    pub fn gid(&self) -> &str {
        &self.gid
    }
}

/// `GET query?gid=`: a transaction and its branches; `transaction` is `null` for an unknown
/// gid, as in DTM.
///
/// # Errors
/// 400 for a malformed gid.
pub async fn query(
    State(state): State<AppState>,
    Extension(grant): Extension<Grant>,
    QueryParams(p): QueryParams<GidParam>,
) -> Result<Json<QueryAnswer>, ApiError> {
    validate::id("gid", &p.gid)?;
    state.metrics.request(ApiOp::Query);
    let Some(txn) = state.store.find(&p.gid).await? else {
        return Ok(Json(QueryAnswer {
            transaction: None,
            branches: Vec::new(),
        }));
    };
    let branches = state.store.find_branches(&p.gid).await?;
    Ok(Json(QueryAnswer {
        transaction: Some(global_view(&txn, grant.operator)),
        branches: branches.iter().map(branch_view).collect(),
    }))
}

/// Query of `all`. Times are ms since the Unix epoch.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllParams {
    #[serde(default)]
    gid: String,
    #[serde(default)]
    position: String,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    status: String,
    #[serde(default)]
    trans_type: String,
    #[serde(default)]
    create_time_start: Option<i64>,
    #[serde(default)]
    create_time_end: Option<i64>,
}

/// `GET all`: one page of transactions, newest first.
///
/// # Errors
/// 400 for a bad filter.
pub async fn all(
    State(state): State<AppState>,
    Extension(grant): Extension<Grant>,
    QueryParams(p): QueryParams<AllParams>,
) -> Result<Json<AllAnswer>, ApiError> {
    let mut filter = ListFilter {
        limit: p.limit.unwrap_or(100),
        create_time_start: p.create_time_start,
        create_time_end: p.create_time_end,
        ..ListFilter::default()
    };
    if !p.gid.is_empty() {
        validate::id("gid", &p.gid)?;
        filter.gid = Some(p.gid);
    }
    if !p.position.is_empty() {
        filter.position = Some(p.position.parse().map_err(|_| {
            ApiError::bad(
                "invalid_query",
                format!(
                    "position '{}' is not one this server returned",
                    p.position.escape_default()
                ),
            )
        })?);
    }
    if !p.status.is_empty() {
        filter.status = Some(
            p.status
                .parse::<GlobalStatus>()
                .map_err(|e| ApiError::bad("invalid_query", e.to_string()))?,
        );
    }
    if !p.trans_type.is_empty() {
        filter.trans_type = Some(
            p.trans_type
                .parse::<TransType>()
                .map_err(|e| ApiError::bad("invalid_query", e.to_string()))?,
        );
    }
    if !(1..=1000).contains(&filter.limit) {
        return Err(ApiError::bad(
            "invalid_query",
            format!("limit must be between 1 and 1000, got {}", filter.limit),
        ));
    }
    let (txns, next) = state.store.list(&filter).await?;
    Ok(Json(AllAnswer {
        transactions: txns
            .iter()
            .map(|t| global_view(t, grant.operator))
            .collect(),
        next_position: next.map(|p| p.to_string()).unwrap_or_default(),
    }))
}

/// `GET resetCronTime[?gid=]`: makes waiting retries due now (of one transaction, or all).
///
/// # Errors
/// 400 for a malformed gid.
pub async fn reset_cron_time(
    State(state): State<AppState>,
    QueryParams(p): QueryParams<GidParam>,
) -> Result<Json<Value>, ApiError> {
    let gid = (!p.gid.is_empty()).then_some(p.gid);
    if let Some(g) = &gid {
        validate::id("gid", g)?;
    }
    let n = state
        .store
        .reset_cron(gid.as_deref(), state.apply.clock().now_ms())
        .await?;
    Ok(Json(
        json!({"dtm_result": names::RESULT_SUCCESS, "succeed_count": n}),
    ))
}

/// `POST resetNextCronTime` with `{"gid": ...}`: makes one transaction's retry due now.
///
/// # Errors
/// 400 for a malformed gid.
pub async fn reset_next_cron_time(
    State(state): State<AppState>,
    JsonBody(p): JsonBody<GidParam>,
) -> Result<Json<DtmResult>, ApiError> {
    validate::id("gid", &p.gid)?;
    state
        .store
        .reset_cron(Some(&p.gid), state.apply.clock().now_ms())
        .await?;
    Ok(Json(DtmResult::success()))
}

/// Body of `POST /api/admin/redrive`.
#[derive(Debug, Deserialize)]
pub struct RedriveParams {
    #[serde(default)]
    gid: String,
    #[serde(default)]
    branch_id: String,
}

/// What an operator does with dead letters.
#[derive(Debug, Clone, Copy)]
enum DeadLetterAction {
    Redrive,
    Discard,
}

/// `POST /api/admin/redrive` `{"gid": G, "branch_id": B}`: puts a transaction's
/// dead-lettered messages (or the one of step `B`) back to deliver now. Answers how many.
///
/// # Errors
/// 400 for a malformed gid or branch id, 404 if the transaction has no dead letter to
/// redrive.
pub async fn redrive(
    State(state): State<AppState>,
    JsonBody(p): JsonBody<RedriveParams>,
) -> Result<Json<Value>, ApiError> {
    on_dead_letters(&state, &p, DeadLetterAction::Redrive).await
}

/// `POST /api/admin/discard` `{"gid": G, "branch_id": B}`: gives up a transaction's
/// dead-lettered messages (or the one of step `B`) for good: they are never sent, and say
/// so, and retention may then delete their transaction. Answers how many.
///
/// # Errors
/// 400 for a malformed gid or branch id, 404 if the transaction has no dead letter to
/// discard.
pub async fn discard(
    State(state): State<AppState>,
    JsonBody(p): JsonBody<RedriveParams>,
) -> Result<Json<Value>, ApiError> {
    on_dead_letters(&state, &p, DeadLetterAction::Discard).await
}

async fn on_dead_letters(
    state: &AppState,
    p: &RedriveParams,
    action: DeadLetterAction,
) -> Result<Json<Value>, ApiError> {
    validate::id("gid", &p.gid)?;
    let branch = if p.branch_id.is_empty() {
        None
    } else {
        validate::id("branch_id", &p.branch_id)?;
        Some(p.branch_id.as_str())
    };
    let now = state.apply.clock().now_ms();
    let (n, verb, field) = match action {
        DeadLetterAction::Redrive => (
            state.store.outbox_redrive(&p.gid, branch, now).await?,
            "redrive",
            "redriven",
        ),
        DeadLetterAction::Discard => (
            state.store.outbox_discard(&p.gid, branch, now).await?,
            "discard",
            "discarded",
        ),
    };
    if n == 0 {
        return Err(ApiError::NotFound(format!(
            "transaction '{}' has no dead-lettered message{} to {verb}",
            p.gid,
            branch.map(|b| format!(" of step {b}")).unwrap_or_default()
        )));
    }
    tracing::info!(gid = %p.gid, messages = n, "dead letters {field}");
    if matches!(action, DeadLetterAction::Redrive) {
        state.apply.wake_dispatcher();
    }
    Ok(Json(json!({"dtm_result": names::RESULT_SUCCESS, field: n})))
}

/// Query of `GET /api/admin/outbox`.
#[derive(Debug, Deserialize)]
pub struct OutboxParams {
    #[serde(default)]
    status: String,
    #[serde(default)]
    limit: Option<i64>,
}

/// `GET /api/admin/outbox[?status=dead&limit=100]`: outbox messages, newest first.
///
/// # Errors
/// 400 for an unknown status or a limit outside 1..=1000.
pub async fn outbox(
    State(state): State<AppState>,
    QueryParams(p): QueryParams<OutboxParams>,
) -> Result<Json<Value>, ApiError> {
    let status = if p.status.is_empty() {
        None
    } else {
        Some(
            p.status
                .parse::<crate::txn::OutboxState>()
                .map_err(|e| ApiError::bad("invalid_query", e))?,
        )
    };
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad(
            "invalid_query",
            format!("limit must be between 1 and 1000, got {limit}"),
        ));
    }
    let messages = state.store.outbox_list(status, None, limit).await?;
    Ok(Json(json!({"messages": messages})))
}

/// `GET /api/metrics`: Prometheus text.
///
/// # Errors
/// 500 if the store cannot be read.
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let unfinished = state.store.count_unfinished().await?;
    let (backlog, _) = state.store.outbox_backlog().await?;
    let dead = state.store.outbox_dead().await?;
    let now = state.apply.clock().now_ms();
    let overdue = state.store.count_overdue(now - 10_000).await?;
    let topics = state.store.outbox_pending_by_topic().await?;
    let m = &state.metrics;
    m.describe(
        "settle_outbox_pending",
        "Committed messages waiting for their broker, by topic.",
    );
    m.describe(
        "settle_outbox_oldest_pending_seconds",
        "Age of the oldest committed message waiting for its broker, by topic.",
    );
    m.describe(
        "settle_outbox_backlog",
        "Committed messages not yet acknowledged by their broker.",
    );
    m.describe(
        "settle_outbox_dead_letters",
        "Messages dead-lettered (refused by the broker) and not redriven.",
    );
    m.describe(
        "settle_transactions_set_aside_total",
        "Stored transactions found unreadable and set aside (never driven; see their last_error).",
    );
    #[allow(clippy::cast_precision_loss)]
    {
        m.set_gauge("settle_outbox_backlog", &[], backlog as f64);
        m.set_gauge("settle_outbox_dead_letters", &[], dead as f64);
        m.set_gauge("settle_overdue_transactions", &[], overdue as f64);
        let topics: Vec<(String, f64, f64)> = topics
            .into_iter()
            .map(|(topic, n, oldest)| (topic, n as f64, ((now - oldest).max(0) as f64) / 1000.0))
            .collect();
        m.set_outbox_topics(&topics);
        m.set_counter(
            "settle_transactions_set_aside_total",
            &[],
            state.store.set_aside_count(),
        );
    }
    let text = m.render(&unfinished);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}
