//! Timeouts tested with tokio's paused clock instead of real waiting.

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use settle_sdk::{SdkError, SettleClient};

/// A coordinator stand-in whose transaction never finishes.
async fn stuck_coordinator() -> anyhow::Result<String> {
    let app = Router::new().route(
        "/api/dtmsvr/query",
        get(|| async { r#"{"transaction":{"gid":"g","trans_type":"tcc","status":"submitted","create_time":"","update_time":""},"branches":[]}"# }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}/api/dtmsvr"))
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_transaction_gives_up_at_its_deadline_without_sleeping() -> anyhow::Result<()>
{
    let client = SettleClient::new(stuck_coordinator().await?);
    let real = std::time::Instant::now();
    let virtual_start = tokio::time::Instant::now();
    let err = client
        .wait_final("g", Duration::from_secs(600))
        .await
        .expect_err("never finishes");
    assert!(matches!(err, SdkError::Ongoing { .. }), "{err}");
    assert!(
        virtual_start.elapsed() >= Duration::from_secs(600),
        "gave up only at the deadline"
    );
    assert!(
        real.elapsed() < Duration::from_secs(30),
        "ten minutes passed on the paused clock, not the wall clock"
    );
    Ok(())
}
