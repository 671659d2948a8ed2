//! `/api/metrics` after a known workload: DTM's metric names and labels (so DTM dashboards
//! keep working) and Settle's own, with the values the workload must give.

use std::collections::BTreeSet;
use std::time::Duration;

use settle_protocol::GlobalRequest;
use settle_sdk::SettleClient;
use settle_tests::{spawn_coordinator, test_config, Participant, TestSqlite};

/// The value of the sample `name` whose labels are exactly `labels` (in any order).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeSet<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, got) = match series.split_once('{') {
                Some((n, rest)) => (
                    n,
                    rest.trim_end_matches('}')
                        .split(',')
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned)
                        .collect::<BTreeSet<_>>(),
                ),
                None => (series, BTreeSet::new()),
            };
            (n == name && got == want)
                .then(|| value.parse().ok())
                .flatten()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_a_known_workload_under_dtm_names() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let p = Participant::start().await?;
    let client = SettleClient::new(app.api_url());
    // Three two-branch TCCs commit; a fourth fails its second Try and rolls back.
    for i in 0..3 {
        p.run_tcc(
            &client,
            GlobalRequest::new(format!("metrics-ok-{i}"), "tcc"),
            2,
        )
        .await?;
    }
    p.script("try", &[200, 409]);
    let refused = p
        .run_tcc(&client, GlobalRequest::new("metrics-no", "tcc"), 2)
        .await;
    assert!(refused.is_err());
    for gid in ["metrics-ok-0", "metrics-ok-1", "metrics-ok-2", "metrics-no"] {
        client.wait_final(gid, Duration::from_secs(10)).await?;
    }

    let text = reqwest::get(format!("http://{}/api/metrics", app.address()))
        .await?
        .text()
        .await?;
    let expect = |name: &str, labels: &[(&str, &str)], value: f64| {
        assert_eq!(
            sample(&text, name, labels),
            Some(value),
            "{name}{labels:?} in:\n{text}"
        );
    };
    let model = ("model", "tcc");
    expect(
        "dtm_transaction_process_total",
        &[model, ("status", "ok")],
        3.0,
    );
    expect(
        "dtm_transaction_process_total",
        &[model, ("status", "fail")],
        1.0,
    );
    expect("dtm_transaction_handled_duration_count", &[model], 4.0);
    expect(
        "dtm_branch_process_total",
        &[model, ("branchtype", "confirm"), ("status", "ok")],
        6.0,
    );
    expect(
        "dtm_branch_process_total",
        &[model, ("branchtype", "cancel"), ("status", "ok")],
        2.0,
    );
    let http = ("type", "http");
    expect(
        "dtm_server_process_total",
        &[http, ("api", "prepare"), ("status", "ok")],
        4.0,
    );
    expect(
        "dtm_server_process_total",
        &[http, ("api", "registerbranch"), ("status", "ok")],
        8.0,
    );
    expect(
        "dtm_server_process_total",
        &[http, ("api", "submit"), ("status", "ok")],
        3.0,
    );
    expect(
        "dtm_server_response_duration_count",
        &[http, ("api", "submit")],
        3.0,
    );
    expect("settle_requests_total", &[("op", "prepare")], 4.0);
    expect(
        "settle_transactions_finished_total",
        &[("status", "succeed")],
        3.0,
    );
    expect("settle_branch_calls_total", &[("outcome", "success")], 8.0);
    expect("settle_outbox_backlog", &[], 0.0);
    expect("settle_overdue_transactions", &[], 0.0);
    expect("settle_transaction_rounds_count", &[model], 4.0);
    // Time from submit to settled: only the three that were submitted.
    expect("settle_transaction_settle_seconds_count", &[model], 3.0);
    expect(
        "settle_transaction_rounds_bucket",
        &[model, ("le", "1")],
        4.0,
    );
    let batches = sample(&text, "settle_store_batch_commands_count", &[]).unwrap_or(0.0);
    let commands = sample(&text, "settle_store_batch_commands_sum", &[]).unwrap_or(0.0);
    // Every prepare, registerBranch, submit, abort and branch outcome is a command.
    assert!(
        batches >= 1.0 && commands >= 4.0 + 8.0 + 3.0 + 1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "settle_store_batch_seconds_count", &[]),
        Some(batches),
        "{text}"
    );
    assert!(
        text.contains("# TYPE dtm_server_response_duration histogram"),
        "{text}"
    );
    // No label that grows with the number of transactions.
    assert!(!text.contains("gid="), "{text}");
    Ok(())
}
