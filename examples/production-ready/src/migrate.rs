//! `reprise-shop migrate`: the PostgreSQL schema, as a separate, deliberate step (the
//! service itself only verifies it).
//!
//! - `migrate` creates the schema if needed and applies the embedded migrations
//!   (`migrations/` of the workspace, through `reprise-postgres`; sqlx's migration lock
//!   makes concurrent runs safe). Prints `schema <name>: at migration N (was M)`.
//! - `migrate --check` changes nothing: it reads the schema's migration version on one
//!   connection and exits 0 if it is this build's, 1 otherwise (behind, newer, or no
//!   schema at all), saying which.

use std::process::ExitCode;
use std::str::FromStr;

use reprise_postgres::schema::{code_version, database_version};
use reprise_postgres::{MigrationMode, PgConfig, PgEventStore, SetupError};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::cli::MigrateArgs;
use crate::config::{is_schema_name, pg_address};

/// Why `migrate` failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0}")]
    Invalid(String),
    #[error("PostgreSQL at {address}: {reason}")]
    Postgres { address: String, reason: String },
    #[error(
        "schema {schema} is at migration {database}, this build needs {code}: run `reprise-shop migrate`"
    )]
    Behind {
        schema: String,
        database: i64,
        code: i64,
    },
    #[error(
        "schema {schema} is at migration {database}, newer than this build's {code}: deploy the newer release"
    )]
    Newer {
        schema: String,
        database: i64,
        code: i64,
    },
}

fn config(args: &MigrateArgs) -> Result<PgConfig, MigrateError> {
    let url = args
        .database_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            MigrateError::Invalid(
                "no database: pass --database-url or set DATABASE_URL \
                 (postgres://user:password@host:port/database)"
                    .into(),
            )
        })?;
    if !is_schema_name(&args.schema) {
        return Err(MigrateError::Invalid(format!(
            "--schema {:?}: must match [a-z_][a-z0-9_]* and be at most 40 bytes",
            args.schema
        )));
    }
    let config = PgConfig::new(url)
        .with_schema(args.schema.clone())
        .with_max_connections(1)
        .with_notify(false);
    config
        .validate()
        .map_err(|e| MigrateError::Invalid(format!("--database-url: {e}")))?;
    Ok(config)
}

/// Applies the migrations; the schema's version before and after.
///
/// # Errors
/// Invalid settings, an unreachable server, a schema newer than this build.
pub async fn migrate(args: &MigrateArgs) -> Result<(i64, i64), MigrateError> {
    let config = config(args)?;
    let before = version(&config).await?;
    let store = PgEventStore::connect(config.clone().with_migrations(MigrationMode::Apply))
        .await
        .map_err(|e| match e {
            SetupError::SchemaTooNew { database, code } => MigrateError::Newer {
                schema: config.schema.clone(),
                database,
                code,
            },
            other => MigrateError::Postgres {
                address: pg_address(&config.url),
                reason: other.to_string(),
            },
        })?;
    let after = database_version(store.pool())
        .await
        .map_err(|e| MigrateError::Postgres {
            address: pg_address(&config.url),
            reason: e.to_string(),
        })?;
    store.close().await;
    Ok((before, after))
}

/// The schema's migration version (0 if it has none), read without changing anything.
async fn version(config: &PgConfig) -> Result<i64, MigrateError> {
    let postgres = |reason: String| MigrateError::Postgres {
        address: pg_address(&config.url),
        reason,
    };
    crate::config::preflight_postgres(&config.url, std::time::Duration::from_secs(5))
        .await
        .map_err(|reason| postgres(format!("cannot connect: {reason}")))?;
    let options = PgConnectOptions::from_str(&config.url)
        .map_err(|e| MigrateError::Invalid(format!("--database-url: {e}")))?
        .application_name("reprise-shop-migrate")
        .options([("search_path", config.schema.as_str())]);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(
            config
                .acquire_timeout
                .max(std::time::Duration::from_secs(5)),
        )
        .connect_with(options)
        .await
        .map_err(|e| postgres(format!("cannot connect: {e}")))?;
    let version = database_version(&pool)
        .await
        .map_err(|e| postgres(e.to_string()));
    pool.close().await;
    version
}

/// Verifies the schema is at this build's migration.
///
/// # Errors
/// Behind, newer, or unreachable.
pub async fn check(args: &MigrateArgs) -> Result<i64, MigrateError> {
    let config = config(args)?;
    let database = version(&config).await?;
    let code = code_version();
    let schema = config.schema.clone();
    match database.cmp(&code) {
        std::cmp::Ordering::Equal => Ok(database),
        std::cmp::Ordering::Less => Err(MigrateError::Behind {
            schema,
            database,
            code,
        }),
        std::cmp::Ordering::Greater => Err(MigrateError::Newer {
            schema,
            database,
            code,
        }),
    }
}

/// `reprise-shop migrate [--check]`.
pub async fn run(args: &MigrateArgs) -> ExitCode {
    let outcome = if args.check {
        check(args).await.map(|version| {
            println!(
                "schema {}: at migration {version}, as this build needs (nothing changed)",
                args.schema
            );
        })
    } else {
        migrate(args).await.map(|(before, after)| {
            println!(
                "schema {}: at migration {after} (was {before})",
                args.schema
            );
        })
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(MigrateError::Invalid(problem)) => {
            eprintln!("reprise-shop: invalid configuration:\n  - {problem}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("reprise-shop: {error}");
            ExitCode::from(1)
        }
    }
}
