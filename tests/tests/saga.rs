//! Sagas end to end over DTM's wire: a real coordinator (in process, on a fresh MySQL
//! database or SQLite file), participant services that script their answers, and raw
//! `submit` requests as DTM's clients send them.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use settle_sdk::SettleClient;
use settle_tests::{spawn_coordinator, test_config, Call, Participant, TestDb, TestSqlite};

const SETTLE: Duration = Duration::from_secs(20);

/// A saga's `submit` body: step `i` goes to `/a{i}` and `/c{i}` of `p`.
fn saga(gid: &str, p: &Participant, steps: usize) -> Value {
    json!({
        "gid": gid,
        "trans_type": "saga",
        "steps": (0..steps)
            .map(|i| json!({"action": p.url(&format!("a{i}")), "compensate": p.url(&format!("c{i}"))}))
            .collect::<Vec<_>>(),
        "payloads": (0..steps).map(|i| json!({"n": i}).to_string()).collect::<Vec<_>>(),
    })
}

struct Api {
    http: reqwest::Client,
    base: String,
    client: SettleClient,
}

impl Api {
    fn new(app: &settle_coordinator::Application) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: app.api_url(),
            client: SettleClient::new(app.api_url()),
        }
    }

    async fn post(&self, route: &str, body: &Value) -> anyhow::Result<(u16, String)> {
        let r = self
            .http
            .post(format!("{}/{route}", self.base))
            .json(body)
            .send()
            .await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    async fn submit(&self, body: &Value) -> anyhow::Result<()> {
        let (status, text) = self.post("submit", body).await?;
        anyhow::ensure!(status == 200, "submit answered {status}: {text}");
        Ok(())
    }

    async fn settled(&self, gid: &str) -> anyhow::Result<String> {
        Ok(self.client.wait_final(gid, SETTLE).await?)
    }

    async fn query(&self, gid: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}/query", self.base))
            .query(&[("gid", gid)])
            .send()
            .await?
            .json()
            .await?)
    }
}

/// The routes of `gid`'s calls that `p` answered, in the order it answered them.
fn routes(p: &Participant, gid: &str) -> Vec<String> {
    p.calls()
        .into_iter()
        .filter(|c| c.params.gid == gid)
        .map(|c| c.route)
        .collect()
}

fn calls_to(p: &Participant, gid: &str, route: &str) -> Vec<Call> {
    p.calls()
        .into_iter()
        .filter(|c| c.params.gid == gid && c.route == route)
        .collect()
}

async fn start(url: &str) -> anyhow::Result<(settle_coordinator::Application, Api, Participant)> {
    let app = spawn_coordinator(test_config(url)).await?;
    let api = Api::new(&app);
    Ok((app, api, Participant::start().await?))
}

async fn a_chain_runs_in_order_and_compensates_in_reverse(url: &str) -> anyhow::Result<()> {
    let (app, api, p) = start(url).await?;
    api.submit(&saga("ok", &p, 3)).await?;
    assert_eq!(api.settled("ok").await?, "succeed");
    assert_eq!(routes(&p, "ok"), ["a0", "a1", "a2"]);
    let first = &calls_to(&p, "ok", "a1")[0];
    assert_eq!(
        (
            first.params.branch_id.as_str(),
            first.params.op.as_str(),
            first.params.trans_type.as_str(),
            first.body.as_str()
        ),
        ("02", "action", "saga", r#"{"n":1}"#)
    );
    let q = api.query("ok").await?;
    let ops: Vec<(String, String, String)> = q["branches"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            (
                b["branch_id"].as_str().unwrap_or_default().to_owned(),
                b["op"].as_str().unwrap_or_default().to_owned(),
                b["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(ops.len(), 6, "{q}");
    assert_eq!(
        ops[..2],
        [
            ("01".into(), "compensate".into(), "prepared".into()),
            ("01".into(), "action".into(), "succeed".into())
        ],
        "DTM's order: compensate then action; an unneeded compensate stays prepared"
    );

    // The third step fails: the second and first are compensated, in reverse, after it.
    p.script("a2", &[409]);
    api.submit(&saga("no", &p, 4)).await?;
    assert_eq!(api.settled("no").await?, "failed");
    assert_eq!(routes(&p, "no"), ["a0", "a1", "a2", "c2", "c1", "c0"]);
    let t = &api.query("no").await?["transaction"];
    let reason = t["rollback_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("action of branch 03 answered failure: HTTP 409"),
        "{reason}"
    );
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chain_runs_in_order_and_compensates_in_reverse_on_mysql() -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    a_chain_runs_in_order_and_compensates_in_reverse(&db.url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chain_runs_in_order_and_compensates_in_reverse_on_sqlite() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    a_chain_runs_in_order_and_compensates_in_reverse(&db.url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dag_runs_steps_after_their_predecessors_and_compensates_back_along_it(
) -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let (app, api, p) = start(&db.url).await?;
    // 0 and 1 at once; 2 after both; 3 after 2.
    let mut body = saga("dag", &p, 4);
    body["custom_data"] = json!(r#"{"orders": {"2": [0, 1], "3": [2]}, "concurrent": true}"#);
    p.delay("a0", Duration::from_millis(300), 1);
    api.submit(&body).await?;
    assert_eq!(api.settled("dag").await?, "succeed");
    let answered = |route: &str| calls_to(&p, "dag", route)[0].at;
    assert!(answered("a2") > answered("a0") && answered("a2") > answered("a1"));
    assert!(answered("a3") > answered("a2"));
    assert!(
        answered("a1") < answered("a0"),
        "1 did not wait for the slow 0"
    );

    // Step 3 fails: 3, then 2 (which depends on 0 and 1), then 0 and 1.
    p.script("a3", &[409]);
    body["gid"] = json!("dag-back");
    api.submit(&body).await?;
    assert_eq!(api.settled("dag-back").await?, "failed");
    let back = routes(&p, "dag-back");
    let sorted = |r: &[String]| {
        let mut r = r.to_vec();
        r.sort();
        r
    };
    assert_eq!(sorted(&back[..2]), ["a0", "a1"], "{back:?}");
    assert_eq!(back[2..6], ["a2", "a3", "c3", "c2"], "{back:?}");
    assert_eq!(sorted(&back[6..]), ["c0", "c1"], "{back:?}");
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steps_in_flight_when_a_saga_turns_are_compensated_too() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let (app, api, p) = start(&db.url).await?;
    // All three at once: 0 succeeds, 1 fails, 2 gives no usable answer (it may have run).
    let mut body = saga("flight", &p, 3);
    body["custom_data"] = json!(r#"{"concurrent": true}"#);
    p.script("a1", &[409]);
    p.script("a2", &[503]);
    api.submit(&body).await?;
    assert_eq!(api.settled("flight").await?, "failed");
    let mut compensated: Vec<String> = routes(&p, "flight")
        .into_iter()
        .filter(|r| r.starts_with('c'))
        .collect();
    compensated.sort();
    assert_eq!(compensated, ["c0", "c1", "c2"]);
    assert_eq!(
        calls_to(&p, "flight", "a2").len(),
        1,
        "not run again once the saga turned"
    );
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_compensate_is_retried_until_it_succeeds() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let (app, api, p) = start(&db.url).await?;
    p.script("a1", &[409]);
    p.script("c0", &[409, 500, 409]);
    api.submit(&saga("undo", &p, 2)).await?;
    assert_eq!(api.settled("undo").await?, "failed");
    let answers: Vec<u16> = calls_to(&p, "undo", "c0")
        .into_iter()
        .map(|c| c.answered)
        .collect();
    assert_eq!(answers, [409, 500, 409, 200]);
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_action_that_errors_is_retried_and_past_its_retry_limit_the_saga_compensates(
) -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let (app, api, p) = start(&db.url).await?;
    p.script("a0", &[500, 503]);
    api.submit(&saga("again", &p, 1)).await?;
    assert_eq!(api.settled("again").await?, "succeed");
    assert_eq!(calls_to(&p, "again", "a0").len(), 3);

    // Every try errors: two retries, each after the retry interval, then compensation.
    p.script("a0", &[500; 10]);
    let mut body = saga("limit", &p, 1);
    body["retry_limit"] = json!(2);
    body["retry_interval"] = json!(1);
    let started = Instant::now();
    api.submit(&body).await?;
    assert_eq!(api.settled("limit").await?, "failed");
    let tries = calls_to(&p, "limit", "a0");
    assert_eq!(tries.len(), 3, "the first try and two retries");
    for pair in tries.windows(2) {
        let pause = pair[1].at - pair[0].at;
        assert!(
            pause >= Duration::from_millis(700),
            "retries wait the interval (less a fifth of jitter), not {pause:?}"
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(1400));
    assert_eq!(
        calls_to(&p, "limit", "c0").len(),
        1,
        "the erroring step is undone"
    );
    let t = &api.query("limit").await?["transaction"];
    assert_eq!(
        t["rollback_reason"],
        "RetryCount is greater than RetryLimit, RetryLimit: 2"
    );
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_saga_still_running_at_its_timeout_is_compensated() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let (app, api, p) = start(&db.url).await?;
    // The second step keeps answering "not yet".
    p.script("a1", &[425; 40]);
    let mut body = saga("late", &p, 2);
    body["timeout_to_fail"] = json!(2);
    api.submit(&body).await?;
    assert_eq!(api.settled("late").await?, "failed");
    assert_eq!(
        api.query("late").await?["transaction"]["rollback_reason"],
        "Timeout after 2 seconds"
    );
    let undone: Vec<String> = routes(&p, "late")
        .into_iter()
        .filter(|r| r.starts_with('c'))
        .collect();
    assert_eq!(undone, ["c1", "c0"]);
    // Without a timeout a saga keeps going: no default applies to it.
    let q = api.query("late").await?;
    assert!(
        q["transaction"]["options"]
            .as_str()
            .is_some_and(|o| o.contains("\"timeout_to_fail\":2")),
        "{q}"
    );
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wait_result_answers_with_the_outcome_and_a_resubmit_changes_nothing() -> anyhow::Result<()>
{
    let db = TestDb::mysql().await?;
    let (app, api, p) = start(&db.url).await?;
    let mut body = saga("wait", &p, 2);
    body["wait_result"] = json!(true);
    let (status, text) = api.post("submit", &body).await?;
    assert_eq!((status, text.contains("SUCCESS")), (200, true), "{text}");
    assert_eq!(api.query("wait").await?["transaction"]["status"], "succeed");
    // Submitting it again is a duplicate: nothing runs twice.
    api.submit(&body).await?;
    assert_eq!(calls_to(&p, "wait", "a0").len(), 1);

    p.script("a1", &[409]);
    body["gid"] = json!("wait-no");
    let (status, text) = api.post("submit", &body).await?;
    assert_eq!(status, 409, "{text}");
    assert!(
        text.contains("FAILURE") && text.contains("answered failure"),
        "{text}"
    );

    // A saga cannot be aborted or prepared; it can be stopped.
    let (status, text) = api
        .post("abort", &json!({"gid": "wait-no", "trans_type": "saga"}))
        .await?;
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("cannot be aborted"), "{text}");
    p.script("a0", &[425; 100]);
    api.submit(&saga("stop", &p, 1)).await?;
    let (status, text) = api.post("forceStop", &json!({"gid": "stop"})).await?;
    assert_eq!(status, 200, "{text}");
    assert_eq!(api.settled("stop").await?, "failed");
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_a_saga_carries_go_out_only_once_it_succeeded() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let (app, api, p) = start(&db.url).await?;
    for (gid, fails) in [("sent", false), ("held", true)] {
        let mut body = saga(gid, &p, 2);
        body["messages"] = json!([{"action": p.url("event")}]);
        body["message_payloads"] = json!([r#"{"event":"paid"}"#]);
        if fails {
            p.script("a1", &[409]);
        }
        api.submit(&body).await?;
        assert_eq!(
            api.settled(gid).await?,
            if fails { "failed" } else { "succeed" }
        );
    }
    let sent = routes(&p, "sent");
    assert_eq!(sent, ["a0", "a1", "event"], "after every action");
    assert!(!routes(&p, "held").contains(&"event".to_owned()));
    let event = &calls_to(&p, "sent", "event")[0];
    assert_eq!(
        (event.params.branch_id.as_str(), event.body.as_str()),
        ("m01", r#"{"event":"paid"}"#)
    );
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sagas_are_refused_naming_the_problem_and_nothing_is_written() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let (app, api, p) = start(&db.url).await?;
    let cases = [
        (json!({"steps": []}), "at least one step"),
        (
            json!({"steps": [{"action": p.url("a")}], "payloads": ["{}"]}),
            "step 1 of a saga has no compensate URL",
        ),
        (
            json!({"steps": [{"action": p.url("a"), "compensate": p.url("c")}], "payloads": ["{}"], "custom_data": r#"{"orders": {"0": [1]}}"#}),
            "custom_data orders",
        ),
        (
            json!({"steps": [{"action": "ftp://x/y", "compensate": p.url("c")}], "payloads": ["{}"]}),
            "the action of branch 01: 'ftp://x/y' has scheme 'ftp'",
        ),
    ];
    for (i, (extra, words)) in cases.into_iter().enumerate() {
        let mut body = json!({"gid": format!("bad{i}"), "trans_type": "saga"});
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        let (status, text) = api.post("submit", &body).await?;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(words), "expected '{words}' in {text}");
        assert!(api.query(&format!("bad{i}")).await?["transaction"].is_null());
    }
    app.stop().await;
    Ok(())
}
