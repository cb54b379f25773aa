//! The event store contract shared by every implementation (in-memory, simulated,
//! PostgreSQL). Its semantics are pinned down by [`crate::conformance`], which each
//! implementation runs against itself.
//!
//! Two properties matter more than the rest:
//! - **Atomic batches**: an [`AppendBatch`] may touch several streams; it commits entirely
//!   or not at all.
//! - **Idempotent retries**: a batch whose events all exist already (same event ids, same
//!   streams and versions) is acknowledged again instead of failing. That is what makes a
//!   *commit-unknown* outcome (write applied, acknowledgement lost) safe to retry.

use std::fmt;

use crate::event::{NewEvent, Payload, RecordedEvent, StreamId};
use crate::runtime::BoxFuture;

/// What the writer believes the stream's current version to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// No check (use sparingly: it gives up optimistic concurrency).
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must exist, at any version.
    StreamExists,
    /// The stream's last event must have exactly this version.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream currently at `current` (0 = absent) satisfies the expectation.
    #[must_use]
    pub fn admits(self, current: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::StreamExists => current > 0,
            ExpectedVersion::Exact(v) => current == v,
        }
    }

    /// The expectation a writer should use after it has seen `version` (0 = nothing).
    #[must_use]
    pub fn after(version: u64) -> Self {
        if version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("stream exists"),
            ExpectedVersion::Exact(v) => write!(f, "v{v}"),
        }
    }
}

/// Events for one stream within a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamAppend {
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// An atomic append across one or more streams.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AppendBatch {
    pub streams: Vec<StreamAppend>,
}

impl AppendBatch {
    #[must_use]
    pub fn single(stream: StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        AppendBatch {
            streams: vec![StreamAppend {
                stream,
                expected,
                events,
            }],
        }
    }

    #[must_use]
    pub fn and(
        mut self,
        stream: StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Self {
        self.streams.push(StreamAppend {
            stream,
            expected,
            events,
        });
        self
    }

    #[must_use]
    pub fn event_count(&self) -> usize {
        self.streams.iter().map(|s| s.events.len()).sum()
    }

    /// Checks the batch is well formed before any I/O: no empty batch, no stream twice,
    /// no event id twice.
    ///
    /// # Errors
    /// [`StoreError::InvalidBatch`] naming the problem.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.streams.is_empty() || self.streams.iter().any(|s| s.events.is_empty()) {
            return Err(StoreError::InvalidBatch(
                "a batch needs at least one event per stream".into(),
            ));
        }
        // Hot (every append): a batch is a stream or two and a few events, for which
        // pairwise comparison beats building two sets.
        if self.streams.len() <= 8 && self.event_count() <= 16 {
            for (i, append) in self.streams.iter().enumerate() {
                let earlier = &self.streams[..i];
                if earlier.iter().any(|s| s.stream == append.stream) {
                    return Err(StoreError::InvalidBatch(format!(
                        "stream {} appears twice",
                        append.stream
                    )));
                }
                for (j, event) in append.events.iter().enumerate() {
                    let id = event.event_id;
                    let seen = earlier
                        .iter()
                        .flat_map(|s| &s.events)
                        .chain(&append.events[..j])
                        .any(|e| e.event_id == id);
                    if seen {
                        return Err(StoreError::InvalidBatch(format!(
                            "event id {id} appears twice"
                        )));
                    }
                }
            }
            return Ok(());
        }
        let mut streams = std::collections::BTreeSet::new();
        let mut ids = std::collections::BTreeSet::new();
        for append in &self.streams {
            if !streams.insert(&append.stream) {
                return Err(StoreError::InvalidBatch(format!(
                    "stream {} appears twice",
                    append.stream
                )));
            }
            for event in &append.events {
                if !ids.insert(event.event_id) {
                    return Err(StoreError::InvalidBatch(format!(
                        "event id {} appears twice",
                        event.event_id
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Where each stream of a committed batch ended up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendReceipt {
    /// `(stream, version of its last appended event)`, in batch order.
    pub stream_versions: Vec<(StreamId, u64)>,
    /// Global position of the batch's last event.
    pub last_position: u64,
    /// `true` when every event already existed: a retry of a batch that had committed.
    pub was_duplicate: bool,
}

impl AppendReceipt {
    /// The version the given stream reached, if it was part of the batch.
    #[must_use]
    pub fn version_of(&self, stream: &StreamId) -> Option<u64> {
        self.stream_versions
            .iter()
            .find(|(s, _)| s == stream)
            .map(|(_, v)| *v)
    }
}

/// A stored snapshot of an aggregate's state at a stream version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub stream: StreamId,
    pub version: u64,
    pub schema_version: u32,
    pub state: Payload,
}

/// Why a store operation failed. The variants drive the retry policy: only
/// [`StoreError::is_transient`] errors are worth retrying, and a conflict never is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Optimistic concurrency: someone else wrote first. Reload, decide again.
    #[error("concurrency conflict on {stream}: expected {expected}, stream is at v{actual}")]
    Conflict {
        stream: StreamId,
        expected: ExpectedVersion,
        actual: u64,
    },
    /// An event id in the batch is already stored, but not as this very batch.
    #[error("event id {0} already exists elsewhere")]
    DuplicateEventId(String),
    /// The batch is malformed; retrying cannot help.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// The store could not be reached or refused for now (connection, overload).
    #[error("transient store failure: {0}")]
    Transient(String),
    /// No answer in time. The write may or may not have been applied: retry the very
    /// same batch (same event ids) and the store's idempotency sorts it out.
    #[error("store operation timed out; outcome unknown")]
    Timeout,
    /// Anything else that will fail again the same way.
    #[error("store failure: {0}")]
    Permanent(String),
}

impl StoreError {
    /// Worth retrying the same request after a pause.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient(_) | StoreError::Timeout)
    }

    /// A short, bounded label for metrics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Conflict { .. } => "conflict",
            StoreError::DuplicateEventId(_) => "duplicate_event_id",
            StoreError::InvalidBatch(_) => "invalid_batch",
            StoreError::Transient(_) => "transient",
            StoreError::Timeout => "timeout",
            StoreError::Permanent(_) => "permanent",
        }
    }
}

/// An append-only store of event streams with a global order.
pub trait EventStore: Send + Sync {
    /// Appends a batch atomically. See the module docs for idempotency.
    fn append(&self, batch: AppendBatch) -> BoxFuture<'static, Result<AppendReceipt, StoreError>>;

    /// Events of `stream` with `version >= from_version`, at most `limit`, in order.
    fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<RecordedEvent>, StoreError>>;

    /// Events with `position >= from_position`, at most `limit`, in global order. Never
    /// returns an event while an earlier position may still commit (no gaps).
    fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<RecordedEvent>, StoreError>>;

    /// The stream's current version (0 if absent).
    fn stream_version(&self, stream: &StreamId) -> BoxFuture<'static, Result<u64, StoreError>>;

    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'static, Result<(), StoreError>>;

    fn load_snapshot(
        &self,
        stream: &StreamId,
    ) -> BoxFuture<'static, Result<Option<Snapshot>, StoreError>>;

    /// A wake-up for a tailer of the global log: completes once an event of one of
    /// `categories` (stream categories, see [`StreamId::category`]; any event when
    /// empty) may be readable at or after `position` — at once if one already is.
    /// `None` when the store cannot tell, so the caller keeps polling.
    ///
    /// A hint, not a read: a completed wake-up promises nothing (the read that follows
    /// may fail or, with sparse positions, find nothing yet), and a store may complete
    /// one spuriously or ignore `categories`. What it must never do is stay pending while
    /// such an event is readable — a tailer waiting on it would stall.
    ///
    /// Why it exists: a relay that polls an idle log pays a read per poll, and in the
    /// simulator most of those reads found nothing to publish.
    fn appended_since(&self, position: u64, categories: &[&str]) -> Option<BoxFuture<'static, ()>> {
        let _ = (position, categories);
        None
    }
}

/// When to write a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotPolicy {
    Never,
    /// After the stream's version crosses a multiple of this many events.
    EveryNEvents(u64),
}

impl SnapshotPolicy {
    /// Whether an append that moved a stream from `before` to `after` should snapshot.
    #[must_use]
    pub fn due(self, before: u64, after: u64) -> bool {
        match self {
            SnapshotPolicy::Never | SnapshotPolicy::EveryNEvents(0) => false,
            SnapshotPolicy::EveryNEvents(n) => before / n != after / n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_version_admission() {
        assert!(ExpectedVersion::NoStream.admits(0));
        assert!(!ExpectedVersion::NoStream.admits(1));
        assert!(ExpectedVersion::StreamExists.admits(3));
        assert!(!ExpectedVersion::StreamExists.admits(0));
        assert!(ExpectedVersion::Exact(2).admits(2));
        assert!(!ExpectedVersion::Exact(2).admits(3));
        assert_eq!(ExpectedVersion::after(0), ExpectedVersion::NoStream);
    }

    #[test]
    fn snapshot_policy_fires_when_crossing_a_multiple() {
        let p = SnapshotPolicy::EveryNEvents(10);
        assert!(!p.due(0, 9));
        assert!(p.due(9, 10));
        assert!(p.due(8, 25));
        assert!(!SnapshotPolicy::EveryNEvents(0).due(0, 100));
    }

    #[test]
    fn validation_finds_repeated_streams_and_ids_in_small_and_large_batches() {
        let event = |id: u128| NewEvent {
            event_id: crate::event::EventId(id),
            event_type: "E".into(),
            schema_version: 1,
            payload: Payload::from_json_text("{}"),
            metadata: crate::event::Metadata::default(),
        };
        for size in [3u128, 40] {
            let events = |from: u128| (from..from + size).map(event).collect::<Vec<_>>();
            let ok = AppendBatch::single("a-1".into(), ExpectedVersion::Any, events(0)).and(
                "b-1".into(),
                ExpectedVersion::Any,
                events(100),
            );
            assert_eq!(ok.validate(), Ok(()));
            let stream_twice = ok
                .clone()
                .and("a-1".into(), ExpectedVersion::Any, events(200));
            assert!(
                matches!(stream_twice.validate(), Err(StoreError::InvalidBatch(m)) if m.contains("stream a-1"))
            );
            let id_twice = ok
                .clone()
                .and("c-1".into(), ExpectedVersion::Any, events(size - 1));
            assert!(
                matches!(id_twice.validate(), Err(StoreError::InvalidBatch(m)) if m.contains("event id"))
            );
            let mut within = events(0);
            within.push(event(0));
            let within = AppendBatch::single("a-1".into(), ExpectedVersion::Any, within);
            assert!(within.validate().is_err());
        }
    }

    #[test]
    fn conflicts_are_not_transient() {
        let c = StoreError::Conflict {
            stream: "a-1".into(),
            expected: ExpectedVersion::Exact(1),
            actual: 2,
        };
        assert!(!c.is_transient());
        assert!(StoreError::Timeout.is_transient());
    }
}
