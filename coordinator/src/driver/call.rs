//! Calling participants (over HTTP, through the driver's [`super::transport`]): a branch
//! operation, and a msg's check-back.
//!
//! A call is made as DTM makes it (query parameters `gid`, `trans_type`, `branch_id`, `op`,
//! the registered body, `branch_headers`) with the transaction's `request_timeout`, and its
//! answer classified: success, failure, ongoing, or an error to retry.

use std::time::Duration;

use settle_protocol::{classify_answer, BranchOutcome};

use super::transport::{Answer, Request};
use super::Driver;
use crate::otlp::{new_span_id, Kind, Span};
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

/// What every call for `txn` carries: its `branch_headers`, and the initiator's trace with
/// this call as a span of its own, `span_id`.
fn transaction_headers(txn: &GlobalTxn, span_id: u64) -> Vec<(&str, String)> {
    let mut headers: Vec<(&str, String)> = txn
        .options
        .branch_headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    if let Some(tp) = settle_protocol::trace::child(&txn.options.traceparent, span_id) {
        headers.push((settle_protocol::trace::HEADER, tp));
    }
    headers
}

/// The span of one call made for `txn` (recorded only when spans are exported).
fn call_span(txn: &GlobalTxn, name: &str, url: &str, span_id: u64) -> Span {
    Span::start(name, Kind::Client, &txn.options.traceparent, span_id)
        .with("settle.gid", txn.gid.as_str())
        .with("settle.trans_type", txn.trans_type.as_str())
        .with("url.full", url)
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
        let span_id = new_span_id();
        let span = call_span(txn, branch.op.as_str(), &branch.url, span_id)
            .with("settle.branch_id", branch.branch_id.as_str());
        let request = Request {
            url: &branch.url,
            query: [
                ("gid", txn.gid.as_str()),
                ("trans_type", txn.trans_type.as_str()),
                ("branch_id", branch.branch_id.as_str()),
                ("op", branch.op.as_str()),
            ],
            body: (!branch.data.is_empty()).then_some(branch.data.as_str()),
            headers: transaction_headers(txn, span_id),
            timeout,
        };
        let result = match self.inner.transport.send(request).await {
            Answer::Status(status, body) => {
                let outcome = classify_answer(status, &body);
                let mut detail = format!("HTTP {status} {}", body.trim());
                crate::store::truncate_utf8(&mut detail, 500);
                CallResult { outcome, detail }
            }
            Answer::TimedOut => CallResult {
                outcome: BranchOutcome::Error,
                detail: format!("no answer within {}s", timeout.as_secs()),
            },
            Answer::Failed(detail) => CallResult {
                outcome: BranchOutcome::Error,
                detail,
            },
        };
        let metrics = self.inner.apply.metrics();
        metrics.branch_called(txn.trans_type.as_str(), branch.op.as_str(), result.outcome);
        if metrics.tracer().is_on() {
            metrics.tracer().record(
                span.with("settle.outcome", result.outcome.as_str())
                    .end(result.outcome == BranchOutcome::Error),
            );
        }
        // The participant answered; its outcome is not recorded yet.
        fail::fail_point!("driver::after_answer", |_| CallResult::injected(
            "driver::after_answer"
        ));
        result
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
        let span_id = new_span_id();
        let span = call_span(txn, "check-back", &txn.query_prepared, span_id);
        let request = Request {
            url: &txn.query_prepared,
            query: [
                ("gid", txn.gid.as_str()),
                ("trans_type", txn.trans_type.as_str()),
                ("branch_id", "00"),
                ("op", settle_protocol::names::OP_MSG),
            ],
            body: None,
            headers: transaction_headers(txn, span_id),
            timeout,
        };
        let answer = self.inner.transport.send(request).await;
        let tracer = self.inner.apply.metrics().tracer();
        if tracer.is_on() {
            tracer.record(span.end(!matches!(answer, Answer::Status(..))));
        }
        match answer {
            Answer::Status(status, body) => after_check_back(status, &body),
            Answer::TimedOut => CheckBack::AskAgain {
                ongoing: false,
                detail: format!("check-back: no answer within {}s", timeout.as_secs()),
            },
            Answer::Failed(detail) => CheckBack::AskAgain {
                ongoing: false,
                detail: format!("check-back: {detail}"),
            },
        }
    }
}
