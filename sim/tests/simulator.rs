//! The simulator's own acceptance tests: determinism, bug finding, hangs, crashes,
//! liveness, and the conformance suites on the simulated store and bus.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reprise_core::conformance::{event_bus_suite, event_store_suite};
use reprise_sim::harness::{Repro, failure_message, find_failure};
use reprise_sim::testing_scenario::{PlantedBug, TokenTransfers};
use reprise_sim::{
    Fault, FaultPlan, FaultSpec, NodeOptions, Outcome, Phase, Scenario, ScenarioRun, SimConfig,
    SimError, TraceMode, Violation, World, WorldView, check_determinism, run, try_run,
};

fn swarm(seed: u64) -> SimConfig {
    SimConfig::new(seed).with_plan(FaultPlan::swarm())
}

#[test]
fn the_correct_scenario_passes_calm_and_swarm_runs() {
    let scenario = TokenTransfers::default();
    let calm = run(&scenario, &SimConfig::new(1));
    assert!(calm.passed(), "{}", calm.outcome);
    assert!(calm.faults.is_empty(), "a calm run injects nothing");
    assert_eq!(calm.stats.boots, 3);
    for seed in 1..=60 {
        let report = run(&scenario, &swarm(seed));
        let message = failure_message(
            &report,
            &Repro {
                package: "reprise-sim".into(),
                test: "here".into(),
            },
        );
        assert!(
            report.passed(),
            "a correct system must survive every fault mix:\n{message}"
        );
    }
}

#[test]
fn same_seed_same_hash_and_different_seeds_differ() {
    let scenario = TokenTransfers::default();
    let a = run(&scenario, &swarm(7));
    let b = run(&scenario, &swarm(7));
    assert_eq!(a.hash, b.hash);
    assert_eq!(a.faults, b.faults);
    assert_eq!(a.stats, b.stats);
    assert_ne!(a.hash, run(&scenario, &swarm(8)).hash);
    assert!(a.summary().starts_with("seed=7 hash="));
    assert_eq!(a.summary().len(), "seed=7 hash=".len() + 16);
    // The hash does not depend on whether lines are kept.
    assert_eq!(
        run(&scenario, &swarm(7).with_trace(TraceMode::Full)).hash,
        a.hash
    );
}

#[test]
fn check_determinism_over_200_seeds() {
    let scenario = TokenTransfers {
        transfers: 10,
        ..TokenTransfers::default()
    };
    for seed in 0..200 {
        if let Err(divergence) = check_determinism(&scenario, &swarm(seed)) {
            panic!("{divergence}");
        }
    }
}

/// A scenario that is deliberately nondeterministic (it reads a process-global counter),
/// to prove the self-check catches it and names the step.
struct Leaky(Arc<AtomicU32>);

impl Scenario for Leaky {
    fn name(&self) -> &'static str {
        "leaky"
    }
    fn description(&self) -> &'static str {
        "reads state that outlives the run"
    }
    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        let leak = Arc::clone(&self.0);
        world.add_node("n", NodeOptions::default(), move |ctx| {
            let runs = leak.fetch_add(1, Ordering::SeqCst);
            let c = ctx.clone();
            ctx.spawn("leak", async move {
                c.sleep(Duration::from_millis(5)).await;
                c.note(&format!("run number {runs}"));
            });
        });
        Box::new(Always)
    }
}

struct Always;
impl ScenarioRun for Always {
    fn check_safety(&self, _: &WorldView<'_>) -> Result<(), Violation> {
        Ok(())
    }
    fn check_liveness(&self, _: &WorldView<'_>) -> Result<(), Violation> {
        Ok(())
    }
}

#[test]
fn check_determinism_names_the_first_divergent_step() {
    let divergence = check_determinism(&Leaky(Arc::default()), &SimConfig::new(3))
        .expect_err("the scenario leaks state between runs");
    let first = divergence
        .first
        .as_ref()
        .expect("both runs reached the step");
    let second = divergence
        .second
        .as_ref()
        .expect("both runs reached the step");
    assert!(
        first.text.contains("run number 0") && second.text.contains("run number 1"),
        "{divergence}"
    );
    assert!(divergence.to_string().contains("diverged at trace event"));
}

#[test]
fn a_sweep_finds_the_planted_bug_and_the_seed_replays_it() {
    let scenario = TokenTransfers::with_bug(PlantedBug::RandomCreditId);
    let found = find_failure(&scenario, &swarm(0), 1..=30)
        .expect("30 swarm seeds find the non-idempotent credit");
    let violation = found.violation().expect("a safety violation").clone();
    assert!(
        ["no-double-credit", "money-is-never-created"].contains(&violation.invariant.as_str()),
        "{violation}"
    );
    assert!(!found.faults.is_empty(), "the bug needs a fault to show");
    assert!(
        found.trace.as_ref().is_some_and(|t| !t.is_empty()),
        "the failure comes with a trace"
    );
    // Replaying the seed gives the very same failure.
    let replay = run(&scenario, &swarm(found.seed));
    assert_eq!(replay.hash, found.hash);
    assert_eq!(replay.outcome, found.outcome);
    let message = failure_message(
        &found,
        &Repro {
            package: "reprise-sim".into(),
            test: "sweep_test".into(),
        },
    );
    for needle in [
        format!(
            "REPRISE_SEED={} cargo test -p reprise-sim sweep_test",
            found.seed
        ),
        format!(
            "reprise run token-transfers --seed {} --plan swarm --trace",
            found.seed
        ),
        violation.invariant.clone(),
        "faults so far".into(),
        "last ".into(),
        found.summary(),
    ] {
        assert!(
            message.contains(&needle),
            "missing {needle:?} in:\n{message}"
        );
    }
}

#[test]
fn the_planted_bug_hides_in_calm_runs() {
    // Without redelivery there is nothing to double-credit: the bug needs the faults.
    let report = run(
        &TokenTransfers::with_bug(PlantedBug::RandomCreditId),
        &SimConfig::new(5),
    );
    assert!(report.passed(), "{}", report.outcome);
}

/// A node waits for a message nobody sends.
struct Stuck;

impl Scenario for Stuck {
    fn name(&self) -> &'static str {
        "stuck"
    }
    fn description(&self) -> &'static str {
        "waits forever"
    }
    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        world.add_node("waiter", NodeOptions::default(), |ctx| {
            let bus = ctx.event_bus();
            ctx.spawn("wait", async move {
                let mut sub = bus
                    .subscribe("g", &["never"])
                    .await
                    .expect("subscribes on a calm bus");
                let _ = sub.next().await;
            });
        });
        Box::new(NeverSettles)
    }
}

struct NeverSettles;
impl ScenarioRun for NeverSettles {
    fn check_safety(&self, _: &WorldView<'_>) -> Result<(), Violation> {
        Ok(())
    }
    fn check_liveness(&self, _: &WorldView<'_>) -> Result<(), Violation> {
        Err(Violation::new("got-a-message", "nothing arrived").entity("waiter"))
    }
}

#[test]
fn a_hang_is_reported_not_waited_on() {
    let report = run(&Stuck, &SimConfig::new(1));
    match &report.outcome {
        Outcome::Hung {
            violation,
            blocked_tasks,
            phase,
            at,
        } => {
            assert_eq!(violation.invariant, "got-a-message");
            assert_eq!(blocked_tasks.len(), 1);
            assert!(
                blocked_tasks[0].starts_with("waiter/wait#"),
                "{blocked_tasks:?}"
            );
            assert_eq!(*phase, Phase::Liveness);
            assert!(
                *at < Duration::from_secs(1),
                "detected at once, not at a bound: {at:?}"
            );
        }
        other => panic!("expected a hang, got {other}"),
    }
}

/// A node that keeps ticking but never settles.
struct Busy;

impl Scenario for Busy {
    fn name(&self) -> &'static str {
        "busy"
    }
    fn description(&self) -> &'static str {
        "ticks forever"
    }
    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        world.add_node("ticker", NodeOptions::default(), |ctx| {
            let c = ctx.clone();
            ctx.spawn("tick", async move {
                loop {
                    c.sleep(Duration::from_millis(50)).await;
                }
            });
        });
        Box::new(NeverSettles)
    }
}

#[test]
fn a_liveness_failure_is_reported_at_the_bound() {
    let config = SimConfig::new(1)
        .with_fault_window(Duration::from_secs(1))
        .with_liveness_bound(Duration::from_secs(2));
    let report = run(&Busy, &config);
    match &report.outcome {
        Outcome::Violated {
            violation,
            phase: Phase::Liveness,
            at,
        } => {
            assert_eq!(violation.invariant, "got-a-message");
            assert!(
                violation.message.contains("liveness bound"),
                "{}",
                violation.message
            );
            assert_eq!(*at, Duration::from_secs(3));
        }
        other => panic!("expected a liveness violation, got {other}"),
    }
}

/// A crashable node whose task counts its own drops.
struct Victim {
    boots: Arc<AtomicU32>,
    drops: Arc<AtomicU32>,
}

struct DropCounter(Arc<AtomicU32>);
impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Scenario for Victim {
    fn name(&self) -> &'static str {
        "victim"
    }
    fn description(&self) -> &'static str {
        "crashes once"
    }
    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        let (boots, drops) = (Arc::clone(&self.boots), Arc::clone(&self.drops));
        world.add_node("victim", NodeOptions::default(), move |ctx| {
            boots.fetch_add(1, Ordering::SeqCst);
            let guard = DropCounter(Arc::clone(&drops));
            let c = ctx.clone();
            ctx.spawn("work", async move {
                let _guard = guard;
                loop {
                    c.sleep(Duration::from_millis(10)).await;
                }
            });
        });
        world.add_node(
            "bystander",
            NodeOptions {
                crashable: false,
                ..NodeOptions::default()
            },
            |_| {},
        );
        Box::new(Rebooted(Arc::clone(&self.drops)))
    }
}

struct Rebooted(Arc<AtomicU32>);
impl ScenarioRun for Rebooted {
    fn check_safety(&self, _: &WorldView<'_>) -> Result<(), Violation> {
        Ok(())
    }
    fn check_liveness(&self, world: &WorldView<'_>) -> Result<(), Violation> {
        let rebooted = world.boots("victim") == Some(2) && world.live_tasks("victim") == Some(1);
        let dropped = self.0.load(Ordering::SeqCst) == 1;
        if rebooted && dropped {
            Ok(())
        } else {
            Err(Violation::new("rebooted", "not yet"))
        }
    }
}

#[test]
fn a_crash_drops_the_nodes_tasks_and_reboots_it() {
    let plan = FaultPlan::named("one-crash").with(
        FaultSpec::new(Fault::Crash {
            per_tick_probability: 1.0,
            min_downtime_ms: 200,
            max_downtime_ms: 200,
        })
        .during(500, 600),
    );
    let victim = Victim {
        boots: Arc::default(),
        drops: Arc::default(),
    };
    let report = run(
        &victim,
        &SimConfig::new(9)
            .with_plan(plan.clone())
            .with_trace(TraceMode::Full),
    );
    assert!(report.passed(), "{}", report.outcome);
    assert_eq!(victim.boots.load(Ordering::SeqCst), 2);
    let crashes: Vec<_> = report
        .faults
        .iter()
        .filter(|f| f.kind == "node.crash")
        .collect();
    assert_eq!(
        crashes.len(),
        1,
        "the bystander is not crashable and the victim is down at the next tick"
    );
    assert_eq!(crashes[0].node.as_deref(), Some("victim"));
    assert_eq!(crashes[0].at, Duration::from_millis(500));
    let lines = report.trace.expect("full trace");
    let reboot = lines
        .iter()
        .find(|l| l.text == "boot #2")
        .expect("a second boot is traced");
    assert_eq!(reboot.at, Duration::from_millis(700));
    // Plans naming nodes the scenario lacks are refused with a typed error.
    let bad = FaultPlan::named("bad").with(
        FaultSpec::new(Fault::Rebalance {
            per_tick_probability: 0.5,
        })
        .on_nodes(["ghost"]),
    );
    let error = try_run(
        &Victim {
            boots: Arc::default(),
            drops: Arc::default(),
        },
        &SimConfig::new(1).with_plan(bad),
    )
    .expect_err("unknown node");
    assert!(
        matches!(error, SimError::UnknownNode { ref node, .. } if node == "ghost"),
        "{error}"
    );
}

/// Runs core's conformance suites from inside a simulated node.
struct Conformance(Arc<Mutex<Option<Result<(), String>>>>);

impl Scenario for Conformance {
    fn name(&self) -> &'static str {
        "conformance"
    }
    fn description(&self) -> &'static str {
        "the store and bus suites on the simulator"
    }
    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        let result = Arc::clone(&self.0);
        world.add_node("suite", NodeOptions::default(), move |ctx| {
            let (store, bus, result) = (ctx.event_store(), ctx.event_bus(), Arc::clone(&result));
            ctx.spawn("suites", async move {
                let outcome = match event_store_suite(store, "sim-").await {
                    Ok(()) => event_bus_suite(bus, "sim-")
                        .await
                        .map_err(|e| format!("bus: {e}")),
                    Err(e) => Err(format!("store: {e}")),
                };
                *result.lock().expect("not poisoned") = Some(outcome);
            });
        });
        Box::new(SuiteDone(Arc::clone(&self.0)))
    }
}

struct SuiteDone(Arc<Mutex<Option<Result<(), String>>>>);
impl ScenarioRun for SuiteDone {
    fn check_safety(&self, _: &WorldView<'_>) -> Result<(), Violation> {
        Ok(())
    }
    fn check_liveness(&self, _: &WorldView<'_>) -> Result<(), Violation> {
        match &*self.0.lock().expect("not poisoned") {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(Violation::new("conformance", e.clone())),
            None => Err(Violation::new("conformance", "suites still running")),
        }
    }
}

#[test]
fn conformance_suites_pass_on_the_simulated_store_and_bus() {
    for seed in 0..5 {
        let result = Arc::new(Mutex::new(None));
        let report = run(&Conformance(Arc::clone(&result)), &SimConfig::new(seed));
        assert!(report.passed(), "seed {seed}: {}", report.outcome);
        assert_eq!(*result.lock().expect("not poisoned"), Some(Ok(())));
    }
}

#[test]
fn invalid_configurations_are_typed_errors() {
    let config = SimConfig {
        check_every: Duration::ZERO,
        ..SimConfig::new(1)
    };
    assert!(matches!(try_run(&Busy, &config), Err(SimError::Config(_))));
    let plan = FaultPlan::named("bad").with(FaultSpec::new(Fault::Crash {
        per_tick_probability: 2.0,
        min_downtime_ms: 1,
        max_downtime_ms: 2,
    }));
    assert!(matches!(
        try_run(&Busy, &SimConfig::new(1).with_plan(plan)),
        Err(SimError::Plan(_))
    ));
}

#[test]
fn sim_test_sweeps_the_seeds_from_the_environment() {
    reprise_sim::sim_test!(
        TokenTransfers {
            transfers: 10,
            ..TokenTransfers::default()
        },
        swarm(0)
    );
}

#[test]
fn a_failing_sweep_panics_with_the_reproduction_command() {
    if std::env::var_os("REPRISE_SEED").is_some() {
        return; // a single-seed replay of another test; this one needs the sweep
    }
    let scenario = TokenTransfers::with_bug(PlantedBug::RandomCreditId);
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        reprise_sim::harness::sweep(&scenario, &swarm(0), "reprise-sim");
    }))
    .expect_err("the default sweep finds the planted bug");
    let message = panic
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(
        message.contains(
            "cargo test -p reprise-sim a_failing_sweep_panics_with_the_reproduction_command"
        ),
        "{message}"
    );
    assert!(
        message.contains("no-double-credit") || message.contains("money-is-never-created"),
        "{message}"
    );
}

#[test]
fn a_dead_consumers_partitions_move_to_the_survivor() {
    // ledger-1 crashes at 100 ms and stays down past the fault window; ledger-2 must take
    // its partitions over (the group rebalances when the dead member's subscription goes).
    let crash = Fault::Crash {
        per_tick_probability: 1.0,
        min_downtime_ms: 60_000,
        max_downtime_ms: 60_000,
    };
    let plan = FaultPlan::named("lose-a-ledger").with(
        FaultSpec::new(crash)
            .on_nodes(["ledger-1"])
            .during(100, 200),
    );
    let config = SimConfig::new(2)
        .with_plan(plan)
        .with_trace(TraceMode::Full);
    let report = run(
        &TokenTransfers {
            transfers: 200,
            ..TokenTransfers::default()
        },
        &config,
    );
    assert!(report.passed(), "{}", report.outcome);
    let crash = report
        .faults
        .iter()
        .find(|f| f.kind == "node.crash")
        .expect("ledger-1 crashed");
    assert_eq!(crash.node.as_deref(), Some("ledger-1"));
    let lines = report.trace.expect("full trace");
    let settled = lines
        .iter()
        .find(|l| l.text.contains("fault window closed"))
        .expect("the window closed");
    assert!(
        settled.text.contains("liveness reached early"),
        "ledger-2 alone finished the work: {}",
        settled.text
    );
    let after_crash = |node: &str| {
        lines
            .iter()
            .filter(|l| {
                l.at > crash.at && l.node.as_deref() == Some(node) && l.text.starts_with("deliver")
            })
            .count()
    };
    assert_eq!(after_crash("ledger-1"), 0);
    assert!(after_crash("ledger-2") > 0);
}
