//! Unhandleable messages from any Kafka client, on a real broker: every shape is
//! dead-lettered with its reason, the dead-letter topic exists before consumption starts,
//! and a dead letter that cannot be written holds its partition loudly instead of
//! silently. Needs `KAFKA_BOOTSTRAP` (`eval "$(scripts/kafka.sh)"`); fails without it.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::Duration;

use reprise_core::event_bus::{EventBus, Subscription, header};
use reprise_core::resilience::dead_letter::REDELIVERED_FROM_HEADER;
use reprise_core::resilience::{DeadLetterQuery, DeadLetterQueue as _, DeadLetterStatus};
use reprise_core::{BusError, RetryPolicy, Timestamp};
use reprise_kafka::{
    DeadLetterQueue, KafkaConfig, KafkaDeadLetterQueue, KafkaEventBus, MessageCheck,
};

mod support;

use support::{namespace, produce, within};

const ID: &[u8] = b"0123abcd-0000-4000-8000-00000000beef";
const OTHER_ID: &[u8] = b"0123abcd-0000-4000-8000-00000000cafe";

fn config() -> KafkaConfig {
    support::config("reprise-kafka-poison").message_check(MessageCheck::Envelope)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhandleable_messages_of_every_shape_are_dead_lettered_with_their_reason() {
    let bus = KafkaEventBus::new(config()).expect("bus");
    let ns = namespace("shapes");
    let (topic, group) = (format!("{ns}orders"), format!("{ns}billing"));
    let dead_letter_topic = bus.config().dead_letter_topic(&topic);
    bus.create_topic(&topic, 1, 1).await.expect("create topic");
    assert!(matches!(
        bus.partition_count(&dead_letter_topic).await,
        Err(BusError::UnknownTopic(_))
    ));

    // EventBus::subscribe prepares the dead-letter topic before it returns.
    let other = format!("{ns}other");
    bus.create_topic(&other, 2, 1).await.expect("create topic");
    let prepared = bus
        .subscribe(&format!("{ns}other-group"), &[&other])
        .await
        .expect("subscribe");
    assert_eq!(
        bus.partition_count(&bus.config().dead_letter_topic(&other))
            .await
            .expect("created with the original's partitions"),
        2
    );
    drop(prepared);

    produce(&bus, &topic, None, Some(b"{}"), &[]).await;
    produce(
        &bus,
        &topic,
        Some(b"k"),
        Some(b"{not json"),
        &[(header::EVENT_ID, ID)],
    )
    .await;
    produce(
        &bus,
        &topic,
        Some(b"k"),
        Some(b"{}"),
        &[(header::EVENT_ID, b"42")],
    )
    .await;
    produce(
        &bus,
        &topic,
        Some(b"k"),
        Some(&[0xff, 0xfe]),
        &[(header::EVENT_ID, ID)],
    )
    .await;
    produce(&bus, &topic, Some(b"k"), None, &[(header::EVENT_ID, ID)]).await;
    produce(
        &bus,
        &topic,
        Some(b"k"),
        Some(b"{\"ok\":1}"),
        &[(header::EVENT_ID, OTHER_ID)],
    )
    .await;

    let budget = bus.config().group_join_budget();
    let mut sub = bus.subscribe_group(&group, &[&topic]).expect("subscribe");
    let d = within(budget, "next", sub.next()).await.expect("next");
    assert_eq!(d.offset, 5, "only the Reprise message reaches the handler");
    assert!(
        bus.partition_count(&dead_letter_topic).await.is_ok(),
        "prepared before the first delivery"
    );
    sub.ack(&d);
    sub.commit().await.expect("commit");
    assert_eq!(
        sub.uncommitted(),
        0,
        "every poison message was acknowledged"
    );

    let raw = DeadLetterQueue::for_topic(bus.clone(), &topic);
    let letters = within(budget, "list", raw.list(100)).await.expect("list");
    let reasons: Vec<(u64, &str)> = letters
        .iter()
        .map(|l| (l.original_offset, l.error.as_str()))
        .collect();
    assert_eq!(letters.len(), 5, "{reasons:#?}");
    for (offset, needle) in [
        (0, "no headers"),
        (1, "payload is not JSON"),
        (2, "not an event id"),
        (3, "not UTF-8"),
        (4, "tombstone"),
    ] {
        let letter = &letters[usize::try_from(offset).unwrap()];
        assert_eq!(letter.original_offset, offset);
        assert!(letter.error.contains(needle), "{offset}: {}", letter.error);
        assert_eq!(letter.attempts, 0);
        assert_eq!(letter.group.as_deref(), Some(group.as_str()));
    }
    assert_eq!(
        letters[0].key, None,
        "bytes kept exactly, absent key included"
    );
    assert_eq!(letters[3].payload.as_deref(), Some(&[0xff_u8, 0xfe][..]));
    assert_eq!(letters[4].payload, None);

    // The operator's view (what `reprise dlq --backend kafka` uses) sees every letter.
    let queue = KafkaDeadLetterQueue::open(bus.config().clone(), &dead_letter_topic)
        .await
        .expect("open");
    let listed = queue
        .list(DeadLetterQuery {
            topic: None,
            include_resolved: true,
            limit: 100,
        })
        .await
        .expect("list");
    assert_eq!(listed.len(), 5, "{listed:#?}");
    let not_utf8 = listed
        .iter()
        .find(|l| l.letter.error.contains("not UTF-8"))
        .expect("listed")
        .id
        .clone();
    let at = Timestamp::from_unix_nanos(1);
    queue
        .redeliver_exact(&not_utf8, at)
        .await
        .expect("redeliver");
    assert!(matches!(
        queue
            .get(&not_utf8)
            .await
            .expect("get")
            .expect("exists")
            .status,
        DeadLetterStatus::Retried { .. }
    ));
    // The bytes went back as they were, and are dead-lettered again (they are still not
    // text), marked as a redelivery.
    produce(
        &bus,
        &topic,
        Some(b"k"),
        Some(b"{}"),
        &[(header::EVENT_ID, OTHER_ID)],
    )
    .await;
    let d = within(budget, "next", sub.next()).await.expect("next");
    assert_eq!(d.offset, 7);
    let letters = within(budget, "list", raw.list(100)).await.expect("list");
    let again = letters.last().expect("a sixth letter");
    assert_eq!((letters.len(), again.original_offset), (6, 6));
    assert_eq!(again.payload.as_deref(), Some(&[0xff_u8, 0xfe][..]));
    assert_eq!(
        again.header(REDELIVERED_FROM_HEADER),
        Some(not_utf8.0.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_cannot_be_written_holds_its_partition_loudly() {
    // The consumer's producer refuses records over 1000 bytes (librdkafka checks it
    // before sending): a larger poison message cannot be dead-lettered, whatever the
    // broker does.
    let config = config()
        .property("message.max.bytes", "1000")
        .dead_letter_retry(
            RetryPolicy::default()
                .with_max_attempts(2)
                .with_delays(Duration::from_millis(10), Duration::from_millis(20)),
        );
    let bus = KafkaEventBus::new(config).expect("bus");
    let ns = namespace("unwritable");
    let (topic, group) = (format!("{ns}orders"), format!("{ns}billing"));
    let dead_letter_topic = bus.config().dead_letter_topic(&topic);
    bus.create_topic(&topic, 1, 1).await.expect("create topic");
    let big = vec![b'x'; 3000];
    produce(
        &bus,
        &topic,
        Some(b"k"),
        Some(&big),
        &[(header::EVENT_ID, ID)],
    )
    .await;
    produce(
        &bus,
        &topic,
        Some(b"k"),
        Some(b"{}"),
        &[(header::EVENT_ID, OTHER_ID)],
    )
    .await;

    let budget = bus.config().group_join_budget();
    let mut sub = bus.subscribe_group(&group, &[&topic]).expect("subscribe");
    for attempt in 0..2 {
        let error = within(budget, "next", sub.next())
            .await
            .expect_err("the letter cannot be written");
        assert!(
            error.to_string().contains(&dead_letter_topic) && error.to_string().contains("@0"),
            "attempt {attempt}: the error names the dead-letter topic and the message: {error}"
        );
        sub.commit().await.expect("commit");
        assert_eq!(
            sub.uncommitted(),
            1,
            "the poison message is kept, not skipped, and nothing after it is handed out"
        );
    }
    let letters = DeadLetterQueue::for_topic(bus.clone(), &topic)
        .list(10)
        .await
        .expect("the dead-letter topic exists (prepared before consuming)");
    assert!(letters.is_empty(), "{letters:#?}");
}
