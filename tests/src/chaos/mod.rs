//! The chaos runner: Settle's promises checked under a seeded schedule of faults.
//!
//! [`run`] starts three coordinators (the third with a clock 30 s fast) on one MySQL
//! database behind a round-robin [`balancer::Balancer`], with fault proxies ([`crate::proxy::FaultProxy`]) between the
//! coordinators and MySQL, between the participants and their databases, in front of each
//! bank, between the cache consumer and Redis, and between everyone and the RocketMQ broker
//! (a MariaDB, a Redis server and a broker of its own, so that they can be crashed). It runs the [`workload`]s (transfers by
//! TCC, ordered orders by transactional messages) and the [`plain`] load (TCCs, messages and
//! sagas against a participant that only records) while injecting the faults of
//! [`schedule::schedule`] for the seed, one at a time. Then it heals everything, stops the
//! workloads, and gathers [`check::Evidence`] from every side until [`check::check`] finds
//! no violation or the settle timeout passes. The [`Report`] prints as a table.
//!
//! The same seed gives the same fault schedule (the workloads' own choices and the timing of
//! the machine still vary); `settle-chaos --seed S --duration D` replays one.

pub mod balancer;
pub mod check;
pub mod mariadb;
pub mod plain;
pub mod redis;
pub mod schedule;
pub mod workload;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::process::Stdio;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use settle_example_ordered_orders::service::OrderService;
use settle_example_transfer::bank::{self, Faults};
use settle_sdk::cache::{CacheSettings, VersionedCache};
use settle_sdk::consumer::CacheConsumer;
use settle_sdk::SettleClient;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{ConnectOptions, MySqlPool, Row};

use crate::broker::OwnBroker;
use crate::proxy::{FaultProxy, Stream, Toxic};
use crate::{new_topic_at, Collector, SettleProcess};
use check::{Evidence, Outboxed, Violation};
use schedule::{Fault, Planned, COORDINATORS};
use workload::{OrderCounts, Orders, Stop, Told, Transfer, Transfers};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seed of the fault schedule.
    pub seed: u64,
    /// How long faults are injected.
    pub duration: Duration,
    /// How long everything may take to settle once the faults stopped.
    pub settle_timeout: Duration,
    /// The `settle` binary.
    pub binary: String,
    /// Initiators per workload.
    pub workers: usize,
}

/// What a run did and found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Faults injected for.
    pub duration: Duration,
    /// Transfers begun, and how many committed.
    pub transfers: (usize, usize),
    /// Order steps the service was told committed, and those that failed.
    pub order_steps: OrderCounts,
    /// Messages committed (outbox rows of committed transactions).
    pub messages: usize,
    /// Plain TCCs begun, and how many committed.
    pub plain_tccs: (usize, usize),
    /// Plain messages begun, and how many committed.
    pub plain_messages: (usize, usize),
    /// Plain sagas begun, how many ended `succeed`, and how many ended `failed` (compensated).
    pub plain_sagas: (usize, usize, usize),
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, usize>,
    /// Every fault, with when it started.
    pub fault_log: Vec<String>,
    /// Violations found (none when every promise held).
    pub violations: Vec<Violation>,
    /// Messages received more than once (absorbed by consumers).
    pub duplicates: usize,
    /// From the end of the faults to the first check with no violation.
    pub settled_in: Option<Duration>,
}

impl Report {
    /// Whether every promise held.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {}, faults for {}s",
            self.seed,
            self.duration.as_secs()
        )?;
        writeln!(f, "{:<40} {:>8}", "what", "count")?;
        let row =
            |f: &mut fmt::Formatter<'_>, what: &str, n: String| writeln!(f, "{what:<40} {n:>8}");
        row(f, "transfers (TCC) begun", self.transfers.0.to_string())?;
        row(f, "transfers committed", self.transfers.1.to_string())?;
        row(
            f,
            "order steps (msg) committed",
            self.order_steps.committed.to_string(),
        )?;
        row(
            f,
            "order steps failed or left open",
            self.order_steps.failed.to_string(),
        )?;
        row(f, "messages committed", self.messages.to_string())?;
        row(f, "plain TCCs begun", self.plain_tccs.0.to_string())?;
        row(f, "plain TCCs committed", self.plain_tccs.1.to_string())?;
        row(f, "plain messages begun", self.plain_messages.0.to_string())?;
        row(
            f,
            "plain messages committed",
            self.plain_messages.1.to_string(),
        )?;
        row(f, "plain sagas begun", self.plain_sagas.0.to_string())?;
        row(f, "plain sagas succeeded", self.plain_sagas.1.to_string())?;
        row(f, "plain sagas compensated", self.plain_sagas.2.to_string())?;
        for kind in Fault::KINDS {
            row(
                f,
                &format!("fault: {kind}"),
                self.faults.get(kind).copied().unwrap_or(0).to_string(),
            )?;
        }
        row(
            f,
            "faults in all",
            self.faults.values().sum::<usize>().to_string(),
        )?;
        for kind in check::KINDS {
            let n = self.violations.iter().filter(|v| v.kind == kind).count();
            row(f, &format!("violation: {kind}"), n.to_string())?;
        }
        row(f, "duplicates absorbed", self.duplicates.to_string())?;
        row(
            f,
            "seconds to settle after healing",
            self.settled_in
                .map_or("never".to_owned(), |d| format!("{:.1}", d.as_secs_f64())),
        )?;
        for v in self.violations.iter().take(20) {
            writeln!(f, "  {v}")?;
        }
        write!(
            f,
            "result: {}",
            if self.ok() {
                "OK, every promise held"
            } else {
                "VIOLATED"
            }
        )
    }
}

/// Opening balance of every account, in cents.
const OPENING: i64 = 100_000;
/// Accounts per bank.
const ACCOUNTS: i64 = 20;
/// The order cache as the checker reads it: Redis directly, under this run's prefix.
#[derive(Clone)]
struct OrderCache {
    reader: VersionedCache,
    prefix: String,
    last_id: Arc<AtomicI64>,
}

impl OrderCache {
    fn key(&self, id: i64) -> String {
        format!("{}order:{id}", self.prefix)
    }
}

/// Everything the faults act on.
struct Rig {
    binary: String,
    broker: OwnBroker,
    namesrv: String,
    store_url: String,
    ports: Vec<u16>,
    coordinators: Vec<Option<SettleProcess>>,
    database: FaultProxy,
    participant_database: FaultProxy,
    banks: [FaultProxy; 2],
    redis: FaultProxy,
    redis_server: redis::Redis,
    mariadb: mariadb::MariaDb,
    mariadb_down: bool,
}

const COORDINATOR_FLAGS: [&str; 6] = [
    "--lease-ms",
    "2000",
    "--poll-interval-ms",
    "200",
    "--default-retry-interval-s",
    "1",
];

/// The coordinator whose machine's clock is 30 s fast.
const SKEWED: usize = COORDINATORS - 1;

impl Rig {
    async fn start_coordinator(&mut self, i: usize) -> anyhow::Result<()> {
        let mut flags = COORDINATOR_FLAGS.to_vec();
        flags.extend(["--rocketmq-namesrv", &self.namesrv]);
        if i == SKEWED {
            flags.extend(["--clock-off-by-ms", "30000"]);
        }
        let p = SettleProcess::start_at(
            &self.binary,
            self.ports[i],
            &self.store_url,
            &flags,
            &[("RUST_LOG", "error")],
        )
        .await?;
        self.coordinators[i] = Some(p);
        Ok(())
    }

    async fn signal(&self, i: usize, signal: &str) -> anyhow::Result<()> {
        if let Some(pid) = self.coordinators[i].as_ref().and_then(SettleProcess::pid) {
            tokio::process::Command::new("kill")
                .args([signal, &pid.to_string()])
                .stdout(Stdio::null())
                .status()
                .await?;
        }
        Ok(())
    }

    async fn inject(&mut self, fault: Fault, hold: Duration) -> anyhow::Result<()> {
        const NAME: &str = "chaos";
        match fault {
            Fault::KillCoordinator(i) => {
                if let Some(p) = self.coordinators[i].take() {
                    p.kill().await?;
                }
            }
            Fault::PauseCoordinator(i) => self.signal(i, "-STOP").await?,
            Fault::DatabaseBlackHole => {
                self.database
                    .add(NAME, Stream::Upstream, Toxic::Timeout { timeout: hold })
            }
            Fault::DatabaseResets => self.database.add(
                NAME,
                Stream::Upstream,
                Toxic::ResetPeer {
                    timeout: Duration::ZERO,
                },
            ),
            Fault::SlowParticipant(b) => self.banks[b].add(
                NAME,
                Stream::Downstream,
                Toxic::Latency {
                    latency: Duration::from_millis(500),
                    jitter: Duration::from_millis(300),
                },
            ),
            Fault::ParticipantDown(b) => self.banks[b].disable(),
            Fault::ParticipantDatabaseBlackHole => self.participant_database.add(
                NAME,
                Stream::Upstream,
                Toxic::Timeout { timeout: hold },
            ),
            Fault::BrokerRestart => self.broker.restart_broker().await?,
            Fault::BrokerBlackHole => {
                self.broker
                    .proxy()
                    .add(NAME, Stream::Upstream, Toxic::Timeout { timeout: hold })
            }
            Fault::DatabaseCrash => {
                self.mariadb.kill().await?;
                self.mariadb_down = true;
            }
            Fault::DatabasePause => self.mariadb.pause().await?,
            Fault::RedisRestart => self.redis_server.kill().await?,
            Fault::RedisResets => self.redis.add(
                NAME,
                Stream::Upstream,
                Toxic::ResetPeer {
                    timeout: Duration::ZERO,
                },
            ),
        }
        Ok(())
    }

    /// Heals every fault; restarts killed coordinators.
    async fn heal(&mut self) -> anyhow::Result<()> {
        if self.mariadb_down {
            self.mariadb.restart().await?;
            self.mariadb_down = false;
        }
        self.mariadb.resume().await?;
        self.redis_server.ensure_running().await?;
        for p in [
            &self.database,
            &self.participant_database,
            &self.redis,
            &self.banks[0],
            &self.banks[1],
            self.broker.proxy(),
        ] {
            p.clear();
            p.enable();
        }
        for i in 0..self.coordinators.len() {
            if self.coordinators[i].is_some() {
                self.signal(i, "-CONT").await?;
            } else {
                self.start_coordinator(i).await?;
            }
        }
        Ok(())
    }
}

/// A URL of `server` (a `mysql://` URL) reaching it through `proxy`, with `database`.
fn through(server: &str, proxy: &FaultProxy, database: &str) -> anyhow::Result<String> {
    let mut url = reqwest::Url::parse(server).context("bad MySQL URL")?;
    url.set_host(Some("127.0.0.1"))?;
    url.set_port(Some(proxy.addr().port()))
        .map_err(|()| anyhow::anyhow!("bad MySQL URL"))?;
    url.set_path(database);
    Ok(url.to_string())
}

fn host_port(url: &str) -> anyhow::Result<String> {
    let url = reqwest::Url::parse(url).with_context(|| format!("bad URL {url}"))?;
    Ok(format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port_or_known_default()
            .or(match url.scheme() {
                "mysql" => Some(3306),
                "redis" => Some(6379),
                _ => None,
            })
            .unwrap_or(0)
    ))
}

async fn pool(url: &str) -> anyhow::Result<MySqlPool> {
    Ok(MySqlPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(MySqlConnectOptions::from_str(url)?)
        .await?)
}

/// Runs the chaos and returns its report.
///
/// # Errors
/// A service cannot be reached or set up (a violation is not an error: it is in the report).
pub async fn run(o: &Options) -> anyhow::Result<Report> {
    crate::init();
    let prefix = format!(
        "chaos_{}_{}",
        o.seed,
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let mariadb = mariadb::MariaDb::start().await?;
    let mysql = mariadb.url();
    let mut admin = MySqlConnectOptions::from_str(&mysql)?
        .connect()
        .await
        .with_context(|| format!("cannot reach MySQL at {mysql}"))?;
    let databases = ["store", "a", "b", "orders"].map(|d| format!("{prefix}_{d}"));
    for d in &databases {
        sqlx::query(&format!("CREATE DATABASE {d}"))
            .execute(&mut admin)
            .await?;
    }
    let mysql_addr = host_port(&mysql)?;
    let database = FaultProxy::start(&mysql_addr).await?;
    let participant_database = FaultProxy::start(&mysql_addr).await?;
    let redis_server = redis::Redis::start().await?;
    let redis = FaultProxy::start(&host_port(&redis_server.url())?).await?;
    // A RocketMQ broker of its own, reached by everyone through a proxy.
    let broker = OwnBroker::start().await?;
    let namesrv = broker.namesrv().to_owned();

    // The participants: two banks and the order service, their databases behind a proxy.
    let mut bank_pools = Vec::new();
    let mut bank_proxies = Vec::new();
    for d in &databases[1..3] {
        let p = pool(&through(&mysql, &participant_database, d)?).await?;
        bank::reset(&p, ACCOUNTS, OPENING).await?;
        let url = bank::serve(
            p.clone(),
            Faults {
                try_fail_rate: 0.05,
                confirm_fail_rate: 0.1,
            },
        )
        .await?;
        bank_proxies.push(FaultProxy::start(url.trim_start_matches("http://")).await?);
        bank_pools.push(p);
    }
    let banks: [FaultProxy; 2] = [bank_proxies.remove(0), bank_proxies.remove(0)];
    let direct = |d: &str| format!("{}/{d}", mysql.trim_end_matches('/'));
    let orders_pool = pool(&through(&mysql, &participant_database, &databases[3])?).await?;
    settle_example_ordered_orders::service::reset(&orders_pool).await?;

    let mut rig = Rig {
        binary: o.binary.clone(),
        broker,
        namesrv: namesrv.clone(),
        store_url: through(&mysql, &database, &databases[0])?,
        ports: (0..COORDINATORS)
            .map(|_| crate::free_port())
            .collect::<anyhow::Result<_>>()?,
        coordinators: (0..COORDINATORS).map(|_| None).collect(),
        database,
        participant_database,
        banks,
        redis,
        mariadb,
        redis_server,
        mariadb_down: false,
    };
    for i in 0..COORDINATORS {
        rig.start_coordinator(i).await?;
    }
    let balancer = balancer::Balancer::start(
        rig.ports
            .iter()
            .map(|p| ([127, 0, 0, 1], *p).into())
            .collect(),
    )
    .await?;
    let client = SettleClient::new(format!("http://{}/api/dtmsvr", balancer.addr()))
        .with_outcome_wait(Duration::from_secs(30));

    // Topics, what consumers receive, and the order cache.
    let rmq = settle_rocketmq::Client::new("settle-chaos")?;
    let balance_topic = new_topic_at(&rmq, &namesrv, "ChaosBalance").await?;
    let order_topic = new_topic_at(&rmq, &namesrv, "ChaosOrders").await?;
    let collectors = [
        Collector::start_at(&rmq, &namesrv, &balance_topic).await?,
        Collector::start_at(&rmq, &namesrv, &order_topic).await?,
    ];
    let run_id = &prefix[prefix.len() - 6..];
    let redis_url = format!("redis://{}", rig.redis.addr());
    let cache = VersionedCache::connect(
        &redis_url,
        CacheSettings {
            dedupe_prefix: format!("settle:chaos:{run_id}:"),
            ..CacheSettings::default()
        },
    )
    .await?;
    let order_cache = OrderCache {
        reader: VersionedCache::connect(&rig.redis_server.url(), CacheSettings::default()).await?,
        prefix: format!("settle:chaos:{run_id}:"),
        last_id: Arc::new(AtomicI64::new(0)),
    };
    let consumer = CacheConsumer::start(
        &rmq,
        &namesrv,
        &format!("chaos-cache-{run_id}"),
        &order_topic,
        cache,
        settle_example_ordered_orders::decoder(&order_cache.prefix),
    )
    .await?;
    let went_back = Arc::new(Mutex::new(Vec::new()));
    let sampler = tokio::spawn(sample_cache(order_cache.clone(), went_back.clone()));

    // Load and faults.
    let stop = Stop::default();
    let transfers = Transfers {
        client: client.clone(),
        banks: [0, 1].map(|b| format!("http://{}", rig.banks[b].addr())),
        accounts: ACCOUNTS,
        topic: balance_topic.clone(),
        timeout_to_fail_s: 8,
    };
    let transfer_run = tokio::spawn(transfers.run(o.workers, stop.clone()));
    let service = OrderService::start(orders_pool.clone(), client.clone(), &order_topic).await?;
    let order_run = tokio::spawn(
        Orders {
            service,
            pool: orders_pool.clone(),
            last_id: order_cache.last_id.clone(),
        }
        .run(o.workers, stop.clone()),
    );
    let recorder = plain::Recorder::start().await?;
    let plain_run = tokio::spawn(
        plain::Plain {
            client: client.clone(),
            recorder: recorder.clone(),
            timeout_to_fail_s: 8,
        }
        .run(o.workers.div_ceil(2), stop.clone()),
    );

    let started = Instant::now();
    let mut faults: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut fault_log = Vec::new();
    for Planned { at, hold, fault } in schedule::schedule(o.seed, o.duration) {
        tokio::time::sleep(at.saturating_sub(started.elapsed())).await;
        let line = format!(
            "{:>6.1}s {fault} for {:.1}s",
            started.elapsed().as_secs_f64(),
            hold.as_secs_f64()
        );
        eprintln!("[chaos] {line}");
        fault_log.push(line);
        rig.inject(fault, hold).await?;
        *faults.entry(fault.kind()).or_default() += 1;
        tokio::time::sleep(hold).await;
        rig.heal().await?;
    }
    tokio::time::sleep(o.duration.saturating_sub(started.elapsed())).await;
    rig.heal().await?;
    let healed = Instant::now();
    stop.stop();
    let transfers: Vec<Transfer> = transfer_run.await?;
    let order_steps = order_run.await?;
    let plain_txns: Vec<plain::PlainTxn> = plain_run.await?;
    eprintln!(
        "[chaos] faults healed, load stopped after {:.1}s; waiting for everything to settle",
        started.elapsed().as_secs_f64()
    );

    // Settle, then check.
    let store = pool(&direct(&databases[0])).await?;
    let direct_banks = [
        pool(&direct(&databases[1])).await?,
        pool(&direct(&databases[2])).await?,
    ];
    let orders_direct = pool(&direct(&databases[3])).await?;
    let deadline = healed + o.settle_timeout;
    let (mut violations, mut duplicates, mut settled_in, mut messages, mut sagas);
    loop {
        let mut evidence = gather(
            &transfers,
            &store,
            &direct_banks,
            &orders_direct,
            &order_cache,
            &collectors,
            [&balance_topic, &order_topic],
            &went_back,
        )
        .await?;
        evidence.plain.clone_from(&plain_txns);
        evidence.plain_calls = recorder.calls();
        messages = evidence
            .outbox
            .iter()
            .filter(|m| {
                evidence
                    .statuses
                    .get(&m.gid)
                    .is_some_and(|s| s == "succeed")
            })
            .count();
        sagas = [check::SUCCEED, check::FAILED].map(|status| {
            plain_txns
                .iter()
                .filter(|t| {
                    t.kind == plain::PlainKind::Saga
                        && evidence.statuses.get(&t.gid).is_some_and(|s| s == status)
                })
                .count()
        });
        (violations, duplicates) = check::check(&evidence);
        settled_in = violations.is_empty().then(|| healed.elapsed());
        if violations.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    sampler.abort();
    consumer.shutdown().await;
    for c in collectors {
        c.shutdown().await;
    }
    rmq.shutdown().await;
    for p in rig.coordinators.iter_mut().filter_map(Option::take) {
        p.kill().await?;
    }
    let committed = transfers
        .iter()
        .filter(|t| matches!(t.told, Told::Committed))
        .count();
    let plain_of = |kind: plain::PlainKind| {
        let of_kind = plain_txns.iter().filter(|t| t.kind == kind);
        (
            of_kind.clone().count(),
            of_kind.filter(|t| t.told == Told::Committed).count(),
        )
    };
    let report = Report {
        seed: o.seed,
        duration: o.duration,
        transfers: (transfers.len(), committed),
        order_steps,
        messages,
        plain_tccs: plain_of(plain::PlainKind::Tcc),
        plain_messages: plain_of(plain::PlainKind::Msg),
        plain_sagas: (plain_of(plain::PlainKind::Saga).0, sagas[0], sagas[1]),
        faults,
        fault_log,
        violations,
        duplicates,
        settled_in,
    };
    drop(admin);
    if !report.ok() {
        eprintln!(
            "[chaos] the run's databases ({prefix}_*) are kept in {}",
            rig.mariadb.keep().display()
        );
    }
    Ok(report)
}

/// Reads the order cache every 300 ms and records an entry seen at a lower version than
/// before.
async fn sample_cache(cache: OrderCache, went_back: Arc<Mutex<Vec<String>>>) {
    let mut highest: HashMap<i64, i64> = HashMap::new();
    loop {
        for id in 1..=cache.last_id.load(Ordering::Relaxed) {
            if let Ok(Some(e)) = cache.reader.get(&cache.key(id)).await {
                let top = highest.entry(id).or_insert(e.version);
                if e.version < *top {
                    went_back
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(format!("order:{id} from version {top} to {}", e.version));
                }
                *top = (*top).max(e.version);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn gather(
    transfers: &[Transfer],
    store: &MySqlPool,
    banks: &[MySqlPool; 2],
    orders: &MySqlPool,
    cache: &OrderCache,
    collectors: &[Collector; 2],
    topics: [&str; 2],
    went_back: &Mutex<Vec<String>>,
) -> anyhow::Result<Evidence> {
    let mut e = Evidence {
        transfers: transfers.to_vec(),
        opening_balance: OPENING,
        ..Evidence::default()
    };
    for r in sqlx::query("SELECT gid, status FROM trans_global")
        .fetch_all(store)
        .await?
    {
        e.statuses
            .insert(r.try_get_unchecked(0)?, r.try_get_unchecked(1)?);
    }
    for r in sqlx::query(
        "SELECT message_id, gid, topic, sharding_key, COALESCE(seq, 0), status FROM outbox",
    )
    .fetch_all(store)
    .await?
    {
        e.outbox.push(Outboxed {
            message_id: r.try_get_unchecked(0)?,
            gid: r.try_get_unchecked(1)?,
            topic: r.try_get_unchecked(2)?,
            key: r.try_get_unchecked(3)?,
            seq: r.try_get_unchecked(4)?,
            status: r.try_get_unchecked(5)?,
        });
    }
    for (bank, pool) in e.banks.iter_mut().zip(banks) {
        for r in sqlx::query("SELECT id, balance, frozen, incoming FROM account")
            .fetch_all(pool)
            .await?
        {
            bank.accounts.insert(
                r.try_get_unchecked(0)?,
                (
                    r.try_get_unchecked(1)?,
                    r.try_get_unchecked(2)?,
                    r.try_get_unchecked(3)?,
                ),
            );
        }
        for r in sqlx::query("SELECT gid, branch_id, op, reason FROM barrier")
            .fetch_all(pool)
            .await?
        {
            bank.barrier.insert((
                r.try_get_unchecked(0)?,
                r.try_get_unchecked(1)?,
                r.try_get_unchecked(2)?,
                r.try_get_unchecked(3)?,
            ));
        }
    }
    for r in sqlx::query("SELECT id, version FROM orders")
        .fetch_all(orders)
        .await?
    {
        let id: i64 = r.try_get_unchecked(0)?;
        e.orders.insert(id, r.try_get_unchecked(1)?);
        e.cached_orders.insert(
            id,
            cache.reader.get(&cache.key(id)).await?.map(|c| c.version),
        );
    }
    for (collector, topic) in collectors.iter().zip(topics) {
        e.received.insert(
            topic.to_owned(),
            collector
                .received()
                .into_iter()
                .map(|(d, _)| d.message_id)
                .collect(),
        );
    }
    e.cache_went_back = went_back
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(e)
}
