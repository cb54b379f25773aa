//! The raw tools: dead letters as they are on the topic, byte for byte — list, inspect,
//! replay. For letters as the core contract sees them, see `KafkaDeadLetterQueue`.

use rdkafka::message::Message;
use reprise_core::BusError;

use super::DeadLetterError;
use super::envelope::{Decoded, header};
use super::reader::{read_at, read_topic};
use crate::bus::{KafkaEventBus, RawMessage, Receipt};
use crate::metrics as m;

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
    /// A record this module did not write (or a letter
    /// [`KafkaDeadLetterQueue`](super::KafkaDeadLetterQueue) stored without Kafka
    /// coordinates) is skipped with a warning: one bad record must not hide the letters.
    ///
    /// # Errors
    /// [`BusError::UnknownTopic`] if the dead-letter topic does not exist,
    /// [`BusError::Timeout`] past the operation timeout.
    pub async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let partitions = self.bus.partition_count(&self.topic).await?;
        Ok(read_topic(self.bus.config(), &self.topic, partitions, limit)
            .await?
            .iter()
            .filter_map(|record| {
                DeadLetter::parse(record)
                    .inspect_err(|error| {
                        tracing::warn!(topic = self.topic, %error, "skipping a record that is not a dead letter");
                    })
                    .ok()
            })
            .collect())
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
