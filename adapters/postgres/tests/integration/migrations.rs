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
    let missing =
        PgEventStore::connect(config.clone().with_migrations(MigrationMode::Verify)).await;
    match &missing {
        Err(e @ SetupError::SchemaMissing { schema, .. }) => {
            assert_eq!(*schema, config.schema);
            assert!(e.to_string().contains("nothing was created"), "{e}");
        }
        other => panic!("a missing schema must be refused in Verify mode, got {other:?}"),
    }
    let admin = sqlx::PgPool::connect(&crate::support::database_url())
        .await
        .expect("connect");
    let exists = |admin: sqlx::PgPool, schema: String| async move {
        sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(&admin)
            .await
            .unwrap()
    };
    assert!(
        !exists(admin.clone(), config.schema.clone()).await,
        "Verify created the schema"
    );
    sqlx::query(&format!("CREATE SCHEMA {}", config.schema))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
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

#[tokio::test]
async fn an_unreachable_server_is_named_with_the_cause() {
    // Port 1 on loopback: nothing listens there.
    let config = reprise_postgres::PgConfig::new("postgres://u:secret@127.0.0.1:1/nowhere")
        .with_schema("unreachable");
    let error = PgEventStore::connect(config)
        .await
        .expect_err("nothing listens on port 1");
    let text = error.to_string();
    assert!(
        matches!(error, SetupError::Unreachable { .. })
            && text.contains("127.0.0.1:1/nowhere")
            && text.contains("refused")
            && !text.contains("secret"),
        "{text}"
    );
}

/// The database refuses a version gap in a stream, whoever writes: a raw INSERT skipping
/// a version fails, one that continues the stream (alone or several per statement) passes.
#[tokio::test]
async fn the_database_refuses_a_gap_in_a_streams_versions() {
    let store = crate::support::fresh_store("version_gap").await;
    let insert = |versions: &'static [i64]| {
        let pool = store.pool().clone();
        async move {
            sqlx::query(
                "INSERT INTO events (global_position, stream_id, stream_version, event_id, \
                 event_type, schema_version, payload) \
                 SELECT (pg_current_xact_id()::text::int8 << 16) + v.n, 'raw-1', v.version, \
                        gen_random_uuid(), 'T', 1, '{}' \
                 FROM unnest($1::int8[]) WITH ORDINALITY AS v(version, n)",
            )
            .bind(versions)
            .execute(&pool)
            .await
        }
    };
    insert(&[1]).await.expect("version 1 starts the stream");
    let gap = insert(&[3]).await.expect_err("version 2 is missing");
    let text = gap.to_string();
    assert!(
        text.contains("gap") && text.contains("raw-1"),
        "the refusal names the stream: {text}"
    );
    let db = gap.as_database_error().expect("a database error");
    assert_eq!(db.code().as_deref(), Some("23514"));
    assert_eq!(db.constraint(), Some("events_stream_versions_contiguous"));
    insert(&[2, 3, 4]).await.expect("a contiguous batch passes");
    insert(&[6, 7])
        .await
        .expect_err("a batch starting past the end is refused");
    let starts_late = |pool: sqlx::PgPool| async move {
        sqlx::query(
            "INSERT INTO events (global_position, stream_id, stream_version, event_id, \
             event_type, schema_version, payload) \
             VALUES ((pg_current_xact_id()::text::int8 << 16) + 1, 'raw-2', 2, \
                     gen_random_uuid(), 'T', 1, '{}')",
        )
        .execute(&pool)
        .await
    };
    starts_late(store.pool().clone())
        .await
        .expect_err("a stream cannot start at version 2");
    crate::support::drop_schema(&store).await;
}
