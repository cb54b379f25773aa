//! The `reprise` binary, driven as a user would: separate processes, real exit codes.

use std::process::{Command, Output};

fn reprise(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args(args)
        .output()
        .expect("the reprise binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn summary_line(output: &Output) -> String {
    stdout(output)
        .lines()
        .rev()
        .find(|l| l.starts_with("seed="))
        .unwrap_or_else(|| panic!("no seed= line in:\n{}", stdout(output)))
        .to_owned()
}

#[test]
fn list_shows_scenarios_and_plans() {
    let out = reprise(&["list"]);
    assert!(out.status.success());
    let text = stdout(&out);
    for expected in [
        "checkout",
        "transfers",
        "token-transfers",
        "calm",
        "swarm",
        "partition-storm",
        "crash-loop",
        "slow-payments",
        "flaky-store",
        "duplicate-storm",
        "payment-outage",
        "carrier-outage",
    ] {
        assert!(
            text.contains(expected),
            "`reprise list` lacks {expected}:\n{text}"
        );
    }
}

#[test]
fn a_seed_replayed_in_a_new_process_prints_the_same_hash() {
    let first = reprise(&["run", "checkout", "--seed", "7", "--plan", "swarm"]);
    let second = reprise(&["run", "checkout", "--seed", "7", "--plan", "swarm"]);
    assert!(first.status.success(), "{}", stdout(&first));
    let line = summary_line(&first);
    assert!(
        line.starts_with("seed=7 hash=") && line.len() == "seed=7 hash=".len() + 16,
        "{line}"
    );
    assert_eq!(line, summary_line(&second));
    let other = reprise(&["run", "checkout", "--seed", "8", "--plan", "swarm"]);
    assert_ne!(
        line,
        summary_line(&other),
        "different seeds should take different paths"
    );
}

#[test]
fn trace_mode_prints_a_readable_trace_with_the_same_hash() {
    let plain = reprise(&[
        "run",
        "token-transfers",
        "--seed",
        "3",
        "--plan",
        "crash-loop",
    ]);
    let traced = reprise(&[
        "run",
        "token-transfers",
        "--seed",
        "3",
        "--plan",
        "crash-loop",
        "--trace",
    ]);
    assert_eq!(
        summary_line(&plain),
        summary_line(&traced),
        "tracing must not change the run"
    );
    assert!(stdout(&traced).lines().count() > stdout(&plain).lines().count() + 10);
}

#[test]
fn sweep_passes_and_reports_speed() {
    let out = reprise(&[
        "sweep",
        "token-transfers",
        "--seeds",
        "20",
        "--plan",
        "swarm",
        "--jobs",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stdout(&out));
    let summary: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(summary["passed"], 20);
    assert!(summary["runs_per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_planted_bug_fails_the_sweep_and_names_the_invariant_and_the_replay() {
    let out = reprise(&[
        "sweep",
        "checkout-bug-payment-not-idempotent",
        "--seeds",
        "200",
        "--plan",
        "swarm",
        "--jobs",
        "2",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failing sweep exits 1:\n{}",
        stdout(&out)
    );
    let text = stdout(&out);
    assert!(
        text.contains("failing seeds:")
            && text.contains("invariant:")
            && text.contains("reprise run checkout-bug-payment-not-idempotent --seed"),
        "{text}"
    );
    let seed = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("seed="))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a failing seed is listed")
        .to_owned();
    let replay = reprise(&[
        "run",
        "checkout-bug-payment-not-idempotent",
        "--seed",
        &seed,
        "--plan",
        "swarm",
    ]);
    assert_eq!(
        replay.status.code(),
        Some(1),
        "the listed seed fails again on replay"
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    let out = reprise(&["run", "no-such-scenario", "--seed", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("known scenarios"));
    let out = reprise(&["sweep", "checkout", "--plan", "hurricane"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown plan"));
    // A plan aimed at a dependency the scenario lacks is refused, not silently calm.
    let out = reprise(&[
        "sweep",
        "transfers",
        "--seeds",
        "3",
        "--plan",
        "slow-payments",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("payment-provider"));
}

#[test]
fn check_determinism_passes() {
    let out = reprise(&[
        "check-determinism",
        "checkout",
        "--seeds",
        "10",
        "--plan",
        "swarm",
        "--jobs",
        "2",
    ]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("10 of 10 seeds deterministic"));
}

#[test]
fn every_named_plan_runs_on_checkout() {
    let plans = reprise_chaos::names();
    assert!(plans.len() >= 9, "the catalogue shrank: {plans:?}");
    for plan in plans {
        let out = reprise(&[
            "sweep", "checkout", "--seeds", "3", "--plan", plan, "--jobs", "1",
        ]);
        assert!(
            out.status.success(),
            "plan {plan}: {}{}",
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_shrunk_plan_replays_from_its_json_file() {
    let dir = std::env::temp_dir().join(format!("reprise-cli-shrink-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("shrunk.json");
    let out = reprise(&[
        "shrink",
        "checkout-bug-payment-not-idempotent",
        "--seed",
        "1",
        "--plan",
        "swarm",
        "--max-runs",
        "60",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    let shrunk_line = summary_line(&out);
    let replay = reprise(&[
        "run",
        "checkout-bug-payment-not-idempotent",
        "--seed",
        "1",
        "--plan",
        file.to_str().unwrap(),
    ]);
    assert_eq!(
        replay.status.code(),
        Some(1),
        "the shrunk plan still fails:\n{}",
        stdout(&replay)
    );
    assert_eq!(
        summary_line(&replay),
        shrunk_line,
        "replaying the shrunk plan from JSON is the shrunk run"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn explore_finds_a_deep_bug_repeats_itself_and_prints_a_replay_that_fails_the_same_way() {
    let dir = std::env::temp_dir().join(format!("reprise-cli-explore-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let dir_arg = dir.display().to_string();
    let args = [
        "explore",
        "checkout",
        "--bug",
        "tracker-blind-write",
        "--runs",
        "128",
        "--seed",
        "3",
        "--jobs",
        "2",
        "--plans-dir",
        &dir_arg,
    ];
    let first = reprise(&args);
    let second = reprise(&args);
    let text = stdout(&first);
    assert_eq!(first.status.code(), Some(1), "a failure exits 1:\n{text}");
    assert_eq!(
        text,
        stdout(&second),
        "the same explorer seed, the same report"
    );
    assert!(
        text.contains("no order is both shipped and refunded"),
        "{text}"
    );
    let found = text
        .lines()
        .find(|l| l.trim_start().starts_with("run ") && l.contains("hash="))
        .unwrap_or_else(|| panic!("no failing run listed:\n{text}"));
    let hash = found
        .split_whitespace()
        .find_map(|w| w.strip_prefix("hash="))
        .expect("the failing run's hash");
    let replay = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("replay:"))
        .unwrap_or_else(|| panic!("no replay command:\n{text}"))
        .trim();
    let words: Vec<&str> = replay.split_whitespace().collect();
    assert_eq!(words[0], "reprise", "{replay}");
    let replayed = reprise(&words[1..]);
    assert_eq!(replayed.status.code(), Some(1), "{}", stdout(&replayed));
    assert!(
        stdout(&replayed).contains(&format!("hash={hash}")),
        "the replay is the same run ({hash}):\n{}",
        stdout(&replayed)
    );
    std::fs::remove_dir_all(&dir).ok();
}
