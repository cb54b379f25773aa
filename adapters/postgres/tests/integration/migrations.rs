use reprise_postgres::schema::{code_version, database_version, migrator};
use reprise_postgres::{MigrationMode, PgEventStore, SetupError};
use sqlx::Connection;

use crate::support::{config, connect, drop_schema};

/// Every table a migration creates: its name, the migration that creates it, and the one
/// that drops it, if any.
const TABLES: [(&str, i64, Option<i64>); 7] = [
    ("streams", 1, None),
    ("events", 1, None),
    ("snapshots", 2, None),
    ("subscription_checkpoints", 3, None),
    ("outbox", 4, Some(9)),
    ("dead_letters", 5, None),
    ("saga_deadlines", 6, None),
];

/// The tables that exist at schema version `version`, in [`TABLES`] order.
fn tables_at(version: i64) -> Vec<String> {
    TABLES
        .iter()
        .filter(|(_, created, dropped)| *created <= version && dropped.is_none_or(|d| version < d))
        .map(|(name, _, _)| (*name).to_owned())
        .collect()
}

async fn existing_tables(store: &PgEventStore) -> Vec<String> {
    let mut found = Vec::new();
    for (table, _, _) in TABLES {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(store.pool())
            .await
            .unwrap();
        if exists {
            found.push(table.to_owned());
        }
    }
    found
}

async fn guard_exists(store: &PgEventStore) -> bool {
    sqlx::query_scalar("SELECT to_regproc('append_expectation_failed') IS NOT NULL")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn migrations_go_up_down_and_up_again() {
    let config = config("migrations");
    let store = connect(config.clone()).await;
    assert_eq!(existing_tables(&store).await, tables_at(code_version()));
    assert!(
        !existing_tables(&store).await.contains(&"outbox".to_owned()),
        "0009 drops the outbox"
    );
    assert_eq!(
        database_version(store.pool()).await.unwrap(),
        code_version()
    );

    // Down one step at a time: each down migration must undo exactly its up migration.
    for target in (0..code_version()).rev() {
        migrator().undo(store.pool(), target).await.unwrap();
        assert_eq!(database_version(store.pool()).await.unwrap(), target);
        assert_eq!(
            guard_exists(&store).await,
            target >= 7,
            "append guard after undo to {target}"
        );
        assert_eq!(
            existing_tables(&store).await,
            tables_at(target),
            "after undo to {target}"
        );
    }
    store.close().await;

    // And up again from nothing: the down migrations left nothing that blocks a rerun.
    let again = connect(config).await;
    assert_eq!(existing_tables(&again).await, tables_at(code_version()));
    assert!(guard_exists(&again).await);
    drop_schema(&again).await;
}

/// Messages still in the outbox would never be published once it is dropped: migration
/// 0009 refuses to run until the previous release's relay drained them.
#[tokio::test]
async fn dropping_the_outbox_waits_until_it_is_drained() {
    let store = connect(config("drop_outbox")).await;
    migrator().undo(store.pool(), 8).await.unwrap();
    sqlx::query("INSERT INTO outbox (topic, message_key, payload) VALUES ('orders', 'o-1', '{}')")
        .execute(store.pool())
        .await
        .unwrap();

    // On a dedicated connection, closed afterwards: a failed run returns without releasing
    // sqlx's migration lock (one per database), which would block the migrations of every
    // schema for as long as that session lives.
    let mut connection = store.pool().acquire().await.unwrap().detach();
    let refused = migrator().run(&mut connection).await;
    connection.close().await.unwrap();
    let message = format!(
        "{:?}",
        refused.expect_err("an undrained outbox must not be dropped")
    );
    assert!(message.contains("unpublished"), "{message}");
    assert_eq!(database_version(store.pool()).await.unwrap(), 8);
    assert!(existing_tables(&store).await.contains(&"outbox".to_owned()));

    sqlx::query("UPDATE outbox SET published_at = now()")
        .execute(store.pool())
        .await
        .unwrap();
    migrator().run(store.pool()).await.unwrap();
    assert_eq!(
        database_version(store.pool()).await.unwrap(),
        code_version()
    );
    assert_eq!(existing_tables(&store).await, tables_at(code_version()));
    drop_schema(&store).await;
}

#[tokio::test]
async fn a_schema_from_a_newer_release_is_refused_at_start() {
    let config = config("newer");
    let store = connect(config.clone()).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', true, '\\x00', 0)",
    )
    .execute(store.pool())
    .await
    .unwrap();

    for mode in [MigrationMode::Apply, MigrationMode::Verify] {
        let refused = PgEventStore::connect(config.clone().with_migrations(mode)).await;
        match refused {
            Err(SetupError::SchemaTooNew {
                database: 9999,
                code,
            }) => {
                assert_eq!(code, code_version());
                let message = SetupError::SchemaTooNew {
                    database: 9999,
                    code,
                }
                .to_string();
                assert!(
                    message.contains("9999") && message.contains("newer"),
                    "{message}"
                );
            }
            other => panic!("{mode:?}: expected SchemaTooNew, got {other:?}"),
        }
    }
    drop_schema(&store).await;
}

#[tokio::test]
async fn verify_mode_changes_nothing_and_requires_the_current_schema() {
    let config = config("verify");
    let behind = PgEventStore::connect(config.clone().with_migrations(MigrationMode::Verify)).await;
    assert!(
        matches!(behind, Err(SetupError::SchemaBehind { database: 0, .. })),
        "an unmigrated schema must be refused in Verify mode, got {behind:?}"
    );
    let applied = connect(config.clone()).await;
    let verified = connect(config.with_migrations(MigrationMode::Verify)).await;
    assert_eq!(existing_tables(&verified).await, tables_at(code_version()));
    verified.close().await;
    drop_schema(&applied).await;
}

#[tokio::test]
async fn a_transaction_counter_behind_the_stored_positions_is_refused_at_start() {
    let config = config("xid_behind");
    let store = connect(config.clone()).await;
    // What a logical restore into a fresh cluster looks like: rows written under transaction
    // ids the new cluster has not reached yet.
    let future_xid: i64 = 1 << 40;
    sqlx::query(
        "INSERT INTO events (global_position, transaction_id, stream_id, stream_version, event_id, \
         event_type, schema_version, payload) \
         VALUES (($1::int8 << 16) + 1, $1::text::xid8, 'restored-1', 1, gen_random_uuid(), 'T', 1, '{}')",
    )
    .bind(future_xid)
    .execute(store.pool())
    .await
    .unwrap();
    match PgEventStore::connect(config).await {
        Err(SetupError::TransactionIdsBehindEvents { next, stored }) => {
            assert_eq!(stored, future_xid);
            assert!(next < stored);
        }
        other => panic!("expected TransactionIdsBehindEvents, got {other:?}"),
    }
    drop_schema(&store).await;
}
