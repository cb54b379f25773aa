//! Dead-letter queues: where work goes when retrying cannot help, so that nothing is lost
//! and an operator can look at it, fix the cause, and send it back.
//!
//! A dead letter is a *message* — the unit of work as it arrived (topic, key, payload,
//! headers) — plus why it failed and after how many attempts. Storing the message rather
//! than a closure is what makes it durable and replayable: [`redeliver`] publishes it back
//! to its source topic, where the same idempotent handler meets it again. Concurrency
//! conflicts never land here (see [`ErrorClass`]).
//!
//! Implementations: [`InMemoryDeadLetterQueue`] here (tests and the simulator), a
//! PostgreSQL table in `reprise-postgres`, a Kafka topic in `reprise-kafka`. All pass
//! [`dead_letter_queue_suite`](crate::conformance::dead_letter_queue_suite).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::classify::ErrorClass;
use crate::event::Payload;
use crate::event_bus::{EventBus, Headers, OutgoingMessage};
use crate::instrument as names;
use crate::runtime::BoxFuture;
use crate::time::Timestamp;

/// Header set on a redelivered message: the id of the dead letter it came from.
pub const REDELIVERED_FROM_HEADER: &str = "reprise-redelivered-from";

/// Identifies a dead letter within its queue (a row id, or `partition:offset`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeadLetterId(pub String);

impl fmt::Display for DeadLetterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for DeadLetterId {
    fn from(value: &str) -> Self {
        DeadLetterId(value.to_owned())
    }
}

/// A failed unit of work, as handed to [`DeadLetterQueue::put`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDeadLetter {
    /// The topic the work arrived on; [`redeliver`] publishes it back there.
    pub topic: String,
    /// Where in the source it was (`partition/offset`, a global position), for humans.
    pub source_position: Option<String>,
    /// The partition key (stream id) it was published under.
    pub key: String,
    pub payload: Payload,
    pub headers: Headers,
    /// The last error, as text.
    pub error: String,
    pub error_class: ErrorClass,
    /// Attempts made before giving up, the first included.
    pub attempts: u32,
    pub failed_at: Timestamp,
}

impl NewDeadLetter {
    /// The message this letter redelivers.
    #[must_use]
    pub fn message(&self) -> OutgoingMessage {
        OutgoingMessage {
            topic: self.topic.as_str().into(),
            key: self.key.as_str().into(),
            payload: self.payload.clone(),
            headers: self.headers.clone(),
        }
    }
}

/// What became of a dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeadLetterStatus {
    Pending,
    Retried { at: Timestamp },
    Discarded { at: Timestamp },
}

impl DeadLetterStatus {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            DeadLetterStatus::Pending => "pending",
            DeadLetterStatus::Retried { .. } => "retried",
            DeadLetterStatus::Discarded { .. } => "discarded",
        }
    }
}

/// An operator's decision about a pending dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Sent back to its topic.
    Retried,
    /// Dropped on purpose (kept for the record).
    Discarded,
}

impl Resolution {
    #[must_use]
    pub const fn status(self, at: Timestamp) -> DeadLetterStatus {
        match self {
            Resolution::Retried => DeadLetterStatus::Retried { at },
            Resolution::Discarded => DeadLetterStatus::Discarded { at },
        }
    }
}

/// A stored dead letter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: DeadLetterId,
    pub letter: NewDeadLetter,
    pub status: DeadLetterStatus,
}

/// Which letters [`DeadLetterQueue::list`] returns, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterQuery {
    /// Only letters from this topic.
    pub topic: Option<String>,
    /// Include retried and discarded letters.
    pub include_resolved: bool,
    pub limit: usize,
}

impl Default for DeadLetterQuery {
    fn default() -> Self {
        DeadLetterQuery {
            topic: None,
            include_resolved: false,
            limit: 100,
        }
    }
}

/// How much is waiting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeadLetterStats {
    pub pending: u64,
    pub oldest_pending_failed_at: Option<Timestamp>,
}

impl DeadLetterStats {
    /// Publishes the gauges `reprise_dead_letters_pending` and
    /// `reprise_dead_letters_oldest_age_seconds` for the queue named `queue`.
    pub fn export(&self, queue: &str, now: Timestamp) {
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(names::DEAD_LETTERS_PENDING, "queue" => queue.to_owned())
            .set(self.pending as f64);
        let age = self
            .oldest_pending_failed_at
            .map_or(0.0, |oldest| now.saturating_since(oldest).as_secs_f64());
        metrics::gauge!(names::DEAD_LETTERS_OLDEST_AGE, "queue" => queue.to_owned()).set(age);
    }
}

/// Why a dead-letter operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeadLetterError {
    #[error("no dead letter {0}")]
    NotFound(DeadLetterId),
    #[error("dead letter {id} was already {}", status.as_str())]
    AlreadyResolved {
        id: DeadLetterId,
        status: DeadLetterStatus,
    },
    /// The letter is malformed (an empty topic, say); nothing was stored.
    #[error("invalid dead letter: {0}")]
    Invalid(String),
    /// The queue's storage could not be reached; try again.
    #[error("dead-letter storage unavailable: {0}")]
    Unavailable(String),
    /// Redelivery could not publish; the letter stays pending.
    #[error("redelivery failed: {0}")]
    Redelivery(String),
}

/// Durable storage for dead letters.
pub trait DeadLetterQueue: Send + Sync {
    /// A short name for metrics and logs (`postgres`, `kafka:orders.dlq`).
    fn name(&self) -> &str;

    /// Stores a letter; returns its id.
    fn put(&self, letter: NewDeadLetter) -> BoxFuture<'_, Result<DeadLetterId, DeadLetterError>>;

    /// Letters matching `query`, oldest first.
    fn list(
        &self,
        query: DeadLetterQuery,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, DeadLetterError>>;

    fn get<'a>(
        &'a self,
        id: &'a DeadLetterId,
    ) -> BoxFuture<'a, Result<Option<DeadLetter>, DeadLetterError>>;

    /// Marks a pending letter retried or discarded.
    ///
    /// # Errors
    /// [`DeadLetterError::NotFound`], or [`DeadLetterError::AlreadyResolved`] if another
    /// operator got there first.
    fn resolve<'a>(
        &'a self,
        id: &'a DeadLetterId,
        resolution: Resolution,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<(), DeadLetterError>>;

    fn stats(&self) -> BoxFuture<'_, Result<DeadLetterStats, DeadLetterError>>;
}

/// Checks a letter before it is stored: a letter that cannot be redelivered is a bug in
/// whoever wrote it, and should say so rather than be stored unreplayable.
///
/// # Errors
/// [`DeadLetterError::Invalid`] naming the problem.
pub fn validate(letter: &NewDeadLetter) -> Result<(), DeadLetterError> {
    if letter.topic.is_empty() {
        return Err(DeadLetterError::Invalid("empty topic".into()));
    }
    // `attempts` may be 0: a message dead-lettered on arrival (a consumer that cannot
    // read it — no headers, not JSON, a tombstone) was never attempted, and says so.
    if letter.error_class == ErrorClass::Conflict {
        return Err(DeadLetterError::Invalid(
            "a concurrency conflict is resolved by deciding again, never dead-lettered".into(),
        ));
    }
    Ok(())
}

/// Sends a pending letter back to its topic, then marks it retried.
///
/// Publish first, mark second: a crash in between leaves the letter pending and the
/// message published, so a second `redeliver` publishes it again — at-least-once, which
/// the idempotent handler absorbs. The other order could lose the message.
///
/// # Errors
/// [`DeadLetterError::NotFound`] / [`DeadLetterError::AlreadyResolved`] (nothing
/// published), [`DeadLetterError::Redelivery`] (nothing marked), or the storage error.
pub async fn redeliver(
    queue: &dyn DeadLetterQueue,
    bus: &dyn EventBus,
    id: &DeadLetterId,
    now: Timestamp,
) -> Result<(), DeadLetterError> {
    let letter = queue
        .get(id)
        .await?
        .ok_or_else(|| DeadLetterError::NotFound(id.clone()))?;
    if letter.status != DeadLetterStatus::Pending {
        return Err(DeadLetterError::AlreadyResolved {
            id: id.clone(),
            status: letter.status,
        });
    }
    let mut message = letter.letter.message();
    message
        .headers
        .insert(REDELIVERED_FROM_HEADER, id.0.as_str());
    bus.publish(vec![message])
        .await
        .map_err(|error| DeadLetterError::Redelivery(error.to_string()))?;
    tracing::info!(queue = queue.name(), %id, topic = %letter.letter.topic, "dead letter redelivered");
    queue.resolve(id, Resolution::Retried, now).await
}

/// Publishes the queue's gauges ([`DeadLetterStats::export`]) every `every` of `clock`'s
/// time, forever: spawn it on the service's runtime. A storage failure skips one reading
/// (logged) rather than ending the loop — the gauges going stale is itself visible.
pub async fn export_stats_every(
    queue: Arc<dyn DeadLetterQueue>,
    clock: Arc<dyn crate::runtime::Clock>,
    every: std::time::Duration,
) {
    assert!(!every.is_zero(), "a zero export interval spins");
    loop {
        match queue.stats().await {
            Ok(stats) => stats.export(queue.name(), clock.now()),
            Err(error) => {
                tracing::warn!(queue = queue.name(), %error, "dead-letter stats unavailable");
            }
        }
        clock.sleep(every).await;
    }
}

/// Dead letters in memory: for tests and the simulator, where "durable" means "outlives
/// the node that wrote it" (the simulator keeps it outside every node).
#[derive(Clone, Default)]
pub struct InMemoryDeadLetterQueue {
    letters: Arc<Mutex<BTreeMap<u64, DeadLetter>>>,
}

impl fmt::Debug for InMemoryDeadLetterQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryDeadLetterQueue")
            .field("letters", &self.letters.lock().len())
            .finish()
    }
}

impl InMemoryDeadLetterQueue {
    #[must_use]
    pub fn new() -> Self {
        InMemoryDeadLetterQueue::default()
    }

    /// Every letter, in id order (for checkers).
    #[must_use]
    pub fn snapshot(&self) -> Vec<DeadLetter> {
        self.letters.lock().values().cloned().collect()
    }

    fn parse(id: &DeadLetterId) -> Option<u64> {
        id.0.parse().ok()
    }
}

impl DeadLetterQueue for InMemoryDeadLetterQueue {
    fn name(&self) -> &str {
        "memory"
    }

    fn put(&self, letter: NewDeadLetter) -> BoxFuture<'_, Result<DeadLetterId, DeadLetterError>> {
        Box::pin(async move {
            validate(&letter)?;
            let mut letters = self.letters.lock();
            let next = letters.last_key_value().map_or(1, |(id, _)| id + 1);
            let id = DeadLetterId(next.to_string());
            metrics::counter!(names::DEAD_LETTERS, "topic" => letter.topic.clone()).increment(1);
            letters.insert(
                next,
                DeadLetter {
                    id: id.clone(),
                    letter,
                    status: DeadLetterStatus::Pending,
                },
            );
            Ok(id)
        })
    }

    fn list(
        &self,
        query: DeadLetterQuery,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, DeadLetterError>> {
        Box::pin(async move {
            Ok(self
                .letters
                .lock()
                .values()
                .filter(|l| query.include_resolved || l.status == DeadLetterStatus::Pending)
                .filter(|l| query.topic.as_ref().is_none_or(|t| *t == l.letter.topic))
                .take(query.limit)
                .cloned()
                .collect())
        })
    }

    fn get<'a>(
        &'a self,
        id: &'a DeadLetterId,
    ) -> BoxFuture<'a, Result<Option<DeadLetter>, DeadLetterError>> {
        Box::pin(
            async move { Ok(Self::parse(id).and_then(|n| self.letters.lock().get(&n).cloned())) },
        )
    }

    fn resolve<'a>(
        &'a self,
        id: &'a DeadLetterId,
        resolution: Resolution,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<(), DeadLetterError>> {
        Box::pin(async move {
            let mut letters = self.letters.lock();
            let letter = Self::parse(id)
                .and_then(|n| letters.get_mut(&n))
                .ok_or_else(|| DeadLetterError::NotFound(id.clone()))?;
            if letter.status != DeadLetterStatus::Pending {
                return Err(DeadLetterError::AlreadyResolved {
                    id: id.clone(),
                    status: letter.status,
                });
            }
            letter.status = resolution.status(at);
            Ok(())
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<DeadLetterStats, DeadLetterError>> {
        Box::pin(async move {
            let letters = self.letters.lock();
            let pending = letters
                .values()
                .filter(|l| l.status == DeadLetterStatus::Pending);
            let mut stats = DeadLetterStats::default();
            for letter in pending {
                stats.pending += 1;
                let failed_at = letter.letter.failed_at;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::InMemoryEventBus;
    use crate::runtime::Clock;
    use crate::testing::{TestRuntime, block_on};

    #[test]
    fn the_in_memory_queue_passes_the_conformance_suite() {
        let runtime = Arc::new(TestRuntime::new(1));
        let now = runtime.now();
        let result = block_on(&runtime, async move {
            let queue = InMemoryDeadLetterQueue::new();
            crate::conformance::dead_letter_queue_suite(&queue, "t.", now).await
        });
        result.unwrap();
    }

    #[test]
    fn a_letter_never_attempted_is_valid_but_a_conflict_or_no_topic_is_not() {
        let letter = |topic: &str, class: ErrorClass, attempts: u32| NewDeadLetter {
            topic: topic.into(),
            source_position: None,
            key: "k".into(),
            payload: Payload::from_json_text("{}"),
            headers: Headers::default(),
            error: "not JSON".into(),
            error_class: class,
            attempts,
            failed_at: crate::Timestamp::from_unix_nanos(0),
        };
        assert!(validate(&letter("orders", ErrorClass::Permanent, 0)).is_ok());
        assert!(validate(&letter("", ErrorClass::Permanent, 1)).is_err());
        assert!(validate(&letter("orders", ErrorClass::Conflict, 1)).is_err());
    }

    #[test]
    fn redelivery_publishes_back_to_the_topic_then_marks_retried_once() {
        let runtime = Arc::new(TestRuntime::new(1));
        let now = runtime.now();
        let (first, second, delivered) = block_on(&runtime, async move {
            let queue = InMemoryDeadLetterQueue::new();
            let bus = InMemoryEventBus::new();
            let mut subscription = bus.subscribe("g", &["payments"]).await.unwrap();
            let id = queue
                .put(NewDeadLetter {
                    topic: "payments".into(),
                    source_position: None,
                    key: "order-1".into(),
                    payload: Payload::from_json_text(r#"{"charge":1}"#),
                    headers: Headers::default(),
                    error: "gateway down".into(),
                    error_class: ErrorClass::Transient,
                    attempts: 5,
                    failed_at: now,
                })
                .await
                .unwrap();
            let first = redeliver(&queue, &bus, &id, now).await;
            let second = redeliver(&queue, &bus, &id, now).await;
            let delivered = subscription.next().await.unwrap();
            (first, second, delivered)
        });
        first.unwrap();
        assert!(matches!(
            second,
            Err(DeadLetterError::AlreadyResolved { .. })
        ));
        assert_eq!(&*delivered.key, "order-1");
        assert_eq!(delivered.headers.get(REDELIVERED_FROM_HEADER), Some("1"));
    }
}
