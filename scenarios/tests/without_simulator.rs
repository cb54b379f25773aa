//! The very same services, run without the simulator: on core's deterministic
//! [`TestRuntime`] with the plain in-memory store and bus and the external services called
//! directly. Nothing here is simulator-specific, which is the point — the scenarios only
//! use reprise-core's traits, so a tokio + PostgreSQL + Kafka deployment runs them too.

use std::sync::Arc;
use std::time::Duration;

use reprise_core::testing::TestRuntime;
use reprise_core::{Clock, InMemoryEventBus, InMemoryEventStore, SharedRuntime, Spawner};
use reprise_host::Platform;
use reprise_scenarios::Bugs;
use reprise_scenarios::checkout::invariants::CheckoutAudit;
use reprise_scenarios::checkout::workload::{CheckoutOptions, CheckoutWorkload, run_client};
use reprise_scenarios::checkout::{
    CarrierModel, CarrierOptions, DirectCarrier, PaymentProvider, services,
};
use reprise_scenarios::transfers::invariants::TransfersAudit;
use reprise_scenarios::transfers::services::{
    self as transfer_services, TransfersOptions, TransfersWorkload,
};

fn draws(seed: u64) -> impl FnMut() -> u64 {
    // SplitMix64: only reproducibility matters for a workload.
    let mut state = seed;
    move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn platform(
    seed: u64,
) -> (
    Arc<TestRuntime>,
    Arc<InMemoryEventStore>,
    Arc<InMemoryEventBus>,
    Platform,
) {
    let runtime = TestRuntime::shared(seed);
    let shared: SharedRuntime = runtime.clone();
    let store = Arc::new(InMemoryEventStore::with_clock(
        Arc::clone(&shared) as Arc<dyn Clock>
    ));
    let bus = Arc::new(InMemoryEventBus::new());
    let env = Platform::new(shared, store.clone(), bus.clone());
    (runtime, store, bus, env)
}

#[test]
fn checkout_settles_correctly_on_plain_in_memory_infrastructure() {
    let (runtime, store, bus, env) = platform(11);
    let options = CheckoutOptions::default();
    let workload = Arc::new(CheckoutWorkload::generate(&options, &mut draws(11)));
    let provider = Arc::new(PaymentProvider::new(options.decline_every));
    let carrier = Arc::new(DirectCarrier {
        model: Arc::new(CarrierModel::new(CarrierOptions::new(11))),
        clock: env.runtime.clone(),
    });
    services::start_saga_service(
        &env,
        Arc::new(reprise_core::InMemoryLeases::new().contender("relay-checkout")),
        Bugs::NONE,
    );
    services::start_orders_service(&env, Bugs::NONE);
    services::start_inventory_service(&env, Bugs::NONE);
    services::start_payment_service(&env, provider.clone(), Bugs::NONE);
    services::start_shipping_service(&env, carrier, Bugs::NONE);
    runtime.spawn(
        "client",
        Box::pin(run_client(env.clone(), Arc::clone(&workload))),
    );
    runtime.advance(Duration::from_secs(60));

    let mut audit = CheckoutAudit::new();
    audit
        .observe(&store.read_all_now(1, usize::MAX))
        .expect("safety holds");
    audit
        .check_consumers(&bus)
        .expect("nothing acknowledged was lost");
    provider
        .with_books(|books| audit.check_books(books))
        .expect("provider books are sound");
    provider
        .with_books(|books| audit.check_settled(&workload, books))
        .expect("every checkout settled correctly");

    // The workload exercises the paths it claims to: some orders completed, some ran out
    // of stock, some were declined.
    let events = store.read_all_now(1, usize::MAX);
    let count = |event_type: &str| {
        events
            .iter()
            .filter(|e| &*e.event_type == event_type)
            .count()
    };
    assert!(
        count("OrderCompleted") > 10,
        "completed: {}",
        count("OrderCompleted")
    );
    assert!(count("ReservationRefused") > 0, "nobody ran out of stock");
    assert!(count("PaymentDeclined") > 0, "no card was declined");
    assert_eq!(
        count("OrderCompleted") + count("OrderCancelled"),
        workload.orders.len()
    );
}

#[test]
fn transfers_conserve_money_on_plain_in_memory_infrastructure() {
    let (runtime, store, bus, env) = platform(12);
    let workload = Arc::new(TransfersWorkload::generate(
        &TransfersOptions::default(),
        &mut draws(12),
    ));
    transfer_services::start_saga_service(
        &env,
        Arc::new(reprise_core::InMemoryLeases::new().contender("relay-transfers")),
        Bugs::NONE,
    );
    transfer_services::start_accounts_service(&env, Bugs::NONE);
    runtime.spawn(
        "client",
        Box::pin(transfer_services::run_client(
            env.clone(),
            Arc::clone(&workload),
        )),
    );
    runtime.advance(Duration::from_secs(30));

    let mut audit = TransfersAudit::new();
    audit
        .observe(&store.read_all_now(1, usize::MAX))
        .expect("safety holds");
    audit
        .check_consumers(&bus)
        .expect("nothing acknowledged was lost");
    audit
        .check_settled(&workload)
        .expect("every transfer settled and money is conserved");
    let events = store.read_all_now(1, usize::MAX);
    assert!(
        events.iter().any(|e| &*e.event_type == "DebitRefused"),
        "no transfer met insufficient funds"
    );
    assert!(
        events
            .iter()
            .filter(|e| &*e.event_type == "TransferCompleted")
            .count()
            > 10
    );
}
