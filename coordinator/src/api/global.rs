//! `prepare`, `submit`, `abort` and `forceStop`: the operations on a whole transaction.

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use settle_protocol::{DtmResult, GlobalRequest};
use tracing::info;

use super::body::JsonBody;
use super::error::ApiError;
use super::{validate, AppState};
use crate::clock::now_ms;
use crate::driver::RoundEnd;
use crate::scheduler::new_token;
use crate::store::outbox::is_broker_url;
use crate::store::{LeaseWrite, OutboxState, StatusChange, NEVER};
use crate::telemetry::ApiOp;
use crate::txn::{
    self, timeout::timeout_deadline, Decision, GlobalStatus, GlobalTxn, NewBranch, TransOptions,
    TransType,
};

/// How many times a handler re-decides after losing a race with a concurrent change.
const RACE_RETRIES: usize = 5;

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
        let steps = validate::steps(&req, trans_type, state.rocketmq_enabled())?;
        if !req.query_prepared.is_empty() {
            validate::url("query_prepared", &req.query_prepared)?;
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

fn new_txn(c: &Checked, status: GlobalStatus, now: i64) -> GlobalTxn {
    GlobalTxn {
        gid: c.req.gid.clone(),
        trans_type: c.trans_type,
        status,
        custom_data: c.req.custom_data.clone(),
        steps: c.req.steps.clone(),
        payloads: c.req.payloads.clone(),
        query_prepared: c.req.query_prepared.clone(),
        protocol: "http".to_owned(),
        options: c.options.clone(),
        rollback_reason: String::new(),
        create_time: now,
        update_time: now,
        finish_time: None,
        rollback_time: None,
        next_cron_time: timeout_deadline(now, c.options.timeout_to_fail),
        next_cron_interval: c.options.retry_interval,
        owner: String::new(),
        lease_token: String::new(),
        lease_expire: 0,
        retry_count: 0,
        last_error: String::new(),
    }
}

fn existing(txn: &Option<GlobalTxn>) -> Option<(GlobalStatus, TransType)> {
    txn.as_ref().map(|t| (t.status, t.trans_type))
}

fn raced(gid: &str) -> ApiError {
    ApiError::Ongoing(format!(
        "transaction '{gid}' kept changing concurrently; try again"
    ))
}

/// `POST prepare`: opens a global transaction in `prepared`.
///
/// # Errors
/// 400 for bad input, 409 if the transaction exists and is no longer prepared.
pub async fn prepare(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<GlobalRequest>,
) -> Result<Json<DtmResult>, ApiError> {
    let c = check(&state, req)?;
    if c.trans_type == TransType::Tcc && !c.steps.is_empty() {
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
    // Most prepares open a new transaction: try the insert first, and look at what exists
    // only when the gid is taken.
    let txn = new_txn(&c, GlobalStatus::Prepared, now_ms());
    if state.store.insert_global(&txn, &c.steps).await? {
        info!(gid = %txn.gid, trans_type = %txn.trans_type, status = "prepared", "transaction prepared");
        return Ok(Json(DtmResult::success()));
    }
    for _ in 0..RACE_RETRIES {
        let found = state.store.find(&c.req.gid).await?;
        match txn::prepare::prepare(&c.req.gid, c.trans_type, existing(&found))? {
            Decision::AlreadyDone => return Ok(Json(DtmResult::success())),
            Decision::Apply(()) => {
                if state.store.insert_global(&txn, &c.steps).await? {
                    info!(gid = %txn.gid, trans_type = %txn.trans_type, status = "prepared", "transaction prepared");
                    return Ok(Json(DtmResult::success()));
                }
            }
        }
    }
    Err(raced(&c.req.gid))
}

/// Takes the lease on a transaction for this instance, for the write that starts phase 2.
fn acquire(state: &AppState, now: i64) -> (LeaseWrite, String, i64) {
    let token = new_token();
    let expire = now + i64::try_from(state.config.lease_ms).unwrap_or(i64::MAX / 4);
    let lease = LeaseWrite::Acquire {
        owner: state.instance_id.to_string(),
        token: token.clone(),
        expire,
    };
    (lease, token, expire)
}

/// Starts phase 2 on `txn` (whose lease this instance now holds) and, with `wait_result`,
/// waits up to `request_timeout` for it to finish.
async fn start_phase_two(
    state: &AppState,
    txn: GlobalTxn,
    wait: bool,
) -> Result<Json<DtmResult>, ApiError> {
    let gid = txn.gid.clone();
    let submitting = txn.status == GlobalStatus::Submitted;
    let timeout = Duration::from_secs(u64::try_from(txn.options.request_timeout).unwrap_or(3));
    let round = state.driver.spawn(txn);
    if !wait {
        return Ok(Json(DtmResult::success()));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    // The first round usually finishes it; if it ends waiting (a retry, or messages not yet
    // acknowledged by their broker), follow the stored status until the deadline.
    let mut status = match tokio::time::timeout(timeout, round).await {
        Ok(Ok(RoundEnd::Finished(status))) => Some(status),
        _ => None,
    };
    while status.is_none() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = state
            .store
            .find(&gid)
            .await?
            .map(|t| t.status)
            .filter(|s| s.is_final());
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

/// How a submit puts broker-bound messages in the outbox: a msg's go out at once; a TCC's
/// wait until every confirm succeeded.
fn outbox_state(trans_type: TransType) -> OutboxState {
    if trans_type == TransType::Tcc {
        OutboxState::Held
    } else {
        OutboxState::Pending
    }
}

/// Whether committing `stored` (with the request `c`) puts messages in the outbox: a msg's
/// stored steps, or the messages a TCC's submit carries, that go to a broker.
fn has_broker_steps(stored: &GlobalTxn, c: &Checked) -> bool {
    let stored_steps = stored
        .steps
        .iter()
        .filter_map(|s| s.get("action"))
        .any(|a| is_broker_url(a));
    let carried = c.steps.iter().any(|b| is_broker_url(&b.url));
    match c.trans_type {
        TransType::Tcc => carried,
        _ => stored_steps,
    }
}

/// `POST submit`: commits a transaction and starts confirming its branches (or, for a msg,
/// delivering it). A transaction never prepared is created submitted, as in DTM.
///
/// # Errors
/// 400 for bad input, 409 after an abort.
pub async fn submit(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<GlobalRequest>,
) -> Result<Json<DtmResult>, ApiError> {
    let c = check(&state, req)?;
    state.metrics.request(ApiOp::Submit);
    let gid = c.req.gid.as_str();
    for _ in 0..RACE_RETRIES {
        let found = state.store.find(gid).await?;
        let now = now_ms();
        let (lease, token, expire) = acquire(&state, now);
        let mut txn = match txn::submit::submit(gid, c.trans_type, existing(&found))? {
            Decision::AlreadyDone => return Ok(Json(DtmResult::success())),
            Decision::Apply(txn::submit::SubmitChange::Create) => {
                let mut txn = new_txn(&c, GlobalStatus::Submitted, now);
                txn.next_cron_time = expire;
                txn.owner = state.instance_id.to_string();
                txn.lease_token = token;
                txn.lease_expire = expire;
                if !state
                    .store
                    .insert_global_enqueue(&txn, &c.steps, Some(outbox_state(c.trans_type)))
                    .await?
                {
                    continue;
                }
                state.dispatch.notify_one();
                txn
            }
            Decision::Apply(txn::submit::SubmitChange::FromPrepared) => {
                let Some(mut txn) = found else { continue };
                let change = StatusChange {
                    to: GlobalStatus::Submitted,
                    now,
                    rollback_reason: None,
                    next_cron_time: expire,
                    lease,
                    fence: None,
                    // A TCC's messages come with its submit; a msg's steps were stored at
                    // prepare.
                    new_branches: if c.trans_type == TransType::Tcc {
                        c.steps.clone()
                    } else {
                        Vec::new()
                    },
                    enqueue_steps: has_broker_steps(&txn, &c).then(|| outbox_state(c.trans_type)),
                };
                if !state
                    .store
                    .change_status(gid, GlobalStatus::Prepared, &change)
                    .await?
                {
                    continue;
                }
                state.dispatch.notify_one();
                txn.status = GlobalStatus::Submitted;
                txn.owner = state.instance_id.to_string();
                txn.lease_token = token;
                txn.lease_expire = expire;
                txn
            }
        };
        info!(gid = %gid, status = "submitted", "transaction submitted");
        txn.options.wait_result |= c.options.wait_result;
        let wait = txn.options.wait_result;
        return start_phase_two(&state, txn, wait).await;
    }
    Err(raced(gid))
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
    let gid = c.req.gid.as_str();
    for _ in 0..RACE_RETRIES {
        let found = state.store.find(gid).await?;
        match txn::abort::abort(gid, existing(&found))? {
            Decision::AlreadyDone => return Ok(Json(DtmResult::success())),
            Decision::Apply(()) => {
                let Some(mut txn) = found else { continue };
                let now = now_ms();
                let (lease, token, expire) = acquire(&state, now);
                let reason = if c.req.rollback_reason.is_empty() {
                    "aborted by the initiator".to_owned()
                } else {
                    c.req.rollback_reason.clone()
                };
                let change = StatusChange {
                    to: GlobalStatus::Aborting,
                    now,
                    rollback_reason: Some(reason.clone()),
                    next_cron_time: expire,
                    lease,
                    fence: None,
                    // Rolled back: nothing is added, nothing goes out.
                    new_branches: Vec::new(),
                    enqueue_steps: None,
                };
                if !state
                    .store
                    .change_status(gid, GlobalStatus::Prepared, &change)
                    .await?
                {
                    continue;
                }
                info!(gid = %gid, status = "aborting", reason = %reason, "transaction aborted");
                txn.status = GlobalStatus::Aborting;
                txn.rollback_reason = reason;
                txn.lease_token = token;
                txn.lease_expire = expire;
                let wait = txn.options.wait_result || c.options.wait_result;
                return start_phase_two(&state, txn, wait).await;
            }
        }
    }
    Err(raced(gid))
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
    let gid = req.gid.as_str();
    for _ in 0..RACE_RETRIES {
        let found = state.store.find(gid).await?;
        let status = found.as_ref().map(|t| t.status);
        match txn::force_stop::force_stop(gid, status)? {
            Decision::AlreadyDone => return Ok(Json(DtmResult::success())),
            Decision::Apply(()) => {
                let Some(from) = status else { continue };
                let now = now_ms();
                let change = StatusChange {
                    to: GlobalStatus::Failed,
                    now,
                    rollback_reason: Some("stopped by an operator (forceStop)".to_owned()),
                    next_cron_time: NEVER,
                    lease: LeaseWrite::Release,
                    fence: None,
                    new_branches: Vec::new(),
                    enqueue_steps: None,
                };
                if state.store.change_status(gid, from, &change).await? {
                    info!(gid = %gid, status = "failed", "transaction force-stopped");
                    state.metrics.transaction_finished(GlobalStatus::Failed);
                    return Ok(Json(DtmResult::success()));
                }
            }
        }
    }
    Err(raced(gid))
}
