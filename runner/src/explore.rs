//! Guided exploration: spend a budget of runs near the runs that reached something new,
//! instead of on independent random seeds.
//!
//! A swarm sweep draws every seed's fault mix independently. That finds shallow bugs in a
//! handful of seeds, but a *deep* bug — one that needs two or three faults to meet inside
//! a narrow window — is met about once in hundreds or thousands of seeds, and a sweep
//! learns nothing from the runs that came close. The explorer keeps a **corpus** of
//! interesting `(seed, plan)` pairs, as a coverage-guided fuzzer does: a run joins the
//! corpus when it reaches a feature no earlier run reached, and most new runs are
//! **mutations** of a corpus entry — the same concrete fault plan with one spec's rates
//! scaled, its window narrowed, its target changed, a spec dropped or spliced in from
//! another entry, or the same plan under a new seed. The rest are fresh draws of the base
//! plan, so the corpus keeps growing in new directions.
//!
//! **Features** are what a run reached, cheap to read off its report: every `sometimes!`
//! situation and every fault kind (BUGGIFY points by name) with its count in a
//! logarithmic bucket (1, 2, 3, 4–7, 8–15, …: a situation reached eight times is news when
//! it was only ever reached once), each fault kind on each node it hit, pairs of
//! situations and fault kinds present in the same run (a deep bug is a *coincidence*, and
//! a pair never seen together is one), and the trace's shape (node boots, simulated
//! time). Parents are picked with a weight that favours entries holding *rare* features —
//! the sum of `1 / runs that reached it` over the entry's features — and that decays as an
//! entry is picked again, so the budget goes where the corpus is thin.
//!
//! **Every failure replays.** A run's plan is concrete data (no swarm options left), so a
//! failing run is its seed and that plan: the plan is written as JSON and the exact
//! `run --seed N --plan FILE.json --trace` command printed; a fresh draw of the base plan
//! replays with the base plan's name.
//!
//! **Exploration is deterministic given its seed.** The explorer's choices come from its
//! own generator seeded by `--seed`; runs are generated in batches of [`BATCH`] from the
//! corpus as it stood before the batch, run on any number of threads, and folded in
//! order — so the report does not depend on `--jobs`, and the same seed prints the same
//! report. Wall-clock time is only shown as progress, never in the report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reprise_sim::{
    Direction, Fault, FaultPlan, FaultSpec, Nodes, Peer, RunReport, Scenario, SimConfig, TraceMode,
    Window,
};
use serde::{Deserialize, Serialize};

use crate::sweep::{Commands, QuietPanics, catch};

/// Runs generated from one state of the corpus; also the unit of parallelism.
pub const BATCH: usize = 8;
/// Share of runs (out of 1000) that are fresh draws of the base plan once the corpus has
/// entries; the rest mutate an entry.
const FRESH_PER_MILLE: u64 = 250;
/// Sim seeds the explorer draws are below this (short enough to type).
const SEED_RANGE: u64 = 1_000_000_000_000;

/// A small deterministic generator for the explorer's own choices (SplitMix64): nothing
/// about it needs to be cryptographic, and it keeps the runner free of another dependency.
#[derive(Clone, Debug)]
struct Dice(u64);

impl Dice {
    fn new(seed: u64) -> Self {
        Dice(seed ^ 0x5eed_e591_07e5_0000)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "an empty range");
        // Lemire's multiply-shift; the tiny bias is irrelevant here.
        let wide = u128::from(self.next_u64()) * u128::from(n);
        u64::try_from(wide >> 64).expect("below n fits")
    }

    fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.below(len as u64)).expect("an index fits")
    }

    fn per_mille(&mut self, chance: u64) -> bool {
        self.below(1000) < chance
    }

    /// Uniform in `[0, 1)`.
    #[allow(clippy::cast_precision_loss)]
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What an exploration is asked to do.
#[derive(Clone, Debug)]
pub struct ExploreRequest<'a> {
    /// The base plan: fresh runs draw it (a swarm plan draws a new mix per seed).
    pub base: FaultPlan,
    /// Runs to spend at most.
    pub runs: u64,
    /// The explorer's own seed: same seed, same exploration.
    pub seed: u64,
    /// Go on after the first failure, to the end of the budget.
    pub keep_going: bool,
    pub jobs: usize,
    /// Where failing runs' plans are written as JSON (`None`: not written).
    pub plans_dir: Option<PathBuf>,
    /// Commands are printed with this program and base plan name.
    pub commands: Commands<'a>,
    /// No progress bar.
    pub quiet: bool,
}

/// One failing run, replayable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExploreFailure {
    /// Its place in the exploration (1-based): runs spent to find it.
    pub run: u64,
    pub seed: u64,
    pub hash: String,
    pub outcome: String,
    pub invariant: Option<String>,
    pub entities: Vec<String>,
    /// How the run came about: `fresh`, or the mutations of a corpus entry.
    pub origin: String,
    /// The plan file to replay it with (`None`: a fresh draw of the base plan, replayed
    /// by the base plan's name).
    pub plan_file: Option<String>,
    /// The exact command that replays it.
    pub replay: String,
    /// The concrete plan the run used.
    pub plan: FaultPlan,
}

/// What an exploration found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExploreOutcome {
    pub scenario: String,
    pub base_plan: String,
    pub explorer_seed: u64,
    pub budget: u64,
    /// Runs counted (up to and including the first failure, unless `keep_going`).
    pub runs: u64,
    pub fresh_runs: u64,
    pub mutated_runs: u64,
    /// Runs that reached a new feature and joined the corpus.
    pub corpus: usize,
    /// Distinct features reached.
    pub features: usize,
    /// Runs in which each declared `sometimes!` situation was reached (0: never).
    pub situations: BTreeMap<String, u64>,
    pub failures: Vec<ExploreFailure>,
}

impl ExploreOutcome {
    /// Runs spent up to the first failure.
    #[must_use]
    pub fn runs_to_first_failure(&self) -> Option<u64> {
        self.failures.first().map(|f| f.run)
    }
}

/// How a candidate run came about.
#[derive(Clone, Debug)]
enum Origin {
    Fresh,
    Mutated {
        parent: usize,
        mutations: Vec<&'static str>,
    },
}

impl Origin {
    fn describe(&self, corpus: &[Entry]) -> String {
        match self {
            Origin::Fresh => "fresh".to_owned(),
            Origin::Mutated { parent, mutations } => format!(
                "{} of corpus entry {parent} (seed {})",
                mutations.join("+"),
                corpus[*parent].seed
            ),
        }
    }
}

#[derive(Clone, Debug)]
struct Candidate {
    /// 1-based place in the exploration.
    run: u64,
    seed: u64,
    /// The plan to run: the base plan (fresh) or a concrete, mutated plan.
    plan: FaultPlan,
    origin: Origin,
}

/// A corpus entry: a run that reached something new.
#[derive(Clone, Debug)]
struct Entry {
    seed: u64,
    /// Concrete (resolved): what the run actually used.
    plan: FaultPlan,
    features: Vec<u32>,
    picked: u64,
}

/// What one run left behind, extracted from its report.
struct Observed {
    features: BTreeSet<String>,
    plan: FaultPlan,
    nodes: BTreeSet<String>,
    situations: Vec<&'static str>,
    failure: Option<(String, String, Option<String>, Vec<String>)>,
}

/// The bucket of a count, as a fuzzer's hit counts: 1, 2, 3, 4–7, 8–15, 16–31, …
fn bucket(count: u64) -> u32 {
    match count {
        0 => 0,
        1..=3 => u32::try_from(count).expect("small"),
        _ => 64 - count.leading_zeros() + 1,
    }
}

/// How much a feature counts when picking parents: the scenario's own situations (and
/// coincidences involving them) are what its invariants guard, so they count four times
/// as much as a fault count or the trace's shape.
fn weight(feature: &str) -> f64 {
    if feature.starts_with("s:") || feature.starts_with("p:") {
        4.0
    } else {
        1.0
    }
}

/// The features of one run. See the module docs.
fn features_of(report: &RunReport) -> BTreeSet<String> {
    let mut features = BTreeSet::new();
    let mut present: BTreeSet<String> = BTreeSet::new();
    for &(name, hits) in &report.coverage {
        if hits > 0 {
            features.insert(format!("s:{name}:{}", bucket(hits)));
            present.insert(format!("s:{name}"));
        }
    }
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for record in &report.faults {
        let kind = if record.kind == "buggify" {
            format!("buggify:{}", record.detail)
        } else {
            record.kind.to_owned()
        };
        if let Some(node) = &record.node {
            features.insert(format!("n:{kind}@{node}"));
        }
        *kinds.entry(kind).or_default() += 1;
    }
    for (kind, count) in kinds {
        features.insert(format!("f:{kind}:{}", bucket(count)));
        present.insert(format!("f:{kind}"));
    }
    // Coincidences: a situation together with another situation or with a fault kind.
    let situations: Vec<&String> = present.iter().filter(|p| p.starts_with("s:")).collect();
    for (i, a) in situations.iter().enumerate() {
        for b in present.iter().skip_while(|b| *b <= *a) {
            if b.starts_with("f:") || situations[i + 1..].contains(&b) {
                features.insert(format!("p:{a}+{b}"));
            }
        }
    }
    features.insert(format!("t:boots:{}", bucket(report.stats.boots)));
    features.insert(format!(
        "t:sim-seconds:{}",
        bucket(report.stats.sim_time.as_secs())
    ));
    features
}

fn observe(report: &RunReport) -> Observed {
    let failure = (!report.passed()).then(|| {
        let violation = report.violation();
        (
            format!("{:016x}", report.hash),
            report.outcome.to_string(),
            violation.map(|v| v.invariant.clone()),
            violation.map(|v| v.entities.clone()).unwrap_or_default(),
        )
    });
    Observed {
        features: features_of(report),
        plan: report.plan.clone(),
        nodes: report
            .faults
            .iter()
            .filter_map(|r| r.node.as_deref().map(str::to_owned))
            .collect(),
        situations: report
            .coverage
            .iter()
            .filter(|(_, hits)| *hits > 0)
            .map(|(name, _)| *name)
            .collect(),
        failure,
    }
}

fn run_candidate(scenario: &dyn Scenario, candidate: &Candidate) -> Observed {
    let config = SimConfig::new(candidate.seed)
        .with_plan(candidate.plan.clone())
        .with_trace(TraceMode::Hash);
    match catch(|| reprise_sim::run(scenario, &config)) {
        Ok(report) => observe(&report),
        Err(panic) => Observed {
            features: BTreeSet::new(),
            plan: candidate.plan.clone(),
            nodes: BTreeSet::new(),
            situations: Vec::new(),
            failure: Some((
                String::new(),
                format!("panicked: {panic}"),
                None,
                Vec::new(),
            )),
        },
    }
}

/// Runs `candidates` on up to `jobs` threads; results in candidate order.
fn run_batch(scenario: &dyn Scenario, candidates: &[Candidate], jobs: usize) -> Vec<Observed> {
    let next = AtomicUsize::new(0);
    let slots: Mutex<Vec<Option<Observed>>> =
        Mutex::new((0..candidates.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, candidates.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(candidate) = candidates.get(i) else {
                        break;
                    };
                    let observed = run_candidate(scenario, candidate);
                    slots
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)[i] = Some(observed);
                }
            });
        }
    });
    slots
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .into_iter()
        .map(|slot| slot.expect("every candidate ran"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------

/// The probabilities of a fault, to scale one of them.
fn probabilities(fault: &mut Fault) -> Vec<&mut f64> {
    match fault {
        Fault::Store(s) => vec![
            &mut s.transient_probability,
            &mut s.timeout_probability,
            &mut s.commit_unknown_probability,
        ],
        Fault::Bus(b) => vec![
            &mut b.duplicate_probability,
            &mut b.reorder_probability,
            &mut b.publish_error_probability,
            &mut b.publish_ack_lost_probability,
            &mut b.commit_lost_probability,
        ],
        Fault::Dependency { faults, .. } => vec![
            &mut faults.error_probability,
            &mut faults.response_lost_probability,
        ],
        Fault::Lease(l) => vec![&mut l.loss_probability],
        Fault::Buggify {
            fire_probability, ..
        } => vec![fire_probability],
        Fault::Partition {
            per_tick_probability,
            ..
        }
        | Fault::Crash {
            per_tick_probability,
            ..
        }
        | Fault::Pause {
            per_tick_probability,
            ..
        }
        | Fault::ClockSkew {
            per_tick_probability,
            ..
        }
        | Fault::Rebalance {
            per_tick_probability,
        }
        | Fault::DependencyOutage {
            per_tick_probability,
            ..
        } => vec![per_tick_probability],
    }
}

/// The upper end of a nemesis fault's duration range, to stretch or shrink it.
fn duration_range(fault: &mut Fault) -> Option<(&mut u64, &mut u64)> {
    match fault {
        Fault::Partition {
            min_duration_ms,
            max_duration_ms,
            ..
        }
        | Fault::Pause {
            min_duration_ms,
            max_duration_ms,
            ..
        }
        | Fault::DependencyOutage {
            min_duration_ms,
            max_duration_ms,
            ..
        } => Some((min_duration_ms, max_duration_ms)),
        Fault::Crash {
            min_downtime_ms,
            max_downtime_ms,
            ..
        } => Some((min_downtime_ms, max_downtime_ms)),
        _ => None,
    }
}

/// Scales one probability of `spec` by ×¼ … ×4; a zero probability is given a small one,
/// so a fault kind switched off inside a family can come back.
fn scale(spec: &mut FaultSpec, dice: &mut Dice) {
    let mut probabilities = probabilities(&mut spec.fault);
    if probabilities.is_empty() {
        return;
    }
    let i = dice.index(probabilities.len());
    let factor = [0.25, 0.5, 2.0, 4.0][dice.index(4)];
    let p = &mut *probabilities[i];
    *p = if *p == 0.0 {
        0.01 + dice.unit() * 0.04
    } else {
        (*p * factor).min(0.5)
    };
}

/// Narrows or moves the window of `spec` inside the fault window: faults focused on one
/// moment make coincidences there likelier.
fn rewindow(spec: &mut FaultSpec, dice: &mut Dice, fault_window_ms: u64) {
    if dice.per_mille(150) {
        spec.window = Window::default();
        return;
    }
    let length = 250 + dice.below(fault_window_ms.max(500) / 2);
    let start = dice.below(fault_window_ms.saturating_sub(length).max(1));
    spec.window = Window {
        start_ms: start,
        end_ms: Some(start + length),
    };
}

/// Aims `spec` at one node (or back at all), and a partition at another peer or direction.
fn retarget(spec: &mut FaultSpec, dice: &mut Dice, nodes: &[String]) {
    if let Fault::Partition {
        peer, direction, ..
    } = &mut spec.fault
        && dice.per_mille(500)
    {
        if dice.per_mille(500) {
            *peer = [
                Peer::EventStore,
                Peer::EventBus,
                Peer::AnyDependency,
                Peer::Any,
            ][dice.index(4)]
            .clone();
        } else {
            *direction = [Direction::Both, Direction::Outbound, Direction::Inbound][dice.index(3)];
        }
        return;
    }
    spec.nodes = match (&spec.nodes, nodes.is_empty()) {
        (Nodes::Named(_), _) | (_, true) => Nodes::All,
        (Nodes::All, false) => Nodes::Named(vec![nodes[dice.index(nodes.len())].clone()]),
    };
}

/// Stretches or shrinks a nemesis fault's longest duration.
fn stretch(spec: &mut FaultSpec, dice: &mut Dice) {
    if let Some((min, max)) = duration_range(&mut spec.fault) {
        let factor = [0.5, 2.0][dice.index(2)];
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let stretched = ((*max as f64) * factor) as u64;
        *max = stretched.clamp(*min, 5_000);
    }
}

/// Brings the probabilities that share one outcome draw back under 1 after a scaling.
fn normalise(spec: &mut FaultSpec) {
    let shares: Vec<f64> = match &spec.fault {
        Fault::Store(s) => vec![
            s.transient_probability,
            s.timeout_probability,
            s.commit_unknown_probability,
        ],
        Fault::Bus(b) => vec![b.publish_error_probability, b.publish_ack_lost_probability],
        Fault::Dependency { faults, .. } => {
            vec![faults.error_probability, faults.response_lost_probability]
        }
        _ => return,
    };
    let total: f64 = shares.iter().sum();
    if total <= 0.9 {
        return;
    }
    let k = 0.9 / total;
    match &mut spec.fault {
        Fault::Store(s) => {
            s.transient_probability *= k;
            s.timeout_probability *= k;
            s.commit_unknown_probability *= k;
        }
        Fault::Bus(b) => {
            b.publish_error_probability *= k;
            b.publish_ack_lost_probability *= k;
        }
        Fault::Dependency { faults, .. } => {
            faults.error_probability *= k;
            faults.response_lost_probability *= k;
        }
        _ => {}
    }
}

/// The explorer's state: corpus, feature counts, the nodes seen, its dice.
struct Explorer {
    dice: Dice,
    corpus: Vec<Entry>,
    /// Feature name → id; `hits[id]`: runs that reached it.
    ids: BTreeMap<String, u32>,
    hits: Vec<u64>,
    /// `weights[id]`: how much a feature counts when picking parents (see [`weight`]).
    weights: Vec<f64>,
    nodes: BTreeSet<String>,
    fault_window_ms: u64,
}

impl Explorer {
    fn new(seed: u64, fault_window_ms: u64) -> Self {
        Explorer {
            dice: Dice::new(seed),
            corpus: Vec::new(),
            ids: BTreeMap::new(),
            hits: Vec::new(),
            weights: Vec::new(),
            nodes: BTreeSet::new(),
            fault_window_ms,
        }
    }

    /// Picks a parent: weight = Σ 1/hits over its features, decaying with each pick.
    fn pick_parent(&mut self) -> usize {
        let weights: Vec<f64> = self
            .corpus
            .iter()
            .map(|entry| {
                #[allow(clippy::cast_precision_loss)]
                let rarity: f64 = entry
                    .features
                    .iter()
                    .map(|&id| self.weights[id as usize] / self.hits[id as usize].max(1) as f64)
                    .sum();
                #[allow(clippy::cast_precision_loss)]
                let decay = 1.0 + entry.picked as f64 / 4.0;
                rarity / decay
            })
            .collect();
        let total: f64 = weights.iter().sum();
        let mut target = self.dice.unit() * total;
        for (i, w) in weights.iter().enumerate() {
            if target < *w {
                return i;
            }
            target -= w;
        }
        weights.len() - 1
    }

    fn candidate(&mut self, run: u64, base: &FaultPlan, name: &str) -> Candidate {
        if self.corpus.is_empty() || self.dice.per_mille(FRESH_PER_MILLE) {
            return Candidate {
                run,
                seed: self.dice.below(SEED_RANGE),
                plan: base.clone(),
                origin: Origin::Fresh,
            };
        }
        let parent = self.pick_parent();
        self.corpus[parent].picked += 1;
        let mut seed = self.corpus[parent].seed;
        let mut plan = self.corpus[parent].plan.clone();
        plan.name = format!("{name}-run{run}");
        let nodes: Vec<String> = self.nodes.iter().cloned().collect();
        let mut mutations = Vec::new();
        let count = if self.dice.per_mille(700) { 1 } else { 2 };
        for _ in 0..count {
            let mutation = self.mutate(&mut seed, &mut plan, &nodes);
            mutations.push(mutation);
        }
        if plan.validate().is_err() {
            // A combination the simulator refuses: keep the parent's plan, new schedule.
            plan = self.corpus[parent].plan.clone();
            plan.name = format!("{name}-run{run}");
            seed = self.dice.below(SEED_RANGE);
            mutations = vec!["reseed"];
        }
        Candidate {
            run,
            seed,
            plan,
            origin: Origin::Mutated { parent, mutations },
        }
    }

    /// One mutation of `(seed, plan)`; returns its name. A third of them keep the plan
    /// and draw a new seed: a plan that reached something rare is likely to again, and a
    /// deep bug needs that plan *and* a lucky schedule.
    fn mutate(&mut self, seed: &mut u64, plan: &mut FaultPlan, nodes: &[String]) -> &'static str {
        let dice = &mut self.dice;
        let choice = dice.below(100);
        if plan.specs.is_empty() || choice < 35 {
            *seed = dice.below(SEED_RANGE);
            return "reseed";
        }
        if choice < 45 {
            return self.splice(plan);
        }
        let i = dice.index(plan.specs.len());
        let spec = &mut plan.specs[i];
        match choice {
            45..=64 => {
                scale(spec, dice);
                normalise(spec);
                "scale"
            }
            65..=79 => {
                rewindow(spec, dice, self.fault_window_ms);
                "window"
            }
            80..=89 => {
                retarget(spec, dice, nodes);
                "target"
            }
            90..=94 => {
                stretch(spec, dice);
                "duration"
            }
            _ if plan.specs.len() > 1 => {
                plan.specs.remove(i);
                "drop"
            }
            _ => {
                *seed = dice.below(SEED_RANGE);
                "reseed"
            }
        }
    }

    /// Copies a spec from another corpus entry, replacing one of the same kind.
    fn splice(&mut self, plan: &mut FaultPlan) -> &'static str {
        let donor = self.dice.index(self.corpus.len());
        let specs = &self.corpus[donor].plan.specs;
        if specs.is_empty() {
            return "splice";
        }
        let spec = specs[self.dice.index(specs.len())].clone();
        let label = spec.fault.label();
        match plan.specs.iter_mut().find(|s| s.fault.label() == label) {
            Some(same) => *same = spec,
            None => plan.specs.push(spec),
        }
        "splice"
    }

    /// Folds one run: counts its features; returns whether it reached a new one.
    fn fold(&mut self, candidate: &Candidate, observed: &Observed) -> bool {
        let mut ids = Vec::with_capacity(observed.features.len());
        let mut new = false;
        for feature in &observed.features {
            let next = u32::try_from(self.hits.len()).expect("features fit in u32");
            let id = *self.ids.entry(feature.clone()).or_insert(next);
            if id == next {
                self.hits.push(0);
                self.weights.push(weight(feature));
                new = true;
            }
            self.hits[id as usize] += 1;
            ids.push(id);
        }
        self.nodes.extend(observed.nodes.iter().cloned());
        if new {
            self.corpus.push(Entry {
                seed: candidate.seed,
                plan: observed.plan.clone(),
                features: ids,
                picked: 0,
            });
        }
        new
    }
}

fn progress(runs: u64, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::new(runs);
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    } else {
        bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} runs, {per_sec}, {msg}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
    }
    bar
}

/// The file a failing run's plan is written to.
fn plan_path(dir: &Path, plan: &FaultPlan) -> PathBuf {
    dir.join(format!("{}.json", plan.name))
}

/// Explores `scenario` as `request` asks and returns what it found (printing nothing but
/// progress; see [`print_outcome`]).
///
/// # Errors
/// A failing plan that cannot be written.
pub fn explore(
    scenario: &dyn Scenario,
    request: &ExploreRequest<'_>,
) -> Result<ExploreOutcome, String> {
    let fault_window_ms =
        u64::try_from(SimConfig::new(0).fault_window.as_millis()).unwrap_or(u64::MAX);
    let name = format!("{}-explore{}", scenario.name(), request.seed);
    let mut explorer = Explorer::new(request.seed, fault_window_ms);
    let mut situations: BTreeMap<String, u64> = scenario
        .situations()
        .iter()
        .map(|s| (s.name.to_owned(), 0))
        .collect();
    let mut outcome = ExploreOutcome {
        scenario: scenario.name().to_owned(),
        base_plan: request.commands.plan.to_owned(),
        explorer_seed: request.seed,
        budget: request.runs,
        runs: 0,
        fresh_runs: 0,
        mutated_runs: 0,
        corpus: 0,
        features: 0,
        situations: BTreeMap::new(),
        failures: Vec::new(),
    };
    let bar = progress(request.runs, request.quiet);
    let began = Instant::now();
    let _quiet = QuietPanics::install();
    let mut run = 0u64;
    'explore: while run < request.runs {
        let size = usize::try_from((request.runs - run).min(BATCH as u64)).expect("small");
        let candidates: Vec<Candidate> = (0..size)
            .map(|i| explorer.candidate(run + 1 + i as u64, &request.base, &name))
            .collect();
        let observed = run_batch(scenario, &candidates, request.jobs);
        for (candidate, observed) in candidates.iter().zip(&observed) {
            run = candidate.run;
            outcome.runs = run;
            match candidate.origin {
                Origin::Fresh => outcome.fresh_runs += 1,
                Origin::Mutated { .. } => outcome.mutated_runs += 1,
            }
            for name in &observed.situations {
                *situations.entry((*name).to_owned()).or_default() += 1;
            }
            let origin = candidate.origin.describe(&explorer.corpus);
            explorer.fold(candidate, observed);
            bar.inc(1);
            if let Some((hash, text, invariant, entities)) = &observed.failure {
                let failure = failure(request, scenario, candidate, &origin, observed, hash)?;
                outcome.failures.push(ExploreFailure {
                    outcome: text.clone(),
                    invariant: invariant.clone(),
                    entities: entities.clone(),
                    ..failure
                });
                bar.set_message(format!("{} failing", outcome.failures.len()));
                if !request.keep_going {
                    break 'explore;
                }
            }
        }
        bar.set_message(format!(
            "corpus {}, {} features, {} failing",
            explorer.corpus.len(),
            explorer.hits.len(),
            outcome.failures.len()
        ));
    }
    bar.finish_and_clear();
    if !request.quiet {
        eprintln!(
            "explored {} run(s) in {:.1}s",
            outcome.runs,
            began.elapsed().as_secs_f64()
        );
    }
    outcome.corpus = explorer.corpus.len();
    outcome.features = explorer.hits.len();
    outcome.situations = situations;
    Ok(outcome)
}

/// A failing run as the report lists it (outcome fields filled in by the caller), its
/// plan written if asked.
fn failure(
    request: &ExploreRequest<'_>,
    scenario: &dyn Scenario,
    candidate: &Candidate,
    origin: &str,
    observed: &Observed,
    hash: &str,
) -> Result<ExploreFailure, String> {
    let (plan_file, replay) = match candidate.origin {
        Origin::Fresh => (
            None,
            request.commands.replay(scenario.name(), candidate.seed),
        ),
        Origin::Mutated { .. } => {
            let dir = request.plans_dir.clone().unwrap_or_default();
            let path = plan_path(&dir, &candidate.plan);
            if request.plans_dir.is_some() {
                std::fs::write(&path, candidate.plan.to_json() + "\n")
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
            let file = path.display().to_string();
            let commands = Commands {
                program: request.commands.program,
                plan: &file,
            };
            let replay = commands.replay(scenario.name(), candidate.seed);
            (Some(file), replay)
        }
    };
    Ok(ExploreFailure {
        run: candidate.run,
        seed: candidate.seed,
        hash: hash.to_owned(),
        outcome: String::new(),
        invariant: None,
        entities: Vec::new(),
        origin: origin.to_owned(),
        plan_file,
        replay,
        plan: observed.plan.clone(),
    })
}

/// Prints the report of an exploration (deterministic: no wall-clock time in it).
pub fn print_outcome(outcome: &ExploreOutcome) {
    let reached = outcome
        .situations
        .values()
        .filter(|&&runs| runs > 0)
        .count();
    println!(
        "{}: {} failure(s) in {} run(s) (explorer seed {}, base plan {}, budget {}): {} fresh + {} mutated runs, corpus {} entries, {} features, {} of {} situations reached",
        outcome.scenario,
        outcome.failures.len(),
        outcome.runs,
        outcome.explorer_seed,
        outcome.base_plan,
        outcome.budget,
        outcome.fresh_runs,
        outcome.mutated_runs,
        outcome.corpus,
        outcome.features,
        reached,
        outcome.situations.len(),
    );
    let never: Vec<&str> = outcome
        .situations
        .iter()
        .filter(|&(_, &runs)| runs == 0)
        .map(|(name, _)| name.as_str())
        .collect();
    if !never.is_empty() {
        println!("situations never reached: {}", never.join(", "));
    }
    if outcome.failures.is_empty() {
        return;
    }
    println!("\nfailures:");
    for failure in &outcome.failures {
        println!(
            "  run {}: seed={} {}",
            failure.run,
            failure.seed,
            crate::sweep::failure_summary(
                &failure.hash,
                failure.invariant.as_deref().unwrap_or(&failure.outcome),
                &failure.entities
            )
        );
        println!("      found by: {}", failure.origin);
        if let Some(file) = &failure.plan_file {
            println!("      plan:     {file}");
        }
        println!("      replay:   {}", failure.replay);
    }
}

/// The report as `--json` writes it.
#[must_use]
pub fn to_json(outcome: &ExploreOutcome) -> String {
    serde_json::to_string_pretty(outcome).expect("plain data")
}

// ---------------------------------------------------------------------------------------
// Explore against swarm
// ---------------------------------------------------------------------------------------

/// Runs to the first failure of a plain sweep of `base` from seed `start`: `None` if none
/// of `budget` seeds fails. Seeds run in batches on `jobs` threads; the answer is the
/// first failing seed's place, whatever the number of threads.
#[must_use]
pub fn sweep_runs_to_failure(
    scenario: &dyn Scenario,
    base: &FaultPlan,
    start: u64,
    budget: u64,
    jobs: usize,
) -> Option<u64> {
    let _quiet = QuietPanics::install();
    let mut done = 0;
    while done < budget {
        let size = (budget - done).min(BATCH as u64 * jobs.max(1) as u64);
        let candidates: Vec<Candidate> = (0..size)
            .map(|i| Candidate {
                run: done + i + 1,
                seed: start + done + i,
                plan: base.clone(),
                origin: Origin::Fresh,
            })
            .collect();
        let observed = run_batch(scenario, &candidates, jobs);
        if let Some((candidate, _)) = candidates
            .iter()
            .zip(&observed)
            .find(|(_, o)| o.failure.is_some())
        {
            return Some(candidate.run);
        }
        done += size;
    }
    None
}

/// One trial of [`compare_with_swarm`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    pub swarm_start: u64,
    /// Runs to the first failure (`None`: not within the budget).
    pub swarm_runs: Option<u64>,
    pub explorer_seed: u64,
    pub explore_runs: Option<u64>,
}

/// The median of runs-to-failure, a run that found nothing counting as the budget (so
/// the median is a lower bound when it is the budget).
#[must_use]
pub fn median(runs: &[Option<u64>], budget: u64) -> u64 {
    let mut values: Vec<u64> = runs.iter().map(|r| r.unwrap_or(budget)).collect();
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(budget)
}

/// `trials` disjoint swarm sweeps (from seeds 0, 100 000, 200 000, …) against `trials`
/// explorations (explorer seeds `seed`, `seed + 1`, …), each with `budget` runs: runs to
/// the first failure of each.
pub fn compare_with_swarm(
    scenario: &dyn Scenario,
    request: &ExploreRequest<'_>,
    trials: u64,
) -> Result<Vec<Trial>, String> {
    let mut results = Vec::new();
    for trial in 0..trials {
        let swarm_start = trial * 100_000;
        let swarm_runs = sweep_runs_to_failure(
            scenario,
            &request.base,
            swarm_start,
            request.runs,
            request.jobs,
        );
        let explorer_seed = request.seed + trial;
        let explored = explore(
            scenario,
            &ExploreRequest {
                seed: explorer_seed,
                keep_going: false,
                plans_dir: None,
                quiet: true,
                ..request.clone()
            },
        )?;
        let result = Trial {
            swarm_start,
            swarm_runs,
            explorer_seed,
            explore_runs: explored.runs_to_first_failure(),
        };
        if !request.quiet {
            eprintln!("trial {}: {result:?}", trial + 1);
        }
        results.push(result);
    }
    Ok(results)
}

/// Prints the table of [`compare_with_swarm`].
pub fn print_comparison(scenario: &str, base: &str, trials: &[Trial], budget: u64) {
    let show = |runs: Option<u64>| runs.map_or_else(|| format!(">{budget}"), |r| r.to_string());
    println!("{scenario} under {base}: runs to the first failure (budget {budget} per trial)");
    println!(
        "  {:<6} {:>12} {:>12} {:>14} {:>14}",
        "trial", "swarm from", "swarm runs", "explorer seed", "explore runs"
    );
    for (i, trial) in trials.iter().enumerate() {
        println!(
            "  {:<6} {:>12} {:>12} {:>14} {:>14}",
            i + 1,
            trial.swarm_start,
            show(trial.swarm_runs),
            trial.explorer_seed,
            show(trial.explore_runs)
        );
    }
    let swarm: Vec<Option<u64>> = trials.iter().map(|t| t.swarm_runs).collect();
    let explored: Vec<Option<u64>> = trials.iter().map(|t| t.explore_runs).collect();
    let (swarm, explored) = (median(&swarm, budget), median(&explored, budget));
    #[allow(clippy::cast_precision_loss)]
    let ratio = swarm as f64 / explored.max(1) as f64;
    println!("  median {swarm:>25} {explored:>29}   swarm median / explore median = {ratio:.1}x");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_grow_logarithmically() {
        let buckets: Vec<u32> = [0, 1, 2, 3, 4, 7, 8, 15, 16, 1000]
            .into_iter()
            .map(bucket)
            .collect();
        assert_eq!(buckets, [0, 1, 2, 3, 4, 4, 5, 5, 6, 11]);
    }

    #[test]
    fn dice_repeat_by_seed_and_stay_in_range() {
        let (mut a, mut b) = (Dice::new(7), Dice::new(7));
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            assert!(a.below(10) < 10);
            let u = a.unit();
            assert!((0.0..1.0).contains(&u));
            b.below(10);
            b.unit();
        }
        assert_ne!(Dice::new(7).next_u64(), Dice::new(8).next_u64());
    }

    #[test]
    fn the_median_counts_a_miss_as_the_budget() {
        assert_eq!(median(&[Some(3), Some(1), Some(2)], 100), 2);
        assert_eq!(median(&[None, None, Some(5)], 100), 100);
        assert_eq!(median(&[Some(9), None, Some(5), Some(7), None], 50), 9);
    }

    #[test]
    fn mutated_plans_stay_valid() {
        let mut explorer = Explorer::new(3, 10_000);
        let plan = FaultPlan::named("p")
            .with(FaultSpec::new(Fault::Store(reprise_sim::StoreFaults {
                extra_latency_max_ms: 5,
                transient_probability: 0.3,
                timeout_probability: 0.3,
                commit_unknown_probability: 0.3,
            })))
            .with(FaultSpec::new(Fault::Crash {
                per_tick_probability: 0.05,
                min_downtime_ms: 10,
                max_downtime_ms: 100,
            }));
        explorer.corpus.push(Entry {
            seed: 1,
            plan: plan.clone(),
            features: Vec::new(),
            picked: 0,
        });
        let nodes = vec!["a".to_owned(), "b".to_owned()];
        for _ in 0..2000 {
            let (mut seed, mut mutated) = (1, plan.clone());
            for _ in 0..3 {
                explorer.mutate(&mut seed, &mut mutated, &nodes);
            }
            mutated.validate().expect("a mutation keeps a plan valid");
        }
    }
}
