//! Running a scenario: configuration, the run loop with its two phases, the report, and
//! the determinism self-check.
//!
//! A run has two phases:
//! 1. **Faults** (`0 .. fault_window`): the workload runs while the plan injects faults;
//!    safety is checked every `check_every`.
//! 2. **Liveness** (`fault_window ..`): everything is healed at once — partitions and
//!    outages end, paused nodes resume, crashed nodes reboot, no new fault fires — and the
//!    scenario's liveness condition must hold within `liveness_bound`. A system that only
//!    works when nothing goes wrong passes phase 1 and fails here.
//!
//! The run ends as soon as the outcome is known: a violation, liveness reached, a hang
//! (nothing runnable, no timer pending, liveness not reached — a stuck run is reported,
//! never waited on), or a budget (steps, simulated time) exhausted. With
//! [`SimConfig::settle_early`], a run whose liveness already holds during the fault window
//! moves to the liveness phase right away: most runs finish their workload long before
//! the window closes, and simulating idle nemesis ticks would only burn CPU.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reprise_core::{InMemoryEventBus, InMemoryEventStore};
use serde::Serialize;

use crate::checker::{Scenario, ScenarioRun, Violation, WorldView};
use crate::clock::GlobalClock;
use crate::executor::{Control, Kernel, STREAM_PLAN, Shared, rng_stream};
use crate::faults::{FaultRecord, Injector, NemesisAction, install_oracle};
use crate::plan::{FaultPlan, PlanError};
use crate::trace::{Tag, TraceLine, TraceMode, summary_line};
use crate::world::{self, Environment, NodeStatus, World};

/// Everything that defines a run besides the scenario. A run is a pure function of
/// (scenario, config).
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    pub seed: u64,
    pub plan: FaultPlan,
    /// Faults fire only before this much simulated time has passed.
    pub fault_window: Duration,
    /// After the fault window, liveness must hold within this much simulated time.
    pub liveness_bound: Duration,
    /// Hard cap on simulated time.
    pub max_sim_time: Duration,
    /// Hard cap on scheduled task polls (catches livelocks that never advance time).
    pub max_steps: u64,
    /// Period of safety checks (and liveness polls) in simulated time.
    pub check_every: Duration,
    /// Period of nemesis ticks (see [`crate::plan`]).
    pub nemesis_tick: Duration,
    /// Leave the fault window as soon as liveness holds. See the module docs.
    pub settle_early: bool,
    pub trace: TraceMode,
    /// Count the scenario's `sometimes!` hits into [`RunReport::coverage`]. Off or on,
    /// the run and its hash are the same (`reprise_core::coverage`).
    pub coverage: bool,
}

impl SimConfig {
    /// Defaults: calm plan, 10 s fault window, 30 s liveness bound, checks every 100 ms.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            plan: FaultPlan::calm(),
            fault_window: Duration::from_secs(10),
            liveness_bound: Duration::from_secs(30),
            max_sim_time: Duration::from_secs(3_600),
            max_steps: 50_000_000,
            check_every: Duration::from_millis(100),
            nemesis_tick: Duration::from_millis(100),
            settle_early: true,
            trace: TraceMode::Hash,
            coverage: true,
        }
    }

    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    #[must_use]
    pub fn with_plan(mut self, plan: FaultPlan) -> Self {
        self.plan = plan;
        self
    }

    #[must_use]
    pub fn with_trace(mut self, trace: TraceMode) -> Self {
        self.trace = trace;
        self
    }

    #[must_use]
    pub fn with_coverage(mut self, coverage: bool) -> Self {
        self.coverage = coverage;
        self
    }

    #[must_use]
    pub fn with_fault_window(mut self, window: Duration) -> Self {
        self.fault_window = window;
        self
    }

    #[must_use]
    pub fn with_liveness_bound(mut self, bound: Duration) -> Self {
        self.liveness_bound = bound;
        self
    }

    /// Checks the configuration and its plan.
    ///
    /// # Errors
    /// [`SimError`] naming the problem.
    pub fn validate(&self) -> Result<(), SimError> {
        self.plan.validate()?;
        let positive = [
            ("check_every", self.check_every),
            ("nemesis_tick", self.nemesis_tick),
            ("liveness_bound", self.liveness_bound),
            ("max_sim_time", self.max_sim_time),
        ];
        for (field, value) in positive {
            if value.is_zero() {
                return Err(SimError::Config(format!("{field} must be positive")));
            }
        }
        if self.max_steps == 0 {
            return Err(SimError::Config("max_steps must be positive".into()));
        }
        if self.fault_window + self.liveness_bound > self.max_sim_time {
            return Err(SimError::Config(format!(
                "fault_window + liveness_bound ({:?}) exceeds max_sim_time ({:?})",
                self.fault_window + self.liveness_bound,
                self.max_sim_time
            )));
        }
        Ok(())
    }
}

/// Why a run could not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("invalid fault plan: {0}")]
    Plan(#[from] PlanError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("fault {fault} targets node {node}, which the scenario does not have")]
    UnknownNode { fault: &'static str, node: String },
    #[error("fault {fault} targets dependency {dependency}, which the scenario does not have")]
    UnknownDependency {
        fault: &'static str,
        dependency: String,
    },
}

/// Which phase of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Phase {
    Faults,
    Liveness,
}

/// Which budget ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Budget {
    Steps(u64),
    SimTime(Duration),
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Outcome {
    Passed,
    /// A safety invariant broke, or liveness did not hold within the bound.
    Violated {
        violation: Violation,
        at: Duration,
        phase: Phase,
    },
    /// Nothing could run, no timer was pending, and liveness did not hold.
    Hung {
        violation: Violation,
        at: Duration,
        phase: Phase,
        blocked_tasks: Vec<String>,
    },
    BudgetExceeded {
        budget: Budget,
        at: Duration,
    },
}

impl Outcome {
    #[must_use]
    pub fn is_pass(&self) -> bool {
        matches!(self, Outcome::Passed)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Passed => f.write_str("passed"),
            Outcome::Violated {
                violation,
                at,
                phase,
            } => write!(f, "violated at {at:?} ({phase:?} phase): {violation}"),
            Outcome::Hung {
                violation,
                at,
                phase,
                blocked_tasks,
            } => write!(
                f,
                "hung at {at:?} ({phase:?} phase): nothing runnable, no timer pending, {} task(s) blocked; liveness: {violation}",
                blocked_tasks.len()
            ),
            Outcome::BudgetExceeded { budget, at } => {
                write!(f, "budget exceeded at {at:?}: {budget:?}")
            }
        }
    }
}

/// Counters of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunStats {
    /// Task polls.
    pub steps: u64,
    pub tasks_spawned: u64,
    pub tasks_live_at_end: u64,
    pub sim_time: Duration,
    pub trace_events: u64,
    pub store_ops: u64,
    pub bus_publishes: u64,
    pub bus_deliveries: u64,
    pub dependency_calls: u64,
    /// Lease acquires, confirms and releases.
    pub lease_ops: u64,
    pub boots: u64,
    pub notes: u64,
    pub safety_checks: u64,
}

/// Everything a run produced.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub scenario: &'static str,
    pub seed: u64,
    /// The trace hash (0 with [`TraceMode::Off`]).
    pub hash: u64,
    /// The concrete plan (a swarm plan's draw for this seed).
    pub plan: FaultPlan,
    pub outcome: Outcome,
    /// The faults injected: by the plan, and by the scenario's script (`script.*`).
    pub faults: Vec<FaultRecord>,
    /// Failures that are not injected faults: calls failed by a dependency's inherent
    /// error rate ([`crate::DependencyOptions::error_probability`],
    /// `dependency.inherent_error`). They happen in every phase and under every plan, so
    /// they are neither counted as faults fired nor shrunk.
    pub inherent_errors: Vec<FaultRecord>,
    pub stats: RunStats,
    /// The readable trace, with [`TraceMode::Full`].
    pub trace: Option<Vec<TraceLine>>,
    /// The `sometimes!` situations this run reached, with their hit counts, by name
    /// (empty when [`SimConfig::coverage`] is off).
    pub coverage: Vec<(&'static str, u64)>,
    /// The durable event store as the run left it, for checks after the run
    /// (`read_all_now`, `read_stream_now`, …). Not serialized.
    #[serde(skip)]
    pub event_store: Arc<InMemoryEventStore>,
    /// The durable event bus as the run left it (`messages`, `committed`, `lag`). Not
    /// serialized.
    #[serde(skip)]
    pub event_bus: Arc<InMemoryEventBus>,
}

impl RunReport {
    /// `seed=<n> hash=<16 hex digits>`: the line every run ends with.
    #[must_use]
    pub fn summary(&self) -> String {
        summary_line(self.seed, self.hash)
    }

    #[must_use]
    pub fn passed(&self) -> bool {
        self.outcome.is_pass()
    }

    /// The violated invariant, for failed runs.
    #[must_use]
    pub fn violation(&self) -> Option<&Violation> {
        match &self.outcome {
            Outcome::Violated { violation, .. } | Outcome::Hung { violation, .. } => {
                Some(violation)
            }
            _ => None,
        }
    }

    /// The last `n` trace lines (full mode only).
    #[must_use]
    pub fn trace_tail(&self, n: usize) -> &[TraceLine] {
        self.trace
            .as_deref()
            .map_or(&[], |lines| &lines[lines.len().saturating_sub(n)..])
    }
}

/// Runs `scenario` under `config`.
///
/// # Panics
/// If the configuration is invalid; use [`try_run`] to get the error instead.
#[must_use]
pub fn run(scenario: &dyn Scenario, config: &SimConfig) -> RunReport {
    match try_run(scenario, config) {
        Ok(report) => report,
        Err(e) => panic!("reprise-sim: cannot run {}: {e}", scenario.name()),
    }
}

/// Runs `scenario` under `config`.
///
/// # Errors
/// [`SimError`] if the configuration or plan is invalid or names nodes or dependencies
/// the scenario does not have.
pub fn try_run(scenario: &dyn Scenario, config: &SimConfig) -> Result<RunReport, SimError> {
    config.validate()?;
    let plan = config
        .plan
        .resolve(&mut rng_stream(config.seed, STREAM_PLAN));
    let shared = Arc::new_cyclic(|weak| {
        let store = Arc::new(InMemoryEventStore::with_clock(Arc::new(GlobalClock {
            shared: weak.clone(),
        })));
        let bus = Arc::new(InMemoryEventBus::new());
        Shared::new(
            Kernel::new(
                config.seed,
                config.trace,
                Injector::default(),
                Environment::default(),
            ),
            store,
            bus,
        )
    });
    // Collecting from before the setup on: boot functions run scenario code too. The
    // collection lives on this thread, outside the kernel, so it cannot reach the trace.
    let collection = config
        .coverage
        .then(|| reprise_core::coverage::collect(&scenario.situations()));
    let mut world = World::new(Arc::clone(&shared), config.seed);
    let checker = scenario.setup(&mut world);
    drop(world);
    let result = prepare(&shared, plan, config).map(|()| {
        let _oracle = install_oracle(&shared);
        let outcome = drive(&shared, &*checker, config);
        report(&shared, scenario.name(), config.seed, outcome)
    });
    shared.shutdown();
    let coverage = collection.map(reprise_core::coverage::Collection::finish);
    result.map(|mut report| {
        report.coverage = coverage.unwrap_or_default();
        report
    })
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Resolves the plan and schedules the run's controls, then boots every node.
fn prepare(shared: &Arc<Shared>, plan: FaultPlan, config: &SimConfig) -> Result<(), SimError> {
    let nodes = {
        let mut k = shared.kernel.lock();
        assert!(
            !k.nodes.is_empty(),
            "a scenario registers at least one node"
        );
        let injector = Injector::new(plan, &k.nodes, &k.env.dependencies)?;
        let has_nemesis = injector.has_nemesis();
        k.injector = injector;
        let start = k.start;
        if has_nemesis {
            k.schedule(start + nanos(config.nemesis_tick), Control::NemesisTick);
        }
        k.schedule(start + nanos(config.check_every), Control::SafetyCheck);
        k.schedule(start + nanos(config.fault_window), Control::EndFaultWindow);
        k.resolve_script(config.fault_window)?;
        u16::try_from(k.nodes.len()).expect("node count fits u16")
    };
    for node in 0..nodes {
        world::boot(shared, node);
    }
    Ok(())
}

/// What a control decided.
enum Next {
    Continue,
    Finish(Outcome),
}

fn view(shared: &Arc<Shared>) -> WorldView<'_> {
    WorldView { shared }
}

fn elapsed(shared: &Shared) -> Duration {
    Duration::from_nanos(shared.kernel.lock().elapsed())
}

fn phase(shared: &Shared) -> Phase {
    shared.kernel.lock().phase
}

fn check_safety(shared: &Arc<Shared>, checker: &dyn ScenarioRun) -> Result<(), Outcome> {
    shared.kernel.lock().stats.safety_checks += 1;
    let result = checker.check_safety(&view(shared));
    let ok = result.is_ok();
    shared
        .kernel
        .lock()
        .record(Tag::Check, None, 1, u64::from(ok), || {
            format!("safety check: {}", if ok { "ok" } else { "VIOLATED" })
        });
    result.map_err(|violation| Outcome::Violated {
        violation,
        at: elapsed(shared),
        phase: phase(shared),
    })
}

/// Liveness holds: one last safety check decides the outcome.
fn settled(shared: &Arc<Shared>, checker: &dyn ScenarioRun) -> Outcome {
    shared
        .kernel
        .lock()
        .record(Tag::Check, None, 2, 1, || "liveness reached".into());
    match check_safety(shared, checker) {
        Ok(()) => Outcome::Passed,
        Err(outcome) => outcome,
    }
}

/// The end of a run that stopped without liveness being reached yet: a broken safety
/// invariant explains more than the missing progress it probably caused, so it wins.
fn verdict(
    shared: &Arc<Shared>,
    checker: &dyn ScenarioRun,
    unsettled: impl FnOnce(Violation) -> Outcome,
) -> Outcome {
    if let Err(outcome) = check_safety(shared, checker) {
        return outcome;
    }
    match checker.check_liveness(&view(shared)) {
        Ok(()) => {
            shared
                .kernel
                .lock()
                .record(Tag::Check, None, 2, 1, || "liveness reached".into());
            Outcome::Passed
        }
        Err(violation) => unsettled(violation),
    }
}

/// Closes the fault window: no new faults, everything healed, crashed nodes rebooted.
fn end_fault_window(shared: &Arc<Shared>, config: &SimConfig, reason: &'static str) {
    let (crashed, paused) = {
        let mut k = shared.kernel.lock();
        if k.phase == Phase::Liveness {
            return;
        }
        k.phase = Phase::Liveness;
        k.injector.deactivate();
        let healed = k.network.heal_all();
        k.unschedule(|c| {
            matches!(
                c,
                Control::NemesisTick
                    | Control::EndFaultWindow
                    | Control::HealPartition(_)
                    | Control::EndOutage(_)
                    | Control::Restart(..)
                    | Control::Resume(..)
                    | Control::Script(_)
            )
        });
        let crashed: Vec<u16> = (0..k.nodes.len())
            .filter(|&i| k.nodes[i].status == NodeStatus::Crashed)
            .map(|i| u16::try_from(i).expect("fits"))
            .collect();
        let paused: Vec<u16> = (0..k.nodes.len())
            .filter(|&i| k.nodes[i].status == NodeStatus::Paused)
            .map(|i| u16::try_from(i).expect("fits"))
            .collect();
        k.record(Tag::Phase, None, 2, healed as u64, || format!("fault window closed ({reason}): healed {healed} partition(s)/outage(s), liveness phase begins"));
        let deadline = k.now + nanos(config.liveness_bound);
        k.schedule(deadline, Control::LivenessDeadline);
        (crashed, paused)
    };
    for node in paused {
        world::resume(shared, node);
    }
    for node in crashed {
        world::boot(shared, node);
    }
}

fn handle(
    shared: &Arc<Shared>,
    checker: &dyn ScenarioRun,
    config: &SimConfig,
    control: Control,
) -> Next {
    match control {
        Control::NemesisTick => {
            let actions = {
                let mut k = shared.kernel.lock();
                let actions = k.nemesis_tick();
                let next = k.now + nanos(config.nemesis_tick);
                k.schedule(next, Control::NemesisTick);
                actions
            };
            for action in actions {
                match action {
                    NemesisAction::Crash {
                        node,
                        downtime_nanos,
                    } => {
                        world::crash(shared, node, Some(downtime_nanos), "node.crash");
                    }
                }
            }
        }
        Control::SafetyCheck => {
            if let Err(outcome) = check_safety(shared, checker) {
                return Next::Finish(outcome);
            }
            let in_liveness = phase(shared) == Phase::Liveness;
            // A scripted action still to come keeps the fault phase open: the script asked
            // for that fault at that moment.
            let may_settle =
                in_liveness || (config.settle_early && !shared.kernel.lock().script_pending());
            if may_settle && checker.check_liveness(&view(shared)).is_ok() {
                if in_liveness {
                    return Next::Finish(settled(shared, checker));
                }
                end_fault_window(shared, config, "liveness reached early");
            }
            let mut k = shared.kernel.lock();
            let next = k.now + nanos(config.check_every);
            k.schedule(next, Control::SafetyCheck);
        }
        Control::EndFaultWindow => {
            end_fault_window(shared, config, "end of fault window");
        }
        Control::LivenessDeadline => {
            return Next::Finish(verdict(shared, checker, |mut violation| {
                violation.message = format!(
                    "not settled within the liveness bound of {:?}: {}",
                    config.liveness_bound, violation.message
                );
                Outcome::Violated {
                    violation,
                    at: elapsed(shared),
                    phase: Phase::Liveness,
                }
            }));
        }
        Control::Restart(node, incarnation) => {
            let due = {
                let k = shared.kernel.lock();
                let n = &k.nodes[usize::from(node)];
                n.status == NodeStatus::Crashed && n.incarnation == incarnation
            };
            if due {
                world::boot(shared, node);
            }
        }
        Control::Resume(node, seq) => {
            let due = shared.kernel.lock().nodes[usize::from(node)].pause_seq == seq;
            if due {
                world::resume(shared, node);
            }
        }
        Control::HealPartition(id) => {
            let mut k = shared.kernel.lock();
            if k.network.heal(id) {
                k.record(Tag::Fault, None, 0, id, || {
                    format!("partition #{id} healed")
                });
            }
        }
        Control::EndOutage(id) => {
            let mut k = shared.kernel.lock();
            if k.network.end_outage(id) {
                k.record(Tag::Fault, None, 1, id, || format!("outage #{id} over"));
            }
        }
        Control::Script(index) => crate::script::execute(shared, index),
    }
    Next::Continue
}

/// The run loop. See the module docs.
fn drive(shared: &Arc<Shared>, checker: &dyn ScenarioRun, config: &SimConfig) -> Outcome {
    let max_time = nanos(config.max_sim_time);
    let mut due = Vec::new();
    loop {
        let control = {
            let k = shared.kernel.lock();
            if k.stats.steps >= config.max_steps {
                return Outcome::BudgetExceeded {
                    budget: Budget::Steps(config.max_steps),
                    at: Duration::from_nanos(k.elapsed()),
                };
            }
            drop(k);
            shared.kernel.lock().pop_due_control()
        };
        if let Some(control) = control {
            if let Next::Finish(outcome) = handle(shared, checker, config, control) {
                return outcome;
            }
            continue;
        }
        if shared.run_one() {
            continue;
        }
        // Nothing is ready.
        let quiescent = {
            let k = shared.kernel.lock();
            k.pending_timers() == 0 && !(k.phase == Phase::Faults && k.recovery_pending())
        };
        if quiescent {
            if phase(shared) == Phase::Faults {
                // Nothing can happen but new faults: heal now instead (rebooting what is
                // down) and see whether the system recovers.
                end_fault_window(shared, config, "system quiescent");
                continue;
            }
            return verdict(shared, checker, |violation| {
                let k = shared.kernel.lock();
                Outcome::Hung {
                    violation,
                    at: Duration::from_nanos(k.elapsed()),
                    phase: k.phase,
                    blocked_tasks: k.live_task_names(),
                }
            });
        }
        let advanced = {
            let mut k = shared.kernel.lock();
            let advanced = k.advance(&mut due);
            if k.elapsed() > max_time {
                return Outcome::BudgetExceeded {
                    budget: Budget::SimTime(config.max_sim_time),
                    at: Duration::from_nanos(k.elapsed()),
                };
            }
            advanced
        };
        debug_assert!(advanced, "timers are pending, so time can advance");
        for waker in due.drain(..) {
            waker.wake();
        }
    }
}

fn report(shared: &Arc<Shared>, scenario: &'static str, seed: u64, outcome: Outcome) -> RunReport {
    let mut k = shared.kernel.lock();
    k.record(Tag::Phase, None, 3, 0, || format!("run ended: {outcome}"));
    let mut stats = k.stats.clone();
    stats.sim_time = Duration::from_nanos(k.elapsed());
    stats.tasks_live_at_end = k.live_tasks() as u64;
    stats.trace_events = k.trace.events();
    RunReport {
        scenario,
        seed,
        hash: k.trace.hash(),
        plan: k.injector.plan().cloned().unwrap_or_else(FaultPlan::calm),
        outcome,
        faults: std::mem::take(&mut k.faults),
        inherent_errors: std::mem::take(&mut k.inherent_errors),
        stats,
        trace: k.trace.take_lines(),
        coverage: Vec::new(),
        event_store: Arc::clone(&shared.store),
        event_bus: Arc::clone(&shared.bus),
    }
}

/// Where two runs of one seed stopped agreeing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    pub seed: u64,
    /// Index of the first differing trace event.
    pub step: u64,
    /// That event in the first run (`None` if the first run ended earlier).
    pub first: Option<TraceLine>,
    pub second: Option<TraceLine>,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |line: &Option<TraceLine>| {
            line.as_ref()
                .map_or_else(|| "<run ended>".to_owned(), ToString::to_string)
        };
        write!(
            f,
            "nondeterminism: seed {} diverged at trace event {}\n  first run:  {}\n  second run: {}",
            self.seed,
            self.step,
            show(&self.first),
            show(&self.second)
        )
    }
}

impl std::error::Error for Divergence {}

/// Runs `config.seed` twice with a full trace and compares. Returns the hash, or the
/// first divergent trace event.
///
/// # Errors
/// The [`Divergence`].
///
/// # Panics
/// If the configuration is invalid.
pub fn check_determinism(
    scenario: &dyn Scenario,
    config: &SimConfig,
) -> Result<u64, Box<Divergence>> {
    let config = config.clone().with_trace(TraceMode::Full);
    let first = run(scenario, &config);
    let second = run(scenario, &config);
    let a = first.trace.unwrap_or_default();
    let b = second.trace.unwrap_or_default();
    let index = a
        .iter()
        .zip(&b)
        .position(|(x, y)| x.hash != y.hash || x.text != y.text);
    let index = match index {
        Some(i) => i,
        None if a.len() == b.len() && first.hash == second.hash => return Ok(first.hash),
        None => a.len().min(b.len()),
    };
    Err(Box::new(Divergence {
        seed: config.seed,
        step: index as u64,
        first: a.get(index).cloned(),
        second: b.get(index).cloned(),
    }))
}
