//! `settle bench`: measures running DTM-compatible servers, side by side.
//!
//! C workers each run TCC transactions with two branches, as an initiator does: `prepare`,
//! then for each branch `registerBranch` and its Try, then `submit`. The branches are served
//! by a minimal participant started in this process, which answers every call with success
//! and counts the confirms. A run lasts a fixed time (or a fixed number of transactions);
//! its throughput counts a transaction once both its confirms have arrived, and its latency
//! is the initiator's (prepare to submit). Only the DTM protocol is spoken, so the same run
//! can target Settle and another DTM-compatible server (`--against`), one after the other at
//! each concurrency, and print the ratio.
//!
//! `--sweep 8,16,32,64` repeats the run at each concurrency; `--csv` writes every run as a
//! row and `--svg` draws throughput and p99 latency against concurrency for each server.
//!
//! `--mode saga` runs two-step sagas instead: each worker submits a saga (one request; the
//! coordinator then calls the first action, then the second), and a saga counts once both
//! its actions reached the participant. Its latency is the initiator's `submit`.
//!
//! `--mode msg` runs transactional messages instead: each worker prepares and submits msgs
//! whose one step publishes to RocketMQ (`rocketmq://TOPIC?key=K`), spread over `--keys`
//! sharding keys, and the bench consumes the topic back in order (an orderly consumer on the
//! name server `--rocketmq`). Each key is used by one worker at a time, in sequence, so its
//! messages must arrive in the order they were submitted: the run fails if one arrives out
//! of order or never arrives. Throughput counts messages consumed, from the first prepare to
//! the last message received.
//!
//! `--mode recovery` measures a crash: the bench starts a coordinator itself (this binary's
//! `serve` on `--database-url`, with `--serve-arg`s), runs `-n` TCCs whose confirms answer
//! ONGOING so that they all stay in flight, reads the coordinator's resident memory, kills
//! it with SIGKILL, lets the confirms succeed, starts a new coordinator on the same store and
//! times until every one of those transactions is `succeed` in the store.
//!
//! With `--raw`, the run also performs single-row autocommitted INSERTs at the same
//! concurrency on the database given by `--database-url`, so the transaction rate can be
//! compared with what the database itself sustains.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// What each worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// TCC transactions with two branches.
    Tcc,
    /// Sagas of two steps (one `submit` each; the coordinator calls both actions).
    Saga,
    /// Transactional messages to RocketMQ, consumed back in order.
    Msg,
    /// Crash recovery: start a coordinator, put `-n` TCCs in flight (their confirms answer
    /// ONGOING), kill it with SIGKILL, start it again, and time until all have settled.
    Recovery,
}

/// Options of `settle bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// What to run.
    #[arg(long, value_enum, default_value_t = Mode::Tcc)]
    pub mode: Mode,
    /// msg: the RocketMQ name server the coordinator publishes to; the bench consumes there.
    #[arg(long, env = "SETTLE_ROCKETMQ_NAMESRV")]
    pub rocketmq: Option<String>,
    /// msg: sharding keys the messages are spread over (at least the concurrency).
    #[arg(long, default_value_t = 1000)]
    pub keys: usize,
    /// msg: queues of the topic the bench creates.
    #[arg(long, default_value_t = 8)]
    pub queues: i32,
    /// msg: submit without prepare (a msg with no local transaction to check back).
    #[arg(long)]
    pub no_prepare: bool,
    /// recovery: an extra argument for the coordinators the bench starts (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    pub serve_arg: Vec<String>,
    /// Base URL of the server's DTM API.
    #[arg(long, default_value = "http://127.0.0.1:36789/api/dtmsvr")]
    pub server: String,
    /// Name of `--server` in the output.
    #[arg(long, default_value = "settle")]
    pub name: String,
    /// Base URL of a second DTM-compatible server, run with the same load right after the
    /// first at each concurrency.
    #[arg(long)]
    pub against: Option<String>,
    /// Name of `--against` in the output.
    #[arg(long, default_value = "other")]
    pub against_name: String,
    /// Transactions running at once.
    #[arg(long, short = 'c', default_value_t = 64)]
    pub concurrency: usize,
    /// Concurrencies to run one after the other (e.g. `8,16,32,64`), instead of `-c`.
    #[arg(long, value_delimiter = ',')]
    pub sweep: Vec<usize>,
    /// Seconds each run starts new transactions for.
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Run this many transactions instead of `--duration-s`.
    #[arg(long, short = 'n')]
    pub transactions: Option<u64>,
    /// Seconds to wait for every confirm after the last submit.
    #[arg(long, default_value_t = 120)]
    pub settle_timeout_s: u64,
    /// Write every run as a CSV row here.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Draw throughput and p99 latency against concurrency, per server, as an SVG here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Run nothing: draw `--svg` from the runs of a CSV file that `--csv` wrote.
    #[arg(long, requires = "svg")]
    pub chart_from: Option<PathBuf>,
    /// tcc: start this many transactions per second, whatever the answers (an open loop),
    /// instead of `-c` initiators each starting the next when one ends; latency counts from
    /// when a transaction was due to start, so a server that falls behind is not hidden.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Also run single-row autocommitted INSERTs at the same concurrency on `--database-url`.
    #[arg(long)]
    pub raw: bool,
    /// Database of the `--raw` run (`mysql://...` or `sqlite:...`).
    #[arg(long, env = "SETTLE_DATABASE_URL")]
    pub database_url: Option<String>,
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One run against one server at one concurrency.
#[derive(Debug, Clone)]
pub struct Run {
    /// Server name.
    pub system: String,
    /// Transactions running at once.
    pub concurrency: usize,
    /// Transactions settled (both confirms arrived) per second, from the first prepare to
    /// the last confirm.
    pub settled_per_s: f64,
    /// Initiator latencies.
    pub figures: Figures,
}

impl Run {
    /// What a chart draws of it.
    pub fn point(&self) -> Point {
        Point {
            system: self.system.clone(),
            concurrency: self.concurrency,
            settled_per_s: self.settled_per_s,
            p99_ms: ms(self.figures.percentile(99.0)),
        }
    }
}

/// One run as a chart draws it.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Server name.
    pub system: String,
    /// Transactions running at once.
    pub concurrency: usize,
    /// Settled transactions per second.
    pub settled_per_s: f64,
    /// p99 initiator latency, ms.
    pub p99_ms: f64,
}

/// Reads back the runs of a CSV file written by [`csv`].
///
/// # Errors
/// The header or a row is not what [`csv`] writes.
pub fn points_from_csv(text: &str) -> anyhow::Result<Vec<Point>> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    if header != CSV_HEADER {
        bail!("not a CSV file of settle bench: its first line is '{header}', not '{CSV_HEADER}'");
    }
    lines
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let cols: Vec<&str> = line.split(',').collect();
            let bad = || anyhow::anyhow!("line {} of the CSV file is not a run: '{line}'", i + 2);
            if cols.len() != CSV_HEADER.split(',').count() {
                return Err(bad());
            }
            Ok(Point {
                system: cols[0].to_owned(),
                concurrency: cols[1].parse().map_err(|_| bad())?,
                settled_per_s: cols[2].parse().map_err(|_| bad())?,
                p99_ms: cols[6].parse().map_err(|_| bad())?,
            })
        })
        .collect()
}

const CSV_HEADER: &str =
    "system,concurrency,settled_tx_per_s,transactions,p50_ms,p90_ms,p99_ms,max_ms";

/// Runs the benchmark and prints its figures.
///
/// # Errors
/// A server or the database cannot be reached, a transaction fails, or an output file
/// cannot be written.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let (Some(from), Some(path)) = (&args.chart_from, &args.svg) {
        let text = std::fs::read_to_string(from)
            .with_context(|| format!("cannot read {}", from.display()))?;
        chart(&points_from_csv(&text)?, path)?;
        println!("wrote {}", path.display());
        return Ok(());
    }
    let levels = if args.sweep.is_empty() {
        vec![args.concurrency]
    } else {
        args.sweep.clone()
    };
    if levels.contains(&0) || args.transactions == Some(0) || args.duration_s == 0 {
        bail!("concurrency, --transactions and --duration-s must be positive");
    }
    if let Some(rate) = args.rate {
        let open_loop_fits = rate > 0.0
            && rate.is_finite()
            && matches!(args.mode, Mode::Tcc | Mode::Saga)
            && args.sweep.is_empty();
        if !open_loop_fits {
            bail!("--rate must be a positive number of transactions per second, in tcc or saga mode, without --sweep");
        }
    }
    if args.raw && args.database_url.is_none() {
        bail!("--raw needs --database-url (the database the server under test uses)");
    }
    let max_c = levels.iter().copied().max().unwrap_or(1);
    if args.mode == Mode::Recovery {
        return recovery(&args, max_c).await;
    }
    let consumer = match args.mode {
        Mode::Tcc | Mode::Saga | Mode::Recovery => None,
        Mode::Msg => {
            let Some(namesrv) = &args.rocketmq else {
                bail!("--mode msg needs --rocketmq (the name server the coordinator publishes to)");
            };
            if args.keys < max_c {
                bail!("--keys ({}) must be at least the concurrency ({max_c}): each key is used by one worker", args.keys);
            }
            Some(Arc::new(OrderCheck::start(namesrv, args.queues).await?))
        }
    };
    let participant = Participant::start().await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(max_c * 2)
        .tcp_nodelay(true)
        .build()?;
    let mut servers = vec![(
        args.name.clone(),
        args.server.trim_end_matches('/').to_owned(),
    )];
    if let Some(other) = &args.against {
        servers.push((
            args.against_name.clone(),
            other.trim_end_matches('/').to_owned(),
        ));
    }
    for (name, url) in &servers {
        http.get(format!("{url}/newGid"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("server {name} at {url} does not answer"))?;
    }
    let mut runs = Vec::new();
    for &c in &levels {
        let mut here = Vec::new();
        for (name, url) in &servers {
            let r = match &consumer {
                None => {
                    let r = one_run(&http, &participant, name, url, c, &args).await?;
                    let level = args
                        .rate
                        .map_or_else(|| format!("c={c}"), |rate| format!("rate={rate}/s"));
                    let what = if args.mode == Mode::Saga {
                        "saga (submit)"
                    } else {
                        "tcc (prepare..submit)"
                    };
                    println!(
                        "{name} {level}: {:.1} settled tx/s; {}",
                        r.settled_per_s,
                        r.figures.line(what)
                    );
                    r
                }
                Some(check) => {
                    let (r, seen) =
                        msg_run(&http, &participant, check, name, url, c, &args).await?;
                    println!(
                        "{name} c={c}: {:.1} msg/s consumed in order ({} distinct, {} duplicates, 0 out of order); {}",
                        r.settled_per_s,
                        seen.distinct,
                        seen.duplicates,
                        r.figures.line(if args.no_prepare { "msg (submit)" } else { "msg (prepare..submit)" })
                    );
                    r
                }
            };
            here.push(r);
        }
        if let [a, b] = here.as_slice() {
            println!(
                "ratio c={c}: {} / {} = {:.2}x throughput",
                a.system,
                b.system,
                a.settled_per_s / b.settled_per_s.max(1e-9)
            );
        }
        runs.extend(here);
    }
    if let Some(check) = consumer {
        if let Ok(check) = Arc::try_unwrap(check) {
            check.shutdown().await;
        }
    }
    if let Some(path) = &args.csv {
        std::fs::write(path, csv(&runs))
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.svg {
        chart(&runs.iter().map(Run::point).collect::<Vec<_>>(), path)?;
        println!("wrote {}", path.display());
    }
    if args.raw {
        let url = args.database_url.clone().unwrap_or_default();
        let n = args.transactions.unwrap_or(5_000) as usize;
        let raw = raw_inserts(&url, max_c, n).await?;
        println!("{}", raw.line("raw single-row autocommitted inserts"));
    }
    Ok(())
}

async fn one_run(
    http: &reqwest::Client,
    participant: &Participant,
    name: &str,
    server: &str,
    concurrency: usize,
    args: &BenchArgs,
) -> anyhow::Result<Run> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mode = args.mode;
    let confirms_before = participant.confirms.load(Ordering::Relaxed);
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let total = args.transactions.unwrap_or(u64::MAX);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    if let Some(rate) = args.rate {
        let (http, server, run_id, stop) = (
            http.clone(),
            server.to_owned(),
            run_id.clone(),
            stop.clone(),
        );
        let base = participant.base.clone();
        workers.spawn(async move {
            open_loop(rate, total, &stop, started.into(), |i| {
                let (http, server, base) = (http.clone(), server.clone(), base.clone());
                let gid = format!("bench-{run_id}-{i}");
                async move { one_transaction(mode, &http, &server, &base, &gid).await }
            })
            .await
        });
    }
    // An open loop replaces the initiators.
    let initiators = if args.rate.is_some() { 0 } else { concurrency };
    for _ in 0..initiators {
        let (http, server, next, run_id, stop) = (
            http.clone(),
            server.to_owned(),
            next.clone(),
            run_id.clone(),
            stop.clone(),
        );
        let base = participant.base.clone();
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                if stop.load(Ordering::Relaxed) {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok(latencies);
                }
                let t0 = Instant::now();
                one_transaction(mode, &http, &server, &base, &format!("bench-{run_id}-{i}"))
                    .await?;
                latencies.push(t0.elapsed());
            }
        });
    }
    let (latencies, elapsed) = join_workers(workers, &stop, args, started).await?;
    let done = latencies.len() as u64;
    let want = confirms_before + 2 * done;
    let deadline = Instant::now() + Duration::from_secs(args.settle_timeout_s);
    while participant.confirms.load(Ordering::Relaxed) < want {
        if Instant::now() > deadline {
            bail!(
                "{name}: only {} of {} confirms (or saga actions) arrived within {}s",
                participant.confirms.load(Ordering::Relaxed) - confirms_before,
                2 * done,
                args.settle_timeout_s
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let settled = started.elapsed();
    Ok(Run {
        system: name.to_owned(),
        concurrency,
        settled_per_s: done as f64 / settled.as_secs_f64().max(1e-9),
        figures: Figures {
            count: latencies.len(),
            elapsed,
            latencies,
        },
    })
}

/// Starts `start(i)` for i = 0, 1, ... at `rate` per second from `started`, until `stop` is
/// raised or `total` were started, and returns each one's latency counted from when it was
/// due to start.
async fn open_loop<F, Fut>(
    rate: f64,
    total: u64,
    stop: &AtomicBool,
    started: tokio::time::Instant,
    start: F,
) -> anyhow::Result<Vec<Duration>>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut running = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let tx = start(i);
        running.spawn(async move {
            tx.await?;
            Ok::<_, anyhow::Error>(due.elapsed())
        });
    }
    let mut latencies = Vec::with_capacity(running.len());
    while let Some(r) = running.join_next().await {
        latencies.push(r??);
    }
    Ok(latencies)
}

/// Lets `workers` run (for `--duration-s`, unless a number of transactions was given, then
/// `stop` is raised) and gathers their latencies, sorted, with the time they took.
async fn join_workers(
    mut workers: tokio::task::JoinSet<anyhow::Result<Vec<Duration>>>,
    stop: &Arc<AtomicBool>,
    args: &BenchArgs,
    started: Instant,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    if args.transactions.is_none() {
        let stop = stop.clone();
        let d = Duration::from_secs(args.duration_s);
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            stop.store(true, Ordering::Relaxed);
        });
    }
    let mut latencies = Vec::new();
    while let Some(r) = workers.join_next().await {
        latencies.extend(r??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Ok((latencies, elapsed))
}

/// A coordinator the bench started, as a child process.
struct Coordinator {
    child: tokio::process::Child,
    api: String,
}

impl Coordinator {
    async fn start(database_url: &str, listen: &str, extra: &[String]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the settle binary")?;
        let child = tokio::process::Command::new(exe)
            .args(["serve", "--listen", listen, "--database-url", database_url])
            .args(extra)
            .env("RUST_LOG", "error")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a coordinator")?;
        let api = format!("http://{listen}/api/dtmsvr");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while http.get(format!("{api}/newGid")).send().await.is_err() {
            if Instant::now() > deadline {
                bail!("the coordinator did not answer on {listen} within 60s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self { child, api })
    }

    /// Resident memory, bytes (Linux).
    fn rss(&self) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
}

async fn recovery(args: &BenchArgs, concurrency: usize) -> anyhow::Result<()> {
    let Some(url) = args.database_url.clone() else {
        bail!("--mode recovery needs --database-url (the store of the coordinators it starts)");
    };
    let count = args.transactions.unwrap_or(10_000);
    let participant = Participant::start().await?;
    participant.hold.store(true, Ordering::Relaxed);
    let listen = format!("127.0.0.1:{}", {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    });
    let first = Coordinator::start(&url, &listen, &args.serve_arg).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency * 2)
        .tcp_nodelay(true)
        .build()?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (http, server, next, run_id, base) = (
            http.clone(),
            first.api.clone(),
            next.clone(),
            run_id.clone(),
            participant.base.clone(),
        );
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, anyhow::Error>(());
                }
                one_tcc(&http, &server, &base, &format!("recover-{run_id}-{i}")).await?;
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r??;
    }
    let submitted_in = started.elapsed();
    let settled = settled_count(&url, &run_id).await?;
    let rss = first.rss();
    println!(
        "recovery: {count} TCCs submitted in {:.2}s, {} settled, {} in flight; coordinator RSS {}",
        submitted_in.as_secs_f64(),
        settled,
        count - settled,
        rss.map_or("unknown".to_owned(), |b| format!(
            "{:.1} MB",
            b as f64 / 1e6
        )),
    );
    let mut first = first;
    first
        .child
        .kill()
        .await
        .context("cannot kill the coordinator")?;
    println!("recovery: coordinator killed (SIGKILL); confirms succeed from now on");
    participant.hold.store(false, Ordering::Relaxed);
    let restarted = Instant::now();
    let second = Coordinator::start(&url, &listen, &args.serve_arg).await?;
    let ready = restarted.elapsed();
    let deadline = restarted + Duration::from_secs(args.settle_timeout_s);
    loop {
        let settled = settled_count(&url, &run_id).await?;
        if settled >= count {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "recovery: only {settled} of {count} settled within {}s of the restart",
                args.settle_timeout_s
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = restarted.elapsed();
    println!(
        "recovery: restarted coordinator answered after {:.2}s; all {count} settled {:.2}s after the restart; RSS then {}",
        ready.as_secs_f64(),
        took.as_secs_f64(),
        second
            .rss()
            .map_or("unknown".to_owned(), |b| format!("{:.1} MB", b as f64 / 1e6)),
    );
    drop(second);
    Ok(())
}

/// How many of the recovery run's transactions are `succeed` in the store.
async fn settled_count(url: &str, run_id: &str) -> anyhow::Result<u64> {
    let sql = "SELECT COUNT(*) FROM trans_global WHERE gid LIKE ? AND status = 'succeed'";
    let pattern = format!("recover-{run_id}-%");
    let n: i64 = if url.starts_with("mysql://") {
        let mut c = sqlx::MySqlConnection::connect(url).await?;
        sqlx::query_scalar(sql)
            .bind(pattern)
            .fetch_one(&mut c)
            .await?
    } else {
        let mut c = sqlx::SqliteConnection::connect(url).await?;
        sqlx::query_scalar(sql)
            .bind(pattern)
            .fetch_one(&mut c)
            .await?
    };
    Ok(u64::try_from(n).unwrap_or(0))
}

/// What the order check saw of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen {
    /// Messages received, each counted once.
    pub distinct: u64,
    /// Messages received again.
    pub duplicates: u64,
    /// Messages received after a later one of their key.
    pub out_of_order: u64,
}

#[derive(Default)]
struct CheckState {
    run: String,
    /// Per key, the highest message number received.
    last: std::collections::HashMap<u64, u64>,
    seen: Seen,
    first_violation: Option<String>,
}

/// Consumes the bench's topic in order and checks each key's sequence.
struct OrderCheck {
    topic: String,
    state: Arc<std::sync::Mutex<CheckState>>,
    consumer: settle_rocketmq::OrderlyConsumer,
    client: settle_rocketmq::Client,
}

impl OrderCheck {
    async fn start(namesrv: &str, queues: i32) -> anyhow::Result<Self> {
        let client = settle_rocketmq::Client::new("bench")?;
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let topic = format!("SettleBench{suffix}");
        let mut admin = settle_rocketmq::Producer::start(
            &client,
            namesrv,
            &format!("{topic}-admin"),
            Duration::from_secs(3),
        )
        .await
        .with_context(|| format!("no RocketMQ name server answers at {namesrv}"))?;
        let mut created = admin.create_topic(&topic, queues).await;
        for _ in 0..30 {
            if created.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            created = admin.create_topic(&topic, queues).await;
        }
        admin.shutdown().await;
        created.with_context(|| format!("cannot create topic {topic}"))?;
        let state = Arc::new(std::sync::Mutex::new(CheckState::default()));
        let sink = state.clone();
        let handler: settle_rocketmq::Handler = Arc::new(move |d: settle_rocketmq::Delivery| {
            let sink = sink.clone();
            Box::pin(async move {
                let body: serde_json::Value = serde_json::from_slice(&d.body).unwrap_or_default();
                let (Some(run), Some(key), Some(n)) = (
                    body["run"].as_str(),
                    body["key"].as_u64(),
                    body["n"].as_u64(),
                ) else {
                    return Ok(());
                };
                let mut s = sink
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if s.run != run {
                    return Ok(());
                }
                let last = s.last.get(&key).copied().unwrap_or(0);
                if n == last + 1 {
                    s.last.insert(key, n);
                    s.seen.distinct += 1;
                } else if n <= last {
                    s.seen.duplicates += 1;
                } else {
                    s.seen.out_of_order += 1;
                    if s.first_violation.is_none() {
                        s.first_violation = Some(format!(
                            "key {key}: message {n} arrived after {last}, before {}",
                            last + 1
                        ));
                    }
                }
                Ok(())
            }) as futures_util::future::BoxFuture<'static, Result<(), String>>
        });
        let consumer = settle_rocketmq::OrderlyConsumer::start(
            &client,
            namesrv,
            &format!("{topic}-check"),
            &topic,
            handler,
        )
        .await?;
        Ok(Self {
            topic,
            state,
            consumer,
            client,
        })
    }

    fn begin(&self, run: &str) {
        let mut s = self.lock();
        *s = CheckState {
            run: run.to_owned(),
            ..CheckState::default()
        };
    }

    fn seen(&self) -> (Seen, Option<String>) {
        let s = self.lock();
        (s.seen, s.first_violation.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CheckState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn shutdown(self) {
        self.consumer.shutdown().await;
        self.client.shutdown().await;
    }
}

async fn msg_run(
    http: &reqwest::Client,
    participant: &Participant,
    check: &OrderCheck,
    name: &str,
    server: &str,
    concurrency: usize,
    args: &BenchArgs,
) -> anyhow::Result<(Run, Seen)> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    check.begin(&run_id);
    let stop = Arc::new(AtomicBool::new(false));
    let total = args.transactions.unwrap_or(u64::MAX);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let (http, server, run_id, stop, next) = (
            http.clone(),
            server.to_owned(),
            run_id.clone(),
            stop.clone(),
            next.clone(),
        );
        let keys: Vec<u64> = (w..args.keys)
            .step_by(concurrency)
            .map(|k| k as u64)
            .collect();
        let query = format!("{}/queryPrepared", participant.base);
        let (topic, prepare) = (check.topic.clone(), !args.no_prepare);
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut sent = vec![0_u64; keys.len()];
            for j in 0.. {
                if stop.load(Ordering::Relaxed) || next.fetch_add(1, Ordering::Relaxed) >= total {
                    break;
                }
                let slot = j % keys.len();
                sent[slot] += 1;
                let (key, n) = (keys[slot], sent[slot]);
                let gid = format!("bench-{run_id}-{w}-{j}");
                let mut global = GlobalRequest::new(&gid, names::MSG);
                global.steps = vec![[(
                    "action".to_owned(),
                    format!("rocketmq://{topic}?key=k{key}"),
                )]
                .into()];
                global.payloads = vec![json!({"run": run_id, "key": key, "n": n}).to_string()];
                global.query_prepared = query.clone();
                let t0 = Instant::now();
                if prepare {
                    post_ok(&http, &server, "prepare", &global).await?;
                }
                post_ok(&http, &server, "submit", &global).await?;
                latencies.push(t0.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let (latencies, elapsed) = join_workers(workers, &stop, args, started).await?;
    let done = latencies.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(args.settle_timeout_s);
    loop {
        let (seen, violation) = check.seen();
        if let Some(v) = violation {
            bail!("{name}: per-key order broken: {v}");
        }
        if seen.distinct >= done {
            let consumed = started.elapsed();
            let run = Run {
                system: name.to_owned(),
                concurrency,
                settled_per_s: done as f64 / consumed.as_secs_f64().max(1e-9),
                figures: Figures {
                    count: latencies.len(),
                    elapsed,
                    latencies,
                },
            };
            return Ok((run, seen));
        }
        if Instant::now() > deadline {
            bail!(
                "{name}: only {} of {done} messages were consumed within {}s",
                seen.distinct,
                args.settle_timeout_s
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The runs as CSV: one row per server and concurrency.
pub fn csv(runs: &[Run]) -> String {
    let mut out = format!("{CSV_HEADER}\n");
    for r in runs {
        let f = &r.figures;
        out.push_str(&format!(
            "{},{},{:.1},{},{:.2},{:.2},{:.2},{:.2}\n",
            r.system,
            r.concurrency,
            r.settled_per_s,
            f.count,
            ms(f.percentile(50.0)),
            ms(f.percentile(90.0)),
            ms(f.percentile(99.0)),
            ms(f.percentile(100.0)),
        ));
    }
    out
}

/// Draws throughput and p99 latency against concurrency, one line per server.
///
/// # Errors
/// The file cannot be written.
pub fn chart(runs: &[Point], path: &std::path::Path) -> anyhow::Result<()> {
    use plotters::prelude::*;

    // Each system once, in the order it first appears (a sweep interleaves them).
    let mut systems: Vec<&str> = Vec::new();
    for r in runs {
        if !systems.contains(&r.system.as_str()) {
            systems.push(&r.system);
        }
    }
    let max_c = runs.iter().map(|r| r.concurrency).max().unwrap_or(1) as f64;
    let max_tps = runs.iter().map(|r| r.settled_per_s).fold(1.0, f64::max) * 1.1;
    let max_p99 = runs.iter().map(|r| r.p99_ms).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(500);
    let palette = [BLUE, RED, GREEN, MAGENTA];
    /// Title, unit, top of the axis, and the value drawn.
    type Panel = (&'static str, &'static str, f64, fn(&Point) -> f64);
    let panels: [Panel; 2] = [
        (
            "Throughput (settled TCC/s)",
            "tx/s",
            max_tps,
            |r: &Point| r.settled_per_s,
        ),
        (
            "p99 latency, prepare..submit (ms)",
            "ms",
            max_p99,
            |r: &Point| r.p99_ms,
        ),
    ];
    for (area, (title, unit, top, value)) in [&left, &right].into_iter().zip(panels) {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..max_c * 1.05, 0.0..top)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("concurrency")
            .y_desc(unit)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (i, system) in systems.iter().enumerate() {
            let color = palette[i % palette.len()];
            let points: Vec<(f64, f64)> = runs
                .iter()
                .filter(|r| r.system == *system)
                .map(|r| (r.concurrency as f64, value(r)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(*system)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 3, color.filled())),
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// POSTs `body` to the coordinator's `route` and expects success.
async fn post_ok<B: serde::Serialize + ?Sized>(
    http: &reqwest::Client,
    server: &str,
    route: &str,
    body: &B,
) -> anyhow::Result<()> {
    let response = http
        .post(format!("{server}/{route}"))
        .json(body)
        .send()
        .await;
    expect_ok(response, route).await
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

/// One transaction of `mode` (TCC or saga) through `server`, with branches served at `base`.
async fn one_transaction(
    mode: Mode,
    http: &reqwest::Client,
    server: &str,
    base: &str,
    gid: &str,
) -> anyhow::Result<()> {
    if mode == Mode::Saga {
        one_saga(http, server, base, gid).await
    } else {
        one_tcc(http, server, base, gid).await
    }
}

/// A two-step saga, as DTM's clients submit it: the coordinator calls both actions.
async fn one_saga(
    http: &reqwest::Client,
    server: &str,
    base: &str,
    gid: &str,
) -> anyhow::Result<()> {
    let step = || {
        std::collections::BTreeMap::from([
            ("action".to_owned(), format!("{base}/action")),
            ("compensate".to_owned(), format!("{base}/compensate")),
        ])
    };
    let saga = GlobalRequest {
        steps: vec![step(), step()],
        payloads: vec![
            json!({"amount": 30, "step": 1}).to_string(),
            json!({"amount": 30, "step": 2}).to_string(),
        ],
        ..GlobalRequest::new(gid, names::SAGA)
    };
    post_ok(http, server, "submit", &saga).await
}

async fn one_tcc(
    http: &reqwest::Client,
    server: &str,
    base: &str,
    gid: &str,
) -> anyhow::Result<()> {
    let global = GlobalRequest::new(gid, names::TCC);
    post_ok(http, server, "prepare", &global).await?;
    for branch in ["01", "02"] {
        let body = json!({"amount": 30, "branch": branch}).to_string();
        let register = json!({
            "gid": gid, "trans_type": "tcc", "branch_id": branch, "data": body,
            "confirm": format!("{base}/confirm"), "cancel": format!("{base}/cancel"),
        });
        post_ok(http, server, "registerBranch", &register).await?;
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
    post_ok(http, server, "submit", &global).await
}

/// A participant that answers every call with success and counts confirms and saga actions;
/// while `hold` is set, those answer ONGOING instead.
struct Participant {
    base: String,
    confirms: Arc<AtomicU64>,
    hold: Arc<AtomicBool>,
}

impl Participant {
    async fn start() -> anyhow::Result<Self> {
        let confirms = Arc::new(AtomicU64::new(0));
        let counter = confirms.clone();
        let hold = Arc::new(AtomicBool::new(false));
        let holding = hold.clone();
        let ok = || async { axum::Json(json!({"dtm_result": "SUCCESS"})) };
        let app = Router::new()
            .route("/try", post(ok))
            .route("/cancel", post(ok))
            .route("/queryPrepared", axum::routing::get(ok).post(ok))
            .route("/compensate", post(ok));
        // A confirm, or a saga's action, completes a branch.
        let complete = post(move || {
            let (counter, holding) = (counter.clone(), holding.clone());
            async move {
                if holding.load(Ordering::Relaxed) {
                    return (
                        axum::http::StatusCode::TOO_EARLY,
                        axum::Json(json!({"dtm_result": "ONGOING"})),
                    );
                }
                counter.fetch_add(1, Ordering::Relaxed);
                (
                    axum::http::StatusCode::OK,
                    axum::Json(json!({"dtm_result": "SUCCESS"})),
                )
            }
        });
        let app = app
            .route("/confirm", complete.clone())
            .route("/action", complete);
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
            hold,
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

    fn figures(ms_each: &[u64]) -> Figures {
        Figures {
            count: ms_each.len(),
            elapsed: Duration::from_secs(1),
            latencies: ms_each.iter().map(|m| Duration::from_millis(*m)).collect(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_loop_starts_on_schedule_and_counts_latency_from_when_each_was_due() {
        let started = tokio::time::Instant::now();
        let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = AtomicBool::new(false);
        let seen = starts.clone();
        let latencies = open_loop(10.0, 3, &stop, started, move |i| {
            seen.lock().unwrap().push(started.elapsed());
            async move {
                // The first transaction is slow; the others must not wait for it.
                let took = if i == 0 { 1_000 } else { 50 };
                tokio::time::sleep(Duration::from_millis(took)).await;
                Ok(())
            }
        })
        .await
        .unwrap();
        let starts: Vec<u128> = starts
            .lock()
            .unwrap()
            .iter()
            .map(Duration::as_millis)
            .collect();
        assert_eq!(starts, [0, 100, 200]);
        let mut ms: Vec<u128> = latencies.iter().map(Duration::as_millis).collect();
        ms.sort_unstable();
        assert_eq!(ms, [50, 50, 1_000]);
    }

    #[test]
    fn percentiles_come_from_sorted_latencies() {
        let f = figures(&(0..=100).collect::<Vec<_>>());
        assert_eq!(f.percentile(50.0), Duration::from_millis(50));
        assert_eq!(f.percentile(99.0), Duration::from_millis(99));
        assert_eq!(f.percentile(100.0), Duration::from_millis(100));
        assert!((f.rate() - 101.0).abs() < 1e-9);
    }

    #[test]
    fn runs_become_csv_rows_and_a_chart() {
        // As a sweep produces them: the systems alternate.
        let runs: Vec<Run> = [
            ("settle", 8, 900.0),
            ("dtm", 8, 400.0),
            ("settle", 64, 2_100.0),
            ("dtm", 64, 480.0),
        ]
        .iter()
        .map(|(s, c, tps)| Run {
            system: (*s).into(),
            concurrency: *c,
            settled_per_s: *tps,
            figures: figures(&[1, 2, 30]),
        })
        .collect();
        let text = csv(&runs);
        let mut lines = text.lines();
        assert!(lines.next().unwrap().starts_with("system,concurrency,"));
        assert_eq!(
            lines.next().unwrap(),
            "settle,8,900.0,3,2.00,30.00,30.00,30.00"
        );
        let path = std::env::temp_dir().join(format!("settle-bench-{}.svg", std::process::id()));
        let points: Vec<Point> = runs.iter().map(Run::point).collect();
        assert_eq!(points_from_csv(&text).unwrap(), points);
        let wrong = points_from_csv("gid,status\n").unwrap_err().to_string();
        assert!(
            wrong.starts_with("not a CSV file of settle bench: its first line is 'gid,status'"),
            "{wrong}"
        );
        let short = format!("{CSV_HEADER}\nsettle,8,900.0\n");
        let short = points_from_csv(&short).unwrap_err().to_string();
        assert_eq!(
            short,
            "line 2 of the CSV file is not a run: 'settle,8,900.0'"
        );
        chart(&points, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"), "{}", &svg[..60.min(svg.len())]);
        assert!(svg.contains("concurrency"));
        // One legend entry and one line per system and panel.
        assert_eq!(svg.matches("\nsettle\n").count(), 2, "{svg}");
        assert_eq!(svg.matches("\ndtm\n").count(), 2, "{svg}");
        assert_eq!(svg.matches("stroke-width=\"2\"").count(), 4, "{svg}");
    }
}
