//! The driver: runs rounds of work on transactions this instance holds the lease of.
//!
//! A round drives a [`Claimed`] transaction as far as it can go now: a prepared one that came
//! due is rolled back or checked back ([`round`]); then phase 2 confirms, cancels or delivers
//! its branch operations stage by stage ([`phase_two`]), calling each over HTTP
//! ([`call`]). A round that cannot finish schedules a retry by capped exponential backoff
//! with jitter and gives the lease up, so any instance can take the next round; a confirm or
//! cancel is never given up on.
//!
//! Every change goes through the orchestration layer ([`crate::apply`]) and presents the
//! lease token it was claimed with, so if another instance has taken the transaction over,
//! the write fails and this round stops.

pub mod call;
pub mod phase_two;
pub mod round;
pub mod transport;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::access::Allowlist;
use crate::apply::Orchestrator;
use crate::store::Claimed;
use crate::telemetry::error_chain;
use transport::Transport;

/// Settings of the driver.
#[derive(Debug, Clone)]
pub struct DriverSettings {
    /// How long a lease lasts after it is taken or renewed.
    pub lease: Duration,
    /// Longest interval between retries, in seconds.
    pub retry_cap_s: i64,
    /// Most rounds running at once on this instance.
    pub max_inflight: usize,
    /// Most branch calls one `concurrent` transaction makes at once.
    pub max_concurrent_calls: usize,
    /// Where calls may go; checked before every call (the HTTP client's resolver checks the
    /// addresses).
    pub allowlist: Arc<Allowlist>,
}

/// Runs rounds of work on transactions.
#[derive(Clone)]
pub struct Driver {
    inner: Arc<Inner>,
}

struct Inner {
    apply: Orchestrator,
    transport: Arc<dyn Transport>,
    settings: DriverSettings,
    inflight: Arc<Semaphore>,
    /// Rounds waiting to be run by hand; `None`: rounds run as tasks of their own.
    queue: Option<Mutex<VecDeque<Claimed>>>,
}

/// How a round ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundEnd {
    /// The transaction reached this final status.
    Finished(crate::txn::GlobalStatus),
    /// Work remains; a retry is scheduled. The transaction is in this status.
    Retrying(crate::txn::GlobalStatus),
    /// Not due yet, or another instance took it over.
    Left,
}

impl Driver {
    /// A driver carrying out its changes through `apply`, calling participants through
    /// `transport`.
    pub fn new(
        apply: Orchestrator,
        transport: Arc<dyn Transport>,
        settings: DriverSettings,
    ) -> Self {
        Self::build(apply, transport, settings, None)
    }

    /// A driver whose rounds run only when [`Driver::run_queued`] is called, one at a time:
    /// with everything else run by hand as well, a simulation makes the same calls in the
    /// same order on every run.
    pub fn by_hand(
        apply: Orchestrator,
        transport: Arc<dyn Transport>,
        settings: DriverSettings,
    ) -> Self {
        Self::build(apply, transport, settings, Some(Mutex::default()))
    }

    fn build(
        apply: Orchestrator,
        transport: Arc<dyn Transport>,
        settings: DriverSettings,
        queue: Option<Mutex<VecDeque<Claimed>>>,
    ) -> Self {
        let inflight = Arc::new(Semaphore::new(settings.max_inflight.max(1)));
        Self {
            inner: Arc::new(Inner {
                apply,
                transport,
                settings,
                inflight,
                queue,
            }),
        }
    }

    /// How many more rounds may start now.
    pub fn free_slots(&self) -> usize {
        self.inner.inflight.available_permits()
    }

    /// How long a lease lasts.
    pub fn lease(&self) -> Duration {
        self.inner.settings.lease
    }

    /// Waits until no round is running, at most `within`. Returns whether none is.
    pub async fn drain(&self, within: Duration) -> bool {
        let all = u32::try_from(self.inner.settings.max_inflight.max(1)).unwrap_or(u32::MAX);
        tokio::time::timeout(within, self.inner.inflight.acquire_many(all))
            .await
            .is_ok_and(|p| p.is_ok())
    }

    /// Starts a round on `claimed` in the background, waiting for a free slot first. The
    /// handle yields how the round ended. A driver run by hand ([`Driver::by_hand`]) queues
    /// the round for [`Driver::run_queued`] instead, and returns no handle.
    pub fn spawn(&self, claimed: Claimed) -> Option<tokio::task::JoinHandle<RoundEnd>> {
        if let Some(queue) = &self.inner.queue {
            lock(queue).push_back(claimed);
            return None;
        }
        let this = self.clone();
        Some(tokio::spawn(async move {
            let Ok(_permit) = this.inner.inflight.clone().acquire_owned().await else {
                return RoundEnd::Left;
            };
            this.run_round(claimed).await
        }))
    }

    /// Runs the rounds queued by [`Driver::spawn`] on a driver run by hand, one after the
    /// other in the order they were queued (rounds queued meanwhile included). Returns how
    /// many ran.
    pub async fn run_queued(&self) -> usize {
        let Some(queue) = &self.inner.queue else {
            return 0;
        };
        let mut ran = 0;
        loop {
            let next = lock(queue).pop_front();
            let Some(claimed) = next else {
                return ran;
            };
            self.run_round(claimed).await;
            ran += 1;
        }
    }

    /// One round, its errors logged: a lost lease or a failed round leaves the transaction
    /// to whoever claims it next.
    async fn run_round(&self, claimed: Claimed) -> RoundEnd {
        let gid = claimed.txn.gid.clone();
        match self.round(claimed).await {
            Ok(end) => end,
            Err(e) if e.is_lease_lost() => {
                info!(gid = %gid, "lease lost to another instance; leaving the transaction");
                RoundEnd::Left
            }
            Err(e) => {
                warn!(gid = %gid, error = %error_chain(&e), "round failed; the transaction is retried when its lease runs out");
                RoundEnd::Left
            }
        }
    }
}

fn lock(queue: &Mutex<VecDeque<Claimed>>) -> std::sync::MutexGuard<'_, VecDeque<Claimed>> {
    queue
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
