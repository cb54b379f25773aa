//! [`PgDeadLetterQueue`]: reprise-core's [`DeadLetterQueue`] on the `dead_letters` table
//! (migrations 0005 and 0008), sharing a [`PgEventStore`]'s pool, schema and timeouts.
//!
//! - **Ids** are the row's `bigint` identity, as decimal text. Text that is not such a
//!   number (in canonical form) names no letter: `get` answers `None`, `resolve`
//!   `NotFound`; it is not an error.
//! - **Exact round trip**: the payload is stored as text (a poison message need not be valid
//!   JSON), headers as a JSON array of `[name, value]` pairs (ordered, duplicates kept), and
//!   the caller's nanosecond timestamps as `timestamptz` (microseconds, readable in SQL)
//!   plus the nanoseconds below them in `*_ns` columns.
//! - **Resolution is race-safe**: one `UPDATE .. WHERE id = $1 AND status = 'pending'`.
//!   Of two operators resolving the same letter, the second's update waits for the first's
//!   row lock, re-checks the condition, changes nothing, and is told `AlreadyResolved` with
//!   the status the first one set.
//! - **Errors**: storage failures map to [`DeadLetterError::Unavailable`] (a lost
//!   connection, an exhausted pool, a timeout; also the rare permanent failure, which the
//!   contract has no other variant for: its message says which); a letter the table refuses
//!   (a NUL byte in a text field, say) is [`DeadLetterError::Invalid`].
//! - [`PgDeadLetterQueue::put_in`] writes a letter inside the caller's transaction, e.g. to
//!   record the failure atomically with the consumer's checkpoint.

use std::fmt;

use reprise_core::event_bus::Headers;
use reprise_core::instrument as names;
use reprise_core::resilience::dead_letter::validate;
use reprise_core::resilience::{
    DeadLetter, DeadLetterError, DeadLetterId, DeadLetterQuery, DeadLetterQueue, DeadLetterStats,
    DeadLetterStatus, ErrorClass, NewDeadLetter, Resolution,
};
use reprise_core::{BoxFuture, Payload, StoreError, Timestamp};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgRow, PgTypeInfo, PgValueFormat, PgValueRef, Postgres};
use sqlx::{Connection, PgConnection, Row, Transaction};

use crate::config::PgConfig;
use crate::error::{SetupError, classify, database_error};
use crate::headers::{encode_headers, parse_headers};
use crate::rows::limit_to_i64;
use crate::store::PgEventStore;

/// Dead letters in PostgreSQL. Cheap to clone: clones share the store's pool.
#[derive(Clone)]
pub struct PgDeadLetterQueue {
    store: PgEventStore,
    name: String,
}

impl fmt::Debug for PgDeadLetterQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgDeadLetterQueue")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl PgDeadLetterQueue {
    /// A queue in `store`'s schema, on its pool.
    #[must_use]
    pub fn new(store: &PgEventStore) -> Self {
        PgDeadLetterQueue {
            name: format!("postgres:{}", store.config().schema),
            store: store.clone(),
        }
    }

    /// Connects as [`PgEventStore::connect`] does (validating settings, preparing or
    /// verifying the schema per `config.migrations`), for tools that only need the queue.
    ///
    /// # Errors
    /// As [`PgEventStore::connect`].
    pub async fn connect(config: PgConfig) -> Result<Self, SetupError> {
        Ok(PgDeadLetterQueue::new(
            &PgEventStore::connect(config).await?,
        ))
    }

    /// The store whose pool and schema this queue uses.
    #[must_use]
    pub fn store(&self) -> &PgEventStore {
        &self.store
    }

    /// Stores `letter` inside the caller's transaction (under a savepoint: a refused letter
    /// leaves `transaction` usable). The id is valid once the caller commits.
    ///
    /// # Errors
    /// As [`DeadLetterQueue::put`].
    pub async fn put_in(
        &self,
        transaction: &mut Transaction<'_, Postgres>,
        letter: &NewDeadLetter,
    ) -> Result<DeadLetterId, DeadLetterError> {
        validate(letter)?;
        let row = LetterRow::of(letter)?;
        let connection: &mut PgConnection = transaction;
        let mut savepoint = connection.begin().await.map_err(|e| unavailable(&e))?;
        match insert(&mut savepoint, &row).await {
            Ok(id) => {
                savepoint.commit().await.map_err(|e| unavailable(&e))?;
                count(letter);
                Ok(id)
            }
            Err(error) => {
                savepoint.rollback().await.map_err(|e| unavailable(&e))?;
                Err(refused(&error))
            }
        }
    }

    /// [`DeadLetterQueue::list`], plus the rows that could not be read back (a hand-edited
    /// row with malformed headers, an unknown status): each as its id and the problem.
    /// They are skipped, never allowed to hide the other letters; `list` logs them, and
    /// an operator's tool should show them.
    ///
    /// # Errors
    /// As [`DeadLetterQueue::list`].
    pub async fn list_checked(
        &self,
        query: DeadLetterQuery,
    ) -> Result<(Vec<DeadLetter>, Vec<(DeadLetterId, DeadLetterError)>), DeadLetterError> {
        let rows = self
            .run(move |connection| {
                Box::pin(async move {
                    let sql = format!(
                        "SELECT {COLUMNS} FROM dead_letters \
                         WHERE ($1::text IS NULL OR topic = $1) AND ($2 OR status = 'pending') \
                         ORDER BY id LIMIT $3"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(query.topic.as_deref())
                        .bind(query.include_resolved)
                        .bind(limit_to_i64(query.limit))
                        .fetch_all(connection)
                        .await
                        .map_err(|e| classify(&e))?;
                    Ok(Ok(rows))
                })
            })
            .await?;
        let (mut letters, mut unreadable) = (Vec::new(), Vec::new());
        for row in &rows {
            match decode(row) {
                Ok(letter) => letters.push(letter),
                Err(error) => {
                    let id = row
                        .try_get::<i64, _>(0)
                        .map_or_else(|_| "?".to_owned(), |id| id.to_string());
                    unreadable.push((DeadLetterId(id), error));
                }
            }
        }
        Ok((letters, unreadable))
    }

    /// Runs `work` on a pooled connection within the store's operation timeout. `work`
    /// answers the contract's own errors inside, storage failures outside.
    async fn run<T, F>(&self, work: F) -> Result<T, DeadLetterError>
    where
        F: for<'c> FnOnce(
            &'c mut PgConnection,
        ) -> BoxFuture<'c, Result<Result<T, DeadLetterError>, StoreError>>,
    {
        match self.store.with_connection(work).await {
            Ok(answer) => answer,
            Err(error) => Err(store_unavailable(&error)),
        }
    }
}

/// The select list matching [`decode`].
const COLUMNS: &str = "id, topic, source_position, message_key, payload, headers::text, error, \
     error_class, attempts, failed_at, failed_at_ns, status, resolved_at, resolved_at_ns";

impl DeadLetterQueue for PgDeadLetterQueue {
    fn name(&self) -> &str {
        &self.name
    }

    fn put(&self, letter: NewDeadLetter) -> BoxFuture<'_, Result<DeadLetterId, DeadLetterError>> {
        Box::pin(async move {
            validate(&letter)?;
            let row = LetterRow::of(&letter)?;
            let id = self
                .run(move |connection| {
                    Box::pin(async move {
                        match insert(connection, &row).await {
                            Ok(id) => Ok(Ok(id)),
                            Err(error) if is_refusal(&error) => Ok(Err(refused(&error))),
                            Err(error) => Err(classify(&error)),
                        }
                    })
                })
                .await?;
            count(&letter);
            Ok(id)
        })
    }

    fn list(
        &self,
        query: DeadLetterQuery,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, DeadLetterError>> {
        Box::pin(async move {
            let (letters, unreadable) = self.list_checked(query).await?;
            for (id, error) in unreadable {
                tracing::warn!(queue = self.name, %id, %error, "dead letter skipped: its row cannot be read");
            }
            Ok(letters)
        })
    }

    fn get<'a>(
        &'a self,
        id: &'a DeadLetterId,
    ) -> BoxFuture<'a, Result<Option<DeadLetter>, DeadLetterError>> {
        Box::pin(async move {
            let Some(row_id) = row_id(id) else {
                return Ok(None);
            };
            self.run(move |connection| {
                Box::pin(async move {
                    let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1");
                    let row = sqlx::query(&sql)
                        .bind(row_id)
                        .fetch_optional(connection)
                        .await
                        .map_err(|e| classify(&e))?;
                    Ok(row.as_ref().map(decode).transpose())
                })
            })
            .await
        })
    }

    fn resolve<'a>(
        &'a self,
        id: &'a DeadLetterId,
        resolution: Resolution,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<(), DeadLetterError>> {
        Box::pin(async move {
            let Some(row_id) = row_id(id) else {
                return Err(DeadLetterError::NotFound(id.clone()));
            };
            let id = id.clone();
            self.run(move |connection| {
                Box::pin(async move { resolve(connection, id, row_id, resolution, at).await })
            })
            .await
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<DeadLetterStats, DeadLetterError>> {
        Box::pin(async move {
            self.run(|connection| {
                Box::pin(async move {
                    let row = sqlx::query(
                        "SELECT c.pending, o.failed_at, o.failed_at_ns \
                         FROM (SELECT count(*) AS pending FROM dead_letters \
                               WHERE status = 'pending') c \
                         LEFT JOIN LATERAL (SELECT failed_at, failed_at_ns FROM dead_letters \
                               WHERE status = 'pending' \
                               ORDER BY failed_at, failed_at_ns LIMIT 1) o ON true",
                    )
                    .fetch_one(connection)
                    .await
                    .map_err(|e| classify(&e))?;
                    Ok(stats(&row))
                })
            })
            .await
        })
    }
}

/// One conditional update; when it changes nothing, a second statement (a fresh snapshot,
/// after the winner committed) says why.
async fn resolve(
    connection: &mut PgConnection,
    id: DeadLetterId,
    row_id: i64,
    resolution: Resolution,
    at: Timestamp,
) -> Result<Result<(), DeadLetterError>, StoreError> {
    let status = resolution.status(at).as_str();
    let (micros, nanos) = split(at);
    let updated = sqlx::query(
        "UPDATE dead_letters SET status = $2, resolved_at = $3, resolved_at_ns = $4 \
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(row_id)
    .bind(status)
    .bind(micros)
    .bind(nanos)
    .execute(&mut *connection)
    .await
    .map_err(|e| classify(&e))?;
    if updated.rows_affected() == 1 {
        return Ok(Ok(()));
    }
    let row =
        sqlx::query("SELECT status, resolved_at, resolved_at_ns FROM dead_letters WHERE id = $1")
            .bind(row_id)
            .fetch_optional(&mut *connection)
            .await
            .map_err(|e| classify(&e))?;
    let Some(row) = row else {
        return Ok(Err(DeadLetterError::NotFound(id)));
    };
    Ok(match status_of(&row, 0) {
        Ok(DeadLetterStatus::Pending) => Err(DeadLetterError::Unavailable(format!(
            "dead letter {id} stayed pending although it could not be resolved; try again"
        ))),
        Ok(status) => Err(DeadLetterError::AlreadyResolved { id, status }),
        Err(error) => Err(error),
    })
}

/// A letter's column values, checked before any I/O.
struct LetterRow {
    topic: String,
    source_position: Option<String>,
    key: String,
    payload: String,
    headers: String,
    error: String,
    error_class: &'static str,
    attempts: i32,
    failed_at: PgMicros,
    failed_at_ns: i16,
}

impl LetterRow {
    fn of(letter: &NewDeadLetter) -> Result<Self, DeadLetterError> {
        let attempts = i32::try_from(letter.attempts).map_err(|_| {
            DeadLetterError::Invalid(format!("{} attempts do not fit a column", letter.attempts))
        })?;
        let (failed_at, failed_at_ns) = split(letter.failed_at);
        Ok(LetterRow {
            topic: letter.topic.clone(),
            source_position: letter.source_position.clone(),
            key: letter.key.clone(),
            payload: letter.payload.as_str().to_owned(),
            headers: encode_headers(&letter.headers),
            error: letter.error.clone(),
            error_class: letter.error_class.as_str(),
            attempts,
            failed_at,
            failed_at_ns,
        })
    }
}

async fn insert(
    connection: &mut PgConnection,
    row: &LetterRow,
) -> Result<DeadLetterId, sqlx::Error> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO dead_letters (topic, source_position, message_key, payload, headers, \
             error, error_class, attempts, failed_at, failed_at_ns) \
         VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10) RETURNING id",
    )
    .bind(&row.topic)
    .bind(row.source_position.as_deref())
    .bind(&row.key)
    .bind(&row.payload)
    .bind(&row.headers)
    .bind(&row.error)
    .bind(row.error_class)
    .bind(row.attempts)
    .bind(row.failed_at)
    .bind(row.failed_at_ns)
    .fetch_one(connection)
    .await?;
    Ok(DeadLetterId(id.to_string()))
}

fn count(letter: &NewDeadLetter) {
    metrics::counter!(names::DEAD_LETTERS, "topic" => letter.topic.clone()).increment(1);
}

/// The row id a [`DeadLetterId`] names: a positive decimal in canonical form (so that
/// `"007"` does not name the letter whose id reads back as `"7"`).
fn row_id(id: &DeadLetterId) -> Option<i64> {
    id.0.parse::<i64>()
        .ok()
        .filter(|n| *n > 0 && n.to_string() == id.0)
}

/// Class 22 (data exception: a NUL byte in text) and 23 (a constraint): the table refuses
/// this letter, and will again.
fn is_refusal(error: &sqlx::Error) -> bool {
    database_error(error).is_some_and(|(code, _)| code.starts_with("22") || code.starts_with("23"))
}

fn refused(error: &sqlx::Error) -> DeadLetterError {
    if is_refusal(error) {
        DeadLetterError::Invalid(format!("the dead_letters table refuses it: {error}"))
    } else {
        unavailable(error)
    }
}

fn unavailable(error: &sqlx::Error) -> DeadLetterError {
    store_unavailable(&classify(error))
}

fn store_unavailable(error: &StoreError) -> DeadLetterError {
    match error {
        StoreError::Transient(why) => DeadLetterError::Unavailable(why.clone()),
        StoreError::Timeout => DeadLetterError::Unavailable(
            "timed out (the operation's outcome is unknown; check before repeating it)".into(),
        ),
        other => DeadLetterError::Unavailable(format!("permanent storage failure: {other}")),
    }
}

fn corrupt(column: &str, error: &dyn fmt::Display) -> DeadLetterError {
    DeadLetterError::Invalid(format!("dead_letters row: cannot decode {column}: {error}"))
}

fn decode(row: &PgRow) -> Result<DeadLetter, DeadLetterError> {
    let get_text = |index: usize, column: &str| -> Result<String, DeadLetterError> {
        row.try_get(index).map_err(|e| corrupt(column, &e))
    };
    let id: i64 = row.try_get(0).map_err(|e| corrupt("id", &e))?;
    let source_position: Option<String> =
        row.try_get(2).map_err(|e| corrupt("source_position", &e))?;
    let headers = decode_headers(&get_text(5, "headers")?)?;
    let error_class = match get_text(7, "error_class")?.as_str() {
        "transient" => ErrorClass::Transient,
        "permanent" => ErrorClass::Permanent,
        other => return Err(corrupt("error_class", &other)),
    };
    let attempts: i32 = row.try_get(8).map_err(|e| corrupt("attempts", &e))?;
    let failed_at: PgMicros = row.try_get(9).map_err(|e| corrupt("failed_at", &e))?;
    let failed_at_ns: i16 = row.try_get(10).map_err(|e| corrupt("failed_at_ns", &e))?;
    Ok(DeadLetter {
        id: DeadLetterId(id.to_string()),
        letter: NewDeadLetter {
            topic: get_text(1, "topic")?,
            source_position,
            key: get_text(3, "message_key")?,
            payload: Payload::from_json_text(get_text(4, "payload")?),
            headers,
            error: get_text(6, "error")?,
            error_class,
            attempts: u32::try_from(attempts).map_err(|e| corrupt("attempts", &e))?,
            failed_at: join(failed_at, failed_at_ns),
        },
        status: status_of(row, 11)?,
    })
}

/// The status in columns `first` (status), `first + 1` (resolved_at), `first + 2`
/// (resolved_at_ns).
fn status_of(row: &PgRow, first: usize) -> Result<DeadLetterStatus, DeadLetterError> {
    let status: String = row.try_get(first).map_err(|e| corrupt("status", &e))?;
    let at: Option<PgMicros> = row
        .try_get(first + 1)
        .map_err(|e| corrupt("resolved_at", &e))?;
    let ns: Option<i16> = row
        .try_get(first + 2)
        .map_err(|e| corrupt("resolved_at_ns", &e))?;
    let at = at.map(|micros| join(micros, ns.unwrap_or(0)));
    match (status.as_str(), at) {
        ("pending", None) => Ok(DeadLetterStatus::Pending),
        ("retried", Some(at)) => Ok(DeadLetterStatus::Retried { at }),
        ("discarded", Some(at)) => Ok(DeadLetterStatus::Discarded { at }),
        (other, at) => Err(corrupt("status", &format!("{other} resolved at {at:?}"))),
    }
}

fn stats(row: &PgRow) -> Result<DeadLetterStats, DeadLetterError> {
    let pending: i64 = row.try_get(0).map_err(|e| corrupt("count", &e))?;
    let oldest: Option<PgMicros> = row.try_get(1).map_err(|e| corrupt("failed_at", &e))?;
    let ns: Option<i16> = row.try_get(2).map_err(|e| corrupt("failed_at_ns", &e))?;
    Ok(DeadLetterStats {
        pending: u64::try_from(pending).map_err(|e| corrupt("count", &e))?,
        oldest_pending_failed_at: oldest.map(|micros| join(micros, ns.unwrap_or(0))),
    })
}

fn decode_headers(json: &str) -> Result<Headers, DeadLetterError> {
    parse_headers(json).map_err(|e| corrupt("headers", &e))
}

/// Microseconds from the Unix epoch to PostgreSQL's, 2000-01-01T00:00:00Z.
const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800 * 1_000_000;

/// A `timestamptz` in PostgreSQL's binary format: microseconds since 2000-01-01 UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PgMicros(i64);

impl sqlx::Type<Postgres> for PgMicros {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_name("timestamptz")
    }
}

impl sqlx::Encode<'_, Postgres> for PgMicros {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.extend_from_slice(&self.0.to_be_bytes());
        Ok(IsNull::No)
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for PgMicros {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        match value.format() {
            PgValueFormat::Binary => {
                let bytes: [u8; 8] = value.as_bytes()?.try_into()?;
                Ok(PgMicros(i64::from_be_bytes(bytes)))
            }
            PgValueFormat::Text => Err("timestamptz in text format: use a prepared query".into()),
        }
    }
}

/// A timestamp as `timestamptz` microseconds plus the nanoseconds below them.
fn split(at: Timestamp) -> (PgMicros, i16) {
    let nanos = at.as_unix_nanos();
    let unix_micros = i64::try_from(nanos / 1_000).unwrap_or(i64::MAX);
    let below = i16::try_from(nanos % 1_000).expect("below 1000");
    (
        PgMicros(unix_micros.saturating_sub(POSTGRES_EPOCH_UNIX_MICROS)),
        below,
    )
}

/// The inverse of [`split`]; instants before the Unix epoch (rows written by hand)
/// saturate at it.
fn join(micros: PgMicros, nanos: i16) -> Timestamp {
    let unix_micros = micros.0.saturating_add(POSTGRES_EPOCH_UNIX_MICROS);
    let whole = u64::try_from(unix_micros)
        .unwrap_or(0)
        .saturating_mul(1_000);
    Timestamp::from_unix_nanos(whole.saturating_add(u64::try_from(nanos).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_split_and_join_exactly() {
        for nanos in [
            0,
            1,
            999,
            1_000,
            946_684_800_000_000_000,
            1_767_225_600_123_456_789,
            u64::MAX / 2,
        ] {
            let at = Timestamp::from_unix_nanos(nanos);
            let (micros, below) = split(at);
            assert!((0..1_000).contains(&below));
            assert_eq!(join(micros, below), at, "{nanos}");
        }
        assert_eq!(
            split(Timestamp::from_unix_nanos(946_684_800_000_001_000)).0,
            PgMicros(1)
        );
    }

    #[test]
    fn only_canonical_positive_decimals_are_row_ids() {
        assert_eq!(row_id(&"42".into()), Some(42));
        for not_an_id in [
            "",
            "0",
            "-1",
            "007",
            "+7",
            "4 2",
            "x",
            "99999999999999999999",
        ] {
            assert_eq!(row_id(&not_an_id.into()), None, "{not_an_id:?}");
        }
    }

    #[test]
    fn headers_keep_order_and_duplicates() {
        let headers = Headers(vec![
            ("b".into(), "1".into()),
            ("a".into(), "2".into()),
            ("b".into(), "3\"quoted\" ünïcode".into()),
        ]);
        assert_eq!(decode_headers(&encode_headers(&headers)).unwrap(), headers);
    }

    #[test]
    fn storage_failures_are_unavailable() {
        let lost = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(matches!(
            unavailable(&lost),
            DeadLetterError::Unavailable(_)
        ));
        assert!(matches!(
            unavailable(&sqlx::Error::PoolTimedOut),
            DeadLetterError::Unavailable(why) if why.contains("pool exhausted")
        ));
        assert!(matches!(
            store_unavailable(&StoreError::Timeout),
            DeadLetterError::Unavailable(_)
        ));
    }
}
