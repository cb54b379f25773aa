//! Load test of the whole no-dual-write pipeline: append (PostgreSQL) → host relay
//! (`reprise_host::relay`, tailing the gap-free global log under a `PgLease`) → Kafka-API
//! broker → consumer group handler. Measures, per event, the latency from *append
//! committed* (the moment `append` returned to the writer) to *handled* (the moment the
//! subscriber's `next()` handed it over and it was acknowledged), with percentiles from
//! `hdrhistogram`, plus append latency and throughput.
//!
//! ```text
//! eval "$(scripts/postgres.sh)"; eval "$(scripts/kafka.sh)"
//! cargo run -p reprise-kafka --release --example pipeline-latency -- --events 20000 --rate 2000 --batch 500
//! # librdkafka tuning goes through KAFKA_PROPERTIES, e.g. for latency:
//! KAFKA_PROPERTIES='linger.ms=0;fetch.wait.max.ms=10' cargo run -p reprise-kafka --release --example pipeline-latency
//! ```
//!
//! Writers are paced open-loop: event `i` is due at `start + i / rate` (`--rate 0`: as fast
//! as the writers go). Latency is measured from the commit, so it is the pipeline's own
//! delay (relay idle pause, read, publish, broker, fetch), not the writers' queueing. The
//! relay polls (`--max-idle-pause-ms` bounds its pause when idle; it does not listen for
//! append notifications). Every run uses a fresh PostgreSQL schema, topic and group, and
//! drops the schema at the end.

// A load generator measures wall-clock time and runs on tokio by design.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use hdrhistogram::Histogram;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use reprise_core::event_bus::{EventBus, Subscription, header};
use reprise_core::{
    AppendBatch, EventId, EventStore, ExpectedVersion, Lease, Metadata, NewEvent, Payload,
};
use reprise_host::Platform;
use reprise_host::ids::parse_event_id;
use reprise_host::relay::{self, RelayOptions, Route};
use reprise_kafka::{KafkaConfig, KafkaEventBus};
use reprise_postgres::{PgConfig, PgEventStore, PgLease};
use reprise_tokio::TokioRuntime;
use tokio::sync::oneshot;

#[derive(Parser, Debug)]
#[command(about = "Append-committed → subscriber-handled latency through the relay")]
struct Args {
    /// Events appended (one event per append).
    #[arg(long, default_value_t = 20_000)]
    events: u64,
    /// Target append rate, events per second (0: unthrottled).
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// Relay batch size: events per read and per publish.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 4)]
    writers: u64,
    /// Distinct streams (message keys).
    #[arg(long, default_value_t = 64)]
    keys: u64,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Payload size in bytes (JSON text).
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Longest relay pause when it finds nothing new, in milliseconds (it starts at 5 ms
    /// and doubles while idle).
    #[arg(long, default_value_t = 100)]
    max_idle_pause_ms: u64,
    /// Consumer group session timeout, in milliseconds.
    #[arg(long, default_value_t = 6_000)]
    session_timeout_ms: u64,
    /// Consumer group heartbeat interval, in milliseconds.
    #[arg(long, default_value_t = 500)]
    heartbeat_interval_ms: u64,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The warm-up event's id; load event `seq` has id `seq + 1`.
const WARM_UP: u128 = u128::MAX;
/// Streams of this category are routed to the benchmark topic.
const CATEGORY: &str = "bench";

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn nanos_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn histogram() -> Result<Histogram<u64>, Error> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

fn report(name: &str, h: &Histogram<u64>) {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{name:<34} n={:<6} p50={:>8.2} ms  p90={:>8.2} ms  p99={:>8.2} ms  p99.9={:>8.2} ms  max={:>8.2} ms",
        h.len(),
        ms(0.50),
        ms(0.90),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0,
    );
}

async fn append(
    store: &PgEventStore,
    stream: &str,
    event_id: u128,
    payload: &Payload,
) -> Result<(), Error> {
    let batch = AppendBatch::single(
        stream.into(),
        ExpectedVersion::Any,
        vec![NewEvent {
            event_id: EventId(event_id),
            event_type: "Benchmarked".into(),
            schema_version: 1,
            payload: payload.clone(),
            metadata: Metadata::default(),
        }],
    );
    store.append(batch).await?;
    Ok(())
}

/// What the consumer saw: per event, when it was handled (ns since the origin, 0: never).
struct Consumed {
    handled_at: Vec<u64>,
    duplicates: u64,
}

/// Handles messages until every event arrived or nothing arrives within `idle_limit`.
async fn consume(
    mut subscription: Box<dyn Subscription>,
    events: u64,
    origin: Instant,
    idle_limit: Duration,
    warmed_up: oneshot::Sender<()>,
) -> Result<Consumed, Error> {
    let mut warmed_up = Some(warmed_up);
    let mut handled_at = vec![0_u64; usize::try_from(events)?];
    let (mut distinct, mut duplicates, mut since_commit) = (0_u64, 0_u64, 0_u32);
    while distinct < events {
        let Ok(delivery) = tokio::time::timeout(idle_limit, subscription.next()).await else {
            eprintln!("consumer: nothing for {idle_limit:?}; {distinct} of {events} handled");
            break;
        };
        let delivery = delivery?;
        let now = nanos_since(origin);
        let text = delivery.headers.get(header::EVENT_ID).unwrap_or_default();
        let id = parse_event_id(text).ok_or_else(|| format!("bad event id {text:?}"))?;
        if id.0 == WARM_UP {
            if let Some(signal) = warmed_up.take() {
                let _ = signal.send(());
            }
        } else {
            let seq = usize::try_from(id.0 - 1)?;
            let slot = handled_at
                .get_mut(seq)
                .ok_or_else(|| format!("unexpected event id {seq}"))?;
            if *slot == 0 {
                *slot = now;
                distinct += 1;
            } else {
                duplicates += 1;
            }
        }
        subscription.ack(&delivery);
        since_commit += 1;
        if since_commit >= 1_000 {
            subscription.commit().await?;
            since_commit = 0;
        }
    }
    subscription.commit().await?;
    Ok(Consumed {
        handled_at,
        duplicates,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    // The relay reports through `metrics`; read its counters at the end.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install()?;
    if args.events == 0 || args.batch == 0 || args.writers == 0 || args.keys == 0 {
        return Err("--events, --batch, --writers and --keys must be positive".into());
    }
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let run = format!("{}_{nanos}", std::process::id());

    let url = std::env::var("DATABASE_URL")
        .map_err(|_| "DATABASE_URL is unset: eval \"$(scripts/postgres.sh)\"")?;
    // Writers, plus the relay's reads and checkpoints (its lease has its own connection).
    let max_connections = u32::try_from(args.writers)? + 2;
    let store = PgEventStore::connect(
        PgConfig::new(url)
            .with_schema(format!("bench_pipeline_{run}"))
            .with_max_connections(max_connections),
    )
    .await?;

    let config = KafkaConfig::from_env()?
        .client_id("reprise-pipeline-latency")
        .group_timing(
            Duration::from_millis(args.session_timeout_ms),
            Duration::from_millis(args.heartbeat_interval_ms),
        );
    let budget = config.group_join_budget();
    println!(
        "broker {} | extra librdkafka properties {:?} | {} events, rate {}/s, relay batch {}, \
         {} writers, {} keys, {} partitions",
        config.bootstrap_servers,
        config.properties,
        args.events,
        args.rate,
        args.batch,
        args.writers,
        args.keys,
        args.partitions
    );
    let bus = KafkaEventBus::new(config)?;
    bus.check_connection().await?;
    let topic = format!("bench-pipeline-{run}");
    bus.create_topic(&topic, args.partitions, 1).await?;
    let subscription = bus
        .subscribe(&format!("bench-pipeline-{run}-group"), &[&topic])
        .await?;

    let mut options = RelayOptions::new("bench", vec![Route::new(CATEGORY, &topic)]);
    options.batch_size = args.batch;
    options.max_idle_pause =
        Duration::from_millis(args.max_idle_pause_ms).max(options.min_idle_pause);
    let options = Arc::new(options);
    let platform = Platform::new(
        TokioRuntime::try_current()?.shared(),
        Arc::new(store.clone()),
        Arc::new(bus.clone()),
    );
    let lease: Arc<dyn Lease> = Arc::new(PgLease::new(&store, &options.lease_name()));
    let relay = tokio::spawn(relay::run(platform, options, lease));

    let origin = Instant::now();
    let (warmed_up, warm) = oneshot::channel();
    let consumer = tokio::spawn(consume(
        subscription,
        args.events,
        origin,
        budget,
        warmed_up,
    ));
    let payload = Payload::from_json_text(format!(
        r#"{{"pad":"{}"}}"#,
        "x".repeat(args.payload_bytes.saturating_sub(10))
    ));

    // Warm-up through the whole pipeline: the group has its partitions, the relay leads.
    let joining = Instant::now();
    append(&store, &format!("{CATEGORY}-warm-up"), WARM_UP, &payload).await?;
    tokio::time::timeout(budget, warm)
        .await
        .map_err(|_| "the warm-up event did not come through within the group join budget")??;
    println!(
        "group join + warm-up event     {:.2} s",
        joining.elapsed().as_secs_f64()
    );

    // Load: open-loop pacing, `writers` concurrent appenders.
    let committed_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.events).map(|_| AtomicU64::new(0)).collect());
    let next = Arc::new(AtomicU64::new(0));
    let load_start = Instant::now();
    let mut writers = Vec::new();
    for _ in 0..args.writers {
        let (store, payload) = (store.clone(), payload.clone());
        let (committed_at, next) = (Arc::clone(&committed_at), Arc::clone(&next));
        let (events, rate, keys) = (args.events, args.rate, args.keys);
        writers.push(tokio::spawn(async move {
            let mut append_latency = histogram()?;
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= events {
                    break;
                }
                if rate > 0 {
                    let due = load_start + Duration::from_secs_f64(seq as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let started = Instant::now();
                let stream = format!("{CATEGORY}-{}", seq % keys);
                append(&store, &stream, u128::from(seq) + 1, &payload).await?;
                committed_at[usize::try_from(seq)?].store(nanos_since(origin), Ordering::Relaxed);
                append_latency.record(micros(started.elapsed()))?;
            }
            Ok::<_, Error>(append_latency)
        }));
    }
    let mut append_latency = histogram()?;
    for writer in writers {
        append_latency.add(writer.await??)?;
    }
    let appended_in = load_start.elapsed();
    let consumed = consumer.await??;
    // Stopping the relay is dropping its task; its lease session ends with it.
    relay.abort();
    let _ = relay.await;
    let counters: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n) => Some((key.key().name().to_owned(), n)),
            _ => None,
        })
        .collect();
    let counter = |name: &str| -> u64 {
        counters
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v)
            .sum()
    };

    // Per event: handled − committed.
    let mut end_to_end = histogram()?;
    let (mut missing, mut last_handled) = (0_u64, 0_u64);
    for (committed, &handled) in committed_at.iter().zip(&consumed.handled_at) {
        let committed = committed.load(Ordering::Relaxed);
        if handled == 0 || committed == 0 {
            missing += 1;
            continue;
        }
        last_handled = last_handled.max(handled);
        // The writer stamps the commit after `append` returns; a message can
        // (rarely) be handled before that stamp: count it as 0.
        end_to_end.record(handled.saturating_sub(committed) / 1_000)?;
    }
    let load_origin = u64::try_from((load_start - origin).as_nanos())?;
    let pipeline_secs = last_handled.saturating_sub(load_origin) as f64 / 1e9;
    println!(
        "appended                       {} events in {:.2} s = {:.0} events/s",
        args.events,
        appended_in.as_secs_f64(),
        args.events as f64 / appended_in.as_secs_f64()
    );
    println!(
        "handled                        {} events in {:.2} s = {:.0} events/s (load start → last handled)",
        end_to_end.len(),
        pipeline_secs,
        end_to_end.len() as f64 / pipeline_secs
    );
    println!(
        "relay                          {} messages (warm-up included), {} errors; {} duplicates seen by the consumer",
        counter(relay::RELAYED),
        counter(relay::RELAY_ERRORS),
        consumed.duplicates
    );
    report("append", &append_latency);
    report("append committed → handled", &end_to_end);

    sqlx::query(&format!("DROP SCHEMA {} CASCADE", store.config().schema))
        .execute(store.pool())
        .await?;
    store.close().await;
    if missing > 0 {
        return Err(format!("{missing} events were not handled").into());
    }
    Ok(())
}
