//! The RocketMQ sink: publishes outbox messages through `settle-rocketmq`, on the queue
//! chosen by hashing the sharding key (one batch per queue), with `GID-BRANCH` as the
//! message key and the initiator's trace context as the `traceparent` property.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use settle_rocketmq::{Client, Outgoing, Producer};

use super::dispatcher::{Failure, Sink};
use crate::store::OutboxRow;

/// Publishes to RocketMQ.
pub struct RocketMqSink {
    producer: Producer,
    _client: Client,
}

impl RocketMqSink {
    /// Starts a producer in `group` against the name server `namesrv` (`host:port`).
    ///
    /// # Errors
    /// The client or producer cannot start.
    pub async fn start(
        namesrv: &str,
        group: &str,
        send_timeout: Duration,
    ) -> Result<Self, settle_rocketmq::Error> {
        let client = Client::new("settle")?;
        let producer = Producer::start(&client, namesrv, group, send_timeout).await?;
        Ok(Self {
            producer,
            _client: client,
        })
    }
}

impl Sink for RocketMqSink {
    fn publish<'a>(&'a self, messages: &'a [OutboxRow]) -> BoxFuture<'a, Vec<Result<(), Failure>>> {
        async move {
            let outgoing: Vec<Outgoing<'_>> = messages
                .iter()
                .map(|m| Outgoing {
                    topic: &m.topic,
                    tag: &m.tag,
                    sharding_key: &m.sharding_key,
                    message_id: &m.message_id,
                    body: m.body.as_bytes(),
                    traceparent: &m.traceparent,
                })
                .collect();
            self.producer
                .send_ordered(&outgoing)
                .await
                .into_iter()
                .map(|r| {
                    r.map_err(|e| Failure {
                        permanent: e.is_permanent(),
                        error: e.to_string(),
                    })
                })
                .collect()
        }
        .boxed()
    }
}
