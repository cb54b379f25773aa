//! Seed sweeps and determinism checks, in parallel and in bounded memory.
//!
//! Seeds are independent simulations, so they spread over worker threads that pull the
//! next seed from a shared counter; each simulation runs start to finish on one thread
//! (the BUGGIFY oracle is thread-local). Results are folded into one summary as they come
//! — counts, fault tallies and the failing seeds (the first [`MAX_LISTED_FAILURES`] by
//! seed) — never kept per seed, so a billion-seed sweep needs no more memory than a
//! thousand-seed one. The output does not depend on the number of jobs.
//!
//! **A panic is a failing seed**, not the end of the sweep: each run is caught, its panic
//! message and location become the failure's outcome, and the sweep goes on.
//!
//! **Determinism is sampled by default**: one seed in [`DEFAULT_DETERMINISM_SAMPLE`] runs
//! twice and the two trace hashes must match (the hash covers what ran *and* the data
//! appended and published); a mismatch is a failure that names the first divergent step.
//! `--determinism all|none|N` changes the rate.
//!
//! **Coverage comes with every sweep**: each run counts its `sometimes!` hits (apart
//! from its trace, so the hashes are those of a run without them) and the summary says in
//! how many runs each declared situation was reached — and which were never reached,
//! the point of declaring them — beside the fault kinds and BUGGIFY points that fired.
//!
//! **A sweep can be one shard of a larger one** ([`crate::shard`]): it runs its share of
//! the range, and its JSON result carries everything [`crate::merge`] needs to rebuild
//! the unsharded summary.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reprise_sim::{RunReport, Scenario, SimConfig, TraceMode};
use serde::{Deserialize, Serialize};

use crate::shard::Shard;

/// Failing seeds listed in a summary (the smallest seeds); the rest are counted.
pub const MAX_LISTED_FAILURES: usize = 100;
/// By default one seed in this many is run twice to check determinism.
pub const DEFAULT_DETERMINISM_SAMPLE: u64 = 50;

/// How many seeds of a sweep are run twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeterminismSample {
    /// Every n-th seed (by index in the sweep; the first seed always).
    Every(u64),
    All,
    None,
}

impl std::fmt::Display for DeterminismSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeterminismSample::Every(n) => write!(f, "{n}"),
            DeterminismSample::All => f.write_str("all"),
            DeterminismSample::None => f.write_str("none"),
        }
    }
}

impl DeterminismSample {
    fn covers(self, index: u64) -> bool {
        match self {
            DeterminismSample::Every(n) => index % n.max(1) == 0,
            DeterminismSample::All => true,
            DeterminismSample::None => false,
        }
    }

    /// Parses `all`, `none` or a positive number `n` (one seed in `n`).
    ///
    /// # Errors
    /// Anything else.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "all" => Ok(DeterminismSample::All),
            "none" => Ok(DeterminismSample::None),
            n => match n.parse::<u64>() {
                Ok(0) | Err(_) => Err(format!(
                    "--determinism takes all, none or a positive number (one seed in N), not {n:?}"
                )),
                Ok(1) => Ok(DeterminismSample::All),
                Ok(n) => Ok(DeterminismSample::Every(n)),
            },
        }
    }
}

/// One failing seed, as the summary lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub seed: u64,
    pub hash: String,
    pub outcome: String,
    pub invariant: Option<String>,
    pub entities: Vec<String>,
    pub reproduce: String,
}

/// How often one fault kind fired in a sweep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultCount {
    /// Runs in which it fired at least once.
    pub runs: u64,
    /// Firings in all runs.
    pub total: u64,
}

impl FaultCount {
    /// Adds another sweep's count of the same kind.
    pub fn add(&mut self, other: FaultCount) {
        self.runs += other.runs;
        self.total += other.total;
    }

    fn add_run(&mut self, firings: u64) {
        if firings > 0 {
            self.runs += 1;
            self.total += firings;
        }
    }
}

/// How often one `sometimes!` situation was reached in a sweep.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SometimesCount {
    /// Runs that reached it at least once (0: not reached).
    pub runs: u64,
    /// Hits in all runs.
    pub total: u64,
    /// Declared by the scenario; an undeclared one was hit by code the scenario did not
    /// announce (still worth knowing, never "not reached").
    pub declared: bool,
    pub description: String,
}

/// What a sweep reached: `sometimes!` situations and the declared BUGGIFY points (the
/// faults that fired are [`SweepOutcome::faults`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// Every declared situation (reached or not) and every undeclared one that was hit.
    pub sometimes: BTreeMap<String, SometimesCount>,
    /// The BUGGIFY points the scenario declared, to name those that never fired.
    pub fault_points: Vec<String>,
}

impl Coverage {
    /// The declared situations and points of `scenario`, none reached yet.
    #[must_use]
    pub fn declared(scenario: &dyn Scenario) -> Self {
        let mut coverage = Coverage::default();
        for situation in scenario.situations() {
            coverage.sometimes.insert(
                situation.name.to_owned(),
                SometimesCount {
                    declared: true,
                    description: situation.description.to_owned(),
                    ..SometimesCount::default()
                },
            );
        }
        coverage.fault_points = scenario
            .fault_points()
            .into_iter()
            .map(str::to_owned)
            .collect();
        coverage.fault_points.sort();
        coverage.fault_points.dedup();
        coverage
    }

    /// Folds one run's hits.
    pub fn add_run(&mut self, hits: &[(&'static str, u64)]) {
        for &(name, n) in hits {
            if n == 0 {
                continue;
            }
            let count = self.sometimes.entry(name.to_owned()).or_default();
            count.runs += 1;
            count.total += n;
        }
    }

    /// Folds another sweep's coverage (another shard, another batch of seeds).
    pub fn merge(&mut self, other: &Coverage) {
        for (name, theirs) in &other.sometimes {
            let ours = self.sometimes.entry(name.clone()).or_default();
            ours.runs += theirs.runs;
            ours.total += theirs.total;
            ours.declared |= theirs.declared;
            if ours.description.is_empty() {
                ours.description.clone_from(&theirs.description);
            }
        }
        self.fault_points.extend(other.fault_points.iter().cloned());
        self.fault_points.sort();
        self.fault_points.dedup();
    }

    /// Declared situations no run reached.
    pub fn not_reached(&self) -> impl Iterator<Item = (&String, &SometimesCount)> {
        self.sometimes
            .iter()
            .filter(|(_, c)| c.declared && c.runs == 0)
    }
}

/// What a sweep found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepOutcome {
    pub scenario: String,
    pub plan: String,
    /// The sweep's range: `seeds` seeds from `start` (all shards of one sweep share it).
    pub start: u64,
    pub seeds: u64,
    /// The share of the range this result covers, if it is one shard's.
    #[serde(default)]
    pub shard: Option<Shard>,
    /// The determinism sample (`all`, `none`, or one seed in N).
    #[serde(default)]
    pub determinism: String,
    pub passed: u64,
    /// Failing seeds in all (panics and nondeterminism included).
    pub failed: u64,
    /// The first [`MAX_LISTED_FAILURES`] failing seeds, by seed.
    pub failures: Vec<Failure>,
    pub panics: u64,
    /// Seeds run twice, and how many of them diverged.
    pub determinism_checked: u64,
    pub nondeterministic: u64,
    pub wall_seconds: f64,
    pub runs_per_second: f64,
    pub simulated_seconds: f64,
    /// Simulated time over wall time, summed over all workers.
    pub time_compression: f64,
    pub jobs: usize,
    /// How often each fault kind fired — BUGGIFY points by name (`buggify:<point>`).
    pub faults: BTreeMap<String, FaultCount>,
    /// Errors of dependencies' own error rates: part of the scenario, not injected, so
    /// counted apart from the faults.
    pub inherent_errors: FaultCount,
    #[serde(default)]
    pub coverage: Coverage,
}

impl SweepOutcome {
    /// Seeds this result ran: its shard's share of the range, or the whole range.
    #[must_use]
    pub fn ran(&self) -> u64 {
        self.shard.map_or(self.seeds, |s| s.share(self.seeds))
    }
}

/// The command lines a failure message prints, for one program.
#[derive(Clone, Debug)]
pub struct Commands<'a> {
    pub program: &'a str,
    /// What `--plan` was given (a name or a JSON file).
    pub plan: &'a str,
}

impl Commands<'_> {
    #[must_use]
    pub fn replay(&self, scenario: &str, seed: u64) -> String {
        format!(
            "{} run {scenario} --seed {seed} --plan {} --trace",
            self.program, self.plan
        )
    }

    #[must_use]
    pub fn shrink(&self, scenario: &str, seed: u64) -> String {
        format!(
            "{} shrink {scenario} --seed {seed} --plan {}",
            self.program, self.plan
        )
    }
}

fn progress(seeds: u64, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::new(seeds);
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    } else {
        bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} seeds, {per_sec}, {msg}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
    }
    bar
}

thread_local! {
    /// The last panic on this thread, as the panic hook saw it (message and location).
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `f`, turning a panic into `Err(message with location)`. The process's panic hook
/// is replaced while sweeping (see [`QuietPanics`]), so a panicking seed prints nothing
/// of its own: the sweep reports it.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        LAST_PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| {
                payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_owned())
            })
    })
}

/// Replaces the panic hook with one that records the panic for [`catch`]; restores the
/// previous hook on drop.
pub struct QuietPanics {
    previous: Option<PanicHook>,
}

type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

impl std::fmt::Debug for QuietPanics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QuietPanics")
    }
}

impl QuietPanics {
    #[must_use]
    pub fn install() -> Self {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|info| {
            let text = info.to_string().replace('\n', " ");
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
        }));
        QuietPanics {
            previous: Some(previous),
        }
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            std::panic::set_hook(previous);
        }
    }
}

/// Runs `f(index, seed)` for the `seeds` seeds from `start` that `shard` owns (all of
/// them without one) on `jobs` threads; `fold` receives every result as it comes, under
/// one lock. `index` is the seed's place in the whole range, shard or not.
fn parallel<T>(
    start: u64,
    seeds: u64,
    shard: Option<Shard>,
    jobs: usize,
    bar: &ProgressBar,
    f: impl Fn(u64, u64) -> T + Sync,
    fold: impl FnMut(u64, T) + Send,
) {
    let next = AtomicU64::new(0);
    let fold = Mutex::new(fold);
    let count = shard.map_or(seeds, |s| s.share(seeds));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let j = next.fetch_add(1, Ordering::Relaxed);
                    if j >= count {
                        break;
                    }
                    let i = shard.map_or(j, |s| s.index_of(j));
                    let seed = start + i;
                    let value = f(i, seed);
                    (fold
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner))(
                        seed, value
                    );
                    bar.inc(1);
                }
            });
        }
    });
}

/// The result of one seed of a sweep.
struct SeedResult {
    passed: bool,
    sim_time: Duration,
    failure: Option<Failure>,
    faults: BTreeMap<String, u64>,
    inherent_errors: u64,
    coverage: Vec<(&'static str, u64)>,
    panicked: bool,
    checked: bool,
    diverged: bool,
}

/// The name a fault is counted under: its kind, or `buggify:<point>` for BUGGIFY.
fn fault_name(record: &reprise_sim::FaultRecord) -> String {
    if record.kind == "buggify" {
        ["buggify:", &record.detail].concat()
    } else {
        record.kind.to_owned()
    }
}

fn count_faults(report: &RunReport) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for record in &report.faults {
        *counts.entry(fault_name(record)).or_insert(0) += 1;
    }
    counts
}

fn failure_of(report: &RunReport, commands: &Commands<'_>) -> Failure {
    let violation = report.violation();
    Failure {
        seed: report.seed,
        hash: format!("{:016x}", report.hash),
        outcome: report.outcome.to_string(),
        invariant: violation.map(|v| v.invariant.clone()),
        entities: violation.map(|v| v.entities.clone()).unwrap_or_default(),
        reproduce: commands.replay(report.scenario, report.seed),
    }
}

fn run_seed(
    scenario: &dyn Scenario,
    base: &SimConfig,
    seed: u64,
    check_twice: bool,
    commands: &Commands<'_>,
) -> SeedResult {
    let config = base.clone().with_seed(seed);
    let report = match catch(|| reprise_sim::run(scenario, &config)) {
        Ok(report) => report,
        Err(panic) => {
            return SeedResult {
                passed: false,
                sim_time: Duration::ZERO,
                failure: Some(Failure {
                    seed,
                    hash: String::new(),
                    outcome: format!("panicked: {panic}"),
                    invariant: None,
                    entities: Vec::new(),
                    reproduce: commands.replay(scenario.name(), seed),
                }),
                faults: BTreeMap::new(),
                inherent_errors: 0,
                coverage: Vec::new(),
                panicked: true,
                checked: false,
                diverged: false,
            };
        }
    };
    let mut failure = (!report.passed()).then(|| failure_of(&report, commands));
    let mut diverged = false;
    if check_twice {
        // A second run must give the same hash; only a mismatch pays for the step-by-step
        // comparison that names the first divergent step.
        let again = catch(|| reprise_sim::run(scenario, &config)).map(|r| r.hash);
        if again != Ok(report.hash) {
            diverged = true;
            let detail = match catch(|| reprise_sim::check_determinism(scenario, &config)) {
                Ok(Err(divergence)) => divergence.to_string(),
                Ok(Ok(_)) => "the hashes of two runs differed, a third comparison agreed: \
                              nondeterminism that comes and goes"
                    .to_owned(),
                Err(panic) => format!("the second run panicked: {panic}"),
            };
            failure = Some(Failure {
                outcome: format!("nondeterministic: {detail}"),
                invariant: Some("determinism".to_owned()),
                ..failure_of(&report, commands)
            });
        }
    }
    SeedResult {
        passed: failure.is_none(),
        sim_time: report.stats.sim_time,
        faults: count_faults(&report),
        inherent_errors: report.inherent_errors.len() as u64,
        coverage: report.coverage,
        failure,
        panicked: false,
        checked: check_twice,
        diverged,
    }
}

/// What a sweep is asked to do.
#[derive(Clone, Debug)]
pub struct SweepRequest<'a> {
    pub config: SimConfig,
    pub start: u64,
    pub seeds: u64,
    /// Run only this shard's share of the range.
    pub shard: Option<Shard>,
    pub jobs: usize,
    /// Print the summary as JSON on stdout instead of the human summary.
    pub json: bool,
    /// Add the coverage report to the human summary.
    pub coverage: bool,
    pub determinism: DeterminismSample,
    pub commands: Commands<'a>,
}

/// Sweeps the requested seeds, prints a summary (human or JSON) and returns it.
pub fn sweep(scenario: &dyn Scenario, request: &SweepRequest<'_>) -> SweepOutcome {
    let SweepRequest {
        config,
        start,
        seeds,
        shard,
        jobs,
        json,
        coverage,
        determinism,
        commands,
    } = request;
    let (start, seeds, shard, jobs) = (*start, *seeds, *shard, *jobs);
    if !json {
        let part = shard.map_or_else(String::new, |s| {
            format!(
                " (shard {s}: the {} seeds start + i with i mod {} = {})",
                s.share(seeds),
                s.count,
                s.index - 1
            )
        });
        eprintln!(
            "sweeping {} under plan {}: seeds {start}..={}{part} on {jobs} thread(s)",
            scenario.name(),
            commands.plan,
            start + (seeds - 1)
        );
    }
    let bar = progress(shard.map_or(seeds, |s| s.share(seeds)), *json);
    let began = Instant::now();
    // Bulk sweeps only need pass/fail and the hash.
    let base = config.clone().with_trace(TraceMode::Hash);
    let mut outcome = SweepOutcome {
        scenario: scenario.name().to_owned(),
        plan: commands.plan.to_owned(),
        start,
        seeds,
        shard,
        determinism: determinism.to_string(),
        passed: 0,
        failed: 0,
        failures: Vec::new(),
        panics: 0,
        determinism_checked: 0,
        nondeterministic: 0,
        wall_seconds: 0.0,
        runs_per_second: 0.0,
        simulated_seconds: 0.0,
        time_compression: 0.0,
        jobs,
        faults: BTreeMap::new(),
        inherent_errors: FaultCount::default(),
        coverage: Coverage::declared(scenario),
    };
    let mut simulated = Duration::ZERO;
    let mut listed: BTreeMap<u64, Failure> = BTreeMap::new();
    {
        let _quiet = QuietPanics::install();
        parallel(
            start,
            seeds,
            shard,
            jobs,
            &bar,
            |index, seed| run_seed(scenario, &base, seed, determinism.covers(index), commands),
            |seed, result: SeedResult| {
                simulated += result.sim_time;
                outcome.panics += u64::from(result.panicked);
                outcome.determinism_checked += u64::from(result.checked);
                outcome.nondeterministic += u64::from(result.diverged);
                outcome.inherent_errors.add_run(result.inherent_errors);
                for (name, n) in result.faults {
                    outcome.faults.entry(name).or_default().add_run(n);
                }
                outcome.coverage.add_run(&result.coverage);
                if result.passed {
                    outcome.passed += 1;
                } else {
                    outcome.failed += 1;
                    bar.set_message(format!("{} failing", outcome.failed));
                    if let Some(failure) = result.failure {
                        listed.insert(seed, failure);
                        if listed.len() > MAX_LISTED_FAILURES {
                            listed.pop_last();
                        }
                    }
                }
            },
        );
    }
    bar.finish_and_clear();
    let wall = began.elapsed();
    outcome.failures = listed.into_values().collect();
    outcome.wall_seconds = wall.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    {
        outcome.runs_per_second = outcome.ran() as f64 / wall.as_secs_f64().max(1e-9);
        outcome.time_compression =
            simulated.as_secs_f64() / (wall.as_secs_f64() * jobs as f64).max(1e-9);
    }
    outcome.simulated_seconds = simulated.as_secs_f64();
    if *json {
        println!("{}", to_json(&outcome));
    } else {
        print_summary(&outcome, Some((scenario, config)), commands, *coverage);
    }
    outcome
}

/// A sweep result as `--json` prints it and `merge` reads it.
#[must_use]
pub fn to_json(outcome: &SweepOutcome) -> String {
    serde_json::to_string_pretty(outcome).expect("plain data")
}

/// Prints the human summary of `outcome`. With `replay` (the scenario and the sweep's
/// configuration), the first failure is replayed with a full trace and explained.
pub fn print_summary(
    outcome: &SweepOutcome,
    replay: Option<(&dyn Scenario, &SimConfig)>,
    commands: &Commands<'_>,
    coverage: bool,
) {
    let shard = outcome
        .shard
        .map_or_else(String::new, |s| format!(" [shard {s}]"));
    println!(
        "{}: {} of {} seeds passed under plan {}{shard} ({:.1}s wall, {:.0} runs/s, {:.0}x time compression per core)",
        outcome.scenario,
        outcome.passed,
        outcome.ran(),
        outcome.plan,
        outcome.wall_seconds,
        outcome.runs_per_second,
        outcome.time_compression
    );
    println!(
        "determinism: {} seed(s) run twice, {} diverged; panics: {}",
        outcome.determinism_checked, outcome.nondeterministic, outcome.panics
    );
    print_faults(outcome);
    if coverage {
        print_coverage(outcome);
    }
    if outcome.failures.is_empty() {
        return;
    }
    println!("\nfailing seeds:");
    for failure in &outcome.failures {
        println!(
            "  seed={} {}",
            failure.seed,
            failure_summary(
                &failure.hash,
                failure.invariant.as_deref().unwrap_or(&failure.outcome),
                &failure.entities
            )
        );
        if failure.invariant.is_none() || failure.invariant.as_deref() == Some("determinism") {
            println!("      {}", failure.outcome);
        }
        println!("      replay: {}", failure.reproduce);
    }
    let unlisted = outcome.failed - outcome.failures.len() as u64;
    if unlisted > 0 {
        println!(
            "  … and {unlisted} more failing seed(s) (only the first {MAX_LISTED_FAILURES} are listed)"
        );
    }
    let Some((scenario, config)) = replay else {
        return;
    };
    // The first failure in full: replayed with a full trace (same seed, same run).
    let first = &outcome.failures[0];
    let replay = config
        .clone()
        .with_seed(first.seed)
        .with_trace(TraceMode::Full);
    let _quiet = QuietPanics::install();
    match catch(|| reprise_sim::run(scenario, &replay)) {
        Ok(report) => println!(
            "\nfirst failure in detail:\n{}",
            crate::failure_message(&report, commands)
        ),
        Err(panic) => println!(
            "\nfirst failure in detail: seed {} panicked: {panic}\n  replay: {}",
            first.seed, first.reproduce
        ),
    }
}

/// The `--coverage` section: each declared situation reached (in how many runs) or not,
/// undeclared ones that were hit, and the declared BUGGIFY points that never fired.
fn print_coverage(outcome: &SweepOutcome) {
    let coverage = &outcome.coverage;
    let ran = outcome.passed + outcome.failed - outcome.panics;
    let declared = coverage.sometimes.values().filter(|c| c.declared).count();
    let reached = coverage
        .sometimes
        .values()
        .filter(|c| c.declared && c.runs > 0)
        .count();
    println!("\ncoverage: {reached} of {declared} declared situation(s) reached in {ran} run(s)");
    let width = coverage
        .sometimes
        .keys()
        .map(String::len)
        .max()
        .unwrap_or(0);
    for (name, count) in &coverage.sometimes {
        let status = match (count.declared, count.runs) {
            (true, 0) => "not reached".to_owned(),
            (declared, runs) => format!(
                "{runs} run(s), {}x{}",
                count.total,
                if declared { "" } else { " (undeclared)" }
            ),
        };
        println!("  {name:<width$}  {status}");
    }
    let missing: Vec<(&String, &SometimesCount)> = coverage.not_reached().collect();
    if !missing.is_empty() {
        println!("not reached ({}):", missing.len());
        for (name, count) in missing {
            println!("  {name}: {}", count.description);
        }
    }
    let never: Vec<&str> = coverage
        .fault_points
        .iter()
        .filter(|p| !outcome.faults.contains_key(&format!("buggify:{p}")))
        .map(String::as_str)
        .collect();
    if !never.is_empty() {
        println!("BUGGIFY points never fired: {}", never.join(", "));
    }
}

/// Fault kinds and BUGGIFY points, with how many runs each fired in and how often.
fn print_faults(outcome: &SweepOutcome) {
    if outcome.faults.is_empty() {
        println!("faults fired: none");
        return;
    }
    let (points, kinds): (Vec<_>, Vec<_>) = outcome
        .faults
        .iter()
        .partition(|(name, _)| name.starts_with("buggify:"));
    let line = |list: &[(&String, &FaultCount)]| -> String {
        list.iter()
            .map(|(name, c)| {
                format!(
                    "{} {}x in {} runs",
                    name.trim_start_matches("buggify:"),
                    c.total,
                    c.runs
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !kinds.is_empty() {
        println!("faults fired: {}", line(&kinds));
    }
    if !points.is_empty() {
        println!("BUGGIFY points fired: {}", line(&points));
    }
    if outcome.inherent_errors.total > 0 {
        println!(
            "dependencies' own error rates (not faults): {}x in {} runs",
            outcome.inherent_errors.total, outcome.inherent_errors.runs
        );
    }
}

/// Checks every seed twice; prints divergences. Returns whether all were deterministic.
pub fn check_determinism(
    scenario: &dyn Scenario,
    config: &SimConfig,
    start: u64,
    seeds: u64,
    jobs: usize,
) -> bool {
    eprintln!(
        "checking determinism of {} under plan {}: seeds {start}..={}, each run twice",
        scenario.name(),
        config.plan.name,
        start + (seeds - 1)
    );
    let bar = progress(seeds, false);
    let began = Instant::now();
    let mut divergent = 0u64;
    let mut reports: BTreeMap<u64, String> = BTreeMap::new();
    {
        let _quiet = QuietPanics::install();
        parallel(
            start,
            seeds,
            None,
            jobs,
            &bar,
            |_, seed| {
                catch(|| reprise_sim::check_determinism(scenario, &config.clone().with_seed(seed)))
            },
            |seed, result| {
                let problem = match result {
                    Ok(Ok(_)) => None,
                    Ok(Err(divergence)) => Some(divergence.to_string()),
                    Err(panic) => Some(format!("seed={seed} panicked: {panic}")),
                };
                if let Some(problem) = problem {
                    divergent += 1;
                    reports.insert(seed, problem);
                    if reports.len() > MAX_LISTED_FAILURES {
                        reports.pop_last();
                    }
                }
            },
        );
    }
    bar.finish_and_clear();
    for problem in reports.values() {
        println!("{problem}");
    }
    println!(
        "{}: {} of {seeds} seeds deterministic under plan {} ({:.1}s)",
        scenario.name(),
        seeds - divergent,
        config.plan.name,
        began.elapsed().as_secs_f64()
    );
    divergent == 0
}

/// `hash=H  verdict [entities]`, as sweep and explore print a failing run.
pub(crate) fn failure_summary(hash: &str, verdict: &str, entities: &[String]) -> String {
    let hash = if hash.is_empty() { "-" } else { hash };
    if entities.is_empty() {
        format!("hash={hash}  {verdict}")
    } else {
        format!("hash={hash}  {verdict} [{}]", entities.join(", "))
    }
}
