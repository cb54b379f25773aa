//! End to end, no dual writes: events appended to PostgreSQL, the host relay
//! (`reprise_host::relay`, tailing the store's gap-free global log under a `PgLease`)
//! publishing them to a real Kafka-API broker, a consumer group receiving every one, in
//! order per key. Two relay instances compete for the lease, as two service replicas
//! would: one publishes.
//!
//! Needs `DATABASE_URL` (`eval "$(scripts/postgres.sh)"`) and `KAFKA_BOOTSTRAP`
//! (`eval "$(scripts/kafka.sh)"`). Like the other integration tests of both adapters it
//! **fails** — never skips — when either is unset or does not answer: a green run must mean
//! the pipeline was exercised. A separate test binary because it installs a process-global
//! `metrics` recorder to check the relay's and the lease's metrics.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use reprise_core::event_bus::{EventBus, header};
use reprise_core::{
    AppendBatch, EventId, EventStore, ExpectedVersion, Lease, Metadata, NewEvent, Payload, StreamId,
};
use reprise_host::Platform;
use reprise_host::relay::{self, RelayOptions, RelayedEvent, Route};
use reprise_postgres::lease::LEASE_HELD;
use reprise_postgres::{PgConfig, PgEventStore, PgLease};
use reprise_tokio::TokioRuntime;

mod support;

use support::bus;

const STREAMS: u64 = 8;
const EVENTS_PER_APPEND: u64 = 5;
const APPENDS: u64 = 40;
const TOTAL: u64 = EVENTS_PER_APPEND * APPENDS;
/// Event ids only need to be unique in the test's fresh schema.
const ID_BASE: u128 = 1 << 64;

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

async fn store() -> PgEventStore {
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "DATABASE_URL is unset: start PostgreSQL with `eval \"$(scripts/postgres.sh)\"`. \
             These tests never skip."
        ),
    };
    let config = PgConfig::new(url).with_schema(unique("t_kafka_relay"));
    PgEventStore::connect(config)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL: {e}. See scripts/postgres.sh"))
}

/// Event `n`: event id `ID_BASE + n`, payload `{"n":n}`.
fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: EventId(ID_BASE + u128::from(n)),
        event_type: "OrderPlaced".into(),
        schema_version: 1,
        payload: Payload::from_json_text(format!(r#"{{"n":{n}}}"#)),
        metadata: Metadata::default(),
    }
}

/// Sum of every series named `name` in one snapshot (counters and gauges alike).
fn total(snapshot: &[(String, f64)], name: &str) -> f64 {
    snapshot
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_events_reach_a_consumer_group_through_the_relay_in_order_per_key() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this binary");

    let store = store().await;
    let bus = bus("reprise-relay-test").await;
    let budget = bus.config().group_join_budget();
    let topic = unique("rk-relay");
    bus.create_topic(&topic, 4, 1).await.expect("create topic");
    // Join the group first: it takes about one session timeout against tansu.
    let mut subscription = bus
        .subscribe(&unique("relay-group"), &[&topic])
        .await
        .expect("subscribe");

    // Two replicas of one service: same relay name, one lease contender each.
    let options = Arc::new(RelayOptions::new(
        "orders",
        vec![Route::new("order", &topic)],
    ));
    let runtime = TokioRuntime::try_current().expect("in tokio").shared();
    let platform = Platform::new(runtime, Arc::new(store.clone()), Arc::new(bus.clone()));
    let relays: Vec<_> = (0..2)
        .map(|_| {
            let lease: Arc<dyn Lease> = Arc::new(PgLease::new(&store, &options.lease_name()));
            tokio::spawn(relay::run(platform.clone(), Arc::clone(&options), lease))
        })
        .collect();

    // Half before the consumer has its partitions, half while messages flow. An event of
    // another category has no route: the relay reads past it without publishing it.
    let append = |range: std::ops::Range<u64>| {
        let store = store.clone();
        async move {
            for a in range {
                let stream = format!("order-{}", a % STREAMS);
                let batch = AppendBatch::single(
                    stream.as_str().into(),
                    ExpectedVersion::Any,
                    (0..EVENTS_PER_APPEND)
                        .map(|i| event(a * EVENTS_PER_APPEND + i))
                        .collect(),
                );
                store
                    .append(batch)
                    .await
                    .unwrap_or_else(|e| panic!("append {a}: {e}"));
            }
        }
    };
    append(0..APPENDS / 2).await;
    store
        .append(AppendBatch::single(
            "audit-1".into(),
            ExpectedVersion::Any,
            vec![event(TOTAL)],
        ))
        .await
        .expect("append the unrouted event");
    let writer = tokio::spawn(append(APPENDS / 2..APPENDS));

    // Receive until every event arrived (at-least-once: duplicates are allowed and dropped
    // by event id, as a real handler would).
    let started = Instant::now();
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    while (seen.len() as u64) < TOTAL {
        let remaining = (budget * 2).saturating_sub(started.elapsed());
        let delivery = tokio::time::timeout(remaining, subscription.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {TOTAL} events within {:?}",
                    seen.len(),
                    budget * 2
                )
            })
            .expect("next");
        assert_eq!(delivery.topic.as_ref(), topic.as_str());
        let relayed = RelayedEvent::from_delivery(&delivery)
            .unwrap_or_else(|| panic!("{} lacks the relay's headers", delivery.coordinates()));
        let n = u64::try_from(relayed.event_id.0 - ID_BASE).expect("one of ours");
        assert!(
            n < TOTAL,
            "event {n} has no route and must not be published"
        );
        assert_eq!(
            delivery.key.as_ref(),
            format!("order-{}", (n / EVENTS_PER_APPEND) % STREAMS),
            "keyed by stream"
        );
        assert_eq!(relayed.stream.as_str(), &*delivery.key);
        assert_eq!(
            delivery.headers.get(header::EVENT_TYPE),
            Some("OrderPlaced")
        );
        assert_eq!(
            delivery.payload.as_str(),
            format!(r#"{{"n":{n}}}"#),
            "payload byte for byte"
        );
        if seen.insert(n) {
            per_key.entry(delivery.key.to_string()).or_default().push(n);
        }
        subscription.ack(&delivery);
    }
    subscription.commit().await.expect("commit");
    writer.await.expect("writer");

    assert_eq!(seen, (0..TOTAL).collect(), "every event arrived");
    assert_eq!(per_key.len() as u64, STREAMS);
    for (key, numbers) in &per_key {
        assert!(numbers.is_sorted(), "{key} out of order: {numbers:?}");
    }

    // Caught up, the leader saves its checkpoint at the last position it published.
    let last = store
        .read_all(1, 10_000)
        .await
        .expect("read the log")
        .last()
        .expect("events")
        .position;
    let checkpoint = StreamId::of("relay", "orders");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let saved = store.load_snapshot(&checkpoint).await.expect("checkpoint");
        if saved.as_ref().is_some_and(|s| s.version >= last) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "checkpoint {saved:?} never reached position {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // One snapshot (the debugging recorder resets what it reports): one leader among the
    // two replicas, every event published once, nothing failed.
    let values: Vec<(String, f64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let value = match value {
                DebugValue::Counter(c) => c as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(h) => h.len() as f64,
            };
            (key.key().name().to_owned(), value)
        })
        .collect();
    assert_eq!(total(&values, relay::RELAY_LEADER), 1.0, "{values:?}");
    assert_eq!(total(&values, LEASE_HELD), 1.0, "{values:?}");
    assert_eq!(total(&values, relay::RELAYED), TOTAL as f64, "{values:?}");
    assert_eq!(total(&values, relay::RELAY_ERRORS), 0.0, "{values:?}");

    // Stopping a relay is dropping its task: the leadership drops with it, and its
    // session (and with it the lock) ends.
    for relay in relays {
        relay.abort();
        assert!(relay.await.expect_err("aborted").is_cancelled());
    }
    let drop = format!("DROP SCHEMA {} CASCADE", store.config().schema);
    sqlx::query(&drop)
        .execute(store.pool())
        .await
        .expect("drop the test schema");
    store.close().await;
}
