//! Shared test fixtures of the host's component tests: a counter aggregate, a scriptable
//! store wrapper (failing or commit-unknown appends, interleaved writers, virtual-time
//! latency, recorded reads), and small helpers.
//!
//! Each test crate uses a different subset, hence the `dead_code` allowance at its
//! `mod common;`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use reprise_core::testing::TestRuntime;
use reprise_core::{
    Aggregate, AppendBatch, AppendReceipt, BoxFuture, Clock, Event, EventId, EventStore,
    ExpectedVersion, InMemoryEventBus, InMemoryEventStore, Metadata, NewEvent, RecordedEvent,
    SharedRuntime, Snapshot, StoreError, StreamId, Timestamp,
};
use reprise_host::Platform;
use serde::{Deserialize, Serialize};

// -- the counter aggregate ------------------------------------------------------------------

/// Largest total a counter accepts.
pub const LIMIT: u64 = 1_000_000;

/// A counter: `Add(n)` adds `n`; zero and overflowing `LIMIT` are refused. Each event
/// carries the total its decision computed, so a decision taken on stale state shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub total: u64,
    pub adds: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CounterCommand {
    Add(u64),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CounterEvent {
    Added { amount: u64, total: u64 },
}

impl Event for CounterEvent {
    fn event_type(&self) -> &'static str {
        "CounterAdded"
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CounterError {
    Zero,
    OverLimit { total: u64, amount: u64 },
}

impl fmt::Display for CounterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CounterError::Zero => f.write_str("nothing to add"),
            CounterError::OverLimit { total, amount } => {
                write!(f, "{total} + {amount} exceeds {LIMIT}")
            }
        }
    }
}

impl std::error::Error for CounterError {}

impl Aggregate for Counter {
    const CATEGORY: &'static str = "counter";
    type Command = CounterCommand;
    type Event = CounterEvent;
    type Error = CounterError;

    fn decide(&self, command: &CounterCommand) -> Result<Vec<CounterEvent>, CounterError> {
        let CounterCommand::Add(amount) = *command;
        if amount == 0 {
            return Err(CounterError::Zero);
        }
        if self.total + amount > LIMIT {
            return Err(CounterError::OverLimit {
                total: self.total,
                amount,
            });
        }
        Ok(vec![CounterEvent::Added {
            amount,
            total: self.total + amount,
        }])
    }

    fn apply(&mut self, event: &CounterEvent) {
        let CounterEvent::Added { amount, .. } = event;
        self.total += amount;
        self.adds += 1;
    }
}

/// A counter event as a writer other than the handler under test would append it.
#[must_use]
pub fn added(id: u128, amount: u64, total: u64) -> NewEvent {
    NewEvent::encode(
        EventId(id),
        &CounterEvent::Added { amount, total },
        Metadata::default(),
    )
    .expect("encodes")
}

/// The counter events of stream `counter-<id>`, decoded.
#[must_use]
pub fn counter_events(store: &InMemoryEventStore, id: &str) -> Vec<(RecordedEvent, CounterEvent)> {
    store
        .read_stream_now(&Counter::stream_id(id), 1, usize::MAX)
        .into_iter()
        .map(|r| {
            let event: CounterEvent = r.payload.decode().expect("a counter event");
            (r, event)
        })
        .collect()
}

// -- a scriptable store -----------------------------------------------------------------------

/// What the next append (in order) does instead of a plain append.
pub enum AppendFault {
    /// Refused with this error; nothing is applied.
    Refuse(StoreError),
    /// Applied, but answered with `Timeout` (commit unknown).
    ApplyThenTimeout,
    /// Runs this write on the underlying store first (a concurrent writer), then the
    /// append proceeds as usual.
    Interleave(Box<dyn FnOnce(&InMemoryEventStore) + Send>),
}

impl fmt::Debug for AppendFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppendFault::Refuse(e) => write!(f, "Refuse({e})"),
            AppendFault::ApplyThenTimeout => f.write_str("ApplyThenTimeout"),
            AppendFault::Interleave(_) => f.write_str("Interleave(..)"),
        }
    }
}

#[derive(Debug, Default)]
struct Script {
    faults: VecDeque<AppendFault>,
    appends: usize,
    stream_reads: Vec<(StreamId, u64, usize)>,
}

/// An [`InMemoryEventStore`] behind a wrapper whose appends can be scripted, optionally
/// with latency on a virtual clock before and after the write is applied (so a dropped
/// task can die with its append unapplied, or applied and unanswered).
#[derive(Clone, Debug)]
pub struct ScriptedStore {
    pub inner: Arc<InMemoryEventStore>,
    latency: Option<(SharedRuntime, Duration, Duration)>,
    script: Arc<Mutex<Script>>,
}

impl ScriptedStore {
    #[must_use]
    pub fn new(inner: Arc<InMemoryEventStore>) -> Self {
        ScriptedStore {
            inner,
            latency: None,
            script: Arc::default(),
        }
    }

    /// Every append waits `before` on `runtime`'s clock, is applied, then waits `after`
    /// before it answers.
    #[must_use]
    pub fn with_latency(
        mut self,
        runtime: SharedRuntime,
        before: Duration,
        after: Duration,
    ) -> Self {
        self.latency = Some((runtime, before, after));
        self
    }

    /// Queues a fault for the next append not yet scripted.
    pub fn push(&self, fault: AppendFault) {
        self.script.lock().faults.push_back(fault);
    }

    /// Drops every queued fault.
    pub fn clear(&self) {
        self.script.lock().faults.clear();
    }

    /// Appends attempted so far (faulty ones included).
    #[must_use]
    pub fn appends(&self) -> usize {
        self.script.lock().appends
    }

    /// `(stream, from_version, limit)` of every `read_stream` so far.
    #[must_use]
    pub fn stream_reads(&self) -> Vec<(StreamId, u64, usize)> {
        self.script.lock().stream_reads.clone()
    }
}

impl EventStore for ScriptedStore {
    fn append(&self, batch: AppendBatch) -> BoxFuture<'static, Result<AppendReceipt, StoreError>> {
        let inner = Arc::clone(&self.inner);
        let script = Arc::clone(&self.script);
        let latency = self.latency.clone();
        Box::pin(async move {
            if let Some((runtime, before, _)) = &latency {
                runtime.sleep(*before).await;
            }
            let fault = {
                let mut script = script.lock();
                script.appends += 1;
                script.faults.pop_front()
            };
            let result = match fault {
                None => inner.append_now(&batch),
                Some(AppendFault::Refuse(error)) => Err(error),
                Some(AppendFault::ApplyThenTimeout) => {
                    inner.append_now(&batch).and(Err(StoreError::Timeout))
                }
                Some(AppendFault::Interleave(write)) => {
                    write(&inner);
                    inner.append_now(&batch)
                }
            };
            if let Some((runtime, _, after)) = &latency {
                runtime.sleep(*after).await;
            }
            result
        })
    }

    fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<RecordedEvent>, StoreError>> {
        self.script
            .lock()
            .stream_reads
            .push((stream.clone(), from_version, limit));
        self.inner.read_stream(stream, from_version, limit)
    }

    fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<RecordedEvent>, StoreError>> {
        self.inner.read_all(from_position, limit)
    }

    fn stream_version(&self, stream: &StreamId) -> BoxFuture<'static, Result<u64, StoreError>> {
        self.inner.stream_version(stream)
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'static, Result<(), StoreError>> {
        self.inner.save_snapshot(snapshot)
    }

    fn load_snapshot(
        &self,
        stream: &StreamId,
    ) -> BoxFuture<'static, Result<Option<Snapshot>, StoreError>> {
        self.inner.load_snapshot(stream)
    }
}

/// Appends `events` to `stream` in batches of 100, expecting the stream's current end.
pub fn append_all(store: &InMemoryEventStore, stream: &StreamId, events: Vec<NewEvent>) {
    let mut events = events.into_iter().peekable();
    while events.peek().is_some() {
        let chunk: Vec<NewEvent> = events.by_ref().take(100).collect();
        let version = store.stream_version_now(stream);
        store
            .append_now(&AppendBatch::single(
                stream.clone(),
                ExpectedVersion::after(version),
                chunk,
            ))
            .expect("appends");
    }
}

// -- platforms ---------------------------------------------------------------------------------

/// A platform on a [`TestRuntime`] over `store` and a fresh in-memory bus.
#[must_use]
pub fn platform(runtime: &Arc<TestRuntime>, store: Arc<dyn EventStore>) -> Platform {
    let shared: SharedRuntime = runtime.clone();
    Platform::new(shared, store, Arc::new(InMemoryEventBus::new()))
}

/// Virtual time since the test runtime's epoch.
#[must_use]
pub fn elapsed(runtime: &TestRuntime) -> Duration {
    runtime.now().saturating_since(Timestamp::SIMULATION_EPOCH)
}
