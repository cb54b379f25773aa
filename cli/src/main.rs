//! `reprise` — run Reprise scenarios on the deterministic simulator, on real
//! infrastructure, and operate dead-letter queues.
//!
//! ```text
//! reprise list
//! reprise run <scenario> [--bug B] --seed N [--plan P] [--trace] [--save-trace FILE]
//! reprise sweep <scenario> [--bug B] --seeds N [--start S] [--plan P] [--jobs J] [--json [FILE]] [--determinism all|none|N] [--shard K/N] [--coverage]
//! reprise explore <scenario> [--bug B] [--runs N] [--seed S] [--plan P] [--keep-going] [--jobs J] [--json [FILE]] [--plans-dir DIR] [--compare-swarm [T]]
//! reprise merge FILE... [--json [FILE]] [--coverage]
//! reprise diff [<scenario>] [--seed A] [--seed-b B] [--plan P] [--plan-b Q] [--trace-a FILE] [--trace-b FILE] [--context N]
//! reprise check-determinism <scenario> --seeds N [--start S] [--plan P] [--jobs J]
//! reprise shrink <scenario> --seed N [--plan P] [--max-runs R] [--out FILE]
//! reprise plan <name>
//! reprise real checkout --orders N [--seed S] [--timeout-secs T] [--namespace NAME] | check --namespace NAME | clean --namespace NAME
//! reprise dlq [--backend postgres|kafka] list|show|retry|discard ...
//! reprise drill <plan> [--rate R] [--duration SECS] [--seed S] [--json FILE] [--keep]
//! ```
//!
//! The simulation commands are `reprise-runner`'s, the very call a user's crate makes for
//! its own scenarios; this binary registers the built-in ones. Every run ends with
//! `seed=<n> hash=<16 hex digits>`; every failure says how to replay it.

// `real` and `dlq` time runs and talk to real services on tokio.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod dlq;
mod drill;
mod real;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reprise_runner::{Registry, SimCommand};
use reprise_sim::testing_scenario::TokenTransfers;

#[derive(Parser, Debug)]
#[command(name = "reprise", version, about = "Deterministic simulation of Reprise scenarios", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Sim(SimCommand),
    /// Run a scenario on real infrastructure (tokio, PostgreSQL from `DATABASE_URL`, a
    /// Kafka-API broker from `KAFKA_BOOTSTRAP`) and check the simulator's invariants.
    Real(real::RealArgs),
    /// Inspect, retry or discard dead letters (PostgreSQL table or Kafka topic).
    Dlq(dlq::DlqArgs),
    /// Chaos on real infrastructure: the shop's processes, a private PostgreSQL and a
    /// durable broker under steady load, with kills, restarts, network faults and poison;
    /// checked with the simulator's invariants.
    Drill(drill::DrillArgs),
}

/// The built-in scenarios (checkout and transfers with their planted-bug variants, and the
/// simulator's own token transfers) and every named plan.
fn registry() -> Registry {
    Registry::new("reprise")
        .scenarios(reprise_scenarios::simulation::all())
        .scenario(TokenTransfers::default())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    reprise_runner::report(match cli.command {
        Command::Sim(command) => reprise_runner::execute(command, &registry()),
        Command::Dlq(args) => dlq::run(args),
        Command::Real(args) => real::run(&args),
        Command::Drill(args) => drill::run(&args),
    })
}
