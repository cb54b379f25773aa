//! [`PgLease`]: leadership ([`reprise_core::Lease`]) as a PostgreSQL session advisory lock.
//!
//! ```no_run
//! # async fn demo(store: reprise_postgres::PgEventStore) -> Result<(), reprise_core::LeaseError> {
//! use reprise_core::Lease;
//! use reprise_postgres::PgLease;
//! let lease = PgLease::new(&store, "relay-checkout");
//! if let Some(mut leadership) = lease.try_acquire().await? {
//!     leadership.confirm().await?; // before each step only the leader may take
//!     // ... lead ...
//!     leadership.release().await;
//! }
//! # Ok(()) }
//! ```
//!
//! ## One holder at a time: a session advisory lock
//!
//! Any number of contenders may run (one per service replica); one holds the lease. Each
//! [`try_acquire`](Lease::try_acquire) opens a **dedicated connection** (not from the
//! store's pool, `application_name = reprise-lease`) and runs
//! `pg_try_advisory_lock(classid, hashtext(schema || ':' || name))` on it. The lock lives
//! exactly as long as that session: [`release`](Leadership::release) unlocks and closes it,
//! and a leadership that is dropped (a crashed task) drops the connection, whereupon the
//! server ends the session and frees the lock. A crashed *process* is the same: its
//! sockets close, the server frees the lock, and a standby's next `try_acquire` succeeds.
//!
//! [`confirm`](Leadership::confirm) runs a statement on that very session which looks the
//! lock up in `pg_locks` for `pg_backend_pid()`: an answer proves that the session — and
//! with it the lock — is alive. A session that is gone (terminated by an operator, a server
//! restart, a broken connection) or alive without the lock is [`LeaseError::Lost`]; the
//! connection is dropped at once, so a lost leadership never keeps the lock by accident. A
//! confirm that does not answer within the store's `operation_timeout`, or fails for a
//! reason that leaves the session standing, is [`LeaseError::Transient`]: not proven, stop
//! leading until a later confirm succeeds.
//!
//! The lock key includes the schema, so leases of different schemas (tenants, test runs)
//! never exclude each other; the first half of the two-key form, [`LOCK_CLASS`], keeps
//! the lease apart from single-key advisory locks such as sqlx's migration lock. A
//! `hashtext` collision between two `schema:name` strings would only make those two leases
//! share one holder. To see who holds a lease:
//!
//! ```sql
//! SELECT l.pid, a.client_addr, a.backend_start
//! FROM pg_locks l JOIN pg_stat_activity a USING (pid)
//! WHERE l.locktype = 'advisory' AND l.classid = 1383101043 -- LOCK_CLASS
//!   AND l.objid = hashtext('my_schema:relay-checkout')::oid AND l.objsubid = 2 AND l.granted;
//! ```
//!
//! ## Why not row locks (`SELECT … FOR UPDATE SKIP LOCKED`)
//!
//! The work queue idiom — every worker locks the rows it takes, skipping rows others hold —
//! is the usual answer to "several instances, no double work". It is the wrong one for the
//! relay that publishes the store's log (`reprise_host::relay`, which links here), for two
//! reasons:
//! - it lets several instances work *in parallel on different rows*, and two publishers
//!   sending neighbouring batches race each other to the broker: a key's later message can
//!   land before its earlier one. Per-key order needs one publisher (or partitioning the
//!   work by key, which is what Kafka partitions already do downstream);
//! - the row locks must be held across the publish, i.e. a transaction stays open (with an
//!   xid: `FOR UPDATE` writes row marks) for a broker round trip or, on bus trouble, for the
//!   whole backoff. An open writing transaction holds back the visibility horizon every
//!   catch-up reader of this cluster reads below (see the crate docs: the relay itself
//!   would stall), and runs into `idle_in_transaction_session_timeout`. A session advisory
//!   lock holds no transaction at all.
//!
//! ## What the lease does not cover
//!
//! - **Two leaders for a moment.** If the leader's session dies while it is publishing, a
//!   standby may take the lock and publish the same events before the old leader's next
//!   `confirm` fails. Work under the lease must tolerate that window (the relay does: it
//!   yields duplicates, which consumers deduplicate by event id), as `reprise_core::lease`
//!   says.
//! - **Network partitions.** A leader cut off from the server keeps its session on the
//!   server until the server notices the dead peer (TCP keepalives: the server's
//!   `tcp_keepalives_idle`/`_interval`/`_count`, or `tcp_user_timeout`); until then no
//!   standby can take over. The cut-off leader's confirms time out (`Transient`), so it
//!   stops leading meanwhile. Tune the server's keepalives to bound failover.
//! - **Connection poolers.** Session advisory locks need a session: connect directly or
//!   through a *session*-mode pooler, never a transaction-mode one (PgBouncer's
//!   `pool_mode = transaction` would hand the lock's session to someone else).
//!
//! ## Observability
//!
//! Gauge [`LEASE_HELD`] (labels `lease`, `schema`): leaderships this process holds — 1 on
//! the leader, 0 on standbys (registered at construction, so "no leader anywhere" shows as
//! a sum of 0). Leadership changes are `info` events, a lost lease `warn`, all in a
//! `lease` span.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reprise_core::{BoxFuture, Leadership, Lease, LeaseError};
use sqlx::postgres::{PgConnectOptions, PgDatabaseError, PgSeverity};
use sqlx::{Connection, PgConnection};
use tracing::Instrument;

use crate::config::PgConfig;
use crate::error::SetupError;
use crate::store::PgEventStore;

/// Gauge: leaderships of a lease this process holds (1 on the leader, 0 on standbys).
/// Labels: `lease`, `schema`.
pub const LEASE_HELD: &str = "reprise_lease_held";

/// First half of the advisory lock key (`'Rprs'`, 1383101043): the two-key form keeps
/// leases apart from single-key advisory locks such as sqlx's migration lock. In
/// `pg_locks` it is the `classid` of a lease's lock (`objsubid = 2`).
pub const LOCK_CLASS: i32 = 0x5270_7273;

/// `application_name` of every lease session, so they stand out in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "reprise-lease";

/// A contender for one named lease, held as a session advisory lock in the store's
/// database. See the module docs.
///
/// Cheap to clone; clones are the same contender's settings, and every
/// [`try_acquire`](Lease::try_acquire) opens its own session, so two values (or two calls)
/// compete like two processes.
#[derive(Clone)]
pub struct PgLease {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    schema: String,
    /// `schema:name`, hashed by the server into the second half of the lock key.
    key: String,
    options: PgConnectOptions,
    /// Bound on connecting + locking, on a confirm, and on a release.
    timeout: Duration,
    /// `host:port` (or the socket path), for error messages.
    address: String,
}

impl fmt::Debug for PgLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgLease")
            .field("name", &self.inner.name)
            .field("schema", &self.inner.schema)
            .field("address", &self.inner.address)
            .finish_non_exhaustive()
    }
}

impl PgLease {
    /// A contender for lease `name` in `store`'s database and schema, connecting with the
    /// store's connection settings (not its pool) and bounding each operation by its
    /// `operation_timeout`. Nothing is connected until [`try_acquire`](Lease::try_acquire).
    #[must_use]
    pub fn new(store: &PgEventStore, name: &str) -> Self {
        Self::with_options(
            (*store.pool().connect_options()).clone(),
            store.config(),
            name,
        )
    }

    /// [`PgLease::new`] without a store (and without its pool): for a process that only
    /// contends for a lease. Nothing is connected until [`try_acquire`](Lease::try_acquire).
    ///
    /// # Errors
    /// [`SetupError::InvalidConfig`] for settings [`PgConfig::validate`] refuses.
    pub fn from_config(config: &PgConfig, name: &str) -> Result<Self, SetupError> {
        config.validate()?;
        Ok(Self::with_options(config.connect_options()?, config, name))
    }

    fn with_options(options: PgConnectOptions, config: &PgConfig, name: &str) -> Self {
        let options = options.application_name(APPLICATION_NAME);
        let address = match options.get_socket() {
            Some(socket) => socket.display().to_string(),
            None => format!("{}:{}", options.get_host(), options.get_port()),
        };
        let inner = Inner {
            name: name.to_owned(),
            schema: config.schema.clone(),
            key: format!("{}:{name}", config.schema),
            options,
            timeout: config.operation_timeout,
            address,
        };
        // Registers the series at 0 (without touching a value another contender of this
        // process set): standbys export it too.
        drop(inner.gauge());
        PgLease {
            inner: Arc::new(inner),
        }
    }

    /// The schema whose lease this is (the lock key is `schema:name`).
    #[must_use]
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    async fn acquire(self) -> Result<Option<Box<dyn Leadership>>, LeaseError> {
        let inner = &self.inner;
        let attempt = async {
            let mut connection = PgConnection::connect_with(&inner.options)
                .await
                .map_err(|e| {
                    LeaseError::Transient(format!(
                        "lease {}: cannot connect to PostgreSQL at {}: {e}",
                        inner.name, inner.address
                    ))
                })?;
            let (taken, key): (bool, i32) = sqlx::query_as(
                "SELECT pg_try_advisory_lock($1, h.key), h.key FROM (SELECT hashtext($2) AS key) h",
            )
            .bind(LOCK_CLASS)
            .bind(&inner.key)
            .fetch_one(&mut connection)
            .await
            .map_err(|e| {
                LeaseError::Transient(format!(
                    "lease {}: taking the lock at {} failed: {e}",
                    inner.name, inner.address
                ))
            })?;
            if taken {
                Ok(Some((connection, key)))
            } else {
                // Ends the session; if even that fails, dropping the connection does.
                let _ = connection.close().await;
                Ok(None)
            }
        };
        // On a timeout the attempt is dropped with its connection: a lock it may have
        // taken ends with the session.
        let outcome = tokio::time::timeout(inner.timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(LeaseError::Transient(format!(
                    "lease {}: taking the lock at {} timed out after {:?}",
                    inner.name, inner.address, inner.timeout
                )))
            })?;
        let Some((connection, key)) = outcome else {
            return Ok(None);
        };
        let gauge = inner.gauge();
        gauge.increment(1.0);
        let span = tracing::info_span!("lease", lease = %inner.name, db.namespace = %inner.schema);
        span.in_scope(|| tracing::info!(address = %inner.address, "lease taken"));
        Ok(Some(Box::new(PgLeadership {
            lease: self.clone(),
            connection: Some(connection),
            key,
            lost: None,
            held: Some(gauge),
            span,
        })))
    }
}

impl Inner {
    fn gauge(&self) -> metrics::Gauge {
        metrics::gauge!(LEASE_HELD, "lease" => self.name.clone(), "schema" => self.schema.clone())
    }
}

impl Lease for PgLease {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn try_acquire(&self) -> BoxFuture<'static, Result<Option<Box<dyn Leadership>>, LeaseError>> {
        Box::pin(self.clone().acquire())
    }
}

/// A held [`PgLease`]: the session that holds the lock.
struct PgLeadership {
    lease: PgLease,
    /// `None` once lost or released: the session is gone.
    connection: Option<PgConnection>,
    /// The server's `hashtext(schema:name)`: the lock's `objid`.
    key: i32,
    /// Why the lease was lost, once it was: every later confirm says so again.
    lost: Option<String>,
    /// The [`LEASE_HELD`] gauge while held; decremented exactly once.
    held: Option<metrics::Gauge>,
    span: tracing::Span,
}

impl PgLeadership {
    /// Marks the lease lost: drops the session (so the lock cannot outlive this decision)
    /// and the gauge.
    fn lose(&mut self, reason: String) -> LeaseError {
        self.connection = None;
        self.end();
        self.span
            .in_scope(|| tracing::warn!(reason, "lease lost: stop leading"));
        self.lost = Some(reason.clone());
        LeaseError::Lost(reason)
    }

    fn end(&mut self) {
        if let Some(gauge) = self.held.take() {
            gauge.decrement(1.0);
        }
    }

    async fn check(&mut self) -> Result<(), LeaseError> {
        if let Some(reason) = &self.lost {
            return Err(LeaseError::Lost(reason.clone()));
        }
        let inner = Arc::clone(&self.lease.inner);
        let Some(connection) = self.connection.as_mut() else {
            return Err(LeaseError::Lost(format!("lease {}: released", inner.name)));
        };
        let held = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT FROM pg_locks \
             WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted \
               AND classid = $1::int4::oid AND objid = $2::int4::oid AND objsubid = 2)",
        )
        .bind(LOCK_CLASS)
        .bind(self.key)
        .fetch_one(connection);
        match tokio::time::timeout(inner.timeout, held).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(self.lose(format!(
                "lease {}: the session at {} no longer holds the lock",
                inner.name, inner.address
            ))),
            Ok(Err(error)) if session_ended(&error) => Err(self.lose(format!(
                "lease {}: the session at {} ended: {error}",
                inner.name, inner.address
            ))),
            Ok(Err(error)) => Err(LeaseError::Transient(format!(
                "lease {}: confirming at {} failed: {error}",
                inner.name, inner.address
            ))),
            Err(_) => Err(LeaseError::Transient(format!(
                "lease {}: confirming at {} timed out after {:?}",
                inner.name, inner.address, inner.timeout
            ))),
        }
    }
}

impl Leadership for PgLeadership {
    fn confirm(&mut self) -> BoxFuture<'_, Result<(), LeaseError>> {
        Box::pin(self.check())
    }

    fn release(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let span = self.span.clone();
            let timeout = self.lease.inner.timeout;
            if let Some(mut connection) = self.connection.take() {
                let key = self.key;
                let close = async move {
                    // Unlocking first frees the lease at once even if closing stalls;
                    // either way, the session's end frees it.
                    let _ = sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                        .bind(LOCK_CLASS)
                        .bind(key)
                        .execute(&mut connection)
                        .await;
                    let _ = connection.close().await;
                };
                // Past the bound the connection is dropped, which also ends the session.
                let _ = tokio::time::timeout(timeout, close)
                    .instrument(span.clone())
                    .await;
                span.in_scope(|| tracing::info!("lease released"));
            }
            self.end();
        })
    }
}

impl Drop for PgLeadership {
    fn drop(&mut self) {
        // The connection drops with `self`: its socket closes and the server frees the lock.
        self.end();
    }
}

/// Whether `error` means the lease's session is gone (or unusable, which comes to the
/// same: nobody can speak for it any more, and dropping it lets the server end it).
fn session_ended(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            let fatal = db
                .try_downcast_ref::<PgDatabaseError>()
                .is_some_and(|pg| matches!(pg.severity(), PgSeverity::Fatal | PgSeverity::Panic));
            // Class 08: connection exception; 57P0x: terminated by an administrator
            // (`pg_terminate_backend`), crash or shutdown.
            let code = db.code().unwrap_or_default();
            fatal || code.starts_with("08") || code.starts_with("57P")
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_connections_end_the_session_and_decoding_mistakes_do_not() {
        let reset = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(session_ended(&reset));
        assert!(session_ended(&sqlx::Error::Protocol("out of sync".into())));
        assert!(!session_ended(&sqlx::Error::ColumnNotFound("x".into())));
        assert!(!session_ended(&sqlx::Error::PoolTimedOut));
    }
}
