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
//!
//! The same rules, as [`ErrorClass`]es for the resilience machinery ([`sqlstate_class`],
//! [`PgError`], and [`Classify`] for [`SetupError`]):
//!
//! | SQLSTATE / failure | class |
//! |--------------------|-------|
//! | `40001` serialization failure, `40P01` deadlock, `55P03` lock not available, `25P03` idle-in-transaction timeout, `57014` statement timeout | `Transient` |
//! | class `08` connection exception, class `53` insufficient resources (`53300` too many connections), `57P0x` (`57P01` admin shutdown) | `Transient` |
//! | I/O and TLS errors, a crashed connection worker, pool exhausted | `Transient` |
//! | `RP409` the append's stream-version expectation failed | `Conflict` |
//! | class `23` constraint violations, class `42` syntax / undefined objects, class `22` data, `28` authentication, anything else; a closed pool; decoding mistakes | `Permanent` |

use reprise_core::StoreError;
use reprise_core::resilience::{Classify, ErrorClass};

/// Why [`PgEventStore::connect`](crate::PgEventStore::connect) failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
    /// The first connection failed: the server at `address` (`host:port/database`, never
    /// the password) is down, unreachable, or refused the login.
    #[error("cannot connect to PostgreSQL at {address}: {source}")]
    Unreachable {
        address: String,
        #[source]
        source: sqlx::Error,
    },
    /// `MigrationMode::Verify` and the configured schema does not exist. Nothing was
    /// created: a verifying client (an operator's tool, a service whose migrations run
    /// separately) must not leave an empty schema behind a mistyped name.
    #[error(
        "schema {schema} does not exist in {address} (nothing was created): check the name, \
         or run the migrations (MigrationMode::Apply or `sqlx migrate run`)"
    )]
    SchemaMissing { schema: String, address: String },
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

impl Classify for SetupError {
    /// Only a failure to reach the server (or to run a migration statement for a transient
    /// reason) may pass on its own; a wrong setting or schema needs an operator.
    fn class(&self) -> ErrorClass {
        use sqlx::migrate::MigrateError;
        match self {
            SetupError::Connect(error)
            | SetupError::Unreachable { source: error, .. }
            | SetupError::Migrate(
                MigrateError::Execute(error) | MigrateError::ExecuteMigration(error, _),
            ) => error_class(error),
            SetupError::InvalidConfig(_)
            | SetupError::SchemaMissing { .. }
            | SetupError::SchemaTooNew { .. }
            | SetupError::SchemaBehind { .. }
            | SetupError::TransactionIdsBehindEvents { .. }
            | SetupError::Migrate(_) => ErrorClass::Permanent,
        }
    }
}

/// A `sqlx` error from the application's own queries (on [`PgEventStore::pool`]), classified
/// by this adapter's rules so it can go through the same retry policy and circuit breaker
/// as the store's own operations.
///
/// [`PgEventStore::pool`]: crate::PgEventStore::pool
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct PgError(#[from] pub sqlx::Error);

impl Classify for PgError {
    fn class(&self) -> ErrorClass {
        error_class(&self.0)
    }
}

impl PgError {
    /// The [`StoreError`] the store itself would report for this failure.
    #[must_use]
    pub fn to_store_error(&self) -> StoreError {
        classify(&self.0)
    }
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
    /// Raised by `append_expectation_failed` (migration 0007): a stream-version conflict.
    pub const EXPECTATION_FAILED: &str = "RP409";
}

/// The class of a failure with SQLSTATE `code` (see the module docs for the table).
///
/// `RP409` is a [`ErrorClass::Conflict`] here; [`classify`] never sees one in practice,
/// because the append path turns it into a typed [`StoreError::Conflict`] first (it needs
/// the batch to say which stream and expectation failed).
#[must_use]
pub fn sqlstate_class(code: &str) -> ErrorClass {
    use sqlstate::{
        DEADLOCK_DETECTED, EXPECTATION_FAILED, IDLE_IN_TRANSACTION_TIMEOUT, LOCK_NOT_AVAILABLE,
        QUERY_CANCELED, SERIALIZATION_FAILURE,
    };
    match code {
        SERIALIZATION_FAILURE
        | DEADLOCK_DETECTED
        | LOCK_NOT_AVAILABLE
        | QUERY_CANCELED
        | IDLE_IN_TRANSACTION_TIMEOUT => ErrorClass::Transient,
        EXPECTATION_FAILED => ErrorClass::Conflict,
        // Class 08: connection exception; 53: insufficient resources (too many
        // connections, out of memory, disk full); 57P0x: server shutting down or
        // starting up. All may clear on their own.
        c if c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") => {
            ErrorClass::Transient
        }
        // Class 23 (constraint violations), 42 (syntax, undefined objects), 22 (data),
        // 28 (authentication), and everything unknown: the same request fails again.
        _ => ErrorClass::Permanent,
    }
}

/// The class of any failure except one at `COMMIT`, consistent with [`classify`].
#[must_use]
pub fn error_class(error: &sqlx::Error) -> ErrorClass {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .map_or(ErrorClass::Permanent, |code| sqlstate_class(&code)),
        other => classify(other).class(),
    }
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
                SERIALIZATION_FAILURE
                | DEADLOCK_DETECTED
                | LOCK_NOT_AVAILABLE
                | IDLE_IN_TRANSACTION_TIMEOUT => StoreError::Transient(db.message().to_owned()),
                QUERY_CANCELED => StoreError::Timeout,
                c if sqlstate_class(c) == ErrorClass::Transient => {
                    StoreError::Transient(format!("{c}: {}", db.message()))
                }
                // Including a raw RP409: without the batch there is no typed conflict to
                // build (the append path diagnoses those itself, see `append.rs`).
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

    /// A server error with just a SQLSTATE, as the driver would hand it over.
    #[derive(Debug)]
    struct ServerError(&'static str);

    impl std::fmt::Display for ServerError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "server said {}", self.0)
        }
    }

    impl std::error::Error for ServerError {}

    impl sqlx::error::DatabaseError for ServerError {
        fn message(&self) -> &str {
            "server said no"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn server(code: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(ServerError(code)))
    }

    const TRANSIENT: [&str; 11] = [
        "40001", // serialization_failure
        "40P01", // deadlock_detected
        "55P03", // lock_not_available
        "25P03", // idle_in_transaction_session_timeout
        "08000", // connection_exception
        "08006", // connection_failure
        "57P01", // admin_shutdown
        "57P03", // cannot_connect_now
        "53300", // too_many_connections
        "53200", // out_of_memory
        "57014", // query_canceled (statement timeout)
    ];

    const PERMANENT: [&str; 10] = [
        "23505", // unique_violation
        "23503", // foreign_key_violation
        "23514", // check_violation
        "23502", // not_null_violation
        "42601", // syntax_error
        "42P01", // undefined_table
        "42703", // undefined_column
        "42883", // undefined_function
        "22P02", // invalid_text_representation
        "28P01", // invalid_password
    ];

    #[test]
    fn sqlstates_classify_per_the_table() {
        for code in TRANSIENT {
            assert_eq!(sqlstate_class(code), ErrorClass::Transient, "{code}");
        }
        for code in PERMANENT {
            assert_eq!(sqlstate_class(code), ErrorClass::Permanent, "{code}");
        }
        assert_eq!(sqlstate_class("RP409"), ErrorClass::Conflict);
        assert_eq!(sqlstate_class(""), ErrorClass::Permanent);
    }

    #[test]
    fn the_store_error_of_a_server_error_has_the_same_class() {
        for code in TRANSIENT.iter().chain(&PERMANENT) {
            let error = server(code);
            let store = classify(&error);
            assert_eq!(store.class(), sqlstate_class(code), "{code}: {store:?}");
            assert_eq!(
                PgError(server(code)).class(),
                sqlstate_class(code),
                "{code}"
            );
            assert_eq!(error_class(&error), store.class(), "{code}");
        }
        assert_eq!(classify(&server("57014")), StoreError::Timeout);
        match classify(&server("53300")) {
            StoreError::Transient(why) => assert!(why.starts_with("53300: "), "{why}"),
            other => panic!("too many connections must be transient, got {other:?}"),
        }
        // The class is Conflict; the store error without a batch to describe stays
        // permanent rather than inventing a stream and expectation.
        assert_eq!(PgError(server("RP409")).class(), ErrorClass::Conflict);
        assert!(matches!(
            classify(&server("RP409")),
            StoreError::Permanent(_)
        ));
    }

    #[test]
    fn client_side_failures_classify_like_their_store_errors() {
        let io = || sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(PgError(io()).class(), ErrorClass::Transient);
        assert_eq!(
            PgError(sqlx::Error::PoolTimedOut).class(),
            ErrorClass::Transient
        );
        assert_eq!(
            PgError(sqlx::Error::WorkerCrashed).class(),
            ErrorClass::Transient
        );
        assert_eq!(
            PgError(sqlx::Error::PoolClosed).class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            PgError(sqlx::Error::RowNotFound).to_store_error().class(),
            ErrorClass::Permanent
        );
    }

    #[test]
    fn setup_errors_are_permanent_unless_the_server_was_unreachable() {
        let refused = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(SetupError::Connect(refused).class(), ErrorClass::Transient);
        assert_eq!(
            SetupError::Connect(server("57P03")).class(),
            ErrorClass::Transient
        );
        assert_eq!(
            SetupError::Connect(server("28P01")).class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            SetupError::Migrate(sqlx::migrate::MigrateError::Execute(server("40P01"))).class(),
            ErrorClass::Transient
        );
        assert_eq!(
            SetupError::Migrate(sqlx::migrate::MigrateError::Dirty(3)).class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            SetupError::SchemaTooNew {
                database: 9,
                code: 8
            }
            .class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            SetupError::InvalidConfig("x".into()).class(),
            ErrorClass::Permanent
        );
    }
}
