//! Each fault does what its documentation says, observed from inside a node.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reprise_core::{
    AppendBatch, EventId, ExpectedVersion, Metadata, NewEvent, Payload, StoreError, StreamId,
    Timestamp,
};
use reprise_sim::{
    Budget, DependencyError, DependencyFaults, DependencyOptions, Direction, Fault, FaultPlan,
    FaultSpec, NodeContext, NodeOptions, Outcome, Peer, Scenario, ScenarioRun, SimConfig,
    Violation, World, WorldView, run,
};

type Log = Arc<Mutex<Vec<String>>>;
type Boot = Arc<dyn Fn(NodeContext, Log) + Send + Sync>;

/// A scenario made of closures: each node's boot function, and a liveness condition on
/// the log the nodes write.
struct Probe {
    nodes: Vec<(&'static str, Boot)>,
    dependencies: Vec<(&'static str, DependencyOptions)>,
    expected_lines: usize,
    log: Log,
}

impl Probe {
    fn new(expected_lines: usize) -> Self {
        Probe {
            nodes: Vec::new(),
            dependencies: Vec::new(),
            expected_lines,
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
        "probe"
    }
    fn description(&self) -> &'static str {
        "observes one fault"
    }
    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        self.log.lock().expect("not poisoned").clear();
        for (name, options) in &self.dependencies {
            world.add_dependency(name, *options);
        }
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

fn one_event(id: u128) -> NewEvent {
    NewEvent {
        event_id: EventId(id),
        event_type: "Probed".into(),
        schema_version: 1,
        payload: Payload::from_json_text("{}"),
        metadata: Metadata::default(),
    }
}

#[test]
fn one_way_partitions_lose_requests_or_responses() {
    let append_at_150ms = |id: u128| {
        move |ctx: NodeContext, log: Log| {
            let (c, store) = (ctx.clone(), ctx.event_store());
            ctx.spawn("append", async move {
                c.sleep(Duration::from_millis(150)).await;
                let stream = StreamId::of("probe", id);
                let result = store
                    .append(AppendBatch::single(
                        stream.clone(),
                        ExpectedVersion::Any,
                        vec![one_event(id)],
                    ))
                    .await;
                push(&log, format!("{id}: {result:?}"));
            });
        }
    };
    let probe = Probe::new(2)
        .node("a", append_at_150ms(1))
        .node("b", append_at_150ms(2));
    let partition = |direction| Fault::Partition {
        peer: Peer::EventStore,
        direction,
        per_tick_probability: 1.0,
        min_duration_ms: 2_000,
        max_duration_ms: 2_000,
    };
    let plan = FaultPlan::named("one-way")
        .with(
            FaultSpec::new(partition(Direction::Inbound))
                .on_nodes(["a"])
                .during(100, 200),
        )
        .with(
            FaultSpec::new(partition(Direction::Outbound))
                .on_nodes(["b"])
                .during(100, 200),
        );
    let store = Arc::new(Mutex::new(None));
    struct Capture(
        Probe,
        Arc<Mutex<Option<Arc<reprise_core::InMemoryEventStore>>>>,
    );
    impl Scenario for Capture {
        fn name(&self) -> &'static str {
            "capture"
        }
        fn description(&self) -> &'static str {
            "keeps the store for inspection"
        }
        fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
            *self.1.lock().expect("not poisoned") = Some(world.event_store());
            self.0.setup(world)
        }
    }
    let scenario = Capture(probe, Arc::clone(&store));
    let report = run(&scenario, &SimConfig::new(4).with_plan(plan));
    assert!(report.passed(), "{}", report.outcome);
    let mut lines = scenario.0.lines();
    lines.sort();
    assert_eq!(
        lines,
        vec!["1: Err(Timeout)".to_owned(), "2: Err(Timeout)".to_owned()]
    );
    let store = store
        .lock()
        .expect("not poisoned")
        .clone()
        .expect("captured");
    assert_eq!(
        store.stream_version_now(&StreamId::of("probe", 1)),
        1,
        "inbound cut: the write was applied"
    );
    assert_eq!(
        store.stream_version_now(&StreamId::of("probe", 2)),
        0,
        "outbound cut: nothing was applied"
    );
    assert_eq!(
        report
            .faults
            .iter()
            .filter(|f| f.kind == "network.partition")
            .count(),
        2
    );
}

#[test]
fn dependency_outcomes_decide_whether_the_call_ran() {
    let caller = |dependency: &'static str| {
        move |ctx: NodeContext, log: Log| {
            let c = ctx.clone();
            ctx.spawn("call", async move {
                let ran = Arc::new(Mutex::new(false));
                let flag = Arc::clone(&ran);
                let result = c
                    .call(dependency, move || {
                        *flag.lock().expect("not poisoned") = true;
                        42
                    })
                    .await;
                let ran = *ran.lock().expect("not poisoned");
                push(&log, format!("{}: {result:?} ran={ran}", c.node_name()));
            });
        }
    };
    let mut probe = Probe::new(3)
        .node("lossy", caller("payments"))
        .node("failing", caller("payments"))
        .node("confused", caller("nope"));
    probe
        .dependencies
        .push(("payments", DependencyOptions::default()));
    let faults = |error_probability, response_lost_probability| Fault::Dependency {
        dependency: Some("payments".into()),
        faults: DependencyFaults {
            slowdown_factor: 1.0,
            error_probability,
            response_lost_probability,
        },
    };
    let plan = FaultPlan::named("dependency")
        .with(FaultSpec::new(faults(0.0, 1.0)).on_nodes(["lossy"]))
        .with(FaultSpec::new(faults(1.0, 0.0)).on_nodes(["failing"]));
    let report = run(&probe, &SimConfig::new(2).with_plan(plan));
    assert!(report.passed(), "{}", report.outcome);
    let mut lines = probe.lines();
    lines.sort();
    let timeout = DependencyError::Timeout("payments".into());
    let failed = DependencyError::Failed("payments".into());
    let unknown = DependencyError::Unknown("nope".into());
    assert_eq!(
        lines,
        vec![
            format!("confused: Err({unknown:?}) ran=false"),
            format!("failing: Err({failed:?}) ran=false"),
            format!("lossy: Err({timeout:?}) ran=true"),
        ]
    );
}

#[test]
fn outages_make_dependencies_unavailable_until_they_end() {
    let caller = |ctx: NodeContext, log: Log| {
        let c = ctx.clone();
        ctx.spawn("call", async move {
            c.sleep(Duration::from_millis(150)).await;
            let during = c.call("payments", || ()).await;
            c.sleep(Duration::from_millis(1_000)).await;
            let after = c.call("payments", || ()).await;
            push(&log, format!("{during:?} then {after:?}"));
        });
    };
    let mut probe = Probe::new(1).node("shop", caller);
    probe
        .dependencies
        .push(("payments", DependencyOptions::default()));
    let outage = Fault::DependencyOutage {
        dependency: None,
        per_tick_probability: 1.0,
        min_duration_ms: 500,
        max_duration_ms: 500,
    };
    let plan = FaultPlan::named("outage").with(FaultSpec::new(outage).during(100, 200));
    let report = run(&probe, &SimConfig::new(1).with_plan(plan));
    assert!(report.passed(), "{}", report.outcome);
    assert_eq!(
        probe.lines(),
        vec![format!(
            "{:?} then Ok(())",
            Err::<(), _>(DependencyError::Unavailable("payments".into()))
        )]
    );
}

#[test]
fn clock_skew_offsets_what_a_node_reads() {
    let reader = |ctx: NodeContext, log: Log| {
        let c = ctx.clone();
        ctx.spawn("read", async move {
            c.sleep(Duration::from_millis(200)).await;
            let now = reprise_core::Clock::now(&*c.runtime());
            let true_now = Timestamp::SIMULATION_EPOCH + Duration::from_millis(200);
            let skew_ms = i128::from(now.as_unix_nanos()) / 1_000_000
                - i128::from(true_now.as_unix_nanos()) / 1_000_000;
            push(&log, format!("{skew_ms:+}ms"));
        });
    };
    let probe = Probe::new(1).node("drifter", reader);
    let plan = FaultPlan::named("skew").with(
        FaultSpec::new(Fault::ClockSkew {
            per_tick_probability: 1.0,
            max_skew_ms: 5_000,
        })
        .during(100, 200),
    );
    let report = run(&probe, &SimConfig::new(6).with_plan(plan));
    assert!(report.passed(), "{}", report.outcome);
    let skew = report
        .faults
        .iter()
        .find(|f| f.kind == "clock.skew")
        .expect("the skew fired");
    assert_eq!(
        probe.lines(),
        vec![skew.detail.clone()],
        "the node reads true time plus the recorded skew"
    );
}

#[test]
fn a_paused_node_makes_no_progress_and_then_resumes() {
    let ticker = |ctx: NodeContext, log: Log| {
        let c = ctx.clone();
        ctx.spawn("tick", async move {
            for _ in 0..40 {
                c.sleep(Duration::from_millis(10)).await;
                let at = reprise_core::Clock::now(&*c.runtime())
                    .saturating_since(Timestamp::SIMULATION_EPOCH);
                push(&log, format!("{}", at.as_millis()));
            }
        });
    };
    let probe = Probe::new(40).node("sleepy", ticker);
    let pause = Fault::Pause {
        per_tick_probability: 1.0,
        min_duration_ms: 100,
        max_duration_ms: 100,
    };
    let plan = FaultPlan::named("pause").with(FaultSpec::new(pause).during(100, 200));
    let report = run(&probe, &SimConfig::new(1).with_plan(plan));
    assert!(report.passed(), "{}", report.outcome);
    let times: Vec<u64> = probe
        .lines()
        .iter()
        .map(|l| l.parse().expect("millis"))
        .collect();
    let largest_gap = times.windows(2).map(|w| w[1] - w[0]).max().expect("ticks");
    assert_eq!(
        largest_gap, 110,
        "a 100 ms pause at t=100ms holds the tick due then until t=200ms: {times:?}"
    );
}

#[test]
fn buggify_points_fire_only_inside_the_simulation_and_are_recorded() {
    let poker = |ctx: NodeContext, log: Log| {
        ctx.spawn("poke", async move {
            let fired = (0..200)
                .filter(|_| reprise_core::buggify("probe.point"))
                .count();
            push(&log, fired.to_string());
        });
    };
    let probe = Probe::new(1).node("poker", poker);
    let plan = FaultPlan::named("buggify").with(FaultSpec::new(Fault::Buggify {
        enable_probability: 1.0,
        fire_probability: 0.5,
    }));
    let report = run(&probe, &SimConfig::new(3).with_plan(plan));
    assert!(report.passed(), "{}", report.outcome);
    let fired: usize = probe.lines()[0].parse().expect("a count");
    assert!(
        (50..150).contains(&fired),
        "about half of 200 should fire, got {fired}"
    );
    assert_eq!(
        report
            .faults
            .iter()
            .filter(|f| f.kind == "buggify" && f.detail == "probe.point")
            .count(),
        fired
    );
    assert!(
        !reprise_core::buggify("probe.point"),
        "no oracle outside a run"
    );
    let calm = run(&probe, &SimConfig::new(3));
    assert_eq!(
        probe.lines(),
        vec!["0".to_owned()],
        "a calm plan never fires: {calm:?}"
    );
}

#[test]
fn the_step_budget_stops_a_livelock() {
    let spinner = |ctx: NodeContext, _log: Log| {
        ctx.spawn("spin", async move {
            loop {
                // Wakes itself forever without letting time advance.
                let mut yielded = false;
                futures::future::poll_fn(|cx| {
                    if yielded {
                        std::task::Poll::Ready(())
                    } else {
                        yielded = true;
                        cx.waker().wake_by_ref();
                        std::task::Poll::Pending
                    }
                })
                .await;
            }
        });
    };
    let probe = Probe::new(1).node("spinner", spinner);
    let config = SimConfig {
        max_steps: 10_000,
        ..SimConfig::new(1)
    };
    let report = run(&probe, &config);
    assert_eq!(
        report.outcome,
        Outcome::BudgetExceeded {
            budget: Budget::Steps(10_000),
            at: Duration::ZERO
        }
    );
}

#[test]
fn store_faults_surface_as_typed_errors() {
    let writer = |ctx: NodeContext, log: Log| {
        let store = ctx.event_store();
        ctx.spawn("write", async move {
            let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
            for id in 0..300u128 {
                let result = store
                    .append(AppendBatch::single(
                        StreamId::of("w", id),
                        ExpectedVersion::NoStream,
                        vec![one_event(id)],
                    ))
                    .await;
                let key = match result {
                    Ok(_) => "ok".to_owned(),
                    Err(StoreError::Timeout) => "timeout".to_owned(),
                    Err(e) => e.kind().to_owned(),
                };
                *outcomes.entry(key).or_default() += 1;
            }
            push(&log, format!("{outcomes:?}"));
        });
    };
    let probe = Probe::new(1).node("writer", writer);
    let faults = reprise_sim::StoreFaults {
        extra_latency_max_ms: 1,
        transient_probability: 0.2,
        timeout_probability: 0.1,
        commit_unknown_probability: 0.1,
    };
    let plan = FaultPlan::named("flaky-store").with(FaultSpec::new(Fault::Store(faults)));
    let config = SimConfig::new(8)
        .with_plan(plan)
        .with_fault_window(Duration::from_secs(600))
        .with_liveness_bound(Duration::from_secs(60));
    let report = run(&probe, &config);
    assert!(report.passed(), "{}", report.outcome);
    let count = |kind: &str| report.faults.iter().filter(|f| f.kind == kind).count();
    let line = &probe.lines()[0];
    assert!(
        count("store.transient") > 30
            && count("store.timeout") > 10
            && count("store.commit_unknown") > 10,
        "{line}"
    );
    assert!(
        line.contains(&format!("\"transient\": {}", count("store.transient"))),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "\"timeout\": {}",
            count("store.timeout") + count("store.commit_unknown")
        )),
        "{line}"
    );
}

#[test]
fn duplicated_deliveries_come_twice_and_only_twice() {
    let consumer = |ctx: NodeContext, log: Log| {
        let bus = ctx.event_bus();
        ctx.spawn("consume", async move {
            let mut sub = bus.subscribe("g", &["t"]).await.expect("calm link");
            let messages = (0..3)
                .map(|n| reprise_core::OutgoingMessage {
                    topic: "t".into(),
                    key: "k".into(),
                    payload: Payload::from_json_text(n.to_string()),
                    headers: reprise_core::Headers::default(),
                })
                .collect();
            while bus.publish(Vec::clone(&messages)).await.is_err() {}
            let mut offsets = Vec::new();
            for _ in 0..6 {
                let d = sub.next().await.expect("deliveries");
                sub.ack(&d);
                offsets.push(d.offset);
            }
            push(&log, format!("{offsets:?}"));
        });
    };
    let probe = Probe::new(1).node("consumer", consumer);
    let duplicates = reprise_sim::BusFaults {
        duplicate_probability: 1.0,
        ..reprise_sim::BusFaults::default()
    };
    let report = run(
        &probe,
        &SimConfig::new(1)
            .with_plan(FaultPlan::named("dup").with(FaultSpec::new(Fault::Bus(duplicates)))),
    );
    assert!(report.passed(), "{}", report.outcome);
    assert_eq!(probe.lines(), vec!["[0, 0, 1, 1, 2, 2]".to_owned()]);
    assert_eq!(
        report
            .faults
            .iter()
            .filter(|f| f.kind == "bus.duplicate")
            .count(),
        3
    );
}
