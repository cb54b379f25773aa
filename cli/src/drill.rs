//! `reprise drill <plan> [--rate R] [--duration SECS] [--seed S] [--json FILE] [--keep]`:
//! chaos on real infrastructure (see `reprise-drill`). The drill starts everything it
//! needs by itself — a private PostgreSQL, a private broker (the memory tansu of
//! `scripts/kafka.sh`, named by `REPRISE_TANSU_BIN`; plans that kill the broker need the
//! durable one `scripts/tansu-durable.sh` builds), two `reprise-shop serve` replicas, the
//! fake providers — on free loopback ports, so it disturbs nothing else on the machine.
//!
//! Progress goes to stderr, the report to stdout. Exit codes: 0 the drill passed, 1 a
//! finding (an acknowledged order lost or stuck, a double capture, a broken invariant, a
//! crash), 2 the drill could not run (its directory, with the logs, is named).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use reprise_drill::DrillOptions;
use reprise_drill::broker::{BrokerStorage, TansuBinary};
use reprise_drill::plan::{DrillPlan, NAMES};

#[derive(Args, Debug)]
#[command(after_help = plans_help())]
pub struct DrillArgs {
    /// The drill plan (listed below).
    plan: String,
    /// Orders per second the drill's customers place (each retried with its key).
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// How long the load runs, in seconds (default: the plan's; `smoke` is fixed).
    #[arg(long)]
    duration: Option<u64>,
    /// Draws the orders.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Shop replicas (separate processes).
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// The reprise-shop binary (default: next to this one, as cargo builds them).
    #[arg(long, env = "REPRISE_SHOP_BIN")]
    shop_bin: Option<PathBuf>,
    /// The drill's directory (default: a fresh one under the temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write the report as JSON to this file too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the directory (logs, database, broker storage) even when the drill passes.
    #[arg(long)]
    keep: bool,
}

fn plans_help() -> String {
    let mut text = String::from("Plans:\n");
    for (name, description) in NAMES {
        text.push_str(&format!("  {name:<17} {description}\n"));
    }
    text
}

pub fn run(args: &DrillArgs) -> Result<ExitCode, String> {
    let plan = DrillPlan::named(&args.plan, args.duration.map(Duration::from_secs))?;
    reprise_drill::validate_load(&plan, args.rate, args.replicas).map_err(|e| e.to_string())?;
    let shop_bin = match &args.shop_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot locate this binary: {e}"))?
            .with_file_name("reprise-shop"),
    };
    let dir = args.dir.clone().unwrap_or_else(|| {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        std::env::temp_dir().join(format!(
            "reprise-drill-{}-{stamp}-{}",
            plan.name,
            std::process::id()
        ))
    });
    let plan_kills_broker = plan.kills_broker();
    let options = DrillOptions {
        plan,
        rate: args.rate,
        seed: args.seed,
        replicas: args.replicas,
        shop_bin,
        tansu: TansuBinary::find(if plan_kills_broker {
            BrokerStorage::Sqlite
        } else {
            BrokerStorage::Memory
        })
        .map_err(|e| e.to_string())?,
        dir,
        keep: args.keep,
    };
    options.validate().map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("reprise-drill")
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    let report = runtime.block_on(async {
        tokio::select! {
            report = reprise_drill::run(options, |line| eprintln!("{line}")) => report.map_err(|e| e.to_string()),
            _ = tokio::signal::ctrl_c() => Err("interrupted: every process the drill started was stopped".to_string()),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    let report = report?;
    println!("{report}");
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
