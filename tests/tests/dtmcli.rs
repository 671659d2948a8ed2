//! Compatibility with DTM's clients: the real Python `dtmcli` package (from PyPI) runs
//! against Settle unchanged. TCC: a passing transfer, a failing Try that cancels, and
//! participants using dtmcli's own barrier on MySQL. Messages: prepare/submit,
//! `do_and_submit_db` with dtmcli's barrier, and check-backs answered by its
//! `query_prepared`.
//!
//! The Python interpreter is `SETTLE_PYTHON` (set by `deploy/test.sh` to a virtualenv with
//! `tests/compat/requirements.txt` installed), else `python3`.

use std::path::Path;

use settle_sdk::BarrierTable;
use settle_tests::{mysql_server_url, spawn_coordinator, test_config, TestDb};

fn python() -> String {
    std::env::var("SETTLE_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Runs a compatibility script against a fresh coordinator and checks its closing line.
async fn run_script(script: &str, closing: &str) -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let app = spawn_coordinator(test_config(&db.url)).await?;
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
