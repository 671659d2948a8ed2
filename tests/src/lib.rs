//! Helpers of Settle's whole-system tests: fresh databases, coordinators on port 0 (in
//! process or as a real process), and participant services whose answers a test scripts and
//! whose calls it counts.
//!
//! The tests need a real MySQL (MariaDB) at `SETTLE_TEST_MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306`); `deploy/test.sh` starts one.

pub mod broker;
pub mod browser;
pub mod chaos;
pub mod proxy;
pub mod sim;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::process::Stdio;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::serve::ListenerExt;
use axum::Router;
use settle_coordinator::{Application, Config};
use settle_protocol::BranchParams;
use sqlx::mysql::MySqlConnectOptions;
use sqlx::{ConnectOptions, Connection};

/// Installs the crypto provider and a test log subscriber (once).
pub fn init() {
    settle_coordinator::cli::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(
                    "warn,rocketmq_runtime=error,rocketmq_client_rust=error,sqlx_core::pool=error,sqlx::query=error,sqlx::pool=error",
                )
            }),
        )
        .with_test_writer()
        .try_init();
}

/// The MySQL server the tests use, without a database name.
pub fn mysql_server_url() -> String {
    std::env::var("SETTLE_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

/// A database of its own for one test, dropped when the value is dropped.
pub struct TestDb {
    /// Database name.
    pub name: String,
    /// URL of the database.
    pub url: String,
}

impl TestDb {
    /// Creates a fresh, empty MySQL database with a unique name.
    ///
    /// # Errors
    /// MySQL cannot be reached.
    pub async fn mysql() -> anyhow::Result<Self> {
        let server = mysql_server_url();
        let name = format!(
            "settle_t_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        );
        let mut conn = MySqlConnectOptions::from_str(&server)?
            .connect()
            .await
            .with_context(|| {
                format!("cannot reach MySQL at {server}; run deploy/test.sh, which starts it")
            })?;
        sqlx::query(&format!("CREATE DATABASE {name} CHARACTER SET utf8mb4"))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(Self {
            url: format!("{}/{name}", server.trim_end_matches('/')),
            name,
        })
    }

    /// A pool on this database.
    ///
    /// # Errors
    /// MySQL cannot be reached.
    pub async fn pool(&self) -> anyhow::Result<sqlx::MySqlPool> {
        Ok(sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(16)
            .connect(&self.url)
            .await?)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let server = mysql_server_url();
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a thread with its own small runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(opts) = MySqlConnectOptions::from_str(&server) {
                    if let Ok(mut conn) = opts.connect().await {
                        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
                            .execute(&mut conn)
                            .await;
                        let _ = conn.close().await;
                    }
                }
            });
        })
        .join();
    }
}

/// A throwaway SQLite store file in the temp folder, removed when the value is dropped.
pub struct TestSqlite {
    /// URL of the store.
    pub url: String,
    path: std::path::PathBuf,
}

impl TestSqlite {
    /// A new, not yet created, store file.
    pub fn new() -> Self {
        let path =
            std::env::temp_dir().join(format!("settle-test-{}.db", uuid::Uuid::new_v4().simple()));
        Self {
            url: format!("sqlite:{}", path.display()),
            path,
        }
    }
}

impl Default for TestSqlite {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestSqlite {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The RocketMQ name server the tests use (`SETTLE_TEST_ROCKETMQ`, default
/// `127.0.0.1:9876`); `deploy/rocketmq.sh start` starts one.
pub fn rocketmq_namesrv() -> String {
    std::env::var("SETTLE_TEST_ROCKETMQ").unwrap_or_else(|_| "127.0.0.1:9876".to_owned())
}

/// The Redis server the tests use (`SETTLE_TEST_REDIS_URL`, default
/// `redis://127.0.0.1:6379`).
pub fn redis_url() -> String {
    std::env::var("SETTLE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Runs `deploy/rocketmq.sh` with `action` (`stop-broker`, `start-broker`,
/// `restart-broker`), for fault tests.
///
/// # Errors
/// The script fails.
pub async fn rocketmq_script(action: &str) -> anyhow::Result<()> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rocketmq.sh");
    let status = tokio::process::Command::new("bash")
        .arg(&script)
        .arg(action)
        .status()
        .await?;
    anyhow::ensure!(
        status.success(),
        "deploy/rocketmq.sh {action} failed: {status}"
    );
    Ok(())
}

/// A configuration for tests: port 0, fast polling, short retries.
pub fn test_config(database_url: &str) -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        database_url: database_url.to_owned(),
        poll_interval_ms: 50,
        lease_ms: 3_000,
        retry_cap_s: 2,
        default_retry_interval_s: 1,
        default_request_timeout_s: 2,
        max_connections: 16,
        ..Config::default()
    }
}

/// Starts an in-process coordinator.
///
/// # Errors
/// It cannot start.
pub async fn spawn_coordinator(config: Config) -> anyhow::Result<Application> {
    init();
    Ok(Application::start(config).await?)
}

/// One call a [`Participant`] received.
#[derive(Debug, Clone)]
pub struct Call {
    /// The route called (`try`, `confirm`, ...).
    pub route: String,
    /// Branch parameters of the call.
    pub params: BranchParams,
    /// The body.
    pub body: String,
    /// The status answered.
    pub answered: u16,
    /// When it arrived.
    pub at: Instant,
    /// The W3C `traceparent` it carried.
    pub traceparent: Option<String>,
}

#[derive(Default)]
struct Behaviour {
    scripts: HashMap<String, VecDeque<u16>>,
    fail_first: HashMap<String, usize>,
    delays: HashMap<String, (Duration, usize)>,
    arrived: HashMap<String, usize>,
    calls: Vec<Call>,
}

/// A participant service on 127.0.0.1 whose answers a test scripts per operation and whose
/// calls it records. Every route is `/{op}` (`try`, `confirm`, `cancel`, ...).
#[derive(Clone)]
pub struct Participant {
    base: String,
    state: Arc<Mutex<Behaviour>>,
}

impl Participant {
    /// Starts a participant answering 200 to everything.
    ///
    /// # Errors
    /// It cannot bind a port.
    pub async fn start() -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(Behaviour::default()));
        let app = Router::new()
            .route("/{op}", any(participant_call))
            .with_state(state.clone());
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
            state,
        })
    }

    /// URL of an operation's route.
    pub fn url(&self, op: &str) -> String {
        format!("{}/{op}", self.base)
    }

    /// The next answers to calls of `op` (any branch); once used up, 200.
    pub fn script(&self, op: &str, statuses: &[u16]) {
        self.lock()
            .scripts
            .insert(op.to_owned(), statuses.iter().copied().collect());
    }

    /// Each branch's first `n` calls of `op` answer 500.
    pub fn fail_first(&self, op: &str, n: usize) {
        self.lock().fail_first.insert(op.to_owned(), n);
    }

    /// The next `times` calls of `op` wait `delay` before answering.
    pub fn delay(&self, op: &str, delay: Duration, times: usize) {
        self.lock().delays.insert(op.to_owned(), (delay, times));
    }

    /// How many calls of `op` have arrived, answered or not.
    pub fn arrived(&self, op: &str) -> usize {
        self.lock().arrived.get(op).copied().unwrap_or(0)
    }

    /// Every call answered so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// How many calls of `op` on branch `branch_id` of `gid` were answered `status`.
    pub fn answered(&self, gid: &str, branch_id: &str, op: &str, status: u16) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.params.gid == gid && c.params.branch_id == branch_id)
            .filter(|c| c.params.op == op && c.answered == status)
            .count()
    }

    /// Asserts that every one of `branches` of `gid` was confirmed (answered 200 at least
    /// once) and that nothing of `gid` was cancelled.
    ///
    /// # Panics
    /// When a branch was not confirmed or a cancel was made; the message names which.
    pub fn assert_confirmed_everywhere(&self, gid: &str, branches: &[&str]) {
        for branch in branches {
            assert!(
                self.answered(gid, branch, "confirm", 200) >= 1,
                "{gid}: branch {branch} was confirmed"
            );
        }
        assert!(
            self.answers(gid, "cancel").is_empty(),
            "{gid}: nothing was cancelled"
        );
    }

    /// The statuses answered to calls of `op` for `gid`, in order.
    pub fn answers(&self, gid: &str, op: &str) -> Vec<u16> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.params.gid == gid && c.params.op == op)
            .map(|c| c.answered)
            .collect()
    }

    /// Runs a TCC through the SDK with `branches` branches served by this participant (body
    /// `{"n": i}` for branch i, from 0), submitting on success and aborting on any error.
    ///
    /// # Errors
    /// A branch's Try failed, or the coordinator refused.
    pub async fn run_tcc(
        &self,
        client: &settle_sdk::SettleClient,
        request: settle_protocol::GlobalRequest,
        branches: usize,
    ) -> Result<(), settle_sdk::SdkError> {
        let p = self.clone();
        client
            .tcc_global_with(request, |tcc| async move {
                for n in 0..branches {
                    tcc.call_branch(
                        &serde_json::json!({ "n": n }),
                        &p.url("try"),
                        &p.url("confirm"),
                        &p.url("cancel"),
                    )
                    .await?;
                }
                Ok(())
            })
            .await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Behaviour> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn participant_call(
    State(state): State<Arc<Mutex<Behaviour>>>,
    Path(op): Path<String>,
    Query(params): Query<BranchParams>,
    headers: axum::http::HeaderMap,
    body: String,
) -> Response {
    let (status, delay) = {
        let mut b = state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *b.arrived.entry(op.clone()).or_default() += 1;
        let earlier = b
            .calls
            .iter()
            .filter(|c| {
                c.params.gid == params.gid
                    && c.params.branch_id == params.branch_id
                    && c.params.op == op
            })
            .count();
        let mut status = b
            .scripts
            .get_mut(&op)
            .and_then(VecDeque::pop_front)
            .unwrap_or(200);
        if earlier < b.fail_first.get(&op).copied().unwrap_or(0) {
            status = 500;
        }
        let delay = match b.delays.get_mut(&op) {
            Some((d, times)) if *times > 0 => {
                *times -= 1;
                Some(*d)
            }
            _ => None,
        };
        (status, delay)
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .calls
        .push(Call {
            route: op.clone(),
            params,
            body,
            answered: status,
            at: Instant::now(),
            traceparent: headers
                .get(settle_protocol::trace::HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        });
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match status {
        200 => (code, r#"{"dtm_result":"SUCCESS"}"#).into_response(),
        409 => (code, r#"{"dtm_result":"FAILURE"}"#).into_response(),
        425 => (code, "ONGOING").into_response(),
        _ => (code, "scripted error").into_response(),
    }
}

/// A free port on 127.0.0.1.
///
/// # Errors
/// No port can be bound.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The real coordinator, started as a separate process.
pub struct SettleProcess {
    child: tokio::process::Child,
    /// Base URL of its DTM API.
    pub api: String,
}

impl SettleProcess {
    /// Starts `binary serve` (the `settle` entry point; integration tests pass
    /// `env!("CARGO_BIN_EXE_settle-under-test")`) on a free port with these extra arguments,
    /// and waits until it answers.
    ///
    /// # Errors
    /// It does not start or answer within 30 s.
    pub async fn start(binary: &str, database_url: &str, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(binary, database_url, extra, &[]).await
    }

    /// [`SettleProcess::start`] with extra environment variables (such as `FAILPOINTS`).
    ///
    /// # Errors
    /// It does not start or answer within 30 s.
    pub async fn start_with_env(
        binary: &str,
        database_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_at(binary, free_port()?, database_url, extra, env).await
    }

    /// [`SettleProcess::start_with_env`] on a given port (to restart an instance where its
    /// clients expect it).
    ///
    /// # Errors
    /// It does not start or answer within 30 s.
    pub async fn start_at(
        binary: &str,
        port: u16,
        database_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let listen = format!("127.0.0.1:{port}");
        let child = tokio::process::Command::new(binary)
            .args(["serve", "--listen", &listen, "--database-url", database_url])
            .args(extra)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the settle binary")?;
        let api = format!("http://{listen}/api/dtmsvr");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http.get(format!("{api}/version")).send().await.is_ok() {
                return Ok(Self { child, api });
            }
            if Instant::now() > deadline {
                bail!("settle did not answer on {listen} within 30s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether the process ended by itself within `within`.
    pub async fn ended_within(&mut self, within: Duration) -> bool {
        matches!(
            tokio::time::timeout(within, self.child.wait()).await,
            Ok(Ok(_))
        )
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    ///
    /// # Errors
    /// The process cannot be killed.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
///
/// # Errors
/// The condition did not hold in time; the message names `what`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A test topic with a unique name, created (4 queues) before anyone consumes it.
///
/// # Errors
/// The broker cannot be reached.
pub async fn new_topic(client: &settle_rocketmq::Client, prefix: &str) -> anyhow::Result<String> {
    new_topic_at(client, &rocketmq_namesrv(), prefix).await
}

/// [`new_topic`] on the broker of the name server `namesrv`.
///
/// # Errors
/// The broker cannot be reached.
pub async fn new_topic_at(
    client: &settle_rocketmq::Client,
    namesrv: &str,
    prefix: &str,
) -> anyhow::Result<String> {
    let topic = format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let mut producer = settle_rocketmq::Producer::start(
        client,
        namesrv,
        &format!("{topic}-admin"),
        Duration::from_secs(3),
    )
    .await?;
    let mut last = None;
    for _ in 0..30 {
        match producer.create_topic(&topic, 4).await {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    producer.shutdown().await;
    if let Some(e) = last {
        bail!("cannot create topic {topic}: {e}");
    }
    Ok(topic)
}

/// Records every message of a topic, in the order the orderly consumer hands them out.
pub struct Collector {
    received: Arc<Mutex<Vec<(settle_rocketmq::Delivery, Instant)>>>,
    consumer: settle_rocketmq::OrderlyConsumer,
}

impl Collector {
    /// Starts consuming `topic` with a fresh consumer group.
    ///
    /// # Errors
    /// The consumer cannot start.
    pub async fn start(client: &settle_rocketmq::Client, topic: &str) -> anyhow::Result<Self> {
        Self::start_at(client, &rocketmq_namesrv(), topic).await
    }

    /// [`Collector::start`] on the broker of the name server `namesrv`.
    ///
    /// # Errors
    /// The consumer cannot start.
    pub async fn start_at(
        client: &settle_rocketmq::Client,
        namesrv: &str,
        topic: &str,
    ) -> anyhow::Result<Self> {
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let handler: settle_rocketmq::Handler = Arc::new(move |d: settle_rocketmq::Delivery| {
            let sink = sink.clone();
            Box::pin(async move {
                sink.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((d, Instant::now()));
                Ok(())
            }) as futures_util::future::BoxFuture<'static, Result<(), String>>
        });
        let group = format!(
            "{topic}-collector-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let consumer =
            settle_rocketmq::OrderlyConsumer::start(client, namesrv, &group, topic, handler)
                .await?;
        Ok(Self { received, consumer })
    }

    /// Everything received so far, in order, duplicates included.
    pub fn received(&self) -> Vec<(settle_rocketmq::Delivery, Instant)> {
        self.received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The distinct message ids received so far.
    pub fn distinct_ids(&self) -> std::collections::HashSet<String> {
        self.received()
            .into_iter()
            .map(|(d, _)| d.message_id)
            .collect()
    }

    /// Stops consuming.
    pub async fn shutdown(self) {
        self.consumer.shutdown().await;
    }
}
