//! The scheduler: finds transactions whose next attempt is due, or whose owner died, and
//! hands them to the driver.
//!
//! Several coordinator instances may share one database. Each pass claims a batch of due
//! transactions in one conditional UPDATE that writes this instance's id, a fresh fencing
//! token and a lease expiry; a transaction leased by an instance that died becomes claimable
//! again once its lease runs out.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, warn};

use crate::apply::new_token;
use crate::clock::Clock;
use crate::driver::Driver;
use crate::store::Store;

/// Claims due work and starts rounds on it.
pub struct Scheduler {
    store: Store,
    driver: Driver,
    clock: Clock,
    instance_id: String,
    poll_interval: Duration,
    batch: u32,
}

impl Scheduler {
    /// A scheduler for this instance.
    pub fn new(
        store: Store,
        driver: Driver,
        clock: Clock,
        instance_id: String,
        poll_interval: Duration,
        batch: u32,
    ) -> Self {
        Self {
            store,
            driver,
            clock,
            instance_id,
            poll_interval,
            batch,
        }
    }

    /// Claims one batch of due transactions and starts a round on each. Returns how many were
    /// claimed.
    ///
    /// # Errors
    /// A database error.
    pub async fn pass(&self) -> Result<usize, crate::store::StoreError> {
        let free = self.driver.free_slots().min(self.batch as usize);
        if free == 0 {
            return Ok(0);
        }
        let now = self.clock.now_ms();
        let lease_ms = i64::try_from(self.driver.lease().as_millis()).unwrap_or(i64::MAX / 4);
        let token = new_token();
        let claimed = self
            .store
            .claim_due(
                &self.instance_id,
                &token,
                now,
                now + lease_ms,
                i64::try_from(free).unwrap_or(1),
            )
            .await?;
        if !claimed.is_empty() {
            // Claimed and leased; no round has started.
            fail::fail_point!("scheduler::after_claim", |_| Err(
                crate::store::StoreError::injected("scheduler::after_claim")
            ));
        }
        let n = claimed.len();
        for c in claimed {
            debug!(gid = %c.txn.gid, status = %c.txn.status, "claimed due transaction");
            drop(self.driver.spawn(c));
        }
        Ok(n)
    }

    /// Runs passes until `shutdown` turns true. A full batch is followed at once by another
    /// pass; otherwise the scheduler sleeps for the poll interval.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let full = match self.pass().await {
                Ok(n) => n >= self.batch as usize,
                Err(e) => {
                    warn!(error = %crate::telemetry::error_chain(&e), "scheduler pass failed");
                    false
                }
            };
            if full {
                tokio::task::yield_now().await;
                if *shutdown.borrow() {
                    return;
                }
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.poll_interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
