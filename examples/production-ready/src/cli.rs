//! The `reprise-shop` command.
//!
//! ```text
//! reprise-shop serve              the checkout service (HTTP API + every checkout service)
//! reprise-shop migrate [--check]  apply (or verify) the PostgreSQL migrations
//! reprise-shop payment-provider   the fake payment provider
//! reprise-shop carrier            the fake carrier
//! ```
//!
//! Every flag is also an environment variable (`--help` names it). Logs go to stderr
//! (`RUST_LOG`, default `info`); stdout carries only what scripts read: a server prints
//! `listening on http://ADDR` once bound, `migrate` one line of outcome.
//!
//! Exit codes: 0 success (a graceful shutdown included), 1 a failure at run time (an
//! unreachable database or broker, a schema behind the code), 2 invalid configuration.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use reprise_scenarios::checkout::{CarrierOptions, PaymentProvider};
use reprise_tokio::TokioRuntime;

use crate::config::ServeArgs;
use crate::providers::{self, FaultOptions, Faults};

#[derive(Parser, Debug)]
#[command(
    name = "reprise-shop",
    version,
    about = "The Reprise checkout as a production service, and fake providers to run it against"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The checkout service: HTTP API, every checkout service instance, saga host, relay.
    Serve(ServeArgs),
    /// Apply the PostgreSQL migrations to the schema (`--check`: only verify).
    Migrate(MigrateArgs),
    /// The fake payment provider (the scenario's PaymentProvider model over HTTP).
    PaymentProvider(PaymentProviderArgs),
    /// The fake carrier (the scenario's CarrierModel over HTTP).
    Carrier(CarrierArgs),
}

/// `reprise-shop migrate`.
#[derive(Args, Debug, Clone)]
pub struct MigrateArgs {
    /// PostgreSQL URL, postgres://user:password@host:port/database.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The schema to migrate (created if missing).
    #[arg(long, env = "SHOP_SCHEMA", default_value = "shop")]
    pub schema: String,
    /// Verify that the schema is at this build's migration, changing nothing; exit 1 if not.
    #[arg(long)]
    pub check: bool,
}

/// Misbehaviour shared by both fake providers.
#[derive(Args, Debug, Clone)]
pub struct FaultArgs {
    /// Mean answer time in ms (uniform in [N/2, 3N/2]; half before the model acts, half after).
    #[arg(long, env = "SHOP_LATENCY_MS", default_value_t = 20)]
    pub latency_ms: u64,
    /// Share of requests answered 500 without reaching the model, 0..=1.
    #[arg(long, env = "SHOP_ERROR_RATE", default_value_t = 0.0)]
    pub error_rate: f64,
    /// Windows answered 503, from the process start: START..END or START+LENGTH
    /// (e.g. 30s..45s), repeatable or comma-separated.
    #[arg(long, env = "SHOP_OUTAGE", value_delimiter = ',')]
    pub outage: Vec<String>,
}

impl FaultArgs {
    fn options(&self) -> Result<FaultOptions, Vec<String>> {
        let mut problems = Vec::new();
        let mut outages = Vec::new();
        for text in &self.outage {
            match providers::parse_outages(text) {
                Ok(parsed) => outages.extend(parsed),
                Err(e) => problems.push(format!("--outage: {e}")),
            }
        }
        let options = FaultOptions {
            latency: Duration::from_millis(self.latency_ms),
            error_rate: self.error_rate,
            outages,
        };
        if let Err(found) = options.validate() {
            problems.extend(found);
        }
        if problems.is_empty() {
            Ok(options)
        } else {
            Err(problems)
        }
    }
}

/// `reprise-shop payment-provider`.
#[derive(Args, Debug, Clone)]
pub struct PaymentProviderArgs {
    /// Address to listen on (IP:PORT; port 0 picks a free one).
    #[arg(long, env = "SHOP_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: String,
    /// Card tokens that are a multiple of this are declined (at least 2).
    #[arg(long, env = "SHOP_DECLINE_EVERY", default_value_t = 10)]
    pub decline_every: u32,
    #[command(flatten)]
    pub faults: FaultArgs,
}

/// `reprise-shop carrier`.
#[derive(Args, Debug, Clone)]
pub struct CarrierArgs {
    /// Address to listen on (IP:PORT; port 0 picks a free one).
    #[arg(long, env = "SHOP_LISTEN", default_value = "0.0.0.0:8082")]
    pub listen: String,
    /// Out of 1000 shipments, how many the carrier loses (the order is then cancelled
    /// and refunded).
    #[arg(long, env = "SHOP_LOST_PER_MILLE", default_value_t = 20)]
    pub lost_per_mille: u32,
    /// Time from registration to pickup, in ms.
    #[arg(long, env = "SHOP_PICKUP_MS", default_value_t = 400)]
    pub pickup_ms: u64,
    /// Time between tracking updates, in ms (delivery after pickup + 3 of them).
    #[arg(long, env = "SHOP_TRACKING_EVERY_MS", default_value_t = 600)]
    pub tracking_every_ms: u64,
    /// Chooses which parcels are lost.
    #[arg(long, env = "SHOP_CARRIER_SEED", default_value_t = 1)]
    pub seed: u64,
    #[command(flatten)]
    pub faults: FaultArgs,
}

/// Prints the one line scripts and tests wait for: `listening on http://ADDR`.
pub fn announce(address: SocketAddr) {
    let mut stdout = std::io::stdout().lock();
    // A closed stdout (nobody reads it) must not take the server down.
    let _ = writeln!(stdout, "listening on http://{address}");
    let _ = stdout.flush();
}

/// What `init_tracing` installed that needs a flush at exit (OpenTelemetry's exporter).
#[derive(Debug)]
struct Telemetry {
    #[cfg(feature = "otel")]
    otel: Option<crate::otel::Otel>,
}

impl Telemetry {
    fn shutdown(self) {
        #[cfg(feature = "otel")]
        if let Some(otel) = self.otel {
            otel.shutdown();
        }
    }
}

fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"))
}

/// Logs to stderr (`RUST_LOG`); with the `otel` feature and an OTLP endpoint configured,
/// spans are also exported (`crate::otel`) as `service`.
#[cfg_attr(not(feature = "otel"), allow(unused_variables))]
fn init_tracing(service: &'static str, runtime: &tokio::runtime::Runtime) -> Telemetry {
    #[cfg(feature = "otel")]
    if crate::otel::enabled() {
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        match crate::otel::init(service, runtime.handle().clone()) {
            Ok((otel, layer)) => {
                let logs = tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(false)
                    .with_target(false)
                    .with_filter(log_filter());
                let _ = tracing_subscriber::registry()
                    .with(logs)
                    .with(layer.with_filter(crate::otel::filter()))
                    .try_init();
                return Telemetry { otel: Some(otel) };
            }
            Err(error) => eprintln!("reprise-shop: OpenTelemetry disabled: {error}"),
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
    Telemetry {
        #[cfg(feature = "otel")]
        otel: None,
    }
}

fn invalid(problems: &[String]) -> ExitCode {
    eprintln!("reprise-shop: invalid configuration:");
    for problem in problems {
        eprintln!("  - {problem}");
    }
    ExitCode::from(2)
}

fn parse_listen(listen: &str) -> Result<SocketAddr, String> {
    SocketAddr::from_str(listen.trim()).map_err(|_| {
        format!("--listen {listen:?}: expected IP:PORT, such as 0.0.0.0:8081 or 127.0.0.1:0")
    })
}

/// The entry point of the binary.
#[must_use]
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("reprise-shop")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("reprise-shop: cannot start the tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let service = match &cli.command {
        Command::PaymentProvider(_) => "reprise-shop-payment-provider",
        Command::Carrier(_) => "reprise-shop-carrier",
        _ => "reprise-shop",
    };
    let telemetry = init_tracing(service, &runtime);
    let code = runtime.block_on(run(cli.command));
    // Queued spans are exported while the runtime (which sends them) still runs.
    telemetry.shutdown();
    // Blocking librdkafka calls still running must not hold the exit past the deadline.
    runtime.shutdown_timeout(Duration::from_millis(300));
    code
}

/// With neither a database nor a broker given, PostgreSQL and Redpanda in containers, the
/// schema migrated; the containers go when the returned guard is dropped (at exit).
#[cfg(feature = "testcontainers")]
async fn containers_if_needed(
    args: &mut crate::config::ServeArgs,
) -> Result<Option<crate::containers::Containers>, String> {
    if args.database_url.is_some() || args.kafka_bootstrap.is_some() {
        return Ok(None);
    }
    tracing::info!(
        "no DATABASE_URL nor KAFKA_BOOTSTRAP: starting PostgreSQL and Redpanda in Docker"
    );
    let containers = crate::containers::start().await?;
    let migrate = MigrateArgs {
        database_url: Some(containers.database_url.clone()),
        schema: args.schema.clone(),
        check: false,
    };
    crate::migrate::migrate(&migrate)
        .await
        .map_err(|e| format!("migrating the container's database: {e}"))?;
    tracing::info!(
        kafka_bootstrap = %containers.kafka_bootstrap,
        "containers started; they are removed when the service stops"
    );
    args.database_url = Some(containers.database_url.clone());
    args.kafka_bootstrap = Some(containers.kafka_bootstrap.clone());
    Ok(Some(containers))
}

async fn run(command: Command) -> ExitCode {
    match command {
        #[cfg_attr(not(feature = "testcontainers"), allow(unused_mut))]
        Command::Serve(mut args) => {
            #[cfg(feature = "testcontainers")]
            let _containers = match containers_if_needed(&mut args).await {
                Ok(containers) => containers,
                Err(error) => {
                    eprintln!("reprise-shop: {error}");
                    return ExitCode::from(1);
                }
            };
            let config = match args.validate() {
                Ok(config) => config,
                Err(problems) => return invalid(&problems),
            };
            match crate::serve::run(config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(%error, "stopped");
                    eprintln!("reprise-shop: {error}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Migrate(args) => crate::migrate::run(&args).await,
        Command::PaymentProvider(args) => {
            let mut problems = Vec::new();
            let listen = parse_listen(&args.listen)
                .map_err(|e| problems.push(e))
                .ok();
            if args.decline_every < 2 {
                problems.push(format!(
                    "--decline-every {}: at least 2 (1 would decline every card)",
                    args.decline_every
                ));
            }
            let faults = args.faults.options().map_err(|e| problems.extend(e)).ok();
            let (Some(listen), Some(faults), true) = (listen, faults, problems.is_empty()) else {
                return invalid(&problems);
            };
            let Ok(entropy) = TokioRuntime::try_current() else {
                return ExitCode::from(1);
            };
            let router = providers::payment_router(
                std::sync::Arc::new(PaymentProvider::new(args.decline_every)),
                Faults::new(faults, entropy),
            );
            finish(providers::serve_until_signal("payment provider", listen, router).await)
        }
        Command::Carrier(args) => {
            let mut problems = Vec::new();
            let listen = parse_listen(&args.listen)
                .map_err(|e| problems.push(e))
                .ok();
            if args.lost_per_mille > 1000 {
                problems.push(format!(
                    "--lost-per-mille {}: at most 1000",
                    args.lost_per_mille
                ));
            }
            if args.tracking_every_ms == 0 {
                problems.push("--tracking-every-ms: must be positive".to_owned());
            }
            let faults = args.faults.options().map_err(|e| problems.extend(e)).ok();
            let (Some(listen), Some(faults), true) = (listen, faults, problems.is_empty()) else {
                return invalid(&problems);
            };
            let Ok(runtime) = TokioRuntime::try_current() else {
                return ExitCode::from(1);
            };
            let options = CarrierOptions {
                pickup_after: Duration::from_millis(args.pickup_ms),
                tracking_update_every: Duration::from_millis(args.tracking_every_ms),
                tracking_updates: 2,
                lost_per_mille: args.lost_per_mille,
                seed: args.seed,
            };
            let router =
                providers::carrier_router(options, runtime.clone(), Faults::new(faults, runtime));
            finish(providers::serve_until_signal("carrier", listen, router).await)
        }
    }
}

fn finish(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("reprise-shop: {error}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn fault_flags_collect_every_problem() {
        let args = FaultArgs {
            latency_ms: 70_000,
            error_rate: -1.0,
            outage: vec!["later".into()],
        };
        assert_eq!(args.options().unwrap_err().len(), 3);
    }
}
