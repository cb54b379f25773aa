//! Coverage and shards as a sweep reports them: a declared situation no run can reach is
//! listed as not reached, a common one is reached, counts do not depend on the number of
//! jobs, and the shards of a sweep merge into exactly the sweep's own summary.

use reprise_runner::Shard;
use reprise_runner::merge::merge;
use reprise_runner::sweep::{self, Commands, DeterminismSample, SweepOutcome, SweepRequest};
use reprise_sim::testing_scenario::{self, PlantedBug, TokenTransfers};
use reprise_sim::{FaultPlan, Scenario, ScenarioRun, SimConfig, Situation, World};

/// Token transfers that also declare a situation nothing in them can reach.
struct WithUnreachable(TokenTransfers);

const UNREACHABLE: Situation = Situation::new(
    "test.unreachable",
    "a situation no code of the scenario reaches",
);

impl Scenario for WithUnreachable {
    fn name(&self) -> &'static str {
        "with-unreachable"
    }

    fn description(&self) -> &'static str {
        "token transfers declaring one unreachable situation"
    }

    fn situations(&self) -> Vec<Situation> {
        let mut declared = self.0.situations();
        declared.push(UNREACHABLE);
        declared
    }

    fn fault_points(&self) -> Vec<&'static str> {
        vec!["test.never-buggified"]
    }

    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        self.0.setup(world)
    }
}

fn request(seeds: u64, jobs: usize, shard: Option<Shard>) -> SweepRequest<'static> {
    SweepRequest {
        config: SimConfig::new(1).with_plan(FaultPlan::swarm()),
        start: 1,
        seeds,
        shard,
        jobs,
        json: true,
        coverage: true,
        determinism: DeterminismSample::Every(10),
        commands: Commands {
            program: "my-sims",
            plan: "swarm",
        },
    }
}

#[test]
fn a_declared_but_unreachable_situation_is_reported_as_not_reached() {
    let outcome = sweep::sweep(
        &WithUnreachable(TokenTransfers::default()),
        &request(30, 2, None),
    );
    let unreachable = &outcome.coverage.sometimes["test.unreachable"];
    assert!(unreachable.declared);
    assert_eq!((unreachable.runs, unreachable.total), (0, 0));
    let not_reached: Vec<&String> = outcome.coverage.not_reached().map(|(n, _)| n).collect();
    assert!(
        not_reached.contains(&&"test.unreachable".to_owned()),
        "{not_reached:?}"
    );
    assert_eq!(outcome.coverage.fault_points, ["test.never-buggified"]);
}

#[test]
fn a_common_situation_is_reached_in_most_runs() {
    let outcome = sweep::sweep(&TokenTransfers::default(), &request(30, 2, None));
    let conflicts = &outcome.coverage.sometimes[testing_scenario::DEBIT_CONFLICT.name];
    assert!(conflicts.declared);
    assert!(
        conflicts.runs >= 15 && conflicts.total >= conflicts.runs,
        "50 transfers over 8 accounts race for them: {conflicts:?}"
    );
    assert!(
        outcome
            .coverage
            .not_reached()
            .all(|(name, _)| name != testing_scenario::DEBIT_CONFLICT.name)
    );
}

fn counts(outcome: &SweepOutcome) -> impl PartialEq + std::fmt::Debug {
    (
        outcome.passed,
        outcome.failed,
        outcome.panics,
        outcome.determinism_checked,
        outcome.nondeterministic,
        outcome.failures.clone(),
        outcome.faults.clone(),
        outcome.inherent_errors,
        outcome.coverage.clone(),
    )
}

#[test]
fn counts_do_not_depend_on_the_number_of_jobs() {
    let scenario = WithUnreachable(TokenTransfers::default());
    let one = sweep::sweep(&scenario, &request(24, 1, None));
    let two = sweep::sweep(&scenario, &request(24, 2, None));
    assert_eq!(counts(&one), counts(&two));
    assert!(one.coverage.sometimes.values().any(|c| c.runs > 0));
}

#[test]
fn the_shards_of_a_sweep_merge_into_the_sweep() {
    // A planted bug, so there are failing seeds to merge as well as passing ones.
    let scenario = TokenTransfers::with_bug(PlantedBug::RandomCreditId);
    let whole = sweep::sweep(&scenario, &request(40, 2, None));
    assert!(whole.failed > 0 && whole.passed > 0, "{whole:?}");
    let mut shards: Vec<SweepOutcome> = (1..=3)
        .map(|index| {
            let shard = Shard { index, count: 3 };
            let part = sweep::sweep(&scenario, &request(40, 1, Some(shard)));
            assert_eq!(part.passed + part.failed, shard.share(40));
            part
        })
        .collect();
    // Through JSON and in any order, as `merge` reads them from files.
    shards.reverse();
    let parts: Vec<SweepOutcome> = shards
        .iter()
        .map(|s| serde_json::from_str(&sweep::to_json(s)).expect("a sweep result reads back"))
        .collect();
    let merged = merge(parts).expect("three shards of one sweep");
    assert_eq!(counts(&merged), counts(&whole));
    assert_eq!((merged.start, merged.seeds, merged.shard), (1, 40, None));
    let failing: Vec<u64> = merged.failures.iter().map(|f| f.seed).collect();
    let expected: Vec<u64> = whole.failures.iter().map(|f| f.seed).collect();
    assert_eq!(failing, expected);
}

#[test]
fn merge_refuses_what_is_not_the_shards_of_one_sweep() {
    let scenario = TokenTransfers::default();
    let part = |index, count, seeds| {
        sweep::sweep(&scenario, &request(seeds, 1, Some(Shard { index, count })))
    };
    let (a, b) = (part(1, 2, 6), part(2, 2, 6));
    assert!(merge(vec![a.clone(), b.clone()]).is_ok());
    let missing = merge(vec![a.clone()]).unwrap_err();
    assert!(missing.contains("2/2 missing"), "{missing}");
    let twice = merge(vec![a.clone(), a.clone(), b.clone()]).unwrap_err();
    assert!(twice.contains("appears twice"), "{twice}");
    let other_range = merge(vec![a.clone(), part(2, 2, 8)]).unwrap_err();
    assert!(other_range.contains("seed range"), "{other_range}");
    let mut short = b.clone();
    short.passed -= 1;
    assert!(merge(vec![a, short]).unwrap_err().contains("stop early"));
    assert!(merge(Vec::new()).is_err());
}
