//! Each workload, small, on each simulator of this package: it still runs, and it still
//! passes the checks that keep a broken workload from looking fast.

use reprise_peers::spec::{self, Outcome, Sizes, Workload};
use reprise_peers::{on_reprise, on_turmoil};

fn passes(workload: Workload, run: fn(Workload, Sizes) -> Outcome) -> Outcome {
    let outcome = run(workload, Sizes::SMOKE);
    if let Err(e) = spec::check(workload, Sizes::SMOKE, &outcome) {
        panic!("{}: {e}\n{outcome:?}", workload.name());
    }
    outcome
}

#[test]
fn reprise_runs_every_workload() {
    for workload in Workload::ALL {
        passes(workload, on_reprise::run);
    }
}

#[test]
fn turmoil_runs_every_workload() {
    for workload in Workload::ALL {
        passes(workload, on_turmoil::run);
    }
}

#[test]
fn reprise_runs_are_reproducible() {
    // Same seed, same counts: the loss draws come from the seeded simulation.
    assert_eq!(
        on_reprise::run(Workload::Loss, Sizes::SMOKE),
        on_reprise::run(Workload::Loss, Sizes::SMOKE)
    );
}

#[test]
fn the_checks_reject_a_broken_run() {
    let sizes = Sizes::SMOKE;
    let good = passes(Workload::Loss, on_reprise::run);
    let no_loss = Outcome {
        timeouts: 0,
        attempts: good.completed,
        served: good.completed,
        replies: good.completed,
        ..good.clone()
    };
    assert!(
        spec::check(Workload::Loss, sizes, &no_loss).is_err(),
        "no loss at all"
    );
    let wrong = Outcome {
        wrong: 1,
        completed: good.completed - 1,
        ..good
    };
    assert!(
        spec::check(Workload::Loss, sizes, &wrong).is_err(),
        "a wrong reply"
    );
    let instant = Outcome {
        completed: sizes.round_trips,
        ..Outcome::default()
    };
    assert!(
        spec::check(Workload::Rtt, sizes, &instant).is_err(),
        "no latency"
    );
}

#[test]
fn sleep_durations_are_fixed_and_in_range() {
    let all: Vec<u64> = (0..1_000)
        .flat_map(|t| (0..10).map(move |i| spec::sleep_ms(t, i)))
        .collect();
    assert!(all.iter().all(|d| (1..=100).contains(d)));
    assert!(
        all.contains(&1) && all.contains(&100),
        "the whole range is drawn"
    );
    assert_eq!(spec::sleep_ms(7, 3), spec::sleep_ms(7, 3));
}
