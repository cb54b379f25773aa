//! # reprise-runner
//!
//! The simulation command line as a library: one call turns a crate's scenarios into a
//! program with `list`, `run`, `sweep`, `explore`, `merge`, `diff`, `check-determinism`,
//! `shrink` and `plan` —
//! progress bars, `--json`, parallel sweeps in bounded memory, panics reported as failing
//! seeds, sampled determinism checks, and failure messages whose replay and shrink
//! commands name *that* program, so they work as printed.
//!
//! ```no_run
//! # struct MyScenario;
//! # impl reprise_sim::Scenario for MyScenario {
//! #     fn name(&self) -> &'static str { "mine" }
//! #     fn description(&self) -> &'static str { "" }
//! #     fn setup(&self, _: &mut reprise_sim::World) -> Box<dyn reprise_sim::ScenarioRun> { unimplemented!() }
//! # }
//! // src/bin/my-sims.rs
//! fn main() -> std::process::ExitCode {
//!     reprise_runner::main(reprise_runner::Registry::new("my-sims").scenario(MyScenario))
//! }
//! ```
//!
//! `cargo run --release --bin my-sims -- sweep mine --seeds 10000` then sweeps it; a
//! failing seed prints `my-sims run mine --seed N --plan swarm --trace` and
//! `my-sims shrink mine --seed N --plan swarm`. The `reprise` binary of this repository
//! is the same call with the built-in scenarios, plus its own `real` and `dlq` commands
//! ([`SimCommand`] can be flattened into a larger clap program).

// The runner is the one place besides the adapters that reads the wall clock and starts
// threads: it times sweeps and runs independent simulations side by side, one per
// thread. Each simulation stays single-threaded and deterministic; nothing here feeds
// into a run.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod diff;
pub mod explore;
pub mod merge;
pub mod registry;
pub mod shard;
pub mod sweep;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reprise_sim::harness::failure_message_with_shrink;
use reprise_sim::shrink::{ShrinkOptions, shrink};
use reprise_sim::{RunReport, Scenario, SimConfig, TraceMode};

pub use registry::Registry;
pub use shard::Shard;
pub use sweep::{Commands, Coverage, DeterminismSample, SweepOutcome};

/// The simulation commands. See the crate docs.
#[derive(Subcommand, Debug, Clone)]
pub enum SimCommand {
    /// List the scenarios and the named fault plans.
    List,
    /// Run one seed; `--trace` prints every scheduling decision, message, fault and transition.
    Run {
        scenario: String,
        /// One of the scenario's planted bugs: runs `<scenario>-bug-<BUG>`.
        #[arg(long)]
        bug: Option<String>,
        #[arg(long)]
        seed: u64,
        /// A named plan (see `list`) or a path to a plan in JSON.
        #[arg(long, default_value = "swarm")]
        plan: String,
        #[arg(long)]
        trace: bool,
        /// Save the run's full trace to FILE (JSON lines, stable across builds) for a
        /// later `diff`.
        #[arg(long, value_name = "FILE")]
        save_trace: Option<std::path::PathBuf>,
    },
    /// Compare two runs and show their first divergent event: two seeds, two plans, or a
    /// run against a trace saved by `run --save-trace` (e.g. by another build). Exits 0
    /// when they are identical, 1 when they diverge.
    Diff {
        /// The scenario to run (not needed when both sides are saved traces).
        scenario: Option<String>,
        /// Side A's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Side B's seed (default: side A's).
        #[arg(long)]
        seed_b: Option<u64>,
        /// Side A's plan.
        #[arg(long, default_value = "swarm")]
        plan: String,
        /// Side B's plan (default: side A's).
        #[arg(long)]
        plan_b: Option<String>,
        /// Side A from a saved trace instead of a run.
        #[arg(long, value_name = "FILE")]
        trace_a: Option<std::path::PathBuf>,
        /// Side B from a saved trace instead of a run.
        #[arg(long, value_name = "FILE")]
        trace_b: Option<std::path::PathBuf>,
        /// Events shown before the divergence, and after it on each side.
        #[arg(long, default_value_t = 5)]
        context: usize,
    },
    /// Run many seeds in parallel; exits non-zero if any seed fails (a panic or a
    /// nondeterministic seed included).
    Sweep {
        scenario: String,
        /// One of the scenario's planted bugs: sweeps `<scenario>-bug-<BUG>`.
        #[arg(long)]
        bug: Option<String>,
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        #[arg(long, default_value_t = 1)]
        start: u64,
        #[arg(long, default_value = "swarm")]
        plan: String,
        /// Worker threads (default and maximum: the number of cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// The summary as JSON: on stdout (`--json`), or written to FILE with the human
        /// summary still printed (`--json FILE`, what `merge` reads).
        #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
        json: Option<std::path::PathBuf>,
        /// Seeds run twice to check determinism: `all`, `none`, or N for one seed in N.
        #[arg(long, default_value_t = sweep::DEFAULT_DETERMINISM_SAMPLE.to_string())]
        determinism: String,
        /// Run only shard K of N (1-based): the seeds `start + i` with `i mod N = K - 1`.
        #[arg(long, value_name = "K/N")]
        shard: Option<String>,
        /// Report which declared `sometimes!` situations were reached (and which never
        /// were) and which BUGGIFY points never fired.
        #[arg(long)]
        coverage: bool,
    },
    /// Spend a budget of runs near the runs that reached new coverage — a corpus of
    /// interesting (seed, plan) pairs, mutated — instead of on independent seeds. Stops at
    /// the first failure (exit 1) and prints the command that replays it; the same
    /// `--seed` gives the same exploration.
    Explore {
        scenario: String,
        /// One of the scenario's planted bugs: explores `<scenario>-bug-<BUG>`.
        #[arg(long)]
        bug: Option<String>,
        /// Runs to spend at most.
        #[arg(long, default_value_t = 2000)]
        runs: u64,
        /// The explorer's own seed (not a simulation seed).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The base plan fresh runs draw (a named plan or FILE.json).
        #[arg(long, default_value = "swarm")]
        plan: String,
        /// Go on after the first failure, to the end of the budget.
        #[arg(long)]
        keep_going: bool,
        /// Worker threads (the report does not depend on them).
        #[arg(long)]
        jobs: Option<usize>,
        /// The report as JSON: on stdout (`--json`), or written to FILE.
        #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
        json: Option<std::path::PathBuf>,
        /// Where the plans of failing runs are written (as `<name>.json`).
        #[arg(long, value_name = "DIR", default_value = ".")]
        plans_dir: std::path::PathBuf,
        /// Measure instead: TRIALS explorations (explorer seeds S, S+1, …) against TRIALS
        /// plain sweeps of the base plan (from seeds 0, 100000, …), each with the budget
        /// of `--runs`; prints the runs to the first failure of each and the medians.
        #[arg(long, value_name = "TRIALS", num_args = 0..=1, default_missing_value = "5")]
        compare_swarm: Option<u64>,
    },
    /// Merge the `--json FILE` results of a sweep's shards into the summary of the whole
    /// sweep; exits non-zero if any seed failed.
    Merge {
        /// The shards' JSON results (one per shard, any order).
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        /// The merged summary as JSON: on stdout, or written to FILE.
        #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
        json: Option<std::path::PathBuf>,
        /// Include the coverage report (see `sweep --coverage`).
        #[arg(long)]
        coverage: bool,
    },
    /// Run each seed twice in this process and compare the traces step by step.
    CheckDeterminism {
        scenario: String,
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        #[arg(long, default_value_t = 1)]
        start: u64,
        #[arg(long, default_value = "swarm")]
        plan: String,
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Shrink a failing seed's fault plan to the faults that matter (same seed, same
    /// invariant) and write it as JSON for `--plan FILE.json`.
    Shrink {
        scenario: String,
        #[arg(long)]
        seed: u64,
        #[arg(long, default_value = "swarm")]
        plan: String,
        /// Upper bound on full re-runs of the scenario.
        #[arg(long, default_value_t = 200)]
        max_runs: u32,
        /// Where to write the shrunk plan (default: `<scenario>-seed<N>-shrunk.json`).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Print a fault plan as JSON (a starting point for a custom `--plan file.json`).
    Plan { name: String },
}

#[derive(Parser, Debug)]
#[command(version, about = "Deterministic simulation of Reprise scenarios", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: SimCommand,
}

/// Parses the process's arguments and runs the command against `registry`: the whole
/// `main` of a simulation program. Exit codes: 0 success, 1 a failing seed, 2 bad input.
#[must_use]
#[allow(clippy::needless_pass_by_value)] // `main(Registry::new(..).scenario(..))` reads best by value
pub fn main(registry: Registry) -> ExitCode {
    let cli = Cli::parse_from(
        std::iter::once(std::ffi::OsString::from(registry.program()))
            .chain(std::env::args_os().skip(1)),
    );
    report(execute(cli.command, &registry))
}

/// Prints an error and maps results to exit codes (0, 1, 2).
#[must_use]
pub fn report(result: Result<ExitCode, String>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

/// Runs one command.
///
/// # Errors
/// Bad input: an unknown scenario or plan, a plan the scenario cannot run, invalid
/// numbers. A failing seed is `Ok(ExitCode::FAILURE)`, not an error.
pub fn execute(command: SimCommand, registry: &Registry) -> Result<ExitCode, String> {
    match command {
        SimCommand::List => {
            list(registry);
            Ok(ExitCode::SUCCESS)
        }
        SimCommand::Run {
            scenario,
            bug,
            seed,
            plan,
            trace,
            save_trace,
        } => run_one(
            registry,
            &with_bug(&scenario, bug.as_deref()),
            seed,
            &plan,
            trace,
            save_trace.as_deref(),
        ),
        SimCommand::Diff {
            scenario,
            seed,
            seed_b,
            plan,
            plan_b,
            trace_a,
            trace_b,
            context,
        } => {
            let a = diff_side(
                registry,
                scenario.as_deref(),
                seed,
                &plan,
                trace_a.as_deref(),
                "A",
            )?;
            let b = diff_side(
                registry,
                scenario.as_deref(),
                seed_b.or(seed),
                plan_b.as_deref().unwrap_or(&plan),
                trace_b.as_deref(),
                "B",
            )?;
            print!("{}", diff::render(&a, &b, context));
            Ok(exit(diff::first_divergence(&a, &b).is_none()))
        }
        SimCommand::Sweep {
            scenario,
            bug,
            seeds,
            start,
            plan,
            jobs,
            json,
            determinism,
            shard,
            coverage,
        } => {
            let determinism = DeterminismSample::parse(&determinism)?;
            let shard = shard.as_deref().map(Shard::parse).transpose()?;
            let scenario = with_bug(&scenario, bug.as_deref());
            let (scenario, config) = checked_setup(registry, &scenario, &plan, start, seeds)?;
            let share = shard.map_or(seeds, |s| s.share(seeds));
            let request = sweep::SweepRequest {
                config,
                start,
                seeds,
                shard,
                jobs: jobs_for(jobs, share.max(1))?,
                json: is_stdout(json.as_deref()),
                coverage,
                determinism,
                commands: Commands {
                    program: registry.program(),
                    plan: &plan,
                },
            };
            let outcome = sweep::sweep(scenario, &request);
            write_json(json.as_deref(), &outcome)?;
            Ok(exit(outcome.failed == 0))
        }
        SimCommand::Merge {
            files,
            json,
            coverage,
        } => merge_files(registry, &files, json.as_deref(), coverage),
        SimCommand::Explore {
            scenario,
            bug,
            runs,
            seed,
            plan,
            keep_going,
            jobs,
            json,
            plans_dir,
            compare_swarm,
        } => {
            let scenario = with_bug(&scenario, bug.as_deref());
            let (scenario, config) = checked_setup(registry, &scenario, &plan, 0, runs)?;
            let request = explore::ExploreRequest {
                base: config.plan,
                runs,
                seed,
                keep_going,
                jobs: jobs_for(jobs, runs)?,
                plans_dir: Some(plans_dir),
                commands: Commands {
                    program: registry.program(),
                    plan: &plan,
                },
                quiet: is_stdout(json.as_deref()),
            };
            if let Some(trials) = compare_swarm {
                if trials == 0 {
                    return Err("--compare-swarm 0 compares nothing: give at least 1".into());
                }
                let results = explore::compare_with_swarm(scenario, &request, trials)?;
                if is_stdout(json.as_deref()) {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&results).expect("plain data")
                    );
                } else {
                    explore::print_comparison(scenario.name(), &plan, &results, runs);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let outcome = explore::explore(scenario, &request)?;
            match json.as_deref() {
                Some(path) if is_stdout(Some(path)) => println!("{}", explore::to_json(&outcome)),
                Some(path) => {
                    explore::print_outcome(&outcome);
                    std::fs::write(path, explore::to_json(&outcome) + "\n")
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                    eprintln!("exploration written to {}", path.display());
                }
                None => explore::print_outcome(&outcome),
            }
            Ok(exit(outcome.failures.is_empty()))
        }
        SimCommand::CheckDeterminism {
            scenario,
            seeds,
            start,
            plan,
            jobs,
        } => {
            let (scenario, config) = checked_setup(registry, &scenario, &plan, start, seeds)?;
            let ok =
                sweep::check_determinism(scenario, &config, start, seeds, jobs_for(jobs, seeds)?);
            Ok(exit(ok))
        }
        SimCommand::Shrink {
            scenario,
            seed,
            plan,
            max_runs,
            out,
        } => shrink_one(registry, &scenario, seed, &plan, max_runs, out),
        SimCommand::Plan { name } => {
            let plan = registry.plan_named(&name)?;
            println!("{}", plan.to_json());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The scenario `--bug` names: `<scenario>-bug-<bug>`, the name planted-bug variants are
/// registered under (or the scenario itself without `--bug`).
fn with_bug(scenario: &str, bug: Option<&str>) -> String {
    match bug {
        Some(bug) => format!("{scenario}-bug-{bug}"),
        None => scenario.to_owned(),
    }
}

/// `--json` without a file (or `--json -`): JSON on stdout instead of the human summary.
fn is_stdout(json: Option<&std::path::Path>) -> bool {
    json.is_some_and(|path| path.as_os_str() == "-")
}

/// Writes `outcome` to the `--json FILE`, if one was given.
fn write_json(json: Option<&std::path::Path>, outcome: &SweepOutcome) -> Result<(), String> {
    match json {
        Some(path) if !is_stdout(Some(path)) => {
            std::fs::write(path, sweep::to_json(outcome) + "\n")
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            eprintln!("sweep result written to {}", path.display());
            Ok(())
        }
        _ => Ok(()),
    }
}

fn merge_files(
    registry: &Registry,
    files: &[std::path::PathBuf],
    json: Option<&std::path::Path>,
    coverage: bool,
) -> Result<ExitCode, String> {
    let mut parts = Vec::with_capacity(files.len());
    for path in files {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let part: SweepOutcome = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a sweep result: {e}", path.display()))?;
        parts.push(part);
    }
    let merged = merge::merge(parts)?;
    if is_stdout(json) {
        println!("{}", sweep::to_json(&merged));
    } else {
        let commands = Commands {
            program: registry.program(),
            plan: &merged.plan,
        };
        // The first failure is replayed in detail when this program knows the scenario
        // and the plan (a shard may have run another program or a plan file not here).
        let scenario = registry.scenario_named(&merged.scenario).ok();
        let config = registry
            .plan_named(&merged.plan)
            .ok()
            .map(|plan| SimConfig::new(merged.start).with_plan(plan));
        let replay = scenario.zip(config.as_ref());
        sweep::print_summary(&merged, replay, &commands, coverage);
        write_json(json, &merged)?;
    }
    Ok(exit(merged.failed == 0))
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The scenario and configuration for a multi-seed command: refuses an empty or
/// overflowing seed range, and a plan the scenario cannot run (e.g. one aimed at a
/// dependency it does not have) with the simulator's typed error before any worker
/// starts — one run of the first seed, which runs anyway.
fn checked_setup<'r>(
    registry: &'r Registry,
    scenario: &str,
    plan: &str,
    start: u64,
    seeds: u64,
) -> Result<(&'r dyn Scenario, SimConfig), String> {
    if seeds == 0 {
        return Err("--seeds 0 runs nothing: give at least 1".into());
    }
    if start.checked_add(seeds - 1).is_none() {
        return Err(format!(
            "--start {start} --seeds {seeds} runs past the last seed ({}): lower one of them",
            u64::MAX
        ));
    }
    let scenario = registry.scenario_named(scenario)?;
    let plan = registry.plan_named(plan)?;
    let config = SimConfig::new(start).with_plan(plan);
    let _quiet = sweep::QuietPanics::install();
    match sweep::catch(|| reprise_sim::try_run(scenario, &config)) {
        Ok(Ok(_)) | Err(_) => {} // a panic is the sweep's to report, seed by seed
        Ok(Err(e)) => return Err(format!("{}: {e}", scenario.name())),
    }
    Ok((scenario, config))
}

/// Worker threads: as asked, but never more than the cores or the seeds.
fn jobs_for(jobs: Option<usize>, seeds: u64) -> Result<usize, String> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let jobs = match jobs {
        Some(0) => return Err("--jobs 0 runs nothing: give at least 1".into()),
        Some(n) => n.min(cores),
        None => cores,
    };
    Ok(jobs
        .min(usize::try_from(seeds).unwrap_or(usize::MAX))
        .max(1))
}

fn list(registry: &Registry) {
    println!("Scenarios:");
    for scenario in registry.all_scenarios() {
        println!("  {:<40} {}", scenario.name(), scenario.description());
    }
    println!();
    println!("Fault plans (--plan NAME, or --plan FILE.json):");
    for plan in registry.all_plans() {
        println!("  {:<40} {}", plan.name, plan.description);
    }
}

/// One side of a `diff`: a saved trace, or a run of the scenario with a full trace.
fn diff_side(
    registry: &Registry,
    scenario: Option<&str>,
    seed: Option<u64>,
    plan: &str,
    saved: Option<&std::path::Path>,
    side: &str,
) -> Result<diff::Side, String> {
    if let Some(path) = saved {
        return diff::load(path);
    }
    let (Some(scenario), Some(seed)) = (scenario, seed) else {
        return Err(format!(
            "side {side} needs a scenario and a seed (`diff <scenario> --seed N`), or a saved \
             trace (--trace-{})",
            side.to_lowercase()
        ));
    };
    let scenario = registry.scenario_named(scenario)?;
    let config = SimConfig::new(seed)
        .with_plan(registry.plan_named(plan)?)
        .with_trace(TraceMode::Full);
    let report = {
        let _quiet = sweep::QuietPanics::install();
        sweep::catch(|| reprise_sim::try_run(scenario, &config))
    }
    .map_err(|panic| format!("side {side}: seed {seed} panicked: {panic}"))?
    .map_err(|e| e.to_string())?;
    Ok(diff::Side::of_run(
        format!("{} seed {seed} plan {plan}", scenario.name()),
        &report,
    ))
}

fn run_one(
    registry: &Registry,
    scenario: &str,
    seed: u64,
    plan_name: &str,
    trace: bool,
    save_trace: Option<&std::path::Path>,
) -> Result<ExitCode, String> {
    let scenario = registry.scenario_named(scenario)?;
    let plan = registry.plan_named(plan_name)?;
    let commands = Commands {
        program: registry.program(),
        plan: plan_name,
    };
    let mode = if trace || save_trace.is_some() {
        TraceMode::Full
    } else {
        TraceMode::Hash
    };
    let config = SimConfig::new(seed).with_plan(plan).with_trace(mode);
    let report = {
        let _quiet = sweep::QuietPanics::install();
        sweep::catch(|| reprise_sim::try_run(scenario, &config))
    };
    let report = match report {
        Ok(report) => report.map_err(|e| e.to_string())?,
        Err(panic) => {
            println!("scenario:  {}", scenario.name());
            println!("plan:      {plan_name}");
            println!("outcome:   panicked: {panic}");
            println!("replay:    {}", commands.replay(scenario.name(), seed));
            println!("seed={seed}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Some(path) = save_trace {
        diff::save(path, &report, plan_name)?;
        eprintln!(
            "trace saved to {} ({} events)",
            path.display(),
            report.trace.as_ref().map_or(0, Vec::len)
        );
    }
    if let Some(lines) = report.trace.as_ref().filter(|_| trace) {
        for line in lines {
            println!("{line}");
        }
        println!();
    }
    println!("scenario:  {}", report.scenario);
    println!("plan:      {plan_name}");
    println!("outcome:   {}", report.outcome);
    println!(
        "stats:     {} steps, {:.1}s simulated, {} faults, {} store ops, {} deliveries, {} boots",
        report.stats.steps,
        report.stats.sim_time.as_secs_f64(),
        report.faults.len(),
        report.stats.store_ops,
        report.stats.bus_deliveries,
        report.stats.boots
    );
    if report.passed() {
        println!("{}", report.summary());
        return Ok(ExitCode::SUCCESS);
    }
    // Failures are explained with trace lines: replay (deterministically, the same run)
    // if the first run did not keep them.
    let report = if report.trace.is_some() {
        report
    } else {
        reprise_sim::run(scenario, &config.with_trace(TraceMode::Full))
    };
    println!("{}", failure_message(&report, &commands));
    Ok(ExitCode::FAILURE)
}

fn shrink_one(
    registry: &Registry,
    scenario: &str,
    seed: u64,
    plan_name: &str,
    max_runs: u32,
    out: Option<std::path::PathBuf>,
) -> Result<ExitCode, String> {
    let scenario = registry.scenario_named(scenario)?;
    let plan = registry.plan_named(plan_name)?;
    let config = SimConfig::new(seed).with_plan(plan);
    eprintln!(
        "shrinking {} seed {seed} under plan {plan_name} (at most {max_runs} runs)",
        scenario.name()
    );
    let report = shrink(
        scenario,
        &config,
        &ShrinkOptions::default().with_max_runs(max_runs),
    )
    .map_err(|e| e.to_string())?;
    let path = out.unwrap_or_else(|| format!("{}-seed{seed}-shrunk.json", scenario.name()).into());
    std::fs::write(&path, report.plan.to_json())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("{report}");
    println!("faults of the shrunk run ({}):", report.shrunk.faults.len());
    for fault in &report.shrunk.faults {
        println!("  {fault}");
    }
    println!("shrunk plan written to {}", path.display());
    println!(
        "replay: {} run {} --seed {seed} --plan {} --trace",
        registry.program(),
        scenario.name(),
        path.display()
    );
    println!("{}", report.shrunk.summary());
    Ok(ExitCode::SUCCESS)
}

/// The simulator's failure message with this program's replay and shrink commands.
#[must_use]
pub fn failure_message(report: &RunReport, commands: &Commands<'_>) -> String {
    failure_message_with_shrink(
        report,
        &[commands.replay(report.scenario, report.seed)],
        &commands.shrink(report.scenario, report.seed),
    )
}
