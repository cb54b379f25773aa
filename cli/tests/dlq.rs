//! `reprise dlq` against a real PostgreSQL (and Kafka for `retry`): letters are seeded with
//! `PgDeadLetterQueue` in a fresh schema, then the binary is run as an operator would
//! (`--schema` selects the schema) and the resulting statuses are read back.
//!
//! A second test runs the same commands with `--backend kafka` against a dead-letter topic.
//!
//! Needs `DATABASE_URL` (`eval "$(bash scripts/postgres.sh)"`); without it the test is
//! skipped, except under `CI`, where it fails. The `retry` part also needs `KAFKA_BOOTSTRAP`
//! (`eval "$(bash scripts/kafka.sh)"`), with the same rule.

// Tests use the wall clock and tokio directly, like the adapters they drive.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reprise_core::event_bus::{EventBus, Headers};
use reprise_core::resilience::dead_letter::REDELIVERED_FROM_HEADER;
use reprise_core::resilience::{
    DeadLetterId, DeadLetterQueue, DeadLetterStatus, ErrorClass, NewDeadLetter,
};
use reprise_core::{Payload, Timestamp};
use reprise_kafka::{KafkaConfig, KafkaDeadLetterQueue, KafkaEventBus};
use reprise_postgres::{PgConfig, PgDeadLetterQueue};
use serde_json::Value;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The variable's value; `None` (after saying why) when it is unset outside CI.
fn required_env(name: &str, purpose: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Some(value),
        _ if in_ci() => panic!("{name} is not set but CI is: {purpose} must run in CI"),
        _ => {
            eprintln!("SKIPPED {purpose}: {name} is not set (and CI is not)");
            None
        }
    }
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{prefix}_{:x}_{}",
        (nanos ^ u128::from(std::process::id())) as u32,
        std::process::id()
    )
}

fn now() -> Timestamp {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    Timestamp::from_unix_nanos(nanos)
}

struct Cli {
    database_url: String,
    schema: String,
    kafka: Option<String>,
}

impl Cli {
    /// `reprise dlq --schema <schema> <args>`, with `DATABASE_URL` (and `KAFKA_BOOTSTRAP`
    /// only when `kafka`) in its environment.
    fn dlq(&self, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_reprise"));
        command
            .args(["dlq", "--schema", &self.schema])
            .args(args)
            .env("DATABASE_URL", &self.database_url)
            .env_remove("KAFKA_BOOTSTRAP");
        if let Some(bootstrap) = &self.kafka {
            command.env("KAFKA_BOOTSTRAP", bootstrap);
        }
        command.output().expect("the reprise binary runs")
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.dlq(args);
        assert_eq!(
            output.status.code(),
            Some(0),
            "reprise dlq {args:?}: {}",
            describe(&output)
        );
        stdout(&output)
    }

    fn json(&self, args: &[&str]) -> Vec<Value> {
        let text = self.ok(args);
        match serde_json::from_str(&text) {
            Ok(Value::Array(rows)) => rows,
            other => panic!("reprise dlq {args:?} printed no JSON array: {other:?}\n{text}"),
        }
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        stdout(output),
        stderr(output)
    )
}

fn letter(topic: &str, key: &str, payload: &str, failed_at: Timestamp) -> NewDeadLetter {
    NewDeadLetter {
        topic: topic.into(),
        source_position: Some(format!("0/{key}")),
        key: key.into(),
        payload: Payload::from_json_text(payload),
        headers: Headers::default()
            .with("reprise-event-id", event_id(key))
            .with("x-tenant", "acme"),
        error: format!("handler failed on {key}"),
        error_class: ErrorClass::Permanent,
        attempts: 4,
        failed_at,
    }
}

/// An event id (UUID layout) derived from `key`: consumers dead-letter messages whose
/// `reprise-event-id` is not one, and the redelivered letters must reach the subscriber.
fn event_id(key: &str) -> String {
    let n = key
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    format!("00000000-0000-4000-8000-{:012x}", n & 0xffff_ffff_ffff)
}

fn ids(rows: &[Value]) -> Vec<&str> {
    rows.iter()
        .map(|r| r["id"].as_str().expect("id is a string"))
        .collect()
}

async fn status(queue: &PgDeadLetterQueue, id: &DeadLetterId) -> DeadLetterStatus {
    queue
        .get(id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("letter {id} exists"))
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_lists_shows_discards_and_retries_letters_in_postgres() {
    let Some(database_url) = required_env("DATABASE_URL", "the `reprise dlq` PostgreSQL test")
    else {
        return;
    };
    let schema = unique("cli_dlq");
    let queue = PgDeadLetterQueue::connect(
        PgConfig::new(database_url.clone())
            .with_schema(schema.clone())
            .with_notify(false),
    )
    .await
    .expect("PostgreSQL at DATABASE_URL is reachable (scripts/postgres.sh)");
    let topic = unique("reprise-cli-dlq").replace('_', "-");
    let failed_at = now() - Duration::from_secs(7_300);
    let a = queue
        .put(letter(
            &topic,
            "order-1",
            r#"{"z":1,"a":[true,null]}"#,
            failed_at,
        ))
        .await
        .unwrap();
    let b = queue
        .put(letter(&topic, "order-2", r#"{"n":2}"#, failed_at))
        .await
        .unwrap();
    let c = queue
        .put(letter("other", "order-3", "not json", failed_at))
        .await
        .unwrap();
    let cli = Cli {
        database_url: database_url.clone(),
        schema: schema.clone(),
        kafka: None,
    };

    // list --json: all three, oldest first, with what the table shows.
    let rows = cli.json(&["list", "--json"]);
    assert_eq!(ids(&rows), [a.0.as_str(), &b.0, &c.0]);
    assert_eq!(rows[0]["topic"], topic.as_str());
    assert_eq!(rows[0]["key"], "order-1");
    assert_eq!(rows[0]["attempts"], 4);
    assert_eq!(rows[0]["error_class"], "permanent");
    assert_eq!(rows[0]["status"], "pending");
    assert_eq!(rows[0]["failed_at_unix_nanos"], failed_at.as_unix_nanos());
    let age = rows[0]["age_seconds"].as_u64().unwrap();
    assert!((7_300..7_400).contains(&age), "age {age}");
    assert_eq!(
        ids(&cli.json(&["list", "--topic", "other", "--json"])),
        [c.0.as_str()]
    );
    assert_eq!(
        ids(&cli.json(&["list", "--limit", "1", "--json"])),
        [a.0.as_str()]
    );
    // The table.
    let table = cli.ok(&["list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    for column in [
        "ID",
        "TOPIC",
        "KEY",
        "ATTEMPTS",
        "CLASS",
        "FAILED AT",
        "AGE",
        "STATUS",
    ] {
        assert!(lines[0].contains(column), "{table}");
    }
    assert!(
        lines[1].starts_with(&a.0) && lines[1].contains("order-1") && lines[1].contains("2h01m"),
        "{table}"
    );

    // show: every field, headers, pretty payload in stored key order.
    let shown = cli.ok(&["show", &a.0]);
    for expected in [
        format!("topic:           {topic}"),
        "key:             order-1".into(),
        "source position: 0/order-1".into(),
        "error:           handler failed on order-1".into(),
        "error class:     permanent".into(),
        format!("  reprise-event-id: {}", event_id("order-1")),
        "  x-tenant: acme".into(),
        "payload:\n{\n  \"z\": 1,\n  \"a\": [\n    true,\n    null\n  ]\n}".into(),
    ] {
        assert!(
            shown.contains(&expected),
            "{expected:?} missing in:\n{shown}"
        );
    }
    let shown: Value =
        serde_json::from_str(&cli.ok(&["show", &c.0, "--json"])).expect("show --json is JSON");
    assert_eq!(
        shown["payload"], "not json",
        "the exact text, even when not JSON"
    );
    assert_eq!(
        shown["headers"],
        serde_json::json!([
            ["reprise-event-id", event_id("order-3")],
            ["x-tenant", "acme"]
        ])
    );
    let missing = cli.dlq(&["show", "999999999"]);
    assert_eq!(missing.status.code(), Some(1), "{}", describe(&missing));
    assert!(
        stderr(&missing).contains("no dead letter 999999999"),
        "{}",
        describe(&missing)
    );

    // discard, then again: the second is refused and says why.
    let out = cli.ok(&["discard", &c.0, "--reason", "duplicate of order-2"]);
    assert_eq!(
        out.trim(),
        format!("discarded {}: duplicate of order-2", c.0)
    );
    assert!(matches!(
        status(&queue, &c).await,
        DeadLetterStatus::Discarded { .. }
    ));
    let again = cli.dlq(&["discard", &c.0, "no-such-id"]);
    assert_eq!(again.status.code(), Some(1), "{}", describe(&again));
    let err = stderr(&again);
    assert!(
        err.contains(&format!("dead letter {} was already discarded", c.0))
            && err.contains("no dead letter no-such-id"),
        "{}",
        describe(&again)
    );
    assert_eq!(ids(&cli.json(&["list", "--json"])), [a.0.as_str(), &b.0]);
    let everything = cli.json(&["list", "--all", "--json"]);
    assert_eq!(everything.len(), 3);
    assert_eq!(everything[2]["status"], "discarded");
    assert!(everything[2]["resolved_at"].is_string());

    // Usage errors exit 2 and say what is missing.
    let no_bus = cli.dlq(&["retry", &a.0]);
    assert_eq!(no_bus.status.code(), Some(2), "{}", describe(&no_bus));
    assert!(
        stderr(&no_bus).contains("KAFKA_BOOTSTRAP"),
        "{}",
        describe(&no_bus)
    );
    let no_db = Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args(["dlq", "list"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(no_db.status.code(), Some(2), "{}", describe(&no_db));
    assert!(
        stderr(&no_db).contains("DATABASE_URL"),
        "{}",
        describe(&no_db)
    );
    let bad = cli.dlq(&["retry", &a.0, "--all"]);
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
    assert_eq!(status(&queue, &a).await, DeadLetterStatus::Pending);

    if let Some(bootstrap) = required_env("KAFKA_BOOTSTRAP", "the `reprise dlq retry` part") {
        retry_through_kafka(&queue, cli, bootstrap, &topic, [&a, &b]).await;
    }

    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(queue.store().pool())
        .await
        .expect("drop the test schema");
    queue.store().close().await;
}

async fn retry_through_kafka(
    queue: &PgDeadLetterQueue,
    cli: Cli,
    bootstrap: String,
    topic: &str,
    [a, b]: [&DeadLetterId; 2],
) {
    let bus = KafkaEventBus::new(KafkaConfig::new(bootstrap.clone())).unwrap();
    bus.create_topic(topic, 1, 1).await.unwrap();
    let mut subscription = bus.subscribe(&unique("cli-dlq"), &[topic]).await.unwrap();
    let cli = Cli {
        kafka: Some(bootstrap),
        ..cli
    };

    let out = cli.ok(&["retry", &a.0]);
    assert_eq!(
        out.trim(),
        format!("retried {a}: republished to {topic} (key order-1)")
    );
    assert!(matches!(
        status(queue, a).await,
        DeadLetterStatus::Retried { .. }
    ));
    let again = cli.dlq(&["retry", &a.0]);
    assert_eq!(again.status.code(), Some(1), "{}", describe(&again));
    assert!(
        stderr(&again).contains(&format!("dead letter {a} was already retried")),
        "{}",
        describe(&again)
    );

    let out = cli.ok(&["retry", "--all", "--topic", topic]);
    assert!(
        out.contains(&format!(
            "retried {b}: republished to {topic} (key order-2)"
        )) && out.contains("1 letter(s) to retry"),
        "{out}"
    );
    assert!(matches!(
        status(queue, b).await,
        DeadLetterStatus::Retried { .. }
    ));
    assert!(cli.json(&["list", "--json"]).is_empty());

    // Both letters arrived on their topic, each once, marked with where they came from.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let delivery = tokio::time::timeout(Duration::from_secs(30), subscription.next())
            .await
            .expect("the redelivered message arrives")
            .unwrap();
        seen.push((
            delivery.key.to_string(),
            delivery.payload.as_str().to_owned(),
            delivery
                .headers
                .get(REDELIVERED_FROM_HEADER)
                .map(str::to_owned),
        ));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            (
                "order-1".to_owned(),
                r#"{"z":1,"a":[true,null]}"#.to_owned(),
                Some(a.0.clone())
            ),
            (
                "order-2".to_owned(),
                r#"{"n":2}"#.to_owned(),
                Some(b.0.clone())
            ),
        ]
    );
}

/// `reprise dlq --backend kafka --topic <dead-letter topic> <args>`.
fn kafka_dlq(bootstrap: &str, dead_letter_topic: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args(["dlq", "--backend", "kafka", "--topic", dead_letter_topic])
        .args(args)
        .env("KAFKA_BOOTSTRAP", bootstrap)
        .env_remove("DATABASE_URL")
        .output()
        .expect("the reprise binary runs")
}

fn kafka_ok(bootstrap: &str, dead_letter_topic: &str, args: &[&str]) -> String {
    let output = kafka_dlq(bootstrap, dead_letter_topic, args);
    assert_eq!(
        output.status.code(),
        Some(0),
        "reprise dlq --backend kafka {args:?}: {}",
        describe(&output)
    );
    stdout(&output)
}

fn kafka_json(bootstrap: &str, dead_letter_topic: &str, args: &[&str]) -> Vec<Value> {
    let text = kafka_ok(bootstrap, dead_letter_topic, args);
    match serde_json::from_str(&text) {
        Ok(Value::Array(rows)) => rows,
        other => panic!("reprise dlq {args:?} printed no JSON array: {other:?}\n{text}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_on_a_kafka_dead_letter_topic_lists_shows_discards_and_retries() {
    let Some(bootstrap) = required_env("KAFKA_BOOTSTRAP", "the `reprise dlq --backend kafka` test")
    else {
        return;
    };
    let source = unique("reprise-cli-src").replace('_', "-");
    let dead_letter_topic = format!("{source}.dlq");
    let queue =
        KafkaDeadLetterQueue::connect(KafkaConfig::new(bootstrap.clone()), &dead_letter_topic)
            .await
            .expect("the broker at KAFKA_BOOTSTRAP is reachable (scripts/kafka.sh)");
    let bus = KafkaEventBus::new(KafkaConfig::new(bootstrap.clone())).unwrap();
    bus.create_topic(&source, 1, 1).await.unwrap();
    let mut subscription = bus
        .subscribe(&unique("cli-dlq-kafka"), &[&source])
        .await
        .unwrap();
    let failed_at = now() - Duration::from_secs(90);
    let a = queue
        .put(letter(&source, "order-1", r#"{"n":1}"#, failed_at))
        .await
        .unwrap();
    let b = queue
        .put(letter(&source, "order-2", r#"{"n":2}"#, failed_at))
        .await
        .unwrap();
    let (k, t) = (bootstrap.as_str(), dead_letter_topic.as_str());

    let rows = kafka_json(k, t, &["list", "--json"]);
    assert_eq!(ids(&rows), [a.0.as_str(), &b.0]);
    assert_eq!(rows[0]["topic"], source.as_str());
    assert_eq!(rows[0]["attempts"], 4);
    let shown = kafka_ok(k, t, &["show", &a.0]);
    assert!(shown.contains("key:             order-1"), "{shown}");
    assert!(
        shown.contains("error:           handler failed on order-1"),
        "{shown}"
    );

    let out = kafka_ok(k, t, &["discard", &b.0, "--reason", "test order"]);
    assert_eq!(out.trim(), format!("discarded {b}: test order"));
    let again = kafka_dlq(k, t, &["discard", &b.0]);
    assert_eq!(again.status.code(), Some(1), "{}", describe(&again));
    assert_eq!(ids(&kafka_json(k, t, &["list", "--json"])), [a.0.as_str()]);

    let out = kafka_ok(k, t, &["retry", &a.0]);
    assert_eq!(
        out.trim(),
        format!("retried {a}: republished to {source} (key order-1)")
    );
    let delivery = tokio::time::timeout(Duration::from_secs(30), subscription.next())
        .await
        .expect("the redelivered message arrives")
        .unwrap();
    assert_eq!(&*delivery.key, "order-1");
    assert_eq!(delivery.payload.as_str(), r#"{"n":1}"#);
    assert_eq!(
        delivery.headers.get(REDELIVERED_FROM_HEADER),
        Some(a.0.as_str())
    );
    assert!(kafka_json(k, t, &["list", "--json"]).is_empty());
    let everything = kafka_json(k, t, &["list", "--all", "--json"]);
    let statuses: Vec<&str> = everything
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["retried", "discarded"]);

    // Resolutions are durable: a fresh connection sees them.
    let reopened =
        KafkaDeadLetterQueue::connect(KafkaConfig::new(bootstrap.clone()), &dead_letter_topic)
            .await
            .unwrap();
    let letter = reopened.get(&a).await.unwrap().expect("letter a exists");
    assert!(matches!(letter.status, DeadLetterStatus::Retried { .. }));
}

/// Read-only means read-only: a mistyped schema or dead-letter topic is an error that
/// says so, and nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_on_a_missing_schema_or_topic_says_so_and_creates_nothing() {
    if let Some(database_url) = required_env("DATABASE_URL", "the missing-schema test") {
        let schema = unique("cli_typo");
        let cli = Cli {
            database_url: database_url.clone(),
            schema: schema.clone(),
            kafka: None,
        };
        let output = cli.dlq(&["list"]);
        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
        assert!(
            stderr(&output).contains(&format!("schema {schema} does not exist"))
                && stderr(&output).contains("nothing was created"),
            "{}",
            describe(&output)
        );
        let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)")
                .bind(&schema)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert!(
            !exists,
            "`reprise dlq --schema {schema} list` created the schema"
        );
        pool.close().await;
    }
    if let Some(bootstrap) = required_env("KAFKA_BOOTSTRAP", "the missing-topic test") {
        let topic = format!("{}.dlq", unique("reprise-cli-typo").replace('_', "-"));
        let output = kafka_dlq(&bootstrap, &topic, &["list"]);
        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
        assert!(
            stderr(&output).contains(&format!("dead-letter topic {topic} does not exist"))
                && stderr(&output).contains(&bootstrap),
            "{}",
            describe(&output)
        );
        let bus = KafkaEventBus::new(KafkaConfig::new(bootstrap)).unwrap();
        for created in [topic.clone(), format!("{topic}.resolutions")] {
            assert!(
                matches!(
                    bus.partition_count(&created).await,
                    Err(reprise_core::BusError::UnknownTopic(_))
                ),
                "`reprise dlq --topic {topic} list` created {created}"
            );
        }
    }
}

/// One row an operator broke by hand is reported (exit 1, its id on stderr); the others
/// are still listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_reports_a_malformed_row_and_lists_the_others() {
    let Some(database_url) = required_env("DATABASE_URL", "the malformed-row test") else {
        return;
    };
    let schema = unique("cli_malformed");
    let queue = PgDeadLetterQueue::connect(
        PgConfig::new(database_url.clone())
            .with_schema(schema.clone())
            .with_notify(false),
    )
    .await
    .expect("PostgreSQL at DATABASE_URL is reachable (scripts/postgres.sh)");
    let failed_at = now() - Duration::from_secs(60);
    let mut put = Vec::new();
    for key in ["order-1", "order-2", "order-3"] {
        put.push(
            queue
                .put(letter("orders", key, r#"{"n":1}"#, failed_at))
                .await
                .unwrap(),
        );
    }
    sqlx::query("UPDATE dead_letters SET headers = '[[\"a\", 1]]' WHERE id = $1")
        .bind(put[1].0.parse::<i64>().unwrap())
        .execute(queue.store().pool())
        .await
        .unwrap();
    let cli = Cli {
        database_url,
        schema: schema.clone(),
        kafka: None,
    };
    let output = cli.dlq(&["list", "--json"]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        stderr(&output).contains(&format!("dead letter {} skipped", put[1])),
        "{}",
        describe(&output)
    );
    let rows: Vec<Value> = serde_json::from_str::<Value>(&stdout(&output))
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_else(|| panic!("no JSON array: {}", describe(&output)));
    assert_eq!(ids(&rows), [put[0].0.as_str(), put[2].0.as_str()]);
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(queue.store().pool())
        .await
        .expect("drop the test schema");
    queue.store().close().await;
}

/// Letters the consumers wrote themselves — foreign messages of every shape — are all
/// listed, shown, discarded and retried (byte for byte) by `reprise dlq --backend kafka`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_on_kafka_acts_on_every_letter_the_consumers_wrote() {
    let Some(bootstrap) = required_env("KAFKA_BOOTSTRAP", "the consumer-letters test") else {
        return;
    };
    let topic = unique("reprise-cli-poison").replace('_', "-");
    let dead_letter_topic = format!("{topic}.dlq");
    let config = KafkaConfig::new(bootstrap.clone())
        .group_timing(Duration::from_secs(6), Duration::from_millis(500));
    let bus = KafkaEventBus::new(config).unwrap();
    bus.create_topic(&topic, 1, 1).await.unwrap();
    let mut subscription = bus
        .subscribe(&unique("cli-poison"), &[&topic])
        .await
        .unwrap();
    // Raw records, as any client could produce them (`replay` publishes a letter's bytes
    // as they are, adding only its `reprise-dlq-replayed-from` header).
    let raw = reprise_kafka::DeadLetterQueue::for_topic(bus.clone(), &topic);
    let id = b"0123abcd-0000-4000-8000-00000000beef".to_vec();
    // (key, payload, carries an event id)
    type Shape<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, bool);
    let shapes: [Shape<'_>; 5] = [
        (None, Some(b"{}"), false),
        (Some(b"k"), Some(b"{oops"), true),
        (Some(b"k"), Some(&[0xff, 0xfe]), true),
        (Some(b"k"), None, true),
        (Some(b"k"), Some(b"{}"), true),
    ];
    for (key, payload, with_id) in shapes {
        let record = reprise_kafka::DeadLetter {
            topic: dead_letter_topic.clone(),
            partition: 0,
            offset: 0,
            original_topic: topic.clone(),
            original_partition: 0,
            original_offset: 0,
            error: String::new(),
            attempts: 0,
            group: None,
            dead_lettered_at_ms: None,
            key: key.map(<[u8]>::to_vec),
            payload: payload.map(<[u8]>::to_vec),
            headers: if with_id {
                vec![("reprise-event-id".to_owned(), Some(id.clone()))]
            } else {
                Vec::new()
            },
        };
        raw.replay(&record).await.unwrap();
    }
    // The good message arrives after the four letters were written.
    let delivery = tokio::time::timeout(Duration::from_secs(60), subscription.next())
        .await
        .expect("the good message arrives")
        .unwrap();
    assert_eq!(delivery.offset, 4);

    let (k, t) = (bootstrap.as_str(), dead_letter_topic.as_str());
    let rows = kafka_json(k, t, &["list", "--json"]);
    assert_eq!(rows.len(), 4, "{rows:#?}");
    let errors: Vec<&str> = rows.iter().map(|r| r["error"].as_str().unwrap()).collect();
    for needle in ["no reprise-event-id", "not JSON", "not UTF-8", "tombstone"] {
        assert!(
            errors.iter().any(|e| e.contains(needle)),
            "{needle}: {errors:?}"
        );
    }
    let id_of = |needle: &str| {
        rows.iter()
            .find(|r| r["error"].as_str().unwrap().contains(needle))
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let shown = kafka_ok(k, t, &["show", &id_of("not UTF-8")]);
    assert!(shown.contains("attempts:        0"), "{shown}");
    let out = kafka_ok(k, t, &["discard", &id_of("no reprise-event-id")]);
    assert!(out.starts_with("discarded"), "{out}");
    let out = kafka_ok(k, t, &["retry", &id_of("not UTF-8")]);
    assert!(out.contains(&format!("republished to {topic}")), "{out}");
    assert_eq!(kafka_json(k, t, &["list", "--json"]).len(), 2);

    // Republished byte for byte: still not text, so dead-lettered again, marked as a
    // redelivery of the letter.
    let letters = reprise_kafka::DeadLetterQueue::for_topic(bus.clone(), &topic);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let again = loop {
        let listed = letters.list(100).await.unwrap();
        if let Some(letter) = listed.iter().find(|l| l.original_offset == 5) {
            break letter.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{listed:#?}");
        let _ = tokio::time::timeout(Duration::from_millis(500), subscription.next()).await;
    };
    assert_eq!(again.payload.as_deref(), Some(&[0xff_u8, 0xfe][..]));
    assert_eq!(
        again.header(REDELIVERED_FROM_HEADER),
        Some(id_of("not UTF-8").as_str())
    );
}
