//! The driver: runs concurrent random transfers through a coordinator, waits for every one
//! to settle, and checks the books.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use settle_sdk::{Saga, SettleClient};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{ConnectOptions, MySqlPool};

use crate::bank::{self, Faults, Movement};
use settle_sdk::cache::{CacheSettings, VersionedCache};
use settle_sdk::consumer::{CacheConsumer, CacheUpdate, Decoder};
use settle_sdk::protocol::GlobalRequest;
use std::collections::BTreeMap;

/// How a transfer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// A TCC: the initiator tries both branches, the coordinator confirms or cancels them.
    #[default]
    Tcc,
    /// A saga of two steps (TransOut, then TransIn): the coordinator runs them and, if one
    /// fails, compensates what ran.
    Saga,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// TCC or saga.
    pub mode: Mode,
    /// Base URL of the coordinator's DTM API.
    pub coordinator: String,
    /// MySQL server URL, without a database (`mysql://root@127.0.0.1:3306`).
    pub mysql: String,
    /// Prefix of the two banks' databases: `{prefix}_a` and `{prefix}_b` (recreated).
    pub database_prefix: String,
    /// Transfers in all.
    pub transfers: usize,
    /// Transfers running at once.
    pub concurrency: usize,
    /// Accounts per bank.
    pub accounts: i64,
    /// Opening balance of every account, in cents.
    pub opening_balance: i64,
    /// Failures injected into the banks.
    pub faults: Faults,
    /// How long to wait for every transaction to settle.
    pub settle_timeout: Duration,
    /// Emit balance changes after commit and keep a Redis balance cache from them.
    pub balance_events: Option<BalanceEvents>,
}

/// Where balance changes go: each committed transfer carries one message per account it
/// touched (keyed by bank and account), and a cache consumer keeps `balance:{bank}:{id}` in
/// Redis with the account's settled balance, versioned by the row's settled version.
#[derive(Debug, Clone)]
pub struct BalanceEvents {
    /// RocketMQ name server (the coordinator must publish to the same one).
    pub namesrv: String,
    /// Topic (created if missing).
    pub topic: String,
    /// Redis URL.
    pub redis: String,
}

/// What happened, and whether the books balance.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Transfers attempted.
    pub transfers: usize,
    /// Transactions that ended `succeed`.
    pub committed: usize,
    /// Transactions that ended `failed` (rolled back).
    pub rolled_back: usize,
    /// Money in both banks before.
    pub total_before: i64,
    /// Money in both banks after (balances).
    pub total_after: i64,
    /// Money still frozen or incoming after settling (must be 0).
    pub in_flight_after: i64,
    /// Accounts below zero (must be 0).
    pub negative_accounts: i64,
    /// Seconds from the first transfer to the last settlement.
    pub seconds: f64,
    /// With balance events: cache entries that differ from the database after settling.
    pub cache_mismatches: Option<usize>,
}

impl Report {
    /// Whether no money was created or lost and nothing is left half done.
    pub fn conserved(&self) -> bool {
        self.total_before == self.total_after
            && self.in_flight_after == 0
            && self.negative_accounts == 0
            && self.committed + self.rolled_back == self.transfers
            && self.cache_mismatches.unwrap_or(0) == 0
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "transfers:        {}", self.transfers)?;
        writeln!(f, "committed:        {}", self.committed)?;
        writeln!(f, "rolled back:      {}", self.rolled_back)?;
        writeln!(f, "total before:     {}", self.total_before)?;
        writeln!(f, "total after:      {}", self.total_after)?;
        writeln!(f, "still in flight:  {}", self.in_flight_after)?;
        writeln!(f, "negative accounts: {}", self.negative_accounts)?;
        writeln!(f, "settled in:       {:.1}s", self.seconds)?;
        if let Some(n) = self.cache_mismatches {
            writeln!(f, "cache mismatches: {n}")?;
        }
        write!(
            f,
            "check:            {}",
            if self.conserved() {
                "OK, no money created or lost"
            } else {
                "VIOLATED"
            }
        )
    }
}

/// Names of the two banks, as in their databases and cache keys.
pub const BANKS: [&str; 2] = ["a", "b"];

/// The Redis balance cache and the consumer keeping it.
struct BalanceCache {
    cache: VersionedCache,
    consumer: CacheConsumer,
    client: settle_rocketmq::Client,
}

impl BalanceCache {
    async fn start(e: &BalanceEvents, pools: &[MySqlPool; 2]) -> anyhow::Result<Self> {
        let client = settle_rocketmq::Client::new("transfer")?;
        let mut admin = settle_rocketmq::Producer::start(
            &client,
            &e.namesrv,
            &format!("{}-admin", e.topic),
            Duration::from_secs(3),
        )
        .await?;
        admin
            .create_topic(&e.topic, 8)
            .await
            .context("cannot create the balance topic")?;
        admin.shutdown().await;
        let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let cache = VersionedCache::connect(
            &e.redis,
            CacheSettings {
                dedupe_prefix: format!("settle:seen:{run}:"),
                ..CacheSettings::default()
            },
        )
        .await?;
        for (bank, pool) in BANKS.iter().zip(pools) {
            for (id, _, _) in bank::all_settled(pool).await? {
                cache.purge(&format!("balance:{bank}:{id}")).await?;
            }
        }
        let pools = pools.clone();
        // The message says which account changed; the cache takes the account's settled
        // balance from its database, versioned, so an old read never wins over a newer one.
        let decode: Decoder = Arc::new(move |d| {
            let pools = pools.clone();
            Box::pin(async move {
                let v: serde_json::Value = serde_json::from_slice(&d.body)
                    .map_err(|e| format!("bad balance event {}: {e}", d.message_id))?;
                let bank = v["bank"].as_str().unwrap_or_default().to_owned();
                let account = v["account"]
                    .as_i64()
                    .ok_or("balance event without an account")?;
                let pool = &pools[BANKS
                    .iter()
                    .position(|b| *b == bank)
                    .ok_or("balance event for an unknown bank")?];
                let (balance, version) = bank::settled(pool, account)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Some(CacheUpdate {
                    key: format!("balance:{bank}:{account}"),
                    version,
                    value: balance.to_string(),
                }))
            })
        });
        let consumer = CacheConsumer::start(
            &client,
            &e.namesrv,
            &format!("transfer-cache-{run}"),
            &e.topic,
            cache.clone(),
            decode,
        )
        .await?;
        Ok(Self {
            cache,
            consumer,
            client,
        })
    }

    /// Waits until every account changed by a confirm is cached with its settled balance and
    /// version, or the deadline passes; returns how many still differ.
    async fn settle(&self, pools: &[MySqlPool; 2], deadline: Instant) -> anyhow::Result<usize> {
        loop {
            let mut mismatches = 0;
            for (bank, pool) in BANKS.iter().zip(pools) {
                for (id, balance, version) in bank::all_settled(pool).await? {
                    if version == 0 {
                        continue;
                    }
                    let cached = self.cache.get(&format!("balance:{bank}:{id}")).await?;
                    if cached.map(|e| (e.version, e.value)) != Some((version, balance.to_string()))
                    {
                        mismatches += 1;
                    }
                }
            }
            if mismatches == 0 || Instant::now() > deadline {
                return Ok(mismatches);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn shutdown(self) {
        self.consumer.shutdown().await;
        self.client.shutdown().await;
    }
}

async fn bank_pool(mysql: &str, database: &str) -> anyhow::Result<MySqlPool> {
    let mut admin = MySqlConnectOptions::from_str(mysql)?
        .connect()
        .await
        .with_context(|| format!("cannot reach MySQL at {mysql}"))?;
    sqlx::query(&format!("CREATE DATABASE IF NOT EXISTS {database}"))
        .execute(&mut admin)
        .await?;
    let options = MySqlConnectOptions::from_str(mysql)?.database(database);
    Ok(MySqlPoolOptions::new()
        .max_connections(16)
        .connect_with(options)
        .await?)
}

/// One transfer: `amount` from an account at one bank to an account at the other, in one
/// global transaction (a TCC with debit branch `01` and credit branch `02`, or a saga whose
/// step `01` takes the money out and step `02` puts it in).
#[derive(Debug, Clone)]
pub struct Transfer {
    /// The global transaction id.
    pub gid: String,
    /// Base URLs of the bank debited and the bank credited.
    pub banks: (String, String),
    /// Their names (`a`, `b`), as in message keys.
    pub names: (&'static str, &'static str),
    /// Account debited, account credited.
    pub accounts: (i64, i64),
    /// Cents.
    pub amount: i64,
}

impl Transfer {
    /// Runs it through `client` as `mode` says (see [`Transfer::run`] and
    /// [`Transfer::run_saga`]).
    ///
    /// # Errors
    /// As those.
    pub async fn run_as(
        &self,
        mode: Mode,
        client: &SettleClient,
        topic: Option<&str>,
    ) -> Result<(), settle_sdk::SdkError> {
        match mode {
            Mode::Tcc => self.run(client, topic, 0).await,
            Mode::Saga => self.run_saga(client).await,
        }
    }

    /// Runs it through `client` as a saga: TransOut at the source bank (compensated by
    /// TransOutRevert), then TransIn at the destination (compensated by TransInRevert).
    ///
    /// # Errors
    /// The coordinator refuses the saga or cannot be reached. A step that fails is not an
    /// error here: the coordinator compensates, and the saga ends `failed`.
    pub async fn run_saga(&self, client: &SettleClient) -> Result<(), settle_sdk::SdkError> {
        let (src, dst) = (&self.banks.0, &self.banks.1);
        let debit = Movement {
            account: self.accounts.0,
            amount: self.amount,
        };
        let credit = Movement {
            account: self.accounts.1,
            amount: self.amount,
        };
        Saga::new(client, &self.gid)
            .add(
                &format!("{src}/trans-out"),
                &format!("{src}/trans-out-revert"),
                &debit,
            )?
            .add(
                &format!("{dst}/trans-in"),
                &format!("{dst}/trans-in-revert"),
                &credit,
            )?
            .submit()
            .await
    }

    /// Runs it through `client`. With a `topic`, the transaction carries one message per
    /// account (keyed `{bank}-{account}`), delivered after commit. A `timeout_to_fail_s` above
    /// 0 has the coordinator roll it back if it is not submitted in time.
    ///
    /// # Errors
    /// As [`SettleClient::tcc_global_with`]: a refused Try, an unreachable coordinator.
    pub async fn run(
        &self,
        client: &SettleClient,
        topic: Option<&str>,
        timeout_to_fail_s: i64,
    ) -> Result<(), settle_sdk::SdkError> {
        let mut request = GlobalRequest::new(&self.gid, "tcc");
        if timeout_to_fail_s > 0 {
            request.timeout_to_fail = timeout_to_fail_s;
        }
        if let Some(topic) = topic {
            // After commit, tell the world both balances changed.
            for (name, account) in [
                (self.names.0, self.accounts.0),
                (self.names.1, self.accounts.1),
            ] {
                request.steps.push(BTreeMap::from([(
                    "action".to_owned(),
                    format!("rocketmq://{topic}?key={name}-{account}&tag=balance"),
                )]));
                request
                    .payloads
                    .push(serde_json::json!({"bank": name, "account": account}).to_string());
            }
        }
        let (src, dst) = (&self.banks.0, &self.banks.1);
        let (debit, credit) = (
            Movement {
                account: self.accounts.0,
                amount: self.amount,
            },
            Movement {
                account: self.accounts.1,
                amount: self.amount,
            },
        );
        client
            .tcc_global_with(request, |tcc| async move {
                tcc.call_branch(
                    &debit,
                    &format!("{src}/debit/try"),
                    &format!("{src}/debit/confirm"),
                    &format!("{src}/debit/cancel"),
                )
                .await?;
                tcc.call_branch(
                    &credit,
                    &format!("{dst}/credit/try"),
                    &format!("{dst}/credit/confirm"),
                    &format!("{dst}/credit/cancel"),
                )
                .await?;
                Ok(())
            })
            .await
    }
}

/// Runs the transfers and returns the report.
///
/// # Errors
/// MySQL or the coordinator cannot be reached, or the transactions do not settle in time.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(
        options
            .database_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "database prefix may hold only letters, digits and _"
    );
    anyhow::ensure!(
        options.accounts > 0 && options.concurrency > 0,
        "accounts and concurrency must be positive"
    );
    anyhow::ensure!(
        options.mode == Mode::Tcc || options.balance_events.is_none(),
        "balance events need TCC transfers: a saga's messages go out only when it succeeds, \
         so a compensated saga would leave its accounts' cached balances behind"
    );
    let pools = [
        bank_pool(&options.mysql, &format!("{}_a", options.database_prefix)).await?,
        bank_pool(&options.mysql, &format!("{}_b", options.database_prefix)).await?,
    ];
    let mut urls = Vec::new();
    for pool in &pools {
        bank::reset(pool, options.accounts, options.opening_balance).await?;
        urls.push(bank::serve(pool.clone(), options.faults).await?);
    }
    let total_before = 2 * options.accounts * options.opening_balance;
    let events = match &options.balance_events {
        Some(e) => Some(BalanceCache::start(e, &pools).await?),
        None => None,
    };
    let topic = options.balance_events.as_ref().map(|e| e.topic.clone());
    let client = SettleClient::new(options.coordinator.clone());
    let started = Instant::now();

    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..options.concurrency {
        let (client, urls, next, options, topic) = (
            client.clone(),
            urls.clone(),
            next.clone(),
            options.clone(),
            topic.clone(),
        );
        workers.spawn(async move {
            let mut gids = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < options.transfers as u64 {
                let (from, amount, a, b) = {
                    let mut rng = rand::rng();
                    (
                        rng.random_range(0..2usize),
                        rng.random_range(1..=options.opening_balance.max(1) / 2 + 1),
                        rng.random_range(1..=options.accounts),
                        rng.random_range(1..=options.accounts),
                    )
                };
                let gid = client.new_gid().await?;
                // A refused transfer (injected failure, insufficient funds) is a normal
                // outcome: the coordinator rolls it back.
                let one = Transfer {
                    gid: gid.clone(),
                    banks: (urls[from].clone(), urls[1 - from].clone()),
                    names: (BANKS[from], BANKS[1 - from]),
                    accounts: (a, b),
                    amount,
                };
                let _ = one.run_as(options.mode, &client, topic.as_deref()).await;
                gids.push(gid);
            }
            anyhow::Ok(gids)
        });
    }
    let mut gids = Vec::with_capacity(options.transfers);
    while let Some(r) = workers.join_next().await {
        gids.extend(r??);
    }

    let (mut committed, mut rolled_back) = (0, 0);
    let deadline = Instant::now() + options.settle_timeout;
    for gid in &gids {
        let left = deadline.saturating_duration_since(Instant::now());
        match client
            .wait_final(gid, left)
            .await
            .with_context(|| format!("transaction {gid} did not settle"))?
            .as_str()
        {
            "succeed" => committed += 1,
            _ => rolled_back += 1,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cache_mismatches = match events {
        Some(cache) => {
            let n = cache.settle(&pools, deadline).await?;
            cache.shutdown().await;
            Some(n)
        }
        None => None,
    };
    let (mut total_after, mut in_flight_after, mut negative_accounts) = (0, 0, 0);
    for pool in &pools {
        let (balance, frozen, incoming, negative) = bank::totals(pool).await?;
        total_after += balance;
        in_flight_after += frozen + incoming;
        negative_accounts += negative;
    }
    Ok(Report {
        transfers: gids.len(),
        committed,
        rolled_back,
        total_before,
        total_after,
        in_flight_after,
        negative_accounts,
        seconds,
        cache_mismatches,
    })
}
