//! Crash recovery and several coordinators on one database: the real `settle` process is
//! killed mid-phase-2 (a TCC's confirms, a saga's actions or its compensation) and restarted
//! or taken over by another instance; two coordinators share a database and confirm each
//! branch exactly once.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use settle_protocol::GlobalRequest;
use settle_sdk::SettleClient;
use settle_tests::{
    eventually, spawn_coordinator, test_config, Participant, SettleProcess, TestDb,
};

const BINARY: &str = env!("CARGO_BIN_EXE_settle-under-test");

/// Short leases and quick retries, so that take-overs happen within a test.
const FAST: [&str; 6] = [
    "--lease-ms",
    "1500",
    "--poll-interval-ms",
    "100",
    "--default-retry-interval-s",
    "1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_killed_during_phase_two_settles_after_restart() -> anyhow::Result<()> {
    settle_tests::init();
    let db = TestDb::mysql().await?;
    let first = SettleProcess::start(BINARY, &db.url, &FAST).await?;
    let p = Participant::start().await?;
    // The first confirm hangs, so the coordinator is killed while it waits for the answer.
    p.delay("confirm", Duration::from_secs(5), 1);
    let client = SettleClient::new(first.api.clone());
    let gid = client.new_gid().await?;
    p.run_tcc(&client, GlobalRequest::new(&gid, "tcc"), 2)
        .await?;
    eventually(
        "the first confirm to arrive",
        Duration::from_secs(10),
        || async { p.arrived("confirm") >= 1 },
    )
    .await?;
    first.kill().await?;

    let second = SettleProcess::start(BINARY, &db.url, &FAST).await?;
    let client = SettleClient::new(second.api.clone());
    assert_eq!(
        client.wait_final(&gid, Duration::from_secs(30)).await?,
        "succeed"
    );
    for branch in ["01", "02"] {
        let ok = p
            .calls()
            .iter()
            .filter(|c| {
                c.params.gid == gid
                    && c.params.branch_id == branch
                    && c.params.op == "confirm"
                    && c.answered == 200
            })
            .count();
        assert!(ok >= 1, "branch {branch} was confirmed");
    }
    assert!(p.answers(&gid, "cancel").is_empty());
    second.kill().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_killed_right_after_submit_settles_after_restart() -> anyhow::Result<()> {
    settle_tests::init();
    let db = TestDb::mysql().await?;
    let first = SettleProcess::start(BINARY, &db.url, &FAST).await?;
    let p = Participant::start().await?;
    // Every confirm fails at first, so the transaction is still unfinished when killed.
    p.fail_first("confirm", 1);
    let client = SettleClient::new(first.api.clone());
    let mut gids = Vec::new();
    for _ in 0..5 {
        let gid = client.new_gid().await?;
        let pc = p.clone();
        client
            .tcc_global(&gid, |tcc| async move {
                tcc.call_branch(
                    &json!({}),
                    &pc.url("try"),
                    &pc.url("confirm"),
                    &pc.url("cancel"),
                )
                .await?;
                Ok(())
            })
            .await?;
        gids.push(gid);
    }
    first.kill().await?;
    let second = SettleProcess::start(BINARY, &db.url, &FAST).await?;
    let client = SettleClient::new(second.api.clone());
    for gid in &gids {
        assert_eq!(
            client.wait_final(gid, Duration::from_secs(30)).await?,
            "succeed",
            "{gid}"
        );
        assert_eq!(p.answers(gid, "confirm").last(), Some(&200));
    }
    second.kill().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_coordinators_on_one_database_confirm_each_branch_exactly_once() -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let config = |id: &str| {
        let mut c = test_config(&db.url);
        c.instance_id = id.to_owned();
        c.poll_interval_ms = 20;
        c
    };
    let a = spawn_coordinator(config("coordinator-a")).await?;
    let b = spawn_coordinator(config("coordinator-b")).await?;
    let p = Participant::start().await?;
    // Each branch's first confirm fails, so its second attempt is claimed by whichever
    // coordinator's scheduler gets there first.
    p.fail_first("confirm", 1);
    let clients = [
        SettleClient::new(a.api_url()),
        SettleClient::new(b.api_url()),
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let client = clients[i % 2].clone();
        let p = p.clone();
        tasks.spawn(async move {
            let gid = client.new_gid().await?;
            p.run_tcc(&client, GlobalRequest::new(&gid, "tcc"), 2)
                .await?;
            anyhow::Ok(gid)
        });
    }
    let mut gids = Vec::new();
    while let Some(r) = tasks.join_next().await {
        gids.push(r??);
    }
    for gid in &gids {
        assert_eq!(
            clients[0].wait_final(gid, Duration::from_secs(30)).await?,
            "succeed"
        );
    }
    let mut per_branch: HashMap<(String, String), Vec<u16>> = HashMap::new();
    for c in p.calls().into_iter().filter(|c| c.params.op == "confirm") {
        per_branch
            .entry((c.params.gid, c.params.branch_id))
            .or_default()
            .push(c.answered);
    }
    assert_eq!(per_branch.len(), 80);
    for (branch, answers) in &per_branch {
        assert_eq!(
            answers,
            &[500, 200],
            "branch {branch:?} was confirmed more than once"
        );
    }
    a.stop().await;
    b.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_whose_clock_is_30_s_fast_does_not_take_over_a_live_lease() -> anyhow::Result<()>
{
    let db = TestDb::mysql().await?;
    let config = |id: &str| {
        let mut c = test_config(&db.url);
        c.instance_id = id.to_owned();
        c.poll_interval_ms = 20;
        c.lease_ms = 3_000;
        c
    };
    let a = spawn_coordinator(config("clock-right")).await?;
    // Leases and due times come from the database's clock, so this instance's wrong clock
    // does not make a live lease look expired to it.
    let b = settle_coordinator::Application::start_with_clock(
        config("clock-30s-fast"),
        settle_coordinator::clock::Clock::system_off_by(30_000),
    )
    .await?;
    let p = Participant::start().await?;
    // Confirms take 2 s, within A's 3 s lease but "long expired" on B's clock.
    p.delay("confirm", Duration::from_millis(2_000), 3);
    let client = SettleClient::new(a.api_url());
    let request = GlobalRequest {
        request_timeout: 5,
        ..GlobalRequest::new("clock-skew", "tcc")
    };
    p.run_tcc(&client, request, 1).await?;
    assert_eq!(
        client
            .wait_final("clock-skew", Duration::from_secs(20))
            .await?,
        "succeed"
    );
    assert_eq!(
        p.arrived("confirm"),
        1,
        "the branch was confirmed by one instance only"
    );
    // And B still drives what is due on the database's clock.
    let via_b = SettleClient::new(b.api_url());
    p.run_tcc(&via_b, GlobalRequest::new("clock-skew-b", "tcc"), 1)
        .await?;
    assert_eq!(
        via_b
            .wait_final("clock-skew-b", Duration::from_secs(20))
            .await?,
        "succeed"
    );
    a.stop().await;
    b.stop().await;
    Ok(())
}

/// What one worker saw before the coordinator died.
#[derive(Default)]
struct Seen {
    /// Prepares answered 200.
    prepared: Vec<String>,
    /// Submits answered 200.
    submitted: Vec<String>,
    /// Registrations after submit answered 409.
    refused: Vec<String>,
}

async fn post(
    http: &reqwest::Client,
    api: &str,
    route: &str,
    body: &serde_json::Value,
) -> Option<u16> {
    let r = http
        .post(format!("{api}/{route}"))
        .json(body)
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    r.text().await.ok()?;
    Some(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_killed_with_batches_in_flight_keeps_exactly_what_it_answered(
) -> anyhow::Result<()> {
    settle_tests::init();
    let db = TestDb::mysql().await?;
    let first = SettleProcess::start(BINARY, &db.url, &FAST).await?;
    let http = reqwest::Client::new();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..32 {
        let (http, api) = (http.clone(), first.api.clone());
        workers.spawn(async move {
            let mut seen = Seen::default();
            for i in 0.. {
                let gid = format!("kill-{w}-{i}");
                let global = json!({"gid": gid, "trans_type": "tcc"});
                match post(&http, &api, "prepare", &global).await {
                    Some(200) => seen.prepared.push(gid.clone()),
                    Some(_) => continue,
                    None => break,
                }
                match post(&http, &api, "submit", &global).await {
                    Some(200) => seen.submitted.push(gid.clone()),
                    Some(_) => continue,
                    None => break,
                }
                let late = json!({
                    "gid": gid, "trans_type": "tcc", "branch_id": "01", "data": "{}",
                    "confirm": "http://127.0.0.1:9/c", "cancel": "http://127.0.0.1:9/x",
                });
                match post(&http, &api, "registerBranch", &late).await {
                    Some(409) => seen.refused.push(gid),
                    Some(_) => {}
                    None => break,
                }
            }
            seen
        });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.kill().await?;
    let mut seen = Seen::default();
    while let Some(r) = workers.join_next().await {
        let s = r?;
        seen.prepared.extend(s.prepared);
        seen.submitted.extend(s.submitted);
        seen.refused.extend(s.refused);
    }
    assert!(
        seen.submitted.len() > 50,
        "the load ran: {} submitted",
        seen.submitted.len()
    );

    let second = SettleProcess::start(BINARY, &db.url, &FAST).await?;
    let client = SettleClient::new(second.api.clone());
    for gid in &seen.prepared {
        assert!(
            client.status(gid).await?.is_some(),
            "{gid} was answered 200 to prepare, so it is stored"
        );
    }
    for gid in &seen.submitted {
        assert_eq!(
            client.wait_final(gid, Duration::from_secs(30)).await?,
            "succeed",
            "{gid} was answered 200 to submit"
        );
    }
    for gid in &seen.refused {
        assert!(
            client.query(gid).await?.branches.is_empty(),
            "{gid}: a refused registration wrote nothing"
        );
    }
    second.kill().await?;
    Ok(())
}

/// A saga's `submit` body: step `i` goes to `/a{i}` and `/c{i}` of `p`.
fn saga(gid: &str, p: &Participant, steps: usize) -> serde_json::Value {
    json!({
        "gid": gid,
        "trans_type": "saga",
        "steps": (0..steps)
            .map(|i| json!({"action": p.url(&format!("a{i}")), "compensate": p.url(&format!("c{i}"))}))
            .collect::<Vec<_>>(),
        "payloads": (0..steps).map(|i| json!({"n": i}).to_string()).collect::<Vec<_>>(),
    })
}

/// When `route` of `gid` first answered 200, if it did.
fn first_success(p: &Participant, gid: &str, route: &str) -> Option<std::time::Instant> {
    p.calls()
        .into_iter()
        .filter(|c| c.params.gid == gid && c.route == route && c.answered == 200)
        .map(|c| c.at)
        .min()
}

/// Every call of `later` for `gid` arrived after `earlier` had answered 200.
fn in_order(p: &Participant, gid: &str, earlier: &str, later: &str) {
    let done = first_success(p, gid, earlier).expect("the earlier step succeeded");
    for c in p.calls() {
        if c.params.gid == gid && c.route == later {
            assert!(c.at > done, "{later} ran before {earlier} succeeded");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_killed_in_the_middle_of_a_sagas_actions_is_taken_over_in_order(
) -> anyhow::Result<()> {
    settle_tests::init();
    let db = TestDb::mysql().await?;
    let first = SettleProcess::start(BINARY, &db.url, &FAST).await?;
    let second = SettleProcess::start(BINARY, &db.url, &FAST).await?;
    let p = Participant::start().await?;
    // The second action hangs, so the first instance is killed while it waits for it.
    p.delay("a1", Duration::from_secs(5), 1);
    let http = reqwest::Client::new();
    assert_eq!(
        post(&http, &first.api, "submit", &saga("s-kill", &p, 3)).await,
        Some(200)
    );
    eventually(
        "the second action to arrive",
        Duration::from_secs(10),
        || async { p.arrived("a1") >= 1 },
    )
    .await?;
    first.kill().await?;
    // The other instance takes it over once the lease runs out.
    let client = SettleClient::new(second.api.clone());
    assert_eq!(
        client.wait_final("s-kill", Duration::from_secs(30)).await?,
        "succeed"
    );
    in_order(&p, "s-kill", "a0", "a1");
    in_order(&p, "s-kill", "a1", "a2");
    assert!(p.answers("s-kill", "compensate").is_empty());
    second.kill().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_killed_in_the_middle_of_a_sagas_compensation_finishes_it_in_reverse(
) -> anyhow::Result<()> {
    settle_tests::init();
    let db = TestDb::mysql().await?;
    let first = SettleProcess::start(BINARY, &db.url, &FAST).await?;
    let p = Participant::start().await?;
    // The last step fails; the compensation of the one before it hangs, and the instance is
    // killed while it waits.
    p.script("a3", &[409]);
    p.delay("c2", Duration::from_secs(5), 1);
    let http = reqwest::Client::new();
    assert_eq!(
        post(&http, &first.api, "submit", &saga("c-kill", &p, 4)).await,
        Some(200)
    );
    eventually(
        "a compensation to hang",
        Duration::from_secs(10),
        || async { p.arrived("c2") >= 1 },
    )
    .await?;
    first.kill().await?;
    let second = SettleProcess::start(BINARY, &db.url, &FAST).await?;
    let client = SettleClient::new(second.api.clone());
    assert_eq!(
        client.wait_final("c-kill", Duration::from_secs(30)).await?,
        "failed"
    );
    let failed = p
        .calls()
        .into_iter()
        .find(|c| c.params.gid == "c-kill" && c.route == "a3")
        .map(|c| c.at)
        .expect("the failing action was called");
    assert!(p
        .calls()
        .iter()
        .filter(|c| c.params.gid == "c-kill" && c.route.starts_with('c'))
        .all(|c| c.at > failed));
    for (earlier, later) in [("c3", "c2"), ("c2", "c1"), ("c1", "c0")] {
        in_order(&p, "c-kill", earlier, later);
    }
    second.kill().await?;
    Ok(())
}
