//! The admin UI in a real headless Chromium: an operator signs in with the operator token,
//! filters the list down to stuck transactions, opens one, reads its timeline, makes it
//! retry now, and force-stops another; reads a saga's steps as a DAG; subscribes to a topic
//! and unsubscribes; each result is checked through the API.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`deploy/browser.sh`). With
//! `SETTLE_ADMIN_SCREENSHOT=FILE` the transaction page is saved as a PNG (the README's).

use std::time::Duration;

use settle_coordinator::access::Secret;
use settle_protocol::GlobalRequest;
use settle_sdk::SettleClient;
use settle_tests::browser::Browser;
use settle_tests::{eventually, spawn_coordinator, test_config, Participant, TestSqlite};

const OPERATOR_TOKEN: &str = "operator-secret";

/// A two-branch TCC whose confirms wait for a retry `retry_interval_s` away after failing.
fn slow_retry(gid: &str, retry_interval_s: i64) -> GlobalRequest {
    GlobalRequest {
        retry_interval: retry_interval_s,
        ..GlobalRequest::new(gid, "tcc")
    }
}

async fn status_of(client: &SettleClient, gid: &str) -> anyhow::Result<(String, i64)> {
    let q = client.query(gid).await?;
    let t = q
        .transaction
        .ok_or_else(|| anyhow::anyhow!("{gid} is unknown"))?;
    Ok((t.status, t.retry_count))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_finds_a_stuck_transaction_retries_it_and_stops_another() -> anyhow::Result<()>
{
    let db = TestSqlite::new();
    let mut config = test_config(&db.url);
    config.retry_cap_s = 600;
    config.operator_tokens = vec![Secret::new(OPERATOR_TOKEN)];
    let app = spawn_coordinator(config).await?;
    let client = SettleClient::new(app.api_url());

    // One that settles, one whose only confirm fails once (next retry a minute away), one
    // whose confirms always fail.
    let healthy = Participant::start().await?;
    healthy
        .run_tcc(&client, GlobalRequest::new("ui-healthy", "tcc"), 2)
        .await?;
    let flaky = Participant::start().await?;
    flaky.fail_first("confirm", 1);
    flaky
        .run_tcc(&client, slow_retry("ui-stuck-retry", 60), 1)
        .await?;
    let broken = Participant::start().await?;
    broken.fail_first("confirm", usize::MAX);
    broken
        .run_tcc(&client, slow_retry("ui-stuck-stop", 60), 2)
        .await?;
    eventually(
        "both stuck ones failed a round",
        Duration::from_secs(10),
        || async {
            let mut stuck = 0;
            for gid in ["ui-stuck-retry", "ui-stuck-stop"] {
                if let Ok((status, retries)) = status_of(&client, gid).await {
                    stuck += usize::from(status == "submitted" && retries >= 1);
                }
            }
            stuck == 2
        },
    )
    .await?;
    client
        .wait_final("ui-healthy", Duration::from_secs(10))
        .await?;
    // A saga whose steps 0 and 1 run at once, 2 after both; step 2 fails, so 0 and 1 are
    // compensated.
    let saga_steps = Participant::start().await?;
    saga_steps.script("a2", &[409]);
    let step = |i: usize| {
        std::collections::BTreeMap::from([
            ("action".to_owned(), saga_steps.url(&format!("a{i}"))),
            ("compensate".to_owned(), saga_steps.url(&format!("c{i}"))),
        ])
    };
    let saga = GlobalRequest {
        steps: (0..3).map(step).collect(),
        payloads: vec!["{}".into(); 3],
        custom_data: r#"{"orders": {"2": [0, 1]}, "concurrent": true}"#.into(),
        ..GlobalRequest::new("ui-saga", "saga")
    };
    client.post("submit", &saga).await?;
    client
        .wait_final("ui-saga", Duration::from_secs(10))
        .await?;

    let browser = Browser::start(1400, 1000).await?;
    let result = drive(&browser, &app.api_url(), &client).await;
    browser.quit().await;
    result
}

async fn drive(browser: &Browser, api: &str, client: &SettleClient) -> anyhow::Result<()> {
    let base = api.trim_end_matches("/api/dtmsvr");
    browser.goto(&format!("{base}/admin")).await?;

    // The token is asked for, and then the list shows every transaction.
    browser.click("#login-token").await?;
    browser
        .run(&format!(
            "document.getElementById('login-token').value = '{OPERATOR_TOKEN}';"
        ))
        .await?;
    browser.click("#login-ok").await?;
    browser.find("tr.txn-row[data-gid='ui-healthy']").await?;
    let listed = browser.texts("tr.txn-row a.gid").await?;
    for gid in ["ui-healthy", "ui-stuck-retry", "ui-stuck-stop"] {
        assert!(listed.iter().any(|g| g == gid), "{gid} not in {listed:?}");
    }

    // Filter: retried more than 0 times, gid prefix "ui-stuck".
    browser
        .click("#filter-stuck option[value='retried']")
        .await?;
    browser
        .run("document.getElementById('filter-retried_more_than').value = '0'; document.getElementById('filter-gid_prefix').value = 'ui-stuck';")
        .await?;
    browser.click("#apply-filters").await?;
    eventually("the filter applies", Duration::from_secs(10), || async {
        let mut rows = browser.texts("tr.txn-row a.gid").await.unwrap_or_default();
        rows.sort();
        rows == ["ui-stuck-retry", "ui-stuck-stop"]
    })
    .await?;

    // The stuck transaction's page: branches, the failed round in its timeline.
    browser
        .click("tr.txn-row[data-gid='ui-stuck-retry'] a.gid")
        .await?;
    browser
        .wait_for_text("#txn-gid", "ui-stuck-retry", None, Duration::from_secs(10))
        .await?;
    assert!(browser.text("#txn-status").await?.contains("submitted"));
    assert_eq!(browser.find_all("#branches tbody tr").await?.len(), 2);
    let timeline = browser.texts("#timeline li").await?;
    assert!(
        timeline
            .iter()
            .any(|e| e.contains("round 1 did not settle") && e.contains("500")),
        "{timeline:?}"
    );
    if let Ok(path) = std::env::var("SETTLE_ADMIN_SCREENSHOT") {
        std::fs::write(&path, browser.screenshot().await?)?;
    }

    // Retry now: it settles long before its next retry (a minute away) was due.
    browser.click("#retry-now").await?;
    browser
        .wait_for_text(
            "#txn-status",
            "succeed",
            Some("#refresh"),
            Duration::from_secs(15),
        )
        .await?;
    assert_eq!(status_of(client, "ui-stuck-retry").await?.0, "succeed");

    // Force stop, confirmed in the dialog.
    browser
        .goto(&format!("{base}/admin#/txn/ui-stuck-stop"))
        .await?;
    browser
        .wait_for_text("#txn-gid", "ui-stuck-stop", None, Duration::from_secs(10))
        .await?;
    browser.click("#force-stop").await?;
    browser.click("#confirm-ok").await?;
    browser
        .wait_for_text(
            "#txn-status",
            "failed",
            Some("#refresh"),
            Duration::from_secs(10),
        )
        .await?;
    assert_eq!(status_of(client, "ui-stuck-stop").await?.0, "failed");

    // The saga's steps as a DAG: 01 and 02 in the first column, 03 after both; the failed
    // step and the two compensated ones show their states.
    browser.goto(&format!("{base}/admin#/txn/ui-saga")).await?;
    browser
        .wait_for_text("#txn-gid", "ui-saga", None, Duration::from_secs(10))
        .await?;
    let columns = browser.texts("#saga-steps .step-col").await?;
    assert_eq!(columns.len(), 2, "{columns:?}");
    assert!(columns[0].contains("step 01") && columns[0].contains("step 02"));
    let last = browser.text(".step[data-step='03']").await?;
    assert!(
        last.contains("action failed") && last.contains("after 01, 02"),
        "{last}"
    );
    let first = browser.text(".step[data-step='01']").await?;
    assert!(
        first.contains("action succeed") && first.contains("compensate succeed"),
        "{first}"
    );

    // Topics: subscribe through the form, then unsubscribe.
    browser.click("#nav-topics").await?;
    browser.find("#subscribe-form").await?;
    browser
        .run("document.getElementById('subscribe-topic').value = 'ui-orders'; document.getElementById('subscribe-url').value = 'http://127.0.0.1:9/orders'; document.getElementById('subscribe-remark').value = 'from the page';")
        .await?;
    browser.click("#subscribe").await?;
    browser
        .find("tr.subscriber-row[data-topic='ui-orders']")
        .await?;
    let subscriber = browser
        .text("tr.subscriber-row[data-topic='ui-orders']")
        .await?;
    assert!(
        subscriber.contains("http://127.0.0.1:9/orders (from the page)"),
        "{subscriber}"
    );
    let kv: serde_json::Value = serde_json::from_str(
        &client
            .http()
            .get(format!("{api}/queryKV?cat=topics&key=ui-orders"))
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await?
            .text()
            .await?,
    )?;
    assert!(
        kv["kv"][0]["v"]
            .as_str()
            .is_some_and(|v| v.contains("http://127.0.0.1:9/orders")),
        "{kv}"
    );
    browser
        .click("tr.subscriber-row[data-topic='ui-orders'] button.unsubscribe")
        .await?;
    eventually("the subscriber to go", Duration::from_secs(10), || async {
        browser
            .find_all("tr.subscriber-row[data-topic='ui-orders']")
            .await
            .is_ok_and(|rows| rows.is_empty())
    })
    .await?;

    // Instances: this coordinator, holding nothing now.
    browser.click("#nav-instances").await?;
    browser.find("tr.instance-row").await?;
    let instances = browser.texts("tr.instance-row").await?;
    assert!(
        instances.iter().any(|i| i.contains("(this one)")),
        "{instances:?}"
    );
    Ok(())
}
