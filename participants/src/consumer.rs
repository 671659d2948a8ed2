//! The cache consumer: an orderly RocketMQ consumer that applies each delivered change to a
//! [`VersionedCache`], skipping messages it has applied before (by message id) and changes
//! older than what the cache holds.
//!
//! A Redis failure leaves the message unacknowledged: its queue is suspended and the same
//! message retried, so nothing is skipped and order within the queue is kept.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
pub use settle_rocketmq::{Client, Delivery, OrderlyConsumer};

use crate::cache::{Applied, VersionedCache};

/// A change to apply to the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheUpdate {
    /// Cache key.
    pub key: String,
    /// Version of the value (newer wins).
    pub version: i64,
    /// The value.
    pub value: String,
}

/// Counts of what the consumer did.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Changes written to the cache.
    pub applied: AtomicU64,
    /// Changes older than the cached entry, skipped.
    pub stale: AtomicU64,
    /// Messages seen before, skipped.
    pub duplicates: AtomicU64,
    /// Messages that carried no change for the cache.
    pub ignored: AtomicU64,
}

impl ConsumerStats {
    /// (applied, stale, duplicates, ignored).
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.applied.load(Ordering::Relaxed),
            self.stale.load(Ordering::Relaxed),
            self.duplicates.load(Ordering::Relaxed),
            self.ignored.load(Ordering::Relaxed),
        )
    }
}

/// Turns a delivered message into a cache change (`None`: not for the cache). It may read
/// the database (to cache a row's current version, say); an error retries the message.
pub type Decoder =
    Arc<dyn Fn(Delivery) -> BoxFuture<'static, Result<Option<CacheUpdate>, String>> + Send + Sync>;

/// Keeps a Redis cache in step with the changes published to a topic.
pub struct CacheConsumer {
    consumer: OrderlyConsumer,
    stats: Arc<ConsumerStats>,
}

impl CacheConsumer {
    /// Starts consuming `topic` as consumer group `group`.
    ///
    /// # Errors
    /// The consumer cannot start.
    pub async fn start(
        client: &Client,
        namesrv: &str,
        group: &str,
        topic: &str,
        cache: VersionedCache,
        decode: Decoder,
    ) -> Result<Self, settle_rocketmq::Error> {
        let stats = Arc::new(ConsumerStats::default());
        let counters = stats.clone();
        let handler: settle_rocketmq::Handler = Arc::new(move |delivery: Delivery| {
            let (cache, decode, stats) = (cache.clone(), decode.clone(), counters.clone());
            async move {
                let message_id = delivery.message_id.clone();
                let Some(update) = decode(delivery).await? else {
                    stats.ignored.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                };
                let applied = if message_id.is_empty() {
                    cache
                        .apply(&update.key, update.version, &update.value)
                        .await
                } else {
                    cache
                        .apply_message(&message_id, &update.key, update.version, &update.value)
                        .await
                }
                .map_err(|e| e.to_string())?;
                let counter = match applied {
                    Applied::Written => &stats.applied,
                    Applied::Stale => &stats.stale,
                    Applied::Duplicate => &stats.duplicates,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            .boxed()
        });
        let consumer = OrderlyConsumer::start(client, namesrv, group, topic, handler).await?;
        Ok(Self { consumer, stats })
    }

    /// What the consumer has done so far.
    pub fn stats(&self) -> Arc<ConsumerStats> {
        self.stats.clone()
    }

    /// Stops consuming.
    pub async fn shutdown(self) {
        self.consumer.shutdown().await;
    }
}
