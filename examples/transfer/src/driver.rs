//! The driver: runs concurrent random transfers through a coordinator, waits for every one
//! to settle, and checks the books.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use settle_sdk::SettleClient;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{ConnectOptions, MySqlPool};

use crate::bank::{self, Faults, Movement};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
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
}

impl Report {
    /// Whether no money was created or lost and nothing is left half done.
    pub fn conserved(&self) -> bool {
        self.total_before == self.total_after
            && self.in_flight_after == 0
            && self.negative_accounts == 0
            && self.committed + self.rolled_back == self.transfers
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
    let client = SettleClient::new(options.coordinator.clone());
    let started = Instant::now();

    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..options.concurrency {
        let (client, urls, next, options) =
            (client.clone(), urls.clone(), next.clone(), options.clone());
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
                let (src, dst) = (urls[from].clone(), urls[1 - from].clone());
                let gid = client.new_gid().await?;
                // A refused transfer (injected failure, insufficient funds) is a normal
                // outcome: the coordinator rolls it back.
                let _ = client
                    .tcc_global(&gid, |tcc| async move {
                        let debit = Movement { account: a, amount };
                        tcc.call_branch(
                            &debit,
                            &format!("{src}/debit/try"),
                            &format!("{src}/debit/confirm"),
                            &format!("{src}/debit/cancel"),
                        )
                        .await?;
                        let credit = Movement { account: b, amount };
                        tcc.call_branch(
                            &credit,
                            &format!("{dst}/credit/try"),
                            &format!("{dst}/credit/confirm"),
                            &format!("{dst}/credit/cancel"),
                        )
                        .await?;
                        Ok(())
                    })
                    .await;
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
    })
}
