//! The SDK reports what truly became of a transaction when the answer to its submit is lost
//! or says ONGOING: a committed transaction is never reported failed (a caller that retries
//! on error would do the business twice), and it is never aborted behind the caller's back.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::json;
use settle_protocol::GlobalRequest;
use settle_sdk::{Msg, SdkError, SettleClient};
use settle_tests::{spawn_coordinator, test_config, Participant, TestSqlite};

/// A gateway in front of the coordinator that forwards every request but can lose the
/// answers to `submit` (502 after the coordinator handled it) or be down altogether (502
/// without forwarding anything but prepares). Counts the aborts it saw.
#[derive(Clone)]
struct Gateway {
    upstream: String,
    http: reqwest::Client,
    lose_submit_answers: Arc<AtomicBool>,
    down_after_prepare: Arc<AtomicBool>,
    aborts: Arc<AtomicUsize>,
}

async fn forward(State(g): State<Gateway>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let method = request.method().clone();
    if path.ends_with("/abort") {
        g.aborts.fetch_add(1, Ordering::SeqCst);
    }
    if g.down_after_prepare.load(Ordering::SeqCst) && !path.ends_with("/prepare") {
        return (StatusCode::BAD_GATEWAY, "upstream unreachable").into_response();
    }
    let body: Bytes = axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let answer = g
        .http
        .request(method, format!("{}{path}{query}", g.upstream))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    let Ok(answer) = answer else {
        return (StatusCode::BAD_GATEWAY, "upstream unreachable").into_response();
    };
    let status = answer.status().as_u16();
    let text = answer.text().await.unwrap_or_default();
    if path.ends_with("/submit") && g.lose_submit_answers.load(Ordering::SeqCst) {
        return (StatusCode::BAD_GATEWAY, "the answer was lost").into_response();
    }
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
        text,
    )
        .into_response()
}

impl Gateway {
    async fn start(upstream: String) -> anyhow::Result<(Self, String)> {
        let g = Self {
            upstream,
            http: reqwest::Client::new(),
            lose_submit_answers: Arc::default(),
            down_after_prepare: Arc::default(),
            aborts: Arc::default(),
        };
        let app = Router::new().fallback(forward).with_state(g.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((g, format!("http://{addr}")))
    }
}

/// A coordinator, a participant, and an SDK client reaching the coordinator through a
/// [`Gateway`].
struct Behind {
    _db: TestSqlite,
    app: settle_coordinator::Application,
    p: Participant,
    gateway: Gateway,
    client: SettleClient,
}

impl Behind {
    async fn start() -> anyhow::Result<Self> {
        let db = TestSqlite::new();
        let app = spawn_coordinator(test_config(&db.url)).await?;
        let p = Participant::start().await?;
        let (gateway, base) = Gateway::start(format!("http://{}", app.address())).await?;
        let client = SettleClient::new(format!("{base}{}", settle_protocol::API_PREFIX));
        Ok(Self {
            _db: db,
            app,
            p,
            gateway,
            client,
        })
    }
}

#[tokio::test]
async fn a_tcc_whose_submit_answer_is_lost_is_reported_committed_and_not_aborted(
) -> anyhow::Result<()> {
    let Behind {
        _db,
        app,
        p,
        gateway,
        client,
    } = Behind::start().await?;
    gateway.lose_submit_answers.store(true, Ordering::SeqCst);
    p.run_tcc(&client, GlobalRequest::new("sdk-lost", "tcc"), 2)
        .await?;
    assert_eq!(gateway.aborts.load(Ordering::SeqCst), 0);
    let direct = SettleClient::new(app.api_url());
    assert_eq!(
        direct
            .wait_final("sdk-lost", Duration::from_secs(10))
            .await?,
        "succeed"
    );
    assert_eq!(p.arrived("confirm"), 2);
    assert_eq!(p.arrived("cancel"), 0);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_ongoing_wait_result_submit_is_reported_committed() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let p = Participant::start().await?;
    // Confirms take longer than request_timeout: the wait runs out and the coordinator
    // answers ONGOING (425), though the transaction is committed.
    p.delay("confirm", Duration::from_millis(1500), 1);
    let client = SettleClient::new(app.api_url());
    let request = GlobalRequest {
        wait_result: true,
        request_timeout: 1,
        ..GlobalRequest::new("sdk-ongoing", "tcc")
    };
    p.run_tcc(&client, request, 1).await?;
    assert_eq!(
        client
            .wait_final("sdk-ongoing", Duration::from_secs(15))
            .await?,
        "succeed"
    );
    assert_eq!(p.arrived("cancel"), 0);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_msg_whose_submit_answer_is_lost_is_reported_committed() -> anyhow::Result<()> {
    let Behind {
        _db,
        app,
        p,
        gateway,
        client,
    } = Behind::start().await?;
    gateway.lose_submit_answers.store(true, Ordering::SeqCst);
    Msg::new(&client, "sdk-msg")
        .add(&p.url("deliver"), &json!({"n": 1}))?
        .submit()
        .await?;
    let direct = SettleClient::new(app.api_url());
    assert_eq!(
        direct
            .wait_final("sdk-msg", Duration::from_secs(10))
            .await?,
        "succeed"
    );
    assert_eq!(p.arrived("deliver"), 1);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn when_nobody_can_tell_the_sdk_says_so_and_does_not_abort() -> anyhow::Result<()> {
    let Behind {
        _db,
        app,
        p,
        gateway,
        client,
    } = Behind::start().await?;
    let client = client.with_outcome_wait(Duration::from_millis(600));
    let down = gateway.down_after_prepare.clone();
    let result = client
        .tcc_global("sdk-unknown", |_tcc| async move {
            // The coordinator becomes unreachable after the prepare.
            down.store(true, Ordering::SeqCst);
            Ok(())
        })
        .await;
    let err = result.expect_err("no outcome can be known");
    assert!(matches!(err, SdkError::OutcomeUnknown { .. }), "{err}");
    assert!(err.to_string().contains("query its gid later"), "{err}");
    assert_eq!(
        gateway.aborts.load(Ordering::SeqCst),
        0,
        "no abort was sent"
    );
    assert_eq!(p.arrived("cancel"), 0);
    app.stop().await;
    Ok(())
}
