//! Network faults through the fault proxy: between the coordinator and its participants,
//! between the coordinator and MySQL, and between the coordinator and the broker. Slow,
//! lost, black-holed and reset traffic delays transactions but never changes what was
//! decided: every submitted TCC ends confirmed on every branch, nothing is cancelled,
//! everything answered is kept, and every committed message arrives in its key's order.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::json;
use settle_protocol::GlobalRequest;
use settle_sdk::{Msg, SettleClient};
use settle_tests::broker::OwnBroker;
use settle_tests::proxy::{FaultProxy, Stream, Toxic};
use settle_tests::{
    eventually, new_topic_at, spawn_coordinator, test_config, Collector, Participant, TestDb,
    TestSqlite,
};

/// Runs a two-branch TCC whose Tries go straight to `p` and whose confirms and cancels go
/// through `proxy` (in front of `p`).
async fn tcc_through(
    client: &SettleClient,
    p: &Participant,
    proxy: &FaultProxy,
    gid: &str,
) -> Result<(), settle_sdk::SdkError> {
    let via = |op: &str| format!("http://{}/{op}", proxy.addr());
    let (try_url, confirm, cancel) = (p.url("try"), via("confirm"), via("cancel"));
    client
        .tcc_global_with(GlobalRequest::new(gid, "tcc"), |tcc| async move {
            for n in 0..2 {
                tcc.call_branch(&serde_json::json!({ "n": n }), &try_url, &confirm, &cancel)
                    .await?;
            }
            Ok(())
        })
        .await
}

fn participant_host(p: &Participant) -> String {
    p.url("x")
        .trim_start_matches("http://")
        .trim_end_matches("/x")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_through_a_slow_lossy_resetting_network_still_land() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let p = Participant::start().await?;
    let proxy = FaultProxy::start(&participant_host(&p)).await?;
    let client = SettleClient::new(app.api_url());
    // Answers are lost for a while: every confirm is made, its answer never arrives.
    proxy.add(
        "lost answers",
        Stream::Downstream,
        Toxic::Timeout {
            timeout: Duration::ZERO,
        },
    );
    let gids: Vec<String> = (0..5).map(|i| format!("net-lossy-{i}")).collect();
    for gid in &gids {
        tcc_through(&client, &p, &proxy, gid).await?;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        p.arrived("confirm") >= 1,
        "confirms were made while answers were lost"
    );
    // Then connections are reset, then the network is slow and jittery, then healthy.
    proxy.clear();
    proxy.add(
        "resets",
        Stream::Upstream,
        Toxic::ResetPeer {
            timeout: Duration::ZERO,
        },
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.clear();
    proxy.add(
        "slow",
        Stream::Downstream,
        Toxic::Latency {
            latency: Duration::from_millis(150),
            jitter: Duration::from_millis(100),
        },
    );
    for gid in &gids {
        assert_eq!(
            client.wait_final(gid, Duration::from_secs(30)).await?,
            "succeed"
        );
        p.assert_confirmed_everywhere(gid, &["01", "02"]);
    }
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_connection_reset_mid_load_loses_nothing_answered() -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let server = settle_tests::mysql_server_url();
    let host = server.trim_start_matches("mysql://");
    let host = host
        .rsplit_once('@')
        .map_or(host, |(_, h)| h)
        .trim_end_matches('/');
    let proxy = FaultProxy::start(host).await?;
    let url = db.url.replacen(host, &proxy.addr().to_string(), 1);
    let mut config = test_config(&url);
    config.lease_ms = 1500;
    let app = spawn_coordinator(config).await?;
    let p = Participant::start().await?;
    let client = SettleClient::new(app.api_url());
    proxy.add(
        "slow store",
        Stream::Upstream,
        Toxic::Latency {
            latency: Duration::from_millis(5),
            jitter: Duration::from_millis(5),
        },
    );
    let direct = FaultProxy::start(&participant_host(&p)).await?;
    let mut answered = Vec::new();
    for i in 0..12 {
        let gid = format!("net-store-{i}");
        if i == 4 {
            // Every connection to the store is reset, and new ones too, for a moment.
            proxy.add(
                "reset",
                Stream::Upstream,
                Toxic::ResetPeer {
                    timeout: Duration::ZERO,
                },
            );
        }
        if i == 6 {
            proxy.remove("reset");
        }
        if tcc_through(&client, &p, &direct, &gid).await.is_ok() {
            answered.push(gid);
        }
    }
    assert!(
        (8..12).contains(&answered.len()),
        "those begun while the store was cut were refused, the rest answered: {answered:?}"
    );
    for gid in &answered {
        assert_eq!(
            client.wait_final(gid, Duration::from_secs(30)).await?,
            "succeed"
        );
        p.assert_confirmed_everywhere(gid, &["01", "02"]);
    }
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_through_a_reset_black_holed_and_slow_broker_link_all_arrive_in_key_order(
) -> anyhow::Result<()> {
    const KEYS: u64 = 4;
    // A broker of the test's own: the coordinator and the consumer reach it only through
    // its proxy.
    let broker = OwnBroker::start().await?;
    let proxy = broker.proxy();
    let db = TestSqlite::new();
    let mut config = test_config(&db.url);
    config.rocketmq_namesrv = broker.namesrv().to_owned();
    config.delivery_poll_interval_ms = 100;
    let app = spawn_coordinator(config).await?;
    let rmq = settle_rocketmq::Client::new("test")?;
    let topic = new_topic_at(&rmq, broker.namesrv(), "SettleProxied").await?;
    let collector = Collector::start_at(&rmq, broker.namesrv(), &topic).await?;
    let client = SettleClient::new(app.api_url());

    // Each phase commits five messages per key, one transaction after another, while the
    // link to the broker is: healthy; reset (every connection, new ones too); a black hole
    // (nothing passes, nothing is closed); slow and jittery. Then it heals.
    let faults: [Option<(Stream, Toxic)>; 4] = [
        None,
        Some((
            Stream::Upstream,
            Toxic::ResetPeer {
                timeout: Duration::ZERO,
            },
        )),
        Some((
            Stream::Upstream,
            Toxic::Timeout {
                timeout: Duration::ZERO,
            },
        )),
        Some((
            Stream::Downstream,
            Toxic::Latency {
                latency: Duration::from_millis(60),
                jitter: Duration::from_millis(50),
            },
        )),
    ];
    let mut committed: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut n = 0;
    for fault in faults {
        if let Some((stream, toxic)) = fault {
            proxy.add("fault", stream, toxic);
        }
        let first_of_phase = n + 1;
        for _ in 0..5 {
            n += 1;
            for key in 0..KEYS {
                let gid = format!("net-broker-{key}-{n}-{}", &db_suffix());
                Msg::new(&client, &gid)
                    .add(
                        &format!("rocketmq://{topic}?key=k{key}&tag=e"),
                        &json!({"key": key, "n": n}),
                    )?
                    .submit()
                    .await?;
                committed.entry(key).or_default().push(n);
            }
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if matches!(
            fault,
            Some((_, Toxic::ResetPeer { .. } | Toxic::Timeout { .. }))
        ) {
            // The link is cut: what this phase committed waits in the outbox.
            let through = collector.received().iter().any(|(d, _)| {
                serde_json::from_slice::<serde_json::Value>(&d.body)
                    .ok()
                    .and_then(|b| b["n"].as_u64())
                    .is_some_and(|m| m >= first_of_phase)
            });
            assert!(
                !through,
                "a message crossed a cut link: the proxy is not in the way"
            );
        }
        proxy.clear();
    }
    let total = committed.values().map(Vec::len).sum::<usize>();
    eventually(
        "every committed message to arrive",
        Duration::from_secs(120),
        || async { collector.distinct_ids().len() >= total },
    )
    .await?;

    // Redeliveries are allowed (consumers dedupe by id); each key's first deliveries must be
    // its committed sequence, in order.
    let mut arrived: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut ids = HashSet::new();
    for (d, _) in collector.received() {
        if ids.insert(d.message_id.clone()) {
            let body: serde_json::Value = serde_json::from_slice(&d.body)?;
            arrived
                .entry(body["key"].as_u64().unwrap_or(u64::MAX))
                .or_default()
                .push(body["n"].as_u64().unwrap_or(0));
        }
    }
    assert_eq!(arrived, committed, "lost, unexpected or out of order");
    collector.shutdown().await;
    app.stop().await;
    rmq.shutdown().await;
    Ok(())
}

fn db_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..6].to_owned()
}
