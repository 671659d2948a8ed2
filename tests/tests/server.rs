//! The HTTP server's own limits: slow or idle connections are closed, and no more than
//! `max_http_connections` are open at once, and a connection whose request was refused
//! unread is closed with notice.

use std::time::{Duration, Instant};

use settle_tests::{spawn_coordinator, test_config, TestSqlite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (or `within` passes); returns when it did.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((start + within).into(), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn idle_and_slow_connections_are_closed_after_the_header_timeout() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let mut config = test_config(&db.url);
    config.http_header_timeout_ms = 300;
    let app = spawn_coordinator(config).await?;

    let mut idle = TcpStream::connect(app.address()).await?;
    let closed = closed_within(&mut idle, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "an idle connection is closed");

    // Headers dripped a byte at a time never finish: the deadline is from the start.
    let mut slow = TcpStream::connect(app.address()).await?;
    slow.write_all(b"GET /api/dtmsvr/version HTTP/1.1\r\nHost: x\r\n")
        .await?;
    let start = Instant::now();
    let mut cut = false;
    while start.elapsed() < Duration::from_secs(3) {
        if slow.write_all(b"X").await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = [0u8; 256];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await
        {
            cut = true;
            break;
        }
    }
    assert!(cut, "a connection dripping its headers is closed");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );

    // A connection that answers in time is served, and kept alive for the next request.
    let mut ok = TcpStream::connect(app.address()).await?;
    ok.write_all(b"GET /api/dtmsvr/version HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let mut buf = vec![0u8; 4096];
    let n = ok.read(&mut buf).await?;
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_and_room_comes_back() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let mut config = test_config(&db.url);
    config.max_http_connections = 2;
    config.http_header_timeout_ms = 20_000;
    let app = spawn_coordinator(config).await?;
    let api = app.api_url();
    let first = TcpStream::connect(app.address()).await?;
    let _second = TcpStream::connect(app.address()).await?;
    // Let the server accept both.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(app.address()).await?;
    let closed = closed_within(&mut third, Duration::from_secs(3)).await;
    assert!(closed.is_some(), "the third connection is closed at once");
    drop(first);
    // Room comes back once a connection ends.
    let http = reqwest::Client::new();
    let mut served = false;
    for _ in 0..50 {
        if let Ok(r) = http.get(format!("{api}/version")).send().await {
            served = r.status().is_success();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "a new connection is served once one closed");
    app.stop().await;
    Ok(())
}

/// Sends one request on `stream` and reads its whole answer (headers and a body of the
/// announced length), in lower case.
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> anyhow::Result<String> {
    stream.write_all(request).await?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).to_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap_or(0));
            if n == 0 || answer.len() >= end + 4 + length {
                return Ok(text);
            }
        } else if n == 0 {
            return Ok(text);
        }
    }
}

#[tokio::test]
async fn a_request_refused_before_its_body_was_read_closes_its_connection() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let mut config = test_config(&db.url);
    config.body_limit_bytes = 256 * 1024;
    let app = spawn_coordinator(config).await?;

    // A body read to its end leaves the connection open for the next request.
    let mut kept = TcpStream::connect(app.address()).await?;
    let body = r#"{"gid":"keep-1","trans_type":"tcc"}"#;
    let answer = exchange(
        &mut kept,
        format!("POST /api/dtmsvr/prepare HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes(),
    )
    .await?;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(!answer.contains("connection: close"), "{answer}");

    // A body over the limit is refused before all of it was read: the answer says the
    // connection closes, so a keep-alive client does not send its next request into it.
    let part = "x".repeat(300 * 1024);
    let answer = exchange(
        &mut kept,
        format!("POST /api/dtmsvr/prepare HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{part}", 1 << 20).as_bytes(),
    )
    .await?;
    assert!(answer.starts_with("http/1.1 413"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(
        closed_within(&mut kept, Duration::from_secs(3))
            .await
            .is_some(),
        "the server closes the connection it said it would"
    );

    // A pooled client alternating refused and accepted requests never meets a closed socket.
    let big = "x".repeat(300 * 1024);
    let http = reqwest::Client::new();
    let api = app.api_url();
    for i in 0..200 {
        let refused = http
            .post(format!("{api}/prepare"))
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await?;
        assert_eq!(refused.status(), 413, "round {i}");
        let read = http.get(format!("{api}/newGid")).send().await?;
        assert_eq!(read.status(), 200, "round {i}");
    }
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_tell_whether_the_process_and_its_store_are_up() -> anyhow::Result<()> {
    let db = settle_tests::TestDb::mysql().await?;
    // The coordinator reaches MySQL through a gate the test can close.
    let server = settle_tests::mysql_server_url();
    let host = server.trim_start_matches("mysql://");
    let host = host
        .rsplit('@')
        .next()
        .unwrap_or(host)
        .trim_end_matches('/');
    let gate = settle_tests::proxy::FaultProxy::start(host).await?;
    let url = db.url.replacen(host, &gate.addr().to_string(), 1);
    let mut config = test_config(&url);
    config.max_connections = 2;
    let app = spawn_coordinator(config).await?;
    let http = reqwest::Client::new();
    let base = format!("http://{}", app.address());
    let ping: serde_json::Value = http
        .post(format!("{base}/api/ping"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(ping, serde_json::json!({"msg": "pong"}));
    let get = |path: &'static str| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let r = http.get(format!("{base}{path}")).send().await?;
            anyhow::Ok((r.status().as_u16(), r.text().await?))
        }
    };
    assert_eq!(get("/livez").await?.0, 200);
    assert_eq!(get("/readyz").await?.0, 200);
    gate.disable();
    let (status, body) = get("/readyz").await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store"), "{body}");
    assert_eq!(get("/livez").await?.0, 200, "alive, though not ready");
    gate.enable();
    settle_tests::eventually("ready again", Duration::from_secs(15), || async {
        get("/readyz").await.is_ok_and(|(s, _)| s == 200)
    })
    .await?;
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_instance_hands_its_leases_back_for_another_to_take_over_at_once(
) -> anyhow::Result<()> {
    let db = settle_tests::TestDb::mysql().await?;
    let config = |id: &str| {
        let mut c = test_config(&db.url);
        c.instance_id = id.to_owned();
        // Long leases: without the hand-back, the survivor would wait 30 s.
        c.lease_ms = 30_000;
        c.shutdown_grace_ms = 300;
        c
    };
    let a = spawn_coordinator(config("stopping")).await?;
    let p = settle_tests::Participant::start().await?;
    // The first confirm hangs past A's grace period.
    p.delay("confirm", Duration::from_secs(4), 1);
    let client = settle_sdk::SettleClient::new(a.api_url());
    let request = settle_protocol::GlobalRequest {
        request_timeout: 10,
        ..settle_protocol::GlobalRequest::new("handed-back", "tcc")
    };
    p.run_tcc(&client, request, 1).await?;
    settle_tests::eventually("the confirm to start", Duration::from_secs(5), || async {
        p.arrived("confirm") == 1
    })
    .await?;
    let started = Instant::now();
    a.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stop waited {:?}",
        started.elapsed()
    );
    let b = spawn_coordinator(config("survivor")).await?;
    let survivor = settle_sdk::SettleClient::new(b.api_url());
    assert_eq!(
        survivor
            .wait_final("handed-back", Duration::from_secs(15))
            .await?,
        "succeed"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    b.stop().await;
    Ok(())
}
