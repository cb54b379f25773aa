//! Entity-aware traces, honest fault accounting and per-kind fault streams:
//! - store, bus and dependency trace lines name their streams, topics, keys, groups,
//!   dependencies and operations, so a failure report finds the lines about any entity;
//! - a dependency's inherent error rate is reported apart from injected faults;
//! - each fault kind draws from its own stream: a kind that never fires leaves the run
//!   untouched, and one kind's faults do not move another's;
//! - a finished run hands over the final store and bus.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reprise_core::{Headers, OutgoingMessage, Payload, StreamId};
use reprise_sim::harness::{failure_message_with, find_failure, lines_touching};
use reprise_sim::testing_scenario::{PlantedBug, TokenTransfers};
use reprise_sim::{
    BusFaults, DependencyFaults, DependencyOptions, Fault, FaultPlan, FaultSpec, NodeContext,
    NodeOptions, RunReport, Scenario, ScenarioRun, SimConfig, StoreFaults, TraceLine, TraceMode,
    Violation, World, WorldView, run,
};

fn full(seed: u64) -> SimConfig {
    SimConfig::new(seed).with_trace(TraceMode::Full)
}

fn texts(report: &RunReport) -> Vec<&str> {
    report
        .trace
        .as_deref()
        .expect("full trace")
        .iter()
        .map(|l| l.text.as_str())
        .collect()
}

#[test]
fn store_and_bus_lines_name_streams_topics_keys_and_groups() {
    let report = run(&TokenTransfers::default(), &full(1));
    assert!(report.passed(), "{}", report.outcome);
    let lines = texts(&report);
    let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    // An append names every stream of its batch, with event types and expectations.
    assert!(
        lines.iter().any(|l| l.starts_with("store append transfer-")
            && l.contains("+[Debited] expecting no stream; account-")
            && l.ends_with("-> ok")),
        "{lines:#?}"
    );
    assert!(has("store stream_version transfer-"));
    assert!(has("store stream_version account-"));
    assert!(has("publish [credits key=account-"));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("deliver credits/") && l.contains(" key=account-"))
    );
    assert!(has("subscribe ledger [\"credits\"] -> ok"));
    assert!(has("commit ledger -> ok"));
    // The lines touching one account: its appends, the credits published to it and
    // their deliveries.
    let trace = report.trace.as_deref().expect("full trace");
    let touching: Vec<&TraceLine> = lines_touching(trace, &["account-3".to_owned()]);
    let starts = |prefix: &str| touching.iter().any(|l| l.text.starts_with(prefix));
    assert!(starts("store append"), "{touching:#?}");
    assert!(starts("publish [credits key=account-3]"), "{touching:#?}");
    assert!(starts("deliver credits/"), "{touching:#?}");
    assert!(
        touching.iter().all(|l| !l.text.contains("account-30")),
        "whole words only"
    );
}

#[test]
fn a_failure_report_shows_the_lines_touching_the_violations_entities() {
    let scenario = TokenTransfers::with_bug(PlantedBug::RandomCreditId);
    let config = SimConfig::new(0).with_plan(FaultPlan::swarm());
    let found = find_failure(&scenario, &config, 1..=30).expect("the bug is found");
    let violation = found.violation().expect("a violation").clone();
    let account = violation
        .entities
        .iter()
        .find(|e| e.starts_with("account-"))
        .expect("the double credit names its account");
    let message = failure_message_with(&found, &[]);
    let excerpt = message
        .split("trace lines touching")
        .nth(1)
        .expect("an excerpt of the lines touching the entities");
    let excerpt = excerpt
        .split("trace lines of the run")
        .next()
        .expect("then the tail");
    // The credits appended to the account are there, not just the last line of the run.
    let credits = excerpt
        .lines()
        .filter(|l| l.contains("store append") && l.contains(account.as_str()))
        .count();
    assert!(credits >= 2, "{message}");
}

/// One node charging `payments` `calls` times, one call after the other.
struct Charges {
    options: DependencyOptions,
    calls: u32,
    outcomes: Arc<Mutex<Vec<String>>>,
}

impl Scenario for Charges {
    fn name(&self) -> &'static str {
        "charges"
    }
    fn description(&self) -> &'static str {
        "calls a dependency with an error rate of its own"
    }
    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        world.add_dependency("payments", self.options);
        let (calls, outcomes) = (self.calls, Arc::clone(&self.outcomes));
        outcomes.lock().expect("not poisoned").clear();
        world.add_node("shop", NodeOptions::default(), move |ctx: NodeContext| {
            let (c, outcomes) = (ctx.clone(), Arc::clone(&outcomes));
            ctx.spawn("charge", async move {
                for order in 0..calls {
                    let operation = format!("charge order-{order}");
                    let result = c.call_op("payments", &operation, || ()).await;
                    outcomes
                        .lock()
                        .expect("not poisoned")
                        .push(format!("{order}: {result:?}"));
                }
            });
        });
        Box::new(AllCharged(Arc::clone(&self.outcomes), self.calls as usize))
    }
}

struct AllCharged(Arc<Mutex<Vec<String>>>, usize);
impl ScenarioRun for AllCharged {
    fn check_safety(&self, _: &WorldView<'_>) -> Result<(), Violation> {
        Ok(())
    }
    fn check_liveness(&self, _: &WorldView<'_>) -> Result<(), Violation> {
        let n = self.0.lock().expect("not poisoned").len();
        if n >= self.1 {
            Ok(())
        } else {
            Err(Violation::new("all-charged", format!("{n}/{}", self.1)))
        }
    }
}

#[test]
fn inherent_errors_are_reported_apart_from_faults() {
    let scenario = Charges {
        options: DependencyOptions {
            error_probability: 0.3,
            ..DependencyOptions::default()
        },
        calls: 40,
        outcomes: Arc::default(),
    };
    let report = run(&scenario, &full(3));
    assert!(report.passed(), "{}", report.outcome);
    assert!(
        report.faults.is_empty(),
        "a calm plan fires no fault: {:?}",
        report.faults
    );
    let failed = scenario
        .outcomes
        .lock()
        .expect("not poisoned")
        .iter()
        .filter(|o| o.contains("Failed"))
        .count();
    assert!(failed > 0, "the error rate shows");
    assert_eq!(report.inherent_errors.len(), failed);
    for error in &report.inherent_errors {
        assert_eq!(error.kind, "dependency.inherent_error");
        assert!(
            error.detail.starts_with("payments charge order-"),
            "{error:?}"
        );
    }
    let lines = texts(&report);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("call payments charge order-0 -> "))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("dependency.inherent_error payments charge order-")),
        "{lines:#?}"
    );
    assert!(!lines.iter().any(|l| l.starts_with("FAULT")));

    // An injected error is a fault, and the inherent draws do not move when it is added:
    // with an injected error rate the calls the inherent rate failed still fail.
    let plan = FaultPlan::named("errors").with(FaultSpec::new(Fault::Dependency {
        dependency: None,
        faults: DependencyFaults {
            error_probability: 0.2,
            ..DependencyFaults::default()
        },
    }));
    let faulty = run(&scenario, &SimConfig::new(3).with_plan(plan));
    assert!(faulty.faults.iter().all(|f| f.kind == "dependency.error"));
    assert!(!faulty.faults.is_empty());
    assert_eq!(
        faulty
            .inherent_errors
            .iter()
            .map(|e| &e.detail)
            .collect::<Vec<_>>(),
        report
            .inherent_errors
            .iter()
            .map(|e| &e.detail)
            .collect::<Vec<_>>(),
        "the same calls fail on their own"
    );
}

fn crash_spec() -> FaultSpec {
    FaultSpec::new(Fault::Crash {
        per_tick_probability: 0.3,
        min_downtime_ms: 10,
        max_downtime_ms: 300,
    })
}

#[test]
fn a_fault_kind_that_never_fires_leaves_the_run_unchanged() {
    // Near-zero probabilities still draw at every operation; on a shared stream that would
    // move every later crash. On streams of their own they change nothing.
    let scenario = TokenTransfers::default();
    let idle = FaultPlan::named("idle")
        .with(crash_spec())
        .with(FaultSpec::new(Fault::Store(StoreFaults {
            timeout_probability: 1e-12,
            ..StoreFaults::default()
        })))
        .with(FaultSpec::new(Fault::Bus(BusFaults {
            duplicate_probability: 1e-12,
            commit_lost_probability: 1e-12,
            ..BusFaults::default()
        })));
    let crash_only = FaultPlan::named("idle").with(crash_spec());
    for seed in 1..=10 {
        let a = run(&scenario, &SimConfig::new(seed).with_plan(idle.clone()));
        let b = run(
            &scenario,
            &SimConfig::new(seed).with_plan(crash_only.clone()),
        );
        assert_eq!(a.hash, b.hash, "seed {seed}");
        assert_eq!(a.faults, b.faults);
    }
}

/// A producer publishing every 20 ms and two consumers, for three seconds.
struct Chatter;

impl Scenario for Chatter {
    fn name(&self) -> &'static str {
        "chatter"
    }
    fn description(&self) -> &'static str {
        "a steady stream of messages for three seconds"
    }
    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        world.event_bus().create_topic("chatter", 2);
        world.add_node("producer", NodeOptions::default(), |ctx: NodeContext| {
            let (c, bus) = (ctx.clone(), ctx.event_bus());
            ctx.spawn("produce", async move {
                for n in 0..150 {
                    c.sleep(Duration::from_millis(20)).await;
                    let message = OutgoingMessage {
                        topic: "chatter".into(),
                        key: format!("key-{}", n % 7).into(),
                        payload: Payload::from_json_text("{}"),
                        headers: Headers::default(),
                    };
                    let _ = bus.publish(vec![message]).await;
                }
            });
        });
        for name in ["consumer-1", "consumer-2"] {
            world.add_node(name, NodeOptions::default(), |ctx: NodeContext| {
                let bus = ctx.event_bus();
                ctx.spawn("consume", async move {
                    let Ok(mut subscription) = bus.subscribe("chatters", &["chatter"]).await else {
                        return;
                    };
                    while let Ok(delivery) = subscription.next().await {
                        subscription.ack(&delivery);
                        let _ = subscription.commit().await;
                    }
                });
            });
        }
        Box::new(ThreeSeconds)
    }
}

struct ThreeSeconds;
impl ScenarioRun for ThreeSeconds {
    fn check_safety(&self, _: &WorldView<'_>) -> Result<(), Violation> {
        Ok(())
    }
    fn check_liveness(&self, world: &WorldView<'_>) -> Result<(), Violation> {
        if world.elapsed() >= Duration::from_secs(3) {
            Ok(())
        } else {
            Err(Violation::new("three-seconds", "not yet"))
        }
    }
}

#[test]
fn one_fault_kind_does_not_move_anothers_decisions() {
    // Crashes draw from their own stream at every nemesis tick: adding duplicates changes
    // the run (and so how many tasks each crash drops) but not when and where it crashes.
    let with_duplicates = FaultPlan::named("mix")
        .with(crash_spec())
        .with(FaultSpec::new(Fault::Bus(BusFaults {
            duplicate_probability: 0.3,
            ..BusFaults::default()
        })));
    let crash_only = FaultPlan::named("mix").with(crash_spec());
    let crashes = |report: &RunReport| -> Vec<(Duration, Option<Arc<str>>)> {
        report
            .faults
            .iter()
            .filter(|f| f.kind == "node.crash")
            .map(|f| (f.at, f.node.clone()))
            .collect()
    };
    let mut compared = 0;
    for seed in 1..=10 {
        let a = run(
            &Chatter,
            &SimConfig::new(seed).with_plan(with_duplicates.clone()),
        );
        let b = run(
            &Chatter,
            &SimConfig::new(seed).with_plan(crash_only.clone()),
        );
        assert!(a.passed() && b.passed(), "{} / {}", a.outcome, b.outcome);
        assert!(
            a.faults.iter().any(|f| f.kind == "bus.duplicate"),
            "seed {seed}"
        );
        assert_ne!(a.hash, b.hash, "the duplicates change the run");
        let (a, b) = (crashes(&a), crashes(&b));
        assert_eq!(a, b, "seed {seed}");
        compared += a.len();
    }
    assert!(compared >= 50, "enough crashes compared: {compared}");
}

#[test]
fn a_finished_run_hands_over_the_final_store_and_bus() {
    let scenario = TokenTransfers::default();
    let report = run(&scenario, &SimConfig::new(4));
    assert!(report.passed(), "{}", report.outcome);
    // 8 opened accounts, 50 transfers (a transfer event and a debit each), 50 credits.
    assert_eq!(report.event_store.len(), 8 + 2 * 50 + 50);
    assert_eq!(
        report
            .event_store
            .stream_version_now(&StreamId::of("transfer", 7)),
        1
    );
    assert_eq!(report.event_bus.messages("credits").len(), 50);
    assert_eq!(report.event_bus.lag("ledger"), 0);
    // Reports still serialize (the store and bus are left out).
    let json = serde_json::to_string(&report).expect("serializes");
    assert!(!json.contains("event_store"));
}
