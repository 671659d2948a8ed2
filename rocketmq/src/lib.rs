//! Settle's layer over `rocketmq-client-rust`: what the coordinator needs to publish in
//! order per key, and what the SDK needs to consume in order.
//!
//! - [`Client`]: the client runtime (one per process).
//! - [`Producer`]: publishes a message on the queue chosen by hashing its sharding key, so
//!   messages with one key land on one queue, in the order they are sent; or many messages
//!   at once, one batch per queue ([`Producer::send_ordered`]).
//! - [`OrderlyConsumer`]: consumes a topic queue by queue, one message at a time, handing
//!   each to an async handler; a handler error suspends the queue and retries the same
//!   message, so order is kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use rocketmq_client_rust::{
    ClientRuntime, ClientRuntimeConfig, ConsumeOrderlyContext, ConsumeOrderlyStatus,
    DefaultMQProducer, DefaultMQPushConsumer, MQPushConsumer, MessageListenerOrderly,
    MessageQueueSelector, SelectMessageQueueByHash,
};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_queue::MessageQueue;
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
    /// The message itself is refused (empty, too large, malformed): sending it again will
    /// fail again.
    #[error("rocketmq refused the message: {0}")]
    Refused(String),
}

impl Error {
    /// Whether sending the same message again cannot succeed: the client or broker refused
    /// the message itself, not the moment (unreachable, busy, timed out).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Refused(_))
    }
}

/// Error codes (and the response code name) that judge the message, not the moment.
const PERMANENT: [&str; 7] = [
    "core.argument.invalid",
    "broker.message.too_large",
    "broker.message.invalid",
    "protocol.message.property.invalid",
    "MessageIllegal",
    "MESSAGE_ILLEGAL",
    "message body",
];

fn client_error(e: impl std::fmt::Display) -> Error {
    let text = e.to_string();
    if PERMANENT.iter().any(|p| text.contains(p)) {
        Error::Refused(text)
    } else {
        Error::Client(text)
    }
}

fn same_kind(e: &Error) -> Error {
    match e {
        Error::Refused(t) => Error::Refused(t.clone()),
        other => Error::NotAcknowledged(other.to_string()),
    }
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

/// The user property carrying a message's W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

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
    /// W3C `traceparent`, set as the message's `traceparent` property; empty: none.
    pub traceparent: &'a str,
}

/// Each topic's queues, as last fetched from the name server, and when.
type QueueCache = HashMap<String, (Instant, Arc<Vec<MessageQueue>>)>;

/// Publishes messages, in order per sharding key.
pub struct Producer {
    inner: DefaultMQProducer,
    send_timeout: Duration,
    queues: Mutex<QueueCache>,
}

/// Most messages sent to a queue in one request.
pub const MAX_BATCH_MESSAGES: usize = 64;
/// Most body bytes sent to a queue in one request (the broker's limit is 4 MiB).
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// How long a topic's queues are used before being fetched again.
const QUEUES_TTL: Duration = Duration::from_secs(30);

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
            queues: Mutex::new(HashMap::new()),
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
        let message = build_message(msg)?;
        let timeout = u64::try_from(self.send_timeout.as_millis()).unwrap_or(3_000);
        let key = queue_key(msg);
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
                acknowledged(&result.send_status)?;
                Ok(result.msg_id.map(|id| id.to_string()).unwrap_or_default())
            }
            None => Err(Error::NotAcknowledged(
                "the client returned no send result".into(),
            )),
        }
    }

    /// Publishes `msgs`, keeping their order per sharding key, and returns each one's result
    /// in the same order. Messages bound to one queue (the queue [`Producer::send`] would
    /// pick) go out together, in batches sent one after the other; queues are sent to at once.
    /// Once a batch of a queue fails, the queue's later messages are not sent (they fail
    /// too), so that for each key the messages acknowledged are always a prefix of those
    /// given.
    pub async fn send_ordered(&self, msgs: &[Outgoing<'_>]) -> Vec<Result<(), Error>> {
        let mut results: Vec<Option<Result<(), Error>>> = msgs.iter().map(|_| None).collect();
        // Group by topic and queue, keeping the order given.
        let mut groups: Vec<(MessageQueue, Vec<usize>)> = Vec::new();
        let mut topics: HashMap<&str, Result<Arc<Vec<MessageQueue>>, String>> = HashMap::new();
        for (i, m) in msgs.iter().enumerate() {
            if !topics.contains_key(m.topic) {
                let queues = self.queues_of(m.topic).await.map_err(|e| e.to_string());
                topics.insert(m.topic, queues);
            }
            let queue = match &topics[m.topic] {
                Ok(queues) => pick_queue(queues, &queue_key(m)),
                Err(e) => {
                    results[i] = Some(Err(Error::Client(e.clone())));
                    continue;
                }
            };
            let Some(queue) = queue else {
                results[i] = Some(Err(Error::Client(format!(
                    "topic {} has no queue",
                    m.topic
                ))));
                continue;
            };
            match groups.iter_mut().find(|(q, _)| *q == queue) {
                Some((_, members)) => members.push(i),
                None => groups.push((queue, vec![i])),
            }
        }
        let sent = futures_util::future::join_all(
            groups
                .iter()
                .map(|(queue, members)| self.send_to_queue(msgs, queue, members)),
        )
        .await;
        let mut refreshed = false;
        for ((_, members), outcome) in groups.iter().zip(sent) {
            for (i, r) in members.iter().zip(outcome) {
                if r.is_err() && !refreshed {
                    // The route may have changed: fetch it again next time.
                    self.forget_queues(msgs[*i].topic);
                    refreshed = true;
                }
                results[*i] = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::NotAcknowledged("not sent".into()))))
            .collect()
    }

    /// Sends the messages `members` of `msgs` to `queue`, batch after batch. A message the
    /// broker refuses for what it is stops only its own key (its later messages are not sent,
    /// so that they keep their order); the queue's other keys go on. Any other failure (the
    /// broker down or slow) stops the queue. One result per member.
    async fn send_to_queue(
        &self,
        msgs: &[Outgoing<'_>],
        queue: &MessageQueue,
        members: &[usize],
    ) -> Vec<Result<(), Error>> {
        let not_sent = |why: &str| Err(Error::NotAcknowledged(format!("not sent: {why}")));
        let mut out: Vec<Option<Result<(), Error>>> = members.iter().map(|_| None).collect();
        let mut stopped_keys: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut queue_down = false;
        // Positions (in `members`) still to send, in order.
        let mut left: Vec<usize> = (0..members.len()).collect();
        while !left.is_empty() && !queue_down {
            // Skip what follows a refused message of its key.
            let (skip, go): (Vec<usize>, Vec<usize>) = left
                .iter()
                .partition(|p| stopped_keys.contains(&queue_key(&msgs[members[**p]])));
            for p in skip {
                out[p] = Some(not_sent("an earlier message of its key was refused"));
            }
            if go.is_empty() {
                break;
            }
            let mut end = 0;
            let mut bytes = 0;
            while end < go.len()
                && end < MAX_BATCH_MESSAGES
                && (end == 0 || bytes + msgs[members[go[end]]].body.len() <= MAX_BATCH_BYTES)
            {
                bytes += msgs[members[go[end]]].body.len();
                end += 1;
            }
            let batch: Vec<usize> = go[..end].iter().map(|p| members[*p]).collect();
            match self.send_batch(msgs, queue, &batch).await {
                Ok(()) => {
                    for p in &go[..end] {
                        out[*p] = Some(Ok(()));
                    }
                }
                Err(e) if e.is_permanent() && end > 1 => {
                    // One message spoils the batch: send them one by one to learn which, so
                    // that only it (and the later messages of its key) is blamed.
                    for p in &go[..end] {
                        let msg = &msgs[members[*p]];
                        if stopped_keys.contains(&queue_key(msg)) {
                            out[*p] = Some(not_sent("an earlier message of its key was refused"));
                            continue;
                        }
                        let r = self
                            .send_batch(msgs, queue, std::slice::from_ref(&members[*p]))
                            .await;
                        match &r {
                            Err(e) if e.is_permanent() => {
                                stopped_keys.insert(queue_key(msg));
                            }
                            Err(_) => queue_down = true,
                            Ok(()) => {}
                        }
                        out[*p] = Some(r);
                        if queue_down {
                            break;
                        }
                    }
                }
                Err(e) => {
                    let permanent = e.is_permanent();
                    for p in &go[..end] {
                        if permanent {
                            stopped_keys.insert(queue_key(&msgs[members[*p]]));
                        }
                        out[*p] = Some(Err(same_kind(&e)));
                    }
                    queue_down = !permanent;
                }
            }
            left = go[end..]
                .iter()
                .copied()
                .filter(|p| out[*p].is_none())
                .collect();
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    not_sent("an earlier message of its queue was not acknowledged")
                })
            })
            .collect()
    }

    async fn send_batch(
        &self,
        msgs: &[Outgoing<'_>],
        queue: &MessageQueue,
        members: &[usize],
    ) -> Result<(), Error> {
        let timeout = u64::try_from(self.send_timeout.as_millis()).unwrap_or(3_000);
        let within = self.send_timeout + Duration::from_secs(1);
        let no_answer =
            || Error::NotAcknowledged(format!("no answer within {:?}", self.send_timeout));
        let result = if let [one] = members {
            let message = build_message(&msgs[*one])?;
            tokio::time::timeout(
                within,
                self.inner
                    .send_to_queue_with_timeout(message, queue.clone(), timeout),
            )
            .await
            .map_err(|_| no_answer())?
            .map_err(client_error)?
            .ok_or_else(|| Error::NotAcknowledged("the client returned no send result".into()))?
        } else {
            let batch = members
                .iter()
                .map(|i| build_message(&msgs[*i]))
                .collect::<Result<Vec<_>, _>>()?;
            tokio::time::timeout(
                within,
                self.inner
                    .send_batch_to_queue_with_timeout(batch, queue.clone(), timeout),
            )
            .await
            .map_err(|_| no_answer())?
            .map_err(client_error)?
        };
        acknowledged(&result.send_status).map(drop)
    }

    async fn queues_of(&self, topic: &str) -> Result<Arc<Vec<MessageQueue>>, Error> {
        if let Some((at, queues)) = self.lock_queues().get(topic) {
            if at.elapsed() < QUEUES_TTL {
                return Ok(queues.clone());
            }
        }
        let mut inner = self.inner.clone();
        // In the order of the topic's route, as `send` sees them: both pick one queue for a key.
        let queues = inner
            .fetch_publish_message_queues(topic)
            .await
            .map_err(client_error)?;
        let queues = Arc::new(queues);
        self.lock_queues()
            .insert(topic.to_owned(), (Instant::now(), queues.clone()));
        Ok(queues)
    }

    fn forget_queues(&self, topic: &str) {
        self.lock_queues().remove(topic);
    }

    fn lock_queues(&self) -> std::sync::MutexGuard<'_, QueueCache> {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops the producer.
    pub async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

/// The key a message's queue is chosen by: its sharding key, or its id when it has none.
fn queue_key(msg: &Outgoing<'_>) -> String {
    if msg.sharding_key.is_empty() {
        msg.message_id.to_owned()
    } else {
        msg.sharding_key.to_owned()
    }
}

/// The queue [`SelectMessageQueueByHash`] picks for `key`.
fn pick_queue(queues: &[MessageQueue], key: &String) -> Option<MessageQueue> {
    let probe = Message::builder()
        .topic("probe")
        .body_slice(b"")
        .build_unchecked();
    SelectMessageQueueByHash.select(queues, &probe, key)
}

fn build_message(msg: &Outgoing<'_>) -> Result<Message, Error> {
    let mut builder = Message::builder()
        .topic(msg.topic.to_owned())
        .body_slice(msg.body)
        .keys(vec![msg.message_id.to_owned()]);
    if !msg.tag.is_empty() {
        builder = builder.tags(msg.tag.to_owned());
    }
    if !msg.traceparent.is_empty() {
        builder = builder
            .raw_property(TRACEPARENT, msg.traceparent.to_owned())
            .map_err(client_error)?;
    }
    builder.build().map_err(client_error)
}

/// Whether the broker stored the message(s): `Ok` with the status text, or the error.
fn acknowledged(status: &impl std::fmt::Debug) -> Result<String, Error> {
    let status = format!("{status:?}");
    if status.contains("SendOk") || status.contains("SEND_OK") {
        Ok(status)
    } else {
        Err(Error::NotAcknowledged(status))
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
    /// The W3C `traceparent` property, if the producer set one: the trace this message is
    /// part of.
    pub traceparent: Option<String>,
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
            traceparent: rocketmq_model::common::message::MessageTrait::property(
                m,
                &TRACEPARENT.into(),
            )
            .map(|v| v.to_string())
            .filter(|v| !v.is_empty()),
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
