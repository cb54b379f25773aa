//! The write path: one statement appends a whole batch, and failures are diagnosed into the
//! core contract's answers.
//!
//! The statement (see [`APPEND_SQL`]) does, in order:
//! 1. upsert one `streams` row per stream, in stream-id order, adding the stream's event count
//!    to its version. `ON CONFLICT DO UPDATE` takes the row lock, so concurrent writers of one
//!    stream queue here and each sees the version the previous one committed (in stream-id
//!    order, so concurrent multi-stream batches cannot deadlock);
//! 2. check every stream's expectation against the version it had (`new - count`); a miss
//!    calls `append_expectation_failed` (migration 0007), which aborts the statement with
//!    SQLSTATE `RP409`, so nothing of the batch remains;
//! 3. insert every event with a single `INSERT .. SELECT FROM unnest(..) WITH ORDINALITY`
//!    (no row-by-row inserts), positions `(xid << 16) + offset + ordinal` where `offset`
//!    skips positions this transaction already used (an earlier append in the same
//!    transaction, see `PgEventStore::append_in`);
//! 4. for appends inside a caller's transaction only, `pg_notify` the store's channel
//!    (delivered if that transaction commits; other appends notify after commit instead,
//!    see `notifier.rs`).
//!
//! Because the statement either does everything or fails, a plain append runs it in
//! autocommit mode: one round trip, commit included. Under CPU contention every round trip
//! is a scheduling delay on both sides, so this is worth more than it looks (measured in
//! docs/performance.md). Inside a caller's transaction (`PgEventStore::append_in`), the
//! same statement runs under a savepoint.

use std::collections::BTreeMap;

use reprise_core::event_store::StreamAppend;
use reprise_core::{AppendBatch, AppendReceipt, EventId, ExpectedVersion, StoreError, StreamId};
use sqlx::postgres::PgDatabaseError;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::error::{classify, classify_commit, database_error, sqlstate};
use crate::rows::{to_i64, to_u64};

const APPEND_SQL: &str = r"
WITH locked AS (
    INSERT INTO streams (stream_id, version)
    SELECT s.stream_id, s.count FROM unnest($1::text[], $2::int8[]) AS s(stream_id, count)
    ORDER BY s.stream_id
    ON CONFLICT (stream_id) DO UPDATE SET version = streams.version + excluded.version
    RETURNING stream_id, version
), checked AS (
    SELECT locked.stream_id, locked.version,
           CASE WHEN CASE x.kind
                         WHEN 0 THEN true
                         WHEN 1 THEN locked.version - x.count = 0
                         WHEN 2 THEN locked.version - x.count > 0
                         ELSE locked.version - x.count = x.expected
                     END
                THEN 0
                ELSE append_expectation_failed(locked.stream_id, x.label, locked.version - x.count)
           END AS guard
    FROM locked
    JOIN unnest($1::text[], $2::int8[], $15::int2[], $16::int8[], $17::text[])
         AS x(stream_id, count, kind, expected, label) USING (stream_id)
), base AS (
    SELECT pg_current_xact_id()::text::int8 << 16 AS first
), used AS (
    SELECT coalesce(max(e.global_position) - base.first, 0) AS count
    FROM base LEFT JOIN events e
      ON e.global_position > base.first AND e.global_position < base.first + 65536
    GROUP BY base.first
), inserted AS (
    INSERT INTO events (global_position, stream_id, stream_version, event_id, event_type,
                        schema_version, payload, correlation_id, causation_id, traceparent)
    SELECT base.first + used.count + n.ordinal, n.stream_id, locked.version - n.count + n.nth,
           n.event_id, n.event_type, n.schema_version, n.payload::json, n.correlation_id,
           n.causation_id, n.traceparent
    FROM unnest($3::text[], $4::int8[], $5::int8[], $6::uuid[], $7::text[], $8::int4[],
                $9::text[], $10::uuid[], $11::uuid[], $12::text[])
         WITH ORDINALITY AS n(stream_id, count, nth, event_id, event_type, schema_version,
                              payload, correlation_id, causation_id, traceparent, ordinal)
    JOIN locked USING (stream_id) CROSS JOIN base CROSS JOIN used
    RETURNING global_position
), notified AS (
    SELECT pg_notify($13, '') WHERE $14
)
SELECT checked.stream_id, checked.version, checked.guard,
       (SELECT max(global_position) FROM inserted),
       (SELECT count(*) FROM notified)
FROM checked";

/// SQLSTATE raised by `append_expectation_failed`.
const EXPECTATION_FAILED: &str = "RP409";

/// `ExpectedVersion` as the statement's `kind` / `expected` columns.
pub(crate) fn expectation_columns(expected: ExpectedVersion) -> (i16, i64) {
    match expected {
        ExpectedVersion::Any => (0, 0),
        ExpectedVersion::NoStream => (1, 0),
        ExpectedVersion::StreamExists => (2, 0),
        ExpectedVersion::Exact(v) => (3, to_i64(v)),
    }
}

/// Runs the append statement on `connection`: on its own (autocommit, then the receipt is
/// durable when this returns) or inside a transaction the caller owns. On error the
/// statement left nothing behind; pass the error to [`diagnose`].
pub(crate) async fn write_batch(
    connection: &mut PgConnection,
    batch: &AppendBatch,
    notify_channel: Option<&str>,
) -> Result<AppendReceipt, sqlx::Error> {
    let mut by_id: Vec<&StreamAppend> = batch.streams.iter().collect();
    by_id.sort_by(|a, b| a.stream.cmp(&b.stream));
    let stream_ids: Vec<&str> = by_id.iter().map(|s| s.stream.as_str()).collect();
    let counts: Vec<i64> = by_id
        .iter()
        .map(|s| to_i64(s.events.len() as u64))
        .collect();
    let (kinds, expected): (Vec<i16>, Vec<i64>) = by_id
        .iter()
        .map(|s| expectation_columns(s.expected))
        .unzip();
    let labels: Vec<String> = by_id.iter().map(|s| s.expected.to_string()).collect();

    let total = batch.event_count();
    let mut columns = EventColumns::with_capacity(total);
    for append in &batch.streams {
        for (nth, event) in append.events.iter().enumerate() {
            columns.stream.push(append.stream.as_str());
            columns.count.push(to_i64(append.events.len() as u64));
            columns.nth.push(to_i64(nth as u64 + 1));
            columns.event_id.push(Uuid::from_u128(event.event_id.0));
            columns.event_type.push(&event.event_type);
            columns
                .schema_version
                .push(i32::try_from(event.schema_version).unwrap_or(i32::MAX));
            columns.payload.push(event.payload.as_str());
            columns
                .correlation
                .push(event.metadata.correlation_id.map(Uuid::from_u128));
            columns
                .causation
                .push(event.metadata.causation_id.map(Uuid::from_u128));
            columns
                .traceparent
                .push(event.metadata.traceparent.as_deref());
        }
    }

    let rows = sqlx::query(APPEND_SQL)
        .bind(&stream_ids)
        .bind(&counts)
        .bind(&columns.stream)
        .bind(&columns.count)
        .bind(&columns.nth)
        .bind(&columns.event_id)
        .bind(&columns.event_type)
        .bind(&columns.schema_version)
        .bind(&columns.payload)
        .bind(&columns.correlation)
        .bind(&columns.causation)
        .bind(&columns.traceparent)
        .bind(notify_channel.unwrap_or(""))
        .bind(notify_channel.is_some())
        .bind(&kinds)
        .bind(&expected)
        .bind(&labels)
        .fetch_all(&mut *connection)
        .await?;

    let mut new_versions = BTreeMap::new();
    let mut last_position = 0;
    for row in &rows {
        let stream: String = row.try_get(0)?;
        let version: i64 = row.try_get(1)?;
        let position: i64 = row.try_get(3)?;
        new_versions.insert(stream, version);
        last_position = position;
    }
    assert_eq!(
        new_versions.len(),
        batch.streams.len(),
        "one locked row per stream of the batch"
    );

    let mut stream_versions = Vec::with_capacity(batch.streams.len());
    for append in &batch.streams {
        let new_version = to_u64(new_versions[append.stream.as_str()], "version")
            .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        let count = append.events.len() as u64;
        assert!(
            new_version >= count,
            "a stream's version covers the events just added"
        );
        // The statement enforced this; a miss here means the SQL and `admits` disagree.
        assert!(
            append.expected.admits(new_version - count),
            "the append statement accepted {} at v{} against expectation {}",
            append.stream,
            new_version - count,
            append.expected
        );
        stream_versions.push((append.stream.clone(), new_version));
    }
    let last_position = to_u64(last_position, "global_position")
        .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    Ok(AppendReceipt {
        stream_versions,
        last_position,
        was_duplicate: false,
    })
}

/// Column arrays for `unnest`, borrowed from the batch.
struct EventColumns<'a> {
    stream: Vec<&'a str>,
    count: Vec<i64>,
    nth: Vec<i64>,
    event_id: Vec<Uuid>,
    event_type: Vec<&'a str>,
    schema_version: Vec<i32>,
    payload: Vec<&'a str>,
    correlation: Vec<Option<Uuid>>,
    causation: Vec<Option<Uuid>>,
    traceparent: Vec<Option<&'a str>>,
}

impl EventColumns<'_> {
    fn with_capacity(n: usize) -> Self {
        EventColumns {
            stream: Vec::with_capacity(n),
            count: Vec::with_capacity(n),
            nth: Vec::with_capacity(n),
            event_id: Vec::with_capacity(n),
            event_type: Vec::with_capacity(n),
            schema_version: Vec::with_capacity(n),
            payload: Vec::with_capacity(n),
            correlation: Vec::with_capacity(n),
            causation: Vec::with_capacity(n),
            traceparent: Vec::with_capacity(n),
        }
    }
}

/// What a failed append statement means, once the transaction (or savepoint) is rolled back.
/// `connection` must see the committed state (and the caller's transaction, if any).
/// `autocommit`: the statement carried its own commit, so a broken connection leaves its
/// outcome unknown (`Timeout`, resolved by retrying the same batch).
pub(crate) async fn diagnose(
    connection: &mut PgConnection,
    batch: &AppendBatch,
    error: &sqlx::Error,
    autocommit: bool,
) -> Result<AppendReceipt, StoreError> {
    let Some((code, constraint)) = database_error(error) else {
        return Err(if autocommit {
            classify_commit(error)
        } else {
            classify(error)
        });
    };
    match (code.as_str(), constraint.as_deref()) {
        (EXPECTATION_FAILED, _) => {
            // A retry of a batch that committed fails its expectation too (the stream moved
            // on by exactly our events): idempotency first, then the conflict.
            if let Some(receipt) = already_committed(connection, batch).await? {
                return Ok(receipt);
            }
            Err(expectation_conflict(batch, error))
        }
        (sqlstate::UNIQUE_VIOLATION, Some("events_event_id_key")) => {
            match already_committed(connection, batch).await? {
                Some(receipt) => Ok(receipt),
                // The colliding writer is gone again: nothing of ours is stored.
                None => Err(StoreError::Transient(
                    "event id collided with a concurrent append; retry".into(),
                )),
            }
        }
        // Streams are locked before events are inserted, so this needs a writer that
        // bypassed the `streams` table. Still a conflict, never a silent overwrite.
        (sqlstate::UNIQUE_VIOLATION, Some("events_stream_version_key")) => {
            Err(conflict_with_current(connection, batch).await)
        }
        (sqlstate::CHECK_VIOLATION, Some("events_position_in_own_transaction_range")) => {
            Err(StoreError::InvalidBatch(format!(
                "a transaction may append at most {} events",
                crate::MAX_EVENTS_PER_TRANSACTION
            )))
        }
        // Class 22, data exception: a payload that is not JSON, a NUL byte in text.
        (c, _) if c.starts_with("22") => Err(StoreError::InvalidBatch(error.to_string())),
        _ => Err(classify(error)),
    }
}

/// The `Conflict` described by an `RP409` error: stream in HINT, actual version in DETAIL.
fn expectation_conflict(batch: &AppendBatch, error: &sqlx::Error) -> StoreError {
    let pg = match error {
        sqlx::Error::Database(db) => db.try_downcast_ref::<PgDatabaseError>(),
        _ => None,
    };
    let stream = pg.and_then(PgDatabaseError::hint);
    let actual = pg
        .and_then(PgDatabaseError::detail)
        .and_then(|d| d.parse::<u64>().ok());
    let append = batch
        .streams
        .iter()
        .find(|a| Some(a.stream.as_str()) == stream);
    match (append, actual) {
        (Some(append), Some(actual)) => StoreError::Conflict {
            stream: append.stream.clone(),
            expected: append.expected,
            actual,
        },
        _ => StoreError::Permanent(format!("unparseable expectation failure: {error}")),
    }
}

/// `Some(receipt)` when every event of the batch is stored in the stream the batch names (a
/// retry of a committed batch); `DuplicateEventId` when only some are, or elsewhere.
pub(crate) async fn already_committed(
    connection: &mut PgConnection,
    batch: &AppendBatch,
) -> Result<Option<AppendReceipt>, StoreError> {
    let ids: Vec<Uuid> = batch
        .streams
        .iter()
        .flat_map(|s| s.events.iter().map(|e| Uuid::from_u128(e.event_id.0)))
        .collect();
    let rows = sqlx::query(
        "SELECT event_id, stream_id, stream_version, global_position FROM events \
         WHERE event_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *connection)
    .await
    .map_err(|e| classify(&e))?;
    let mut stored: BTreeMap<EventId, (String, u64, u64)> = BTreeMap::new();
    for row in &rows {
        let decode = |e: sqlx::Error| StoreError::Permanent(e.to_string());
        let id: Uuid = row.try_get(0).map_err(decode)?;
        let stream: String = row.try_get(1).map_err(decode)?;
        let version: i64 = row.try_get(2).map_err(decode)?;
        let position: i64 = row.try_get(3).map_err(decode)?;
        stored.insert(
            EventId(id.as_u128()),
            (
                stream,
                to_u64(version, "stream_version")?,
                to_u64(position, "global_position")?,
            ),
        );
    }
    if stored.is_empty() {
        return Ok(None);
    }
    let mut stream_versions = Vec::with_capacity(batch.streams.len());
    let mut last_position = 0;
    for append in &batch.streams {
        let mut last_version = 0;
        for event in &append.events {
            match stored.get(&event.event_id) {
                Some((stream, version, position)) if stream == append.stream.as_str() => {
                    last_version = last_version.max(*version);
                    last_position = last_position.max(*position);
                }
                Some((stream, ..)) => {
                    return Err(StoreError::DuplicateEventId(format!(
                        "{} is stored in stream {stream}, not {}",
                        event.event_id, append.stream
                    )));
                }
                None => {
                    return Err(StoreError::DuplicateEventId(
                        "part of the batch is already stored: batches are atomic, so this is a \
                         different batch"
                            .into(),
                    ));
                }
            }
        }
        stream_versions.push((append.stream.clone(), last_version));
    }
    Ok(Some(AppendReceipt {
        stream_versions,
        last_position,
        was_duplicate: true,
    }))
}

/// A conflict on the first stream whose current version the batch does not admit (or on
/// the first stream, if versions moved on since).
async fn conflict_with_current(connection: &mut PgConnection, batch: &AppendBatch) -> StoreError {
    let mut first = None;
    for append in &batch.streams {
        let actual = match current_version(connection, &append.stream).await {
            Ok(v) => v,
            Err(e) => return e,
        };
        let conflict = StoreError::Conflict {
            stream: append.stream.clone(),
            expected: append.expected,
            actual,
        };
        if !append.expected.admits(actual) {
            return conflict;
        }
        first.get_or_insert(conflict);
    }
    first.unwrap_or(StoreError::Conflict {
        stream: StreamId::new(""),
        expected: ExpectedVersion::Any,
        actual: 0,
    })
}

pub(crate) async fn current_version(
    connection: &mut PgConnection,
    stream: &StreamId,
) -> Result<u64, StoreError> {
    let version: Option<i64> =
        sqlx::query_scalar("SELECT version FROM streams WHERE stream_id = $1")
            .bind(stream.as_str())
            .fetch_optional(&mut *connection)
            .await
            .map_err(|e| classify(&e))?;
    to_u64(version.unwrap_or(0), "version")
}
