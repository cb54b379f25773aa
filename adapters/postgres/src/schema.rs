//! The database schema: versioned, reversible migrations embedded from `migrations/` at the
//! workspace root, and the start-up check that refuses an unknown newer schema.
//!
//! Migrations are plain SQL files (`NNNN_name.up.sql` / `NNNN_name.down.sql`) run by sqlx's
//! migrator, so operators can also apply or revert them with `sqlx migrate` without this
//! code. They create unqualified tables: the connection's `search_path` is the configured
//! schema, which is also where sqlx keeps its `_sqlx_migrations` bookkeeping table.
//!
//! Why refuse a newer schema: a release that does not know migration N+1 cannot know what it
//! changed (a renamed column, a new constraint, a changed position encoding). Failing at start
//! with both version numbers is cheaper than discovering the mismatch in the data.

use sqlx::migrate::Migrator;
use sqlx::{PgPool, Row};

use crate::config::{MigrationMode, PgConfig};
use crate::error::SetupError;

static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// The embedded migrations (up and down), e.g. for `undo` in tooling and tests.
#[must_use]
pub fn migrator() -> &'static Migrator {
    &MIGRATOR
}

/// The newest migration this build contains.
#[must_use]
pub fn code_version() -> i64 {
    let newest = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| m.version)
        .max();
    newest.expect("the crate embeds at least one migration")
}

/// The newest successfully applied migration in the configured schema (0 when none).
///
/// # Errors
/// Connection failures.
pub async fn database_version(pool: &PgPool) -> Result<i64, sqlx::Error> {
    // to_regclass resolves through search_path, i.e. in the configured schema only.
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(0);
    }
    let row = sqlx::query("SELECT coalesce(max(version), 0) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await?;
    row.try_get(0)
}

/// Applies migrations (creating the schema if needed) or verifies them (creating nothing:
/// a missing schema is an error), per `config`.
pub(crate) async fn prepare(pool: &PgPool, config: &PgConfig) -> Result<(), SetupError> {
    match config.migrations {
        MigrationMode::Apply => {
            // The name was validated as a plain identifier, so it is safe in SQL text.
            let create = format!("CREATE SCHEMA IF NOT EXISTS {}", config.schema);
            sqlx::query(&create)
                .execute(pool)
                .await
                .map_err(SetupError::Connect)?;
        }
        MigrationMode::Verify => {
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)")
                    .bind(&config.schema)
                    .fetch_one(pool)
                    .await
                    .map_err(SetupError::Connect)?;
            if !exists {
                return Err(SetupError::SchemaMissing {
                    schema: config.schema.clone(),
                    address: config.address(),
                });
            }
        }
    }

    let code = code_version();
    let database = database_version(pool).await.map_err(SetupError::Connect)?;
    if database > code {
        return Err(SetupError::SchemaTooNew { database, code });
    }
    match config.migrations {
        MigrationMode::Apply => {
            MIGRATOR.run(pool).await?;
            // Another process may have migrated further between our check and the run.
            let after = database_version(pool).await.map_err(SetupError::Connect)?;
            if after > code {
                return Err(SetupError::SchemaTooNew {
                    database: after,
                    code,
                });
            }
        }
        MigrationMode::Verify if database < code => {
            return Err(SetupError::SchemaBehind { database, code });
        }
        MigrationMode::Verify => {}
    }
    check_transaction_ids(pool).await
}

/// Positions encode transaction ids, so the cluster must hand out ids above every stored one.
/// Within one cluster that always holds (xid8 never goes backwards); a logical restore into
/// a fresh cluster breaks it, silently, unless checked here.
async fn check_transaction_ids(pool: &PgPool) -> Result<(), SetupError> {
    // pg_snapshot_xmax is the next id to be assigned; reading it does not consume one.
    let row = sqlx::query(
        "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8, \
                (SELECT max(global_position) >> 16 FROM events)",
    )
    .fetch_one(pool)
    .await
    .map_err(SetupError::Connect)?;
    let next: i64 = row.try_get(0).map_err(SetupError::Connect)?;
    let stored: Option<i64> = row.try_get(1).map_err(SetupError::Connect)?;
    match stored {
        Some(stored) if next <= stored => {
            Err(SetupError::TransactionIdsBehindEvents { next, stored })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_up_migration_has_a_down_migration() {
        let ups: Vec<i64> = MIGRATOR
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .map(|m| m.version)
            .collect();
        let downs: Vec<i64> = MIGRATOR
            .iter()
            .filter(|m| m.migration_type.is_down_migration())
            .map(|m| m.version)
            .collect();
        assert!(!ups.is_empty());
        assert_eq!(ups, downs, "reversible migrations come in pairs");
        assert!(
            ups.windows(2).all(|w| w[1] == w[0] + 1),
            "versions are consecutive: {ups:?}"
        );
    }
}
