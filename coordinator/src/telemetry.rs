//! Logs and metrics.
//!
//! Logs are structured `tracing` events, one per state change, with the gid, branch and
//! outcome as fields; `RUST_LOG` sets the level (default `info`). Metrics are counters kept
//! in memory and served in Prometheus' text format at `/api/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use settle_protocol::BranchOutcome;
use tracing_subscriber::EnvFilter;

use crate::txn::GlobalStatus;

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

/// Installs the global `tracing` subscriber, once; later calls do nothing.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Counters of what this instance did since it started.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: [AtomicU64; 6],
    finished_succeeded: AtomicU64,
    finished_failed: AtomicU64,
    branch_calls: [AtomicU64; 4],
    dead_lettered: AtomicU64,
}

/// The API operations that are counted.
#[derive(Debug, Clone, Copy)]
pub enum ApiOp {
    /// `prepare`.
    Prepare = 0,
    /// `submit`.
    Submit = 1,
    /// `abort`.
    Abort = 2,
    /// `registerBranch`.
    RegisterBranch = 3,
    /// `query`.
    Query = 4,
    /// Anything rejected as bad input.
    Rejected = 5,
}

const API_OPS: [&str; 6] = [
    "prepare",
    "submit",
    "abort",
    "register_branch",
    "query",
    "rejected",
];

const OUTCOMES: [BranchOutcome; 4] = [
    BranchOutcome::Success,
    BranchOutcome::Failure,
    BranchOutcome::Ongoing,
    BranchOutcome::Error,
];

impl Metrics {
    /// Counts one API request.
    pub fn request(&self, op: ApiOp) {
        self.requests[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one transaction reaching a final status.
    pub fn transaction_finished(&self, status: GlobalStatus) {
        match status {
            GlobalStatus::Succeeded => self.finished_succeeded.fetch_add(1, Ordering::Relaxed),
            _ => self.finished_failed.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Counts one branch call by outcome.
    pub fn branch_called(&self, outcome: BranchOutcome) {
        let i = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(3);
        self.branch_calls[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one message dead-lettered.
    pub fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters in Prometheus' text format, plus the given gauge of unfinished
    /// transactions by status.
    pub fn render(&self, unfinished: &[(String, i64)]) -> String {
        let mut out = String::new();
        out.push_str("# HELP settle_requests_total API requests by operation.\n");
        out.push_str("# TYPE settle_requests_total counter\n");
        for (i, name) in API_OPS.iter().enumerate() {
            let v = self.requests[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "settle_requests_total{{op=\"{name}\"}} {v}");
        }
        out.push_str(
            "# HELP settle_transactions_finished_total Transactions that reached a final status.\n",
        );
        out.push_str("# TYPE settle_transactions_finished_total counter\n");
        let _ = writeln!(
            out,
            "settle_transactions_finished_total{{status=\"succeed\"}} {}",
            self.finished_succeeded.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "settle_transactions_finished_total{{status=\"failed\"}} {}",
            self.finished_failed.load(Ordering::Relaxed)
        );
        out.push_str("# HELP settle_branch_calls_total Branch calls by classified outcome.\n");
        out.push_str("# TYPE settle_branch_calls_total counter\n");
        for (i, o) in OUTCOMES.iter().enumerate() {
            let v = self.branch_calls[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "settle_branch_calls_total{{outcome=\"{}\"}} {v}",
                o.as_str()
            );
        }
        out.push_str("# HELP settle_messages_dead_lettered_total Messages this instance dead-lettered after the broker refused them.\n");
        out.push_str("# TYPE settle_messages_dead_lettered_total counter\n");
        let _ = writeln!(
            out,
            "settle_messages_dead_lettered_total {}",
            self.dead_lettered.load(Ordering::Relaxed)
        );
        out.push_str("# HELP settle_unfinished_transactions Unfinished transactions in the store by status.\n");
        out.push_str("# TYPE settle_unfinished_transactions gauge\n");
        for (status, n) in unfinished {
            let _ = writeln!(
                out,
                "settle_unfinished_transactions{{status=\"{status}\"}} {n}"
            );
        }
        out
    }
}
