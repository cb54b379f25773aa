//! `reprise dlq`: look at dead letters and decide what becomes of them.
//!
//! ```text
//! reprise dlq [--backend postgres] [--database-url URL] [--schema S] list [--topic T] [--all] [--limit N] [--json]
//! reprise dlq --backend kafka --topic ORDERS.DLQ [--bootstrap HOST:PORT] list ...
//! reprise dlq ... show <id> [--json]
//! reprise dlq ... retry <id>... | retry --all [--topic T]
//! reprise dlq ... discard <id>... [--reason TEXT]
//! ```
//!
//! Backends: the `dead_letters` table (`--backend postgres`, the default: `DATABASE_URL` or
//! `--database-url`, `--schema`) or a Kafka dead-letter topic (`--backend kafka --topic`,
//! `KAFKA_BOOTSTRAP` or `--bootstrap`). `retry` sends letters back to their topics with
//! [`redeliver`], through Kafka at `KAFKA_BOOTSTRAP` / `--bootstrap` for either backend.
//!
//! Read-only commands create nothing: a schema (`--schema`) or dead-letter topic
//! (`--topic`) that does not exist is an error saying so. `retry` and `discard` on Kafka
//! create the resolutions topic (`<topic>.resolutions`) at the first resolution. A
//! PostgreSQL row that cannot be read back is reported on stderr and skipped; the other
//! letters are still listed (exit code 1). On Kafka, `retry` sends the letter back byte
//! for byte (a letter that is not text — a tombstone, bytes that are not UTF-8 — is listed
//! and shown lossily, but republished exactly).
//!
//! Exit codes: 0 everything done, 1 an operation failed (unknown id, already resolved,
//! unreadable rows, storage or broker unreachable; the other ids are still processed), 2
//! usage.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand, ValueEnum};
use reprise_core::Timestamp;
use reprise_core::resilience::{
    DeadLetter, DeadLetterError, DeadLetterId, DeadLetterQuery, DeadLetterQueue, DeadLetterStatus,
    Resolution, redeliver,
};
use reprise_kafka::{KafkaConfig, KafkaDeadLetterQueue, KafkaEventBus};
use reprise_postgres::{MigrationMode, PgConfig, PgDeadLetterQueue};
use serde_json::json;

#[derive(Args, Debug)]
pub(crate) struct DlqArgs {
    /// Where the dead letters are.
    #[arg(long, value_enum, default_value_t = Backend::Postgres)]
    backend: Backend,
    /// PostgreSQL URL (default: `DATABASE_URL`).
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// PostgreSQL schema holding the `dead_letters` table.
    #[arg(long, default_value = "reprise")]
    schema: String,
    /// Kafka bootstrap servers (default: `KAFKA_BOOTSTRAP`), for `--backend kafka` and for
    /// `retry` with any backend.
    #[arg(long, value_name = "HOST:PORT")]
    bootstrap: Option<String>,
    /// With `--backend kafka`: the dead-letter topic to read (e.g. `orders.dlq`).
    #[arg(long = "topic", value_name = "DEAD_LETTER_TOPIC")]
    dead_letter_topic: Option<String>,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Backend {
    Postgres,
    Kafka,
}

#[derive(Subcommand, Debug)]
enum DlqCommand {
    /// Dead letters, oldest first: pending ones unless `--all`.
    List {
        /// Only letters that failed on this topic.
        #[arg(long)]
        topic: Option<String>,
        /// Include retried and discarded letters.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON array on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Everything about one letter, payload and headers included.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Publish letters back to their topics, then mark them retried.
    Retry {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every pending letter (of `--topic`, if given).
        #[arg(long)]
        all: bool,
        /// With `--all`: only letters that failed on this topic.
        #[arg(long, conflicts_with = "ids")]
        topic: Option<String>,
    },
    /// Mark letters discarded (kept for the record, never redelivered).
    Discard {
        #[arg(required = true)]
        ids: Vec<String>,
        /// Why, for the log line.
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Why a command stopped: bad usage (exit 2) or a failed operation (exit 1).
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    Usage(String),
    Failed(String),
}

/// Runs `reprise dlq`. `Err` is a usage error (the caller prints it and exits with 2).
pub(crate) fn run(args: DlqArgs) -> Result<ExitCode, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    match runtime.block_on(execute(args)) {
        Ok(true) => Ok(ExitCode::SUCCESS),
        Ok(false) => Ok(ExitCode::FAILURE),
        Err(Failure::Usage(message)) => Err(message),
        Err(Failure::Failed(message)) => {
            eprintln!("error: {message}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The queue a command works on.
enum Opened {
    Postgres(PgDeadLetterQueue),
    Kafka(KafkaDeadLetterQueue),
}

impl Opened {
    fn queue(&self) -> &dyn DeadLetterQueue {
        match self {
            Opened::Postgres(queue) => queue,
            Opened::Kafka(queue) => queue,
        }
    }

    /// Letters for `list`, and whether every row could be read (the unreadable ones are
    /// reported on stderr).
    async fn list(&self, query: DeadLetterQuery) -> Result<(Vec<DeadLetter>, bool), Failure> {
        match self {
            Opened::Postgres(queue) => {
                let (letters, unreadable) = queue
                    .list_checked(query)
                    .await
                    .map_err(|e| Failure::Failed(e.to_string()))?;
                for (id, error) in &unreadable {
                    eprintln!("error: dead letter {id} skipped: {error}");
                }
                Ok((letters, unreadable.is_empty()))
            }
            Opened::Kafka(queue) => queue
                .list(query)
                .await
                .map(|letters| (letters, true))
                .map_err(|e| Failure::Failed(e.to_string())),
        }
    }
}

/// `Ok(false)`: some ids failed (each already reported on stderr).
async fn execute(args: DlqArgs) -> Result<bool, Failure> {
    let opened = open_queue(&args).await?;
    let queue = opened.queue();
    match &args.command {
        DlqCommand::List {
            topic,
            all,
            limit,
            json,
        } => {
            let (letters, complete) = opened
                .list(DeadLetterQuery {
                    topic: topic.clone(),
                    include_resolved: *all,
                    limit: *limit,
                })
                .await?;
            let now = now();
            if *json {
                let rows: Vec<_> = letters.iter().map(|l| letter_json(l, now, false)).collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                print!("{}", table(&letters, now));
            }
            Ok(complete)
        }
        DlqCommand::Show { id, json } => {
            let id = DeadLetterId(id.clone());
            let letter = queue
                .get(&id)
                .await
                .map_err(|e| Failure::Failed(e.to_string()))?
                .ok_or_else(|| Failure::Failed(DeadLetterError::NotFound(id).to_string()))?;
            if *json {
                println!("{:#}", letter_json(&letter, now(), true));
            } else {
                print!("{}", details(&letter, now()));
            }
            Ok(true)
        }
        DlqCommand::Retry { ids, all, topic } => {
            // Kafka letters go back byte for byte through the queue's own client.
            let bus = match &opened {
                Opened::Postgres(_) => Some(connect_bus(&args).await?),
                Opened::Kafka(_) => None,
            };
            let ids = if *all {
                pending_ids(queue, topic.clone()).await?
            } else {
                ids.iter().map(|id| DeadLetterId(id.clone())).collect()
            };
            let mut ok = true;
            for id in &ids {
                let retried = match (&opened, &bus) {
                    (Opened::Kafka(kafka), _) => retry_exact(kafka, id).await,
                    (Opened::Postgres(_), Some(bus)) => retry_one(queue, bus, id).await,
                    (Opened::Postgres(_), None) => unreachable!("connected above"),
                };
                match retried {
                    Ok(letter) => println!(
                        "retried {id}: republished to {} (key {})",
                        letter.letter.topic, letter.letter.key
                    ),
                    Err(error) => {
                        eprintln!("error: {error}");
                        ok = false;
                    }
                }
            }
            if *all {
                println!("{} letter(s) to retry", ids.len());
            }
            Ok(ok)
        }
        DlqCommand::Discard { ids, reason } => {
            let mut ok = true;
            for id in ids {
                let id = DeadLetterId(id.clone());
                match queue.resolve(&id, Resolution::Discarded, now()).await {
                    Ok(()) => match reason {
                        Some(reason) => println!("discarded {id}: {reason}"),
                        None => println!("discarded {id}"),
                    },
                    Err(error) => {
                        eprintln!("error: {error}");
                        ok = false;
                    }
                }
            }
            Ok(ok)
        }
    }
}

async fn retry_one(
    queue: &dyn DeadLetterQueue,
    bus: &KafkaEventBus,
    id: &DeadLetterId,
) -> Result<DeadLetter, DeadLetterError> {
    let letter = queue
        .get(id)
        .await?
        .ok_or_else(|| DeadLetterError::NotFound(id.clone()))?;
    redeliver(queue, bus, id, now()).await?;
    Ok(letter)
}

async fn retry_exact(
    queue: &KafkaDeadLetterQueue,
    id: &DeadLetterId,
) -> Result<DeadLetter, DeadLetterError> {
    let letter = queue
        .get(id)
        .await?
        .ok_or_else(|| DeadLetterError::NotFound(id.clone()))?;
    queue.redeliver_exact(id, now()).await?;
    Ok(letter)
}

async fn pending_ids(
    queue: &dyn DeadLetterQueue,
    topic: Option<String>,
) -> Result<Vec<DeadLetterId>, Failure> {
    let pending = queue
        .list(DeadLetterQuery {
            topic,
            include_resolved: false,
            limit: usize::MAX,
        })
        .await
        .map_err(|e| Failure::Failed(e.to_string()))?;
    Ok(pending.into_iter().map(|l| l.id).collect())
}

async fn open_queue(args: &DlqArgs) -> Result<Opened, Failure> {
    match args.backend {
        Backend::Postgres => {
            if args.dead_letter_topic.is_some() {
                return Err(Failure::Usage(
                    "`reprise dlq --topic` names a Kafka dead-letter topic (with --backend \
                     kafka); to filter by topic use `list --topic` or `retry --all --topic`"
                        .into(),
                ));
            }
            let url = match &args.database_url {
                Some(url) => url.clone(),
                None => env("DATABASE_URL").ok_or_else(|| {
                    Failure::Usage(
                        "no database: set DATABASE_URL or pass --database-url (or use \
                         --backend kafka)"
                            .into(),
                    )
                })?,
            };
            // Verify, never migrate or create: an operator's tool must not change the
            // database, and a mistyped --schema must be an error, not a new schema.
            let config = PgConfig::new(url)
                .with_schema(args.schema.clone())
                .with_max_connections(2)
                .with_notify(false)
                .with_migrations(MigrationMode::Verify);
            let queue = PgDeadLetterQueue::connect(config)
                .await
                .map_err(|e| Failure::Failed(format!("PostgreSQL: {e}")))?;
            Ok(Opened::Postgres(queue))
        }
        Backend::Kafka => {
            let Some(topic) = &args.dead_letter_topic else {
                return Err(Failure::Usage(
                    "--backend kafka needs the dead-letter topic: --topic <DEAD_LETTER_TOPIC>"
                        .into(),
                ));
            };
            let config = kafka_config(args)?;
            let bootstrap = config.bootstrap_servers.clone();
            // `open`, not `connect`: nothing is created until something is resolved.
            let queue = KafkaDeadLetterQueue::open(config, topic)
                .await
                .map_err(|e| match e {
                    reprise_kafka::KafkaError::Bus(reprise_core::BusError::UnknownTopic(_)) => {
                        Failure::Failed(format!(
                            "Kafka at {bootstrap}: dead-letter topic {topic} does not exist \
                             (nothing was created; dead-letter topics are `<topic>.dlq`)"
                        ))
                    }
                    other => Failure::Failed(format!("Kafka at {bootstrap}: {other}")),
                })?;
            Ok(Opened::Kafka(queue))
        }
    }
}

fn kafka_config(args: &DlqArgs) -> Result<KafkaConfig, Failure> {
    let config = match &args.bootstrap {
        // --bootstrap replaces KAFKA_BOOTSTRAP only: TLS and SASL settings still apply.
        Some(bootstrap) => {
            let mut config = KafkaConfig::new(bootstrap.clone());
            if let Some(text) = env("KAFKA_PROPERTIES") {
                config.properties = reprise_kafka::parse_properties(&text)
                    .map_err(|e| Failure::Usage(e.to_string()))?;
            }
            config
        }
        None if env("KAFKA_BOOTSTRAP").is_some() => {
            KafkaConfig::from_env().map_err(|e| Failure::Usage(e.to_string()))?
        }
        None => {
            return Err(Failure::Usage(
                "no Kafka broker: set KAFKA_BOOTSTRAP or pass --bootstrap (retry publishes \
                 the letters back to their topics through Kafka)"
                    .into(),
            ));
        }
    };
    Ok(config.client_id("reprise-cli").statistics_interval(None))
}

/// The bus `retry` publishes to, checked before the first letter is touched.
async fn connect_bus(args: &DlqArgs) -> Result<KafkaEventBus, Failure> {
    let config = kafka_config(args)?;
    let bootstrap = config.bootstrap_servers.clone();
    let bus = KafkaEventBus::new(config).map_err(|e| Failure::Usage(e.to_string()))?;
    bus.check_connection()
        .await
        .map_err(|e| Failure::Failed(format!("Kafka at {bootstrap}: {e}")))?;
    Ok(bus)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn now() -> Timestamp {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    Timestamp::from_unix_nanos(nanos)
}

/// A letter as JSON; `full` adds payload (its exact text) and headers.
fn letter_json(letter: &DeadLetter, now: Timestamp, full: bool) -> serde_json::Value {
    let l = &letter.letter;
    let resolved_at = match letter.status {
        DeadLetterStatus::Pending => None,
        DeadLetterStatus::Retried { at } | DeadLetterStatus::Discarded { at } => Some(at),
    };
    let mut value = json!({
        "id": letter.id.0,
        "topic": l.topic,
        "key": l.key,
        "source_position": l.source_position,
        "attempts": l.attempts,
        "error_class": l.error_class.as_str(),
        "error": l.error,
        "failed_at": rfc3339(l.failed_at, true),
        "failed_at_unix_nanos": l.failed_at.as_unix_nanos(),
        "age_seconds": now.saturating_since(l.failed_at).as_secs(),
        "status": letter.status.as_str(),
        "resolved_at": resolved_at.map(|at| rfc3339(at, true)),
    });
    if full {
        value["payload"] = json!(l.payload.as_str());
        value["headers"] = json!(l.headers.0);
    }
    value
}

const TABLE_HEADER: [&str; 8] = [
    "ID",
    "TOPIC",
    "KEY",
    "ATTEMPTS",
    "CLASS",
    "FAILED AT",
    "AGE",
    "STATUS",
];

fn table(letters: &[DeadLetter], now: Timestamp) -> String {
    if letters.is_empty() {
        return "no dead letters\n".into();
    }
    let rows: Vec<[String; 8]> = letters
        .iter()
        .map(|letter| {
            let l = &letter.letter;
            [
                letter.id.0.clone(),
                clip(&l.topic, 40),
                clip(&l.key, 32),
                l.attempts.to_string(),
                l.error_class.as_str().to_owned(),
                rfc3339(l.failed_at, false),
                age(now.saturating_since(l.failed_at)),
                letter.status.as_str().to_owned(),
            ]
        })
        .collect();
    let mut widths = TABLE_HEADER.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            let pad = width.saturating_sub(cell.chars().count());
            text.push_str(cell);
            if i + 1 < cells.len() {
                text.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(&text);
        out.push('\n');
    };
    line(&TABLE_HEADER);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

fn details(letter: &DeadLetter, now: Timestamp) -> String {
    let l = &letter.letter;
    let mut out = String::new();
    let mut field = |name: &str, value: &str| {
        let _ = writeln!(out, "{:<16} {value}", format!("{name}:"));
    };
    field("id", &letter.id.0);
    let status = match letter.status {
        DeadLetterStatus::Pending => "pending".to_owned(),
        DeadLetterStatus::Retried { at } | DeadLetterStatus::Discarded { at } => {
            format!("{} at {}", letter.status.as_str(), rfc3339(at, true))
        }
    };
    field("status", &status);
    field("topic", &l.topic);
    field("key", &l.key);
    field(
        "source position",
        l.source_position.as_deref().unwrap_or("-"),
    );
    field("attempts", &l.attempts.to_string());
    field("error class", l.error_class.as_str());
    field("error", &l.error);
    field(
        "failed at",
        &format!(
            "{} ({} ago)",
            rfc3339(l.failed_at, true),
            age(now.saturating_since(l.failed_at))
        ),
    );
    out.push_str("headers:\n");
    if l.headers.0.is_empty() {
        out.push_str("  (none)\n");
    }
    for (name, value) in &l.headers.0 {
        let _ = writeln!(out, "  {name}: {value}");
    }
    out.push_str("payload:\n");
    out.push_str(&pretty_json(l.payload.as_str()));
    out.push('\n');
    out
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut clipped: String = text.chars().take(max.saturating_sub(1)).collect();
    clipped.push('…');
    clipped
}

/// `2026-11-27T17:03:09Z`, with nanoseconds when `precise`.
fn rfc3339(at: Timestamp, precise: bool) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_nanos(at.as_unix_nanos());
    if precise {
        humantime::format_rfc3339_nanos(time).to_string()
    } else {
        humantime::format_rfc3339_seconds(time).to_string()
    }
}

/// `42s`, `5m03s`, `2h05m`, `3d04h`.
fn age(elapsed: Duration) -> String {
    let s = elapsed.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m{:02}s", s / 60, s % 60),
        3_600..86_400 => format!("{}h{:02}m", s / 3_600, s % 3_600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3_600),
    }
}

/// Re-indents JSON text without parsing its values, so key order and number spelling stay
/// exactly as stored; text that is not JSON is returned unchanged.
fn pretty_json(text: &str) -> String {
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = text.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.peek().is_some_and(char::is_ascii_whitespace) {
                    chars.next();
                }
                if matches!(chars.peek(), Some('}' | ']')) {
                    out.extend(chars.next());
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use reprise_core::event_bus::Headers;
    use reprise_core::resilience::{ErrorClass, NewDeadLetter};
    use reprise_core::{Payload, Timestamp};

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        dlq: DlqArgs,
    }

    fn parse(args: &[&str]) -> Result<DlqArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("dlq").chain(args.iter().copied())).map(|c| c.dlq)
    }

    #[test]
    fn dates_are_proleptic_gregorian_utc() {
        let at = |secs: u64, nanos: u64| Timestamp::from_unix_nanos(secs * 1_000_000_000 + nanos);
        assert_eq!(rfc3339(at(0, 0), false), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(at(946_684_800, 5), true),
            "2000-01-01T00:00:00.000000005Z"
        );
        assert_eq!(rfc3339(at(1_709_251_199, 0), false), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339(at(1_709_251_200, 0), false), "2024-03-01T00:00:00Z");
        assert_eq!(rfc3339(at(1_767_225_600, 0), false), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339(at(4_107_542_400, 0), false), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn ages_are_short() {
        let secs = Duration::from_secs;
        assert_eq!(age(secs(0)), "0s");
        assert_eq!(age(secs(59)), "59s");
        assert_eq!(age(secs(303)), "5m03s");
        assert_eq!(age(secs(7_500)), "2h05m");
        assert_eq!(age(secs(3 * 86_400 + 4 * 3_600 + 59)), "3d04h");
    }

    #[test]
    fn pretty_json_keeps_order_numbers_and_strings() {
        let text = r#"{"z":1.50,"a":[1, 2,{}],"s":"x, {y}: \"q\"","e":[]}"#;
        let pretty = pretty_json(text);
        assert_eq!(
            pretty,
            "{\n  \"z\": 1.50,\n  \"a\": [\n    1,\n    2,\n    {}\n  ],\n  \"s\": \"x, {y}: \\\"q\\\"\",\n  \"e\": []\n}"
        );
        let reparsed: serde_json::Value = serde_json::from_str(&pretty).unwrap();
        assert_eq!(
            reparsed,
            serde_json::from_str::<serde_json::Value>(text).unwrap()
        );
        assert_eq!(pretty_json("not json {"), "not json {");
    }

    #[test]
    fn the_table_aligns_columns_and_clips_long_keys() {
        let failed_at = Timestamp::from_unix_nanos(1_767_225_600_000_000_000);
        let letter = |id: &str, key: &str| DeadLetter {
            id: DeadLetterId(id.into()),
            letter: NewDeadLetter {
                topic: "payments".into(),
                source_position: None,
                key: key.into(),
                payload: Payload::from_json_text("{}"),
                headers: Headers::default(),
                error: "boom".into(),
                error_class: ErrorClass::Transient,
                attempts: 5,
                failed_at,
            },
            status: DeadLetterStatus::Pending,
        };
        let now = failed_at + Duration::from_secs(65);
        let text = table(
            &[letter("7", "order-1"), letter("12", &"k".repeat(50))],
            now,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ID  TOPIC     KEY "), "{text}");
        assert!(lines[1].starts_with("7   payments  order-1 "), "{text}");
        assert!(
            lines[1].contains("2026-01-01T00:00:00Z  1m05s  pending"),
            "{text}"
        );
        assert!(lines[2].contains(&format!("{}…", "k".repeat(31))), "{text}");
        assert_eq!(table(&[], now), "no dead letters\n");
    }

    #[test]
    fn arguments_parse_and_misuse_is_refused() {
        let args = parse(&[
            "--schema", "s1", "list", "--topic", "payments", "--all", "--json",
        ])
        .unwrap();
        assert_eq!(args.backend, Backend::Postgres);
        assert_eq!(args.schema, "s1");
        assert!(matches!(
            args.command,
            DlqCommand::List { topic: Some(ref t), all: true, json: true, limit: 100 } if t == "payments"
        ));
        let args = parse(&[
            "--backend",
            "kafka",
            "--topic",
            "orders.dlq",
            "retry",
            "--all",
        ])
        .unwrap();
        assert_eq!(args.dead_letter_topic.as_deref(), Some("orders.dlq"));
        assert!(matches!(args.command, DlqCommand::Retry { all: true, .. }));
        let args = parse(&["discard", "1", "2", "--reason", "duplicate"]).unwrap();
        assert!(matches!(args.command, DlqCommand::Discard { ref ids, .. } if ids == &["1", "2"]));
        for misuse in [
            &["retry"][..],
            &["retry", "1", "--all"],
            &["retry", "1", "--topic", "t"],
            &["retry", "--topic", "t"],
            &["discard"],
            &["show"],
            &["--backend", "mysql", "list"],
        ] {
            assert!(parse(misuse).is_err(), "{misuse:?} must be refused");
        }
    }
}
