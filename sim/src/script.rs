//! Scripted faults: one exact fault at one exact moment, beside (or instead of) a plan's
//! random ones — the surface turmoil and FoundationDB users know, on this executor.
//!
//! ```no_run
//! # use std::time::Duration;
//! # use reprise_sim::{Action, DependencyOptions, Direction, NodeOptions, Peer, ScenarioRun, World};
//! # fn boot_orders(_: reprise_sim::NodeContext) {}
//! # fn my_checks() -> Box<dyn ScenarioRun> { unimplemented!() }
//! # struct S;
//! # impl S {
//! fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
//!     world.add_node("orders", NodeOptions::default(), boot_orders);
//!     world.add_dependency("payments", DependencyOptions::default());
//!     let ms = Duration::from_millis;
//!     world.at(ms(200)).crash("orders");                 // down until restarted
//!     world.at(ms(900)).restart("orders");
//!     world.at(ms(300)).partition("orders", Peer::EventBus, Direction::Inbound);
//!     world.at(ms(600)).repair("orders");
//!     world.at(ms(400)).dependency_down("payments", ms(1_000));
//!     world.schedule(ms(500), Action::Pause { node: "orders".into(), duration: ms(50) });
//!     my_checks()
//! }
//! # }
//! ```
//!
//! Each action runs at its simulated time (relative to the start of the run) as a control
//! of the run loop, between task steps, and is recorded as a fault whose kind starts with
//! `script.` (`script.crash`, `script.partition`, …) — in the report's fault list and in
//! the trace. An action that finds nothing to act on (crashing a node that is already
//! down, pausing a crashed node) leaves a `skipped` trace line instead.
//!
//! Scripted actions belong to the fault phase:
//! - each must be scheduled before [`crate::SimConfig::fault_window`] ends (the run refuses
//!   to start otherwise: the liveness phase runs healed);
//! - while one is still pending the fault phase does not end early (neither
//!   [`crate::SimConfig::settle_early`] nor a quiescent system skips it);
//! - the liveness phase's heal undoes them like the plan's faults: partitions and outages
//!   end, paused nodes resume, crashed nodes reboot.
//!
//! Scripted actions draw no randomness: adding one changes the run only from its moment
//! on (and through what it does).
//!
//! A script names nodes and dependencies; the names are checked when the run starts
//! ([`crate::SimError::UnknownNode`], [`crate::SimError::UnknownDependency`]). Explicit
//! actions ignore [`crate::NodeOptions`]: a script may crash a node the nemesis may not.

use std::sync::Arc;
use std::time::Duration;

use crate::executor::{Control, Kernel, NodeIndex, Shared};
use crate::faults::dependency_index;
use crate::network::Link;
use crate::plan::{Direction, Peer};
use crate::run::SimError;
use crate::trace::{Tag, hash_str};
use crate::world::{self, NodeStatus, World};

/// One scripted action. See the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// The node crashes (tasks and volatile state dropped). It reboots after
    /// `restart_after`, or — with `None` — stays down until an [`Action::Restart`] or the
    /// liveness phase's heal.
    Crash {
        node: String,
        restart_after: Option<Duration>,
    },
    /// The node restarts: a crashed node reboots; a running (or paused) one crashes and
    /// reboots at once.
    Restart { node: String },
    /// The node stops being scheduled for `duration` (a later pause supersedes it).
    Pause { node: String, duration: Duration },
    /// Cuts the node off from `peer` in `direction`, for `duration` or — with `None` —
    /// until an [`Action::Repair`]/[`Action::RepairAll`] or the liveness phase's heal.
    /// [`Peer::AnyDependency`] cuts every dependency and [`Peer::Any`] everything (the
    /// store, the bus and every dependency): a script draws nothing.
    Partition {
        node: String,
        peer: Peer,
        direction: Direction,
        duration: Option<Duration>,
    },
    /// Heals every partition of the node (scripted or not).
    Repair { node: String },
    /// Heals every partition (outages stay: see [`Action::DependencyUp`]).
    RepairAll,
    /// The dependency is down for everyone, for `duration` or — with `None` — until an
    /// [`Action::DependencyUp`] or the liveness phase's heal.
    DependencyDown {
        dependency: String,
        duration: Option<Duration>,
    },
    /// Ends every outage of the dependency (scripted or not).
    DependencyUp { dependency: String },
    /// The node's clock reads `skew_ms` off true time from now on.
    ClockSkew { node: String, skew_ms: i64 },
    /// The node's bus subscriptions leave and rejoin their groups.
    Rebalance { node: String },
}

impl Action {
    /// The fault kind the action is recorded under: `script.crash`, …
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Crash { .. } => "script.crash",
            Action::Restart { .. } => "script.restart",
            Action::Pause { .. } => "script.pause",
            Action::Partition { .. } => "script.partition",
            Action::Repair { .. } => "script.repair",
            Action::RepairAll => "script.repair_all",
            Action::DependencyDown { .. } => "script.dependency_down",
            Action::DependencyUp { .. } => "script.dependency_up",
            Action::ClockSkew { .. } => "script.clock_skew",
            Action::Rebalance { .. } => "script.rebalance",
        }
    }

    fn node(&self) -> Option<&str> {
        match self {
            Action::Crash { node, .. }
            | Action::Restart { node }
            | Action::Pause { node, .. }
            | Action::Partition { node, .. }
            | Action::Repair { node }
            | Action::ClockSkew { node, .. }
            | Action::Rebalance { node } => Some(node),
            Action::RepairAll | Action::DependencyDown { .. } | Action::DependencyUp { .. } => None,
        }
    }
}

/// Schedules actions at one moment: `world.at(t).crash("a").partition("b", …)`. Made by
/// [`World::at`].
#[derive(Debug)]
pub struct ScriptAt<'w> {
    pub(crate) world: &'w mut World,
    pub(crate) at: Duration,
}

impl ScriptAt<'_> {
    fn push(&mut self, action: Action) -> &mut Self {
        self.world.schedule(self.at, action);
        self
    }

    /// [`Action::Crash`] until restarted (or healed).
    pub fn crash(&mut self, node: &str) -> &mut Self {
        self.push(Action::Crash {
            node: node.into(),
            restart_after: None,
        })
    }

    /// [`Action::Crash`], rebooting after `downtime`.
    pub fn crash_for(&mut self, node: &str, downtime: Duration) -> &mut Self {
        self.push(Action::Crash {
            node: node.into(),
            restart_after: Some(downtime),
        })
    }

    /// [`Action::Restart`].
    pub fn restart(&mut self, node: &str) -> &mut Self {
        self.push(Action::Restart { node: node.into() })
    }

    /// [`Action::Pause`].
    pub fn pause(&mut self, node: &str, duration: Duration) -> &mut Self {
        self.push(Action::Pause {
            node: node.into(),
            duration,
        })
    }

    /// [`Action::Partition`] until repaired (or healed).
    pub fn partition(&mut self, node: &str, peer: Peer, direction: Direction) -> &mut Self {
        self.push(Action::Partition {
            node: node.into(),
            peer,
            direction,
            duration: None,
        })
    }

    /// [`Action::Partition`] for `duration`.
    pub fn partition_for(
        &mut self,
        node: &str,
        peer: Peer,
        direction: Direction,
        duration: Duration,
    ) -> &mut Self {
        self.push(Action::Partition {
            node: node.into(),
            peer,
            direction,
            duration: Some(duration),
        })
    }

    /// [`Action::Repair`].
    pub fn repair(&mut self, node: &str) -> &mut Self {
        self.push(Action::Repair { node: node.into() })
    }

    /// [`Action::RepairAll`].
    pub fn repair_all(&mut self) -> &mut Self {
        self.push(Action::RepairAll)
    }

    /// [`Action::DependencyDown`] for `duration`.
    pub fn dependency_down(&mut self, dependency: &str, duration: Duration) -> &mut Self {
        self.push(Action::DependencyDown {
            dependency: dependency.into(),
            duration: Some(duration),
        })
    }

    /// [`Action::DependencyDown`] until [`dependency_up`](Self::dependency_up) (or healed).
    pub fn dependency_down_until_up(&mut self, dependency: &str) -> &mut Self {
        self.push(Action::DependencyDown {
            dependency: dependency.into(),
            duration: None,
        })
    }

    /// [`Action::DependencyUp`].
    pub fn dependency_up(&mut self, dependency: &str) -> &mut Self {
        self.push(Action::DependencyUp {
            dependency: dependency.into(),
        })
    }

    /// [`Action::ClockSkew`].
    pub fn skew_clock(&mut self, node: &str, skew_ms: i64) -> &mut Self {
        self.push(Action::ClockSkew {
            node: node.into(),
            skew_ms,
        })
    }

    /// [`Action::Rebalance`].
    pub fn rebalance(&mut self, node: &str) -> &mut Self {
        self.push(Action::Rebalance { node: node.into() })
    }
}

/// An action resolved against the world.
#[derive(Clone, Debug)]
enum Step {
    Crash {
        node: NodeIndex,
        restart_after: Option<u64>,
    },
    Restart(NodeIndex),
    Pause {
        node: NodeIndex,
        nanos: u64,
    },
    Partition {
        node: NodeIndex,
        links: Vec<Link>,
        direction: Direction,
        nanos: Option<u64>,
    },
    Repair(NodeIndex),
    RepairAll,
    DependencyDown {
        dependency: u16,
        nanos: Option<u64>,
    },
    DependencyUp(u16),
    ClockSkew {
        node: NodeIndex,
        skew_ms: i64,
    },
    Rebalance(NodeIndex),
}

/// The world's script: actions as scheduled, then as resolved when the run starts.
#[derive(Debug, Default)]
pub(crate) struct Script {
    scheduled: Vec<(Duration, Action)>,
    steps: Vec<(&'static str, Step)>,
}

impl Script {
    pub(crate) fn push(&mut self, at: Duration, action: Action) {
        self.scheduled.push((at, action));
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Kernel {
    /// Resolves the scheduled actions and schedules each as a control.
    pub(crate) fn resolve_script(&mut self, fault_window: Duration) -> Result<(), SimError> {
        let scheduled = std::mem::take(&mut self.script.scheduled);
        for (at, action) in scheduled {
            let kind = action.kind();
            if at >= fault_window {
                return Err(SimError::Config(format!(
                    "{kind} at {at:?} is not inside the fault window ({fault_window:?}): the liveness phase runs healed"
                )));
            }
            let node = match action.node() {
                None => 0,
                Some(name) => self
                    .nodes
                    .iter()
                    .position(|n| &*n.name == name)
                    .map(|i| NodeIndex::try_from(i).expect("node count fits u16"))
                    .ok_or_else(|| SimError::UnknownNode {
                        fault: kind,
                        node: name.to_owned(),
                    })?,
            };
            let dependency = |name: &str| {
                dependency_index(&self.env.dependencies, name).ok_or_else(|| {
                    SimError::UnknownDependency {
                        fault: kind,
                        dependency: name.to_owned(),
                    }
                })
            };
            let step = match action {
                Action::Crash { restart_after, .. } => Step::Crash {
                    node,
                    restart_after: restart_after.map(nanos),
                },
                Action::Restart { .. } => Step::Restart(node),
                Action::Pause { duration, .. } => Step::Pause {
                    node,
                    nanos: nanos(duration),
                },
                Action::Partition {
                    peer,
                    direction,
                    duration,
                    ..
                } => {
                    let every_dependency = (0..self.env.dependencies.len())
                        .map(|d| Link::Dependency(u16::try_from(d).expect("fits")));
                    let links = match peer {
                        Peer::EventStore => vec![Link::Store],
                        Peer::EventBus => vec![Link::Bus],
                        Peer::Dependency(name) => vec![Link::Dependency(dependency(&name)?)],
                        Peer::AnyDependency => every_dependency.collect(),
                        Peer::Any => [Link::Store, Link::Bus]
                            .into_iter()
                            .chain(every_dependency)
                            .collect(),
                    };
                    Step::Partition {
                        node,
                        links,
                        direction,
                        nanos: duration.map(nanos),
                    }
                }
                Action::Repair { .. } => Step::Repair(node),
                Action::RepairAll => Step::RepairAll,
                Action::DependencyDown {
                    dependency: name,
                    duration,
                } => Step::DependencyDown {
                    dependency: dependency(&name)?,
                    nanos: duration.map(nanos),
                },
                Action::DependencyUp { dependency: name } => Step::DependencyUp(dependency(&name)?),
                Action::ClockSkew { skew_ms, .. } => Step::ClockSkew { node, skew_ms },
                Action::Rebalance { .. } => Step::Rebalance(node),
            };
            let index = u32::try_from(self.script.steps.len()).expect("fewer than 2^32 actions");
            self.script.steps.push((kind, step));
            let at = self.start + nanos(at);
            self.schedule(at, Control::Script(index));
        }
        Ok(())
    }

    /// Traces a scripted action that had nothing to act on.
    fn script_skipped(&mut self, node: NodeIndex, kind: &'static str, why: &'static str) {
        self.record(
            Tag::ScriptSkipped,
            Some(node),
            hash_str(kind),
            hash_str(why),
            || format!("{kind} skipped: {why}"),
        );
    }
}

/// Carries out scripted action `index` (a control of the run loop).
pub(crate) fn execute(shared: &Arc<Shared>, index: u32) {
    let (kind, step) = shared.kernel.lock().script.steps[index as usize].clone();
    match step {
        Step::Crash {
            node,
            restart_after,
        } => {
            if !world::crash(shared, node, restart_after, kind) {
                shared
                    .kernel
                    .lock()
                    .script_skipped(node, kind, "the node is down already");
            }
        }
        Step::Restart(node) => {
            let down = {
                let mut k = shared.kernel.lock();
                let down = k.nodes[usize::from(node)].status == NodeStatus::Crashed;
                if down {
                    k.fault(Some(node), kind, "rebooting the crashed node".into());
                }
                down
            };
            if !down {
                world::crash(shared, node, None, kind);
            }
            world::boot(shared, node);
        }
        Step::Pause { node, nanos } => {
            let mut k = shared.kernel.lock();
            if k.nodes[usize::from(node)].status == NodeStatus::Crashed {
                k.script_skipped(node, kind, "the node is down");
            } else {
                k.pause_node(node, nanos);
                k.fault(
                    Some(node),
                    kind,
                    format!("for {}ms", nanos / crate::faults::MILLI),
                );
            }
        }
        Step::Partition {
            node,
            links,
            direction,
            nanos,
        } => {
            let mut k = shared.kernel.lock();
            let mut targets = Vec::with_capacity(links.len());
            for link in links {
                let id = k.network.partition(node, link, direction);
                if let Some(nanos) = nanos {
                    let at = k.now.saturating_add(nanos);
                    k.schedule(at, Control::HealPartition(id));
                }
                targets.push(format!("{} (#{id})", k.link_name(link)));
            }
            let until = match nanos {
                Some(nanos) => format!("for {}ms", nanos / crate::faults::MILLI),
                None => "until repaired".into(),
            };
            k.fault(
                Some(node),
                kind,
                format!("{direction:?} with {} {until}", targets.join(", ")),
            );
        }
        Step::Repair(node) => {
            let mut k = shared.kernel.lock();
            let healed = k.network.heal_node(node);
            k.fault(Some(node), kind, format!("{healed} partition(s) healed"));
        }
        Step::RepairAll => {
            let mut k = shared.kernel.lock();
            let healed = k.network.heal_partitions();
            k.fault(None, kind, format!("{healed} partition(s) healed"));
        }
        Step::DependencyDown { dependency, nanos } => {
            let mut k = shared.kernel.lock();
            let id = k.network.outage(dependency);
            let until = match nanos {
                Some(nanos) => {
                    let at = k.now.saturating_add(nanos);
                    k.schedule(at, Control::EndOutage(id));
                    format!("for {}ms", nanos / crate::faults::MILLI)
                }
                None => "until brought up".into(),
            };
            let name = Arc::clone(&k.env.dependencies[usize::from(dependency)].name);
            k.fault(None, kind, format!("{name} down {until} (#{id})"));
        }
        Step::DependencyUp(dependency) => {
            let mut k = shared.kernel.lock();
            let ended = k.network.end_outages_of(dependency);
            let name = Arc::clone(&k.env.dependencies[usize::from(dependency)].name);
            k.fault(None, kind, format!("{name}: {ended} outage(s) ended"));
        }
        Step::ClockSkew { node, skew_ms } => {
            let mut k = shared.kernel.lock();
            k.nodes[usize::from(node)].skew_nanos = skew_ms.saturating_mul(1_000_000);
            k.fault(Some(node), kind, format!("{skew_ms:+}ms"));
        }
        Step::Rebalance(node) => {
            let mut k = shared.kernel.lock();
            k.nodes[usize::from(node)].rebalance_epoch += 1;
            k.fault(Some(node), kind, "subscriptions rejoin their groups".into());
        }
    }
}
