//! The `sometimes!` situations the scenarios declare: collecting them leaves every run as
//! it was (same trace hash, same faults), every hit is a declared situation, and a short
//! swarm sweep already reaches the ones the scenarios exist for.

use std::collections::BTreeMap;

use reprise_scenarios::checkout::situations as checkout;
use reprise_scenarios::simulation::{CheckoutScenario, TransfersScenario};
use reprise_sim::{FaultPlan, Scenario, SimConfig, TraceMode, run};

fn swarm(seed: u64) -> SimConfig {
    SimConfig::new(seed).with_plan(FaultPlan::swarm())
}

/// Runs per situation over `seeds`.
fn reached(scenario: &dyn Scenario, seeds: std::ops::Range<u64>) -> BTreeMap<&'static str, u64> {
    let mut runs = BTreeMap::new();
    for seed in seeds {
        for (name, _) in run(scenario, &swarm(seed)).coverage {
            *runs.entry(name).or_insert(0) += 1;
        }
    }
    runs
}

#[test]
fn collecting_coverage_changes_no_hash() {
    for scenario in [
        &CheckoutScenario::correct() as &dyn Scenario,
        &TransfersScenario::correct(),
    ] {
        for seed in 1..=6 {
            let with = run(scenario, &swarm(seed));
            let without = run(scenario, &swarm(seed).with_coverage(false));
            assert_eq!(with.hash, without.hash, "{} seed {seed}", scenario.name());
            assert_eq!(with.faults, without.faults);
            assert!(without.coverage.is_empty());
            // A full trace records the same events, and collects the same hits.
            let full = run(scenario, &swarm(seed).with_trace(TraceMode::Full));
            assert_eq!(full.hash, with.hash);
            assert_eq!(full.coverage, with.coverage);
        }
    }
}

#[test]
fn every_hit_is_a_declared_situation() {
    for scenario in [
        &CheckoutScenario::correct() as &dyn Scenario,
        &TransfersScenario::correct(),
    ] {
        let declared: Vec<&str> = scenario.situations().iter().map(|s| s.name).collect();
        for name in reached(scenario, 1..21).keys() {
            assert!(
                declared.contains(name),
                "{}: {name} hit but not declared",
                scenario.name()
            );
        }
    }
}

#[test]
fn a_short_checkout_sweep_reaches_the_situations_it_exists_for() {
    let runs = reached(&CheckoutScenario::correct(), 1..41);
    for situation in [
        checkout::PAYMENT_DEADLINE_FIRED,
        checkout::COMPENSATION_COMPLETED,
        checkout::PAYMENT_TIMED_OUT_AFTER_CAPTURE,
        reprise_host::handler::DUPLICATE_DEDUPLICATED,
        reprise_host::handler::COMMIT_UNKNOWN_WAS_COMMITTED,
        reprise_sim::TWO_LEADERS,
    ] {
        assert!(
            runs.get(situation.name).copied().unwrap_or(0) > 0,
            "{} not reached in 40 swarm seeds: {runs:?}",
            situation.name
        );
    }
}
