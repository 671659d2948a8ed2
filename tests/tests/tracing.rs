//! Trace propagation: the W3C `traceparent` an initiator sends goes with its transaction, so
//! that every participant call (the Tries the SDK makes, the confirms and cancels the
//! coordinator makes, even after a restart) belongs to the initiator's trace.

use std::time::Duration;

use settle_protocol::{trace, GlobalRequest};
use settle_sdk::SettleClient;
use settle_tests::{spawn_coordinator, test_config, Participant, TestSqlite};

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
