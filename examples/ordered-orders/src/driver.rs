//! Drives many orders through their states, restarts the broker once, and checks order and
//! cache consistency after everything settled.

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use settle_sdk::cache::{CacheSettings, VersionedCache};
use settle_sdk::consumer::{CacheConsumer, CacheUpdate, Decoder};
use settle_sdk::SettleClient;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{ConnectOptions, Row};

use crate::checker::Checker;
use crate::service::{self, OrderService};
use crate::{OrderEvent, STATES};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Base URL of the coordinator's DTM API (started with a RocketMQ name server).
    pub coordinator: String,
    /// MySQL server URL without a database.
    pub mysql: String,
    /// The order service's database (recreated).
    pub database: String,
    /// Redis URL.
    pub redis: String,
    /// RocketMQ name server.
    pub namesrv: String,
    /// Topic of order events (created if missing).
    pub topic: String,
    /// Orders to drive.
    pub orders: usize,
    /// Orders moving at once.
    pub concurrency: usize,
    /// Shell command that restarts the broker once half the orders have started; empty for
    /// none.
    pub restart_broker: String,
    /// How long to wait for every event after the last change.
    pub settle_timeout: Duration,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Events the order service committed.
    pub events_committed: u64,
    /// Distinct events the checker received.
    pub events_delivered: u64,
    /// Redeliveries dropped by the checker, plus stale or duplicate updates the cache
    /// consumer absorbed.
    pub duplicates_absorbed: u64,
    /// Orders whose events arrived out of sequence (must be 0).
    pub order_violations: usize,
    /// Cache entries that differ from the database after settling (must be 0).
    pub cache_mismatches: usize,
    /// Whether the broker was restarted during the run.
    pub broker_restarted: bool,
}

impl Report {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.events_delivered == self.events_committed
            && self.order_violations == 0
            && self.cache_mismatches == 0
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "events committed:     {}", self.events_committed)?;
        writeln!(f, "events delivered:     {}", self.events_delivered)?;
        writeln!(f, "duplicates absorbed:  {}", self.duplicates_absorbed)?;
        writeln!(f, "order violations:     {}", self.order_violations)?;
        writeln!(f, "cache mismatches:     {}", self.cache_mismatches)?;
        writeln!(
            f,
            "broker restarted:     {}",
            if self.broker_restarted { "yes" } else { "no" }
        )?;
        write!(
            f,
            "check:                {}",
            if self.ok() { "OK" } else { "VIOLATED" }
        )
    }
}

/// Turns an order event into the `{prefix}order:{id}` cache entry it sets (its state,
/// versioned).
pub fn decoder(prefix: &str) -> Decoder {
    let prefix = Arc::new(prefix.to_owned());
    Arc::new(move |d| {
        let prefix = prefix.clone();
        Box::pin(async move {
            let e: OrderEvent = serde_json::from_slice(&d.body)
                .map_err(|e| format!("bad event {}: {e}", d.message_id))?;
            Ok(Some(CacheUpdate {
                key: format!("{prefix}order:{}", e.order),
                version: e.version,
                value: e.state,
            }))
        })
    })
}

/// Runs the example and returns the report.
///
/// # Errors
/// A service cannot be reached, or events do not all arrive in time.
pub async fn run(o: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(
        o.database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "database name may hold only letters, digits and _"
    );
    let mut admin = MySqlConnectOptions::from_str(&o.mysql)?
        .connect()
        .await
        .with_context(|| format!("cannot reach MySQL at {}", o.mysql))?;
    sqlx::query(&format!("CREATE DATABASE IF NOT EXISTS {}", o.database))
        .execute(&mut admin)
        .await?;
    let pool = MySqlPoolOptions::new()
        .max_connections(16)
        .connect_with(MySqlConnectOptions::from_str(&o.mysql)?.database(&o.database))
        .await?;
    service::reset(&pool).await?;

    let rmq = settle_rocketmq::Client::new("ordered-orders")?;
    let mut admin_producer = settle_rocketmq::Producer::start(
        &rmq,
        &o.namesrv,
        &format!("{}-admin", o.topic),
        Duration::from_secs(3),
    )
    .await?;
    admin_producer
        .create_topic(&o.topic, 8)
        .await
        .context("cannot create the topic")?;
    admin_producer.shutdown().await;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let checker = Checker::start(
        &rmq,
        &o.namesrv,
        &format!("checker-{}", &run_id[..8]),
        &o.topic,
    )
    .await?;
    let cache = VersionedCache::connect(
        &o.redis,
        CacheSettings {
            dedupe_prefix: format!("settle:seen:{}:", &run_id[..8]),
            ..CacheSettings::default()
        },
    )
    .await?;
    for id in 1..=o.orders {
        cache.purge(&format!("order:{id}")).await?;
    }
    let cache_consumer = CacheConsumer::start(
        &rmq,
        &o.namesrv,
        &format!("cache-{}", &run_id[..8]),
        &o.topic,
        cache.clone(),
        decoder(""),
    )
    .await?;

    let client = SettleClient::new(o.coordinator.clone());
    let svc = OrderService::start(pool.clone(), client, &o.topic).await?;
    let next = Arc::new(AtomicUsize::new(1));
    let started = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..o.concurrency.max(1) {
        let (svc, next, started, orders) = (svc.clone(), next.clone(), started.clone(), o.orders);
        workers.spawn(async move {
            let mut committed = 0_u64;
            loop {
                let id = next.fetch_add(1, Ordering::Relaxed);
                if id > orders {
                    return anyhow::Ok(committed);
                }
                started.fetch_add(1, Ordering::Relaxed);
                for step in 0..STATES.len() {
                    svc.advance(i64::try_from(id)?, step).await?;
                    committed += 1;
                }
            }
        });
    }
    let mut broker_restarted = false;
    if !o.restart_broker.is_empty() {
        while started.load(Ordering::Relaxed) < o.orders / 2 && !workers.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&o.restart_broker)
            .status()
            .await?;
        if !status.success() {
            bail!(
                "restarting the broker ({}) failed: {status}",
                o.restart_broker
            );
        }
        broker_restarted = true;
    }
    let mut events_committed = 0;
    while let Some(r) = workers.join_next().await {
        events_committed += r??;
    }

    let deadline = Instant::now() + o.settle_timeout;
    while checker.seen().events < events_committed {
        if Instant::now() > deadline {
            bail!(
                "only {} of {events_committed} events arrived within {:?}",
                checker.seen().events,
                o.settle_timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The cache consumer is a second group: give it until its entries match or time runs out.
    let mut cache_mismatches = usize::MAX;
    while Instant::now() < deadline {
        cache_mismatches = 0;
        for row in sqlx::query("SELECT id, state, version FROM orders")
            .fetch_all(&pool)
            .await?
        {
            let (id, state, version): (i64, String, i64) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            let cached = cache.get(&format!("order:{id}")).await?;
            if cached.as_ref().map(|e| (e.version, e.value.as_str()))
                != Some((version, state.as_str()))
            {
                cache_mismatches += 1;
            }
        }
        if cache_mismatches == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seen = checker.seen();
    let (_, stale, cache_dups, _) = cache_consumer.stats().snapshot();
    let report = Report {
        events_committed,
        events_delivered: seen.events,
        duplicates_absorbed: seen.duplicates + stale + cache_dups,
        order_violations: seen.violations.len(),
        cache_mismatches,
        broker_restarted,
    };
    checker.shutdown().await;
    cache_consumer.shutdown().await;
    rmq.shutdown().await;
    Ok(report)
}
