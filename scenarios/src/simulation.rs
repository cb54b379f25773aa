//! The scenarios as the simulator runs them: nodes, dependencies, workload and checkers
//! wired onto a [`reprise_sim::World`], and the registry the CLI lists.
//!
//! This is the only module that knows about the simulator. It adapts a node's
//! [`NodeContext`] into the [`Platform`] the services expect, and routes the services'
//! calls to the payment provider and the carrier through [`NodeContext::call`], where the
//! simulator can refuse, fail, delay or lose them. Everything else is the same code a
//! production deployment runs.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use reprise_core::resilience::InMemoryDeadLetterQueue;
use reprise_core::{
    BoxFuture, BusError, Delivery, EventBus, InMemoryEventBus, InMemoryEventStore, OutgoingMessage,
    Resilience, Subscription,
};
use reprise_core::{Situation, sometimes};
use reprise_sim::{
    DependencyError, DependencyOptions, NodeContext, NodeOptions, Phase, RunReport, Scenario,
    ScenarioRun, Violation, World, WorldView,
};

use crate::audit::Finding;
use crate::bugs::{Bugs, PlantedBug};
use crate::checkout::gateway::{
    CarrierStatus, ChargeOutcome, ChargeRequest, ExternalError, RefundOutcome,
};
use crate::checkout::invariants::{CallLedger, CheckoutAudit, invariant as checkout_invariant};
use crate::checkout::saga::topics;
use crate::checkout::situations as checkout_situations;
use crate::checkout::workload::{CheckoutOptions, CheckoutWorkload, run_client};
use crate::checkout::{
    Carrier, CarrierModel, CarrierOptions, PaymentGateway, PaymentProvider, resilience, services,
};
use crate::transfers;
use crate::transfers::invariants::{TransfersAudit, invariant as transfers_invariant};
use crate::transfers::services::{TransfersOptions, TransfersWorkload};
use reprise_host::Platform;

/// Dependency names (the same names the services' resilience policies use).
pub const PAYMENT_PROVIDER: &str = resilience::PAYMENT_PROVIDER;
pub const CARRIER: &str = resilience::CARRIER;

/// How often the operator looks for dead letters to send back.
const OPERATOR_POLL: Duration = Duration::from_millis(250);

/// A service environment on a simulated node.
#[must_use]
pub fn service_env(ctx: &NodeContext) -> Platform {
    let notes_ctx = ctx.clone();
    Platform::new(ctx.runtime(), ctx.event_store(), ctx.event_bus())
        .with_notes(Arc::new(move |text| notes_ctx.note_fmt(text)))
}

fn external(error: DependencyError) -> ExternalError {
    match error {
        DependencyError::Timeout(_) => ExternalError::Timeout,
        other => ExternalError::Unavailable(other.to_string()),
    }
}

/// The key of the checkout commands about `order` ([`CommandRoute::key`]), under which a
/// [`CallLedger`] counts deliveries and calls.
///
/// [`CommandRoute::key`]: reprise_host::commands::CommandRoute::key
fn command_key(order: &str) -> String {
    format!("order-{order}")
}

/// The payment provider as a simulated node reaches it. Every call that leaves for the
/// provider is counted in `calls` (which outlives the node).
struct SimulatedProvider {
    ctx: NodeContext,
    provider: Arc<PaymentProvider>,
    calls: Arc<Mutex<CallLedger>>,
}

impl PaymentGateway for SimulatedProvider {
    fn charge(
        &self,
        request: ChargeRequest,
    ) -> BoxFuture<'static, Result<ChargeOutcome, ExternalError>> {
        self.calls.lock().called(&command_key(&request.order));
        let (provider, books) = (Arc::clone(&self.provider), Arc::clone(&self.provider));
        // Kept only when someone collects coverage: the check below is all it is for.
        let key = reprise_core::coverage::collecting().then(|| request.idempotency_key.clone());
        let call = self
            .ctx
            .call(PAYMENT_PROVIDER, move || provider.charge_now(&request));
        Box::pin(async move {
            let answer = call.await;
            // Only the provider's books know the charge went through: the glue is the one
            // place that sees both sides.
            sometimes!(
                checkout_situations::PAYMENT_TIMED_OUT_AFTER_CAPTURE.name,
                matches!(answer, Err(DependencyError::Timeout(_)))
                    && key
                        .as_ref()
                        .is_some_and(|key| books.with_books(|b| b.charges.contains_key(key)))
            );
            answer.map_err(external)
        })
    }

    fn refund(
        &self,
        idempotency_key: String,
    ) -> BoxFuture<'static, Result<RefundOutcome, ExternalError>> {
        self.calls.lock().called(&command_key(&idempotency_key));
        let provider = Arc::clone(&self.provider);
        let call = self.ctx.call(PAYMENT_PROVIDER, move || {
            provider.refund_now(&idempotency_key)
        });
        Box::pin(async move { call.await.map_err(external) })
    }
}

/// The carrier as a simulated node reaches it. The model reads the node's clock when the
/// request arrives. Registrations (the calls commands cause) are counted in
/// `registrations`; tracking is the tracker's polling, bounded by its period instead.
struct SimulatedCarrier {
    ctx: NodeContext,
    model: Arc<CarrierModel>,
    registrations: Arc<Mutex<CallLedger>>,
}

impl Carrier for SimulatedCarrier {
    fn register(&self, order: String) -> BoxFuture<'static, Result<String, ExternalError>> {
        self.registrations.lock().called(&command_key(&order));
        let (model, runtime) = (Arc::clone(&self.model), self.ctx.runtime());
        let call = self
            .ctx
            .call(CARRIER, move || model.register_at(&order, runtime.now()));
        Box::pin(async move { call.await.map_err(external) })
    }

    fn track(&self, order: String) -> BoxFuture<'static, Result<CarrierStatus, ExternalError>> {
        let (model, runtime) = (Arc::clone(&self.model), self.ctx.runtime());
        let call = self
            .ctx
            .call(CARRIER, move || model.track_at(&order, runtime.now()));
        Box::pin(async move {
            match call.await {
                Ok(Some(status)) => Ok(status),
                Ok(None) => Err(ExternalError::Unavailable("unknown shipment".into())),
                Err(error) => Err(external(error)),
            }
        })
    }
}

/// A node's bus, counting the deliveries of one topic in a [`CallLedger`] as they are
/// handed to the node's consumer: the other side of the retry bound.
struct CountingBus {
    inner: Arc<dyn EventBus>,
    topic: &'static str,
    ledger: Arc<Mutex<CallLedger>>,
}

impl EventBus for CountingBus {
    fn publish(&self, messages: Vec<OutgoingMessage>) -> BoxFuture<'static, Result<(), BusError>> {
        self.inner.publish(messages)
    }

    fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
    ) -> BoxFuture<'static, Result<Box<dyn Subscription>, BusError>> {
        let subscribing = self.inner.subscribe(group, topics);
        let (topic, ledger) = (self.topic, Arc::clone(&self.ledger));
        Box::pin(async move {
            let inner = subscribing.await?;
            Ok(Box::new(CountingSubscription {
                inner,
                topic,
                ledger,
            }) as Box<dyn Subscription>)
        })
    }
}

struct CountingSubscription {
    inner: Box<dyn Subscription>,
    topic: &'static str,
    ledger: Arc<Mutex<CallLedger>>,
}

impl Subscription for CountingSubscription {
    fn next(&mut self) -> BoxFuture<'_, Result<Delivery, BusError>> {
        Box::pin(async move {
            let delivery = self.inner.next().await?;
            if &*delivery.topic == self.topic {
                self.ledger.lock().delivered(&delivery.key);
            }
            Ok(delivery)
        })
    }

    fn ack(&mut self, delivery: &Delivery) {
        self.inner.ack(delivery);
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<(), BusError>> {
        self.inner.commit()
    }
}

/// The environment of a service that calls an external dependency: its own resilience
/// (fresh breakers on every boot, the shared dead-letter queue), registered in
/// `instances` for the checker, and a bus that counts the deliveries of `topic`.
fn guarded_env(
    ctx: &NodeContext,
    dead_letters: &InMemoryDeadLetterQueue,
    instances: &Mutex<Vec<Arc<Resilience>>>,
    topic: &'static str,
    deliveries: &Arc<Mutex<CallLedger>>,
) -> Platform {
    let resilience =
        Arc::new(resilience::resilience().with_dead_letters(Arc::new(dead_letters.clone())));
    instances.lock().push(Arc::clone(&resilience));
    let mut env = service_env(ctx).with_resilience(resilience);
    env.bus = Arc::new(CountingBus {
        inner: env.bus,
        topic,
        ledger: Arc::clone(deliveries),
    });
    env
}

/// The operator: polls until the incident is declared over (`released`), then sends back
/// every pending dead letter, again on every poll (a redelivered command can fail anew).
async fn run_operator(env: Platform, queue: InMemoryDeadLetterQueue, released: Arc<AtomicBool>) {
    loop {
        env.sleep(OPERATOR_POLL).await;
        if released.load(Ordering::Relaxed) {
            services::redeliver_dead_letters(&env, &queue).await;
        }
    }
}

fn violation(finding: Finding) -> Violation {
    let mut violation = Violation::new(finding.invariant, finding.message);
    violation.entities = finding.entities;
    violation
}

/// A scenario's own situations plus those of the host and the simulator it runs on (both
/// scenarios use inboxes, command handlers, consumer groups and a leased relay).
fn declared(own: &[Situation]) -> Vec<Situation> {
    own.iter()
        .chain(&reprise_host::SITUATIONS)
        .chain(&reprise_sim::SITUATIONS)
        .copied()
        .collect()
}

fn crashable() -> NodeOptions {
    NodeOptions::default()
}

// ---------------------------------------------------------------------------------------
// Checkout
// ---------------------------------------------------------------------------------------

/// What one checkout run saw of its external services, for tests and coverage reports
/// ([`CheckoutScenario::with_reports`]). Updated at every check, so it describes the run
/// up to its last check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DependencyReport {
    pub seed: u64,
    /// Some payment-service instance's breaker for the provider left `closed`.
    pub payment_breaker_opened: bool,
    /// Some shipping-service instance's breaker for the carrier left `closed`.
    pub carrier_breaker_opened: bool,
    /// Calls that left for the provider (charges and refunds).
    pub provider_calls: u64,
    /// Payment commands handed to the payment service's consumer.
    pub payment_deliveries: u64,
    /// Attempts through the payment instances' resilience policies, breaker refusals
    /// included (summed over every boot).
    pub payment_attempts: u64,
    /// Registrations that left for the carrier.
    pub carrier_registrations: u64,
    /// Shipping commands handed to the shipping service's consumer.
    pub shipping_deliveries: u64,
    /// Commands parked in the dead-letter queue.
    pub dead_letters: usize,
    /// Dead letters an operator sent back.
    pub redelivered: usize,
    /// This seed's operator waited until every saga had settled before redelivering
    /// (otherwise it started as soon as the faults healed).
    pub operator_waited_for_settlement: bool,
}

/// Where [`CheckoutScenario::with_reports`] appends one [`DependencyReport`] per run.
pub type DependencyReports = Arc<Mutex<Vec<DependencyReport>>>;

/// The checkout scenario, correct or with one planted bug.
#[derive(Clone, Debug)]
pub struct CheckoutScenario {
    pub options: CheckoutOptions,
    pub bugs: Bugs,
    name: &'static str,
    description: &'static str,
    reports: Option<DependencyReports>,
}

impl CheckoutScenario {
    /// The correct checkout.
    #[must_use]
    pub fn correct() -> Self {
        CheckoutScenario {
            options: CheckoutOptions::default(),
            bugs: Bugs::NONE,
            name: "checkout",
            description: "~50 checkouts: order → inventory → payment → shipping saga with compensation, seven nodes (two saga instances) and an operator",
            reports: None,
        }
    }

    /// Appends a [`DependencyReport`] per run to `reports` (for coverage tests).
    #[must_use]
    pub fn with_reports(mut self, reports: DependencyReports) -> Self {
        self.reports = Some(reports);
        self
    }

    /// The checkout with `bug` planted, registered as `checkout-bug-<slug>`.
    #[must_use]
    pub fn with_bug(bug: PlantedBug) -> Self {
        let (name, description) = match bug {
            PlantedBug::AckBeforeProcess => (
                "checkout-bug-ack-before-process",
                "checkout whose consumers commit offsets before handling",
            ),
            PlantedBug::PaymentNotIdempotent => (
                "checkout-bug-payment-not-idempotent",
                "checkout whose payment handler charges with a fresh key per delivery",
            ),
            PlantedBug::NoCompensationOnTimeout => (
                "checkout-bug-no-compensation-on-timeout",
                "checkout whose saga forgets money and stock on a payment timeout",
            ),
            PlantedBug::ApplyBeforeAppend => (
                "checkout-bug-apply-before-append",
                "checkout whose aggregate cache applies decisions before the append succeeds",
            ),
            PlantedBug::DecideFromProjection => (
                "checkout-bug-decide-from-projection",
                "checkout whose inventory reserves against a lagging projection",
            ),
            PlantedBug::RetryStorm => (
                "checkout-bug-retry-storm",
                "checkout whose payment handler retries the provider until it answers, without a breaker",
            ),
            PlantedBug::VoidUnrecordedCharge => (
                "checkout-bug-void-unrecorded-charge",
                "deep: checkout whose refund, sent back by an operator, is voided from our own books without the provider",
            ),
            PlantedBug::TrackerBlindWrite => (
                "checkout-bug-tracker-blind-write",
                "deep: checkout whose shipping tracker retries a timed-out append expecting any version",
            ),
        };
        CheckoutScenario {
            bugs: Bugs::only(bug),
            name,
            description,
            ..Self::correct()
        }
    }
}

struct CheckoutRun {
    workload: Arc<CheckoutWorkload>,
    provider: Arc<PaymentProvider>,
    audit: RefCell<CheckoutAudit>,
    /// A violation found by a liveness poll that can never heal (the run has settled and
    /// its final state is wrong): reported by the next safety check, without waiting for
    /// the liveness bound.
    latched: RefCell<Option<Violation>>,
    /// (provider revision, audit dependency) at which the books last passed: the books
    /// check is a pure function of both, so it is skipped until one of them moves.
    books_passed: Cell<Option<(u64, usize)>>,
    /// The dead-letter queue: outside every node, durable across crashes.
    dead_letters: InMemoryDeadLetterQueue,
    /// Calls to the provider and payment commands delivered, per order.
    payment_calls: Arc<Mutex<CallLedger>>,
    /// Registrations at the carrier and shipping commands delivered, per order.
    carrier_calls: Arc<Mutex<CallLedger>>,
    /// Ledger changes at which the retry bound last passed (payments, carrier).
    bound_passed: Cell<(u64, u64)>,
    /// The resilience of every payment and shipping instance booted so far.
    payment_instances: Arc<Mutex<Vec<Arc<Resilience>>>>,
    shipping_instances: Arc<Mutex<Vec<Arc<Resilience>>>>,
    /// Set when the operator may start sending dead letters back.
    operator_released: Arc<AtomicBool>,
    /// This seed's operator waits until every saga has settled (proving settlement does
    /// not need the dead letters) instead of starting as soon as faults heal (racing the
    /// sagas' compensations).
    operator_waits_for_settlement: bool,
    report: Option<(DependencyReports, usize)>,
}

fn breaker_opened(instances: &Mutex<Vec<Arc<Resilience>>>, dependency: &str) -> bool {
    instances.lock().iter().any(|resilience| {
        resilience
            .breaker(dependency)
            .is_some_and(|breaker| breaker.transitions() > 0)
    })
}

impl CheckoutRun {
    /// Retries stay bounded (see [`CallLedger::check_bounded`]).
    fn check_bounded(&self) -> Result<(), Violation> {
        let payments = self.payment_calls.lock();
        let carrier = self.carrier_calls.lock();
        let key = (payments.changes(), carrier.changes());
        if self.bound_passed.get() == key {
            return Ok(());
        }
        payments
            .check_bounded(PAYMENT_PROVIDER)
            .map_err(violation)?;
        carrier.check_bounded(CARRIER).map_err(violation)?;
        self.bound_passed.set(key);
        Ok(())
    }

    /// Lets the operator start once the incident is over: faults healed and — if this
    /// seed's operator waits for it — every saga settled correctly without its help.
    fn release_operator(&self, world: &WorldView<'_>, settled: bool) {
        if world.phase() == Phase::Liveness && (settled || !self.operator_waits_for_settlement) {
            self.operator_released.store(true, Ordering::Relaxed);
        }
    }

    fn update_report(&self) {
        let Some((reports, index)) = &self.report else {
            return;
        };
        let letters = self.dead_letters.snapshot();
        let payments = self.payment_calls.lock();
        let carrier = self.carrier_calls.lock();
        let mut reports = reports.lock();
        let report = &mut reports[*index];
        report.payment_breaker_opened = breaker_opened(&self.payment_instances, PAYMENT_PROVIDER);
        report.carrier_breaker_opened = breaker_opened(&self.shipping_instances, CARRIER);
        report.provider_calls = payments.total_calls();
        report.payment_deliveries = payments.total_delivered();
        report.payment_attempts = self
            .payment_instances
            .lock()
            .iter()
            .map(|r| r.attempts_made())
            .sum();
        report.carrier_registrations = carrier.total_calls();
        report.shipping_deliveries = carrier.total_delivered();
        report.dead_letters = letters.len();
        report.redelivered = letters
            .iter()
            .filter(|l| {
                matches!(
                    l.status,
                    reprise_core::resilience::DeadLetterStatus::Retried { .. }
                )
            })
            .count();
    }

    fn catch_up(
        &self,
        store: &InMemoryEventStore,
        bus: &InMemoryEventBus,
    ) -> Result<(), Violation> {
        self.check_bounded()?;
        let mut audit = self.audit.borrow_mut();
        let events = store.read_all_now(audit.next_position(), usize::MAX);
        audit.observe(&events).map_err(violation)?;
        audit.check_consumers(bus).map_err(violation)?;
        let key = (self.provider.revision(), audit.books_dependency());
        if self.books_passed.get() == Some(key) {
            return Ok(());
        }
        self.provider
            .with_books(|books| audit.check_books(books))
            .map_err(violation)?;
        self.books_passed.set(Some(key));
        Ok(())
    }

    /// Every saga settled correctly, then (once the operator has been at work) no dead
    /// letter pending and every redelivered one handled. The sagas must settle without
    /// the dead letters: their deadlines compensate whatever was parked.
    fn settled(&self, world: &WorldView<'_>) -> Result<(), Violation> {
        let (store, bus) = (world.event_store(), world.event_bus());
        self.catch_up(store, bus)?;
        let mut audit = self.audit.borrow_mut();
        match self
            .provider
            .with_books(|books| audit.check_settled(&self.workload, books))
        {
            Ok(()) => {}
            Err(finding) if finding.invariant == checkout_invariant::SAGAS_TERMINAL => {
                return Err(violation(finding));
            }
            Err(finding) => {
                // Every saga is terminal: nothing will change this state any more.
                let found = violation(finding);
                *self.latched.borrow_mut() = Some(found.clone());
                return Err(found);
            }
        }
        self.release_operator(world, true);
        audit
            .check_dead_letters(bus, &self.dead_letters.snapshot())
            .map_err(violation)
    }
}

impl ScenarioRun for CheckoutRun {
    fn check_safety(&self, world: &WorldView<'_>) -> Result<(), Violation> {
        if let Some(found) = self.latched.borrow().clone() {
            return Err(found);
        }
        self.release_operator(world, false);
        let result = self.catch_up(world.event_store(), world.event_bus());
        self.update_report();
        result
    }

    fn check_liveness(&self, world: &WorldView<'_>) -> Result<(), Violation> {
        let result = self.settled(world);
        self.update_report();
        result
    }
}

impl Scenario for CheckoutScenario {
    fn name(&self) -> &'static str {
        self.name
    }

    fn description(&self) -> &'static str {
        self.description
    }

    fn situations(&self) -> Vec<Situation> {
        declared(&crate::checkout::situations::ALL)
    }

    fn fault_points(&self) -> Vec<&'static str> {
        reprise_host::FAULT_POINTS.to_vec()
    }

    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        let workload = Arc::new(CheckoutWorkload::generate(&self.options, &mut || {
            world.random_u64()
        }));
        let provider = Arc::new(PaymentProvider::new(self.options.decline_every));
        let carrier = Arc::new(CarrierModel::new(CarrierOptions::new(world.random_u64())));
        // Drawn after everything else, so the workload and the carrier stay as they were.
        let operator_waits_for_settlement = world.random_u64() % 2 == 0;
        let dead_letters = InMemoryDeadLetterQueue::new();
        let payment_calls = Arc::new(Mutex::new(CallLedger::default()));
        let carrier_calls = Arc::new(Mutex::new(CallLedger::default()));
        let payment_instances: Arc<Mutex<Vec<Arc<Resilience>>>> = Arc::default();
        let shipping_instances: Arc<Mutex<Vec<Arc<Resilience>>>> = Arc::default();
        let operator_released = Arc::new(AtomicBool::new(false));
        // Real services fail now and then in every phase; liveness must hold regardless.
        world.add_dependency(
            PAYMENT_PROVIDER,
            DependencyOptions {
                latency_min_ms: 20,
                latency_max_ms: 200,
                error_probability: 0.02,
                timeout_ms: 1_000,
            },
        );
        world.add_dependency(
            CARRIER,
            DependencyOptions {
                latency_min_ms: 10,
                latency_max_ms: 100,
                error_probability: 0.02,
                timeout_ms: 1_000,
            },
        );
        let bugs = self.bugs;

        let client_workload = Arc::clone(&workload);
        world.add_node("client", crashable(), move |ctx| {
            let env = service_env(&ctx);
            ctx.spawn("client", run_client(env, Arc::clone(&client_workload)));
        });
        // Two saga instances in one consumer group: a saga's inputs are keyed by the
        // aggregate that produced them, so they land on partitions owned by either
        // instance, and each instance's cached saga may be stale.
        for name in ["saga", "saga-2"] {
            world.add_node(name, crashable(), move |ctx| {
                let lease = ctx.lease(&services::relay_options().lease_name());
                services::start_saga_service(&service_env(&ctx), lease, bugs);
            });
        }
        world.add_node("orders", crashable(), move |ctx| {
            services::start_orders_service(&service_env(&ctx), bugs);
        });
        world.add_node("inventory", crashable(), move |ctx| {
            services::start_inventory_service(&service_env(&ctx), bugs);
        });
        let payment_provider = Arc::clone(&provider);
        let (queue, instances, calls) = (
            dead_letters.clone(),
            Arc::clone(&payment_instances),
            Arc::clone(&payment_calls),
        );
        world.add_node("payments", crashable(), move |ctx| {
            let env = guarded_env(&ctx, &queue, &instances, topics::PAYMENTS, &calls);
            let gateway = Arc::new(SimulatedProvider {
                ctx: ctx.clone(),
                provider: Arc::clone(&payment_provider),
                calls: Arc::clone(&calls),
            });
            services::start_payment_service(&env, gateway, bugs);
        });
        let (queue, instances, calls) = (
            dead_letters.clone(),
            Arc::clone(&shipping_instances),
            Arc::clone(&carrier_calls),
        );
        world.add_node("shipping", crashable(), move |ctx| {
            let env = guarded_env(&ctx, &queue, &instances, topics::SHIPPING, &calls);
            let carrier = Arc::new(SimulatedCarrier {
                ctx: ctx.clone(),
                model: Arc::clone(&carrier),
                registrations: Arc::clone(&calls),
            });
            services::start_shipping_service(&env, carrier, bugs);
        });
        // The operator is a person with a console, not a service: never crashed, paused
        // or skewed, and idle until the incident is over.
        let (queue, released) = (dead_letters.clone(), Arc::clone(&operator_released));
        let steady = NodeOptions {
            crashable: false,
            pausable: false,
            clock_skew: false,
        };
        world.add_node("operator", steady, move |ctx| {
            let env = service_env(&ctx);
            ctx.spawn(
                "operator",
                run_operator(env, queue.clone(), Arc::clone(&released)),
            );
        });
        let report = self.reports.as_ref().map(|reports| {
            let mut list = reports.lock();
            list.push(DependencyReport {
                seed: world.seed(),
                operator_waited_for_settlement: operator_waits_for_settlement,
                ..DependencyReport::default()
            });
            (Arc::clone(reports), list.len() - 1)
        });
        Box::new(CheckoutRun {
            workload,
            provider,
            audit: RefCell::new(CheckoutAudit::new()),
            latched: RefCell::new(None),
            books_passed: Cell::new(None),
            dead_letters,
            payment_calls,
            carrier_calls,
            bound_passed: Cell::new((0, 0)),
            payment_instances,
            shipping_instances,
            operator_released,
            operator_waits_for_settlement,
            report,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Transfers
// ---------------------------------------------------------------------------------------

/// The bank-transfers scenario, correct or with one planted bug.
#[derive(Clone, Debug)]
pub struct TransfersScenario {
    pub options: TransfersOptions,
    pub bugs: Bugs,
    name: &'static str,
    description: &'static str,
}

impl TransfersScenario {
    /// The correct transfers.
    #[must_use]
    pub fn correct() -> Self {
        TransfersScenario {
            options: TransfersOptions::default(),
            bugs: Bugs::NONE,
            name: "transfers",
            description: "~50 concurrent transfers between 8 accounts: debit, credit, reverse; four nodes (two saga instances)",
        }
    }

    /// The planted bugs that apply to transfers (the shared plumbing's), as scenarios
    /// named `transfers-bug-<slug>`.
    #[must_use]
    pub fn bug_variants() -> Vec<Self> {
        vec![
            TransfersScenario {
                bugs: Bugs::only(PlantedBug::AckBeforeProcess),
                name: "transfers-bug-ack-before-process",
                description: "transfers whose consumers commit offsets before handling",
                ..Self::correct()
            },
            TransfersScenario {
                bugs: Bugs::only(PlantedBug::ApplyBeforeAppend),
                name: "transfers-bug-apply-before-append",
                description: "transfers whose account cache applies decisions before the append succeeds",
                ..Self::correct()
            },
        ]
    }
}

struct TransfersRun {
    workload: Arc<TransfersWorkload>,
    audit: RefCell<TransfersAudit>,
    latched: RefCell<Option<Violation>>,
}

impl TransfersRun {
    fn catch_up(
        &self,
        store: &InMemoryEventStore,
        bus: &InMemoryEventBus,
    ) -> Result<(), Violation> {
        let mut audit = self.audit.borrow_mut();
        let events = store.read_all_now(audit.next_position(), usize::MAX);
        audit.observe(&events).map_err(violation)?;
        audit.check_consumers(bus).map_err(violation)
    }
}

impl ScenarioRun for TransfersRun {
    fn check_safety(&self, world: &WorldView<'_>) -> Result<(), Violation> {
        if let Some(found) = self.latched.borrow().clone() {
            return Err(found);
        }
        self.catch_up(world.event_store(), world.event_bus())
    }

    fn check_liveness(&self, world: &WorldView<'_>) -> Result<(), Violation> {
        self.catch_up(world.event_store(), world.event_bus())?;
        match self.audit.borrow().check_settled(&self.workload) {
            Ok(()) => Ok(()),
            Err(finding) if finding.invariant == transfers_invariant::SAGAS_TERMINAL => {
                Err(violation(finding))
            }
            Err(finding) => {
                let found = violation(finding);
                *self.latched.borrow_mut() = Some(found.clone());
                Err(found)
            }
        }
    }
}

impl Scenario for TransfersScenario {
    fn name(&self) -> &'static str {
        self.name
    }

    fn description(&self) -> &'static str {
        self.description
    }

    fn situations(&self) -> Vec<Situation> {
        declared(&crate::transfers::situations::ALL)
    }

    fn fault_points(&self) -> Vec<&'static str> {
        reprise_host::FAULT_POINTS.to_vec()
    }

    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        let workload = Arc::new(TransfersWorkload::generate(&self.options, &mut || {
            world.random_u64()
        }));
        let bugs = self.bugs;
        let client_workload = Arc::clone(&workload);
        world.add_node("client", crashable(), move |ctx| {
            let env = service_env(&ctx);
            ctx.spawn(
                "client",
                transfers::services::run_client(env, Arc::clone(&client_workload)),
            );
        });
        // Two saga instances in one consumer group, as in checkout.
        for name in ["saga", "saga-2"] {
            world.add_node(name, crashable(), move |ctx| {
                let lease = ctx.lease(&transfers::services::relay_options().lease_name());
                transfers::services::start_saga_service(&service_env(&ctx), lease, bugs);
            });
        }
        world.add_node("accounts", crashable(), move |ctx| {
            transfers::services::start_accounts_service(&service_env(&ctx), bugs);
        });
        Box::new(TransfersRun {
            workload,
            audit: RefCell::new(TransfersAudit::new()),
            latched: RefCell::new(None),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Registry and reports
// ---------------------------------------------------------------------------------------

/// Every scenario of this crate: the correct ones first, then one per planted bug.
#[must_use]
pub fn all() -> Vec<Box<dyn Scenario>> {
    let mut scenarios: Vec<Box<dyn Scenario>> = vec![
        Box::new(CheckoutScenario::correct()),
        Box::new(TransfersScenario::correct()),
    ];
    for bug in PlantedBug::ALL {
        scenarios.push(Box::new(CheckoutScenario::with_bug(bug)));
    }
    scenarios.extend(
        TransfersScenario::bug_variants()
            .into_iter()
            .map(|s| Box::new(s) as Box<dyn Scenario>),
    );
    scenarios
}

/// The scenario registered under `name`.
#[must_use]
pub fn by_name(name: &str) -> Option<Box<dyn Scenario>> {
    all().into_iter().find(|s| s.name() == name)
}

/// A failure as a person wants to read it: the broken invariant, the entities involved,
/// and the last `lines` trace lines that mention any of them. Needs a report run with
/// [`reprise_sim::TraceMode::Full`].
#[must_use]
pub fn explain_failure(report: &RunReport, lines: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} failed: {} ({})",
        report.scenario,
        report.outcome,
        report.summary()
    );
    let Some(found) = report.violation() else {
        return out;
    };
    let _ = writeln!(out, "  invariant: {}", found.invariant);
    let _ = writeln!(out, "  entities:  {}", found.entities.join(", "));
    let _ = writeln!(out, "  message:   {}", found.message);
    let Some(trace) = &report.trace else {
        let _ = writeln!(
            out,
            "  (replay with a full trace to see the lines that touched them)"
        );
        return out;
    };
    let touching = reprise_sim::harness::lines_touching(trace, &found.entities);
    let skip = touching.len().saturating_sub(lines);
    let _ = writeln!(
        out,
        "  last {} of {} trace lines touching them:",
        touching.len() - skip,
        touching.len()
    );
    for line in &touching[skip..] {
        let _ = writeln!(out, "    {line}");
    }
    let _ = writeln!(
        out,
        "  reproduce: reprise run {} --seed {} --plan {} --trace",
        report.scenario, report.seed, report.plan.name
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_unique_and_resolvable() {
        let names: Vec<&str> = all().iter().map(|s| s.name()).collect();
        let unique: std::collections::BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for name in names {
            assert_eq!(by_name(name).map(|s| s.name()), Some(name));
        }
        assert!(by_name("no-such-scenario").is_none());
    }
}
