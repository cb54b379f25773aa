//! # reprise-runner
//!
//! The simulation command line as a library: one call turns a crate's scenarios into a
//! program with `list`, `run`, `sweep`, `check-determinism`, `shrink` and `plan` —
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

pub mod registry;
pub mod sweep;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reprise_sim::harness::failure_message_with_shrink;
use reprise_sim::shrink::{ShrinkOptions, shrink};
use reprise_sim::{RunReport, Scenario, SimConfig, TraceMode};

pub use registry::Registry;
pub use sweep::{Commands, DeterminismSample, SweepOutcome};

/// The simulation commands. See the crate docs.
#[derive(Subcommand, Debug, Clone)]
pub enum SimCommand {
    /// List the scenarios and the named fault plans.
    List,
    /// Run one seed; `--trace` prints every scheduling decision, message, fault and transition.
    Run {
        scenario: String,
        #[arg(long)]
        seed: u64,
        /// A named plan (see `list`) or a path to a plan in JSON.
        #[arg(long, default_value = "swarm")]
        plan: String,
        #[arg(long)]
        trace: bool,
    },
    /// Run many seeds in parallel; exits non-zero if any seed fails (a panic or a
    /// nondeterministic seed included).
    Sweep {
        scenario: String,
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        #[arg(long, default_value_t = 1)]
        start: u64,
        #[arg(long, default_value = "swarm")]
        plan: String,
        /// Worker threads (default and maximum: the number of cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Print the summary as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Seeds run twice to check determinism: `all`, `none`, or N for one seed in N.
        #[arg(long, default_value_t = sweep::DEFAULT_DETERMINISM_SAMPLE.to_string())]
        determinism: String,
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
            seed,
            plan,
            trace,
        } => run_one(registry, &scenario, seed, &plan, trace),
        SimCommand::Sweep {
            scenario,
            seeds,
            start,
            plan,
            jobs,
            json,
            determinism,
        } => {
            let determinism = DeterminismSample::parse(&determinism)?;
            let (scenario, config) = checked_setup(registry, &scenario, &plan, start, seeds)?;
            let request = sweep::SweepRequest {
                config,
                start,
                seeds,
                jobs: jobs_for(jobs, seeds)?,
                json,
                determinism,
                commands: Commands {
                    program: registry.program(),
                    plan: &plan,
                },
            };
            let outcome = sweep::sweep(scenario, &request);
            Ok(exit(outcome.failed == 0))
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

fn run_one(
    registry: &Registry,
    scenario: &str,
    seed: u64,
    plan_name: &str,
    trace: bool,
) -> Result<ExitCode, String> {
    let scenario = registry.scenario_named(scenario)?;
    let plan = registry.plan_named(plan_name)?;
    let commands = Commands {
        program: registry.program(),
        plan: plan_name,
    };
    let mode = if trace {
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
    if let Some(lines) = &report.trace {
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
