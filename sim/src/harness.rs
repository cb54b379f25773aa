//! Seed sweeps for users' own `#[test]`s.
//!
//! ```no_run
//! # use reprise_sim::{FaultPlan, SimConfig};
//! # use reprise_sim::testing_scenario::TokenTransfers as MyScenario;
//! #[test]
//! fn transfers_conserve_money() {
//!     reprise_sim::sim_test!(MyScenario::default(), SimConfig::new(0).with_plan(FaultPlan::swarm()));
//! }
//! ```
//!
//! - `REPRISE_SEEDS=<count>` sets how many seeds a sweep runs (default
//!   [`DEFAULT_SEEDS`]); seeds are `REPRISE_SEED_START..` (default 1).
//! - `REPRISE_SEED=<n>` runs exactly one seed: the reproduction path.
//! - `REPRISE_DETERMINISM=<all|none|n>`: how many seeds [`sweep`] runs twice to check that
//!   the run is a pure function of its seed (default: one in
//!   [`DEFAULT_DETERMINISM_SAMPLE`], the first seed always). A mismatch fails the test with
//!   the first divergent step — a timer or a value taken from the wall clock shows up here.
//! - A seed that **panics** fails the test with the seed and its reproduction command
//!   (the panic's own message is printed above it by the test harness).
//!
//! A failing seed panics with everything needed to act on it: the seed, the broken
//! invariant, the simulated time, the faults so far, the last trace lines (the seed is
//! replayed once with a full trace to get them — deterministic, so it is the same run),
//! the fault mix the seed drew, the commands that reproduce it, and the command that
//! shrinks it to the faults that matter ([`crate::shrink()`]).

use std::fmt::Write as _;

use crate::checker::Scenario;
use crate::plan::FaultPlan;
use crate::run::{RunReport, SimConfig, run};
use crate::trace::{TraceLine, TraceMode};

/// Seeds per sweep when `REPRISE_SEEDS` is not set.
pub const DEFAULT_SEEDS: u64 = 100;

/// By default [`sweep`] runs one seed in this many twice (see the module docs).
pub const DEFAULT_DETERMINISM_SAMPLE: u64 = 50;

/// Reads `REPRISE_DETERMINISM`: `Some(n)` checks one seed in `n` (`all` is 1), `None`
/// checks none.
///
/// # Panics
/// On a value that is none of `all`, `none` or a positive number.
#[must_use]
pub fn determinism_sample_from_env() -> Option<u64> {
    match std::env::var("REPRISE_DETERMINISM") {
        Err(_) => Some(DEFAULT_DETERMINISM_SAMPLE),
        Ok(v) => match v.trim() {
            "all" => Some(1),
            "none" => None,
            n => match n.parse::<u64>() {
                Ok(n) if n > 0 => Some(n),
                _ => panic!("REPRISE_DETERMINISM={v} is not all, none or a positive number"),
            },
        },
    }
}

/// How many trace lines a failure message shows.
pub const TRACE_TAIL_LINES: usize = 40;

/// How many of the last trace lines a failure message shows besides those that touch the
/// violation's entities: the immediate context of the moment the invariant broke.
pub const TRACE_CONTEXT_LINES: usize = 8;

/// Which seeds to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seeds {
    One(u64),
    Range { start: u64, count: u64 },
}

impl Seeds {
    /// Reads `REPRISE_SEED`, `REPRISE_SEEDS` and `REPRISE_SEED_START`.
    ///
    /// # Panics
    /// If one of them is set but is not a number (a typo must not silently run the
    /// default sweep).
    #[must_use]
    pub fn from_env() -> Self {
        let read = |name: &str| {
            std::env::var(name).ok().map(|v| {
                v.trim()
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name}={v} is not a non-negative integer"))
            })
        };
        if let Some(seed) = read("REPRISE_SEED") {
            return Seeds::One(seed);
        }
        Seeds::Range {
            start: read("REPRISE_SEED_START").unwrap_or(1),
            count: read("REPRISE_SEEDS").unwrap_or(DEFAULT_SEEDS),
        }
    }

    /// The seeds, in order.
    pub fn iter(self) -> impl Iterator<Item = u64> {
        let (start, count) = match self {
            Seeds::One(seed) => (seed, 1),
            Seeds::Range { start, count } => (start, count),
        };
        (0..count).map(move |i| start.wrapping_add(i))
    }
}

/// How to name the failing test in the reproduction command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repro {
    /// The crate (`env!("CARGO_PKG_NAME")`).
    pub package: String,
    /// The test's name as `cargo test` filters it.
    pub test: String,
}

impl Repro {
    /// For the test running on this thread (libtest names the thread after the test).
    #[must_use]
    pub fn current_test(package: &str) -> Self {
        let test = std::thread::current()
            .name()
            .filter(|n| *n != "main")
            .unwrap_or("<test name>")
            .to_owned();
        Repro {
            package: package.to_owned(),
            test,
        }
    }
}

/// Runs `seeds` and returns the first failing report, replayed with a full trace.
#[must_use]
pub fn find_failure(
    scenario: &dyn Scenario,
    config: &SimConfig,
    seeds: impl IntoIterator<Item = u64>,
) -> Option<RunReport> {
    for seed in seeds {
        let report = run(scenario, &config.clone().with_seed(seed));
        if !report.passed() {
            return Some(run(
                scenario,
                &config.clone().with_seed(seed).with_trace(TraceMode::Full),
            ));
        }
    }
    None
}

/// Sweeps the seeds chosen by the environment ([`Seeds::from_env`]), re-running a sample
/// of them to check determinism ([`determinism_sample_from_env`]), and panics with
/// [`failure_message`] at the first failure, the first panicking seed (with its
/// reproduction command) or the first nondeterministic one (with the divergent step). Prefer the [`crate::sim_test!`] macro, which
/// fills in the package name.
///
/// # Panics
/// On the first failing seed.
pub fn sweep(scenario: &dyn Scenario, config: &SimConfig, package: &str) {
    let repro = Repro::current_test(package);
    let sample = determinism_sample_from_env();
    for (index, seed) in Seeds::from_env().iter().enumerate() {
        let seeded = config.clone().with_seed(seed);
        let reproduce = format!(
            "REPRISE_SEED={seed} cargo test -p {} {}",
            repro.package, repro.test
        );
        let report = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run(scenario, &seeded)
        })) {
            Ok(report) => report,
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                panic!(
                    "simulation of {} panicked at seed={seed}: {message}\n  reproduce:\n    {reproduce}",
                    scenario.name()
                );
            }
        };
        if !report.passed() {
            let full = run(scenario, &seeded.with_trace(TraceMode::Full));
            panic!("{}", failure_message(&full, &repro));
        }
        let index = index as u64;
        if sample.is_some_and(|n| index % n == 0) {
            if let Err(divergence) = crate::run::check_determinism(scenario, &seeded) {
                panic!(
                    "simulation of {} is not deterministic at seed={seed}: the same seed ran \
                     twice gave different traces (a wall clock, OS randomness or a HashMap's \
                     order reached the run?)\n{divergence}\n  reproduce:\n    {reproduce}",
                    scenario.name()
                );
            }
        }
    }
}

/// The message a failing seed panics with: [`failure_message_with`] and two reproduction
/// commands, the `cargo test` line for `repro` and the `reprise run` line.
#[must_use]
pub fn failure_message(report: &RunReport, repro: &Repro) -> String {
    failure_message_with(
        report,
        &[
            format!(
                "REPRISE_SEED={} cargo test -p {} {}",
                report.seed, repro.package, repro.test
            ),
            format!(
                "reprise run {} --seed {} --plan {} --trace   (scenarios registered with the CLI)",
                report.scenario, report.seed, report.plan.name
            ),
        ],
    )
}

/// The failure message with the caller's own reproduction commands (a CLI prints only
/// its own), closing with the hint to shrink the run ([`shrink_command`] with the plan's
/// name) just before the final `seed=… hash=…` line. A caller whose `--plan` argument is not the plan's name (a JSON file) uses
/// [`failure_message_with_shrink`] instead.
#[must_use]
pub fn failure_message_with(report: &RunReport, reproduce: &[String]) -> String {
    failure_message_with_shrink(
        report,
        reproduce,
        &shrink_command(report, &report.plan.name),
    )
}

/// [`failure_message_with`], with the shrink command given by the caller.
///
/// The message: the seed and hash, the outcome and the broken invariant, the simulated
/// time, the resolved plan's fault mix ([`fault_mix`]), the last 20 faults, the trace
/// tail (full traces only), the reproduction commands, the shrink hint — or, when the
/// plan injected nothing, a note that there is nothing to shrink — and, as the last line
/// of every run's output, `seed=… hash=…`.
#[must_use]
pub fn failure_message_with_shrink(
    report: &RunReport,
    reproduce: &[String],
    shrink: &str,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "simulation of {} failed: {}",
        report.scenario,
        report.summary()
    );
    let _ = writeln!(out, "  outcome:   {}", report.outcome);
    if let Some(violation) = report.violation() {
        let _ = writeln!(out, "  invariant: {}", violation.invariant);
        if !violation.entities.is_empty() {
            let _ = writeln!(out, "  entities:  {}", violation.entities.join(", "));
        }
        let _ = writeln!(out, "  message:   {}", violation.message);
    }
    let _ = writeln!(
        out,
        "  sim time:  {:?} after {} steps",
        report.stats.sim_time, report.stats.steps
    );
    let _ = writeln!(
        out,
        "  fault mix: {} (plan {})",
        fault_mix(&report.plan),
        report.plan.name
    );
    let _ = writeln!(out, "  faults so far ({}):", report.faults.len());
    let skip = report.faults.len().saturating_sub(20);
    if skip > 0 {
        let _ = writeln!(out, "    … {skip} earlier fault(s)");
    }
    for fault in &report.faults[skip..] {
        let _ = writeln!(out, "    {fault}");
    }
    write_trace_excerpt(&mut out, report);
    let _ = writeln!(out, "  reproduce:");
    for command in reproduce {
        let _ = writeln!(out, "    {command}");
    }
    if report.plan.specs.is_empty() {
        let _ = writeln!(
            out,
            "  nothing to shrink: the plan injected no faults, the seed alone fails"
        );
    } else {
        let _ = writeln!(
            out,
            "  shrink to the faults that matter (same seed, same invariant):\n    {shrink}"
        );
    }
    // Every run's output ends with its `seed=… hash=…` line (DESIGN §2), failures included.
    let _ = write!(out, "{}", report.summary());
    out
}

/// `reprise shrink <scenario> --seed <n> --plan <plan>`: the command a failure message
/// closes with. `plan` is what the CLI's `--plan` takes (a plan name or a JSON file).
#[must_use]
pub fn shrink_command(report: &RunReport, plan: &str) -> String {
    format!(
        "reprise shrink {} --seed {} --plan {plan}",
        report.scenario, report.seed
    )
}

/// The fault kinds of a resolved plan, in order, repeated kinds counted: `store, bus,
/// partition ×2, crash` (`none` for a calm plan). A run reports its resolved plan, so for
/// a swarm run this is the mix the seed drew.
#[must_use]
pub fn fault_mix(plan: &FaultPlan) -> String {
    let mut kinds: Vec<(&'static str, usize)> = Vec::new();
    for spec in &plan.specs {
        let label = spec.fault.label();
        match kinds.iter_mut().find(|(kind, _)| *kind == label) {
            Some((_, count)) => *count += 1,
            None => kinds.push((label, 1)),
        }
    }
    let mut mix: Vec<String> = kinds
        .into_iter()
        .map(|(kind, count)| {
            if count == 1 {
                kind.to_owned()
            } else {
                format!("{kind} ×{count}")
            }
        })
        .collect();
    if plan.swarm.is_some() {
        mix.push("a swarm draw per seed".into());
    }
    if mix.is_empty() {
        return "none".into();
    }
    mix.join(", ")
}

/// Sweeps seeds in a `#[test]`; see the [module docs](crate::harness).
#[macro_export]
macro_rules! sim_test {
    ($scenario:expr, $config:expr) => {
        $crate::harness::sweep(&$scenario, &$config, env!("CARGO_PKG_NAME"))
    };
}

/// The trace lines a person needs: the last [`TRACE_TAIL_LINES`] lines that mention one of
/// the violated invariant's entities (as a whole word: `order-o01` does not match
/// `order-o012`), then the last [`TRACE_CONTEXT_LINES`] lines of the run. Without entities
/// it is the plain tail.
fn write_trace_excerpt(out: &mut String, report: &RunReport) {
    let Some(trace) = report.trace.as_deref() else {
        return;
    };
    let entities = report
        .violation()
        .map(|v| v.entities.as_slice())
        .unwrap_or_default();
    if entities.is_empty() {
        let tail = report.trace_tail(TRACE_TAIL_LINES);
        let _ = writeln!(out, "  last {} trace lines:", tail.len());
        for line in tail {
            let _ = writeln!(out, "    {line}");
        }
        return;
    }
    let touching = lines_touching(trace, entities);
    let skip = touching.len().saturating_sub(TRACE_TAIL_LINES);
    let _ = writeln!(
        out,
        "  last {} of {} trace lines touching {}:",
        touching.len() - skip,
        touching.len(),
        entities.join(", ")
    );
    for line in &touching[skip..] {
        let _ = writeln!(out, "    {line}");
    }
    let context = report.trace_tail(TRACE_CONTEXT_LINES);
    let _ = writeln!(out, "  last {} trace lines of the run:", context.len());
    for line in context {
        let _ = writeln!(out, "    {line}");
    }
}

/// Trace lines mentioning any of `entities` as a whole word.
#[must_use]
pub fn lines_touching<'a>(trace: &'a [TraceLine], entities: &[String]) -> Vec<&'a TraceLine> {
    trace
        .iter()
        .filter(|line| entities.iter().any(|e| mentions(&line.text, e)))
        .collect()
}

/// Whether `text` mentions `entity` as a whole word (`order-o01` must not match
/// `order-o012`).
#[must_use]
pub fn mentions(text: &str, entity: &str) -> bool {
    !entity.is_empty()
        && text.match_indices(entity).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let after = text[at + entity.len()..].chars().next();
            let word = |c: Option<char>| {
                c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            };
            !word(before) && !word(after)
        })
}

#[cfg(test)]
mod excerpt_tests {
    use super::mentions;

    #[test]
    fn mentions_whole_entities_only() {
        assert!(mentions("append order-o01 v2", "order-o01"));
        assert!(mentions("order-o01: charge", "order-o01"));
        assert!(mentions("[order-o01]", "order-o01"));
        assert!(!mentions("append order-o012 v2", "order-o01"));
        assert!(!mentions("append xorder-o01", "order-o01"));
        assert!(!mentions("anything", ""));
    }
}
