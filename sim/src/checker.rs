//! Checker plumbing: the [`Scenario`] a user writes, the per-run [`ScenarioRun`] holding
//! its invariants, and the read-only [`WorldView`] they inspect.
//!
//! Checkers live apart from the simulated resources (as in TigerBeetle's
//! `state_checker`/`storage_checker`): the simulator knows nothing of orders or accounts,
//! and a scenario knows nothing of timer heaps. A checker sees only *durable* truth — the
//! event store and the bus — plus the clock and the faults so far, which is also all an
//! operator would have.
//!
//! - **Safety** ([`ScenarioRun::check_safety`]) must hold at every check, faults or not
//!   ("money is never created").
//! - **Liveness** ([`ScenarioRun::check_liveness`]) must hold eventually once faults stop
//!   ("every transfer completes"); it is polled during the liveness phase, and the run
//!   fails if it does not hold within the bound.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reprise_core::{InMemoryEventBus, InMemoryEventStore, Situation, Timestamp};
use serde::Serialize;

use crate::executor::Shared;
use crate::faults::FaultRecord;
use crate::run::Phase;
use crate::world::{NodeStatus, World};

/// A simulation scenario: a world, a workload and invariants.
pub trait Scenario: Send + Sync {
    /// The name the CLI registers it under (`reprise run <name>`).
    fn name(&self) -> &'static str;

    /// One line for listings.
    fn description(&self) -> &'static str;

    /// Registers nodes, dependencies and the workload; returns the per-run checker state.
    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun>;

    /// The situations this scenario exists to reach ([`reprise_core::sometimes!`]), so a
    /// coverage report can name those no run reached — a situation never hit leaves no
    /// other trace.
    fn situations(&self) -> Vec<Situation> {
        Vec::new()
    }

    /// The BUGGIFY points its code carries (e.g. `reprise_host::FAULT_POINTS`), so a
    /// coverage report can name those that never fired.
    fn fault_points(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

/// The invariants of one run.
pub trait ScenarioRun {
    /// Safety invariants, checked every [`crate::SimConfig::check_every`] and at the end.
    ///
    /// # Errors
    /// The violated invariant.
    fn check_safety(&self, world: &WorldView<'_>) -> Result<(), Violation>;

    /// `Ok` once the run has settled (e.g. every saga terminal).
    ///
    /// # Errors
    /// What has not settled yet: reported if the bound passes.
    fn check_liveness(&self, world: &WorldView<'_>) -> Result<(), Violation>;
}

/// A broken invariant: which one, the entities involved, and what was seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub invariant: String,
    pub entities: Vec<String>,
    pub message: String,
}

impl Violation {
    #[must_use]
    pub fn new(invariant: impl Into<String>, message: impl Into<String>) -> Self {
        Violation {
            invariant: invariant.into(),
            entities: Vec::new(),
            message: message.into(),
        }
    }

    /// Adds an entity (`account-3`, `order-17`) to the report.
    #[must_use]
    pub fn entity(mut self, entity: impl Into<String>) -> Self {
        self.entities.push(entity.into());
        self
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.invariant)?;
        if !self.entities.is_empty() {
            write!(f, " [{}]", self.entities.join(", "))?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for Violation {}

/// What a checker may look at. Read-only; the simulation is stopped while it looks.
pub struct WorldView<'a> {
    pub(crate) shared: &'a Arc<Shared>,
}

impl fmt::Debug for WorldView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorldView")
            .field("elapsed", &self.elapsed())
            .finish_non_exhaustive()
    }
}

impl WorldView<'_> {
    /// Everything committed so far (`read_all_now`, `read_stream_now`, …).
    #[must_use]
    pub fn event_store(&self) -> &InMemoryEventStore {
        &self.shared.store
    }

    /// Topics, messages and committed offsets (`messages`, `committed`, `lag`).
    #[must_use]
    pub fn event_bus(&self) -> &InMemoryEventBus {
        &self.shared.bus
    }

    /// True virtual time (no skew).
    #[must_use]
    pub fn now(&self) -> Timestamp {
        Timestamp::from_unix_nanos(self.shared.kernel.lock().now)
    }

    /// Virtual time since the run started.
    #[must_use]
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.shared.kernel.lock().elapsed())
    }

    #[must_use]
    pub fn phase(&self) -> Phase {
        self.shared.kernel.lock().phase
    }

    /// Faults fired so far.
    #[must_use]
    pub fn faults(&self) -> Vec<FaultRecord> {
        self.shared.kernel.lock().faults.clone()
    }

    #[must_use]
    pub fn fault_count(&self) -> usize {
        self.shared.kernel.lock().faults.len()
    }

    /// Reads one field of the node called `node`, if the scenario has it.
    fn node<T>(&self, node: &str, read: impl FnOnce(&crate::world::Node) -> T) -> Option<T> {
        self.shared
            .kernel
            .lock()
            .nodes
            .iter()
            .find(|n| &*n.name == node)
            .map(read)
    }

    /// A node's state, `None` if no node has that name.
    #[must_use]
    pub fn node_status(&self, node: &str) -> Option<NodeStatus> {
        self.node(node, |n| n.status)
    }

    /// How many times a node has booted.
    #[must_use]
    pub fn boots(&self, node: &str) -> Option<u32> {
        self.node(node, |n| n.boots)
    }

    /// Live tasks of a node.
    #[must_use]
    pub fn live_tasks(&self, node: &str) -> Option<usize> {
        self.node(node, |n| n.live_tasks)
    }
}
