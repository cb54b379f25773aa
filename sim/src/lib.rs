//! # reprise-sim — the deterministic simulator
//!
//! Runs a whole event-sourced system — several nodes, the event store, the bus, external
//! services — on one thread, in virtual time, with faults, as a pure function of a seed.
//! When a run breaks an invariant, the seed *is* the bug report: replaying it replays the
//! very same execution, step by step, on any machine.
//!
//! This is FoundationDB's and TigerBeetle's approach, reached at core's trait boundary
//! rather than by intercepting the OS: business code gets time, randomness, spawning,
//! storage and messaging only through `reprise_core`'s traits, and this crate implements
//! all of them (see `docs/ARCHITECTURE.md`, "Determinism").
//!
//! ## In five minutes
//!
//! ```
//! use reprise_sim::{
//!     DependencyOptions, FaultPlan, NodeOptions, Scenario, ScenarioRun, SimConfig, Violation,
//!     World, WorldView,
//! };
//!
//! struct Checkout;
//!
//! /// The invariants of one run: read the durable store and bus through the view.
//! struct Invariants;
//! impl ScenarioRun for Invariants {
//!     fn check_safety(&self, view: &WorldView<'_>) -> Result<(), Violation> {
//!         let _events = view.event_store().read_all_now(1, usize::MAX);
//!         Ok(())
//!     }
//!     fn check_liveness(&self, _: &WorldView<'_>) -> Result<(), Violation> {
//!         Ok(())
//!     }
//! }
//!
//! impl Scenario for Checkout {
//!     fn name(&self) -> &'static str { "checkout" }
//!     fn description(&self) -> &'static str { "orders, payments, stock" }
//!     fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
//!         world.add_dependency("payments", DependencyOptions::default());
//!         world.add_node("orders", NodeOptions::default(), |ctx| {
//!             // Called at start and after every restart: build services from
//!             // ctx.runtime(), ctx.event_store(), ctx.event_bus(); spawn their tasks.
//!             let store = ctx.event_store();
//!             ctx.spawn("orders", async move { drop(store) });
//!         });
//!         Box::new(Invariants)
//!     }
//! }
//!
//! let report = reprise_sim::run(&Checkout, &SimConfig::new(42).with_plan(FaultPlan::swarm()));
//! assert!(report.passed());
//! println!("{}", report.summary()); // seed=42 hash=…
//! ```
//!
//! In a `#[test]`, sweep seeds with [`sim_test!`] (`REPRISE_SEEDS=1000 cargo test …`,
//! replay one with `REPRISE_SEED=<n>`).
//!
//! Besides a plan's random faults, a scenario (or a test's scenario) can script one exact
//! fault at one exact moment ([`script`]): `world.at(ms(200)).crash("orders")`, then
//! `restart`, `pause`, `partition`/`repair`/`repair_all`, `dependency_down`/`dependency_up`,
//! `skew_clock`, `rebalance` — or `world.schedule(at, Action::…)`. Each is recorded as a
//! `script.*` fault, and the liveness phase heals them like the plan's.
//!
//! After the run, [`RunReport::event_store`] and [`RunReport::event_bus`] hold the final
//! durable state for checks of your own; during the run, checkers read the same through
//! [`WorldView`].
//!
//! ## Map (one file per simulated resource)
//!
//! | module | role |
//! |---|---|
//! | `executor` | tasks, ready set, seeded scheduler, timer heap |
//! | `clock` | virtual time, per-node skew, the node runtime |
//! | `network` | partitions (symmetric, one-way) and outages |
//! | [`script`] | scripted faults at chosen times ([`World::at`], [`Action`]) |
//! | `store` / `bus` / `dependency` | the simulated event store, event bus and external services |
//! | `lease` | the simulated lease table (leadership), with loss and zombie windows |
//! | [`plan`] | declarative fault plans and swarm mode |
//! | `faults` | turning the plan into decisions; [`FaultRecord`]s |
//! | [`trace`] | running xxh3 hash, readable lines |
//! | `checker` | [`Scenario`], [`ScenarioRun`], [`Violation`], [`WorldView`] |
//! | `world` | [`World`], [`NodeContext`], node life cycle |
//! | `run` | [`SimConfig`], [`run`], [`RunReport`], [`check_determinism`] |
//! | [`shrink`](mod@shrink) | a failing run's plan reduced to the faults that matter |
//! | [`harness`] | seed sweeps for `#[test]`s |
//! | [`testing_scenario`] | a small token-transfer scenario with a planted bug |
//!
//! ## Shrinking a failure
//!
//! A failing swarm seed usually fails under a busy plan. [`shrink()`] turns it into the
//! smallest plan it can find under which **the same seed** still breaks **the same
//! invariant**: it drops whole fault specs (delta debugging: all, then halves, … then
//! single specs), then switches off individual fault kinds of what remains, narrows
//! targets to one node or peer, halves probabilities and durations and narrows windows —
//! every candidate a full deterministic re-run, within a run budget
//! ([`ShrinkOptions::max_runs`], default 200).
//!
//! ```no_run
//! # use reprise_sim::{FaultPlan, ShrinkOptions, SimConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let scenario = reprise_sim::testing_scenario::TokenTransfers::default();
//! let config = SimConfig::new(17).with_plan(FaultPlan::swarm());
//! let shrunk = reprise_sim::shrink(&scenario, &config, &ShrinkOptions::default())?;
//! println!("{shrunk}");            // what each accepted reduction removed
//! std::fs::write("plan.json", shrunk.plan.to_json())?;
//! // Replays the shrunk failure hash for hash (also from plan.json, `--plan plan.json`):
//! let replay = reprise_sim::run(&scenario, &shrunk.replay_config(&config));
//! assert_eq!(replay.hash, shrunk.shrunk.hash);
//! # Ok(()) }
//! ```
//!
//! The seed itself is never shrunk — a seed is not a size, and another seed is another
//! execution. Every fault kind draws from a stream of its own, so removing one leaves the
//! others' draws as they were; but a fault that fired changed the schedule, so each
//! candidate is still a different execution from that point on, judged only by its
//! failure: see [the module docs](mod@shrink) for what that means for the result. Failure messages ([`harness::failure_message_with`]) end with
//! the `reprise shrink` command.
//!
//! ## Guarantees and their limits
//!
//! - Same (scenario code, seed, plan, config) ⇒ same trace hash. Separate ChaCha8 streams
//!   of the seed drive the scheduler, node entropy, the workload, the swarm draw, the
//!   ordinary latencies (store, bus, lease table, services), each dependency's inherent
//!   error rate, and every fault kind on its own (store transient / timeout /
//!   commit-unknown / extra latency, each bus fault, dependency errors and lost responses,
//!   lease loss, BUGGIFY, and each nemesis kind: partition, crash, pause, clock skew,
//!   rebalance, outage). Latencies and per-operation kinds have one stream per node (the
//!   node whose operation it is), nemesis kinds one each. A stream is
//!   `ChaCha8Rng::seed_from_u64(seed)` with a stream number derived from the kind and the
//!   node, so removing one fault kind from a plan leaves every other kind's draws
//!   unchanged, and one node's retries do not move another node's draws. Only integer arithmetic and IEEE basic operations touch the draws (no
//!   `ln`, whose last bit varies between libms).
//! - The hash covers data, not just which operations ran: trace lines name the streams,
//!   topics, keys, groups, dependencies and operations they touch, and appends and
//!   publishes fold in their events' ids, types, payloads and metadata and their messages'
//!   payloads and headers ([`trace`]).
//! - Scenario code must keep its side of the contract: no wall clock, no OS randomness, no
//!   `HashMap` iteration, no threads (the workspace `clippy.toml` enforces most of it).
//!   [`check_determinism`] catches the rest — a timer set from the wall clock, a wall-clock
//!   value written into an event and never read back — and names the first divergent trace
//!   event.
//! - `sometimes!` situations ([`reprise_core::coverage`]) are counted into
//!   [`RunReport::coverage`] on the thread running the simulation, outside the kernel: no
//!   trace line, no draw, so a run's hash is the same with [`SimConfig::coverage`] on or
//!   off. A scenario declares what it means to reach ([`Scenario::situations`]; the
//!   simulator's own are [`SITUATIONS`]) so that reports can name what no run reached.
//! - BUGGIFY points ([`buggify`](fn@reprise_core::buggify)) see the run's oracle on the thread running
//!   the simulation; run one simulation per thread (parallel runs on separate threads are
//!   fine).

mod bus;
mod checker;
mod clock;
mod dependency;
mod executor;
mod faults;
pub mod harness;
mod lease;
mod network;
pub mod plan;
mod run;
pub mod script;
pub mod shrink;
mod store;
pub mod testing_scenario;
pub mod trace;
mod world;

pub use bus::{BusOptions, REBALANCE_MID_BATCH};
pub use checker::{Scenario, ScenarioRun, Violation, WorldView};
pub use reprise_core::Situation;

/// The situations the simulator's own resources can reach (add them to a scenario's
/// [`Scenario::situations`] when it uses leases or consumer groups).
pub const SITUATIONS: [Situation; 2] = [bus::REBALANCE_MID_BATCH, lease::TWO_LEADERS];
pub use dependency::{DependencyError, DependencyOptions};
pub use faults::FaultRecord;
pub use lease::{LeaseOptions, TWO_LEADERS};
pub use plan::{
    BusFaults, DependencyFaults, Direction, Fault, FaultPlan, FaultSpec, LeaseFaults, Nodes, Peer,
    PlanError, StoreFaults, SwarmOptions, Window,
};
pub use run::{
    Budget, Divergence, Outcome, Phase, RunReport, RunStats, SimConfig, SimError,
    check_determinism, run, try_run,
};
pub use script::{Action, ScriptAt};
pub use shrink::{FailureSignature, ShrinkError, ShrinkOptions, ShrinkReport, shrink};
pub use store::StoreOptions;
pub use trace::{TraceLine, TraceMode, summary_line};
pub use world::{BootFn, DependencyId, NodeContext, NodeId, NodeOptions, NodeStatus, World};
