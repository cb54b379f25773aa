//! [`KafkaEventBus`]: the producer side, topic administration, and the factory for group
//! members ([`KafkaSubscription`]).
//!
//! One idempotent producer is shared by every publish (librdkafka batches across callers).
//! A `publish` enqueues its whole batch in order and then awaits every delivery report, so a
//! batch costs one round trip, not one per message, and messages with equal keys keep their
//! order: the idempotent producer never reorders or duplicates within a partition, even
//! across its internal retries. If enqueueing fails part-way, nothing after the failed
//! message is enqueued (a later message of the same key must not overtake it), the earlier
//! ones are still awaited, and the error is returned: the caller retries the whole batch, and
//! consumers deduplicate what was delivered twice (by event id), as at-least-once requires.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use reprise_core::event_bus::{EventBus, OutgoingMessage, Subscription};
use reprise_core::{BoxFuture, BusError};
use tracing::Instrument;

use crate::config::{ConfigError, KafkaConfig};
use crate::consumer::KafkaSubscription;
use crate::error::to_bus_error;
use crate::metrics as m;

/// Pauses while a new topic propagates: 10 ms doubling to 200 ms, with jitter.
const TOPIC_WAIT: reprise_core::RetryPolicy = reprise_core::RetryPolicy {
    max_attempts: 8,
    initial_delay: Duration::from_millis(10),
    max_delay: Duration::from_millis(200),
    multiplier: 2.0,
    jitter: true,
};

/// Where one published message landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub topic: Arc<str>,
    pub partition: u32,
    pub offset: u64,
}

/// A message with raw bytes, for re-publishing what may not be UTF-8 (dead letters).
#[derive(Clone, Debug)]
pub(crate) struct RawMessage<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

/// The Kafka-API [`EventBus`]. Cheap to clone; clones share one producer.
#[derive(Clone)]
pub struct KafkaEventBus {
    config: Arc<KafkaConfig>,
    producer: FutureProducer,
    admin: Arc<AdminClient<DefaultClientContext>>,
}

impl std::fmt::Debug for KafkaEventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaEventBus")
            .field("bootstrap_servers", &self.config.bootstrap_servers)
            .finish_non_exhaustive()
    }
}

impl KafkaEventBus {
    /// Creates the producer and admin clients. librdkafka connects lazily: use
    /// [`KafkaEventBus::check_connection`] to fail fast on an unreachable broker.
    ///
    /// # Errors
    /// [`KafkaConfig::validate`]'s errors, or [`ConfigError::Rejected`] if librdkafka
    /// refuses a property (unknown name, value out of range, TLS without the `ssl` feature).
    pub fn new(config: KafkaConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let producer: FutureProducer = config
            .producer_config()
            .create()
            .map_err(|e| ConfigError::Rejected(e.to_string()))?;
        let admin: AdminClient<DefaultClientContext> = config
            .reader_config()
            .create()
            .map_err(|e| ConfigError::Rejected(e.to_string()))?;
        // Consumers are created per subscription: validate their settings now (without
        // creating a client, which would start talking to the cluster), not at first use.
        config
            .consumer_config("reprise-config-check")
            .create_native_config()
            .map_err(|e| ConfigError::Rejected(e.to_string()))?;
        Ok(KafkaEventBus {
            config: Arc::new(config),
            producer,
            admin: Arc::new(admin),
        })
    }

    #[must_use]
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// One metadata round trip to the cluster.
    ///
    /// # Errors
    /// [`BusError::Transient`] naming the bootstrap servers and the cause if no broker
    /// answers within the operation timeout; [`BusError::Permanent`] (also naming them)
    /// for a refusal that will not pass by itself (authentication, authorization).
    pub async fn check_connection(&self) -> Result<(), BusError> {
        let producer = self.producer.clone();
        let timeout = self.config.operation_timeout;
        let servers = self.config.bootstrap_servers.clone();
        blocking(move || {
            producer
                .client()
                .fetch_metadata(None, timeout)
                .map(|_| ())
                .map_err(|e| match to_bus_error(&e, "") {
                    BusError::Permanent(why) => {
                        BusError::Permanent(format!("broker at {servers}: {why}"))
                    }
                    other => BusError::Transient(format!(
                        "no broker answered at {servers} within {timeout:?}: {}",
                        match other {
                            BusError::Transient(why) => why,
                            other => other.to_string(),
                        }
                    )),
                })
        })
        .await
    }

    /// Creates a topic with a fixed partition count; an existing topic is left alone
    /// (whatever its partition count: see [`KafkaEventBus::partition_count`]).
    ///
    /// # Errors
    /// [`BusError::Permanent`] for invalid names, counts or missing authorization;
    /// [`BusError::Timeout`] if the cluster does not answer within the operation timeout.
    pub async fn create_topic(
        &self,
        topic: &str,
        partitions: u32,
        replication_factor: u32,
    ) -> Result<(), BusError> {
        let invalid = |what: &str| BusError::Permanent(format!("create_topic {topic}: {what}"));
        let partitions = i32::try_from(partitions)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| invalid("partitions must be 1..=i32::MAX"))?;
        let replication = i32::try_from(replication_factor)
            .ok()
            .filter(|r| *r > 0)
            .ok_or_else(|| invalid("replication factor must be 1..=i32::MAX"))?;
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
        let options = AdminOptions::new().operation_timeout(Some(self.config.operation_timeout));
        let results = self
            .admin
            .create_topics([&new], &options)
            .await
            .map_err(|e| to_bus_error(&e, topic))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => return Err(to_bus_error(&KafkaError::AdminOp(code), &name)),
            }
        }
        Ok(())
    }

    /// Partitions and replication factor of `topic`, from cluster metadata.
    ///
    /// # Errors
    /// [`BusError::UnknownTopic`] if the topic does not exist.
    pub async fn topic_layout(&self, topic: &str) -> Result<(u32, u32), BusError> {
        let producer = self.producer.clone();
        let timeout = self.config.operation_timeout;
        let name = topic.to_owned();
        blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&name), timeout)
                .map_err(|e| to_bus_error(&e, &name))?;
            let t = metadata
                .topics()
                .iter()
                .find(|t| t.name() == name)
                .ok_or_else(|| BusError::UnknownTopic(name.clone()))?;
            if t.error().is_some() || t.partitions().is_empty() {
                return Err(BusError::UnknownTopic(name.clone()));
            }
            let partitions = u32::try_from(t.partitions().len()).unwrap_or(u32::MAX);
            let replicas = t
                .partitions()
                .iter()
                .map(|p| p.replicas().len())
                .max()
                .unwrap_or(1)
                .max(1);
            Ok((partitions, u32::try_from(replicas).unwrap_or(1)))
        })
        .await
    }

    /// Makes sure the dead-letter topic of `topic` (`topic` + the configured suffix) exists
    /// before anything of `topic` is consumed, creating it if missing with `topic`'s
    /// partition count (a key's letters stay on one partition, in order) and replication
    /// factor (letters are as durable as the messages they replace). Returns its name.
    ///
    /// Consumers call this themselves ([`KafkaSubscription`] before its first delivery), so
    /// that a poison message never meets a missing dead-letter topic with automatic topic
    /// creation off — which would leave the message unacknowledged and its partition's
    /// commits stuck. Creating it needs the `CREATE` ACL on the cluster or the topic; without
    /// it, create the topic beforehand (same partitions as the original).
    ///
    /// # Errors
    /// [`BusError::UnknownTopic`] naming `topic` when the original does not exist (nothing
    /// to mirror yet); the creation's errors, with the dead-letter topic named.
    pub async fn ensure_dead_letter_topic(&self, topic: &str) -> Result<String, BusError> {
        let dead_letter_topic = self.config.dead_letter_topic(topic);
        match self.partition_count(&dead_letter_topic).await {
            Ok(_) => return Ok(dead_letter_topic),
            Err(BusError::UnknownTopic(_)) => {}
            Err(e) => return Err(e),
        }
        let (partitions, replication) = self.topic_layout(topic).await?;
        let explain = |e: BusError| match e {
            BusError::Permanent(why) => BusError::Permanent(format!(
                "cannot create dead-letter topic {dead_letter_topic} ({partitions} partitions, \
                 replication {replication}): {why}; create it beforehand or grant CREATE"
            )),
            BusError::Transient(why) => BusError::Transient(format!(
                "cannot create dead-letter topic {dead_letter_topic}: {why}"
            )),
            other => other,
        };
        self.create_topic(&dead_letter_topic, partitions, replication)
            .await
            .map_err(explain)?;
        self.await_topic(&dead_letter_topic)
            .await
            .map_err(explain)?;
        tracing::info!(
            topic,
            dead_letter_topic,
            partitions,
            replication,
            "created the dead-letter topic"
        );
        Ok(dead_letter_topic)
    }

    /// Waits until `topic` shows in cluster metadata (creation propagates asynchronously),
    /// for at most the operation timeout, pausing with core's backoff on tokio.
    pub(crate) async fn await_topic(&self, topic: &str) -> Result<(), BusError> {
        let runtime = reprise_tokio::TokioRuntime::try_current()
            .map_err(|e| BusError::Permanent(e.to_string()))?;
        let limit = u64::try_from(self.config.operation_timeout.as_nanos()).unwrap_or(u64::MAX);
        let started = reprise_core::Runtime::stopwatch_nanos(&runtime);
        let mut backoff = reprise_core::resilience::Backoff::new(TOPIC_WAIT);
        loop {
            match self.partition_count(topic).await {
                Ok(_) => return Ok(()),
                Err(BusError::UnknownTopic(_))
                    if reprise_core::Runtime::stopwatch_nanos(&runtime).saturating_sub(started)
                        < limit =>
                {
                    backoff.pause(&runtime).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The number of partitions of `topic`, from cluster metadata.
    ///
    /// # Errors
    /// [`BusError::UnknownTopic`] if the topic does not exist.
    pub async fn partition_count(&self, topic: &str) -> Result<u32, BusError> {
        let producer = self.producer.clone();
        let timeout = self.config.operation_timeout;
        let name = topic.to_owned();
        blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&name), timeout)
                .map_err(|e| to_bus_error(&e, &name))?;
            let t = metadata
                .topics()
                .iter()
                .find(|t| t.name() == name)
                .ok_or_else(|| BusError::UnknownTopic(name.clone()))?;
            if t.error().is_some() || t.partitions().is_empty() {
                return Err(BusError::UnknownTopic(name.clone()));
            }
            Ok(u32::try_from(t.partitions().len()).unwrap_or(u32::MAX))
        })
        .await
    }

    /// [`EventBus::publish`], returning where each message landed, in input order.
    ///
    /// # Errors
    /// The first failure, mapped to [`BusError`] (see `crate::error` for the split).
    pub async fn publish_with_receipts(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<Receipt>, BusError> {
        let raw = messages
            .iter()
            .map(|msg| RawMessage {
                topic: &msg.topic,
                key: Some(msg.key.as_bytes()),
                payload: Some(msg.payload.as_str().as_bytes()),
                headers: msg
                    .headers
                    .0
                    .iter()
                    .map(|(k, v)| (k.as_str(), Some(v.as_bytes())))
                    .collect(),
            })
            .collect::<Vec<_>>();
        self.publish_raw(&raw).await
    }

    /// Publishes raw messages in order and awaits every delivery report, inside a
    /// `reprise.kafka.publish` span (`debug`; OpenTelemetry messaging attributes: a
    /// producer span, `messaging.system = kafka`, the destination when the batch has one
    /// topic, the batch size, and `error.type` when it fails).
    pub(crate) async fn publish_raw(
        &self,
        messages: &[RawMessage<'_>],
    ) -> Result<Vec<Receipt>, BusError> {
        let topic = messages
            .first()
            .map(|m| m.topic)
            .filter(|first| messages.iter().all(|m| m.topic == *first));
        let span = tracing::debug_span!(
            "reprise.kafka.publish",
            otel.name = %format_args!("send {}", topic.unwrap_or("(several topics)")),
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.operation.type = "send",
            messaging.operation.name = "send",
            messaging.destination.name = topic,
            messaging.batch.message_count = messages.len(),
            messaging.client.id = %self.config().client_id,
            "error.type" = tracing::field::Empty,
        );
        let result = self
            .publish_raw_untraced(messages)
            .instrument(span.clone())
            .await;
        if let Err(error) = &result {
            span.record("error.type", error.kind());
        }
        result
    }

    async fn publish_raw_untraced(
        &self,
        messages: &[RawMessage<'_>],
    ) -> Result<Vec<Receipt>, BusError> {
        let started = Instant::now();
        let mut pending: VecDeque<(&str, DeliveryFuture)> = VecDeque::with_capacity(messages.len());
        let mut receipts = Vec::with_capacity(messages.len());
        let mut published: BTreeMap<&str, u64> = BTreeMap::new();
        let mut failure: Option<(&str, BusError)> = None;
        'enqueue: for message in messages {
            let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
            for (key, value) in &message.headers {
                headers = headers.insert(Header { key, value: *value });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(message.topic).headers(headers);
            if let Some(key) = message.key {
                record = record.key(key);
            }
            if let Some(payload) = message.payload {
                record = record.payload(payload);
            }
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push_back((message.topic, delivery));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                        // Back-pressure: wait for the oldest in-flight message, then retry.
                        record = returned;
                        match pending.pop_front() {
                            Some((topic, delivery)) => {
                                match await_delivery(topic, delivery).await {
                                    Ok(receipt) => {
                                        *published.entry(topic).or_default() += 1;
                                        receipts.push(receipt);
                                    }
                                    Err(e) => {
                                        failure = Some((topic, e));
                                        break 'enqueue;
                                    }
                                }
                            }
                            None => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                    Err((e, _)) => {
                        failure = Some((message.topic, to_bus_error(&e, message.topic)));
                        break 'enqueue;
                    }
                }
            }
        }
        for (topic, delivery) in pending {
            match await_delivery(topic, delivery).await {
                Ok(receipt) => {
                    *published.entry(topic).or_default() += 1;
                    receipts.push(receipt);
                }
                Err(e) => {
                    failure.get_or_insert((topic, e));
                }
            }
        }
        for (topic, count) in published {
            metrics::counter!(m::PUBLISHED_TOTAL, "topic" => topic.to_owned()).increment(count);
        }
        metrics::histogram!(m::PUBLISH_DURATION_SECONDS).record(started.elapsed().as_secs_f64());
        match failure {
            Some((topic, error)) => {
                metrics::counter!(m::PUBLISH_ERRORS_TOTAL, "topic" => topic.to_owned(), "kind" => error.kind()).increment(1);
                tracing::warn!(topic, %error, "publish failed");
                Err(error)
            }
            None => Ok(receipts),
        }
    }

    /// [`EventBus::subscribe`] with the concrete type (for [`KafkaSubscription::assignment`]).
    ///
    /// # Errors
    /// [`BusError::Permanent`] for an empty group or topic list, or a client that cannot
    /// be created.
    pub fn subscribe_group(
        &self,
        group: &str,
        topics: &[&str],
    ) -> Result<KafkaSubscription, BusError> {
        KafkaSubscription::new(self.clone(), group, topics)
    }

    pub(crate) fn producer_shared(&self) -> &Arc<KafkaConfig> {
        &self.config
    }
}

async fn await_delivery(topic: &str, delivery: DeliveryFuture) -> Result<Receipt, BusError> {
    match delivery.await {
        Ok(Ok(d)) => Ok(Receipt {
            topic: Arc::from(topic),
            partition: u32::try_from(d.partition)
                .map_err(|_| BusError::Permanent(format!("negative partition {}", d.partition)))?,
            offset: u64::try_from(d.offset)
                .map_err(|_| BusError::Permanent(format!("negative offset {}", d.offset)))?,
        }),
        Ok(Err((e, _))) => Err(to_bus_error(&e, topic)),
        Err(_canceled) => Err(BusError::Closed),
    }
}

/// Runs a blocking librdkafka call off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BusError> + Send + 'static,
) -> Result<T, BusError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BusError::Permanent(format!("blocking task failed: {e}")))?
}

impl EventBus for KafkaEventBus {
    fn publish(&self, messages: Vec<OutgoingMessage>) -> BoxFuture<'static, Result<(), BusError>> {
        let bus = self.clone();
        Box::pin(async move { bus.publish_with_receipts(messages).await.map(|_| ()) })
    }

    /// Prepares the dead-letter topics before it returns (see
    /// [`KafkaEventBus::ensure_dead_letter_topic`]): a subscription that could not
    /// dead-letter a poison message is refused here, with the reason, rather than
    /// discovered at the first poison message.
    fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
    ) -> BoxFuture<'static, Result<Box<dyn Subscription>, BusError>> {
        let result = self.subscribe_group(group, topics);
        Box::pin(async move {
            let mut subscription = result?;
            subscription.prepare_dead_letter_topics().await?;
            Ok(Box::new(subscription) as Box<dyn Subscription>)
        })
    }
}
