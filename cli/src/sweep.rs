//! Parallel seed sweeps and determinism checks.
//!
//! Seeds are independent simulations, so they spread over worker threads with a shared
//! counter; each simulation runs start to finish on one thread (the BUGGIFY oracle is
//! thread-local). Results are sorted by seed before printing, so the output of a sweep does
//! not depend on the number of jobs.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reprise_sim::{RunReport, Scenario, SimConfig, TraceMode};
use serde::Serialize;

/// One failing seed, as the summary lists it.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub seed: u64,
    pub hash: String,
    pub outcome: String,
    pub invariant: Option<String>,
    pub entities: Vec<String>,
    pub reproduce: String,
}

/// What a sweep found.
#[derive(Clone, Debug, Serialize)]
pub struct SweepOutcome {
    pub scenario: String,
    pub plan: String,
    pub start: u64,
    pub seeds: u64,
    pub passed: u64,
    pub failures: Vec<Failure>,
    pub wall_seconds: f64,
    pub runs_per_second: f64,
    pub simulated_seconds: f64,
    /// Simulated time over wall time, summed over all workers.
    pub time_compression: f64,
    pub jobs: usize,
    /// How often each fault kind fired — BUGGIFY points by name (`buggify:<point>`) —
    /// over the whole sweep.
    pub faults: BTreeMap<String, FaultCount>,
}

/// How often one fault kind fired in a sweep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FaultCount {
    /// Runs in which it fired at least once.
    pub runs: u64,
    /// Firings in all runs.
    pub total: u64,
}

/// The name a fault is counted under: its kind, or `buggify:<point>` for BUGGIFY.
fn fault_name(record: &reprise_sim::FaultRecord) -> String {
    if record.kind == "buggify" {
        ["buggify:", &record.detail].concat()
    } else {
        record.kind.to_owned()
    }
}

/// Counts one run's faults by name.
fn count_faults(report: &RunReport) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for record in &report.faults {
        *counts.entry(fault_name(record)).or_insert(0) += 1;
    }
    counts
}

fn progress(seeds: u64, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::new(seeds);
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    } else {
        bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} seeds, {per_sec}, {msg}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
    }
    bar
}

/// Runs `f(seed)` for every seed on `jobs` threads and returns the results sorted by seed.
fn parallel<T: Send>(
    start: u64,
    seeds: u64,
    jobs: usize,
    bar: &ProgressBar,
    f: impl Fn(u64) -> T + Sync,
) -> Vec<(u64, T)> {
    let next = AtomicU64::new(0);
    let results = Mutex::new(Vec::with_capacity(usize::try_from(seeds).unwrap_or(0)));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= seeds {
                        break;
                    }
                    let seed = start.wrapping_add(i);
                    let value = f(seed);
                    results
                        .lock()
                        .expect("no worker panics while holding the lock")
                        .push((seed, value));
                    bar.inc(1);
                }
            });
        }
    });
    let mut results = results.into_inner().expect("workers are done");
    results.sort_by_key(|(seed, _)| *seed);
    results
}

/// Sweeps `seeds` seeds from `start`, prints a summary (human or JSON) and returns it.
pub fn sweep(
    scenario: &dyn Scenario,
    config: &SimConfig,
    start: u64,
    seeds: u64,
    jobs: usize,
    json: bool,
) -> SweepOutcome {
    let plan = config.plan.name.clone();
    if !json {
        eprintln!(
            "sweeping {} under plan {plan}: seeds {start}..{} on {jobs} thread(s)",
            scenario.name(),
            start.wrapping_add(seeds)
        );
    }
    let bar = progress(seeds, json);
    let failed = AtomicU64::new(0);
    let began = Instant::now();
    // Bulk sweeps only need pass/fail and the hash.
    let base = config.clone().with_trace(TraceMode::Hash);
    let results = parallel(start, seeds, jobs, &bar, |seed| {
        let report = reprise_sim::run(scenario, &base.clone().with_seed(seed));
        if !report.passed() {
            let n = failed.fetch_add(1, Ordering::Relaxed) + 1;
            bar.set_message(format!("{n} failing"));
        }
        (
            report.passed(),
            report.stats.sim_time,
            failure_of(&report, &plan),
            count_faults(&report),
        )
    });
    bar.finish_and_clear();
    let wall = began.elapsed();
    let simulated: Duration = results.iter().map(|(_, (_, t, _, _))| *t).sum();
    let mut faults: BTreeMap<String, FaultCount> = BTreeMap::new();
    for (_, (_, _, _, counts)) in &results {
        for (name, n) in counts {
            let count = faults.entry(name.clone()).or_default();
            count.runs += 1;
            count.total += n;
        }
    }
    let failures: Vec<Failure> = results
        .into_iter()
        .filter_map(|(_, (passed, _, failure, _))| (!passed).then_some(failure))
        .collect();
    let outcome = SweepOutcome {
        scenario: scenario.name().to_owned(),
        plan: plan.clone(),
        start,
        seeds,
        passed: seeds - failures.len() as u64,
        wall_seconds: wall.as_secs_f64(),
        runs_per_second: seeds as f64 / wall.as_secs_f64().max(1e-9),
        simulated_seconds: simulated.as_secs_f64(),
        time_compression: simulated.as_secs_f64() / (wall.as_secs_f64() * jobs as f64).max(1e-9),
        jobs,
        failures,
        faults,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&outcome).expect("plain data")
        );
    } else {
        print_summary(scenario, config, &outcome);
    }
    outcome
}

fn failure_of(report: &RunReport, plan: &str) -> Failure {
    let violation = report.violation();
    Failure {
        seed: report.seed,
        hash: format!("{:016x}", report.hash),
        outcome: report.outcome.to_string(),
        invariant: violation.map(|v| v.invariant.clone()),
        entities: violation.map(|v| v.entities.clone()).unwrap_or_default(),
        reproduce: format!(
            "reprise run {} --seed {} --plan {plan} --trace",
            report.scenario, report.seed
        ),
    }
}

fn print_summary(scenario: &dyn Scenario, config: &SimConfig, outcome: &SweepOutcome) {
    println!(
        "{}: {} of {} seeds passed under plan {} ({:.1}s wall, {:.0} runs/s, {:.0}x time compression per core)",
        outcome.scenario,
        outcome.passed,
        outcome.seeds,
        outcome.plan,
        outcome.wall_seconds,
        outcome.runs_per_second,
        outcome.time_compression
    );
    print_faults(outcome);
    if outcome.failures.is_empty() {
        return;
    }
    println!("\nfailing seeds:");
    for failure in &outcome.failures {
        println!(
            "  seed={} hash={}  {}{}",
            failure.seed,
            failure.hash,
            failure.invariant.as_deref().unwrap_or(&failure.outcome),
            if failure.entities.is_empty() {
                String::new()
            } else {
                format!(" [{}]", failure.entities.join(", "))
            }
        );
    }
    // The first failure in full: replayed with a full trace (same seed, same run).
    let first = &outcome.failures[0];
    let report = reprise_sim::run(
        scenario,
        &config
            .clone()
            .with_seed(first.seed)
            .with_trace(TraceMode::Full),
    );
    println!(
        "\nfirst failure in detail:\n{}",
        crate::failure_message(&report, &outcome.plan)
    );
}

/// Fault kinds and BUGGIFY points, with how many runs each fired in and how often.
fn print_faults(outcome: &SweepOutcome) {
    if outcome.faults.is_empty() {
        println!("faults fired: none");
        return;
    }
    let (points, kinds): (Vec<_>, Vec<_>) = outcome
        .faults
        .iter()
        .partition(|(name, _)| name.starts_with("buggify:"));
    let line = |list: &[(&String, &FaultCount)]| -> String {
        list.iter()
            .map(|(name, c)| {
                format!(
                    "{} {}x in {} runs",
                    name.trim_start_matches("buggify:"),
                    c.total,
                    c.runs
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !kinds.is_empty() {
        println!("faults fired: {}", line(&kinds));
    }
    if !points.is_empty() {
        println!("BUGGIFY points fired: {}", line(&points));
    }
}

/// Checks every seed twice; prints divergences. Returns whether all were deterministic.
pub fn check_determinism(
    scenario: &dyn Scenario,
    config: &SimConfig,
    start: u64,
    seeds: u64,
    jobs: usize,
) -> bool {
    eprintln!(
        "checking determinism of {} under plan {}: seeds {start}..{}, each run twice",
        scenario.name(),
        config.plan.name,
        start.wrapping_add(seeds)
    );
    let bar = progress(seeds, false);
    let began = Instant::now();
    let results = parallel(start, seeds, jobs, &bar, |seed| {
        reprise_sim::check_determinism(scenario, &config.clone().with_seed(seed))
    });
    bar.finish_and_clear();
    let mut divergent = 0;
    for (_, result) in &results {
        if let Err(divergence) = result {
            divergent += 1;
            println!("{divergence}");
        }
    }
    println!(
        "{}: {} of {seeds} seeds deterministic under plan {} ({:.1}s)",
        scenario.name(),
        seeds - divergent,
        config.plan.name,
        began.elapsed().as_secs_f64()
    );
    divergent == 0
}
