//! The fault proxy itself: each toxic does what its Toxiproxy namesake does, on one
//! direction only when asked, and a disabled proxy cuts and refuses connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use settle_tests::proxy::{FaultProxy, Stream, Toxic};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An echo server that counts the bytes it received.
async fn echo() -> anyhow::Result<(SocketAddr, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let received = Arc::new(AtomicUsize::new(0));
    let count = received.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    count.fetch_add(n, Ordering::SeqCst);
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok((addr, received))
}

/// A server that writes `hello` and closes.
async fn greeter() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(b"hello").await;
        }
    });
    Ok(addr)
}

/// Reads exactly `n` bytes within `within`.
async fn read_n(s: &mut TcpStream, n: usize, within: Duration) -> anyhow::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(within, s.read_exact(&mut buf)).await??;
    Ok(buf)
}

/// Reads until end of stream or error within `within`: the bytes, and how it ended.
async fn read_to_end(s: &mut TcpStream, within: Duration) -> (Vec<u8>, Option<std::io::ErrorKind>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    loop {
        let left = within.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) => return (out, None),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (out, Some(e.kind())),
            Err(_) => return (out, Some(std::io::ErrorKind::TimedOut)),
        }
    }
}

#[tokio::test]
async fn bytes_pass_both_ways_and_latency_delays_them() -> anyhow::Result<()> {
    let (server, _) = echo().await?;
    let proxy = FaultProxy::start(&server.to_string()).await?;
    let mut s = TcpStream::connect(proxy.addr()).await?;
    s.write_all(b"ping").await?;
    assert_eq!(read_n(&mut s, 4, Duration::from_secs(2)).await?, b"ping");

    proxy.add(
        "slow",
        Stream::Downstream,
        Toxic::Latency {
            latency: Duration::from_millis(300),
            jitter: Duration::from_millis(50),
        },
    );
    let start = Instant::now();
    s.write_all(b"pong").await?;
    assert_eq!(read_n(&mut s, 4, Duration::from_secs(2)).await?, b"pong");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");

    proxy.remove("slow");
    let start = Instant::now();
    s.write_all(b"fast").await?;
    read_n(&mut s, 4, Duration::from_secs(2)).await?;
    assert!(
        start.elapsed() < Duration::from_millis(200),
        "{:?}",
        start.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn bandwidth_limits_the_rate() -> anyhow::Result<()> {
    let (server, received) = echo().await?;
    let proxy = FaultProxy::start(&server.to_string()).await?;
    proxy.add("narrow", Stream::Upstream, Toxic::Bandwidth { rate: 100 });
    let mut s = TcpStream::connect(proxy.addr()).await?;
    let start = Instant::now();
    s.write_all(&vec![7u8; 50_000]).await?;
    read_n(&mut s, 50_000, Duration::from_secs(5)).await?;
    // 50 KB at 100 KB/s: half a second.
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert_eq!(received.load(Ordering::SeqCst), 50_000);
    Ok(())
}

#[tokio::test]
async fn a_timeout_on_one_direction_cuts_only_that_direction() -> anyhow::Result<()> {
    let (server, received) = echo().await?;
    let proxy = FaultProxy::start(&server.to_string()).await?;
    let mut s = TcpStream::connect(proxy.addr()).await?;
    proxy.add(
        "hole",
        Stream::Downstream,
        Toxic::Timeout {
            timeout: Duration::ZERO,
        },
    );
    s.write_all(b"into the void").await?;
    // The server gets it; its answer is swallowed.
    let start = Instant::now();
    while received.load(Ordering::SeqCst) < 13 && start.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(received.load(Ordering::SeqCst), 13);
    assert!(read_n(&mut s, 1, Duration::from_millis(300)).await.is_err());
    proxy.remove("hole");
    s.write_all(b"back").await?;
    assert_eq!(read_n(&mut s, 4, Duration::from_secs(2)).await?, b"back");

    // With a timeout, the black hole closes the connection when it runs out.
    proxy.add(
        "hole",
        Stream::Upstream,
        Toxic::Timeout {
            timeout: Duration::from_millis(300),
        },
    );
    s.write_all(b"lost").await?;
    let start = Instant::now();
    let (got, _) = read_to_end(&mut s, Duration::from_secs(3)).await;
    assert!(got.is_empty(), "{got:?}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(received.load(Ordering::SeqCst), 17);
    Ok(())
}

#[tokio::test]
async fn reset_peer_resets_the_connection() -> anyhow::Result<()> {
    let (server, _) = echo().await?;
    let proxy = FaultProxy::start(&server.to_string()).await?;
    let mut s = TcpStream::connect(proxy.addr()).await?;
    s.write_all(b"hi").await?;
    read_n(&mut s, 2, Duration::from_secs(2)).await?;
    proxy.add(
        "reset",
        Stream::Upstream,
        Toxic::ResetPeer {
            timeout: Duration::from_millis(100),
        },
    );
    let (_, how) = read_to_end(&mut s, Duration::from_secs(3)).await;
    assert_eq!(how, Some(std::io::ErrorKind::ConnectionReset));
    Ok(())
}

#[tokio::test]
async fn limit_data_closes_after_so_many_bytes() -> anyhow::Result<()> {
    let (server, _) = echo().await?;
    let proxy = FaultProxy::start(&server.to_string()).await?;
    proxy.add("cap", Stream::Downstream, Toxic::LimitData { bytes: 10 });
    let mut s = TcpStream::connect(proxy.addr()).await?;
    s.write_all(b"0123456789abcdef").await?;
    let (got, how) = read_to_end(&mut s, Duration::from_secs(3)).await;
    assert_eq!(got, b"0123456789");
    assert_ne!(how, Some(std::io::ErrorKind::TimedOut));
    Ok(())
}

#[tokio::test]
async fn slow_close_delays_the_close() -> anyhow::Result<()> {
    let server = greeter().await?;
    let proxy = FaultProxy::start(&server.to_string()).await?;
    let mut plain = TcpStream::connect(proxy.addr()).await?;
    let start = Instant::now();
    let (got, _) = read_to_end(&mut plain, Duration::from_secs(3)).await;
    assert_eq!(got, b"hello");
    assert!(start.elapsed() < Duration::from_millis(300));

    proxy.add(
        "linger",
        Stream::Downstream,
        Toxic::SlowClose {
            delay: Duration::from_millis(500),
        },
    );
    let mut slow = TcpStream::connect(proxy.addr()).await?;
    let start = Instant::now();
    let (got, _) = read_to_end(&mut slow, Duration::from_secs(3)).await;
    assert_eq!(got, b"hello");
    assert!(
        start.elapsed() >= Duration::from_millis(450),
        "{:?}",
        start.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn a_disabled_proxy_cuts_and_refuses_connections_until_enabled() -> anyhow::Result<()> {
    let (server, _) = echo().await?;
    let proxy = FaultProxy::start(&server.to_string()).await?;
    let mut open = TcpStream::connect(proxy.addr()).await?;
    open.write_all(b"x").await?;
    read_n(&mut open, 1, Duration::from_secs(2)).await?;
    proxy.disable();
    let (_, how) = read_to_end(&mut open, Duration::from_secs(2)).await;
    assert_ne!(
        how,
        Some(std::io::ErrorKind::TimedOut),
        "the open connection is cut"
    );
    let mut refused = TcpStream::connect(proxy.addr()).await?;
    let (got, how) = read_to_end(&mut refused, Duration::from_secs(2)).await;
    assert!(got.is_empty());
    assert_ne!(
        how,
        Some(std::io::ErrorKind::TimedOut),
        "a new one is closed at once"
    );
    proxy.enable();
    let mut again = TcpStream::connect(proxy.addr()).await?;
    again.write_all(b"y").await?;
    assert_eq!(read_n(&mut again, 1, Duration::from_secs(2)).await?, b"y");
    Ok(())
}
