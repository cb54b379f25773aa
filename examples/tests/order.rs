//! The order aggregate three ways: `decide`/`apply` directly, inside a `Store` through
//! `AggregateReducer` (tested exhaustively with `TestStore`), and through a `Repository`.

use std::sync::Arc;

use reprise_core::aggregate::{AggregateEnv, InFlight};
use reprise_core::testing::{TestRuntime, TestStore, block_on};
use reprise_core::{
    Aggregate, AggregateAction, AggregateReducer, AggregateRoot, CommandError, EffectDescription,
    Entropy, EventId, EventStore, ExpectedVersion, InMemoryEventStore, Metadata, Repository,
    SharedRuntime,
};
use reprise_examples::order::{
    Order, OrderCommand, OrderError, OrderEvent, OrderStatus, order_store,
};

fn place(customer: &str) -> OrderCommand {
    OrderCommand::Place {
        customer: customer.into(),
    }
}

fn add(sku: &str, quantity: u32, unit_price_cents: u64) -> OrderCommand {
    OrderCommand::AddLine {
        sku: sku.into(),
        quantity,
        unit_price_cents,
    }
}

/// Replays `commands` through `decide`/`apply`, asserting the invariants at every step.
fn replay(commands: &[OrderCommand]) -> Result<Order, OrderError> {
    let mut order = Order::default();
    for command in commands {
        for event in order.decide(command)? {
            order.apply(&event);
        }
        order.check_invariants().unwrap();
    }
    Ok(order)
}

// ---------------------------------------------------------------------------------------
// decide / apply
// ---------------------------------------------------------------------------------------

#[test]
fn lines_add_up_to_the_total() {
    let order = replay(&[place("ada"), add("tea", 2, 350), add("cup", 1, 1_200)]).unwrap();
    assert_eq!(order.total_cents, 1_900);
    let order = replay(&[
        place("ada"),
        add("tea", 2, 350),
        OrderCommand::RemoveLine { sku: "tea".into() },
    ])
    .unwrap();
    assert_eq!((order.total_cents, order.lines.len()), (0, 0));
}

#[test]
fn business_rules_refuse_with_typed_errors() {
    let placed = [place("ada")];
    let submitted = [place("ada"), add("tea", 1, 350), OrderCommand::Submit];
    let cases: Vec<(Vec<OrderCommand>, OrderError)> = vec![
        (
            vec![add("tea", 1, 1)],
            OrderError::NotOpen(OrderStatus::New),
        ),
        (vec![place("  ")], OrderError::NoCustomer),
        (vec![place("ada"), place("bob")], OrderError::AlreadyPlaced),
        (
            [&placed[..], &[add("tea", 0, 350)]].concat(),
            OrderError::ZeroQuantity,
        ),
        (
            [&placed[..], &[add("tea", 1, 1), add("tea", 1, 1)]].concat(),
            OrderError::LineExists("tea".into()),
        ),
        (
            [
                &placed[..],
                &[OrderCommand::RemoveLine { sku: "tea".into() }],
            ]
            .concat(),
            OrderError::NoSuchLine("tea".into()),
        ),
        (
            [&placed[..], &[add("gold", u32::MAX, u64::MAX)]].concat(),
            OrderError::AmountTooLarge,
        ),
        (
            [&placed[..], &[add("a", 1, u64::MAX), add("b", 1, 1)]].concat(),
            OrderError::AmountTooLarge,
        ),
        (
            [&placed[..], &[OrderCommand::Submit]].concat(),
            OrderError::EmptyOrder,
        ),
        (
            [&submitted[..], &[add("cup", 1, 1)]].concat(),
            OrderError::NotOpen(OrderStatus::Submitted),
        ),
        (
            [
                &submitted[..],
                &[OrderCommand::RemoveLine { sku: "tea".into() }],
            ]
            .concat(),
            OrderError::NotOpen(OrderStatus::Submitted),
        ),
        (
            [
                &submitted[..],
                &[
                    OrderCommand::Cancel { reason: "x".into() },
                    OrderCommand::Cancel { reason: "y".into() },
                ],
            ]
            .concat(),
            OrderError::AlreadyClosed(OrderStatus::Cancelled),
        ),
    ];
    for (commands, expected) in cases {
        assert_eq!(replay(&commands), Err(expected.clone()), "{commands:?}");
    }
}

#[test]
fn an_order_holds_a_bounded_number_of_lines() {
    let mut commands = vec![place("ada")];
    commands
        .extend((0..reprise_examples::order::MAX_LINES).map(|i| add(&format!("sku-{i}"), 1, 1)));
    let full = replay(&commands).unwrap();
    assert_eq!(
        full.decide(&add("one-more", 1, 1)),
        Err(OrderError::TooManyLines)
    );
}

// ---------------------------------------------------------------------------------------
// In a Store, through AggregateReducer
// ---------------------------------------------------------------------------------------

/// Event ids come from the environment's entropy. Giving the aggregate its own seeded
/// source lets the test predict them with a twin of that source.
const ID_SEED: u64 = 7;

fn order_test_store(id: &str) -> TestStore<AggregateReducer<Order>> {
    TestStore::build(
        AggregateReducer::default(),
        AggregateRoot::new(id),
        |deps| {
            AggregateEnv::new(
                Arc::new(TestRuntime::new(ID_SEED)),
                deps.event_store.clone(),
            )
        },
    )
}

fn is_append(
    effect: &EffectDescription,
    stream: &str,
    expected: ExpectedVersion,
    event_types: &[&str],
) -> bool {
    let EffectDescription::Append(batch) = effect else {
        return false;
    };
    let [append] = batch.streams.as_slice() else {
        return false;
    };
    let types: Vec<&str> = append.events.iter().map(|e| &*e.event_type).collect();
    append.stream.as_str() == stream && append.expected == expected && types == event_types
}

#[test]
fn a_command_changes_state_only_after_its_events_are_appended() {
    let mut store = order_test_store("42");
    let ids = TestRuntime::new(ID_SEED);
    let placed = OrderEvent::Placed {
        customer: "ada".into(),
    };

    // The first command hydrates the aggregate from its (empty) stream.
    store.send(AggregateAction::Execute(place("ada")), |root| {
        root.queued.push_back(place("ada"));
    });
    store.receive(AggregateAction::Refreshed(Ok(vec![])), |root| {
        root.hydrated = true;
        root.queued.clear();
        root.in_flight = Some(InFlight {
            command: place("ada"),
            events: vec![placed.clone()],
            event_ids: vec![EventId(ids.next_id())],
            decisions: 1,
        });
    });
    store.expect_effect_matching("append OrderPlaced to a new order-42", |effect| {
        is_append(
            effect,
            "order-42",
            ExpectedVersion::NoStream,
            &["OrderPlaced"],
        )
    });
    store.receive(AggregateAction::Appended(Ok(1)), |root| {
        root.in_flight = None;
        root.state.apply(&placed);
        root.version = 1;
        root.last_outcome = Some(Ok(1));
    });

    // Hydrated now: the next command is decided at once.
    let line = OrderEvent::LineAdded {
        sku: "tea".into(),
        quantity: 2,
        unit_price_cents: 350,
    };
    store.send(AggregateAction::Execute(add("tea", 2, 350)), |root| {
        root.in_flight = Some(InFlight {
            command: add("tea", 2, 350),
            events: vec![line.clone()],
            event_ids: vec![EventId(ids.next_id())],
            decisions: 1,
        });
    });
    store.expect_effect_matching("append OrderLineAdded after v1", |effect| {
        is_append(
            effect,
            "order-42",
            ExpectedVersion::Exact(1),
            &["OrderLineAdded"],
        )
    });
    store.receive(AggregateAction::Appended(Ok(2)), |root| {
        root.in_flight = None;
        root.state.apply(&line);
        root.version = 2;
        root.last_outcome = Some(Ok(2));
    });
    assert_eq!(store.state().state.total_cents, 700);
    assert_eq!(
        store.event_store().stream_version_now(&"order-42".into()),
        2
    );
    store.finish();
}

#[test]
fn a_rejected_command_appends_nothing_and_reports_why() {
    let mut store = order_test_store("7");
    store.send(AggregateAction::Execute(OrderCommand::Submit), |root| {
        root.queued.push_back(OrderCommand::Submit);
    });
    store.receive(AggregateAction::Refreshed(Ok(vec![])), |root| {
        root.hydrated = true;
        root.queued.clear();
        root.last_outcome = Some(Err(CommandError::Rejected(OrderError::NotOpen(
            OrderStatus::New,
        ))));
    });
    // No append was asked for: `finish` would fail on an unasserted one.
    assert!(store.event_store().is_empty());
    store.finish();
}

#[test]
fn the_order_store_runs_commands_in_order_on_a_runtime() {
    let runtime = TestRuntime::shared(1);
    let shared: SharedRuntime = runtime.clone();
    let events = Arc::new(InMemoryEventStore::new());
    let store = order_store("9", shared, events.clone());
    // Sent back to back: the second waits for the first's append, so it sees the order
    // placed.
    drop(store.send(AggregateAction::Execute(place("ada"))));
    drop(store.send(AggregateAction::Execute(add("tea", 1, 350))));
    drop(store.send(AggregateAction::Execute(OrderCommand::Submit)));
    runtime.run_until_idle();
    let root = store.state();
    assert_eq!(
        (root.state.status, root.state.total_cents, root.version),
        (OrderStatus::Submitted, 350, 3)
    );
    assert_eq!(root.last_outcome, Some(Ok(3)));
    let types: Vec<_> = events
        .read_stream_now(&"order-9".into(), 1, 10)
        .iter()
        .map(|e| e.event_type.to_string())
        .collect();
    assert_eq!(types, ["OrderPlaced", "OrderLineAdded", "OrderSubmitted"]);
}

// ---------------------------------------------------------------------------------------
// Through a Repository
// ---------------------------------------------------------------------------------------

#[test]
fn the_repository_loads_decides_and_appends() {
    let runtime = TestRuntime::shared(3);
    let events: Arc<dyn EventStore> = Arc::new(InMemoryEventStore::new());
    let entropy: Arc<dyn Entropy> = runtime.clone();
    let orders = Repository::<Order>::new(events, entropy);
    let outcome = block_on(&runtime, async move {
        for command in [place("ada"), add("tea", 3, 100), OrderCommand::Submit] {
            orders.execute("1", &command, Metadata::default()).await?;
        }
        let late = orders
            .execute("1", &add("cup", 1, 1), Metadata::default())
            .await;
        assert_eq!(
            late,
            Err(CommandError::Rejected(OrderError::NotOpen(
                OrderStatus::Submitted
            )))
        );
        orders.load("1").await
    });
    let (order, version) = outcome.unwrap();
    assert_eq!(
        (order.status, order.total_cents, version),
        (OrderStatus::Submitted, 300, 3)
    );
}
