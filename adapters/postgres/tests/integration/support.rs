//! Shared setup: the database URL, per-test schemas, event builders.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use reprise_core::{EventId, Metadata, NewEvent, Payload};
use reprise_postgres::{PgConfig, PgEventStore};

/// `DATABASE_URL`, or a panic that says how to get one.
pub fn database_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "DATABASE_URL is not set: these tests need PostgreSQL. Run \
             `eval \"$(sudo scripts/postgres.sh)\"` (starts PostgreSQL 15 and prints the URL) \
             and try again"
        ),
    }
}

/// A schema name no other test or run uses.
pub fn unique_schema(test: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "t_{test}_{:x}_{n}",
        (nanos ^ u128::from(std::process::id())) as u32
    )
}

pub fn config(test: &str) -> PgConfig {
    PgConfig::new(database_url()).with_schema(unique_schema(test))
}

/// A store in a fresh schema, migrated.
pub async fn fresh_store(test: &str) -> PgEventStore {
    connect(config(test)).await
}

pub async fn connect(config: PgConfig) -> PgEventStore {
    let url_hint = format!("{config:?}");
    PgEventStore::connect(config).await.unwrap_or_else(|e| {
        panic!("cannot reach PostgreSQL ({url_hint}): {e}. Is it running? See scripts/postgres.sh")
    })
}

/// Drops the test's schema. Called at the end of passing tests; a failing test leaves its
/// schema behind for inspection.
pub async fn drop_schema(store: &PgEventStore) {
    let sql = format!("DROP SCHEMA {} CASCADE", store.config().schema);
    sqlx::query(&sql)
        .execute(store.pool())
        .await
        .expect("drop the test schema");
    store.close().await;
}

pub fn event(id: u128, n: u64) -> NewEvent {
    NewEvent {
        event_id: EventId(id),
        event_type: "Tested".into(),
        schema_version: 1,
        payload: Payload::from_json_text(format!(r#"{{"n":{n}}}"#)),
        metadata: Metadata {
            correlation_id: Some(0xc0ffee),
            causation_id: Some(id),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        },
    }
}

/// Ids that do not collide across tests and runs (event ids are globally unique per schema,
/// but keeping them unique everywhere makes leftovers harmless).
pub fn id_base() -> u128 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (nanos << 32) ^ (u128::from(std::process::id()) << 80)
}
