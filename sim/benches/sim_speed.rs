//! Simulator speed: whole runs per second, and time compression.
//!
//! - `token_transfers/swarm` and `/calm`: the checkout-sized test scenario (50 transfers
//!   through store and bus, 3 nodes), one full run per iteration, seeds cycling so the
//!   swarm mixes vary. Runs per second per core = 1 / time per iteration.
//! - `timeouts/50_sagas_30s`: 50 tasks each waiting out a 30 s deadline and then writing
//!   an event — the shape of saga timeouts. It measures time compression: 30 s of virtual
//!   time divided by the time per iteration.
//!
//! `cargo bench -p reprise-sim --bench sim_speed`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use reprise_core::{AppendBatch, EventId, ExpectedVersion, Metadata, NewEvent, Payload, StreamId};
use reprise_sim::testing_scenario::TokenTransfers;
use reprise_sim::{
    FaultPlan, NodeOptions, Scenario, ScenarioRun, SimConfig, Violation, World, WorldView, run,
};

fn token_transfers(c: &mut Criterion) {
    let scenario = TokenTransfers::default();
    let mut group = c.benchmark_group("token_transfers");
    for (name, plan) in [("swarm", FaultPlan::swarm()), ("calm", FaultPlan::calm())] {
        let mut seed = 0u64;
        let config = SimConfig::new(0).with_plan(plan);
        group.bench_function(name, |b| {
            b.iter(|| {
                seed += 1;
                let report = run(&scenario, &config.clone().with_seed(seed));
                assert!(report.passed(), "seed {seed}: {}", report.outcome);
                black_box(report.hash)
            });
        });
    }
    group.finish();
}

/// 50 sagas that each wait out a 30 s deadline, then record that they timed out.
struct Timeouts;

const SAGAS: u64 = 50;

impl Scenario for Timeouts {
    fn name(&self) -> &'static str {
        "timeouts"
    }
    fn description(&self) -> &'static str {
        "sagas waiting out their deadlines"
    }
    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        world.add_node("sagas", NodeOptions::default(), |ctx| {
            for saga in 0..SAGAS {
                let (c, store) = (ctx.clone(), ctx.event_store());
                ctx.spawn("saga", async move {
                    c.sleep(Duration::from_secs(30)).await;
                    let event = NewEvent {
                        event_id: EventId(u128::from(saga)),
                        event_type: "TimedOut".into(),
                        schema_version: 1,
                        payload: Payload::from_json_text("{}"),
                        metadata: Metadata::default(),
                    };
                    while store
                        .append(AppendBatch::single(
                            StreamId::of("saga", saga),
                            ExpectedVersion::Any,
                            vec![event.clone()],
                        ))
                        .await
                        .is_err()
                    {}
                });
            }
        });
        Box::new(AllTimedOut)
    }
}

struct AllTimedOut;

impl ScenarioRun for AllTimedOut {
    fn check_safety(&self, _: &WorldView<'_>) -> Result<(), Violation> {
        Ok(())
    }
    fn check_liveness(&self, world: &WorldView<'_>) -> Result<(), Violation> {
        let done = world.event_store().len() as u64;
        if done == SAGAS {
            Ok(())
        } else {
            Err(Violation::new("all-timed-out", format!("{done}/{SAGAS}")))
        }
    }
}

fn timeouts(c: &mut Criterion) {
    let config = SimConfig::new(1)
        .with_fault_window(Duration::from_secs(60))
        .with_liveness_bound(Duration::from_secs(60));
    // Checks every 10 s: the run is about waiting, not about watching.
    let config = SimConfig {
        check_every: Duration::from_secs(10),
        ..config
    };
    let report = run(&Timeouts, &config);
    assert!(report.passed(), "{}", report.outcome);
    assert!(report.stats.sim_time >= Duration::from_secs(30));
    c.bench_function("timeouts/50_sagas_30s", |b| {
        b.iter(|| black_box(run(&Timeouts, &config).hash));
    });
}

criterion_group!(benches, token_transfers, timeouts);
criterion_main!(benches);
