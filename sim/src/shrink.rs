//! Shrinking: from a failing run to the faults that matter (DESIGN §6).
//!
//! A swarm seed that fails usually fails under a busy plan — store faults, duplicates,
//! partitions, crashes and clock skew all at once — and its fault list runs to dozens of
//! entries, most of them irrelevant. [`shrink`] searches for a *smaller* plan under which
//! **the same seed** still fails **the same way** ([`FailureSignature`]: the same violated
//! invariant, whatever the entities; or the same exhausted budget), so that the person
//! reading the report starts from "duplicates on `ledger-2` between 300 and 600 ms" rather
//! than from the whole storm.
//!
//! ## How
//!
//! 1. Run the original configuration, then replay the seed under its *resolved* plan
//!    ([`RunReport::plan`]: the swarm draw, with no swarm options left). Resolving such a
//!    plan is the identity on its specs and the draw uses a stream of its own, so the
//!    replay must give the very same hash; if it does not, the scenario is
//!    nondeterministic and shrinking would chase noise ([`ShrinkError::NotReproducible`]).
//! 2. Drop whole specs: first all of them (some bugs need no fault at all), then
//!    delta debugging (ddmin, complements only): remove halves, then quarters, … down to
//!    single specs, until no single spec can go.
//! 3. Reduce each remaining spec, keeping the first reduction under which the run still
//!    fails and starting over from it: switch off individual fault kinds of per-operation
//!    faults (zero one field of [`StoreFaults`](crate::StoreFaults) /
//!    [`BusFaults`](crate::BusFaults) / [`DependencyFaults`](crate::DependencyFaults) /
//!    [`LeaseFaults`](crate::LeaseFaults)),
//!    narrow a partition's `Peer::Any` to one peer, halve its probabilities and durations
//!    (exact in binary floating point), target a single node (one the faults actually
//!    hit), clip its window to the moment the run ended (a no-op for the run, but the plan
//!    then says when the faults acted), and halve the window.
//! 4. Repeat 2–3 while either makes progress and the run budget lasts.
//!
//! Every candidate is a full deterministic re-run; candidates already refused are cached
//! and never run twice. [`ShrinkOptions::max_runs`] bounds the total (the original run and
//! its replay included); when it runs out the best plan found so far is returned, with
//! [`ShrinkReport::budget_exhausted`] set. The shrinker itself draws no randomness: the
//! same (scenario, config, options) always shrinks to the same plan in the same number of
//! runs.
//!
//! ## What to expect: the search is chaotic, not monotone
//!
//! ddmin assumes that removing a fault leaves the rest of the run alone. Here it does so
//! only partly, and a user reading a shrunk plan should know where it stops:
//!
//! - **One stream per fault kind (and node).** Every fault kind draws from ChaCha8 streams
//!   of its own (store timeouts, bus duplicates, crashes, … — see `Draw` in the
//!   executor), as do the ordinary latencies and a dependency's inherent error rate;
//!   per-operation kinds and latencies have one stream per node; and a probability draws
//!   only when it is non-zero. Removing a spec, zeroing one of its fault kinds or
//!   narrowing it to one node therefore leaves every *other* kind's (and node's) sequence
//!   of decisions as it was: a kind that never fired can be removed without changing the
//!   run at all, and the nemesis keeps crashing the same nodes at the same ticks.
//! - **Faults change the schedule.** A fault that fired changes which tasks are ready and
//!   so what the scheduler's stream picks afterwards; per-operation draws are made in the
//!   order operations run, so from that point on the same draw lands on a different
//!   operation.
//!
//! So a candidate is the same execution up to the first moment a removed fault had fired,
//! and a *different execution* of the same seed and workload after it, judged only by
//! whether it fails the same way. Consequences: the shrunk plan is 1-minimal only with
//! respect to the candidates tried (removing one more spec made *that* execution pass, not
//! every execution); the shrunk run's faults are not always a subset of the original's;
//! and the shrunk plan is tied to its seed — under another seed it may pass. In practice
//! this works well: a bug that needs redelivery keeps failing as long as some redelivery
//! fault stays on, and the search lands on the one family that matters.
//!
//! The fault count a shrink reports ([`ShrinkReport::summary`]) counts injected faults
//! only — the plan's and a scenario's scripted ones. A dependency's inherent error rate
//! is not a fault ([`RunReport::inherent_errors`]): it cannot be shrunk away, so it is not
//! counted.
//!
//! ## Why the seed is not shrunk
//!
//! A seed is not a size. Seed 3 is not "simpler" than seed 3 000 000: each seed keys
//! unrelated ChaCha8 streams, so a "smaller" seed is just another execution, and looking
//! for a failing one is what a sweep does. Keeping the seed is what keeps the result
//! comparable: the workload (drawn from its own stream) and the scheduler's stream are the
//! original ones; only the faults change. What can be made small is everything the seed
//! is combined with: the plan.
//!
//! ## Replaying a shrunk plan
//!
//! [`ShrinkReport::plan`] has no swarm options, so resolving it is the identity: running
//! it (`SimConfig::with_plan`) with the same seed replays [`ShrinkReport::shrunk`] hash for
//! hash, and so does the plan after a trip through [`FaultPlan::to_json`] /
//! [`FaultPlan::from_json`] (the CLI's `reprise shrink` writes it to a file that
//! `--plan file.json` replays; the parser is built with `float_roundtrip`, so drawn
//! probabilities come back bit for bit).

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::checker::Scenario;
use crate::plan::{Fault, FaultPlan, FaultSpec, Nodes, Peer, Window};
use crate::run::{Budget, Outcome, RunReport, SimConfig, SimError, try_run};
use crate::trace::TraceMode;

/// Runs a shrink may use when [`ShrinkOptions::max_runs`] is not set.
pub const DEFAULT_MAX_RUNS: u32 = 200;

/// Probabilities are not halved below this: a fault that rare is as good as off, and
/// switching it off is a separate (tried) candidate.
const MIN_PROBABILITY: f64 = 1.0 / 1024.0;

/// How hard to shrink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShrinkOptions {
    /// Upper bound on simulation runs, the original run and its replay included (so at
    /// least 2).
    pub max_runs: u32,
    /// Whether to reduce the specs that remain (fault kinds, targets, intensities,
    /// windows) after dropping whole specs.
    pub reduce_specs: bool,
}

impl Default for ShrinkOptions {
    fn default() -> Self {
        ShrinkOptions {
            max_runs: DEFAULT_MAX_RUNS,
            reduce_specs: true,
        }
    }
}

impl ShrinkOptions {
    /// The defaults with another run budget.
    #[must_use]
    pub fn with_max_runs(mut self, max_runs: u32) -> Self {
        self.max_runs = max_runs;
        self
    }
}

/// What "fails the same way" means while shrinking.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum FailureSignature {
    /// The same [`crate::Violation::invariant`] (safety, liveness or a hang; the entities
    /// may differ).
    Invariant(String),
    /// The step budget ran out again.
    StepBudget,
    /// The simulated-time budget ran out again.
    SimTimeBudget,
}

impl FailureSignature {
    /// The signature of a failed outcome; `None` for a pass.
    #[must_use]
    pub fn of(outcome: &Outcome) -> Option<Self> {
        match outcome {
            Outcome::Passed => None,
            Outcome::Violated { violation, .. } | Outcome::Hung { violation, .. } => {
                Some(FailureSignature::Invariant(violation.invariant.clone()))
            }
            Outcome::BudgetExceeded {
                budget: Budget::Steps(_),
                ..
            } => Some(FailureSignature::StepBudget),
            Outcome::BudgetExceeded {
                budget: Budget::SimTime(_),
                ..
            } => Some(FailureSignature::SimTimeBudget),
        }
    }
}

impl fmt::Display for FailureSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureSignature::Invariant(invariant) => write!(f, "invariant {invariant}"),
            FailureSignature::StepBudget => f.write_str("step budget exceeded"),
            FailureSignature::SimTimeBudget => f.write_str("simulated-time budget exceeded"),
        }
    }
}

/// Why a run could not be shrunk.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShrinkError {
    /// The configuration (or a plan it names) is invalid.
    #[error(transparent)]
    Sim(#[from] SimError),
    /// There is no failure to shrink.
    #[error("seed {seed} passes under plan {plan}: there is no failure to shrink")]
    Passed { seed: u64, plan: String },
    /// Replaying the seed under its own resolved plan gave another execution.
    #[error(
        "seed {seed} does not replay under its resolved plan (hash {original:016x}, replay {replay:016x}): the scenario is nondeterministic, see check_determinism"
    )]
    NotReproducible {
        seed: u64,
        original: u64,
        replay: u64,
    },
    /// [`ShrinkOptions::max_runs`] leaves no room for the original run and its replay
    /// (and, with a full trace, the final traced replay).
    #[error(
        "max_runs = {0}: shrinking needs at least 2 runs (the original and its replay; 3 with a full trace)"
    )]
    RunBudget(u32),
}

/// What [`shrink`] found.
#[derive(Clone, Debug, Serialize)]
pub struct ShrinkReport {
    /// The run being shrunk, as configured.
    pub original: RunReport,
    /// The same seed under [`ShrinkReport::plan`]: fails with the same signature.
    pub shrunk: RunReport,
    /// The shrunk plan, named `<original plan>-shrunk-<seed>`, with no swarm options.
    pub plan: FaultPlan,
    /// What both runs fail with.
    pub signature: FailureSignature,
    /// Simulation runs used, the original run and its replay included.
    pub runs: u32,
    /// Whether the search stopped because [`ShrinkOptions::max_runs`] ran out.
    pub budget_exhausted: bool,
    /// One line per accepted reduction, in order: what it removed.
    pub steps: Vec<String>,
}

impl ShrinkReport {
    /// The configuration that replays [`ShrinkReport::shrunk`]: `config` (the one given to
    /// [`shrink`]) with the shrunk plan.
    #[must_use]
    pub fn replay_config(&self, config: &SimConfig) -> SimConfig {
        config.clone().with_plan(self.plan.clone())
    }

    /// One line: from what to what, in how many runs.
    #[must_use]
    pub fn summary(&self) -> String {
        format!(
            "seed={} {}: plan {} ({} spec(s), {} fault(s) fired) shrunk to {} ({} spec(s), {} fault(s) fired) in {} run(s){}",
            self.original.seed,
            self.signature,
            self.original.plan.name,
            self.original.plan.specs.len(),
            self.original.faults.len(),
            self.plan.name,
            self.plan.specs.len(),
            self.shrunk.faults.len(),
            self.runs,
            if self.budget_exhausted {
                " (run budget exhausted)"
            } else {
                ""
            }
        )
    }
}

impl fmt::Display for ShrinkReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.summary())?;
        for step in &self.steps {
            writeln!(f, "  - {step}")?;
        }
        write!(f, "shrunk run: {}", self.shrunk.summary())
    }
}

/// Shrinks the failing run of `config` to a smaller fault plan under which the same seed
/// fails the same way. See the [module docs](mod@crate::shrink).
///
/// Search runs keep only the trace hash; with [`TraceMode::Full`] in `config`, the
/// original run and one final replay of the shrunk plan (counted in
/// [`ShrinkReport::runs`]) carry readable traces.
///
/// # Errors
/// [`ShrinkError::Passed`] if the run does not fail, [`ShrinkError::NotReproducible`] if
/// it does not replay, [`ShrinkError::Sim`] for an invalid configuration,
/// [`ShrinkError::RunBudget`] for `max_runs < 2` (`< 3` with a full trace).
pub fn shrink(
    scenario: &dyn Scenario,
    config: &SimConfig,
    options: &ShrinkOptions,
) -> Result<ShrinkReport, ShrinkError> {
    let full = config.trace == TraceMode::Full;
    if options.max_runs < 2 + u32::from(full) {
        return Err(ShrinkError::RunBudget(options.max_runs));
    }
    let original = try_run(
        scenario,
        &config.clone().with_trace(if full {
            TraceMode::Full
        } else {
            TraceMode::Hash
        }),
    )?;
    let Some(signature) = FailureSignature::of(&original.outcome) else {
        return Err(ShrinkError::Passed {
            seed: config.seed,
            plan: config.plan.name.clone(),
        });
    };
    assert!(
        original.plan.swarm.is_none(),
        "a run reports its resolved plan"
    );
    let name = shrunk_name(&original.plan.name, config.seed);
    let resolved = FaultPlan {
        name: name.clone(),
        specs: original.plan.specs.clone(),
        swarm: None,
    };
    let search = config.clone().with_trace(TraceMode::Hash);
    let replay = try_run(scenario, &search.clone().with_plan(resolved.clone()))?;
    if replay.hash != original.hash {
        return Err(ShrinkError::NotReproducible {
            seed: config.seed,
            original: original.hash,
            replay: replay.hash,
        });
    }
    assert_eq!(
        replay.outcome, original.outcome,
        "equal hashes, equal outcomes"
    );
    let mut shrinker = Shrinker {
        scenario,
        config: search,
        signature: signature.clone(),
        // Reserve the final traced replay.
        max_runs: options.max_runs - u32::from(full),
        runs: 2,
        refused: BTreeSet::new(),
        exhausted: false,
        best: resolved,
        best_report: replay,
        steps: Vec::new(),
    };
    shrinker.search(options.reduce_specs)?;
    let Shrinker {
        runs,
        exhausted,
        best,
        best_report,
        steps,
        ..
    } = shrinker;
    let (shrunk, runs) = if full {
        let traced = try_run(scenario, &config.clone().with_plan(best.clone()))?;
        assert_eq!(
            traced.hash, best_report.hash,
            "the shrunk plan replays: the trace mode does not change the run"
        );
        (traced, runs + 1)
    } else {
        (best_report, runs)
    };
    assert_eq!(
        FailureSignature::of(&shrunk.outcome).as_ref(),
        Some(&signature)
    );
    assert!(best.specs.len() <= original.plan.specs.len());
    assert!(runs <= options.max_runs, "the run budget holds");
    Ok(ShrinkReport {
        original,
        shrunk,
        plan: best,
        signature,
        runs,
        budget_exhausted: exhausted,
        steps,
    })
}

/// `<plan>-shrunk-<seed>`, without stacking suffixes when a shrunk plan is shrunk again.
fn shrunk_name(plan: &str, seed: u64) -> String {
    let suffix = format!("-shrunk-{seed}");
    let base = plan.strip_suffix(&suffix).unwrap_or(plan);
    format!("{base}{suffix}")
}

struct Shrinker<'a> {
    scenario: &'a dyn Scenario,
    /// `config` with [`TraceMode::Hash`]; each candidate replaces the plan.
    config: SimConfig,
    signature: FailureSignature,
    max_runs: u32,
    runs: u32,
    /// Candidate spec lists (as JSON) that did not fail the same way.
    refused: BTreeSet<String>,
    exhausted: bool,
    best: FaultPlan,
    best_report: RunReport,
    steps: Vec<String>,
}

impl Shrinker<'_> {
    fn search(&mut self, reduce_specs: bool) -> Result<(), ShrinkError> {
        if !self.best.specs.is_empty() {
            let count = self.best.specs.len();
            self.attempt(Vec::new(), || {
                format!("dropped all {count} spec(s): the failure needs no fault at all")
            })?;
        }
        loop {
            let before = self.steps.len();
            self.drop_specs()?;
            if reduce_specs {
                self.reduce_specs()?;
            }
            if self.steps.len() == before || self.exhausted {
                return Ok(());
            }
        }
    }

    /// Runs `specs`; adopts them if the seed still fails the same way.
    fn attempt(
        &mut self,
        specs: Vec<FaultSpec>,
        step: impl FnOnce() -> String,
    ) -> Result<bool, ShrinkError> {
        let key = serde_json::to_string(&specs).expect("specs serialize");
        if self.refused.contains(&key) {
            return Ok(false);
        }
        if self.runs >= self.max_runs {
            self.exhausted = true;
            return Ok(false);
        }
        let plan = FaultPlan {
            name: self.best.name.clone(),
            specs,
            swarm: None,
        };
        if let Err(e) = plan.validate() {
            panic!(
                "shrink built an invalid candidate ({e}): {}",
                plan.to_json()
            );
        }
        assert_ne!(plan, self.best, "a candidate differs from the current plan");
        self.runs += 1;
        let report = try_run(self.scenario, &self.config.clone().with_plan(plan.clone()))?;
        if FailureSignature::of(&report.outcome).as_ref() == Some(&self.signature) {
            self.steps.push(step());
            self.best = plan;
            self.best_report = report;
            Ok(true)
        } else {
            self.refused.insert(key);
            Ok(false)
        }
    }

    /// ddmin over whole specs, complements only: remove one of `n` chunks at a time,
    /// refining `n` until chunks are single specs.
    fn drop_specs(&mut self) -> Result<(), ShrinkError> {
        let mut n = 2;
        while self.best.specs.len() >= 2 && !self.exhausted {
            let len = self.best.specs.len();
            n = n.min(len);
            let mut reduced = false;
            for chunk in 0..n {
                let (start, end) = (chunk * len / n, (chunk + 1) * len / n);
                let specs = &self.best.specs;
                let removed: Vec<&str> =
                    specs[start..end].iter().map(|s| s.fault.label()).collect();
                let candidate: Vec<FaultSpec> = specs[..start]
                    .iter()
                    .chain(&specs[end..])
                    .cloned()
                    .collect();
                let step = || {
                    format!(
                        "dropped {} spec(s): {} ({} left)",
                        removed.len(),
                        removed.join(", "),
                        len - removed.len()
                    )
                };
                if self.attempt(candidate, step)? {
                    reduced = true;
                    break;
                }
            }
            if reduced {
                n = (n - 1).max(2);
            } else if n >= len {
                return Ok(());
            } else {
                n = (2 * n).min(len);
            }
        }
        Ok(())
    }

    /// Reduces each spec in turn until none of its reductions keeps the failure.
    fn reduce_specs(&mut self) -> Result<(), ShrinkError> {
        let mut i = 0;
        while i < self.best.specs.len() && !self.exhausted {
            let mut progressed = true;
            while progressed && !self.exhausted {
                progressed = false;
                let context = self.context();
                for (spec, step) in reductions(&self.best.specs[i], &context) {
                    let mut specs = self.best.specs.clone();
                    specs[i] = spec;
                    if self.attempt(specs, || step)? {
                        progressed = true;
                        break;
                    }
                }
            }
            i += 1;
        }
        Ok(())
    }

    fn context(&self) -> Context {
        let mut nodes: Vec<String> = Vec::new();
        for record in &self.best_report.faults {
            if let Some(node) = record.node.as_deref() {
                if !nodes.iter().any(|n| n == node) {
                    nodes.push(node.to_owned());
                }
            }
        }
        let at = match &self.best_report.outcome {
            Outcome::Violated { at, .. }
            | Outcome::Hung { at, .. }
            | Outcome::BudgetExceeded { at, .. } => *at,
            Outcome::Passed => unreachable!("the current plan fails"),
        };
        Context {
            end_ms: millis(at)
                .saturating_add(1)
                .min(millis(self.config.fault_window)),
            nemesis_tick_ms: millis(self.config.nemesis_tick).max(1),
            nodes_hit: nodes,
        }
    }
}

/// What the reductions of one spec may use from the current failing run.
struct Context {
    /// No fault acts at or after this (the run ended, or the fault window closed).
    end_ms: u64,
    nemesis_tick_ms: u64,
    /// Nodes faults hit in the current run, in order of first hit.
    nodes_hit: Vec<String>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Candidate reductions of `spec`, most informative first, each with its step line.
fn reductions(spec: &FaultSpec, context: &Context) -> Vec<(FaultSpec, String)> {
    let label = spec.fault.label();
    let mut out = Vec::new();
    let mut push = |fault: Fault, what: String| {
        out.push((
            FaultSpec {
                fault,
                ..spec.clone()
            },
            format!("{label}: {what}"),
        ));
    };
    // 1. Fault kinds off, one at a time.
    for (fault, field) in switch_off(&spec.fault) {
        push(fault, format!("switched off {field}"));
    }
    // 2. Narrower targets.
    if let Fault::Partition {
        peer: Peer::Any,
        direction,
        per_tick_probability,
        min_duration_ms,
        max_duration_ms,
    } = &spec.fault
    {
        for peer in [Peer::EventStore, Peer::EventBus, Peer::AnyDependency] {
            push(
                Fault::Partition {
                    peer: peer.clone(),
                    direction: *direction,
                    per_tick_probability: *per_tick_probability,
                    min_duration_ms: *min_duration_ms,
                    max_duration_ms: *max_duration_ms,
                },
                format!("peer Any -> {peer:?}"),
            );
        }
    }
    // 3. Lower intensities.
    if let Some((fault, what)) = halve(&spec.fault) {
        push(fault, what);
    }
    let mut with = |nodes: Nodes, window: Window, what: String| {
        out.push((
            FaultSpec {
                fault: spec.fault.clone(),
                nodes,
                window,
            },
            format!("{label}: {what}"),
        ));
    };
    let names: Vec<&String> = match &spec.nodes {
        // An outage is not a node's fault: it takes the dependency down for everyone.
        _ if matches!(spec.fault, Fault::DependencyOutage { .. }) => Vec::new(),
        Nodes::All => context.nodes_hit.iter().collect(),
        Nodes::Named(names) if names.len() > 1 => names.iter().collect(),
        Nodes::Named(_) => Vec::new(),
    };
    for name in names {
        with(
            Nodes::Named(vec![name.clone()]),
            spec.window,
            format!("only on node {name}"),
        );
    }
    // 4. Narrower windows: first to what the run can see, then halves.
    let start = spec.window.start_ms;
    let end = spec
        .window
        .end_ms
        .map_or(context.end_ms, |e| e.min(context.end_ms));
    if start < end && spec.window.end_ms != Some(end) {
        with(
            spec.nodes.clone(),
            Window {
                start_ms: start,
                end_ms: Some(end),
            },
            format!("window ends at {end} ms (nothing acts later)"),
        );
    }
    let floor = if spec.fault.is_nemesis() {
        context.nemesis_tick_ms
    } else {
        1
    };
    if start < end && end - start >= 2 * floor {
        let mid = start + (end - start) / 2;
        for (s, e) in [(start, mid), (mid, end)] {
            with(
                spec.nodes.clone(),
                Window {
                    start_ms: s,
                    end_ms: Some(e),
                },
                format!("window [{start}, {end}) ms -> [{s}, {e}) ms"),
            );
        }
    }
    out
}

/// One switchable fault kind of a per-operation fault: its field name, whether it is on,
/// and how to switch it off.
type Switch<T> = (&'static str, bool, fn(&mut T));

/// `value` with each kind that is on switched off, one at a time.
fn switched_off<T: Copy>(
    value: T,
    switches: &[Switch<T>],
    wrap: impl Fn(T) -> Fault,
) -> Vec<(Fault, &'static str)> {
    switches
        .iter()
        .filter(|(_, on, _)| *on)
        .map(|(name, _, off)| {
            let mut reduced = value;
            off(&mut reduced);
            (wrap(reduced), *name)
        })
        .collect()
}

/// The fault with one of its per-operation fault kinds switched off, for each kind on.
fn switch_off(fault: &Fault) -> Vec<(Fault, &'static str)> {
    match fault {
        Fault::Store(s) => switched_off(
            *s,
            &[
                ("extra_latency_max_ms", s.extra_latency_max_ms > 0, |s| {
                    s.extra_latency_max_ms = 0;
                }),
                (
                    "transient_probability",
                    s.transient_probability > 0.0,
                    |s| {
                        s.transient_probability = 0.0;
                    },
                ),
                ("timeout_probability", s.timeout_probability > 0.0, |s| {
                    s.timeout_probability = 0.0;
                }),
                (
                    "commit_unknown_probability",
                    s.commit_unknown_probability > 0.0,
                    |s| s.commit_unknown_probability = 0.0,
                ),
            ],
            Fault::Store,
        ),
        Fault::Bus(b) => switched_off(
            *b,
            &[
                ("delivery_delay_max_ms", b.delivery_delay_max_ms > 0, |b| {
                    b.delivery_delay_max_ms = 0;
                }),
                (
                    "duplicate_probability",
                    b.duplicate_probability > 0.0,
                    |b| {
                        b.duplicate_probability = 0.0;
                    },
                ),
                ("reorder_probability", b.reorder_probability > 0.0, |b| {
                    b.reorder_probability = 0.0;
                }),
                (
                    "publish_error_probability",
                    b.publish_error_probability > 0.0,
                    |b| b.publish_error_probability = 0.0,
                ),
                (
                    "publish_ack_lost_probability",
                    b.publish_ack_lost_probability > 0.0,
                    |b| b.publish_ack_lost_probability = 0.0,
                ),
                (
                    "commit_lost_probability",
                    b.commit_lost_probability > 0.0,
                    |b| b.commit_lost_probability = 0.0,
                ),
            ],
            Fault::Bus,
        ),
        Fault::Dependency { dependency, faults } => switched_off(
            *faults,
            &[
                ("slowdown_factor", faults.slowdown_factor > 1.0, |f| {
                    f.slowdown_factor = 1.0;
                }),
                ("error_probability", faults.error_probability > 0.0, |f| {
                    f.error_probability = 0.0;
                }),
                (
                    "response_lost_probability",
                    faults.response_lost_probability > 0.0,
                    |f| f.response_lost_probability = 0.0,
                ),
            ],
            |faults| Fault::Dependency {
                dependency: dependency.clone(),
                faults,
            },
        ),
        // Without its loss a lease spec does nothing (dropping the spec tries that): the
        // kind worth switching off is the zombie window — does the failure need two
        // leaders at once, or only a lost lease?
        Fault::Lease(l) => switched_off(
            *l,
            &[("zombie_max_ms", l.zombie_max_ms > 0, |l| {
                l.zombie_max_ms = 0;
            })],
            Fault::Lease,
        ),
        // Nemesis faults and BUGGIFY have one kind each: dropping the spec switches it off.
        _ => Vec::new(),
    }
}

/// Halves a probability unless it is already negligible (or off).
fn half_p(p: f64) -> Option<f64> {
    (p >= 2.0 * MIN_PROBABILITY).then_some(p / 2.0)
}

/// Halves the upper end of a `[min, max]` range toward `min`.
fn half_range(min: u64, max: u64) -> Option<u64> {
    let half = min.max(max / 2);
    (half < max).then_some(half)
}

/// The fault with every probability and duration halved; `None` when nothing can shrink.
/// Halving is exact in binary floating point, so halved plans survive JSON unchanged.
fn halve(fault: &Fault) -> Option<(Fault, String)> {
    let mut changed = Vec::new();
    let mut p = |name: &'static str, value: f64| match half_p(value) {
        Some(half) => {
            changed.push(name);
            half
        }
        None => value,
    };
    let halved = match fault {
        Fault::Store(s) => {
            let mut h = *s;
            h.transient_probability = p("transient_probability", s.transient_probability);
            h.timeout_probability = p("timeout_probability", s.timeout_probability);
            h.commit_unknown_probability =
                p("commit_unknown_probability", s.commit_unknown_probability);
            if s.extra_latency_max_ms > 1 {
                h.extra_latency_max_ms = s.extra_latency_max_ms / 2;
                changed.push("extra_latency_max_ms");
            }
            Fault::Store(h)
        }
        Fault::Bus(b) => {
            let mut h = *b;
            h.duplicate_probability = p("duplicate_probability", b.duplicate_probability);
            h.reorder_probability = p("reorder_probability", b.reorder_probability);
            h.publish_error_probability =
                p("publish_error_probability", b.publish_error_probability);
            h.publish_ack_lost_probability = p(
                "publish_ack_lost_probability",
                b.publish_ack_lost_probability,
            );
            h.commit_lost_probability = p("commit_lost_probability", b.commit_lost_probability);
            if b.delivery_delay_max_ms > 1 {
                h.delivery_delay_max_ms = b.delivery_delay_max_ms / 2;
                changed.push("delivery_delay_max_ms");
            }
            Fault::Bus(h)
        }
        Fault::Dependency { dependency, faults } => {
            let mut h = *faults;
            h.error_probability = p("error_probability", faults.error_probability);
            h.response_lost_probability = p(
                "response_lost_probability",
                faults.response_lost_probability,
            );
            if faults.slowdown_factor >= 1.0 + 2.0 * MIN_PROBABILITY {
                h.slowdown_factor = 1.0 + (faults.slowdown_factor - 1.0) / 2.0;
                changed.push("slowdown_factor");
            }
            Fault::Dependency {
                dependency: dependency.clone(),
                faults: h,
            }
        }
        Fault::Lease(l) => {
            let mut h = *l;
            h.loss_probability = p("loss_probability", l.loss_probability);
            if l.zombie_max_ms > 1 {
                h.zombie_max_ms = l.zombie_max_ms / 2;
                changed.push("zombie_max_ms");
            }
            Fault::Lease(h)
        }
        Fault::Buggify {
            enable_probability,
            fire_probability,
        } => Fault::Buggify {
            enable_probability: p("enable_probability", *enable_probability),
            fire_probability: p("fire_probability", *fire_probability),
        },
        Fault::Partition {
            peer,
            direction,
            per_tick_probability,
            min_duration_ms,
            max_duration_ms,
        } => Fault::Partition {
            peer: peer.clone(),
            direction: *direction,
            per_tick_probability: p("per_tick_probability", *per_tick_probability),
            min_duration_ms: *min_duration_ms,
            max_duration_ms: half_range(*min_duration_ms, *max_duration_ms).map_or(
                *max_duration_ms,
                |h| {
                    changed.push("max_duration_ms");
                    h
                },
            ),
        },
        Fault::Crash {
            per_tick_probability,
            min_downtime_ms,
            max_downtime_ms,
        } => Fault::Crash {
            per_tick_probability: p("per_tick_probability", *per_tick_probability),
            min_downtime_ms: *min_downtime_ms,
            max_downtime_ms: half_range(*min_downtime_ms, *max_downtime_ms).map_or(
                *max_downtime_ms,
                |h| {
                    changed.push("max_downtime_ms");
                    h
                },
            ),
        },
        Fault::Pause {
            per_tick_probability,
            min_duration_ms,
            max_duration_ms,
        } => Fault::Pause {
            per_tick_probability: p("per_tick_probability", *per_tick_probability),
            min_duration_ms: *min_duration_ms,
            max_duration_ms: half_range(*min_duration_ms, *max_duration_ms).map_or(
                *max_duration_ms,
                |h| {
                    changed.push("max_duration_ms");
                    h
                },
            ),
        },
        Fault::ClockSkew {
            per_tick_probability,
            max_skew_ms,
        } => Fault::ClockSkew {
            per_tick_probability: p("per_tick_probability", *per_tick_probability),
            max_skew_ms: half_range(1, *max_skew_ms).map_or(*max_skew_ms, |h| {
                changed.push("max_skew_ms");
                h
            }),
        },
        Fault::Rebalance {
            per_tick_probability,
        } => Fault::Rebalance {
            per_tick_probability: p("per_tick_probability", *per_tick_probability),
        },
        Fault::DependencyOutage {
            dependency,
            per_tick_probability,
            min_duration_ms,
            max_duration_ms,
        } => Fault::DependencyOutage {
            dependency: dependency.clone(),
            per_tick_probability: p("per_tick_probability", *per_tick_probability),
            min_duration_ms: *min_duration_ms,
            max_duration_ms: half_range(*min_duration_ms, *max_duration_ms).map_or(
                *max_duration_ms,
                |h| {
                    changed.push("max_duration_ms");
                    h
                },
            ),
        },
    };
    if changed.is_empty() {
        return None;
    }
    Some((halved, format!("halved {}", changed.join(", "))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{BusFaults, StoreFaults};

    fn context() -> Context {
        Context {
            end_ms: 1_000,
            nemesis_tick_ms: 100,
            nodes_hit: vec!["a".into(), "b".into()],
        }
    }

    #[test]
    fn names_do_not_stack() {
        assert_eq!(shrunk_name("swarm", 7), "swarm-shrunk-7");
        assert_eq!(shrunk_name("swarm-shrunk-7", 7), "swarm-shrunk-7");
        assert_eq!(shrunk_name("swarm-shrunk-7", 8), "swarm-shrunk-7-shrunk-8");
    }

    #[test]
    fn every_reduction_is_valid_and_differs() {
        let specs = [
            FaultSpec::new(Fault::Store(StoreFaults {
                extra_latency_max_ms: 40,
                transient_probability: 0.05,
                timeout_probability: 0.0,
                commit_unknown_probability: 0.03,
            })),
            FaultSpec::new(Fault::Bus(BusFaults {
                delivery_delay_max_ms: 100,
                duplicate_probability: 0.1,
                reorder_probability: 0.1,
                publish_error_probability: 0.05,
                publish_ack_lost_probability: 0.03,
                commit_lost_probability: 0.1,
            }))
            .on_nodes(["a", "b"]),
            FaultSpec::new(Fault::Partition {
                peer: Peer::Any,
                direction: crate::Direction::Inbound,
                per_tick_probability: 0.1,
                min_duration_ms: 50,
                max_duration_ms: 2_000,
            })
            .during(100, 5_000),
            FaultSpec::new(Fault::Crash {
                per_tick_probability: 0.05,
                min_downtime_ms: 10,
                max_downtime_ms: 11,
            }),
            FaultSpec::new(Fault::ClockSkew {
                per_tick_probability: 0.05,
                max_skew_ms: 1,
            }),
            FaultSpec::new(Fault::Lease(crate::LeaseFaults {
                loss_probability: 0.05,
                zombie_max_ms: 300,
            })),
        ];
        for spec in &specs {
            let reductions = reductions(spec, &context());
            assert!(!reductions.is_empty(), "{spec:?} has reductions");
            for (reduced, step) in reductions {
                assert_ne!(&reduced, spec, "{step}");
                reduced.validate().unwrap_or_else(|e| panic!("{step}: {e}"));
            }
        }
        // The store spec: two probabilities and the latency can go (timeout is off
        // already), plus one halving, two single nodes and the window clip and halves.
        let store = reductions(&specs[0], &context());
        let steps: Vec<&str> = store.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(
            steps,
            [
                "store: switched off extra_latency_max_ms",
                "store: switched off transient_probability",
                "store: switched off commit_unknown_probability",
                "store: halved transient_probability, commit_unknown_probability, extra_latency_max_ms",
                "store: only on node a",
                "store: only on node b",
                "store: window ends at 1000 ms (nothing acts later)",
                "store: window [0, 1000) ms -> [0, 500) ms",
                "store: window [0, 1000) ms -> [500, 1000) ms",
            ]
        );
        // The lease spec: the zombie window can go, then both intensities halve.
        let lease = reductions(&specs[5], &context());
        assert_eq!(lease[0].1, "lease: switched off zombie_max_ms");
        assert_eq!(
            lease[1].0.fault,
            Fault::Lease(crate::LeaseFaults {
                loss_probability: 0.025,
                zombie_max_ms: 150,
            })
        );
        assert_eq!(lease[1].1, "lease: halved loss_probability, zombie_max_ms");
    }

    #[test]
    fn reductions_bottom_out() {
        // A spec reduced as far as it goes has no reductions left: the search ends.
        let spec = FaultSpec::new(Fault::Rebalance {
            per_tick_probability: MIN_PROBABILITY,
        })
        .on_nodes(["a"])
        .during(0, 150);
        assert!(reductions(&spec, &context()).is_empty());
        // And halving stops at the floor.
        let mut spec = FaultSpec::new(Fault::Crash {
            per_tick_probability: 0.5,
            min_downtime_ms: 10,
            max_downtime_ms: 2_000,
        });
        let mut halvings = 0;
        while let Some((fault, _)) = halve(&spec.fault) {
            spec.fault = fault;
            halvings += 1;
            assert!(halvings < 64, "halving terminates");
        }
        assert_eq!(
            spec.fault,
            Fault::Crash {
                per_tick_probability: 0.5 / 512.0,
                min_downtime_ms: 10,
                max_downtime_ms: 10,
            }
        );
    }

    #[test]
    fn signatures_ignore_entities_but_not_invariants() {
        use crate::Violation;
        let violated = |invariant: &str, entity: &str| Outcome::Violated {
            violation: Violation::new(invariant, "x").entity(entity),
            at: Duration::ZERO,
            phase: crate::Phase::Faults,
        };
        assert_eq!(
            FailureSignature::of(&violated("no-double-credit", "transfer-1")),
            FailureSignature::of(&violated("no-double-credit", "transfer-9")),
        );
        assert_ne!(
            FailureSignature::of(&violated("no-double-credit", "transfer-1")),
            FailureSignature::of(&violated("conservation", "transfer-1")),
        );
        assert_eq!(FailureSignature::of(&Outcome::Passed), None);
        assert_eq!(
            FailureSignature::of(&Outcome::BudgetExceeded {
                budget: Budget::Steps(5),
                at: Duration::ZERO
            }),
            Some(FailureSignature::StepBudget)
        );
    }
}
