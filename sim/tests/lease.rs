//! The simulated lease: core's conformance suite, a lost lease with its zombie window (two
//! leaders at once, then `Lost`), partitions to the store (never a false `Ok`), crashes
//! (the dead session's lease comes free) and determinism.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reprise_core::LeaseError;
use reprise_core::conformance::lease_suite;
use reprise_sim::{
    Direction, Fault, FaultPlan, FaultSpec, LeaseFaults, LeaseOptions, NodeContext, NodeOptions,
    Peer, PlanError, Scenario, ScenarioRun, SimConfig, SwarmOptions, TraceLine, TraceMode,
    Violation, World, WorldView, check_determinism, run,
};

type Log = Arc<Mutex<Vec<String>>>;
type Boot = Arc<dyn Fn(NodeContext, Log) + Send + Sync>;

/// A scenario made of closures: each node's boot function, and a liveness condition on
/// the number of lines the nodes log.
struct Probe {
    nodes: Vec<(&'static str, Boot)>,
    expected_lines: usize,
    lease_options: LeaseOptions,
    log: Log,
}

impl Probe {
    fn new(expected_lines: usize) -> Self {
        Probe {
            nodes: Vec::new(),
            expected_lines,
            lease_options: LeaseOptions::default(),
            log: Log::default(),
        }
    }

    fn node(
        mut self,
        name: &'static str,
        boot: impl Fn(NodeContext, Log) + Send + Sync + 'static,
    ) -> Self {
        self.nodes.push((name, Arc::new(boot)));
        self
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().expect("not poisoned").clone()
    }
}

impl Scenario for Probe {
    fn name(&self) -> &'static str {
        "lease-probe"
    }
    fn description(&self) -> &'static str {
        "nodes competing for a lease"
    }
    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        self.log.lock().expect("not poisoned").clear();
        world.set_lease_options(self.lease_options);
        for (name, boot) in &self.nodes {
            let (boot, log) = (Arc::clone(boot), Arc::clone(&self.log));
            world.add_node(name, NodeOptions::default(), move |ctx| {
                boot(ctx, Arc::clone(&log));
            });
        }
        Box::new(LogComplete(Arc::clone(&self.log), self.expected_lines))
    }
}

struct LogComplete(Log, usize);
impl ScenarioRun for LogComplete {
    fn check_safety(&self, _: &WorldView<'_>) -> Result<(), Violation> {
        Ok(())
    }
    fn check_liveness(&self, _: &WorldView<'_>) -> Result<(), Violation> {
        let n = self.0.lock().expect("not poisoned").len();
        if n >= self.1 {
            Ok(())
        } else {
            Err(Violation::new(
                "log-complete",
                format!("{n}/{} lines", self.1),
            ))
        }
    }
}

fn push(log: &Log, line: String) {
    log.lock().expect("not poisoned").push(line);
}

fn elapsed_ms(ctx: &NodeContext) -> u64 {
    ctx.runtime().stopwatch_nanos() / 1_000_000
}

// -- the conformance suite ----------------------------------------------------------------

type SuiteFuture = Pin<Box<dyn Future<Output = Result<(), String>>>>;

thread_local! {
    /// The running suite. `lease_suite` borrows its contender factory as a plain `&dyn Fn`
    /// (not `Sync`), so its future is not `Send` and cannot be a simulator task itself; a
    /// simulation runs on one thread, so a `Send` task polls it from here.
    static SUITE: RefCell<Option<SuiteFuture>> = const { RefCell::new(None) };
}

fn run_suite(ctx: NodeContext, log: Log) {
    let spawner = ctx.clone();
    let suite = async move {
        let contender = || ctx.lease("relay");
        let pause = || ctx.sleep(Duration::from_millis(10));
        lease_suite(&contender, pause).await
    };
    SUITE.with(|slot| *slot.borrow_mut() = Some(Box::pin(suite)));
    spawner.spawn("lease-suite", async move {
        let result = std::future::poll_fn(|cx| {
            SUITE.with(|slot| {
                slot.borrow_mut()
                    .as_mut()
                    .expect("the suite is installed")
                    .as_mut()
                    .poll(cx)
            })
        })
        .await;
        drop(SUITE.with(|slot| slot.borrow_mut().take()));
        push(&log, format!("{result:?}"));
    });
}

#[test]
fn the_conformance_suite_passes_on_the_simulated_lease() {
    for (seed, dead_holder_release_ms) in [(0, 100), (1, 100), (2, 0), (3, 500)] {
        let mut probe = Probe::new(1).node("relay", run_suite);
        probe.lease_options = LeaseOptions {
            dead_holder_release_ms,
        };
        let report = run(&probe, &SimConfig::new(seed));
        drop(SUITE.with(|slot| slot.borrow_mut().take()));
        assert!(report.passed(), "seed {seed}: {}", report.outcome);
        assert_eq!(probe.lines(), ["Ok(())"], "seed {seed}");
        assert!(report.stats.lease_ops >= 8, "{:?}", report.stats);
    }
}

// -- loss and the zombie window ----------------------------------------------------------

/// Takes the lease `terms` times: each term confirms up to 20 times, 5 ms apart, and
/// releases unless the lease was lost.
fn leader(terms: u32) -> impl Fn(NodeContext, Log) + Send + Sync + 'static {
    move |ctx: NodeContext, log: Log| {
        let c = ctx.clone();
        ctx.spawn("lead", async move {
            let lease = c.lease("relay");
            let mut held_terms = 0;
            let mut lost = 0;
            while held_terms < terms {
                match lease.try_acquire().await {
                    Ok(Some(mut held)) => {
                        held_terms += 1;
                        let mut gone = false;
                        for _ in 0..20 {
                            match held.confirm().await {
                                Ok(()) | Err(LeaseError::Transient(_)) => {}
                                Err(LeaseError::Lost(_)) => {
                                    gone = true;
                                    break;
                                }
                            }
                            c.sleep(Duration::from_millis(5)).await;
                        }
                        if gone {
                            lost += 1;
                        } else {
                            held.release().await;
                        }
                        c.sleep(Duration::from_millis(20)).await;
                    }
                    Ok(None) | Err(_) => c.sleep(Duration::from_millis(5)).await,
                }
            }
            push(
                &log,
                format!("{}: {held_terms} terms, {lost} lost", c.node_name()),
            );
        });
    }
}

fn two_leaders() -> Probe {
    Probe::new(2).node("a", leader(6)).node("b", leader(6))
}

fn lease_loss_on_a() -> FaultPlan {
    FaultPlan::named("lease-loss").with(
        FaultSpec::new(Fault::Lease(LeaseFaults {
            loss_probability: 1.0,
            zombie_max_ms: 50,
        }))
        .on_nodes(["a"]),
    )
}

/// What the trace shows about the two-leader windows.
#[derive(Debug, Default)]
struct Windows {
    /// Zombie confirms of a node after another node's plain confirm succeeded since the
    /// zombie's loss: both believed they led.
    overlapping_zombie_confirms: usize,
    /// `Lost` reported to a node after such an overlap.
    lost_after_overlap: usize,
}

fn two_leader_windows(trace: &[TraceLine]) -> Windows {
    let mut windows = Windows::default();
    let mut lost_at: BTreeMap<String, Duration> = BTreeMap::new();
    let mut last_ok: BTreeMap<String, Duration> = BTreeMap::new();
    let mut overlapped: BTreeMap<String, bool> = BTreeMap::new();
    for line in trace {
        let Some(node) = line.node.as_deref() else {
            continue;
        };
        let text = line.text.as_str();
        if text.starts_with("FAULT lease.loss relay") {
            lost_at.insert(node.to_owned(), line.at);
        } else if text == "lease relay confirm -> ok" {
            last_ok.insert(node.to_owned(), line.at);
        } else if text.starts_with("lease relay confirm -> ok (zombie") {
            let since = lost_at[node];
            let rival_led = last_ok
                .iter()
                .any(|(other, &at)| other != node && at >= since && at <= line.at);
            if rival_led {
                windows.overlapping_zombie_confirms += 1;
                overlapped.insert(node.to_owned(), true);
            }
        } else if text == "lease relay confirm -> lost" && overlapped.remove(node).is_some() {
            windows.lost_after_overlap += 1;
        }
    }
    windows
}

#[test]
fn a_lost_lease_leaves_two_leaders_for_a_bounded_moment_then_the_old_one_learns() {
    let probe = two_leaders();
    let config = SimConfig::new(11)
        .with_plan(lease_loss_on_a())
        .with_trace(TraceMode::Full);
    let report = run(&probe, &config);
    assert!(report.passed(), "{}", report.outcome);
    let mut lines = probe.lines();
    lines.sort();
    assert_eq!(lines, ["a: 6 terms, 6 lost", "b: 6 terms, 0 lost"]);
    let count = |kind: &str| report.faults.iter().filter(|f| f.kind == kind).count();
    assert_eq!(count("lease.loss"), 6, "every term of a is cut short");
    assert!(
        count("lease.zombie_confirm") > 6,
        "{}",
        count("lease.zombie_confirm")
    );
    assert!(
        report
            .faults
            .iter()
            .filter(|f| f.kind.starts_with("lease."))
            .all(|f| f.node.as_deref() == Some("a")),
        "only the targeted node loses its lease"
    );
    let trace = report.trace.as_deref().expect("full trace");
    let windows = two_leader_windows(trace);
    assert!(
        windows.overlapping_zombie_confirms > 0 && windows.lost_after_overlap > 0,
        "{windows:?}"
    );
    // Bounded: no zombie confirm comes more than zombie_max_ms after its loss.
    for record in report
        .faults
        .iter()
        .filter(|f| f.kind == "lease.zombie_confirm")
    {
        let into: u64 = record
            .detail
            .split_whitespace()
            .nth(2)
            .and_then(|ms| ms.strip_suffix("ms"))
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("unexpected detail {}", record.detail));
        assert!(into < 50, "{record}");
    }
}

#[test]
fn without_a_zombie_window_the_loss_is_reported_at_once() {
    let probe = two_leaders();
    let plan = FaultPlan::named("lease-loss").with(
        FaultSpec::new(Fault::Lease(LeaseFaults {
            loss_probability: 1.0,
            zombie_max_ms: 0,
        }))
        .on_nodes(["a"]),
    );
    let report = run(
        &probe,
        &SimConfig::new(11)
            .with_plan(plan)
            .with_trace(TraceMode::Full),
    );
    assert!(report.passed(), "{}", report.outcome);
    assert!(report.faults.iter().any(|f| f.kind == "lease.loss"));
    assert!(
        !report
            .faults
            .iter()
            .any(|f| f.kind == "lease.zombie_confirm")
    );
    let windows = two_leader_windows(report.trace.as_deref().expect("full trace"));
    assert_eq!(windows.overlapping_zombie_confirms, 0);
}

#[test]
fn the_lease_fault_is_deterministic() {
    let probe = two_leaders();
    let config = SimConfig::new(5).with_plan(lease_loss_on_a());
    let first = run(&probe, &config);
    let second = run(&probe, &config);
    assert!(first.passed(), "{}", first.outcome);
    assert_eq!(first.hash, second.hash);
    assert_eq!(first.faults, second.faults);
    assert_eq!(first.stats, second.stats);
    if let Err(divergence) = check_determinism(&probe, &config) {
        panic!("{divergence}");
    }
    // Also with every other family a swarm draws on top (crashes, partitions, pauses…).
    for seed in 0..20 {
        let config =
            SimConfig::new(seed).with_plan(lease_loss_on_a().with_swarm(SwarmOptions::default()));
        if let Err(divergence) = check_determinism(&probe, &config) {
            panic!("{divergence}");
        }
    }
    let calm = run(&probe, &SimConfig::new(5));
    assert_ne!(calm.hash, first.hash, "the fault changes the run");
    assert!(calm.faults.is_empty());
}

// -- partitions ------------------------------------------------------------------------------

/// Acquires at 0 ms, is cut off from the store at the 100 ms nemesis tick until 2 100 ms,
/// and probes the lease during and after the cut.
fn partitioned(ctx: NodeContext, log: Log) {
    let spawner = ctx.clone();
    spawner.spawn("probe", async move {
        let mut held = ctx
            .lease("relay")
            .try_acquire()
            .await
            .expect("the link is up")
            .expect("the lease is free");
        ctx.sleep(Duration::from_millis(200)).await;
        let confirm = held.confirm().await;
        let rival = ctx.lease("relay").try_acquire().await.map(|l| l.is_some());
        let other = ctx.lease("other").try_acquire().await.map(|l| l.is_some());
        push(
            &log,
            format!("during: confirm {confirm:?}; rival {rival:?}; other {other:?}"),
        );
        // Until the heal, nothing is proven; after it, the lease is still ours.
        loop {
            match held.confirm().await {
                Ok(()) => break,
                Err(LeaseError::Transient(_)) => {
                    assert!(elapsed_ms(&ctx) < 2_100 + 600, "healed at 2100 ms");
                }
                Err(e) => panic!("{e}"),
            }
            ctx.sleep(Duration::from_millis(50)).await;
        }
        let first_ok_ms = elapsed_ms(&ctx);
        // A grant whose response was lost is freed like a dead session: "other" comes
        // free again.
        let contender = ctx.lease("other");
        let other = loop {
            if let Ok(Some(held)) = contender.try_acquire().await {
                break held;
            }
            ctx.sleep(Duration::from_millis(50)).await;
        };
        other.release().await;
        held.release().await;
        push(&log, format!("first ok at {first_ok_ms} ms"));
    });
}

fn partition_plan(direction: Direction) -> FaultPlan {
    FaultPlan::named("cut").with(
        FaultSpec::new(Fault::Partition {
            peer: Peer::EventStore,
            direction,
            per_tick_probability: 1.0,
            min_duration_ms: 2_000,
            max_duration_ms: 2_000,
        })
        .during(100, 150),
    )
}

#[test]
fn partitions_to_the_store_make_lease_operations_transient_never_a_false_ok() {
    for direction in [Direction::Both, Direction::Outbound, Direction::Inbound] {
        let probe = Probe::new(2).node("a", partitioned);
        let report = run(
            &probe,
            &SimConfig::new(3).with_plan(partition_plan(direction)),
        );
        assert!(report.passed(), "{direction:?}: {}", report.outcome);
        let lines = probe.lines();
        let transient = |op: &str, what: &str| {
            format!(
                "Err({:?})",
                LeaseError::Transient(format!("simulated: lease {op} timed out ({what})"))
            )
        };
        let what = if direction == Direction::Inbound {
            "response lost"
        } else {
            "request lost"
        };
        assert_eq!(
            lines[0],
            format!(
                "during: confirm {}; rival {}; other {}",
                transient("relay confirm", what),
                transient("relay acquire", what),
                transient("other acquire", what),
            ),
            "{direction:?}"
        );
        let first_ok_ms: u64 = lines[1]
            .strip_prefix("first ok at ")
            .and_then(|rest| rest.strip_suffix(" ms"))
            .and_then(|ms| ms.parse().ok())
            .expect("a line with the time");
        assert!(
            (2_100..2_100 + 600).contains(&first_ok_ms),
            "{direction:?}: {}",
            lines[1]
        );
    }
}

// -- crashes ---------------------------------------------------------------------------------

#[test]
fn a_crashed_holders_lease_comes_free_after_its_session_dies() {
    let holder = |ctx: NodeContext, log: Log| {
        let c = ctx.clone();
        if ctx.boot_count() > 1 {
            // The rebooted node finds the lease taken by the survivor.
            ctx.spawn("after-reboot", async move {
                let taken = c.lease("relay").try_acquire().await.map(|l| l.is_none());
                push(&log, format!("rebooted: held by another {taken:?}"));
            });
            return;
        }
        ctx.spawn("hold", async move {
            let mut held = c
                .lease("relay")
                .try_acquire()
                .await
                .expect("up")
                .expect("free");
            loop {
                held.confirm().await.expect("held until the crash");
                c.sleep(Duration::from_millis(10)).await;
            }
        });
    };
    let successor = |ctx: NodeContext, log: Log| {
        let c = ctx.clone();
        ctx.spawn("wait", async move {
            c.sleep(Duration::from_millis(5)).await;
            let lease = c.lease("relay");
            let mut held = loop {
                if let Ok(Some(held)) = lease.try_acquire().await {
                    break held;
                }
                c.sleep(Duration::from_millis(10)).await;
            };
            let at = elapsed_ms(&c);
            held.confirm().await.expect("the new holder");
            push(&log, format!("taken over at {at} ms"));
            // Hold it until the rebooted node has looked.
            c.sleep(Duration::from_secs(2)).await;
            held.release().await;
        });
    };
    let probe = Probe::new(2).node("a", holder).node("b", successor);
    let plan = FaultPlan::named("crash").with(
        FaultSpec::new(Fault::Crash {
            per_tick_probability: 1.0,
            min_downtime_ms: 1_000,
            max_downtime_ms: 1_000,
        })
        .on_nodes(["a"])
        .during(100, 150),
    );
    let report = run(&probe, &SimConfig::new(2).with_plan(plan));
    assert!(report.passed(), "{}", report.outcome);
    let lines = probe.lines();
    let at: u64 = lines[0]
        .strip_prefix("taken over at ")
        .and_then(|rest| rest.strip_suffix(" ms"))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("{lines:?}"));
    // Crash at 100 ms, the session is noticed dead 100 ms later, next try within 10 ms.
    assert!((200..=220).contains(&at), "{lines:?}");
    assert_eq!(lines[1], "rebooted: held by another Ok(true)");
}

// -- the plan --------------------------------------------------------------------------------

#[test]
fn lease_faults_are_plan_data() {
    let json = r#"{
        "name": "lease-loss",
        "specs": [
            {
                "fault": { "Lease": { "loss_probability": 0.5, "zombie_max_ms": 200 } },
                "nodes": { "Named": ["relay-1"] },
                "window": { "start_ms": 0, "end_ms": 5000 }
            }
        ]
    }"#;
    let plan = FaultPlan::from_json(json).expect("valid");
    assert_eq!(
        plan.specs[0],
        FaultSpec::new(Fault::Lease(LeaseFaults {
            loss_probability: 0.5,
            zombie_max_ms: 200,
        }))
        .on_nodes(["relay-1"])
        .during(0, 5_000)
    );
    assert_eq!(FaultPlan::from_json(&plan.to_json()), Ok(plan));
    assert!(matches!(
        FaultPlan::from_json(&json.replace("0.5", "1.5")),
        Err(PlanError::Probability {
            fault: "lease",
            field: "loss_probability",
            ..
        })
    ));
}
