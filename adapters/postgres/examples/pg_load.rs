//! Load test for the PostgreSQL event store: append latency and throughput (single events,
//! batches, concurrent writers), stream loads and catch-up reads, with percentiles from
//! `hdrhistogram`.
//!
//! ```text
//! eval "$(sudo scripts/postgres.sh)"
//! cargo run -p reprise-postgres --release --example pg-load -- --seconds 5
//! # group commit off vs on, 32 single-event writers:
//! cargo run -p reprise-postgres --release --example pg-load -- --seconds 5 \
//!     --scenarios single-concurrent --writers 32 --group-size 1
//! cargo run -p reprise-postgres --release --example pg-load -- --seconds 5 \
//!     --scenarios single-concurrent --writers 32
//! ```
//!
//! Every run works in a fresh schema (`bench_<pid>`) that it drops at the end, so it never
//! touches application data and never reads another run's events. Keep runs short on shared
//! machines: each scenario runs for `--seconds`.

// A load generator measures wall-clock time and runs tasks on tokio by design.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use reprise_core::{
    AppendBatch, EventId, EventStore, ExpectedVersion, Metadata, NewEvent, Payload, StreamId,
};
use reprise_postgres::{PgConfig, PgEventStore, SubscriptionOptions};

#[derive(Parser, Debug)]
#[command(about = "Load test for the reprise PostgreSQL event store")]
struct Args {
    /// PostgreSQL URL (default: $DATABASE_URL).
    #[arg(long)]
    database_url: Option<String>,
    /// Duration of each append scenario, in seconds.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent writers for the concurrent scenarios.
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// Events per transaction in the batched scenarios.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Events in the stream the load scenario reads.
    #[arg(long, default_value_t = 1_000)]
    stream_length: usize,
    /// Events per page in the catch-up scenario.
    #[arg(long, default_value_t = 5_000)]
    page: usize,
    /// Scenarios to run, comma-separated: single, single-concurrent, batch,
    /// batch-concurrent, load, catch-up (catch-up reads what the others wrote).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "single,single-concurrent,batch,batch-concurrent,load,catch-up"
    )]
    scenarios: Vec<String>,
    /// Append without `NOTIFY` (subscriptions then notice new events at their poll interval).
    #[arg(long)]
    no_notify: bool,
    /// Keep the benchmark schema instead of dropping it.
    #[arg(long)]
    keep: bool,
    /// Group commit: most appends per transaction (1 turns group commit off).
    #[arg(long, default_value_t = reprise_postgres::GroupCommit::default().max_group_size)]
    group_size: usize,
    /// Group commit: how long to gather a group, in microseconds (0: only what queued).
    #[arg(long, default_value_t = 0)]
    group_wait_us: u64,
    /// Group commit: groups committing at once.
    #[arg(long, default_value_t = reprise_postgres::GroupCommit::default().max_groups_in_flight)]
    groups_in_flight: usize,
}

/// A ~200-byte payload: a typical small domain event.
fn payload(n: u64) -> Payload {
    Payload::from_json_text(format!(
        r#"{{"order_id":"order-{n}","customer":"customer-{}","amount_cents":{},"currency":"EUR","lines":[{{"sku":"sku-{}","quantity":2}}],"note":"benchmark event"}}"#,
        n % 997,
        n * 7 % 100_000,
        n % 31
    ))
}

struct Ids(AtomicU64);

impl Ids {
    fn next(&self) -> NewEvent {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        NewEvent {
            event_id: EventId((u128::from(std::process::id()) << 96) | u128::from(n)),
            event_type: "OrderPlaced".into(),
            schema_version: 1,
            payload: payload(n),
            metadata: Metadata {
                correlation_id: Some(u128::from(n)),
                causation_id: None,
                traceparent: None,
            },
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn report(name: &str, operations: &Histogram<u64>, events: u64, elapsed: Duration) {
    let ms = |q: f64| operations.value_at_quantile(q) as f64 / 1_000.0;
    println!(
        "{name:<34} {events:>9} events {:>10.0} events/s {:>8.0} ops/s | ms p50 {:>6.2} p90 {:>6.2} p99 {:>6.2} p99.9 {:>6.2} max {:>7.2}",
        events as f64 / elapsed.as_secs_f64(),
        operations.len() as f64 / elapsed.as_secs_f64(),
        ms(0.50),
        ms(0.90),
        ms(0.99),
        ms(0.999),
        operations.max() as f64 / 1_000.0,
    );
}

/// `writers` tasks appending `batch` events per transaction to their own streams for
/// `duration`, each with the exact expected version (the normal aggregate path).
async fn append_scenario(
    store: &PgEventStore,
    ids: &Arc<Ids>,
    name: &str,
    writers: usize,
    batch: usize,
    duration: Duration,
) {
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            let ids = Arc::clone(ids);
            let stream = StreamId::new(format!("{name}-{w}"));
            tokio::spawn(async move {
                let mut latencies = histogram();
                let mut version = 0;
                let mut events = 0u64;
                while started.elapsed() < duration {
                    let batch_events = (0..batch).map(|_| ids.next()).collect();
                    let append = AppendBatch::single(
                        stream.clone(),
                        ExpectedVersion::after(version),
                        batch_events,
                    );
                    let t = Instant::now();
                    let receipt = store.append(append).await.expect("append");
                    latencies
                        .record(micros(t.elapsed()))
                        .expect("in histogram range");
                    version = receipt.version_of(&stream).expect("our stream");
                    events += batch as u64;
                }
                (latencies, events)
            })
        })
        .collect();
    let mut all = histogram();
    let mut events = 0;
    for task in tasks {
        let (latencies, n) = task.await.expect("writer task");
        all.add(&latencies).expect("same bounds");
        events += n;
    }
    report(
        &format!("append {name} ({writers}w x {batch}/tx)"),
        &all,
        events,
        started.elapsed(),
    );
}

async fn load_scenario(store: &PgEventStore, ids: &Ids, length: usize, duration: Duration) {
    let stream = StreamId::new("load-1");
    for chunk in 0..length.div_ceil(1_000) {
        let n = (length - chunk * 1_000).min(1_000);
        let events = (0..n).map(|_| ids.next()).collect();
        store
            .append(AppendBatch::single(
                stream.clone(),
                ExpectedVersion::Any,
                events,
            ))
            .await
            .expect("seed stream");
    }
    let mut latencies = histogram();
    let mut events = 0u64;
    let started = Instant::now();
    while started.elapsed() < duration {
        let t = Instant::now();
        let read = store
            .read_stream(&stream, 1, usize::MAX)
            .await
            .expect("read stream");
        latencies
            .record(micros(t.elapsed()))
            .expect("in histogram range");
        assert_eq!(read.len(), length);
        events += read.len() as u64;
    }
    report(
        &format!("load stream ({length} events)"),
        &latencies,
        events,
        started.elapsed(),
    );
}

async fn catch_up_scenario(store: &PgEventStore, page: usize) {
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(store.pool())
        .await
        .expect("count");
    // Through the subscription API a projection uses: pages below the horizon, in order.
    let options = SubscriptionOptions {
        batch_size: page,
        poll_interval: Duration::from_millis(100),
        listen: false,
    };
    let mut subscription = store
        .subscribe("bench-catch-up", options)
        .await
        .expect("subscribe");
    let mut latencies = histogram();
    let mut events = 0u64;
    let started = Instant::now();
    loop {
        let t = Instant::now();
        let batch = subscription.poll().await.expect("read page");
        if batch.is_empty() {
            break;
        }
        latencies
            .record(micros(t.elapsed()))
            .expect("in histogram range");
        events += batch.len() as u64;
    }
    assert_eq!(
        events,
        u64::try_from(total).expect("count is positive"),
        "catch-up read every event"
    );
    report(
        &format!("catch-up read (pages of {page})"),
        &latencies,
        events,
        started.elapsed(),
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = Args::parse();
    let database_url = args.database_url.clone().or_else(|| std::env::var("DATABASE_URL").ok()).unwrap_or_else(|| {
        panic!("no database: pass --database-url or set DATABASE_URL (eval \"$(sudo scripts/postgres.sh)\")")
    });
    let schema = format!("bench_{}", std::process::id());
    let mut config = PgConfig::new(database_url)
        .with_schema(schema.clone())
        .with_notify(!args.no_notify)
        .with_group_commit(args.group_size, Duration::from_micros(args.group_wait_us))
        .with_max_connections(
            u32::try_from(args.writers)
                .unwrap_or(u32::MAX)
                .saturating_add(2),
        );
    config.group_commit.max_groups_in_flight = args.groups_in_flight;
    let store = PgEventStore::connect(config)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let ids = Arc::new(Ids(AtomicU64::new(1)));
    let duration = Duration::from_secs(args.seconds);
    println!(
        "pg-load: schema {schema}, {}s per append scenario, notify {}, group commit: at most {} \
         per group, wait {} us, {} in flight",
        args.seconds, !args.no_notify, args.group_size, args.group_wait_us, args.groups_in_flight
    );

    let wanted = |name: &str| args.scenarios.iter().any(|s| s == name);
    if wanted("single") {
        append_scenario(&store, &ids, "single", 1, 1, duration).await;
    }
    if wanted("single-concurrent") {
        append_scenario(&store, &ids, "single-concurrent", args.writers, 1, duration).await;
    }
    if wanted("batch") {
        append_scenario(&store, &ids, "batch", 1, args.batch, duration).await;
    }
    if wanted("batch-concurrent") {
        append_scenario(
            &store,
            &ids,
            "batch-concurrent",
            args.writers,
            args.batch,
            duration,
        )
        .await;
    }
    if wanted("load") {
        load_scenario(&store, &ids, args.stream_length, duration).await;
    }
    if wanted("catch-up") {
        catch_up_scenario(&store, args.page).await;
    }

    let groups = store.group_commit_stats();
    if groups.groups > 0 {
        println!(
            "groups: {} committed, {} appends, mean {:.1} per group, largest {}, {} split",
            groups.groups,
            groups.grouped_appends,
            groups.grouped_appends as f64 / groups.groups as f64,
            groups.largest_group,
            groups.splits
        );
    }
    let stats = store.pool_stats();
    println!(
        "pool: size {} idle {} max {} | acquires {} timeouts {} | acquire wait max {:?}, mean {:?}",
        stats.size,
        stats.idle,
        stats.max_connections,
        stats.acquires,
        stats.acquire_timeouts,
        stats.acquire_wait_max,
        stats.acquire_wait_total / u32::try_from(stats.acquires.max(1)).unwrap_or(u32::MAX),
    );
    if !args.keep {
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(store.pool())
            .await
            .expect("drop schema");
    }
    store.close().await;
}
