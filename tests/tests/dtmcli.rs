//! Compatibility with DTM's clients: the real Python `dtmcli` package (from PyPI) runs
//! against Settle unchanged. TCC: a passing transfer, a failing Try that cancels, and
//! participants using dtmcli's own barrier on MySQL. Messages: prepare/submit,
//! `do_and_submit_db` with dtmcli's barrier, and check-backs answered by its
//! `query_prepared`. Sagas: a transfer with dtmcli's barrier, a failing action compensated in
//! reverse order, an action retried after an error, and `wait_result`. Topics: subscribe,
//! unsubscribe, delete and the key-value reads over raw HTTP as a DTM user sends them, and
//! dtmcli messages to `topic://NAME` fanned out to the subscribers.
//!
//! The Python interpreter is `SETTLE_PYTHON` (set by `deploy/test.sh` to a virtualenv with
//! `tests/compat/requirements.txt` installed), else `python3`.

use std::path::Path;

use settle_sdk::BarrierTable;
use settle_tests::{mysql_server_url, spawn_coordinator, test_config, TestDb, TestSqlite};

fn python() -> String {
    std::env::var("SETTLE_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Runs a compatibility script against a fresh coordinator storing its state in MySQL and
/// checks its closing line.
async fn run_script(script: &str, closing: &str) -> anyhow::Result<()> {
    run_script_on(script, closing, false).await
}

/// [`run_script`] with the coordinator's state in MySQL or, with `sqlite`, in an SQLite
/// file (the participants' business tables and barrier stay in MySQL).
async fn run_script_on(script: &str, closing: &str, sqlite: bool) -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let store = TestSqlite::new();
    let app = spawn_coordinator(test_config(if sqlite { &store.url } else { &db.url })).await?;
    // dtmcli's barrier writes to DTM's default table, dtm_barrier.barrier.
    BarrierTable::default().create(&db.pool().await?).await?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("compat")
        .join(script);
    let output = tokio::process::Command::new(python())
        .arg(&script)
        .env("SETTLE_API", app.api_url())
        .env("MYSQL_URL", mysql_server_url())
        .env("BUSI_DB", &db.name)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} failed ({}); is dtmcli installed for {}? deploy/test.sh installs it.\nstdout:\n{stdout}\nstderr:\n{stderr}",
        script.display(),
        output.status,
        python()
    );
    assert!(stdout.contains(closing), "{stdout}");
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dtmcli_runs_tcc_against_settle_unchanged() -> anyhow::Result<()> {
    run_script("dtmcli_tcc.py", "dtmcli TCC compatibility: OK").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dtmcli_sends_transactional_messages_through_settle_unchanged() -> anyhow::Result<()> {
    run_script("dtmcli_msg.py", "dtmcli msg compatibility: OK").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dtmcli_runs_sagas_against_settle_unchanged_on_mysql() -> anyhow::Result<()> {
    run_script_on("dtmcli_saga.py", "dtmcli saga compatibility: OK", false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dtmcli_runs_sagas_against_settle_unchanged_on_sqlite() -> anyhow::Result<()> {
    run_script_on("dtmcli_saga.py", "dtmcli saga compatibility: OK", true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dtm_topics_fan_dtmcli_messages_out_to_subscribers_on_mysql() -> anyhow::Result<()> {
    run_script_on("dtmcli_topics.py", "dtmcli topics compatibility: OK", false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dtm_topics_fan_dtmcli_messages_out_to_subscribers_on_sqlite() -> anyhow::Result<()> {
    run_script_on("dtmcli_topics.py", "dtmcli topics compatibility: OK", true).await
}
