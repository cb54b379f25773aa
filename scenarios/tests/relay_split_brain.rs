//! The relay under a failing lease: the `relay-split-brain` plan (the very JSON
//! `reprise-chaos` names) takes the relay's lease away while it publishes and lets the old
//! leader go on publishing for up to 400 ms — two leaders at once — while BUGGIFY widens
//! every risky window of the host library and the saga nodes (which run the relays) crash.
//!
//! Every seed must pass every invariant of checkout and transfers, and over the sweep the
//! plan must have done what it is for: leases lost, zombie leaders confirmed, BUGGIFY
//! points of the consume loop, the relay and the saga host fired.
//!
//! ```text
//! REPRISE_SEEDS=2000 cargo test --release -p reprise-scenarios --test relay_split_brain
//! ```

use std::collections::BTreeMap;

use reprise_scenarios::simulation::{CheckoutScenario, TransfersScenario, explain_failure};
use reprise_sim::harness::{Repro, Seeds, failure_message};
use reprise_sim::{FaultPlan, Scenario, SimConfig, TraceMode};

const RELAY_SPLIT_BRAIN: &str = include_str!("../../chaos/src/plans/relay-split-brain.json");

/// Seeds per sweep unless `REPRISE_SEED(S)` says otherwise.
const SEEDS: u64 = 60;

fn seeds() -> Seeds {
    if std::env::var_os("REPRISE_SEED").is_some() || std::env::var_os("REPRISE_SEEDS").is_some() {
        Seeds::from_env()
    } else {
        Seeds::Range {
            start: 1,
            count: SEEDS,
        }
    }
}

/// Runs every seed; panics at the first failure with its explanation. Returns how many
/// runs each fault kind (BUGGIFY points as `buggify:<point>`) fired in.
fn sweep(scenario: &dyn Scenario) -> BTreeMap<String, u64> {
    let plan = FaultPlan::from_json(RELAY_SPLIT_BRAIN).expect("the stored plan parses");
    let config = SimConfig::new(0)
        .with_plan(plan)
        .with_trace(TraceMode::Hash);
    let mut fired: BTreeMap<String, u64> = BTreeMap::new();
    for seed in seeds().iter() {
        let report = reprise_sim::run(scenario, &config.clone().with_seed(seed));
        if !report.passed() {
            let full = reprise_sim::run(
                scenario,
                &config.clone().with_seed(seed).with_trace(TraceMode::Full),
            );
            let repro = Repro::current_test(env!("CARGO_PKG_NAME"));
            panic!(
                "{}\n\n{}",
                explain_failure(&full, 25),
                failure_message(&full, &repro)
            );
        }
        let mut kinds: Vec<String> = report
            .faults
            .iter()
            .map(|f| {
                if f.kind == "buggify" {
                    format!("buggify:{}", f.detail)
                } else {
                    f.kind.to_owned()
                }
            })
            .collect();
        kinds.sort();
        kinds.dedup();
        for kind in kinds {
            *fired.entry(kind).or_default() += 1;
        }
    }
    fired
}

fn assert_reached(fired: &BTreeMap<String, u64>, kinds: &[&str]) {
    for kind in kinds {
        assert!(
            fired.get(*kind).copied().unwrap_or(0) > 0,
            "{kind} never fired in the sweep: {fired:?}"
        );
    }
}

#[test]
fn checkout_survives_two_relay_leaders_and_buggified_windows() {
    let fired = sweep(&CheckoutScenario::correct());
    assert_reached(
        &fired,
        &[
            "lease.loss",
            "lease.zombie_confirm",
            "node.crash",
            "buggify:relay.pause-before-publish",
            "buggify:consume.resubscribe-before-ack",
            "buggify:consume.pause-before-ack",
            "buggify:handler.evict-before-load",
            "buggify:saga-host.evict-after-deliver",
        ],
    );
}

#[test]
fn transfers_survive_two_relay_leaders_and_buggified_windows() {
    let fired = sweep(&TransfersScenario::correct());
    assert_reached(
        &fired,
        &[
            "lease.loss",
            "lease.zombie_confirm",
            "buggify:relay.pause-before-publish",
            "buggify:consume.resubscribe-before-ack",
        ],
    );
}
