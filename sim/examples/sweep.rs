//! Sweeps seeds of the token-transfer scenario and prints one summary line per seed plus
//! totals: a quick look at what the simulator does and how fast.
//!
//! `cargo run --release -p reprise-sim --example sweep -- [seeds] [bug] [trace-seed]`

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // wall-clock timing of the sweep itself, never inside a run

use std::collections::BTreeMap;
use std::time::Instant;

use reprise_sim::testing_scenario::{PlantedBug, TokenTransfers};
use reprise_sim::{FaultPlan, SimConfig, TraceMode, run};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seeds: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(20);
    let bug = args.get(1).is_some_and(|a| a == "bug");
    let scenario = if bug {
        TokenTransfers::with_bug(PlantedBug::RandomCreditId)
    } else {
        TokenTransfers::default()
    };
    if let Some(seed) = args.get(2).and_then(|s| s.parse::<u64>().ok()) {
        let report = run(
            &scenario,
            &SimConfig::new(seed)
                .with_plan(FaultPlan::swarm())
                .with_trace(TraceMode::Full),
        );
        for line in report.trace.iter().flatten() {
            println!("{line}");
        }
        println!("{}\n{}", report.outcome, report.summary());
        return;
    }
    let started = Instant::now();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut sim_nanos, mut steps, mut failures) = (0u128, 0u64, 0u64);
    for seed in 1..=seeds {
        let report = run(
            &scenario,
            &SimConfig::new(seed).with_plan(FaultPlan::swarm()),
        );
        for f in &report.faults {
            *kinds.entry(f.kind).or_default() += 1;
        }
        sim_nanos += report.stats.sim_time.as_nanos();
        steps += report.stats.steps;
        failures += u64::from(!report.passed());
        println!(
            "{} steps={} sim={:?} faults={} {}",
            report.summary(),
            report.stats.steps,
            report.stats.sim_time,
            report.faults.len(),
            report.outcome
        );
    }
    let wall = started.elapsed();
    println!(
        "{seeds} runs in {wall:?}: {:.0} runs/s, {steps} steps, {failures} failed",
        seeds as f64 / wall.as_secs_f64()
    );
    println!(
        "time compression: {:.0}x",
        sim_nanos as f64 / wall.as_nanos() as f64
    );
    println!("faults: {kinds:?}");
}
