//! The scenarios as the simulator runs them: nodes, dependencies, workload and checkers
//! wired onto a [`reprise_sim::World`], and the registry the CLI lists.
//!
//! This is the only module that knows about the simulator. It adapts a node's
//! [`NodeContext`] into the [`ServiceEnv`] the services expect, and routes the services'
//! calls to the payment provider and the carrier through [`NodeContext::call`], where the
//! simulator can refuse, fail, delay or lose them. Everything else is the same code a
//! production deployment runs.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::sync::Arc;

use reprise_core::{BoxFuture, InMemoryEventBus, InMemoryEventStore};
use reprise_sim::{
    DependencyError, DependencyOptions, NodeContext, NodeOptions, RunReport, Scenario, ScenarioRun,
    Violation, World, WorldView,
};

use crate::audit::Finding;
use crate::bugs::{Bugs, PlantedBug};
use crate::checkout::gateway::{
    CarrierStatus, ChargeOutcome, ChargeRequest, ExternalError, RefundOutcome,
};
use crate::checkout::invariants::{CheckoutAudit, invariant as checkout_invariant};
use crate::checkout::workload::{CheckoutOptions, CheckoutWorkload, run_client};
use crate::checkout::{
    Carrier, CarrierModel, CarrierOptions, PaymentGateway, PaymentProvider, services,
};
use crate::plumbing::ServiceEnv;
use crate::transfers;
use crate::transfers::invariants::{TransfersAudit, invariant as transfers_invariant};
use crate::transfers::services::{TransfersOptions, TransfersWorkload};

/// Dependency names.
pub const PAYMENT_PROVIDER: &str = "payment-provider";
pub const CARRIER: &str = "carrier";

/// A service environment on a simulated node.
#[must_use]
pub fn service_env(ctx: &NodeContext) -> ServiceEnv {
    let notes_ctx = ctx.clone();
    ServiceEnv::new(ctx.runtime(), ctx.event_store(), ctx.event_bus())
        .with_notes(Arc::new(move |text| notes_ctx.note_fmt(text)))
}

fn external(error: DependencyError) -> ExternalError {
    match error {
        DependencyError::Timeout(_) => ExternalError::Timeout,
        other => ExternalError::Unavailable(other.to_string()),
    }
}

/// The payment provider as a simulated node reaches it.
struct SimulatedProvider {
    ctx: NodeContext,
    provider: Arc<PaymentProvider>,
}

impl PaymentGateway for SimulatedProvider {
    fn charge(
        &self,
        request: ChargeRequest,
    ) -> BoxFuture<'static, Result<ChargeOutcome, ExternalError>> {
        let provider = Arc::clone(&self.provider);
        let call = self
            .ctx
            .call(PAYMENT_PROVIDER, move || provider.charge_now(&request));
        Box::pin(async move { call.await.map_err(external) })
    }

    fn refund(
        &self,
        idempotency_key: String,
    ) -> BoxFuture<'static, Result<RefundOutcome, ExternalError>> {
        let provider = Arc::clone(&self.provider);
        let call = self.ctx.call(PAYMENT_PROVIDER, move || {
            provider.refund_now(&idempotency_key)
        });
        Box::pin(async move { call.await.map_err(external) })
    }
}

/// The carrier as a simulated node reaches it. The model reads the node's clock when the
/// request arrives.
struct SimulatedCarrier {
    ctx: NodeContext,
    model: Arc<CarrierModel>,
}

impl Carrier for SimulatedCarrier {
    fn register(&self, order: String) -> BoxFuture<'static, Result<String, ExternalError>> {
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

fn violation(finding: Finding) -> Violation {
    let mut violation = Violation::new(finding.invariant, finding.message);
    violation.entities = finding.entities;
    violation
}

fn crashable() -> NodeOptions {
    NodeOptions::default()
}

// ---------------------------------------------------------------------------------------
// Checkout
// ---------------------------------------------------------------------------------------

/// The checkout scenario, correct or with one planted bug.
#[derive(Clone, Debug)]
pub struct CheckoutScenario {
    pub options: CheckoutOptions,
    pub bugs: Bugs,
    name: &'static str,
    description: &'static str,
}

impl CheckoutScenario {
    /// The correct checkout.
    #[must_use]
    pub fn correct() -> Self {
        CheckoutScenario {
            options: CheckoutOptions::default(),
            bugs: Bugs::NONE,
            name: "checkout",
            description: "~50 checkouts: order → inventory → payment → shipping saga with compensation, six nodes",
        }
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
}

impl CheckoutRun {
    fn catch_up(
        &self,
        store: &InMemoryEventStore,
        bus: &InMemoryEventBus,
    ) -> Result<(), Violation> {
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

    fn settled(&self, store: &InMemoryEventStore, bus: &InMemoryEventBus) -> Result<(), Violation> {
        self.catch_up(store, bus)?;
        let audit = self.audit.borrow();
        match self
            .provider
            .with_books(|books| audit.check_settled(&self.workload, books))
        {
            Ok(()) => Ok(()),
            Err(finding) if finding.invariant == checkout_invariant::SAGAS_TERMINAL => {
                Err(violation(finding))
            }
            Err(finding) => {
                // Every saga is terminal: nothing will change this state any more.
                let found = violation(finding);
                *self.latched.borrow_mut() = Some(found.clone());
                Err(found)
            }
        }
    }
}

impl ScenarioRun for CheckoutRun {
    fn check_safety(&self, world: &WorldView<'_>) -> Result<(), Violation> {
        if let Some(found) = self.latched.borrow().clone() {
            return Err(found);
        }
        self.catch_up(world.event_store(), world.event_bus())
    }

    fn check_liveness(&self, world: &WorldView<'_>) -> Result<(), Violation> {
        self.settled(world.event_store(), world.event_bus())
    }
}

impl Scenario for CheckoutScenario {
    fn name(&self) -> &'static str {
        self.name
    }

    fn description(&self) -> &'static str {
        self.description
    }

    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        let workload = Arc::new(CheckoutWorkload::generate(&self.options, &mut || {
            world.random_u64()
        }));
        let provider = Arc::new(PaymentProvider::new(self.options.decline_every));
        let carrier = Arc::new(CarrierModel::new(CarrierOptions::new(world.random_u64())));
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
        world.add_node("saga", crashable(), move |ctx| {
            services::start_saga_service(&service_env(&ctx), bugs);
        });
        world.add_node("orders", crashable(), move |ctx| {
            services::start_orders_service(&service_env(&ctx), bugs);
        });
        world.add_node("inventory", crashable(), move |ctx| {
            services::start_inventory_service(&service_env(&ctx), bugs);
        });
        let payment_provider = Arc::clone(&provider);
        world.add_node("payments", crashable(), move |ctx| {
            let gateway = Arc::new(SimulatedProvider {
                ctx: ctx.clone(),
                provider: Arc::clone(&payment_provider),
            });
            services::start_payment_service(&service_env(&ctx), gateway, bugs);
        });
        world.add_node("shipping", crashable(), move |ctx| {
            let carrier = Arc::new(SimulatedCarrier {
                ctx: ctx.clone(),
                model: Arc::clone(&carrier),
            });
            services::start_shipping_service(&service_env(&ctx), carrier, bugs);
        });
        Box::new(CheckoutRun {
            workload,
            provider,
            audit: RefCell::new(CheckoutAudit::new()),
            latched: RefCell::new(None),
            books_passed: Cell::new(None),
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
            description: "~50 concurrent transfers between 8 accounts: debit, credit, reverse; three nodes",
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
        world.add_node("saga", crashable(), move |ctx| {
            transfers::services::start_saga_service(&service_env(&ctx), bugs);
        });
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
