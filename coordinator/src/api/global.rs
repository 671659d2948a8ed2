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
use crate::txn::policy::{only_deliveries_left, policy, require};
use crate::txn::target::Target;
use crate::txn::{self, GlobalStatus, GlobalTxn, NewBranch, TransOptions, TransType};

/// A request that passed validation.
struct Checked {
    req: GlobalRequest,
    trans_type: TransType,
    options: TransOptions,
    /// The msg's steps as branch operations (empty for TCC).
    steps: Vec<NewBranch>,
}

fn check(state: &AppState, req: GlobalRequest) -> Result<Checked, ApiError> {
    let result = (|| {
        validate::id("gid", &req.gid)?;
        let trans_type = validate::trans_type(&req.trans_type)?;
        let options = validate::options(&req, &state.config)?;
        let steps = validate::steps(
            &req,
            trans_type,
            state.rocketmq_enabled(),
            state.config.max_branches,
            state.config.max_message_bytes,
        )?;
        validate::text("custom_data", &req.custom_data, validate::MAX_TEXT_BYTES)?;
        if trans_type == TransType::Msg {
            if let Some(problem) = txn::msg::delay_problem(&req.custom_data) {
                return Err(ApiError::bad("invalid_option", problem));
            }
        }
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
    })();
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
    let mut c = check(&state, req)?;
    c.options.traceparent = traceparent(&headers);
    if !require(c.trans_type)?.steps_at_prepare() && !c.steps.is_empty() {
        state.metrics.request(ApiOp::Rejected);
        return Err(ApiError::bad(
            "invalid_steps",
            "a TCC's messages go with its submit, not its prepare",
        ));
    }
    if c.trans_type == TransType::Msg && c.req.query_prepared.is_empty() {
        state.metrics.request(ApiOp::Rejected);
        return Err(ApiError::bad(
            "invalid_url",
            "query_prepared is missing: a prepared msg must say where to check it back",
        ));
    }
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
    let round = match policy(claimed.txn.trans_type) {
        Some(p) if only_deliveries_left(p, claimed.txn.status, &claimed.branches) => None,
        _ => state.driver.spawn(claimed),
    };
    let Some(finished) = finished.as_mut() else {
        return Ok(Json(DtmResult::success()));
    };
    let deadline = tokio::time::Instant::now() + timeout;
    // The first round usually finishes it; if it ends waiting (a retry, or messages not yet
    // acknowledged by their broker), wait to be told it finished, looking at the store now
    // and then in case another instance finishes it.
    let mut status = match round {
        Some(round) => match tokio::time::timeout(timeout, round).await {
            Ok(Ok(RoundEnd::Finished(status))) => Some(status),
            _ => None,
        },
        None => None,
    };
    while status.is_none() && tokio::time::Instant::now() < deadline {
        let look = (tokio::time::Instant::now() + FINISH_LOOK).min(deadline);
        tokio::select! {
            told = &mut *finished => {
                status = told.ok();
                if status.is_none() {
                    break;
                }
            }
            () = tokio::time::sleep_until(look) => {
                status = state
                    .store
                    .find(&gid)
                    .await?
                    .map(|t| t.status)
                    .filter(|s| s.is_final());
            }
        }
    }
    match status {
        Some(GlobalStatus::Failed) if submitting => Err(ApiError::Txn(txn::TxnError::Conflict {
            gid,
            status: GlobalStatus::Failed,
            action: "succeed",
        })),
        Some(_) => Ok(Json(DtmResult::success())),
        None => Err(ApiError::Ongoing(format!(
            "transaction '{gid}' has not finished phase 2 within {}s; it is still being driven",
            timeout.as_secs()
        ))),
    }
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
    let mut c = check(&state, req)?;
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
    let c = check(&state, req)?;
    state.metrics.request(ApiOp::Abort);
    let reason = if c.req.rollback_reason.is_empty() {
        "aborted by the initiator".to_owned()
    } else {
        c.req.rollback_reason.clone()
    };
    let Some(claimed) = state.apply.abort(&c.req.gid, reason).await? else {
        return Ok(Json(DtmResult::success()));
    };
    info!(gid = %claimed.txn.gid, status = "aborting", reason = %claimed.txn.rollback_reason, "transaction aborted");
    let wait = c.options.wait_result || claimed.txn.options.wait_result;
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
