//! Outages ridden out: the store unreachable for seconds, then the bus, in the middle of
//! a run — as a PostgreSQL restart and a broker restart look to a production service —
//! and the host's loops keep going instead of giving up.
//!
//! In the simulator: a client places commands through the command handler (as the
//! checkout's workload does), the relay publishes the store's log under its lease, and a
//! consumer applies each message to a second aggregate with its inbox marker. A script
//! cuts every node off from the store for 4 s (a PostgreSQL restart: the client's
//! placements wait), then the relay alone while the client writes on (its reads fail),
//! then the consumer alone while messages flow (its handler's appends fail), and finally
//! every node off from the bus for 3 s (a broker restart: publishes fail, deliveries stop);
//! the links come back on their own (before the liveness phase's heal). A loop that gives
//! up on an error — a relay that stops after a failed read or publish, a handler that
//! abandons a command whose load or append failed, a client that drops a placement — never
//! comes back: its task is gone or stuck, and the heal restarts only crashed nodes. So the
//! liveness condition (every placement made, published and applied exactly once) fails
//! for any of them (checked by hand: each of those three mutations makes the run hang);
//! and the recorded times show each outage did stop the work while it lasted. The
//! simulated bus partition holds deliveries back rather than failing `next`, so the
//! consume loop's answer to each receive error is tested in `tests/consume.rs` instead.

#[allow(dead_code)]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use reprise_core::{Aggregate, BoxFuture, Delivery, Timestamp};
use reprise_host::consume;
use reprise_host::relay::{self, RelayedEvent};
use reprise_host::{
    CommandHandler, ConsumerOptions, Handling, MessageHandler, Platform, RelayOptions, Route,
};
use reprise_sim::{
    Direction, NodeContext, NodeOptions, Peer, Scenario, ScenarioRun, SimConfig, Violation, World,
    WorldView, run,
};

use common::{Counter, CounterCommand, counter_events};

const TOPIC: &str = "counters";
const GROUP: &str = "mirror";
/// The client's counter; the consumer mirrors its additions into [`MIRROR`].
const SOURCE: &str = "source";
const MIRROR: &str = "mirror";
const PLACEMENTS: u64 = 60;
const NODES: [&str; 3] = ["client", "relay", "consumer"];

/// The store outage: every node cut off from it for this long, from this moment.
const STORE_DOWN_AT: Duration = Duration::from_millis(500);
const STORE_DOWN_FOR: Duration = Duration::from_secs(4);
/// The relay alone cut off from the store, then the consumer alone.
const RELAY_CUT_AT: Duration = Duration::from_secs(5);
const CONSUMER_CUT_AT: Duration = Duration::from_millis(7_000);
const CUT_FOR: Duration = Duration::from_millis(1_500);
/// The bus outage: every node cut off from it.
const BUS_DOWN_AT: Duration = Duration::from_secs(10);
const BUS_DOWN_FOR: Duration = Duration::from_secs(3);

/// No node is crashed, paused or skewed: the outages are the only faults.
const STEADY: NodeOptions = NodeOptions {
    crashable: false,
    pausable: false,
    clock_skew: false,
};

fn platform(ctx: &NodeContext) -> Platform {
    let notes = ctx.clone();
    Platform::new(ctx.runtime(), ctx.event_store(), ctx.event_bus())
        .with_notes(Arc::new(move |text| notes.note_fmt(text)))
}

/// What the nodes tell the checker: when (since the run's start) each placement and each
/// mirrored message completed.
#[derive(Debug, Default)]
struct Shared {
    start: Mutex<Option<Timestamp>>,
    client_done: AtomicBool,
    placed_at: Mutex<Vec<Duration>>,
    mirrored_at: Mutex<Vec<Duration>>,
}

impl Shared {
    fn since_start(&self, ctx: &NodeContext) -> Duration {
        let now = ctx.runtime().now();
        let start = *self.start.lock().get_or_insert(now);
        now.saturating_since(start)
    }
}

/// Places `PLACEMENTS` additions of 1, 2, 3, … on the source counter, 200 ms apart,
/// each retried until the store gives an answer.
async fn place(ctx: NodeContext, shared: Arc<Shared>) {
    // The client boots with the run: its clock's reading now is the run's start.
    *shared.start.lock() = Some(ctx.runtime().now());
    let platform = platform(&ctx);
    let counters = CommandHandler::<Counter>::new(&platform);
    for amount in 1..=PLACEMENTS {
        counters
            .execute_until_done(SOURCE, &CounterCommand::Add(amount), None)
            .await;
        let at = shared.since_start(&ctx);
        shared.placed_at.lock().push(at);
        ctx.sleep(Duration::from_millis(200)).await;
    }
    shared.client_done.store(true, Ordering::SeqCst);
}

/// Applies each published addition to the source counter to the mirror, with the inbox
/// marker (so a redelivery after an outage changes nothing).
struct Mirror {
    ctx: NodeContext,
    counters: CommandHandler<Counter>,
    shared: Arc<Shared>,
}

impl MessageHandler for Mirror {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let event = RelayedEvent::from_delivery(delivery).expect("a relayed event");
            if event.stream != Counter::stream_id(SOURCE) {
                return;
            }
            let common::CounterEvent::Added { amount, .. } =
                event.payload.decode().expect("a counter event");
            let handling = Handling {
                consumer: GROUP,
                message: event.event_id,
            };
            let decided = self
                .counters
                .execute_until_done(MIRROR, &CounterCommand::Add(amount), Some(handling))
                .await;
            if !decided.duplicate {
                let at = self.shared.since_start(&self.ctx);
                self.shared.mirrored_at.lock().push(at);
            }
        })
    }
}

struct Outages {
    last: Mutex<Option<Arc<Shared>>>,
}

impl Scenario for Outages {
    fn name(&self) -> &'static str {
        "outages"
    }

    fn description(&self) -> &'static str {
        "a client, a relay and a consumer through a store outage, then a bus outage"
    }

    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        let shared = Arc::new(Shared::default());
        *self.last.lock() = Some(Arc::clone(&shared));
        let client = Arc::clone(&shared);
        world.add_node("client", STEADY, move |ctx| {
            ctx.spawn("client", place(ctx.clone(), Arc::clone(&client)));
        });
        world.add_node("relay", STEADY, |ctx| {
            let options = Arc::new(RelayOptions::new(
                "counters",
                vec![Route::new(Counter::CATEGORY, TOPIC)],
            ));
            let lease = ctx.lease(&options.lease_name());
            ctx.spawn("relay", relay::run(platform(&ctx), options, lease));
        });
        let mirror = Arc::clone(&shared);
        world.add_node("consumer", STEADY, move |ctx| {
            let platform = platform(&ctx);
            let handler = Arc::new(Mirror {
                ctx: ctx.clone(),
                counters: CommandHandler::new(&platform),
                shared: Arc::clone(&mirror),
            });
            ctx.spawn(
                "consumer",
                consume::run(platform, ConsumerOptions::new(GROUP, &[TOPIC]), handler),
            );
        });
        for node in NODES {
            world.at(STORE_DOWN_AT).partition_for(
                node,
                Peer::EventStore,
                Direction::Both,
                STORE_DOWN_FOR,
            );
            world.at(BUS_DOWN_AT).partition_for(
                node,
                Peer::EventBus,
                Direction::Both,
                BUS_DOWN_FOR,
            );
        }
        world
            .at(RELAY_CUT_AT)
            .partition_for("relay", Peer::EventStore, Direction::Both, CUT_FOR);
        world.at(CONSUMER_CUT_AT).partition_for(
            "consumer",
            Peer::EventStore,
            Direction::Both,
            CUT_FOR,
        );
        Box::new(Checker { shared })
    }
}

struct Checker {
    shared: Arc<Shared>,
}

impl ScenarioRun for Checker {
    fn check_safety(&self, world: &WorldView<'_>) -> Result<(), Violation> {
        // Exactly once: the mirror never runs ahead of the source.
        let total = |id| -> u64 {
            counter_events(world.event_store(), id)
                .iter()
                .map(|(_, common::CounterEvent::Added { amount, .. })| amount)
                .sum()
        };
        let (source, mirror) = (total(SOURCE), total(MIRROR));
        if mirror > source {
            return Err(Violation::new(
                "mirrored-once",
                format!("mirror {mirror} exceeds source {source}"),
            ));
        }
        Ok(())
    }

    fn check_liveness(&self, world: &WorldView<'_>) -> Result<(), Violation> {
        if !self.shared.client_done.load(Ordering::SeqCst) {
            return Err(Violation::new(
                "placed",
                format!(
                    "{} of {PLACEMENTS} placements made",
                    self.shared.placed_at.lock().len()
                ),
            ));
        }
        let mirrored = counter_events(world.event_store(), MIRROR);
        let total: u64 = mirrored
            .iter()
            .map(|(_, common::CounterEvent::Added { amount, .. })| amount)
            .sum();
        let expected = PLACEMENTS * (PLACEMENTS + 1) / 2;
        if mirrored.len() as u64 != PLACEMENTS
            || total != expected
            || world.event_bus().lag(GROUP) > 0
        {
            return Err(Violation::new(
                "mirrored",
                format!(
                    "{} additions mirrored (total {total} of {expected}), lag {}",
                    mirrored.len(),
                    world.event_bus().lag(GROUP)
                ),
            ));
        }
        Ok(())
    }
}

/// Completions strictly inside `(from, to)`.
fn inside(times: &[Duration], from: Duration, to: Duration) -> usize {
    times.iter().filter(|t| **t > from && **t < to).count()
}

#[test]
fn the_host_rides_out_a_store_outage_and_a_bus_outage() {
    let scenario = Outages {
        last: Mutex::default(),
    };
    for seed in 0..5 {
        let config = SimConfig::new(seed).with_fault_window(Duration::from_secs(30));
        let report = run(&scenario, &config);
        assert!(report.passed(), "seed {seed}: {}", report.outcome);
        let scripted = report
            .faults
            .iter()
            .filter(|f| f.kind == "script.partition")
            .count();
        assert_eq!(
            scripted,
            2 * NODES.len() + 2,
            "seed {seed}: every outage fired"
        );

        let shared = scenario.last.lock().clone().expect("a run");
        let placed = shared.placed_at.lock().clone();
        let mirrored = shared.mirrored_at.lock().clone();
        // The outages bit: nothing completed while the store was unreachable (a margin
        // for an operation already past the link when it was cut), work did complete
        // before and after, and messages stopped flowing while the bus was.
        let store_up = STORE_DOWN_AT + STORE_DOWN_FOR;
        let margin = Duration::from_millis(100);
        assert_eq!(
            inside(&placed, STORE_DOWN_AT + margin, store_up),
            0,
            "seed {seed}: placements during the store outage: {placed:?}"
        );
        assert_eq!(
            inside(&mirrored, STORE_DOWN_AT + margin, store_up),
            0,
            "seed {seed}: {mirrored:?}"
        );
        assert!(placed.iter().any(|t| *t < STORE_DOWN_AT), "seed {seed}");
        assert!(placed.iter().any(|t| *t >= store_up), "seed {seed}");
        let bus_up = BUS_DOWN_AT + BUS_DOWN_FOR;
        // A delivery received just before the bus went down may still be handled after:
        // a second of grace (the longest backoff pause).
        assert_eq!(
            inside(&mirrored, BUS_DOWN_AT + Duration::from_secs(1), bus_up),
            0,
            "seed {seed}: messages mirrored during the bus outage: {mirrored:?}"
        );
        assert!(
            inside(&placed, RELAY_CUT_AT, RELAY_CUT_AT + CUT_FOR) > 0
                && inside(&placed, CONSUMER_CUT_AT, CONSUMER_CUT_AT + CUT_FOR) > 0,
            "seed {seed}: the client kept placing while relay and consumer were cut off: {placed:?}"
        );
        assert_eq!(
            inside(
                &mirrored,
                CONSUMER_CUT_AT + margin,
                CONSUMER_CUT_AT + CUT_FOR
            ),
            0,
            "seed {seed}: mirrored while the consumer was cut off from the store: {mirrored:?}"
        );
        assert!(
            inside(&placed, BUS_DOWN_AT, bus_up) > 0,
            "seed {seed}: the client kept placing while the bus was down: {placed:?}"
        );
        assert!(
            mirrored.iter().any(|t| *t >= bus_up),
            "seed {seed}: what was placed during the bus outage was mirrored after it"
        );
    }
}
