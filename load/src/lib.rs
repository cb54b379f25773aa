//! `reprise-load`: an open-loop load generator for the checkout service (`reprise-shop`).
//!
//! ```text
//! reprise-load --url "$SHOP_URL" --profile steady --rate 500 --duration 10m --pid-file /tmp/reprise-shop/service.pid
//! ```
//!
//! Requests start on a schedule fixed in advance ([`profile`]) and their latency counts
//! from the scheduled start, so a slow service is measured as its users would meet it
//! (no coordinated omission). Every `--end-to-end-every`-th accepted order is followed
//! until it is `completed` or `cancelled` (polling `GET /orders/{id}`), for the order's
//! end-to-end latency. The service's backlog and memory are sampled every second
//! ([`watch`]). The run ends with a summary on stdout, `summary.json` and `run.svg` in
//! `--out`, and an exit code that says whether `--check-*` thresholds held.

// A measuring tool: it reads the wall clock, sleeps on tokio and spawns tokio tasks by
// design. The determinism lints guard the simulated crates.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod client;
pub mod plot;
pub mod profile;
pub mod record;
pub mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use serde::Serialize;
use tokio::time::Instant;

use crate::client::{Api, Failure};
use crate::profile::{Profile, Schedule};
use crate::record::{Measured, Recorder};
use crate::watch::Sample;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ProfileKind {
    Ramp,
    Steady,
    Spike,
    Soak,
}

/// Open-loop load against reprise-shop's HTTP API.
#[derive(Parser, Debug)]
#[command(name = "reprise-load", version)]
pub struct Cli {
    /// The service's base URL (what `scripts/serve.sh` prints).
    #[arg(long, env = "SHOP_URL")]
    url: String,
    /// The shape of the run.
    #[arg(long, value_enum, default_value = "steady")]
    profile: ProfileKind,
    /// Requests/s (ramp: the target; spike: the base rate).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Ramp: the starting rate.
    #[arg(long, default_value_t = 0.0)]
    from_rate: f64,
    /// Spike: the rate during the spike (twice `--rate` if not given).
    #[arg(long)]
    spike_rate: Option<f64>,
    /// Spike: when the spike starts, into the run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    spike_at: Duration,
    /// Spike: how long it lasts.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    spike_for: Duration,
    /// How long requests are offered.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Share of requests that read an order placed earlier (`GET /orders/{id}`) instead of
    /// placing one, 0..=1.
    #[arg(long, default_value_t = 0.0)]
    read_share: f64,
    /// Follow every N-th accepted order to its terminal status (0: none).
    #[arg(long, default_value_t = 20)]
    end_to_end_every: u64,
    /// Polling interval of a followed order.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// How long a followed order may take to become terminal before it counts as stuck.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    end_to_end_wait: Duration,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Requests in flight beyond which a scheduled request is not sent but counted as a
    /// `client-saturated` failure.
    #[arg(long, default_value_t = 20_000)]
    max_in_flight: usize,
    /// Processes whose resident memory is sampled (repeatable).
    #[arg(long)]
    pid: Vec<u32>,
    /// Files holding a pid to sample, e.g. /tmp/reprise-shop/service.pid (repeatable).
    #[arg(long)]
    pid_file: Vec<PathBuf>,
    /// Directory for summary.json and run.svg (default: target/load/<profile>-<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Exit 1 if the edge p95 exceeds this (e.g. 100ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    check_p95: Option<Duration>,
    /// Exit 1 if more requests than this failed.
    #[arg(long)]
    check_failures: Option<u64>,
    /// Exit 1 if a followed order was not terminal within `--end-to-end-wait`.
    #[arg(long)]
    check_end_to_end: bool,
}

impl Cli {
    fn profile(&self) -> Profile {
        match self.profile {
            ProfileKind::Ramp => Profile::Ramp {
                from: self.from_rate,
                to: self.rate,
            },
            ProfileKind::Steady => Profile::Steady { rate: self.rate },
            ProfileKind::Soak => Profile::Soak { rate: self.rate },
            ProfileKind::Spike => Profile::Spike {
                base: self.rate,
                peak: self.spike_rate.unwrap_or(self.rate * 2.0),
                at: self.spike_at,
                length: self.spike_for,
            },
        }
    }

    fn validate(&self) -> Result<(Profile, Vec<u32>), Vec<String>> {
        let profile = self.profile();
        let mut problems = profile.validate(self.duration).err().unwrap_or_default();
        if !(0.0..=1.0).contains(&self.read_share) {
            problems.push(format!("--read-share {}: between 0 and 1", self.read_share));
        }
        if !self.url.starts_with("http://") {
            problems.push(format!(
                "--url {:?}: expected http://host:port (set SHOP_URL: eval \"$(bash scripts/serve.sh)\")",
                self.url
            ));
        }
        if self.max_in_flight == 0 {
            problems.push("--max-in-flight must be at least 1".to_owned());
        }
        if self.poll.is_zero() {
            problems.push("--poll must be longer than 0ms".to_owned());
        }
        let mut pids = self.pid.clone();
        for file in &self.pid_file {
            match std::fs::read_to_string(file) {
                Ok(text) => match text.trim().parse() {
                    Ok(pid) => pids.push(pid),
                    Err(_) => problems.push(format!("--pid-file {}: not a pid", file.display())),
                },
                Err(e) => problems.push(format!("--pid-file {}: {e}", file.display())),
            }
        }
        if problems.is_empty() {
            Ok((profile, pids))
        } else {
            Err(problems)
        }
    }
}

/// What one order cost the service, from its own counters over the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OrderCost {
    pub orders_placed: f64,
    pub events_appended_per_order: Option<f64>,
    pub bus_messages_published_per_order: Option<f64>,
    pub bus_messages_consumed_per_order: Option<f64>,
    /// Every HTTP request the service answered (placements, reads, the follow-up polls of
    /// sampled orders, metric scrapes) per order placed.
    pub http_requests_per_order: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub url: String,
    pub profile: String,
    pub profile_name: &'static str,
    pub duration_s: f64,
    pub offered: u64,
    pub achieved_per_s: f64,
    pub started_unix_ms: u128,
    pub load_average: Option<String>,
    pub measured: Measured,
    pub cost: OrderCost,
    pub slopes_per_minute: BTreeMap<&'static str, Option<f64>>,
    /// Seconds from the last answer until every order placed during the run was terminal
    /// (`None`: not within `--end-to-end-wait`).
    pub drained_after_s: Option<f64>,
    pub samples: Vec<Sample>,
}

/// The command line: parses `std::env::args`, runs, exits.
#[must_use]
pub fn main() -> ExitCode {
    run_args(std::env::args_os())
}

/// Runs as `reprise-load` with these arguments (the first is the program name), on its
/// own tokio runtime: what the binary does, and what a test can call in-process.
pub fn run_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(2);
        }
    };
    let (profile, pids) = match cli.validate() {
        Ok(valid) => valid,
        Err(problems) => {
            for problem in problems {
                eprintln!("reprise-load: {problem}");
            }
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("reprise-load: cannot start tokio: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(cli, profile, pids))
}

#[allow(clippy::too_many_lines)]
async fn run(cli: Cli, profile: Profile, pids: Vec<u32>) -> ExitCode {
    let pool = usize::try_from(profile.peak_rate().ceil() as u64)
        .unwrap_or(1024)
        .clamp(16, 1024);
    let api = Api::new(&cli.url, cli.timeout, pool);
    let skus = match api.skus().await {
        Ok(skus) => skus,
        Err(e) => {
            eprintln!(
                "reprise-load: {e} (is the service running? eval \"$(bash scripts/serve.sh)\")"
            );
            return ExitCode::from(1);
        }
    };
    let before = api
        .metrics()
        .await
        .map(|t| watch::parse(&t))
        .unwrap_or_default();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let run_id = format!("{:x}", started_unix.as_nanos());
    eprintln!(
        "reprise-load: {profile} for {}s against {} (run {run_id})",
        cli.duration.as_secs(),
        cli.url
    );

    let recorder = Arc::new(Recorder::new(cli.duration + cli.end_to_end_wait));
    let started = Instant::now();
    let (stop_watch, stop_rx) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(watch::watch(api.clone(), pids, started, stop_rx));

    let in_flight = Arc::new(AtomicUsize::new(0));
    let followers = Arc::new(AtomicUsize::new(0));
    let placed_ids: Arc<Mutex<Vec<String>>> = Arc::default();
    let offered = AtomicU64::new(0);
    let mut tasks = tokio::task::JoinSet::new();
    let mut progress = Instant::now();
    for (n, offset) in Schedule::new(profile.clone(), cli.duration).enumerate() {
        let n = n as u64;
        tokio::time::sleep_until(started + offset).await;
        offered.fetch_add(1, Ordering::Relaxed);
        recorder.offered(offset);
        if in_flight.load(Ordering::Relaxed) >= cli.max_in_flight {
            recorder.failed(&Failure::Saturated, started.elapsed());
            continue;
        }
        // Reap finished tasks so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
        in_flight.fetch_add(1, Ordering::Relaxed);
        let read = cli.read_share > 0.0 && {
            // Deterministic mix: the share of reads among every 1,000 requests.
            let slot = (n.wrapping_mul(2_654_435_761) % 1000) as f64 / 1000.0;
            slot < cli.read_share
        };
        let read_id = read
            .then(|| {
                let ids = placed_ids
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                (!ids.is_empty()).then(|| ids[(n as usize) % ids.len()].clone())
            })
            .flatten();
        let api = api.clone();
        let recorder = Arc::clone(&recorder);
        let task_in_flight = Arc::clone(&in_flight);
        let task_followers = Arc::clone(&followers);
        let placed_ids = Arc::clone(&placed_ids);
        let sku = skus[(n as usize) % skus.len()].clone();
        let key = format!("load-{run_id}-{n}");
        let follow = cli.end_to_end_every > 0 && n % cli.end_to_end_every == 0 && read_id.is_none();
        let (poll, wait) = (cli.poll, cli.end_to_end_wait);
        tasks.spawn(async move {
            let (in_flight, followers) = (task_in_flight, task_followers);
            if let Some(id) = read_id {
                match api.status(&id).await {
                    Ok(_) => recorder.read(offset, started.elapsed()),
                    Err(failure) => recorder.failed(&failure, started.elapsed()),
                }
                in_flight.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            let body = serde_json::json!({
                "customer": format!("load-{}", n % 1000),
                "lines": [{"sku": sku, "quantity": 1}],
            })
            .to_string();
            let placed = api.place(body, &key).await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            let id = match placed {
                Ok(id) => {
                    recorder.accepted(offset, started.elapsed());
                    id
                }
                Err(failure) => {
                    recorder.failed(&failure, started.elapsed());
                    return;
                }
            };
            {
                let mut ids = placed_ids
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if ids.len() < 10_000 {
                    ids.push(id.clone());
                }
            }
            if !follow {
                return;
            }
            followers.fetch_add(1, Ordering::Relaxed);
            let deadline = Instant::now() + wait;
            loop {
                tokio::time::sleep(poll).await;
                if let Ok(status) = api.status(&id).await
                    && (status == "completed" || status == "cancelled")
                {
                    recorder.terminal(offset, started.elapsed(), &status);
                    break;
                }
                if Instant::now() >= deadline {
                    recorder.never_terminal();
                    break;
                }
            }
            followers.fetch_sub(1, Ordering::Relaxed);
        });
        if progress.elapsed() >= Duration::from_secs(10) {
            progress = Instant::now();
            eprintln!(
                "reprise-load: {:>5}s offered {} in flight {} following {}",
                offset.as_secs(),
                offered.load(Ordering::Relaxed),
                in_flight.load(Ordering::Relaxed),
                followers.load(Ordering::Relaxed)
            );
        }
    }
    let dispatched = started.elapsed();
    eprintln!("reprise-load: schedule done; waiting for answers and followed orders");
    let drain_limit = cli.timeout + cli.end_to_end_wait + Duration::from_secs(5);
    let _ = tokio::time::timeout(drain_limit, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    // Costs per order are only whole once every placed order has finished its saga: wait
    // (up to --end-to-end-wait) for the service's own backlog to return to where it was.
    let backlog = |counters: &BTreeMap<&'static str, f64>| {
        counters.get(watch::PLACED).copied().unwrap_or(0.0)
            - counters.get(watch::TERMINAL).copied().unwrap_or(0.0)
    };
    let backlog_before = backlog(&before);
    let drain_started = Instant::now();
    let drained = loop {
        let now = api
            .metrics()
            .await
            .map(|t| watch::parse(&t))
            .unwrap_or_default();
        if now.contains_key(watch::PLACED) && backlog(&now) <= backlog_before {
            break Some(drain_started.elapsed());
        }
        if drain_started.elapsed() >= cli.end_to_end_wait {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let _ = stop_watch.send(true);
    let samples = watcher.await.unwrap_or_default();

    let seconds = usize::try_from(dispatched.as_secs()).unwrap_or(0) + 1;
    let measured = recorder.summary(seconds);
    let after = samples
        .last()
        .map(|s| s.counters.clone())
        .unwrap_or_default();
    let delta = |name: &str| -> Option<f64> {
        Some(after.get(name)? - before.get(name).copied().unwrap_or(0.0))
    };
    let placed = delta(watch::PLACED).unwrap_or(0.0);
    let per_order = |name: &str| delta(name).filter(|_| placed > 0.0).map(|d| d / placed);
    let cost = OrderCost {
        orders_placed: placed,
        events_appended_per_order: per_order(watch::APPENDED),
        bus_messages_published_per_order: per_order(watch::PUBLISHED),
        bus_messages_consumed_per_order: per_order(watch::CONSUMED),
        http_requests_per_order: per_order(watch::HTTP_REQUESTS),
    };
    let slope = |pick: fn(&Sample) -> Option<f64>| {
        let points: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.second <= dispatched.as_secs_f64())
            .filter_map(|s| pick(s).map(|v| (s.second / 60.0, v)))
            .collect();
        watch::slope(&points)
    };
    let slopes = BTreeMap::from([
        ("orders_in_flight", slope(|s| s.orders_in_flight)),
        ("uncommitted_messages", slope(|s| s.uncommitted_messages)),
        ("dead_letters", slope(|s| s.dead_letters)),
        ("rss_mib", slope(|s| s.rss_mib)),
    ]);
    #[allow(clippy::cast_precision_loss)]
    let achieved = measured.accepted as f64 / cli.duration.as_secs_f64();
    let summary = Summary {
        url: cli.url.clone(),
        profile: profile.to_string(),
        profile_name: profile.name(),
        duration_s: cli.duration.as_secs_f64(),
        offered: offered.load(Ordering::Relaxed),
        achieved_per_s: achieved,
        started_unix_ms: started_unix.as_millis(),
        load_average: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .map(|s| s.trim().to_owned()),
        measured,
        cost,
        slopes_per_minute: slopes,
        drained_after_s: drained.map(|d| d.as_secs_f64()),
        samples,
    };
    print_summary(&summary);

    let out = cli.out.clone().unwrap_or_else(|| {
        PathBuf::from("target/load").join(format!("{}-{}", profile.name(), run_id))
    });
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("reprise-load: cannot create {}: {e}", out.display());
        return ExitCode::from(1);
    }
    let json = serde_json::to_string_pretty(&summary).unwrap_or_default();
    if let Err(e) = std::fs::write(out.join("summary.json"), json) {
        eprintln!("reprise-load: cannot write summary.json: {e}");
        return ExitCode::from(1);
    }
    let title = format!("{} — {}", summary.profile, summary.url);
    if let Err(e) = plot::draw(
        &out.join("run.svg"),
        &title,
        &summary.measured.timeline,
        &summary.samples,
    ) {
        eprintln!("reprise-load: cannot draw run.svg: {e}");
        return ExitCode::from(1);
    }
    println!(
        "written: {}/summary.json, {}/run.svg",
        out.display(),
        out.display()
    );
    verdict(&cli, &summary)
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

fn print_summary(summary: &Summary) {
    let m = &summary.measured;
    let failed: u64 = m.failures.values().sum();
    println!(
        "profile      {} for {:.0}s",
        summary.profile, summary.duration_s
    );
    println!(
        "requests     offered {}  accepted {}  reads {}  failed {}  ({:.1} orders/s achieved)",
        summary.offered, m.accepted, m.reads, failed, summary.achieved_per_s
    );
    for (kind, count) in &m.failures {
        println!("  failure    {kind}: {count}");
    }
    let line = |name: &str, p: &record::Percentiles| {
        println!(
            "{name:<12} p50 {}  p90 {}  p95 {}  p99 {}  p99.9 {}  max {}  ms  (n={})",
            ms(p.p50),
            ms(p.p90),
            ms(p.p95),
            ms(p.p99),
            ms(p.p999),
            ms(p.max),
            p.count
        );
    };
    line("edge", &m.edge_ms);
    line("end-to-end", &m.end_to_end_ms);
    if m.end_to_end_never_terminal > 0 {
        println!(
            "  {} followed orders never became terminal",
            m.end_to_end_never_terminal
        );
    }
    let c = &summary.cost;
    println!(
        "per order    events appended {}  bus published {}  bus consumed {}  http requests {}  ({} placed)",
        ms(c.events_appended_per_order),
        ms(c.bus_messages_published_per_order),
        ms(c.bus_messages_consumed_per_order),
        ms(c.http_requests_per_order),
        c.orders_placed
    );
    for (name, slope) in &summary.slopes_per_minute {
        println!("slope        {name}: {} per minute", ms(*slope));
    }
    match summary.drained_after_s {
        Some(seconds) => println!("backlog      drained {seconds:.1}s after the last answer"),
        None => println!("backlog      NOT drained within the end-to-end wait"),
    }
    if let Some(load) = &summary.load_average {
        println!("load average {load}");
    }
}

fn verdict(cli: &Cli, summary: &Summary) -> ExitCode {
    let m = &summary.measured;
    let mut broken = Vec::new();
    if let (Some(limit), Some(p95)) = (cli.check_p95, m.edge_ms.p95)
        && p95 > limit.as_secs_f64() * 1000.0
    {
        broken.push(format!("edge p95 {p95:.1} ms > {} ms", limit.as_millis()));
    }
    let failed: u64 = m.failures.values().sum();
    if let Some(limit) = cli.check_failures
        && failed > limit
    {
        broken.push(format!("{failed} failed requests > {limit}"));
    }
    if cli.check_end_to_end && m.end_to_end_never_terminal > 0 {
        broken.push(format!(
            "{} followed orders not terminal within {:?}",
            m.end_to_end_never_terminal, cli.end_to_end_wait
        ));
    }
    if m.accepted == 0 {
        broken.push("no order was accepted".to_owned());
    }
    if broken.is_empty() {
        ExitCode::SUCCESS
    } else {
        for b in broken {
            eprintln!("reprise-load: check failed: {b}");
        }
        ExitCode::from(1)
    }
}
