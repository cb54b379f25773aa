//! The event bus contract: Kafka-shaped (topics, partitions, consumer groups, offsets),
//! at-least-once, per-key order. Shared by the in-memory bus, the simulated bus and the
//! Kafka adapter; [`crate::conformance`] pins the behaviour down.
//!
//! Offsets are committed only for messages a handler has finished with, and only
//! contiguously: if offsets 5 and 7 are acknowledged but 6 is not, the committed position
//! stays at 6, so a crash redelivers 6 and 7 (handlers deduplicate by event id).

use std::fmt;
use std::sync::Arc;

use crate::event::Payload;
use crate::runtime::BoxFuture;

/// Message headers: ordered, duplicate names allowed, as in Kafka.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        self.0.retain(|(k, _)| *k != name);
        self.0.push((name, value.into()));
    }

    #[must_use]
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(name, value);
        self
    }
}

/// Header names the framework writes. Kafka adapters map them 1:1.
pub mod header {
    pub const EVENT_ID: &str = "reprise-event-id";
    pub const EVENT_TYPE: &str = "reprise-event-type";
    pub const SCHEMA_VERSION: &str = "reprise-schema-version";
    pub const STREAM: &str = "reprise-stream";
    pub const STREAM_VERSION: &str = "reprise-stream-version";
    pub const CORRELATION_ID: &str = "reprise-correlation-id";
    pub const CAUSATION_ID: &str = "reprise-causation-id";
    pub const TRACEPARENT: &str = "traceparent";
}

/// A message to publish. The key picks the partition: use the stream id so one
/// aggregate's events stay in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub topic: Arc<str>,
    pub key: Arc<str>,
    pub payload: Payload,
    pub headers: Headers,
}

/// A message handed to a consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub topic: Arc<str>,
    pub partition: u32,
    pub offset: u64,
    pub key: Arc<str>,
    pub payload: Payload,
    pub headers: Headers,
}

impl Delivery {
    /// `topic/partition@offset`, for logs and dead letters.
    #[must_use]
    pub fn coordinates(&self) -> String {
        format!("{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    #[error("transient bus failure: {0}")]
    Transient(String),
    #[error("bus operation timed out; outcome unknown")]
    Timeout,
    /// The consumer lost its partitions (rebalance); uncommitted work will be redelivered
    /// to the new owner.
    #[error("partition {topic}/{partition} is no longer assigned to this consumer")]
    Revoked { topic: String, partition: u32 },
    #[error("subscription closed")]
    Closed,
    #[error("bus failure: {0}")]
    Permanent(String),
}

impl BusError {
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, BusError::Transient(_) | BusError::Timeout)
    }

    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            BusError::UnknownTopic(_) => "unknown_topic",
            BusError::Transient(_) => "transient",
            BusError::Timeout => "timeout",
            BusError::Revoked { .. } => "revoked",
            BusError::Closed => "closed",
            BusError::Permanent(_) => "permanent",
        }
    }
}

/// A Kafka-API event bus.
pub trait EventBus: Send + Sync {
    /// Publishes messages; each lands on the partition its key hashes to, in the order
    /// given for equal keys.
    fn publish(&self, messages: Vec<OutgoingMessage>) -> BoxFuture<'static, Result<(), BusError>>;

    /// Joins consumer group `group` for `topics`. Partitions are shared among the group's
    /// members and rebalanced when members join or leave.
    fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
    ) -> BoxFuture<'static, Result<Box<dyn Subscription>, BusError>>;
}

/// One member of a consumer group.
pub trait Subscription: Send {
    /// The next message, waiting until one is available.
    fn next(&mut self) -> BoxFuture<'_, Result<Delivery, BusError>>;

    /// Marks a delivery as handled. Its offset is committed by the next [`commit`]
    /// once every earlier offset of the partition is handled too.
    ///
    /// [`commit`]: Subscription::commit
    fn ack(&mut self, delivery: &Delivery);

    /// Commits the contiguous handled prefix of every assigned partition.
    fn commit(&mut self) -> BoxFuture<'_, Result<(), BusError>>;
}

impl fmt::Debug for dyn Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Subscription")
    }
}

/// Kafka's default partitioner for keyed messages (murmur2, as the Java client and
/// Redpanda use), so a key lands on the same partition whichever implementation wrote it.
#[must_use]
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// Kafka's murmur2 (seed 0x9747b28c). Written out because it is 20 lines and the crates
/// that carry it pull in a whole client.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    #[allow(clippy::cast_possible_truncation)]
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Reference values from Kafka's own Utils.murmur2 test vectors.
        assert_eq!(murmur2(b"21") as i32, -973_932_308);
        assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985_981_536);
        assert_eq!(
            murmur2(b"a-little-bit-longer-string") as i32,
            -1_486_304_829
        );
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58_897_971
        );
        assert_eq!(murmur2(b"abc") as i32, 479_470_107);
    }

    #[test]
    fn headers_replace_by_name() {
        let h = Headers::default().with("a", "1").with("a", "2");
        assert_eq!(h.get("a"), Some("2"));
        assert_eq!(h.0.len(), 1);
    }
}
