//! `reprise` — run Reprise scenarios on the deterministic simulator.
//!
//! ```text
//! reprise list
//! reprise run <scenario> --seed N [--plan P] [--trace]
//! reprise sweep <scenario> --seeds N [--start S] [--plan P] [--jobs J] [--json]
//! reprise check-determinism <scenario> --seeds N [--start S] [--plan P] [--jobs J]
//! reprise plan <name>
//! ```
//!
//! Every run ends with `seed=<n> hash=<16 hex digits>`; every failure says how to replay it.

// The CLI is the one place outside the adapters that reads the wall clock and starts
// threads: it times sweeps (runs per second, time compression) and runs independent
// simulations in parallel, one per thread. Each simulation stays single-threaded and
// deterministic; nothing here feeds into a run.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod registry;
mod sweep;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reprise_sim::harness::{Repro, failure_message};
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
    /// Print a fault plan as JSON (a starting point for a custom `--plan file.json`).
    Plan { name: String },
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
        Command::Run { scenario, seed, plan, trace } => run_one(&scenario, seed, &plan, trace),
        Command::Sweep { scenario, seeds, start, plan, jobs, json } => {
            let scenario = registry::by_name(&scenario)?;
            let plan = reprise_chaos::by_name(&plan).map_err(|e| e.to_string())?;
            let config = SimConfig::new(start).with_plan(plan);
            config.validate().map_err(|e| e.to_string())?;
            let outcome = sweep::sweep(&scenario, &config, start, seeds, jobs_or_cores(jobs), json);
            Ok(if outcome.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::CheckDeterminism { scenario, seeds, start, plan, jobs } => {
            let scenario = registry::by_name(&scenario)?;
            let plan = reprise_chaos::by_name(&plan).map_err(|e| e.to_string())?;
            let config = SimConfig::new(start).with_plan(plan);
            config.validate().map_err(|e| e.to_string())?;
            let ok = sweep::check_determinism(&scenario, &config, start, seeds, jobs_or_cores(jobs));
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Plan { name } => {
            let plan = reprise_chaos::by_name(&name).map_err(|e| e.to_string())?;
            println!("{}", plan.to_json());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn jobs_or_cores(jobs: Option<usize>) -> usize {
    jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get)).max(1)
}

fn list() {
    println!("Scenarios:");
    for scenario in registry::all() {
        println!("  {:<36} {}", scenario.name(), scenario.description());
    }
    println!();
    println!("Fault plans (--plan NAME, or --plan FILE.json):");
    for plan in reprise_chaos::all() {
        println!("  {:<36} {}", plan.name, plan.description);
    }
}

fn run_one(scenario: &str, seed: u64, plan_name: &str, trace: bool) -> Result<ExitCode, String> {
    let scenario = registry::by_name(scenario)?;
    let plan = reprise_chaos::by_name(plan_name).map_err(|e| e.to_string())?;
    let mode = if trace { TraceMode::Full } else { TraceMode::Hash };
    let config = SimConfig::new(seed).with_plan(plan).with_trace(mode);
    let report = reprise_sim::try_run(scenario.as_ref(), &config).map_err(|e| e.to_string())?;
    if let Some(lines) = &report.trace {
        for line in lines {
            println!("{line}");
        }
        println!();
    }
    println!("scenario:  {}", report.scenario);
    println!("plan:      {}", plan_name);
    if !report.plan.specs.is_empty() {
        let faults: Vec<&str> = report.plan.specs.iter().map(|s| s.fault.label()).collect();
        println!("fault mix: {}", faults.join(", "));
    }
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
    // Failures are explained with the last trace lines: replay (deterministically) if the
    // first run did not keep them.
    let report = if report.trace.is_some() {
        report
    } else {
        reprise_sim::run(scenario.as_ref(), &config.with_trace(TraceMode::Full))
    };
    let repro = Repro { package: "reprise-scenarios".into(), test: String::new() };
    println!("{}", cli_failure_message(&report, &repro, plan_name));
    Ok(ExitCode::FAILURE)
}

/// The harness's failure message, with the CLI's own reproduction command first.
pub(crate) fn cli_failure_message(report: &reprise_sim::RunReport, repro: &Repro, plan: &str) -> String {
    let message = failure_message(report, repro);
    let command = format!("reprise run {} --seed {} --plan {plan} --trace", report.scenario, report.seed);
    // Keep the harness's content; drop its cargo-test line, which names no test here.
    message
        .lines()
        .filter(|line| !line.contains("cargo test -p"))
        .map(|line| if line.contains("reprise run ") { format!("    {command}") } else { line.to_owned() })
        .collect::<Vec<_>>()
        .join("\n")
}
