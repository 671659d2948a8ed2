//! The driver: runs one round of work on a transaction this instance holds the lease of.
//!
//! A round confirms (after submit) or cancels (after abort or timeout) every branch operation
//! not yet done: one at a time in reverse registration order, as DTM does, or all at once when
//! the transaction asked for `concurrent`. Each call has the transaction's `request_timeout`.
//! A success is recorded at once (renewing the lease); anything else ends the round with a
//! retry scheduled by capped exponential backoff with jitter, and the lease given up so any
//! instance can take the next round. A confirm or cancel is never given up on: the
//! transaction stays visible until an operator steps in.
//!
//! Every write the driver makes is fenced by the lease token it was handed, so if another
//! instance has taken the transaction over, the write fails and this round stops.

use std::sync::Arc;
use std::time::Duration;

use settle_protocol::{classify_answer, BranchOutcome};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::store::outbox::is_broker_url;
use crate::store::{
    LeaseWrite, OutboxState, RetrySchedule, StatusChange, Store, StoreError, NEVER,
};
use crate::telemetry::Metrics;
use crate::txn::branch::{after_call, BranchStep};
use crate::txn::check_back::{after_check_back, CheckBack};
use crate::txn::finish::finish;
use crate::txn::retry::retry_delay_ms;
use crate::txn::timeout::{on_due_prepared, DuePrepared};
use crate::txn::{BranchOp, Decision, GlobalStatus, GlobalTxn, Op, TransType};

/// Settings of the driver.
#[derive(Debug, Clone)]
pub struct DriverSettings {
    /// How long a lease lasts after it is taken or renewed.
    pub lease: Duration,
    /// Longest interval between retries, in seconds.
    pub retry_cap_s: i64,
    /// Most rounds running at once on this instance.
    pub max_inflight: usize,
}

/// Runs rounds of work on transactions.
#[derive(Clone)]
pub struct Driver {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    http: reqwest::Client,
    settings: DriverSettings,
    inflight: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    dispatch: Arc<tokio::sync::Notify>,
}

/// How a round ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundEnd {
    /// The transaction reached this final status.
    Finished(GlobalStatus),
    /// Work remains; a retry is scheduled.
    Retrying,
    /// Not due yet, or another instance took it over.
    Left,
}

/// The answer of one branch call.
struct CallResult {
    outcome: BranchOutcome,
    detail: String,
}

const LEASE_MARGIN_MS: i64 = 5_000;

impl Driver {
    /// A driver over `store`, calling branches with `http`; `dispatch` wakes the delivery
    /// dispatcher when messages become deliverable.
    pub fn new(
        store: Store,
        http: reqwest::Client,
        settings: DriverSettings,
        metrics: Arc<Metrics>,
        dispatch: Arc<tokio::sync::Notify>,
    ) -> Self {
        let inflight = Arc::new(Semaphore::new(settings.max_inflight.max(1)));
        Self {
            inner: Arc::new(Inner {
                store,
                http,
                settings,
                inflight,
                metrics,
                dispatch,
            }),
        }
    }

    /// How many more rounds may start now.
    pub fn free_slots(&self) -> usize {
        self.inner.inflight.available_permits()
    }

    /// How long a lease lasts.
    pub fn lease(&self) -> Duration {
        self.inner.settings.lease
    }

    /// Starts a round on `txn` in the background, waiting for a free slot first. The handle
    /// yields how the round ended.
    pub fn spawn(&self, txn: GlobalTxn) -> tokio::task::JoinHandle<RoundEnd> {
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(_permit) = this.inner.inflight.clone().acquire_owned().await else {
                return RoundEnd::Left;
            };
            let gid = txn.gid.clone();
            match this.round(txn).await {
                Ok(end) => end,
                Err(StoreError::LeaseLost { .. }) => {
                    info!(gid = %gid, "lease lost to another instance; leaving the transaction");
                    RoundEnd::Left
                }
                Err(e) => {
                    warn!(gid = %gid, error = %e, "round failed; the transaction is retried when its lease runs out");
                    RoundEnd::Left
                }
            }
        })
    }

    /// Runs one round of work on a transaction whose lease this instance holds.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`] if another instance took the transaction over; a database
    /// error.
    pub async fn round(&self, mut txn: GlobalTxn) -> Result<RoundEnd, StoreError> {
        let store = &self.inner.store;
        let token = txn.lease_token.clone();
        if txn.status == GlobalStatus::Prepared {
            let now = now_ms();
            match on_due_prepared(&txn, now) {
                DuePrepared::NotYet(due) => {
                    store.release(&txn.gid, &token, due).await?;
                    return Ok(RoundEnd::Left);
                }
                DuePrepared::Abort(reason) => {
                    let change = StatusChange {
                        to: GlobalStatus::Aborting,
                        now,
                        rollback_reason: Some(reason.clone()),
                        next_cron_time: txn.lease_expire,
                        lease: LeaseWrite::Keep,
                        fence: Some(token.clone()),
                        new_branches: Vec::new(),
                        enqueue_steps: None,
                    };
                    if !store
                        .change_status(&txn.gid, GlobalStatus::Prepared, &change)
                        .await?
                    {
                        return Err(StoreError::LeaseLost { gid: txn.gid });
                    }
                    info!(gid = %txn.gid, status = "aborting", reason = %reason, "transaction timed out");
                    txn.status = GlobalStatus::Aborting;
                    txn.rollback_reason = reason;
                }
                DuePrepared::CheckBack => match self.check_back(&txn).await {
                    CheckBack::Commit => {
                        let change = StatusChange {
                            to: GlobalStatus::Submitted,
                            now,
                            rollback_reason: None,
                            next_cron_time: txn.lease_expire,
                            lease: LeaseWrite::Keep,
                            fence: Some(token.clone()),
                            new_branches: Vec::new(),
                            enqueue_steps: Some(OutboxState::Pending),
                        };
                        if !store
                            .change_status(&txn.gid, GlobalStatus::Prepared, &change)
                            .await?
                        {
                            return Err(StoreError::LeaseLost { gid: txn.gid });
                        }
                        info!(gid = %txn.gid, status = "submitted", "check-back: the local transaction committed");
                        self.inner.dispatch.notify_one();
                        txn.status = GlobalStatus::Submitted;
                    }
                    CheckBack::Rollback => {
                        let reason = "check-back: the local transaction did not commit".to_owned();
                        let change = StatusChange {
                            to: GlobalStatus::Failed,
                            now,
                            rollback_reason: Some(reason.clone()),
                            next_cron_time: NEVER,
                            lease: LeaseWrite::Release,
                            fence: Some(token.clone()),
                            new_branches: Vec::new(),
                            enqueue_steps: None,
                        };
                        if !store
                            .change_status(&txn.gid, GlobalStatus::Prepared, &change)
                            .await?
                        {
                            return Err(StoreError::LeaseLost { gid: txn.gid });
                        }
                        store.fail_pending_branches(&txn.gid, now).await?;
                        self.inner
                            .metrics
                            .transaction_finished(GlobalStatus::Failed);
                        info!(gid = %txn.gid, status = "failed", reason = %reason, "message dropped");
                        return Ok(RoundEnd::Finished(GlobalStatus::Failed));
                    }
                    CheckBack::AskAgain { ongoing, detail } => {
                        info!(gid = %txn.gid, detail = %detail, "check-back undecided; will ask again");
                        let schedule = self.retry_schedule(&txn, false, ongoing, detail, now);
                        store.schedule_retry(&txn.gid, &token, &schedule).await?;
                        return Ok(RoundEnd::Retrying);
                    }
                },
            }
        }
        if txn.status.is_final() {
            store.release(&txn.gid, &token, NEVER).await?;
            return Ok(RoundEnd::Finished(txn.status));
        }
        self.phase_two(txn).await
    }

    async fn phase_two(&self, txn: GlobalTxn) -> Result<RoundEnd, StoreError> {
        let store = &self.inner.store;
        let token = txn.lease_token.clone();
        // What phase 2 does, stage after stage. A msg rolled back has nothing to undo.
        let stages: &[Op] = match (txn.status, txn.trans_type) {
            (GlobalStatus::Submitted, TransType::Tcc) => &[Op::Confirm, Op::Action],
            (GlobalStatus::Aborting, TransType::Tcc) => &[Op::Cancel],
            (GlobalStatus::Submitted, TransType::Msg) => &[Op::Action],
            (GlobalStatus::Aborting, TransType::Msg) => &[],
            _ => {
                store.release(&txn.gid, &token, NEVER).await?;
                return Ok(RoundEnd::Left);
            }
        };
        let branches = if stages.is_empty() {
            Vec::new()
        } else {
            store.find_branches(&txn.gid).await?
        };
        let mut lease_until = txn.lease_expire;
        let mut progressed = false;
        for &op in stages {
            let mut pending: Vec<&BranchOp> = branches
                .iter()
                .filter(|b| b.op == op && b.status == crate::txn::BranchStatus::Prepared)
                .collect();
            if pending.is_empty() {
                continue;
            }
            if op == Op::Action && txn.trans_type == TransType::Tcc {
                // Every confirm succeeded: the TCC's messages may go out now.
                if store.release_held(&txn.gid, now_ms()).await? > 0 {
                    self.inner.dispatch.notify_one();
                }
            }
            // TCC undoes and confirms in reverse registration order, as DTM does; a
            // message's steps go out in the order they were given.
            if txn.trans_type == TransType::Tcc && op != Op::Action {
                pending.reverse();
            }
            // Broker-bound steps are delivered by the dispatcher, which marks them done.
            let (waiting, calls): (Vec<&BranchOp>, Vec<&BranchOp>) =
                pending.into_iter().partition(|b| is_broker_url(&b.url));
            let mut failure: Option<(bool, String)> = None;
            if txn.options.concurrent && calls.len() > 1 {
                // The calls run at once: one lease check covers them all.
                lease_until = self.ensure_lease(&txn, lease_until).await?;
                let results =
                    futures_util::future::join_all(calls.iter().map(|b| self.call(&txn, b))).await;
                for (b, r) in calls.iter().zip(results) {
                    match self.record(&txn, b, &r).await? {
                        None => progressed = true,
                        Some(f) => failure = failure.or(Some(f)),
                    }
                }
            } else {
                for b in &calls {
                    lease_until = self.ensure_lease(&txn, lease_until).await?;
                    let r = self.call(&txn, b).await;
                    match self.record(&txn, b, &r).await? {
                        None => progressed = true,
                        Some(f) => {
                            failure = Some(f);
                            break;
                        }
                    }
                }
            }
            if failure.is_none() && !waiting.is_empty() {
                // Not a failure: look again after a fixed interval, or as soon as the
                // dispatcher records a delivery.
                let detail = if txn.last_error.starts_with("delivery of step") {
                    // Keep the dispatcher's report of why delivery fails.
                    txn.last_error.clone()
                } else {
                    format!(
                        "waiting for the broker to acknowledge {} message(s)",
                        waiting.len()
                    )
                };
                failure = Some((true, detail));
            }
            if let Some((ongoing, detail)) = failure {
                let schedule = self.retry_schedule(&txn, progressed, ongoing, detail, now_ms());
                store.schedule_retry(&txn.gid, &token, &schedule).await?;
                return Ok(RoundEnd::Retrying);
            }
        }

        let now = now_ms();
        let Decision::Apply(to) = finish(&txn.gid, txn.status)? else {
            return Ok(RoundEnd::Finished(txn.status));
        };
        let change = StatusChange {
            to,
            now,
            rollback_reason: None,
            next_cron_time: NEVER,
            lease: LeaseWrite::Release,
            fence: Some(token),
            new_branches: Vec::new(),
            enqueue_steps: None,
        };
        if !store.change_status(&txn.gid, txn.status, &change).await? {
            return Err(StoreError::LeaseLost { gid: txn.gid });
        }
        if to == GlobalStatus::Failed {
            store.fail_pending_branches(&txn.gid, now).await?;
        }
        self.inner.metrics.transaction_finished(to);
        info!(gid = %txn.gid, status = %to, "transaction finished");
        Ok(RoundEnd::Finished(to))
    }

    /// Renews the lease when less than a call's worth of it is left. Returns its new expiry.
    async fn ensure_lease(&self, txn: &GlobalTxn, lease_until: i64) -> Result<i64, StoreError> {
        let now = now_ms();
        let needed = txn.options.request_timeout.saturating_mul(1000) + LEASE_MARGIN_MS;
        if lease_until - now >= needed {
            return Ok(lease_until);
        }
        let until = now + self.lease_ms().max(needed);
        self.inner
            .store
            .renew_lease(&txn.gid, &txn.lease_token, until)
            .await?;
        Ok(until)
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.inner.settings.lease.as_millis()).unwrap_or(i64::MAX / 4)
    }

    /// Records a call's result. Returns `None` when the branch is done, or the failure to
    /// schedule a retry for (`ongoing`, detail).
    async fn record(
        &self,
        txn: &GlobalTxn,
        branch: &BranchOp,
        result: &CallResult,
    ) -> Result<Option<(bool, String)>, StoreError> {
        self.inner.metrics.branch_called(result.outcome);
        match after_call(branch.status, result.outcome) {
            BranchStep::Done(Decision::Apply(_)) => {
                self.inner
                    .store
                    .complete_branch(
                        &txn.gid,
                        &txn.lease_token,
                        &branch.branch_id,
                        branch.op,
                        now_ms(),
                    )
                    .await?;
                info!(gid = %txn.gid, branch_id = %branch.branch_id, op = %branch.op, outcome = "success", "branch done");
                Ok(None)
            }
            BranchStep::Done(Decision::AlreadyDone) => Ok(None),
            BranchStep::Retry { ongoing } => {
                info!(
                    gid = %txn.gid, branch_id = %branch.branch_id, op = %branch.op,
                    outcome = result.outcome.as_str(), detail = %result.detail,
                    "branch not done; will retry"
                );
                Ok(Some((
                    ongoing,
                    format!(
                        "{} {} of branch {}: {}",
                        branch.op,
                        result.outcome.as_str(),
                        branch.branch_id,
                        result.detail
                    ),
                )))
            }
        }
    }

    fn retry_schedule(
        &self,
        txn: &GlobalTxn,
        progressed: bool,
        ongoing: bool,
        last_error: String,
        now: i64,
    ) -> RetrySchedule {
        let failures = if progressed { 0 } else { txn.retry_count };
        let (exponent, retry_count) = if ongoing {
            (0, failures)
        } else {
            (failures, failures + 1)
        };
        let interval = txn.options.retry_interval;
        let delay = retry_delay_ms(
            interval,
            self.inner.settings.retry_cap_s,
            exponent,
            rand::random::<f64>(),
        );
        let limit_reached = txn.options.retry_limit > 0 && retry_count >= txn.options.retry_limit;
        RetrySchedule {
            next_cron_time: if limit_reached { NEVER } else { now + delay },
            next_cron_interval: (delay + 999) / 1000,
            retry_count,
            last_error,
            now,
        }
    }

    /// Asks a prepared msg's initiator whether its local transaction committed: GET
    /// `query_prepared` with `branch_id=00` and `op=msg`.
    async fn check_back(&self, txn: &GlobalTxn) -> CheckBack {
        if txn.query_prepared.is_empty() {
            return CheckBack::AskAgain {
                ongoing: false,
                detail: "the message has no query_prepared URL to check back".to_owned(),
            };
        }
        let timeout = Duration::from_secs(u64::try_from(txn.options.request_timeout).unwrap_or(3));
        let params = [
            ("gid", txn.gid.as_str()),
            ("trans_type", txn.trans_type.as_str()),
            ("branch_id", "00"),
            ("op", settle_protocol::names::OP_MSG),
        ];
        let mut request = self
            .inner
            .http
            .get(&txn.query_prepared)
            .query(&params)
            .timeout(timeout);
        for (k, v) in &txn.options.branch_headers {
            request = request.header(k.as_str(), v.as_str());
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                after_check_back(status, &body)
            }
            Err(e) => CheckBack::AskAgain {
                ongoing: false,
                detail: if e.is_timeout() {
                    format!("check-back: no answer within {}s", timeout.as_secs())
                } else {
                    format!("check-back: {}", error_chain(&e))
                },
            },
        }
    }

    /// Calls one branch operation and classifies the answer.
    async fn call(&self, txn: &GlobalTxn, branch: &BranchOp) -> CallResult {
        let timeout = Duration::from_secs(u64::try_from(txn.options.request_timeout).unwrap_or(3));
        let params = [
            ("gid", txn.gid.as_str()),
            ("trans_type", txn.trans_type.as_str()),
            ("branch_id", branch.branch_id.as_str()),
            ("op", branch.op.as_str()),
        ];
        let http = &self.inner.http;
        let mut request = if branch.data.is_empty() {
            http.get(&branch.url)
        } else {
            http.post(&branch.url).body(branch.data.clone())
        };
        request = request
            .query(&params)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(timeout);
        for (k, v) in &txn.options.branch_headers {
            request = request.header(k.as_str(), v.as_str());
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                let outcome = classify_answer(status, &body);
                let mut detail = format!("HTTP {status} {}", body.trim());
                crate::store::truncate_utf8(&mut detail, 500);
                CallResult { outcome, detail }
            }
            Err(e) => CallResult {
                outcome: BranchOutcome::Error,
                detail: if e.is_timeout() {
                    format!("no answer within {}s", timeout.as_secs())
                } else {
                    error_chain(&e)
                },
            },
        }
    }
}

/// Formats an error with its causes.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
