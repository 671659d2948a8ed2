//! The alert webhook: a transaction that keeps failing fires one alert across two
//! coordinators sharing a database, the webhook's refusal is retried, and the alert resolves
//! once the transaction settles; a transaction left unfinished too long alerts too; healthy
//! ones never do.

use std::time::Duration;

use serde_json::Value;
use settle_protocol::GlobalRequest;
use settle_sdk::SettleClient;
use settle_tests::{eventually, spawn_coordinator, test_config, Participant, TestDb, TestSqlite};

/// The events the webhook took (answered 200) for `gid`, in order, and how many it refused.
fn events(webhook: &Participant, gid: &str) -> (Vec<Value>, usize) {
    let mut taken = Vec::new();
    let mut refused = 0;
    for call in webhook.calls().into_iter().filter(|c| c.route == "alert") {
        let body: Value = serde_json::from_str(&call.body).expect("an alert body is JSON");
        if body["gid"] != gid {
            continue;
        }
        if call.answered == 200 {
            taken.push(body);
        } else {
            refused += 1;
        }
    }
    (taken, refused)
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["event"].as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_transaction_alerts_once_across_instances_then_resolves() -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let webhook = Participant::start().await?;
    // The webhook refuses the first event it is sent: delivery must be retried.
    webhook.script("alert", &[503]);
    let mut config = test_config(&db.url);
    config.alert_url = webhook.url("alert");
    config.alert_after_retries = 2;
    config.alert_after_s = 0;
    config.alert_interval_ms = 100;
    let first = spawn_coordinator(config.clone()).await?;
    let second = spawn_coordinator(config).await?;
    let client = SettleClient::new(first.api_url());

    let healthy = Participant::start().await?;
    healthy
        .run_tcc(&client, GlobalRequest::new("alert-healthy", "tcc"), 2)
        .await?;
    let flaky = Participant::start().await?;
    // Four failed rounds, then success: the alert fires after the third.
    flaky.fail_first("confirm", 4);
    flaky
        .run_tcc(&client, GlobalRequest::new("alert-flaky", "tcc"), 1)
        .await?;

    eventually(
        "the alert to fire and resolve",
        Duration::from_secs(40),
        || async { kinds(&events(&webhook, "alert-flaky").0) == ["firing", "resolved"] },
    )
    .await?;
    assert_eq!(
        client.status("alert-flaky").await?.as_deref(),
        Some("succeed")
    );
    // Two more passes of both instances: nothing else is sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (taken, refused) = events(&webhook, "alert-flaky");
    assert_eq!(kinds(&taken), ["firing", "resolved"], "{taken:#?}");
    assert_eq!(refused, 1, "the refused delivery was tried again");
    let firing = &taken[0];
    assert_eq!(firing["trans_type"], "tcc");
    assert_eq!(firing["status"], "submitted");
    assert!(firing["retry_count"].as_i64().unwrap_or(0) > 2, "{firing}");
    assert!(
        firing["reason"]
            .as_str()
            .is_some_and(|r| r.contains("failed rounds in a row")),
        "{firing}"
    );
    assert!(
        firing["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("500")),
        "{firing}"
    );
    let resolved = &taken[1];
    assert_eq!(resolved["status"], "succeed");
    assert_eq!(resolved["fired_time"], firing["fired_time"]);
    assert!(resolved["resolved_time"].as_i64() >= firing["fired_time"].as_i64());
    assert!(events(&webhook, "alert-healthy").0.is_empty());
    // The alert's row is gone once resolved was delivered.
    let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM settle_alert")
        .fetch_one(&db.pool().await?)
        .await?;
    assert_eq!(open, 0);
    let metrics = reqwest::get(format!("http://{}/api/metrics", first.address()))
        .await?
        .text()
        .await?
        + &reqwest::get(format!("http://{}/api/metrics", second.address()))
            .await?
            .text()
            .await?;
    assert!(
        metrics.contains("settle_alerts_total{event=\"firing\",outcome=\"fail\"} 1"),
        "{metrics}"
    );
    second.stop().await;
    first.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_left_unfinished_too_long_alerts_until_it_ends() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let webhook = Participant::start().await?;
    let mut config = test_config(&db.url);
    config.alert_url = webhook.url("alert");
    config.alert_after_retries = 0;
    config.alert_after_s = 1;
    config.alert_interval_ms = 100;
    let app = spawn_coordinator(config).await?;
    let client = SettleClient::new(app.api_url());

    // Prepared and never submitted, with a long timeout: nothing fails, it just stays open.
    let request = GlobalRequest {
        timeout_to_fail: 600,
        ..GlobalRequest::new("alert-idle", "tcc")
    };
    client.post("prepare", &request).await?;
    eventually("the alert to fire", Duration::from_secs(10), || async {
        !events(&webhook, "alert-idle").0.is_empty()
    })
    .await?;
    let (taken, _) = events(&webhook, "alert-idle");
    assert_eq!(taken[0]["event"], "firing");
    assert_eq!(taken[0]["status"], "prepared");
    assert!(
        taken[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("after it was created")),
        "{}",
        taken[0]
    );
    client.post("abort", &request).await?;
    eventually("the alert to resolve", Duration::from_secs(10), || async {
        kinds(&events(&webhook, "alert-idle").0) == ["firing", "resolved"]
    })
    .await?;
    assert_eq!(events(&webhook, "alert-idle").0[1]["status"], "failed");
    app.stop().await;
    Ok(())
}
