//! `diff` as a user meets it: the same seed twice is identical, two seeds diverge at the
//! first event whose line differs, and a saved trace reads back as the run it came from
//! (so a trace saved by one build compares with a run of another).

use reprise_runner::diff::{self, Side};
use reprise_sim::testing_scenario::TokenTransfers;
use reprise_sim::{FaultPlan, SimConfig, TraceMode, run};

fn side(seed: u64) -> (Side, reprise_sim::RunReport) {
    let config = SimConfig::new(seed)
        .with_plan(FaultPlan::swarm())
        .with_trace(TraceMode::Full);
    let report = run(&TokenTransfers::default(), &config);
    (Side::of_run(format!("seed {seed}"), &report), report)
}

#[test]
fn the_same_seed_twice_is_identical() {
    let ((a, report), (b, _)) = (side(7), side(7));
    assert_eq!(diff::first_divergence(&a, &b), None);
    let text = diff::render(&a, &b, 3);
    assert!(
        text.contains(&format!("identical (hash {:016x})", report.hash)),
        "{text}"
    );
}

#[test]
fn two_seeds_diverge_at_the_first_event_whose_line_differs() {
    let ((a, _), (b, _)) = (side(7), side(8));
    let expected = a
        .lines
        .iter()
        .zip(&b.lines)
        .position(|(x, y)| (x.at, &x.node, &x.text) != (y.at, &y.node, &y.text))
        .expect("two seeds of a swarm plan run differently");
    assert_eq!(diff::first_divergence(&a, &b), Some(expected));
    let text = diff::render(&a, &b, 3);
    assert!(
        text.contains(&format!("first divergence at event {expected}")),
        "{text}"
    );
    // Aligned: the marked line on each side is that side's event at the index.
    for s in [&a, &b] {
        let marked = format!("> {expected:>7}  {}", s.lines[expected]);
        assert!(text.contains(&marked), "{marked:?} in\n{text}");
    }
    if expected >= 3 {
        assert!(text.contains("before (both sides):"), "{text}");
        let context = format!("{:>7}  {}", expected - 1, a.lines[expected - 1]);
        assert!(text.contains(&context), "{text}");
    }
}

#[test]
fn a_saved_trace_round_trips_and_locates_a_change_made_elsewhere() {
    let (a, report) = side(11);
    let saved = diff::to_jsonl(&report, "swarm");
    let (header, lines) = diff::from_jsonl(&saved, "saved").expect("reads back");
    assert_eq!(
        (header.seed, header.scenario.as_str(), header.plan.as_str()),
        (11, "token-transfers", "swarm")
    );
    assert_eq!(header.hash, format!("{:016x}", report.hash));
    assert_eq!(lines, a.lines, "every event as it was");
    // Through a file, as `run --save-trace` writes it and `diff --trace-a` reads it.
    let path = std::env::temp_dir().join(format!("reprise-diff-test-{}.jsonl", std::process::id()));
    diff::save(&path, &report, "swarm").expect("writes");
    let loaded = diff::load(&path).expect("loads");
    std::fs::remove_file(&path).ok();
    assert_eq!(diff::first_divergence(&loaded, &a), None);
    // Another build whose event 10 said something else: found at exactly 10.
    let mut edited = loaded.clone();
    edited.lines[10].text.push_str(" (another build)");
    assert_eq!(diff::first_divergence(&edited, &a), Some(10));
    // Same line, different data (only the hash moved): still found, and said so.
    let mut data = loaded.clone();
    data.lines[12].hash ^= 1;
    assert_eq!(diff::first_divergence(&data, &a), Some(12));
    assert!(diff::render(&data, &a, 2).contains("the event's data differs"));
    // A run cut short diverges where it ends.
    let mut short = loaded;
    short.lines.truncate(20);
    assert_eq!(diff::first_divergence(&short, &a), Some(20));
    assert!(diff::render(&short, &a, 2).contains("<run ended>"));
}

#[test]
fn a_damaged_trace_file_is_refused() {
    let (_, report) = side(3);
    let saved = diff::to_jsonl(&report, "swarm");
    let cut: String = saved.lines().take(5).map(|l| format!("{l}\n")).collect();
    assert!(
        diff::from_jsonl(&cut, "cut")
            .unwrap_err()
            .contains("cut short")
    );
    assert!(diff::from_jsonl("{\"not\":1}", "x").is_err());
    assert!(diff::from_jsonl("", "x").is_err());
    let newer = saved.replacen("\"version\":1", "\"version\":2", 1);
    assert!(
        diff::from_jsonl(&newer, "x")
            .unwrap_err()
            .contains("version 2")
    );
}
