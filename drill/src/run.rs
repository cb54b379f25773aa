//! One drill from start to verdict: set up the private world, start the load, inject the
//! plan's faults on time while watching for crashes nobody asked for, heal, wait for the
//! acknowledged orders to settle, check, report, tear down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::broker::{Broker, TansuBinary};
use crate::check::{self, Sources};
use crate::client::{self, OrderOutcome, Replicas};
use crate::http::Http;
use crate::plan::{DrillPlan, Fault, Link};
use crate::postgres::PrivatePostgres;
use crate::process::ManagedProcess;
use crate::proxy::FaultProxy;
use crate::report::{DrillReport, FaultRecord, LoadSummary};
use crate::{DrillError, free_port, poison};

/// The shop's schema in the private database.
const SCHEMA: &str = "shop";
/// Partitions of each checkout topic (two replicas hold two each).
const PARTITIONS: u32 = 4;
/// How long a (re)started replica may take to be ready: a consumer group join included.
const READY_WITHIN: Duration = Duration::from_secs(90);
/// Every acknowledged order must be terminal this long after the last heal.
pub const SETTLE_BOUND: Duration = Duration::from_secs(60);
/// The payment provider starts this long before the load, so its outage windows (fixed
/// at its start) fall at the plan's times.
const PROVIDER_LEAD: Duration = Duration::from_secs(3);

/// How to run a drill.
#[derive(Clone, Debug)]
pub struct DrillOptions {
    pub plan: DrillPlan,
    /// Orders per second.
    pub rate: f64,
    /// Draws the orders (SKUs, quantities, cards).
    pub seed: u64,
    /// Shop replicas (separate processes, one consumer group each service).
    pub replicas: usize,
    /// The `reprise-shop` binary.
    pub shop_bin: PathBuf,
    pub tansu: TansuBinary,
    /// The drill's directory (created; removed at the end unless kept).
    pub dir: PathBuf,
    /// Keep the directory even when the drill passes.
    pub keep: bool,
}

impl DrillOptions {
    /// # Errors
    /// A rate or replica count out of bounds.
    pub fn validate(&self) -> Result<(), DrillError> {
        validate_load(&self.plan, self.rate, self.replicas)?;
        if self.plan.kills_broker() && self.tansu.storage != crate::broker::BrokerStorage::Sqlite {
            return Err(DrillError::Setup(
                "the plan kills the broker: it needs durable broker storage (REPRISE_TANSU_DURABLE_BIN)".into(),
            ));
        }
        if !self.shop_bin.is_file() {
            return Err(DrillError::Setup(format!(
                "no reprise-shop binary at {} (build it: cargo build -p reprise-shop, or pass --shop-bin)",
                self.shop_bin.display()
            )));
        }
        Ok(())
    }
}

/// The load's bounds, checked before anything is looked up or started: a bad flag is
/// named as such, not as a missing broker.
///
/// # Errors
/// A rate or replica count out of bounds, or a plan killing a replica that does not exist.
pub fn validate_load(plan: &DrillPlan, rate: f64, replicas: usize) -> Result<(), DrillError> {
    if !(rate > 0.0 && rate <= 500.0) {
        return Err(DrillError::Setup(format!(
            "--rate {rate} is out of bounds (0, 500] orders/s"
        )));
    }
    if !(2..=PARTITIONS as usize).contains(&replicas) {
        return Err(DrillError::Setup(format!(
            "--replicas {replicas} is out of bounds: 2 to {PARTITIONS} (a replica is killed while another serves; each needs a partition)"
        )));
    }
    if plan
        .steps
        .iter()
        .any(|step| matches!(step.fault, Fault::KillReplica { replica, .. } if replica >= replicas))
    {
        return Err(DrillError::Setup(
            "the plan kills a replica that does not exist".into(),
        ));
    }
    Ok(())
}

/// Everything the drill started.
struct World {
    postgres: PrivatePostgres,
    broker: Broker,
    proxies: Vec<(Link, Arc<FaultProxy>)>,
    replicas: Vec<ManagedProcess>,
    payment: ManagedProcess,
    carrier: ManagedProcess,
    payment_url: String,
    replica_urls: Vec<String>,
}

impl World {
    fn proxy(&self, link: Link) -> &FaultProxy {
        &self
            .proxies
            .iter()
            .find(|(l, _)| *l == link)
            .expect("a proxy for every link")
            .1
    }

    async fn teardown(&mut self) {
        for replica in &mut self.replicas {
            replica.terminate(Duration::from_secs(15)).await;
        }
        self.payment.terminate(Duration::from_secs(5)).await;
        self.carrier.terminate(Duration::from_secs(5)).await;
        self.broker.kill().await;
        let _ = self.postgres.stop().await;
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Runs the drill. Progress lines go to `progress`; the report says whether it passed.
///
/// # Errors
/// The world cannot be set up, a fault cannot be injected, or a check cannot read its
/// source (the directory, with the logs, is kept and named in the error).
pub async fn run(
    options: DrillOptions,
    progress: impl Fn(String) + Send + Sync,
) -> Result<DrillReport, DrillError> {
    options.validate()?;
    std::fs::create_dir_all(&options.dir).map_err(|e| DrillError::io(&options.dir, &e))?;
    progress(format!(
        "drill {}: directory {}",
        options.plan.name,
        options.dir.display()
    ));
    let http = Http::new();
    let mut world = setup(&options, &http, &progress)
        .await
        .map_err(|e| DrillError::Setup(format!("{e} (logs in {})", options.dir.display())))?;
    let outcome = drive(&options, &http, &mut world, &progress).await;
    progress("stopping the shop, the providers, the broker and PostgreSQL".into());
    world.teardown().await;
    let mut report = match outcome {
        Ok(report) => report,
        Err(error) => {
            return Err(match error {
                DrillError::Setup(m) => {
                    DrillError::Setup(format!("{m} (logs in {})", options.dir.display()))
                }
                DrillError::Fault(m) => {
                    DrillError::Fault(format!("{m} (logs in {})", options.dir.display()))
                }
                DrillError::Check(m) => {
                    DrillError::Check(format!("{m} (logs in {})", options.dir.display()))
                }
            });
        }
    };
    report.dir_kept = options.keep || !report.passed();
    if !report.dir_kept {
        let _ = std::fs::remove_dir_all(&options.dir);
    }
    Ok(report)
}

async fn setup(
    options: &DrillOptions,
    http: &Http,
    progress: &(impl Fn(String) + Send + Sync),
) -> Result<World, DrillError> {
    let dir = &options.dir;
    let postgres = PrivatePostgres::create(&dir.join("postgres"), free_port()?).await?;
    progress(format!("PostgreSQL on 127.0.0.1:{}", postgres.port()));

    let broker_proxy_port = free_port()?;
    let broker = Broker::start(
        options.tansu.clone(),
        &dir.join("broker"),
        loopback(free_port()?),
        loopback(broker_proxy_port),
    )
    .await?;
    progress(format!(
        "broker (tansu, {:?} storage) on {}, advertised through its proxy on 127.0.0.1:{broker_proxy_port}",
        options.tansu.storage,
        broker.listen()
    ));

    let payment_port = free_port()?;
    let carrier_port = free_port()?;
    let mut proxies = Vec::new();
    for (link, upstream, listen) in [
        (
            Link::Postgres,
            loopback(postgres.port()),
            loopback(free_port()?),
        ),
        (Link::Broker, broker.listen(), loopback(broker_proxy_port)),
        (
            Link::Payment,
            loopback(payment_port),
            loopback(free_port()?),
        ),
        (
            Link::Carrier,
            loopback(carrier_port),
            loopback(free_port()?),
        ),
    ] {
        let proxy = FaultProxy::start(link.name(), listen, upstream)
            .await
            .map_err(|e| DrillError::Setup(format!("{} proxy on {listen}: {e}", link.name())))?;
        proxies.push((link, Arc::new(proxy)));
    }
    let via = |link: Link| {
        proxies
            .iter()
            .find(|(l, _)| *l == link)
            .map(|(_, p)| p.listen())
            .expect("every link has a proxy")
    };

    let log_dir = dir.join("logs");
    std::fs::create_dir_all(&log_dir).map_err(|e| DrillError::io(&log_dir, &e))?;
    let shop = &options.shop_bin;
    let common_env = vec![
        ("RUST_LOG".to_string(), "info".to_string()),
        ("NO_COLOR".to_string(), "1".to_string()),
    ];
    let mut carrier = ManagedProcess::new(
        "carrier",
        shop,
        vec![
            "carrier".into(),
            "--listen".into(),
            loopback(carrier_port).to_string(),
        ],
        common_env.clone(),
        &log_dir,
        format!("http://{}/health/live", loopback(carrier_port)),
    );
    carrier.start(http, Duration::from_secs(30)).await?;

    let mut migrate = tokio::process::Command::new(shop);
    let output = migrate
        .arg("migrate")
        .env("DATABASE_URL", postgres.url())
        .env("SHOP_SCHEMA", SCHEMA)
        .output()
        .await
        .map_err(|e| DrillError::Setup(format!("cannot run reprise-shop migrate: {e}")))?;
    if !output.status.success() {
        return Err(DrillError::Setup(format!(
            "reprise-shop migrate failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }

    let replica_ports: Vec<u16> = (0..options.replicas)
        .map(|_| free_port())
        .collect::<Result<_, _>>()?;
    let replica_urls: Vec<String> = replica_ports
        .iter()
        .map(|port| format!("http://{}", loopback(*port)))
        .collect();
    let mut replicas = Vec::new();
    for (index, port) in replica_ports.iter().enumerate() {
        let mut env = common_env.clone();
        env.extend([
            ("SHOP_LISTEN".to_string(), loopback(*port).to_string()),
            (
                "DATABASE_URL".to_string(),
                postgres.url_via(via(Link::Postgres)),
            ),
            ("KAFKA_BOOTSTRAP".to_string(), via(Link::Broker).to_string()),
            (
                "SHOP_PAYMENT_URL".to_string(),
                format!("http://{}", via(Link::Payment)),
            ),
            (
                "SHOP_CARRIER_URL".to_string(),
                format!("http://{}", via(Link::Carrier)),
            ),
            ("SHOP_SCHEMA".to_string(), SCHEMA.to_string()),
            ("SHOP_PARTITIONS".to_string(), PARTITIONS.to_string()),
            ("SHOP_SHUTDOWN_GRACE_MS".to_string(), "5000".to_string()),
        ]);
        let mut replica = ManagedProcess::new(
            format!("replica-{index}"),
            shop,
            vec!["serve".into()],
            env,
            &log_dir,
            format!("http://{}/health/ready", loopback(*port)),
        );
        replica.spawn()?;
        replicas.push(replica);
    }
    let started = Instant::now();
    for replica in &mut replicas {
        replica.wait_ready(http, READY_WITHIN).await?;
    }
    progress(format!(
        "{} shop replicas ready after {:.1}s ({})",
        replicas.len(),
        started.elapsed().as_secs_f64(),
        replica_urls.join(", ")
    ));

    // Last, so that its outage windows can be given relative to the load's start.
    let windows: Vec<String> = options
        .plan
        .outages()
        .iter()
        .map(|(from, to)| {
            format!(
                "{}ms..{}ms",
                (PROVIDER_LEAD + *from).as_millis(),
                (PROVIDER_LEAD + *to).as_millis()
            )
        })
        .collect();
    let mut payment_env = common_env;
    if !windows.is_empty() {
        payment_env.push(("SHOP_OUTAGE".to_string(), windows.join(",")));
    }
    let payment = ManagedProcess::new(
        "payment-provider",
        shop,
        vec![
            "payment-provider".into(),
            "--listen".into(),
            loopback(payment_port).to_string(),
        ],
        payment_env,
        &log_dir,
        format!("http://{}/health/live", loopback(payment_port)),
    );
    Ok(World {
        postgres,
        broker,
        proxies,
        replicas,
        payment,
        carrier,
        payment_url: format!("http://{}", loopback(payment_port)),
        replica_urls,
    })
}

/// Records every process that ended without the drill killing it — a crash — and starts
/// it again, as an orchestrator restarts a crashed pod, so the drill goes on.
async fn watch_exits(
    world: &mut World,
    started: Instant,
    last_fault: &str,
    exits: &mut Vec<String>,
) {
    let at = started.elapsed().as_secs_f64();
    let record = |exits: &mut Vec<String>,
                  name: &str,
                  status: std::process::ExitStatus,
                  log: String| {
        exits.push(format!(
            "{name} exited on its own at {at:.1}s ({status}) after: {last_fault}; its log ends:\n{log}"
        ));
    };
    for process in world
        .replicas
        .iter_mut()
        .chain([&mut world.payment, &mut world.carrier])
    {
        if let Some(status) = process.exited() {
            record(exits, process.name(), status, process.log_tail(15));
            process.clear_exited();
            let _ = process.spawn();
        }
    }
    if let Some(status) = world.broker.exited() {
        record(exits, "the broker", status, String::new());
        let _ = world.broker.restart().await;
    }
    // Only the first panic of a burst: a dead storage task makes every later request
    // panic too.
    if let Some(panic) = world.broker.new_panics().into_iter().next() {
        exits.push(format!(
            "the broker panicked at {at:.1}s after: {last_fault}: {panic}"
        ));
    }
}

/// Sleeps until `until`, looking for crashes every half second.
async fn wait_watching(
    world: &mut World,
    until: Instant,
    started: Instant,
    last_fault: &str,
    exits: &mut Vec<String>,
) {
    while Instant::now() < until {
        tokio::time::sleep_until((Instant::now() + Duration::from_millis(500)).min(until)).await;
        watch_exits(world, started, last_fault, exits).await;
    }
}

async fn drive(
    options: &DrillOptions,
    http: &Http,
    world: &mut World,
    progress: &(impl Fn(String) + Send + Sync),
) -> Result<DrillReport, DrillError> {
    let provider_started = Instant::now();
    world.payment.start(http, PROVIDER_LEAD).await.map_err(|e| {
        DrillError::Setup(format!(
            "the payment provider must be up within {PROVIDER_LEAD:?} (its outage windows count from its start): {e}"
        ))
    })?;
    let started = provider_started + PROVIDER_LEAD;
    tokio::time::sleep_until(started).await;
    progress(format!(
        "load: {} orders/s for {}s; {} faults planned",
        options.rate,
        options.plan.duration.as_secs(),
        options.plan.steps.len()
    ));
    let load = tokio::spawn(client::run_load(
        http.clone(),
        Replicas(world.replica_urls.clone()),
        options.rate,
        options.plan.duration,
        options.seed,
        started,
    ));

    let mut exits = Vec::new();
    let mut faults: Vec<FaultRecord> = Vec::new();
    let mut poison = Vec::new();
    let mut last_fault = "nothing yet".to_string();
    for (batch, step) in (0_u32..).zip(&options.plan.steps) {
        wait_watching(world, started + step.at, started, &last_fault, &mut exits).await;
        let description = step.fault.describe();
        progress(format!(
            "{:>6.1}s  {description}",
            started.elapsed().as_secs_f64()
        ));
        last_fault.clone_from(&description);
        let at = started.elapsed().as_secs_f64();
        let mut notes = Vec::new();
        let heal_at = Instant::now() + step.fault.lasting();
        match step.fault {
            Fault::KillReplica { replica, .. } => {
                world.replicas[replica].kill().await;
                wait_watching(world, heal_at, started, &last_fault, &mut exits).await;
                let restarted = Instant::now();
                world.replicas[replica]
                    .start(http, READY_WITHIN)
                    .await
                    .map_err(|e| {
                        DrillError::Fault(format!("replica {replica} did not come back: {e}"))
                    })?;
                notes.push(format!(
                    "replica {replica} ready {:.1}s after its restart",
                    restarted.elapsed().as_secs_f64()
                ));
            }
            Fault::PostgresRestart { .. } => {
                world.postgres.crash().await?;
                wait_watching(world, heal_at, started, &last_fault, &mut exits).await;
                world.postgres.start().await?;
            }
            Fault::BrokerRestart { .. } => {
                world.broker.kill().await;
                wait_watching(world, heal_at, started, &last_fault, &mut exits).await;
                world.broker.restart().await?;
            }
            Fault::Network { link, fault, .. } => {
                world.proxy(link).set(Some(fault));
                wait_watching(world, heal_at, started, &last_fault, &mut exits).await;
                world.proxy(link).set(None);
            }
            Fault::ResetConnections { link } => world.proxy(link).reset(),
            Fault::ProviderOutage { .. } => {
                // The provider's windows were fixed at its start; this only waits them out.
                wait_watching(world, heal_at, started, &last_fault, &mut exits).await;
            }
            Fault::Poison => {
                let produced = poison::produce(&world.broker.listen().to_string(), batch).await?;
                notes.push(format!(
                    "produced {} poison messages onto {}",
                    produced.len(),
                    poison::TOPIC
                ));
                poison.extend(produced);
            }
        }
        let healed_at = started.elapsed().as_secs_f64();
        progress(format!("{healed_at:>6.1}s  healed: {description}"));
        faults.push(FaultRecord {
            description,
            at,
            healed_at,
            recovered_after_secs: None,
            acknowledged_during: 0,
            failed_attempts_during: 0,
            notes,
        });
    }
    let last_heal = started + Duration::from_secs_f64(faults.last().map_or(0.0, |f| f.healed_at));
    // The rest of the load, still watching for crashes.
    while !load.is_finished() {
        let until = Instant::now() + Duration::from_secs(1);
        wait_watching(world, until, started, &last_fault, &mut exits).await;
    }
    let outcomes = load
        .await
        .map_err(|e| DrillError::Check(format!("the load's task failed: {e}")))?;
    let summary = LoadSummary::of(&outcomes);
    progress(format!(
        "{:>6.1}s  load done: {} offered, {} acknowledged; waiting for every acknowledged order to be terminal",
        started.elapsed().as_secs_f64(),
        summary.offered,
        summary.acknowledged
    ));
    for fault in &mut faults {
        attribute(fault, &outcomes);
    }

    let acknowledged: Vec<&OrderOutcome> =
        outcomes.iter().filter(|o| o.order_id.is_some()).collect();
    let last_ack = outcomes
        .iter()
        .filter_map(|o| o.acknowledged_at)
        .fold(0.0_f64, f64::max);
    let deadline = (last_heal + SETTLE_BOUND)
        .max(started + Duration::from_secs_f64(last_ack) + Duration::from_secs(20));
    let (finals, settled) = check::await_terminal(
        http,
        &world.replica_urls,
        &acknowledged,
        last_heal,
        deadline,
    )
    .await;
    progress(format!(
        "{:>6.1}s  acknowledged orders terminal: {}; waiting for the log to stop growing",
        started.elapsed().as_secs_f64(),
        settled.map_or("not all".to_string(), |d| format!(
            "after {:.1}s",
            d.as_secs_f64()
        ))
    ));
    let quiet = check::await_quiet(
        &world.postgres.url(),
        SCHEMA,
        last_heal,
        deadline.max(Instant::now() + check::QUIET_FOR * 3),
    )
    .await?;
    watch_exits(world, started, &last_fault, &mut exits).await;

    let mut findings: Vec<String> = Vec::new();
    for outcome in &outcomes {
        for contradiction in &outcome.contradictions {
            findings.push(format!(
                "client contract: order {}: {contradiction}",
                outcome.request.key
            ));
        }
    }
    let not_terminal: Vec<&String> = acknowledged
        .iter()
        .filter_map(|o| o.order_id.as_ref())
        .filter(|id| {
            finals
                .get(*id)
                .is_none_or(|f| f.status != "completed" && f.status != "cancelled")
        })
        .collect();
    if !not_terminal.is_empty() {
        let missing = not_terminal
            .iter()
            .filter(|id| !finals.contains_key(**id))
            .count();
        findings.push(format!(
            "acknowledged orders not terminal {}s after the last heal: {} ({} not found at all), e.g. {}",
            SETTLE_BOUND.as_secs(),
            not_terminal.len(),
            missing,
            not_terminal.iter().take(5).map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }

    // The checks compare a snapshot of the log (the inbox markers) with the offsets the
    // groups committed: with the replicas still consuming, a commit made after the
    // snapshot would look like a message acknowledged without effect. Stopped gracefully,
    // they commit what they handled and leave their groups, as in a deploy.
    progress(format!(
        "{:>6.1}s  stopping the replicas (SIGTERM) before the checks",
        started.elapsed().as_secs_f64()
    ));
    for replica in &mut world.replicas {
        replica.terminate(Duration::from_secs(15)).await;
    }
    progress(format!(
        "{:>6.1}s  checking the log, the provider's books and the broker",
        started.elapsed().as_secs_f64()
    ));
    let sources = Sources {
        database_url: world.postgres.url(),
        schema: SCHEMA.to_string(),
        payment_url: world.payment_url.clone(),
        bootstrap: world.broker.listen().to_string(),
        partitions: PARTITIONS,
    };
    let audit = check::audit(&sources, http, &acknowledged, &finals).await?;
    findings.extend(audit.findings.iter().cloned());
    // A broker that panics while the replicas shut down or the checks read it counts too.
    watch_exits(world, started, &last_fault, &mut exits).await;
    for exit in &exits {
        findings.push(format!(
            "crash: {}",
            exit.lines().next().unwrap_or_default()
        ));
    }
    if (audit.bus_dead_lettered as usize) < poison.len() {
        findings.push(format!(
            "poison: {} messages produced, {} dead-lettered and committed past",
            poison.len(),
            audit.bus_dead_lettered
        ));
    }

    let completed = finals.values().filter(|f| f.status == "completed").count();
    let cancelled = finals.values().filter(|f| f.status == "cancelled").count();
    let mut cancelled_reasons = std::collections::BTreeMap::new();
    for order in finals.values().filter(|f| f.status == "cancelled") {
        *cancelled_reasons
            .entry(
                order
                    .reason
                    .clone()
                    .unwrap_or_else(|| "no reason given".into()),
            )
            .or_default() += 1;
    }
    Ok(DrillReport {
        plan: options.plan.name.to_string(),
        simulator_plan: options.plan.simulator_plan.map(str::to_owned),
        seed: options.seed,
        rate_per_sec: options.rate,
        duration_secs: options.plan.duration.as_secs_f64(),
        load: summary,
        faults,
        unexpected_exits: exits,
        terminal: completed + cancelled,
        completed,
        cancelled,
        cancelled_reasons,
        settled_after_last_heal_secs: settled.map(|d| d.as_secs_f64()),
        quiet_after_last_heal_secs: quiet.map(|d| d.as_secs_f64()),
        settle_bound_secs: SETTLE_BOUND.as_secs_f64(),
        audit,
        poison,
        findings,
        dir: options.dir.clone(),
        dir_kept: true,
        load_average: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_string(),
    })
}

/// What the client saw around one fault.
fn attribute(fault: &mut FaultRecord, outcomes: &[OrderOutcome]) {
    fault.acknowledged_during = outcomes
        .iter()
        .filter_map(|o| o.acknowledged_at)
        .filter(|at| (fault.at..=fault.healed_at).contains(at))
        .count();
    // Attempts are not time-stamped one by one: count the failures of orders first tried
    // during the fault.
    fault.failed_attempts_during = outcomes
        .iter()
        .filter(|o| (fault.at..=fault.healed_at).contains(&o.first_attempt_at))
        .map(|o| o.failures.len())
        .sum();
    fault.recovered_after_secs = outcomes
        .iter()
        .filter(|o| o.first_attempt_at >= fault.healed_at)
        .filter_map(|o| o.acknowledged_at)
        .map(|at| at - fault.healed_at)
        .reduce(f64::min);
}
