//! The operator commands (`settle txn ...`, `settle outbox ...`, `settle topic ...`) against
//! a running coordinator.

use std::process::Command;

use serde_json::{json, Value};
use settle_coordinator::access::Secret;
use settle_tests::{spawn_coordinator, test_config, Participant, TestSqlite};

/// Runs `settle ARGS` and returns (success, stdout, stderr).
async fn settle(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_settle-under-test"))
            .args(&args)
            .env_remove("SETTLE_TOKEN")
            .output()
            .expect("settle runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("the command finishes")
}

fn args(words: &[&str], server: &str, token: &str) -> Vec<String> {
    let mut a: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
    a.extend([
        "--server".to_owned(),
        server.to_owned(),
        "--token".to_owned(),
        token.to_owned(),
    ]);
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_show_retry_and_stop_transactions_from_a_terminal() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let mut config = test_config(&db.url);
    config.operator_tokens = vec![Secret::new("op-token")];
    let app = spawn_coordinator(config).await?;
    let server = format!("http://{}", app.address());
    let p = Participant::start().await?;
    let http = reqwest::Client::new();
    for gid in ["cli-1", "cli-2"] {
        http.post(format!("{}/prepare", app.api_url()))
            .json(&json!({"gid": gid, "trans_type": "tcc"}))
            .send()
            .await?
            .error_for_status()?;
        http.post(format!("{}/registerBranch", app.api_url()))
            .json(
                &json!({"gid": gid, "trans_type": "tcc", "branch_id": "01", "data": "{}",
                          "confirm": p.url("confirm"), "cancel": p.url("cancel")}),
            )
            .send()
            .await?
            .error_for_status()?;
    }

    let (ok, out, err) = settle(args(&["txn", "list"], &server, "op-token")).await;
    assert!(ok, "{err}");
    let header = out.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("GID ") && header.contains("STATUS"),
        "{out}"
    );
    let row = out
        .lines()
        .find(|l| l.starts_with("cli-1"))
        .unwrap_or_default();
    assert!(row.contains("tcc") && row.contains("prepared"), "{out}");
    let status_col = header.find("STATUS").unwrap_or_default();
    assert_eq!(
        &row[status_col..status_col + 8],
        "prepared",
        "columns align:\n{out}"
    );

    let (ok, out, err) = settle(args(
        &["txn", "list", "--json", "--status", "prepared"],
        &server,
        "op-token",
    ))
    .await;
    assert!(ok, "{err}");
    let page: Value = serde_json::from_str(&out)?;
    assert_eq!(page["transactions"].as_array().map(Vec::len), Some(2));

    let (ok, out, err) = settle(args(&["txn", "show", "cli-1"], &server, "op-token")).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("BRANCH") && out.contains(&p.url("confirm")),
        "{out}"
    );

    let (ok, _, err) = settle(args(
        &["txn", "retry", "cli-1", "cli-2"],
        &server,
        "op-token",
    ))
    .await;
    assert!(ok, "{err}");
    assert!(err.contains("retried 2/2"), "a progress line: {err}");

    let (ok, _, err) = settle(args(
        &["txn", "stop", "cli-1", "--yes"],
        &server,
        "op-token",
    ))
    .await;
    assert!(ok, "{err}");
    let q: Value = http
        .get(format!("{}/query?gid=cli-1", app.api_url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(q["transaction"]["status"], "failed");

    // A wrong token is refused, and says so.
    let (ok, _, err) = settle(args(&["txn", "stop", "cli-2", "--yes"], &server, "wrong")).await;
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, _, err) = settle(args(&["txn", "show", "nope"], &server, "op-token")).await;
    assert!(!ok && err.contains("no transaction 'nope'"), "{err}");
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_the_outbox_and_are_told_when_there_is_nothing_to_redrive(
) -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let server = format!("http://{}", app.address());
    let (ok, out, err) = settle(args(&["outbox", "list", "--status", "dead"], &server, "")).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("GID") && out.contains("REFUSALS"), "{out}");
    let (ok, out, err) = settle(args(&["outbox", "list", "--json"], &server, "")).await;
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out)?["messages"], json!([]));
    let (ok, _, err) = settle(args(&["outbox", "list", "--status", "lost"], &server, "")).await;
    assert!(!ok && err.contains("unknown outbox status 'lost'"), "{err}");
    let (ok, _, err) = settle(args(&["outbox", "redrive", "cli-none"], &server, "")).await;
    assert!(!ok && err.contains("no dead-lettered message"), "{err}");
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_subscribe_list_unsubscribe_and_delete_topics() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let server = format!("http://{}", app.address());
    let run = |words: &[&str]| settle(args(words, &server, ""));
    for url in ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"] {
        let (ok, out, err) = run(&["topic", "subscribe", "orders", url, "--remark", "svc"]).await;
        assert!(ok, "{err}");
        assert!(out.contains("subscribes to orders"), "{out}");
    }
    let (ok, _, err) = run(&["topic", "subscribe", "orders", "http://127.0.0.1:9/a"]).await;
    assert!(!ok && err.contains("this url exists"), "{err}");
    let (ok, out, err) = run(&["topic", "list"]).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("TOPIC") && lines[0].contains("SUBSCRIBER"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("orders")
            && lines[1].contains("http://127.0.0.1:9/a")
            && lines[1].ends_with("svc"),
        "{out}"
    );
    assert_eq!(lines.len(), 3, "{out}");
    let (ok, _, err) = run(&["topic", "unsubscribe", "orders", "http://127.0.0.1:9/a"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = run(&["topic", "unsubscribe", "nothing", "http://127.0.0.1:9/a"]).await;
    assert!(!ok && err.contains("no such a topic"), "{err}");
    let (ok, out, err) = run(&["topic", "list", "--json"]).await;
    assert!(ok, "{err}");
    let page: Value = serde_json::from_str(&out)?;
    assert_eq!(
        serde_json::from_str::<Value>(page["kv"][0]["v"].as_str().unwrap_or_default())?,
        json!([{"url": "http://127.0.0.1:9/b", "remark": "svc"}])
    );
    let (ok, _, err) = run(&["topic", "delete", "orders"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = run(&["topic", "delete", "orders"]).await;
    assert!(!ok && err.contains("no such a topic"), "{err}");
    app.stop().await;
    Ok(())
}
