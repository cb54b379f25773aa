//! Mapping between `events` rows and [`RecordedEvent`]s: one column list, one decoder, so
//! every read path returns identical values.

use std::sync::Arc;

use reprise_core::{EventId, Metadata, Payload, RecordedEvent, StoreError, StreamId, Timestamp};
use sqlx::Row;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgRow, PgTypeInfo, PgValueFormat, PgValueRef, Postgres};
use uuid::Uuid;

/// The select list matching [`EventDecoder::decode`].
pub(crate) const EVENT_COLUMNS: &str = "global_position, stream_id, stream_version, event_id, \
     event_type, schema_version, payload::text, correlation_id, causation_id, traceparent, \
     recorded_at";

/// Seconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01T00:00:00Z.
const POSTGRES_EPOCH_UNIX_SECONDS: i64 = 946_684_800;

/// A `timestamptz` in PostgreSQL's binary wire format: microseconds since 2000-01-01 UTC.
/// Decoding the 8 bytes directly avoids a date-time crate in the build for one column, and
/// is cheaper than converting on the server (`extract(epoch ..)` costs ~2 µs a row, a large
/// share of a catch-up read).
struct PgTimestampMicros(i64);

impl sqlx::Type<Postgres> for PgTimestampMicros {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_name("timestamptz")
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for PgTimestampMicros {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        match value.format() {
            PgValueFormat::Binary => {
                let bytes: [u8; 8] = value.as_bytes()?.try_into()?;
                Ok(PgTimestampMicros(i64::from_be_bytes(bytes)))
            }
            // Prepared statements (all of this crate's queries) return binary results.
            PgValueFormat::Text => Err("timestamptz in text format: use a prepared query".into()),
        }
    }
}

impl PgTimestampMicros {
    /// Saturates at the Unix epoch: `Timestamp` cannot represent earlier instants.
    fn to_timestamp(&self) -> Timestamp {
        let unix_micros = self
            .0
            .saturating_add(POSTGRES_EPOCH_UNIX_SECONDS * 1_000_000);
        let nanos = u64::try_from(unix_micros)
            .unwrap_or(0)
            .saturating_mul(1_000);
        Timestamp::from_unix_nanos(nanos)
    }
}

/// Turns rows into events. Reads return runs of rows with the same stream (a stream load
/// is nothing else) and few distinct event types, so the decoder reuses the previous row's
/// `Arc<str>` when the text matches: one allocation saved per column per row, which is a
/// measurable share of a catch-up read.
#[derive(Default)]
pub(crate) struct EventDecoder {
    stream: Option<StreamId>,
    event_type: Option<Arc<str>>,
}

impl EventDecoder {
    pub(crate) fn decode(&mut self, row: &PgRow) -> Result<RecordedEvent, StoreError> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Permanent(format!("events row: cannot decode {what}: {e}"))
        };
        let position: i64 = row.try_get(0).map_err(|e| corrupt("global_position", &e))?;
        let stream: &str = row.try_get(1).map_err(|e| corrupt("stream_id", &e))?;
        let version: i64 = row.try_get(2).map_err(|e| corrupt("stream_version", &e))?;
        let event_id: Uuid = row.try_get(3).map_err(|e| corrupt("event_id", &e))?;
        let event_type: &str = row.try_get(4).map_err(|e| corrupt("event_type", &e))?;
        let schema_version: i32 = row.try_get(5).map_err(|e| corrupt("schema_version", &e))?;
        let payload: &str = row.try_get(6).map_err(|e| corrupt("payload", &e))?;
        let correlation: Option<Uuid> =
            row.try_get(7).map_err(|e| corrupt("correlation_id", &e))?;
        let causation: Option<Uuid> = row.try_get(8).map_err(|e| corrupt("causation_id", &e))?;
        let traceparent: Option<String> = row.try_get(9).map_err(|e| corrupt("traceparent", &e))?;
        let recorded_at: PgTimestampMicros =
            row.try_get(10).map_err(|e| corrupt("recorded_at", &e))?;

        let stream = match &self.stream {
            Some(previous) if previous.as_str() == stream => previous.clone(),
            _ => self.stream.insert(StreamId::new(stream)).clone(),
        };
        let event_type = match &self.event_type {
            Some(previous) if &**previous == event_type => Arc::clone(previous),
            _ => Arc::clone(self.event_type.insert(Arc::from(event_type))),
        };
        Ok(RecordedEvent {
            stream,
            version: to_u64(version, "stream_version")?,
            position: to_u64(position, "global_position")?,
            event_id: EventId(event_id.as_u128()),
            event_type,
            schema_version: u32::try_from(schema_version)
                .map_err(|e| corrupt("schema_version", &e))?,
            payload: Payload::from_json_text(payload),
            metadata: Metadata {
                correlation_id: correlation.as_ref().map(Uuid::as_u128),
                causation_id: causation.as_ref().map(Uuid::as_u128),
                traceparent,
            },
            recorded_at: recorded_at.to_timestamp(),
        })
    }
}

/// Columns are `CHECK`ed positive; a negative value means the table was tampered with.
pub(crate) fn to_u64(value: i64, column: &str) -> Result<u64, StoreError> {
    u64::try_from(value)
        .map_err(|_| StoreError::Permanent(format!("events row: negative {column} {value}")))
}

/// Positions, versions and limits cross into SQL as `int8`.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn limit_to_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_timestamps_convert_to_unix_time() {
        let at = |micros| PgTimestampMicros(micros).to_timestamp().as_unix_nanos();
        assert_eq!(
            at(0),
            946_684_800_000_000_000,
            "2000-01-01 is PostgreSQL's zero"
        );
        assert_eq!(at(1_500_000), 946_684_801_500_000_000);
        assert_eq!(
            at(-POSTGRES_EPOCH_UNIX_SECONDS * 1_000_000),
            0,
            "the Unix epoch"
        );
        assert_eq!(at(i64::MIN), 0, "earlier instants saturate");
    }
}
