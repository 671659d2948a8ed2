//! The sender side of transactional ("half") messages.
//!
//! A message is prepared at the coordinator, then the service runs its local transaction,
//! then submits. If the service dies in between, the coordinator checks back at
//! `query_prepared`, which answers from the barrier table ([`check_back`]). With
//! [`Msg::do_and_submit_db`] the local transaction writes the barrier row itself, so the
//! check-back answer is exact: committed means delivered, rolled back means dropped.
//!
//! ```no_run
//! # async fn f(pool: sqlx::MySqlPool) -> Result<(), settle_sdk::SdkError> {
//! use settle_sdk::{BarrierTable, Msg, SettleClient};
//! let client = SettleClient::new("http://127.0.0.1:36789/api/dtmsvr");
//! let gid = client.new_gid().await?;
//! Msg::new(&client, &gid)
//!     .add("http://127.0.0.1:8081/on-paid", &serde_json::json!({"order": 42}))?
//!     .do_and_submit_db("http://127.0.0.1:8080/query-prepared", &pool, &BarrierTable::default(), |tx| {
//!         Box::pin(async move {
//!             sqlx::query("UPDATE orders SET state = 'paid' WHERE id = 42").execute(&mut *tx).await?;
//!             Ok::<_, sqlx::Error>(())
//!         })
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use serde::Serialize;
use settle_protocol::{names, BranchParams, GlobalRequest};
use sqlx::MySqlPool;
use tracing::warn;

use crate::barrier::{BarrierError, BarrierOutcome, BarrierTable, BranchBarrier, BusinessFn};
use crate::client::{SdkError, SettleClient};
use crate::handler::BranchResponse;

/// A transactional message: steps (each an action URL and its payload) delivered only if the
/// local transaction commits.
#[derive(Debug, Clone)]
pub struct Msg {
    client: SettleClient,
    request: GlobalRequest,
}

impl Msg {
    /// A message with this gid and no steps yet.
    pub fn new(client: &SettleClient, gid: &str) -> Self {
        Self::with_options(client, GlobalRequest::new(gid, names::MSG))
    }

    /// A message with the options of `request` (`timeout_to_fail` before the check-back,
    /// `request_timeout`, `retry_interval`, `branch_headers`, `callback_url`); its `gid` names
    /// it.
    pub fn with_options(client: &SettleClient, mut request: GlobalRequest) -> Self {
        request.trans_type = names::MSG.to_owned();
        Self {
            client: client.clone(),
            request,
        }
    }

    /// The gid.
    pub fn gid(&self) -> &str {
        &self.request.gid
    }

    /// Adds a step: `action` (an `http(s)://` endpoint, or `rocketmq://TOPIC?key=K&tag=T`)
    /// receives `payload` as JSON once the message commits.
    ///
    /// # Errors
    /// The payload cannot be encoded.
    pub fn add<P: Serialize + ?Sized>(
        mut self,
        action: &str,
        payload: &P,
    ) -> Result<Self, SdkError> {
        let body = serde_json::to_string(payload)
            .map_err(|e| SdkError::Business(format!("payload cannot be encoded: {e}")))?;
        self.request
            .steps
            .push(BTreeMap::from([("action".to_owned(), action.to_owned())]));
        self.request.payloads.push(body);
        Ok(self)
    }

    /// Prepares the message; the coordinator will check back at `query_prepared` if it is
    /// neither submitted nor aborted in time.
    ///
    /// # Errors
    /// The coordinator refuses or cannot be reached.
    pub async fn prepare(&mut self, query_prepared: &str) -> Result<(), SdkError> {
        self.request.query_prepared = query_prepared.to_owned();
        self.client.post("prepare", &self.request).await.map(drop)
    }

    /// Commits the message: its steps are delivered. Works with or without a prepare. An
    /// answer that does not tell (lost, ONGOING, 5xx) is checked with the coordinator (see
    /// [`SettleClient::submit_truthfully`]): `Ok` means committed.
    ///
    /// # Errors
    /// The coordinator refuses (the message was aborted), or [`SdkError::OutcomeUnknown`]
    /// when it cannot tell in time.
    pub async fn submit(&self) -> Result<(), SdkError> {
        self.client.submit_truthfully(&self.request).await
    }

    /// Drops a prepared message.
    ///
    /// # Errors
    /// The coordinator refuses (the message was submitted) or cannot be reached.
    pub async fn abort(&self) -> Result<(), SdkError> {
        self.client.post("abort", &self.request).await.map(drop)
    }

    /// The barrier of this message's local transaction (branch `00`, op `msg`).
    fn barrier(&self, table: &BarrierTable) -> Result<BranchBarrier, SdkError> {
        BranchBarrier::new(local_params(self.gid()), table.clone())
            .map_err(|e| SdkError::Business(e.to_string()))
    }

    /// Prepares the message, runs `business` in a MySQL transaction together with the
    /// barrier row, then submits; if `business` fails the message is aborted. If the outcome
    /// of the local transaction is unknown (the database connection broke at commit), the
    /// barrier table decides, exactly as the coordinator's check-back would.
    ///
    /// # Errors
    /// The business error (the message was aborted), or a coordinator or database error. If
    /// the submit itself fails after the local commit, the coordinator's check-back delivers
    /// the message anyway.
    pub async fn do_and_submit_db<T, E, F>(
        mut self,
        query_prepared: &str,
        pool: &MySqlPool,
        table: &BarrierTable,
        business: F,
    ) -> Result<T, SdkError>
    where
        E: std::fmt::Display,
        F: for<'c> FnOnce(&'c mut sqlx::MySqlConnection) -> BusinessFn<'c, T, E>,
    {
        self.prepare(query_prepared).await?;
        let barrier = self.barrier(table)?;
        match barrier.call(pool, business).await {
            Ok(BarrierOutcome::Done(value)) => match self.submit().await {
                Ok(()) => Ok(value),
                // The local transaction committed with its barrier row: whatever became of
                // the submit, the check-back finds the row and the message goes out.
                Err(e @ SdkError::OutcomeUnknown { .. }) => {
                    warn!(gid = %self.gid(), error = %e, "submit unanswered after the local commit; the check-back will deliver the message");
                    Ok(value)
                }
                Err(e) => Err(e),
            },
            Ok(_) => {
                // The row was already there: a check-back rolled this message back first.
                self.abort_quietly().await;
                Err(SdkError::Failure {
                    what: format!("local transaction of msg {}", self.gid()),
                    message: "the message was already rolled back by a check-back".into(),
                })
            }
            Err(BarrierError::Business(e)) => {
                self.abort_quietly().await;
                Err(SdkError::Business(e.to_string()))
            }
            Err(e) => {
                // The commit may or may not have happened: ask the barrier table.
                match barrier.query_prepared(pool).await {
                    Ok(true) => {
                        self.submit().await?;
                        Err(SdkError::Business(format!("local transaction reported an error but committed; the message was submitted: {e}")))
                    }
                    Ok(false) => {
                        self.abort_quietly().await;
                        Err(SdkError::Business(e.to_string()))
                    }
                    // Still unknown: leave it prepared; the coordinator's check-back decides.
                    Err(_) => Err(SdkError::Business(e.to_string())),
                }
            }
        }
    }

    async fn abort_quietly(&self) {
        if let Err(e) = self.abort().await {
            warn!(gid = %self.gid(), error = %e, "abort of a msg did not go through; its check-back will drop it");
        }
    }
}

fn local_params(gid: &str) -> BranchParams {
    BranchParams {
        gid: gid.to_owned(),
        trans_type: names::MSG.to_owned(),
        branch_id: "00".to_owned(),
        op: names::OP_MSG.to_owned(),
    }
}

/// Answers a msg check-back (`query_prepared`) from the barrier table: SUCCESS if the local
/// transaction committed, FAILURE if it did not (and, from then on, never will).
pub async fn check_back(
    pool: &MySqlPool,
    table: &BarrierTable,
    params: BranchParams,
) -> BranchResponse {
    if params.gid.is_empty() {
        return BranchResponse::failure("gid is missing from the check-back");
    }
    let barrier = match BranchBarrier::new(local_params(&params.gid), table.clone()) {
        Ok(b) => b,
        Err(e) => return BranchResponse::failure(e.to_string()),
    };
    match barrier.query_prepared(pool).await {
        Ok(true) => BranchResponse::Success,
        Ok(false) => BranchResponse::failure("the local transaction did not commit"),
        Err(e) => BranchResponse::Error(format!("database error: {e}")),
    }
}
