//! The simulated world a scenario builds: nodes (simulated processes), external
//! dependencies, and the durable event store and bus they share.
//!
//! A **node** is a name, a few options and a *boot function*. The boot function is the
//! node's `main`: it receives a [`NodeContext`] and spawns the node's tasks through
//! `ctx.runtime()`. It runs at the start and again after every restart, which is exactly
//! what makes crash recovery testable — anything the node did not make durable (in the
//! event store, as committed bus offsets, as persisted saga deadlines) is gone, and the
//! boot function must rebuild from what is left.
//!
//! Everything a node touches goes through its context: its clock (possibly skewed), its
//! entropy, its event store and bus handles (behind the node's network link, with
//! partitions, latency and faults), and its calls to external services. Handles are tied
//! to one incarnation: after a crash, old handles can no longer spawn.

use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use rand_chacha::ChaCha8Rng;
use reprise_core::{
    BoxFuture, EventBus, EventStore, InMemoryEventBus, InMemoryEventStore, Lease, SharedRuntime,
    Spawner,
};

use crate::bus::{BusOptions, SimEventBus};
use crate::clock::NodeRuntime;
use crate::dependency::{self, DependencyError, DependencyOptions};
use crate::executor::{NodeIndex, Shared, TaskKey};
use crate::lease::{LeaseOptions, SimLease};
use crate::script::{Action, ScriptAt};
use crate::store::{SimEventStore, StoreOptions};
use crate::trace::{Tag, TraceMode, hash_fmt, hash_str};

/// The boot function of a node. See the module docs.
pub type BootFn = Arc<dyn Fn(NodeContext) + Send + Sync>;

/// What the nemesis may do to a node. Everything is allowed by default; switch off what
/// the node's real deployment rules out (e.g. a node that models a managed service).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeOptions {
    /// May crash (losing tasks and volatile state) and reboot.
    pub crashable: bool,
    /// May stop being scheduled for a while.
    pub pausable: bool,
    /// Its clock may be skewed.
    pub clock_skew: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            crashable: true,
            pausable: true,
            clock_skew: true,
        }
    }
}

/// A node's life-cycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum NodeStatus {
    Up,
    /// Not scheduled; its tasks are kept and resume later.
    Paused,
    /// Down; its tasks were dropped; it reboots after its downtime (or at the heal).
    Crashed,
}

/// A node, as the kernel keeps it.
pub(crate) struct Node {
    pub(crate) name: Arc<str>,
    pub(crate) options: NodeOptions,
    pub(crate) status: NodeStatus,
    /// Bumped at every crash; handles of older incarnations are dead.
    pub(crate) incarnation: u32,
    pub(crate) boots: u32,
    pub(crate) skew_nanos: i64,
    pub(crate) parked: Vec<TaskKey>,
    pub(crate) live_tasks: usize,
    pub(crate) rebalance_epoch: u64,
    pub(crate) pause_seq: u64,
    pub(crate) boot: BootFn,
}

/// A registered external service.
#[derive(Clone, Debug)]
pub(crate) struct DependencyEntry {
    pub(crate) name: Arc<str>,
    pub(crate) options: DependencyOptions,
}

/// The environment's steady-state profile (not faults: those come from the plan).
#[derive(Clone, Debug, Default)]
pub(crate) struct Environment {
    pub(crate) store: StoreOptions,
    pub(crate) bus: BusOptions,
    pub(crate) lease: LeaseOptions,
    pub(crate) dependencies: Vec<DependencyEntry>,
}

/// Identifies a node of the world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u16);

/// Identifies an external dependency of the world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DependencyId(pub u16);

/// The world under construction, handed to [`crate::Scenario::setup`].
pub struct World {
    shared: Arc<Shared>,
    seed: u64,
    workload_rng: ChaCha8Rng,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let k = self.shared.kernel.lock();
        let nodes: Vec<&str> = k.nodes.iter().map(|n| &*n.name).collect();
        f.debug_struct("World")
            .field("seed", &self.seed)
            .field("nodes", &nodes)
            .finish_non_exhaustive()
    }
}

impl World {
    pub(crate) fn new(shared: Arc<Shared>, seed: u64) -> Self {
        World {
            shared,
            seed,
            workload_rng: crate::executor::rng_stream(seed, crate::executor::STREAM_WORKLOAD),
        }
    }

    /// Registers a node. `boot` runs when the simulation starts and after every restart.
    ///
    /// # Panics
    /// If the name is empty or taken, or there are already 65 535 nodes.
    pub fn add_node(
        &mut self,
        name: &str,
        options: NodeOptions,
        boot: impl Fn(NodeContext) + Send + Sync + 'static,
    ) -> NodeId {
        assert!(!name.trim().is_empty(), "a node needs a name");
        let mut k = self.shared.kernel.lock();
        assert!(
            k.nodes.iter().all(|n| &*n.name != name),
            "node {name} is registered twice"
        );
        let index = NodeIndex::try_from(k.nodes.len())
            .ok()
            .filter(|&i| i < u16::MAX)
            .expect("at most 65 535 nodes");
        k.nodes.push(Node {
            name: Arc::from(name),
            options,
            status: NodeStatus::Crashed,
            incarnation: 0,
            boots: 0,
            skew_nanos: 0,
            parked: Vec::new(),
            live_tasks: 0,
            rebalance_epoch: 0,
            pause_seq: 0,
            boot: Arc::new(boot),
        });
        NodeId(index)
    }

    /// Registers an external service that nodes reach through [`NodeContext::call`].
    ///
    /// # Panics
    /// If the name is empty or taken, or the options are invalid (see
    /// [`DependencyOptions::validate`]).
    pub fn add_dependency(&mut self, name: &str, options: DependencyOptions) -> DependencyId {
        assert!(!name.trim().is_empty(), "a dependency needs a name");
        if let Err(e) = options.validate() {
            panic!("dependency {name}: {e}");
        }
        let mut k = self.shared.kernel.lock();
        assert!(
            k.env.dependencies.iter().all(|d| &*d.name != name),
            "dependency {name} is registered twice"
        );
        let index = u16::try_from(k.env.dependencies.len()).expect("at most 65 535 dependencies");
        k.env.dependencies.push(DependencyEntry {
            name: Arc::from(name),
            options,
        });
        DependencyId(index)
    }

    /// Sets the event store's latency profile and timeout.
    ///
    /// # Panics
    /// If the options are invalid (see [`StoreOptions::validate`]).
    pub fn set_store_options(&mut self, options: StoreOptions) {
        if let Err(e) = options.validate() {
            panic!("store options: {e}");
        }
        self.shared.kernel.lock().env.store = options;
    }

    /// Sets the event bus's latency profile and timeout.
    ///
    /// # Panics
    /// If the options are invalid (see [`BusOptions::validate`]).
    pub fn set_bus_options(&mut self, options: BusOptions) {
        if let Err(e) = options.validate() {
            panic!("bus options: {e}");
        }
        self.shared.kernel.lock().env.bus = options;
    }

    /// Sets how the lease table treats dead sessions (latency and timeouts are the
    /// event store's).
    pub fn set_lease_options(&mut self, options: LeaseOptions) {
        self.shared.kernel.lock().env.lease = options;
    }

    /// The durable event store: survives node crashes. Use it to seed initial data and,
    /// from checkers, to read what was committed.
    #[must_use]
    pub fn event_store(&self) -> Arc<InMemoryEventStore> {
        Arc::clone(&self.shared.store)
    }

    /// The durable event bus (topics, offsets, groups).
    #[must_use]
    pub fn event_bus(&self) -> Arc<InMemoryEventBus> {
        Arc::clone(&self.shared.bus)
    }

    /// This run's seed.
    #[must_use]
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Randomness for generating the workload, from a stream of its own: the same seed
    /// gives the same workload whatever the fault plan.
    pub fn random_u64(&mut self) -> u64 {
        self.workload_rng.next_u64()
    }

    /// Schedules a scripted fault (or repair) at `at` of simulated time since the start of
    /// the run. See [`crate::script`] for the rules; [`World::at`] is the shorthand.
    ///
    /// Names are checked when the run starts: an unknown node or dependency, or a moment
    /// outside the fault window, makes [`crate::try_run`] fail.
    pub fn schedule(&mut self, at: Duration, action: Action) {
        self.shared.kernel.lock().script.push(at, action);
    }

    /// Scripted actions at `at`: `world.at(ms(200)).crash("orders").partition(…)`.
    pub fn at(&mut self, at: Duration) -> ScriptAt<'_> {
        ScriptAt { world: self, at }
    }
}

/// What a node's boot function and tasks use to reach the world. Cheap to clone.
#[derive(Clone)]
pub struct NodeContext {
    runtime: Arc<NodeRuntime>,
}

impl std::fmt::Debug for NodeContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeContext")
            .field("node", &self.node_name())
            .field("incarnation", &self.runtime.incarnation)
            .finish()
    }
}

impl NodeContext {
    pub(crate) fn new(shared: Arc<Shared>, node: NodeIndex, incarnation: u32) -> Self {
        NodeContext {
            runtime: Arc::new(NodeRuntime {
                shared,
                node,
                incarnation,
            }),
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.runtime.shared
    }

    #[must_use]
    pub fn node_id(&self) -> NodeId {
        NodeId(self.runtime.node)
    }

    #[must_use]
    pub fn node_name(&self) -> Arc<str> {
        Arc::clone(&self.shared().kernel.lock().nodes[usize::from(self.runtime.node)].name)
    }

    /// How many times this node has booted, counting this boot (1 the first time).
    #[must_use]
    pub fn boot_count(&self) -> u32 {
        self.shared().kernel.lock().nodes[usize::from(self.runtime.node)].boots
    }

    /// The node's runtime: skewed clock, entropy, and a spawner whose tasks die with
    /// this incarnation of the node.
    #[must_use]
    pub fn runtime(&self) -> SharedRuntime {
        Arc::clone(&self.runtime) as SharedRuntime
    }

    /// Spawns a task of this node.
    pub fn spawn(
        &self,
        name: &'static str,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        self.runtime.spawn(name, Box::pin(task));
    }

    /// The event store as this node reaches it: through its network link, with latency,
    /// partitions, transient errors, timeouts and commit-unknown outcomes.
    #[must_use]
    pub fn event_store(&self) -> Arc<dyn EventStore> {
        Arc::new(SimEventStore::new(
            Arc::clone(self.shared()),
            self.runtime.node,
        ))
    }

    /// The event bus as this node reaches it. Subscriptions leave their group when the
    /// node crashes (its tasks, which own them, are dropped).
    #[must_use]
    pub fn event_bus(&self) -> Arc<dyn EventBus> {
        Arc::new(SimEventBus::new(
            Arc::clone(self.shared()),
            self.runtime.node,
        ))
    }

    /// A new contender for the lease `name` (one database session): reached through the
    /// node's link to the event store, with its latency, timeouts and partitions, and the
    /// plan's [`Fault::Lease`](crate::Fault::Lease) on its leaderships. Every call makes
    /// another contender; contenders of one name, on any nodes, compete for one lease.
    /// Leases survive node crashes; a crashed node's leaderships are freed as dead
    /// sessions are ([`crate::LeaseOptions`]).
    #[must_use]
    pub fn lease(&self, name: &str) -> Arc<dyn Lease> {
        Arc::new(SimLease::new(
            Arc::clone(self.shared()),
            self.runtime.node,
            self.runtime.incarnation,
            name,
        ))
    }

    /// Calls the external service `dependency`: `call` runs the scenario's model of the
    /// service (e.g. charging a payment-gateway ledger) when — and only if — the request
    /// reaches it. See [`DependencyError`] for the outcomes. The trace line names the
    /// dependency; [`call_op`](Self::call_op) names the operation too.
    pub fn call<T, F>(
        &self,
        dependency: &str,
        call: F,
    ) -> BoxFuture<'static, Result<T, DependencyError>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.call_op(dependency, "", call)
    }

    /// [`call`](Self::call), naming the operation in the trace and in fault details:
    /// `ctx.call_op("payments", &format!("charge order-{id}"), …)` makes the call's lines
    /// show up among the lines touching `order-{id}` in a failure report. The operation
    /// is folded into the trace hash.
    pub fn call_op<T, F>(
        &self,
        dependency: &str,
        operation: &str,
        call: F,
    ) -> BoxFuture<'static, Result<T, DependencyError>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        dependency::call(
            Arc::clone(self.shared()),
            self.runtime.node,
            dependency,
            operation,
            call,
        )
    }

    /// Adds a scenario note to the trace (folded into the hash; text kept with `--trace`).
    pub fn note(&self, text: &str) {
        let mut k = self.shared().kernel.lock();
        k.stats.notes += 1;
        k.record(
            Tag::Note,
            Some(self.runtime.node),
            hash_str(text),
            0,
            || format!("note: {text}"),
        );
    }

    /// [`note`](Self::note) from format arguments: the same trace event (and hash) as
    /// `note(&args.to_string())`, but the text is only built with
    /// [`TraceMode::Full`](crate::TraceMode::Full); otherwise it is streamed into the hash
    /// without allocating, and with [`TraceMode::Off`] not formatted at all.
    pub fn note_fmt(&self, args: std::fmt::Arguments<'_>) {
        // Formatting runs outside the kernel lock: a `Display` impl may reach the world.
        let mode = {
            let mut k = self.shared().kernel.lock();
            k.stats.notes += 1;
            k.trace.mode()
        };
        let (hash, text) = match mode {
            TraceMode::Off => return,
            TraceMode::Hash => (hash_fmt(args), None),
            TraceMode::Full => {
                let text = args.to_string();
                (hash_str(&text), Some(text))
            }
        };
        let mut k = self.shared().kernel.lock();
        k.record(Tag::Note, Some(self.runtime.node), hash, 0, || {
            format!("note: {}", text.unwrap_or_default())
        });
    }

    /// Sleeps for `duration` of virtual time (shorthand for `runtime().sleep`).
    #[must_use]
    pub fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        reprise_core::Clock::sleep(&*self.runtime, duration)
    }
}

// -- node life cycle, driven by the run loop ----------------------------------------------

/// Boots (or reboots) `node`: marks it up and runs its boot function outside the lock.
pub(crate) fn boot(shared: &Arc<Shared>, node: NodeIndex) {
    let (boot, incarnation) = {
        let mut k = shared.kernel.lock();
        let n = &mut k.nodes[usize::from(node)];
        n.status = NodeStatus::Up;
        n.boots += 1;
        let (boot, incarnation, boots) = (Arc::clone(&n.boot), n.incarnation, n.boots);
        k.stats.boots += 1;
        k.record(Tag::Node, Some(node), 1, u64::from(boots), || {
            format!("boot #{boots}")
        });
        (boot, incarnation)
    };
    boot(NodeContext::new(Arc::clone(shared), node, incarnation));
}

/// Crashes `node`: drops its tasks (after unlocking) and, with `restart_after`, schedules
/// the reboot (without, it stays down until rebooted explicitly or by the liveness heal).
/// Records the fault as `kind`. Returns `false` (and does nothing) if it was down already.
pub(crate) fn crash(
    shared: &Arc<Shared>,
    node: NodeIndex,
    restart_after: Option<u64>,
    kind: &'static str,
) -> bool {
    let dropped = {
        let mut k = shared.kernel.lock();
        let n = &mut k.nodes[usize::from(node)];
        if n.status == NodeStatus::Crashed {
            return false;
        }
        n.status = NodeStatus::Crashed;
        n.incarnation += 1;
        let incarnation = n.incarnation;
        let tasks = k.kill_tasks_of(node);
        let count = tasks.len();
        let detail = match restart_after {
            Some(downtime) => {
                let at = k.now.saturating_add(downtime);
                k.schedule(at, crate::executor::Control::Restart(node, incarnation));
                format!(
                    "{count} task(s) dropped, down for {}ms",
                    downtime / 1_000_000
                )
            }
            None => format!("{count} task(s) dropped, down until restarted"),
        };
        k.fault(Some(node), kind, detail);
        // Its database sessions die with it.
        k.leases_of_crashed_node(node);
        tasks
    };
    drop(dropped);
    true
}

/// Resumes a paused node.
pub(crate) fn resume(shared: &Arc<Shared>, node: NodeIndex) {
    let mut k = shared.kernel.lock();
    if k.nodes[usize::from(node)].status != NodeStatus::Paused {
        return;
    }
    k.nodes[usize::from(node)].status = NodeStatus::Up;
    k.unpark(&shared.ready, node);
    k.record(Tag::Node, Some(node), 3, 0, || "resume".into());
}
