//! Scripted faults: each action fires at its simulated time, is recorded as a `script.*`
//! fault, does what its documentation says (observed from inside a node), and is undone by
//! the liveness phase's heal.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reprise_core::{
    AppendBatch, BusError, EventId, ExpectedVersion, Metadata, NewEvent, Payload, StoreError,
    StreamId, Timestamp,
};
use reprise_sim::{
    Action, DependencyError, DependencyOptions, Direction, FaultPlan, FaultRecord, NodeContext,
    NodeOptions, Peer, RunReport, Scenario, ScenarioRun, SimConfig, SimError, TraceMode, Violation,
    World, WorldView, check_determinism, run, try_run,
};

type Log = Arc<Mutex<Vec<String>>>;
type Boot = Arc<dyn Fn(NodeContext, Log) + Send + Sync>;
type Script = Arc<dyn Fn(&mut World) + Send + Sync>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Milliseconds of true simulated time since the start of the run.
fn now_ms(ctx: &NodeContext) -> u64 {
    ctx.runtime().stopwatch_nanos() / 1_000_000
}

fn push(log: &Log, line: String) {
    log.lock().expect("not poisoned").push(line);
}

/// Nodes made of closures, a script, and liveness once `dones` log lines start with
/// `done`.
struct Probe {
    nodes: Vec<(&'static str, Boot)>,
    dependencies: Vec<&'static str>,
    script: Script,
    dones: usize,
    log: Log,
}

impl Probe {
    fn new(script: impl Fn(&mut World) + Send + Sync + 'static) -> Self {
        Probe {
            nodes: Vec::new(),
            dependencies: Vec::new(),
            script: Arc::new(script),
            dones: 1,
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

    fn dones(mut self, dones: usize) -> Self {
        self.dones = dones;
        self
    }

    fn dependency(mut self, name: &'static str) -> Self {
        self.dependencies.push(name);
        self
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().expect("not poisoned").clone()
    }
}

impl Scenario for Probe {
    fn name(&self) -> &'static str {
        "scripted-probe"
    }
    fn description(&self) -> &'static str {
        "observes scripted faults"
    }
    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        self.log.lock().expect("not poisoned").clear();
        for name in &self.dependencies {
            world.add_dependency(name, DependencyOptions::default());
        }
        for (name, boot) in &self.nodes {
            let (boot, log) = (Arc::clone(boot), Arc::clone(&self.log));
            world.add_node(name, NodeOptions::default(), move |ctx| {
                boot(ctx, Arc::clone(&log));
            });
        }
        (self.script)(world);
        Box::new(Done(Arc::clone(&self.log), self.dones))
    }
}

struct Done(Log, usize);
impl ScenarioRun for Done {
    fn check_safety(&self, _: &WorldView<'_>) -> Result<(), Violation> {
        Ok(())
    }
    fn check_liveness(&self, _: &WorldView<'_>) -> Result<(), Violation> {
        let log = self.0.lock().expect("not poisoned");
        if log.iter().filter(|l| l.starts_with("done")).count() >= self.1 {
            Ok(())
        } else {
            Err(Violation::new(
                "done",
                format!("{} line(s) so far", log.len()),
            ))
        }
    }
}

/// Logs `boot #n at T` at every boot, then `tick T` every 50 ms for `ticks` ticks, then
/// `done` (if this is boot `done_at_boot` or later).
fn ticker(ticks: u32, done_at_boot: u32) -> impl Fn(NodeContext, Log) + Send + Sync + 'static {
    move |ctx: NodeContext, log: Log| {
        let boot = ctx.boot_count();
        push(&log, format!("boot #{boot} at {}", now_ms(&ctx)));
        let c = ctx.clone();
        ctx.spawn("tick", async move {
            for _ in 0..ticks {
                c.sleep(ms(50)).await;
                push(&log, format!("tick {}", now_ms(&c)));
            }
            if boot >= done_at_boot {
                push(&log, "done".into());
            }
        });
    }
}

fn kinds(report: &RunReport) -> Vec<(&'static str, u128)> {
    report
        .faults
        .iter()
        .map(|f| (f.kind, f.at.as_millis()))
        .collect()
}

fn fault<'a>(report: &'a RunReport, kind: &str) -> &'a FaultRecord {
    report
        .faults
        .iter()
        .find(|f| f.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} among {:?}", report.faults))
}

fn passed(probe: &Probe, config: &SimConfig) -> RunReport {
    let report = run(probe, config);
    assert!(report.passed(), "{}", report.outcome);
    report
}

#[test]
fn a_scripted_crash_lasts_until_the_scripted_restart() {
    let probe = Probe::new(|world| {
        world.at(ms(120)).crash("worker");
        world.at(ms(400)).restart("worker");
    })
    .node("worker", ticker(4, 2));
    let report = passed(&probe, &SimConfig::new(1));
    assert_eq!(
        kinds(&report),
        [("script.crash", 120), ("script.restart", 400)]
    );
    assert!(
        fault(&report, "script.crash")
            .detail
            .contains("down until restarted")
    );
    assert_eq!(
        probe.lines(),
        [
            "boot #1 at 0",
            "tick 50",
            "tick 100",
            "boot #2 at 400",
            "tick 450",
            "tick 500",
            "tick 550",
            "tick 600",
            "done"
        ]
    );
}

#[test]
fn crash_for_reboots_after_the_downtime() {
    let probe = Probe::new(|world| {
        world.at(ms(120)).crash_for("worker", ms(250));
    })
    .node("worker", ticker(1, 2));
    let report = passed(&probe, &SimConfig::new(2));
    assert_eq!(kinds(&report), [("script.crash", 120)]);
    assert!(
        probe.lines().contains(&"boot #2 at 370".to_owned()),
        "{:?}",
        probe.lines()
    );
}

#[test]
fn restart_bounces_a_running_node() {
    let probe = Probe::new(|world| {
        world.at(ms(120)).restart("worker");
    })
    .node("worker", ticker(3, 2));
    let report = passed(&probe, &SimConfig::new(3));
    assert_eq!(kinds(&report), [("script.restart", 120)]);
    assert!(
        fault(&report, "script.restart")
            .detail
            .contains("1 task(s) dropped"),
        "{:?}",
        report.faults
    );
    assert_eq!(
        probe.lines(),
        [
            "boot #1 at 0",
            "tick 50",
            "tick 100",
            "boot #2 at 120",
            "tick 170",
            "tick 220",
            "tick 270",
            "done"
        ]
    );
}

#[test]
fn an_unrestarted_crash_is_healed_by_the_liveness_phase() {
    let probe = Probe::new(|world| {
        world.at(ms(120)).crash("worker");
    })
    .node("worker", ticker(1, 2));
    let config = SimConfig::new(4).with_trace(TraceMode::Full);
    let report = passed(&probe, &config);
    assert_eq!(kinds(&report), [("script.crash", 120)]);
    // Nothing can run until the heal, so the fault phase ends there and reboots it.
    assert!(
        probe.lines().contains(&"boot #2 at 120".to_owned()),
        "{:?}",
        probe.lines()
    );
    let trace = report.trace.expect("full trace");
    let heal = trace
        .iter()
        .position(|l| l.text.contains("fault window closed"))
        .expect("the heal");
    assert!(trace[heal..].iter().any(|l| l.text == "boot #2"));
}

#[test]
fn pause_stops_scheduling_for_its_duration() {
    let probe = Probe::new(|world| {
        world.at(ms(120)).pause("worker", ms(200));
    })
    .node("worker", ticker(5, 1));
    let report = passed(&probe, &SimConfig::new(5));
    assert_eq!(kinds(&report), [("script.pause", 120)]);
    assert_eq!(fault(&report, "script.pause").detail, "for 200ms");
    // The tick due at 150 ms waits for the resume at 320 ms; the next ones follow it.
    assert_eq!(
        probe.lines(),
        [
            "boot #1 at 0",
            "tick 50",
            "tick 100",
            "tick 320",
            "tick 370",
            "tick 420",
            "done"
        ]
    );
}

fn one_event(id: u128) -> NewEvent {
    NewEvent {
        event_id: EventId(id),
        event_type: "Probed".into(),
        schema_version: 1,
        payload: Payload::from_json_text("{}"),
        metadata: Metadata::default(),
    }
}

/// Appends event `id` at each of `times` (ms), logging the outcome, then `done`.
fn appender(id: u128, times: &'static [u64]) -> impl Fn(NodeContext, Log) + Send + Sync {
    move |ctx: NodeContext, log: Log| {
        let (c, store) = (ctx.clone(), ctx.event_store());
        ctx.spawn("append", async move {
            for (i, &at) in times.iter().enumerate() {
                let wait = at.saturating_sub(now_ms(&c));
                c.sleep(ms(wait)).await;
                let event = one_event(id * 100 + i as u128);
                let batch = AppendBatch::single(
                    StreamId::of("probe", id),
                    ExpectedVersion::Any,
                    vec![event],
                );
                let result = store.append(batch).await.map(|_| ());
                let name = c.node_name();
                push(&log, format!("{name} {at}: {result:?}"));
            }
            push(&log, "done".into());
        });
    }
}

#[test]
fn a_partition_cuts_one_peer_until_repaired() {
    let probe = Probe::new(|world| {
        world
            .at(ms(100))
            .partition("out", Peer::EventStore, Direction::Outbound)
            .partition("in", Peer::EventStore, Direction::Inbound)
            .partition("bus-only", Peer::EventBus, Direction::Both);
        world.at(ms(700)).repair("out").repair("in");
    })
    .node("out", appender(1, &[150, 800]))
    .node("in", appender(2, &[150, 800]))
    .node("bus-only", appender(3, &[150]))
    .dones(3);
    let report = passed(&probe, &SimConfig::new(6));
    let mut lines = probe.lines();
    lines.sort();
    let timeout = Err::<(), _>(StoreError::Timeout);
    assert_eq!(
        lines,
        [
            "bus-only 150: Ok(())".to_owned(),
            "done".into(),
            "done".into(),
            "done".into(),
            format!("in 150: {timeout:?}"),
            "in 800: Ok(())".to_owned(),
            format!("out 150: {timeout:?}"),
            "out 800: Ok(())".to_owned(),
        ]
    );
    // The inbound partition lost only the response: the first append is in the store.
    let store = &report.event_store;
    assert_eq!(store.stream_version_now(&StreamId::of("probe", 2)), 2);
    assert_eq!(store.stream_version_now(&StreamId::of("probe", 1)), 1);
    let partition = fault(&report, "script.partition");
    assert!(partition.detail.contains("until repaired"), "{partition}");
    assert_eq!(
        kinds(&report),
        [
            ("script.partition", 100),
            ("script.partition", 100),
            ("script.partition", 100),
            ("script.repair", 700),
            ("script.repair", 700)
        ]
    );
    assert_eq!(report.faults[3].detail, "1 partition(s) healed");
}

#[test]
fn repair_all_heals_every_partition_and_timed_partitions_heal_themselves() {
    let probe = Probe::new(|world| {
        world
            .at(ms(100))
            .partition("a", Peer::Any, Direction::Both)
            .partition("b", Peer::EventStore, Direction::Both)
            .partition_for("c", Peer::EventStore, Direction::Both, ms(300));
        world.at(ms(900)).repair_all();
    })
    .node("a", appender(1, &[150, 1_000]))
    .node("b", appender(2, &[150, 1_000]))
    .node("c", appender(3, &[150, 700]))
    .dones(3);
    let report = passed(&probe, &SimConfig::new(7));
    let mut lines = probe.lines();
    lines.retain(|l| l != "done");
    lines.sort();
    let timeout = format!("{:?}", Err::<(), _>(StoreError::Timeout));
    assert_eq!(
        lines,
        [
            "a 1000: Ok(())".into(),
            format!("a 150: {timeout}"),
            "b 1000: Ok(())".into(),
            format!("b 150: {timeout}"),
            format!("c 150: {timeout}"),
            "c 700: Ok(())".into(),
        ]
    );
    // `Peer::Any` cut the store and the bus (the probe has no dependency).
    let any = &report.faults[0];
    assert!(
        any.detail.contains("event-store") && any.detail.contains("event-bus"),
        "{any}"
    );
    assert_eq!(
        fault(&report, "script.repair_all").detail,
        "3 partition(s) healed"
    );
}

#[test]
fn an_unrepaired_partition_is_healed_by_the_liveness_phase() {
    let retrier = |ctx: NodeContext, log: Log| {
        let (c, store) = (ctx.clone(), ctx.event_store());
        ctx.spawn("retry", async move {
            c.sleep(ms(150)).await;
            let batch = AppendBatch::single(
                StreamId::of("probe", 1),
                ExpectedVersion::Any,
                vec![one_event(1)],
            );
            while store.append(batch.clone()).await.is_err() {
                c.sleep(ms(100)).await;
            }
            push(&log, format!("done at {}", now_ms(&c)));
        });
    };
    let probe = Probe::new(|world| {
        world
            .at(ms(100))
            .partition("a", Peer::EventStore, Direction::Both);
    })
    .node("a", retrier);
    let report = passed(&probe, &SimConfig::new(8).with_fault_window(ms(2_000)));
    let done: u64 = probe.lines()[0]["done at ".len()..]
        .parse()
        .expect("millis");
    assert!(
        done >= 2_000,
        "the append only succeeds after the heal at 2 s: {done}"
    );
    assert_eq!(kinds(&report), [("script.partition", 100)]);
}

/// Calls `payments` at each of `times` (ms), logging the outcome, then `done`.
fn caller(times: &'static [u64]) -> impl Fn(NodeContext, Log) + Send + Sync {
    move |ctx: NodeContext, log: Log| {
        let c = ctx.clone();
        ctx.spawn("call", async move {
            for &at in times {
                c.sleep(ms(at.saturating_sub(now_ms(&c)))).await;
                let result = c.call_op("payments", "charge order-1", || ()).await;
                push(&log, format!("{at}: {result:?}"));
            }
            push(&log, "done".into());
        });
    }
}

#[test]
fn a_dependency_is_down_for_its_duration_or_until_brought_up() {
    let unavailable = format!(
        "{:?}",
        Err::<(), _>(DependencyError::Unavailable("payments".into()))
    );
    let probe = Probe::new(|world| {
        world.at(ms(100)).dependency_down("payments", ms(500));
    })
    .dependency("payments")
    .node("shop", caller(&[150, 700]));
    let report = passed(&probe, &SimConfig::new(9));
    assert_eq!(
        probe.lines(),
        [
            format!("150: {unavailable}"),
            "700: Ok(())".into(),
            "done".into()
        ]
    );
    assert_eq!(kinds(&report), [("script.dependency_down", 100)]);
    assert!(
        fault(&report, "script.dependency_down")
            .detail
            .starts_with("payments down for 500ms")
    );

    let probe = Probe::new(|world| {
        world.at(ms(100)).dependency_down_until_up("payments");
        world.at(ms(1_000)).dependency_up("payments");
    })
    .dependency("payments")
    .node("shop", caller(&[150, 900, 1_100]));
    let report = passed(&probe, &SimConfig::new(10));
    assert_eq!(
        probe.lines(),
        [
            format!("150: {unavailable}"),
            format!("900: {unavailable}"),
            "1100: Ok(())".into(),
            "done".into()
        ]
    );
    assert_eq!(
        fault(&report, "script.dependency_up").detail,
        "payments: 1 outage(s) ended"
    );
}

#[test]
fn a_partition_from_one_dependency_leaves_the_others_reachable() {
    let both = |ctx: NodeContext, log: Log| {
        let c = ctx.clone();
        ctx.spawn("call", async move {
            c.sleep(ms(150)).await;
            let payments = c.call("payments", || ()).await;
            let carrier = c.call("carrier", || ()).await;
            push(&log, format!("{payments:?} {carrier:?}"));
            push(&log, "done".into());
        });
    };
    let probe = Probe::new(|world| {
        world.at(ms(100)).partition(
            "shop",
            Peer::Dependency("payments".into()),
            Direction::Outbound,
        );
    })
    .dependency("payments")
    .dependency("carrier")
    .node("shop", both);
    passed(&probe, &SimConfig::new(11));
    let unavailable = Err::<(), _>(DependencyError::Unavailable("payments".into()));
    assert_eq!(probe.lines()[0], format!("{unavailable:?} Ok(())"));
}

#[test]
fn clock_skew_and_rebalance_are_scriptable() {
    let reader = |ctx: NodeContext, log: Log| {
        let c = ctx.clone();
        ctx.spawn("read", async move {
            c.sleep(ms(200)).await;
            let skew = i128::from(c.runtime().now().as_unix_nanos())
                - i128::from((Timestamp::SIMULATION_EPOCH + ms(200)).as_unix_nanos());
            push(&log, format!("done {}ms", skew / 1_000_000));
        });
    };
    let consumer = |ctx: NodeContext, _log: Log| {
        let bus = ctx.event_bus();
        ctx.spawn("consume", async move {
            let Ok(mut subscription) = bus.subscribe("readers", &["topic"]).await else {
                return;
            };
            // Waits for a message that never comes, through the rebalance.
            while !matches!(subscription.next().await, Err(BusError::Closed)) {}
        });
    };
    let probe = Probe::new(|world| {
        world.event_bus().create_topic("topic", 1);
        world
            .at(ms(100))
            .skew_clock("drifter", -1_500)
            .rebalance("reader");
    })
    .node("drifter", reader)
    .node("reader", consumer);
    let report = passed(&probe, &SimConfig::new(12).with_trace(TraceMode::Full));
    assert_eq!(probe.lines(), ["done -1500ms"]);
    assert_eq!(
        kinds(&report),
        [("script.clock_skew", 100), ("script.rebalance", 100)]
    );
    assert_eq!(fault(&report, "script.clock_skew").detail, "-1500ms");
}

#[test]
fn actions_with_nothing_to_act_on_are_traced_as_skipped() {
    let probe = Probe::new(|world| {
        world.at(ms(100)).crash_for("worker", ms(500));
        world.at(ms(200)).crash("worker").pause("worker", ms(50));
    })
    .node("worker", ticker(1, 2));
    let report = passed(&probe, &SimConfig::new(13).with_trace(TraceMode::Full));
    assert_eq!(kinds(&report), [("script.crash", 100)]);
    let trace = report.trace.expect("full trace");
    let skipped: Vec<&str> = trace
        .iter()
        .filter(|l| l.text.contains("skipped"))
        .map(|l| l.text.as_str())
        .collect();
    assert_eq!(
        skipped,
        [
            "script.crash skipped: the node is down already",
            "script.pause skipped: the node is down"
        ]
    );
}

#[test]
fn scripted_faults_are_traced_as_faults() {
    let probe = Probe::new(|world| {
        world.schedule(
            ms(120),
            Action::Crash {
                node: "worker".into(),
                restart_after: Some(ms(30)),
            },
        );
    })
    .node("worker", ticker(1, 2));
    let report = passed(&probe, &SimConfig::new(14).with_trace(TraceMode::Full));
    let trace = report.trace.expect("full trace");
    let line = trace
        .iter()
        .find(|l| l.text.starts_with("FAULT script.crash"))
        .expect("a fault line");
    assert_eq!(line.at, ms(120));
    assert_eq!(line.node.as_deref(), Some("worker"));
}

#[test]
fn a_pending_script_keeps_the_fault_phase_open() {
    // Liveness holds at once, so without the script the run would settle at the first
    // check; the crash at 3 s still happens.
    let probe = Probe::new(|world| {
        world.at(ms(3_000)).crash_for("worker", ms(100));
    })
    .node("worker", |_ctx: NodeContext, log: Log| {
        push(&log, "done".into());
    });
    let report = passed(&probe, &SimConfig::new(15));
    assert_eq!(kinds(&report), [("script.crash", 3_000)]);
    assert!(report.stats.sim_time >= ms(3_000));
    // Without the script it settles at once.
    let calm = passed(
        &Probe::new(|_| {}).node("worker", |_ctx: NodeContext, log: Log| {
            push(&log, "done".into());
        }),
        &SimConfig::new(15),
    );
    assert!(calm.stats.sim_time < ms(1_000), "{:?}", calm.stats.sim_time);
}

#[test]
fn scripts_are_checked_when_the_run_starts() {
    let with = |script: fn(&mut World)| {
        try_run(
            &Probe::new(script)
                .dependency("payments")
                .node("worker", ticker(1, 1)),
            &SimConfig::new(16).with_fault_window(ms(1_000)),
        )
        .map(|r| r.outcome)
    };
    assert_eq!(
        with(|w| {
            w.at(ms(10)).crash("ghost");
        }),
        Err(SimError::UnknownNode {
            fault: "script.crash",
            node: "ghost".into()
        })
    );
    assert_eq!(
        with(|w| {
            w.at(ms(10)).dependency_down("ghost", ms(10));
        }),
        Err(SimError::UnknownDependency {
            fault: "script.dependency_down",
            dependency: "ghost".into()
        })
    );
    assert_eq!(
        with(|w| {
            w.at(ms(10))
                .partition("worker", Peer::Dependency("ghost".into()), Direction::Both);
        }),
        Err(SimError::UnknownDependency {
            fault: "script.partition",
            dependency: "ghost".into()
        })
    );
    assert!(matches!(
        with(|w| {
            w.at(ms(1_000)).restart("worker");
        }),
        Err(SimError::Config(message)) if message.contains("fault window")
    ));
    assert!(
        with(|w| {
            w.at(ms(999)).restart("worker");
        })
        .is_ok()
    );
}

#[test]
fn scripts_combine_with_plans_deterministically() {
    let probe = Probe::new(|world| {
        world.at(ms(100)).crash_for("worker", ms(200));
        world
            .at(ms(150))
            .partition_for("other", Peer::Any, Direction::Inbound, ms(400));
        world.at(ms(200)).dependency_down("payments", ms(300));
    })
    .dependency("payments")
    .node("worker", ticker(6, 2))
    .node("other", caller(&[150, 400, 900]));
    for seed in 1..=20 {
        let config = SimConfig::new(seed).with_plan(FaultPlan::swarm());
        check_determinism(&probe, &config).unwrap_or_else(|d| panic!("{d}"));
        let report = run(&probe, &config);
        // The crash is skipped when the nemesis crashed the worker first.
        let scripted: Vec<&str> = report
            .faults
            .iter()
            .map(|f| f.kind)
            .filter(|k| k.starts_with("script."))
            .collect();
        assert!(
            scripted.ends_with(&["script.partition", "script.dependency_down"]),
            "seed {seed}: {:?}",
            report.faults
        );
    }
}
