//! Fail points: the real `settle` process, built with the `failpoints` feature, is made to
//! fail at each persist and call boundary (an error, as a lost connection gives there), to
//! crash there (a panic stops the process; it is restarted on the same store) or to stall
//! there. Whatever happens, every transaction ends in one outcome, that outcome agrees with
//! what its initiator was told, its branches follow it, and committed messages arrive.
//!
//! Run with `cargo test -p settle-tests --features failpoints --test failpoints`
//! (`deploy/test.sh` does); the fail points are named in the coordinator's crate docs.

use std::time::Duration;

use serde_json::json;
use settle_protocol::GlobalRequest;
use settle_sdk::{Msg, SdkError, SettleClient};
use settle_tests::{
    eventually, new_topic, rocketmq_namesrv, Collector, Participant, SettleProcess, TestSqlite,
};

const BINARY: &str = env!("CARGO_BIN_EXE_settle-under-test");

/// What a fail point is made to do.
#[derive(Debug, Clone, Copy)]
enum Action {
    /// Fail three times, then pass.
    Error,
    /// Panic once: the process stops.
    Crash,
    /// Stall 1.5 s, three times.
    Stall,
}

impl Action {
    fn spec(self) -> &'static str {
        match self {
            Self::Error => "3*return",
            Self::Crash => "1*panic",
            Self::Stall => "3*delay(1500)",
        }
    }
}

const ACTIONS: [Action; 3] = [Action::Error, Action::Crash, Action::Stall];

fn flags(group: &str) -> Vec<String> {
    [
        "--lease-ms",
        "1500",
        "--poll-interval-ms",
        "100",
        "--delivery-poll-interval-ms",
        "100",
        "--default-retry-interval-s",
        "1",
        "--rocketmq-namesrv",
        &rocketmq_namesrv(),
        "--rocketmq-producer-group",
        group,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// A transaction the workload started, and what its initiator was told.
struct Started {
    gid: String,
    kind: Kind,
    /// `Some(true)`: told it committed; `Some(false)`: told it rolled back; `None`: no
    /// answer (the coordinator was down, or the outcome was left open).
    told: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Tcc,
    Msg,
}

fn told(r: &Result<(), SdkError>) -> Option<bool> {
    match r {
        Ok(()) => Some(true),
        Err(e) if e.leaves_outcome_open() => None,
        Err(SdkError::OutcomeUnknown { .. }) => None,
        Err(_) => Some(false),
    }
}

/// Runs a committed TCC (whose first confirms fail), a TCC whose second Try fails and a
/// message to RocketMQ on the coordinator, with `point` set to `action`, then checks every transaction's outcome on a
/// coordinator that is up (restarted if the fail point stopped it).
async fn survives(point: &str, action: Action) -> anyhow::Result<()> {
    settle_tests::init();
    let db = TestSqlite::new();
    let group = format!("fp-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let flags = flags(&group);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let rules = format!("{point}={}", action.spec());
    let mut settle =
        SettleProcess::start_with_env(BINARY, &db.url, &flags, &[("FAILPOINTS", &rules)]).await?;
    let rmq = settle_rocketmq::Client::new("failpoints")?;
    let topic = new_topic(&rmq, "SettleFp").await?;
    let collector = Collector::start(&rmq, &topic).await?;
    let p = Participant::start().await?;
    let client = SettleClient::new(settle.api.clone()).with_outcome_wait(Duration::from_secs(2));
    let options = |gid: &str, kind: &str| GlobalRequest {
        timeout_to_fail: 3,
        request_timeout: 2,
        retry_interval: 1,
        ..GlobalRequest::new(gid, kind)
    };

    // Each branch's first confirm fails, so phase 2 also runs again from the scheduler.
    p.fail_first("confirm", 1);
    let mut started = Vec::new();
    let tag = &group[3..];
    let gid = format!("fp-commit-{tag}");
    let r = p.run_tcc(&client, options(&gid, "tcc"), 2).await;
    started.push(Started {
        gid,
        kind: Kind::Tcc,
        told: told(&r),
    });
    // The second Try of the next one fails: the SDK aborts it.
    p.script("try", &[200, 409]);
    let gid = format!("fp-abort-{tag}");
    let r = p.run_tcc(&client, options(&gid, "tcc"), 2).await;
    started.push(Started {
        gid,
        kind: Kind::Tcc,
        told: told(&r),
    });
    p.script("try", &[]);
    let gid = format!("fp-msg-{tag}");
    let msg = Msg::with_options(&client, options(&gid, "msg")).add(
        &format!("rocketmq://{topic}?key=k&tag=fp"),
        &json!({"n": 1}),
    )?;
    let r = async {
        let mut msg = msg;
        msg.prepare(&p.url("query")).await?;
        msg.submit().await
    }
    .await;
    started.push(Started {
        gid,
        kind: Kind::Msg,
        told: told(&r),
    });

    if let Action::Crash = action {
        assert!(
            settle.ended_within(Duration::from_secs(20)).await,
            "{point}: the workload reached the fail point, and its panic stopped the process"
        );
        drop(settle);
        settle = SettleProcess::start(BINARY, &db.url, &flags).await?;
    }
    let client = SettleClient::new(settle.api.clone());
    for s in &started {
        check(point, action, &client, &p, &collector, s).await?;
    }
    collector.shutdown().await;
    settle.kill().await?;
    Ok(())
}

/// The transaction ended, as its initiator was told, and its branches and messages agree.
async fn check(
    point: &str,
    action: Action,
    client: &SettleClient,
    p: &Participant,
    collector: &Collector,
    s: &Started,
) -> anyhow::Result<()> {
    let at = format!("{point} ({action:?}), {}", s.gid);
    let status = match client.status(&s.gid).await? {
        None => None,
        Some(_) => Some(client.wait_final(&s.gid, Duration::from_secs(40)).await?),
    };
    match (s.told, status.as_deref()) {
        (Some(true), Some("succeed")) | (Some(false), Some("failed")) | (None, _) => {}
        (told, status) => {
            panic!("{at}: the initiator was told {told:?}, the transaction is {status:?}")
        }
    }
    let confirms = |branch: &str| p.answered(&s.gid, branch, "confirm", 200);
    let cancels = p.answers(&s.gid, "cancel");
    match (s.kind, status.as_deref()) {
        (Kind::Tcc, Some("succeed")) => {
            for branch in ["01", "02"] {
                assert!(confirms(branch) >= 1, "{at}: branch {branch} was confirmed");
            }
            assert!(cancels.is_empty(), "{at}: nothing was cancelled");
        }
        (Kind::Tcc, _) => {
            assert_eq!(
                confirms("01") + confirms("02"),
                0,
                "{at}: nothing was confirmed"
            );
        }
        (Kind::Msg, Some("succeed")) => {
            let prefix = format!("{}-", s.gid);
            eventually(
                &format!("{at}: its message"),
                Duration::from_secs(30),
                || async {
                    collector
                        .distinct_ids()
                        .iter()
                        .any(|id| id.starts_with(&prefix))
                },
            )
            .await?;
        }
        (Kind::Msg, _) => {
            let prefix = format!("{}-", s.gid);
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(
                !collector
                    .distinct_ids()
                    .iter()
                    .any(|id| id.starts_with(&prefix)),
                "{at}: a message that did not commit was delivered"
            );
        }
    }
    Ok(())
}

async fn every_action(point: &str) -> anyhow::Result<()> {
    for action in ACTIONS {
        survives(point, action).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_failing_before_its_commit_loses_nothing_answered() -> anyhow::Result<()> {
    every_action("store::before_commit").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_failing_after_its_commit_keeps_what_it_wrote() -> anyhow::Result<()> {
    every_action("store::after_commit").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_before_a_branch_call_is_retried() -> anyhow::Result<()> {
    every_action("driver::before_call").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_answer_lost_before_it_was_recorded_is_asked_again() -> anyhow::Result<()> {
    every_action("driver::after_answer").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_the_scheduler_claimed_waits_out_the_lease() -> anyhow::Result<()> {
    every_action("scheduler::after_claim").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_the_dispatcher_claimed_waits_out_the_lease() -> anyhow::Result<()> {
    every_action("delivery::after_claim").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_failing_before_the_broker_is_tried_again() -> anyhow::Result<()> {
    every_action("delivery::before_publish").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_acknowledgement_was_lost_is_published_again() -> anyhow::Result<()> {
    every_action("delivery::after_publish").await
}
