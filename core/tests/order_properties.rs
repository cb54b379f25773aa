//! Property: any sequence of commands keeps the order aggregate's invariants, and running
//! the sequence through a `Store` (`AggregateReducer`, appends, the in-memory event store)
//! ends in exactly the state, version and outcomes that plain `decide`/`apply` predict.

use std::sync::Arc;

use proptest::collection::vec;
use proptest::prelude::*;
use reprise_core::testing::TestRuntime;
use reprise_core::{
    Aggregate, AggregateAction, CommandError, InMemoryEventStore, SharedRuntime, StreamId,
    Upcasters,
};

#[allow(dead_code)] // shared with reprise-examples, which uses all of it
#[path = "../../examples/src/order.rs"]
mod order;

use order::{Order, OrderCommand, OrderError};

fn command() -> impl Strategy<Value = OrderCommand> {
    let sku = || prop::sample::select(vec!["tea", "cup", "pot"]).prop_map(String::from);
    // Edge prices included on purpose: zero, and amounts that overflow the total.
    let price = prop_oneof![Just(0u64), 1u64..1_000, Just(u64::MAX / 2), Just(u64::MAX)];
    prop_oneof![
        1 => prop::sample::select(vec!["ada", "", " "]).prop_map(|c| OrderCommand::Place { customer: c.into() }),
        4 => (sku(), 0u32..4, price)
            .prop_map(|(sku, quantity, unit_price_cents)| OrderCommand::AddLine { sku, quantity, unit_price_cents }),
        2 => sku().prop_map(|sku| OrderCommand::RemoveLine { sku }),
        1 => Just(OrderCommand::Submit),
        1 => Just(OrderCommand::Cancel { reason: "changed mind".into() }),
    ]
}

/// The reference: `decide`/`apply` directly. Returns the outcome the store should report.
fn step(
    model: &mut Order,
    version: &mut u64,
    command: &OrderCommand,
) -> Result<u64, CommandError<OrderError>> {
    let before = model.clone();
    match model.decide(command) {
        Ok(events) => {
            for event in &events {
                model.apply(event);
            }
            *version += events.len() as u64;
            Ok(*version)
        }
        Err(error) => {
            assert_eq!(model, &before, "decide must not change the state");
            Err(CommandError::Rejected(error))
        }
    }
}

fn replay_stream(events: &InMemoryEventStore) -> Order {
    let mut order = Order::default();
    for recorded in events.read_stream_now(&StreamId::of("order", "p"), 1, usize::MAX) {
        order.apply(
            &recorded
                .decode(&Upcasters::new())
                .expect("stored events decode"),
        );
    }
    order
}

fn store() -> (
    reprise_core::Store<reprise_core::AggregateReducer<Order>>,
    Arc<TestRuntime>,
    Arc<InMemoryEventStore>,
) {
    let runtime = TestRuntime::shared(0);
    let shared: SharedRuntime = runtime.clone();
    let events = Arc::new(InMemoryEventStore::new());
    (
        order::order_store("p", shared, events.clone()),
        runtime,
        events,
    )
}

proptest! {
    // No regression files: a failure prints its minimal input, which belongs in a named
    // test rather than in a file beside this one.
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_and_the_store_agrees_with_decide_apply(commands in vec(command(), 0..40)) {
        let (orders, runtime, events) = store();
        let (mut model, mut version) = (Order::default(), 0);
        for command in commands {
            let outcome = step(&mut model, &mut version, &command);
            prop_assert_eq!(model.check_invariants(), Ok(()), "after {:?}", command);

            let sent = orders.send(AggregateAction::Execute(command.clone()));
            runtime.run_until_idle();
            prop_assert!(sent.is_finished());
            let root = orders.state();
            prop_assert_eq!(&root.state, &model, "after {:?}", command);
            prop_assert_eq!(root.version, version);
            prop_assert_eq!(root.last_outcome, Some(outcome));
            prop_assert!(root.in_flight.is_none() && root.queued.is_empty());
        }
        prop_assert_eq!(replay_stream(&events), model);
    }

    #[test]
    fn commands_sent_back_to_back_queue_and_end_in_the_same_state(commands in vec(command(), 1..25)) {
        let (orders, runtime, events) = store();
        let (mut model, mut version) = (Order::default(), 0);
        let mut last = None;
        for command in &commands {
            last = Some(step(&mut model, &mut version, command));
            // No effect runs between sends: every command after the first waits its turn.
            drop(orders.send(AggregateAction::Execute(command.clone())));
        }
        runtime.run_until_idle();
        prop_assert_eq!(model.check_invariants(), Ok(()));
        let root = orders.state();
        prop_assert_eq!(&root.state, &model);
        prop_assert_eq!(root.version, version);
        prop_assert_eq!(root.last_outcome, last);
        prop_assert_eq!(replay_stream(&events), model);
    }
}
