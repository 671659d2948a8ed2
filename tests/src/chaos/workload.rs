//! The chaos runner's workloads, run through the balancer while faults come and go, each
//! recording what its initiators were told so the checker can hold it against what happened.
//!
//! - **Transfers** (TCC): money moves between two banks (the transfer example's account
//!   services, with their barrier), each transfer carrying two balance-changed messages keyed
//!   by account. The banks refuse a share of Tries and fail a share of Confirms on purpose.
//! - **Orders** (transactional messages): the ordered-orders example's service moves orders
//!   through their states, each step one local transaction with a message keyed by the
//!   order; a cache consumer keeps each order's state in Redis.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use settle_example_ordered_orders::STATES;
use settle_sdk::{SdkError, SettleClient};
use sqlx::MySqlPool;

/// What an initiator was told of its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Told {
    /// Committed (`Ok`). For a saga, submitted: it is stored and runs to an end, `succeed`
    /// or `failed`.
    Committed,
    /// A FAILURE answer: it did not and will not commit. For a saga, that it is stored and
    /// rolling back (a resubmit answered that it is, or `wait_result` saw it turn).
    RolledBack,
    /// Any other error that tells: it did not and will not commit; a saga was not stored.
    NotCommitted,
    /// The outcome is unknown (the SDK says so).
    Unknown,
}

impl Told {
    pub(super) fn of<T>(r: &Result<T, SdkError>) -> Self {
        match r {
            Ok(_) => Self::Committed,
            Err(SdkError::OutcomeUnknown { .. }) => Self::Unknown,
            Err(SdkError::Failure { .. }) => Self::RolledBack,
            Err(_) => Self::NotCommitted,
        }
    }
}

/// One transfer: `amount` from account `from_account` of bank `from` to account `to_account`
/// of the other bank.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// Its global transaction.
    pub gid: String,
    /// Bank debited (0 or 1); the other is credited.
    pub from: usize,
    /// Account debited.
    pub from_account: i64,
    /// Account credited.
    pub to_account: i64,
    /// Cents.
    pub amount: i64,
    /// What the initiator was told.
    pub told: Told,
}

/// Shared between a workload's workers and the runner.
#[derive(Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Asks the workers to stop after their current transaction.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub(super) fn stopped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Where a transfer workload runs.
#[derive(Clone)]
pub struct Transfers {
    /// Initiator's client (through the balancer).
    pub client: SettleClient,
    /// Base URLs of the two banks (through their fault proxies).
    pub banks: [String; 2],
    /// Accounts per bank.
    pub accounts: i64,
    /// Topic of balance-changed messages.
    pub topic: String,
    /// Seconds after which an unsubmitted transfer is rolled back by the coordinator.
    pub timeout_to_fail_s: i64,
}

impl Transfers {
    /// Runs `workers` initiators until `stop`; returns every transfer begun.
    pub async fn run(self, workers: usize, stop: Stop) -> Vec<Transfer> {
        let done = Arc::new(Mutex::new(Vec::new()));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let (w, stop, done) = (self.clone(), stop.clone(), done.clone());
            set.spawn(async move {
                while !stop.stopped() {
                    let t = w.one().await;
                    let refused = t.told != Told::Committed;
                    lock(&done).push(t);
                    if refused {
                        // As a client would: do not hammer a system that just said no.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
        let all = std::mem::take(&mut *lock(&done));
        all
    }

    async fn one(&self) -> Transfer {
        let (from, from_account, to_account, amount) = {
            let mut rng = rand::rng();
            (
                rng.random_range(0..2usize),
                rng.random_range(1..=self.accounts),
                rng.random_range(1..=self.accounts),
                rng.random_range(1..=500),
            )
        };
        let gid = format!("chaos-t-{}", uuid::Uuid::new_v4().simple());
        let one = settle_example_transfer::Transfer {
            gid: gid.clone(),
            banks: (self.banks[from].clone(), self.banks[1 - from].clone()),
            names: (["a", "b"][from], ["a", "b"][1 - from]),
            accounts: (from_account, to_account),
            amount,
        };
        let r = one
            .run(&self.client, Some(&self.topic), self.timeout_to_fail_s)
            .await;
        Transfer {
            gid,
            from,
            from_account,
            to_account,
            amount,
            told: Told::of(&r),
        }
    }
}

/// Where the order workload runs.
#[derive(Clone)]
pub struct Orders {
    /// The order service (its client goes through the balancer).
    pub service: settle_example_ordered_orders::service::OrderService,
    /// The service's database, read to learn where an order is.
    pub pool: MySqlPool,
    /// The last order id taken (ids start at 1), shared with whoever reads the orders.
    pub last_id: Arc<AtomicI64>,
}

/// What the order workload did.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderCounts {
    /// Steps the service was told committed.
    pub committed: u64,
    /// Steps that failed (the message was dropped, or the outcome was left open).
    pub failed: u64,
}

/// Attempts at one step of an order before it is left where it is.
const STEP_ATTEMPTS: usize = 5;

impl Orders {
    /// Runs `workers` workers until `stop`, each taking a new order and moving it through
    /// every state, one local transaction with its message per step. A step that fails is
    /// tried again from where the database says the order is (a step whose answer was lost
    /// may have committed).
    pub async fn run(self, workers: usize, stop: Stop) -> OrderCounts {
        let (committed, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let (w, stop) = (self.clone(), stop.clone());
            let (committed, failed) = (committed.clone(), failed.clone());
            set.spawn(async move {
                while !stop.stopped() {
                    let id = w.last_id.fetch_add(1, Ordering::Relaxed) + 1;
                    let mut attempts = 0;
                    while attempts < STEP_ATTEMPTS && !stop.stopped() {
                        let step = match w.step_of(id).await {
                            Some(step) if step >= STATES.len() => break,
                            Some(step) => step,
                            None => {
                                attempts += 1;
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                continue;
                            }
                        };
                        if w.service.advance(id, step).await.is_ok() {
                            committed.fetch_add(1, Ordering::Relaxed);
                            attempts = 0;
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                            attempts += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
        OrderCounts {
            committed: committed.load(Ordering::Relaxed),
            failed: failed.load(Ordering::Relaxed),
        }
    }

    /// The next step of order `id` (0 if it does not exist yet); none if the database cannot
    /// tell now.
    async fn step_of(&self, id: i64) -> Option<usize> {
        let version: Option<i64> = sqlx::query_scalar("SELECT version FROM orders WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .ok()?;
        Some(usize::try_from(version.unwrap_or(0)).unwrap_or(0))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
