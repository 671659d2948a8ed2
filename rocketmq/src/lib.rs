//! Settle's layer over `rocketmq-client-rust`: what the coordinator needs to publish in
//! order per key, and what the SDK needs to consume in order.
//!
//! - [`Client`]: the client runtime (one per process).
//! - [`Producer`]: publishes a message on the queue chosen by hashing its sharding key, so
//!   messages with one key land on one queue, in the order they are sent.
//! - [`OrderlyConsumer`]: consumes a topic queue by queue, one message at a time, handing
//!   each to an async handler; a handler error suspends the queue and retries the same
//!   message, so order is kept.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use rocketmq_client_rust::{
    ClientRuntime, ClientRuntimeConfig, ConsumeOrderlyContext, ConsumeOrderlyStatus,
    DefaultMQProducer, DefaultMQPushConsumer, MQPushConsumer, MessageListenerOrderly,
    MessageQueueSelector, SelectMessageQueueByHash,
};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_single::Message;
use rocketmq_observability::TelemetryHandle;
use rocketmq_protocol::protocol::heartbeat::message_model::MessageModel;
use rocketmq_runtime::{RuntimeConfig, RuntimeOwner};
use tracing::warn;

/// Errors of the RocketMQ layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client runtime could not start.
    #[error("rocketmq runtime: {0}")]
    Runtime(String),
    /// The client failed (broker or name server unreachable, refused, timed out).
    #[error("rocketmq: {0}")]
    Client(String),
    /// The broker answered, but not with a stored message.
    #[error("rocketmq send not acknowledged: {0}")]
    NotAcknowledged(String),
}

fn client_error(e: impl std::fmt::Display) -> Error {
    Error::Client(e.to_string())
}

/// The client runtime shared by producers and consumers of one process.
pub struct Client {
    owner: Option<RuntimeOwner>,
    runtime: Arc<ClientRuntime>,
}

impl Client {
    /// Starts a client runtime; `name` labels its threads.
    ///
    /// # Errors
    /// The runtime cannot start.
    pub fn new(name: &str) -> Result<Self, Error> {
        let config = RuntimeConfig {
            thread_name: format!("rocketmq-{name}"),
            ..RuntimeConfig::for_parallelism("rocketmq", 2)
        };
        let owner = RuntimeOwner::plan(config)
            .map_err(|e| Error::Runtime(e.to_string()))?
            .build()
            .map_err(|e| Error::Runtime(e.to_string()))?;
        let runtime = ClientRuntime::try_new(
            owner.root_context().component("client"),
            ClientRuntimeConfig::default(),
            TelemetryHandle::noop(),
        )
        .map_err(|e| Error::Runtime(e.to_string()))?;
        Ok(Self {
            owner: Some(owner),
            runtime,
        })
    }

    /// Stops the runtime's tasks.
    pub async fn shutdown(mut self) {
        let _ = self.runtime.shutdown().await;
        if let Some(owner) = self.owner.take() {
            let _ = owner.shutdown_tasks().await;
            let _ = owner.shutdown_background();
        }
    }
}

/// A message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Tag; empty for none.
    pub tag: &'a str,
    /// Sharding key: picks the queue. Empty: any queue.
    pub sharding_key: &'a str,
    /// Unique id consumers dedupe by, set as the message's key.
    pub message_id: &'a str,
    /// Body.
    pub body: &'a [u8],
}

/// Publishes messages, in order per sharding key.
pub struct Producer {
    inner: DefaultMQProducer,
    send_timeout: Duration,
}

impl Producer {
    /// Starts a producer in `group` against the name server at `namesrv` (`host:port`).
    ///
    /// # Errors
    /// The producer cannot start.
    pub async fn start(
        client: &Client,
        namesrv: &str,
        group: &str,
        send_timeout: Duration,
    ) -> Result<Self, Error> {
        let mut inner = DefaultMQProducer::builder(client.runtime.clone())
            .producer_group(group)
            .name_server_addr(namesrv)
            .build();
        inner.start().await.map_err(client_error)?;
        Ok(Self {
            inner,
            send_timeout,
        })
    }

    /// Creates `topic` with `queues` queues if it does not exist, so consumers started before
    /// the first message find it at once.
    ///
    /// # Errors
    /// The broker refuses or cannot be reached.
    pub async fn create_topic(&mut self, topic: &str, queues: i32) -> Result<(), Error> {
        self.inner
            .create_topic("TBW102", topic, queues, HashMap::new())
            .await
            .map_err(client_error)
    }

    /// Publishes one message and waits for the broker's acknowledgement. Messages with the
    /// same sharding key go to the same queue.
    ///
    /// # Errors
    /// Not acknowledged (broker down, refused, timed out).
    pub async fn send(&self, msg: &Outgoing<'_>) -> Result<String, Error> {
        let mut builder = Message::builder()
            .topic(msg.topic.to_owned())
            .body_slice(msg.body)
            .keys(vec![msg.message_id.to_owned()]);
        if !msg.tag.is_empty() {
            builder = builder.tags(msg.tag.to_owned());
        }
        let message = builder.build().map_err(client_error)?;
        let timeout = u64::try_from(self.send_timeout.as_millis()).unwrap_or(3_000);
        let key = if msg.sharding_key.is_empty() {
            msg.message_id.to_owned()
        } else {
            msg.sharding_key.to_owned()
        };
        let selector = SelectMessageQueueByHash;
        let sent = tokio::time::timeout(
            self.send_timeout + Duration::from_secs(1),
            self.inner.send_with_selector_timeout(
                message,
                move |mqs, m, arg| selector.select(mqs, m, arg),
                key,
                timeout,
            ),
        )
        .await
        .map_err(|_| Error::NotAcknowledged(format!("no answer within {:?}", self.send_timeout)))?
        .map_err(client_error)?;
        match sent {
            Some(result) => {
                let status = format!("{:?}", result.send_status);
                if status.contains("SendOk") || status.contains("SEND_OK") {
                    Ok(result.msg_id.map(|id| id.to_string()).unwrap_or_default())
                } else {
                    Err(Error::NotAcknowledged(status))
                }
            }
            None => Err(Error::NotAcknowledged(
                "the client returned no send result".into(),
            )),
        }
    }

    /// Stops the producer.
    pub async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

/// A message handed to a consumer's handler.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Topic.
    pub topic: String,
    /// Tag, empty if none.
    pub tag: String,
    /// The unique id set by the producer (the message's first key), for deduplication.
    pub message_id: String,
    /// Queue it came from.
    pub queue_id: i32,
    /// Offset in that queue.
    pub queue_offset: i64,
    /// How many times it was handed out before.
    pub reconsume_times: i32,
    /// When the producer created it (ms since the Unix epoch).
    pub born_timestamp: i64,
    /// When the broker stored it (ms since the Unix epoch).
    pub store_timestamp: i64,
    /// Its position in the broker's commit log.
    pub commit_log_offset: i64,
    /// Body.
    pub body: Vec<u8>,
}

impl Delivery {
    fn from_ext(m: &MessageExt) -> Self {
        Self {
            topic: m.topic().to_string(),
            tag: m.tags().unwrap_or_default().to_owned(),
            message_id: m
                .keys()
                .and_then(|k| k.into_iter().next())
                .unwrap_or_default(),
            queue_id: m.queue_id(),
            queue_offset: m.queue_offset(),
            reconsume_times: m.reconsume_times(),
            born_timestamp: m.born_timestamp(),
            store_timestamp: m.store_timestamp(),
            commit_log_offset: m.commit_log_offset(),
            body: m.body().map(|b| b.to_vec()).unwrap_or_default(),
        }
    }
}

/// Async handler of one delivery; an error makes the consumer retry the same message later,
/// holding back the rest of its queue.
pub type Handler = Arc<dyn Fn(Delivery) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

struct Listener {
    handler: Handler,
    handle: tokio::runtime::Handle,
    retry_after: Duration,
}

impl MessageListenerOrderly for Listener {
    fn consume_message(
        &self,
        msgs: &[&MessageExt],
        context: &mut ConsumeOrderlyContext,
    ) -> rocketmq_client_rust::ClientResult<ConsumeOrderlyStatus> {
        context.set_auto_commit(true);
        for m in msgs {
            let delivery = Delivery::from_ext(m);
            // The client calls listeners on blocking threads: wait for the async handler here.
            if let Err(e) = self.handle.block_on((self.handler)(delivery)) {
                warn!(error = %e, "message handler failed; the queue is suspended and the message retried");
                context.set_suspend_current_queue_time_millis(
                    i64::try_from(self.retry_after.as_millis()).unwrap_or(1000),
                );
                return Ok(ConsumeOrderlyStatus::SuspendCurrentQueueAMoment);
            }
        }
        Ok(ConsumeOrderlyStatus::Success)
    }
}

/// Consumes a topic in order, queue by queue.
pub struct OrderlyConsumer {
    inner: DefaultMQPushConsumer,
}

impl OrderlyConsumer {
    /// Subscribes `group` to every message of `topic` (from the first offset for a new group)
    /// and starts handing them to `handler`, on the current tokio runtime.
    ///
    /// # Errors
    /// The consumer cannot start.
    pub async fn start(
        client: &Client,
        namesrv: &str,
        group: &str,
        topic: &str,
        handler: Handler,
    ) -> Result<Self, Error> {
        let mut inner = DefaultMQPushConsumer::builder(client.runtime.clone())
            .consumer_group(group.to_owned())
            .name_server_addr(namesrv.to_owned())
            .message_model(MessageModel::Clustering)
            .build();
        inner.subscribe(topic, "*").await.map_err(client_error)?;
        inner.set_consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset);
        inner.register_message_listener_orderly(Listener {
            handler,
            handle: tokio::runtime::Handle::current(),
            retry_after: Duration::from_millis(500),
        });
        inner.start().await.map_err(client_error)?;
        Ok(Self { inner })
    }

    /// Stops consuming.
    pub async fn shutdown(mut self) {
        self.inner.shutdown().await;
    }
}
