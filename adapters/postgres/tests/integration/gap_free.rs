//! The global order is gap-free for readers: every committed event is seen exactly once, in
//! order, however commits interleave. First a deterministic reproduction of the hazard, then
//! a randomized stress run with rolled-back transactions.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use reprise_core::{AppendBatch, EventId, EventStore, ExpectedVersion, StreamId};
use reprise_postgres::{PgEventStore, SubscriptionOptions};
use uuid::Uuid;

use crate::support::{drop_schema, event, fresh_store, id_base};

async fn ids_in_global_order(store: &PgEventStore) -> Vec<EventId> {
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM events ORDER BY global_position")
        .fetch_all(store.pool())
        .await
        .unwrap();
    ids.into_iter().map(|u| EventId(u.as_u128())).collect()
}

/// Transaction A starts first (lower transaction id, hence lower positions) but commits after
/// B. A reader that trusted "highest position seen" would checkpoint past A and lose it.
#[tokio::test]
async fn a_transaction_that_commits_late_is_not_skipped() {
    let store = fresh_store("late_commit").await;
    let base = id_base();
    let mut a = store.begin().await.unwrap();
    store
        .append_in(
            &mut a,
            &AppendBatch::single(
                "late-a".into(),
                ExpectedVersion::NoStream,
                vec![event(base + 1, 1)],
            ),
        )
        .await
        .unwrap();
    let b = store
        .append(AppendBatch::single(
            "late-b".into(),
            ExpectedVersion::NoStream,
            vec![event(base + 2, 2)],
        ))
        .await
        .unwrap();

    // The hazard is real: B is committed, visible, and positioned after A's pending event.
    let naive: Vec<i64> =
        sqlx::query_scalar("SELECT global_position FROM events ORDER BY global_position")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(
        naive,
        [i64::try_from(b.last_position).unwrap()],
        "B is visible to a naive reader"
    );

    // The store's reader holds B back while A may still commit before it.
    let mut reader = store
        .subscribe(
            "late",
            SubscriptionOptions {
                listen: false,
                ..SubscriptionOptions::default()
            },
        )
        .await
        .unwrap();
    assert!(reader.poll().await.unwrap().is_empty(), "B must wait for A");

    a.commit().await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.extend(
            reader
                .next_batch()
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.event_id),
        );
    }
    assert_eq!(seen, [EventId(base + 1), EventId(base + 2)]);
    drop_schema(&store).await;
}

const WRITERS: u64 = 8;
const TRANSACTIONS_PER_WRITER: u64 = 40;

#[derive(Default)]
struct Ledger {
    committed: BTreeSet<EventId>,
    rolled_back: BTreeSet<EventId>,
}

async fn writer(store: PgEventStore, writer: u64, base: u128, ledger: Arc<Mutex<Ledger>>) {
    let mut rng = SmallRng::seed_from_u64(writer);
    let mut next_id = base + (u128::from(writer) << 24);
    for _ in 0..TRANSACTIONS_PER_WRITER {
        let mut batch = AppendBatch::default();
        for s in 0..rng.random_range(1..=2u64) {
            // Shared streams make writers contend for the same stream locks.
            let stream = StreamId::new(format!(
                "gap-{}",
                (writer + s * 3 + rng.random_range(0..3u64)) % 6
            ));
            if batch.streams.iter().any(|a| a.stream == stream) {
                continue;
            }
            let events = (0..rng.random_range(1..=4u64))
                .map(|n| {
                    next_id += 1;
                    event(next_id, n)
                })
                .collect();
            batch = batch.and(stream, ExpectedVersion::Any, events);
        }
        let ids: Vec<EventId> = batch
            .streams
            .iter()
            .flat_map(|s| s.events.iter().map(|e| e.event_id))
            .collect();
        match rng.random_range(0..100u32) {
            // Plain appends, each in its own transaction.
            0..55 => {
                store.append(batch).await.unwrap();
                ledger.lock().committed.extend(ids);
            }
            // Held open across other writers' commits, then committed: late commits.
            55..85 => {
                let mut tx = store.begin().await.unwrap();
                store.append_in(&mut tx, &batch).await.unwrap();
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..8))).await;
                tx.commit().await.unwrap();
                ledger.lock().committed.extend(ids);
            }
            // Written, held open, rolled back: must never be delivered.
            _ => {
                let mut tx = store.begin().await.unwrap();
                store.append_in(&mut tx, &batch).await.unwrap();
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..8))).await;
                tx.rollback().await.unwrap();
                ledger.lock().rolled_back.extend(ids);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_sees_every_committed_event_exactly_once_in_order_under_concurrent_writers() {
    let store = fresh_store("gap_free").await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let base = id_base();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(store.clone(), w, base, Arc::clone(&ledger))))
        .collect();

    // The reader runs while writers write, checkpoints after every batch and restarts from
    // its checkpoint every few batches, as a redeployed projection would.
    let options = SubscriptionOptions {
        batch_size: 7,
        poll_interval: Duration::from_millis(20),
        listen: true,
    };
    let mut reader = store.subscribe("gap-reader", options).await.unwrap();
    let mut seen: Vec<EventId> = Vec::new();
    let mut batches = 0u32;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done = writers.iter().all(tokio::task::JoinHandle::is_finished);
        if done && seen.len() >= ledger.lock().committed.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out: {} of {} committed events delivered",
            seen.len(),
            ledger.lock().committed.len()
        );
        let batch = reader.poll().await.unwrap();
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        seen.extend(batch.iter().map(|e| e.event_id));
        reader.checkpoint().await.unwrap();
        batches += 1;
        if batches % 10 == 0 {
            drop(reader);
            reader = store.subscribe("gap-reader", options).await.unwrap();
        }
    }
    // Anything beyond the committed set would show up now.
    seen.extend(reader.poll().await.unwrap().iter().map(|e| e.event_id));
    for w in writers {
        w.await.unwrap();
    }

    let truth = ids_in_global_order(&store).await;
    let ledger = std::mem::take(&mut *ledger.lock());
    assert!(
        !ledger.rolled_back.is_empty() && ledger.committed.len() > 200,
        "the workload exercised both paths"
    );
    assert_eq!(
        truth.iter().copied().collect::<BTreeSet<_>>(),
        ledger.committed,
        "the store holds exactly the committed events"
    );
    let unique: BTreeSet<EventId> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no event delivered twice");
    assert!(
        unique.is_disjoint(&ledger.rolled_back),
        "a rolled-back event was delivered"
    );
    assert_eq!(
        seen.len(),
        truth.len(),
        "missed {} committed events",
        truth.len().saturating_sub(seen.len())
    );
    assert_eq!(seen, truth, "delivery order is the global order");
    drop_schema(&store).await;
}

/// `read_all` (the `EventStore` trait method) waits a bounded time for an older open
/// transaction instead of answering "nothing new" or skipping ahead to later commits.
#[tokio::test]
async fn read_all_waits_briefly_for_an_older_open_transaction_and_never_skips_it() {
    let store = fresh_store("visibility_wait").await;
    let base = id_base();
    let start = store
        .read_all(1, usize::MAX)
        .await
        .unwrap()
        .last()
        .map_or(0, |e| e.position)
        + 1;

    // A stays open past the visibility wait: the safe answer is "nothing yet", not B.
    let mut a = store.begin().await.unwrap();
    store
        .append_in(
            &mut a,
            &AppendBatch::single(
                "vw-a".into(),
                ExpectedVersion::NoStream,
                vec![event(base + 1, 1)],
            ),
        )
        .await
        .unwrap();
    store
        .append(AppendBatch::single(
            "vw-b".into(),
            ExpectedVersion::NoStream,
            vec![event(base + 2, 2)],
        ))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let held = store.read_all(start, 10).await.unwrap();
    assert!(
        held.is_empty(),
        "B must not be returned while A may still commit before it: {held:?}"
    );
    let waited = started.elapsed();
    let wait = store.config().visibility_wait;
    assert!(
        waited >= wait && waited < wait * 5,
        "waited {waited:?} for a {wait:?} visibility wait"
    );

    // A commits while a reader is waiting: the reader returns both, A first.
    let reader = {
        let store = store.clone();
        tokio::spawn(async move { store.read_all(start, 10).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.commit().await.unwrap();
    let read = reader.await.unwrap().unwrap();
    let ids: Vec<EventId> = read.iter().map(|e| e.event_id).collect();
    assert_eq!(ids, [EventId(base + 1), EventId(base + 2)]);
    drop_schema(&store).await;
}
