//! TCC end to end over HTTP: a real coordinator (in process, on a fresh MySQL database or
//! SQLite file), real participant services, and the SDK as initiator.

use std::time::Duration;

use serde_json::json;
use settle_protocol::GlobalRequest;
use settle_sdk::{SdkError, SettleClient};
use settle_tests::{eventually, spawn_coordinator, test_config, Participant, TestDb, TestSqlite};

const SETTLE: Duration = Duration::from_secs(20);

async fn two_branch_tcc(client: &SettleClient, p: &Participant, gid: &str) -> Result<(), SdkError> {
    let p = p.clone();
    client
        .tcc_global(gid, |tcc| async move {
            tcc.call_branch(
                &json!({"n": 1}),
                &p.url("try"),
                &p.url("confirm"),
                &p.url("cancel"),
            )
            .await?;
            tcc.call_branch(
                &json!({"n": 2}),
                &p.url("try"),
                &p.url("confirm"),
                &p.url("cancel"),
            )
            .await?;
            Ok(())
        })
        .await
}

fn branch_ids(p: &Participant, gid: &str, op: &str) -> Vec<String> {
    p.calls()
        .into_iter()
        .filter(|c| c.params.gid == gid && c.params.op == op)
        .map(|c| c.params.branch_id)
        .collect()
}

async fn commit_confirms_every_branch_in_reverse_order(database_url: &str) -> anyhow::Result<()> {
    let app = spawn_coordinator(test_config(database_url)).await?;
    let p = Participant::start().await?;
    let client = SettleClient::new(app.api_url());
    let gid = client.new_gid().await?;
    two_branch_tcc(&client, &p, &gid).await?;
    assert_eq!(client.wait_final(&gid, SETTLE).await?, "succeed");
    assert_eq!(branch_ids(&p, &gid, "confirm"), ["02", "01"]);
    assert!(branch_ids(&p, &gid, "cancel").is_empty());
    let confirm = p
        .calls()
        .into_iter()
        .find(|c| c.params.op == "confirm" && c.params.branch_id == "01");
    assert_eq!(
        confirm.map(|c| c.body),
        Some(r#"{"n":1}"#.to_owned()),
        "confirm gets the registered body"
    );
    let q = client.query(&gid).await?;
    assert!(
        q.branches
            .iter()
            .all(|b| (b.op == "confirm") == (b.status == "succeed")),
        "{q:?}"
    );
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_committed_tcc_confirms_every_branch_in_reverse_order_on_mysql() -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    commit_confirms_every_branch_in_reverse_order(&db.url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_committed_tcc_confirms_every_branch_in_reverse_order_on_sqlite() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    commit_confirms_every_branch_in_reverse_order(&db.url).await
}

async fn failed_try_cancels_every_registered_branch(database_url: &str) -> anyhow::Result<()> {
    let app = spawn_coordinator(test_config(database_url)).await?;
    let p = Participant::start().await?;
    p.script("try", &[200, 409]);
    let client = SettleClient::new(app.api_url());
    let gid = client.new_gid().await?;
    let err = two_branch_tcc(&client, &p, &gid)
        .await
        .expect_err("the second try fails");
    assert!(err.is_failure(), "{err}");
    assert_eq!(client.wait_final(&gid, SETTLE).await?, "failed");
    assert_eq!(branch_ids(&p, &gid, "cancel"), ["02", "01"]);
    assert!(branch_ids(&p, &gid, "confirm").is_empty());
    let q = client.query(&gid).await?;
    assert_eq!(
        q.transaction.map(|t| t.rollback_reason).as_deref(),
        Some("aborted by the initiator")
    );
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_try_cancels_every_registered_branch_on_mysql() -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    failed_try_cancels_every_registered_branch(&db.url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_try_cancels_every_registered_branch_on_sqlite() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    failed_try_cancels_every_registered_branch(&db.url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_confirm_answering_500_three_times_is_retried_until_it_settles() -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let p = Participant::start().await?;
    p.script("confirm", &[500, 500, 500]);
    let client = SettleClient::new(app.api_url());
    let gid = client.new_gid().await?;
    p.run_tcc(&client, GlobalRequest::new(&gid, "tcc"), 1)
        .await?;
    // While it retries, the error is visible to operators.
    eventually("the first failure to be recorded", SETTLE, || async {
        client
            .query(&gid)
            .await
            .ok()
            .and_then(|q| q.transaction)
            .is_some_and(|t| t.retry_count >= 1 && t.last_error.contains("HTTP 500"))
    })
    .await?;
    assert_eq!(client.wait_final(&gid, SETTLE).await?, "succeed");
    assert_eq!(p.answers(&gid, "confirm"), [500, 500, 500, 200]);
    let calls: Vec<_> = p
        .calls()
        .into_iter()
        .filter(|c| c.params.gid == gid && c.params.op == "confirm")
        .collect();
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].at - w[0].at).collect();
    // retry_interval 1 s doubling, capped at 2 s, with up to a fifth of jitter taken off.
    assert!(gaps[0] >= Duration::from_millis(750), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(1500), "{gaps:?}");
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_answering_409_is_retried_until_it_succeeds() -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let p = Participant::start().await?;
    p.script("cancel", &[409]);
    let client = SettleClient::new(app.api_url());
    let gid = client.new_gid().await?;
    let pc = p.clone();
    let result: Result<(), SdkError> = client
        .tcc_global(&gid, |tcc| async move {
            tcc.call_branch(
                &json!({}),
                &pc.url("try"),
                &pc.url("confirm"),
                &pc.url("cancel"),
            )
            .await?;
            Err(SdkError::Business("the initiator changed its mind".into()))
        })
        .await;
    assert!(matches!(result, Err(SdkError::Business(_))));
    assert_eq!(client.wait_final(&gid, SETTLE).await?, "failed");
    assert_eq!(p.answers(&gid, "cancel"), [409, 200]);
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tcc_never_submitted_is_cancelled_after_its_timeout() -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let p = Participant::start().await?;
    let client = SettleClient::new(app.api_url());
    let gid = client.new_gid().await?;
    let tcc = settle_sdk::Tcc::with_options(
        &client,
        GlobalRequest {
            timeout_to_fail: 1,
            ..GlobalRequest::new(&gid, "tcc")
        },
    );
    tcc.prepare().await?;
    tcc.call_branch(
        &json!({}),
        &p.url("try"),
        &p.url("confirm"),
        &p.url("cancel"),
    )
    .await?;
    // The initiator dies here: no submit, no abort.
    assert_eq!(client.wait_final(&gid, SETTLE).await?, "failed");
    assert_eq!(p.answers(&gid, "cancel"), [200]);
    let t = client
        .query(&gid)
        .await?
        .transaction
        .expect("transaction exists");
    assert_eq!(t.rollback_reason, "Timeout after 1 seconds");
    // A late submit is refused.
    let late = tcc.submit().await.expect_err("submit after the timeout");
    assert!(late.is_failure(), "{late}");
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wait_result_answers_submit_after_phase_two_finished() -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let p = Participant::start().await?;
    p.delay("confirm", Duration::from_millis(300), 1);
    let client = SettleClient::new(app.api_url());
    let gid = client.new_gid().await?;
    let request = GlobalRequest {
        wait_result: true,
        ..GlobalRequest::new(&gid, "tcc")
    };
    p.run_tcc(&client, request, 1).await?;
    assert_eq!(client.status(&gid).await?.as_deref(), Some("succeed"));
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_confirms_all_branches_at_once() -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let p = Participant::start().await?;
    p.delay("confirm", Duration::from_millis(400), 3);
    let client = SettleClient::new(app.api_url());
    let gid = client.new_gid().await?;
    let request = GlobalRequest {
        concurrent: true,
        ..GlobalRequest::new(&gid, "tcc")
    };
    p.run_tcc(&client, request, 3).await?;
    assert_eq!(client.wait_final(&gid, SETTLE).await?, "succeed");
    let answered: Vec<_> = p
        .calls()
        .into_iter()
        .filter(|c| c.params.op == "confirm")
        .map(|c| c.at)
        .collect();
    assert_eq!(answered.len(), 3);
    let spread =
        *answered.iter().max().expect("3 calls") - *answered.iter().min().expect("3 calls");
    // One at a time would take 3 x 400 ms; at once, they all answer within one delay.
    assert!(
        spread < Duration::from_millis(300),
        "confirms answered {spread:?} apart"
    );
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_confirms_go_out_at_most_max_concurrent_calls_at_a_time() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let mut config = test_config(&db.url);
    config.max_concurrent_calls = 2;
    let app = spawn_coordinator(config).await?;
    let p = Participant::start().await?;
    p.delay("confirm", Duration::from_millis(400), 4);
    let client = SettleClient::new(app.api_url());
    let gid = client.new_gid().await?;
    let request = GlobalRequest {
        concurrent: true,
        ..GlobalRequest::new(&gid, "tcc")
    };
    p.run_tcc(&client, request, 4).await?;
    assert_eq!(client.wait_final(&gid, SETTLE).await?, "succeed");
    let mut answered: Vec<_> = p
        .calls()
        .into_iter()
        .filter(|c| c.params.op == "confirm")
        .map(|c| c.at)
        .collect();
    answered.sort();
    assert_eq!(answered.len(), 4);
    // Two waves of two: the third answer comes a whole delay after the first.
    assert!(
        answered[2] - answered[0] >= Duration::from_millis(350),
        "confirms answered at {answered:?}"
    );
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_confirm_that_does_not_answer_in_request_timeout_is_retried() -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let p = Participant::start().await?;
    p.delay("confirm", Duration::from_millis(2500), 1);
    let client = SettleClient::new(app.api_url());
    let gid = client.new_gid().await?;
    let request = GlobalRequest {
        request_timeout: 1,
        ..GlobalRequest::new(&gid, "tcc")
    };
    p.run_tcc(&client, request, 1).await?;
    eventually("the timeout to be recorded", SETTLE, || async {
        client
            .query(&gid)
            .await
            .ok()
            .and_then(|q| q.transaction)
            .is_some_and(|t| t.last_error.contains("no answer within 1s"))
    })
    .await?;
    assert_eq!(client.wait_final(&gid, SETTLE).await?, "succeed");
    assert!(p.arrived("confirm") >= 2);
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wait_result_follows_retries_until_request_timeout() -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let p = Participant::start().await?;
    // The first confirm fails; the retry (about a second later) succeeds within the 3 s wait.
    p.script("confirm", &[500]);
    let client = SettleClient::new(app.api_url());
    let gid = client.new_gid().await?;
    let request = GlobalRequest {
        wait_result: true,
        request_timeout: 3,
        ..GlobalRequest::new(&gid, "tcc")
    };
    p.run_tcc(&client, request, 1).await?;
    assert_eq!(client.status(&gid).await?.as_deref(), Some("succeed"));
    assert_eq!(p.answers(&gid, "confirm"), [500, 200]);
    app.stop().await;
    Ok(())
}

/// 200 TCCs at once, about one Try in seven failing: the batched writer takes their
/// prepares, registrations, submits and aborts together, and every branch is confirmed or
/// cancelled exactly once, as its transaction decided.
async fn concurrent_tccs_settle_as_decided(database_url: &str) -> anyhow::Result<()> {
    let app = spawn_coordinator(test_config(database_url)).await?;
    let p = Participant::start().await?;
    let tries: Vec<u16> = (0..400)
        .map(|i| if i % 7 == 3 { 409 } else { 200 })
        .collect();
    p.script("try", &tries);
    let client = SettleClient::new(app.api_url());
    let mut runs = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (client, p) = (client.clone(), p.clone());
        runs.spawn(async move {
            let gid = format!("many-{i}");
            let outcome = two_branch_tcc(&client, &p, &gid).await;
            (gid, outcome)
        });
    }
    let mut decided = Vec::new();
    while let Some(r) = runs.join_next().await {
        let (gid, outcome) = r?;
        if let Err(e) = &outcome {
            assert!(e.is_failure(), "{gid}: {e}");
        }
        decided.push((gid, outcome.is_ok()));
    }
    let committed = decided.iter().filter(|(_, ok)| *ok).count();
    assert!(
        committed > 100 && committed < 200,
        "some commit, some roll back: {committed}"
    );
    for (gid, ok) in &decided {
        let want = if *ok { "succeed" } else { "failed" };
        assert_eq!(client.wait_final(gid, SETTLE).await?, want, "{gid}");
    }
    let calls = p.calls();
    for (gid, ok) in &decided {
        let tried: Vec<String> = calls
            .iter()
            .filter(|c| &c.params.gid == gid && c.params.op == "try")
            .map(|c| c.params.branch_id.clone())
            .collect();
        let (done, never) = if *ok {
            ("confirm", "cancel")
        } else {
            ("cancel", "confirm")
        };
        let mut ids = branch_ids(&p, gid, done);
        ids.sort();
        let mut want = tried.clone();
        want.sort();
        assert_eq!(
            ids, want,
            "{gid}: each registered branch {done}ed exactly once"
        );
        assert!(branch_ids(&p, gid, never).is_empty(), "{gid}: no {never}");
    }
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_tccs_with_try_failures_settle_as_decided_on_mysql(
) -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    concurrent_tccs_settle_as_decided(&db.url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_tccs_with_try_failures_settle_as_decided_on_sqlite(
) -> anyhow::Result<()> {
    let db = TestSqlite::new();
    concurrent_tccs_settle_as_decided(&db.url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endless_answer_is_read_only_up_to_the_limit() -> anyhow::Result<()> {
    use axum::body::{Body, Bytes};
    use axum::routing::post;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    // A participant whose confirm answers 200 and then never stops sending.
    let confirms = Arc::new(AtomicUsize::new(0));
    let seen = confirms.clone();
    let app = axum::Router::new()
        .route("/try", post(|| async { "SUCCESS" }))
        .route("/cancel", post(|| async { "SUCCESS" }))
        .route(
            "/confirm",
            post(move || {
                seen.fetch_add(1, Ordering::Relaxed);
                async {
                    let chunk = Bytes::from(vec![b'x'; 8192]);
                    let endless =
                        futures_util::stream::repeat(Ok::<_, std::convert::Infallible>(chunk));
                    Body::from_stream(endless)
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let db = TestSqlite::new();
    let coordinator = spawn_coordinator(test_config(&db.url)).await?;
    let client = SettleClient::new(coordinator.api_url());
    let gid = client.new_gid().await?;
    // A long request_timeout: reading the whole answer would never end before it.
    let request = GlobalRequest {
        request_timeout: 600,
        ..GlobalRequest::new(&gid, "tcc")
    };
    let b = base.clone();
    client
        .tcc_global_with(request, |tcc| async move {
            tcc.call_branch(
                &json!({}),
                &format!("{b}/try"),
                &format!("{b}/confirm"),
                &format!("{b}/cancel"),
            )
            .await?;
            Ok(())
        })
        .await?;
    // The first 64 KiB say nothing but 200: the confirm succeeded, at once.
    assert_eq!(
        client.wait_final(&gid, Duration::from_secs(10)).await?,
        "succeed"
    );
    assert_eq!(confirms.load(Ordering::Relaxed), 1);
    coordinator.stop().await;
    Ok(())
}
