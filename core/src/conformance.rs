//! The conformance suites: one set of checks, generic over the trait, that every
//! [`EventStore`] and [`EventBus`] implementation runs against itself — in-memory,
//! simulated, PostgreSQL, Kafka. An implementation that passes is interchangeable with
//! the others as far as the framework can tell.
//!
//! Each check is an async function returning `Err(description)` on a violation, so any
//! runtime can drive it. Stream and topic names are prefixed with `ns` so the suites can
//! run against a shared database or broker.

use std::sync::Arc;

use crate::event::{EventId, Metadata, NewEvent, Payload, StreamId};
use crate::event_bus::{EventBus, Headers, OutgoingMessage};
use crate::event_store::{AppendBatch, EventStore, ExpectedVersion, Snapshot, StoreError};

type Check = Result<(), String>;

fn ensure(condition: bool, what: impl FnOnce() -> String) -> Check {
    if condition { Ok(()) } else { Err(what()) }
}

fn event(id: u128, n: u64) -> NewEvent {
    NewEvent {
        event_id: EventId(id),
        event_type: "Tested".into(),
        schema_version: 1,
        payload: Payload::from_json_text(format!(r#"{{"n":{n}}}"#)),
        metadata: Metadata {
            correlation_id: Some(7),
            causation_id: Some(id),
            traceparent: None,
        },
    }
}

/// Ids unique per namespace, so reruns against a persistent store don't collide.
fn ids(ns: &str, base: u128) -> impl Fn(u128) -> u128 {
    let mut h: u128 = 0xcbf2_9ce4_8422_2325;
    for b in ns.bytes() {
        h = (h ^ u128::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    move |i| (h << 32) ^ (base << 16) ^ i
}

/// Every event-store check, in order. Stops at the first failure.
///
/// # Errors
/// The name of the failed check and what went wrong.
pub async fn event_store_suite(store: Arc<dyn EventStore>, ns: &str) -> Check {
    let checks: [(&str, u128); 7] = [
        ("append_and_read_back", 1),
        ("expected_version_conflicts", 2),
        ("atomic_multi_stream_batch", 3),
        ("idempotent_retry_of_a_committed_batch", 4),
        ("global_order_and_paging", 5),
        ("snapshots_round_trip", 6),
        ("malformed_batches_are_refused", 7),
    ];
    for (name, base) in checks {
        let id = ids(ns, base);
        let result = match name {
            "append_and_read_back" => append_and_read_back(&*store, ns, &id).await,
            "expected_version_conflicts" => expected_version_conflicts(&*store, ns, &id).await,
            "atomic_multi_stream_batch" => atomic_multi_stream_batch(&*store, ns, &id).await,
            "idempotent_retry_of_a_committed_batch" => idempotent_retry(&*store, ns, &id).await,
            "global_order_and_paging" => global_order_and_paging(&*store, ns, &id).await,
            "snapshots_round_trip" => snapshots_round_trip(&*store, ns).await,
            _ => malformed_batches_are_refused(&*store, ns, &id).await,
        };
        result.map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

async fn append_and_read_back(
    store: &dyn EventStore,
    ns: &str,
    id: &(dyn Fn(u128) -> u128 + Sync),
) -> Check {
    let stream = StreamId::new(format!("{ns}basic-1"));
    let receipt = store
        .append(AppendBatch::single(
            stream.clone(),
            ExpectedVersion::NoStream,
            vec![event(id(1), 1), event(id(2), 2)],
        ))
        .await
        .map_err(|e| format!("first append failed: {e}"))?;
    ensure(receipt.version_of(&stream) == Some(2), || {
        format!("receipt {receipt:?} should put the stream at v2")
    })?;
    ensure(!receipt.was_duplicate, || {
        "a first append is not a duplicate".into()
    })?;
    let read = store
        .read_stream(&stream, 1, 100)
        .await
        .map_err(|e| e.to_string())?;
    ensure(read.len() == 2, || {
        format!("read {} events, wrote 2", read.len())
    })?;
    ensure(read[0].version == 1 && read[1].version == 2, || {
        "versions are 1 and 2".into()
    })?;
    ensure(read[0].event_id == EventId(id(1)), || {
        "event ids round-trip".into()
    })?;
    ensure(
        read[1].payload.decode::<serde_json::Value>().ok() == Some(serde_json::json!({"n": 2})),
        || format!("payload round-trips, got {:?}", read[1].payload),
    )?;
    ensure(read[0].metadata.correlation_id == Some(7), || {
        format!("metadata round-trips, got {:?}", read[0].metadata)
    })?;
    ensure(read[0].position < read[1].position, || {
        "positions grow within a stream".into()
    })?;
    let tail = store
        .read_stream(&stream, 2, 100)
        .await
        .map_err(|e| e.to_string())?;
    ensure(tail.len() == 1 && tail[0].version == 2, || {
        format!("reading from v2 returns only v2, got {tail:?}")
    })?;
    let version = store
        .stream_version(&stream)
        .await
        .map_err(|e| e.to_string())?;
    ensure(version == 2, || {
        format!("stream_version is {version}, expected 2")
    })?;
    let absent = store
        .read_stream(&StreamId::new(format!("{ns}absent-1")), 1, 10)
        .await
        .map_err(|e| e.to_string())?;
    ensure(absent.is_empty(), || "an absent stream reads empty".into())
}

async fn expected_version_conflicts(
    store: &dyn EventStore,
    ns: &str,
    id: &(dyn Fn(u128) -> u128 + Sync),
) -> Check {
    let stream = StreamId::new(format!("{ns}occ-1"));
    store
        .append(AppendBatch::single(
            stream.clone(),
            ExpectedVersion::NoStream,
            vec![event(id(1), 1)],
        ))
        .await
        .map_err(|e| e.to_string())?;
    let again = store
        .append(AppendBatch::single(
            stream.clone(),
            ExpectedVersion::NoStream,
            vec![event(id(2), 2)],
        ))
        .await;
    ensure(
        matches!(&again, Err(StoreError::Conflict { actual: 1, .. })),
        || format!("NoStream on an existing stream must conflict at v1, got {again:?}"),
    )?;
    let stale = store
        .append(AppendBatch::single(
            stream.clone(),
            ExpectedVersion::Exact(0),
            vec![event(id(3), 3)],
        ))
        .await;
    ensure(matches!(stale, Err(StoreError::Conflict { .. })), || {
        format!("a stale exact version must conflict, got {stale:?}")
    })?;
    let conflict_is_not_transient = stale.as_ref().err().is_some_and(|e| !e.is_transient());
    ensure(conflict_is_not_transient, || {
        "a conflict must not be classified transient".into()
    })?;
    store
        .append(AppendBatch::single(
            stream.clone(),
            ExpectedVersion::Exact(1),
            vec![event(id(4), 4)],
        ))
        .await
        .map_err(|e| format!("the right version must succeed: {e}"))?;
    store
        .append(AppendBatch::single(
            stream.clone(),
            ExpectedVersion::Any,
            vec![event(id(5), 5)],
        ))
        .await
        .map_err(|e| format!("Any must succeed: {e}"))?;
    let exists = store
        .append(AppendBatch::single(
            StreamId::new(format!("{ns}occ-absent")),
            ExpectedVersion::StreamExists,
            vec![event(id(6), 6)],
        ))
        .await;
    ensure(
        matches!(exists, Err(StoreError::Conflict { actual: 0, .. })),
        || format!("StreamExists on an absent stream must conflict, got {exists:?}"),
    )?;
    let version = store
        .stream_version(&stream)
        .await
        .map_err(|e| e.to_string())?;
    ensure(version == 3, || {
        format!("after 3 accepted events the stream is at v{version}")
    })
}

async fn atomic_multi_stream_batch(
    store: &dyn EventStore,
    ns: &str,
    id: &(dyn Fn(u128) -> u128 + Sync),
) -> Check {
    let (a, b) = (
        StreamId::new(format!("{ns}atomic-a")),
        StreamId::new(format!("{ns}atomic-b")),
    );
    store
        .append(AppendBatch::single(
            b.clone(),
            ExpectedVersion::NoStream,
            vec![event(id(1), 1)],
        ))
        .await
        .map_err(|e| e.to_string())?;
    // b's expectation is wrong: nothing of the batch may land, not even a's events.
    let batch = AppendBatch::single(
        a.clone(),
        ExpectedVersion::NoStream,
        vec![event(id(2), 2), event(id(3), 3)],
    )
    .and(b.clone(), ExpectedVersion::NoStream, vec![event(id(4), 4)]);
    let failed = store.append(batch).await;
    ensure(matches!(failed, Err(StoreError::Conflict { .. })), || {
        format!("batch with a stale stream must conflict, got {failed:?}")
    })?;
    let a_events = store
        .read_stream(&a, 1, 10)
        .await
        .map_err(|e| e.to_string())?;
    ensure(a_events.is_empty(), || {
        format!("half a batch landed: {} events in {a}", a_events.len())
    })?;
    let batch = AppendBatch::single(a.clone(), ExpectedVersion::NoStream, vec![event(id(5), 5)])
        .and(b.clone(), ExpectedVersion::Exact(1), vec![event(id(6), 6)]);
    let receipt = store
        .append(batch)
        .await
        .map_err(|e| format!("a valid multi-stream batch must commit: {e}"))?;
    ensure(
        receipt.version_of(&a) == Some(1) && receipt.version_of(&b) == Some(2),
        || format!("receipt versions wrong: {receipt:?}"),
    )
}

async fn idempotent_retry(
    store: &dyn EventStore,
    ns: &str,
    id: &(dyn Fn(u128) -> u128 + Sync),
) -> Check {
    let stream = StreamId::new(format!("{ns}retry-1"));
    let batch = AppendBatch::single(
        stream.clone(),
        ExpectedVersion::NoStream,
        vec![event(id(1), 1), event(id(2), 2)],
    );
    let first = store
        .append(batch.clone())
        .await
        .map_err(|e| e.to_string())?;
    // The same batch again, as after a timeout whose write had in fact committed.
    let retry = store
        .append(batch)
        .await
        .map_err(|e| format!("retrying a committed batch must be acknowledged, got {e}"))?;
    ensure(retry.was_duplicate, || {
        "the retry must be flagged as a duplicate".into()
    })?;
    ensure(
        retry.version_of(&stream) == first.version_of(&stream),
        || format!("retry receipt {retry:?} differs from {first:?}"),
    )?;
    let read = store
        .read_stream(&stream, 1, 10)
        .await
        .map_err(|e| e.to_string())?;
    ensure(read.len() == 2, || {
        format!("a retry must not duplicate events: {} stored", read.len())
    })?;
    // Reusing one id in a *different* batch is an error, not a silent success.
    let other = AppendBatch::single(
        stream.clone(),
        ExpectedVersion::Exact(2),
        vec![event(id(2), 9), event(id(3), 3)],
    );
    let reused = store.append(other).await;
    ensure(
        matches!(reused, Err(StoreError::DuplicateEventId(_))),
        || format!("a partly known batch must fail with DuplicateEventId, got {reused:?}"),
    )
}

async fn global_order_and_paging(
    store: &dyn EventStore,
    ns: &str,
    id: &(dyn Fn(u128) -> u128 + Sync),
) -> Check {
    let start = store
        .read_all(1, usize::MAX)
        .await
        .map_err(|e| e.to_string())?
        .last()
        .map_or(0, |e| e.position);
    for i in 0..10u64 {
        let stream = StreamId::new(format!("{ns}order-{}", i % 3));
        store
            .append(AppendBatch::single(
                stream,
                ExpectedVersion::Any,
                vec![event(id(u128::from(i)), i)],
            ))
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut seen = Vec::new();
    let mut from = start + 1;
    loop {
        let page = store.read_all(from, 3).await.map_err(|e| e.to_string())?;
        ensure(page.len() <= 3, || {
            format!("limit 3 returned {}", page.len())
        })?;
        let Some(last) = page.last() else { break };
        from = last.position + 1;
        seen.extend(page);
    }
    let ours: Vec<_> = seen
        .iter()
        .filter(|e| e.stream.as_str().starts_with(&format!("{ns}order-")))
        .collect();
    ensure(ours.len() == 10, || {
        format!("paging saw {} of our 10 events", ours.len())
    })?;
    ensure(
        seen.windows(2).all(|w| w[0].position < w[1].position),
        || "positions must strictly increase".into(),
    )?;
    let ns_ids: Vec<u64> = ours
        .iter()
        .filter_map(|e| e.payload.decode::<serde_json::Value>().ok()?["n"].as_u64())
        .collect();
    ensure(ns_ids == (0..10).collect::<Vec<_>>(), || {
        format!("global order must be commit order, got {ns_ids:?}")
    })
}

async fn snapshots_round_trip(store: &dyn EventStore, ns: &str) -> Check {
    let stream = StreamId::new(format!("{ns}snap-1"));
    let none = store
        .load_snapshot(&stream)
        .await
        .map_err(|e| e.to_string())?;
    ensure(none.is_none(), || "no snapshot before one is saved".into())?;
    for version in [5, 10] {
        let snapshot = Snapshot {
            stream: stream.clone(),
            version,
            schema_version: 2,
            state: Payload::from_json_text(format!(r#"{{"v":{version}}}"#)),
        };
        store
            .save_snapshot(snapshot)
            .await
            .map_err(|e| e.to_string())?;
    }
    let loaded = store
        .load_snapshot(&stream)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("snapshot missing")?;
    ensure(loaded.version == 10 && loaded.schema_version == 2, || {
        format!("latest snapshot wins, got {loaded:?}")
    })?;
    ensure(
        loaded.state.decode::<serde_json::Value>().ok() == Some(serde_json::json!({"v": 10})),
        || format!("state round-trips, got {:?}", loaded.state),
    )
}

async fn malformed_batches_are_refused(
    store: &dyn EventStore,
    ns: &str,
    id: &(dyn Fn(u128) -> u128 + Sync),
) -> Check {
    let stream = StreamId::new(format!("{ns}bad-1"));
    let empty = store.append(AppendBatch::default()).await;
    ensure(matches!(empty, Err(StoreError::InvalidBatch(_))), || {
        format!("an empty batch is invalid, got {empty:?}")
    })?;
    let twice = AppendBatch::single(stream.clone(), ExpectedVersion::Any, vec![event(id(1), 1)])
        .and(stream.clone(), ExpectedVersion::Any, vec![event(id(2), 2)]);
    let twice = store.append(twice).await;
    ensure(matches!(twice, Err(StoreError::InvalidBatch(_))), || {
        format!("a stream twice in a batch is invalid, got {twice:?}")
    })?;
    let version = store
        .stream_version(&stream)
        .await
        .map_err(|e| e.to_string())?;
    ensure(version == 0, || {
        "refused batches leave nothing behind".into()
    })
}

fn message(topic: &str, key: &str, n: u64) -> OutgoingMessage {
    OutgoingMessage {
        topic: topic.into(),
        key: key.into(),
        payload: Payload::from_json_text(format!(r#"{{"n":{n}}}"#)),
        headers: Headers::default().with("reprise-event-id", n.to_string()),
    }
}

/// Every event-bus check. Topics are `{ns}…`; the implementation must create topics on
/// first publish or subscribe (or the caller pre-creates `{ns}orders` and `{ns}redelivery`).
///
/// # Errors
/// The name of the failed check and what went wrong.
pub async fn event_bus_suite(bus: Arc<dyn EventBus>, ns: &str) -> Check {
    per_key_order(&*bus, ns)
        .await
        .map_err(|e| format!("per_key_order: {e}"))?;
    uncommitted_work_is_redelivered(&*bus, ns)
        .await
        .map_err(|e| format!("uncommitted_work_is_redelivered: {e}"))
}

async fn per_key_order(bus: &dyn EventBus, ns: &str) -> Check {
    let topic = format!("{ns}orders");
    let mut sub = bus
        .subscribe(&format!("{ns}order-group"), &[&topic])
        .await
        .map_err(|e| e.to_string())?;
    let messages: Vec<_> = (0..20)
        .map(|n| message(&topic, &format!("key-{}", n % 4), n))
        .collect();
    bus.publish(messages).await.map_err(|e| e.to_string())?;
    let mut by_key: std::collections::BTreeMap<String, Vec<u64>> =
        std::collections::BTreeMap::new();
    for _ in 0..20 {
        let d = sub.next().await.map_err(|e| e.to_string())?;
        let n = d
            .payload
            .decode::<serde_json::Value>()
            .map_err(|e| e.to_string())?["n"]
            .as_u64()
            .ok_or("no n")?;
        ensure(
            d.headers.get("reprise-event-id") == Some(n.to_string().as_str()),
            || "headers round-trip".into(),
        )?;
        by_key.entry(d.key.to_string()).or_default().push(n);
        sub.ack(&d);
    }
    sub.commit().await.map_err(|e| e.to_string())?;
    for (key, ns_seen) in &by_key {
        ensure(ns_seen.windows(2).all(|w| w[0] < w[1]), || {
            format!("key {key} out of order: {ns_seen:?}")
        })?;
    }
    ensure(by_key.values().map(Vec::len).sum::<usize>() == 20, || {
        "all 20 delivered".into()
    })
}

async fn uncommitted_work_is_redelivered(bus: &dyn EventBus, ns: &str) -> Check {
    let topic = format!("{ns}redelivery");
    let group = format!("{ns}redelivery-group");
    let mut first = bus
        .subscribe(&group, &[&topic])
        .await
        .map_err(|e| e.to_string())?;
    bus.publish((0..4).map(|n| message(&topic, "one-key", n)).collect())
        .await
        .map_err(|e| e.to_string())?;
    // Handle 0 and 1, commit; take 2 but crash before acknowledging it.
    for _ in 0..2 {
        let d = first.next().await.map_err(|e| e.to_string())?;
        first.ack(&d);
    }
    first.commit().await.map_err(|e| e.to_string())?;
    let _unacked = first.next().await.map_err(|e| e.to_string())?;
    drop(first);
    let mut second = bus
        .subscribe(&group, &[&topic])
        .await
        .map_err(|e| e.to_string())?;
    let d = second.next().await.map_err(|e| e.to_string())?;
    let n = d
        .payload
        .decode::<serde_json::Value>()
        .map_err(|e| e.to_string())?["n"]
        .as_u64();
    ensure(n == Some(2), || {
        format!(
            "after a crash the next consumer resumes at the first unacknowledged message (2), got {n:?}"
        )
    })
}

/// Every dead-letter-queue check. Letters use topics `{ns}…`, so the suite can run against
/// a shared database or broker; `now` stamps resolutions. The queue may hold other
/// letters, but none on the suite's topics.
///
/// # Errors
/// The name of the failed check and what went wrong.
pub async fn dead_letter_queue_suite(
    queue: &dyn crate::resilience::DeadLetterQueue,
    ns: &str,
    now: crate::Timestamp,
) -> Check {
    dead_letters_round_trip(queue, ns, now)
        .await
        .map_err(|e| format!("dead_letters_round_trip: {e}"))?;
    dead_letters_resolve_once(queue, ns, now)
        .await
        .map_err(|e| format!("dead_letters_resolve_once: {e}"))?;
    dead_letters_refuse_bad_letters(queue, ns, now)
        .await
        .map_err(|e| format!("dead_letters_refuse_bad_letters: {e}"))
}

fn letter(
    ns: &str,
    topic: &str,
    n: u64,
    now: crate::Timestamp,
) -> crate::resilience::NewDeadLetter {
    crate::resilience::NewDeadLetter {
        topic: format!("{ns}{topic}"),
        source_position: Some(format!("0/{n}")),
        key: format!("key-{n}"),
        payload: Payload::from_json_text(format!(r#"{{"n":{n}}}"#)),
        headers: Headers::default()
            .with("reprise-event-id", n.to_string())
            .with("x-dup", "a"),
        error: format!("handler failed on {n}: \"quoted\" ünïcode"),
        error_class: crate::resilience::ErrorClass::Transient,
        attempts: u32::try_from(n % 5 + 1).unwrap_or(1),
        failed_at: now - std::time::Duration::from_secs(100 - n),
    }
}

async fn dead_letters_round_trip(
    queue: &dyn crate::resilience::DeadLetterQueue,
    ns: &str,
    now: crate::Timestamp,
) -> Check {
    use crate::resilience::{DeadLetterQuery, DeadLetterStatus};
    let before = queue.stats().await.map_err(|e| e.to_string())?;
    let written: Vec<_> = (0..3).map(|n| letter(ns, "payments", n, now)).collect();
    let mut ids = Vec::new();
    for l in &written {
        ids.push(queue.put(l.clone()).await.map_err(|e| e.to_string())?);
    }
    ensure(ids.windows(2).all(|w| w[0] != w[1]), || {
        format!("ids are distinct: {ids:?}")
    })?;
    let query = DeadLetterQuery {
        topic: Some(format!("{ns}payments")),
        ..DeadLetterQuery::default()
    };
    let listed = queue.list(query.clone()).await.map_err(|e| e.to_string())?;
    ensure(listed.len() == 3, || {
        format!("3 listed, got {}", listed.len())
    })?;
    for ((got, id), want) in listed.iter().zip(&ids).zip(&written) {
        ensure(&got.id == id, || {
            format!("oldest first: {:?} vs {id}", got.id)
        })?;
        ensure(&got.letter == want, || {
            format!(
                "letter round-trips exactly:\n got {:?}\nwant {want:?}",
                got.letter
            )
        })?;
        ensure(got.status == DeadLetterStatus::Pending, || {
            "new letters are pending".into()
        })?;
    }
    let limited = queue
        .list(DeadLetterQuery { limit: 2, ..query })
        .await
        .map_err(|e| e.to_string())?;
    ensure(limited.len() == 2 && limited[0].id == ids[0], || {
        "limit keeps the oldest".into()
    })?;
    let fetched = queue.get(&ids[1]).await.map_err(|e| e.to_string())?;
    ensure(
        fetched.as_ref().map(|l| &l.letter) == Some(&written[1]),
        || "get by id".into(),
    )?;
    let stats = queue.stats().await.map_err(|e| e.to_string())?;
    ensure(stats.pending == before.pending + 3, || {
        format!("pending grew by 3: {before:?} → {stats:?}")
    })?;
    ensure(
        stats
            .oldest_pending_failed_at
            .is_some_and(|oldest| oldest <= written[0].failed_at),
        || format!("oldest pending is at most the oldest written: {stats:?}"),
    )
}

async fn dead_letters_resolve_once(
    queue: &dyn crate::resilience::DeadLetterQueue,
    ns: &str,
    now: crate::Timestamp,
) -> Check {
    use crate::resilience::{DeadLetterError, DeadLetterQuery, DeadLetterStatus, Resolution};
    let retried = queue
        .put(letter(ns, "shipping", 10, now))
        .await
        .map_err(|e| e.to_string())?;
    let discarded = queue
        .put(letter(ns, "shipping", 11, now))
        .await
        .map_err(|e| e.to_string())?;
    queue
        .resolve(&retried, Resolution::Retried, now)
        .await
        .map_err(|e| e.to_string())?;
    queue
        .resolve(&discarded, Resolution::Discarded, now)
        .await
        .map_err(|e| e.to_string())?;
    let again = queue.resolve(&retried, Resolution::Discarded, now).await;
    ensure(
        matches!(again, Err(DeadLetterError::AlreadyResolved { .. })),
        || format!("a second resolution is refused, got {again:?}"),
    )?;
    let query = DeadLetterQuery {
        topic: Some(format!("{ns}shipping")),
        ..DeadLetterQuery::default()
    };
    let pending = queue.list(query.clone()).await.map_err(|e| e.to_string())?;
    ensure(pending.is_empty(), || {
        format!("resolved letters are not pending: {pending:?}")
    })?;
    let all = queue
        .list(DeadLetterQuery {
            include_resolved: true,
            ..query
        })
        .await
        .map_err(|e| e.to_string())?;
    let statuses: Vec<_> = all.iter().map(|l| l.status).collect();
    ensure(
        statuses
            == vec![
                DeadLetterStatus::Retried { at: now },
                DeadLetterStatus::Discarded { at: now },
            ],
        || format!("resolutions are kept for the record: {statuses:?}"),
    )?;
    let unknown = crate::resilience::DeadLetterId(format!("{ns}no-such-letter"));
    let missing = queue.resolve(&unknown, Resolution::Retried, now).await;
    ensure(matches!(missing, Err(DeadLetterError::NotFound(_))), || {
        format!("resolving an unknown id is NotFound, got {missing:?}")
    })?;
    let got = queue.get(&unknown).await;
    ensure(matches!(got, Ok(None)), || {
        format!("get of an unknown id is None, got {got:?}")
    })
}

async fn dead_letters_refuse_bad_letters(
    queue: &dyn crate::resilience::DeadLetterQueue,
    ns: &str,
    now: crate::Timestamp,
) -> Check {
    use crate::resilience::{DeadLetterError, ErrorClass};
    let mut conflict = letter(ns, "orders", 20, now);
    conflict.error_class = ErrorClass::Conflict;
    let refused = queue.put(conflict).await;
    ensure(matches!(refused, Err(DeadLetterError::Invalid(_))), || {
        format!("a conflict is never dead-lettered, got {refused:?}")
    })?;
    let mut no_topic = letter(ns, "orders", 21, now);
    no_topic.topic.clear();
    let refused = queue.put(no_topic).await;
    ensure(matches!(refused, Err(DeadLetterError::Invalid(_))), || {
        format!("a letter without a topic cannot be redelivered, got {refused:?}")
    })
}

/// Every lease check. `contender()` must return a *new* contender for one lease name
/// each time (for PostgreSQL: a new session), so the suite can make two compete; `pause`
/// waits a little on the implementation's clock (a dropped session may take a moment to
/// free its lease).
///
/// # Errors
/// The name of the failed check and what went wrong.
pub async fn lease_suite<P, F>(
    contender: &(dyn Fn() -> Arc<dyn crate::Lease> + Send + Sync),
    pause: P,
) -> Check
where
    P: Fn() -> F + Send + Sync,
    F: std::future::Future<Output = ()> + Send,
{
    use crate::lease::LeaseError;
    let first = contender();
    let second = contender();
    ensure(first.name() == second.name(), || {
        format!(
            "contenders of one lease share its name: {} vs {}",
            first.name(),
            second.name()
        )
    })?;
    // one_holder_at_a_time
    let mut leader = first
        .try_acquire()
        .await
        .map_err(|e| format!("one_holder_at_a_time: first acquire: {e}"))?
        .ok_or("one_holder_at_a_time: a free lease was not granted")?;
    let rival = second
        .try_acquire()
        .await
        .map_err(|e| format!("one_holder_at_a_time: second acquire: {e}"))?;
    ensure(rival.is_none(), || {
        "one_holder_at_a_time: a held lease was granted to a second contender".into()
    })?;
    let again = first
        .try_acquire()
        .await
        .map_err(|e| format!("one_holder_at_a_time: re-acquire: {e}"))?;
    ensure(again.is_none(), || {
        "one_holder_at_a_time: a held lease was granted twice to its own holder".into()
    })?;
    leader
        .confirm()
        .await
        .map_err(|e| format!("one_holder_at_a_time: the holder's confirm failed: {e}"))?;
    // release_hands_over
    leader.release().await;
    let mut successor = None;
    for _ in 0..100 {
        match second.try_acquire().await {
            Ok(Some(held)) => {
                successor = Some(held);
                break;
            }
            Ok(None) | Err(LeaseError::Transient(_)) => pause().await,
            Err(e) => return Err(format!("release_hands_over: {e}")),
        }
    }
    let mut successor =
        successor.ok_or("release_hands_over: a released lease was never granted again")?;
    successor
        .confirm()
        .await
        .map_err(|e| format!("release_hands_over: the successor's confirm failed: {e}"))?;
    // a_dropped_holder_frees_the_lease (a crashed process)
    drop(successor);
    let mut taken = None;
    for _ in 0..100 {
        match first.try_acquire().await {
            Ok(Some(held)) => {
                taken = Some(held);
                break;
            }
            Ok(None) | Err(LeaseError::Transient(_)) => pause().await,
            Err(e) => return Err(format!("a_dropped_holder_frees_the_lease: {e}")),
        }
    }
    let taken = taken.ok_or("a_dropped_holder_frees_the_lease: a dropped holder kept the lease")?;
    taken.release().await;
    Ok(())
}
