//! The records the state machine reasons about: a global transaction, its options and its
//! branch operations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{BranchStatus, GlobalStatus, Op, TransType};

/// Options of a global transaction, resolved against the server's defaults. Stored as JSON
/// with the transaction. The default (all zero) stands for options that could not be read.
/// `Debug` hides the values of `branch_headers`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransOptions {
    /// Seconds a transaction may stay prepared before it is rolled back (TCC) or checked back
    /// (msg).
    pub timeout_to_fail: i64,
    /// Seconds each branch call may take.
    pub request_timeout: i64,
    /// Seconds before the first retry; doubles on each failed attempt up to the server's cap.
    pub retry_interval: i64,
    /// Headers added to every branch call.
    #[serde(default)]
    pub branch_headers: BTreeMap<String, String>,
    /// Call all branches of phase 2 at once.
    #[serde(default)]
    pub concurrent: bool,
    /// Answer `submit` only when phase 2 has finished.
    #[serde(default)]
    pub wait_result: bool,
    /// Retries after which automatic retrying stops (`0`: never stops).
    #[serde(default)]
    pub retry_limit: i64,
    /// The W3C `traceparent` the initiator sent (empty: none): every branch call carries
    /// its trace id on, so that one business request is one trace across services.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub traceparent: String,
    /// Where the outcome is posted once the transaction has finished (empty: nowhere).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub callback_url: String,
}

impl std::fmt::Debug for TransOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransOptions")
            .field("timeout_to_fail", &self.timeout_to_fail)
            .field("request_timeout", &self.request_timeout)
            .field("retry_interval", &self.retry_interval)
            .field(
                "branch_headers",
                &settle_protocol::request::HiddenValues(&self.branch_headers),
            )
            .field("concurrent", &self.concurrent)
            .field("wait_result", &self.wait_result)
            .field("retry_limit", &self.retry_limit)
            .field("traceparent", &self.traceparent)
            .field("callback_url", &self.callback_url)
            .finish()
    }
}

/// A global transaction as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalTxn {
    /// Global transaction id.
    pub gid: String,
    /// Its type.
    pub trans_type: TransType,
    /// Its status.
    pub status: GlobalStatus,
    /// Opaque data of the transaction type.
    pub custom_data: String,
    /// Steps of a msg (JSON array of objects of strings), empty for TCC.
    pub steps: Vec<BTreeMap<String, String>>,
    /// Bodies of the steps.
    pub payloads: Vec<String>,
    /// Check-back URL of a msg.
    pub query_prepared: String,
    /// `http`.
    pub protocol: String,
    /// Resolved options.
    pub options: TransOptions,
    /// Why it rolled back.
    pub rollback_reason: String,
    /// Creation time, ms since the Unix epoch.
    pub create_time: i64,
    /// Last change, ms since the Unix epoch.
    pub update_time: i64,
    /// When it finished.
    pub finish_time: Option<i64>,
    /// When it turned to rolling back.
    pub rollback_time: Option<i64>,
    /// When it was submitted (committed); none before, and for one never submitted.
    pub submit_time: Option<i64>,
    /// When its outcome is next to be posted to its `callback_url`, ms; none before it
    /// finished, without a callback, and once the callback was delivered.
    pub callback_due: Option<i64>,
    /// When it is next due for work, ms since the Unix epoch.
    pub next_cron_time: i64,
    /// Seconds of the last retry interval.
    pub next_cron_interval: i64,
    /// Coordinator instance holding the lease, empty if none.
    pub owner: String,
    /// Fencing token of the current lease, empty if none.
    pub lease_token: String,
    /// When the lease runs out, ms since the Unix epoch.
    pub lease_expire: i64,
    /// Failed attempts in a row.
    pub retry_count: i64,
    /// The last error met while driving it.
    pub last_error: String,
}

/// A branch operation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchOp {
    /// Registration order within the store.
    pub id: i64,
    /// Global transaction id.
    pub gid: String,
    /// Branch id.
    pub branch_id: String,
    /// Which operation.
    pub op: Op,
    /// URL to call.
    pub url: String,
    /// Body to send.
    pub data: String,
    /// Its status.
    pub status: BranchStatus,
    /// Registration time, ms.
    pub create_time: i64,
    /// Last change, ms.
    pub update_time: i64,
    /// When it finished, ms.
    pub finish_time: Option<i64>,
}

/// A branch operation to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBranch {
    /// Branch id.
    pub branch_id: String,
    /// Which operation.
    pub op: Op,
    /// URL to call.
    pub url: String,
    /// Body to send.
    pub data: String,
}

impl GlobalTxn {
    /// A new transaction created at `now` in `status`, with nothing stored about it yet: no
    /// steps, no lease, due when it would time out.
    pub fn new(
        gid: impl Into<String>,
        trans_type: TransType,
        status: GlobalStatus,
        options: TransOptions,
        now: i64,
    ) -> Self {
        Self {
            gid: gid.into(),
            trans_type,
            status,
            custom_data: String::new(),
            steps: Vec::new(),
            payloads: Vec::new(),
            query_prepared: String::new(),
            protocol: "http".to_owned(),
            next_cron_time: super::timeout::timeout_deadline(now, options.timeout_to_fail),
            next_cron_interval: options.retry_interval,
            options,
            rollback_reason: String::new(),
            create_time: now,
            update_time: now,
            finish_time: None,
            rollback_time: None,
            submit_time: None,
            callback_due: None,
            owner: String::new(),
            lease_token: String::new(),
            lease_expire: 0,
            retry_count: 0,
            last_error: String::new(),
        }
    }
}

impl BranchOp {
    /// A branch operation registered at `now`, not yet stored (`id` 0) and not yet done.
    pub fn new(gid: &str, b: NewBranch, now: i64) -> Self {
        Self {
            id: 0,
            gid: gid.to_owned(),
            branch_id: b.branch_id,
            op: b.op,
            url: b.url,
            data: b.data,
            status: BranchStatus::Prepared,
            create_time: now,
            update_time: now,
            finish_time: None,
        }
    }

    /// Ends the operation with `status` at `now`.
    pub fn finish(&mut self, status: BranchStatus, now: i64) {
        self.status = status;
        self.update_time = now;
        self.finish_time = Some(now);
    }
}

/// A transaction with DTM's default options, created at 1,000,000 ms, for tests.
#[cfg(test)]
pub(crate) fn sample(trans_type: TransType, status: GlobalStatus) -> GlobalTxn {
    let options = TransOptions {
        timeout_to_fail: 35,
        request_timeout: 3,
        retry_interval: 10,
        branch_headers: Default::default(),
        concurrent: false,
        wait_result: false,
        retry_limit: 0,
        traceparent: String::new(),
        callback_url: String::new(),
    };
    GlobalTxn::new("g", trans_type, status, options, 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_names_branch_headers_but_hides_their_values() {
        let mut options = TransOptions::default();
        options
            .branch_headers
            .insert("Authorization".into(), "Bearer s3cret".into());
        let mut request = settle_protocol::GlobalRequest::new("g", "tcc");
        request.branch_headers = options.branch_headers.clone();
        for shown in [format!("{options:?}"), format!("{request:?}")] {
            assert!(
                shown.contains("Authorization") && !shown.contains("s3cret"),
                "{shown}"
            );
        }
    }
}
