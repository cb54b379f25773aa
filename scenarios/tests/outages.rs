//! Outages of the checkout's external services: the `payment-outage` and `carrier-outage`
//! plans (the very JSON `reprise-chaos` names) take the payment provider or the carrier
//! down for 3–6 s at a time, longer than a caller's whole retry ladder.
//!
//! Every seed must pass every invariant — sagas complete or compensate, retries stay
//! within their derived bound, no dead letter is left pending once the operator has been
//! at work, and each redelivered letter was handled — and, over the sweep, the outage must
//! actually have done what it is for: opened breakers, parked commands, sent some back.
//!
//! ```text
//! REPRISE_SEEDS=2000 cargo test --release -p reprise-scenarios --test outages
//! REPRISE_SEED=42 cargo test -p reprise-scenarios --test outages payment   # one seed
//! ```

use std::sync::Arc;

use reprise_scenarios::simulation::{
    CheckoutScenario, DependencyReport, DependencyReports, explain_failure,
};
use reprise_sim::harness::{Repro, Seeds, failure_message, find_failure};
use reprise_sim::{FaultPlan, SimConfig, check_determinism};

const PAYMENT_OUTAGE: &str = include_str!("../../chaos/src/plans/payment-outage.json");
const CARRIER_OUTAGE: &str = include_str!("../../chaos/src/plans/carrier-outage.json");

/// Seeds per outage sweep unless `REPRISE_SEED(S)` says otherwise: a few hundred keeps
/// each sweep near 15 s on one core of an opt-level=1 build.
const OUTAGE_SEEDS: u64 = 200;

fn seeds() -> Seeds {
    if std::env::var_os("REPRISE_SEED").is_some() || std::env::var_os("REPRISE_SEEDS").is_some() {
        Seeds::from_env()
    } else {
        Seeds::Range {
            start: 1,
            count: OUTAGE_SEEDS,
        }
    }
}

fn plan(json: &str) -> FaultPlan {
    FaultPlan::from_json(json).expect("the stored outage plans parse")
}

/// Sweeps `plan` over the seeds; panics with a readable report at the first failure.
/// Returns one report per run.
fn sweep(plan: FaultPlan) -> Vec<DependencyReport> {
    let reports: DependencyReports = Arc::default();
    let scenario = CheckoutScenario::correct().with_reports(Arc::clone(&reports));
    let config = SimConfig::new(0).with_plan(plan);
    if let Some(report) = find_failure(&scenario, &config, seeds().iter()) {
        let repro = Repro::current_test(env!("CARGO_PKG_NAME"));
        panic!(
            "{}\n\n{}",
            explain_failure(&report, 25),
            failure_message(&report, &repro)
        );
    }
    reports.lock().clone()
}

fn share(reports: &[DependencyReport], what: impl Fn(&DependencyReport) -> bool) -> usize {
    reports.iter().filter(|r| what(r)).count()
}

/// The share of seeds where each outage effect happened, printed for the record.
fn coverage(name: &str, reports: &[DependencyReport], opened: impl Fn(&DependencyReport) -> bool) {
    let runs = reports.len();
    let opened = share(reports, opened);
    let parked = share(reports, |r| r.dead_letters > 0);
    let redelivered = share(reports, |r| r.redelivered > 0);
    let waited = share(reports, |r| {
        r.redelivered > 0 && r.operator_waited_for_settlement
    });
    println!(
        "{name}: {runs} seeds passed; breaker opened in {opened} ({}%), commands dead-lettered in {parked}, redelivered in {redelivered} (operator waited for settlement in {waited} of them)",
        opened * 100 / runs.max(1)
    );
    if runs < 50 {
        return; // one replayed seed or a small sweep: nothing to say about shares
    }
    // Coverage marks: the paths the plan exists for were taken, and in a good share of
    // seeds (measured: see the README's "Outages" section).
    assert!(
        opened * 2 > runs,
        "{name}: breaker opened in only {opened}/{runs} seeds"
    );
    assert!(redelivered > 0, "{name}: no seed redelivered a dead letter");
    assert!(
        waited > 0 && waited < redelivered,
        "{name}: both operator timings must occur ({waited} of {redelivered} waited)"
    );
}

#[test]
fn checkout_survives_payment_provider_outages() {
    let reports = sweep(plan(PAYMENT_OUTAGE));
    coverage("payment-outage", &reports, |r| r.payment_breaker_opened);
    // The retry bound is an invariant of every run (checked at every safety check);
    // here, the totals it implies — and that the breaker kept real calls well below
    // the attempts the policy made (refused attempts never reach the provider).
    for r in &reports {
        assert!(
            r.provider_calls <= 4 * r.payment_deliveries,
            "seed {}: {r:?}",
            r.seed
        );
        assert!(
            r.provider_calls <= r.payment_attempts,
            "seed {}: {r:?}",
            r.seed
        );
    }
    let refused = share(&reports, |r| r.provider_calls < r.payment_attempts);
    assert!(
        reports.len() < 50 || refused > 0,
        "no seed had an attempt refused by an open breaker"
    );
}

#[test]
fn checkout_survives_carrier_outages() {
    let reports = sweep(plan(CARRIER_OUTAGE));
    coverage("carrier-outage", &reports, |r| r.carrier_breaker_opened);
    for r in &reports {
        assert!(
            r.carrier_registrations <= 4 * r.shipping_deliveries,
            "seed {}: {r:?}",
            r.seed
        );
    }
}

#[test]
fn outage_runs_are_deterministic() {
    for seed in [3, 11] {
        for json in [PAYMENT_OUTAGE, CARRIER_OUTAGE] {
            let config = SimConfig::new(seed).with_plan(plan(json));
            if let Err(divergence) = check_determinism(&CheckoutScenario::correct(), &config) {
                panic!("seed {seed} is not deterministic: {divergence}");
            }
        }
    }
}
