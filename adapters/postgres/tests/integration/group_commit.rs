//! Group commit (`adapters/postgres/src/group.rs`): concurrent appends share a transaction,
//! and every caller still gets exactly the outcome a lone append would give it.
//!
//! Tests that need a particular group set `max_group_size` to the number of callers and a
//! long `max_wait`: the committer then waits until every caller has queued, and the callers
//! are polled in order from one task (`join_all`), so the queue order is the call order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use reprise_core::{
    AppendBatch, AppendReceipt, EventId, EventStore, ExpectedVersion, NewEvent, Payload,
    StoreError, StreamId,
};
use reprise_postgres::{GroupCommit, PgEventStore};

use crate::support::{config, connect, drop_schema, event, id_base};

/// A store whose committer waits (up to `wait`) for `size` callers before committing.
async fn grouping_store(test: &str, size: usize, wait: Duration) -> PgEventStore {
    connect(config(test).with_group_commit(size, wait)).await
}

/// The default configuration with group commit turned on (it is off by default).
fn on(mut config: reprise_postgres::PgConfig) -> reprise_postgres::PgConfig {
    config.group_commit = GroupCommit::on();
    config
}

fn single(stream: &str, expected: ExpectedVersion, ids: &[u128]) -> AppendBatch {
    AppendBatch::single(
        stream.into(),
        expected,
        ids.iter().map(|&id| event(id, 1)).collect(),
    )
}

async fn transactions(store: &PgEventStore) -> i64 {
    sqlx::query_scalar("SELECT count(DISTINCT transaction_id) FROM events")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_to_distinct_streams_share_transactions_and_get_gap_free_positions() {
    const CALLERS: usize = 48;
    let store = connect(on(config("group_distinct"))).await;
    assert_eq!(store.config().group_commit, GroupCommit::on());
    let base = id_base();
    let barrier = Arc::new(tokio::sync::Barrier::new(CALLERS));
    let tasks: Vec<_> = (0..CALLERS)
        .map(|c| {
            let store = store.clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                let n = c % 3 + 1;
                let ids: Vec<u128> = (0..n).map(|i| base + (c * 10 + i) as u128).collect();
                let stream = format!("distinct-{c}");
                barrier.wait().await;
                let receipt = store
                    .append(single(&stream, ExpectedVersion::NoStream, &ids))
                    .await
                    .unwrap();
                (stream, ids, receipt)
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }

    let total: usize = results.iter().map(|(_, ids, _)| ids.len()).sum();
    // `read_all` returns a safe prefix: other tests' open transactions (the horizon is
    // cluster-wide) may hold the rest back for a while.
    let mut all = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while all.len() < total && Instant::now() < deadline {
        let from = all
            .last()
            .map_or(0, |e: &reprise_core::RecordedEvent| e.position + 1);
        all.extend(store.read_all(from, usize::MAX).await.unwrap());
    }
    assert_eq!(all.len(), total, "every event committed and readable");
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "distinct, increasing"
    );
    for (stream, ids, receipt) in &results {
        let read = store
            .read_stream(&StreamId::new(stream.as_str()), 1, 10)
            .await
            .unwrap();
        let read_ids: Vec<u128> = read.iter().map(|e| e.event_id.0).collect();
        assert_eq!(&read_ids, ids, "{stream}: its own events, in order");
        let versions: Vec<u64> = read.iter().map(|e| e.version).collect();
        assert_eq!(versions, (1..=ids.len() as u64).collect::<Vec<_>>());
        assert_eq!(
            receipt.version_of(&StreamId::new(stream.as_str())),
            Some(ids.len() as u64)
        );
        assert_eq!(receipt.last_position, read.last().unwrap().position);
        assert!(!receipt.was_duplicate);
    }

    let stats = store.group_commit_stats();
    let txs = transactions(&store).await;
    assert_eq!(stats.grouped_appends, CALLERS as u64, "{stats:?}");
    assert_eq!(stats.splits, 0, "{stats:?}");
    assert!(
        stats.groups < CALLERS as u64 && stats.largest_group > 1,
        "{CALLERS} concurrent appends should share groups: {stats:?}"
    );
    assert_eq!(
        i64::try_from(stats.groups).unwrap(),
        txs,
        "one transaction per group"
    );
    drop_schema(&store).await;
}

#[tokio::test]
async fn a_conflicting_caller_gets_its_conflict_and_the_rest_of_its_group_commits() {
    let store = grouping_store("group_conflict", 3, Duration::from_secs(5)).await;
    let base = id_base();
    // Set-up appends wait for a full group too: send them as one group of three.
    let setup = join_all([
        store.append(single("c-a", ExpectedVersion::NoStream, &[base + 1])),
        store.append(single(
            "c-b",
            ExpectedVersion::NoStream,
            &[base + 2, base + 3],
        )),
        store.append(single("c-x", ExpectedVersion::NoStream, &[base + 4])),
    ])
    .await;
    assert!(setup.iter().all(Result::is_ok), "{setup:?}");

    let outcomes = join_all([
        store.append(single("c-a", ExpectedVersion::Exact(1), &[base + 10])),
        store.append(single("c-b", ExpectedVersion::Exact(1), &[base + 11])),
        store.append(single("c-c", ExpectedVersion::NoStream, &[base + 12])),
    ])
    .await;
    assert_eq!(outcomes[0].as_ref().unwrap().stream_versions[0].1, 2);
    assert_eq!(
        outcomes[1],
        Err(StoreError::Conflict {
            stream: "c-b".into(),
            expected: ExpectedVersion::Exact(1),
            actual: 2,
        })
    );
    assert_eq!(outcomes[2].as_ref().unwrap().stream_versions[0].1, 1);
    assert_eq!(store.stream_version(&"c-b".into()).await.unwrap(), 2);
    let b = store.read_stream(&"c-b".into(), 1, 10).await.unwrap();
    assert!(
        b.iter().all(|e| e.event_id != EventId(base + 11)),
        "nothing of the loser"
    );

    let stats = store.group_commit_stats();
    assert_eq!(
        (
            stats.groups,
            stats.grouped_appends,
            stats.largest_group,
            stats.splits
        ),
        (2, 6, 3, 0),
        "the conflict was decided inside the group statement"
    );
    assert_eq!(transactions(&store).await, 2);
    drop_schema(&store).await;
}

#[tokio::test]
async fn duplicates_inside_a_group_are_acknowledged_and_partial_ones_refused() {
    let store = grouping_store("group_duplicate", 3, Duration::from_secs(5)).await;
    let base = id_base();
    let original = single("d-a", ExpectedVersion::NoStream, &[base + 1, base + 2]);
    let first = join_all([
        store.append(original.clone()),
        store.append(single("d-b", ExpectedVersion::NoStream, &[base + 3])),
        store.append(single("d-c", ExpectedVersion::NoStream, &[base + 4])),
    ])
    .await;
    let first_receipt = first[0].clone().unwrap();

    let outcomes = join_all([
        // A retry of a committed batch (its expectation no longer holds either).
        store.append(original),
        store.append(single("d-b", ExpectedVersion::Exact(1), &[base + 5])),
        // One known id, one new: a different batch.
        store.append(single(
            "d-c",
            ExpectedVersion::Exact(1),
            &[base + 4, base + 6],
        )),
    ])
    .await;
    let again = outcomes[0].clone().unwrap();
    assert!(again.was_duplicate);
    assert_eq!(
        (again.stream_versions.clone(), again.last_position),
        (first_receipt.stream_versions, first_receipt.last_position)
    );
    let fresh = outcomes[1].clone().unwrap();
    assert_eq!(
        (fresh.stream_versions[0].1, fresh.was_duplicate),
        (2, false)
    );
    assert!(
        matches!(outcomes[2], Err(StoreError::DuplicateEventId(_))),
        "{:?}",
        outcomes[2]
    );
    assert_eq!(store.stream_version(&"d-c".into()).await.unwrap(), 1);
    assert_eq!(store.stream_version(&"d-a".into()).await.unwrap(), 2);
    let stats = store.group_commit_stats();
    assert_eq!((stats.groups, stats.splits), (2, 0), "{stats:?}");
    drop_schema(&store).await;
}

#[tokio::test]
async fn callers_of_one_stream_never_share_a_group_and_see_sequential_outcomes() {
    let store = grouping_store("group_same_stream", 2, Duration::from_millis(200)).await;
    let base = id_base();
    store
        .append(single("s-1", ExpectedVersion::NoStream, &[base + 1]))
        .await
        .unwrap();
    let before = store.group_commit_stats();

    // v and v: the first queued wins, the second conflicts with the version it made.
    let outcomes = join_all([
        store.append(single("s-1", ExpectedVersion::Exact(1), &[base + 2])),
        store.append(single("s-1", ExpectedVersion::Exact(1), &[base + 3])),
    ])
    .await;
    assert_eq!(outcomes[0].as_ref().unwrap().stream_versions[0].1, 2);
    assert_eq!(
        outcomes[1],
        Err(StoreError::Conflict {
            stream: "s-1".into(),
            expected: ExpectedVersion::Exact(1),
            actual: 2,
        })
    );

    // v and v + 1, in order: chained across two groups, both commit.
    let outcomes = join_all([
        store.append(single("s-1", ExpectedVersion::Exact(2), &[base + 4])),
        store.append(single("s-1", ExpectedVersion::Exact(3), &[base + 5])),
    ])
    .await;
    assert_eq!(outcomes[0].as_ref().unwrap().stream_versions[0].1, 3);
    assert_eq!(outcomes[1].as_ref().unwrap().stream_versions[0].1, 4);

    let stats = store.group_commit_stats();
    assert_eq!(
        (
            stats.groups - before.groups,
            stats.largest_group,
            stats.splits
        ),
        (4, 1, 0),
        "each caller of s-1 in its own group: {stats:?}"
    );
    let ids: Vec<u128> = store
        .read_stream(&"s-1".into(), 1, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event_id.0 - base)
        .collect();
    assert_eq!(ids, [1, 2, 4, 5]);
    drop_schema(&store).await;
}

#[tokio::test]
async fn a_bad_batch_splits_its_group_and_fails_alone() {
    let store = grouping_store("group_bad_batch", 3, Duration::from_secs(5)).await;
    let base = id_base();
    let mut bad = event(base + 2, 1);
    bad.payload = Payload::from_json_text("{not json");
    let outcomes = join_all([
        store.append(single("b-1", ExpectedVersion::NoStream, &[base + 1])),
        store.append(AppendBatch::single(
            "b-2".into(),
            ExpectedVersion::NoStream,
            vec![bad],
        )),
        store.append(single("b-3", ExpectedVersion::NoStream, &[base + 3])),
    ])
    .await;
    assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
    assert!(
        matches!(outcomes[1], Err(StoreError::InvalidBatch(_))),
        "{:?}",
        outcomes[1]
    );
    assert_eq!(store.stream_version(&"b-2".into()).await.unwrap(), 0);
    let stats = store.group_commit_stats();
    assert_eq!((stats.groups, stats.splits), (0, 1), "{stats:?}");
    drop_schema(&store).await;
}

/// A stream locked by an open `append_in` transaction holds up the unrelated callers queued
/// with or behind it for `max_lock_wait` at most, not until that transaction ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_locked_outside_the_group_does_not_hold_up_the_others() {
    let store = connect(on(config("group_locked"))).await;
    let lock_wait = store.config().group_commit.max_lock_wait;
    let base = id_base();
    store
        .append(single("l-held", ExpectedVersion::NoStream, &[base + 1]))
        .await
        .unwrap();
    let mut held = store.begin().await.unwrap();
    store
        .append_in(
            &mut held,
            &single("l-held", ExpectedVersion::Exact(1), &[base + 2]),
        )
        .await
        .unwrap();

    let blocked = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append(single("l-held", ExpectedVersion::Any, &[base + 3]))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    let free = store
        .append(single("l-free", ExpectedVersion::NoStream, &[base + 4]))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited < lock_wait * 10 + Duration::from_secs(1),
        "an unrelated append waited {waited:?} behind a locked stream"
    );
    assert_eq!(free.stream_versions[0].1, 1);
    assert!(!blocked.is_finished(), "the locked stream's caller waits");

    held.commit().await.unwrap();
    let after = blocked.await.unwrap().unwrap();
    assert_eq!(after.stream_versions[0].1, 3);
    assert!(store.group_commit_stats().splits >= 1);
    drop_schema(&store).await;
}

/// The sequential model a group must agree with: per stream, callers take effect in the
/// order they queued.
#[derive(Default)]
struct Model {
    versions: BTreeMap<String, u64>,
    /// event id → (stream, version)
    stored: BTreeMap<u128, (String, u64)>,
}

#[derive(Debug, PartialEq)]
enum Expect {
    Committed(Vec<(StreamId, u64)>),
    Duplicate(Vec<(StreamId, u64)>),
    Conflict(String, u64),
    DuplicateEventId,
}

impl Model {
    fn apply(&mut self, batch: &AppendBatch) -> Expect {
        let ids: Vec<(u128, &str)> = batch
            .streams
            .iter()
            .flat_map(|s| s.events.iter().map(|e| (e.event_id.0, s.stream.as_str())))
            .collect();
        let known = ids
            .iter()
            .filter(|(id, _)| self.stored.contains_key(id))
            .count();
        if known > 0 {
            let same = ids
                .iter()
                .all(|(id, s)| self.stored.get(id).is_some_and(|(st, _)| st == s));
            if known < ids.len() || !same {
                return Expect::DuplicateEventId;
            }
            return Expect::Duplicate(
                batch
                    .streams
                    .iter()
                    .map(|s| {
                        let v = s
                            .events
                            .iter()
                            .map(|e| self.stored[&e.event_id.0].1)
                            .max()
                            .unwrap();
                        (s.stream.clone(), v)
                    })
                    .collect(),
            );
        }
        let mut sorted: Vec<_> = batch.streams.iter().collect();
        sorted.sort_by(|a, b| a.stream.cmp(&b.stream));
        for s in sorted {
            let current = self.versions.get(s.stream.as_str()).copied().unwrap_or(0);
            if !s.expected.admits(current) {
                return Expect::Conflict(s.stream.as_str().to_owned(), current);
            }
        }
        let mut versions = Vec::new();
        for s in &batch.streams {
            let v = self
                .versions
                .entry(s.stream.as_str().to_owned())
                .or_default();
            for e in &s.events {
                *v += 1;
                self.stored
                    .insert(e.event_id.0, (s.stream.as_str().to_owned(), *v));
            }
            versions.push((s.stream.clone(), *v));
        }
        Expect::Committed(versions)
    }
}

fn observed(outcome: &Result<AppendReceipt, StoreError>) -> Expect {
    match outcome {
        Ok(r) if r.was_duplicate => Expect::Duplicate(r.stream_versions.clone()),
        Ok(r) => Expect::Committed(r.stream_versions.clone()),
        Err(StoreError::Conflict { stream, actual, .. }) => {
            Expect::Conflict(stream.as_str().to_owned(), *actual)
        }
        Err(StoreError::DuplicateEventId(_)) => Expect::DuplicateEventId,
        Err(other) => panic!("unexpected outcome {other:?}"),
    }
}

/// Property: for random rounds of concurrent callers (shared streams, multi-stream
/// batches, stale and exact expectations, retries of committed batches, partly known
/// batches), every caller's outcome is the one a sequential model gives in queue order, and
/// the stored streams are the model's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_outcomes_match_a_sequential_model() {
    let store = connect(on(config("group_model"))).await;
    let base = id_base();
    let streams = ["m-a", "m-b", "m-c", "m-d", "m-e", "m-f"];
    let mut model = Model::default();
    let mut rng = SmallRng::seed_from_u64(0x6c0ffee);
    let mut next_id = base;
    let mut committed: Vec<AppendBatch> = Vec::new();
    let mut callers = 0;
    for _round in 0..40 {
        let mut batches = Vec::new();
        for _ in 0..rng.random_range(1..=12) {
            let roll = rng.random_range(0..100);
            if roll < 12 && !committed.is_empty() {
                // A retry of a committed batch.
                batches.push(committed[rng.random_range(0..committed.len())].clone());
                continue;
            }
            let mut batch = AppendBatch::default();
            for _ in 0..if roll < 30 { 2 } else { 1 } {
                let stream = streams[rng.random_range(0..streams.len())];
                if batch.streams.iter().any(|s| s.stream.as_str() == stream) {
                    continue;
                }
                let current = model.versions.get(stream).copied().unwrap_or(0);
                let expected = match rng.random_range(0..10) {
                    0 => ExpectedVersion::Any,
                    1 => ExpectedVersion::NoStream,
                    2 => ExpectedVersion::StreamExists,
                    3 => ExpectedVersion::Exact(current.saturating_sub(1)),
                    4 => ExpectedVersion::Exact(current + 1),
                    _ => ExpectedVersion::after(current),
                };
                let mut events: Vec<NewEvent> = (0..rng.random_range(1..=3))
                    .map(|_| {
                        next_id += 1;
                        event(next_id, 1)
                    })
                    .collect();
                if roll >= 95 && !committed.is_empty() {
                    // Part of an earlier batch: a different batch reusing a known id.
                    let old = &committed[rng.random_range(0..committed.len())];
                    events.push(old.streams[0].events[0].clone());
                }
                batch = batch.and(stream.into(), expected, events);
            }
            batches.push(batch);
        }
        let outcomes = join_all(batches.iter().map(|b| store.append(b.clone()))).await;
        for (batch, outcome) in batches.iter().zip(&outcomes) {
            let expect = model.apply(batch);
            assert_eq!(observed(outcome), expect, "batch {batch:?}");
            if matches!(expect, Expect::Committed(_)) {
                committed.push(batch.clone());
            }
            callers += 1;
        }
    }
    let mut seen = BTreeSet::new();
    for stream in streams {
        let read = store
            .read_stream(&stream.into(), 1, usize::MAX)
            .await
            .unwrap();
        let want: Vec<(u128, u64)> = model
            .stored
            .iter()
            .filter(|(_, (s, _))| s == stream)
            .map(|(id, (_, v))| (*id, *v))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect();
        let mut got: Vec<(u128, u64)> = read.iter().map(|e| (e.event_id.0, e.version)).collect();
        got.sort_unstable();
        assert_eq!(got, want, "{stream}");
        seen.extend(read.iter().map(|e| e.position));
    }
    assert_eq!(seen.len(), model.stored.len(), "positions are distinct");
    let stats = store.group_commit_stats();
    assert!(
        stats.groups < callers && stats.largest_group > 1,
        "the rounds exercised grouping: {stats:?}"
    );
    drop_schema(&store).await;
}
