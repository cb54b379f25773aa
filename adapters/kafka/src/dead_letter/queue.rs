//! [`KafkaDeadLetterQueue`]: the core dead-letter contract on a dead-letter topic, with
//! resolutions recorded in a second topic.

use std::collections::BTreeMap;

use rdkafka::message::{Headers as _, Message, OwnedMessage};
use reprise_core::event_bus::Headers;
use reprise_core::resilience::dead_letter::REDELIVERED_FROM_HEADER;
use reprise_core::resilience::{self as contract};
use reprise_core::{BoxFuture, BusError, Payload, Timestamp};

use super::envelope::{Decoded, Envelope, header, publish_letter};
use super::reader::{read_at, read_topic};
use crate::bus::{KafkaEventBus, RawMessage};
use crate::config::KafkaConfig;
use crate::error::{KafkaError, check_topic_name};

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
///   that [`DeadLetterHandler`](super::DeadLetterHandler) writes, so letters the handler (or a subscription, for
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
/// - The contract's types are text, but every letter is listed and shown, whatever the
///   original's shape (a null key reads as empty, a tombstone as an empty payload, bytes
///   that are not UTF-8 with U+FFFD; the reason in `error` says which): an operator must
///   see everything the consumers parked. Such a letter's exact bytes are in
///   [`DeadLetterQueue`](super::DeadLetterQueue); send it back with
///   [`KafkaDeadLetterQueue::redeliver_exact`], which republishes the bytes, not the text
///   (the core's `redeliver` would republish the lossy text).
/// - [`KafkaDeadLetterQueue::open`] is read-only until something is resolved: it refuses
///   a dead-letter topic that does not exist and reads a missing resolutions topic as "no
///   resolution yet" (an operator's typo must not create topics);
///   [`KafkaDeadLetterQueue::connect`] creates both.
#[derive(Clone, Debug)]
pub struct KafkaDeadLetterQueue {
    bus: KafkaEventBus,
    topic: String,
    resolutions: String,
    name: String,
    /// Replication factor for the resolutions topic when `resolve` has to create it.
    replication_factor: u32,
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
            bus.await_topic(topic).await?;
        }
        Ok(KafkaDeadLetterQueue {
            name: format!("kafka:{dead_letter_topic}"),
            bus,
            topic: dead_letter_topic.to_owned(),
            resolutions,
            replication_factor: layout.replication_factor,
        })
    }

    /// Opens an existing dead-letter topic without creating anything: for operators' tools,
    /// where a mistyped name must be an error, not a new topic. The resolutions topic is
    /// created by the first `resolve` (retry or discard), if it does not exist by then.
    ///
    /// # Errors
    /// [`KafkaError::InvalidTopic`] for a name Kafka refuses, [`KafkaError::Bus`] with
    /// [`BusError::UnknownTopic`] when the dead-letter topic does not exist, or when the
    /// broker does not answer within the operation timeout.
    pub async fn open(
        config: KafkaConfig,
        dead_letter_topic: &str,
    ) -> Result<KafkaDeadLetterQueue, KafkaError> {
        check_topic_name(dead_letter_topic)?;
        let resolutions = format!("{dead_letter_topic}{RESOLUTIONS_SUFFIX}");
        check_topic_name(&resolutions)?;
        let bus = KafkaEventBus::new(config)?;
        let (_, replication_factor) = bus.topic_layout(dead_letter_topic).await?;
        Ok(KafkaDeadLetterQueue {
            name: format!("kafka:{dead_letter_topic}"),
            bus,
            topic: dead_letter_topic.to_owned(),
            resolutions,
            replication_factor,
        })
    }

    /// Sends letter `id` back to its original topic byte for byte (key, payload, headers,
    /// null key or payload included) with [`REDELIVERED_FROM_HEADER`] naming the letter (so
    /// a consumer's inbox counts it as a new message), then records it retried — what the
    /// core's `redeliver` does, without turning the bytes into text first.
    ///
    /// # Errors
    /// [`contract::DeadLetterError::NotFound`], `AlreadyResolved`, `Redelivery` when the
    /// publish fails (the letter stays pending), `Unavailable` when the broker cannot be
    /// read.
    pub async fn redeliver_exact(
        &self,
        id: &contract::DeadLetterId,
        at: Timestamp,
    ) -> Result<(), contract::DeadLetterError> {
        let letter = self
            .letter(id)
            .await?
            .ok_or_else(|| contract::DeadLetterError::NotFound(id.clone()))?;
        if let Some(status) = self.resolutions().await?.remove(&id.0) {
            return Err(contract::DeadLetterError::AlreadyResolved {
                id: id.clone(),
                status,
            });
        }
        let mut headers: Vec<(&str, Option<&[u8]>)> = letter
            .headers
            .iter()
            .filter(|(k, _)| k != REDELIVERED_FROM_HEADER)
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        headers.push((REDELIVERED_FROM_HEADER, Some(id.0.as_bytes())));
        let message = RawMessage {
            topic: &letter.envelope.original_topic,
            key: letter.key.as_deref(),
            payload: letter.payload.as_deref(),
            headers,
        };
        self.bus
            .publish_raw(std::slice::from_ref(&message))
            .await
            .map_err(|e| contract::DeadLetterError::Redelivery(e.to_string()))?;
        tracing::info!(queue = self.name, %id, topic = %letter.envelope.original_topic, "dead letter redelivered byte for byte");
        contract::DeadLetterQueue::resolve(self, id, contract::Resolution::Retried, at).await
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
        let partitions = match self.bus.partition_count(&self.resolutions).await {
            Ok(partitions) => partitions,
            // Nothing resolved yet (`open` does not create it).
            Err(BusError::UnknownTopic(_)) => return Ok(BTreeMap::new()),
            Err(e) => return Err(unavailable(&e)),
        };
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
                    Some(l.into_contract(status))
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
            Ok(Some(letter.into_contract(status)))
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
            // The first resolution of a queue that was only opened.
            if let Err(BusError::UnknownTopic(_)) =
                self.bus.partition_count(&self.resolutions).await
            {
                self.bus
                    .create_topic(&self.resolutions, 1, self.replication_factor)
                    .await
                    .map_err(|e| unavailable(&e))?;
                self.bus
                    .await_topic(&self.resolutions)
                    .await
                    .map_err(|e| unavailable(&e))?;
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

impl Decoded {
    /// The letter as the contract sees it (text): a null key or payload reads as empty,
    /// bytes that are not UTF-8 as U+FFFD. Lossy on purpose, for listing and showing;
    /// [`KafkaDeadLetterQueue::redeliver_exact`] republishes the bytes.
    fn into_contract(self, status: contract::DeadLetterStatus) -> contract::DeadLetter {
        let text = |bytes: Option<Vec<u8>>| match bytes {
            None => String::new(),
            Some(bytes) => String::from_utf8(bytes)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        };
        let mut headers = Headers::default();
        for (name, value) in self.headers {
            headers.0.push((name, text(value)));
        }
        let source_position = self.envelope.source_position();
        contract::DeadLetter {
            id: contract::DeadLetterId(letter_id(self.partition, self.offset)),
            letter: contract::NewDeadLetter {
                topic: self.envelope.original_topic,
                source_position,
                key: text(self.key),
                payload: Payload::from_json_text(text(self.payload)),
                headers,
                error: self.envelope.error,
                error_class: self.envelope.error_class,
                attempts: self.envelope.attempts,
                failed_at: self.envelope.failed_at,
            },
            status,
        }
    }
}
