//! OpenTelemetry export: spans for API requests, store batches, branch calls and
//! publishes, sent to an OTLP/HTTP collector (`{otlp_endpoint}/v1/traces`, JSON encoding)
//! when `otlp_endpoint` is set.
//!
//! A request that carries a W3C `traceparent` is a span of that trace, and so is every
//! branch call and publish made for its transaction: the span ids they send on (the
//! `traceparent` header of a call, the property of a message) are those of their spans here,
//! so a participant's or consumer's spans hang under them. Store batches serve many
//! transactions at once and are traces of their own.
//!
//! Spans are queued without waiting (when the queue is full they are dropped and counted)
//! and posted in batches every second; the collector being slow or down never slows a
//! transaction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::warn;

use crate::telemetry::error_chain;

/// Most spans waiting to be posted; more are dropped.
const QUEUE: usize = 8192;
/// Most spans in one post.
const PER_POST: usize = 512;

/// What a span stands for, as OTLP numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Work inside the coordinator (a store batch).
    Internal = 1,
    /// A request the coordinator answered.
    Server = 2,
    /// A call the coordinator made (a branch call, a check-back).
    Client = 3,
    /// A message the coordinator published.
    Producer = 4,
}

/// One finished span.
#[derive(Debug, Clone)]
pub struct Span {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits; empty for a root span.
    pub parent_id: String,
    /// What it did (`POST submit`, `confirm`, `publish Orders`).
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// When it started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Attributes, as strings.
    pub attributes: Vec<(&'static str, String)>,
    /// Whether it failed.
    pub error: bool,
}

impl Span {
    /// A span starting now, of the trace `traceparent` names (as a child of its span), or of
    /// a new trace when it names none. `span_id` is the new span's id (see [`new_span_id`]).
    pub fn start(name: impl Into<String>, kind: Kind, traceparent: &str, span_id: u64) -> Self {
        let (trace_id, parent_id) = match (
            settle_protocol::trace::trace_id(traceparent),
            settle_protocol::trace::parent_id(traceparent),
        ) {
            (Some(t), Some(p)) => (t.to_owned(), p.to_owned()),
            _ => (
                format!("{:032x}", rand::random::<u128>() | 1),
                String::new(),
            ),
        };
        let now = SystemTime::now();
        Self {
            trace_id,
            span_id: format!("{span_id:016x}"),
            parent_id,
            name: name.into(),
            kind,
            start: now,
            end: now,
            attributes: Vec::new(),
            error: false,
        }
    }

    /// Adds an attribute.
    #[must_use]
    pub fn with(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.attributes.push((key, value.into()));
        self
    }

    /// Ends the span now, failed or not.
    #[must_use]
    pub fn end(mut self, error: bool) -> Self {
        self.end = SystemTime::now();
        self.error = error;
        self
    }

    fn to_json(&self) -> Value {
        let nanos = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_nanos()
                .to_string()
        };
        let mut span = json!({
            "traceId": self.trace_id,
            "spanId": self.span_id,
            "name": self.name,
            "kind": self.kind as i32,
            "startTimeUnixNano": nanos(self.start),
            "endTimeUnixNano": nanos(self.end),
            "attributes": self.attributes.iter().map(|(k, v)| json!({
                "key": k,
                "value": {"stringValue": v},
            })).collect::<Vec<_>>(),
            "status": {"code": if self.error { 2 } else { 1 }},
        });
        if !self.parent_id.is_empty() {
            span["parentSpanId"] = json!(self.parent_id);
        }
        span
    }
}

/// A new span id (never zero).
pub fn new_span_id() -> u64 {
    rand::random::<u64>() | 1
}

/// Where spans go: queued for the exporter, or nowhere when export is off.
#[derive(Debug, Clone, Default)]
pub struct Tracer {
    queue: Option<mpsc::Sender<Span>>,
    dropped: Arc<AtomicU64>,
}

impl Tracer {
    /// A tracer that records nothing.
    pub fn off() -> Self {
        Self::default()
    }

    /// Starts exporting to the OTLP/HTTP collector at `endpoint` (`http://host:4318`), as
    /// the service `service` (instance `instance`).
    pub fn start(http: reqwest::Client, endpoint: &str, service: &str, instance: &str) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let resource = json!({
            "attributes": [
                {"key": "service.name", "value": {"stringValue": service}},
                {"key": "service.instance.id", "value": {"stringValue": instance}},
                {"key": "service.version", "value": {"stringValue": env!("CARGO_PKG_VERSION")}},
            ]
        });
        tokio::spawn(export(http, url, resource, rx));
        Self {
            queue: Some(tx),
            dropped: Arc::default(),
        }
    }

    /// Whether spans are recorded at all.
    pub fn is_on(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues a finished span (never waits).
    pub fn record(&self, span: Span) {
        if let Some(queue) = &self.queue {
            if queue.try_send(span).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Spans dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Posts what is queued every second, until every tracer is gone.
async fn export(http: reqwest::Client, url: String, resource: Value, mut rx: mpsc::Receiver<Span>) {
    let mut open = true;
    while open {
        tokio::time::sleep(Duration::from_secs(1)).await;
        loop {
            let mut spans = Vec::new();
            while spans.len() < PER_POST {
                match rx.try_recv() {
                    Ok(span) => spans.push(span.to_json()),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if spans.is_empty() {
                break;
            }
            let body = json!({
                "resourceSpans": [{
                    "resource": resource,
                    "scopeSpans": [{
                        "scope": {"name": "settle", "version": env!("CARGO_PKG_VERSION")},
                        "spans": spans,
                    }],
                }],
            });
            let sent = http
                .post(&url)
                .json(&body)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => {
                    warn!(status = %r.status(), url = %url, "the OTLP collector refused spans; they are dropped")
                }
                Err(e) => {
                    warn!(error = %error_chain(&e), url = %url, "cannot reach the OTLP collector; spans dropped")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_joins_the_trace_it_is_given_or_starts_one() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let s = Span::start("confirm", Kind::Client, tp, 0xabc)
            .with("settle.gid", "g")
            .end(false);
        let j = s.to_json();
        assert_eq!(j["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(j["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(j["spanId"], "0000000000000abc");
        assert_eq!(j["kind"], 3);
        assert_eq!(j["status"]["code"], 1);
        assert_eq!(j["attributes"][0]["value"]["stringValue"], "g");
        let root = Span::start("store batch", Kind::Internal, "", 1).end(true);
        let j = root.to_json();
        assert_eq!(j["traceId"].as_str().map(str::len), Some(32));
        assert!(j.get("parentSpanId").is_none());
        assert_eq!(j["status"]["code"], 2);
    }
}
