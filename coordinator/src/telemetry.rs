//! Logs and metrics.
//!
//! Logs are structured `tracing` events, one per state change, with the gid, branch and
//! outcome as fields; `RUST_LOG` sets the level (default `info`). Metrics go through the
//! `metrics` crate into a Prometheus recorder of this instance's own (not the process-wide
//! one, so that several coordinators in one process, as in tests, keep theirs apart), and are
//! served in Prometheus' text format at `/api/metrics`.
//!
//! DTM's metric names and labels are kept, so that dashboards and alerts written for DTM work
//! (without DTM's per-gid and per-branch labels, which grow without bound):
//! `dtm_server_process_total{type,api,status}`, `dtm_server_response_duration{type,api}`
//! (seconds), `dtm_transaction_process_total{model,status}`,
//! `dtm_transaction_handled_duration{model}` (seconds from creation to the final status),
//! `dtm_branch_process_total{model,branchtype,status}`. Settle's own are named `settle_*`.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
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

/// What this instance did since it started, as Prometheus metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Topics given a per-topic gauge so far: one with nothing left reads 0, not its last
    /// value.
    topics: std::sync::Mutex<std::collections::BTreeSet<String>>,
    tracer: crate::otlp::Tracer,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
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

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Buckets of the histograms of counts (commands per batch, rounds per transaction).
const COUNTS: [f64; 12] = [
    1.0, 2.0, 3.0, 5.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Histograms of counts rather than seconds.
const COUNT_HISTOGRAMS: [&str; 2] = ["settle_store_batch_commands", "settle_transaction_rounds"];

/// Buckets of the duration histograms, in seconds.
const SECONDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

const DESCRIPTIONS: [(&str, &str); 16] = [
    (
        "dtm_server_process_total",
        "All requests received, by type, api and status (ok: below 400).",
    ),
    (
        "dtm_server_response_duration",
        "Seconds to answer a request, by type and api.",
    ),
    (
        "dtm_transaction_process_total",
        "Transactions that reached a final status, by model and status (ok: succeed).",
    ),
    (
        "dtm_transaction_handled_duration",
        "Seconds from a transaction's creation to its final status, by model.",
    ),
    (
        "dtm_branch_process_total",
        "Branch calls, by model, branchtype (the operation) and status (ok: success).",
    ),
    ("settle_requests_total", "API requests by operation."),
    (
        "settle_transactions_finished_total",
        "Transactions that reached a final status.",
    ),
    (
        "settle_branch_calls_total",
        "Branch calls by classified outcome.",
    ),
    (
        "settle_messages_dead_lettered_total",
        "Messages this instance dead-lettered after the broker refused them.",
    ),
    (
        "settle_store_batch_commands",
        "State changes written per database transaction by the batched writer.",
    ),
    (
        "settle_store_batch_seconds",
        "Seconds from a batch's start to its commit (or failure).",
    ),
    (
        "settle_transaction_settle_seconds",
        "Seconds from a transaction's submit (commit) to its final status, by model.",
    ),
    (
        "settle_transaction_rounds",
        "Rounds (phase 2 or check-back) a transaction took to reach its final status.",
    ),
    (
        "settle_overdue_transactions",
        "Unfinished transactions due more than 10 s ago and not driven since.",
    ),
    (
        "settle_alerts_total",
        "Alert events posted to the webhook, by event (firing, resolved) and outcome (ok, fail).",
    ),
    (
        "settle_unfinished_transactions",
        "Unfinished transactions in the store by status.",
    ),
];

impl Metrics {
    /// An empty set of metrics with its own recorder.
    pub fn new() -> Self {
        let mut builder = PrometheusBuilder::new()
            .set_buckets(&SECONDS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        for name in COUNT_HISTOGRAMS {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.to_owned()), &COUNTS)
                .expect("the count buckets are not empty");
        }
        let recorder = builder.build_recorder();
        for (name, help) in DESCRIPTIONS {
            recorder.describe_counter(name.into(), None, SharedString::const_str(help));
        }
        let handle = recorder.handle();
        Self {
            recorder,
            handle,
            topics: std::sync::Mutex::default(),
            tracer: crate::otlp::Tracer::off(),
        }
    }

    /// An empty set of metrics whose instance records spans with `tracer`.
    pub fn with_tracer(tracer: crate::otlp::Tracer) -> Self {
        Self {
            tracer,
            ..Self::new()
        }
    }

    /// Where this instance's spans go.
    pub fn tracer(&self) -> &crate::otlp::Tracer {
        &self.tracer
    }

    fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
        Key::from_parts(
            name,
            labels
                .iter()
                .map(|(k, v)| Label::new(*k, (*v).to_owned()))
                .collect::<Vec<_>>(),
        )
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder
            .register_counter(&Self::key(name, labels), &METADATA)
    }

    fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.recorder
            .register_histogram(&Self::key(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder
            .register_gauge(&Self::key(name, labels), &METADATA)
    }

    /// Counts one API request.
    pub fn request(&self, op: ApiOp) {
        self.counter("settle_requests_total", &[("op", API_OPS[op as usize])])
            .increment(1);
    }

    /// Counts one HTTP request answered with `status` after `took`, as DTM does: `api` is
    /// the last segment of the path.
    pub fn http_request(&self, api: &str, status: u16, took: Duration) {
        let ok = if status >= 400 { "fail" } else { "ok" };
        self.counter(
            "dtm_server_process_total",
            &[("type", "http"), ("api", api), ("status", ok)],
        )
        .increment(1);
        self.histogram(
            "dtm_server_response_duration",
            &[("type", "http"), ("api", api)],
        )
        .record(took.as_secs_f64());
    }

    /// Counts one transaction of type `model` reaching its final `status`, `age_ms` after it
    /// was created and `settle_ms` after it was submitted (none if it never was), in
    /// `rounds` rounds.
    pub fn transaction_finished(
        &self,
        model: &str,
        status: GlobalStatus,
        age_ms: i64,
        settle_ms: Option<i64>,
        rounds: i64,
    ) {
        let (name, ok) = match status {
            GlobalStatus::Succeeded => ("succeed", "ok"),
            _ => ("failed", "fail"),
        };
        self.counter("settle_transactions_finished_total", &[("status", name)])
            .increment(1);
        self.counter(
            "dtm_transaction_process_total",
            &[("model", model), ("status", ok)],
        )
        .increment(1);
        #[allow(clippy::cast_precision_loss)]
        let seconds = age_ms.max(0) as f64 / 1000.0;
        self.histogram("dtm_transaction_handled_duration", &[("model", model)])
            .record(seconds);
        if let Some(ms) = settle_ms {
            #[allow(clippy::cast_precision_loss)]
            self.histogram("settle_transaction_settle_seconds", &[("model", model)])
                .record(ms.max(0) as f64 / 1000.0);
        }
        #[allow(clippy::cast_precision_loss)]
        self.histogram("settle_transaction_rounds", &[("model", model)])
            .record(rounds.max(1) as f64);
    }

    /// Records one batch of the store's writer: how many commands, how long it took.
    pub fn store_batch(&self, commands: usize, took: Duration) {
        #[allow(clippy::cast_precision_loss)]
        self.histogram("settle_store_batch_commands", &[])
            .record(commands as f64);
        self.histogram("settle_store_batch_seconds", &[])
            .record(took.as_secs_f64());
    }

    /// Counts one call of a branch operation (`op`: `confirm`, `cancel`, ...) of a
    /// transaction of type `model`, by outcome.
    pub fn branch_called(&self, model: &str, op: &str, outcome: BranchOutcome) {
        self.counter(
            "settle_branch_calls_total",
            &[("outcome", outcome.as_str())],
        )
        .increment(1);
        let ok = if outcome == BranchOutcome::Success {
            "ok"
        } else {
            "fail"
        };
        self.counter(
            "dtm_branch_process_total",
            &[("model", model), ("branchtype", op), ("status", ok)],
        )
        .increment(1);
    }

    /// Counts one message dead-lettered.
    pub fn dead_lettered(&self) {
        self.counter("settle_messages_dead_lettered_total", &[])
            .increment(1);
    }

    /// Counts one alert event posted to the webhook (`firing` or `resolved`), taken or not.
    pub fn alert_delivered(&self, event: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "fail" };
        self.counter(
            "settle_alerts_total",
            &[("event", event), ("outcome", outcome)],
        )
        .increment(1);
    }

    /// Counts a completion callback tried: `delivered`, `failed` (to be tried again) or
    /// `abandoned`.
    pub fn callback_tried(&self, outcome: &str) {
        self.counter("settle_callbacks_total", &[("outcome", outcome)])
            .increment(1);
    }

    /// Sets a gauge read from the store at scrape time (`settle_outbox_backlog`, say).
    pub fn set_gauge(&self, name: &'static str, labels: &[(&'static str, &str)], value: f64) {
        self.gauge(name, labels).set(value);
    }

    /// Sets the per-topic outbox gauges from `(topic, pending, oldest pending age in
    /// seconds)`; topics seen before and absent now read 0.
    pub fn set_outbox_topics(&self, topics: &[(String, f64, f64)]) {
        let mut seen = self
            .topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for topic in seen.iter() {
            if !topics.iter().any(|(t, _, _)| t == topic) {
                self.set_gauge("settle_outbox_pending", &[("topic", topic)], 0.0);
                self.set_gauge(
                    "settle_outbox_oldest_pending_seconds",
                    &[("topic", topic)],
                    0.0,
                );
            }
        }
        for (topic, pending, age) in topics {
            self.set_gauge("settle_outbox_pending", &[("topic", topic)], *pending);
            self.set_gauge(
                "settle_outbox_oldest_pending_seconds",
                &[("topic", topic)],
                *age,
            );
            seen.insert(topic.clone());
        }
    }

    /// Sets a counter kept elsewhere (by the store, say) to its current total.
    pub fn set_counter(&self, name: &'static str, labels: &[(&'static str, &str)], total: u64) {
        self.counter(name, labels).absolute(total);
    }

    /// Describes a metric that has no description yet.
    pub fn describe(&self, name: &'static str, help: &'static str) {
        self.recorder
            .describe_gauge(name.into(), None, SharedString::const_str(help));
    }

    /// Everything in Prometheus' text format, with the unfinished transactions by status
    /// (read from the store by the caller) as a gauge.
    pub fn render(&self, unfinished: &[(String, i64)]) -> String {
        for (status, n) in unfinished {
            #[allow(clippy::cast_precision_loss)]
            self.set_gauge(
                "settle_unfinished_transactions",
                &[("status", status)],
                *n as f64,
            );
        }
        self.handle.render()
    }

    /// Folds recorded histogram samples into their buckets; run it every few seconds, so that
    /// memory stays bounded between scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}
