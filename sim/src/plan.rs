//! Fault plans: *which* faults a run injects, *when*, *how long* and *how likely* — as data.
//!
//! A plan is a list of [`FaultSpec`]s, each a [`Fault`] (with its intensities, units in the
//! field names), the nodes it targets and the time [`Window`] in which it is active. Plans
//! are plain serde values so that the `reprise-chaos` crate can name them (`calm`,
//! `partition-storm`, …), the CLI can print them, and a failing swarm run can be replayed
//! with the exact plan it drew.
//!
//! Two families of faults:
//! - **Per-operation** faults ([`Fault::Store`], [`Fault::Bus`], [`Fault::Dependency`],
//!   [`Fault::Lease`], [`Fault::Buggify`]) are probabilities drawn at each operation of a
//!   targeted node while the window is open.
//! - **Nemesis** faults ([`Fault::Partition`], [`Fault::Crash`], [`Fault::Pause`],
//!   [`Fault::ClockSkew`], [`Fault::Rebalance`], [`Fault::DependencyOutage`]) are events:
//!   at every nemesis tick ([`crate::SimConfig::nemesis_tick`]) each active spec fires with
//!   `per_tick_probability` on one targeted node, and lasts a duration drawn from its range.
//!
//! **Swarm testing** ([`FaultPlan::swarm`]): instead of one fixed mix, every seed draws its
//! own — each fault family is switched on or off at random and given random intensities.
//! Different mixes reach different corners (a plan with every fault at once rarely lets a
//! long saga finish; a plan with only duplicates finds dedup bugs fast). The drawn plan is
//! part of the [`crate::RunReport`].
//!
//! Faults stop at the end of the fault window whatever a spec's window says: the liveness
//! phase that follows runs healed.
//!
//! A resolved plan has no swarm options, so resolving it again is the identity (and draws
//! nothing): a run's reported plan, or a shrunk one ([`crate::shrink()`]), given back as the
//! plan replays the run hash for hash — also after [`FaultPlan::to_json`] /
//! [`FaultPlan::from_json`], whose float parsing is exact (`float_roundtrip`).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// A declarative fault plan. See the module docs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultPlan {
    /// The name a reproduction command uses (`--plan <name>`).
    pub name: String,
    /// The faults, in any order.
    #[serde(default)]
    pub specs: Vec<FaultSpec>,
    /// When set, each run draws its own fault mix on top of `specs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm: Option<SwarmOptions>,
}

/// How a swarm plan draws its per-seed mix.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwarmOptions {
    /// Chance that each fault family is switched on for a seed.
    pub family_probability: f64,
    /// Scales every drawn probability, in `(0, 1]`: 1 is the harshest mix.
    pub intensity: f64,
}

impl Default for SwarmOptions {
    fn default() -> Self {
        SwarmOptions {
            family_probability: 0.5,
            intensity: 1.0,
        }
    }
}

/// One fault, whom it targets, and when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultSpec {
    pub fault: Fault,
    #[serde(default)]
    pub nodes: Nodes,
    #[serde(default)]
    pub window: Window,
}

/// Which nodes a fault may hit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Nodes {
    /// Every node (nemesis faults respect [`crate::NodeOptions`]: only crashable nodes
    /// crash, and so on).
    #[default]
    All,
    /// Only these nodes, by name.
    Named(Vec<String>),
}

/// When a spec is active, relative to the start of the run. Always clipped to the fault
/// window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start_ms: u64,
    /// `None`: until the end of the fault window.
    pub end_ms: Option<u64>,
}

impl Window {
    pub(crate) fn contains(&self, elapsed_ms: u64) -> bool {
        elapsed_ms >= self.start_ms && self.end_ms.is_none_or(|end| elapsed_ms < end)
    }
}

/// Where a partition cuts a node off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Peer {
    EventStore,
    EventBus,
    /// One named external service.
    Dependency(String),
    /// A dependency drawn at random when the fault fires.
    AnyDependency,
    /// The store, the bus or a dependency, drawn at random when the fault fires.
    Any,
}

/// Which way a partition drops traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// Nothing gets through.
    Both,
    /// Requests from the node are lost: nothing is applied, the caller times out.
    Outbound,
    /// Responses to the node are lost: requests *are applied*, the caller times out
    /// (the network's version of commit-unknown).
    Inbound,
}

/// Event-store faults for each operation of a targeted node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreFaults {
    /// Extra latency added to an operation, drawn uniformly from `0..=extra_latency_max_ms`.
    pub extra_latency_max_ms: u64,
    /// The store refuses the operation (nothing applied, [`reprise_core::StoreError::Transient`]).
    pub transient_probability: f64,
    /// The request is lost (nothing applied); the caller gets `Timeout` after the timeout.
    pub timeout_probability: f64,
    /// An append is applied but its acknowledgement is lost: `Timeout` after the timeout.
    pub commit_unknown_probability: f64,
}

/// Event-bus faults for each operation of a targeted node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BusFaults {
    /// Extra delay before a delivery is handed over, uniform in `0..=delivery_delay_max_ms`.
    pub delivery_delay_max_ms: u64,
    /// A delivery is handed over twice (at-least-once redelivery).
    pub duplicate_probability: f64,
    /// A delivery is held back and a later one (usually of another partition) goes first.
    pub reorder_probability: f64,
    /// A publish is refused (nothing applied, `Transient`).
    pub publish_error_probability: f64,
    /// A publish is applied but its acknowledgement is lost (`Timeout`): a producer retry
    /// duplicates the messages.
    pub publish_ack_lost_probability: f64,
    /// An offset commit is acknowledged but silently lost: the work is redelivered after
    /// the next rebalance or crash.
    pub commit_lost_probability: f64,
}

/// External-service faults for each call of a targeted node.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DependencyFaults {
    /// Multiplies the service's latency (`>= 1`).
    pub slowdown_factor: f64,
    /// The call fails without effect (`DependencyError::Failed`).
    pub error_probability: f64,
    /// The call is applied but the response is lost (`DependencyError::Timeout`).
    pub response_lost_probability: f64,
}

impl Default for DependencyFaults {
    fn default() -> Self {
        DependencyFaults {
            slowdown_factor: 1.0,
            error_probability: 0.0,
            response_lost_probability: 0.0,
        }
    }
}

/// Lease faults for each [`confirm`](reprise_core::Leadership::confirm) of a targeted
/// node's leadership (see `sim/src/lease.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaseFaults {
    /// The lease is taken from its holder (freed at once: another contender may acquire
    /// it), while the holder is not told yet.
    pub loss_probability: f64,
    /// After a loss, the old holder's confirms keep succeeding for a duration drawn
    /// uniformly from `0..=zombie_max_ms` of simulated time (two leaders at once), then
    /// report [`reprise_core::LeaseError::Lost`].
    pub zombie_max_ms: u64,
}

/// One kind of fault with its intensities. See the module docs for the two families.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Fault {
    Store(StoreFaults),
    Bus(BusFaults),
    Dependency {
        /// `None`: every dependency.
        dependency: Option<String>,
        faults: DependencyFaults,
    },
    /// Lease loss with a zombie window: see [`LeaseFaults`].
    Lease(LeaseFaults),
    /// BUGGIFY points in framework code ([`buggify`](fn@reprise_core::buggify)): each point seen is
    /// enabled for the run with `enable_probability` (FoundationDB's trick: a point that
    /// fires everywhere at once hides the interesting interleavings), then fires with
    /// `fire_probability` each time it is reached.
    Buggify {
        enable_probability: f64,
        fire_probability: f64,
    },
    Partition {
        peer: Peer,
        direction: Direction,
        per_tick_probability: f64,
        min_duration_ms: u64,
        max_duration_ms: u64,
    },
    /// The node crashes (tasks and volatile state dropped) and reboots after the downtime.
    Crash {
        per_tick_probability: f64,
        min_downtime_ms: u64,
        max_downtime_ms: u64,
    },
    /// The node stops being scheduled (a GC pause, a frozen VM), then resumes.
    Pause {
        per_tick_probability: f64,
        min_duration_ms: u64,
        max_duration_ms: u64,
    },
    /// The node's clock jumps to an offset in `-max_skew_ms..=max_skew_ms` from true time.
    ClockSkew {
        per_tick_probability: f64,
        max_skew_ms: u64,
    },
    /// The node's bus subscriptions leave and rejoin their groups: partitions move and
    /// uncommitted work is redelivered.
    Rebalance {
        per_tick_probability: f64,
    },
    /// A dependency is down for everyone.
    DependencyOutage {
        /// `None`: one drawn at random when the fault fires.
        dependency: Option<String>,
        per_tick_probability: f64,
        min_duration_ms: u64,
        max_duration_ms: u64,
    },
}

impl Fault {
    /// Whether this fault is driven by nemesis ticks (rather than per operation).
    #[must_use]
    pub fn is_nemesis(&self) -> bool {
        matches!(
            self,
            Fault::Partition { .. }
                | Fault::Crash { .. }
                | Fault::Pause { .. }
                | Fault::ClockSkew { .. }
                | Fault::Rebalance { .. }
                | Fault::DependencyOutage { .. }
        )
    }

    /// A short name for messages.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Fault::Store(_) => "store",
            Fault::Bus(_) => "bus",
            Fault::Dependency { .. } => "dependency",
            Fault::Lease(_) => "lease",
            Fault::Buggify { .. } => "buggify",
            Fault::Partition { .. } => "partition",
            Fault::Crash { .. } => "crash",
            Fault::Pause { .. } => "pause",
            Fault::ClockSkew { .. } => "clock-skew",
            Fault::Rebalance { .. } => "rebalance",
            Fault::DependencyOutage { .. } => "dependency-outage",
        }
    }
}

/// Why a plan was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{fault}: {field} = {value} is not a probability in [0, 1]")]
    Probability {
        fault: &'static str,
        field: &'static str,
        value: String,
    },
    #[error("{fault}: minimum {min} ms exceeds maximum {max} ms")]
    Range {
        fault: &'static str,
        min: u64,
        max: u64,
    },
    #[error("{fault}: {message}")]
    Invalid {
        fault: &'static str,
        message: String,
    },
    #[error("window [{start_ms} ms, {end_ms} ms) is empty")]
    EmptyWindow { start_ms: u64, end_ms: u64 },
    #[error("fault {fault} names no nodes (use Nodes::All)")]
    NoNodes { fault: &'static str },
    #[error("the plan has no name")]
    Unnamed,
    #[error("could not read the plan: {0}")]
    Parse(String),
}

fn probability(fault: &'static str, field: &'static str, value: f64) -> Result<(), PlanError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(PlanError::Probability {
            fault,
            field,
            value: value.to_string(),
        })
    }
}

fn range(fault: &'static str, min: u64, max: u64) -> Result<(), PlanError> {
    if min <= max {
        Ok(())
    } else {
        Err(PlanError::Range { fault, min, max })
    }
}

impl FaultSpec {
    /// `fault` on every node for the whole fault window.
    #[must_use]
    pub fn new(fault: Fault) -> Self {
        FaultSpec {
            fault,
            nodes: Nodes::All,
            window: Window::default(),
        }
    }

    /// Restricts the fault to the named nodes.
    #[must_use]
    pub fn on_nodes<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.nodes = Nodes::Named(nodes.into_iter().map(Into::into).collect());
        self
    }

    /// Restricts the fault to `[start_ms, end_ms)` of the run.
    #[must_use]
    pub fn during(mut self, start_ms: u64, end_ms: u64) -> Self {
        self.window = Window {
            start_ms,
            end_ms: Some(end_ms),
        };
        self
    }

    /// Active from `start_ms` to the end of the fault window.
    #[must_use]
    pub fn from_ms(mut self, start_ms: u64) -> Self {
        self.window = Window {
            start_ms,
            end_ms: None,
        };
        self
    }

    /// Checks every probability, range and window.
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self) -> Result<(), PlanError> {
        let label = self.fault.label();
        if let Some(end_ms) = self.window.end_ms {
            if end_ms <= self.window.start_ms {
                return Err(PlanError::EmptyWindow {
                    start_ms: self.window.start_ms,
                    end_ms,
                });
            }
        }
        if matches!(&self.nodes, Nodes::Named(names) if names.is_empty()) {
            return Err(PlanError::NoNodes { fault: label });
        }
        match &self.fault {
            Fault::Store(s) => {
                probability(label, "transient_probability", s.transient_probability)?;
                probability(label, "timeout_probability", s.timeout_probability)?;
                probability(
                    label,
                    "commit_unknown_probability",
                    s.commit_unknown_probability,
                )?;
                let total =
                    s.transient_probability + s.timeout_probability + s.commit_unknown_probability;
                if total > 1.0 {
                    return Err(PlanError::Invalid {
                        fault: label,
                        message: format!("the outcome probabilities add up to {total} > 1"),
                    });
                }
            }
            Fault::Bus(b) => {
                probability(label, "duplicate_probability", b.duplicate_probability)?;
                probability(label, "reorder_probability", b.reorder_probability)?;
                probability(
                    label,
                    "publish_error_probability",
                    b.publish_error_probability,
                )?;
                probability(
                    label,
                    "publish_ack_lost_probability",
                    b.publish_ack_lost_probability,
                )?;
                probability(label, "commit_lost_probability", b.commit_lost_probability)?;
                if b.publish_error_probability + b.publish_ack_lost_probability > 1.0 {
                    return Err(PlanError::Invalid {
                        fault: label,
                        message: "publish outcome probabilities add up to more than 1".into(),
                    });
                }
            }
            Fault::Dependency { faults, .. } => {
                probability(label, "error_probability", faults.error_probability)?;
                probability(
                    label,
                    "response_lost_probability",
                    faults.response_lost_probability,
                )?;
                if faults.error_probability + faults.response_lost_probability > 1.0 {
                    return Err(PlanError::Invalid {
                        fault: label,
                        message: "outcome probabilities add up to more than 1".into(),
                    });
                }
                if !(faults.slowdown_factor >= 1.0 && faults.slowdown_factor <= 1000.0) {
                    return Err(PlanError::Invalid {
                        fault: label,
                        message: format!(
                            "slowdown_factor {} is not in [1, 1000]",
                            faults.slowdown_factor
                        ),
                    });
                }
            }
            Fault::Lease(l) => {
                probability(label, "loss_probability", l.loss_probability)?;
            }
            Fault::Buggify {
                enable_probability,
                fire_probability,
            } => {
                probability(label, "enable_probability", *enable_probability)?;
                probability(label, "fire_probability", *fire_probability)?;
            }
            Fault::Partition {
                per_tick_probability,
                min_duration_ms,
                max_duration_ms,
                ..
            }
            | Fault::Pause {
                per_tick_probability,
                min_duration_ms,
                max_duration_ms,
            }
            | Fault::DependencyOutage {
                per_tick_probability,
                min_duration_ms,
                max_duration_ms,
                ..
            } => {
                probability(label, "per_tick_probability", *per_tick_probability)?;
                range(label, *min_duration_ms, *max_duration_ms)?;
            }
            Fault::Crash {
                per_tick_probability,
                min_downtime_ms,
                max_downtime_ms,
            } => {
                probability(label, "per_tick_probability", *per_tick_probability)?;
                range(label, *min_downtime_ms, *max_downtime_ms)?;
            }
            Fault::ClockSkew {
                per_tick_probability,
                ..
            }
            | Fault::Rebalance {
                per_tick_probability,
            } => {
                probability(label, "per_tick_probability", *per_tick_probability)?;
            }
        }
        Ok(())
    }
}

impl FaultPlan {
    /// A named plan without faults; add some with [`FaultPlan::with`].
    #[must_use]
    pub fn named(name: impl Into<String>) -> Self {
        FaultPlan {
            name: name.into(),
            specs: Vec::new(),
            swarm: None,
        }
    }

    /// No faults at all.
    #[must_use]
    pub fn calm() -> Self {
        Self::named("calm")
    }

    /// Swarm mode with the default options: each seed draws its own fault mix.
    #[must_use]
    pub fn swarm() -> Self {
        FaultPlan {
            name: "swarm".into(),
            specs: Vec::new(),
            swarm: Some(SwarmOptions::default()),
        }
    }

    /// Adds a fault.
    #[must_use]
    pub fn with(mut self, spec: FaultSpec) -> Self {
        self.specs.push(spec);
        self
    }

    /// Turns on swarm mode with `options`.
    #[must_use]
    pub fn with_swarm(mut self, options: SwarmOptions) -> Self {
        self.swarm = Some(options);
        self
    }

    /// Checks every spec.
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.name.trim().is_empty() {
            return Err(PlanError::Unnamed);
        }
        if let Some(swarm) = self.swarm {
            probability("swarm", "family_probability", swarm.family_probability)?;
            if !(swarm.intensity > 0.0 && swarm.intensity <= 1.0) {
                return Err(PlanError::Invalid {
                    fault: "swarm",
                    message: format!("intensity {} is not in (0, 1]", swarm.intensity),
                });
            }
        }
        self.specs.iter().try_for_each(FaultSpec::validate)
    }

    /// Reads a plan from JSON and validates it.
    ///
    /// # Errors
    /// [`PlanError::Parse`] or a validation error.
    pub fn from_json(text: &str) -> Result<Self, PlanError> {
        let plan: FaultPlan =
            serde_json::from_str(text).map_err(|e| PlanError::Parse(e.to_string()))?;
        plan.validate()?;
        Ok(plan)
    }

    /// The plan as pretty JSON.
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plans contain only serializable data")
    }

    /// The concrete plan for one run: the fixed specs plus, in swarm mode, the mix this
    /// run's `rng` draws. The result has no swarm options left.
    pub(crate) fn resolve(&self, rng: &mut ChaCha8Rng) -> FaultPlan {
        let mut specs = self.specs.clone();
        if let Some(swarm) = self.swarm {
            specs.extend(draw_swarm(swarm, rng));
        }
        FaultPlan {
            name: self.name.clone(),
            specs,
            swarm: None,
        }
    }
}

/// Draws a swarm mix. Ranges are chosen so that the harshest draw still lets a
/// well-written service make progress between faults.
fn draw_swarm(options: SwarmOptions, rng: &mut ChaCha8Rng) -> Vec<FaultSpec> {
    let i = options.intensity;
    let on = |rng: &mut ChaCha8Rng| rng.random_bool(options.family_probability);
    let p = |rng: &mut ChaCha8Rng, max: f64| rng.random_range(0.0..=max) * i;
    let mut specs = Vec::new();
    if on(rng) {
        specs.push(FaultSpec::new(Fault::Store(StoreFaults {
            extra_latency_max_ms: rng.random_range(0..=50),
            transient_probability: p(rng, 0.05),
            timeout_probability: p(rng, 0.03),
            commit_unknown_probability: p(rng, 0.03),
        })));
    }
    if on(rng) {
        specs.push(FaultSpec::new(Fault::Bus(BusFaults {
            delivery_delay_max_ms: rng.random_range(0..=100),
            duplicate_probability: p(rng, 0.1),
            reorder_probability: p(rng, 0.1),
            publish_error_probability: p(rng, 0.05),
            publish_ack_lost_probability: p(rng, 0.03),
            commit_lost_probability: p(rng, 0.1),
        })));
    }
    if on(rng) {
        specs.push(FaultSpec::new(Fault::Dependency {
            dependency: None,
            faults: DependencyFaults {
                slowdown_factor: rng.random_range(1.0..=5.0),
                error_probability: p(rng, 0.1),
                response_lost_probability: p(rng, 0.05),
            },
        }));
    }
    if on(rng) {
        specs.push(FaultSpec::new(Fault::Buggify {
            enable_probability: 0.25,
            fire_probability: p(rng, 0.2),
        }));
    }
    if on(rng) {
        specs.push(FaultSpec::new(Fault::Partition {
            peer: Peer::Any,
            direction: [Direction::Both, Direction::Outbound, Direction::Inbound]
                [rng.random_range(0..3)],
            per_tick_probability: p(rng, 0.1),
            min_duration_ms: 50,
            max_duration_ms: rng.random_range(100..=2_000),
        }));
    }
    if on(rng) {
        specs.push(FaultSpec::new(Fault::Crash {
            per_tick_probability: p(rng, 0.05),
            min_downtime_ms: 10,
            max_downtime_ms: rng.random_range(50..=2_000),
        }));
    }
    if on(rng) {
        specs.push(FaultSpec::new(Fault::Pause {
            per_tick_probability: p(rng, 0.05),
            min_duration_ms: 10,
            max_duration_ms: rng.random_range(50..=1_000),
        }));
    }
    if on(rng) {
        specs.push(FaultSpec::new(Fault::ClockSkew {
            per_tick_probability: p(rng, 0.05),
            max_skew_ms: rng.random_range(1..=5_000),
        }));
    }
    if on(rng) {
        specs.push(FaultSpec::new(Fault::Rebalance {
            per_tick_probability: p(rng, 0.1),
        }));
    }
    if on(rng) {
        specs.push(FaultSpec::new(Fault::DependencyOutage {
            dependency: None,
            per_tick_probability: p(rng, 0.03),
            min_duration_ms: 100,
            max_duration_ms: rng.random_range(200..=3_000),
        }));
    }
    // Drawn last, so the families above draw what they drew before leases existed.
    if on(rng) {
        specs.push(FaultSpec::new(Fault::Lease(LeaseFaults {
            loss_probability: p(rng, 0.05),
            zombie_max_ms: rng.random_range(0..=500),
        })));
    }
    specs
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn validation_refuses_bad_probabilities_ranges_and_windows() {
        let bad = FaultSpec::new(Fault::Store(StoreFaults {
            transient_probability: 1.5,
            ..StoreFaults::default()
        }));
        assert!(matches!(
            bad.validate(),
            Err(PlanError::Probability {
                field: "transient_probability",
                ..
            })
        ));
        let bad = FaultSpec::new(Fault::Crash {
            per_tick_probability: 0.1,
            min_downtime_ms: 10,
            max_downtime_ms: 5,
        });
        assert_eq!(
            bad.validate(),
            Err(PlanError::Range {
                fault: "crash",
                min: 10,
                max: 5
            })
        );
        let bad = FaultSpec::new(Fault::Rebalance {
            per_tick_probability: 0.1,
        })
        .during(10, 10);
        assert!(matches!(bad.validate(), Err(PlanError::EmptyWindow { .. })));
        let bad = FaultSpec::new(Fault::Rebalance {
            per_tick_probability: f64::NAN,
        });
        assert!(bad.validate().is_err());
        let empty: [&str; 0] = [];
        let bad = FaultSpec::new(Fault::Rebalance {
            per_tick_probability: 0.1,
        })
        .on_nodes(empty);
        assert!(matches!(bad.validate(), Err(PlanError::NoNodes { .. })));
        let bad = FaultSpec::new(Fault::Lease(LeaseFaults {
            loss_probability: -0.1,
            zombie_max_ms: 100,
        }));
        assert!(matches!(
            bad.validate(),
            Err(PlanError::Probability {
                fault: "lease",
                field: "loss_probability",
                ..
            })
        ));
    }

    #[test]
    fn plans_round_trip_through_json() {
        let plan = FaultPlan::named("storm")
            .with(
                FaultSpec::new(Fault::Partition {
                    peer: Peer::EventBus,
                    direction: Direction::Inbound,
                    per_tick_probability: 0.2,
                    min_duration_ms: 10,
                    max_duration_ms: 100,
                })
                .on_nodes(["a"])
                .during(0, 500),
            )
            .with_swarm(SwarmOptions::default());
        let back = FaultPlan::from_json(&plan.to_json()).expect("valid plan");
        assert_eq!(back, plan);
        assert!(matches!(
            FaultPlan::from_json("{"),
            Err(PlanError::Parse(_))
        ));
    }

    #[test]
    fn resolving_a_resolved_plan_is_the_identity() {
        // What lets a swarm run's reported plan (or a shrunk plan) replay that run: with
        // no swarm options left, resolving draws nothing and keeps every spec.
        for seed in 0..200 {
            let resolved = FaultPlan::swarm().resolve(&mut ChaCha8Rng::seed_from_u64(seed));
            assert!(resolved.swarm.is_none());
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xdead_beef);
            let before = rng.clone();
            assert_eq!(resolved.resolve(&mut rng), resolved);
            assert_eq!(rng, before, "resolving a resolved plan draws nothing");
        }
    }

    #[test]
    fn drawn_plans_round_trip_through_json_exactly() {
        // Drawn probabilities use every bit of an f64; `float_roundtrip` makes the parser
        // give back the very same value, so a plan file replays the run it came from.
        for seed in 0..500 {
            let resolved = FaultPlan::swarm().resolve(&mut ChaCha8Rng::seed_from_u64(seed));
            let back = FaultPlan::from_json(&resolved.to_json()).expect("valid");
            assert_eq!(back, resolved, "seed {seed}");
        }
    }

    #[test]
    fn swarm_draws_differ_by_seed_and_repeat_by_seed() {
        let draw = |seed| FaultPlan::swarm().resolve(&mut ChaCha8Rng::seed_from_u64(seed));
        assert_eq!(draw(3), draw(3));
        let distinct: std::collections::BTreeSet<String> =
            (0..20).map(|s| draw(s).to_json()).collect();
        assert!(distinct.len() > 10, "swarm mixes should vary across seeds");
        for seed in 0..50 {
            draw(seed)
                .validate()
                .expect("every swarm draw is a valid plan");
        }
        let leases = (0..50)
            .filter(|&s| {
                draw(s)
                    .specs
                    .iter()
                    .any(|spec| matches!(spec.fault, Fault::Lease(_)))
            })
            .count();
        assert!(
            (10..=40).contains(&leases),
            "the lease family is drawn like the others: {leases}/50"
        );
    }
}
