//! Integration tests against a real Kafka-API broker.
//!
//! They need `KAFKA_BOOTSTRAP` (`eval "$(scripts/kafka.sh)"` starts tansu on loopback and
//! prints it) and **fail** — never skip — when it is unset or the broker does not answer:
//! a green run must mean the adapter was exercised. Group timing defaults to
//! `session.timeout.ms=6000`, `heartbeat.interval.ms=500` (override with
//! `KAFKA_SESSION_TIMEOUT_MS` / `KAFKA_HEARTBEAT_INTERVAL_MS`); every wait is sized from
//! [`KafkaConfig::group_join_budget`]. Topic names are unique per run, so reruns against a
//! long-lived broker do not collide.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use reprise_core::event_bus::{EventBus, OutgoingMessage, Subscription, header, partition_for_key};
use reprise_core::{BusError, Delivery, RetryPolicy};
use reprise_kafka::dead_letter::header as dlq;
use reprise_kafka::{
    ConfigError, DeadLetterHandler, DeadLetterPolicy, DeadLetterQueue, HandlerError, KafkaConfig,
    KafkaEventBus, Outcome,
};

mod support;

use support::{event_id, namespace, publish_raw, within};

const CLIENT_ID: &str = "reprise-kafka-tests";

/// The W3C trace context every test message carries: dead-lettering must keep it.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn config() -> KafkaConfig {
    support::config(CLIENT_ID)
}

async fn bus() -> KafkaEventBus {
    support::bus(CLIENT_ID).await
}

/// [`support::message`] with a [`TRACEPARENT`] header.
fn message(topic: &str, key: &str, event_id: u64, payload: &str) -> OutgoingMessage {
    let mut message = support::message(topic, key, event_id, payload);
    message.headers.insert(header::TRACEPARENT, TRACEPARENT);
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes() {
    let bus = bus().await;
    let ns = namespace("conformance");
    for topic in ["orders", "redelivery"] {
        bus.create_topic(&format!("{ns}{topic}"), 4, 1)
            .await
            .expect("create topic");
    }
    let budget = bus.config().group_join_budget() * 4;
    let shared: Arc<dyn EventBus> = Arc::new(bus);
    let result = within(
        budget,
        "event_bus_suite",
        reprise_core::conformance::event_bus_suite(shared, &ns),
    )
    .await;
    result.unwrap_or_else(|e| panic!("conformance: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_land_where_core_murmur2_predicts() {
    let bus = bus().await;
    let topic = format!("{}keys", namespace("partitioning"));
    let partitions = 6;
    bus.create_topic(&topic, partitions, 1)
        .await
        .expect("create topic");
    assert_eq!(
        bus.partition_count(&topic).await.expect("metadata"),
        partitions
    );
    let keys: Vec<String> = (0..60)
        .map(|i| format!("order-{i}"))
        .chain(["".to_owned(), "ü-ñ".to_owned()])
        .collect();
    let messages = keys
        .iter()
        .enumerate()
        .map(|(i, k)| message(&topic, k, i as u64, "{}"))
        .collect();
    let receipts = bus.publish_with_receipts(messages).await.expect("publish");
    assert_eq!(receipts.len(), keys.len());
    let mut used = BTreeSet::new();
    for (key, receipt) in keys.iter().zip(&receipts) {
        let predicted = partition_for_key(key.as_bytes(), partitions);
        assert_eq!(
            receipt.partition, predicted,
            "key {key:?}: broker put it on {}, core predicts {predicted}",
            receipt.partition
        );
        used.insert(receipt.partition);
    }
    assert!(
        used.len() > 1,
        "60 keys over 6 partitions must not all hash to one partition"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_administration_errors_are_typed() {
    let bus = bus().await;
    let topic = format!("{}never-created", namespace("admin"));
    let missing = bus.partition_count(&topic).await;
    assert_eq!(
        missing,
        Err(BusError::UnknownTopic(topic.clone())),
        "metadata of a missing topic"
    );
    let zero = bus.create_topic(&topic, 0, 1).await;
    assert!(
        matches!(zero, Err(BusError::Permanent(_))),
        "0 partitions must be refused, got {zero:?}"
    );
    bus.create_topic(&topic, 3, 1).await.expect("create");
    bus.create_topic(&topic, 5, 1)
        .await
        .expect("creating an existing topic is a no-op");
    assert_eq!(
        bus.partition_count(&topic).await,
        Ok(3),
        "the existing topic is left alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_missing_topic_fails_instead_of_creating_it() {
    let bus = KafkaEventBus::new(config().delivery_timeout(Duration::from_secs(3))).expect("bus");
    bus.check_connection().await.expect("broker answers");
    let topic = format!("{}never-created", namespace("missing"));
    let result = within(
        Duration::from_secs(15),
        "publish",
        bus.publish(vec![message(&topic, "k", 1, "{}")]),
    )
    .await;
    assert!(
        matches!(&result, Err(BusError::UnknownTopic(t)) if *t == topic)
            || result == Err(BusError::Timeout),
        "expected UnknownTopic or Timeout (outcome unknown), got {result:?}"
    );
    assert_eq!(
        bus.partition_count(&topic).await,
        Err(BusError::UnknownTopic(topic.clone())),
        "the publish must not have created it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_and_bad_properties_fail_with_typed_errors() {
    // Port 1 on loopback: nothing listens there.
    let unreachable = KafkaEventBus::new(
        KafkaConfig::new("127.0.0.1:1").operation_timeout(Duration::from_secs(2)),
    )
    .expect("lazy client");
    let err = within(
        Duration::from_secs(10),
        "check_connection",
        unreachable.check_connection(),
    )
    .await
    .expect_err("nothing listens on port 1");
    assert!(
        err.is_transient() && err.to_string().contains("127.0.0.1:1"),
        "an unreachable broker is transient and named, got {err:?}"
    );
    let bad =
        KafkaEventBus::new(KafkaConfig::new("127.0.0.1:9092").property("no.such.property", "1"));
    assert!(
        matches!(bad, Err(ConfigError::Rejected(_))),
        "unknown property must be refused, got {bad:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_leaves_mid_stream_and_the_survivor_takes_over() {
    let bus = bus().await;
    let ns = namespace("failover");
    let topic = format!("{ns}events");
    let group = format!("{ns}group");
    bus.create_topic(&topic, 4, 1).await.expect("create topic");
    let total = 200u64;
    let handled: Arc<Mutex<BTreeMap<u64, u32>>> = Arc::default();
    let budget = bus.config().group_join_budget();

    // Both members join before anything is published, so both get partitions.
    let mut leaver = bus.subscribe_group(&group, &[&topic]).expect("subscribe");
    let mut survivor = bus.subscribe_group(&group, &[&topic]).expect("subscribe");
    bus.publish(
        (0..total)
            .map(|i| {
                message(
                    &topic,
                    &format!("stream-{}", i % 16),
                    i,
                    &format!(r#"{{"n":{i}}}"#),
                )
            })
            .collect(),
    )
    .await
    .expect("publish");

    let survivor_task = {
        let handled = Arc::clone(&handled);
        tokio::spawn(async move {
            loop {
                if handled.lock().len() as u64 == total {
                    survivor.commit().await.expect("final commit");
                    return survivor;
                }
                let Ok(next) = tokio::time::timeout(budget, survivor.next()).await else {
                    continue;
                };
                let d = next.expect("survivor next");
                *handled.lock().entry(event_id(&d)).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(2)).await; // keep the stream going while the leaver works
                survivor.ack(&d);
                if d.offset % 10 == 0 {
                    survivor.commit().await.expect("survivor commit");
                }
            }
        })
    };

    // The leaver handles 20 messages, acknowledges 15, commits after 10, then is dropped.
    let mut leaver_handled = 0;
    while leaver_handled < 20 {
        let d = within(budget * 2, "leaver next", leaver.next())
            .await
            .expect("leaver next");
        *handled.lock().entry(event_id(&d)).or_default() += 1;
        leaver_handled += 1;
        if leaver_handled <= 15 {
            leaver.ack(&d);
        }
        if leaver_handled == 10 {
            leaver.commit().await.expect("leaver commit");
        }
    }
    assert!(
        !leaver.assignment().is_empty(),
        "the leaver must have owned partitions"
    );
    drop(leaver);

    let survivor = within(budget * 4, "survivor finishing the stream", survivor_task)
        .await
        .expect("survivor task");
    let handled = handled.lock().clone();
    let missing: Vec<u64> = (0..total).filter(|i| !handled.contains_key(i)).collect();
    assert!(missing.is_empty(), "lost messages: {missing:?}");
    assert_eq!(
        survivor.assignment().len(),
        4,
        "the survivor owns every partition after the rebalance"
    );
    // At-least-once: the leaver's unacknowledged messages were redelivered to the survivor.
    let redelivered = handled.values().filter(|n| **n > 1).count();
    assert!(
        redelivered >= 5,
        "the 5 messages the leaver did not acknowledge must be redelivered, saw {redelivered}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_ack_redelivers_and_dedup_keeps_the_projection_exact() {
    let bus = bus().await;
    let ns = namespace("crash");
    let topic = format!("{ns}events");
    let group = format!("{ns}projection");
    bus.create_topic(&topic, 1, 1).await.expect("create topic");
    bus.publish(
        (0..10)
            .map(|i| {
                message(
                    &topic,
                    "account-1",
                    100 + i,
                    &format!(r#"{{"amount":{}}}"#, i + 1),
                )
            })
            .collect(),
    )
    .await
    .expect("publish");
    let budget = bus.config().group_join_budget();

    // The projection: a balance plus the ids applied (the idempotency record).
    let mut applied: BTreeSet<u64> = BTreeSet::new();
    let mut balance = 0u64;
    let mut duplicates = 0;
    let mut apply = |d: &Delivery, applied: &mut BTreeSet<u64>| {
        if applied.insert(event_id(d)) {
            balance += d.payload.decode::<serde_json::Value>().expect("json")["amount"]
                .as_u64()
                .expect("amount");
        } else {
            duplicates += 1;
        }
    };

    let mut first = bus.subscribe_group(&group, &[&topic]).expect("subscribe");
    for i in 0..10 {
        let d = within(budget, "first next", first.next())
            .await
            .expect("first next");
        apply(&d, &mut applied);
        // Events 0..5 are acknowledged and committed; 5..10 are applied, then the process
        // "crashes" before acknowledging them.
        if i < 5 {
            first.ack(&d);
        }
    }
    first.commit().await.expect("commit");
    drop(first);

    let mut second = bus.subscribe_group(&group, &[&topic]).expect("subscribe");
    let mut redelivered = Vec::new();
    for _ in 0..5 {
        let d = within(budget, "second next", second.next())
            .await
            .expect("second next");
        redelivered.push(event_id(&d));
        apply(&d, &mut applied);
        second.ack(&d);
    }
    second.commit().await.expect("commit");
    assert_eq!(
        redelivered,
        vec![105, 106, 107, 108, 109],
        "resumes at the first unacknowledged event, in order"
    );
    assert_eq!(
        duplicates, 5,
        "each redelivered event was recognised by its id"
    );
    assert_eq!(
        balance,
        (1..=10).sum::<u64>(),
        "every event applied exactly once"
    );
}

#[derive(serde::Deserialize)]
struct Deposit {
    amount: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_listed_and_replayed() {
    let bus = bus().await;
    let ns = namespace("poison");
    let topic = format!("{ns}payments");
    let group = format!("{ns}ledger");
    bus.create_topic(&topic, 1, 1).await.expect("create topic");
    bus.create_topic(&bus.config().dead_letter_topic(&topic), 1, 1)
        .await
        .expect("create dlq");
    let budget = bus.config().group_join_budget();

    bus.publish(vec![
        message(&topic, "acct-1", 1, r#"{"amount":10}"#),
        message(&topic, "acct-1", 2, r#"{"amount":"ten"}"#), // permanent: does not decode
        message(&topic, "acct-1", 3, r#"{"amount":30}"#),    // fails transiently once
    ])
    .await
    .expect("publish");
    // A payload that is not even UTF-8, from a foreign producer.
    publish_raw(&bus, &topic, "acct-1", "4", &[0xff, 0xfe, 0x00]).await;
    bus.publish(vec![message(&topic, "acct-1", 5, r#"{"amount":50}"#)])
        .await
        .expect("publish");

    let policy = DeadLetterPolicy::from(
        RetryPolicy::default()
            .with_max_attempts(3)
            .with_delays(Duration::from_millis(10), Duration::from_millis(50)),
    );
    let handler = DeadLetterHandler::new(bus.clone(), Some(&group), policy).expect("policy");
    let mut sub = bus.subscribe_group(&group, &[&topic]).expect("subscribe");
    let mut total = 0;
    let mut failed_once = BTreeSet::new();
    let mut outcomes = BTreeMap::new();
    // Event 4 never reaches the handler: the subscription dead-letters it itself.
    for _ in 0..4 {
        let d = within(budget, "next", sub.next()).await.expect("next");
        let id = event_id(&d);
        let outcome = handler
            .handle(&mut sub, &d, |d| {
                let result = if event_id(d) == 3 && failed_once.insert(3) {
                    Err(HandlerError::transient("ledger database busy"))
                } else {
                    d.payload
                        .decode::<Deposit>()
                        .map(|deposit| total += deposit.amount)
                        .map_err(HandlerError::permanent)
                };
                std::future::ready(result)
            })
            .await
            .expect("handle");
        outcomes.insert(id, outcome);
    }
    sub.commit().await.expect("commit");
    assert_eq!(total, 10 + 30 + 50);
    assert_eq!(outcomes[&1], Outcome::Handled { attempts: 1 });
    assert_eq!(outcomes[&3], Outcome::Handled { attempts: 2 });
    assert_eq!(outcomes[&5], Outcome::Handled { attempts: 1 });
    assert!(
        matches!(
            &outcomes[&2],
            Outcome::DeadLettered {
                attempts: 1,
                error: HandlerError::Permanent(_),
                ..
            }
        ),
        "{:?}",
        outcomes[&2]
    );
    assert_eq!(
        sub.uncommitted(),
        0,
        "the poison messages were acknowledged: nothing stalls the partition"
    );
    drop(sub);

    let queue = DeadLetterQueue::for_topic(bus.clone(), &topic);
    let letters = within(budget, "list", queue.list(100)).await.expect("list");
    assert_eq!(letters.len(), 2, "{letters:#?}");
    let (poison, garbage) = (&letters[0], &letters[1]);
    assert_eq!(
        (
            poison.original_topic.as_str(),
            poison.original_partition,
            poison.original_offset
        ),
        (topic.as_str(), 0, 1)
    );
    assert_eq!(poison.attempts, 1);
    assert!(poison.error.contains("permanent"), "{}", poison.error);
    assert_eq!(poison.group.as_deref(), Some(group.as_str()));
    assert_eq!(poison.header(header::EVENT_ID), Some("2"));
    assert_eq!(
        poison.header(header::TRACEPARENT),
        Some(TRACEPARENT),
        "original headers are kept"
    );
    assert!(
        poison
            .headers
            .iter()
            .all(|(k, _)| !k.starts_with(dlq::PREFIX)),
        "dead-letter headers are split off"
    );
    assert_eq!(poison.payload_text(), Some(r#"{"amount":"ten"}"#));
    assert_eq!(garbage.original_offset, 3);
    assert_eq!(garbage.attempts, 0, "never reached a handler");
    assert!(garbage.error.contains("not UTF-8"), "{}", garbage.error);
    assert_eq!(
        garbage.payload.as_deref(),
        Some(&[0xff_u8, 0xfe, 0x00][..]),
        "bytes kept exactly"
    );

    let inspected = queue
        .inspect(poison.partition, poison.offset)
        .await
        .expect("inspect");
    assert_eq!(&inspected, poison);
    let missing = queue.inspect(0, 1_000).await;
    assert!(
        matches!(
            missing,
            Err(reprise_kafka::DeadLetterError::NotFound { offset: 1_000, .. })
        ),
        "{missing:?}"
    );

    // The fix is deployed: replay the poison message; the group sees only it (the committed
    // offset is past everything else).
    let receipt = queue.replay(poison).await.expect("replay");
    assert_eq!((receipt.partition, receipt.offset), (0, 5));
    let mut sub = bus.subscribe_group(&group, &[&topic]).expect("subscribe");
    let d = within(budget, "replayed next", sub.next())
        .await
        .expect("next");
    assert_eq!(d.offset, 5);
    assert_eq!(event_id(&d), 2);
    assert_eq!(
        d.headers.get(dlq::REPLAYED_FROM),
        Some(poison.coordinates().as_str())
    );
    assert_eq!(d.payload.as_str(), r#"{"amount":"ten"}"#);
}
