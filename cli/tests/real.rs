//! `reprise real` refuses bad settings before touching anything, and reads the same Kafka
//! environment as `reprise dlq` (`KAFKA_PROPERTIES`). No service is needed: every case
//! fails before connecting.

use std::process::{Command, Output};

fn real(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_reprise"));
    command
        .args(["real", "checkout"])
        .args(args)
        .env("DATABASE_URL", "postgres://u:p@127.0.0.1:1/nowhere")
        .env("KAFKA_BOOTSTRAP", "127.0.0.1:1")
        .env_remove("KAFKA_PROPERTIES");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("the reprise binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn instance_counts_are_bounded_with_a_clear_error() {
    let output = real(&["--saga-instances", "4294967295"], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("1..=16"), "{}", stderr(&output));
    let output = real(&["--saga-instances", "8", "--service-instances", "8"], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("PostgreSQL connections"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn kafka_properties_are_read_from_the_environment() {
    let output = real(&[], &[("KAFKA_PROPERTIES", "linger.ms")]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("KAFKA_PROPERTIES"),
        "{}",
        stderr(&output)
    );
    // Parsed, then refused by librdkafka: they reach the clients.
    let output = real(&[], &[("KAFKA_PROPERTIES", "no.such.property=1")]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no.such.property"),
        "{}",
        stderr(&output)
    );
}

/// `reprise real <args>` with services that do not exist: whatever must be refused is
/// refused before any connection.
fn real_command(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reprise"))
        .arg("real")
        .args(args)
        .env("DATABASE_URL", "postgres://u:p@127.0.0.1:1/nowhere")
        .env("KAFKA_BOOTSTRAP", "127.0.0.1:1")
        .env_remove("KAFKA_PROPERTIES")
        .output()
        .expect("the reprise binary runs")
}

#[test]
fn only_a_runs_namespace_can_be_used_checked_or_cleaned() {
    for args in [
        &["clean", "--namespace", "public"][..],
        &["check", "--namespace", "public"],
        &["clean", "--namespace", "shop"],
        &["checkout", "--namespace", "Live_x"],
    ] {
        let output = real_command(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains("live_[a-z0-9_]*"),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn check_and_clean_name_the_unreachable_database() {
    for command in ["check", "clean"] {
        let output = real_command(&[command, "--namespace", "live_gone"]);
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        // The broker is asked first (clean) or the database (check); either is named.
        assert!(
            stderr(&output).contains("127.0.0.1:1"),
            "{command}: {}",
            stderr(&output)
        );
    }
}
