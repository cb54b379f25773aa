//! Group commit: concurrent `append` calls are committed together, in one statement (one
//! transaction, one round trip, one WAL flush), while each caller still gets its own
//! outcome — its receipt, its `Conflict`, its duplicate acknowledgement.
//!
//! # Why
//!
//! An append is one autocommit statement (`append.rs`), so its cost is a round trip plus a
//! commit. Under CPU contention every round trip is a scheduling delay on both sides, and
//! every commit is a WAL flush; concurrent appenders on separate connections share flushes
//! only by luck. Measured earlier, that put a ceiling of about 1 100 single-event appends/s
//! on this machine whatever the number of writers. Here the appenders of one store queue
//! up and one committer writes everything that queued while its previous group was in
//! flight: N appends cost one round trip and one flush.
//!
//! # The queue
//!
//! `append` puts its batch and a reply channel on the queue; if no committer is running it
//! spawns one (on the caller's runtime, so a store works from any runtime and no task
//! outlives its work). The committer takes a group off the queue, commits it, answers
//! every caller, and repeats until the queue is empty. With `max_wait = 0` (the default)
//! it never waits: a lone caller pays one channel hop and a task wake-up, microseconds,
//! and under load the group is whatever arrived during the previous commit — the classic
//! group commit. Up to `max_groups_in_flight` groups (default 2) commit at once, each on
//! its own connection of the store's pool and on streams no other group in flight
//! touches: with a single group in flight, 8 writers on this 2-core machine measured
//! *slower* than 8 independent appends (groups averaged 4 callers and the server's second
//! core and the WAL flush sat idle while one statement ran). A caller that finds a free
//! slot starts a group at once, so at low concurrency appends run in parallel as before;
//! once every slot is busy, callers queue and the next groups take them in bulk.
//!
//! A caller that gave up (its operation timed out, its future was dropped) already holds
//! `Timeout` — outcome unknown — so its request is dropped instead of committed.
//!
//! # One statement, an outcome per caller
//!
//! Savepoints per caller would give each caller its own rollback, but cost three round
//! trips per caller (`SAVEPOINT`, the statement, `RELEASE`) plus `BEGIN`/`COMMIT`: more
//! than appending separately. Instead the group statement ([`GROUP_SQL`]) decides every
//! caller before writing anything, all in one snapshot:
//!
//! 1. read the version of every stream of the group and check each caller's expectations
//!    against it; look up every event id of the group in `events`;
//! 2. a caller *wins* when all its expectations hold and none of its event ids is stored;
//!    losers are excluded, nothing of theirs is written;
//! 3. upsert the winners' `streams` rows in stream-id order (row locks, the same order as
//!    a single append, so groups and single appends cannot deadlock) adding their counts;
//! 4. guard: the version each winner's row had when locked must be the version checked in
//!    step 1. Another transaction (another process, an `append_in`) may have committed in
//!    between; then the statement aborts with `RP409` and the group is split (below);
//! 5. insert all winners' events with one `INSERT .. SELECT FROM unnest(..)`, positions
//!    `(xid << 16) + n` in group order (at most 65 535 events per group).
//!
//! The statement is atomic: a crash leaves the whole group or nothing, never part of a
//! caller's batch. After it commits, each loser gets its answer: a caller whose ids were
//! found is looked up as `append.rs` does for a retry (`was_duplicate` receipt, or
//! `DuplicateEventId` for a different batch); any other loser gets `Conflict` with the
//! version its stream had. Both are linearizable: the conflict or the duplicate held in the
//! snapshot the group read, which lies within the caller's call.
//!
//! **No in-group chaining**: two callers touching the same stream (or sharing an event id)
//! never go into one group. The later one stays queued for the next group, so callers of
//! one stream see exactly what sequential appends would give them: `v` then `v` — the
//! second conflicts; `v` then `v + 1` — both commit. Chaining inside the statement would
//! have to replay expectations in order, which SQL cannot express set-wise; and a hot
//! stream gains nothing from grouping anyway, since its writers serialise on its row lock.
//!
//! # When the statement fails
//!
//! - A data error (class 22: a payload that is not JSON; class 23: a unique violation from
//!   a concurrent writer of the same id or version, the version-gap trigger), the guard's
//!   `RP409`, or a lock wait beyond `max_lock_wait` (55P03: the statement sets its own
//!   `lock_timeout`, so one stream locked by an open `append_in` transaction holds up the
//!   other callers of its group that long at most): nothing was committed, and one caller's batch or stream may be to blame.
//!   The group is **split**: each caller's batch runs as its own single append on the
//!   store's pool (concurrently, as separate tasks, so a locked stream holds up only its
//!   own caller), and each gets exactly the answer a single append gives.
//! - The connection broke while the statement was in flight: the group's outcome is
//!   unknown, every caller gets `Timeout` (retrying the same batch is answered by
//!   idempotency).
//! - Anything else (statement timeout, deadlock, server shutting down): nothing committed,
//!   every caller gets the classified error, as a single append would.
//!
//! Metrics: `reprise_pg_append_groups_total` (groups committed by the group statement),
//! `reprise_pg_append_group_size` (callers per group), `reprise_pg_append_group_splits_total`.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use reprise_core::{AppendBatch, AppendReceipt, StoreError};
use sqlx::{PgConnection, Row};
use tokio::sync::{Notify, oneshot};
use uuid::Uuid;

use crate::MAX_EVENTS_PER_TRANSACTION;
use crate::append::{already_committed, diagnose, expectation_columns, write_batch};
use crate::config::GroupCommit;
use crate::error::{classify, classify_commit, database_error, sqlstate};
use crate::pool::InstrumentedPool;
use crate::rows::{to_i64, to_u64};

/// Counter: groups committed by the group statement. Labels: `schema`.
pub const APPEND_GROUPS: &str = "reprise_pg_append_groups_total";
/// Histogram: callers per committed group. Labels: `schema`.
pub const APPEND_GROUP_SIZE: &str = "reprise_pg_append_group_size";
/// Counter: groups split into single appends after their statement failed. Labels: `schema`.
pub const APPEND_GROUP_SPLITS: &str = "reprise_pg_append_group_splits_total";

/// Counts since the store was connected, for tests and health endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Groups committed by the group statement.
    pub groups: u64,
    /// Appends (callers) those groups carried.
    pub grouped_appends: u64,
    /// The most callers one group carried.
    pub largest_group: u64,
    /// Groups split into single appends (see the module docs).
    pub splits: u64,
}

type Reply = oneshot::Sender<Result<AppendReceipt, StoreError>>;

struct Request {
    batch: AppendBatch,
    reply: Reply,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Request>,
    /// Committer tasks running (each empties the queue of what it may take, then stops).
    running: usize,
    /// Streams of the groups being committed: a request touching one waits for the next
    /// group, so one stream is never in two groups at once.
    in_flight: HashSet<String>,
}

/// The queue and committer of one store.
pub(crate) struct GroupCommitter {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for GroupCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommitter")
            .field("settings", &self.shared.settings)
            .field("stats", &self.shared.stats())
            .finish_non_exhaustive()
    }
}

struct Shared {
    queue: Mutex<Queue>,
    arrived: Notify,
    /// The store's pool: groups and split groups' single appends take their connections
    /// from it, so `max_connections` and the pool metrics cover them.
    pool: Arc<InstrumentedPool>,
    settings: GroupCommit,
    operation_timeout: Duration,
    schema: String,
    groups: AtomicU64,
    grouped_appends: AtomicU64,
    largest_group: AtomicU64,
    splits: AtomicU64,
}

impl GroupCommitter {
    pub(crate) fn new(
        pool: Arc<InstrumentedPool>,
        settings: GroupCommit,
        operation_timeout: Duration,
        schema: String,
    ) -> Self {
        GroupCommitter {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                arrived: Notify::new(),
                pool,
                settings,
                operation_timeout,
                schema,
                groups: AtomicU64::new(0),
                grouped_appends: AtomicU64::new(0),
                largest_group: AtomicU64::new(0),
                splits: AtomicU64::new(0),
            }),
        }
    }

    pub(crate) fn stats(&self) -> GroupCommitStats {
        self.shared.stats()
    }

    /// Queues `batch` (already checked by `check_batch`) and waits for its outcome.
    pub(crate) async fn append(&self, batch: AppendBatch) -> Result<AppendReceipt, StoreError> {
        let (reply, outcome) = oneshot::channel();
        let start = {
            let mut queue = self.shared.queue.lock();
            queue.waiting.push_back(Request { batch, reply });
            let start = queue.running < self.shared.settings.max_groups_in_flight;
            if start {
                queue.running += 1;
            }
            start
        };
        if start {
            tokio::spawn(run(Arc::clone(&self.shared)));
        } else {
            self.shared.arrived.notify_one();
        }
        // The committer dropped the request unanswered only if it died mid-group (a panic,
        // a runtime shutting down): the group may or may not have committed.
        outcome.await.unwrap_or(Err(StoreError::Timeout))
    }
}

impl Shared {
    fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            groups: self.groups.load(Ordering::Relaxed),
            grouped_appends: self.grouped_appends.load(Ordering::Relaxed),
            largest_group: self.largest_group.load(Ordering::Relaxed),
            splits: self.splits.load(Ordering::Relaxed),
        }
    }

    /// The next group, or `None` (and the committer marked stopped) when nothing is queued.
    async fn next_group(&self) -> Option<Vec<Request>> {
        if !self.settings.max_wait.is_zero() {
            let deadline = tokio::time::Instant::now() + self.settings.max_wait;
            loop {
                let queued = self.queue.lock().waiting.len();
                if queued == 0 || queued >= self.settings.max_group_size {
                    break;
                }
                if tokio::time::timeout_at(deadline, self.arrived.notified())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        let mut guard = self.queue.lock();
        let queue = &mut *guard;
        let group = take_group(
            &mut queue.waiting,
            &queue.in_flight,
            self.settings.max_group_size,
        );
        if group.is_empty() {
            // Under the lock: an `append` that queues after this sees a free slot and
            // starts a committer. A request left behind for a stream in flight is taken by
            // that group's committer, which looks again when it is done.
            queue.running -= 1;
            return None;
        }
        for request in &group {
            for append in &request.batch.streams {
                queue.in_flight.insert(append.stream.as_str().to_owned());
            }
        }
        Some(group)
    }

    fn done(&self, streams: &[String]) {
        let mut queue = self.queue.lock();
        for stream in streams {
            queue.in_flight.remove(stream);
        }
    }

    /// Commits `group` and answers every caller.
    async fn commit(self: &Arc<Self>, group: Vec<Request>) {
        let streams: Vec<String> = group
            .iter()
            .flat_map(|r| r.batch.streams.iter().map(|s| s.stream.as_str().to_owned()))
            .collect();
        self.commit_group(group).await;
        self.done(&streams);
    }

    async fn commit_group(self: &Arc<Self>, group: Vec<Request>) {
        let batches: Vec<&AppendBatch> = group.iter().map(|r| &r.batch).collect();
        let attempt = tokio::time::timeout(self.operation_timeout, async {
            let mut connection = self.pool.acquire().await.map_err(Failure::Acquire)?;
            let lock_wait = self.settings.max_lock_wait.as_millis().to_string();
            write_group(&mut connection, &batches, &lock_wait).await
        })
        .await
        .unwrap_or(Err(Failure::TimedOut));
        match attempt {
            Ok(outcomes) => {
                let size = group.len() as u64;
                self.groups.fetch_add(1, Ordering::Relaxed);
                self.grouped_appends.fetch_add(size, Ordering::Relaxed);
                self.largest_group.fetch_max(size, Ordering::Relaxed);
                metrics::counter!(APPEND_GROUPS, "schema" => self.schema.clone()).increment(1);
                metrics::histogram!(APPEND_GROUP_SIZE, "schema" => self.schema.clone())
                    .record(size as f64);
                for (request, outcome) in group.into_iter().zip(outcomes) {
                    let _ = request.reply.send(outcome);
                }
            }
            Err(Failure::Split(error)) => {
                tracing::debug!(schema = %self.schema, %error, callers = group.len(),
                    "group statement failed; splitting the group into single appends");
                self.splits.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(APPEND_GROUP_SPLITS, "schema" => self.schema.clone())
                    .increment(1);
                for request in group {
                    let shared = Arc::clone(self);
                    tokio::spawn(async move {
                        let outcome = tokio::time::timeout(
                            shared.operation_timeout,
                            single_append(&shared.pool, &request.batch),
                        )
                        .await
                        .unwrap_or(Err(StoreError::Timeout));
                        let _ = request.reply.send(outcome);
                    });
                }
            }
            Err(failure) => {
                let answer = failure.answer();
                for request in group {
                    let _ = request.reply.send(Err(answer.clone()));
                }
            }
        }
    }
}

/// The committer: groups until the queue is empty.
async fn run(shared: Arc<Shared>) {
    // If this task dies with requests taken (a panic, a runtime shutting down), their
    // callers get `Timeout` from their dropped reply channels; the flag must not stay set,
    // or no committer would ever start again.
    struct Running<'a>(&'a Shared, bool);
    impl Drop for Running<'_> {
        fn drop(&mut self) {
            if !self.1 {
                self.0.queue.lock().running -= 1;
            }
        }
    }
    let mut running = Running(&shared, false);
    while let Some(group) = shared.next_group().await {
        shared.commit(group).await;
    }
    running.1 = true;
}

/// Takes, in queue order, up to `max` requests whose streams and event ids are disjoint
/// from each other's and whose streams are not `in_flight`, at most
/// [`MAX_EVENTS_PER_TRANSACTION`] events in all. A request that clashes stays queued, and
/// so does every later request on one of its streams (so writers of one stream are
/// committed in the order they queued). Requests whose caller is gone are dropped.
fn take_group(
    waiting: &mut VecDeque<Request>,
    in_flight: &HashSet<String>,
    max: usize,
) -> Vec<Request> {
    let mut group = Vec::new();
    let mut streams: HashSet<String> = HashSet::new();
    let mut blocked: HashSet<String> = in_flight.clone();
    let mut ids: HashSet<u128> = HashSet::new();
    let mut events = 0;
    let mut kept = VecDeque::new();
    while let Some(request) = waiting.pop_front() {
        if group.len() == max {
            kept.push_back(request);
            kept.append(waiting);
            break;
        }
        if request.reply.is_closed() {
            continue;
        }
        let batch = &request.batch;
        let count = batch.event_count();
        let clashes = events + count > MAX_EVENTS_PER_TRANSACTION
            || batch.streams.iter().any(|s| {
                streams.contains(s.stream.as_str()) || blocked.contains(s.stream.as_str())
            })
            || batch
                .streams
                .iter()
                .flat_map(|s| &s.events)
                .any(|e| ids.contains(&e.event_id.0));
        if clashes {
            blocked.extend(batch.streams.iter().map(|s| s.stream.as_str().to_owned()));
            kept.push_back(request);
            continue;
        }
        streams.extend(batch.streams.iter().map(|s| s.stream.as_str().to_owned()));
        ids.extend(
            batch
                .streams
                .iter()
                .flat_map(|s| &s.events)
                .map(|e| e.event_id.0),
        );
        events += count;
        group.push(request);
    }
    *waiting = kept;
    group
}

/// A single append on a pooled connection: what split groups fall back to, and what every
/// append is with group commit off.
pub(crate) async fn single_append(
    pool: &InstrumentedPool,
    batch: &AppendBatch,
) -> Result<AppendReceipt, StoreError> {
    let mut connection = pool.acquire().await?;
    match write_batch(&mut connection, batch, None).await {
        Ok(receipt) => Ok(receipt),
        Err(error) => diagnose(&mut connection, batch, &error, true).await,
    }
}

/// Why a group got no per-caller outcomes.
enum Failure {
    /// No connection for the committer: nothing was sent.
    Acquire(StoreError),
    /// The operation timeout passed: outcome unknown.
    TimedOut,
    /// The statement failed without committing, possibly because of one caller: split.
    Split(sqlx::Error),
    /// The statement failed (or its outcome is unknown) for reasons no caller owns.
    Statement(sqlx::Error),
    /// A loser's follow-up lookup failed after the group committed.
    Store(StoreError),
}

impl Failure {
    fn answer(&self) -> StoreError {
        match self {
            Failure::Split(error) => classify(error),
            Failure::TimedOut => StoreError::Timeout,
            Failure::Statement(error) => classify_commit(error),
            Failure::Acquire(error) | Failure::Store(error) => error.clone(),
        }
    }
}

/// Whether a failed group statement should be split into single appends.
fn splits(error: &sqlx::Error) -> bool {
    database_error(error).is_some_and(|(code, _)| {
        code.starts_with("22")
            || code.starts_with("23")
            || code == sqlstate::EXPECTATION_FAILED
            || code == sqlstate::LOCK_NOT_AVAILABLE
    })
}

/// The group statement; see the module docs for the steps. `$1..$5`: one row per (caller,
/// stream); `$6..$15`: one row per event, callers in group order, events in batch order;
/// `$16`: `lock_timeout` for this statement's transaction only, set before any lock is
/// taken (`s` is read first by everything that locks). Streams are distinct across the group
/// (`take_group`), so stream ids identify rows.
pub(crate) const GROUP_SQL: &str = r"
WITH s AS MATERIALIZED (
    SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[], $4::int2[], $5::int8[])
             AS s(stream_id, caller, count, kind, expected)
    WHERE set_config('lock_timeout', $16, true) IS NOT NULL
), snap AS MATERIALIZED (
    SELECT s.stream_id, s.caller, s.count, coalesce(st.version, 0) AS version,
           CASE s.kind WHEN 0 THEN true
                       WHEN 1 THEN coalesce(st.version, 0) = 0
                       WHEN 2 THEN coalesce(st.version, 0) > 0
                       ELSE coalesce(st.version, 0) = s.expected
           END AS admitted
    FROM s LEFT JOIN streams st USING (stream_id)
), known AS MATERIALIZED (
    SELECT DISTINCT n.caller
    FROM unnest($6::int4[], $9::uuid[]) AS n(caller, event_id)
    JOIN events e USING (event_id)
), verdict AS MATERIALIZED (
    SELECT snap.caller, bool_and(snap.admitted) AS admitted,
           EXISTS (SELECT FROM known WHERE known.caller = snap.caller) AS known
    FROM snap GROUP BY snap.caller
), winners AS MATERIALIZED (
    SELECT snap.stream_id, snap.count, snap.version
    FROM snap JOIN verdict USING (caller)
    WHERE verdict.admitted AND NOT verdict.known
), bumped AS (
    INSERT INTO streams (stream_id, version)
    SELECT stream_id, count FROM winners ORDER BY stream_id
    ON CONFLICT (stream_id) DO UPDATE SET version = streams.version + excluded.version
    RETURNING stream_id, version
), inserted AS (
    INSERT INTO events (global_position, stream_id, stream_version, event_id, event_type,
                        schema_version, payload, correlation_id, causation_id, traceparent)
    SELECT (pg_current_xact_id()::text::int8 << 16) + row_number() OVER (ORDER BY n.ordinal),
           n.stream_id, w.version + n.nth, n.event_id, n.event_type, n.schema_version,
           n.payload::json, n.correlation_id, n.causation_id, n.traceparent
    FROM unnest($7::text[], $8::int8[], $9::uuid[], $10::text[], $11::int4[], $12::text[],
                $13::uuid[], $14::uuid[], $15::text[])
         WITH ORDINALITY AS n(stream_id, nth, event_id, event_type, schema_version, payload,
                              correlation_id, causation_id, traceparent, ordinal)
    JOIN winners w USING (stream_id)
    RETURNING stream_id, global_position
)
SELECT snap.caller, snap.stream_id, snap.version, verdict.admitted, verdict.known,
       CASE WHEN b.stream_id IS NULL OR b.version - snap.count = snap.version THEN 0
            ELSE append_expectation_failed(snap.stream_id, 'as read by its group',
                                           b.version - snap.count)
       END AS guard,
       (SELECT max(i.global_position) FROM inserted i WHERE i.stream_id = snap.stream_id)
FROM snap JOIN verdict USING (caller) LEFT JOIN bumped b USING (stream_id)";

/// One stream of one caller, as the group statement saw it.
struct StreamRow {
    version: u64,
    last_position: Option<u64>,
}

/// Runs the group statement and turns its rows into one outcome per batch, in order.
async fn write_group(
    connection: &mut PgConnection,
    batches: &[&AppendBatch],
    lock_wait_ms: &str,
) -> Result<Vec<Result<AppendReceipt, StoreError>>, Failure> {
    let mut s_stream = Vec::new();
    let mut s_caller = Vec::new();
    let mut s_count = Vec::new();
    let mut s_kind = Vec::new();
    let mut s_expected = Vec::new();
    let total: usize = batches.iter().map(|b| b.event_count()).sum();
    let mut e_caller = Vec::with_capacity(total);
    let mut e_stream = Vec::with_capacity(total);
    let mut e_nth = Vec::with_capacity(total);
    let mut e_id = Vec::with_capacity(total);
    let mut e_type = Vec::with_capacity(total);
    let mut e_schema = Vec::with_capacity(total);
    let mut e_payload = Vec::with_capacity(total);
    let mut e_correlation = Vec::with_capacity(total);
    let mut e_causation = Vec::with_capacity(total);
    let mut e_traceparent = Vec::with_capacity(total);
    for (caller, batch) in batches.iter().enumerate() {
        let caller = i32::try_from(caller).expect("a group holds at most MAX_GROUP_SIZE callers");
        for append in &batch.streams {
            let (kind, expected) = expectation_columns(append.expected);
            s_stream.push(append.stream.as_str());
            s_caller.push(caller);
            s_count.push(to_i64(append.events.len() as u64));
            s_kind.push(kind);
            s_expected.push(expected);
            for (nth, event) in append.events.iter().enumerate() {
                e_caller.push(caller);
                e_stream.push(append.stream.as_str());
                e_nth.push(to_i64(nth as u64 + 1));
                e_id.push(Uuid::from_u128(event.event_id.0));
                e_type.push(&*event.event_type);
                e_schema.push(i32::try_from(event.schema_version).unwrap_or(i32::MAX));
                e_payload.push(event.payload.as_str());
                e_correlation.push(event.metadata.correlation_id.map(Uuid::from_u128));
                e_causation.push(event.metadata.causation_id.map(Uuid::from_u128));
                e_traceparent.push(event.metadata.traceparent.as_deref());
            }
        }
    }
    let rows = sqlx::query(GROUP_SQL)
        .bind(&s_stream)
        .bind(&s_caller)
        .bind(&s_count)
        .bind(&s_kind)
        .bind(&s_expected)
        .bind(&e_caller)
        .bind(&e_stream)
        .bind(&e_nth)
        .bind(&e_id)
        .bind(&e_type)
        .bind(&e_schema)
        .bind(&e_payload)
        .bind(&e_correlation)
        .bind(&e_causation)
        .bind(&e_traceparent)
        .bind(lock_wait_ms)
        .fetch_all(&mut *connection)
        .await
        .map_err(|error| {
            if splits(&error) {
                Failure::Split(error)
            } else {
                Failure::Statement(error)
            }
        })?;

    // Per caller: (admitted, known), and per stream what the statement saw.
    let mut verdicts: Vec<Option<(bool, bool)>> = vec![None; batches.len()];
    let mut streams: BTreeMap<String, StreamRow> = BTreeMap::new();
    let protocol = |e: String| Failure::Store(StoreError::Permanent(e));
    for row in &rows {
        let decode = |e: sqlx::Error| protocol(format!("group statement row: {e}"));
        let caller: i32 = row.try_get(0).map_err(decode)?;
        let stream: String = row.try_get(1).map_err(decode)?;
        let version: i64 = row.try_get(2).map_err(decode)?;
        let admitted: bool = row.try_get(3).map_err(decode)?;
        let known: bool = row.try_get(4).map_err(decode)?;
        let position: Option<i64> = row.try_get(6).map_err(decode)?;
        let caller = usize::try_from(caller).map_err(|e| protocol(e.to_string()))?;
        let slot = verdicts
            .get_mut(caller)
            .ok_or_else(|| protocol(format!("group statement named caller {caller}")))?;
        *slot = Some((admitted, known));
        let last_position = match position {
            Some(p) => Some(to_u64(p, "global_position").map_err(Failure::Store)?),
            None => None,
        };
        streams.insert(
            stream,
            StreamRow {
                version: to_u64(version, "version").map_err(Failure::Store)?,
                last_position,
            },
        );
    }

    let mut outcomes = Vec::with_capacity(batches.len());
    for (batch, verdict) in batches.iter().zip(verdicts) {
        let (admitted, known) =
            verdict.ok_or_else(|| protocol("a caller is missing from the group's rows".into()))?;
        let seen = |append: &reprise_core::event_store::StreamAppend| {
            streams.get(append.stream.as_str()).ok_or_else(|| {
                protocol(format!(
                    "stream {} missing from the group's rows",
                    append.stream
                ))
            })
        };
        let outcome = if known {
            // Idempotency first, as for a single append: a retry of a committed batch.
            match already_committed(connection, batch).await {
                Ok(Some(receipt)) => Ok(receipt),
                Ok(None) if admitted => Err(StoreError::Transient(
                    "event ids seen by the group are gone; retry".into(),
                )),
                Ok(None) => Err(first_conflict(batch, &streams)),
                Err(error) => Err(error),
            }
        } else if !admitted {
            Err(first_conflict(batch, &streams))
        } else {
            let mut stream_versions = Vec::with_capacity(batch.streams.len());
            let mut last_position = 0;
            for append in &batch.streams {
                let row = seen(append)?;
                let new_version = row.version + append.events.len() as u64;
                last_position = last_position.max(row.last_position.ok_or_else(|| {
                    protocol(format!("no events of {} were inserted", append.stream))
                })?);
                stream_versions.push((append.stream.clone(), new_version));
            }
            Ok(AppendReceipt {
                stream_versions,
                last_position,
                was_duplicate: false,
            })
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// The conflict of a caller whose expectations did not all hold: the first stream (in
/// stream-id order, the order a single append checks them) whose version it does not admit.
fn first_conflict(batch: &AppendBatch, streams: &BTreeMap<String, StreamRow>) -> StoreError {
    let mut sorted: Vec<_> = batch.streams.iter().collect();
    sorted.sort_by(|a, b| a.stream.cmp(&b.stream));
    for append in sorted {
        let actual = streams.get(append.stream.as_str()).map_or(0, |r| r.version);
        if !append.expected.admits(actual) {
            return StoreError::Conflict {
                stream: append.stream.clone(),
                expected: append.expected,
                actual,
            };
        }
    }
    StoreError::Permanent("the group statement and `admits` disagree on a conflict".into())
}

#[cfg(test)]
mod tests {
    use reprise_core::{EventId, ExpectedVersion, Metadata, NewEvent, Payload, StreamId};

    use super::*;

    fn request(
        stream: &str,
        id: u128,
        events: usize,
    ) -> (
        Request,
        oneshot::Receiver<Result<AppendReceipt, StoreError>>,
    ) {
        let events = (0..events as u128)
            .map(|n| NewEvent {
                event_id: EventId(id + n),
                event_type: "T".into(),
                schema_version: 1,
                payload: Payload::from_json_text("{}"),
                metadata: Metadata::default(),
            })
            .collect();
        let (reply, rx) = oneshot::channel();
        let batch = AppendBatch::single(StreamId::new(stream), ExpectedVersion::Any, events);
        (Request { batch, reply }, rx)
    }

    fn streams_of(group: &[Request]) -> Vec<&str> {
        group
            .iter()
            .map(|r| r.batch.streams[0].stream.as_str())
            .collect()
    }

    #[test]
    fn a_group_never_holds_one_stream_twice_and_keeps_each_streams_queue_order() {
        let mut receivers = Vec::new();
        let mut queue = VecDeque::new();
        for (stream, id) in [("a", 1), ("b", 10), ("a", 20), ("c", 30), ("a", 40)] {
            let (r, rx) = request(stream, id, 1);
            queue.push_back(r);
            receivers.push(rx);
        }
        let first = take_group(&mut queue, &HashSet::new(), 10);
        assert_eq!(streams_of(&first), ["a", "b", "c"]);
        let second = take_group(&mut queue, &HashSet::new(), 10);
        assert_eq!(streams_of(&second), ["a"]);
        assert_eq!(second[0].batch.streams[0].events[0].event_id, EventId(20));
        let third = take_group(&mut queue, &HashSet::new(), 10);
        assert_eq!(third[0].batch.streams[0].events[0].event_id, EventId(40));
        assert!(take_group(&mut queue, &HashSet::new(), 10).is_empty());
    }

    #[test]
    fn groups_respect_the_size_and_event_limits_and_shared_ids() {
        let mut receivers = Vec::new();
        let mut queue = VecDeque::new();
        for (stream, id, n) in [
            ("a", 1, 40_000),
            ("b", 100_000, 30_000),
            ("c", 1, 1), // shares an event id with the first request
            ("d", 200_000, 1),
            ("e", 300_000, 1),
        ] {
            let (r, rx) = request(stream, id, n);
            queue.push_back(r);
            receivers.push(rx);
        }
        let first = take_group(&mut queue, &HashSet::new(), 2);
        assert_eq!(streams_of(&first), ["a", "d"]);
        let second = take_group(&mut queue, &HashSet::new(), 10);
        assert_eq!(streams_of(&second), ["b", "c", "e"]);
    }

    #[test]
    fn streams_in_flight_wait_for_a_later_group() {
        let mut receivers = Vec::new();
        let mut queue = VecDeque::new();
        for (stream, id) in [("a", 1), ("b", 10), ("a", 20)] {
            let (r, rx) = request(stream, id, 1);
            queue.push_back(r);
            receivers.push(rx);
        }
        let in_flight: HashSet<String> = ["a".to_owned()].into();
        assert_eq!(streams_of(&take_group(&mut queue, &in_flight, 10)), ["b"]);
        assert_eq!(queue.len(), 2);
        assert_eq!(
            streams_of(&take_group(&mut queue, &HashSet::new(), 10)),
            ["a"]
        );
    }

    #[test]
    fn requests_of_callers_that_gave_up_are_dropped() {
        let mut queue = VecDeque::new();
        let (gone, rx) = request("a", 1, 1);
        drop(rx);
        let (kept, _rx) = request("b", 2, 1);
        queue.extend([gone, kept]);
        assert_eq!(
            streams_of(&take_group(&mut queue, &HashSet::new(), 10)),
            ["b"]
        );
    }
}
