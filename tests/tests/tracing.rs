//! Trace propagation: the W3C `traceparent` an initiator sends goes with its transaction, so
//! that every participant call (the Tries the SDK makes, the confirms and cancels the
//! coordinator makes, even after a restart) belongs to the initiator's trace; with an OTLP
//! collector configured, the coordinator's own spans join that trace too.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;
use settle_protocol::{trace, GlobalRequest};
use settle_sdk::SettleClient;
use settle_tests::{eventually, spawn_coordinator, test_config, Participant, TestSqlite};

const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_branch_call_carries_the_initiators_trace_id() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let p = Participant::start().await?;
    let traced = SettleClient::new(app.api_url()).with_traceparent(TRACE);
    p.run_tcc(&traced, GlobalRequest::new("traced-commit", "tcc"), 2)
        .await?;
    p.script("try", &[200, 409]);
    let refused = p
        .run_tcc(&traced, GlobalRequest::new("traced-abort", "tcc"), 2)
        .await;
    assert!(refused.is_err());
    let plain = SettleClient::new(app.api_url());
    p.run_tcc(&plain, GlobalRequest::new("untraced", "tcc"), 1)
        .await?;
    for gid in ["traced-commit", "traced-abort", "untraced"] {
        plain.wait_final(gid, Duration::from_secs(10)).await?;
    }

    let calls = p.calls();
    let of = |gid: &str, route: &str| -> Vec<Option<String>> {
        calls
            .iter()
            .filter(|c| c.params.gid == gid && c.route == route)
            .map(|c| c.traceparent.clone())
            .collect()
    };
    // The SDK's own Tries carry the caller's span as it is.
    assert_eq!(of("traced-commit", "try"), vec![Some(TRACE.to_owned()); 2]);
    // The coordinator's calls carry the same trace, each as a span of its own.
    let expected = trace::trace_id(TRACE);
    for (gid, route, n) in [
        ("traced-commit", "confirm", 2),
        ("traced-abort", "cancel", 2),
    ] {
        let seen = of(gid, route);
        assert_eq!(seen.len(), n, "{gid} {route}: {seen:?}");
        for tp in &seen {
            let tp = tp.as_deref().unwrap_or_default();
            assert_eq!(trace::trace_id(tp), expected, "{gid} {route}: {tp}");
            assert_ne!(tp, TRACE, "a call is a span of its own");
        }
    }
    // A transaction begun without a trace starts none.
    assert_eq!(of("untraced", "confirm"), vec![None]);
    Ok(())
}

/// An OTLP/HTTP collector on 127.0.0.1 that keeps every span posted to it.
async fn collector() -> anyhow::Result<(String, Arc<Mutex<Vec<Value>>>)> {
    let spans: Arc<Mutex<Vec<Value>>> = Arc::default();
    let kept = spans.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |Json(body): Json<Value>| {
            let kept = kept.clone();
            async move {
                let mut kept = kept.lock().unwrap_or_else(PoisonError::into_inner);
                for rs in body["resourceSpans"].as_array().into_iter().flatten() {
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        kept.extend(ss["spans"].as_array().into_iter().flatten().cloned());
                    }
                }
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((format!("http://{addr}"), spans))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spans_go_to_the_otlp_collector_in_the_initiators_trace() -> anyhow::Result<()> {
    let (endpoint, spans) = collector().await?;
    let db = TestSqlite::new();
    let mut config = test_config(&db.url);
    config.otlp_endpoint = endpoint;
    let app = spawn_coordinator(config).await?;
    let p = Participant::start().await?;
    let traced = SettleClient::new(app.api_url()).with_traceparent(TRACE);
    p.run_tcc(&traced, GlobalRequest::new("otlp-commit", "tcc"), 2)
        .await?;
    traced
        .wait_final("otlp-commit", Duration::from_secs(10))
        .await?;
    let trace = trace::trace_id(TRACE).unwrap_or_default().to_owned();
    let named = |name: &str| -> Vec<Value> {
        spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|s| s["name"] == name)
            .cloned()
            .collect()
    };
    eventually(
        "the confirms' spans to reach the collector",
        Duration::from_secs(10),
        || async { named("confirm").len() == 2 },
    )
    .await?;
    // The API requests are spans of the initiator's trace, under the initiator's span.
    let submit = named("POST submit");
    assert_eq!(submit.len(), 1, "{submit:?}");
    assert_eq!(submit[0]["traceId"], trace.as_str());
    assert_eq!(
        submit[0]["parentSpanId"],
        trace::parent_id(TRACE).unwrap_or_default()
    );
    assert_eq!(submit[0]["kind"], 2);
    // Each confirm is a client span of the same trace, and the participant was called with
    // that span as its parent.
    let called: Vec<String> = p
        .calls()
        .iter()
        .filter(|c| c.route == "confirm")
        .filter_map(|c| c.traceparent.as_deref().and_then(trace::parent_id))
        .map(str::to_owned)
        .collect();
    for span in named("confirm") {
        assert_eq!(span["traceId"], trace.as_str(), "{span}");
        assert_eq!(span["kind"], 3, "{span}");
        let id = span["spanId"].as_str().unwrap_or_default().to_owned();
        assert!(called.contains(&id), "{id} not among {called:?}");
    }
    // Store batches are traces of their own.
    eventually("a store batch span", Duration::from_secs(5), || async {
        !named("store batch").is_empty()
    })
    .await?;
    app.stop().await;
    Ok(())
}
