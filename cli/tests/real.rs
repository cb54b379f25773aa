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
