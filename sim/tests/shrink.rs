//! Shrinking on the token-transfer scenario's planted bug: every failing swarm seed of a
//! sweep shrinks to a smaller plan that still breaks the same invariant, and the shrunk
//! plan replays — directly and after a trip through JSON.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use reprise_sim::harness::{
    Repro, failure_message, failure_message_with, failure_message_with_shrink, fault_mix,
    shrink_command,
};
use reprise_sim::testing_scenario::{PlantedBug, TokenTransfers};
use reprise_sim::{
    FailureSignature, Fault, FaultPlan, FaultSpec, NodeOptions, RunReport, Scenario, ScenarioRun,
    ShrinkError, ShrinkOptions, SimConfig, SwarmOptions, TraceMode, Violation, World, WorldView,
    run, shrink,
};

fn swarm(seed: u64) -> SimConfig {
    SimConfig::new(seed).with_plan(FaultPlan::swarm())
}

fn buggy() -> TokenTransfers {
    TokenTransfers::with_bug(PlantedBug::RandomCreditId)
}

/// The failing swarm seeds among `1..=30` (the sweep in `simulator.rs` finds the bug there).
fn failing_seeds(scenario: &TokenTransfers) -> Vec<u64> {
    (1..=30)
        .filter(|&seed| !run(scenario, &swarm(seed)).passed())
        .collect()
}

fn invariant(report: &RunReport) -> String {
    report
        .violation()
        .expect("a failed run names its invariant")
        .invariant
        .clone()
}

#[test]
fn failing_swarm_seeds_shrink_to_fewer_faults_with_the_same_invariant() {
    let scenario = buggy();
    let seeds = failing_seeds(&scenario);
    assert!(
        seeds.len() >= 3,
        "the planted bug fails several seeds: {seeds:?}"
    );
    let (mut specs_before, mut specs_after, mut faults_before, mut faults_after) = (0, 0, 0, 0);
    let mut single_spec = 0;
    for &seed in &seeds {
        let config = swarm(seed);
        let report = shrink(&scenario, &config, &ShrinkOptions::default())
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        println!("{report}");
        // Same seed, same invariant, and a plan that is not larger in any spec count.
        assert_eq!(report.shrunk.seed, seed);
        assert_eq!(invariant(&report.shrunk), invariant(&report.original));
        assert_eq!(
            report.signature,
            FailureSignature::Invariant(invariant(&report.original))
        );
        assert!(report.plan.specs.len() <= report.original.plan.specs.len());
        assert!(
            report.plan.specs.len() < report.original.plan.specs.len()
                || report.shrunk.faults.len() < report.original.faults.len(),
            "seed {seed} did not shrink:\n{report}"
        );
        assert!(
            !report.steps.is_empty(),
            "every accepted reduction is reported"
        );
        assert_eq!(report.plan.name, format!("swarm-shrunk-{seed}"));
        assert!(report.plan.swarm.is_none());
        assert_eq!(
            report.shrunk.plan, report.plan,
            "the shrunk run ran the shrunk plan"
        );
        assert!(report.runs <= 200 && report.runs >= 2 + report.steps.len() as u32);
        assert!(
            !report.budget_exhausted,
            "seed {seed} shrinks within 200 runs"
        );
        // The shrunk plan replays hash for hash, twice, and after a trip through JSON.
        let replay_config = report.replay_config(&config);
        let first = run(&scenario, &replay_config);
        let second = run(&scenario, &replay_config);
        assert_eq!(first.hash, report.shrunk.hash, "seed {seed}");
        assert_eq!(second.hash, report.shrunk.hash, "seed {seed}");
        assert_eq!(first.outcome, report.shrunk.outcome);
        let json = report.plan.to_json();
        let parsed = FaultPlan::from_json(&json).expect("a shrunk plan is a valid plan");
        assert_eq!(
            parsed, report.plan,
            "seed {seed}: the plan survives JSON exactly"
        );
        assert_eq!(
            run(&scenario, &config.clone().with_plan(parsed)).hash,
            report.shrunk.hash
        );
        specs_before += report.original.plan.specs.len();
        specs_after += report.plan.specs.len();
        faults_before += report.original.faults.len();
        faults_after += report.shrunk.faults.len();
        single_spec += usize::from(report.plan.specs.len() == 1);
    }
    println!(
        "{} seeds: specs {specs_before} -> {specs_after}, faults fired {faults_before} -> {faults_after}, {single_spec} shrunk to one spec",
        seeds.len()
    );
    assert!(
        2 * specs_after <= specs_before,
        "specs {specs_before} -> {specs_after}"
    );
    assert!(
        4 * faults_after <= faults_before,
        "faults {faults_before} -> {faults_after}"
    );
    assert!(
        2 * single_spec >= seeds.len(),
        "most failures need one fault family"
    );
}

#[test]
fn the_shrunk_fault_list_keeps_only_redelivery() {
    // The bug is a non-idempotent credit: whatever the seed drew, a one-spec result must
    // be a fault that redelivers — bus duplicates, lost commits, rebalances, crashes or
    // commit-unknown store appends (the teller republishes) — never, say, clock skew.
    let scenario = buggy();
    for seed in failing_seeds(&scenario) {
        let report = shrink(&scenario, &swarm(seed), &ShrinkOptions::default()).expect("shrinks");
        if let [spec] = report.plan.specs.as_slice() {
            let redelivers = match &spec.fault {
                Fault::Bus(b) => {
                    b.duplicate_probability > 0.0
                        || b.commit_lost_probability > 0.0
                        || b.publish_ack_lost_probability > 0.0
                }
                Fault::Store(s) => {
                    s.commit_unknown_probability > 0.0 || s.timeout_probability > 0.0
                }
                Fault::Crash { .. } | Fault::Rebalance { .. } | Fault::Partition { .. } => true,
                _ => false,
            };
            assert!(
                redelivers,
                "seed {seed} shrunk to {}",
                report.plan.to_json()
            );
        }
    }
}

#[test]
fn shrinking_is_deterministic_and_respects_the_run_budget() {
    let scenario = buggy();
    let seed = *failing_seeds(&scenario).first().expect("a failing seed");
    let config = swarm(seed);
    let full = shrink(&scenario, &config, &ShrinkOptions::default()).expect("shrinks");
    let again = shrink(&scenario, &config, &ShrinkOptions::default()).expect("shrinks");
    assert_eq!(again.plan, full.plan);
    assert_eq!(again.runs, full.runs);
    assert_eq!(again.steps, full.steps);
    assert_eq!(again.shrunk.hash, full.shrunk.hash);
    assert!(
        full.runs > 5,
        "the full search needs more than the tight budget"
    );
    // Shrinking the shrunk plan keeps its name and cannot grow it.
    let twice = shrink(
        &scenario,
        &full.replay_config(&config),
        &ShrinkOptions::default(),
    )
    .expect("the shrunk plan still fails");
    assert_eq!(twice.original.hash, full.shrunk.hash);
    assert_eq!(twice.plan.name, full.plan.name);
    assert!(twice.plan.specs.len() <= full.plan.specs.len());

    for max_runs in [2, 3, 5] {
        let tight = shrink(
            &scenario,
            &config,
            &ShrinkOptions::default().with_max_runs(max_runs),
        )
        .expect("shrinks");
        assert_eq!(tight.runs, max_runs, "every run of the budget is used");
        assert!(tight.budget_exhausted);
        assert_eq!(invariant(&tight.shrunk), invariant(&tight.original));
        assert!(tight.steps.len() <= (max_runs - 2) as usize);
        // The best plan so far is a real result: it replays.
        assert_eq!(
            run(&scenario, &tight.replay_config(&config)).hash,
            tight.shrunk.hash
        );
    }
    assert_eq!(
        shrink(
            &scenario,
            &config,
            &ShrinkOptions::default().with_max_runs(1)
        )
        .err(),
        Some(ShrinkError::RunBudget(1))
    );
    // A full trace costs one more run (the traced replay of the result), within budget.
    let traced = shrink(
        &scenario,
        &config.clone().with_trace(TraceMode::Full),
        &ShrinkOptions::default(),
    )
    .expect("shrinks");
    assert_eq!(traced.plan, full.plan);
    assert_eq!(traced.runs, full.runs + 1);
    assert_eq!(traced.shrunk.hash, full.shrunk.hash);
    assert!(traced.shrunk.trace.as_ref().is_some_and(|t| !t.is_empty()));
    assert!(traced.original.trace.is_some());
    assert_eq!(
        shrink(
            &scenario,
            &config.clone().with_trace(TraceMode::Full),
            &ShrinkOptions::default().with_max_runs(2)
        )
        .err(),
        Some(ShrinkError::RunBudget(2))
    );
}

#[test]
fn shrinking_a_passing_run_is_a_typed_error() {
    let correct = TokenTransfers::default();
    let error = shrink(&correct, &swarm(3), &ShrinkOptions::default()).expect_err("passes");
    assert_eq!(
        error,
        ShrinkError::Passed {
            seed: 3,
            plan: "swarm".into()
        }
    );
    assert!(error.to_string().contains("no failure to shrink"));
    // An invalid configuration is the simulator's typed error, not a panic.
    let bad = SimConfig::new(1).with_plan(FaultPlan::named("bad").with(FaultSpec::new(
        Fault::Rebalance {
            per_tick_probability: 2.0,
        },
    )));
    assert!(matches!(
        shrink(&correct, &bad, &ShrinkOptions::default()),
        Err(ShrinkError::Sim(_))
    ));
}

#[test]
fn a_resolved_plan_replays_its_swarm_run_and_survives_json() {
    // Resolving a plan without swarm options is the identity on its specs, and the swarm
    // draw uses a stream nothing else reads: so the resolved plan of any run, given back
    // as the plan (directly or from JSON), replays that run hash for hash.
    let scenario = TokenTransfers {
        transfers: 10,
        ..buggy()
    };
    for seed in 1..=40 {
        let original = run(&scenario, &swarm(seed));
        assert!(original.plan.swarm.is_none());
        let direct = run(&scenario, &swarm(seed).with_plan(original.plan.clone()));
        assert_eq!(direct.hash, original.hash, "seed {seed}");
        assert_eq!(direct.plan, original.plan, "resolving is the identity");
        let parsed = FaultPlan::from_json(&original.plan.to_json()).expect("valid");
        assert_eq!(parsed, original.plan, "seed {seed}: exact float round trip");
        assert_eq!(
            run(&scenario, &swarm(seed).with_plan(parsed)).hash,
            original.hash
        );
    }
}

#[test]
fn failure_messages_take_custom_commands_and_end_with_the_shrink_hint() {
    let scenario = buggy();
    let seed = *failing_seeds(&scenario).first().expect("a failing seed");
    let report = run(&scenario, &swarm(seed).with_trace(TraceMode::Full));
    let custom = format!("reprise run token-transfers --seed {seed} --plan swarm --trace");
    let message = failure_message_with(&report, std::slice::from_ref(&custom));
    assert!(
        message.contains(&format!("  reproduce:\n    {custom}\n")),
        "{message}"
    );
    assert!(
        !message.contains("cargo test"),
        "only the caller's commands:\n{message}"
    );
    let mix = fault_mix(&report.plan);
    assert!(
        message.contains(&format!("  fault mix: {mix} (plan swarm)")),
        "{message}"
    );
    for spec in &report.plan.specs {
        assert!(mix.contains(spec.fault.label()), "{mix}");
    }
    let hint = format!("reprise shrink token-transfers --seed {seed} --plan swarm");
    assert_eq!(shrink_command(&report, "swarm"), hint);
    // The hint closes the message, before the `seed=… hash=…` line every run ends with.
    let ending = format!("{hint}\n{}", report.summary());
    assert!(message.ends_with(&ending), "{message}");
    assert!(message.contains(&invariant(&report)));
    assert!(message.contains(&report.summary()));
    // A plan loaded from a file: the caller names the file in the hint.
    let from_file =
        failure_message_with_shrink(&report, &[], &shrink_command(&report, "plans/x.json"));
    assert!(
        from_file.ends_with(&format!("--plan plans/x.json\n{}", report.summary())),
        "{from_file}"
    );
    // The test-harness message keeps both of its commands and gains the hint.
    let harness = failure_message(
        &report,
        &Repro {
            package: "reprise-sim".into(),
            test: "t".into(),
        },
    );
    assert!(harness.contains(&format!("REPRISE_SEED={seed} cargo test -p reprise-sim t")));
    assert!(harness.contains(&format!(
        "reprise run token-transfers --seed {seed} --plan swarm"
    )));
    assert!(harness.ends_with(&ending));
}

#[test]
fn fault_mixes_count_kinds_and_calm_failures_have_nothing_to_shrink() {
    let rebalance = || {
        FaultSpec::new(Fault::Rebalance {
            per_tick_probability: 0.1,
        })
    };
    let crash = FaultSpec::new(Fault::Crash {
        per_tick_probability: 0.1,
        min_downtime_ms: 1,
        max_downtime_ms: 2,
    });
    let plan = FaultPlan::named("p")
        .with(rebalance())
        .with(crash)
        .with(rebalance());
    assert_eq!(fault_mix(&plan), "rebalance ×2, crash");
    assert_eq!(fault_mix(&FaultPlan::calm()), "none");
    assert_eq!(fault_mix(&FaultPlan::swarm()), "a swarm draw per seed");
    assert_eq!(
        fault_mix(&plan.clone().with_swarm(SwarmOptions::default())),
        "rebalance ×2, crash, a swarm draw per seed"
    );
    // A scenario that fails without faults: the message says there is nothing to shrink,
    // and shrinking keeps the (empty) plan.
    let scenario = TokenTransfers {
        accounts: 2,
        initial_balance: 0,
        ..TokenTransfers::default()
    };
    let report = run(&scenario, &SimConfig::new(1));
    assert!(
        !report.passed(),
        "transfers from empty accounts never complete"
    );
    let message = failure_message_with(&report, &[]);
    assert!(message.ends_with(&format!(
        "nothing to shrink: the plan injected no faults, the seed alone fails\n{}",
        report.summary()
    )));
    assert!(message.contains("fault mix: none (plan calm)"));
    let shrunk = shrink(&scenario, &SimConfig::new(1), &ShrinkOptions::default()).expect("fails");
    assert!(shrunk.plan.specs.is_empty());
    assert_eq!(shrunk.runs, 2);
    assert_eq!(shrunk.shrunk.hash, shrunk.original.hash);
}

/// Fails every run, but reads a process-global counter: its runs are not a function of
/// the seed, so shrinking must refuse to chase it.
struct LeakyFailure(Arc<AtomicU32>);

struct NeverSettles;
impl ScenarioRun for NeverSettles {
    fn check_safety(&self, _: &WorldView<'_>) -> Result<(), Violation> {
        Ok(())
    }
    fn check_liveness(&self, _: &WorldView<'_>) -> Result<(), Violation> {
        Err(Violation::new("never-settles", "by design"))
    }
}

impl Scenario for LeakyFailure {
    fn name(&self) -> &'static str {
        "leaky-failure"
    }
    fn description(&self) -> &'static str {
        "fails, differently on every run"
    }
    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        let leak = Arc::clone(&self.0);
        world.add_node("n", NodeOptions::default(), move |ctx| {
            let runs = leak.fetch_add(1, Ordering::SeqCst);
            ctx.note(&format!("run number {runs}"));
        });
        Box::new(NeverSettles)
    }
}

#[test]
fn a_nondeterministic_failure_is_not_shrunk() {
    let scenario = LeakyFailure(Arc::default());
    let config = SimConfig::new(4).with_plan(FaultPlan::named("rebalances").with(FaultSpec::new(
        Fault::Rebalance {
            per_tick_probability: 0.5,
        },
    )));
    let error = shrink(&scenario, &config, &ShrinkOptions::default()).expect_err("leaks");
    assert!(
        matches!(error, ShrinkError::NotReproducible { seed: 4, original, replay } if original != replay),
        "{error}"
    );
    assert!(error.to_string().contains("nondeterministic"));
}
