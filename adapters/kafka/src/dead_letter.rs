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
//!
//! Two ways to work with what was parked: [`DeadLetterQueue`] (list, inspect and replay the
//! raw records, byte for byte) and [`KafkaDeadLetterQueue`], the
//! [`reprise_core::resilience::DeadLetterQueue`] on a dead-letter topic, which also records
//! resolutions (retried, discarded) durably in `<dead-letter-topic>.resolutions`. Both read
//! the one header encoding ([`header`]) that the handler, the subscription and
//! [`KafkaDeadLetterQueue`]'s `put` write.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers as _, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use reprise_core::event_bus::{Delivery, Headers, Subscription};
use reprise_core::resilience::{self as contract, Classify, ErrorClass};
use reprise_core::{BoxFuture, BusError, Payload, Timestamp};

use crate::bus::{KafkaEventBus, RawMessage, Receipt, blocking};
use crate::config::KafkaConfig;
use crate::error::{KafkaError, check_topic_name, to_bus_error};
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
    /// The error's class: `transient` (retries exhausted) or `permanent`. Absent on letters
    /// written before classes were recorded: read as `permanent`.
    pub const ERROR_CLASS: &str = "reprise-dlq-error-class";
    /// Wall-clock time of the failure, nanoseconds since the Unix epoch (the contract's
    /// `failed_at`). Absent on older letters: [`DEAD_LETTERED_AT_MS`] is used instead.
    pub const FAILED_AT_NANOS: &str = "reprise-dlq-failed-at-nanos";
    /// Where the original was, when that is not a Kafka `partition/offset` (a global
    /// position, written by [`KafkaDeadLetterQueue`](super::KafkaDeadLetterQueue)'s `put`).
    pub const SOURCE_POSITION: &str = "reprise-dlq-source-position";
    /// On a resolution record (`<dead-letter-topic>.resolutions`, keyed by letter id): when
    /// it was resolved, nanoseconds since the Unix epoch. The payload is `retried` or
    /// `discarded`.
    pub const RESOLVED_AT_NANOS: &str = "reprise-dlq-resolved-at-nanos";
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

impl Classify for HandlerError {
    fn class(&self) -> ErrorClass {
        match self {
            HandlerError::Transient(_) => ErrorClass::Transient,
            HandlerError::Permanent(_) => ErrorClass::Permanent,
        }
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

impl Classify for DeadLetterError {
    fn class(&self) -> ErrorClass {
        match self {
            DeadLetterError::Bus(e) => e.class(),
            DeadLetterError::InvalidPolicy(_)
            | DeadLetterError::NotFound { .. }
            | DeadLetterError::Malformed { .. } => ErrorClass::Permanent,
        }
    }
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

/// Why and from where a message was dead-lettered: the `reprise-dlq-*` headers. The one
/// encoding written by [`DeadLetterHandler`], by the subscription (undecodable messages) and
/// by [`KafkaDeadLetterQueue`]'s `put`, and the one decoding read by [`DeadLetterQueue`] and
/// [`KafkaDeadLetterQueue`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct Envelope {
    original_topic: String,
    /// The original's partition and offset, when it came from a Kafka partition.
    original: Option<(u32, u64)>,
    /// Any other description of where the original was ([`header::SOURCE_POSITION`]).
    source_position: Option<String>,
    error: String,
    error_class: ErrorClass,
    attempts: u32,
    group: Option<String>,
    failed_at: Timestamp,
}

impl Envelope {
    /// The headers, in the order they are written.
    fn encode(&self) -> Vec<(&'static str, String)> {
        let nanos = self.failed_at.as_unix_nanos();
        let mut out = vec![(header::ORIGINAL_TOPIC, self.original_topic.clone())];
        if let Some((partition, offset)) = self.original {
            out.push((header::ORIGINAL_PARTITION, partition.to_string()));
            out.push((header::ORIGINAL_OFFSET, offset.to_string()));
        }
        if let Some(position) = &self.source_position {
            out.push((header::SOURCE_POSITION, position.clone()));
        }
        out.extend([
            (header::ERROR, self.error.clone()),
            (header::ERROR_CLASS, self.error_class.as_str().to_owned()),
            (header::ATTEMPTS, self.attempts.to_string()),
            (header::DEAD_LETTERED_AT_MS, (nanos / 1_000_000).to_string()),
            (header::FAILED_AT_NANOS, nanos.to_string()),
        ]);
        if let Some(group) = &self.group {
            out.push((header::GROUP, group.clone()));
        }
        out
    }

    /// The contract's `source_position`: Kafka coordinates are written as `partition/offset`.
    fn source_position(&self) -> Option<String> {
        self.source_position.clone().or_else(|| {
            self.original
                .map(|(partition, offset)| format!("{partition}/{offset}"))
        })
    }

    /// Splits the contract's `source_position` into Kafka coordinates when it is exactly
    /// `partition/offset`, so that the raw tools see them; anything else is kept as text.
    fn split_source_position(position: Option<&str>) -> (Option<(u32, u64)>, Option<String>) {
        let Some(position) = position else {
            return (None, None);
        };
        let coordinates = position.split_once('/').and_then(|(p, o)| {
            let parsed = (p.parse::<u32>().ok()?, o.parse::<u64>().ok()?);
            (format!("{}/{}", parsed.0, parsed.1) == position).then_some(parsed)
        });
        match coordinates {
            Some(coordinates) => (Some(coordinates), None),
            None => (None, Some(position.to_owned())),
        }
    }
}

fn wall_clock_now() -> Timestamp {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    Timestamp::from_unix_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Publishes a dead letter to `dead_letter_topic` — the original's key, payload and headers
/// (earlier `reprise-dlq-*` headers dropped: a replayed message that fails again gets fresh
/// ones, not two sets) plus `envelope` — and awaits the broker's acknowledgement.
async fn publish_letter(
    bus: &KafkaEventBus,
    dead_letter_topic: &str,
    original: &RawMessage<'_>,
    envelope: &Envelope,
) -> Result<Receipt, BusError> {
    let encoded = envelope.encode();
    let mut headers: Vec<(&str, Option<&[u8]>)> = original
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with(header::PREFIX))
        .copied()
        .collect();
    headers.extend(encoded.iter().map(|(k, v)| (*k, Some(v.as_bytes()))));
    let message = RawMessage {
        topic: dead_letter_topic,
        key: original.key,
        payload: original.payload,
        headers,
    };
    let receipt = bus
        .publish_raw(std::slice::from_ref(&message))
        .await?
        .pop()
        .ok_or(BusError::Closed)?;
    metrics::counter!(m::DEAD_LETTERS_TOTAL, "topic" => envelope.original_topic.clone())
        .increment(1);
    Ok(receipt)
}

/// Publishes `original` to its dead-letter topic and awaits the broker's acknowledgement.
/// For failures that are permanent by nature (a message that cannot be decoded).
pub(crate) async fn send(
    bus: &KafkaEventBus,
    original: &RawMessage<'_>,
    failure: &Failure<'_>,
) -> Result<Receipt, BusError> {
    send_classified(bus, original, failure, ErrorClass::Permanent).await
}

async fn send_classified(
    bus: &KafkaEventBus,
    original: &RawMessage<'_>,
    failure: &Failure<'_>,
    error_class: ErrorClass,
) -> Result<Receipt, BusError> {
    let envelope = Envelope {
        original_topic: original.topic.to_owned(),
        original: Some((failure.partition, failure.offset)),
        source_position: None,
        error: failure.error.to_owned(),
        error_class,
        attempts: failure.attempts,
        group: failure.group.map(str::to_owned),
        failed_at: wall_clock_now(),
    };
    let dead_letter_topic = bus.config().dead_letter_topic(original.topic);
    publish_letter(bus, &dead_letter_topic, original, &envelope).await
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
        let receipt = send_classified(&self.bus, &original, &failure, error.class()).await?;
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
        let decoded = Decoded::from_message(message)?;
        let (original_partition, original_offset) =
            decoded
                .envelope
                .original
                .ok_or_else(|| DeadLetterError::Malformed {
                    coordinates: decoded.coordinates(),
                    problem: format!(
                        "no original partition/offset (source position {:?}): read it through \
                     KafkaDeadLetterQueue",
                        decoded.envelope.source_position
                    ),
                })?;
        Ok(DeadLetter {
            topic: decoded.topic,
            partition: decoded.partition,
            offset: decoded.offset,
            original_topic: decoded.envelope.original_topic,
            original_partition,
            original_offset,
            error: decoded.envelope.error,
            attempts: decoded.envelope.attempts,
            group: decoded.envelope.group,
            dead_lettered_at_ms: decoded.dead_lettered_at_ms,
            key: decoded.key,
            payload: decoded.payload,
            headers: decoded.headers,
        })
    }
}

/// A record of a dead-letter topic, decoded: where it is, its [`Envelope`], and the
/// original key, payload and headers byte for byte (`reprise-dlq-*` removed).
#[derive(Clone, Debug)]
struct Decoded {
    topic: String,
    partition: u32,
    offset: u64,
    envelope: Envelope,
    dead_lettered_at_ms: Option<u64>,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Decoded {
    fn coordinates(&self) -> String {
        format!("{}/{}@{}", self.topic, self.partition, self.offset)
    }

    fn from_message(message: &impl Message) -> Result<Self, DeadLetterError> {
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
        let mut dlq = BTreeMap::new();
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
        let number = |name: &str| -> Result<Option<u64>, DeadLetterError> {
            dlq.get(name)
                .map(|v| v.parse::<u64>())
                .transpose()
                .map_err(|e| malformed(format!("header {name}: {e}")))
        };
        let narrow = |n: u64| u32::try_from(n).map_err(|e| malformed(e.to_string()));
        let original = match (
            number(header::ORIGINAL_PARTITION)?,
            number(header::ORIGINAL_OFFSET)?,
        ) {
            (Some(partition), Some(offset)) => Some((narrow(partition)?, offset)),
            (None, None) => None,
            _ => {
                return Err(malformed(format!(
                    "{} and {} come together",
                    header::ORIGINAL_PARTITION,
                    header::ORIGINAL_OFFSET
                )));
            }
        };
        let error_class = match dlq.get(header::ERROR_CLASS).map(String::as_str) {
            // Written before classes were recorded: the handler had given up on it.
            None | Some("permanent") => ErrorClass::Permanent,
            Some("transient") => ErrorClass::Transient,
            Some("conflict") => ErrorClass::Conflict,
            Some(other) => {
                return Err(malformed(format!(
                    "header {}: unknown class {other:?}",
                    header::ERROR_CLASS
                )));
            }
        };
        let dead_lettered_at_ms = dlq
            .get(header::DEAD_LETTERED_AT_MS)
            .and_then(|v| v.parse::<u64>().ok());
        // Nanoseconds when written, else the millisecond header, else the record's own
        // timestamp (set by the producer when the letter was written).
        let failed_at_nanos = number(header::FAILED_AT_NANOS)?
            .or_else(|| dead_lettered_at_ms.map(|ms| ms.saturating_mul(1_000_000)))
            .or_else(|| {
                message
                    .timestamp()
                    .to_millis()
                    .and_then(|ms| u64::try_from(ms).ok())
                    .map(|ms| ms.saturating_mul(1_000_000))
            })
            .unwrap_or_default();
        let attempts = number(header::ATTEMPTS)?
            .ok_or_else(|| malformed(format!("missing header {}", header::ATTEMPTS)))?;
        Ok(Decoded {
            topic: message.topic().to_owned(),
            partition: u32::try_from(message.partition()).map_err(|e| malformed(e.to_string()))?,
            offset: u64::try_from(message.offset()).map_err(|e| malformed(e.to_string()))?,
            envelope: Envelope {
                original_topic: get(header::ORIGINAL_TOPIC)?,
                original,
                source_position: dlq.get(header::SOURCE_POSITION).cloned(),
                error: get(header::ERROR)?,
                error_class,
                attempts: narrow(attempts)?,
                group: dlq.get(header::GROUP).cloned(),
                failed_at: Timestamp::from_unix_nanos(failed_at_nanos),
            },
            dead_lettered_at_ms,
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        })
    }

    /// The letter as the contract sees it: key, payload and header values must be present
    /// and UTF-8 (the contract's types are text). `Err` says why not; such a letter is
    /// still a dead letter, reachable byte for byte through [`DeadLetterQueue`].
    fn into_contract(
        self,
        status: contract::DeadLetterStatus,
    ) -> Result<contract::DeadLetter, String> {
        let text = |what: &str, bytes: Option<Vec<u8>>| -> Result<String, String> {
            let bytes = bytes.ok_or_else(|| format!("{what} is null"))?;
            String::from_utf8(bytes).map_err(|e| format!("{what} is not UTF-8: {e}"))
        };
        let key = text("the key", self.key)?;
        let payload = text("the payload", self.payload)?;
        let mut headers = Headers::default();
        for (name, value) in self.headers {
            let value = text(&format!("header {name}"), value)?;
            headers.0.push((name, value));
        }
        let source_position = self.envelope.source_position();
        Ok(contract::DeadLetter {
            id: contract::DeadLetterId(letter_id(self.partition, self.offset)),
            letter: contract::NewDeadLetter {
                topic: self.envelope.original_topic,
                source_position,
                key,
                payload: Payload::from_json_text(payload),
                headers,
                error: self.envelope.error,
                error_class: self.envelope.error_class,
                attempts: self.envelope.attempts,
                failed_at: self.envelope.failed_at,
            },
            status,
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
    /// not write (or a letter [`KafkaDeadLetterQueue`] stored without Kafka coordinates),
    /// [`BusError::Timeout`] past the operation timeout.
    pub async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let partitions = self.bus.partition_count(&self.topic).await?;
        read_topic(self.bus.config(), &self.topic, partitions, limit)
            .await?
            .iter()
            .map(DeadLetter::parse)
            .collect()
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
        match read_at(self.bus.config(), &self.topic, partition, offset).await? {
            Some(message) => DeadLetter::parse(&message),
            None => Err(DeadLetterError::NotFound {
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

/// The suffix of the topic where [`KafkaDeadLetterQueue`] records resolutions.
pub const RESOLUTIONS_SUFFIX: &str = ".resolutions";

/// Partitions and replication factor for the topics [`KafkaDeadLetterQueue`] creates when
/// they are missing (existing topics are left alone). The default, one partition and one
/// replica, suits development; production clusters should pass their replication factor
/// or create the topics beforehand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicLayout {
    /// Partitions of the dead-letter topic (the resolutions topic always gets one).
    pub partitions: u32,
    pub replication_factor: u32,
}

impl Default for TopicLayout {
    fn default() -> Self {
        TopicLayout {
            partitions: 1,
            replication_factor: 1,
        }
    }
}

/// The [`reprise_core::resilience::DeadLetterQueue`] on a Kafka dead-letter topic.
///
/// - A letter is a record of the dead-letter topic, in the [`header`] encoding
///   that [`DeadLetterHandler`] writes, so letters the handler (or a subscription, for
///   undecodable messages) parked are listed, resolved and redelivered here too. Its id is
///   `partition:offset` in the dead-letter topic.
/// - Topics are append-only, so a resolution is a record of
///   `<dead-letter-topic>.resolutions` ([`RESOLUTIONS_SUFFIX`]), keyed by letter id, with
///   payload `retried` or `discarded` and [`header::RESOLVED_AT_NANOS`]. `list`, `get` and
///   `stats` fold over it; the first resolution recorded for an id is the one that counts.
/// - `resolve` refuses a second resolution ([`contract::DeadLetterError::AlreadyResolved`]),
///   but checking and recording are two steps with no compare-and-set on a topic: two
///   operators racing can both pass the check. Redelivering twice is harmless (handlers are
///   idempotent); where it matters, use the PostgreSQL queue.
/// - Every read is a scan from the start of both topics to their high watermarks by a
///   group-less reader (nothing committed, no group disturbed). Dead-letter topics are
///   small; `list` orders letters by `failed_at` (then partition and offset).
/// - The contract's types are text: a letter whose key, payload or header values are null
///   or not UTF-8 (a message that could not be decoded) is counted by `stats`, can be
///   resolved, but is left out of `list` and makes `get` fail with
///   [`contract::DeadLetterError::Invalid`]; read and replay it with [`DeadLetterQueue`].
#[derive(Clone, Debug)]
pub struct KafkaDeadLetterQueue {
    bus: KafkaEventBus,
    topic: String,
    resolutions: String,
    name: String,
}

impl KafkaDeadLetterQueue {
    /// Connects to the dead-letter topic `dead_letter_topic` (`orders.dlq`), creating it and
    /// its resolutions topic if missing with [`TopicLayout::default`].
    ///
    /// # Errors
    /// [`KafkaError::InvalidTopic`] for a name Kafka refuses, [`KafkaError::Config`] for a
    /// refused configuration, [`KafkaError::Bus`] if the broker cannot create or show the
    /// topics within the operation timeout.
    pub async fn connect(
        config: KafkaConfig,
        dead_letter_topic: &str,
    ) -> Result<KafkaDeadLetterQueue, KafkaError> {
        Self::connect_with_layout(config, dead_letter_topic, TopicLayout::default()).await
    }

    /// [`KafkaDeadLetterQueue::connect`], creating missing topics with `layout`.
    ///
    /// # Errors
    /// As [`KafkaDeadLetterQueue::connect`].
    pub async fn connect_with_layout(
        config: KafkaConfig,
        dead_letter_topic: &str,
        layout: TopicLayout,
    ) -> Result<KafkaDeadLetterQueue, KafkaError> {
        check_topic_name(dead_letter_topic)?;
        let resolutions = format!("{dead_letter_topic}{RESOLUTIONS_SUFFIX}");
        check_topic_name(&resolutions)?;
        let bus = KafkaEventBus::new(config)?;
        bus.create_topic(
            dead_letter_topic,
            layout.partitions,
            layout.replication_factor,
        )
        .await?;
        bus.create_topic(&resolutions, 1, layout.replication_factor)
            .await?;
        for topic in [dead_letter_topic, resolutions.as_str()] {
            await_topic(&bus, topic).await?;
        }
        Ok(KafkaDeadLetterQueue {
            name: format!("kafka:{dead_letter_topic}"),
            bus,
            topic: dead_letter_topic.to_owned(),
            resolutions,
        })
    }

    /// The dead-letter topic.
    #[must_use]
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic resolutions are recorded in.
    #[must_use]
    pub fn resolutions_topic(&self) -> &str {
        &self.resolutions
    }

    /// The bus this queue writes with; hand it to [`contract::redeliver`].
    #[must_use]
    pub fn bus(&self) -> &KafkaEventBus {
        &self.bus
    }

    /// Every dead letter of the topic, oldest failure first. Records that are not dead
    /// letters are skipped with a warning.
    async fn letters(&self) -> Result<Vec<Decoded>, contract::DeadLetterError> {
        let partitions = self
            .bus
            .partition_count(&self.topic)
            .await
            .map_err(|e| unavailable(&e))?;
        let records = read_topic(self.bus.config(), &self.topic, partitions, usize::MAX)
            .await
            .map_err(|e| unavailable(&e))?;
        let mut letters: Vec<Decoded> = records
            .iter()
            .filter_map(|record| match Decoded::from_message(record) {
                Ok(letter) => Some(letter),
                Err(error) => {
                    tracing::warn!(queue = self.name, %error, "skipping a record that is not a dead letter");
                    None
                }
            })
            .collect();
        letters.sort_by_key(|l| (l.envelope.failed_at, l.partition, l.offset));
        Ok(letters)
    }

    /// The letter `id` names, if there is a record there.
    async fn letter(
        &self,
        id: &contract::DeadLetterId,
    ) -> Result<Option<Decoded>, contract::DeadLetterError> {
        let Some((partition, offset)) = parse_letter_id(&id.0) else {
            return Ok(None);
        };
        let Some(record) = read_at(self.bus.config(), &self.topic, partition, offset)
            .await
            .map_err(|e| unavailable(&e))?
        else {
            return Ok(None);
        };
        Decoded::from_message(&record)
            .map(Some)
            .map_err(|e| contract::DeadLetterError::Invalid(e.to_string()))
    }

    /// Resolutions by letter id; the first recorded for an id wins.
    async fn resolutions(
        &self,
    ) -> Result<BTreeMap<String, contract::DeadLetterStatus>, contract::DeadLetterError> {
        let partitions = self
            .bus
            .partition_count(&self.resolutions)
            .await
            .map_err(|e| unavailable(&e))?;
        let records = read_topic(self.bus.config(), &self.resolutions, partitions, usize::MAX)
            .await
            .map_err(|e| unavailable(&e))?;
        let mut statuses = BTreeMap::new();
        for record in &records {
            match decode_resolution(record) {
                Ok((id, status)) => {
                    statuses.entry(id).or_insert(status);
                }
                Err(problem) => tracing::warn!(
                    queue = self.name,
                    partition = record.partition(),
                    offset = record.offset(),
                    problem,
                    "skipping a record that is not a resolution"
                ),
            }
        }
        Ok(statuses)
    }
}

impl contract::DeadLetterQueue for KafkaDeadLetterQueue {
    fn name(&self) -> &str {
        &self.name
    }

    fn put(
        &self,
        letter: contract::NewDeadLetter,
    ) -> BoxFuture<'_, Result<contract::DeadLetterId, contract::DeadLetterError>> {
        Box::pin(async move {
            contract::dead_letter::validate(&letter)?;
            let (original, source_position) =
                Envelope::split_source_position(letter.source_position.as_deref());
            let envelope = Envelope {
                original_topic: letter.topic.clone(),
                original,
                source_position,
                error: letter.error.clone(),
                error_class: letter.error_class,
                attempts: letter.attempts,
                group: None,
                failed_at: letter.failed_at,
            };
            let message = RawMessage {
                topic: &letter.topic,
                key: Some(letter.key.as_bytes()),
                payload: Some(letter.payload.as_str().as_bytes()),
                headers: letter
                    .headers
                    .0
                    .iter()
                    .map(|(k, v)| (k.as_str(), Some(v.as_bytes())))
                    .collect(),
            };
            let receipt = publish_letter(&self.bus, &self.topic, &message, &envelope)
                .await
                .map_err(|e| unavailable(&e))?;
            metrics::counter!(reprise_core::instrument::DEAD_LETTERS, "topic" => letter.topic.clone())
                .increment(1);
            Ok(contract::DeadLetterId(letter_id(
                receipt.partition,
                receipt.offset,
            )))
        })
    }

    fn list(
        &self,
        query: contract::DeadLetterQuery,
    ) -> BoxFuture<'_, Result<Vec<contract::DeadLetter>, contract::DeadLetterError>> {
        Box::pin(async move {
            let letters = self.letters().await?;
            let statuses = self.resolutions().await?;
            Ok(letters
                .into_iter()
                .filter(|l| {
                    query
                        .topic
                        .as_ref()
                        .is_none_or(|t| *t == l.envelope.original_topic)
                })
                .filter_map(|l| {
                    let id = letter_id(l.partition, l.offset);
                    let status = statuses
                        .get(&id)
                        .copied()
                        .unwrap_or(contract::DeadLetterStatus::Pending);
                    if !query.include_resolved && status != contract::DeadLetterStatus::Pending {
                        return None;
                    }
                    l.into_contract(status)
                        .inspect_err(|problem| {
                            tracing::warn!(
                                queue = self.name,
                                id,
                                problem,
                                "dead letter not listed: not text"
                            );
                        })
                        .ok()
                })
                .take(query.limit)
                .collect())
        })
    }

    fn get<'a>(
        &'a self,
        id: &'a contract::DeadLetterId,
    ) -> BoxFuture<'a, Result<Option<contract::DeadLetter>, contract::DeadLetterError>> {
        Box::pin(async move {
            let Some(letter) = self.letter(id).await? else {
                return Ok(None);
            };
            let status = self
                .resolutions()
                .await?
                .remove(&id.0)
                .unwrap_or(contract::DeadLetterStatus::Pending);
            letter.into_contract(status).map(Some).map_err(|problem| {
                contract::DeadLetterError::Invalid(format!(
                    "dead letter {id} is not text ({problem}): use DeadLetterQueue::inspect"
                ))
            })
        })
    }

    fn resolve<'a>(
        &'a self,
        id: &'a contract::DeadLetterId,
        resolution: contract::Resolution,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<(), contract::DeadLetterError>> {
        Box::pin(async move {
            if self.letter(id).await?.is_none() {
                return Err(contract::DeadLetterError::NotFound(id.clone()));
            }
            if let Some(status) = self.resolutions().await?.remove(&id.0) {
                return Err(contract::DeadLetterError::AlreadyResolved {
                    id: id.clone(),
                    status,
                });
            }
            // Check-then-append: see the type's docs for racing operators.
            let at_nanos = at.as_unix_nanos().to_string();
            let record = RawMessage {
                topic: &self.resolutions,
                key: Some(id.0.as_bytes()),
                payload: Some(resolution_word(resolution).as_bytes()),
                headers: vec![(header::RESOLVED_AT_NANOS, Some(at_nanos.as_bytes()))],
            };
            self.bus
                .publish_raw(std::slice::from_ref(&record))
                .await
                .map_err(|e| unavailable(&e))?;
            tracing::info!(queue = self.name, %id, resolution = resolution_word(resolution), "dead letter resolved");
            Ok(())
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<contract::DeadLetterStats, contract::DeadLetterError>> {
        Box::pin(async move {
            let letters = self.letters().await?;
            let statuses = self.resolutions().await?;
            let mut stats = contract::DeadLetterStats::default();
            for letter in letters
                .iter()
                .filter(|l| !statuses.contains_key(&letter_id(l.partition, l.offset)))
            {
                stats.pending += 1;
                let failed_at = letter.envelope.failed_at;
                stats.oldest_pending_failed_at = Some(
                    stats
                        .oldest_pending_failed_at
                        .map_or(failed_at, |oldest| oldest.min(failed_at)),
                );
            }
            Ok(stats)
        })
    }
}

fn unavailable(error: &BusError) -> contract::DeadLetterError {
    contract::DeadLetterError::Unavailable(error.to_string())
}

/// `partition:offset` of a letter in its dead-letter topic.
fn letter_id(partition: u32, offset: u64) -> String {
    format!("{partition}:{offset}")
}

/// The inverse of [`letter_id`]; `None` for anything it did not write.
fn parse_letter_id(id: &str) -> Option<(u32, u64)> {
    let (partition, offset) = id.split_once(':')?;
    let parsed = (partition.parse().ok()?, offset.parse().ok()?);
    (letter_id(parsed.0, parsed.1) == id).then_some(parsed)
}

fn resolution_word(resolution: contract::Resolution) -> &'static str {
    match resolution {
        contract::Resolution::Retried => "retried",
        contract::Resolution::Discarded => "discarded",
    }
}

/// A resolution record: the letter id and what became of it.
fn decode_resolution(
    record: &OwnedMessage,
) -> Result<(String, contract::DeadLetterStatus), String> {
    let id = record
        .key()
        .map(std::str::from_utf8)
        .ok_or("no key")?
        .map_err(|e| format!("key: {e}"))?;
    let at = record
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == header::RESOLVED_AT_NANOS))
        .and_then(|h| h.value)
        .ok_or_else(|| format!("missing header {}", header::RESOLVED_AT_NANOS))?;
    let at = std::str::from_utf8(at)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Timestamp::from_unix_nanos)
        .ok_or_else(|| format!("header {}: not a number", header::RESOLVED_AT_NANOS))?;
    let status = match record.payload() {
        Some(b"retried") => contract::Resolution::Retried.status(at),
        Some(b"discarded") => contract::Resolution::Discarded.status(at),
        other => {
            return Err(format!(
                "unknown resolution {:?}",
                other.map(String::from_utf8_lossy)
            ));
        }
    };
    Ok((id.to_owned(), status))
}

/// Waits until `topic` shows in cluster metadata (creation propagates asynchronously),
/// for at most the operation timeout.
async fn await_topic(bus: &KafkaEventBus, topic: &str) -> Result<(), BusError> {
    let deadline = std::time::Instant::now() + bus.config().operation_timeout;
    loop {
        match bus.partition_count(topic).await {
            Ok(_) => return Ok(()),
            Err(BusError::UnknownTopic(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Up to `limit` records of `topic`, partition by partition, oldest first, up to the high
/// watermarks read at the start. A group-less reader: nothing is committed anywhere.
async fn read_topic(
    config: &KafkaConfig,
    topic: &str,
    partitions: u32,
    limit: usize,
) -> Result<Vec<OwnedMessage>, BusError> {
    let (config, topic) = (config.clone(), topic.to_owned());
    blocking(move || {
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
    .await
}

/// The record at exactly `partition@offset` of `topic`, if there is one.
async fn read_at(
    config: &KafkaConfig,
    topic: &str,
    partition: u32,
    offset: u64,
) -> Result<Option<OwnedMessage>, BusError> {
    let (config, name) = (config.clone(), topic.to_owned());
    let found = blocking(move || {
        let reader: BaseConsumer = config
            .reader_config()
            .create()
            .map_err(|e| to_bus_error(&e, &name))?;
        let mut out = Vec::new();
        read_partition(
            &reader,
            &name,
            partition,
            Some(offset),
            1,
            config.operation_timeout,
            &mut out,
        )?;
        Ok(out.pop())
    })
    .await?;
    // Reading from a missing offset (compacted, or a gap) starts at the next record.
    Ok(found.filter(|m| u64::try_from(m.offset()).ok() == Some(offset)))
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
