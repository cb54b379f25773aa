//! `reprise` — run Reprise scenarios on the deterministic simulator.
//!
//! ```text
//! reprise list
//! reprise run <scenario> --seed N [--plan P] [--trace]
//! reprise sweep <scenario> --seeds N [--start S] [--plan P] [--jobs J] [--json]
//! reprise check-determinism <scenario> --seeds N [--start S] [--plan P] [--jobs J]
//! reprise shrink <scenario> --seed N [--plan P] [--max-runs R] [--out FILE]
//! reprise plan <name>
//! reprise real checkout --orders N [--seed S] [--timeout-secs T]
//! reprise dlq [--backend postgres|kafka] list|show|retry|discard ...
//! ```
//!
//! Every run ends with `seed=<n> hash=<16 hex digits>`; every failure says how to replay it.

// The CLI is the one place outside the adapters that reads the wall clock and starts
// threads: it times sweeps (runs per second, time compression) and runs independent
// simulations in parallel, one per thread. Each simulation stays single-threaded and
// deterministic; nothing here feeds into a run.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod dlq;
mod real;
mod registry;
mod sweep;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reprise_sim::harness::{failure_message_with_shrink, shrink_command};
use reprise_sim::shrink::{ShrinkOptions, shrink};
use reprise_sim::{SimConfig, TraceMode};

#[derive(Parser, Debug)]
#[command(name = "reprise", version, about = "Deterministic simulation of Reprise scenarios", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the scenarios and the named fault plans.
    List,
    /// Run one seed; `--trace` prints every scheduling decision, message, fault and transition.
    Run {
        scenario: String,
        #[arg(long)]
        seed: u64,
        /// A named plan (see `reprise list`) or a path to a plan in JSON.
        #[arg(long, default_value = "swarm")]
        plan: String,
        #[arg(long)]
        trace: bool,
    },
    /// Run many seeds in parallel; exits non-zero if any seed fails.
    Sweep {
        scenario: String,
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        #[arg(long, default_value_t = 1)]
        start: u64,
        #[arg(long, default_value = "swarm")]
        plan: String,
        /// Worker threads (default: the number of cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Print the summary as JSON on stdout.
        #[arg(long)]
        json: bool,
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
    /// Run a scenario on real infrastructure (tokio, PostgreSQL from `DATABASE_URL`, a
    /// Kafka-API broker from `KAFKA_BOOTSTRAP`) and check the simulator's invariants.
    Real(real::RealArgs),
    /// Inspect, retry or discard dead letters (PostgreSQL table or Kafka topic).
    Dlq(dlq::DlqArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli.command) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn execute(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::List => {
            list();
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            scenario,
            seed,
            plan,
            trace,
        } => run_one(&scenario, seed, &plan, trace),
        Command::Sweep {
            scenario,
            seeds,
            start,
            plan,
            jobs,
            json,
        } => {
            let (scenario, config) = checked_setup(&scenario, &plan, start)?;
            let outcome = sweep::sweep(
                scenario.as_ref(),
                &config,
                start,
                seeds,
                jobs_or_cores(jobs),
                json,
            );
            Ok(if outcome.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::CheckDeterminism {
            scenario,
            seeds,
            start,
            plan,
            jobs,
        } => {
            let (scenario, config) = checked_setup(&scenario, &plan, start)?;
            let ok = sweep::check_determinism(
                scenario.as_ref(),
                &config,
                start,
                seeds,
                jobs_or_cores(jobs),
            );
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Shrink {
            scenario,
            seed,
            plan,
            max_runs,
            out,
        } => shrink_one(&scenario, seed, &plan, max_runs, out),
        Command::Plan { name } => {
            let plan = reprise_chaos::by_name(&name).map_err(|e| e.to_string())?;
            println!("{}", plan.to_json());
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq(args) => dlq::run(args),
        Command::Real(args) => real::run(&args),
    }
}

/// The scenario and configuration for a multi-seed command, refusing a plan the scenario
/// cannot run (e.g. one aimed at a dependency it does not have) with the simulator's typed
/// error before any worker starts: one run of the first seed, which runs anyway.
fn checked_setup(
    scenario: &str,
    plan: &str,
    start: u64,
) -> Result<(Box<dyn reprise_sim::Scenario>, SimConfig), String> {
    let scenario = registry::by_name(scenario)?;
    let plan = reprise_chaos::by_name(plan).map_err(|e| e.to_string())?;
    let config = SimConfig::new(start).with_plan(plan);
    reprise_sim::try_run(scenario.as_ref(), &config)
        .map_err(|e| format!("{}: {e}", scenario.name()))?;
    Ok((scenario, config))
}

fn jobs_or_cores(jobs: Option<usize>) -> usize {
    jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
        .max(1)
}

fn list() {
    println!("Scenarios:");
    for scenario in registry::all() {
        println!("  {:<40} {}", scenario.name(), scenario.description());
    }
    println!();
    println!("Fault plans (--plan NAME, or --plan FILE.json):");
    for plan in reprise_chaos::all() {
        println!("  {:<40} {}", plan.name, plan.description);
    }
}

fn run_one(scenario: &str, seed: u64, plan_name: &str, trace: bool) -> Result<ExitCode, String> {
    let scenario = registry::by_name(scenario)?;
    let plan = reprise_chaos::by_name(plan_name).map_err(|e| e.to_string())?;
    let mode = if trace {
        TraceMode::Full
    } else {
        TraceMode::Hash
    };
    let config = SimConfig::new(seed).with_plan(plan).with_trace(mode);
    let report = reprise_sim::try_run(scenario.as_ref(), &config).map_err(|e| e.to_string())?;
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
        reprise_sim::run(scenario.as_ref(), &config.with_trace(TraceMode::Full))
    };
    println!("{}", failure_message(&report, plan_name));
    Ok(ExitCode::FAILURE)
}

fn shrink_one(
    scenario: &str,
    seed: u64,
    plan_name: &str,
    max_runs: u32,
    out: Option<std::path::PathBuf>,
) -> Result<ExitCode, String> {
    let scenario = registry::by_name(scenario)?;
    let plan = reprise_chaos::by_name(plan_name).map_err(|e| e.to_string())?;
    let config = SimConfig::new(seed).with_plan(plan);
    eprintln!(
        "shrinking {} seed {seed} under plan {plan_name} (at most {max_runs} runs)",
        scenario.name()
    );
    let report = shrink(
        scenario.as_ref(),
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
        "replay: reprise run {} --seed {seed} --plan {} --trace",
        scenario.name(),
        path.display()
    );
    println!("{}", report.shrunk.summary());
    Ok(ExitCode::SUCCESS)
}

/// The simulator's failure message with the CLI's own commands.
pub(crate) fn failure_message(report: &reprise_sim::RunReport, plan: &str) -> String {
    let replay = format!(
        "reprise run {} --seed {} --plan {plan} --trace",
        report.scenario, report.seed
    );
    failure_message_with_shrink(report, &[replay], &shrink_command(report, plan))
}
