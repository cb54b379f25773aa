//! The guide's promise, checked the way a user meets it: the `wallet-sims` binary (one
//! call to `reprise_runner::main`) sweeps, finds the planted bug, and every command its
//! failure message prints works as printed.

use std::process::{Command, Output};

fn wallet_sims(args: &[&str]) -> Output {
    let dir = std::env::temp_dir().join(format!("wallet-sims-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    Command::new(env!("CARGO_BIN_EXE_wallet-sims"))
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("wallet-sims runs")
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The command printed on the line after `header`, split into arguments; its program
/// must be `wallet-sims`.
fn printed_command(output: &str, header: &str) -> Vec<String> {
    let mut lines = output.lines();
    lines
        .find(|l| l.trim_start().starts_with(header))
        .unwrap_or_else(|| panic!("no {header:?} in:\n{output}"));
    let line = lines.next().expect("a command after the header");
    let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    assert_eq!(
        words[0], "wallet-sims",
        "printed with this program's name: {line}"
    );
    words[1..].to_vec()
}

#[test]
fn the_correct_service_passes_a_sweep_with_determinism_sampled() {
    let out = wallet_sims(&["sweep", "wallets", "--seeds", "200"]);
    let stdout = text(&out);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("200 of 200 seeds passed"), "{stdout}");
    assert!(
        stdout.contains("4 seed(s) run twice, 0 diverged"),
        "{stdout}"
    );
}

#[test]
fn the_planted_bug_is_found_and_every_printed_command_works() {
    let out = wallet_sims(&["sweep", "wallets-bug-without-inbox", "--seeds", "50"]);
    let stdout = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failing seed exits 1:\n{stdout}"
    );
    assert!(stdout.contains("no money from nowhere"), "{stdout}");

    // The replay line, as printed.
    let replay = printed_command(&stdout, "reproduce:");
    let args: Vec<&str> = replay.iter().map(String::as_str).collect();
    let replayed = wallet_sims(&args);
    let replayed_text = text(&replayed);
    assert_eq!(replayed.status.code(), Some(1), "{replayed_text}");
    assert!(
        replayed_text.contains("no money from nowhere"),
        "{replayed_text}"
    );

    // The shrink line, as printed; then the shrunk plan replays the failure.
    let shrink = printed_command(&stdout, "shrink to the faults that matter");
    let args: Vec<&str> = shrink.iter().map(String::as_str).collect();
    let shrunk = wallet_sims(&args);
    let shrunk_text = text(&shrunk);
    assert!(shrunk.status.success(), "{shrunk_text}");
    let replay_shrunk = shrunk_text
        .lines()
        .find_map(|l| l.strip_prefix("replay: "))
        .unwrap_or_else(|| panic!("no replay line in:\n{shrunk_text}"));
    let words: Vec<&str> = replay_shrunk.split_whitespace().collect();
    assert_eq!(words[0], "wallet-sims");
    let again = wallet_sims(&words[1..]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
}

#[test]
fn determinism_holds_and_bad_input_is_refused() {
    let out = wallet_sims(&["check-determinism", "wallets", "--seeds", "20"]);
    assert!(out.status.success(), "{}", text(&out));
    let typo = wallet_sims(&["sweep", "walets", "--seeds", "5"]);
    assert_eq!(typo.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&typo.stderr);
    assert!(
        stderr.contains("known scenarios: wallets, wallets-bug-without-inbox"),
        "{stderr}"
    );
    let none = wallet_sims(&["sweep", "wallets", "--seeds", "0"]);
    assert_eq!(none.status.code(), Some(2));
}
