//! Failures end in typed errors, promptly: pool exhaustion, statement timeouts, conflicts,
//! malformed input.

use std::time::{Duration, Instant};

use reprise_core::{AppendBatch, EventStore, ExpectedVersion, NewEvent, Payload, StoreError};
use reprise_postgres::MAX_EVENTS_PER_TRANSACTION;

use crate::support::{config, connect, drop_schema, event, fresh_store, id_base};

#[tokio::test]
async fn an_exhausted_pool_fails_with_a_transient_error_instead_of_hanging() {
    let store = connect(
        config("pool_exhaustion")
            .with_max_connections(2)
            .with_acquire_timeout(Duration::from_millis(200)),
    )
    .await;
    let held = [
        store.pool().acquire().await.unwrap(),
        store.pool().acquire().await.unwrap(),
    ];
    let started = Instant::now();
    let result = store
        .append(AppendBatch::single(
            "pool-1".into(),
            ExpectedVersion::Any,
            vec![event(id_base(), 1)],
        ))
        .await;
    let waited = started.elapsed();
    match &result {
        Err(e @ StoreError::Transient(why)) => {
            assert!(e.is_transient());
            assert!(why.contains("pool exhausted"), "{why}");
        }
        other => panic!("expected a transient pool-exhaustion error, got {other:?}"),
    }
    assert!(
        waited >= Duration::from_millis(190) && waited < Duration::from_secs(2),
        "gave up after {waited:?}"
    );
    let stats = store.pool_stats();
    assert_eq!(
        (stats.size, stats.idle, stats.max_connections),
        (2, 0, 2),
        "{stats:?}"
    );
    assert_eq!(stats.acquire_timeouts, 1, "{stats:?}");

    // Capacity returns: the very same request succeeds once a connection is free.
    drop(held);
    store
        .append(AppendBatch::single(
            "pool-1".into(),
            ExpectedVersion::Any,
            vec![event(id_base(), 1)],
        ))
        .await
        .unwrap();
    let stats = store.pool_stats();
    assert!(
        stats.acquires >= 1 && stats.acquire_wait_max >= Duration::ZERO,
        "{stats:?}"
    );
    drop_schema(&store).await;
}

#[tokio::test]
async fn a_statement_timeout_is_reported_as_timeout_and_the_batch_can_be_retried() {
    let patient = fresh_store("statement_timeout").await;
    let base = id_base();
    let stream = "locked-1";
    patient
        .append(AppendBatch::single(
            stream.into(),
            ExpectedVersion::NoStream,
            vec![event(base, 0)],
        ))
        .await
        .unwrap();
    // A second store on the same schema with a short statement timeout.
    let hasty = connect(
        patient
            .config()
            .clone()
            .with_statement_timeout(Duration::from_millis(400)),
    )
    .await;

    // Someone holds the stream's row lock (a long transaction appending to it).
    let mut blocker = patient.begin().await.unwrap();
    sqlx::query("SELECT version FROM streams WHERE stream_id = $1 FOR UPDATE")
        .bind(stream)
        .execute(&mut *blocker)
        .await
        .unwrap();

    let batch = AppendBatch::single(
        stream.into(),
        ExpectedVersion::Exact(1),
        vec![event(base + 1, 1)],
    );
    let timed_out = hasty.append(batch.clone()).await;
    assert_eq!(timed_out, Err(StoreError::Timeout));
    blocker.rollback().await.unwrap();

    // "Outcome unknown" is resolved by retrying the same batch: here it had not landed.
    let receipt = hasty.append(batch).await.unwrap();
    assert!(!receipt.was_duplicate);
    assert_eq!(receipt.version_of(&stream.into()), Some(2));
    hasty.close().await;
    drop_schema(&patient).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_with_the_same_expectation_produce_one_winner_and_typed_conflicts() {
    let store = fresh_store("race").await;
    let base = id_base();
    let attempts: Vec<_> = (0..8u128)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(AppendBatch::single(
                        "race-1".into(),
                        ExpectedVersion::NoStream,
                        vec![event(base + i, 0)],
                    ))
                    .await
            })
        })
        .collect();
    let mut winners = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(receipt) => {
                winners += 1;
                assert_eq!(receipt.version_of(&"race-1".into()), Some(1));
            }
            Err(StoreError::Conflict {
                actual: 1,
                expected: ExpectedVersion::NoStream,
                ..
            }) => {}
            Err(other) => panic!("a lost race must be a conflict, got {other:?}"),
        }
    }
    assert_eq!(winners, 1);
    assert_eq!(store.stream_version(&"race-1".into()).await.unwrap(), 1);
    drop_schema(&store).await;
}

#[tokio::test]
async fn malformed_input_is_refused_with_invalid_batch_and_leaves_nothing_behind() {
    let store = fresh_store("malformed").await;
    let base = id_base();
    let mut not_json = event(base, 0);
    not_json.payload = Payload::from_json_text("{not json");
    let refused = store
        .append(AppendBatch::single(
            "bad-1".into(),
            ExpectedVersion::Any,
            vec![not_json],
        ))
        .await;
    assert!(
        matches!(refused, Err(StoreError::InvalidBatch(_))),
        "{refused:?}"
    );

    let too_many: Vec<NewEvent> = (0..=MAX_EVENTS_PER_TRANSACTION as u128)
        .map(|i| event(base + 1 + i, 0))
        .collect();
    let refused = store
        .append(AppendBatch::single(
            "bad-1".into(),
            ExpectedVersion::Any,
            too_many,
        ))
        .await;
    assert!(
        matches!(refused, Err(StoreError::InvalidBatch(ref why)) if why.contains("65535")),
        "{refused:?}"
    );

    assert_eq!(store.stream_version(&"bad-1".into()).await.unwrap(), 0);
    drop_schema(&store).await;
}
