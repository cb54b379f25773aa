//! Seed sweeps of the correct scenarios under the swarm plan (every seed draws its own
//! fault mix), plus the determinism self-check.
//!
//! `REPRISE_SEEDS=<n>` widens a sweep (default 100 seeds), `REPRISE_SEED=<n>` replays one:
//!
//! ```text
//! REPRISE_SEEDS=2000 cargo test -p reprise-scenarios --release --test sweeps
//! REPRISE_SEED=42 cargo test -p reprise-scenarios --test sweeps checkout
//! ```

use reprise_scenarios::simulation::{CheckoutScenario, TransfersScenario, explain_failure};
use reprise_sim::harness::{Repro, Seeds, failure_message, find_failure};
use reprise_sim::{FaultPlan, Scenario, SimConfig, check_determinism};

fn sweep(scenario: &dyn Scenario) {
    let config = SimConfig::new(0).with_plan(FaultPlan::swarm());
    if let Some(report) = find_failure(scenario, &config, Seeds::from_env().iter()) {
        let repro = Repro::current_test(env!("CARGO_PKG_NAME"));
        panic!(
            "{}\n\n{}",
            explain_failure(&report, 25),
            failure_message(&report, &repro)
        );
    }
}

#[test]
fn checkout_holds_its_invariants_under_swarm_faults() {
    sweep(&CheckoutScenario::correct());
}

#[test]
fn transfers_hold_their_invariants_under_swarm_faults() {
    sweep(&TransfersScenario::correct());
}

#[test]
fn runs_are_deterministic() {
    for seed in [1, 7, 1234] {
        let config = SimConfig::new(seed).with_plan(FaultPlan::swarm());
        for scenario in [
            &CheckoutScenario::correct() as &dyn Scenario,
            &TransfersScenario::correct(),
        ] {
            if let Err(divergence) = check_determinism(scenario, &config) {
                panic!(
                    "{} seed {seed} is not deterministic: {divergence}",
                    scenario.name()
                );
            }
        }
    }
}
