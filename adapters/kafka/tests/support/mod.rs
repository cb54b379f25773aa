//! Helpers shared by the broker integration test binaries (`mod support;` in each).
//!
//! They need `KAFKA_BOOTSTRAP` (`eval "$(scripts/kafka.sh)"` starts tansu on loopback and
//! prints it) and **fail** — never skip — when it is unset or the broker does not answer.
//! Group timing defaults to `session.timeout.ms=6000`, `heartbeat.interval.ms=500` unless
//! `KAFKA_SESSION_TIMEOUT_MS` / `KAFKA_HEARTBEAT_INTERVAL_MS` is set.

// Each test binary compiles this module and uses only some of the helpers.
#![allow(dead_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use reprise_core::event_bus::{Headers, OutgoingMessage, header};
use reprise_core::{Delivery, Payload};
use reprise_kafka::{KafkaConfig, KafkaEventBus};

/// The broker's configuration from the environment, with the test group timing and
/// `client_id`. Panics with setup guidance when `KAFKA_BOOTSTRAP` is unset.
pub fn config(client_id: &str) -> KafkaConfig {
    if std::env::var("KAFKA_BOOTSTRAP").is_err() {
        panic!(
            "KAFKA_BOOTSTRAP is unset: start a broker with `eval \"$(scripts/kafka.sh)\"`. These tests never skip."
        );
    }
    let mut config =
        KafkaConfig::from_env().unwrap_or_else(|e| panic!("bad Kafka environment: {e}"));
    if std::env::var("KAFKA_SESSION_TIMEOUT_MS").is_err()
        && std::env::var("KAFKA_HEARTBEAT_INTERVAL_MS").is_err()
    {
        config = config.group_timing(Duration::from_secs(6), Duration::from_millis(500));
    }
    // These tests exercise the bus with short numeric event ids, which the default
    // MessageCheck::Envelope would dead-letter; the tests of that check set it back.
    config
        .client_id(client_id)
        .message_check(reprise_kafka::MessageCheck::Text)
}

/// A bus on [`config`], checked to answer: panics with setup guidance when it does not.
pub async fn bus(client_id: &str) -> KafkaEventBus {
    let config = config(client_id);
    let bootstrap = config.bootstrap_servers.clone();
    let bus = KafkaEventBus::new(config).unwrap_or_else(|e| panic!("cannot create the bus: {e}"));
    if let Err(e) = bus.check_connection().await {
        panic!(
            "the broker at {bootstrap} does not answer ({e}): start it with `eval \"$(scripts/kafka.sh)\"`"
        );
    }
    bus
}

/// A prefix no other run or test shares.
pub fn namespace(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("rk-{test}-{}-{nanos}-", std::process::id())
}

/// A `Tested` event (schema version 1) with `event_id` in its headers.
pub fn message(topic: &str, key: &str, event_id: u64, payload: &str) -> OutgoingMessage {
    OutgoingMessage {
        topic: topic.into(),
        key: key.into(),
        payload: Payload::from_json_text(payload),
        headers: Headers::default()
            .with(header::EVENT_ID, event_id.to_string())
            .with(header::EVENT_TYPE, "Tested")
            .with(header::SCHEMA_VERSION, "1"),
    }
}

/// The event id header of a delivery, as a number.
pub fn event_id(d: &Delivery) -> u64 {
    d.headers
        .get(header::EVENT_ID)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{} has no event id", d.coordinates()))
}

/// `f`'s output, or a panic naming `what` when it takes longer than `budget`.
pub async fn within<T>(budget: Duration, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(budget, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {budget:?}"))
}

/// Publishes `payload` (not necessarily UTF-8) with a plain rdkafka producer, as a foreign
/// producer would: no headers but the event id.
pub async fn publish_raw(
    bus: &KafkaEventBus,
    topic: &str,
    key: &str,
    event_id: &str,
    payload: &[u8],
) {
    let raw: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bus.config().bootstrap_servers)
        .create()
        .expect("raw producer");
    raw.send(
        FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(OwnedHeaders::new().insert(Header {
                key: header::EVENT_ID,
                value: Some(event_id),
            })),
        Duration::from_secs(5),
    )
    .await
    .expect("raw publish");
}

/// Produces one record with a plain rdkafka producer, as any other Kafka client would:
/// exactly the given key, payload (`None`: a tombstone) and headers, nothing added.
pub async fn produce(
    bus: &KafkaEventBus,
    topic: &str,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: &[(&str, &[u8])],
) {
    let raw: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bus.config().bootstrap_servers)
        .create()
        .expect("raw producer");
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    if !headers.is_empty() {
        let mut owned = OwnedHeaders::new();
        for (name, value) in headers {
            owned = owned.insert(Header {
                key: name,
                value: Some(*value),
            });
        }
        record = record.headers(owned);
    }
    raw.send(record, Duration::from_secs(5))
        .await
        .map_err(|(e, _)| e)
        .expect("raw produce");
}
