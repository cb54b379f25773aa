//! Exactly-once effect from at-least-once delivery: a proptest state machine over the
//! consume loop, the inbox and the command handler together.
//!
//! Each case is a handful of messages (increments of one counter aggregate) and a random
//! sequence of operations: publish (again), let virtual time pass, crash a consumer (its
//! task and subscription dropped, whatever it had not committed), join or leave the group
//! (a rebalance), make a subscription close (the loop resubscribes), hand a delivery over
//! twice, lose an offset commit, lose an append's answer (commit unknown), refuse an
//! append — optionally with the host's BUGGIFY points firing. After every operation the
//! safety invariants hold; after draining (faults off, every consumer restarted once),
//! every message took effect exactly once: the counter is the sum of the distinct
//! messages, with one event and one inbox marker per message.
//!
//! Everything runs on core's in-memory store and bus and `TestRuntime` (a manual
//! executor on a virtual clock), so a case takes a fraction of a millisecond and the
//! whole property is deterministic (fixed proptest seed; `PROPTEST_CASES` above 1000
//! runs more cases).

#[allow(dead_code)]
mod common;

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{AbortHandle, abortable};
use parking_lot::Mutex;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError};
use reprise_core::buggify::{FaultOracle, OracleGuard, install};
use reprise_core::event_bus::header;
use reprise_core::testing::TestRuntime;
use reprise_core::{
    BoxFuture, BusError, CommandError, Delivery, EventBus, EventId, Headers, InMemoryEventBus,
    InMemoryEventStore, Metadata, OutgoingMessage, Payload, Spawner, StoreError, Subscription,
};
use reprise_host::consume::{
    self, POINT_PAUSE_BEFORE_ACK, POINT_RESUBSCRIBE_BEFORE_ACK, POINT_SKIP_COMMIT,
};
use reprise_host::handler::POINT_EVICT_BEFORE_LOAD;
use reprise_host::ids::format_event_id;
use reprise_host::{CommandHandler, ConsumerOptions, Handling, MessageHandler, Platform, inbox};

use common::{AppendFault, Counter, CounterCommand, CounterEvent, ScriptedStore, counter_events};

const GROUP: &str = "counter-service";
const TOPIC: &str = "increments";
const COUNTER: &str = "c";
const MAX_MESSAGES: usize = 6;
const MAX_CONSUMERS: usize = 3;

// -- the system under test ------------------------------------------------------------------

/// Bus faults, armed by the operations and consumed by whichever subscription gets there
/// first.
#[derive(Debug, Default)]
struct BusFaults {
    close_next: bool,
    duplicate_next: bool,
    lose_next_commit: bool,
}

struct FaultyBus {
    inner: Arc<InMemoryEventBus>,
    faults: Arc<Mutex<BusFaults>>,
}

struct FaultySubscription {
    inner: Box<dyn Subscription>,
    faults: Arc<Mutex<BusFaults>>,
    again: Option<Delivery>,
}

impl EventBus for FaultyBus {
    fn publish(&self, messages: Vec<OutgoingMessage>) -> BoxFuture<'static, Result<(), BusError>> {
        self.inner.publish(messages)
    }

    fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
    ) -> BoxFuture<'static, Result<Box<dyn Subscription>, BusError>> {
        let subscribe = self.inner.subscribe(group, topics);
        let faults = Arc::clone(&self.faults);
        Box::pin(async move {
            let inner = subscribe.await?;
            let wrapped: Box<dyn Subscription> = Box::new(FaultySubscription {
                inner,
                faults,
                again: None,
            });
            Ok(wrapped)
        })
    }
}

impl Subscription for FaultySubscription {
    fn next(&mut self) -> BoxFuture<'_, Result<Delivery, BusError>> {
        Box::pin(async move {
            if let Some(delivery) = self.again.take() {
                return Ok(delivery);
            }
            if std::mem::take(&mut self.faults.lock().close_next) {
                return Err(BusError::Closed);
            }
            let delivery = self.inner.next().await?;
            if std::mem::take(&mut self.faults.lock().duplicate_next) {
                self.again = Some(delivery.clone());
            }
            Ok(delivery)
        })
    }

    fn ack(&mut self, delivery: &Delivery) {
        self.inner.ack(delivery);
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<(), BusError>> {
        if std::mem::take(&mut self.faults.lock().lose_next_commit) {
            // Acknowledged by the broker, never applied.
            return Box::pin(std::future::ready(Ok(())));
        }
        self.inner.commit()
    }
}

/// The service: adds each message's amount to counter `c` through the command handler,
/// with the message's inbox marker — or, for the control experiment, through the
/// repository underneath without one (the effect still names its cause).
struct CounterWorker {
    platform: Platform,
    commands: CommandHandler<Counter>,
    with_inbox: bool,
}

impl MessageHandler for CounterWorker {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let message = inbox::message_id(delivery).expect("every message has an id");
            let command = CounterCommand::Add(delivery.payload.decode().expect("an amount"));
            if self.with_inbox {
                let handling = Handling {
                    consumer: GROUP,
                    message,
                };
                self.commands
                    .execute_until_done(COUNTER, &command, Some(handling))
                    .await;
                return;
            }
            let metadata = Metadata {
                causation_id: Some(message.0),
                ..Metadata::default()
            };
            loop {
                match self
                    .commands
                    .repository()
                    .execute(COUNTER, &command, metadata.clone())
                    .await
                {
                    Ok(_) | Err(CommandError::Rejected(_)) => return,
                    Err(_) => self.platform.sleep(Duration::from_millis(20)).await,
                }
            }
        })
    }
}

/// Fires each enabled BUGGIFY point a quarter of the times it is reached (SplitMix64
/// from the case's seed: deterministic).
struct Oracle {
    enabled: u8,
    state: Cell<u64>,
}

const POINTS: [&str; 4] = [
    POINT_PAUSE_BEFORE_ACK,
    POINT_RESUBSCRIBE_BEFORE_ACK,
    POINT_SKIP_COMMIT,
    POINT_EVICT_BEFORE_LOAD,
];

impl FaultOracle for Oracle {
    fn should_fire(&self, point: &'static str) -> bool {
        let Some(index) = POINTS.iter().position(|p| *p == point) else {
            return false;
        };
        if self.enabled & (1 << index) == 0 {
            return false;
        }
        let next = self.state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % 4 == 0
    }
}

struct System {
    runtime: Arc<TestRuntime>,
    durable: Arc<InMemoryEventStore>,
    store: ScriptedStore,
    bus: Arc<InMemoryEventBus>,
    faults: Arc<Mutex<BusFaults>>,
    consumers: Vec<AbortHandle>,
    /// `(id, amount)` of each message.
    messages: Vec<(EventId, u64)>,
    with_inbox: bool,
}

impl System {
    fn new(amounts: &[u64], with_inbox: bool) -> Self {
        let runtime = TestRuntime::shared(11);
        let durable = Arc::new(InMemoryEventStore::new());
        // Appends take 1 ms to apply and 1 ms to answer: a crash can land before the
        // write, or after it and before the acknowledgement.
        let store = ScriptedStore::new(Arc::clone(&durable)).with_latency(
            runtime.clone(),
            Duration::from_millis(1),
            Duration::from_millis(1),
        );
        let bus = Arc::new(InMemoryEventBus::with_partitions(2));
        bus.create_topic(TOPIC, 2);
        let messages = amounts
            .iter()
            .enumerate()
            .map(|(i, amount)| (EventId(0xabc0_0000 + i as u128), *amount))
            .collect();
        let mut system = System {
            runtime,
            durable,
            store,
            bus,
            faults: Arc::default(),
            consumers: Vec::new(),
            messages,
            with_inbox,
        };
        system.start_consumer();
        system
    }

    fn start_consumer(&mut self) {
        let platform = Platform::new(
            self.runtime.clone(),
            Arc::new(self.store.clone()),
            Arc::new(FaultyBus {
                inner: Arc::clone(&self.bus),
                faults: Arc::clone(&self.faults),
            }),
        );
        // A new process: a cold cache.
        let worker = Arc::new(CounterWorker {
            platform: platform.clone(),
            commands: CommandHandler::new(&platform),
            with_inbox: self.with_inbox,
        });
        let (task, handle) = abortable(consume::run(
            platform,
            ConsumerOptions::new(GROUP, &[TOPIC]),
            worker,
        ));
        self.runtime.spawn(
            "consumer",
            Box::pin(async move {
                let _ = task.await;
            }),
        );
        self.consumers.push(handle);
        self.runtime.run_until_idle();
    }

    /// Drops the consumer's task: its subscription leaves the group without committing,
    /// an append in flight is lost or left unanswered.
    fn kill(&mut self, index: usize) {
        self.consumers.remove(index).abort();
        self.runtime.run_until_idle();
    }

    fn publish(&self, index: usize) {
        let (id, amount) = self.messages[index];
        self.bus.publish_now(&[OutgoingMessage {
            topic: TOPIC.into(),
            key: format!("key-{index}").into(),
            payload: Payload::encode(&amount).expect("encodes"),
            headers: Headers::default().with(header::EVENT_ID, format_event_id(id)),
        }]);
        self.runtime.run_until_idle();
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Publish(i) => self.publish(i % self.messages.len()),
            Op::Advance(ms) => self.runtime.advance(Duration::from_millis(ms)),
            Op::Crash(k) => {
                if !self.consumers.is_empty() {
                    self.kill(k % self.consumers.len());
                    self.start_consumer();
                }
            }
            Op::Join => {
                if self.consumers.len() < MAX_CONSUMERS {
                    self.start_consumer();
                }
            }
            Op::Leave => {
                if !self.consumers.is_empty() {
                    self.kill(self.consumers.len() - 1);
                }
            }
            Op::CloseNext => self.faults.lock().close_next = true,
            Op::DuplicateNext => self.faults.lock().duplicate_next = true,
            Op::LoseNextCommit => self.faults.lock().lose_next_commit = true,
            Op::CommitUnknownNext => self.store.push(AppendFault::ApplyThenTimeout),
            Op::RefuseNextAppend => self
                .store
                .push(AppendFault::Refuse(StoreError::Transient("refused".into()))),
        }
    }

    fn amount_of(&self, id: EventId) -> Option<u64> {
        self.messages
            .iter()
            .find(|(m, _)| *m == id)
            .map(|(_, amount)| *amount)
    }

    /// The invariants that hold at every moment, faults or not.
    fn check_safety(&self) -> Result<(), String> {
        // Effects: at most one per message, each from a known message, totals consistent.
        let mut effects: BTreeMap<EventId, u64> = BTreeMap::new();
        let mut running = 0;
        for (recorded, event) in counter_events(&self.durable, COUNTER) {
            let CounterEvent::Added { amount, total } = event;
            running += amount;
            if total != running {
                return Err(format!(
                    "v{}: total {total}, expected {running}",
                    recorded.version
                ));
            }
            let cause = EventId(
                recorded
                    .metadata
                    .causation_id
                    .ok_or("an effect without cause")?,
            );
            if self.amount_of(cause) != Some(amount) {
                return Err(format!("effect {amount} of unknown message {cause}"));
            }
            if effects.insert(cause, amount).is_some() {
                return Err(format!("message {cause} took effect twice"));
            }
        }
        if !self.with_inbox {
            return Ok(());
        }
        // Markers: at most one per message; a marker if and only if the effect (a refused
        // zero has a marker and no effect).
        let markers = self.markers();
        if markers.len() != markers.iter().collect::<BTreeSet<_>>().len() {
            return Err(format!("a marker is stored twice: {markers:?}"));
        }
        for &(id, amount) in &self.messages {
            let marked = markers.contains(&inbox::marker_id(GROUP, id));
            let effect = effects.contains_key(&id);
            if amount > 0 && marked != effect {
                return Err(format!(
                    "message {id} (amount {amount}): marker {marked}, effect {effect}"
                ));
            }
        }
        // Nothing acknowledged was lost: every message below the committed offsets has
        // its marker.
        let committed = self.bus.committed_offsets(GROUP, TOPIC);
        for delivery in self.bus.messages(TOPIC) {
            if delivery.offset < committed[delivery.partition as usize] {
                let id = inbox::message_id(&delivery).expect("an id");
                if !markers.contains(&inbox::marker_id(GROUP, id)) {
                    return Err(format!(
                        "{} committed but message {id} was never handled",
                        delivery.coordinates()
                    ));
                }
            }
        }
        Ok(())
    }

    fn markers(&self) -> Vec<EventId> {
        self.durable
            .read_stream_now(&inbox::stream(GROUP), 1, usize::MAX)
            .iter()
            .map(|r| r.event_id)
            .collect()
    }

    /// Faults off, every message published, every consumer restarted once (what was
    /// acknowledged under a lost commit is redelivered); then time passes until the group
    /// has committed everything.
    fn drain(&mut self) -> Result<(), String> {
        self.store.clear();
        *self.faults.lock() = BusFaults::default();
        let published: BTreeSet<EventId> = self
            .bus
            .messages(TOPIC)
            .iter()
            .filter_map(inbox::message_id)
            .collect();
        for index in 0..self.messages.len() {
            if !published.contains(&self.messages[index].0) {
                self.publish(index);
            }
        }
        let consumers = self.consumers.len().max(1);
        while !self.consumers.is_empty() {
            self.kill(0);
        }
        for _ in 0..consumers {
            self.start_consumer();
        }
        for _ in 0..600 {
            self.runtime.advance(Duration::from_millis(50));
            self.check_safety()?;
            if self.bus.lag(GROUP) == 0 && self.settled() {
                return Ok(());
            }
        }
        Err(format!(
            "not drained after 30 s: lag {}, markers {}",
            self.bus.lag(GROUP),
            self.markers().len()
        ))
    }

    fn settled(&self) -> bool {
        if self.with_inbox {
            self.markers().len() == self.messages.len()
        } else {
            true
        }
    }

    /// Exactly once: one effect per message with a non-zero amount, one marker per
    /// message, the counter at the sum.
    fn check_exactly_once(&self) -> Result<(), String> {
        self.check_safety()?;
        let events = counter_events(&self.durable, COUNTER);
        let expected: u64 = self.messages.iter().map(|(_, a)| a).sum();
        let total = events
            .last()
            .map_or(0, |(_, CounterEvent::Added { total, .. })| *total);
        if total != expected {
            return Err(format!("counter at {total}, messages sum to {expected}"));
        }
        let effective = self.messages.iter().filter(|(_, a)| *a > 0).count();
        if events.len() != effective {
            return Err(format!("{} effects for {effective} messages", events.len()));
        }
        let markers: BTreeSet<EventId> = self.markers().into_iter().collect();
        let expected: BTreeSet<EventId> = self
            .messages
            .iter()
            .map(|(id, _)| inbox::marker_id(GROUP, *id))
            .collect();
        if markers != expected {
            return Err(format!("markers {markers:?}, expected {expected:?}"));
        }
        Ok(())
    }

    /// Ends every task, so nothing outlives the case.
    fn shut_down(mut self) {
        while !self.consumers.is_empty() {
            self.kill(0);
        }
    }
}

// -- the operations ----------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    /// Publishes message `i` (again, if it was: a producer retry).
    Publish(usize),
    /// Lets this many milliseconds of virtual time pass.
    Advance(u64),
    /// Kills a consumer (task and subscription dropped, nothing committed) and starts a
    /// new one: a crash and a reboot.
    Crash(usize),
    /// Another consumer joins the group (a rebalance).
    Join,
    /// The newest consumer dies and is not replaced (a rebalance).
    Leave,
    /// The next receive reports `Closed`: the loop resubscribes.
    CloseNext,
    /// The next delivery is handed over twice.
    DuplicateNext,
    /// The next offset commit is acknowledged but lost.
    LoseNextCommit,
    /// The next append is applied but answered with a timeout.
    CommitUnknownNext,
    /// The next append is refused.
    RefuseNextAppend,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..MAX_MESSAGES).prop_map(Op::Publish),
        6 => (0u64..=5).prop_map(Op::Advance),
        2 => (6u64..=60).prop_map(Op::Advance),
        1 => (0..MAX_CONSUMERS).prop_map(Op::Crash),
        1 => Just(Op::Join),
        1 => Just(Op::Leave),
        1 => Just(Op::CloseNext),
        1 => Just(Op::DuplicateNext),
        1 => Just(Op::LoseNextCommit),
        1 => Just(Op::CommitUnknownNext),
        1 => Just(Op::RefuseNextAppend),
    ]
}

fn run_case(
    amounts: &[u64],
    ops: &[Op],
    buggify: Option<(u8, u64)>,
    with_inbox: bool,
) -> Result<(), String> {
    let mut system = System::new(amounts, with_inbox);
    let guard: Option<OracleGuard> = buggify.map(|(enabled, seed)| {
        install(Rc::new(Oracle {
            enabled,
            state: Cell::new(seed),
        }))
    });
    let result = run_steps(&mut system, ops, guard);
    system.shut_down();
    result
}

fn run_steps(system: &mut System, ops: &[Op], buggify: Option<OracleGuard>) -> Result<(), String> {
    for (step, op) in ops.iter().enumerate() {
        system.apply(op);
        system
            .check_safety()
            .map_err(|e| format!("after step {step} ({op:?}): {e}"))?;
    }
    drop(buggify);
    system.drain()?;
    system.check_exactly_once()?;
    // Settled means settled: more time changes nothing.
    system.runtime.advance(Duration::from_secs(2));
    system.check_exactly_once()
}

proptest! {
    #![proptest_config(Config {
        cases: Config::default().cases.max(1_000),
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x5eed_e0e1),
        ..Config::default()
    })]

    #[test]
    fn every_message_takes_effect_exactly_once(
        amounts in proptest::collection::vec(0u64..10, 1..=MAX_MESSAGES),
        ops in proptest::collection::vec(op(), 0..80),
        buggify in proptest::option::of((1u8..16, any::<u64>())),
    ) {
        run_case(&amounts, &ops, buggify, true).map_err(TestCaseError::fail)?;
    }
}

// -- the harness can fail ------------------------------------------------------------------------

#[test]
fn without_the_inbox_a_duplicate_delivery_takes_effect_twice() {
    // The same faults with a handler that skips the inbox marker: the property must
    // notice, or it proves nothing.
    let ops = [Op::DuplicateNext, Op::Publish(0), Op::Advance(5)];
    let error = run_case(&[3], &ops, None, false).expect_err("a double effect");
    assert!(error.contains("took effect twice"), "{error}");
    // A crash after the effect and before the commit does it too.
    let ops = [Op::Publish(0), Op::Advance(1), Op::Crash(0), Op::Advance(5)];
    let error = run_case(&[3], &ops, None, false).expect_err("a double effect");
    assert!(error.contains("took effect twice"), "{error}");
    // With the inbox, both are absorbed.
    run_case(
        &[3],
        &[Op::DuplicateNext, Op::Publish(0), Op::Advance(5)],
        None,
        true,
    )
    .expect("exactly once");
    run_case(
        &[3],
        &[Op::Publish(0), Op::Advance(1), Op::Crash(0), Op::Advance(5)],
        None,
        true,
    )
    .expect("exactly once");
}

#[test]
fn the_interesting_windows_are_reached() {
    // A crash between the write and its answer: the effect is durable, nothing was
    // acknowledged, and the new consumer gets the message again.
    let mut system = System::new(&[4, 5], true);
    system.publish(0);
    system.runtime.advance(Duration::from_micros(1_500));
    assert_eq!(counter_events(&system.durable, COUNTER).len(), 1, "written");
    assert_eq!(
        system.bus.committed_offsets(GROUP, TOPIC),
        [0, 0],
        "not committed"
    );
    system.apply(&Op::Crash(0));
    system.runtime.advance(Duration::from_millis(20));
    system.check_safety().expect("safe");
    assert_eq!(
        counter_events(&system.durable, COUNTER).len(),
        1,
        "absorbed"
    );
    assert_eq!(
        system
            .bus
            .committed_offsets(GROUP, TOPIC)
            .iter()
            .sum::<u64>(),
        1,
        "the redelivery was handled and committed"
    );
    system.drain().expect("drains");
    system.check_exactly_once().expect("exactly once");
    system.shut_down();
}
