//! The relay in the simulator: two instances on two nodes compete for the lease
//! `relay-x` while a writer appends events to routed and unrouted streams, and two
//! consumers of one group read what is published.
//!
//! Checked at every safety check: everything on the topic is a stored event of a routed
//! category, keyed by its stream; per key, the first publication of each version comes
//! in version order (a later version never overtakes an earlier one; republished older
//! versions are duplicates of what was already published); per consumer, versions of a
//! key never go backwards except to versions it already saw. At the end: every routed
//! event was published (at least once) and consumed, nothing unrouted was published.
//! Under lease loss with zombie windows (two leaders at once) and crashes of both relay
//! nodes, over 50 seeds, with both nodes leading at some point. A relay whose lease is
//! held by someone else publishes nothing until it gets the lease.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use reprise_core::event_bus::header;
use reprise_core::{
    AppendBatch, BoxFuture, Delivery, EventId, ExpectedVersion, Headers, InMemoryEventBus,
    InMemoryEventStore, Metadata, NewEvent, OutgoingMessage, Payload, RecordedEvent, StreamId,
};
use reprise_host::consume;
use reprise_host::relay::{self, RelayedEvent};
use reprise_host::{ConsumerOptions, MessageHandler, Platform, RelayOptions, Route};
use reprise_sim::{
    BusFaults, Fault, FaultPlan, FaultSpec, LeaseFaults, NodeContext, NodeOptions, RunReport,
    Scenario, ScenarioRun, SimConfig, StoreFaults, TraceMode, Violation, World, WorldView, run,
};

const RELAY: &str = "x";
const ROUTED: &str = "acct";
const UNROUTED: &str = "other";
const TOPIC: &str = "acct-events";
const GROUP: &str = "audit";
const RELAY_NODES: [&str; 2] = ["relay-a", "relay-b"];
const CONSUMERS: [&str; 2] = ["consumer-1", "consumer-2"];

/// A node the nemesis leaves alone.
const STEADY: NodeOptions = NodeOptions {
    crashable: false,
    pausable: false,
    clock_skew: false,
};

fn relay_options() -> RelayOptions {
    RelayOptions {
        // Small batches and frequent checkpoints: many publishes, many lease confirms,
        // many chances for a fault to land in between.
        batch_size: 8,
        checkpoint_every: 8,
        lease_retry: Duration::from_millis(100),
        ..RelayOptions::new(RELAY, vec![Route::new(ROUTED, TOPIC)])
    }
}

fn platform(ctx: &NodeContext) -> Platform {
    let notes = ctx.clone();
    Platform::new(ctx.runtime(), ctx.event_store(), ctx.event_bus())
        .with_notes(Arc::new(move |text| notes.note_fmt(text)))
}

/// Per consumer, `(stream, version, event id)` of each delivery in the order it handled
/// them.
type Seen = BTreeMap<&'static str, Vec<(StreamId, u64, EventId)>>;

/// What one run's nodes tell its checker.
#[derive(Debug, Default)]
struct Shared {
    writer_done: AtomicBool,
    seen: Mutex<Seen>,
    /// Set while the squatter holds the lease.
    squatter_holds: AtomicBool,
    squatter_trouble: Mutex<Option<String>>,
}

/// The world: a writer, two relays, two consumers and, optionally, a squatter that holds
/// the relay's lease for a while before any relay starts.
struct RelayWorld {
    events: u64,
    squatter_holds_for: Option<Duration>,
    last: Mutex<Option<Arc<Shared>>>,
}

impl RelayWorld {
    fn new(events: u64) -> Self {
        RelayWorld {
            events,
            squatter_holds_for: None,
            last: Mutex::default(),
        }
    }

    fn last(&self) -> Arc<Shared> {
        self.last.lock().clone().expect("a run")
    }
}

/// Appends `events` single-event batches, three in four to routed streams, 5–45 ms apart.
async fn write(ctx: NodeContext, events: u64, shared: Arc<Shared>) {
    let store = ctx.event_store();
    let runtime = ctx.runtime();
    for i in 0..events {
        let stream = if i % 4 == 3 {
            StreamId::of(UNROUTED, i % 3)
        } else {
            StreamId::of(ROUTED, i % 5)
        };
        let event = NewEvent {
            event_id: EventId(runtime.next_id()),
            event_type: "Tick".into(),
            schema_version: 1,
            payload: Payload::from_json_text(format!("{{\"i\":{i}}}")),
            metadata: Metadata::default(),
        };
        let batch = AppendBatch::single(stream, ExpectedVersion::Any, vec![event]);
        // The same batch until it lands: the store recognises a retry of a committed one.
        while store.append(batch.clone()).await.is_err() {
            ctx.sleep(Duration::from_millis(10)).await;
        }
        ctx.sleep(Duration::from_millis(5 + runtime.next_u64() % 40))
            .await;
    }
    shared.writer_done.store(true, Ordering::SeqCst);
}

/// Records what a consumer handles.
struct Recorder {
    name: &'static str,
    shared: Arc<Shared>,
}

impl MessageHandler for Recorder {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, ()> {
        let event = RelayedEvent::from_delivery(delivery).expect("a relayed event");
        self.shared.seen.lock().entry(self.name).or_default().push((
            event.stream,
            event.version,
            event.event_id,
        ));
        Box::pin(std::future::ready(()))
    }
}

/// Holds the relay's lease for `hold`, confirming it every 50 ms, then releases it.
async fn squat(ctx: NodeContext, hold: Duration, shared: Arc<Shared>) {
    let lease = ctx.lease(&relay_options().lease_name());
    let mut held = loop {
        if let Ok(Some(held)) = lease.try_acquire().await {
            break held;
        }
        ctx.sleep(Duration::from_millis(1)).await;
    };
    shared.squatter_holds.store(true, Ordering::SeqCst);
    let runtime = ctx.runtime();
    let start = runtime.now();
    while runtime.now().saturating_since(start) < hold {
        if let Err(error) = held.confirm().await {
            *shared.squatter_trouble.lock() = Some(error.to_string());
        }
        ctx.sleep(Duration::from_millis(50)).await;
    }
    // Cleared before the release: from here on a relay may lead.
    shared.squatter_holds.store(false, Ordering::SeqCst);
    held.release().await;
}

impl Scenario for RelayWorld {
    fn name(&self) -> &'static str {
        "relay"
    }

    fn description(&self) -> &'static str {
        "two relays, one lease, a writer and two consumers"
    }

    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        let shared = Arc::new(Shared::default());
        *self.last.lock() = Some(Arc::clone(&shared));
        let (events, squat_for) = (self.events, self.squatter_holds_for);
        let writer = Arc::clone(&shared);
        world.add_node("writer", STEADY, move |ctx| {
            ctx.spawn("writer", write(ctx.clone(), events, Arc::clone(&writer)));
        });
        if let Some(hold) = squat_for {
            let squatter = Arc::clone(&shared);
            world.add_node("squatter", STEADY, move |ctx| {
                ctx.spawn("squatter", squat(ctx.clone(), hold, Arc::clone(&squatter)));
            });
        }
        for node in RELAY_NODES {
            world.add_node(node, NodeOptions::default(), move |ctx| {
                let options = Arc::new(relay_options());
                let lease = ctx.lease(&options.lease_name());
                let platform = platform(&ctx);
                let pause = ctx.sleep(if squat_for.is_some() {
                    // Let the squatter take the lease first.
                    Duration::from_millis(100)
                } else {
                    Duration::ZERO
                });
                ctx.spawn("relay", async move {
                    pause.await;
                    relay::run(platform, options, lease).await;
                });
            });
        }
        for name in CONSUMERS {
            let recorder = Arc::clone(&shared);
            world.add_node(name, STEADY, move |ctx| {
                let handler = Arc::new(Recorder {
                    name,
                    shared: Arc::clone(&recorder),
                });
                ctx.spawn(
                    "consumer",
                    consume::run(
                        platform(&ctx),
                        ConsumerOptions::new(GROUP, &[TOPIC]),
                        handler,
                    ),
                );
            });
        }
        Box::new(Checker { shared })
    }
}

struct Checker {
    shared: Arc<Shared>,
}

fn violation(invariant: &str, message: String) -> Result<(), Violation> {
    Err(Violation::new(invariant, message))
}

/// The topic as the relay wrote it (partition by partition, offset order): stored events
/// of routed streams only, keyed by stream, and per key the first publication of each
/// version in version order.
fn check_log(store: &InMemoryEventStore, bus: &InMemoryEventBus) -> Result<(), Violation> {
    // Per key: the highest version published so far.
    let mut published: BTreeMap<StreamId, u64> = BTreeMap::new();
    for delivery in bus.messages(TOPIC) {
        let at = delivery.coordinates();
        let Some(event) = RelayedEvent::from_delivery(&delivery) else {
            return violation("relayed-headers", format!("{at}: not a relayed event"));
        };
        if event.stream.category() != ROUTED {
            return violation(
                "routes",
                format!("{at}: {} is not routed here", event.stream),
            );
        }
        if *delivery.key != *event.stream.as_str() {
            return violation("keyed-by-stream", format!("{at}: key {}", delivery.key));
        }
        let stored = store.read_stream_now(&event.stream, event.version, 1);
        if stored.first().is_none_or(|s| {
            s.version != event.version || s.event_id != event.event_id || s.payload != event.payload
        }) {
            return violation(
                "published-as-stored",
                format!(
                    "{at}: {} v{} is not the stored event",
                    event.stream, event.version
                ),
            );
        }
        let highest = published.entry(event.stream.clone()).or_insert(0);
        if event.version == *highest + 1 {
            *highest = event.version;
        } else if event.version > *highest {
            return violation(
                "per-key-order",
                format!(
                    "{at}: {} v{} published before v{}",
                    event.stream,
                    event.version,
                    *highest + 1
                ),
            );
        }
    }
    Ok(())
}

/// Each consumer's view: per key, no version goes backwards except to one it saw.
fn check_consumers(seen: &Seen) -> Result<(), Violation> {
    for (consumer, seen) in seen {
        let mut keys: BTreeMap<&StreamId, (u64, BTreeSet<u64>)> = BTreeMap::new();
        for (stream, version, _) in seen {
            let (highest, versions) = keys.entry(stream).or_default();
            if *version < *highest && !versions.contains(version) {
                return violation(
                    "consumer-order",
                    format!("{consumer}: {stream} v{version} after v{highest}"),
                );
            }
            *highest = (*highest).max(*version);
            versions.insert(*version);
        }
    }
    Ok(())
}

impl ScenarioRun for Checker {
    fn check_safety(&self, world: &WorldView<'_>) -> Result<(), Violation> {
        if let Some(trouble) = self.shared.squatter_trouble.lock().clone() {
            return violation("squatter-holds", trouble);
        }
        if self.shared.squatter_holds.load(Ordering::SeqCst)
            && !world.event_bus().messages(TOPIC).is_empty()
        {
            return violation(
                "no-lease-no-publish",
                "published while another contender held the lease".into(),
            );
        }
        check_log(world.event_store(), world.event_bus())?;
        check_consumers(&self.shared.seen.lock())
    }

    fn check_liveness(&self, world: &WorldView<'_>) -> Result<(), Violation> {
        if !self.shared.writer_done.load(Ordering::SeqCst) {
            return violation("written", "the writer is not done".into());
        }
        let routed: BTreeSet<EventId> = world
            .event_store()
            .read_all_now(1, usize::MAX)
            .into_iter()
            .filter(|e| e.stream.category() == ROUTED)
            .map(|e| e.event_id)
            .collect();
        let published: BTreeSet<EventId> = world
            .event_bus()
            .messages(TOPIC)
            .iter()
            .filter_map(|d| RelayedEvent::from_delivery(d).map(|e| e.event_id))
            .collect();
        let unpublished = routed.difference(&published).count();
        if unpublished > 0 {
            return violation(
                "published",
                format!("{unpublished} routed events unpublished"),
            );
        }
        let consumed: BTreeSet<EventId> = self
            .shared
            .seen
            .lock()
            .values()
            .flatten()
            .map(|(_, _, id)| *id)
            .collect();
        let unconsumed = routed.difference(&consumed).count();
        if unconsumed > 0 || world.event_bus().lag(GROUP) > 0 {
            return violation(
                "consumed",
                format!(
                    "{unconsumed} unconsumed, lag {}",
                    world.event_bus().lag(GROUP)
                ),
            );
        }
        Ok(())
    }
}

// -- what a run's trace shows ----------------------------------------------------------------

/// Nodes that led, each with the time it first did.
fn leaders(report: &RunReport) -> BTreeMap<String, Duration> {
    let mut leaders = BTreeMap::new();
    for line in report.trace.as_deref().expect("a full trace") {
        if line.text == format!("note: relay {RELAY} leads") {
            let node = line.node.as_deref().expect("a node's note").to_owned();
            leaders.entry(node).or_insert(line.at);
        }
    }
    leaders
}

/// Publications of an event beyond its first.
fn duplicates(world: &RelayWorld) -> usize {
    let shared = world.last();
    let seen = shared.seen.lock();
    let all: Vec<EventId> = seen.values().flatten().map(|(_, _, id)| *id).collect();
    all.len() - all.iter().collect::<BTreeSet<_>>().len()
}

fn split_brain_plan() -> FaultPlan {
    FaultPlan::named("relay-lease-loss-and-crashes")
        .with(
            FaultSpec::new(Fault::Lease(LeaseFaults {
                loss_probability: 0.3,
                zombie_max_ms: 200,
            }))
            .on_nodes(RELAY_NODES),
        )
        .with(
            FaultSpec::new(Fault::Crash {
                per_tick_probability: 0.1,
                min_downtime_ms: 50,
                max_downtime_ms: 400,
            })
            .on_nodes(RELAY_NODES),
        )
}

#[test]
fn a_calm_run_publishes_every_routed_event_exactly_once_in_order() {
    let world = RelayWorld::new(80);
    let report = run(&world, &SimConfig::new(1).with_trace(TraceMode::Full));
    assert!(report.passed(), "{}", report.outcome);
    assert_eq!(leaders(&report).len(), 1, "one leader, never contested");
    let shared = world.last();
    let consumed = shared.seen.lock().values().map(Vec::len).sum::<usize>();
    assert_eq!(consumed, 60, "three in four of 80 events are routed");
    assert_eq!(duplicates(&world), 0);
}

#[test]
fn lease_loss_and_crashes_keep_every_event_published_and_per_key_order() {
    let world = RelayWorld::new(80);
    let (mut both_led, mut duplicated, mut losses, mut crashes) = (0, 0, 0, 0);
    for seed in 0..50 {
        let config = SimConfig::new(seed)
            .with_plan(split_brain_plan())
            .with_trace(TraceMode::Full);
        let report = run(&world, &config);
        assert!(
            report.passed(),
            "seed {seed}: {}\n{}",
            report.outcome,
            report
                .trace_tail(40)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        if leaders(&report).len() == 2 {
            both_led += 1;
        }
        if duplicates(&world) > 0 {
            duplicated += 1;
        }
        losses += report
            .faults
            .iter()
            .filter(|f| f.kind == "lease.loss")
            .count();
        crashes += report
            .faults
            .iter()
            .filter(|f| f.kind == "node.crash")
            .count();
    }
    // The faults fired, the lead moved between the nodes, and the two-leader windows and
    // restarts showed as duplicates (absorbed, since order and completeness held).
    assert!(
        losses > 50 && crashes > 20,
        "losses {losses}, crashes {crashes}"
    );
    assert_eq!(
        both_led, 50,
        "both nodes led in only {both_led} of 50 seeds"
    );
    assert!(duplicated > 0, "no seed republished anything");
}

/// The split-brain plan, plus every relay BUGGIFY point (pauses before publishing and
/// checkpointing, skipped checkpoints) and a flaky store and bus on the relay nodes
/// (refused and unanswered reads, checkpoints and lease calls; refused and unacknowledged
/// publishes).
fn rough_plan() -> FaultPlan {
    split_brain_plan()
        .with(
            FaultSpec::new(Fault::Buggify {
                enable_probability: 1.0,
                fire_probability: 0.3,
            })
            .on_nodes(RELAY_NODES),
        )
        .with(
            FaultSpec::new(Fault::Store(StoreFaults {
                extra_latency_max_ms: 20,
                transient_probability: 0.05,
                timeout_probability: 0.02,
                commit_unknown_probability: 0.02,
            }))
            .on_nodes(RELAY_NODES),
        )
        .with(
            FaultSpec::new(Fault::Bus(BusFaults {
                publish_error_probability: 0.1,
                publish_ack_lost_probability: 0.05,
                ..BusFaults::default()
            }))
            .on_nodes(RELAY_NODES),
        )
}

#[test]
fn the_same_holds_with_buggify_and_a_flaky_store_and_bus() {
    let world = RelayWorld::new(80);
    let mut buggified = 0;
    for seed in 100..130 {
        let report = run(&world, &SimConfig::new(seed).with_plan(rough_plan()));
        assert!(report.passed(), "seed {seed}: {}", report.outcome);
        buggified += report.faults.iter().filter(|f| f.kind == "buggify").count();
    }
    assert!(buggified > 30, "{buggified} buggify firings");
}

#[test]
fn a_relay_without_the_lease_publishes_nothing_until_it_gets_it() {
    let hold = Duration::from_secs(3);
    let world = RelayWorld {
        squatter_holds_for: Some(hold),
        ..RelayWorld::new(40)
    };
    let report = run(&world, &SimConfig::new(3).with_trace(TraceMode::Full));
    // Safety includes "nothing on the topic while the squatter holds the lease".
    assert!(report.passed(), "{}", report.outcome);
    let trace = report.trace.as_deref().expect("a full trace");
    let refused = trace
        .iter()
        .filter(|l| {
            l.node.as_deref().is_some_and(|n| RELAY_NODES.contains(&n))
                && l.text == "lease relay-x acquire -> held by another"
        })
        .count();
    // Both relays kept asking (every 100 ms for ~3 s) and were refused each time.
    assert!(refused > 40, "{refused} refused acquires");
    let leaders = leaders(&report);
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    let first_lead = leaders.values().min().copied().expect("a leader");
    assert!(
        first_lead >= hold,
        "led at {first_lead:?}, before the release"
    );
    // The writer finished long before the lease came free: everything waited for it.
    let shared = world.last();
    assert_eq!(shared.seen.lock().values().map(Vec::len).sum::<usize>(), 30);
}

// -- the checks can fail ---------------------------------------------------------------------

/// The message the relay would publish for `event` (or a forgery of it).
fn published(event: &RecordedEvent, payload: &Payload) -> OutgoingMessage {
    OutgoingMessage {
        topic: TOPIC.into(),
        key: event.stream.as_str().into(),
        payload: payload.clone(),
        headers: Headers::default()
            .with(header::EVENT_ID, event.event_id.to_string())
            .with(header::STREAM, event.stream.as_str())
            .with(header::STREAM_VERSION, event.version.to_string()),
    }
}

#[test]
fn the_invariants_catch_reordering_forgery_and_unrouted_events() {
    let store = InMemoryEventStore::new();
    let tick = |id: u128, stream: &StreamId| {
        let batch = AppendBatch::single(
            stream.clone(),
            ExpectedVersion::Any,
            vec![NewEvent {
                event_id: EventId(id),
                event_type: "Tick".into(),
                schema_version: 1,
                payload: Payload::from_json_text(format!("{{\"i\":{id}}}")),
                metadata: Metadata::default(),
            }],
        );
        store.append_now(&batch).expect("appends");
    };
    let acct = StreamId::of(ROUTED, 1);
    let other = StreamId::of(UNROUTED, 1);
    tick(1, &acct);
    tick(2, &acct);
    tick(3, &other);
    let events = store.read_all_now(1, 10);
    let [v1, v2, unrouted] = [&events[0], &events[1], &events[2]];
    let log = |messages: &[OutgoingMessage]| {
        let bus = InMemoryEventBus::with_partitions(1);
        bus.publish_now(messages);
        check_log(&store, &bus).map_err(|v| v.invariant)
    };
    let as_stored = |e: &RecordedEvent| published(e, &e.payload);
    assert_eq!(
        log(&[as_stored(v1), as_stored(v2), as_stored(v1), as_stored(v2)]),
        Ok(())
    );
    assert_eq!(
        log(&[as_stored(v2), as_stored(v1)]),
        Err("per-key-order".into())
    );
    assert_eq!(
        log(&[
            as_stored(v1),
            as_stored(v1),
            as_stored(v2),
            as_stored(unrouted)
        ]),
        Err("routes".into())
    );
    assert_eq!(
        log(&[published(v1, &Payload::from_json_text("{}"))]),
        Err("published-as-stored".into())
    );

    let order = |versions: &[u64]| {
        let seen: Seen = BTreeMap::from([(
            "c",
            versions
                .iter()
                .map(|v| (acct.clone(), *v, EventId(0)))
                .collect(),
        )]);
        check_consumers(&seen).map_err(|v| v.invariant)
    };
    assert_eq!(order(&[1, 2, 1, 2, 3]), Ok(()));
    assert_eq!(order(&[2, 3, 4]), Ok(()), "a consumer may start anywhere");
    assert_eq!(order(&[1, 3, 2]), Err("consumer-order".into()));
}
