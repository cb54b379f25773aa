//! `sim_test!` sweeps as a user's `#[test]` meets them: a timer set from the wall clock is
//! caught by the default determinism sample, and a panicking seed fails the test with its
//! seed and reproduction command.

use std::time::Duration;

use reprise_sim::testing_scenario::TokenTransfers;
use reprise_sim::{FaultPlan, NodeOptions, Scenario, ScenarioRun, SimConfig, World};

struct WallClockTimer;

impl Scenario for WallClockTimer {
    fn name(&self) -> &'static str {
        "wall-clock-timer"
    }

    fn description(&self) -> &'static str {
        "token transfers plus a timer set from the wall clock"
    }

    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        world.add_node("clock-reader", NodeOptions::default(), |ctx| {
            let runtime = ctx.runtime();
            let notes = ctx.clone();
            ctx.spawn("sleeper", async move {
                // The planted mistake itself.
                #[allow(clippy::disallowed_methods, clippy::disallowed_types)]
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                runtime
                    .sleep(Duration::from_nanos(u64::from(nanos % 1_000_000)))
                    .await;
                notes.note("woke");
            });
        });
        TokenTransfers::default().setup(world)
    }
}

struct PanicsAtSeedThree;

impl Scenario for PanicsAtSeedThree {
    fn name(&self) -> &'static str {
        "panics-at-seed-three"
    }

    fn description(&self) -> &'static str {
        "token transfers whose setup panics at seed 3"
    }

    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        assert!(world.seed() != 3, "boom");
        TokenTransfers::default().setup(world)
    }
}

fn message_of(result: std::thread::Result<()>) -> String {
    let payload = result.expect_err("the sweep must fail");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

#[test]
fn a_wall_clock_timer_fails_the_default_sweep() {
    let config = SimConfig::new(0).with_plan(FaultPlan::calm());
    let message = message_of(std::panic::catch_unwind(|| {
        reprise_sim::sim_test!(WallClockTimer, config);
    }));
    assert!(
        message.contains("not deterministic at seed=1") && message.contains("REPRISE_SEED=1"),
        "{message}"
    );
}

#[test]
fn a_panicking_seed_fails_the_sweep_with_its_seed() {
    let config = SimConfig::new(0).with_plan(FaultPlan::calm());
    let message = message_of(std::panic::catch_unwind(|| {
        reprise_sim::sim_test!(PanicsAtSeedThree, config);
    }));
    assert!(
        message.contains("panicked at seed=3: boom") && message.contains("REPRISE_SEED=3"),
        "{message}"
    );
}

#[test]
fn a_correct_scenario_passes_with_its_sample_checked() {
    reprise_sim::sim_test!(
        TokenTransfers::default(),
        SimConfig::new(0).with_plan(FaultPlan::swarm())
    );
}
