//! Completion callbacks: a transaction created with a `callback_url` has its outcome posted
//! there once it finishes (succeeded, rolled back, or a msg delivered), once across two
//! coordinators sharing a database, retried when refused, and not lost when the coordinator
//! that finished it stops before posting it; a destination outside the allowlist is refused
//! at the API.

use std::time::Duration;

use serde_json::Value;
use settle_protocol::GlobalRequest;
use settle_sdk::SettleClient;
use settle_tests::{eventually, spawn_coordinator, test_config, Participant, TestDb, TestSqlite};

/// The outcomes the receiver took (answered 2xx) for `gid`, and how many it refused.
fn posted(receiver: &Participant, gid: &str) -> (Vec<Value>, usize) {
    let mut taken = Vec::new();
    let mut refused = 0;
    for call in receiver.calls().into_iter().filter(|c| c.route == "done") {
        let body: Value = serde_json::from_str(&call.body).expect("a callback body is JSON");
        if body["gid"] != gid {
            continue;
        }
        assert_eq!(call.params.gid, gid, "the gid is in the query too");
        if (200..300).contains(&call.answered) {
            taken.push(body);
        } else {
            refused += 1;
        }
    }
    (taken, refused)
}

/// A transaction's callback columns: due, attempts, delivered, last error.
type CallbackRow = (Option<i64>, i32, Option<i64>, Vec<u8>);

fn with_callback(gid: &str, trans_type: &str, receiver: &Participant) -> GlobalRequest {
    GlobalRequest {
        callback_url: receiver.url("done"),
        ..GlobalRequest::new(gid, trans_type)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outcomes_are_posted_once_across_instances_and_refusals_retried() -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let receiver = Participant::start().await?;
    // The receiver refuses the first outcome it is sent: delivery must be retried.
    receiver.script("done", &[503]);
    let config = test_config(&db.url);
    let first = spawn_coordinator(config.clone()).await?;
    let second = spawn_coordinator(config).await?;
    let client = SettleClient::new(first.api_url());
    let participant = Participant::start().await?;

    participant
        .run_tcc(&client, with_callback("cb-ok", "tcc", &receiver), 2)
        .await?;
    let aborted = GlobalRequest {
        rollback_reason: "out of stock".into(),
        ..with_callback("cb-aborted", "tcc", &receiver)
    };
    client.post("prepare", &aborted).await?;
    client.post("abort", &aborted).await?;
    participant
        .run_tcc(&client, GlobalRequest::new("cb-none", "tcc"), 1)
        .await?;

    eventually(
        "both outcomes to be posted",
        Duration::from_secs(20),
        || async {
            !posted(&receiver, "cb-ok").0.is_empty()
                && !posted(&receiver, "cb-aborted").0.is_empty()
        },
    )
    .await?;
    // More passes of both instances: nothing is posted twice.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (ok, ok_refused) = posted(&receiver, "cb-ok");
    let (aborted, aborted_refused) = posted(&receiver, "cb-aborted");
    assert_eq!(ok.len(), 1, "{ok:#?}");
    assert_eq!(aborted.len(), 1, "{aborted:#?}");
    assert_eq!(
        ok_refused + aborted_refused,
        1,
        "the refused one was tried again"
    );
    assert_eq!(ok[0]["status"], "succeed");
    assert_eq!(ok[0]["trans_type"], "tcc");
    assert_eq!(aborted[0]["status"], "failed");
    assert_eq!(aborted[0]["rollback_reason"], "out of stock");
    assert!(ok[0]["finish_time"].as_i64().unwrap_or(0) > 0, "{}", ok[0]);
    assert_eq!(client.status("cb-ok").await?.as_deref(), Some("succeed"));
    // Only the transactions that asked for a callback had one.
    assert!(receiver.calls().iter().all(|c| c.params.gid != "cb-none"));

    // The store says what happened.
    let pool = db.pool().await?;
    let mut attempts = 0;
    for gid in ["cb-ok", "cb-aborted", "cb-none"] {
        let (due, tried, delivered, error): CallbackRow = sqlx::query_as(
            "SELECT callback_due, callback_attempts, callback_time, callback_error \
             FROM trans_global WHERE gid = ?",
        )
        .bind(gid)
        .fetch_one(&pool)
        .await?;
        attempts += tried;
        assert_eq!(due, None, "{gid}: nothing left to post");
        assert_eq!(delivered.is_some(), gid != "cb-none", "{gid}");
        assert!(
            error.is_empty(),
            "{gid}: {}",
            String::from_utf8_lossy(&error)
        );
    }
    assert_eq!(attempts, 2 + 1);
    let metrics = reqwest::get(format!("http://{}/api/metrics", first.address()))
        .await?
        .text()
        .await?
        + &reqwest::get(format!("http://{}/api/metrics", second.address()))
            .await?
            .text()
            .await?;
    assert!(
        metrics.contains("settle_callbacks_total{outcome=\"failed\"} 1"),
        "{metrics}"
    );
    second.stop().await;
    first.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outcome_not_yet_posted_survives_a_restart() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let receiver = Participant::start().await?;
    // Refused for as long as the first coordinator runs.
    receiver.script("done", &[503; 1_000]);
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let client = SettleClient::new(app.api_url());
    let participant = Participant::start().await?;
    let mut request = with_callback("cb-msg", "msg", &receiver);
    request.steps = vec![[("action".to_owned(), participant.url("step"))].into()];
    request.payloads = vec!["{}".into()];
    client.post("submit", &request).await?;
    eventually("the msg to succeed", Duration::from_secs(10), || async {
        client.status("cb-msg").await.ok().flatten().as_deref() == Some("succeed")
    })
    .await?;
    eventually("a refused delivery", Duration::from_secs(10), || async {
        posted(&receiver, "cb-msg").1 > 0
    })
    .await?;
    app.stop().await;

    receiver.script("done", &[]);
    let app = spawn_coordinator(test_config(&db.url)).await?;
    // Backoff after the refusals: at most a few seconds.
    eventually(
        "the outcome to be posted",
        Duration::from_secs(30),
        || async { !posted(&receiver, "cb-msg").0.is_empty() },
    )
    .await?;
    let (taken, _) = posted(&receiver, "cb-msg");
    assert_eq!(taken.len(), 1, "{taken:#?}");
    assert_eq!(taken[0]["status"], "succeed");
    assert_eq!(taken[0]["trans_type"], "msg");
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_callback_outside_the_allowlist_is_refused_at_the_api() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let client = SettleClient::new(app.api_url());
    for (url, why) in [
        ("http://10.1.2.3/done", "not allowed"),
        ("ftp://127.0.0.1/done", "scheme"),
    ] {
        let request = GlobalRequest {
            callback_url: url.into(),
            ..GlobalRequest::new("cb-refused", "tcc")
        };
        let err = client
            .post("prepare", &request)
            .await
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("callback_url") || err.contains(url),
            "{url}: {err}"
        );
        assert!(err.contains(why), "{url}: {err}");
    }
    assert_eq!(
        client.status("cb-refused").await?,
        None,
        "nothing was written"
    );
    app.stop().await;
    Ok(())
}
