//! In-memory implementations of [`EventStore`] and [`EventBus`], for unit tests and as the
//! state behind the simulator's fault-injecting versions (which add latency and failures
//! around the synchronous `*_now` operations here).
//!
//! Both pass [`crate::conformance`], the same suite the PostgreSQL and Kafka adapters run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::task::{Poll, Waker};

use parking_lot::Mutex;

use crate::event::Payload;
use crate::event::{EventId, RecordedEvent, StreamId};
use crate::event_bus::{
    BusError, Delivery, EventBus, Headers, OutgoingMessage, Subscription, partition_for_key,
};
use crate::event_store::{AppendBatch, AppendReceipt, EventStore, Snapshot, StoreError};
use crate::runtime::{BoxFuture, Clock};
use crate::time::Timestamp;

// ---------------------------------------------------------------------------------------
// Event store
// ---------------------------------------------------------------------------------------

/// An event store in a `Vec`.
#[derive(Default)]
pub struct InMemoryEventStore {
    clock: Option<Arc<dyn Clock>>,
    state: Arc<Mutex<StoreState>>,
}

#[derive(Default, Clone)]
struct StoreState {
    all: Vec<RecordedEvent>,
    /// Stream → indices into `all`, in version order.
    streams: BTreeMap<StreamId, Vec<usize>>,
    ids: BTreeMap<EventId, usize>,
    snapshots: BTreeMap<StreamId, Snapshot>,
    /// [`EventStore::appended_since`] waiters, woken in registration order (the
    /// simulator's schedule depends on the order of wake-ups).
    tailers: Vec<Tailer>,
    next_tailer: u64,
}

impl std::fmt::Debug for InMemoryEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryEventStore")
            .field("events", &self.state.lock().all.len())
            .finish()
    }
}

impl InMemoryEventStore {
    /// A store whose events are recorded at the Unix epoch.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that stamps `recorded_at` from `clock`.
    #[must_use]
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        InMemoryEventStore {
            clock: Some(clock),
            state: Arc::default(),
        }
    }

    fn now(&self) -> Timestamp {
        self.clock.as_ref().map_or(Timestamp::EPOCH, |c| c.now())
    }

    /// [`EventStore::append`], synchronously.
    ///
    /// # Errors
    /// See [`StoreError`].
    pub fn append_now(&self, batch: &AppendBatch) -> Result<AppendReceipt, StoreError> {
        batch.validate()?;
        let now = self.now();
        let mut state = self.state.lock();
        if let Some(receipt) = state.already_committed(batch)? {
            return Ok(receipt);
        }
        for append in &batch.streams {
            let current = state.version_of(&append.stream);
            if !append.expected.admits(current) {
                return Err(StoreError::Conflict {
                    stream: append.stream.clone(),
                    expected: append.expected,
                    actual: current,
                });
            }
        }
        // Every check passed: nothing below can fail, so the batch lands whole.
        let StoreState {
            all, streams, ids, ..
        } = &mut *state;
        let first = all.len();
        let mut stream_versions = Vec::with_capacity(batch.streams.len());
        for append in &batch.streams {
            if append.events.is_empty() {
                let version = streams.get(&append.stream).map_or(0, |v| v.len() as u64);
                stream_versions.push((append.stream.clone(), version));
                continue;
            }
            // One lookup per stream, not one per event.
            let indices = streams.entry(append.stream.clone()).or_default();
            let mut version = indices.len() as u64;
            for event in &append.events {
                version += 1;
                let index = all.len();
                all.push(RecordedEvent {
                    stream: append.stream.clone(),
                    version,
                    position: index as u64 + 1,
                    event_id: event.event_id,
                    event_type: Arc::clone(&event.event_type),
                    schema_version: event.schema_version,
                    payload: event.payload.clone(),
                    metadata: event.metadata.clone(),
                    recorded_at: now,
                });
                indices.push(index);
                ids.insert(event.event_id, index);
            }
            stream_versions.push((append.stream.clone(), version));
        }
        let last_position = all.len() as u64;
        let woken = state.due_tailers(first);
        drop(state);
        for waker in woken {
            waker.wake();
        }
        Ok(AppendReceipt {
            stream_versions,
            last_position,
            was_duplicate: false,
        })
    }

    /// [`EventStore::appended_since`]: completes once the log holds an event of one of
    /// `categories` (of any, when empty) at or after `position`.
    pub fn appended_since_now(&self, position: u64, categories: &[&str]) -> AppendedSince {
        AppendedSince {
            state: Arc::clone(&self.state),
            position,
            categories: categories.iter().map(|c| Box::from(*c)).collect(),
            id: None,
        }
    }

    /// [`EventStore::read_stream`], synchronously.
    #[must_use]
    pub fn read_stream_now(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Vec<RecordedEvent> {
        let state = self.state.lock();
        let Some(indices) = state.streams.get(stream) else {
            return Vec::new();
        };
        let skip = usize::try_from(from_version.saturating_sub(1)).unwrap_or(usize::MAX);
        indices
            .iter()
            .skip(skip)
            .take(limit)
            .map(|&i| state.all[i].clone())
            .collect()
    }

    /// [`EventStore::read_all`], synchronously.
    #[must_use]
    pub fn read_all_now(&self, from_position: u64, limit: usize) -> Vec<RecordedEvent> {
        let state = self.state.lock();
        // A slice of the log from the caller's position: no scan, exact capacity.
        let skip = usize::try_from(from_position.saturating_sub(1))
            .unwrap_or(usize::MAX)
            .min(state.all.len());
        let rest = &state.all[skip..];
        rest[..limit.min(rest.len())].to_vec()
    }

    #[must_use]
    pub fn stream_version_now(&self, stream: &StreamId) -> u64 {
        self.state.lock().version_of(stream)
    }

    /// Number of events stored.
    #[must_use]
    pub fn len(&self) -> usize {
        self.state.lock().all.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every stream name, sorted.
    #[must_use]
    pub fn streams(&self) -> Vec<StreamId> {
        self.state.lock().streams.keys().cloned().collect()
    }

    pub fn save_snapshot_now(&self, snapshot: Snapshot) {
        self.state
            .lock()
            .snapshots
            .insert(snapshot.stream.clone(), snapshot);
    }

    #[must_use]
    pub fn load_snapshot_now(&self, stream: &StreamId) -> Option<Snapshot> {
        self.state.lock().snapshots.get(stream).cloned()
    }
}

/// A registered [`AppendedSince`]: what it waits for, and whom to wake.
#[derive(Clone)]
struct Tailer {
    id: u64,
    position: u64,
    categories: Arc<[Box<str>]>,
    waker: Waker,
}

/// Whether `event` is one a tailer of `categories` waits for (any, when empty).
fn wanted(categories: &[Box<str>], event: &RecordedEvent) -> bool {
    categories.is_empty() || {
        let category = event.stream.category();
        categories.iter().any(|c| &**c == category)
    }
}

/// The future of [`InMemoryEventStore::appended_since_now`]. Deregisters when dropped,
/// so a tailer that gave up (a timeout won the race, its task died) leaves no waker
/// behind.
pub struct AppendedSince {
    state: Arc<Mutex<StoreState>>,
    position: u64,
    categories: Arc<[Box<str>]>,
    id: Option<u64>,
}

impl std::future::Future for AppendedSince {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut state = this.state.lock();
        let from = usize::try_from(this.position.saturating_sub(1))
            .unwrap_or(usize::MAX)
            .min(state.all.len());
        if state.all[from..]
            .iter()
            .any(|e| wanted(&this.categories, e))
        {
            if let Some(id) = this.id.take() {
                state.tailers.retain(|t| t.id != id);
            }
            return Poll::Ready(());
        }
        let registered = this
            .id
            .and_then(|id| state.tailers.iter_mut().find(|t| t.id == id));
        match registered {
            Some(tailer) => {
                if !tailer.waker.will_wake(cx.waker()) {
                    tailer.waker.clone_from(cx.waker());
                }
            }
            None => {
                let id = state.next_tailer;
                state.next_tailer += 1;
                state.tailers.push(Tailer {
                    id,
                    position: this.position,
                    categories: Arc::clone(&this.categories),
                    waker: cx.waker().clone(),
                });
                this.id = Some(id);
            }
        }
        Poll::Pending
    }
}

impl Drop for AppendedSince {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            let tailer = {
                let mut state = self.state.lock();
                state
                    .tailers
                    .iter()
                    .position(|t| t.id == id)
                    .map(|i| state.tailers.remove(i))
            };
            // Dropped outside the lock: a waker's drop may re-enter its executor.
            drop(tailer);
        }
    }
}

impl std::fmt::Debug for AppendedSince {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendedSince")
            .field("position", &self.position)
            .field("categories", &self.categories)
            .finish_non_exhaustive()
    }
}

impl StoreState {
    /// Removes and returns the wakers of tailers that the events from index `first` of
    /// the log on satisfy, in registration order.
    fn due_tailers(&mut self, first: usize) -> Vec<Waker> {
        if self.tailers.is_empty() {
            return Vec::new();
        }
        let StoreState { all, tailers, .. } = self;
        let appended = &all[first..];
        let mut woken = Vec::new();
        tailers.retain(|t| {
            let due = appended
                .iter()
                .any(|e| e.position >= t.position && wanted(&t.categories, e));
            if due {
                woken.push(t.waker.clone());
            }
            !due
        });
        woken
    }

    fn version_of(&self, stream: &StreamId) -> u64 {
        self.streams.get(stream).map_or(0, |v| v.len() as u64)
    }

    /// `Some(receipt)` if this exact batch committed before (a retry after a lost ack).
    fn already_committed(&self, batch: &AppendBatch) -> Result<Option<AppendReceipt>, StoreError> {
        // The common case, a fresh batch, answers without allocating.
        if !batch
            .streams
            .iter()
            .flat_map(|a| &a.events)
            .any(|e| self.ids.contains_key(&e.event_id))
        {
            return Ok(None);
        }
        let mut seen = 0usize;
        let mut total = 0usize;
        let mut stream_versions = Vec::new();
        let mut last_position = 0;
        for append in &batch.streams {
            let mut last_version = 0;
            for event in &append.events {
                total += 1;
                if let Some(&index) = self.ids.get(&event.event_id) {
                    let stored = &self.all[index];
                    if stored.stream != append.stream {
                        return Err(StoreError::DuplicateEventId(event.event_id.to_string()));
                    }
                    seen += 1;
                    last_version = stored.version;
                    last_position = last_position.max(stored.position);
                }
            }
            stream_versions.push((append.stream.clone(), last_version));
        }
        match seen {
            0 => Ok(None),
            n if n == total => Ok(Some(AppendReceipt { stream_versions, last_position, was_duplicate: true })),
            _ => Err(StoreError::DuplicateEventId(
                "part of the batch is already stored: batches are atomic, so this is a different batch".into(),
            )),
        }
    }
}

impl EventStore for InMemoryEventStore {
    fn append(&self, batch: AppendBatch) -> BoxFuture<'static, Result<AppendReceipt, StoreError>> {
        let result = self.append_now(&batch);
        Box::pin(std::future::ready(result))
    }

    fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<RecordedEvent>, StoreError>> {
        Box::pin(std::future::ready(Ok(self.read_stream_now(
            stream,
            from_version,
            limit,
        ))))
    }

    fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<RecordedEvent>, StoreError>> {
        Box::pin(std::future::ready(Ok(
            self.read_all_now(from_position, limit)
        )))
    }

    fn stream_version(&self, stream: &StreamId) -> BoxFuture<'static, Result<u64, StoreError>> {
        Box::pin(std::future::ready(Ok(self.stream_version_now(stream))))
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'static, Result<(), StoreError>> {
        self.save_snapshot_now(snapshot);
        Box::pin(std::future::ready(Ok(())))
    }

    fn load_snapshot(
        &self,
        stream: &StreamId,
    ) -> BoxFuture<'static, Result<Option<Snapshot>, StoreError>> {
        Box::pin(std::future::ready(Ok(self.load_snapshot_now(stream))))
    }

    fn appended_since(&self, position: u64, categories: &[&str]) -> Option<BoxFuture<'static, ()>> {
        Some(Box::pin(self.appended_since_now(position, categories)))
    }
}

// ---------------------------------------------------------------------------------------
// Event bus
// ---------------------------------------------------------------------------------------

type TopicPartition = (Arc<str>, u32);

/// A Kafka-shaped bus in memory: topics with partitions, consumer groups with
/// round-robin assignment, committed offsets, rebalances when members come and go.
pub struct InMemoryEventBus {
    default_partitions: u32,
    state: Arc<Mutex<BusState>>,
}

impl std::fmt::Debug for InMemoryEventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryEventBus")
            .field("topics", &self.state.lock().topics.len())
            .finish()
    }
}

#[derive(Default)]
struct BusState {
    topics: BTreeMap<Arc<str>, Vec<Vec<StoredMessage>>>,
    groups: BTreeMap<String, Group>,
    members: BTreeMap<u64, Member>,
    next_member: u64,
    /// Members waiting for a message, with their wakers.
    waiting: Vec<(u64, Waker)>,
    /// Bumped by every change to topics, messages, groups or committed offsets.
    revision: u64,
}

#[derive(Clone)]
struct StoredMessage {
    key: Arc<str>,
    payload: Payload,
    headers: Headers,
}

#[derive(Default)]
struct Group {
    members: BTreeSet<u64>,
    committed: BTreeMap<TopicPartition, u64>,
    generation: u64,
}

struct Member {
    group: String,
    topics: Vec<Arc<str>>,
    /// Per assigned partition: next offset to deliver, and the handled-but-uncommitted set.
    assigned: BTreeMap<TopicPartition, PartitionCursor>,
    /// Round-robin fairness between partitions.
    next_partition: usize,
}

#[derive(Clone, Debug)]
struct PartitionCursor {
    next_offset: u64,
    commit_point: u64,
    handled: BTreeSet<u64>,
}

impl Default for InMemoryEventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryEventBus {
    /// A bus whose auto-created topics have 4 partitions.
    #[must_use]
    pub fn new() -> Self {
        Self::with_partitions(4)
    }

    #[must_use]
    pub fn with_partitions(default_partitions: u32) -> Self {
        assert!(default_partitions > 0);
        InMemoryEventBus {
            default_partitions,
            state: Arc::default(),
        }
    }

    /// Creates a topic (no-op if it exists).
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        assert!(partitions > 0);
        let mut state = self.state.lock();
        state.revision += 1;
        state
            .topics
            .entry(topic.into())
            .or_insert_with(|| vec![Vec::new(); partitions as usize]);
    }

    /// [`EventBus::publish`], synchronously.
    pub fn publish_now(&self, messages: &[OutgoingMessage]) {
        self.publish_from(messages, |m| StoredMessage {
            key: Arc::clone(&m.key),
            payload: m.payload.clone(),
            headers: m.headers.clone(),
        });
    }

    /// [`publish_now`](Self::publish_now), taking the messages by value: their headers
    /// are moved into the log instead of copied.
    pub fn publish_owned(&self, mut messages: Vec<OutgoingMessage>) {
        let headers: Vec<Headers> = messages
            .iter_mut()
            .map(|m| std::mem::take(&mut m.headers))
            .collect();
        // `publish_from` stores each message once, in order.
        let mut headers = headers.into_iter();
        self.publish_from(&messages, |m| StoredMessage {
            key: Arc::clone(&m.key),
            payload: m.payload.clone(),
            headers: headers.next().unwrap_or_default(),
        });
    }

    fn publish_from(
        &self,
        messages: &[OutgoingMessage],
        mut store: impl FnMut(&OutgoingMessage) -> StoredMessage,
    ) {
        let mut state = self.state.lock();
        state.revision += 1;
        let mut new_topic = false;
        for message in messages {
            let partitions = state
                .topics
                .entry(Arc::clone(&message.topic))
                .or_insert_with(|| {
                    new_topic = true;
                    vec![Vec::new(); self.default_partitions as usize]
                });
            let count = u32::try_from(partitions.len()).unwrap_or(u32::MAX);
            let p = partition_for_key(message.key.as_bytes(), count) as usize;
            partitions[p].push(store(message));
        }
        if new_topic {
            let groups: Vec<String> = state.groups.keys().cloned().collect();
            for group in groups {
                state.rebalance(&group);
            }
        }
        // Wake only the members subscribed to a topic that just received messages (and
        // any that left, so they see `Closed`): a consumer of another topic would poll,
        // find nothing and go back to sleep.
        let waiting = std::mem::take(&mut state.waiting);
        let mut still_waiting = Vec::with_capacity(waiting.len());
        for (member, waker) in waiting {
            let interested = state.members.get(&member).is_none_or(|m| {
                messages
                    .iter()
                    .any(|message| m.topics.contains(&message.topic))
            });
            if interested {
                waker.wake();
            } else {
                still_waiting.push((member, waker));
            }
        }
        state.waiting = still_waiting;
    }

    /// A number that changes whenever topics, messages, consumer groups or committed
    /// offsets may have changed: a checker that has seen everything up to one revision
    /// can skip the bus until it moves.
    #[must_use]
    pub fn revision(&self) -> u64 {
        self.state.lock().revision
    }

    /// Messages not yet committed by `group`, over all partitions of its topics.
    #[must_use]
    pub fn lag(&self, group: &str) -> u64 {
        let state = self.state.lock();
        let Some(g) = state.groups.get(group) else {
            return 0;
        };
        let topics: BTreeSet<&Arc<str>> = g
            .members
            .iter()
            .filter_map(|m| state.members.get(m))
            .flat_map(|m| m.topics.iter())
            .collect();
        let mut lag = 0;
        for topic in topics {
            if let Some(partitions) = state.topics.get(topic) {
                for (p, messages) in partitions.iter().enumerate() {
                    let committed = g
                        .committed
                        .get(&(Arc::clone(topic), p as u32))
                        .copied()
                        .unwrap_or(0);
                    lag += (messages.len() as u64).saturating_sub(committed);
                }
            }
        }
        lag
    }

    /// Committed offset of `group` on one partition.
    #[must_use]
    pub fn committed(&self, group: &str, topic: &str, partition: u32) -> u64 {
        let state = self.state.lock();
        // The key reuses the topic's own `Arc` (a reference count, not an allocation).
        let Some((topic, _)) = state.topics.get_key_value(topic) else {
            return 0;
        };
        let key = (Arc::clone(topic), partition);
        state
            .groups
            .get(group)
            .and_then(|g| g.committed.get(&key).copied())
            .unwrap_or(0)
    }

    /// Committed offsets of `group` on every partition of `topic`, indexed by partition
    /// (0 where nothing is committed; empty if the topic does not exist): one lock and
    /// one range scan instead of a [`committed`](Self::committed) call per partition.
    #[must_use]
    pub fn committed_offsets(&self, group: &str, topic: &str) -> Vec<u64> {
        let state = self.state.lock();
        let Some((topic, partitions)) = state.topics.get_key_value(topic) else {
            return Vec::new();
        };
        let mut offsets = vec![0; partitions.len()];
        if let Some(g) = state.groups.get(group) {
            let range = (Arc::clone(topic), 0)..=(Arc::clone(topic), u32::MAX);
            for ((_, partition), &offset) in g.committed.range(range) {
                if let Some(slot) = offsets.get_mut(*partition as usize) {
                    *slot = offset;
                }
            }
        }
        offsets
    }

    /// Every message of a topic, partition by partition (for checkers).
    #[must_use]
    pub fn messages(&self, topic: &str) -> Vec<Delivery> {
        let state = self.state.lock();
        let Some((topic, partitions)) = state.topics.get_key_value(topic) else {
            return Vec::new();
        };
        partitions
            .iter()
            .enumerate()
            .flat_map(|(p, messages)| {
                messages
                    .iter()
                    .enumerate()
                    .map(move |(o, m)| to_delivery(topic, p as u32, o as u64, m))
            })
            .collect()
    }

    /// Number of partitions of a topic (0 if it does not exist).
    #[must_use]
    pub fn partition_count(&self, topic: &str) -> u32 {
        let state = self.state.lock();
        state
            .topics
            .get(topic)
            .map_or(0, |p| u32::try_from(p.len()).unwrap_or(u32::MAX))
    }

    /// Up to `limit` messages of one partition from `from_offset` on: lets a checker
    /// read only what is new since its last look instead of copying whole topics.
    #[must_use]
    pub fn messages_from(
        &self,
        topic: &str,
        partition: u32,
        from_offset: u64,
        limit: usize,
    ) -> Vec<Delivery> {
        let state = self.state.lock();
        let Some((topic, partitions)) = state.topics.get_key_value(topic) else {
            return Vec::new();
        };
        let Some(messages) = partitions.get(partition as usize) else {
            return Vec::new();
        };
        let skip = usize::try_from(from_offset)
            .unwrap_or(usize::MAX)
            .min(messages.len());
        messages[skip..]
            .iter()
            .take(limit)
            .enumerate()
            .map(|(i, m)| to_delivery(topic, partition, (skip + i) as u64, m))
            .collect()
    }

    /// Like [`messages_from`](Self::messages_from), but lends each message's offset and
    /// headers to `visit` instead of copying whole deliveries (checkers that read every
    /// message's headers). Stops at the first `Err`, which it returns. `visit` runs under
    /// the bus's lock: it must not call back into the bus.
    ///
    /// # Errors
    /// The first error `visit` returns.
    pub fn try_for_each_header<E>(
        &self,
        topic: &str,
        partition: u32,
        from_offset: u64,
        limit: usize,
        mut visit: impl FnMut(u64, &Headers) -> Result<(), E>,
    ) -> Result<(), E> {
        let state = self.state.lock();
        let Some(messages) = state
            .topics
            .get(topic)
            .and_then(|p| p.get(partition as usize))
        else {
            return Ok(());
        };
        let skip = usize::try_from(from_offset)
            .unwrap_or(usize::MAX)
            .min(messages.len());
        for (i, message) in messages[skip..].iter().take(limit).enumerate() {
            visit((skip + i) as u64, &message.headers)?;
        }
        Ok(())
    }

    /// Joins a group synchronously.
    #[must_use]
    pub fn subscribe_now(&self, group: &str, topics: &[&str]) -> InMemorySubscription {
        let mut state = self.state.lock();
        state.revision += 1;
        let id = state.next_member;
        state.next_member += 1;
        for topic in topics {
            state
                .topics
                .entry(Arc::from(*topic))
                .or_insert_with(|| vec![Vec::new(); self.default_partitions as usize]);
        }
        state.members.insert(
            id,
            Member {
                group: group.to_owned(),
                topics: topics.iter().map(|t| Arc::from(*t)).collect(),
                assigned: BTreeMap::new(),
                next_partition: 0,
            },
        );
        state
            .groups
            .entry(group.to_owned())
            .or_default()
            .members
            .insert(id);
        state.rebalance(group);
        InMemorySubscription {
            member: id,
            state: Arc::clone(&self.state),
        }
    }
}

fn to_delivery(topic: &Arc<str>, partition: u32, offset: u64, m: &StoredMessage) -> Delivery {
    Delivery {
        topic: Arc::clone(topic),
        partition,
        offset,
        key: Arc::clone(&m.key),
        payload: m.payload.clone(),
        headers: m.headers.clone(),
    }
}

impl BusState {
    /// Reassigns the group's partitions round-robin over its members (in id order).
    /// Partitions a member keeps keep their cursor; moved partitions restart at the
    /// group's committed offset, so uncommitted work is redelivered to the new owner.
    fn rebalance(&mut self, group: &str) {
        self.revision += 1;
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        g.generation += 1;
        let members: Vec<u64> = g.members.iter().copied().collect();
        let mut wanted: BTreeMap<u64, BTreeSet<TopicPartition>> =
            members.iter().map(|m| (*m, BTreeSet::new())).collect();
        let topics: BTreeSet<Arc<str>> = members
            .iter()
            .filter_map(|m| self.members.get(m))
            .flat_map(|m| m.topics.iter().cloned())
            .collect();
        for topic in topics {
            let eligible: Vec<u64> = members
                .iter()
                .copied()
                .filter(|m| self.members[m].topics.contains(&topic))
                .collect();
            let partitions = self.topics.get(&topic).map_or(0, Vec::len);
            for p in 0..partitions {
                let owner = eligible[p % eligible.len()];
                wanted
                    .get_mut(&owner)
                    .expect("eligible members are group members")
                    .insert((Arc::clone(&topic), p as u32));
            }
        }
        for (member_id, partitions) in wanted {
            let member = self
                .members
                .get_mut(&member_id)
                .expect("group members exist");
            member.assigned.retain(|tp, _| partitions.contains(tp));
            for tp in partitions {
                let committed = g.committed.get(&tp).copied().unwrap_or(0);
                member.assigned.entry(tp).or_insert(PartitionCursor {
                    next_offset: committed,
                    commit_point: committed,
                    handled: BTreeSet::new(),
                });
            }
        }
        for (_, waker) in self.waiting.drain(..) {
            waker.wake();
        }
    }

    fn leave(&mut self, member: u64) {
        if let Some(m) = self.members.remove(&member) {
            if let Some(g) = self.groups.get_mut(&m.group) {
                g.members.remove(&member);
            }
            self.rebalance(&m.group);
        }
    }
}

/// A member of a consumer group on the [`InMemoryEventBus`]. Dropping it leaves the group.
pub struct InMemorySubscription {
    member: u64,
    state: Arc<Mutex<BusState>>,
}

impl std::fmt::Debug for InMemorySubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemorySubscription")
            .field("member", &self.member)
            .finish()
    }
}

impl InMemorySubscription {
    /// The next available message, without waiting.
    #[must_use]
    pub fn try_next(&self) -> Option<Delivery> {
        let mut state = self.state.lock();
        let BusState {
            topics, members, ..
        } = &mut *state;
        let member = members.get_mut(&self.member)?;
        let count = member.assigned.len();
        for i in 0..count {
            let index = (member.next_partition + i) % count;
            let (tp, cursor) = member
                .assigned
                .iter_mut()
                .nth(index)
                .expect("index below len");
            let Some(messages) = topics.get(&tp.0).and_then(|p| p.get(tp.1 as usize)) else {
                continue;
            };
            if let Some(message) = usize::try_from(cursor.next_offset)
                .ok()
                .and_then(|o| messages.get(o))
            {
                let delivery = to_delivery(&tp.0, tp.1, cursor.next_offset, message);
                cursor.next_offset += 1;
                member.next_partition = index + 1;
                return Some(delivery);
            }
        }
        None
    }

    /// The partitions currently assigned to this member.
    #[must_use]
    pub fn assignment(&self) -> Vec<(String, u32)> {
        let state = self.state.lock();
        state
            .members
            .get(&self.member)
            .map(|m| {
                m.assigned
                    .keys()
                    .map(|(t, p)| (t.to_string(), *p))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// [`Subscription::commit`], synchronously.
    ///
    /// # Errors
    /// [`BusError::Closed`] if the member left the group.
    pub fn commit_now(&self) -> Result<(), BusError> {
        let mut state = self.state.lock();
        state.revision += 1;
        let BusState {
            groups, members, ..
        } = &mut *state;
        let member = members.get_mut(&self.member).ok_or(BusError::Closed)?;
        let group = groups.get_mut(&member.group).ok_or(BusError::Closed)?;
        for (tp, cursor) in &mut member.assigned {
            while cursor.handled.remove(&cursor.commit_point) {
                cursor.commit_point += 1;
            }
            group.committed.insert(tp.clone(), cursor.commit_point);
        }
        Ok(())
    }
}

impl Drop for InMemorySubscription {
    fn drop(&mut self) {
        self.state.lock().leave(self.member);
    }
}

impl Subscription for InMemorySubscription {
    fn next(&mut self) -> BoxFuture<'_, Result<Delivery, BusError>> {
        Box::pin(futures::future::poll_fn(move |cx| {
            if let Some(delivery) = self.try_next() {
                return Poll::Ready(Ok(delivery));
            }
            let mut state = self.state.lock();
            if !state.members.contains_key(&self.member) {
                return Poll::Ready(Err(BusError::Closed));
            }
            state.waiting.push((self.member, cx.waker().clone()));
            drop(state);
            // A publish may have slipped in between the check and the registration.
            match self.try_next() {
                Some(delivery) => Poll::Ready(Ok(delivery)),
                None => Poll::Pending,
            }
        }))
    }

    fn ack(&mut self, delivery: &Delivery) {
        let mut state = self.state.lock();
        let Some(member) = state.members.get_mut(&self.member) else {
            return;
        };
        if let Some(cursor) = member
            .assigned
            .get_mut(&(Arc::clone(&delivery.topic), delivery.partition))
        {
            if delivery.offset >= cursor.commit_point {
                cursor.handled.insert(delivery.offset);
            }
        }
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(std::future::ready(self.commit_now()))
    }
}

impl EventBus for InMemoryEventBus {
    fn publish(&self, messages: Vec<OutgoingMessage>) -> BoxFuture<'static, Result<(), BusError>> {
        self.publish_now(&messages);
        Box::pin(std::future::ready(Ok(())))
    }

    fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
    ) -> BoxFuture<'static, Result<Box<dyn Subscription>, BusError>> {
        let subscription: Box<dyn Subscription> = Box::new(self.subscribe_now(group, topics));
        Box::pin(std::future::ready(Ok(subscription)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Wake};

    use super::*;
    use crate::event::{Metadata, NewEvent};
    use crate::event_store::ExpectedVersion;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn append(store: &InMemoryEventStore, stream: &str, id: u128) {
        let event = NewEvent {
            event_id: EventId(id),
            event_type: "Happened".into(),
            schema_version: 1,
            payload: Payload::from_json_text("{}"),
            metadata: Metadata::default(),
        };
        store
            .append_now(&AppendBatch::single(
                StreamId::new(stream),
                ExpectedVersion::Any,
                vec![event],
            ))
            .expect("appended");
    }

    fn poll(future: &mut AppendedSince, waker: &Arc<CountingWaker>) -> bool {
        let waker = Waker::from(Arc::clone(waker));
        std::pin::Pin::new(future)
            .poll(&mut Context::from_waker(&waker))
            .is_ready()
    }

    use std::future::Future as _;

    #[test]
    fn a_tailer_wakes_only_for_its_categories_at_or_after_its_position() {
        let store = InMemoryEventStore::new();
        append(&store, "order-1", 1);
        let waker = Arc::new(CountingWaker(AtomicUsize::new(0)));
        // Position 1 already holds an order event: ready at once.
        assert!(poll(&mut store.appended_since_now(1, &["order"]), &waker));
        let mut tail = store.appended_since_now(2, &["order"]);
        assert!(!poll(&mut tail, &waker));
        append(&store, "inbox-x", 2);
        assert_eq!(waker.0.load(Ordering::SeqCst), 0, "not its category");
        assert!(!poll(&mut tail, &waker));
        append(&store, "order-2", 3);
        assert_eq!(waker.0.load(Ordering::SeqCst), 1);
        assert!(poll(&mut tail, &waker));
        // No categories: any event.
        let mut any = store.appended_since_now(4, &[]);
        assert!(!poll(&mut any, &waker));
        append(&store, "inbox-x", 4);
        assert!(poll(&mut any, &waker));
    }

    #[test]
    fn a_dropped_tailer_leaves_no_waker_behind() {
        let store = InMemoryEventStore::new();
        let waker = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let mut tail = store.appended_since_now(1, &[]);
        assert!(!poll(&mut tail, &waker));
        assert!(
            !poll(&mut tail, &waker),
            "registered once however often polled"
        );
        assert_eq!(store.state.lock().tailers.len(), 1);
        drop(tail);
        assert!(store.state.lock().tailers.is_empty());
        append(&store, "order-1", 1);
        assert_eq!(waker.0.load(Ordering::SeqCst), 0);
    }
}
