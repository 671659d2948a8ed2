//! Network faults through the fault proxy: between the coordinator and its participants,
//! and between the coordinator and MySQL. Slow, lost, black-holed and reset traffic delays
//! transactions but never changes what was decided: every submitted TCC ends confirmed on
//! every branch, nothing is cancelled, and everything answered is kept.

use std::time::Duration;

use settle_protocol::GlobalRequest;
use settle_sdk::SettleClient;
use settle_tests::proxy::{FaultProxy, Stream, Toxic};
use settle_tests::{spawn_coordinator, test_config, Participant, TestDb, TestSqlite};

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
