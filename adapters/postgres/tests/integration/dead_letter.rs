//! `PgDeadLetterQueue` against a real PostgreSQL: the core's conformance suite, racing
//! operators, redelivery, the gauges' inputs, writes inside a caller's transaction, and
//! storage failures mapped to `Unavailable`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reprise_core::event_bus::Headers;
use reprise_core::resilience::dead_letter::REDELIVERED_FROM_HEADER;
use reprise_core::resilience::{
    DeadLetterError, DeadLetterId, DeadLetterQuery, DeadLetterQueue, DeadLetterStatus, ErrorClass,
    NewDeadLetter, Resolution, redeliver,
};
use reprise_core::{InMemoryEventBus, Payload, Timestamp};
use reprise_postgres::PgDeadLetterQueue;

use crate::support::{config, connect, drop_schema, fresh_store};

/// The wall clock with a sub-microsecond part, so that timestamps must round-trip exactly
/// (a `timestamptz` alone would drop the last three digits).
fn now() -> Timestamp {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    Timestamp::from_unix_nanos(nanos / 1_000 * 1_000 + 789)
}

fn letter(topic: &str, key: &str, failed_at: Timestamp) -> NewDeadLetter {
    NewDeadLetter {
        topic: topic.into(),
        source_position: Some("3/141".into()),
        key: key.into(),
        payload: Payload::from_json_text(format!(r#"{{"key":"{key}"}}"#)),
        headers: Headers::default()
            .with("reprise-event-id", "e-1")
            .with("x-dup", "1")
            .with("x-dup", "2"),
        error: "gateway refused".into(),
        error_class: ErrorClass::Permanent,
        attempts: 3,
        failed_at,
    }
}

#[tokio::test]
async fn the_postgres_queue_passes_the_conformance_suite() {
    let store = fresh_store("dlq_conformance").await;
    let queue = PgDeadLetterQueue::new(&store);
    assert_eq!(queue.name(), format!("postgres:{}", store.config().schema));
    // Twice in the same schema: the suite must not depend on an empty table.
    reprise_core::conformance::dead_letter_queue_suite(&queue, "first.", now())
        .await
        .unwrap();
    reprise_core::conformance::dead_letter_queue_suite(&queue, "second.", now())
        .await
        .unwrap();
    drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_operators_resolving_the_same_letter_exactly_one_wins() {
    let store = fresh_store("dlq_race").await;
    let queue = Arc::new(PgDeadLetterQueue::new(&store));
    let at = now();
    for round in 0..5 {
        let id = queue
            .put(letter("orders", &format!("order-{round}"), at))
            .await
            .unwrap();
        // Hold the row so both updates are queued on its lock and run against each other
        // when it is released: the loser must re-check `status = 'pending'`.
        let mut blocker = store.begin().await.unwrap();
        sqlx::query("SELECT id FROM dead_letters WHERE id = $1::bigint FOR UPDATE")
            .bind(&id.0)
            .execute(&mut *blocker)
            .await
            .unwrap();
        let resolve = |resolution: Resolution, at: Timestamp| {
            let queue = Arc::clone(&queue);
            let id = id.clone();
            tokio::spawn(async move { queue.resolve(&id, resolution, at).await })
        };
        let retried_at = at + Duration::from_secs(1);
        let discarded_at = at + Duration::from_secs(2);
        let retry = resolve(Resolution::Retried, retried_at);
        let discard = resolve(Resolution::Discarded, discarded_at);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            !retry.is_finished() && !discard.is_finished(),
            "both resolutions wait for the row lock"
        );
        blocker.commit().await.unwrap();
        let (retry, discard) = (retry.await.unwrap(), discard.await.unwrap());

        let stored = queue.get(&id).await.unwrap().unwrap().status;
        let (winner, loser) = match (&retry, &discard) {
            (Ok(()), Err(loser)) => (DeadLetterStatus::Retried { at: retried_at }, loser),
            (Err(loser), Ok(())) => (DeadLetterStatus::Discarded { at: discarded_at }, loser),
            other => panic!("round {round}: exactly one resolution must win, got {other:?}"),
        };
        assert_eq!(stored, winner, "round {round}");
        assert_eq!(
            loser,
            &DeadLetterError::AlreadyResolved {
                id: id.clone(),
                status: winner
            },
            "round {round}: the loser learns what the winner decided"
        );
    }
    assert_eq!(queue.stats().await.unwrap().pending, 0);
    drop_schema(&store).await;
}

#[tokio::test]
async fn redelivery_publishes_to_the_letters_topic_then_marks_it_retried() {
    let store = fresh_store("dlq_redeliver").await;
    let queue = PgDeadLetterQueue::new(&store);
    let bus = InMemoryEventBus::new();
    let subscription = bus.subscribe_now("billing", &["payments"]);
    let failed_at = now() - Duration::from_secs(60);
    let mut original = letter("payments", "order-7", failed_at);
    original.payload = Payload::from_json_text(r#"{"charge": 12.50, "currency":"EUR"}"#);
    let id = queue.put(original.clone()).await.unwrap();
    let other = queue
        .put(letter("payments", "order-8", failed_at))
        .await
        .unwrap();

    let at = now();
    redeliver(&queue, &bus, &id, at).await.unwrap();
    let delivered = subscription.try_next().expect("the letter was published");
    assert_eq!(&*delivered.topic, "payments");
    assert_eq!(&*delivered.key, "order-7");
    assert_eq!(delivered.payload, original.payload, "payload byte for byte");
    let mut expected_headers = original.headers.clone();
    expected_headers.insert(REDELIVERED_FROM_HEADER, id.0.as_str());
    assert_eq!(delivered.headers, expected_headers);
    assert_eq!(
        queue.get(&id).await.unwrap().unwrap().status,
        DeadLetterStatus::Retried { at }
    );
    assert_eq!(
        queue.get(&other).await.unwrap().unwrap().status,
        DeadLetterStatus::Pending,
        "only the redelivered letter is marked"
    );

    // Resolved or unknown letters are refused before anything is published.
    let again = redeliver(&queue, &bus, &id, now()).await;
    assert!(
        matches!(
            again,
            Err(DeadLetterError::AlreadyResolved {
                status: DeadLetterStatus::Retried { .. },
                ..
            })
        ),
        "{again:?}"
    );
    for unknown in ["999999", "not-a-number", ""] {
        let missing = redeliver(&queue, &bus, &DeadLetterId::from(unknown), now()).await;
        assert_eq!(
            missing,
            Err(DeadLetterError::NotFound(unknown.into())),
            "{unknown:?}"
        );
    }
    assert!(
        subscription.try_next().is_none(),
        "a refused redelivery publishes nothing"
    );
    drop_schema(&store).await;
}

#[tokio::test]
async fn stats_count_pending_letters_and_find_the_oldest_to_the_nanosecond() {
    let store = fresh_store("dlq_stats").await;
    let queue = PgDeadLetterQueue::new(&store);
    let empty = queue.stats().await.unwrap();
    assert_eq!((empty.pending, empty.oldest_pending_failed_at), (0, None));

    let now = now();
    let ago = |secs| now - Duration::from_secs(secs);
    let middle = queue.put(letter("a", "k1", ago(200))).await.unwrap();
    let oldest = queue.put(letter("b", "k2", ago(300))).await.unwrap();
    // Same microsecond as `oldest`, one nanosecond later: only the *_ns column orders them.
    let mut close = letter("b", "k3", ago(300) + Duration::from_nanos(1));
    close.error_class = ErrorClass::Transient;
    let close = queue.put(close).await.unwrap();
    let newest = queue.put(letter("a", "k4", ago(100))).await.unwrap();

    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.pending, 4);
    assert_eq!(stats.oldest_pending_failed_at, Some(ago(300)));
    assert_eq!(
        now.saturating_since(stats.oldest_pending_failed_at.unwrap()),
        Duration::from_secs(300),
        "the age the oldest-age gauge reports"
    );

    queue
        .resolve(&oldest, Resolution::Discarded, now)
        .await
        .unwrap();
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.pending, 3);
    assert_eq!(
        stats.oldest_pending_failed_at,
        Some(ago(300) + Duration::from_nanos(1))
    );

    for id in [&close, &middle] {
        queue.resolve(id, Resolution::Retried, now).await.unwrap();
    }
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.oldest_pending_failed_at),
        (1, Some(ago(100)))
    );
    queue
        .resolve(&newest, Resolution::Retried, now)
        .await
        .unwrap();
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.pending, stats.oldest_pending_failed_at), (0, None));

    // Listing: resolved letters only with include_resolved, topic filter, oldest first.
    let all = queue
        .list(DeadLetterQuery {
            topic: Some("b".into()),
            include_resolved: true,
            limit: 10,
        })
        .await
        .unwrap();
    let ids: Vec<_> = all.iter().map(|l| l.id.clone()).collect();
    assert_eq!(ids, [oldest, close]);
    assert_eq!(all[1].letter.error_class, ErrorClass::Transient);
    assert!(
        queue
            .list(DeadLetterQuery::default())
            .await
            .unwrap()
            .is_empty()
    );
    drop_schema(&store).await;
}

#[tokio::test]
async fn poison_payloads_are_kept_as_they_arrived_and_unstorable_letters_are_invalid() {
    let store = fresh_store("dlq_poison").await;
    let queue = PgDeadLetterQueue::new(&store);
    let mut poison = letter("raw", "k", now());
    poison.payload = Payload::from_json_text("\u{fffd}not json at all {");
    poison.source_position = None;
    poison.key = String::new();
    let id = queue.put(poison.clone()).await.unwrap();
    assert_eq!(queue.get(&id).await.unwrap().unwrap().letter, poison);

    // PostgreSQL text cannot hold NUL: refused as Invalid, nothing stored.
    let before = queue.stats().await.unwrap().pending;
    let mut nul = letter("raw", "k", now());
    nul.error = "bad\0byte".into();
    let refused = queue.put(nul).await;
    assert!(
        matches!(&refused, Err(DeadLetterError::Invalid(why)) if why.contains("refuses")),
        "{refused:?}"
    );
    assert_eq!(queue.stats().await.unwrap().pending, before);
    drop_schema(&store).await;
}

#[tokio::test]
async fn a_letter_written_in_a_transaction_exists_only_if_it_commits() {
    let store = fresh_store("dlq_in_transaction").await;
    let queue = PgDeadLetterQueue::new(&store);

    let mut rolled_back = store.begin().await.unwrap();
    let ghost = queue
        .put_in(&mut rolled_back, &letter("t", "ghost", now()))
        .await
        .unwrap();
    rolled_back.rollback().await.unwrap();
    assert_eq!(queue.get(&ghost).await.unwrap(), None);

    let mut transaction = store.begin().await.unwrap();
    let mut refused = letter("t", "bad", now());
    refused.key = "nul\0".into();
    let result = queue.put_in(&mut transaction, &refused).await;
    assert!(
        matches!(result, Err(DeadLetterError::Invalid(_))),
        "{result:?}"
    );
    let mut conflict = letter("t", "conflict", now());
    conflict.error_class = ErrorClass::Conflict;
    let result = queue.put_in(&mut transaction, &conflict).await;
    assert!(
        matches!(result, Err(DeadLetterError::Invalid(_))),
        "{result:?}"
    );
    // The refusals left the transaction usable.
    let kept = letter("t", "kept", now());
    let id = queue.put_in(&mut transaction, &kept).await.unwrap();
    assert_eq!(
        queue.get(&id).await.unwrap(),
        None,
        "invisible to others before the commit"
    );
    transaction.commit().await.unwrap();
    let stored = queue.get(&id).await.unwrap().unwrap();
    assert_eq!(
        (stored.letter, stored.status),
        (kept, DeadLetterStatus::Pending)
    );
    drop_schema(&store).await;
}

#[tokio::test]
async fn storage_failures_are_unavailable() {
    let store = connect(
        config("dlq_unavailable")
            .with_max_connections(1)
            .with_acquire_timeout(Duration::from_millis(200)),
    )
    .await;
    let queue = PgDeadLetterQueue::new(&store);
    let held = store.pool().acquire().await.unwrap();
    for result in [
        queue.put(letter("t", "k", now())).await.map(|_| ()),
        queue.stats().await.map(|_| ()),
        queue.resolve(&"1".into(), Resolution::Retried, now()).await,
    ] {
        assert!(
            matches!(&result, Err(DeadLetterError::Unavailable(why)) if why.contains("pool exhausted")),
            "{result:?}"
        );
    }
    drop(held);
    // Capacity returns: the same request goes through.
    queue.put(letter("t", "k", now())).await.unwrap();
    drop_schema(&store).await;
}

/// What the Kafka side writes for a message no handler saw: zero attempts. The table
/// admits it (migration 0010; the contract's `validate` still asks for one attempt, so
/// the row is written as a tool moving letters over would write it) and reads it back.
#[tokio::test]
async fn a_letter_with_no_attempt_is_stored_and_read_back() {
    let store = fresh_store("dlq_zero_attempts").await;
    let queue = PgDeadLetterQueue::new(&store);
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO dead_letters (topic, source_position, message_key, payload, headers, \
             error, error_class, attempts, failed_at, failed_at_ns) \
         VALUES ('orders', '0/7', '', 'not json', '[]', 'payload is not JSON', 'permanent', 0, \
                 now(), 0) RETURNING id",
    )
    .fetch_one(store.pool())
    .await
    .expect("0 attempts is admitted");
    let read = queue
        .get(&DeadLetterId(id.to_string()))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(read.letter.attempts, 0);
    assert_eq!(read.letter.payload.as_str(), "not json");
    let negative = sqlx::query("UPDATE dead_letters SET attempts = -1 WHERE id = $1")
        .bind(id)
        .execute(store.pool())
        .await;
    assert!(negative.is_err(), "negative attempts are still refused");
    drop_schema(&store).await;
}

/// A row an operator edited by hand into something unreadable is reported and skipped;
/// the other letters are still listed.
#[tokio::test]
async fn one_malformed_row_is_reported_and_does_not_hide_the_others() {
    let store = fresh_store("dlq_malformed").await;
    let queue = PgDeadLetterQueue::new(&store);
    let mut ids = Vec::new();
    for key in ["order-1", "order-2", "order-3"] {
        ids.push(queue.put(letter("orders", key, now())).await.expect("put"));
    }
    sqlx::query("UPDATE dead_letters SET headers = '{\"not\": \"pairs\"}' WHERE id = $1")
        .bind(ids[1].0.parse::<i64>().unwrap())
        .execute(store.pool())
        .await
        .unwrap();
    let listed = queue
        .list(DeadLetterQuery::default())
        .await
        .expect("the list still works");
    let listed: Vec<_> = listed.iter().map(|l| l.id.clone()).collect();
    assert_eq!(listed, [ids[0].clone(), ids[2].clone()]);
    let (letters, unreadable) = queue
        .list_checked(DeadLetterQuery::default())
        .await
        .expect("list");
    assert_eq!(letters.len(), 2);
    assert_eq!(unreadable.len(), 1);
    assert_eq!(unreadable[0].0, ids[1]);
    assert!(
        unreadable[0].1.to_string().contains("headers"),
        "{}",
        unreadable[0].1
    );
    drop_schema(&store).await;
}
