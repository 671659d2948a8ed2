//! The RocketMQ sink: publishes outbox messages through `settle-rocketmq`, on the queue
//! chosen by hashing the sharding key, with `GID-BRANCH` as the message key.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use settle_rocketmq::{Client, Outgoing, Producer};

use super::dispatcher::Sink;
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
    fn publish<'a>(&'a self, message: &'a OutboxRow) -> BoxFuture<'a, Result<(), String>> {
        async move {
            let outgoing = Outgoing {
                topic: &message.topic,
                tag: &message.tag,
                sharding_key: &message.sharding_key,
                message_id: &message.message_id,
                body: message.body.as_bytes(),
            };
            self.producer
                .send(&outgoing)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
        .boxed()
    }
}
