//! The transactional outbox: messages stored in the same transaction as the events they
//! announce ([`PgEventStore::append_with_outbox`]), so a crash can never leave an appended
//! event unannounced or announce an event that was not appended.
//!
//! A relay (the Kafka adapter's job) drains it: [`PgEventStore::outbox_pending`] returns
//! unpublished rows in id order, [`PgEventStore::mark_outbox_published`] stamps them after the
//! broker acknowledged. Delivery is at-least-once: a relay that crashes between publish and
//! stamp publishes again, and consumers deduplicate on the event id header.
//!
//! Payloads are stored as `json` (validated, kept byte for byte): the relay publishes exactly
//! the text that was enqueued.
//!
//! Ordering: ids come from an identity column, allocated when the row is inserted. Two
//! appends to the same stream are serialised by the stream's row lock, so the later one gets
//! the higher id: per-stream (per partition key) order holds. Across streams, order follows
//! insertion, which is all Kafka's per-partition ordering can use anyway.

use reprise_core::event_bus::Headers;
use reprise_core::{OutgoingMessage, Payload, StoreError};
use sqlx::{PgConnection, Row};

use crate::error::classify;
use crate::rows::limit_to_i64;
use crate::store::PgEventStore;

/// A message waiting in the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Outbox row id: increasing in insertion order.
    pub id: i64,
    pub message: OutgoingMessage,
}

/// Inserts `messages` with one `unnest` statement, inside the caller's transaction.
pub(crate) async fn enqueue(
    connection: &mut PgConnection,
    messages: &[OutgoingMessage],
) -> Result<(), sqlx::Error> {
    let topics: Vec<&str> = messages.iter().map(|m| &*m.topic).collect();
    let keys: Vec<&str> = messages.iter().map(|m| &*m.key).collect();
    let payloads: Vec<&str> = messages.iter().map(|m| m.payload.as_str()).collect();
    let headers: Vec<String> = messages
        .iter()
        .map(|m| encode_headers(&m.headers))
        .collect();
    sqlx::query(
        "INSERT INTO outbox (topic, message_key, payload, headers) \
         SELECT m.topic, m.message_key, m.payload::json, m.headers::jsonb \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
              WITH ORDINALITY AS m(topic, message_key, payload, headers, ordinal) \
         ORDER BY m.ordinal",
    )
    .bind(&topics)
    .bind(&keys)
    .bind(&payloads)
    .bind(&headers)
    .execute(connection)
    .await?;
    Ok(())
}

/// Headers are ordered and may repeat a name (as in Kafka), hence pairs, not an object.
/// Shared by the outbox and the dead-letter table, which store headers alike.
pub(crate) fn encode_headers(headers: &Headers) -> String {
    let pairs: Vec<[&str; 2]> = headers
        .0
        .iter()
        .map(|(k, v)| [k.as_str(), v.as_str()])
        .collect();
    serde_json::to_string(&pairs).expect("string pairs always serialize")
}

/// The inverse of [`encode_headers`].
pub(crate) fn parse_headers(json: &str) -> Result<Headers, serde_json::Error> {
    serde_json::from_str::<Vec<(String, String)>>(json).map(Headers)
}

fn decode_headers(json: &str) -> Result<Headers, StoreError> {
    parse_headers(json).map_err(|e| StoreError::Permanent(format!("outbox row: headers: {e}")))
}

impl PgEventStore {
    /// Up to `limit` unpublished outbox messages, oldest first.
    ///
    /// # Errors
    /// Store failures.
    pub async fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.with_connection(move |connection| {
            Box::pin(async move {
                let rows = sqlx::query(
                    "SELECT id, topic, message_key, payload::text, headers::text FROM outbox \
                     WHERE published_at IS NULL ORDER BY id LIMIT $1",
                )
                .bind(limit_to_i64(limit))
                .fetch_all(connection)
                .await
                .map_err(|e| classify(&e))?;
                rows.iter()
                    .map(|row| {
                        let decode =
                            |e: sqlx::Error| StoreError::Permanent(format!("outbox row: {e}"));
                        let headers: String = row.try_get(4).map_err(decode)?;
                        Ok(OutboxEntry {
                            id: row.try_get(0).map_err(decode)?,
                            message: OutgoingMessage {
                                topic: row.try_get::<String, _>(1).map_err(decode)?.into(),
                                key: row.try_get::<String, _>(2).map_err(decode)?.into(),
                                payload: Payload::from_json_text(
                                    row.try_get::<String, _>(3).map_err(decode)?,
                                ),
                                headers: decode_headers(&headers)?,
                            },
                        })
                    })
                    .collect()
            })
        })
        .await
    }

    /// Marks outbox rows as published. Returns how many were still unpublished.
    ///
    /// # Errors
    /// Store failures.
    pub async fn mark_outbox_published(&self, ids: &[i64]) -> Result<u64, StoreError> {
        let ids = ids.to_vec();
        self.with_connection(move |connection| {
            Box::pin(async move {
                let done = sqlx::query(
                    "UPDATE outbox SET published_at = now() \
                     WHERE id = ANY($1) AND published_at IS NULL",
                )
                .bind(&ids)
                .execute(connection)
                .await
                .map_err(|e| classify(&e))?;
                Ok(done.rows_affected())
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_order_and_duplicates() {
        let headers = Headers(vec![
            ("b".into(), "1".into()),
            ("a".into(), "2".into()),
            ("b".into(), "3\"quoted\"".into()),
        ]);
        assert_eq!(decode_headers(&encode_headers(&headers)).unwrap(), headers);
    }
}
