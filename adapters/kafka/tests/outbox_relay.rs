//! End to end, no dual writes: events appended with outbox messages in PostgreSQL, the
//! outbox relay (`reprise_postgres::OutboxRelay`) publishing them to a real Kafka-API
//! broker, a consumer group receiving every one, in order per key.
//!
//! Needs `DATABASE_URL` (`eval "$(scripts/postgres.sh)"`) and `KAFKA_BOOTSTRAP`
//! (`eval "$(scripts/kafka.sh)"`). Like the other integration tests of both adapters it
//! **fails** — never skips — when either is unset or does not answer: a green run must mean
//! the pipeline was exercised. A separate test binary because it installs a process-global
//! `metrics` recorder to check the relay's metrics.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use reprise_core::event_bus::{EventBus, Headers, OutgoingMessage, header};
use reprise_core::{AppendBatch, EventId, ExpectedVersion, Metadata, NewEvent, Payload};
use reprise_postgres::{OutboxRelay, PgConfig, PgEventStore, RelayOptions, relay};

mod support;

use support::{bus, event_id};

const STREAMS: u64 = 8;
const EVENTS_PER_APPEND: u64 = 5;
const APPENDS: u64 = 40;
const TOTAL: u64 = EVENTS_PER_APPEND * APPENDS;

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

/// Event `n`: stream `order-{n % STREAMS}`, event id `base + n`, payload `{"n":n}`.
fn event(base: u128, n: u64) -> NewEvent {
    NewEvent {
        event_id: EventId(base + u128::from(n)),
        event_type: "OrderPlaced".into(),
        schema_version: 1,
        payload: Payload::from_json_text(format!(r#"{{"n":{n}}}"#)),
        metadata: Metadata::default(),
    }
}

fn message(topic: &str, stream: &str, n: u64) -> OutgoingMessage {
    OutgoingMessage {
        topic: topic.into(),
        key: stream.into(),
        payload: Payload::from_json_text(format!(r#"{{"n":{n}}}"#)),
        headers: Headers::default()
            .with(header::EVENT_ID, n.to_string())
            .with(header::EVENT_TYPE, "OrderPlaced")
            .with(header::STREAM, stream),
    }
}

fn counter(snapshot: &[(String, f64)], name: &str) -> f64 {
    snapshot
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_reach_a_consumer_group_through_the_broker_in_order_per_key() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this binary");

    let store = store().await;
    let bus = bus("reprise-outbox-relay-test").await;
    let budget = bus.config().group_join_budget();
    let topic = unique("rk-outbox-relay");
    bus.create_topic(&topic, 4, 1).await.expect("create topic");
    // Join the group first: it takes about one session timeout against tansu.
    let mut subscription = bus
        .subscribe(&unique("relay-group"), &[&topic])
        .await
        .expect("subscribe");

    let relay = OutboxRelay::new(
        store.clone(),
        Arc::new(bus.clone()),
        RelayOptions::default().with_batch_size(32),
    )
    .expect("relay options")
    .spawn();

    // Half before the consumer has its partitions, half while messages flow. Each append
    // commits its events and their outbox messages together.
    // Event ids only need to be unique in the test's fresh schema.
    let base = 1 << 64;
    let append = |range: std::ops::Range<u64>| {
        let store = store.clone();
        let topic = topic.clone();
        async move {
            for a in range {
                let stream = format!("order-{}", a % STREAMS);
                let numbers: Vec<u64> = (0..EVENTS_PER_APPEND)
                    .map(|i| a * EVENTS_PER_APPEND + i)
                    .collect();
                let batch = AppendBatch::single(
                    stream.as_str().into(),
                    ExpectedVersion::Any,
                    numbers.iter().map(|&n| event(base, n)).collect(),
                );
                let messages = numbers
                    .iter()
                    .map(|&n| message(&topic, &stream, n))
                    .collect();
                store
                    .append_with_outbox(batch, messages)
                    .await
                    .unwrap_or_else(|e| panic!("append {a}: {e}"));
            }
        }
    };
    append(0..APPENDS / 2).await;
    let writer = tokio::spawn(append(APPENDS / 2..APPENDS));

    // Receive until every event id arrived (at-least-once: duplicates are allowed and
    // dropped by event id, as a real handler would).
    let started = Instant::now();
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    while (seen.len() as u64) < TOTAL {
        let remaining = (budget * 2).saturating_sub(started.elapsed());
        let delivery = tokio::time::timeout(remaining, subscription.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {TOTAL} messages within {:?}",
                    seen.len(),
                    budget * 2
                )
            })
            .expect("next");
        let n = event_id(&delivery);
        assert_eq!(delivery.topic.as_ref(), topic.as_str());
        assert_eq!(
            delivery.key.as_ref(),
            format!("order-{}", (n / EVENTS_PER_APPEND) % STREAMS),
            "keyed by stream"
        );
        assert_eq!(delivery.headers.get(header::STREAM), Some(&*delivery.key));
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

    assert_eq!(seen, (0..TOTAL).collect(), "every outbox row arrived");
    assert_eq!(per_key.len() as u64, STREAMS);
    for (key, numbers) in &per_key {
        assert!(numbers.is_sorted(), "{key} out of order: {numbers:?}");
    }

    // Every row stamped; the relay counted them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.outbox_pending(1).await.expect("pending").is_empty() {
        assert!(Instant::now() < deadline, "rows left unstamped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = relay.shutdown().await;
    assert_eq!(stats.relayed, TOTAL, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");

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
    assert_eq!(counter(&values, relay::OUTBOX_RELAYED), TOTAL as f64);
    assert_eq!(counter(&values, relay::OUTBOX_RELAY_ERRORS), 0.0);
    assert_eq!(counter(&values, relay::OUTBOX_PENDING), 0.0);
    assert_eq!(
        counter(&values, relay::OUTBOX_RELAY_LEADER),
        0.0,
        "released"
    );

    let drop = format!("DROP SCHEMA {} CASCADE", store.config().schema);
    sqlx::query(&drop)
        .execute(store.pool())
        .await
        .expect("drop the test schema");
    store.close().await;
}
