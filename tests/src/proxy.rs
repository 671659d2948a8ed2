//! A TCP fault proxy for tests, on loopback: put between the coordinator and what it talks
//! to (participants, MySQL, the broker, Redis), it forwards bytes and injects faults.
//!
//! Faults are named as Toxiproxy names them, so tests read familiar: a [`Toxic`] applies to
//! one [`Stream`] (`Upstream`: client to server; `Downstream`: server to client) and takes
//! effect at once, on open connections as on new ones, until removed. [`FaultProxy::disable`]
//! is Toxiproxy's `enabled = false`: every connection is cut and new ones are refused.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// A direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// From the client, through the proxy, to the server.
    Upstream,
    /// From the server back to the client.
    Downstream,
}

/// A fault, as Toxiproxy names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toxic {
    /// Every chunk waits `latency` ± `jitter` before it is passed on.
    Latency {
        /// Added delay.
        latency: Duration,
        /// Uniform spread around it.
        jitter: Duration,
    },
    /// At most `rate` KB (1,000 bytes) per second pass.
    Bandwidth {
        /// KB per second.
        rate: u64,
    },
    /// When one side closes, the other learns of it `delay` later.
    SlowClose {
        /// Delay of the close.
        delay: Duration,
    },
    /// Nothing passes (a black hole); after `timeout` the connection is closed, or never
    /// when `timeout` is zero.
    Timeout {
        /// When to close, from when the toxic applies.
        timeout: Duration,
    },
    /// After `timeout`, the connection is reset (TCP RST to both sides).
    ResetPeer {
        /// When to reset, from when the toxic applies.
        timeout: Duration,
    },
    /// The connection is closed once `bytes` have passed in the stream.
    LimitData {
        /// Bytes let through.
        bytes: u64,
    },
}

/// Toxics by name, with when each was added.
type Toxics = BTreeMap<String, (Stream, Toxic, Instant)>;

/// The proxy's settings, watched by every connection.
#[derive(Debug, Clone, Default)]
struct Settings {
    toxics: Toxics,
    disabled: bool,
}

/// A TCP proxy on loopback that injects faults; see the module docs.
#[derive(Clone)]
pub struct FaultProxy {
    addr: SocketAddr,
    settings: Arc<watch::Sender<Settings>>,
    rng: Arc<Mutex<u64>>,
}

impl FaultProxy {
    /// Starts a proxy on a free port of 127.0.0.1 forwarding to `upstream` (`host:port`).
    ///
    /// # Errors
    /// It cannot bind a port.
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), upstream).await
    }

    /// Starts a proxy listening on `listen`, a loopback address (a server that advertises
    /// an address of its own, such as a RocketMQ broker, is reached through a proxy there).
    ///
    /// # Errors
    /// `listen` is not a loopback address, or it cannot be bound.
    pub async fn start_on(listen: SocketAddr, upstream: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            listen.ip().is_loopback(),
            "the fault proxy listens on loopback only, not {listen}"
        );
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (settings, _) = watch::channel(Settings::default());
        let proxy = Self {
            addr,
            settings: Arc::new(settings),
            rng: Arc::new(Mutex::new(u64::from(addr.port()) | 1)),
        };
        let me = proxy.clone();
        let upstream = upstream.to_owned();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if me.settings.borrow().disabled {
                    // Refused: the client sees its connection closed at once.
                    continue;
                }
                let me = me.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    me.connect(client, server).await;
                });
            }
        });
        Ok(proxy)
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds (or replaces) the toxic called `name`.
    pub fn add(&self, name: &str, stream: Stream, toxic: Toxic) {
        self.settings.send_modify(|s| {
            s.toxics
                .insert(name.to_owned(), (stream, toxic, Instant::now()));
        });
    }

    /// Removes the toxic called `name`.
    pub fn remove(&self, name: &str) {
        self.settings.send_modify(|s| {
            s.toxics.remove(name);
        });
    }

    /// Removes every toxic.
    pub fn clear(&self) {
        self.settings.send_modify(|s| s.toxics.clear());
    }

    /// Cuts every connection and refuses new ones until [`FaultProxy::enable`].
    pub fn disable(&self) {
        self.settings.send_modify(|s| s.disabled = true);
    }

    /// Accepts connections again.
    pub fn enable(&self) {
        self.settings.send_modify(|s| s.disabled = false);
    }

    /// A number in `0..=max`, from the proxy's own generator (xorshift).
    fn random(&self, max: u64) -> u64 {
        let mut x = self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        if max == 0 {
            0
        } else {
            *x % (max + 1)
        }
    }

    /// Pumps both directions of one connection until either ends, the proxy is disabled or
    /// a toxic ends the connection.
    async fn connect(&self, client: TcpStream, server: TcpStream) {
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let (end, ended) = watch::channel(End::Open);
        let up = self.pump(Stream::Upstream, client_read, server_write, end.clone());
        let down = self.pump(Stream::Downstream, server_read, client_write, end);
        let _ = tokio::join!(up, down);
        drop(ended);
    }

    /// Forwards `from` to `to` under the stream's toxics. Ends the connection for both
    /// pumps (through `end`) when it ends.
    async fn pump(
        &self,
        stream: Stream,
        mut from: OwnedReadHalf,
        mut to: OwnedWriteHalf,
        end: watch::Sender<End>,
    ) {
        let mut settings = self.settings.subscribe();
        let mut ended = end.subscribe();
        let mut buf = vec![0u8; 16 * 1024];
        let mut passed: u64 = 0;
        loop {
            let now = self.toxics(stream, &settings.borrow());
            if settings.borrow().disabled {
                end.send_replace(End::Closed);
            }
            if let Some(why) = now
                .ends_at
                .and_then(|(at, why)| (at <= Instant::now()).then_some(why))
            {
                end.send_replace(why);
            }
            if *ended.borrow() != End::Open {
                break;
            }
            let deadline = now.ends_at.map(|(at, _)| at);
            let read = tokio::select! {
                r = from.read(&mut buf) => r,
                _ = settings.changed() => continue,
                _ = ended.changed() => continue,
                () = sleep_until(deadline) => continue,
            };
            let n = match read {
                Ok(0) => {
                    // This side finished sending: pass the close on (half-close); the other
                    // direction goes on until it finishes too.
                    if let Some(delay) = now.slow_close {
                        tokio::time::sleep(delay).await;
                    }
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
                Err(_) => {
                    end.send_replace(End::Closed);
                    break;
                }
            };
            if now.black_hole {
                continue;
            }
            let mut chunk = &buf[..n];
            if let Some(limit) = now.limit {
                let room = limit.saturating_sub(passed);
                if (chunk.len() as u64) > room {
                    chunk = &chunk[..usize::try_from(room).unwrap_or(0)];
                    let _ = to.write_all(chunk).await;
                    end.send_replace(End::Closed);
                    break;
                }
            }
            if let Some((latency, jitter)) = now.latency {
                let spread = u64::try_from(jitter.as_millis()).unwrap_or(0);
                let offset = self.random(spread.saturating_mul(2));
                let ms = u64::try_from(latency.as_millis()).unwrap_or(0) + offset;
                tokio::time::sleep(Duration::from_millis(ms.saturating_sub(spread))).await;
            }
            if to.write_all(chunk).await.is_err() {
                end.send_replace(End::Closed);
                break;
            }
            passed += chunk.len() as u64;
            if let Some(rate) = now.rate {
                // Bytes at `rate` KB/s take n / (rate * 1000) s.
                let micros = (chunk.len() as u64).saturating_mul(1000) / rate.max(1);
                tokio::time::sleep(Duration::from_micros(micros)).await;
            }
        }
        if *end.borrow() == End::Reset {
            // SO_LINGER 0: closing sends RST instead of FIN.
            let _ = to.as_ref().set_zero_linger();
            let _ = from.as_ref().set_zero_linger();
            // Dropping a write half would send FIN first; the socket closes (with RST) when
            // its read half goes.
            to.forget();
            return;
        }
        let _ = to.shutdown().await;
    }

    /// What the toxics of `stream` (and the connection-wide ones) ask for now.
    fn toxics(&self, stream: Stream, settings: &Settings) -> Applied {
        let mut a = Applied::default();
        for (s, toxic, since) in settings.toxics.values() {
            match *toxic {
                // Reset and close end the whole connection, whichever stream names them.
                Toxic::ResetPeer { timeout } => a.end_at(*since + timeout, End::Reset),
                Toxic::Timeout { timeout } if *s == stream => {
                    a.black_hole = true;
                    if !timeout.is_zero() {
                        a.end_at(*since + timeout, End::Closed);
                    }
                }
                _ if *s != stream => {}
                Toxic::Latency { latency, jitter } => a.latency = Some((latency, jitter)),
                Toxic::Bandwidth { rate } => a.rate = Some(rate),
                Toxic::SlowClose { delay } => a.slow_close = Some(delay),
                Toxic::LimitData { bytes } => a.limit = Some(bytes),
                Toxic::Timeout { .. } => {}
            }
        }
        a
    }
}

/// How a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Open,
    Closed,
    Reset,
}

/// The toxics in force on one stream.
#[derive(Debug, Default)]
struct Applied {
    latency: Option<(Duration, Duration)>,
    rate: Option<u64>,
    slow_close: Option<Duration>,
    limit: Option<u64>,
    black_hole: bool,
    ends_at: Option<(Instant, End)>,
}

impl Applied {
    fn end_at(&mut self, at: Instant, how: End) {
        if self.ends_at.is_none_or(|(t, _)| at < t) {
            self.ends_at = Some((at, how));
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
