//! [`KafkaSubscription`]: one member of a consumer group, with at-least-once offsets.
//!
//! librdkafka's automatic commits and offset stores are off: an offset is committed only
//! after the handler acknowledged the message *and* every earlier message of the partition
//! ([`crate::offsets::OffsetTracker`]). Rebalances run through [`GroupContext`]: before
//! partitions are revoked, their handled prefix is committed synchronously (so the next
//! owner starts right after the work already done) and their pending state is dropped (so a
//! late `ack` cannot commit on behalf of the new owner); assigned partitions start fresh.
//!
//! Revocation commits run inside librdkafka's rebalance callback, which fires inside
//! [`Subscription::next`] (or on drop, when the member leaves the group): they block that
//! thread for one commit round trip. Dropping a subscription closes the consumer and waits
//! for the group to acknowledge the departure, so the survivors rebalance at once instead of
//! after a session timeout.
//!
//! ## Poison messages
//!
//! A message that cannot be handled — key, payload or headers not UTF-8, a null payload
//! (tombstone), and under [`MessageCheck::Envelope`] (the default) no headers, no or a
//! malformed `reprise-event-id`, or a payload that is not JSON — never reaches the handler:
//! the subscription sends it to its dead-letter topic byte for byte, with the reason, and
//! acknowledges it once the broker has the letter (see [`crate::dead_letter`]). Whoever
//! produced it (another team's service, a console producer), it leaves a trace.
//!
//! The dead-letter topics exist before the first delivery: the subscription creates any
//! that is missing, mirroring its original's partitions and replication
//! ([`KafkaEventBus::ensure_dead_letter_topic`]); `EventBus::subscribe` refuses to return a
//! subscription whose topics cannot be prepared. A letter that still cannot be written is
//! retried under [`KafkaConfig::dead_letter_retry`](crate::KafkaConfig::dead_letter_retry),
//! then reported (counter, error log) and returned from `next` as an error; the message
//! stays unacknowledged and is tried again at the next `next` (nothing else is handed out
//! meanwhile), so its partition's commits stop before it — loudly — instead of skipping
//! it.
//!
//! `next()` is cancellation-safe (wrap it in a timeout freely): a poison message whose
//! letter was being written when `next` was cancelled is kept and written by the next call
//! (the letter may then exist twice; never zero times).

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers as _, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use reprise_core::event_bus::{Delivery, Headers, Subscription};
use reprise_core::{BoxFuture, BusError, Payload};
use tracing::Instrument;

use crate::bus::{KafkaEventBus, RawMessage};
use crate::config::MessageCheck;
use crate::dead_letter::{self, Failure};
use crate::error::to_bus_error;
use crate::metrics as m;
use crate::offsets::OffsetTracker;

/// librdkafka callbacks of one group member: rebalances, statistics (lag), errors.
pub struct GroupContext {
    group: Arc<str>,
    tracker: Arc<Mutex<OffsetTracker>>,
}

impl std::fmt::Debug for GroupContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupContext")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        let tracker = self.tracker.lock();
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                let Ok(partition) = u32::try_from(*partition) else {
                    continue;
                }; // -1: internal
                if p.consumer_lag >= 0 && tracker.is_assigned(topic, partition) {
                    #[allow(clippy::cast_precision_loss)]
                    let lag = p.consumer_lag as f64;
                    metrics::gauge!(m::CONSUMER_LAG, "group" => self.group.to_string(), "topic" => topic.clone(), "partition" => partition.to_string())
                        .set(lag);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let kind = to_bus_error(&error, "").kind();
        metrics::counter!(m::CONSUMER_ERRORS_TOTAL, "group" => self.group.to_string(), "kind" => kind).increment(1);
        tracing::warn!(group = %self.group, %error, reason, "kafka consumer error");
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                let revoked: Vec<(String, u32)> = list
                    .elements()
                    .iter()
                    .filter_map(|e| {
                        Some((e.topic().to_owned(), u32::try_from(e.partition()).ok()?))
                    })
                    .collect();
                metrics::counter!(m::REBALANCES_TOTAL, "group" => self.group.to_string(), "event" => "revoke").increment(1);
                let positions = self.tracker.lock().committable_among(&revoked);
                if !positions.is_empty() {
                    // Synchronous: the next owner must see this commit before it starts.
                    match commit_positions(consumer, &positions) {
                        Ok(()) => {
                            metrics::counter!(m::COMMITS_TOTAL, "group" => self.group.to_string())
                                .increment(1);
                            tracing::debug!(group = %self.group, ?positions, "committed on revoke");
                        }
                        Err(error) => {
                            metrics::counter!(m::CONSUMER_ERRORS_TOTAL, "group" => self.group.to_string(), "kind" => to_bus_error(&error, "").kind())
                                .increment(1);
                            tracing::warn!(group = %self.group, %error, "commit on revoke failed; the next owner redelivers");
                        }
                    }
                }
                let mut tracker = self.tracker.lock();
                for (topic, partition) in &revoked {
                    tracker.revoke(topic, *partition);
                }
                metrics::gauge!(m::UNCOMMITTED, "group" => self.group.to_string())
                    .set(count(tracker.uncommitted()));
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(error) => {
                metrics::counter!(m::REBALANCES_TOTAL, "group" => self.group.to_string(), "event" => "error").increment(1);
                tracing::warn!(group = %self.group, %error, "rebalance error");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            metrics::counter!(m::REBALANCES_TOTAL, "group" => self.group.to_string(), "event" => "assign").increment(1);
            let mut tracker = self.tracker.lock();
            for e in list.elements() {
                if let Ok(partition) = u32::try_from(e.partition()) {
                    tracker.assign(e.topic(), partition);
                }
            }
            tracing::debug!(group = %self.group, assignment = ?tracker.assignment(), "partitions assigned");
        }
    }
}

fn commit_positions(
    consumer: &impl Consumer<GroupContext>,
    positions: &[(Arc<str>, u32, u64)],
) -> KafkaResult<()> {
    let mut list = TopicPartitionList::with_capacity(positions.len());
    for (topic, partition, offset) in positions {
        let partition = i32::try_from(*partition)
            .map_err(|_| KafkaError::ConsumerCommit(RDKafkaErrorCode::InvalidArgument))?;
        let offset = i64::try_from(*offset)
            .map_err(|_| KafkaError::ConsumerCommit(RDKafkaErrorCode::InvalidArgument))?;
        list.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    consumer.commit(&list, CommitMode::Sync)
}

/// Why a text message is not a Reprise message ([`MessageCheck::Envelope`]), if it is not.
fn envelope_problem(payload: &str, headers: &Headers) -> Option<String> {
    use reprise_core::event_bus::header;
    if headers.0.is_empty() {
        return Some(format!(
            "no headers: a Reprise message carries at least {}",
            header::EVENT_ID
        ));
    }
    match headers.get(header::EVENT_ID) {
        None => return Some(format!("no {} header", header::EVENT_ID)),
        Some(id) if !is_event_id(id) => {
            return Some(format!(
                "header {} is not an event id (UUID or 32 hex digits): {:?}",
                header::EVENT_ID,
                clip(id)
            ));
        }
        Some(_) => {}
    }
    serde_json::from_str::<serde::de::IgnoredAny>(payload)
        .err()
        .map(|e| format!("payload is not JSON: {e}"))
}

/// What `reprise-host` reads as an event id (`ids::parse_event_id`): 32 hex digits, dashes
/// anywhere (its `Display` is the UUID layout, its `Debug` bare hex). Exactly that rule, so
/// the adapter never parks a message a Reprise consumer would have handled.
fn is_event_id(text: &str) -> bool {
    text.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit())
        && text.bytes().filter(u8::is_ascii_hexdigit).count() == 32
}

/// A value quoted in a reason, at most 64 characters of it.
fn clip(text: &str) -> String {
    text.chars().take(64).collect()
}

#[allow(clippy::cast_precision_loss)]
fn count(n: usize) -> f64 {
    n as f64
}

/// One member of a consumer group on a [`KafkaEventBus`]. Dropping it commits the handled
/// prefix of its partitions and leaves the group.
pub struct KafkaSubscription {
    bus: KafkaEventBus,
    consumer: Arc<StreamConsumer<GroupContext>>,
    tracker: Arc<Mutex<OffsetTracker>>,
    group: Arc<str>,
    consumed: BTreeMap<String, metrics::Counter>,
    /// Subscribed topics whose dead-letter topic is not known to exist yet.
    unprepared: Vec<String>,
    /// A poison message whose dead letter is not written yet (see the module docs).
    pending_letter: Option<PendingLetter>,
}

/// An undeliverable message, owned, until its dead letter is on the broker.
#[derive(Debug)]
struct PendingLetter {
    topic: String,
    partition: u32,
    offset: u64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    reason: String,
}

impl PendingLetter {
    fn of(message: &BorrowedMessage<'_>, partition: u32, offset: u64, reason: String) -> Self {
        PendingLetter {
            topic: message.topic().to_owned(),
            partition,
            offset,
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers: message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
            reason,
        }
    }
}

impl std::fmt::Debug for KafkaSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSubscription")
            .field("group", &self.group)
            .field("assignment", &self.assignment())
            .finish_non_exhaustive()
    }
}

/// A fetched message: a [`Delivery`], or the reason it cannot become one.
enum Decoded {
    Delivery(Delivery),
    Poison(String),
}

impl KafkaSubscription {
    pub(crate) fn new(bus: KafkaEventBus, group: &str, topics: &[&str]) -> Result<Self, BusError> {
        if group.trim().is_empty() {
            return Err(BusError::Permanent(
                "subscribe: the group id is empty".into(),
            ));
        }
        if topics.is_empty() || topics.iter().any(|t| t.trim().is_empty()) {
            return Err(BusError::Permanent(format!(
                "subscribe: invalid topic list {topics:?}"
            )));
        }
        let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
        let group: Arc<str> = Arc::from(group);
        let context = GroupContext {
            group: Arc::clone(&group),
            tracker: Arc::clone(&tracker),
        };
        let consumer: StreamConsumer<GroupContext> = bus
            .producer_shared()
            .consumer_config(&group)
            .create_with_context(context)
            .map_err(|e| BusError::Permanent(format!("cannot create consumer: {e}")))?;
        consumer
            .subscribe(topics)
            .map_err(|e| to_bus_error(&e, topics[0]))?;
        Ok(KafkaSubscription {
            bus,
            consumer: Arc::new(consumer),
            tracker,
            group,
            consumed: BTreeMap::new(),
            unprepared: topics.iter().map(|t| (*t).to_owned()).collect(),
            pending_letter: None,
        })
    }

    /// Creates the missing dead-letter topics of the subscribed topics
    /// ([`KafkaEventBus::ensure_dead_letter_topic`]). Runs by itself before the first
    /// delivery; call it to fail early. A subscribed topic that does not exist yet is
    /// left for later (its first message prepares it).
    ///
    /// # Errors
    /// A dead-letter topic that is missing and cannot be created (permissions, broker
    /// down), with its name and the reason.
    pub async fn prepare_dead_letter_topics(&mut self) -> Result<(), BusError> {
        // A topic leaves the list only once prepared, so a cancelled call loses nothing.
        for topic in self.unprepared.clone() {
            match self.bus.ensure_dead_letter_topic(&topic).await {
                Ok(_) => self.unprepared.retain(|t| *t != topic),
                Err(BusError::UnknownTopic(missing)) if missing == topic => {
                    tracing::debug!(group = %self.group, topic, "subscribed topic does not exist yet; its dead-letter topic is prepared later");
                }
                Err(error) => {
                    tracing::error!(group = %self.group, topic, %error, "cannot prepare the dead-letter topic: refusing to consume");
                    metrics::counter!(m::CONSUMER_ERRORS_TOTAL, "group" => self.group.to_string(), "kind" => error.kind()).increment(1);
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Writes the pending dead letter, if any, then acknowledges its message. On failure
    /// the letter stays pending (see the module docs).
    async fn write_pending_letter(&mut self) -> Result<(), BusError> {
        let Some(letter) = &self.pending_letter else {
            return Ok(());
        };
        if !self
            .tracker
            .lock()
            .is_assigned(&letter.topic, letter.partition)
        {
            // Revoked meanwhile: the new owner receives the message and dead-letters it.
            self.pending_letter = None;
            return Ok(());
        }
        if self.unprepared.contains(&letter.topic) {
            let topic = letter.topic.clone();
            self.bus.ensure_dead_letter_topic(&topic).await?;
            self.unprepared.retain(|t| *t != topic);
        }
        let runtime = reprise_tokio::TokioRuntime::try_current()
            .map_err(|e| BusError::Permanent(e.to_string()))?;
        let letter = self.pending_letter.as_ref().expect("checked above");
        let original = RawMessage {
            topic: &letter.topic,
            key: letter.key.as_deref(),
            payload: letter.payload.as_deref(),
            headers: letter
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref()))
                .collect(),
        };
        let failure = Failure {
            partition: letter.partition,
            offset: letter.offset,
            error: &letter.reason,
            attempts: 0,
            group: Some(&self.group),
        };
        match dead_letter::send_retrying(
            &self.bus,
            &runtime,
            &original,
            &failure,
            reprise_core::resilience::ErrorClass::Permanent,
        )
        .await
        {
            Ok(_) => {
                self.tracker
                    .lock()
                    .handled(&letter.topic, letter.partition, letter.offset);
                self.pending_letter = None;
                Ok(())
            }
            Err(error) => {
                // Perhaps deleted under us (a missing topic shows as a timeout to the
                // producer): check, and create it again, before the next attempt.
                let topic = letter.topic.clone();
                if !self.unprepared.contains(&topic) {
                    self.unprepared.push(topic);
                }
                metrics::counter!(m::CONSUMER_ERRORS_TOTAL, "group" => self.group.to_string(), "kind" => error.kind()).increment(1);
                Err(error)
            }
        }
    }

    /// The consumer group.
    #[must_use]
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The partitions currently assigned to this member (empty until the group formed).
    #[must_use]
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.tracker.lock().assignment()
    }

    /// Delivered messages not yet committed.
    #[must_use]
    pub fn uncommitted(&self) -> usize {
        self.tracker.lock().uncommitted()
    }

    fn decode(message: &BorrowedMessage<'_>, check: MessageCheck) -> Result<Decoded, BusError> {
        let partition = u32::try_from(message.partition())
            .map_err(|_| BusError::Permanent("negative partition".into()))?;
        let offset = u64::try_from(message.offset())
            .map_err(|_| BusError::Permanent("negative offset".into()))?;
        let key = match message.key().map(std::str::from_utf8) {
            None => "",
            Some(Ok(key)) => key,
            Some(Err(e)) => return Ok(Decoded::Poison(format!("key is not UTF-8: {e}"))),
        };
        let payload = match message.payload().map(std::str::from_utf8) {
            None => return Ok(Decoded::Poison("null payload (tombstone)".into())),
            Some(Ok(payload)) => payload,
            Some(Err(e)) => return Ok(Decoded::Poison(format!("payload is not UTF-8: {e}"))),
        };
        let mut headers = Headers::default();
        if let Some(raw) = message.headers() {
            for h in raw.iter() {
                let value = match h.value.map(std::str::from_utf8) {
                    None => "",
                    Some(Ok(v)) => v,
                    Some(Err(e)) => {
                        return Ok(Decoded::Poison(format!(
                            "header {} is not UTF-8: {e}",
                            h.key
                        )));
                    }
                };
                // Kafka allows duplicate names: keep them all, in order.
                headers.0.push((h.key.to_owned(), value.to_owned()));
            }
        }
        if check == MessageCheck::Envelope
            && let Some(reason) = envelope_problem(payload, &headers)
        {
            return Ok(Decoded::Poison(reason));
        }
        Ok(Decoded::Delivery(Delivery {
            topic: Arc::from(message.topic()),
            partition,
            offset,
            key: Arc::from(key),
            payload: Payload::from_json_text(payload),
            headers,
        }))
    }

    async fn next_delivery(&mut self) -> Result<Delivery, BusError> {
        if !self.unprepared.is_empty() {
            self.prepare_dead_letter_topics().await?;
        }
        self.write_pending_letter().await?;
        let check = self.bus.config().message_check;
        loop {
            let consumer = Arc::clone(&self.consumer);
            let message = match consumer.recv().await {
                Ok(message) => message,
                Err(error) => {
                    let error = to_bus_error(&error, "");
                    metrics::counter!(m::CONSUMER_ERRORS_TOTAL, "group" => self.group.to_string(), "kind" => error.kind()).increment(1);
                    return Err(error);
                }
            };
            let (topic, partition) = (message.topic().to_owned(), message.partition());
            let Ok(partition) = u32::try_from(partition) else {
                continue;
            };
            let Ok(offset) = u64::try_from(message.offset()) else {
                continue;
            };
            if !self.tracker.lock().delivered(&topic, partition, offset) {
                // Fetched before a revocation took effect: the new owner will deliver it.
                tracing::debug!(group = %self.group, topic, partition, offset, "skipping message of a partition not assigned");
                continue;
            }
            self.consumed
                .entry(topic.clone())
                .or_insert_with(|| metrics::counter!(m::CONSUMED_TOTAL, "group" => self.group.to_string(), "topic" => topic.clone()))
                .increment(1);
            match Self::decode(&message, check)? {
                Decoded::Delivery(delivery) => {
                    let span = tracing::Span::current();
                    span.record("messaging.destination.name", topic.as_str());
                    span.record("messaging.destination.partition.id", partition);
                    span.record("messaging.kafka.offset", offset);
                    span.record("messaging.kafka.message.key", &*delivery.key);
                    return Ok(delivery);
                }
                Decoded::Poison(reason) => {
                    tracing::warn!(group = %self.group, topic, partition, offset, reason, "unhandleable message: sending it to the dead-letter topic");
                    self.pending_letter =
                        Some(PendingLetter::of(&message, partition, offset, reason));
                    drop(message);
                    self.write_pending_letter().await?;
                }
            }
        }
    }

    async fn commit_handled(&mut self) -> Result<(), BusError> {
        let positions = self.tracker.lock().committable();
        if positions.is_empty() {
            return Ok(());
        }
        let consumer = Arc::clone(&self.consumer);
        let to_commit = positions.clone();
        let timeout = self.bus.config().operation_timeout;
        let commit = crate::bus::blocking(move || {
            commit_positions(&*consumer, &to_commit).map_err(|e| match e.rdkafka_error_code() {
                Some(
                    RDKafkaErrorCode::IllegalGeneration
                    | RDKafkaErrorCode::UnknownMemberId
                    | RDKafkaErrorCode::RebalanceInProgress
                    | RDKafkaErrorCode::FencedInstanceId
                    | RDKafkaErrorCode::StaleMemberEpoch
                    | RDKafkaErrorCode::AssignmentLost,
                ) => {
                    let (topic, partition, _) = &to_commit[0];
                    BusError::Revoked {
                        topic: topic.to_string(),
                        partition: *partition,
                    }
                }
                _ => to_bus_error(&e, &to_commit[0].0),
            })
        });
        let result = match tokio::time::timeout(timeout, commit).await {
            Ok(result) => result,
            Err(_) => Err(BusError::Timeout),
        };
        match result {
            Ok(()) => {
                let mut tracker = self.tracker.lock();
                for (topic, partition, position) in &positions {
                    tracker.committed(topic, *partition, *position);
                }
                metrics::counter!(m::COMMITS_TOTAL, "group" => self.group.to_string()).increment(1);
                metrics::gauge!(m::UNCOMMITTED, "group" => self.group.to_string())
                    .set(count(tracker.uncommitted()));
                Ok(())
            }
            Err(error) => {
                metrics::counter!(m::CONSUMER_ERRORS_TOTAL, "group" => self.group.to_string(), "kind" => error.kind()).increment(1);
                Err(error)
            }
        }
    }
}

impl Subscription for KafkaSubscription {
    /// Inside a `reprise.kafka.receive` span (`debug`; OpenTelemetry messaging
    /// attributes, the delivery's coordinates recorded once it arrived). The span covers
    /// the wait: the work a message causes is traced by its consumer, as a child of the
    /// context in the message's `traceparent` header.
    fn next(&mut self) -> BoxFuture<'_, Result<Delivery, BusError>> {
        let span = tracing::debug_span!(
            "reprise.kafka.receive",
            otel.name = "receive",
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.type = "receive",
            messaging.operation.name = "poll",
            messaging.consumer.group.name = %self.group,
            messaging.destination.name = tracing::field::Empty,
            messaging.destination.partition.id = tracing::field::Empty,
            messaging.kafka.offset = tracing::field::Empty,
            messaging.kafka.message.key = tracing::field::Empty,
        );
        Box::pin(self.next_delivery().instrument(span))
    }

    fn ack(&mut self, delivery: &Delivery) {
        if !self
            .tracker
            .lock()
            .handled(&delivery.topic, delivery.partition, delivery.offset)
        {
            tracing::debug!(group = %self.group, coordinates = delivery.coordinates(), "ack ignored: partition revoked or offset not delivered here");
        }
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(self.commit_handled())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_checked_in_the_layouts_the_host_writes() {
        assert!(is_event_id("0123abcd-0000-4000-8000-00000000beef"));
        assert!(is_event_id("0123abcd00004000800000000000beef"));
        for bad in [
            "",
            "3",
            "not-an-id",
            "0123abcd-0000-4000-8000-00000000beef0",
            "0123abcg-0000-4000-8000-00000000beef",
            "0123abcd-0000-4000-8000-00000000bee",
        ] {
            assert!(!is_event_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn messages_without_the_envelope_get_a_reason() {
        let id = "0123abcd-0000-4000-8000-00000000beef";
        let with_id = Headers::default().with(reprise_core::event_bus::header::EVENT_ID, id);
        assert_eq!(envelope_problem("{}", &with_id), None);
        let reason = |payload: &str, headers: &Headers| {
            envelope_problem(payload, headers).expect("a problem")
        };
        assert!(reason("{}", &Headers::default()).starts_with("no headers"));
        assert!(reason("{}", &Headers::default().with("x", "1")).contains("no reprise-event-id"));
        assert!(
            reason(
                "{}",
                &Headers::default().with(reprise_core::event_bus::header::EVENT_ID, "42")
            )
            .contains("not an event id")
        );
        assert!(reason("{not json", &with_id).starts_with("payload is not JSON"));
    }
}
