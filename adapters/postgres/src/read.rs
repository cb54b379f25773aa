//! The read paths: one stream by version, and all streams by global position below the
//! visibility horizon.
//!
//! The horizon is `pg_snapshot_xmin(pg_current_snapshot()) << 16`: the first position the
//! oldest still-running transaction could write. Everything below it is final (its writers
//! have committed or aborted), so [`committed_prefix`] never returns an event past a hole
//! that may still fill. See the crate docs for why positions encode transaction ids.
//!
//! The horizon is written as a scalar subquery so PostgreSQL computes it once per statement
//! (an init plan) and uses it as an index bound; inline, `pg_current_snapshot()` would be
//! evaluated for every candidate row.

use futures::TryStreamExt;
use reprise_core::{RecordedEvent, StoreError, StreamId};
use sqlx::PgConnection;

use crate::error::classify;
use crate::rows::{EVENT_COLUMNS, EventDecoder, limit_to_i64, to_i64};

/// Events of `stream` from `from_version` on, in version order.
pub(crate) async fn stream_events(
    connection: &mut PgConnection,
    stream: &StreamId,
    from_version: u64,
    limit: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 AND stream_version >= $2 \
         ORDER BY stream_version LIMIT $3"
    );
    let rows = sqlx::query(&sql)
        .bind(stream.as_str())
        .bind(to_i64(from_version))
        .bind(limit_to_i64(limit))
        .fetch_all(&mut *connection)
        .await
        .map_err(|e| classify(&e))?;
    let mut decoder = EventDecoder::default();
    rows.iter().map(|row| decoder.decode(row)).collect()
}

/// A page of the global order from `from_position`, and whether committed events beyond the
/// page are being held back by an older transaction that is still running.
pub(crate) struct Page {
    pub events: Vec<RecordedEvent>,
    pub held_back: bool,
}

/// Events with `position >= from_position` below the visibility horizon, in global order.
pub(crate) async fn committed_prefix(
    connection: &mut PgConnection,
    from_position: u64,
    limit: usize,
) -> Result<Page, StoreError> {
    // Limit first, then cut at the horizon: positions below the horizon precede those above
    // it, so the result is still a prefix of the global order. Keeping the horizon out of the
    // index condition leaves the planner one obvious plan (walk the primary key from $1 and
    // stop after $2 rows) even on a freshly loaded table without statistics, where a
    // two-sided range estimate would tempt it into scanning and sorting the whole range.
    let sql = format!(
        "SELECT * FROM (SELECT {EVENT_COLUMNS} FROM events WHERE global_position >= $1 \
         ORDER BY global_position LIMIT $2) page \
         WHERE global_position < (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8 << 16) \
         ORDER BY global_position"
    );
    // Streamed, so rows are decoded while the server is still producing the rest.
    let mut decoder = EventDecoder::default();
    let events: Vec<RecordedEvent> = sqlx::query(&sql)
        .bind(to_i64(from_position))
        .bind(limit_to_i64(limit))
        .fetch(&mut *connection)
        .map_err(|e| classify(&e))
        .and_then(|row| std::future::ready(decoder.decode(&row)))
        .try_collect()
        .await?;
    // A full page needs no second look: the caller comes back for more anyway.
    let held_back = if events.len() < limit {
        let after = events.last().map_or(from_position, |e| e.position + 1);
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM events WHERE global_position >= greatest($1, \
             (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8 << 16)))",
        )
        .bind(to_i64(after))
        .fetch_one(&mut *connection)
        .await
        .map_err(|e| classify(&e))?
    } else {
        false
    };
    Ok(Page { events, held_back })
}
