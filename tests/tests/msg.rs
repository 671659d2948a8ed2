//! Transactional messages end to end: delivered only after commit, checked back when the
//! initiator goes silent, dropped for good when its local transaction rolled back.

use std::time::Duration;

use serde_json::json;
use settle_protocol::{BranchParams, GlobalRequest};
use settle_sdk::{msg::check_back, BarrierTable, BranchBarrier, Msg, SettleClient};
use settle_tests::{eventually, free_port, spawn_coordinator, test_config, Participant, TestDb};

const SETTLE: Duration = Duration::from_secs(20);

/// Routes whose calls were made for `gid`.
fn routes(p: &Participant, gid: &str) -> Vec<String> {
    p.calls()
        .into_iter()
        .filter(|c| c.params.gid == gid)
        .map(|c| c.route)
        .collect()
}

fn quick(gid: &str) -> GlobalRequest {
    GlobalRequest {
        timeout_to_fail: 1,
        ..GlobalRequest::new(gid, "msg")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_submitted_message_is_delivered_to_every_step_in_order() -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let p = Participant::start().await?;
    let client = SettleClient::new(app.api_url());
    let gid = client.new_gid().await?;
    // Submitted without a prepare, as DTM allows.
    Msg::new(&client, &gid)
        .add(&p.url("first"), &json!({"n": 1}))?
        .add(&p.url("second"), &json!({"n": 2}))?
        .submit()
        .await?;
    assert_eq!(client.wait_final(&gid, SETTLE).await?, "succeed");
    assert_eq!(routes(&p, &gid), ["first", "second"]);
    let first = p
        .calls()
        .into_iter()
        .find(|c| c.route == "first")
        .expect("first step called");
    assert_eq!(
        (
            first.params.op.as_str(),
            first.params.branch_id.as_str(),
            first.body.as_str()
        ),
        ("action", "01", r#"{"n":1}"#)
    );
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prepared_message_is_delivered_only_after_submit() -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let p = Participant::start().await?;
    let client = SettleClient::new(app.api_url());
    let gid = client.new_gid().await?;
    let mut msg = Msg::new(&client, &gid).add(&p.url("step"), &json!({}))?;
    msg.prepare(&p.url("query")).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        routes(&p, &gid).is_empty(),
        "nothing is delivered before the commit"
    );
    msg.submit().await?;
    assert_eq!(client.wait_final(&gid, SETTLE).await?, "succeed");
    assert_eq!(routes(&p, &gid), ["step"]);
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aborted_message_is_never_delivered_and_cannot_be_submitted() -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let p = Participant::start().await?;
    let client = SettleClient::new(app.api_url());
    let gid = client.new_gid().await?;
    let mut msg = Msg::new(&client, &gid).add(&p.url("step"), &json!({}))?;
    msg.prepare(&p.url("query")).await?;
    msg.abort().await?;
    assert_eq!(client.wait_final(&gid, SETTLE).await?, "failed");
    let late = msg.submit().await.expect_err("submit after abort");
    assert!(late.is_failure(), "{late}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(routes(&p, &gid).is_empty());
    let q = client.query(&gid).await?;
    assert!(q.branches.iter().all(|b| b.status == "failed"), "{q:?}");
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_initiator_is_checked_back_committed_rolled_back_and_ongoing() -> anyhow::Result<()>
{
    let db = TestDb::mysql().await?;
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let client = SettleClient::new(app.api_url());

    // Committed: the check-back answers SUCCESS, so the message is delivered.
    let committed = Participant::start().await?;
    let gid_c = client.new_gid().await?;
    let mut m =
        Msg::with_options(&client, quick(&gid_c)).add(&committed.url("step"), &json!({}))?;
    m.prepare(&committed.url("query")).await?;

    // Rolled back: FAILURE drops it for good.
    let rolled = Participant::start().await?;
    rolled.script("query", &[409]);
    let gid_r = client.new_gid().await?;
    let mut m = Msg::with_options(&client, quick(&gid_r)).add(&rolled.url("step"), &json!({}))?;
    m.prepare(&rolled.url("query")).await?;

    // Ongoing twice, then committed.
    let ongoing = Participant::start().await?;
    ongoing.script("query", &[425, 425]);
    let gid_o = client.new_gid().await?;
    let mut m = Msg::with_options(&client, quick(&gid_o)).add(&ongoing.url("step"), &json!({}))?;
    m.prepare(&ongoing.url("query")).await?;

    assert_eq!(client.wait_final(&gid_c, SETTLE).await?, "succeed");
    assert_eq!(routes(&committed, &gid_c), ["query", "step"]);
    let check = committed
        .calls()
        .into_iter()
        .find(|c| c.route == "query")
        .expect("checked back");
    assert_eq!(
        (
            check.params.branch_id.as_str(),
            check.params.op.as_str(),
            check.params.trans_type.as_str()
        ),
        ("00", "msg", "msg")
    );

    assert_eq!(client.wait_final(&gid_r, SETTLE).await?, "failed");
    let t = client.query(&gid_r).await?.transaction.expect("exists");
    assert!(t.rollback_reason.contains("did not commit"), "{t:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(routes(&rolled, &gid_r), ["query"], "never delivered");

    assert_eq!(client.wait_final(&gid_o, SETTLE).await?, "succeed");
    assert_eq!(
        routes(&ongoing, &gid_o),
        ["query", "query", "query", "step"]
    );
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_check_back_endpoint_that_is_down_is_asked_again_once_it_is_up() -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let client = SettleClient::new(app.api_url());
    let step = Participant::start().await?;
    let port = free_port()?;
    let gid = client.new_gid().await?;
    let mut m = Msg::with_options(&client, quick(&gid)).add(&step.url("step"), &json!({}))?;
    m.prepare(&format!("http://127.0.0.1:{port}/query")).await?;
    eventually("the failed check-back to be recorded", SETTLE, || async {
        client
            .query(&gid)
            .await
            .ok()
            .and_then(|q| q.transaction)
            .is_some_and(|t| t.last_error.contains("check-back") && t.status == "prepared")
    })
    .await?;
    assert!(routes(&step, &gid).is_empty());
    // The initiator comes back on the same port, its local transaction committed.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let app_up = axum::Router::new().route(
        "/query",
        axum::routing::get(|| async { r#"{"dtm_result":"SUCCESS"}"# }),
    );
    tokio::spawn(async move { axum::serve(listener, app_up).await });
    assert_eq!(client.wait_final(&gid, SETTLE).await?, "succeed");
    assert_eq!(routes(&step, &gid), ["step"]);
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_check_back_answering_garbage_is_recorded_and_not_taken_as_a_commit() -> anyhow::Result<()>
{
    let db = TestDb::mysql().await?;
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let client = SettleClient::new(app.api_url());
    let step = Participant::start().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let garbage = axum::Router::new().route(
        "/query",
        axum::routing::get(|| async { "<html>it works</html>" }),
    );
    tokio::spawn(async move { axum::serve(listener, garbage).await });
    let gid = client.new_gid().await?;
    let mut m = Msg::with_options(&client, quick(&gid)).add(&step.url("step"), &json!({}))?;
    m.prepare(&format!("http://{addr}/query")).await?;
    eventually("the unreadable answer to be recorded", SETTLE, || async {
        client
            .query(&gid)
            .await
            .ok()
            .and_then(|q| q.transaction)
            .is_some_and(|t| t.last_error.contains("must be JSON or say SUCCESS"))
    })
    .await?;
    assert_eq!(client.status(&gid).await?.as_deref(), Some("prepared"));
    assert!(
        routes(&step, &gid).is_empty(),
        "not delivered on a garbage answer"
    );
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn do_and_submit_delivers_only_what_the_local_transaction_committed() -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let pool = db.pool().await?;
    let table = BarrierTable::named("barrier")?;
    table.create(&pool).await?;
    sqlx::query("CREATE TABLE orders (id INT PRIMARY KEY, state VARCHAR(16))")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO orders VALUES (1, 'created'), (2, 'created')")
        .execute(&pool)
        .await?;
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let client = SettleClient::new(app.api_url());
    let p = Participant::start().await?;

    // Committed local transaction: delivered.
    let ok = client.new_gid().await?;
    Msg::new(&client, &ok)
        .add(&p.url("paid"), &json!({"order": 1}))?
        .do_and_submit_db(&p.url("query"), &pool, &table, |tx| {
            Box::pin(async move {
                sqlx::query("UPDATE orders SET state = 'paid' WHERE id = 1")
                    .execute(&mut *tx)
                    .await?;
                Ok::<_, sqlx::Error>(())
            })
        })
        .await?;
    assert_eq!(client.wait_final(&ok, SETTLE).await?, "succeed");
    assert_eq!(routes(&p, &ok), ["paid"]);

    // Failed local transaction: rolled back, aborted, never delivered.
    let bad = client.new_gid().await?;
    let err = Msg::new(&client, &bad)
        .add(&p.url("paid"), &json!({"order": 2}))?
        .do_and_submit_db(&p.url("query"), &pool, &table, |tx| {
            Box::pin(async move {
                sqlx::query("UPDATE orders SET state = 'paid' WHERE id = 2")
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| e.to_string())?;
                Err::<(), _>("card declined".to_owned())
            })
        })
        .await
        .expect_err("business failure");
    assert!(err.to_string().contains("card declined"), "{err}");
    assert_eq!(client.wait_final(&bad, SETTLE).await?, "failed");
    let state: String = sqlx::query_scalar("SELECT state FROM orders WHERE id = 2")
        .fetch_one(&pool)
        .await?;
    assert_eq!(state, "created");
    assert!(routes(&p, &bad).is_empty());
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sdk_check_back_answers_from_the_barrier_after_a_crash_before_submit(
) -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let pool = db.pool().await?;
    let table = BarrierTable::named("barrier")?;
    table.create(&pool).await?;
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let client = SettleClient::new(app.api_url());
    let p = Participant::start().await?;
    // The initiator's check-back endpoint, answering from its barrier table with the SDK.
    let (qpool, qtable) = (pool.clone(), table.clone());
    let query = axum::Router::new().route(
        "/query",
        axum::routing::get(
            move |settle_sdk::BranchQuery(params): settle_sdk::BranchQuery| {
                let (pool, table) = (qpool.clone(), qtable.clone());
                async move { check_back(&pool, &table, params).await }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let query_url = format!("http://{}/query", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, query).await });
    let local = |gid: &str| BranchParams {
        gid: gid.to_owned(),
        trans_type: "msg".into(),
        branch_id: "00".into(),
        op: "msg".into(),
    };

    // Local transaction committed, then the initiator died before submit: delivered.
    let committed = client.new_gid().await?;
    let mut m = Msg::with_options(&client, quick(&committed)).add(&p.url("step"), &json!({}))?;
    m.prepare(&query_url).await?;
    BranchBarrier::new(local(&committed), table.clone())?
        .call(&pool, |_| Box::pin(async { Ok::<_, sqlx::Error>(()) }))
        .await?;
    // Died before the local commit: dropped, and the late commit is refused.
    let lost = client.new_gid().await?;
    let mut m = Msg::with_options(&client, quick(&lost)).add(&p.url("step"), &json!({}))?;
    m.prepare(&query_url).await?;

    assert_eq!(client.wait_final(&committed, SETTLE).await?, "succeed");
    assert_eq!(routes(&p, &committed), ["step"]);
    assert_eq!(client.wait_final(&lost, SETTLE).await?, "failed");
    let late = BranchBarrier::new(local(&lost), table.clone())?
        .call(&pool, |_| Box::pin(async { Ok::<_, sqlx::Error>(()) }))
        .await?;
    assert!(
        !matches!(late, settle_sdk::BarrierOutcome::Done(())),
        "the late local commit is refused: {late:?}"
    );
    assert!(routes(&p, &lost).is_empty());
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_check_back_slower_than_the_lease_still_settles_the_message() -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let mut config = test_config(&db.url);
    config.lease_ms = 1_000;
    let app = spawn_coordinator(config).await?;
    let p = Participant::start().await?;
    // The check-back answers "committed" after 2.5 s: longer than a lease.
    p.delay("query", Duration::from_millis(2_500), 1);
    let client = SettleClient::new(app.api_url());
    let gid = client.new_gid().await?;
    let mut m = Msg::with_options(
        &client,
        GlobalRequest {
            request_timeout: 10,
            ..quick(&gid)
        },
    )
    .add(&p.url("step"), &json!({}))?;
    m.prepare(&p.url("query")).await?;
    assert_eq!(client.wait_final(&gid, SETTLE).await?, "succeed");
    assert_eq!(
        p.arrived("query"),
        1,
        "one check-back, whose answer was taken: no other round asked again"
    );
    assert_eq!(routes(&p, &gid), ["query", "step"]);
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delayed_message_goes_out_only_after_its_delay() -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let p = Participant::start().await?;
    let client = SettleClient::new(app.api_url());
    let gid = client.new_gid().await?;
    let started = std::time::Instant::now();
    Msg::with_options(
        &client,
        GlobalRequest {
            custom_data: r#"{"delay": 2}"#.into(),
            ..GlobalRequest::new(&gid, "msg")
        },
    )
    .add(&p.url("step"), &json!({}))?
    .submit()
    .await?;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(routes(&p, &gid).is_empty(), "nothing before the delay");
    assert_eq!(client.wait_final(&gid, SETTLE).await?, "succeed");
    assert_eq!(routes(&p, &gid), ["step"]);
    assert!(started.elapsed() >= Duration::from_secs(2));
    // A delay that is not a whole number of seconds is refused.
    let bad = client.new_gid().await?;
    let refused = Msg::with_options(
        &client,
        GlobalRequest {
            custom_data: r#"{"delay": -3}"#.into(),
            ..GlobalRequest::new(&bad, "msg")
        },
    )
    .add(&p.url("step"), &json!({}))?
    .submit()
    .await
    .expect_err("negative delay");
    assert!(refused.to_string().contains("delay must be"), "{refused}");
    app.stop().await;
    Ok(())
}

/// When `route` was first called for `gid`.
fn first_call(p: &Participant, gid: &str, route: &str) -> Option<std::time::Instant> {
    p.calls()
        .into_iter()
        .filter(|c| c.params.gid == gid && c.route == route)
        .map(|c| c.at)
        .min()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delayed_message_keeps_its_delay_when_a_check_back_or_a_late_submit_commits_it(
) -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let p = Participant::start().await?;
    let client = SettleClient::new(app.api_url());
    let delayed = |gid: &str| GlobalRequest {
        custom_data: r#"{"delay": 3}"#.into(),
        request_timeout: 10,
        ..quick(gid)
    };
    // Committed by its check-back.
    let checked = client.new_gid().await?;
    let mut m = Msg::with_options(&client, delayed(&checked)).add(&p.url("step"), &json!({}))?;
    m.prepare(&p.url("query")).await?;
    // Committed by its initiator's submit while the check-back is under way.
    p.delay("slow-query", Duration::from_millis(2_000), 1);
    let raced = client.new_gid().await?;
    let mut r = Msg::with_options(&client, delayed(&raced)).add(&p.url("step"), &json!({}))?;
    r.prepare(&p.url("slow-query")).await?;
    eventually("the slow check-back to be asked", SETTLE, || async {
        p.arrived("slow-query") >= 1
    })
    .await?;
    r.submit().await?;
    let submitted = std::time::Instant::now();
    for gid in [&checked, &raced] {
        assert_eq!(client.wait_final(gid, SETTLE).await?, "succeed");
    }
    let committed = first_call(&p, &checked, "query").expect("checked back");
    let step = first_call(&p, &checked, "step").expect("delivered");
    assert!(
        step - committed >= Duration::from_millis(2_900),
        "a check-back's commit kept the delay: step {:?} after it",
        step - committed
    );
    let step = first_call(&p, &raced, "step").expect("delivered");
    assert!(
        step - submitted >= Duration::from_millis(2_900),
        "a submit during the check-back kept the delay: step {:?} after it",
        step - submitted
    );
    app.stop().await;
    Ok(())
}
