//! Fault injection: turns the run's resolved [`FaultPlan`] into decisions — per operation
//! (does this append time out?) and per nemesis tick (does a node crash now?) — and
//! records every fault at the point it fires, TigerBeetle style.
//!
//! Every decision draws from the stream of its fault kind ([`Draw`]; per-operation kinds
//! have one per node, nemesis kinds one each), and only when the plan makes the fault
//! possible: a calm run draws nothing, and removing one kind of fault from a plan leaves
//! every other kind's sequence of draws unchanged (what the shrinker relies on to remove
//! faults one at a time without reshuffling the rest).
//!
//! Faults stop for good when the fault window closes ([`Injector::deactivate`]); the
//! liveness phase runs healed.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reprise_core::buggify::FaultOracle;
use serde::Serialize;

use crate::executor::{Control, Draw, Kernel, NodeIndex, Shared, Source};
use crate::network::Link;
use crate::plan::{
    BusFaults, DependencyFaults, Fault, FaultPlan, FaultSpec, LeaseFaults, Nodes, Peer,
    StoreFaults, Window,
};
use crate::run::SimError;
use crate::trace::{Tag, hash_str};
use crate::world::{DependencyEntry, Node, NodeStatus};

/// A fault that fired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FaultRecord {
    /// Virtual time since the run started.
    pub at: Duration,
    /// The node it hit, if it hit one.
    pub node: Option<Arc<str>>,
    /// Stable dotted name: `store.timeout`, `node.crash`, `bus.duplicate`, …
    pub kind: &'static str,
    /// Specifics (operation, duration, target).
    pub detail: String,
}

impl std::fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let node = self.node.as_deref().unwrap_or("-");
        write!(
            f,
            "{:>9.3}ms {node:<12} {} {}",
            self.at.as_secs_f64() * 1000.0,
            self.kind,
            self.detail
        )
    }
}

/// A spec resolved against the world: node names turned into a mask, dependency names
/// into indices.
#[derive(Clone, Debug)]
struct Resolved {
    fault: Fault,
    window: Window,
    /// Indexed by node; `true` if targeted.
    nodes: Vec<bool>,
    dependency: Option<u16>,
}

/// What a nemesis tick decided that the run loop must carry out outside the kernel lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NemesisAction {
    Crash {
        node: NodeIndex,
        downtime_nanos: u64,
    },
}

/// The resolved plan and the state of the fault machinery.
#[derive(Debug, Default)]
pub(crate) struct Injector {
    plan: Option<FaultPlan>,
    per_operation: Vec<Resolved>,
    nemesis: Vec<Resolved>,
    active: bool,
    /// BUGGIFY points seen so far and whether each is enabled for this run.
    buggify_points: BTreeMap<&'static str, bool>,
}

pub(crate) const MILLI: u64 = 1_000_000;

impl Injector {
    /// Resolves `plan` against the world's nodes and dependencies.
    pub(crate) fn new(
        plan: FaultPlan,
        nodes: &[Node],
        dependencies: &[DependencyEntry],
    ) -> Result<Self, SimError> {
        let mut injector = Injector {
            active: true,
            ..Injector::default()
        };
        for spec in &plan.specs {
            let resolved = resolve(spec, nodes, dependencies)?;
            if spec.fault.is_nemesis() {
                injector.nemesis.push(resolved);
            } else {
                injector.per_operation.push(resolved);
            }
        }
        injector.plan = Some(plan);
        Ok(injector)
    }

    pub(crate) fn plan(&self) -> Option<&FaultPlan> {
        self.plan.as_ref()
    }

    pub(crate) fn is_active(&self) -> bool {
        self.active
    }

    pub(crate) fn deactivate(&mut self) {
        self.active = false;
    }

    pub(crate) fn has_nemesis(&self) -> bool {
        !self.nemesis.is_empty()
    }

    fn active_for(&self, node: NodeIndex, elapsed_ms: u64) -> impl Iterator<Item = &Resolved> {
        let active = self.active;
        self.per_operation.iter().filter(move |r| {
            active
                && r.window.contains(elapsed_ms)
                && r.nodes.get(usize::from(node)).copied().unwrap_or(false)
        })
    }
}

fn resolve(
    spec: &FaultSpec,
    nodes: &[Node],
    dependencies: &[DependencyEntry],
) -> Result<Resolved, SimError> {
    let mask = match &spec.nodes {
        Nodes::All => vec![true; nodes.len()],
        Nodes::Named(names) => {
            for name in names {
                if !nodes.iter().any(|n| &*n.name == name) {
                    return Err(SimError::UnknownNode {
                        fault: spec.fault.label(),
                        node: name.clone(),
                    });
                }
            }
            nodes
                .iter()
                .map(|n| names.iter().any(|name| name == &*n.name))
                .collect()
        }
    };
    let dependency_name = match &spec.fault {
        Fault::Dependency { dependency, .. } | Fault::DependencyOutage { dependency, .. } => {
            dependency.clone()
        }
        Fault::Partition {
            peer: Peer::Dependency(name),
            ..
        } => Some(name.clone()),
        _ => None,
    };
    let dependency = match dependency_name {
        None => None,
        Some(name) => Some(dependency_index(dependencies, &name).ok_or(
            SimError::UnknownDependency {
                fault: spec.fault.label(),
                dependency: name,
            },
        )?),
    };
    Ok(Resolved {
        fault: spec.fault.clone(),
        window: spec.window,
        nodes: mask,
        dependency,
    })
}

/// The stream a nemesis spec draws from and its per-tick probability; `None` for
/// per-operation faults.
fn nemesis_draw(fault: &Fault) -> Option<(Draw, f64)> {
    match *fault {
        Fault::Partition {
            per_tick_probability,
            ..
        } => Some((Draw::Partition, per_tick_probability)),
        Fault::Crash {
            per_tick_probability,
            ..
        } => Some((Draw::Crash, per_tick_probability)),
        Fault::Pause {
            per_tick_probability,
            ..
        } => Some((Draw::Pause, per_tick_probability)),
        Fault::ClockSkew {
            per_tick_probability,
            ..
        } => Some((Draw::ClockSkew, per_tick_probability)),
        Fault::Rebalance {
            per_tick_probability,
        } => Some((Draw::Rebalance, per_tick_probability)),
        Fault::DependencyOutage {
            per_tick_probability,
            ..
        } => Some((Draw::Outage, per_tick_probability)),
        Fault::Store(_)
        | Fault::Bus(_)
        | Fault::Dependency { .. }
        | Fault::Lease(_)
        | Fault::Buggify { .. } => None,
    }
}

pub(crate) fn dependency_index(dependencies: &[DependencyEntry], name: &str) -> Option<u16> {
    dependencies
        .iter()
        .position(|d| &*d.name == name)
        .map(|i| u16::try_from(i).expect("dependency count fits u16"))
}

fn max_f(a: f64, b: f64) -> f64 {
    if b > a { b } else { a }
}

impl Kernel {
    fn elapsed_ms(&self) -> u64 {
        self.elapsed() / MILLI
    }

    /// A Bernoulli draw from `source`'s stream that consumes randomness only when the fault
    /// is possible.
    pub(crate) fn chance(&mut self, source: Source, probability: f64) -> bool {
        probability > 0.0 && self.draws.rng(source).random_bool(probability)
    }

    /// A uniform draw in `[min, max]` from `source`'s stream, consuming randomness only for a
    /// real range.
    pub(crate) fn uniform(&mut self, source: Source, min: u64, max: u64) -> u64 {
        if max <= min {
            min
        } else {
            self.draws.rng(source).random_range(min..=max)
        }
    }

    /// Records a failure that is not an injected fault — a dependency's inherent error —
    /// apart from the faults: in the report's `inherent_errors` and a trace line of its own.
    pub(crate) fn inherent_error(
        &mut self,
        node: Option<NodeIndex>,
        kind: &'static str,
        detail: String,
    ) {
        let name = node.map(|n| Arc::clone(&self.nodes[usize::from(n)].name));
        self.record(
            Tag::Inherent,
            node,
            hash_str(kind),
            hash_str(&detail),
            || format!("{kind} {detail} (its own error rate, not a fault)"),
        );
        self.inherent_errors.push(FaultRecord {
            at: Duration::from_nanos(self.elapsed()),
            node: name,
            kind,
            detail,
        });
    }

    /// Records a fault in the report and the trace.
    pub(crate) fn fault(&mut self, node: Option<NodeIndex>, kind: &'static str, detail: String) {
        let detail_hash = hash_str(&detail);
        let name = node.map(|n| Arc::clone(&self.nodes[usize::from(n)].name));
        self.record(Tag::Fault, node, hash_str(kind), detail_hash, || {
            format!("FAULT {kind} {detail}")
        });
        self.faults.push(FaultRecord {
            at: Duration::from_nanos(self.elapsed()),
            node: name,
            kind,
            detail,
        });
    }

    /// The store faults in force for `node` now (field-wise maximum over active specs).
    pub(crate) fn store_faults(&self, node: NodeIndex) -> StoreFaults {
        let mut out = StoreFaults::default();
        for r in self.injector.active_for(node, self.elapsed_ms()) {
            if let Fault::Store(s) = &r.fault {
                out.extra_latency_max_ms = out.extra_latency_max_ms.max(s.extra_latency_max_ms);
                out.transient_probability =
                    max_f(out.transient_probability, s.transient_probability);
                out.timeout_probability = max_f(out.timeout_probability, s.timeout_probability);
                out.commit_unknown_probability =
                    max_f(out.commit_unknown_probability, s.commit_unknown_probability);
            }
        }
        out
    }

    pub(crate) fn bus_faults(&self, node: NodeIndex) -> BusFaults {
        let mut out = BusFaults::default();
        for r in self.injector.active_for(node, self.elapsed_ms()) {
            if let Fault::Bus(b) = &r.fault {
                out.delivery_delay_max_ms = out.delivery_delay_max_ms.max(b.delivery_delay_max_ms);
                out.duplicate_probability =
                    max_f(out.duplicate_probability, b.duplicate_probability);
                out.reorder_probability = max_f(out.reorder_probability, b.reorder_probability);
                out.publish_error_probability =
                    max_f(out.publish_error_probability, b.publish_error_probability);
                out.publish_ack_lost_probability = max_f(
                    out.publish_ack_lost_probability,
                    b.publish_ack_lost_probability,
                );
                out.commit_lost_probability =
                    max_f(out.commit_lost_probability, b.commit_lost_probability);
            }
        }
        out
    }

    pub(crate) fn dependency_faults(&self, node: NodeIndex, dependency: u16) -> DependencyFaults {
        let mut out = DependencyFaults::default();
        for r in self.injector.active_for(node, self.elapsed_ms()) {
            if let Fault::Dependency { faults, .. } = &r.fault {
                if r.dependency.is_none_or(|d| d == dependency) {
                    out.slowdown_factor = max_f(out.slowdown_factor, faults.slowdown_factor);
                    out.error_probability = max_f(out.error_probability, faults.error_probability);
                    out.response_lost_probability = max_f(
                        out.response_lost_probability,
                        faults.response_lost_probability,
                    );
                }
            }
        }
        out
    }

    /// The lease faults in force for `node` now (field-wise maximum over active specs).
    pub(crate) fn lease_faults(&self, node: NodeIndex) -> LeaseFaults {
        let mut out = LeaseFaults::default();
        for r in self.injector.active_for(node, self.elapsed_ms()) {
            if let Fault::Lease(l) = &r.fault {
                out.loss_probability = max_f(out.loss_probability, l.loss_probability);
                out.zombie_max_ms = out.zombie_max_ms.max(l.zombie_max_ms);
            }
        }
        out
    }

    /// Whether the BUGGIFY point fires now. See [`Fault::Buggify`].
    fn buggify(&mut self, point: &'static str) -> bool {
        let Some(node) = self.current else {
            return false;
        };
        let spec = self
            .injector
            .active_for(node, self.elapsed_ms())
            .find_map(|r| match r.fault {
                Fault::Buggify {
                    enable_probability,
                    fire_probability,
                } => Some((enable_probability, fire_probability)),
                _ => None,
            });
        let Some((enable, fire)) = spec else {
            return false;
        };
        let enabled = match self.injector.buggify_points.get(point) {
            Some(&enabled) => enabled,
            None => {
                let enabled = self.chance(Draw::Buggify.global(), enable);
                self.injector.buggify_points.insert(point, enabled);
                enabled
            }
        };
        if enabled && self.chance(Draw::Buggify.of(node), fire) {
            self.fault(Some(node), "buggify", point.to_owned());
            return true;
        }
        false
    }

    /// One nemesis tick: each active nemesis spec may fire on one eligible node. Crashes
    /// are returned for the caller to carry out after unlocking.
    pub(crate) fn nemesis_tick(&mut self) -> Vec<NemesisAction> {
        let mut actions = Vec::new();
        if !self.injector.is_active() {
            return actions;
        }
        let elapsed_ms = self.elapsed_ms();
        let specs: Vec<Resolved> = self
            .injector
            .nemesis
            .iter()
            .filter(|r| r.window.contains(elapsed_ms))
            .cloned()
            .collect();
        for spec in specs {
            let Some((draw, probability)) = nemesis_draw(&spec.fault) else {
                continue;
            };
            if !self.chance(draw.global(), probability) {
                continue;
            }
            if let Some(action) = self.fire_nemesis(&spec, draw) {
                actions.push(action);
            }
        }
        actions
    }

    fn pick_node(
        &mut self,
        spec: &Resolved,
        draw: Draw,
        eligible: impl Fn(&Node) -> bool,
    ) -> Option<NodeIndex> {
        let candidates: Vec<NodeIndex> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| spec.nodes[*i] && eligible(n))
            .map(|(i, _)| NodeIndex::try_from(i).expect("node count fits u16"))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let i = self.uniform(draw.global(), 0, candidates.len() as u64 - 1);
        Some(candidates[usize::try_from(i).expect("index fits")])
    }

    /// Fires one nemesis spec; every draw it makes comes from `draw`, its kind's stream.
    fn fire_nemesis(&mut self, spec: &Resolved, draw: Draw) -> Option<NemesisAction> {
        let up = |n: &Node| n.status == NodeStatus::Up;
        match &spec.fault {
            Fault::Partition {
                peer,
                direction,
                min_duration_ms,
                max_duration_ms,
                ..
            } => {
                let node = self.pick_node(spec, draw, |n| n.status != NodeStatus::Crashed)?;
                let dependencies =
                    u16::try_from(self.env.dependencies.len()).expect("dependency count fits u16");
                let link = match peer {
                    Peer::EventStore => Link::Store,
                    Peer::EventBus => Link::Bus,
                    Peer::Dependency(_) => Link::Dependency(spec.dependency.expect("resolved")),
                    Peer::AnyDependency if dependencies == 0 => return None,
                    Peer::AnyDependency => Link::Dependency(
                        u16::try_from(self.uniform(draw.global(), 0, u64::from(dependencies) - 1))
                            .expect("fits"),
                    ),
                    Peer::Any => {
                        match self.uniform(draw.global(), 0, 1 + u64::from(dependencies)) {
                            0 => Link::Store,
                            1 => Link::Bus,
                            d => Link::Dependency(u16::try_from(d - 2).expect("fits")),
                        }
                    }
                };
                let duration = self.uniform(draw.global(), *min_duration_ms, *max_duration_ms);
                let id = self.network.partition(node, link, *direction);
                self.schedule(self.now + duration * MILLI, Control::HealPartition(id));
                let target = self.link_name(link);
                self.fault(
                    Some(node),
                    "network.partition",
                    format!("{direction:?} with {target} for {duration}ms (#{id})"),
                );
                None
            }
            Fault::Crash {
                min_downtime_ms,
                max_downtime_ms,
                ..
            } => {
                let node = self.pick_node(spec, draw, |n| {
                    n.options.crashable && n.status != NodeStatus::Crashed
                })?;
                let downtime = self.uniform(draw.global(), *min_downtime_ms, *max_downtime_ms);
                Some(NemesisAction::Crash {
                    node,
                    downtime_nanos: downtime * MILLI,
                })
            }
            Fault::Pause {
                min_duration_ms,
                max_duration_ms,
                ..
            } => {
                let node = self.pick_node(spec, draw, |n| n.options.pausable && up(n))?;
                let duration = self.uniform(draw.global(), *min_duration_ms, *max_duration_ms);
                self.pause_node(node, duration * MILLI);
                self.fault(Some(node), "node.pause", format!("for {duration}ms"));
                None
            }
            Fault::ClockSkew { max_skew_ms, .. } => {
                let node = self.pick_node(spec, draw, |n| n.options.clock_skew)?;
                let max = i64::try_from(*max_skew_ms).unwrap_or(i64::MAX / 2);
                let skew_ms = if max == 0 {
                    0
                } else {
                    self.draws.rng(draw.global()).random_range(-max..=max)
                };
                self.nodes[usize::from(node)].skew_nanos = skew_ms.saturating_mul(1_000_000);
                self.fault(Some(node), "clock.skew", format!("{skew_ms:+}ms"));
                None
            }
            Fault::Rebalance { .. } => {
                let node = self.pick_node(spec, draw, up)?;
                self.nodes[usize::from(node)].rebalance_epoch += 1;
                self.fault(
                    Some(node),
                    "bus.rebalance",
                    "subscriptions rejoin their groups".into(),
                );
                None
            }
            Fault::DependencyOutage {
                min_duration_ms,
                max_duration_ms,
                ..
            } => {
                let dependencies = u16::try_from(self.env.dependencies.len()).expect("fits");
                let dependency = match spec.dependency {
                    Some(d) => d,
                    None if dependencies == 0 => return None,
                    None => {
                        u16::try_from(self.uniform(draw.global(), 0, u64::from(dependencies) - 1))
                            .expect("fits")
                    }
                };
                let duration = self.uniform(draw.global(), *min_duration_ms, *max_duration_ms);
                let id = self.network.outage(dependency);
                self.schedule(self.now + duration * MILLI, Control::EndOutage(id));
                let name = Arc::clone(&self.env.dependencies[usize::from(dependency)].name);
                self.fault(
                    None,
                    "dependency.outage",
                    format!("{name} down for {duration}ms (#{id})"),
                );
                None
            }
            Fault::Store(_)
            | Fault::Bus(_)
            | Fault::Dependency { .. }
            | Fault::Lease(_)
            | Fault::Buggify { .. } => None,
        }
    }

    /// Pauses `node` for `nanos` (a later pause of the node supersedes this one's resume).
    pub(crate) fn pause_node(&mut self, node: NodeIndex, nanos: u64) {
        let n = &mut self.nodes[usize::from(node)];
        n.status = NodeStatus::Paused;
        n.pause_seq += 1;
        let seq = n.pause_seq;
        self.schedule(self.now + nanos, Control::Resume(node, seq));
    }

    pub(crate) fn link_name(&self, link: Link) -> String {
        match link {
            Link::Store => "event-store".into(),
            Link::Bus => "event-bus".into(),
            Link::Dependency(d) => self.env.dependencies[usize::from(d)].name.to_string(),
        }
    }
}

/// The BUGGIFY oracle installed on the simulator's thread for the length of a run.
pub(crate) struct SimOracle {
    pub(crate) shared: Arc<Shared>,
}

impl FaultOracle for SimOracle {
    fn should_fire(&self, point: &'static str) -> bool {
        self.shared.kernel.lock().buggify(point)
    }
}

pub(crate) fn install_oracle(shared: &Arc<Shared>) -> reprise_core::buggify::OracleGuard {
    reprise_core::buggify::install(Rc::new(SimOracle {
        shared: Arc::clone(shared),
    }))
}
