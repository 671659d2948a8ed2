//! The dispatcher: delivers the outbox to brokers, in order per sharding key.
//!
//! Each pass claims, for every key, the lowest message not yet sent (if it is due), plus
//! due messages without a key, and delivers each claimed key on its own task: publish, wait
//! for the broker's acknowledgement, record it, then go on with the key's next message. A
//! failed publish gives the message back with a capped exponential backoff; its key waits,
//! other keys do not. A claim is a lease: if this instance dies, another one takes the key
//! over when it runs out (the message may then be published twice; consumers dedupe by its
//! id, and order is kept).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{watch, Notify, Semaphore};
use tracing::{debug, info, warn};

use crate::apply::new_token;
use crate::clock::Clock;
use crate::store::{OutboxRow, Store};
use crate::txn::retry::retry_delay_ms;

/// Where messages are published.
pub trait Sink: Send + Sync + 'static {
    /// Publishes one message and resolves once the broker acknowledged it.
    fn publish<'a>(&'a self, message: &'a OutboxRow) -> BoxFuture<'a, Result<(), String>>;
}

/// Settings of the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// This instance's id.
    pub instance_id: String,
    /// How often to look for work when nothing wakes it.
    pub poll_interval: Duration,
    /// Lease on a claimed message; longer than a publish can take.
    pub lease: Duration,
    /// Most keys delivered at once.
    pub max_inflight: usize,
    /// Longest pause between attempts at one message, in seconds.
    pub retry_cap_s: i64,
    /// The clock.
    pub clock: Clock,
}

/// Delivers the outbox.
pub struct Dispatcher {
    store: Store,
    sink: Arc<dyn Sink>,
    settings: DispatchSettings,
    wake: Arc<Notify>,
    slots: Arc<Semaphore>,
}

impl Dispatcher {
    /// A dispatcher publishing through `sink`, woken early by `wake`.
    pub fn new(
        store: Store,
        sink: Arc<dyn Sink>,
        settings: DispatchSettings,
        wake: Arc<Notify>,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(settings.max_inflight.max(1)));
        Self {
            store,
            sink,
            settings,
            wake,
            slots,
        }
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.settings.lease.as_millis()).unwrap_or(30_000)
    }

    /// Runs passes until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.clone().pass().await {
                warn!(error = %crate::driver::error_chain(&e), "delivery pass failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Claims what can be delivered now and starts delivering it. Returns how many messages
    /// were claimed.
    ///
    /// # Errors
    /// A database error.
    pub async fn pass(self: Arc<Self>) -> Result<usize, crate::store::StoreError> {
        let free = self.slots.available_permits();
        if free == 0 {
            return Ok(0);
        }
        let now = self.settings.clock.now_ms();
        let owner = format!("{}/{}", self.settings.instance_id, new_token());
        let claimed = self
            .store
            .claim_outbox_heads(
                &owner,
                now,
                now + self.lease_ms(),
                i64::try_from(free).unwrap_or(1),
            )
            .await?;
        let n = claimed.len();
        for row in claimed {
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                // More claimed than slots (a race with running keys): give it back now.
                let _ = self.store.outbox_retry(&row, now, "").await;
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                this.deliver_key(row).await;
                drop(permit);
            });
        }
        Ok(n)
    }

    /// Delivers `row`, then, while its key has more messages ready, the next ones.
    async fn deliver_key(&self, mut row: OutboxRow) {
        loop {
            match self.sink.publish(&row).await {
                Ok(()) => {
                    let now = self.settings.clock.now_ms();
                    if let Err(e) = self.store.outbox_sent(&row, now).await {
                        warn!(message_id = %row.message_id, error = %e, "could not record a delivery; it may be published again");
                        return;
                    }
                    debug!(message_id = %row.message_id, key = %row.sharding_key, seq = ?row.seq, "delivered");
                    if row.sharding_key.is_empty() {
                        return;
                    }
                    match self
                        .store
                        .claim_next_for_key(
                            &row.sharding_key,
                            &row.owner,
                            now,
                            now + self.lease_ms(),
                        )
                        .await
                    {
                        Ok(Some(next)) => row = next,
                        Ok(None) => return,
                        Err(e) => {
                            warn!(key = %row.sharding_key, error = %e, "could not claim the key's next message; the next pass will");
                            return;
                        }
                    }
                }
                Err(error) => {
                    let delay = retry_delay_ms(
                        1,
                        self.settings.retry_cap_s,
                        row.attempts,
                        rand::random::<f64>(),
                    );
                    info!(message_id = %row.message_id, key = %row.sharding_key, attempts = row.attempts + 1, error = %error, "delivery failed; will retry");
                    if let Err(e) = self
                        .store
                        .outbox_retry(&row, self.settings.clock.now_ms() + delay, &error)
                        .await
                    {
                        warn!(message_id = %row.message_id, error = %e, "could not record a failed delivery");
                    }
                    return;
                }
            }
        }
    }
}
