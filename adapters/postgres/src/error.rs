//! How PostgreSQL failures become [`StoreError`]s, and the errors of starting up.
//!
//! The classification drives retry policies upstream, so it errs on the side of *not*
//! retrying: only failures where a retry of the very same request can succeed are
//! `Transient` (serialization failures, deadlocks, lost or refused connections, pool
//! exhaustion), a statement timeout is `Timeout` (outcome unknown until retried), and a
//! version conflict is never produced here blindly: the append path diagnoses unique
//! violations itself (see `append.rs`). Everything else is `Permanent`.
//!
//! One subtlety: an I/O error while `COMMIT` is in flight does not mean the transaction
//! failed — the server may have committed and the acknowledgement been lost. That case is
//! `Timeout` ("outcome unknown"), which the core contract resolves by retrying the same batch
//! (same event ids) and letting idempotency answer.

use reprise_core::StoreError;

/// Why [`PgEventStore::connect`](crate::PgEventStore::connect) failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
    /// The database was migrated by a newer release of this code. Running older code against
    /// it could misread or corrupt data, so the adapter refuses to start.
    #[error(
        "database schema is at migration {database}, newer than the {code} this build knows: \
         deploy the newer release, or roll the schema back with its down migrations"
    )]
    SchemaTooNew { database: i64, code: i64 },
    /// `MigrationMode::Verify` and the schema is behind this code.
    #[error(
        "database schema is at migration {database}, this build needs {code}: run the \
         migrations (MigrationMode::Apply or `sqlx migrate run`)"
    )]
    SchemaBehind { database: i64, code: i64 },
    /// The cluster's transaction counter is behind the transaction ids encoded in stored
    /// positions: typically a logical restore (`pg_restore`) into a new cluster. New events
    /// would get *lower* positions than old ones and subscribers would never see them.
    #[error(
        "the cluster's next transaction id ({next}) is not above the newest stored event's \
         ({stored}): after restoring into a new cluster, advance the counter with \
         `pg_resetwal -e/-x` before starting (docs/runbooks/backup-restore.md)"
    )]
    TransactionIdsBehindEvents { next: i64, stored: i64 },
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// SQLSTATE codes this adapter tells apart.
pub(crate) mod sqlstate {
    pub const UNIQUE_VIOLATION: &str = "23505";
    pub const CHECK_VIOLATION: &str = "23514";
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const DEADLOCK_DETECTED: &str = "40P01";
    pub const QUERY_CANCELED: &str = "57014";
    pub const LOCK_NOT_AVAILABLE: &str = "55P03";
    pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
}

/// The SQLSTATE and constraint of a database error, if `error` is one.
pub(crate) fn database_error(error: &sqlx::Error) -> Option<(String, Option<String>)> {
    match error {
        sqlx::Error::Database(db) => {
            Some((db.code()?.into_owned(), db.constraint().map(str::to_owned)))
        }
        _ => None,
    }
}

/// Classifies a failure of any statement except `COMMIT` (see [`classify_commit`]).
pub(crate) fn classify(error: &sqlx::Error) -> StoreError {
    use sqlstate::{
        DEADLOCK_DETECTED, IDLE_IN_TRANSACTION_TIMEOUT, LOCK_NOT_AVAILABLE, QUERY_CANCELED,
        SERIALIZATION_FAILURE,
    };
    match error {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            match code.as_ref() {
                SERIALIZATION_FAILURE | DEADLOCK_DETECTED | LOCK_NOT_AVAILABLE => {
                    StoreError::Transient(db.message().to_owned())
                }
                QUERY_CANCELED => StoreError::Timeout,
                IDLE_IN_TRANSACTION_TIMEOUT => StoreError::Transient(db.message().to_owned()),
                // Class 08: connection exception; 53: insufficient resources (too many
                // connections, out of memory, disk full); 57P0x: server shutting down or
                // starting up. All may clear on their own.
                c if c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") => {
                    StoreError::Transient(format!("{c}: {}", db.message()))
                }
                c => StoreError::Permanent(format!("{c}: {}", db.message())),
            }
        }
        sqlx::Error::PoolTimedOut => StoreError::Transient(
            "connection pool exhausted: no connection within the acquire timeout".into(),
        ),
        sqlx::Error::Io(e) => StoreError::Transient(format!("connection: {e}")),
        sqlx::Error::Tls(e) => StoreError::Transient(format!("tls: {e}")),
        sqlx::Error::WorkerCrashed => StoreError::Transient("connection worker crashed".into()),
        sqlx::Error::PoolClosed => StoreError::Permanent("the store's pool is closed".into()),
        other => StoreError::Permanent(other.to_string()),
    }
}

/// Classifies a failed `COMMIT`: a broken connection leaves the outcome unknown.
pub(crate) fn classify_commit(error: &sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => {
            StoreError::Timeout
        }
        other => classify(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_exhaustion_is_transient_and_a_closed_pool_is_not() {
        assert!(classify(&sqlx::Error::PoolTimedOut).is_transient());
        assert!(!classify(&sqlx::Error::PoolClosed).is_transient());
    }

    #[test]
    fn a_broken_connection_during_commit_means_outcome_unknown() {
        let broken = || sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(classify_commit(&broken()), StoreError::Timeout);
        assert!(matches!(classify(&broken()), StoreError::Transient(_)));
    }

    #[test]
    fn decoding_mistakes_are_permanent() {
        let e = sqlx::Error::ColumnNotFound("nope".into());
        assert!(matches!(classify(&e), StoreError::Permanent(_)));
    }
}
