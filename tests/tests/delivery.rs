//! Delivery to a real RocketMQ (the Rust broker, started by `deploy/rocketmq.sh`): only after
//! commit, in commit order per sharding key across transactions, and nothing lost while the
//! broker is down. The tests share one broker and some restart it, so they run one at a time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use serde_json::{json, Value};
use settle_protocol::GlobalRequest;
use settle_sdk::{Msg, SettleClient};
use settle_tests::{
    eventually, new_topic, rocketmq_namesrv, rocketmq_script, spawn_coordinator, test_config,
    Collector, Participant, TestDb,
};
use tokio::sync::Mutex;

static BROKER: Mutex<()> = Mutex::const_new(());

fn config(db: &TestDb) -> settle_coordinator::Config {
    let mut c = test_config(&db.url);
    c.rocketmq_namesrv = rocketmq_namesrv();
    c.rocketmq_producer_group = format!("settle-test-{}", &db.name[9..]);
    c.delivery_poll_interval_ms = 100;
    c
}

fn body(d: &settle_rocketmq::Delivery) -> Value {
    serde_json::from_slice(&d.body).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_reach_the_broker_only_after_their_transaction_committed() -> anyhow::Result<()> {
    let _broker = BROKER.lock().await;
    let db = TestDb::mysql().await?;
    let app = spawn_coordinator(config(&db)).await?;
    let rmq = settle_rocketmq::Client::new("test")?;
    let topic = new_topic(&rmq, "SettleCommit").await?;
    let collector = Collector::start(&rmq, &topic).await?;
    let client = SettleClient::new(app.api_url());
    let p = Participant::start().await?;
    let step = |key: &str| format!("rocketmq://{topic}?key={key}&tag=t");

    // A prepared message waits for its commit.
    let committed = client.new_gid().await?;
    let mut m = Msg::new(&client, &committed).add(&step("a"), &json!({"what": "committed"}))?;
    m.prepare(&p.url("query")).await?;
    // A message whose local transaction rolled back is never published.
    p.script("query", &[409]);
    let rolled = client.new_gid().await?;
    let mut r = Msg::with_options(
        &client,
        GlobalRequest {
            timeout_to_fail: 1,
            ..GlobalRequest::new(&rolled, "msg")
        },
    )
    .add(&step("b"), &json!({"what": "rolled back"}))?;
    r.prepare(&p.url("query")).await?;
    // An aborted message is never published either.
    let aborted = client.new_gid().await?;
    let mut a = Msg::new(&client, &aborted).add(&step("c"), &json!({"what": "aborted"}))?;
    a.prepare(&p.url("query")).await?;
    a.abort().await?;
    assert_eq!(
        client.wait_final(&aborted, Duration::from_secs(20)).await?,
        "failed"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        collector.received().is_empty(),
        "nothing is published before a commit"
    );
    assert_eq!(
        client.wait_final(&rolled, Duration::from_secs(20)).await?,
        "failed"
    );

    m.submit().await?;
    eventually(
        "the committed message to arrive",
        Duration::from_secs(30),
        || async { !collector.received().is_empty() },
    )
    .await?;
    assert_eq!(
        client
            .wait_final(&committed, Duration::from_secs(20))
            .await?,
        "succeed"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = collector.received();
    assert!(
        got.iter().all(|(d, _)| body(d)["what"] == "committed"),
        "only the committed message: {got:?}"
    );
    assert_eq!(
        got[0].0.message_id,
        format!("{committed}-01"),
        "the message key is GID-BRANCH"
    );
    assert_eq!(got[0].0.tag, "t");
    // With wait_result, submit answers once the broker acknowledged the message.
    let waited = client.new_gid().await?;
    Msg::with_options(
        &client,
        GlobalRequest {
            wait_result: true,
            request_timeout: 10,
            ..GlobalRequest::new(&waited, "msg")
        },
    )
    .add(&step("d"), &json!({"what": "waited"}))?
    .submit()
    .await?;
    assert_eq!(client.status(&waited).await?.as_deref(), Some("succeed"));
    collector.shutdown().await;
    app.stop().await;
    rmq.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tccs_messages_go_out_after_every_confirm_and_never_after_a_cancel() -> anyhow::Result<()>
{
    let _broker = BROKER.lock().await;
    let db = TestDb::mysql().await?;
    let app = spawn_coordinator(config(&db)).await?;
    let rmq = settle_rocketmq::Client::new("test")?;
    let topic = new_topic(&rmq, "SettleTcc").await?;
    let collector = Collector::start(&rmq, &topic).await?;
    let client = SettleClient::new(app.api_url());
    let p = Participant::start().await?;
    p.script("confirm", &[500]);

    let gid = client.new_gid().await?;
    let request = GlobalRequest {
        steps: vec![[(
            "action".to_owned(),
            format!("rocketmq://{topic}?key=acct-1&tag=balance"),
        )]
        .into()],
        payloads: vec![json!({"account": 1, "balance": 70}).to_string()],
        ..GlobalRequest::new(&gid, "tcc")
    };
    p.run_tcc(&client, request, 1).await?;
    assert_eq!(
        client.wait_final(&gid, Duration::from_secs(30)).await?,
        "succeed"
    );
    eventually(
        "the TCC's message to arrive",
        Duration::from_secs(30),
        || async { !collector.received().is_empty() },
    )
    .await?;
    let confirmed_at = p
        .calls()
        .into_iter()
        .find(|c| c.params.op == "confirm" && c.answered == 200)
        .map(|c| c.at)
        .expect("confirmed");
    let (delivery, arrived_at) = collector.received()[0].clone();
    assert!(
        arrived_at > confirmed_at,
        "delivered only after the confirm succeeded"
    );
    assert_eq!(delivery.message_id, format!("{gid}-m01"));

    // A TCC that rolls back carries no message (they come with the submit it never makes).
    let aborted = client.new_gid().await?;
    let pc = p.clone();
    let _ = client
        .tcc_global(&aborted, |tcc| async move {
            tcc.call_branch(
                &json!({}),
                &pc.url("try"),
                &pc.url("confirm"),
                &pc.url("cancel"),
            )
            .await?;
            Err::<(), _>(settle_sdk::SdkError::Business("no".into()))
        })
        .await;
    assert_eq!(
        client.wait_final(&aborted, Duration::from_secs(20)).await?,
        "failed"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(collector.received().len(), 1);
    collector.shutdown().await;
    app.stop().await;
    rmq.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sagas_messages_go_out_after_its_last_action_and_never_when_it_compensates(
) -> anyhow::Result<()> {
    let _broker = BROKER.lock().await;
    let db = TestDb::mysql().await?;
    let app = spawn_coordinator(config(&db)).await?;
    let rmq = settle_rocketmq::Client::new("test")?;
    let topic = new_topic(&rmq, "SettleSaga").await?;
    let collector = Collector::start(&rmq, &topic).await?;
    let client = SettleClient::new(app.api_url());
    let p = Participant::start().await?;
    // The second action errors once: the message waits for its retry to succeed.
    p.script("a1", &[500]);
    let saga = |gid: &str| -> anyhow::Result<settle_sdk::Saga> {
        Ok(settle_sdk::Saga::new(&client, gid)
            .add(&p.url("a0"), &p.url("c0"), &json!({"step": 0}))?
            .add(&p.url("a1"), &p.url("c1"), &json!({"step": 1}))?
            .message(
                &format!("rocketmq://{topic}?key=order-1&tag=paid"),
                &json!({"order": 1, "gid": gid}),
            )?)
    };
    let gid = client.new_gid().await?;
    saga(&gid)?.submit().await?;
    assert_eq!(
        client.wait_final(&gid, Duration::from_secs(30)).await?,
        "succeed"
    );
    eventually(
        "the saga's message to arrive",
        Duration::from_secs(30),
        || async { !collector.received().is_empty() },
    )
    .await?;
    let last_action = p
        .calls()
        .into_iter()
        .find(|c| c.params.gid == gid && c.route == "a1" && c.answered == 200)
        .map(|c| c.at)
        .expect("the last action succeeded");
    let (delivery, arrived_at) = collector.received()[0].clone();
    assert!(
        arrived_at > last_action,
        "delivered only after every action"
    );
    assert_eq!(delivery.message_id, format!("{gid}-m01"));
    assert_eq!(body(&delivery)["gid"], gid.as_str());

    // A saga that compensates drops its message.
    p.script("a1", &[409]);
    let failed = client.new_gid().await?;
    saga(&failed)?.submit().await?;
    assert_eq!(
        client.wait_final(&failed, Duration::from_secs(30)).await?,
        "failed"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(collector.received().len(), 1);
    collector.shutdown().await;
    app.stop().await;
    rmq.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_key_order_holds_across_transactions_while_the_broker_restarts() -> anyhow::Result<()> {
    let _broker = BROKER.lock().await;
    const KEYS: usize = 50;
    const PER_KEY: usize = 20;
    let db = TestDb::mysql().await?;
    let app = spawn_coordinator(config(&db)).await?;
    let rmq = settle_rocketmq::Client::new("test")?;
    let topic = new_topic(&rmq, "SettleOrder").await?;
    let collector = Collector::start(&rmq, &topic).await?;
    let client = SettleClient::new(app.api_url());
    let submitted = Arc::new(AtomicUsize::new(0));

    // Each key's messages come from transactions committed one after another; keys run
    // concurrently.
    let mut writers = tokio::task::JoinSet::new();
    for k in 0..KEYS {
        let (client, topic, submitted) = (client.clone(), topic.clone(), submitted.clone());
        writers.spawn(async move {
            for n in 0..PER_KEY {
                let gid = format!(
                    "order-{k}-{n}-{}",
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                );
                Msg::new(&client, &gid)
                    .add(
                        &format!("rocketmq://{topic}?key=k{k}&tag=e"),
                        &json!({"key": k, "n": n}),
                    )?
                    .submit()
                    .await?;
                submitted.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    // The broker goes down a third of the way through and comes back a few seconds later.
    eventually(
        "a third of the messages to be submitted",
        Duration::from_secs(60),
        || async { submitted.load(Ordering::Relaxed) >= KEYS * PER_KEY / 3 },
    )
    .await?;
    rocketmq_script("stop-broker").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    rocketmq_script("start-broker").await?;
    while let Some(r) = writers.join_next().await {
        r??;
    }
    eventually(
        "every message to arrive",
        Duration::from_secs(180),
        || async { collector.distinct_ids().len() >= KEYS * PER_KEY },
    )
    .await?;

    let mut seen: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut ids = std::collections::HashSet::new();
    for (d, _) in collector.received() {
        if !ids.insert(d.message_id.clone()) {
            continue; // a redelivery: consumers dedupe by id
        }
        let b = body(&d);
        seen.entry(b["key"].as_u64().expect("key"))
            .or_default()
            .push(b["n"].as_u64().expect("n"));
    }
    assert_eq!(seen.len(), KEYS);
    for (key, ns) in &seen {
        let expected: Vec<u64> = (0..PER_KEY as u64).collect();
        assert_eq!(
            ns, &expected,
            "key {key} arrived out of order or incomplete"
        );
    }
    collector.shutdown().await;
    app.stop().await;
    rmq.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_wait_in_the_store_while_the_broker_is_down_even_across_a_coordinator_restart(
) -> anyhow::Result<()> {
    let _broker = BROKER.lock().await;
    let db = TestDb::mysql().await?;
    let rmq = settle_rocketmq::Client::new("test")?;
    let topic = new_topic(&rmq, "SettleDown").await?;
    let collector = Collector::start(&rmq, &topic).await?;
    rocketmq_script("stop-broker").await?;
    let result = async {
        let app = spawn_coordinator(config(&db)).await?;
        let client = SettleClient::new(app.api_url());
        for n in 0..10 {
            Msg::new(&client, &format!("down-{n}-{}", &db.name[9..]))
                .add(
                    &format!("rocketmq://{topic}?key=same&tag=e"),
                    &json!({"n": n}),
                )?
                .submit()
                .await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        app.stop().await;
        anyhow::Ok(())
    }
    .await;
    rocketmq_script("start-broker").await?;
    result?;
    // A new coordinator on the same store delivers them, in order.
    let app = spawn_coordinator(config(&db)).await?;
    eventually(
        "the ten messages to arrive",
        Duration::from_secs(120),
        || async { collector.distinct_ids().len() >= 10 },
    )
    .await?;
    let mut order = Vec::new();
    for (d, _) in collector.received() {
        let n = body(&d)["n"].as_u64().expect("n");
        if !order.contains(&n) {
            order.push(n);
        }
    }
    assert_eq!(order, (0..10).collect::<Vec<u64>>());
    collector.shutdown().await;
    app.stop().await;
    rmq.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tcc_that_stops_retrying_dead_letters_its_held_messages_and_their_key_moves_on(
) -> anyhow::Result<()> {
    let _broker = BROKER.lock().await;
    let db = TestDb::mysql().await?;
    let app = spawn_coordinator(config(&db)).await?;
    let rmq = settle_rocketmq::Client::new("test")?;
    let topic = new_topic(&rmq, "SettleStopped").await?;
    let collector = Collector::start(&rmq, &topic).await?;
    let client = SettleClient::new(app.api_url());
    let p = Participant::start().await?;
    // Its confirm always fails, and its retry limit stops it after two rounds.
    p.fail_first("confirm", usize::MAX);
    let stuck = client.new_gid().await?;
    let request = GlobalRequest {
        steps: vec![[(
            "action".to_owned(),
            format!("rocketmq://{topic}?key=acct-9&tag=balance"),
        )]
        .into()],
        payloads: vec![json!({"from": "stuck"}).to_string()],
        retry_limit: 2,
        ..GlobalRequest::new(&stuck, "tcc")
    };
    p.run_tcc(&client, request, 1).await?;
    // A later message of the same key.
    let later = client.new_gid().await?;
    Msg::new(&client, &later)
        .add(
            &format!("rocketmq://{topic}?key=acct-9&tag=balance"),
            &json!({"from": "later"}),
        )?
        .submit()
        .await?;
    eventually(
        "the later message to get past the stopped TCC's",
        Duration::from_secs(30),
        || async { !collector.received().is_empty() },
    )
    .await?;
    let got = collector.received();
    assert!(
        got.iter().all(|(d, _)| body(d)["from"] == "later"),
        "the stopped TCC's message is not published: {got:?}"
    );
    let dead: Value = reqwest::get(format!(
        "http://{}/api/admin/outbox?status=dead",
        app.address()
    ))
    .await?
    .json()
    .await?;
    let row = &dead["messages"][0];
    assert_eq!(row["gid"], stuck.as_str(), "{dead}");
    assert!(
        row["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("stopped retrying")),
        "{dead}"
    );
    collector.shutdown().await;
    app.stop().await;
    rmq.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_message_holds_back_only_its_own_key_on_a_shared_queue() -> anyhow::Result<()> {
    let _broker = BROKER.lock().await;
    let db = TestDb::mysql().await?;
    let mut c = config(&db);
    c.body_limit_bytes = 16 * 1024 * 1024;
    // Passes the API, refused by the broker (4 MiB) for what it is.
    c.max_message_bytes = 8 * 1024 * 1024;
    let app = spawn_coordinator(c).await?;
    let rmq = settle_rocketmq::Client::new("test")?;
    let topic = new_topic(&rmq, "SettlePoison").await?;
    let collector = Collector::start(&rmq, &topic).await?;
    let client = SettleClient::new(app.api_url());
    let http = reqwest::Client::new();
    // Keys "stuck" and "tail" hash to the same one of the topic's four queues, and a claim
    // sends "stuck" first. One message carries both, so that one pass claims them together.
    let step = |key: &str| format!("rocketmq://{topic}?key={key}&tag=e");
    let gid = client.new_gid().await?;
    let mut m = Msg::new(&client, &gid)
        .add(&step("stuck"), &json!({"pad": "x".repeat(5 * 1024 * 1024)}))?;
    for n in 0..3 {
        m = m.add(&step("tail"), &json!({"n": n}))?;
    }
    m.submit().await?;
    eventually(
        "the other key's messages to arrive",
        Duration::from_secs(30),
        || async {
            collector
                .received()
                .iter()
                .filter(|(d, _)| body(d)["n"].is_number())
                .count()
                >= 3
        },
    )
    .await?;
    let tail = sent_messages(&http, &app, |m| m["sharding_key"] == "tail").await?;
    assert_eq!(tail.len(), 3, "{tail:?}");
    assert!(
        tail.iter().all(|m| m["attempts"] == 0),
        "the other key was failed along with the refused one: {tail:?}"
    );
    collector.shutdown().await;
    app.stop().await;
    rmq.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_the_broker_refuses_is_dead_lettered_and_its_key_moves_on() -> anyhow::Result<()>
{
    let _broker = BROKER.lock().await;
    let db = TestDb::mysql().await?;
    let mut c = config(&db);
    c.body_limit_bytes = 16 * 1024 * 1024;
    // The coordinator is told the broker takes 8 MiB, but the producer and broker take 4: a
    // larger message passes the API and is then refused, every time, for what it is.
    c.max_message_bytes = 8 * 1024 * 1024;
    c.dead_letter_after = 2;
    let app = spawn_coordinator(c).await?;
    let rmq = settle_rocketmq::Client::new("test")?;
    let topic = new_topic(&rmq, "SettleStuck").await?;
    let collector = Collector::start(&rmq, &topic).await?;
    let client = SettleClient::new(app.api_url());
    let http = reqwest::Client::new();
    let step = |key: &str| format!("rocketmq://{topic}?key={key}&tag=e");
    let huge = client.new_gid().await?;
    Msg::new(&client, &huge)
        .add(
            &step("stuck"),
            &json!({"n": 0, "pad": "x".repeat(5 * 1024 * 1024)}),
        )?
        .submit()
        .await?;
    let behind = client.new_gid().await?;
    Msg::new(&client, &behind)
        .add(&step("stuck"), &json!({"n": 1}))?
        .submit()
        .await?;
    // Key "free": delivered all the same, even when it shares a queue (and a batch) with
    // the refused message.
    for n in 0..5 {
        Msg::new(&client, &format!("{behind}-free-{n}"))
            .add(&step("free"), &json!({"n": n}))?
            .submit()
            .await?;
    }
    eventually(
        "the free key's messages and the stuck key's second one to arrive",
        Duration::from_secs(60),
        || async {
            let got = collector.received();
            got.iter()
                .filter(|(d, _)| d.message_id.contains("-free-"))
                .count()
                >= 5
                && got
                    .iter()
                    .any(|(d, _)| d.message_id == format!("{behind}-01"))
        },
    )
    .await?;
    let dead_letter = || async {
        client
            .query(&huge)
            .await
            .ok()
            .and_then(|q| q.transaction)
            .is_some_and(|t| {
                t.status == "submitted" && t.last_error.contains("dead-lettered after 2 refusals")
            })
    };
    eventually(
        "the dead letter to show on its transaction",
        Duration::from_secs(30),
        dead_letter,
    )
    .await?;
    assert_eq!(
        client.wait_final(&behind, Duration::from_secs(30)).await?,
        "succeed"
    );
    // The refusals were the stuck key's alone: the free key, on the same queue, went out at
    // its first try every time, with no failure counted against it.
    let free = sent_messages(&http, &app, |m| {
        m["gid"].as_str().is_some_and(|g| g.contains("-free-"))
    })
    .await?;
    assert_eq!(free.len(), 5, "{free:?}");
    assert!(
        free.iter().all(|m| m["attempts"] == 0),
        "the free key was held back by the stuck one: {free:?}"
    );
    let metrics = http
        .get(format!("http://{}/api/metrics", app.address()))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("settle_outbox_dead_letters 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("settle_messages_dead_lettered_total 1"),
        "{metrics}"
    );

    // An operator redrives it: it is tried again (and, still too large, dead-lettered again).
    let redrive = |gid: String| {
        let http = http.clone();
        let url = format!("http://{}/api/admin/redrive", app.address());
        async move {
            let r = http.post(url).json(&json!({"gid": gid})).send().await?;
            anyhow::Ok((r.status().as_u16(), r.text().await?))
        }
    };
    let (status, answer) = redrive(huge.clone()).await?;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"redriven\":1"), "{answer}");
    let (status, answer) = redrive(behind.clone()).await?;
    assert_eq!(status, 404, "nothing of it is dead: {answer}");
    eventually(
        "the redriven message to be dead-lettered again",
        Duration::from_secs(30),
        || {
            async {
                let metrics = http
                    .get(format!("http://{}/api/metrics", app.address()))
                    .send()
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                Some(metrics.contains("settle_messages_dead_lettered_total 2"))
            }
            .map(|r| r.unwrap_or(false))
        },
    )
    .await?;
    assert!(dead_letter().await);
    assert!(
        collector
            .received()
            .iter()
            .all(|(d, _)| !d.message_id.starts_with(&huge[..])),
        "a refused message never reaches consumers"
    );
    collector.shutdown().await;
    app.stop().await;
    rmq.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_step_is_read_the_same_whatever_the_case_of_its_scheme() -> anyhow::Result<()> {
    let _broker = BROKER.lock().await;
    let db = TestDb::mysql().await?;
    let app = spawn_coordinator(config(&db)).await?;
    let rmq = settle_rocketmq::Client::new("test")?;
    let topic = new_topic(&rmq, "SettleCase").await?;
    let collector = Collector::start(&rmq, &topic).await?;
    let client = SettleClient::new(app.api_url());
    let p = settle_tests::Participant::start().await?;
    // Prepared, then submitted, as DTM's clients do: both must read the step alike.
    let gid = client.new_gid().await?;
    let mut m = Msg::new(&client, &gid).add(
        &format!("RocketMQ://{topic}?key=k1&tag=t"),
        &json!({"what": "mixed case"}),
    )?;
    m.prepare(&p.url("query")).await?;
    m.submit().await?;
    eventually("the message to arrive", Duration::from_secs(30), || async {
        !collector.received().is_empty()
    })
    .await?;
    assert_eq!(
        client.wait_final(&gid, Duration::from_secs(20)).await?,
        "succeed"
    );
    assert_eq!(collector.received()[0].0.topic, topic);
    // What the broker would refuse or misdirect is refused before anything is written.
    for url in [
        format!("rocketmq://user@{topic}?key=k1"),
        format!("rocketmq://{topic}:10911?key=k1"),
        "rocketmq://%DLQ%settle?key=k1".to_owned(),
        "rocketmq://RMQ_SYS_TRANS_HALF_TOPIC?key=k1".to_owned(),
    ] {
        let bad = client.new_gid().await?;
        let refused = Msg::new(&client, &bad)
            .add(&url, &json!({}))?
            .submit()
            .await;
        assert!(refused.is_err(), "{url} was accepted");
        assert_eq!(client.status(&bad).await?, None, "{url}: nothing written");
    }
    collector.shutdown().await;
    app.stop().await;
    rmq.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_published_message_carries_its_initiators_trace() -> anyhow::Result<()> {
    const TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let _broker = BROKER.lock().await;
    let db = TestDb::mysql().await?;
    let app = spawn_coordinator(config(&db)).await?;
    let rmq = settle_rocketmq::Client::new("test")?;
    let topic = new_topic(&rmq, "SettleTrace").await?;
    let collector = Collector::start(&rmq, &topic).await?;
    let traced = SettleClient::new(app.api_url()).with_traceparent(TRACE);
    let plain = SettleClient::new(app.api_url());
    let step = format!("rocketmq://{topic}?key=t");
    Msg::new(&traced, "trace-msg-traced")
        .add(&step, &json!({"n": 1}))?
        .submit()
        .await?;
    Msg::new(&plain, "trace-msg-plain")
        .add(&step, &json!({"n": 2}))?
        .submit()
        .await?;
    eventually(
        "both messages to arrive",
        Duration::from_secs(30),
        || async { collector.distinct_ids().len() == 2 },
    )
    .await?;
    let trace_of = |n: i64| {
        collector
            .received()
            .into_iter()
            .find(|(d, _)| body(d)["n"] == n)
            .and_then(|(d, _)| d.traceparent)
    };
    let traced_tp = trace_of(1).expect("the traced message has a traceparent property");
    assert_eq!(
        settle_protocol::trace::trace_id(&traced_tp),
        settle_protocol::trace::trace_id(TRACE),
        "{traced_tp}"
    );
    assert_ne!(traced_tp, TRACE, "the publish is a span of its own");
    assert_eq!(
        trace_of(2),
        None,
        "a transaction begun without a trace starts none"
    );
    collector.shutdown().await;
    app.stop().await;
    Ok(())
}

/// The messages the outbox lists as sent that `keep` keeps.
async fn sent_messages(
    http: &reqwest::Client,
    app: &settle_coordinator::app::Application,
    keep: impl Fn(&Value) -> bool,
) -> anyhow::Result<Vec<Value>> {
    let sent: Value = http
        .get(format!(
            "http://{}/api/admin/outbox?status=sent&limit=100",
            app.address()
        ))
        .send()
        .await?
        .json()
        .await?;
    Ok(sent["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| keep(m))
        .cloned()
        .collect())
}
