//! `prepare`, `submit`, `abort` and `forceStop`: the operations on a whole transaction.

use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use settle_protocol::{trace, DtmResult, GlobalRequest};
use tracing::info;

use super::body::JsonBody;
use super::error::ApiError;
use super::{validate, AppState};
use crate::driver::RoundEnd;
use crate::store::Claimed;
use crate::telemetry::ApiOp;
use crate::txn::policy::{only_deliveries_left, require, Moment, Policy, Refusal, Subscribers};
use crate::txn::target::Target;
use crate::txn::{topic, GlobalStatus, GlobalTxn, NewBranch, TransOptions, TransType};

/// A request that passed validation.
struct Checked {
    req: GlobalRequest,
    trans_type: TransType,
    options: TransOptions,
    /// The branch operations its steps create (none for a TCC without messages).
    steps: Vec<NewBranch>,
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        Self::bad(r.code, r.message)
    }
}

/// Checks what every request on a whole transaction carries: its gid, type and options.
fn check_head(
    state: &AppState,
    req: &GlobalRequest,
) -> Result<(TransType, &'static dyn Policy, TransOptions), ApiError> {
    validate::id("gid", &req.gid)?;
    let trans_type = validate::trans_type(&req.trans_type)?;
    let policy = require(trans_type)?;
    let options = validate::options(req, &state.config, policy)?;
    Ok((trans_type, policy, options))
}

/// The subscribers of every topic the request's steps name, as the store holds them now.
async fn subscribers(state: &AppState, req: &GlobalRequest) -> Result<Subscribers, ApiError> {
    let topics: Vec<&str> = req
        .steps
        .iter()
        .flat_map(|step| step.values())
        .filter_map(|url| topic::topic_name(url))
        .collect();
    if topics.is_empty() {
        return Ok(Subscribers::new());
    }
    for t in &topics {
        topic::check_name(t).map_err(|e| ApiError::bad("invalid_steps", e.to_string()))?;
    }
    Ok(state.store.topic_subscribers(&topics).await?)
}

async fn check(state: &AppState, req: GlobalRequest, at: Moment) -> Result<Checked, ApiError> {
    let result = async {
        let (trans_type, policy, options) = check_head(state, &req)?;
        if at == Moment::Prepare && !policy.can_prepare() {
            return Err(ApiError::bad(
                "unsupported_operation",
                format!(
                    "a {trans_type} transaction is created by its submit alone, not by prepare"
                ),
            ));
        }
        policy.check(&req, at)?;
        let subscribers = subscribers(state, &req).await?;
        let steps = policy.steps(&req, at, &subscribers)?;
        validate::ops(
            &steps,
            state.rocketmq_enabled(),
            state.config.max_branches,
            state.config.max_message_bytes,
        )?;
        validate::text("custom_data", &req.custom_data, validate::MAX_TEXT_BYTES)?;
        validate::stored_json("steps", &req.steps)?;
        validate::stored_json("payloads", &req.payloads)?;
        if !req.query_prepared.is_empty() {
            validate::url("query_prepared", &req.query_prepared)?;
            state.allowlist.check_url(&req.query_prepared)?;
        }
        if !req.callback_url.is_empty() {
            validate::url("callback_url", &req.callback_url)?;
            state.allowlist.check_url(&req.callback_url)?;
        }
        for step in &steps {
            if let Ok(Target::Http(url)) = Target::parse(&step.url) {
                state.allowlist.check_url(&url)?;
            }
        }
        Ok(Checked {
            req,
            trans_type,
            options,
            steps,
        })
    }
    .await;
    if result.is_err() {
        state.metrics.request(ApiOp::Rejected);
    }
    result
}

/// The request's W3C `traceparent`, if it sent a valid one (an invalid one is ignored, as
/// the W3C recommendation says).
fn traceparent(headers: &HeaderMap) -> String {
    headers
        .get(trace::HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| trace::is_valid(v))
        .map(str::to_owned)
        .unwrap_or_default()
}

/// The transaction a request describes, as it would be created at `now` in `status`.
fn new_txn(c: &Checked, status: GlobalStatus, now: i64) -> GlobalTxn {
    let mut txn = GlobalTxn::new(
        c.req.gid.clone(),
        c.trans_type,
        status,
        c.options.clone(),
        now,
    );
    txn.custom_data = c.req.custom_data.clone();
    txn.steps = c.req.steps.clone();
    txn.payloads = c.req.payloads.clone();
    txn.query_prepared = c.req.query_prepared.clone();
    txn
}

/// `POST prepare`: opens a global transaction in `prepared`.
///
/// # Errors
/// 400 for bad input, 409 if the transaction exists and is no longer prepared.
pub async fn prepare(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<GlobalRequest>,
) -> Result<Json<DtmResult>, ApiError> {
    let mut c = check(&state, req, Moment::Prepare).await?;
    c.options.traceparent = traceparent(&headers);
    state.metrics.request(ApiOp::Prepare);
    let txn = new_txn(&c, GlobalStatus::Prepared, state.apply.clock().now_ms());
    let applied = state.apply.prepare(txn, c.steps).await?;
    if !applied.duplicate {
        info!(gid = %c.req.gid, trans_type = %c.trans_type, status = "prepared", "transaction prepared");
    }
    Ok(Json(DtmResult::success()))
}

/// Starts phase 2 on `claimed` (whose lease this instance now holds) and, with
/// `wait_result`, waits up to `request_timeout` for it to finish.
/// How often a `wait_result` request looks at the store while it waits to be told its
/// transaction finished (which only this instance's writes tell).
const FINISH_LOOK: Duration = Duration::from_millis(500);

async fn start_phase_two(
    state: &AppState,
    claimed: Claimed,
    wait: bool,
) -> Result<Json<DtmResult>, ApiError> {
    let gid = claimed.txn.gid.clone();
    let submitting = claimed.txn.status == GlobalStatus::Submitted;
    let timeout =
        Duration::from_secs(u64::try_from(claimed.txn.options.request_timeout).unwrap_or(3));
    // Told when this instance finishes it; registered before anything can finish it.
    let mut finished = wait.then(|| state.apply.when_finished(&gid));
    // A msg whose steps all go to brokers has nothing to call: the dispatcher delivers it and
    // its last acknowledgement finishes it (if none comes, the lease taken at submit runs out
    // and a round looks at it).
    let round = if only_deliveries_left(claimed_policy(&claimed)?, &claimed.txn, &claimed.branches)
    {
        None
    } else {
        state.driver.spawn(claimed)
    };
    let Some(finished) = finished.as_mut() else {
        return Ok(Json(DtmResult::success()));
    };
    let deadline = tokio::time::Instant::now() + timeout;
    // Waiting ends when the transaction finished, or when a submit turned to rolling back
    // (a saga whose action failed: its compensation goes on, but it will not succeed).
    let ends = |s: GlobalStatus| s.is_final() || (submitting && s == GlobalStatus::Aborting);
    let settled = |t: Option<GlobalTxn>| t.filter(|t| ends(t.status));
    // The first round usually ends it; if it ends waiting (a retry, or messages not yet
    // acknowledged by their broker), wait to be told it finished, looking at the store now
    // and then in case another instance finishes it.
    let mut outcome = None;
    if let Some(round) = round {
        if let Ok(Ok(RoundEnd::Finished(s) | RoundEnd::Retrying(s))) =
            tokio::time::timeout(timeout, round).await
        {
            if ends(s) {
                outcome = settled(state.store.find(&gid).await?);
            }
        }
    }
    while outcome.is_none() && tokio::time::Instant::now() < deadline {
        let look = (tokio::time::Instant::now() + FINISH_LOOK).min(deadline);
        tokio::select! {
            told = &mut *finished => {
                if told.is_err() {
                    break;
                }
                outcome = settled(state.store.find(&gid).await?);
            }
            () = tokio::time::sleep_until(look) => {
                outcome = settled(state.store.find(&gid).await?);
            }
        }
    }
    match outcome {
        Some(t) if submitting && t.status != GlobalStatus::Succeeded => {
            Err(ApiError::Failure(if t.rollback_reason.is_empty() {
                format!("transaction '{gid}' is {}: it will not succeed", t.status)
            } else {
                t.rollback_reason
            }))
        }
        Some(_) => Ok(Json(DtmResult::success())),
        None => Err(ApiError::Ongoing(format!(
            "transaction '{gid}' has not finished phase 2 within {}s; it is still being driven",
            timeout.as_secs()
        ))),
    }
}

/// The policy of a transaction this instance claimed (a type it drives, or it could not have
/// been created).
fn claimed_policy(c: &Claimed) -> Result<&'static dyn Policy, ApiError> {
    Ok(require(c.txn.trans_type)?)
}

/// `POST submit`: commits a transaction and starts confirming its branches (or, for a msg,
/// delivering it). A transaction never prepared is created submitted, as in DTM.
///
/// # Errors
/// 400 for bad input, 409 after an abort.
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<GlobalRequest>,
) -> Result<Json<DtmResult>, ApiError> {
    let mut c = check(&state, req, Moment::Submit).await?;
    c.options.traceparent = traceparent(&headers);
    state.metrics.request(ApiOp::Submit);
    let wait = c.options.wait_result;
    let txn = new_txn(&c, GlobalStatus::Submitted, state.apply.clock().now_ms());
    let Some(claimed) = state.apply.submit(txn, c.steps).await? else {
        return Ok(Json(DtmResult::success()));
    };
    info!(gid = %claimed.txn.gid, status = "submitted", "transaction submitted");
    let wait = wait || claimed.txn.options.wait_result;
    start_phase_two(&state, claimed, wait).await
}

/// `POST abort`: rolls a prepared transaction back and starts cancelling its branches.
///
/// # Errors
/// 400 for bad input, 404 for an unknown gid, 409 after a submit.
pub async fn abort(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<GlobalRequest>,
) -> Result<Json<DtmResult>, ApiError> {
    let (_, _, options) = check_head(&state, &req).inspect_err(|_| {
        state.metrics.request(ApiOp::Rejected);
    })?;
    state.metrics.request(ApiOp::Abort);
    let reason = if req.rollback_reason.is_empty() {
        "aborted by the initiator".to_owned()
    } else {
        req.rollback_reason.clone()
    };
    let Some(claimed) = state.apply.abort(&req.gid, reason).await? else {
        return Ok(Json(DtmResult::success()));
    };
    info!(gid = %claimed.txn.gid, status = "aborting", reason = %claimed.txn.rollback_reason, "transaction aborted");
    let wait = options.wait_result || claimed.txn.options.wait_result;
    start_phase_two(&state, claimed, wait).await
}

/// `POST forceStop`: an operator ends an unfinished transaction as `failed` without calling
/// any more branches.
///
/// # Errors
/// 400 for a bad gid, 404 for an unknown one, 409 if it already succeeded.
pub async fn force_stop(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<GlobalRequest>,
) -> Result<Json<DtmResult>, ApiError> {
    validate::id("gid", &req.gid)?;
    let applied = state.apply.force_stop(&req.gid).await?;
    if !applied.duplicate {
        info!(gid = %req.gid, status = "failed", "transaction force-stopped");
    }
    Ok(Json(DtmResult::success()))
}
