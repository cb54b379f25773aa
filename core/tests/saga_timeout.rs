//! A saga's deadline drives compensation on the virtual clock, and survives a crash:
//! the deadline is persisted in the saga's stream, so a new process that recovers the
//! saga re-arms it for the time remaining.
//!
//! The saga: reserve stock for an order, then wait for payment. Payment in time → ship.
//! No payment within 30 minutes → release the stock (compensation).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use reprise_core::saga::SagaEnv;
use reprise_core::testing::TestRuntime;
use reprise_core::{
    Dispatcher, Effects, Event, EventStore, InMemoryEventStore, Reaction, Reducer, Router, Saga,
    SagaAction, SagaReducer, SagaState, SharedRuntime, Store, Timestamp, effects,
};
use serde::{Deserialize, Serialize};

const PAYMENT_WINDOW: Duration = Duration::from_secs(30 * 60);

#[derive(Clone, Debug, Default, PartialEq)]
enum Checkout {
    #[default]
    Idle,
    AwaitingPayment {
        order: String,
    },
    Shipped,
    Compensated,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum CheckoutInput {
    Start { order: String },
    PaymentReceived,
    PaymentTimedOut,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum CheckoutEvent {
    Started { order: String },
    Paid,
    TimedOut,
}

impl Event for CheckoutEvent {
    fn event_type(&self) -> &'static str {
        match self {
            CheckoutEvent::Started { .. } => "CheckoutStarted",
            CheckoutEvent::Paid => "CheckoutPaid",
            CheckoutEvent::TimedOut => "CheckoutTimedOut",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum CheckoutCommand {
    Reserve { order: String },
    Release { order: String },
    Ship { order: String },
}

impl Saga for Checkout {
    const NAME: &'static str = "checkout";
    type Input = CheckoutInput;
    type Event = CheckoutEvent;
    type Command = CheckoutCommand;

    fn react(&self, input: &CheckoutInput) -> Reaction<Self> {
        match (self, input) {
            (Checkout::Idle, CheckoutInput::Start { order }) => Reaction::none()
                .event(CheckoutEvent::Started {
                    order: order.clone(),
                })
                .command(CheckoutCommand::Reserve {
                    order: order.clone(),
                })
                .set_deadline("payment", PAYMENT_WINDOW, CheckoutInput::PaymentTimedOut),
            (Checkout::AwaitingPayment { order }, CheckoutInput::PaymentReceived) => {
                Reaction::none()
                    .event(CheckoutEvent::Paid)
                    .command(CheckoutCommand::Ship {
                        order: order.clone(),
                    })
                    .clear_deadline("payment")
            }
            (Checkout::AwaitingPayment { order }, CheckoutInput::PaymentTimedOut) => {
                Reaction::none()
                    .event(CheckoutEvent::TimedOut)
                    .command(CheckoutCommand::Release {
                        order: order.clone(),
                    })
            }
            // Duplicates and late inputs (a payment after the timeout, say): nothing to do.
            _ => Reaction::none(),
        }
    }

    fn apply(&mut self, event: &CheckoutEvent) {
        *self = match event {
            CheckoutEvent::Started { order } => Checkout::AwaitingPayment {
                order: order.clone(),
            },
            CheckoutEvent::Paid => Checkout::Shipped,
            CheckoutEvent::TimedOut => Checkout::Compensated,
        };
    }

    fn is_terminal(&self) -> bool {
        matches!(self, Checkout::Shipped | Checkout::Compensated)
    }
}

// ---- the inventory the saga commands: a real store, reached through a Router -----------

#[derive(Clone, Debug, Default, PartialEq)]
struct Inventory {
    reserved: BTreeSet<String>,
    released: BTreeSet<String>,
    shipped: BTreeSet<String>,
    commands_seen: usize,
}

/// The stock service the saga commands.
#[derive(Debug)]
struct InventoryService;

impl Reducer for InventoryService {
    type State = Inventory;
    type Action = CheckoutCommand;
    type Env = ();

    fn reduce(
        &self,
        s: &mut Inventory,
        command: CheckoutCommand,
        (): &(),
    ) -> Effects<CheckoutCommand> {
        s.commands_seen += 1;
        // Commands arrive at least once: sets make them idempotent.
        match command {
            CheckoutCommand::Reserve { order } => s.reserved.insert(order),
            CheckoutCommand::Release { order } => s.released.insert(order),
            CheckoutCommand::Ship { order } => s.shipped.insert(order),
        };
        effects![]
    }
}

/// One process: a runtime, the inventory and the saga store, sharing a durable event
/// store with whatever process came before.
struct Process {
    runtime: Arc<TestRuntime>,
    inventory: Store<InventoryService>,
    saga: Store<SagaReducer<Checkout>>,
}

impl Process {
    /// Starts a process whose clock reads `started_at` past the simulation epoch (all
    /// processes share one wall clock; each `TestRuntime` starts at the epoch).
    fn start(seed: u64, events: &Arc<InMemoryEventStore>, started_at: Duration) -> Process {
        let runtime = TestRuntime::shared(seed);
        runtime.advance(started_at);
        let shared: SharedRuntime = runtime.clone();
        let inventory =
            Store::builder(InventoryService, Inventory::default(), (), shared.clone()).build();
        let router: Arc<dyn Dispatcher<CheckoutCommand>> = Arc::new(
            Router::new().route(inventory.clone(), Ok::<CheckoutCommand, CheckoutCommand>),
        );
        let durable: Arc<dyn EventStore> = events.clone();
        let env = SagaEnv::new(shared.clone(), Arc::clone(&durable), router);
        let saga = Store::builder(
            SagaReducer::<Checkout>::default(),
            SagaState::new("order-1"),
            env,
            shared,
        )
        .event_store(durable)
        .build();
        drop(saga.send(SagaAction::Recover));
        runtime.run_until_idle();
        assert!(saga.with_state(|s| s.recovered && s.failure.is_none()));
        Process {
            runtime,
            inventory,
            saga,
        }
    }

    fn input(&self, input: CheckoutInput) {
        drop(self.saga.send(SagaAction::Input(input)));
        self.runtime.run_until_idle();
    }

    fn saga(&self) -> SagaState<Checkout> {
        self.saga.state()
    }
}

fn order() -> String {
    "order-1".into()
}

#[test]
fn no_payment_before_the_deadline_releases_the_stock() {
    let events = Arc::new(InMemoryEventStore::new());
    let process = Process::start(1, &events, Duration::ZERO);
    process.input(CheckoutInput::Start { order: order() });
    assert_eq!(
        process.inventory.state().reserved,
        BTreeSet::from([order()])
    );
    let due = Timestamp::SIMULATION_EPOCH + PAYMENT_WINDOW;
    assert_eq!(
        process.saga().deadlines.get("payment").map(|(at, _)| *at),
        Some(due)
    );

    process
        .runtime
        .advance(PAYMENT_WINDOW - Duration::from_secs(1));
    assert!(
        process.inventory.state().released.is_empty(),
        "compensated before the deadline"
    );
    process.runtime.advance(Duration::from_secs(1));

    let saga = process.saga();
    assert_eq!(saga.saga, Checkout::Compensated);
    assert!(
        saga.deadlines.is_empty(),
        "a fired deadline is cleared durably"
    );
    assert_eq!(
        process.inventory.state().released,
        BTreeSet::from([order()])
    );
    assert!(process.inventory.state().shipped.is_empty());
    assert_eq!(process.saga.in_flight(), 0);
}

#[test]
fn payment_in_time_clears_the_deadline_and_nothing_is_compensated() {
    let events = Arc::new(InMemoryEventStore::new());
    let process = Process::start(1, &events, Duration::ZERO);
    process.input(CheckoutInput::Start { order: order() });
    process.runtime.advance(Duration::from_secs(60));
    process.input(CheckoutInput::PaymentReceived);
    process.runtime.advance(PAYMENT_WINDOW * 2);
    assert_eq!(process.saga().saga, Checkout::Shipped);
    let inventory = process.inventory.state();
    assert_eq!((inventory.shipped.len(), inventory.released.len()), (1, 0));
    // A late timeout input is recognised by state and ignored.
    process.input(CheckoutInput::PaymentTimedOut);
    assert_eq!(process.saga().saga, Checkout::Shipped);
    assert_eq!(process.saga.in_flight(), 0);
}

#[test]
fn a_persisted_deadline_still_fires_after_a_restart() {
    let events = Arc::new(InMemoryEventStore::new());
    let before_crash = Duration::from_secs(10 * 60);
    {
        let first = Process::start(1, &events, Duration::ZERO);
        first.input(CheckoutInput::Start { order: order() });
        first.runtime.advance(before_crash);
        assert_eq!(
            first.saga().saga,
            Checkout::AwaitingPayment { order: order() }
        );
        // The process dies here: its runtime is never driven again, so its armed timer
        // can never fire. Only the event store survives.
    }

    let second = Process::start(2, &events, before_crash);
    let saga = second.saga();
    assert_eq!(saga.saga, Checkout::AwaitingPayment { order: order() });
    let due = Timestamp::SIMULATION_EPOCH + PAYMENT_WINDOW;
    assert_eq!(
        saga.deadlines.get("payment").map(|(at, _)| *at),
        Some(due),
        "the deadline is durable"
    );
    // Recovery re-sent the last commands (they may have been lost with the crash); the
    // inventory deduplicates.
    assert_eq!(second.inventory.state().reserved, BTreeSet::from([order()]));
    assert_eq!(
        second.runtime.pending_timers(),
        1,
        "the deadline is re-armed"
    );

    // The deadline keeps its original due time: 20 minutes remain, not 30.
    second
        .runtime
        .advance(PAYMENT_WINDOW - before_crash - Duration::from_secs(1));
    assert!(second.inventory.state().released.is_empty());
    second.runtime.advance(Duration::from_secs(1));
    assert_eq!(second.saga().saga, Checkout::Compensated);
    assert_eq!(second.inventory.state().released, BTreeSet::from([order()]));

    // And a third process finds a finished saga: no timer, no command re-sent.
    let third = Process::start(3, &events, PAYMENT_WINDOW * 2);
    assert_eq!(third.saga().saga, Checkout::Compensated);
    assert_eq!(third.runtime.pending_timers(), 0);
    assert_eq!(third.inventory.state().commands_seen, 0);
}

#[test]
fn a_deadline_already_due_at_recovery_fires_at_once() {
    let events = Arc::new(InMemoryEventStore::new());
    {
        let first = Process::start(1, &events, Duration::ZERO);
        first.input(CheckoutInput::Start { order: order() });
    }
    // Down for longer than the payment window.
    let late = Process::start(2, &events, PAYMENT_WINDOW + Duration::from_secs(3600));
    late.runtime.advance(Duration::ZERO);
    assert_eq!(late.saga().saga, Checkout::Compensated);
    assert_eq!(late.inventory.state().released, BTreeSet::from([order()]));
}
