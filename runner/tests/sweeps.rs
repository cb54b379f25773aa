//! The runner's sweeps as a user meets them: a panicking seed is one failing seed in a
//! sweep that finishes, and a timer set from the wall clock is caught by the default
//! determinism sample.

use std::time::Duration;

use reprise_runner::sweep::{self, Commands, DeterminismSample, SweepRequest};
use reprise_sim::testing_scenario::TokenTransfers;
use reprise_sim::{FaultPlan, NodeOptions, Scenario, ScenarioRun, SimConfig, World};

/// Token transfers whose setup panics on every fourth seed.
struct PanicsSometimes(TokenTransfers);

impl Scenario for PanicsSometimes {
    fn name(&self) -> &'static str {
        "panics-sometimes"
    }

    fn description(&self) -> &'static str {
        "token transfers that panic on seeds 4k+1"
    }

    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        assert!(world.seed() % 4 != 1, "boom at seed {}", world.seed());
        self.0.setup(world)
    }
}

/// Token transfers plus a node that sleeps for a wall-clock-derived duration: the mistake
/// the determinism contract exists to catch.
struct WallClockTimer(TokenTransfers);

impl Scenario for WallClockTimer {
    fn name(&self) -> &'static str {
        "wall-clock-timer"
    }

    fn description(&self) -> &'static str {
        "token transfers with a timer set from the wall clock"
    }

    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        world.add_node("clock-reader", NodeOptions::default(), |ctx| {
            let runtime = ctx.runtime();
            let notes = ctx.clone();
            ctx.spawn("wall-clock-sleeper", async move {
                // The planted mistake itself.
                #[allow(clippy::disallowed_methods, clippy::disallowed_types)]
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                // Wakes somewhere in the first millisecond, among the transfers' steps.
                runtime
                    .sleep(Duration::from_nanos(u64::from(nanos % 1_000_000)))
                    .await;
                notes.note("woke");
            });
        });
        self.0.setup(world)
    }
}

/// Token transfers plus a node that writes the wall clock into an event it never reads
/// back: nothing in the run's behaviour changes, only the data.
struct WallClockInAnEvent(TokenTransfers);

impl Scenario for WallClockInAnEvent {
    fn name(&self) -> &'static str {
        "wall-clock-in-an-event"
    }

    fn description(&self) -> &'static str {
        "token transfers plus an audit event stamped with the wall clock"
    }

    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        world.add_node("auditor", NodeOptions::default(), |ctx| {
            let store = ctx.event_store();
            ctx.spawn("audit", async move {
                // The planted mistake itself.
                #[allow(clippy::disallowed_methods, clippy::disallowed_types)]
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let event = reprise_core::NewEvent {
                    event_id: reprise_core::EventId(1),
                    event_type: "Audited".into(),
                    schema_version: 1,
                    payload: reprise_core::Payload::from_json_text(format!(r#"{{"at":{nanos}}}"#)),
                    metadata: reprise_core::Metadata::default(),
                };
                let _ = store
                    .append(reprise_core::AppendBatch::single(
                        reprise_core::StreamId::of("audit", "1"),
                        reprise_core::ExpectedVersion::Any,
                        vec![event],
                    ))
                    .await;
            });
        });
        self.0.setup(world)
    }
}

fn request(seeds: u64, determinism: DeterminismSample) -> SweepRequest<'static> {
    SweepRequest {
        config: SimConfig::new(1).with_plan(FaultPlan::calm()),
        start: 1,
        seeds,
        shard: None,
        jobs: 2,
        json: true,
        coverage: false,
        determinism,
        commands: Commands {
            program: "my-sims",
            plan: "calm",
        },
    }
}

#[test]
fn a_panicking_seed_is_a_failure_with_its_message_and_the_sweep_goes_on() {
    let outcome = sweep::sweep(
        &PanicsSometimes(TokenTransfers::default()),
        &request(12, DeterminismSample::None),
    );
    assert_eq!(outcome.seeds, 12);
    assert_eq!(outcome.panics, 3, "seeds 1, 5, 9 panic: {outcome:?}");
    assert_eq!(outcome.failed, 3);
    assert_eq!(outcome.passed, 9);
    let seeds: Vec<u64> = outcome.failures.iter().map(|f| f.seed).collect();
    assert_eq!(seeds, [1, 5, 9]);
    let first = &outcome.failures[0];
    assert!(
        first.outcome.contains("boom at seed 1") && first.outcome.contains("sweeps.rs"),
        "the panic's message and location: {}",
        first.outcome
    );
    assert_eq!(
        first.reproduce,
        "my-sims run panics-sometimes --seed 1 --plan calm --trace"
    );
}

#[test]
fn a_wall_clock_timer_is_caught_by_the_default_determinism_sample() {
    let outcome = sweep::sweep(
        &WallClockTimer(TokenTransfers::default()),
        &request(
            100,
            DeterminismSample::Every(sweep::DEFAULT_DETERMINISM_SAMPLE),
        ),
    );
    assert_eq!(outcome.determinism_checked, 2, "seeds 1 and 51 run twice");
    assert_eq!(outcome.nondeterministic, 2, "{outcome:?}");
    assert!(
        outcome
            .failures
            .iter()
            .all(|f| f.invariant.as_deref() == Some("determinism")
                && f.outcome.starts_with("nondeterministic:")),
        "{:?}",
        outcome.failures
    );
}

#[test]
fn a_wall_clock_value_written_into_an_event_is_caught_by_the_default_sample() {
    let outcome = sweep::sweep(
        &WallClockInAnEvent(TokenTransfers::default()),
        &request(
            60,
            DeterminismSample::Every(sweep::DEFAULT_DETERMINISM_SAMPLE),
        ),
    );
    assert_eq!(outcome.determinism_checked, 2, "seeds 1 and 51 run twice");
    assert_eq!(outcome.nondeterministic, 2, "{outcome:?}");
    assert_eq!(outcome.failed, 2);
}

#[test]
fn a_correct_scenario_passes_with_every_seed_checked_twice() {
    let outcome = sweep::sweep(
        &TokenTransfers::default(),
        &request(20, DeterminismSample::All),
    );
    assert_eq!((outcome.passed, outcome.failed), (20, 0), "{outcome:?}");
    assert_eq!(outcome.determinism_checked, 20);
}

#[test]
fn determinism_rates_parse_and_refuse_nonsense() {
    assert_eq!(DeterminismSample::parse("all"), Ok(DeterminismSample::All));
    assert_eq!(
        DeterminismSample::parse("none"),
        Ok(DeterminismSample::None)
    );
    assert_eq!(
        DeterminismSample::parse("50"),
        Ok(DeterminismSample::Every(50))
    );
    assert!(DeterminismSample::parse("0").is_err());
    assert!(DeterminismSample::parse("often").is_err());
}
