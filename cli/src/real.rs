//! `reprise real checkout|check|clean`: the checkout on real infrastructure (tokio,
//! PostgreSQL from `DATABASE_URL`, a Kafka-API broker from `KAFKA_BOOTSTRAP`), checked
//! with the simulator's invariants (see `reprise-live`), and the namespaces runs leave.
//!
//! ```text
//! reprise real checkout --orders N [--seed S] [--timeout-secs T] [--namespace NAME] [--keep-schema]
//! reprise real check --namespace NAME
//! reprise real clean --namespace NAME
//! ```
//!
//! `KAFKA_PROPERTIES` (TLS, SASL: `name=value` pairs, as for `reprise dlq`) reaches every
//! client. Instance counts are bounded (`reprise_live::MAX_INSTANCES`, and the PostgreSQL
//! connections they need) and refused before anything is created.
//!
//! A run's namespace (schema `NAME`, topics and consumer groups `NAME.*`) is printed when
//! it is created and with every report. A clean run removes it; any other keeps it, and the
//! report ends with the commands that check and remove it. `--namespace NAME` names a new
//! one (`live_[a-z0-9_]*`): a run never reuses a namespace — the provider's books of the
//! run that made it lived in that run's process — so an existing one is refused, with the
//! commands to check or remove it. `check` runs the checkers on what a namespace holds
//! (durable truth only: it says what it cannot check); `clean` removes it and lists what it
//! removed.
//!
//! PostgreSQL and broker outages during a run are ridden out (the services retry, the
//! watcher waits, both bounded by `--timeout-secs`). SIGINT or SIGTERM stops the services,
//! checks what can be checked and prints the partial report; a second signal exits at once,
//! naming the namespace.
//!
//! Progress goes to stderr, reports to stdout. Exit codes:
//! - 0: every invariant holds (`check`: every checked invariant holds; `clean`: removed);
//! - 1: an invariant is violated (the report says which; the namespace is kept);
//! - 2: nothing ran — bad settings, missing environment, unreachable services (named with
//!   their address), a `--namespace` already in use, or (`check`, `clean`) a namespace
//!   that does not exist; nothing is left behind (a setup that fails after creating the
//!   schema drops it or says where it is);
//! - 3: incomplete — the run was interrupted, or the store or broker stayed unreachable
//!   beyond the run's bounds; the partial report shows what was observed and checked, and
//!   the namespace is kept.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use reprise_live::{LiveConfig, LiveError, Progress};

/// Exit code of a run that ended before it could be fully checked.
const INCOMPLETE: u8 = 3;

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
        /// Bound on the whole run, group joins and outages included.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
        /// Saga service instances, one consumer group (each with its own outbox relay).
        #[arg(long, default_value_t = 2)]
        saga_instances: u32,
        /// Instances of each of the orders, inventory, payment and shipping services.
        #[arg(long, default_value_t = 1)]
        service_instances: u32,
        /// Keep the run's namespace (schema, topics, groups) even when the run is clean.
        #[arg(long)]
        keep_schema: bool,
        /// The run's namespace, `live_[a-z0-9_]*` (default: a fresh one). Must not exist.
        #[arg(long)]
        namespace: Option<String>,
    },
    /// Check what a namespace holds: the log read back from PostgreSQL, the consumer
    /// invariants on the broker. Says which invariants durable truth cannot answer.
    Check {
        #[arg(long)]
        namespace: String,
    },
    /// Remove a namespace: drop its schema, delete its topics (`.dlq` included) and
    /// consumer groups.
    Clean {
        #[arg(long)]
        namespace: String,
    },
}

/// The multi-threaded runtime with timers the services and clients need; only `real`
/// starts one.
fn tokio_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("reprise-live")
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))
}

pub fn run(args: &RealArgs) -> Result<ExitCode, String> {
    match &args.scenario {
        RealScenario::Checkout {
            orders,
            seed,
            timeout_secs,
            saga_instances,
            service_instances,
            keep_schema,
            namespace,
        } => {
            let mut config = LiveConfig::from_env(*orders)
                .map_err(|e| e.to_string())?
                .with_seed(*seed)
                .with_timeout(Duration::from_secs(*timeout_secs))
                .with_instances(*saga_instances, *service_instances)
                .with_keep_schema(*keep_schema);
            config.namespace.clone_from(namespace);
            checkout(config)
        }
        RealScenario::Check { namespace } => check(namespace),
        RealScenario::Clean { namespace } => clean(namespace),
    }
}

/// SIGINT or SIGTERM, whichever comes first; its name.
async fn signal() -> String {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT".to_owned(),
                _ = terminate.recv() => "SIGTERM".to_owned(),
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT".to_owned()
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C".to_owned()
    }
}

fn checkout(mut config: LiveConfig) -> Result<ExitCode, String> {
    config.validate().map_err(|e| e.to_string())?;
    // Named before anything is created, so that even a run killed outright (kill -9) has
    // printed the name `check` and `clean` need.
    let namespace = config
        .namespace
        .clone()
        .unwrap_or_else(reprise_live::fresh_namespace);
    config.namespace = Some(namespace.clone());
    let runtime = tokio_runtime()?;
    eprintln!(
        "real checkout: {} orders, seed={}, timeout {}s, namespace {namespace}",
        config.orders,
        config.seed,
        config.timeout.as_secs()
    );
    let (orders, seed) = (config.orders, config.seed);
    let outcome = runtime.block_on(async {
        let interrupt = async {
            let first = signal().await;
            eprintln!(
                "  {first}: stopping the services and checking what can be checked (again to exit at once)"
            );
            let name = namespace.clone();
            tokio::spawn(async move {
                let second = signal().await;
                eprintln!(
                    "{second}: exiting at once; namespace {name} is left as it is\n{}",
                    reprise_live::namespace_commands(&name)
                );
                std::process::exit(i32::from(INCOMPLETE));
            });
            first
        };
        reprise_live::run_checkout_until(config, print_progress, interrupt).await
    });
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
        Err(LiveError::Incomplete { cause, report }) => {
            println!("{report}");
            eprintln!("error: {cause}");
            Ok(ExitCode::from(INCOMPLETE))
        }
        Err(error) => Err(error.to_string()),
    }
}

/// The settings `check` and `clean` need: the addresses and Kafka properties.
fn infrastructure() -> Result<LiveConfig, String> {
    LiveConfig::from_env(1).map_err(|e| e.to_string())
}

fn check(namespace: &str) -> Result<ExitCode, String> {
    let config = infrastructure()?;
    let runtime = tokio_runtime()?;
    let outcome = runtime.block_on(reprise_live::admin::check_namespace(&config, namespace));
    runtime.shutdown_timeout(Duration::from_secs(5));
    let report = outcome.map_err(|e| e.to_string())?;
    println!("{report}");
    Ok(if report.holds() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn clean(namespace: &str) -> Result<ExitCode, String> {
    let config = infrastructure()?;
    let runtime = tokio_runtime()?;
    let outcome = runtime.block_on(reprise_live::admin::clean_namespace(&config, namespace));
    runtime.shutdown_timeout(Duration::from_secs(5));
    println!("{}", outcome.map_err(|e| e.to_string())?);
    Ok(ExitCode::SUCCESS)
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
        Progress::StoreUnavailable {
            elapsed,
            down_for,
            error,
        } => eprintln!(
            "  {:>5.1}s  store unavailable for {:.1}s, waiting: {error}",
            elapsed.as_secs_f64(),
            down_for.as_secs_f64()
        ),
        Progress::StoreBack { elapsed, down_for } => eprintln!(
            "  {:>5.1}s  store back after {:.1}s",
            elapsed.as_secs_f64(),
            down_for.as_secs_f64()
        ),
        Progress::Checking { elapsed } => eprintln!(
            "  {:>5.1}s  services stopped; checking invariants",
            elapsed.as_secs_f64()
        ),
    }
}
