//! `reprise real checkout --orders N [--seed S] [--timeout-secs T]`: the checkout on real
//! infrastructure (tokio, PostgreSQL from `DATABASE_URL`, a Kafka-API broker from
//! `KAFKA_BOOTSTRAP`), checked with the simulator's invariants (see `reprise-live`).
//!
//! `KAFKA_PROPERTIES` (TLS, SASL: `name=value` pairs, as for `reprise dlq`) reaches every
//! client of the run. Instance counts are bounded (`reprise_live::MAX_INSTANCES`, and the
//! PostgreSQL connections they need) and refused before anything is created.
//!
//! Progress goes to stderr, the report to stdout. Exit codes: 0 when every invariant
//! holds, 1 on a violation (the run's schema is kept for inspection), 2 when the run
//! could not be set up (missing environment, unreachable services — named with their
//! address; the broker is checked before the schema is created, and a setup that fails
//! later drops the schema or says where it is).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use reprise_live::{LiveConfig, LiveError, Progress};

#[derive(Args, Debug)]
pub struct RealArgs {
    #[command(subcommand)]
    scenario: RealScenario,
}

#[derive(Subcommand, Debug)]
enum RealScenario {
    /// The checkout saga: orders → inventory → payment → shipping, with compensation.
    Checkout {
        /// Orders the workload places.
        #[arg(long, default_value_t = 50)]
        orders: u32,
        /// Seeds the workload (orders, quantities, cards, arrival times) and the carrier.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Bound on the whole run, group joins included.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
        /// Saga service instances, one consumer group (each with its own outbox relay).
        #[arg(long, default_value_t = 2)]
        saga_instances: u32,
        /// Instances of each of the orders, inventory, payment and shipping services.
        #[arg(long, default_value_t = 1)]
        service_instances: u32,
        /// Keep the run's PostgreSQL schema even when the run is clean.
        #[arg(long)]
        keep_schema: bool,
    },
}

pub fn run(args: &RealArgs) -> Result<ExitCode, String> {
    let &RealScenario::Checkout {
        orders,
        seed,
        timeout_secs,
        saga_instances,
        service_instances,
        keep_schema,
    } = &args.scenario;
    let config = LiveConfig::from_env(orders)
        .map_err(|e| e.to_string())?
        .with_seed(seed)
        .with_timeout(Duration::from_secs(timeout_secs))
        .with_instances(saga_instances, service_instances)
        .with_keep_schema(keep_schema);
    config.validate().map_err(|e| e.to_string())?;
    // The services need a multi-threaded runtime with timers; only this subcommand
    // starts one.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("reprise-live")
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    eprintln!("real checkout: {orders} orders, seed={seed}, timeout {timeout_secs}s");
    let outcome = runtime.block_on(reprise_live::run_checkout_with_progress(
        config,
        print_progress,
    ));
    // Consumers still leaving their groups must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(report) => {
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Err(LiveError::Violation { report }) => {
            println!("{report}");
            println!(
                "replay the workload: reprise real checkout --orders {orders} --seed {seed} (not deterministic: same orders, real timing)"
            );
            Ok(ExitCode::FAILURE)
        }
        Err(error) => Err(error.to_string()),
    }
}

fn print_progress(progress: &Progress) {
    match progress {
        Progress::Prepared { namespace, topics } => {
            eprintln!("  namespace {namespace}: schema migrated, {topics} topics created");
        }
        Progress::ServicesStarted { instances } => {
            eprintln!("  {instances} service instances started; waiting for consumer groups");
        }
        Progress::Ready { after } => {
            eprintln!(
                "  consumer groups ready after {:.1}s; placing orders",
                after.as_secs_f64()
            );
        }
        Progress::Waiting {
            elapsed,
            planned,
            placed,
            completed,
            compensated,
            events,
        } => eprintln!(
            "  {:>5.1}s  placed {placed}/{planned}  completed {completed}  compensated {compensated}  events {events}",
            elapsed.as_secs_f64()
        ),
        Progress::Checking { elapsed } => eprintln!(
            "  {:>5.1}s  services stopped; checking invariants",
            elapsed.as_secs_f64()
        ),
    }
}
