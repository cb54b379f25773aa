//! The consume loop on its own, on core's `TestRuntime` (virtual clock, manual
//! executor): acknowledgements come only after handling, every receive error gets its
//! documented recovery, a closed subscription is replaced, and transient errors are
//! retried after the platform's backoff pauses — measured on the virtual clock.

#[allow(dead_code)]
mod common;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use reprise_core::testing::TestRuntime;
use reprise_core::{
    BoxFuture, BusError, Delivery, EventBus, EventStore, Headers, InMemoryEventBus,
    InMemoryEventStore, OutgoingMessage, Payload, RetryPolicy, SharedRuntime, Spawner,
    Subscription,
};
use reprise_host::consume::{self, ReceiveRecovery, recovery_for};
use reprise_host::{ConsumerOptions, MessageHandler, Platform};

use common::elapsed;

const GROUP: &str = "g";
const TOPIC: &str = "t";

/// Pauses of 100, 200, 400, 800 ms, then 800 ms forever: exact, so tests can assert the
/// virtual times of retries.
const LADDER: RetryPolicy = RetryPolicy {
    max_attempts: 5,
    initial_delay: Duration::from_millis(100),
    max_delay: Duration::from_secs(1),
    multiplier: 2.0,
    jitter: false,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Virtual time in milliseconds, rounded: the backoff's `f32` multiplier leaves
/// nanosecond crumbs (a 200 ms pause may last 200.000003 ms).
fn whole_ms(d: Duration) -> u64 {
    u64::try_from((d.as_nanos() + 500_000) / 1_000_000).expect("fits")
}

fn delivery(partition: u32, offset: u64) -> Delivery {
    Delivery {
        topic: TOPIC.into(),
        partition,
        offset,
        key: format!("k{offset}").into(),
        payload: Payload::from_json_text("{}"),
        headers: Headers::default(),
    }
}

// -- recording handler -----------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    Started(u32, u64),
    Handled(u32, u64),
    Acked(u32, u64),
    Committed,
}

type Log = Arc<Mutex<Vec<Entry>>>;

/// Handles a message in `pause` of virtual time, logging when it starts and finishes.
struct SlowHandler {
    runtime: SharedRuntime,
    pause: Duration,
    log: Log,
}

impl MessageHandler for SlowHandler {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let at = (delivery.partition, delivery.offset);
            self.log.lock().push(Entry::Started(at.0, at.1));
            self.runtime.sleep(self.pause).await;
            self.log.lock().push(Entry::Handled(at.0, at.1));
        })
    }
}

/// A bus whose subscriptions log their acknowledgements and commits.
struct AckRecordingBus {
    inner: Arc<InMemoryEventBus>,
    log: Log,
}

struct AckRecordingSubscription {
    inner: Box<dyn Subscription>,
    log: Log,
}

impl EventBus for AckRecordingBus {
    fn publish(&self, messages: Vec<OutgoingMessage>) -> BoxFuture<'static, Result<(), BusError>> {
        self.inner.publish(messages)
    }

    fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
    ) -> BoxFuture<'static, Result<Box<dyn Subscription>, BusError>> {
        let subscribe = self.inner.subscribe(group, topics);
        let log = Arc::clone(&self.log);
        Box::pin(async move {
            let inner = subscribe.await?;
            let wrapped: Box<dyn Subscription> = Box::new(AckRecordingSubscription { inner, log });
            Ok(wrapped)
        })
    }
}

impl Subscription for AckRecordingSubscription {
    fn next(&mut self) -> BoxFuture<'_, Result<Delivery, BusError>> {
        self.inner.next()
    }

    fn ack(&mut self, delivery: &Delivery) {
        self.log
            .lock()
            .push(Entry::Acked(delivery.partition, delivery.offset));
        self.inner.ack(delivery);
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<(), BusError>> {
        self.log.lock().push(Entry::Committed);
        self.inner.commit()
    }
}

#[test]
fn every_ack_comes_after_its_handling_and_is_committed() {
    let runtime = TestRuntime::shared(1);
    let shared: SharedRuntime = runtime.clone();
    let bus = Arc::new(InMemoryEventBus::new());
    bus.create_topic(TOPIC, 3);
    let log = Log::default();
    let platform = Platform::new(
        shared.clone(),
        Arc::new(InMemoryEventStore::new()),
        Arc::new(AckRecordingBus {
            inner: Arc::clone(&bus),
            log: Arc::clone(&log),
        }),
    );
    let handler = Arc::new(SlowHandler {
        runtime: shared,
        pause: ms(10),
        log: Arc::clone(&log),
    });
    runtime.spawn(
        "consumer",
        Box::pin(consume::run(
            platform,
            ConsumerOptions::new(GROUP, &[TOPIC]),
            handler,
        )),
    );
    let messages: Vec<OutgoingMessage> = (0..12)
        .map(|i| OutgoingMessage {
            topic: TOPIC.into(),
            key: format!("key-{i}").into(),
            payload: Payload::from_json_text("{}"),
            headers: Headers::default(),
        })
        .collect();
    bus.publish_now(&messages);

    // Part-way through the first handling nothing is acknowledged or committed yet.
    runtime.advance(ms(5));
    {
        let log = log.lock();
        assert!(matches!(log.as_slice(), [Entry::Started(..)]), "{log:?}");
    }
    runtime.advance(Duration::from_secs(1));

    let log = log.lock().clone();
    let handled: Vec<(u32, u64)> = log
        .iter()
        .filter_map(|e| match e {
            Entry::Handled(p, o) => Some((*p, *o)),
            _ => None,
        })
        .collect();
    assert_eq!(handled.len(), 12, "{log:?}");
    let mut acked = 0;
    for (index, entry) in log.iter().enumerate() {
        if let Entry::Acked(p, o) = entry {
            acked += 1;
            let handled_at = log
                .iter()
                .position(|e| *e == Entry::Handled(*p, *o))
                .unwrap_or_else(|| panic!("{p}@{o} acknowledged but never handled: {log:?}"));
            assert!(
                handled_at < index,
                "{p}@{o} acknowledged before its handling finished: {log:?}"
            );
            assert_eq!(
                log.iter().filter(|e| **e == Entry::Acked(*p, *o)).count(),
                1,
                "{p}@{o} acknowledged twice"
            );
            assert!(
                log[index + 1..].contains(&Entry::Committed),
                "{p}@{o} acknowledged but never committed: {log:?}"
            );
        }
    }
    assert_eq!(acked, 12);
    // One message at a time: the next handling starts only after the previous ack.
    for pair in log.windows(2) {
        if let [Entry::Handled(p, o), next] = pair {
            assert_eq!(*next, Entry::Acked(*p, *o), "{log:?}");
        }
    }
    let committed: u64 = (0..3).map(|p| bus.committed(GROUP, TOPIC, p)).sum();
    assert_eq!(committed, 12, "every handled message is committed");
    assert_eq!(bus.lag(GROUP), 0);
}

#[test]
fn a_handling_that_never_finishes_is_never_acknowledged() {
    /// Finishes every message but offset 2 of partition 0.
    struct StuckOnTwo(Log);
    impl MessageHandler for StuckOnTwo {
        fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, ()> {
            let stuck = delivery.offset == 2;
            Box::pin(async move {
                if stuck {
                    std::future::pending::<()>().await;
                }
                self.0
                    .lock()
                    .push(Entry::Handled(delivery.partition, delivery.offset));
            })
        }
    }
    let runtime = TestRuntime::shared(2);
    let bus = Arc::new(InMemoryEventBus::with_partitions(1));
    let log = Log::default();
    let platform = Platform::new(
        runtime.clone(),
        Arc::new(InMemoryEventStore::new()),
        Arc::new(AckRecordingBus {
            inner: Arc::clone(&bus),
            log: Arc::clone(&log),
        }),
    );
    runtime.spawn(
        "consumer",
        Box::pin(consume::run(
            platform,
            ConsumerOptions::new(GROUP, &[TOPIC]),
            Arc::new(StuckOnTwo(Arc::clone(&log))),
        )),
    );
    for i in 0..5 {
        bus.publish_now(&[OutgoingMessage {
            topic: TOPIC.into(),
            key: "k".into(),
            payload: Payload::from_json_text(format!("{i}")),
            headers: Headers::default(),
        }]);
    }
    runtime.advance(Duration::from_secs(5));
    let log = log.lock().clone();
    assert!(!log.contains(&Entry::Acked(0, 2)), "{log:?}");
    assert!(log.contains(&Entry::Acked(0, 1)), "{log:?}");
    assert_eq!(
        bus.committed(GROUP, TOPIC, 0),
        2,
        "committed up to the stuck message"
    );
}

// -- the recovery table ----------------------------------------------------------------------

#[test]
fn every_receive_error_has_its_documented_recovery() {
    let table = [
        (BusError::Closed, ReceiveRecovery::Resubscribe),
        (
            BusError::Revoked {
                topic: TOPIC.into(),
                partition: 3,
            },
            ReceiveRecovery::Continue,
        ),
        (
            BusError::Transient("broker away".into()),
            ReceiveRecovery::RetryAfterPause,
        ),
        (BusError::Timeout, ReceiveRecovery::RetryAfterPause),
        (
            BusError::UnknownTopic(TOPIC.into()),
            ReceiveRecovery::ResubscribeAfterPause,
        ),
        (
            BusError::Permanent("acl".into()),
            ReceiveRecovery::ResubscribeAfterPause,
        ),
    ];
    for (error, expected) in &table {
        assert_eq!(recovery_for(error), *expected, "{error}");
    }
    // The table names every variant (a new variant must be added here, by kind).
    let mut kinds: Vec<&str> = table.iter().map(|(e, _)| e.kind()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(kinds.len(), 6);
    // Nothing that can be retried or resubscribed spins: only `Revoked` (the subscription
    // already serves its new assignment) and `Closed` (a new membership) go on at once.
    for (error, recovery) in &table {
        if error.is_transient() {
            assert_eq!(*recovery, ReceiveRecovery::RetryAfterPause, "{error}");
        }
    }
}

// -- a scripted bus --------------------------------------------------------------------------

/// What one `next()` of a scripted subscription returns.
type Step = Result<Delivery, BusError>;

#[derive(Debug, Default)]
struct BusRecord {
    /// Results of the coming `subscribe` calls (`Ok` when the script is empty).
    subscribe_results: VecDeque<Result<(), BusError>>,
    /// Scripts of the subscriptions to come, in order (empty when the script runs out).
    scripts: VecDeque<Vec<Step>>,
    /// Virtual time (whole ms) of every subscribe call.
    subscribes: Vec<u64>,
    /// `(subscription number, virtual time in whole ms)` of every `next()` call.
    nexts: Vec<(usize, u64)>,
    /// `(subscription number, offset)` of every ack.
    acks: Vec<(usize, u64)>,
    /// Subscription number of every commit.
    commits: Vec<usize>,
    subscriptions: usize,
}

#[derive(Clone)]
struct ScriptedBus {
    runtime: Arc<TestRuntime>,
    record: Arc<Mutex<BusRecord>>,
}

struct ScriptedSubscription {
    number: usize,
    steps: VecDeque<Step>,
    runtime: Arc<TestRuntime>,
    record: Arc<Mutex<BusRecord>>,
}

impl EventBus for ScriptedBus {
    fn publish(&self, _: Vec<OutgoingMessage>) -> BoxFuture<'static, Result<(), BusError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
    ) -> BoxFuture<'static, Result<Box<dyn Subscription>, BusError>> {
        assert_eq!((group, topics), (GROUP, &[TOPIC][..]));
        let mut record = self.record.lock();
        let at = whole_ms(elapsed(&self.runtime));
        record.subscribes.push(at);
        let result = match record.subscribe_results.pop_front().unwrap_or(Ok(())) {
            Err(error) => Err(error),
            Ok(()) => {
                let number = record.subscriptions;
                record.subscriptions += 1;
                let steps = record.scripts.pop_front().unwrap_or_default().into();
                let subscription: Box<dyn Subscription> = Box::new(ScriptedSubscription {
                    number,
                    steps,
                    runtime: Arc::clone(&self.runtime),
                    record: Arc::clone(&self.record),
                });
                Ok(subscription)
            }
        };
        Box::pin(std::future::ready(result))
    }
}

impl Subscription for ScriptedSubscription {
    fn next(&mut self) -> BoxFuture<'_, Result<Delivery, BusError>> {
        let at = whole_ms(elapsed(&self.runtime));
        self.record.lock().nexts.push((self.number, at));
        match self.steps.pop_front() {
            Some(step) => Box::pin(std::future::ready(step)),
            // Script done: nothing more to deliver, ever.
            None => Box::pin(std::future::pending()),
        }
    }

    fn ack(&mut self, delivery: &Delivery) {
        self.record.lock().acks.push((self.number, delivery.offset));
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<(), BusError>> {
        self.record.lock().commits.push(self.number);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A consumer over a scripted bus with the [`LADDER`] backoff, and the record of what it
/// did. The handler finishes every message at once.
fn scripted(
    subscribe_results: Vec<Result<(), BusError>>,
    scripts: Vec<Vec<Step>>,
) -> (Arc<TestRuntime>, Arc<Mutex<BusRecord>>, Log) {
    let runtime = TestRuntime::shared(3);
    let record = Arc::new(Mutex::new(BusRecord {
        subscribe_results: subscribe_results.into(),
        scripts: scripts.into(),
        ..BusRecord::default()
    }));
    let bus = ScriptedBus {
        runtime: Arc::clone(&runtime),
        record: Arc::clone(&record),
    };
    let store: Arc<dyn EventStore> = Arc::new(InMemoryEventStore::new());
    let platform = Platform::new(runtime.clone(), store, Arc::new(bus)).with_retry(LADDER);
    let log = Log::default();
    let handler = Arc::new(SlowHandler {
        runtime: runtime.clone(),
        pause: Duration::ZERO,
        log: Arc::clone(&log),
    });
    runtime.spawn(
        "consumer",
        Box::pin(consume::run(
            platform,
            ConsumerOptions::new(GROUP, &[TOPIC]),
            handler,
        )),
    );
    (runtime, record, log)
}

fn handled(log: &Log) -> Vec<u64> {
    log.lock()
        .iter()
        .filter_map(|e| match e {
            Entry::Handled(_, o) => Some(*o),
            _ => None,
        })
        .collect()
}

#[test]
fn a_closed_subscription_is_replaced_at_once_and_never_asked_again() {
    let (runtime, record, log) = scripted(
        vec![],
        vec![
            vec![Ok(delivery(0, 0)), Err(BusError::Closed)],
            vec![Ok(delivery(0, 1))],
        ],
    );
    // No time passes: a resubscription after `Closed` does not wait.
    runtime.run_until_idle();
    let record = record.lock();
    assert_eq!(record.subscribes, [0, 0]);
    assert_eq!(handled(&log), [0, 1]);
    assert_eq!(
        record.acks,
        [(0, 0), (1, 1)],
        "each ack on the subscription that delivered"
    );
    // Subscription 0: the delivery, the `Closed`, and never again.
    let asked_first = record.nexts.iter().filter(|(n, _)| *n == 0).count();
    assert_eq!(asked_first, 2, "{:?}", record.nexts);
    assert_eq!(record.commits, [0, 1]);
}

#[test]
fn a_revoked_partition_keeps_the_subscription_and_asks_again_at_once() {
    let revoked = BusError::Revoked {
        topic: TOPIC.into(),
        partition: 0,
    };
    let (runtime, record, log) = scripted(
        vec![],
        vec![vec![Err(revoked.clone()), Err(revoked), Ok(delivery(0, 4))]],
    );
    runtime.run_until_idle();
    let record = record.lock();
    assert_eq!(record.subscribes.len(), 1);
    assert_eq!(record.nexts, [(0, 0), (0, 0), (0, 0), (0, 0)]);
    assert_eq!(handled(&log), [4]);
}

#[test]
fn transient_receive_errors_are_retried_after_growing_pauses_reset_by_a_delivery() {
    let (runtime, record, log) = scripted(
        vec![],
        vec![vec![
            Err(BusError::Transient("broker away".into())),
            Err(BusError::Timeout),
            Err(BusError::Transient("still away".into())),
            Ok(delivery(0, 0)),
            Err(BusError::Timeout),
            Ok(delivery(0, 1)),
        ]],
    );
    runtime.run_until_idle();
    assert_eq!(
        record.lock().nexts.len(),
        1,
        "no retry before the first pause"
    );
    runtime.advance(ms(99));
    assert_eq!(
        record.lock().nexts.len(),
        1,
        "no retry before the first pause"
    );
    runtime.advance(ms(2_000));
    let record = record.lock();
    let times: Vec<u64> = record.nexts.iter().map(|(_, at)| *at).collect();
    // 100, then 200, then 400 ms; the delivery at 700 ms resets the ladder: 100 ms again.
    assert_eq!(times, [0, 100, 300, 700, 700, 800, 800]);
    assert!(
        record.nexts.iter().all(|(n, _)| *n == 0),
        "never resubscribed"
    );
    assert_eq!(record.subscribes.len(), 1);
    assert_eq!(handled(&log), [0, 1]);
}

#[test]
fn unknown_topics_and_permanent_errors_resubscribe_after_a_pause() {
    let (runtime, record, log) = scripted(
        vec![],
        vec![
            vec![Err(BusError::UnknownTopic(TOPIC.into()))],
            vec![Err(BusError::Permanent("acl".into()))],
            vec![Ok(delivery(0, 9))],
        ],
    );
    runtime.run_until_idle();
    assert_eq!(record.lock().subscribes, [0], "paced, never a spin");
    runtime.advance(ms(1_000));
    let record = record.lock();
    assert_eq!(record.subscribes, [0, 100, 300]);
    assert_eq!(record.nexts, [(0, 0), (1, 100), (2, 300), (2, 300)]);
    assert_eq!(handled(&log), [9]);
    assert_eq!(record.acks, [(2, 9)]);
}

#[test]
fn failed_subscribes_are_retried_with_pauses() {
    let (runtime, record, log) = scripted(
        vec![
            Err(BusError::Transient("coordinator moving".into())),
            Err(BusError::Timeout),
            Err(BusError::Permanent("not yet".into())),
        ],
        vec![vec![Ok(delivery(0, 0))]],
    );
    runtime.advance(ms(2_000));
    let record = record.lock();
    assert_eq!(record.subscribes, [0, 100, 300, 700]);
    assert_eq!(record.nexts, [(0, 700), (0, 700)]);
    assert_eq!(handled(&log), [0]);
}
