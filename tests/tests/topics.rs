//! Topics on the coordinator's own store: a msg to `topic://NAME` reaches every subscriber
//! at once, so one that is down does not hold back the others; what subscribes is checked
//! like every URL the coordinator calls. (DTM's Python client runs topics too, in
//! `dtmcli.rs`.)

use std::time::Duration;

use serde_json::{json, Value};
use settle_tests::{eventually, spawn_coordinator, test_config, Participant, TestSqlite};

async fn get(http: &reqwest::Client, url: String) -> anyhow::Result<(u16, String)> {
    let r = http.get(url).send().await?;
    Ok((r.status().as_u16(), r.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_that_is_down_does_not_hold_back_the_others() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let api = app.api_url();
    let http = reqwest::Client::new();
    let p = Participant::start().await?;
    p.fail_first("down", usize::MAX);
    for route in ["down", "up"] {
        let (status, text) = get(
            &http,
            format!("{api}/subscribe?topic=orders&url={}", p.url(route)),
        )
        .await?;
        assert_eq!(status, 200, "{text}");
    }
    let msg = json!({
        "gid": "fan", "trans_type": "msg",
        "steps": [{"action": "topic://orders"}, {"action": p.url("after")}],
        "payloads": [r#"{"order":1}"#, "{}"],
    });
    let r = http.post(format!("{api}/submit")).json(&msg).send().await?;
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await?);
    eventually(
        "the live subscriber to get it",
        Duration::from_secs(10),
        || async { p.answered("fan", "01-02", "action", 200) == 1 },
    )
    .await?;
    eventually(
        "the dead one to be tried again",
        Duration::from_secs(10),
        || async {
            p.answers("fan", "action")
                .iter()
                .filter(|s| **s == 500)
                .count()
                >= 2
        },
    )
    .await?;
    let q: Value = http
        .get(format!("{api}/query?gid=fan"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(q["transaction"]["status"], "submitted");
    assert_eq!(
        p.arrived("after"),
        0,
        "the next step waits for every subscriber of the one before"
    );
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_subscribes_is_checked_and_nothing_is_stored_when_it_is_refused() -> anyhow::Result<()>
{
    let db = TestSqlite::new();
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let api = app.api_url();
    let http = reqwest::Client::new();
    for (query, status, words) in [
        ("topic=&url=http://127.0.0.1:9/a", 400, "empty topic"),
        ("topic=t&url=", 400, "empty url"),
        (
            "topic=a%2Fb&url=http://127.0.0.1:9/a",
            400,
            "is not a topic name",
        ),
        ("topic=t&url=ftp://127.0.0.1/a", 400, "scheme 'ftp'"),
        ("topic=t&url=http://10.1.2.3/a", 403, "10.1.2.3"),
    ] {
        let (got, text) = get(&http, format!("{api}/subscribe?{query}")).await?;
        assert_eq!(got, status, "{query}: {text}");
        assert!(
            text.contains(words),
            "{query}: expected '{words}' in {text}"
        );
    }
    let (_, text) = get(&http, format!("{api}/queryKV?cat=topics")).await?;
    assert_eq!(serde_json::from_str::<Value>(&text)?, json!({"kv": []}));
    let (status, text) = get(&http, format!("{api}/scanKV?cat=topics&position=nope")).await?;
    assert_eq!(status, 400, "{text}");
    app.stop().await;
    Ok(())
}
