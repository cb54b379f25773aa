//! The outbox relay: every row published (at least once, exactly once without crashes), in
//! order per key, stamped only after the bus acknowledged; one publisher at a time; prompt
//! shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use reprise_core::event_bus::{Subscription, header};
use reprise_core::{
    AppendBatch, BoxFuture, BusError, Delivery, EventBus, ExpectedVersion, Headers,
    InMemoryEventBus, OutgoingMessage, Payload,
};
use reprise_postgres::{
    OutboxRelay, PgEventStore, RelayError, RelayHandle, RelayOptions, RelayStats,
};

use crate::support::{connect, drop_schema, event, fresh_store, id_base};

const TOPIC: &str = "orders";

fn message(key: &str, n: u64) -> OutgoingMessage {
    OutgoingMessage {
        topic: TOPIC.into(),
        key: key.into(),
        payload: Payload::from_json_text(format!(r#"{{"n":{n}}}"#)),
        headers: Headers::default()
            .with(header::EVENT_ID, n.to_string())
            .with(header::STREAM, key),
    }
}

/// Appends events `from..to`, one append (with its outbox message) per event, spread over
/// `streams` streams: event `n` goes to `order-{n % streams}`.
async fn append_range(store: &PgEventStore, base: u128, from: u64, to: u64, streams: u64) {
    for n in from..to {
        let stream = format!("order-{}", n % streams);
        let batch = AppendBatch::single(
            stream.as_str().into(),
            ExpectedVersion::Any,
            vec![event(base + u128::from(n), n)],
        );
        store
            .append_with_outbox(batch, vec![message(&stream, n)])
            .await
            .unwrap_or_else(|e| panic!("append {n}: {e}"));
    }
}

fn event_id(delivery: &Delivery) -> u64 {
    delivery
        .headers
        .get(header::EVENT_ID)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{} has no event id", delivery.coordinates()))
}

/// Event ids per key, in bus order.
fn ids_per_key(deliveries: &[Delivery]) -> BTreeMap<String, Vec<u64>> {
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for delivery in deliveries {
        per_key
            .entry(delivery.key.to_string())
            .or_default()
            .push(event_id(delivery));
    }
    per_key
}

/// Every event `0..total` exactly once, and each key's events in increasing order.
fn assert_exactly_once_in_order(deliveries: &[Delivery], total: u64, streams: u64) {
    let mut ids: Vec<u64> = deliveries.iter().map(event_id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..total).collect::<Vec<_>>(), "each row exactly once");
    let per_key = ids_per_key(deliveries);
    assert_eq!(per_key.len() as u64, streams.min(total));
    for (key, ids) in per_key {
        assert!(ids.is_sorted(), "{key} out of order: {ids:?}");
    }
}

async fn eventually<F, Fut>(what: &str, budget: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + budget;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within {budget:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn pending(store: &PgEventStore) -> usize {
    store.outbox_pending(100_000).await.unwrap().len()
}

/// Fast retries for tests; a long poll interval, so only notifications explain promptness.
fn options() -> RelayOptions {
    RelayOptions::default()
        .with_batch_size(7)
        .with_poll_interval(Duration::from_secs(30))
        .with_lock_retry_interval(Duration::from_millis(50))
        .with_backoff(Duration::from_millis(10), Duration::from_millis(80))
}

/// Starts a relay draining `store`'s outbox to `bus`.
fn spawn_relay(store: &PgEventStore, bus: Arc<dyn EventBus>, options: RelayOptions) -> RelayHandle {
    OutboxRelay::new(store.clone(), bus, options)
        .unwrap()
        .spawn()
}

/// Waits (up to 5 s) until a test bus's publish-call counter satisfies `reached`.
async fn wait_for_calls(what: &str, calls: &AtomicU64, reached: impl Fn(u64) -> bool) {
    eventually(what, Duration::from_secs(5), || async {
        reached(calls.load(Ordering::Relaxed))
    })
    .await;
}

/// Stops `relay`, returning its final stats and how long stopping took.
async fn timed_shutdown(relay: RelayHandle) -> (RelayStats, Duration) {
    let started = Instant::now();
    let stats = relay.shutdown().await;
    (stats, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_are_published_once_in_order_and_marked() {
    let store = fresh_store("relay_once").await;
    let bus = Arc::new(InMemoryEventBus::new());
    let base = id_base();
    // A backlog before the relay starts, then rows while it waits.
    append_range(&store, base, 0, 40, 5).await;
    let relay = spawn_relay(&store, Arc::clone(&bus) as Arc<dyn EventBus>, options());
    eventually("backlog relayed", Duration::from_secs(10), || async {
        bus.messages(TOPIC).len() == 40
    })
    .await;
    // The relay is now idle with a 30 s poll interval: only the append notification can
    // wake it in time.
    append_range(&store, base, 40, 60, 5).await;
    eventually("new rows relayed", Duration::from_secs(5), || async {
        bus.messages(TOPIC).len() == 60
    })
    .await;
    eventually("rows marked", Duration::from_secs(5), || async {
        pending(&store).await == 0
    })
    .await;

    let stats = relay.shutdown().await;
    assert_exactly_once_in_order(&bus.messages(TOPIC), 60, 5);
    assert_eq!(stats.relayed, 60);
    assert!(stats.batches >= 60 / 7, "batched: {stats:?}");
    assert_eq!(stats.errors, 0);
    assert!(!stats.leader, "lock released on shutdown");
    drop_schema(&store).await;
}

/// How [`FlakyBus`] answers the next publish calls.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Refuses the whole batch.
    Refuse,
    /// Publishes the first half of the batch, then reports a timeout (outcome unknown).
    HalfThenTimeout,
}

/// An in-memory bus that fails publish calls according to a script, then recovers.
#[derive(Clone)]
struct FlakyBus {
    inner: Arc<InMemoryEventBus>,
    script: Arc<Mutex<Vec<Fault>>>,
    attempts: Arc<AtomicU64>,
}

impl FlakyBus {
    fn new(faults: Vec<Fault>) -> Self {
        let mut script = faults;
        script.reverse();
        FlakyBus {
            inner: Arc::new(InMemoryEventBus::new()),
            script: Arc::new(Mutex::new(script)),
            attempts: Arc::default(),
        }
    }

    fn remaining_faults(&self) -> usize {
        self.script.lock().len()
    }
}

impl EventBus for FlakyBus {
    fn publish(&self, messages: Vec<OutgoingMessage>) -> BoxFuture<'static, Result<(), BusError>> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let fault = self.script.lock().pop();
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            match fault {
                None => {
                    inner.publish_owned(messages);
                    Ok(())
                }
                Some(Fault::Refuse) => Err(BusError::Transient("broker unavailable".into())),
                Some(Fault::HalfThenTimeout) => {
                    inner.publish_now(&messages[..messages.len() / 2]);
                    Err(BusError::Timeout)
                }
            }
        })
    }

    fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
    ) -> BoxFuture<'static, Result<Box<dyn Subscription>, BusError>> {
        self.inner.subscribe(group, topics)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_failures_keep_rows_pending_then_everything_is_published_in_order() {
    let store = fresh_store("relay_flaky").await;
    let base = id_base();
    append_range(&store, base, 0, 30, 3).await;
    let faults = vec![
        Fault::Refuse,
        Fault::Refuse,
        Fault::Refuse,
        Fault::HalfThenTimeout,
        Fault::Refuse,
    ];
    let bus = FlakyBus::new(faults.clone());
    let relay = spawn_relay(
        &store,
        Arc::new(bus.clone()),
        // Slow backoff so the test can look while the bus is failing.
        options().with_backoff(Duration::from_millis(150), Duration::from_millis(300)),
    );

    wait_for_calls("first failures", &bus.attempts, |n| n >= 2).await;
    assert_eq!(
        pending(&store).await,
        30,
        "nothing marked while the bus fails"
    );
    assert!(bus.inner.messages(TOPIC).is_empty());

    eventually("recovered and drained", Duration::from_secs(10), || async {
        bus.remaining_faults() == 0 && pending(&store).await == 0
    })
    .await;
    let stats = relay.shutdown().await;
    assert_eq!(stats.errors, faults.len() as u64);
    assert_eq!(stats.relayed, 30);

    // The half-published batch was published again whole: duplicates (at-least-once), but
    // deduplicated by event id the log is complete and in order per key.
    let deliveries = bus.inner.messages(TOPIC);
    assert_eq!(
        deliveries.len(),
        30 + 7 / 2,
        "the partial batch's prefix is duplicated"
    );
    let mut seen = std::collections::BTreeSet::new();
    let unique: Vec<Delivery> = deliveries
        .into_iter()
        .filter(|d| seen.insert(event_id(d)))
        .collect();
    assert_exactly_once_in_order(&unique, 30, 3);
    drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_bus_is_retried_with_backoff_not_in_a_busy_loop() {
    let store = fresh_store("relay_backoff").await;
    append_range(&store, id_base(), 0, 3, 1).await;
    let bus = FlakyBus::new(vec![Fault::Refuse; 1_000]);
    let relay = spawn_relay(
        &store,
        Arc::new(bus.clone()),
        options().with_backoff(Duration::from_millis(10), Duration::from_millis(200)),
    );
    wait_for_calls("first attempt", &bus.attempts, |n| n >= 1).await;
    let started = bus.attempts.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let attempts = bus.attempts.load(Ordering::Relaxed) - started;
    // 10 + 20 + 40 + 80 + 160 + 200 + 200 ... ms: about 10 attempts in 1.5 s.
    assert!((3..=15).contains(&attempts), "{attempts} attempts in 1.5 s");
    let stats = relay.shutdown().await;
    assert_eq!(stats.relayed, 0);
    assert_eq!(pending(&store).await, 3, "nothing marked, nothing lost");
    drop_schema(&store).await;
}

/// Records publish calls that overlap in time, across relays sharing it.
#[derive(Clone, Default)]
struct OverlapBus {
    inner: Arc<InMemoryEventBus>,
    in_flight: Arc<AtomicU64>,
    max_in_flight: Arc<AtomicU64>,
}

impl EventBus for OverlapBus {
    fn publish(&self, messages: Vec<OutgoingMessage>) -> BoxFuture<'static, Result<(), BusError>> {
        let bus = self.clone();
        Box::pin(async move {
            let now = bus.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            bus.max_in_flight.fetch_max(now, Ordering::SeqCst);
            // Long enough for a second publisher to overlap if it could.
            tokio::time::sleep(Duration::from_millis(5)).await;
            bus.inner.publish_owned(messages);
            bus.in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        })
    }

    fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
    ) -> BoxFuture<'static, Result<Box<dyn Subscription>, BusError>> {
        self.inner.subscribe(group, topics)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_never_publish_at_once_and_the_standby_takes_over() {
    let first_store = fresh_store("relay_lock").await;
    // A second instance of the service: same schema, its own pool.
    let second_store = connect(first_store.config().clone()).await;
    let bus = OverlapBus::default();
    let base = id_base();
    let first = spawn_relay(&first_store, Arc::new(bus.clone()), options());
    let second = spawn_relay(&second_store, Arc::new(bus.clone()), options());
    eventually("a leader", Duration::from_secs(5), || async {
        first.stats().leader || second.stats().leader
    })
    .await;

    // Writers on both instances while both relays run.
    let writers = [
        tokio::spawn({
            let store = first_store.clone();
            async move { append_range(&store, base, 0, 60, 4).await }
        }),
        tokio::spawn({
            let store = second_store.clone();
            async move { append_range(&store, base, 60, 120, 4).await }
        }),
    ];
    for writer in writers {
        writer.await.unwrap();
    }
    eventually("all relayed", Duration::from_secs(10), || async {
        pending(&first_store).await == 0
    })
    .await;
    assert_eq!(bus.max_in_flight.load(Ordering::SeqCst), 1, "one publisher");
    let (a, b) = (first.stats(), second.stats());
    assert!(a.leader != b.leader, "exactly one leader: {a:?} {b:?}");
    assert_eq!(a.relayed + b.relayed, 120);
    assert!(
        a.relayed == 0 || b.relayed == 0,
        "only the leader publishes"
    );

    // The leader stops; the standby takes the lock and publishes what comes next.
    let (leader, standby, standby_store) = if a.leader {
        (first, second, second_store.clone())
    } else {
        (second, first, first_store.clone())
    };
    leader.shutdown().await;
    append_range(&standby_store, base, 120, 150, 4).await;
    eventually("standby took over", Duration::from_secs(10), || async {
        pending(&standby_store).await == 0
    })
    .await;
    let stats = standby.shutdown().await;
    assert_eq!(stats.relayed, 30);
    assert_eq!(bus.max_in_flight.load(Ordering::SeqCst), 1);
    // No crash, so no duplicate: every row exactly once, in order per key.
    let deliveries = bus.inner.messages(TOPIC);
    // Events 0..60 and 60..120 were written concurrently, so per-key order is checked on
    // the order each stream's events committed, which the stream lock makes increasing
    // within each writer; both writers share keys, so check per (key, writer).
    let mut ids: Vec<u64> = deliveries.iter().map(event_id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..150).collect::<Vec<_>>(), "each row exactly once");
    for (key, ids) in ids_per_key(&deliveries) {
        let (low, high): (Vec<u64>, Vec<u64>) = ids.iter().partition(|&&n| n < 60);
        assert!(low.is_sorted() && high.is_sorted(), "{key}: {ids:?}");
    }
    second_store.close().await;
    drop_schema(&first_store).await;
}

/// A bus whose publish never completes.
#[derive(Clone, Default)]
struct HangingBus {
    inner: Arc<InMemoryEventBus>,
    calls: Arc<AtomicU64>,
}

impl EventBus for HangingBus {
    fn publish(&self, _: Vec<OutgoingMessage>) -> BoxFuture<'static, Result<(), BusError>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Box::pin(std::future::pending())
    }

    fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
    ) -> BoxFuture<'static, Result<Box<dyn Subscription>, BusError>> {
        self.inner.subscribe(group, topics)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_prompt_when_idle_backing_off_or_stuck_in_a_publish() {
    let store = fresh_store("relay_shutdown").await;
    let prompt = Duration::from_secs(1);

    // Idle, waiting out a 30 s poll interval.
    let relay = spawn_relay(&store, Arc::new(InMemoryEventBus::new()), options());
    eventually("leader", Duration::from_secs(5), || async {
        relay.stats().leader
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, took) = timed_shutdown(relay).await;
    assert!(took < prompt, "idle: {took:?}");

    // Backing off for 30 s after a failure.
    append_range(&store, id_base(), 0, 2, 1).await;
    let failing = FlakyBus::new(vec![Fault::Refuse; 10]);
    let relay = spawn_relay(
        &store,
        Arc::new(failing.clone()),
        options().with_backoff(Duration::from_secs(30), Duration::from_secs(30)),
    );
    wait_for_calls("failing", &failing.attempts, |n| n == 1).await;
    let (stats, took) = timed_shutdown(relay).await;
    assert!(took < prompt, "backoff: {took:?}");
    assert_eq!(stats.errors, 1);

    // A publish that never returns: abandoned after the grace period, rows stay pending.
    let hanging = HangingBus::default();
    let relay = spawn_relay(
        &store,
        Arc::new(hanging.clone()),
        options().with_shutdown_grace(Duration::from_millis(200)),
    );
    wait_for_calls("publishing", &hanging.calls, |n| n == 1).await;
    let (_, took) = timed_shutdown(relay).await;
    assert!(
        took >= Duration::from_millis(200) && took < prompt,
        "stuck publish: {took:?}"
    );
    assert_eq!(pending(&store).await, 2);

    // The lock was released each time: a new relay leads at once and drains the rows.
    let bus = Arc::new(InMemoryEventBus::new());
    let relay = spawn_relay(&store, Arc::clone(&bus) as Arc<dyn EventBus>, options());
    eventually("drained after restart", Duration::from_secs(5), || async {
        pending(&store).await == 0
    })
    .await;
    relay.shutdown().await;
    assert_exactly_once_in_order(&bus.messages(TOPIC), 2, 1);
    drop_schema(&store).await;
}

#[tokio::test]
async fn options_that_would_spin_or_stall_are_refused() {
    let store = fresh_store("relay_options").await;
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryEventBus::new());
    for (options, what) in [
        (RelayOptions::default().with_batch_size(0), "batch_size"),
        (
            RelayOptions::default().with_poll_interval(Duration::ZERO),
            "poll_interval",
        ),
        (
            RelayOptions::default().with_backoff(Duration::ZERO, Duration::from_secs(1)),
            "min_backoff",
        ),
        (
            RelayOptions::default().with_backoff(Duration::from_secs(2), Duration::from_secs(1)),
            "max_backoff",
        ),
    ] {
        match OutboxRelay::new(store.clone(), Arc::clone(&bus), options) {
            Err(RelayError::InvalidOptions(message)) => {
                assert!(message.contains(what), "{what}: {message}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    drop_schema(&store).await;
}
