//! Optimistic concurrency: a writer whose view of a stream is stale gets
//! `StoreError::Conflict`, and the framework answers a conflict by reloading and deciding
//! again on the fresh state — never by re-sending the same events. Each decision is
//! counted here by wrapping the real in-memory store and recording every append.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use reprise_core::testing::TestRuntime;
use reprise_core::{
    AggregateAction, AppendBatch, AppendReceipt, BoxFuture, CommandError, Entropy, EventId,
    EventStore, ExpectedVersion, InMemoryEventStore, Metadata, NewEvent, RecordedEvent, Repository,
    SharedRuntime, Snapshot, StoreError, StreamId,
};

#[allow(dead_code)] // shared with reprise-examples, which uses all of it
#[path = "../../examples/src/order.rs"]
mod order;

use order::{Order, OrderCommand, OrderError, OrderEvent, OrderStatus};

/// The in-memory store, plus a competing writer that commits one of its batches just
/// before each of our next appends, plus a log of our appends.
struct Contended {
    inner: InMemoryEventStore,
    competitor: Mutex<VecDeque<AppendBatch>>,
    ours: Mutex<Vec<AppendBatch>>,
}

impl Contended {
    fn new() -> Arc<Self> {
        Arc::new(Contended {
            inner: InMemoryEventStore::new(),
            competitor: Mutex::default(),
            ours: Mutex::default(),
        })
    }

    /// Writes `events` to order `id` right now, as an earlier writer did.
    fn history(&self, id: &str, events: &[OrderEvent]) {
        self.inner
            .append_now(&batch(
                id,
                ExpectedVersion::Any,
                events,
                1_000 + self.inner.len() as u128,
            ))
            .unwrap();
    }

    /// The competitor will write `events` just before our next append that has none
    /// queued before it.
    fn compete(&self, id: &str, events: &[OrderEvent]) {
        let mut queue = self.competitor.lock();
        let first_id = 2_000 + 100 * queue.len() as u128;
        queue.push_back(batch(id, ExpectedVersion::Any, events, first_id));
    }

    fn our_appends(&self) -> Vec<AppendBatch> {
        self.ours.lock().clone()
    }
}

fn batch(
    id: &str,
    expected: ExpectedVersion,
    events: &[OrderEvent],
    first_id: u128,
) -> AppendBatch {
    let encoded = events
        .iter()
        .zip(first_id..)
        .map(|(event, n)| NewEvent::encode(EventId(n), event, Metadata::default()).unwrap())
        .collect();
    AppendBatch::single(StreamId::of("order", id), expected, encoded)
}

impl EventStore for Contended {
    fn append(&self, batch: AppendBatch) -> BoxFuture<'static, Result<AppendReceipt, StoreError>> {
        self.ours.lock().push(batch.clone());
        if let Some(theirs) = self.competitor.lock().pop_front() {
            self.inner
                .append_now(&theirs)
                .expect("the competitor writes without expectations");
        }
        self.inner.append(batch)
    }
    fn read_stream(
        &self,
        s: &StreamId,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<RecordedEvent>, StoreError>> {
        self.inner.read_stream(s, from, limit)
    }
    fn read_all(
        &self,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<RecordedEvent>, StoreError>> {
        self.inner.read_all(from, limit)
    }
    fn stream_version(&self, s: &StreamId) -> BoxFuture<'static, Result<u64, StoreError>> {
        self.inner.stream_version(s)
    }
    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'static, Result<(), StoreError>> {
        self.inner.save_snapshot(snapshot)
    }
    fn load_snapshot(
        &self,
        s: &StreamId,
    ) -> BoxFuture<'static, Result<Option<Snapshot>, StoreError>> {
        self.inner.load_snapshot(s)
    }
}

fn placed() -> OrderEvent {
    OrderEvent::Placed {
        customer: "ada".into(),
    }
}

fn line(sku: &str) -> OrderEvent {
    OrderEvent::LineAdded {
        sku: sku.into(),
        quantity: 1,
        unit_price_cents: 100,
    }
}

fn add(sku: &str) -> OrderCommand {
    OrderCommand::AddLine {
        sku: sku.into(),
        quantity: 1,
        unit_price_cents: 100,
    }
}

fn repository(store: &Arc<Contended>) -> (Repository<Order>, Arc<TestRuntime>) {
    let runtime = TestRuntime::shared(9);
    let entropy: Arc<dyn Entropy> = runtime.clone();
    let events: Arc<dyn EventStore> = store.clone();
    (Repository::new(events, entropy), runtime)
}

fn execute(
    store: &Arc<Contended>,
    command: OrderCommand,
) -> Result<reprise_core::aggregate::Executed<Order>, CommandError<OrderError>> {
    let (orders, runtime) = repository(store);
    reprise_core::testing::block_on(&runtime, async move {
        orders.execute("1", &command, Metadata::default()).await
    })
}

fn expected_versions(batches: &[AppendBatch]) -> Vec<ExpectedVersion> {
    batches.iter().map(|b| b.streams[0].expected).collect()
}

fn event_ids(batch: &AppendBatch) -> Vec<EventId> {
    batch.streams[0].events.iter().map(|e| e.event_id).collect()
}

// ---- the store itself ------------------------------------------------------------------

#[test]
fn the_second_of_two_writers_with_the_same_view_gets_a_conflict() {
    let store = InMemoryEventStore::new();
    let stream = StreamId::of("order", "1");
    // Both read the stream at v0 and decide independently.
    let first = batch("1", ExpectedVersion::after(0), &[placed()], 1);
    let second = batch(
        "1",
        ExpectedVersion::after(0),
        &[OrderEvent::Placed {
            customer: "bob".into(),
        }],
        2,
    );
    assert_eq!(
        store.append_now(&first).unwrap().version_of(&stream),
        Some(1)
    );
    assert_eq!(
        store.append_now(&second),
        Err(StoreError::Conflict {
            stream: stream.clone(),
            expected: ExpectedVersion::NoStream,
            actual: 1
        })
    );
    assert_eq!(
        store.read_stream_now(&stream, 1, 10).len(),
        1,
        "the loser wrote nothing"
    );
    assert!(
        !StoreError::Conflict {
            stream,
            expected: ExpectedVersion::NoStream,
            actual: 1
        }
        .is_transient()
    );
}

// ---- Repository ------------------------------------------------------------------------

#[test]
fn the_repository_decides_again_on_the_fresh_state_after_a_conflict() {
    let store = Contended::new();
    store.history("1", &[placed()]);
    store.compete("1", &[line("cup")]);
    let executed = execute(&store, add("tea")).expect("the second decision succeeds");
    assert_eq!(executed.version, 3);
    assert_eq!(
        executed.state.lines.keys().collect::<Vec<_>>(),
        ["cup", "tea"]
    );
    assert_eq!(executed.state.total_cents, 200);

    let ours = store.our_appends();
    assert_eq!(
        expected_versions(&ours),
        [ExpectedVersion::Exact(1), ExpectedVersion::Exact(2)]
    );
    // A new decision, not a re-send: fresh expectation *and* fresh event ids.
    assert_ne!(event_ids(&ours[0]), event_ids(&ours[1]));
}

#[test]
fn a_decision_the_fresh_state_no_longer_allows_is_rejected_not_retried() {
    let store = Contended::new();
    store.history("1", &[placed(), line("tea")]);
    store.compete("1", &[OrderEvent::Submitted { total_cents: 100 }]);
    let result = execute(&store, add("cup"));
    assert_eq!(
        result,
        Err(CommandError::Rejected(OrderError::NotOpen(
            OrderStatus::Submitted
        )))
    );
    assert_eq!(
        store.our_appends().len(),
        1,
        "only the conflicting attempt was written"
    );
    assert_eq!(
        store.inner.stream_version_now(&StreamId::of("order", "1")),
        3
    );
}

#[test]
fn a_stream_that_keeps_changing_is_given_up_after_max_decisions() {
    let store = Contended::new();
    store.history("1", &[placed()]);
    for sku in ["a", "b", "c", "d"] {
        store.compete("1", &[line(sku)]);
    }
    let (orders, runtime) = repository(&store);
    let orders = orders.with_max_decisions(3);
    let result = reprise_core::testing::block_on(&runtime, async move {
        orders.execute("1", &add("tea"), Metadata::default()).await
    });
    assert_eq!(
        result.map(|e| e.version),
        Err(CommandError::Contended { attempts: 3 })
    );
    let ours = store.our_appends();
    // Exactly three appends, each decided on the state the previous conflict revealed.
    assert_eq!(
        expected_versions(&ours),
        [
            ExpectedVersion::Exact(1),
            ExpectedVersion::Exact(2),
            ExpectedVersion::Exact(3)
        ]
    );
}

// ---- AggregateReducer in a Store -------------------------------------------------------

fn order_store(
    store: &Arc<Contended>,
) -> (
    reprise_core::Store<reprise_core::AggregateReducer<Order>>,
    Arc<TestRuntime>,
) {
    let runtime = TestRuntime::shared(4);
    let shared: SharedRuntime = runtime.clone();
    let events: Arc<dyn EventStore> = store.clone();
    (order::order_store("1", shared, events), runtime)
}

#[test]
fn the_aggregate_store_reloads_and_decides_again_after_a_conflict() {
    let store = Contended::new();
    let (orders, runtime) = order_store(&store);
    drop(orders.send(AggregateAction::Execute(OrderCommand::Place {
        customer: "ada".into(),
    })));
    runtime.run_until_idle();
    store.compete("1", &[line("cup")]);
    drop(orders.send(AggregateAction::Execute(add("tea"))));
    runtime.run_until_idle();

    let root = orders.state();
    assert_eq!(root.last_outcome, Some(Ok(3)));
    assert_eq!((root.version, root.state.total_cents), (3, 200));
    assert!(root.in_flight.is_none());
    let ours = store.our_appends();
    assert_eq!(
        expected_versions(&ours),
        [
            ExpectedVersion::NoStream,
            ExpectedVersion::Exact(1),
            ExpectedVersion::Exact(2)
        ]
    );
    assert_ne!(event_ids(&ours[1]), event_ids(&ours[2]));
}

#[test]
fn the_aggregate_store_reports_a_rejection_revealed_by_a_conflict() {
    let store = Contended::new();
    store.history("1", &[placed(), line("tea")]);
    let (orders, runtime) = order_store(&store);
    store.compete(
        "1",
        &[OrderEvent::Cancelled {
            reason: "by phone".into(),
        }],
    );
    drop(orders.send(AggregateAction::Execute(add("cup"))));
    runtime.run_until_idle();
    let root = orders.state();
    assert_eq!(
        root.last_outcome,
        Some(Err(CommandError::Rejected(OrderError::NotOpen(
            OrderStatus::Cancelled
        ))))
    );
    assert_eq!(
        (root.version, root.state.status),
        (3, OrderStatus::Cancelled)
    );
    assert_eq!(store.our_appends().len(), 1);
}
