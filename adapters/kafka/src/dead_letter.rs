//! Poison messages: retry what may pass, park what cannot in a dead-letter topic, and let an
//! operator list, inspect and replay what was parked.
//!
//! Why a topic and not a table: the dead letter keeps the original key, payload and
//! headers byte for byte (it may be undecodable), lands on the same partition for the same
//! key (so replay keeps per-key order), is retained and replicated like the original, and
//! needs nothing but the broker. Each dead letter carries where it came from and why in
//! `reprise-dlq-*` headers ([`header`]).
//!
//! The flow, in [`DeadLetterHandler::handle`]: run the handler; on
//! [`HandlerError::Transient`] retry with exponential backoff up to
//! [`DeadLetterPolicy::max_attempts`]; on [`HandlerError::Permanent`] (or when retries are
//! exhausted) publish the message to `<topic><suffix>` (default `.dlq`,
//! [`KafkaConfig::dead_letter_suffix`](crate::KafkaConfig::dead_letter_suffix)), await the
//! broker's acknowledgement, and only then `ack` the original, so a crash in between
//! redelivers the message instead of losing it (the dead letter may then exist twice; replay
//! is idempotent for idempotent handlers). Offsets never stall behind a poison message.
//!
//! A concurrency conflict or any error the caller can resolve by itself must not be sent
//! here (DESIGN §4): classify it as transient, or handle it before returning.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers as _, Message};
use rdkafka::{Offset, TopicPartitionList};
use reprise_core::BusError;
use reprise_core::event_bus::{Delivery, Subscription};

use crate::bus::{KafkaEventBus, RawMessage, Receipt, blocking};
use crate::error::to_bus_error;
use crate::metrics as m;

/// Headers a dead letter carries in addition to the original message's.
pub mod header {
    pub const ORIGINAL_TOPIC: &str = "reprise-dlq-original-topic";
    pub const ORIGINAL_PARTITION: &str = "reprise-dlq-original-partition";
    pub const ORIGINAL_OFFSET: &str = "reprise-dlq-original-offset";
    /// The handler's (or decoder's) error message.
    pub const ERROR: &str = "reprise-dlq-error";
    /// Handler attempts made (0: the message could not even be decoded).
    pub const ATTEMPTS: &str = "reprise-dlq-attempts";
    /// The consumer group whose handler failed, when known.
    pub const GROUP: &str = "reprise-dlq-group";
    /// Wall-clock time of dead-lettering, milliseconds since the Unix epoch.
    pub const DEAD_LETTERED_AT_MS: &str = "reprise-dlq-at-ms";
    /// On a replayed message: the dead letter it came from (`topic/partition@offset`).
    pub const REPLAYED_FROM: &str = "reprise-dlq-replayed-from";
    /// Every header this module writes starts with this.
    pub const PREFIX: &str = "reprise-dlq-";
}

/// How a handler failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// May succeed if tried again (a dependency is down, a timeout).
    #[error("transient: {0}")]
    Transient(String),
    /// Will fail the same way every time (undecodable payload, invariant violated).
    #[error("permanent: {0}")]
    Permanent(String),
}

impl HandlerError {
    pub fn transient(error: impl std::fmt::Display) -> Self {
        HandlerError::Transient(error.to_string())
    }

    pub fn permanent(error: impl std::fmt::Display) -> Self {
        HandlerError::Permanent(error.to_string())
    }
}

/// A payload that does not decode will never decode: permanent.
impl From<reprise_core::DecodeError> for HandlerError {
    fn from(error: reprise_core::DecodeError) -> Self {
        HandlerError::Permanent(error.to_string())
    }
}

/// Retry and dead-letter settings of a [`DeadLetterHandler`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterPolicy {
    /// Handler attempts before a transiently failing message is dead-lettered (≥ 1).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles each attempt.
    pub initial_backoff: Duration,
    /// Upper bound of the wait between attempts.
    pub max_backoff: Duration,
}

impl Default for DeadLetterPolicy {
    fn default() -> Self {
        DeadLetterPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl DeadLetterPolicy {
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// What happened to one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Handled {
        attempts: u32,
    },
    DeadLettered {
        attempts: u32,
        error: HandlerError,
        receipt: Receipt,
    },
}

/// Errors of the dead-letter tools.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeadLetterError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("invalid dead-letter policy: {0}")]
    InvalidPolicy(String),
    #[error("no message at {topic}/{partition}@{offset}")]
    NotFound {
        topic: String,
        partition: u32,
        offset: u64,
    },
    #[error("{coordinates} is not a dead letter: {problem}")]
    Malformed {
        coordinates: String,
        problem: String,
    },
}

/// Where and why a message failed, for [`send`].
#[derive(Debug)]
pub(crate) struct Failure<'a> {
    pub partition: u32,
    pub offset: u64,
    pub error: &'a str,
    pub attempts: u32,
    pub group: Option<&'a str>,
}

/// Publishes `original` to its dead-letter topic and awaits the broker's acknowledgement.
pub(crate) async fn send(
    bus: &KafkaEventBus,
    original: &RawMessage<'_>,
    failure: &Failure<'_>,
) -> Result<Receipt, BusError> {
    let dlq = bus.config().dead_letter_topic(original.topic);
    let (partition, offset, attempts) = (
        failure.partition.to_string(),
        failure.offset.to_string(),
        failure.attempts.to_string(),
    );
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
        .to_string();
    // A replayed message that fails again gets fresh dead-letter headers, not two sets.
    let mut headers: Vec<(&str, Option<&[u8]>)> = original
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with(header::PREFIX))
        .copied()
        .collect();
    headers.extend([
        (header::ORIGINAL_TOPIC, Some(original.topic.as_bytes())),
        (header::ORIGINAL_PARTITION, Some(partition.as_bytes())),
        (header::ORIGINAL_OFFSET, Some(offset.as_bytes())),
        (header::ERROR, Some(failure.error.as_bytes())),
        (header::ATTEMPTS, Some(attempts.as_bytes())),
        (header::DEAD_LETTERED_AT_MS, Some(at.as_bytes())),
    ]);
    if let Some(group) = failure.group {
        headers.push((header::GROUP, Some(group.as_bytes())));
    }
    let message = RawMessage {
        topic: &dlq,
        key: original.key,
        payload: original.payload,
        headers,
    };
    let receipt = bus
        .publish_raw(std::slice::from_ref(&message))
        .await?
        .pop()
        .ok_or(BusError::Closed)?;
    metrics::counter!(m::DEAD_LETTERS_TOTAL, "topic" => original.topic.to_owned()).increment(1);
    Ok(receipt)
}

/// Runs handlers with retries and sends poison messages to the dead-letter topic.
#[derive(Clone, Debug)]
pub struct DeadLetterHandler {
    bus: KafkaEventBus,
    group: Option<String>,
    policy: DeadLetterPolicy,
}

impl DeadLetterHandler {
    /// `group` is recorded in dead letters ([`header::GROUP`]) for operators.
    ///
    /// # Errors
    /// [`DeadLetterError::InvalidPolicy`] if `max_attempts` is 0 or the initial backoff
    /// exceeds the maximum.
    pub fn new(
        bus: KafkaEventBus,
        group: Option<&str>,
        policy: DeadLetterPolicy,
    ) -> Result<Self, DeadLetterError> {
        if policy.max_attempts == 0 {
            return Err(DeadLetterError::InvalidPolicy(
                "max_attempts must be at least 1".into(),
            ));
        }
        if policy.initial_backoff > policy.max_backoff {
            return Err(DeadLetterError::InvalidPolicy(format!(
                "initial_backoff {:?} exceeds max_backoff {:?}",
                policy.initial_backoff, policy.max_backoff
            )));
        }
        Ok(DeadLetterHandler {
            bus,
            group: group.map(str::to_owned),
            policy,
        })
    }

    /// Handles `delivery` with `handler`, then acknowledges it on `subscription` — after
    /// success, or after the dead letter is safely on the broker.
    ///
    /// # Errors
    /// Only if the dead letter cannot be published: the delivery is then *not*
    /// acknowledged, so it is redelivered rather than lost.
    pub async fn handle<S, F, Fut>(
        &self,
        subscription: &mut S,
        delivery: &Delivery,
        mut handler: F,
    ) -> Result<Outcome, BusError>
    where
        S: Subscription + ?Sized,
        F: FnMut(&Delivery) -> Fut,
        Fut: Future<Output = Result<(), HandlerError>>,
    {
        let mut attempt = 0;
        let error = loop {
            attempt += 1;
            match handler(delivery).await {
                Ok(()) => {
                    subscription.ack(delivery);
                    return Ok(Outcome::Handled { attempts: attempt });
                }
                Err(HandlerError::Transient(e)) if attempt < self.policy.max_attempts => {
                    metrics::counter!(m::HANDLER_RETRIES_TOTAL, "topic" => delivery.topic.to_string()).increment(1);
                    tracing::debug!(
                        coordinates = delivery.coordinates(),
                        attempt,
                        error = e,
                        "transient handler failure, retrying"
                    );
                    tokio::time::sleep(self.policy.backoff(attempt)).await;
                }
                Err(e) => break e,
            }
        };
        let text = error.to_string();
        tracing::warn!(
            coordinates = delivery.coordinates(),
            attempts = attempt,
            error = text,
            "dead-lettering"
        );
        let original = RawMessage {
            topic: &delivery.topic,
            key: Some(delivery.key.as_bytes()),
            payload: Some(delivery.payload.as_str().as_bytes()),
            headers: delivery
                .headers
                .0
                .iter()
                .map(|(k, v)| (k.as_str(), Some(v.as_bytes())))
                .collect(),
        };
        let failure = Failure {
            partition: delivery.partition,
            offset: delivery.offset,
            error: &text,
            attempts: attempt,
            group: self.group.as_deref(),
        };
        let receipt = send(&self.bus, &original, &failure).await?;
        subscription.ack(delivery);
        Ok(Outcome::DeadLettered {
            attempts: attempt,
            error,
            receipt,
        })
    }
}

/// One parked message, as read back from a dead-letter topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Where the dead letter itself is.
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    /// Where the original was.
    pub original_topic: String,
    pub original_partition: u32,
    pub original_offset: u64,
    pub error: String,
    pub attempts: u32,
    pub group: Option<String>,
    pub dead_lettered_at_ms: Option<u64>,
    /// The original key, payload and headers, byte for byte (`reprise-dlq-*` removed).
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl DeadLetter {
    /// The payload as text, if it is UTF-8.
    #[must_use]
    pub fn payload_text(&self) -> Option<&str> {
        self.payload
            .as_deref()
            .and_then(|p| std::str::from_utf8(p).ok())
    }

    /// A header of the original message, if present and UTF-8.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v.as_deref()?).ok())
    }

    /// `topic/partition@offset` of the dead letter.
    #[must_use]
    pub fn coordinates(&self) -> String {
        format!("{}/{}@{}", self.topic, self.partition, self.offset)
    }

    /// `topic/partition@offset` of the original message.
    #[must_use]
    pub fn original_coordinates(&self) -> String {
        format!(
            "{}/{}@{}",
            self.original_topic, self.original_partition, self.original_offset
        )
    }

    fn parse(message: &impl Message) -> Result<Self, DeadLetterError> {
        let coordinates = format!(
            "{}/{}@{}",
            message.topic(),
            message.partition(),
            message.offset()
        );
        let malformed = |problem: String| DeadLetterError::Malformed {
            coordinates: coordinates.clone(),
            problem,
        };
        let mut headers = Vec::new();
        let mut dlq = std::collections::BTreeMap::new();
        if let Some(raw) = message.headers() {
            for h in raw.iter() {
                if h.key.starts_with(header::PREFIX) {
                    let value = h
                        .value
                        .map(std::str::from_utf8)
                        .transpose()
                        .map_err(|e| malformed(format!("header {}: {e}", h.key)))?;
                    dlq.insert(h.key.to_owned(), value.unwrap_or_default().to_owned());
                } else {
                    headers.push((h.key.to_owned(), h.value.map(<[u8]>::to_vec)));
                }
            }
        }
        let get = |name: &str| {
            dlq.get(name)
                .cloned()
                .ok_or_else(|| malformed(format!("missing header {name}")))
        };
        let number = |name: &str| -> Result<u64, DeadLetterError> {
            get(name)?
                .parse::<u64>()
                .map_err(|e| malformed(format!("header {name}: {e}")))
        };
        Ok(DeadLetter {
            topic: message.topic().to_owned(),
            partition: u32::try_from(message.partition()).map_err(|e| malformed(e.to_string()))?,
            offset: u64::try_from(message.offset()).map_err(|e| malformed(e.to_string()))?,
            original_topic: get(header::ORIGINAL_TOPIC)?,
            original_partition: u32::try_from(number(header::ORIGINAL_PARTITION)?)
                .map_err(|e| malformed(e.to_string()))?,
            original_offset: number(header::ORIGINAL_OFFSET)?,
            error: get(header::ERROR)?,
            attempts: u32::try_from(number(header::ATTEMPTS)?)
                .map_err(|e| malformed(e.to_string()))?,
            group: dlq.get(header::GROUP).cloned(),
            dead_lettered_at_ms: dlq
                .get(header::DEAD_LETTERED_AT_MS)
                .and_then(|v| v.parse().ok()),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        })
    }
}

/// The dead letters of one topic: list, inspect, replay. Reading uses a group-less reader
/// (no offsets are committed anywhere), so listing never disturbs a consumer group.
#[derive(Clone, Debug)]
pub struct DeadLetterQueue {
    bus: KafkaEventBus,
    topic: String,
}

impl DeadLetterQueue {
    /// The dead-letter topic of `original_topic` (per the bus's configured suffix).
    #[must_use]
    pub fn for_topic(bus: KafkaEventBus, original_topic: &str) -> Self {
        let topic = bus.config().dead_letter_topic(original_topic);
        DeadLetterQueue { bus, topic }
    }

    /// The dead-letter topic's name.
    #[must_use]
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Up to `limit` dead letters, partition by partition, oldest first, as of now (the
    /// high watermarks read at the start bound the listing).
    ///
    /// # Errors
    /// [`BusError::UnknownTopic`] if nothing was ever dead-lettered for this topic (the
    /// topic does not exist), [`DeadLetterError::Malformed`] for a record this module did
    /// not write, [`BusError::Timeout`] past the operation timeout.
    pub async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let partitions = self.bus.partition_count(&self.topic).await?;
        let (config, topic) = (self.bus.config().clone(), self.topic.clone());
        let result = blocking(move || {
            let reader: BaseConsumer = config
                .reader_config()
                .create()
                .map_err(|e| to_bus_error(&e, &topic))?;
            let mut out = Vec::new();
            for partition in 0..partitions {
                if out.len() >= limit {
                    break;
                }
                read_partition(
                    &reader,
                    &topic,
                    partition,
                    None,
                    limit - out.len(),
                    config.operation_timeout,
                    &mut out,
                )?;
            }
            Ok(out)
        })
        .await?;
        result.into_iter().map(|m| DeadLetter::parse(&m)).collect()
    }

    /// The dead letter at `partition@offset` of the dead-letter topic.
    ///
    /// # Errors
    /// [`DeadLetterError::NotFound`] if there is no record there.
    pub async fn inspect(
        &self,
        partition: u32,
        offset: u64,
    ) -> Result<DeadLetter, DeadLetterError> {
        let (config, topic) = (self.bus.config().clone(), self.topic.clone());
        let found = blocking(move || {
            let reader: BaseConsumer = config
                .reader_config()
                .create()
                .map_err(|e| to_bus_error(&e, &topic))?;
            let mut out = Vec::new();
            read_partition(
                &reader,
                &topic,
                partition,
                Some(offset),
                1,
                config.operation_timeout,
                &mut out,
            )?;
            Ok(out.pop())
        })
        .await?;
        match found {
            Some(m) if u64::try_from(m.offset()).ok() == Some(offset) => DeadLetter::parse(&m),
            _ => Err(DeadLetterError::NotFound {
                topic: self.topic.clone(),
                partition,
                offset,
            }),
        }
    }

    /// Re-publishes a dead letter to its original topic: same key (so the same partition
    /// and per-key order), payload and headers, plus [`header::REPLAYED_FROM`]. The dead
    /// letter stays where it is (topics are append-only); handlers must be idempotent.
    ///
    /// # Errors
    /// The publish error.
    pub async fn replay(&self, letter: &DeadLetter) -> Result<Receipt, BusError> {
        let from = letter.coordinates();
        let mut headers: Vec<(&str, Option<&[u8]>)> = letter
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        headers.push((header::REPLAYED_FROM, Some(from.as_bytes())));
        let message = RawMessage {
            topic: &letter.original_topic,
            key: letter.key.as_deref(),
            payload: letter.payload.as_deref(),
            headers,
        };
        let receipt = self
            .bus
            .publish_raw(std::slice::from_ref(&message))
            .await?
            .pop()
            .ok_or(BusError::Closed)?;
        metrics::counter!(m::REPLAYED_TOTAL, "topic" => letter.original_topic.clone()).increment(1);
        tracing::info!(dead_letter = from, to = ?receipt, "replayed dead letter");
        Ok(receipt)
    }
}

/// Reads `partition` from `from` (or its low watermark) up to the high watermark as of now,
/// at most `limit` records.
fn read_partition(
    reader: &BaseConsumer,
    topic: &str,
    partition: u32,
    from: Option<u64>,
    limit: usize,
    timeout: Duration,
    out: &mut Vec<rdkafka::message::OwnedMessage>,
) -> Result<(), BusError> {
    let p = i32::try_from(partition)
        .map_err(|_| BusError::Permanent(format!("partition {partition} out of range")))?;
    let (low, high) = reader
        .fetch_watermarks(topic, p, timeout)
        .map_err(|e| to_bus_error(&e, topic))?;
    let start = match from {
        Some(offset) => i64::try_from(offset).unwrap_or(i64::MAX),
        None => low,
    };
    if start < low || start >= high || limit == 0 {
        return Ok(());
    }
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, p, Offset::Offset(start))
        .map_err(|e| to_bus_error(&e, topic))?;
    reader.assign(&list).map_err(|e| to_bus_error(&e, topic))?;
    let deadline = std::time::Instant::now() + timeout;
    let mut read = 0;
    while read < limit {
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let offset = message.offset();
                out.push(message.detach());
                read += 1;
                if offset + 1 >= high {
                    break;
                }
            }
            Some(Err(e)) => return Err(to_bus_error(&e, topic)),
            None if std::time::Instant::now() > deadline => return Err(BusError::Timeout),
            None => {}
        }
    }
    reader.unassign().map_err(|e| to_bus_error(&e, topic))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = DeadLetterPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
        };
        assert_eq!(policy.backoff(1), Duration::from_millis(100));
        assert_eq!(policy.backoff(2), Duration::from_millis(200));
        assert_eq!(policy.backoff(3), Duration::from_millis(400));
        assert_eq!(policy.backoff(4), Duration::from_millis(500));
        assert_eq!(policy.backoff(40), Duration::from_millis(500));
    }

    #[test]
    fn decode_errors_are_permanent() {
        let e = reprise_core::DecodeError::Payload {
            event_type: "T".into(),
            reason: "bad".into(),
        };
        assert!(matches!(HandlerError::from(e), HandlerError::Permanent(_)));
    }
}
