//! The sagas driven through the real [`SagaHost`] and [`BusDispatcher`] on a deterministic
//! [`TestRuntime`] with the in-memory store and bus: duplicates are ignored, every silent
//! step leads to compensation, and deadlines survive a restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use reprise_core::testing::{TestRuntime, block_on};
use reprise_core::{Aggregate, Saga};
use reprise_core::{InMemoryEventBus, InMemoryEventStore, SharedRuntime};
use reprise_host::Platform as HostPlatform;
use reprise_host::commands::{BusDispatcher, CommandRoute};
use reprise_host::saga_host::SagaHost;
use reprise_scenarios::checkout::order::OrderLine;
use reprise_scenarios::checkout::saga::{
    CheckoutCommand, CheckoutInput, CheckoutSaga, Step, timeouts, topics,
};
use reprise_scenarios::transfers::request::TransferOrder;
use reprise_scenarios::transfers::saga::{
    self as transfer, TransferCommand, TransferInput, TransferSaga,
};

struct Platform {
    store: Arc<InMemoryEventStore>,
    bus: Arc<InMemoryEventBus>,
}

impl Platform {
    fn new() -> Self {
        Platform {
            store: Arc::new(InMemoryEventStore::new()),
            bus: Arc::new(InMemoryEventBus::new()),
        }
    }

    /// One incarnation of a saga node: its own runtime (a crash = never driving it again).
    fn host<S: Saga>(&self, runtime: &Arc<TestRuntime>) -> Arc<SagaHost<S>>
    where
        S::Command: CommandRoute + serde::Serialize,
    {
        let shared: SharedRuntime = runtime.clone();
        let env = HostPlatform::new(shared, self.store.clone(), self.bus.clone());
        Arc::new(SagaHost::new(
            env.clone(),
            Arc::new(BusDispatcher::<S::Command>::new(env, 1)),
        ))
    }

    /// How many commands of each name were published on `topics`.
    fn published(&self, topics: &[&str]) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for topic in topics {
            for delivery in self.bus.messages(topic) {
                let name = delivery
                    .headers
                    .get(reprise_core::event_bus::header::EVENT_TYPE)
                    .unwrap_or("?")
                    .to_owned();
                *counts.entry(name).or_default() += 1;
            }
        }
        counts
    }

    /// The saga's state, replayed from its stream (what a restarted node would see).
    fn saga<S: Saga>(&self, id: &str) -> S {
        let mut saga = S::default();
        for record in
            self.store
                .read_stream_now(&reprise_core::StreamId::of(S::NAME, id), 1, usize::MAX)
        {
            if !record.event_type.starts_with("reprise.") {
                saga.apply(
                    &record
                        .payload
                        .decode::<S::Event>()
                        .expect("saga events decode"),
                );
            }
        }
        saga
    }
}

const CHECKOUT_TOPICS: [&str; 4] = [
    topics::ORDERS,
    topics::INVENTORY,
    topics::PAYMENTS,
    topics::SHIPPING,
];

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

fn start() -> CheckoutInput {
    CheckoutInput::Start {
        order: "o1".into(),
        line: OrderLine {
            sku: "sku0".into(),
            quantity: 2,
            amount: 500,
            card: 7,
        },
        compensate_on_timeout: true,
    }
}

fn deliver<S: Saga>(
    runtime: &Arc<TestRuntime>,
    host: &Arc<SagaHost<S>>,
    id: &'static str,
    input: S::Input,
) {
    let host = Arc::clone(host);
    block_on(runtime, async move { host.deliver(id, input).await });
}

#[test]
fn the_happy_path_completes_and_duplicates_change_nothing() {
    let platform = Platform::new();
    let runtime = TestRuntime::shared(1);
    let host = platform.host::<CheckoutSaga>(&runtime);
    for input in [
        start(),
        start(),
        CheckoutInput::InventoryReserved,
        CheckoutInput::InventoryReserved,
        CheckoutInput::PaymentCaptured,
        CheckoutInput::ShipmentCreated,
        CheckoutInput::PaymentCaptured,
        CheckoutInput::ShipmentDelivered,
        CheckoutInput::OrderCompleted,
        CheckoutInput::OrderCompleted,
    ] {
        deliver(&runtime, &host, "o1", input);
    }
    assert_eq!(platform.saga::<CheckoutSaga>("o1").step, Step::Completed);
    assert_eq!(
        platform.published(&CHECKOUT_TOPICS),
        counts(&[
            ("ReserveInventory", 1),
            ("ChargePayment", 1),
            ("CreateShipment", 1),
            ("CompleteOrder", 1)
        ])
    );
    // Every deadline was cleared: time passing issues nothing more.
    runtime.advance(Duration::from_secs(60));
    assert_eq!(
        platform.published(&CHECKOUT_TOPICS).values().sum::<usize>(),
        4
    );
}

#[test]
fn a_silent_payment_gateway_leads_to_refund_release_and_cancel() {
    let platform = Platform::new();
    let runtime = TestRuntime::shared(2);
    let host = platform.host::<CheckoutSaga>(&runtime);
    deliver(&runtime, &host, "o1", start());
    deliver(&runtime, &host, "o1", CheckoutInput::InventoryReserved);
    runtime.advance(timeouts::PAYMENT + Duration::from_millis(1));
    let saga = platform.saga::<CheckoutSaga>("o1");
    assert_eq!(saga.step, Step::Compensating);
    assert!(
        saga.pending.refund && saga.pending.release && saga.pending.cancel,
        "{saga:?}"
    );
    assert_eq!(
        platform.published(&CHECKOUT_TOPICS),
        counts(&[
            ("ReserveInventory", 1),
            ("ChargePayment", 1),
            ("RefundPayment", 1),
            ("ReleaseInventory", 1),
            ("CancelOrder", 1)
        ])
    );
    // A capture reported late is not a reason to ship: the refund settles it.
    deliver(&runtime, &host, "o1", CheckoutInput::PaymentCaptured);
    deliver(&runtime, &host, "o1", CheckoutInput::PaymentRefunded);
    deliver(&runtime, &host, "o1", CheckoutInput::InventoryReleased);
    // Unconfirmed parts are re-issued on the compensation deadline, and only those.
    runtime.advance(timeouts::RETRY + Duration::from_millis(1));
    assert_eq!(platform.published(&CHECKOUT_TOPICS)["CancelOrder"], 2);
    assert_eq!(platform.published(&CHECKOUT_TOPICS)["RefundPayment"], 1);
    deliver(&runtime, &host, "o1", CheckoutInput::OrderCancelled);
    assert_eq!(platform.saga::<CheckoutSaga>("o1").step, Step::Cancelled);
    assert!(
        !platform
            .published(&CHECKOUT_TOPICS)
            .contains_key("CreateShipment")
    );
}

#[test]
fn the_planted_bug_forgets_money_and_stock_on_a_payment_timeout() {
    let platform = Platform::new();
    let runtime = TestRuntime::shared(3);
    let host = platform.host::<CheckoutSaga>(&runtime);
    let CheckoutInput::Start { order, line, .. } = start() else {
        unreachable!()
    };
    deliver(
        &runtime,
        &host,
        "o1",
        CheckoutInput::Start {
            order,
            line,
            compensate_on_timeout: false,
        },
    );
    deliver(&runtime, &host, "o1", CheckoutInput::InventoryReserved);
    runtime.advance(timeouts::PAYMENT + Duration::from_millis(1));
    let published = platform.published(&CHECKOUT_TOPICS);
    assert_eq!(published.get("CancelOrder"), Some(&1));
    assert_eq!(published.get("RefundPayment"), None);
    assert_eq!(published.get("ReleaseInventory"), None);
}

#[test]
fn a_shipment_that_never_arrives_is_cancelled_through_the_shipping_aggregate() {
    let platform = Platform::new();
    let runtime = TestRuntime::shared(4);
    let host = platform.host::<CheckoutSaga>(&runtime);
    for input in [
        start(),
        CheckoutInput::InventoryReserved,
        CheckoutInput::PaymentCaptured,
        CheckoutInput::ShipmentCreated,
    ] {
        deliver(&runtime, &host, "o1", input);
    }
    runtime.advance(timeouts::DELIVERY + Duration::from_millis(1));
    assert_eq!(platform.published(&CHECKOUT_TOPICS)["CancelShipment"], 1);
    // The saga waits for the shipping aggregate's verdict; it asks again meanwhile.
    assert_eq!(
        platform.saga::<CheckoutSaga>("o1").step,
        Step::AwaitingDelivery
    );
    runtime.advance(timeouts::RETRY + Duration::from_millis(1));
    assert_eq!(platform.published(&CHECKOUT_TOPICS)["CancelShipment"], 2);
    deliver(&runtime, &host, "o1", CheckoutInput::ShipmentFailed);
    let saga = platform.saga::<CheckoutSaga>("o1");
    assert_eq!(saga.step, Step::Compensating);
    assert!(saga.pending.refund && saga.pending.release);
}

#[test]
fn deadlines_survive_a_restart_of_the_saga_node() {
    let platform = Platform::new();
    let first_life = TestRuntime::shared(5);
    let host = platform.host::<CheckoutSaga>(&first_life);
    deliver(&first_life, &host, "o1", start());
    // The node dies: its runtime is never driven again, its memory is gone.
    drop(host);
    let second_life = TestRuntime::shared(6);
    let host = platform.host::<CheckoutSaga>(&second_life);
    let recovering = Arc::clone(&host);
    block_on(&second_life, async move { recovering.recover_all().await });
    second_life.run_until_idle();
    // Recovery re-dispatches the last commands (targets deduplicate)...
    assert_eq!(platform.published(&CHECKOUT_TOPICS)["ReserveInventory"], 2);
    // ...and re-arms the reserve deadline from the stream.
    second_life.advance(timeouts::RESERVE + Duration::from_millis(1));
    let saga = platform.saga::<CheckoutSaga>("o1");
    assert_eq!(saga.step, Step::Compensating, "{saga:?}");
    assert_eq!(platform.published(&CHECKOUT_TOPICS)["ReleaseInventory"], 1);
    assert_eq!(platform.published(&CHECKOUT_TOPICS)["CancelOrder"], 1);
}

fn transfer_start() -> TransferInput {
    TransferInput::Start {
        transfer: "t1".into(),
        order: TransferOrder {
            from: "a0".into(),
            to: "a1".into(),
            amount: 40,
        },
    }
}

#[test]
fn a_transfer_whose_credit_never_confirms_is_voided_and_reversed() {
    let platform = Platform::new();
    let runtime = TestRuntime::shared(7);
    let host = platform.host::<TransferSaga>(&runtime);
    deliver(&runtime, &host, "t1", transfer_start());
    deliver(&runtime, &host, "t1", TransferInput::Debited);
    deliver(&runtime, &host, "t1", TransferInput::Debited);
    for _ in 0..transfer::CREDIT_ATTEMPTS {
        runtime.advance(transfer::STEP_TIMEOUT + Duration::from_millis(1));
    }
    let topics = [transfer::topics::ACCOUNTS];
    assert_eq!(
        platform.published(&topics),
        counts(&[("Debit", 1), ("Credit", 3), ("VoidCredit", 1)])
    );
    deliver(&runtime, &host, "t1", TransferInput::CreditVoided);
    assert_eq!(platform.published(&topics)["ReverseDebit"], 1);
    deliver(&runtime, &host, "t1", TransferInput::DebitUndone);
    let saga = platform.saga::<TransferSaga>("t1");
    assert_eq!(saga.step, transfer::Step::Failed);
    runtime.advance(Duration::from_secs(30));
    assert_eq!(
        platform.published(&topics).values().sum::<usize>(),
        6,
        "a terminal saga issues nothing"
    );
}

#[test]
fn a_late_credit_wins_over_the_void() {
    let platform = Platform::new();
    let runtime = TestRuntime::shared(8);
    let host = platform.host::<TransferSaga>(&runtime);
    deliver(&runtime, &host, "t1", transfer_start());
    deliver(&runtime, &host, "t1", TransferInput::Debited);
    for _ in 0..transfer::CREDIT_ATTEMPTS {
        runtime.advance(transfer::STEP_TIMEOUT + Duration::from_millis(1));
    }
    deliver(&runtime, &host, "t1", TransferInput::Credited);
    assert_eq!(
        platform.saga::<TransferSaga>("t1").step,
        transfer::Step::Completed
    );
    // The account stream decides; a command keyed by account lands on its partition.
    let command = TransferCommand::Credit {
        account: "a1".into(),
        transfer: "t1".into(),
        amount: 1,
    };
    assert_eq!(
        command.key(),
        reprise_scenarios::transfers::account::Account::stream_id("a1").to_string()
    );
}

#[test]
fn commands_are_keyed_by_order_so_one_orders_commands_stay_in_order() {
    let reserve = CheckoutCommand::ReserveInventory {
        order: "o9".into(),
        sku: "sku1".into(),
        quantity: 1,
    };
    let cancel = CheckoutCommand::CancelOrder {
        order: "o9".into(),
        reason: "x".into(),
    };
    assert_eq!(reserve.key(), cancel.key());
    assert_ne!(reserve.topic(), cancel.topic());
}
