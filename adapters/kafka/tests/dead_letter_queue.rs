//! `KafkaDeadLetterQueue` — the core dead-letter-queue contract on a dead-letter topic —
//! against a real Kafka-API broker.
//!
//! Like `broker.rs`, these tests need `KAFKA_BOOTSTRAP` (`eval "$(scripts/kafka.sh)"`
//! starts tansu on loopback and prints it) and **fail** — never skip — when it is unset or
//! the broker does not answer: a green run must mean the queue was exercised. Topic names
//! are unique per run.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reprise_core::event_bus::{EventBus, Headers, Subscription, header};
use reprise_core::resilience::dead_letter::REDELIVERED_FROM_HEADER;
use reprise_core::resilience::{
    self as contract, DeadLetterId, DeadLetterQuery, DeadLetterQueue as _, DeadLetterStatus,
    ErrorClass, NewDeadLetter, Resolution, redeliver,
};
use reprise_core::{Payload, RetryPolicy, Timestamp};
use reprise_kafka::dead_letter::header as dlq;
use reprise_kafka::{
    DeadLetterHandler, DeadLetterPolicy, DeadLetterQueue, HandlerError, KafkaConfig,
    KafkaDeadLetterQueue, KafkaError, KafkaEventBus, Outcome, RESOLUTIONS_SUFFIX,
};

mod support;

use support::{event_id, message, namespace, publish_raw, within};

const CLIENT_ID: &str = "reprise-kafka-dlq-tests";

fn config() -> KafkaConfig {
    support::config(CLIENT_ID)
}

async fn bus() -> KafkaEventBus {
    support::bus(CLIENT_ID).await
}

async fn connect(topic: &str) -> KafkaDeadLetterQueue {
    KafkaDeadLetterQueue::connect(config(), topic)
        .await
        .unwrap_or_else(|e| panic!("connect to {topic}: {e}"))
}

fn now() -> Timestamp {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    Timestamp::from_unix_nanos(u64::try_from(nanos).expect("nanos fit u64"))
}

fn all(topic: &str) -> DeadLetterQuery {
    DeadLetterQuery {
        topic: Some(topic.to_owned()),
        include_resolved: true,
        ..DeadLetterQuery::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_queue_passes_the_dead_letter_conformance_suite() {
    let ns = namespace("dlq-conformance");
    let queue = connect(&format!("{ns}letters.dlq")).await;
    let budget = queue.bus().config().operation_timeout * 20;
    let result = within(
        budget,
        "dead_letter_queue_suite",
        reprise_core::conformance::dead_letter_queue_suite(&queue, &ns, now()),
    )
    .await;
    result.unwrap_or_else(|e| panic!("conformance: {e}"));
    assert_eq!(queue.name(), format!("kafka:{ns}letters.dlq"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_dead_letters_are_listed_redelivered_and_resolved_durably() {
    let bus = bus().await;
    let ns = namespace("dlq-redeliver");
    let topic = format!("{ns}payments");
    let group = format!("{ns}ledger");
    let dead_letter_topic = bus.config().dead_letter_topic(&topic);
    bus.create_topic(&topic, 1, 1).await.expect("create topic");
    // `connect` creates the dead-letter topic and its resolutions topic.
    let queue = connect(&dead_letter_topic).await;
    for created in [
        dead_letter_topic.clone(),
        format!("{dead_letter_topic}{RESOLUTIONS_SUFFIX}"),
    ] {
        assert_eq!(
            bus.partition_count(&created).await,
            Ok(1),
            "{created} exists"
        );
    }
    let budget = bus.config().group_join_budget();

    bus.publish(vec![
        message(&topic, "acct-1", 1, r#"{"amount":10}"#),
        message(&topic, "acct-1", 2, r#"{"amount":"ten"}"#), // permanent
    ])
    .await
    .expect("publish");
    // Not UTF-8: the subscription dead-letters it itself.
    publish_raw(&bus, &topic, "acct-1", "3", &[0xff, 0xfe]).await;
    bus.publish(vec![
        message(&topic, "acct-2", 4, r#"{"amount":40}"#), // transient until retries run out
    ])
    .await
    .expect("publish");

    let policy = DeadLetterPolicy::from(
        RetryPolicy::default()
            .with_max_attempts(2)
            .with_delays(Duration::from_millis(10), Duration::from_millis(20)),
    );
    let handler = DeadLetterHandler::new(bus.clone(), Some(&group), policy).expect("policy");
    let mut sub = bus.subscribe_group(&group, &[&topic]).expect("subscribe");
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let d = within(budget, "next", sub.next()).await.expect("next");
        let id = event_id(&d);
        let outcome = handler
            .handle(&mut sub, &d, |d| {
                std::future::ready(match event_id(d) {
                    2 => Err(HandlerError::permanent("amount is not a number")),
                    4 => Err(HandlerError::transient("ledger database busy")),
                    _ => Ok(()),
                })
            })
            .await
            .expect("handle");
        outcomes.push((id, outcome));
    }
    sub.commit().await.expect("commit");
    drop(sub);
    assert_eq!(outcomes[0], (1, Outcome::Handled { attempts: 1 }));
    assert!(
        matches!(outcomes[1], (2, Outcome::DeadLettered { attempts: 1, .. })),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[2], (4, Outcome::DeadLettered { attempts: 2, .. })),
        "{outcomes:?}"
    );

    // The handler's letters, through the contract.
    let pending = queue.list(DeadLetterQuery::default()).await.expect("list");
    assert_eq!(
        pending.len(),
        3,
        "every letter is listed, the undecodable one too: {pending:#?}"
    );
    let (poison, undecodable, busy) = (&pending[0], &pending[1], &pending[2]);
    assert_eq!(undecodable.letter.attempts, 0);
    assert!(
        undecodable.letter.error.contains("not UTF-8"),
        "{}",
        undecodable.letter.error
    );
    assert_eq!(
        undecodable.letter.payload.as_str(),
        "\u{fffd}\u{fffd}",
        "shown as text, lossily"
    );
    assert_eq!(poison.id, DeadLetterId("0:0".into()));
    assert_eq!(poison.status, DeadLetterStatus::Pending);
    assert_eq!(poison.letter.topic, topic);
    assert_eq!(poison.letter.source_position.as_deref(), Some("0/1"));
    assert_eq!(poison.letter.key, "acct-1");
    assert_eq!(poison.letter.payload.as_str(), r#"{"amount":"ten"}"#);
    assert_eq!(poison.letter.headers.get(header::EVENT_ID), Some("2"));
    assert!(
        poison
            .letter
            .headers
            .0
            .iter()
            .all(|(k, _)| !k.starts_with(dlq::PREFIX)),
        "dead-letter headers are split off: {:?}",
        poison.letter.headers
    );
    assert!(
        poison.letter.error.contains("amount is not a number"),
        "{}",
        poison.letter.error
    );
    assert_eq!(poison.letter.error_class, ErrorClass::Permanent);
    assert_eq!(poison.letter.attempts, 1);
    let age = now().saturating_since(poison.letter.failed_at);
    assert!(
        age < Duration::from_secs(120),
        "failed_at is recent: {age:?}"
    );
    assert_eq!(busy.letter.source_position.as_deref(), Some("0/3"));
    assert_eq!(busy.letter.error_class, ErrorClass::Transient);
    assert_eq!(busy.letter.attempts, 2);
    assert!(
        poison.letter.failed_at <= busy.letter.failed_at,
        "oldest failure first"
    );
    assert_eq!(
        queue.get(&poison.id).await.expect("get").as_ref(),
        Some(poison)
    );

    // The undecodable letter: counted, resolvable, shown lossily (exact through the raw
    // queue).
    let raw_letters = DeadLetterQueue::for_topic(bus.clone(), &topic)
        .list(10)
        .await
        .expect("raw list");
    let garbage = raw_letters
        .iter()
        .find(|l| l.attempts == 0)
        .unwrap_or_else(|| panic!("the undecodable letter: {raw_letters:#?}"));
    assert_eq!(garbage.original_offset, 2);
    let garbage_id = DeadLetterId(format!("{}:{}", garbage.partition, garbage.offset));
    let stats = queue.stats().await.expect("stats");
    assert_eq!(stats.pending, 3, "{stats:?}");
    assert_eq!(garbage_id, undecodable.id);
    let got = queue.get(&garbage_id).await.expect("get");
    assert_eq!(got.as_ref(), Some(undecodable));
    assert_eq!(garbage.payload.as_deref(), Some(&[0xff_u8, 0xfe][..]));

    // Redeliver the poison message (the fix is deployed): it is back on its topic.
    let redelivered_at = now();
    redeliver(&queue, &bus, &poison.id, redelivered_at)
        .await
        .expect("redeliver");
    let mut sub = bus.subscribe_group(&group, &[&topic]).expect("subscribe");
    let d = within(budget, "redelivered next", sub.next())
        .await
        .expect("next");
    assert_eq!(event_id(&d), 2);
    assert_eq!(&*d.key, "acct-1");
    assert_eq!(d.payload.as_str(), r#"{"amount":"ten"}"#);
    assert_eq!(d.headers.get(REDELIVERED_FROM_HEADER), Some("0:0"));
    sub.ack(&d);
    sub.commit().await.expect("commit");
    drop(sub);

    let twice = redeliver(&queue, &bus, &poison.id, now()).await;
    assert!(
        matches!(
            twice,
            Err(contract::DeadLetterError::AlreadyResolved {
                status: DeadLetterStatus::Retried { .. },
                ..
            })
        ),
        "{twice:?}"
    );
    queue
        .resolve(&busy.id, Resolution::Discarded, redelivered_at)
        .await
        .expect("discard");
    queue
        .resolve(&garbage_id, Resolution::Discarded, redelivered_at)
        .await
        .expect("discard the undecodable letter");
    let listed = queue.list(all(&topic)).await.expect("list");
    let statuses: Vec<_> = listed.iter().map(|l| (l.id.clone(), l.status)).collect();
    assert_eq!(
        statuses,
        vec![
            (
                poison.id.clone(),
                DeadLetterStatus::Retried { at: redelivered_at }
            ),
            (
                garbage_id.clone(),
                DeadLetterStatus::Discarded { at: redelivered_at }
            ),
            (
                busy.id.clone(),
                DeadLetterStatus::Discarded { at: redelivered_at }
            ),
        ]
    );
    assert_eq!(queue.stats().await.expect("stats").pending, 0);

    // Durability: a new connection folds the same resolutions.
    let reconnected = connect(&dead_letter_topic).await;
    let relisted = reconnected.list(all(&topic)).await.expect("list");
    assert_eq!(relisted, listed);
    assert!(
        reconnected
            .list(DeadLetterQuery::default())
            .await
            .expect("list")
            .is_empty()
    );
    let stats = reconnected.stats().await.expect("stats");
    assert_eq!((stats.pending, stats.oldest_pending_failed_at), (0, None));
    let again = reconnected
        .resolve(&garbage_id, Resolution::Retried, now())
        .await;
    assert!(
        matches!(
            again,
            Err(contract::DeadLetterError::AlreadyResolved {
                status: DeadLetterStatus::Discarded { .. },
                ..
            })
        ),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_put_through_the_contract_use_the_handlers_header_encoding() {
    let bus = bus().await;
    let ns = namespace("dlq-encoding");
    let source = format!("{ns}orders");
    let queue = connect(&bus.config().dead_letter_topic(&source)).await;
    let failed_at = now() - Duration::from_secs(30);
    let kafka_sourced = NewDeadLetter {
        topic: source.clone(),
        source_position: Some("2/7".into()),
        key: "order-1".into(),
        payload: Payload::from_json_text(r#"{"total":1}"#),
        headers: Headers::default().with(header::EVENT_ID, "e-1"),
        error: "inventory gone".into(),
        error_class: ErrorClass::Permanent,
        attempts: 3,
        failed_at,
    };
    let store_sourced = NewDeadLetter {
        source_position: Some("global 42".into()),
        ..kafka_sourced.clone()
    };
    let first = queue.put(kafka_sourced.clone()).await.expect("put");
    let second = queue.put(store_sourced.clone()).await.expect("put");
    assert_eq!(
        (first.0.as_str(), second.0.as_str()),
        ("0:0", "0:1"),
        "ids are partition:offset"
    );

    // The raw tools read the same headers the handler writes.
    let raw = DeadLetterQueue::for_topic(bus.clone(), &source);
    let inspected = raw.inspect(0, 0).await.expect("inspect");
    assert_eq!(
        (
            inspected.original_topic.as_str(),
            inspected.original_partition,
            inspected.original_offset
        ),
        (source.as_str(), 2, 7)
    );
    assert_eq!(inspected.error, "inventory gone");
    assert_eq!(inspected.attempts, 3);
    assert_eq!(
        inspected.dead_lettered_at_ms,
        Some(failed_at.as_unix_nanos() / 1_000_000)
    );
    assert_eq!(inspected.key.as_deref(), Some(&b"order-1"[..]));
    assert_eq!(inspected.header(header::EVENT_ID), Some("e-1"));
    // A letter without Kafka coordinates is for the contract's reader only.
    let not_kafka = raw.inspect(0, 1).await;
    assert!(
        matches!(
            not_kafka,
            Err(reprise_kafka::DeadLetterError::Malformed { .. })
        ),
        "{not_kafka:?}"
    );
    let got = queue.get(&second).await.expect("get").expect("stored");
    assert_eq!(got.letter, store_sourced);
    let got = queue.get(&first).await.expect("get").expect("stored");
    assert_eq!(got.letter, kafka_sourced);
    assert_eq!(
        queue.get(&DeadLetterId("0:2".into())).await,
        Ok(None),
        "past the end"
    );
    let stats = queue.stats().await.expect("stats");
    assert_eq!(stats.pending, 2);
    assert_eq!(stats.oldest_pending_failed_at, Some(failed_at));
}

#[tokio::test]
async fn connect_refuses_topic_names_kafka_would_refuse() {
    for bad in ["", "has space", "slash/ed", &"x".repeat(240)] {
        let result = KafkaDeadLetterQueue::connect(config(), bad).await;
        assert!(
            matches!(result, Err(KafkaError::InvalidTopic { .. })),
            "{bad:?}: {result:?}"
        );
    }
}
