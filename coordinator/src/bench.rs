//! `settle bench`: measures a running DTM-compatible server.
//!
//! C workers each run TCC transactions with two branches, as an initiator does: `prepare`,
//! then for each branch `registerBranch` and its Try, then `submit`. The branches are served
//! by a minimal participant started in this process, which answers every call with success
//! and counts the confirms. The figures are the initiator's: transactions per second and the
//! latency of one whole transaction, then the time until every confirm has arrived. Only the
//! DTM protocol is spoken, so the same run can target DTM or another compatible server.
//!
//! With `--raw`, the run also performs single-row autocommitted INSERTs at the same
//! concurrency on the database given by `--database-url`, so the transaction rate can be
//! compared with what the database itself sustains.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::Router;
use clap::Args;
use serde_json::json;
use settle_protocol::{names, GlobalRequest};
use sqlx::Connection;

/// Options of `settle bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Base URL of the server's DTM API.
    #[arg(long, default_value = "http://127.0.0.1:36789/api/dtmsvr")]
    pub server: String,
    /// Transactions running at once.
    #[arg(long, short = 'c', default_value_t = 32)]
    pub concurrency: usize,
    /// Transactions in all.
    #[arg(long, short = 'n', default_value_t = 2000)]
    pub transactions: usize,
    /// Also run single-row autocommitted INSERTs at the same concurrency on `--database-url`.
    #[arg(long)]
    pub raw: bool,
    /// Database of the `--raw` run (`mysql://...` or `sqlite:...`).
    #[arg(long, env = "SETTLE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Seconds to wait for every confirm after the last submit.
    #[arg(long, default_value_t = 120)]
    pub settle_timeout_s: u64,
}

/// Latency and rate of one measured run.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Operations completed.
    pub count: usize,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Sorted latencies.
    pub latencies: Vec<Duration>,
}

impl Figures {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency at percentile `p` (0-100).
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[rank.min(self.latencies.len() - 1)]
    }

    fn line(&self, what: &str) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            "{what}: {} in {:.2}s = {:.1}/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
            self.count,
            self.elapsed.as_secs_f64(),
            self.rate(),
            ms(self.percentile(50.0)),
            ms(self.percentile(90.0)),
            ms(self.percentile(99.0)),
            ms(self.percentile(100.0)),
        )
    }
}

/// Runs the benchmark and prints its figures.
///
/// # Errors
/// The server or the database cannot be reached, or a transaction fails.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.transactions == 0 {
        bail!("--concurrency and --transactions must be positive");
    }
    if args.raw && args.database_url.is_none() {
        bail!("--raw needs --database-url (the database the server under test uses)");
    }
    let participant = Participant::start().await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .tcp_nodelay(true)
        .build()?;
    let server = args.server.trim_end_matches('/').to_owned();
    http.get(format!("{server}/version"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("server {server} does not answer"))?;

    println!(
        "settle bench: {} TCC transactions (2 branches each), concurrency {}, server {server}",
        args.transactions, args.concurrency
    );
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (http, server, next, run_id) =
            (http.clone(), server.clone(), next.clone(), run_id.clone());
        let base = participant.base.clone();
        let total = args.transactions as u64;
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let t0 = Instant::now();
                one_tcc(&http, &server, &base, &format!("bench-{run_id}-{i}")).await?;
                latencies.push(t0.elapsed());
            }
        });
    }
    let mut latencies = Vec::with_capacity(args.transactions);
    while let Some(r) = workers.join_next().await {
        latencies.extend(r??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let tcc = Figures {
        count: latencies.len(),
        elapsed,
        latencies,
    };
    println!("{}", tcc.line("tcc transactions (prepare..submit)"));

    let want = 2 * args.transactions as u64;
    let deadline = Instant::now() + Duration::from_secs(args.settle_timeout_s);
    while participant.confirms.load(Ordering::Relaxed) < want {
        if Instant::now() > deadline {
            bail!(
                "only {} of {want} confirms arrived within {}s",
                participant.confirms.load(Ordering::Relaxed),
                args.settle_timeout_s
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let settled = started.elapsed();
    println!(
        "all {want} confirms received after {:.2}s = {:.1} settled transactions/s",
        settled.as_secs_f64(),
        args.transactions as f64 / settled.as_secs_f64()
    );

    if args.raw {
        let url = args.database_url.clone().unwrap_or_default();
        let raw = raw_inserts(&url, args.concurrency, args.transactions).await?;
        println!("{}", raw.line("raw single-row autocommitted inserts"));
        println!(
            "tcc transactions per raw insert: {:.3}",
            tcc.rate() / raw.rate().max(1e-9)
        );
    }
    Ok(())
}

async fn expect_ok(response: reqwest::Result<reqwest::Response>, what: &str) -> anyhow::Result<()> {
    let response = response.with_context(|| format!("{what}: request failed"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() || body.contains(names::RESULT_FAILURE) {
        bail!("{what}: HTTP {status}: {body}");
    }
    Ok(())
}

async fn one_tcc(
    http: &reqwest::Client,
    server: &str,
    base: &str,
    gid: &str,
) -> anyhow::Result<()> {
    let global = GlobalRequest::new(gid, names::TCC);
    expect_ok(
        http.post(format!("{server}/prepare"))
            .json(&global)
            .send()
            .await,
        "prepare",
    )
    .await?;
    for branch in ["01", "02"] {
        let body = json!({"amount": 30, "branch": branch}).to_string();
        let register = json!({
            "gid": gid, "trans_type": "tcc", "branch_id": branch, "data": body,
            "confirm": format!("{base}/confirm"), "cancel": format!("{base}/cancel"),
        });
        expect_ok(
            http.post(format!("{server}/registerBranch"))
                .json(&register)
                .send()
                .await,
            "registerBranch",
        )
        .await?;
        let params = [
            ("gid", gid),
            ("trans_type", "tcc"),
            ("branch_id", branch),
            ("op", "try"),
        ];
        expect_ok(
            http.post(format!("{base}/try"))
                .query(&params)
                .body(body)
                .send()
                .await,
            "try",
        )
        .await?;
    }
    expect_ok(
        http.post(format!("{server}/submit"))
            .json(&global)
            .send()
            .await,
        "submit",
    )
    .await
}

/// A participant that answers every call with success and counts confirms.
struct Participant {
    base: String,
    confirms: Arc<AtomicU64>,
}

impl Participant {
    async fn start() -> anyhow::Result<Self> {
        let confirms = Arc::new(AtomicU64::new(0));
        let counter = confirms.clone();
        let ok = || async { axum::Json(json!({"dtm_result": "SUCCESS"})) };
        let app = Router::new()
            .route("/try", post(ok))
            .route("/cancel", post(ok))
            .route(
                "/confirm",
                post(move || {
                    let counter = counter.clone();
                    async move {
                        counter.fetch_add(1, Ordering::Relaxed);
                        axum::Json(json!({"dtm_result": "SUCCESS"}))
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            axum::serve(
                listener.tap_io(|tcp| {
                    // Small request/answer exchanges: do not wait for more bytes to fill a packet.
                    let _ = tcp.set_nodelay(true);
                }),
                app,
            )
            .await
        });
        Ok(Self {
            base: format!("http://{addr}"),
            confirms,
        })
    }
}

async fn raw_inserts(url: &str, concurrency: usize, count: usize) -> anyhow::Result<Figures> {
    macro_rules! measure {
        ($conn_ty:ty, $create:expr) => {{
            let mut setup = <$conn_ty>::connect(url)
                .await
                .context("raw: cannot connect")?;
            sqlx::query($create).execute(&mut setup).await?;
            let next = Arc::new(AtomicU64::new(0));
            let started = Instant::now();
            let mut workers = tokio::task::JoinSet::new();
            for _ in 0..concurrency {
                let next = next.clone();
                let url = url.to_owned();
                workers.spawn(async move {
                    let mut conn = <$conn_ty>::connect(&url).await?;
                    let mut latencies = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i as usize >= count {
                            return Ok::<_, anyhow::Error>(latencies);
                        }
                        let t0 = Instant::now();
                        sqlx::query("INSERT INTO settle_bench_raw (payload) VALUES (?)")
                            .bind(format!("row-{i}"))
                            .execute(&mut conn)
                            .await?;
                        latencies.push(t0.elapsed());
                    }
                });
            }
            let mut latencies = Vec::with_capacity(count);
            while let Some(r) = workers.join_next().await {
                latencies.extend(r??);
            }
            let elapsed = started.elapsed();
            sqlx::query("DROP TABLE settle_bench_raw")
                .execute(&mut setup)
                .await?;
            latencies.sort();
            Ok(Figures {
                count: latencies.len(),
                elapsed,
                latencies,
            })
        }};
    }
    if url.starts_with("mysql://") {
        measure!(
            sqlx::MySqlConnection,
            "CREATE TABLE IF NOT EXISTS settle_bench_raw (id BIGINT AUTO_INCREMENT PRIMARY KEY, payload VARCHAR(64) NOT NULL) ENGINE=InnoDB"
        )
    } else if url.starts_with("sqlite:") {
        measure!(
            sqlx::SqliteConnection,
            "CREATE TABLE IF NOT EXISTS settle_bench_raw (id INTEGER PRIMARY KEY AUTOINCREMENT, payload TEXT NOT NULL)"
        )
    } else {
        bail!("--database-url must be mysql://... or sqlite:...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_sorted_latencies() {
        let f = Figures {
            count: 101,
            elapsed: Duration::from_secs(1),
            latencies: (0..=100).map(Duration::from_millis).collect(),
        };
        assert_eq!(f.percentile(50.0), Duration::from_millis(50));
        assert_eq!(f.percentile(99.0), Duration::from_millis(99));
        assert_eq!(f.percentile(100.0), Duration::from_millis(100));
        assert!((f.rate() - 101.0).abs() < 1e-9);
    }
}
