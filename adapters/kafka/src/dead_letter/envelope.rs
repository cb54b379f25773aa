//! The header codec: why and from where a message was dead-lettered, as `reprise-dlq-*`
//! headers ([`header`]). One encoding ([`Envelope::encode`], written by [`publish_letter`]
//! for the handler, the subscription and `KafkaDeadLetterQueue::put` alike) and one decoding
//! ([`Decoded::from_message`], read by both queues).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use rdkafka::message::{Headers as _, Message};
use reprise_core::resilience::{ErrorClass, RetryError};
use reprise_core::{BusError, Runtime, Timestamp};

use super::DeadLetterError;
use crate::bus::{KafkaEventBus, RawMessage, Receipt};
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
    /// position, written by [`KafkaDeadLetterQueue`](crate::KafkaDeadLetterQueue)'s `put`).
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
/// encoding written by [`DeadLetterHandler`](super::DeadLetterHandler), by the subscription
/// (undecodable messages) and by [`KafkaDeadLetterQueue`](crate::KafkaDeadLetterQueue)'s
/// `put`, and the one decoding ([`Decoded`]) read by
/// [`DeadLetterQueue`](super::DeadLetterQueue) and `KafkaDeadLetterQueue`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Envelope {
    pub original_topic: String,
    /// The original's partition and offset, when it came from a Kafka partition.
    pub original: Option<(u32, u64)>,
    /// Any other description of where the original was ([`header::SOURCE_POSITION`]).
    pub source_position: Option<String>,
    pub error: String,
    pub error_class: ErrorClass,
    pub attempts: u32,
    pub group: Option<String>,
    pub failed_at: Timestamp,
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
    pub(super) fn source_position(&self) -> Option<String> {
        self.source_position.clone().or_else(|| {
            self.original
                .map(|(partition, offset)| format!("{partition}/{offset}"))
        })
    }

    /// Splits the contract's `source_position` into Kafka coordinates when it is exactly
    /// `partition/offset`, so that the raw tools see them; anything else is kept as text.
    pub(super) fn split_source_position(
        position: Option<&str>,
    ) -> (Option<(u32, u64)>, Option<String>) {
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
pub(super) async fn publish_letter(
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

/// [`send_classified`] under the bus's [`dead_letter_retry`](crate::KafkaConfig::dead_letter_retry)
/// policy, pausing on `runtime`. A write that still fails is reported here — counter
/// [`m::DEAD_LETTER_FAILURES_TOTAL`] and an error log — and returned with the dead-letter
/// topic and the original's coordinates in its text, so that whoever sees it (the
/// consume loop, an operator) knows which partition stopped committing and why.
pub(crate) async fn send_retrying(
    bus: &KafkaEventBus,
    runtime: &dyn Runtime,
    original: &RawMessage<'_>,
    failure: &Failure<'_>,
    error_class: ErrorClass,
) -> Result<Receipt, BusError> {
    let dead_letter_topic = bus.config().dead_letter_topic(original.topic);
    let coordinates = format!(
        "{}/{}@{}",
        original.topic, failure.partition, failure.offset
    );
    let outcome = bus
        .config()
        .dead_letter_retry
        .run(
            runtime,
            |_| send_classified(bus, original, failure, error_class),
            |error, attempt, pause| {
                tracing::warn!(
                    coordinates,
                    dead_letter_topic,
                    attempt,
                    %error,
                    ?pause,
                    "dead-letter write failed, retrying"
                );
            },
        )
        .await;
    let RetryError {
        error, attempts, ..
    } = match outcome {
        Ok(receipt) => return Ok(receipt),
        Err(failed) => failed,
    };
    metrics::counter!(
        m::DEAD_LETTER_FAILURES_TOTAL,
        "topic" => original.topic.to_owned(),
        "group" => failure.group.unwrap_or("").to_owned()
    )
    .increment(1);
    tracing::error!(
        coordinates,
        dead_letter_topic,
        attempts,
        %error,
        reason = failure.error,
        "cannot write a dead letter: the message stays unacknowledged and its partition's \
         commits stop before it until the write succeeds"
    );
    let context = format!(
        "dead letter of {coordinates} not written to {dead_letter_topic} after {attempts} attempt(s)"
    );
    Err(match error {
        BusError::Timeout => BusError::Transient(format!("{context}: timed out")),
        BusError::Transient(why) => BusError::Transient(format!("{context}: {why}")),
        BusError::Permanent(why) => BusError::Permanent(format!("{context}: {why}")),
        BusError::UnknownTopic(_) => BusError::UnknownTopic(dead_letter_topic),
        other @ (BusError::Revoked { .. } | BusError::Closed) => other,
    })
}

pub(super) async fn send_classified(
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

/// A record of a dead-letter topic, decoded: where it is, its [`Envelope`], and the
/// original key, payload and headers byte for byte (`reprise-dlq-*` removed).
#[derive(Clone, Debug)]
pub(super) struct Decoded {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub envelope: Envelope,
    pub dead_lettered_at_ms: Option<u64>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Decoded {
    pub(super) fn coordinates(&self) -> String {
        format!("{}/{}@{}", self.topic, self.partition, self.offset)
    }

    pub(super) fn from_message(message: &impl Message) -> Result<Self, DeadLetterError> {
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
}
