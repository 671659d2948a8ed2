//! Calling participants over HTTP: a branch operation, and a msg's check-back.
//!
//! A call is made as DTM makes it (query parameters `gid`, `trans_type`, `branch_id`, `op`,
//! the registered body, `branch_headers`) with the transaction's `request_timeout`, and its
//! answer classified: success, failure, ongoing, or an error to retry.

use std::time::Duration;

use settle_protocol::{classify_answer, BranchOutcome};

use super::Driver;
use crate::telemetry::error_chain;
use crate::txn::check_back::{after_check_back, CheckBack};
use crate::txn::{BranchOp, GlobalTxn};

/// The answer of one branch call.
#[derive(Debug, Clone)]
pub struct CallResult {
    /// How the answer is classified.
    pub outcome: BranchOutcome,
    /// What was answered, for operators.
    pub detail: String,
}

impl CallResult {
    /// What a fail point makes of a call: an error, as if the connection broke.
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    fn injected(point: &str) -> Self {
        Self {
            outcome: BranchOutcome::Error,
            detail: format!("fail point {point}"),
        }
    }
}

/// Adds what every call for `txn` carries: its `branch_headers`, and the initiator's trace
/// with this call as a span of its own.
fn with_transaction_headers(
    mut request: reqwest::RequestBuilder,
    txn: &GlobalTxn,
) -> reqwest::RequestBuilder {
    for (k, v) in &txn.options.branch_headers {
        request = request.header(k.as_str(), v.as_str());
    }
    if let Some(tp) =
        settle_protocol::trace::child(&txn.options.traceparent, rand::random::<u64>() | 1)
    {
        request = request.header(settle_protocol::trace::HEADER, tp);
    }
    request
}

fn request_timeout(txn: &GlobalTxn) -> Duration {
    Duration::from_secs(u64::try_from(txn.options.request_timeout).unwrap_or(3))
}

impl Driver {
    /// Calls one branch operation and classifies the answer.
    pub async fn call(&self, txn: &GlobalTxn, branch: &BranchOp) -> CallResult {
        // The transaction's status is durable; the participant has not been called yet.
        fail::fail_point!("driver::before_call", |_| CallResult::injected(
            "driver::before_call"
        ));
        if let Err(refused) = self.inner.settings.allowlist.check_url(&branch.url) {
            self.inner.apply.metrics().branch_called(
                txn.trans_type.as_str(),
                branch.op.as_str(),
                BranchOutcome::Error,
            );
            return CallResult {
                outcome: BranchOutcome::Error,
                detail: refused.to_string(),
            };
        }
        let timeout = request_timeout(txn);
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
        request = with_transaction_headers(request, txn);
        let result = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = self.read_answer(response).await;
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
        };
        self.inner.apply.metrics().branch_called(
            txn.trans_type.as_str(),
            branch.op.as_str(),
            result.outcome,
        );
        // The participant answered; its outcome is not recorded yet.
        fail::fail_point!("driver::after_answer", |_| CallResult::injected(
            "driver::after_answer"
        ));
        result
    }

    /// Reads at most `max_answer_bytes` of an answer's body (an endless or huge answer must
    /// not exhaust the coordinator's memory), as text; what does not read is left unread.
    async fn read_answer(&self, mut response: reqwest::Response) -> String {
        let max = self.inner.settings.max_answer_bytes;
        let mut body: Vec<u8> = Vec::new();
        while body.len() < max {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = max - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        String::from_utf8_lossy(&body).into_owned()
    }

    /// Asks a prepared msg's initiator whether its local transaction committed: GET
    /// `query_prepared` with `branch_id=00` and `op=msg`.
    pub async fn check_back(&self, txn: &GlobalTxn) -> CheckBack {
        if txn.query_prepared.is_empty() {
            return CheckBack::AskAgain {
                ongoing: false,
                detail: "the message has no query_prepared URL to check back".to_owned(),
            };
        }
        if let Err(refused) = self.inner.settings.allowlist.check_url(&txn.query_prepared) {
            return CheckBack::AskAgain {
                ongoing: false,
                detail: format!("check-back: {refused}"),
            };
        }
        let timeout = request_timeout(txn);
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
        request = with_transaction_headers(request, txn);
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = self.read_answer(response).await;
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
}
