//! `SagaHost` on its own, with a tiny saga on core's `TestRuntime`: memory stays bounded
//! while many sagas run to their end, an evicted saga reloads from its stream and goes
//! on where it was (a duplicate input after the reload changes nothing), a saga waiting
//! on a deadline stays resident and its deadline fires, `deliver` returns only once the
//! reaction is durable, a stale cached instance is caught, and a restarted host re-arms
//! deadlines from the streams.

#[allow(dead_code)]
mod common;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use reprise_core::testing::{TestRuntime, block_on};
use reprise_core::{
    BoxFuture, DispatchError, Dispatcher, Event, EventStore, InMemoryEventStore, Reaction, Saga,
    Spawner, StoreError, StreamId,
};
use reprise_host::{SagaHost, SagaHostOptions};
use serde::{Deserialize, Serialize};

use common::{AppendFault, ScriptedStore, elapsed, platform};

/// Steps a tally takes to complete.
const STEPS: u32 = 3;
/// How long an armed tally waits before it expires.
const EXPIRY: Duration = Duration::from_secs(1);

/// Counts numbered steps, each exactly once and in order; or, once armed, expires.
#[derive(Clone, Debug, Default, PartialEq)]
struct Tally {
    next: u32,
    total: u64,
    done: bool,
    armed: bool,
    expired: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum TallyInput {
    Step { seq: u32, amount: u64 },
    Arm,
    Expire,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum TallyEvent {
    Stepped { seq: u32, amount: u64 },
    Completed,
    Armed,
    Expired,
}

impl Event for TallyEvent {
    fn event_type(&self) -> &'static str {
        match self {
            TallyEvent::Stepped { .. } => "TallyStepped",
            TallyEvent::Completed => "TallyCompleted",
            TallyEvent::Armed => "TallyArmed",
            TallyEvent::Expired => "TallyExpired",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum TallyCommand {
    Note { seq: u32 },
}

impl Saga for Tally {
    const NAME: &'static str = "tally";
    type Input = TallyInput;
    type Event = TallyEvent;
    type Command = TallyCommand;

    fn react(&self, input: &TallyInput) -> Reaction<Self> {
        if self.is_terminal() {
            return Reaction::none();
        }
        match input {
            TallyInput::Step { seq, amount } if *seq == self.next => {
                let reaction = Reaction::none()
                    .event(TallyEvent::Stepped {
                        seq: *seq,
                        amount: *amount,
                    })
                    .command(TallyCommand::Note { seq: *seq });
                if seq + 1 == STEPS {
                    reaction.event(TallyEvent::Completed)
                } else {
                    reaction
                }
            }
            TallyInput::Arm if !self.armed => Reaction::none()
                .event(TallyEvent::Armed)
                .set_deadline("expire", EXPIRY, TallyInput::Expire),
            TallyInput::Expire => Reaction::none().event(TallyEvent::Expired),
            // Duplicates, steps out of order, a second arming.
            _ => Reaction::none(),
        }
    }

    fn apply(&mut self, event: &TallyEvent) {
        match event {
            TallyEvent::Stepped { seq, amount } => {
                self.next = seq + 1;
                self.total += amount;
            }
            TallyEvent::Completed => self.done = true,
            TallyEvent::Armed => self.armed = true,
            TallyEvent::Expired => self.expired = true,
        }
    }

    fn is_terminal(&self) -> bool {
        self.done || self.expired
    }
}

/// Records every command dispatched.
#[derive(Clone, Default)]
struct Commands(Arc<Mutex<Vec<TallyCommand>>>);

impl Dispatcher<TallyCommand> for Commands {
    fn dispatch(&self, command: TallyCommand) -> BoxFuture<'static, Result<(), DispatchError>> {
        self.0.lock().push(command);
        Box::pin(std::future::ready(Ok(())))
    }
}

struct Fixture {
    runtime: Arc<TestRuntime>,
    durable: Arc<InMemoryEventStore>,
    commands: Commands,
}

impl Fixture {
    fn new(seed: u64) -> Self {
        Fixture {
            runtime: TestRuntime::shared(seed),
            durable: Arc::new(InMemoryEventStore::new()),
            commands: Commands::default(),
        }
    }

    fn host(&self, store: Arc<dyn EventStore>, max_instances: usize) -> Arc<SagaHost<Tally>> {
        Arc::new(SagaHost::with_options(
            platform(&self.runtime, store),
            Arc::new(self.commands.clone()),
            SagaHostOptions { max_instances },
        ))
    }

    fn deliver(&self, host: &Arc<SagaHost<Tally>>, id: &str, input: TallyInput) {
        let (host, id) = (Arc::clone(host), id.to_owned());
        block_on(&self.runtime, async move { host.deliver(&id, input).await });
    }

    /// The domain events of saga `id`, as stored.
    fn events(&self, id: &str) -> Vec<TallyEvent> {
        saga_events(&self.durable, id)
    }
}

fn saga_events(store: &InMemoryEventStore, id: &str) -> Vec<TallyEvent> {
    store
        .read_stream_now(&StreamId::of(Tally::NAME, id), 1, usize::MAX)
        .iter()
        .filter(|r| !r.event_type.starts_with("reprise."))
        .map(|r| r.payload.decode().expect("a tally event"))
        .collect()
}

fn step(seq: u32, saga: u32) -> TallyInput {
    TallyInput::Step {
        seq,
        amount: amount(seq, saga),
    }
}

fn amount(seq: u32, saga: u32) -> u64 {
    u64::from(saga * 10 + seq + 1)
}

#[test]
fn many_sagas_finish_in_bounded_memory_and_evicted_ones_reload_from_their_streams() {
    const MAX: usize = 4;
    const SAGAS: u32 = 30;
    let f = Fixture::new(1);
    let host = f.host(f.durable.clone(), MAX);
    let mut reloads = 0;
    for seq in 0..STEPS {
        for saga in 0..SAGAS {
            let id = format!("s{saga}");
            if seq > 0 {
                // 29 other sagas were fed since: this one is no longer in memory.
                assert!(!host.instance_ids().contains(&id), "{id} still resident");
                reloads += 1;
                // The previous input again, straight after the reload: a duplicate.
                f.deliver(&host, &id, step(seq - 1, saga));
                assert_eq!(
                    f.events(&id).len(),
                    seq as usize,
                    "{id}: duplicate reaction"
                );
            }
            f.deliver(&host, &id, step(seq, saga));
            let resident = host.instance_ids();
            assert!(
                resident.len() <= MAX,
                "{} instances: {resident:?}",
                resident.len()
            );
            assert!(resident.contains(&id), "the instance just fed stays");
        }
    }
    assert_eq!(reloads, (STEPS - 1) * SAGAS);
    for saga in 0..SAGAS {
        let id = format!("s{saga}");
        let mut expected: Vec<TallyEvent> = (0..STEPS)
            .map(|seq| TallyEvent::Stepped {
                seq,
                amount: amount(seq, saga),
            })
            .collect();
        expected.push(TallyEvent::Completed);
        assert_eq!(f.events(&id), expected, "{id}");
    }
    // Every step's command went out (at least once: a reload re-sends the last ones).
    let commands = f.commands.0.lock();
    for seq in 0..STEPS {
        let sent = commands
            .iter()
            .filter(|c| **c == TallyCommand::Note { seq })
            .count();
        assert!(sent >= SAGAS as usize, "step {seq}: {sent} commands");
    }
    drop(commands);
    // A finished saga, evicted and fed again, stays finished.
    f.deliver(&host, "s0", step(0, 0));
    assert_eq!(f.events("s0").len(), STEPS as usize + 1);
}

#[test]
fn a_saga_waiting_on_a_deadline_stays_resident_and_its_deadline_fires() {
    const MAX: usize = 2;
    let f = Fixture::new(2);
    let host = f.host(f.durable.clone(), MAX);
    f.deliver(&host, "d", TallyInput::Arm);
    let armed_at = elapsed(&f.runtime);
    for saga in 0..10 {
        f.deliver(&host, &format!("s{saga}"), step(0, saga));
        let resident = host.instance_ids();
        assert!(
            resident.contains(&"d".to_owned()),
            "evicted with a pending deadline"
        );
        assert!(resident.len() <= MAX, "{resident:?}");
    }
    f.runtime.advance(
        (armed_at + EXPIRY - Duration::from_millis(1)).saturating_sub(elapsed(&f.runtime)),
    );
    assert_eq!(f.events("d"), [TallyEvent::Armed], "fired early");
    f.runtime.advance(Duration::from_millis(1));
    assert_eq!(f.events("d"), [TallyEvent::Armed, TallyEvent::Expired]);
    // Expired, it is idle: evictable like any other.
    for saga in 10..13 {
        f.deliver(&host, &format!("s{saga}"), step(0, saga));
    }
    assert!(!host.instance_ids().contains(&"d".to_owned()));
    assert!(host.instance_ids().len() <= MAX);
}

#[test]
fn deliver_returns_only_once_the_reaction_is_durable() {
    let f = Fixture::new(3);
    // Appends apply after 30 ms and answer 20 ms later.
    let store = ScriptedStore::new(Arc::clone(&f.durable)).with_latency(
        f.runtime.clone(),
        Duration::from_millis(30),
        Duration::from_millis(20),
    );
    let host = f.host(Arc::new(store), 8);
    // When `deliver` returned, and the saga's events at that moment.
    type Returned = Option<(Duration, Vec<TallyEvent>)>;
    let returned: Arc<Mutex<Returned>> = Arc::default();
    let (slot, runtime, durable) = (
        Arc::clone(&returned),
        Arc::clone(&f.runtime),
        Arc::clone(&f.durable),
    );
    f.runtime.spawn(
        "consumer",
        Box::pin(async move {
            host.deliver("x", step(0, 0)).await;
            *slot.lock() = Some((elapsed(&runtime), saga_events(&durable, "x")));
        }),
    );
    f.runtime.run_until_idle();
    assert!(returned.lock().is_none());
    f.runtime.advance(Duration::from_millis(30));
    assert_eq!(f.events("x").len(), 1, "written at 30 ms");
    assert!(returned.lock().is_none(), "returned before the saga knew");
    f.runtime.advance(Duration::from_millis(19));
    assert!(returned.lock().is_none(), "returned before the saga knew");
    f.runtime.advance(Duration::from_millis(1));
    let (at, events) = returned.lock().clone().expect("returned");
    assert_eq!(at, Duration::from_millis(50));
    assert_eq!(
        events,
        [TallyEvent::Stepped {
            seq: 0,
            amount: amount(0, 0)
        }]
    );
}

#[test]
fn deliver_waits_through_refused_and_unanswered_appends_and_reacts_once() {
    let f = Fixture::new(4);
    let store = ScriptedStore::new(Arc::clone(&f.durable));
    store.push(AppendFault::Refuse(StoreError::Transient("busy".into())));
    store.push(AppendFault::ApplyThenTimeout);
    let host = f.host(Arc::new(store.clone()), 8);
    f.deliver(&host, "x", step(0, 0));
    assert_eq!(
        store.appends(),
        2,
        "refused once, then written with the answer lost"
    );
    assert_eq!(
        f.events("x"),
        [TallyEvent::Stepped {
            seq: 0,
            amount: amount(0, 0)
        }]
    );
    assert_eq!(
        f.commands.0.lock().as_slice(),
        [TallyCommand::Note { seq: 0 }]
    );
    f.deliver(&host, "x", step(1, 0));
    assert_eq!(f.events("x").len(), 2);
}

#[test]
fn a_stale_cached_instance_is_reloaded_before_it_judges_an_input() {
    // Two hosts share the saga (one consumer group, partitions moving between them).
    let f = Fixture::new(5);
    let a = f.host(f.durable.clone(), 8);
    let b = f.host(f.durable.clone(), 8);
    // A caches the saga before it started (an input it could not use yet).
    f.deliver(&a, "x", step(1, 0));
    assert!(f.events("x").is_empty());
    assert!(a.instance_ids().contains(&"x".to_owned()));
    // B moves it on.
    f.deliver(&b, "x", step(0, 0));
    // A's cached instance would call step 1 out of order and drop it.
    f.deliver(&a, "x", step(1, 0));
    assert_eq!(
        f.events("x"),
        [
            TallyEvent::Stepped {
                seq: 0,
                amount: amount(0, 0)
            },
            TallyEvent::Stepped {
                seq: 1,
                amount: amount(1, 0)
            }
        ]
    );
}

#[test]
fn a_restarted_host_recovers_its_sagas_and_rearms_their_deadlines() {
    let durable = Arc::new(InMemoryEventStore::new());
    {
        let before = Fixture {
            durable: Arc::clone(&durable),
            ..Fixture::new(6)
        };
        let host = before.host(durable.clone(), 8);
        before.deliver(&host, "d", TallyInput::Arm);
        before.deliver(&host, "s", step(0, 0));
        // The process dies: its runtime is never driven again.
    }
    let after = Fixture {
        durable: Arc::clone(&durable),
        ..Fixture::new(7)
    };
    let host = after.host(durable.clone(), 8);
    let recovering = Arc::clone(&host);
    block_on(
        &after.runtime,
        async move { recovering.recover_all().await },
    );
    assert_eq!(host.instance_ids(), ["d", "s"]);
    after.runtime.advance(EXPIRY - Duration::from_millis(1));
    assert_eq!(after.events("d"), [TallyEvent::Armed]);
    after.runtime.advance(Duration::from_millis(1));
    assert_eq!(after.events("d"), [TallyEvent::Armed, TallyEvent::Expired]);
    // The other one goes on where it was.
    after.deliver(&host, "s", step(1, 0));
    assert_eq!(after.events("s").len(), 2);
}
