use reprise_postgres::schema::{code_version, database_version, migrator};
use reprise_postgres::{MigrationMode, PgEventStore, SetupError};

use crate::support::{config, connect, drop_schema};

const TABLES: [&str; 7] = [
    "streams",
    "events",
    "snapshots",
    "subscription_checkpoints",
    "outbox",
    "dead_letters",
    "saga_deadlines",
];

async fn existing_tables(store: &PgEventStore) -> Vec<String> {
    let mut found = Vec::new();
    for table in TABLES {
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
    assert_eq!(existing_tables(&store).await, TABLES);
    assert_eq!(
        database_version(store.pool()).await.unwrap(),
        code_version()
    );

    // Down one step at a time: each down migration must undo exactly its up migration.
    for target in (0..code_version()).rev() {
        migrator().undo(store.pool(), target).await.unwrap();
        assert_eq!(database_version(store.pool()).await.unwrap(), target);
        // Migration 1 creates two tables (streams, events), 2-6 one table each, 7 a function.
        let expected = match usize::try_from(target).unwrap() {
            0 => 0,
            n => n.min(6) + 1,
        };
        assert_eq!(
            guard_exists(&store).await,
            target >= 7,
            "append guard after undo to {target}"
        );
        assert_eq!(
            existing_tables(&store).await,
            TABLES[..expected],
            "after undo to {target}"
        );
    }
    store.close().await;

    // And up again from nothing: the down migrations left nothing that blocks a rerun.
    let again = connect(config).await;
    assert_eq!(existing_tables(&again).await, TABLES);
    assert!(guard_exists(&again).await);
    drop_schema(&again).await;
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
    assert_eq!(existing_tables(&verified).await, TABLES);
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
