//! [`PgEventStore`]: the [`EventStore`] implementation, plus the operations only a SQL store
//! can offer (appending inside a caller's transaction).
//!
//! Every operation is bounded by the configured operation timeout and reports a
//! [`StoreError`]; none retries on its own. Retrying is the caller's policy (the core's
//! aggregates reload and decide again on conflicts; transient errors are retried with
//! backoff from the environment), and a store that retried underneath would hide conflicts.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reprise_core::{
    AppendBatch, AppendReceipt, BoxFuture, EventStore, Payload, RecordedEvent, Snapshot,
    StoreError, StreamId,
};
use sqlx::postgres::{PgPoolOptions, Postgres};
use sqlx::{Connection, PgConnection, PgPool, Row, Transaction};
use tracing::Instrument;

use crate::append::{current_version, diagnose, write_batch};
use crate::config::PgConfig;
use crate::error::{SetupError, classify};
use crate::group::{GroupCommitStats, GroupCommitter, single_append};
use crate::notifier::Notifier;
use crate::pool::{InstrumentedPool, PoolStats};
use crate::read::{committed_prefix, stream_events};
use crate::rows::{to_i64, to_u64};
use crate::{MAX_EVENTS_PER_TRANSACTION, schema};

/// Histogram (seconds): duration of a successful append, acquire to commit. Labels: `schema`.
pub const APPEND_DURATION: &str = "reprise_pg_append_duration_seconds";
/// Counter: events appended. Labels: `schema`.
pub const EVENTS_APPENDED: &str = "reprise_pg_events_appended_total";

/// A PostgreSQL event store. Cheap to clone: clones share the pool.
#[derive(Clone, Debug)]
pub struct PgEventStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Arc<InstrumentedPool>,
    config: PgConfig,
    channel: String,
    /// Present when `config.notify`: wakes subscriptions after each committed append.
    notifier: Option<Notifier>,
    /// Present when group commit is on (`config.group_commit.max_group_size > 1`).
    committer: Option<GroupCommitter>,
}

impl PgEventStore {
    /// Validates `config`, opens the pool, creates the schema if needed and applies or
    /// verifies migrations (see [`MigrationMode`](crate::MigrationMode)).
    ///
    /// # Errors
    /// [`SetupError`]: invalid settings, an unreachable server, a schema newer than this
    /// code (refused), or a failed migration.
    pub async fn connect(config: PgConfig) -> Result<Self, SetupError> {
        config.validate()?;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(config.min_connections)
            .acquire_timeout(config.acquire_timeout)
            // No ping before every checkout: it costs a round trip on every operation. A
            // connection that died while idle fails its first statement instead, which is
            // classified `Transient` (or `Timeout` at commit) and retried by the caller.
            .test_before_acquire(false)
            .connect_with(config.connect_options()?)
            .await;
        let pool = match pool {
            Ok(pool) => pool,
            Err(error) => {
                // The pool reports "timed out" whatever stopped it; one direct attempt
                // gives the cause (refused, unknown host, authentication failed).
                let cause = match tokio::time::timeout(
                    config.acquire_timeout,
                    PgConnection::connect_with(&config.connect_options()?),
                )
                .await
                {
                    Ok(Err(cause)) => cause,
                    Ok(Ok(connection)) => {
                        let _ = connection.close().await;
                        error
                    }
                    Err(_) => error,
                };
                return Err(SetupError::Unreachable {
                    address: config.address(),
                    source: cause,
                });
            }
        };
        schema::prepare(&pool, &config).await?;
        let channel = config.channel();
        let notifier = config
            .notify
            .then(|| Notifier::start(pool.clone(), channel.clone()));
        let pool = Arc::new(InstrumentedPool::new(pool, config.schema.clone()));
        let committer = if config.group_commit.enabled() {
            let mut settings = config.group_commit;
            settings.max_groups_in_flight = settings
                .max_groups_in_flight
                .min(config.max_connections as usize);
            Some(GroupCommitter::new(
                Arc::clone(&pool),
                settings,
                config.operation_timeout,
                config.schema.clone(),
            ))
        } else {
            None
        };
        Ok(PgEventStore {
            inner: Arc::new(Inner {
                pool,
                config,
                channel,
                notifier,
                committer,
            }),
        })
    }

    /// The underlying pool, for the application's own queries in the same schema.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        self.inner.pool.pool()
    }

    #[must_use]
    pub fn config(&self) -> &PgConfig {
        &self.inner.config
    }

    #[must_use]
    pub fn pool_stats(&self) -> PoolStats {
        self.inner.pool.stats()
    }

    /// The `LISTEN/NOTIFY` channel appends signal on.
    #[must_use]
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// Group commit counters (all zero with group commit off).
    #[must_use]
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.inner
            .committer
            .as_ref()
            .map(GroupCommitter::stats)
            .unwrap_or_default()
    }

    /// Closes the pool: waits for connections in use to be returned, then closes them all.
    pub async fn close(&self) {
        self.pool().close().await;
    }

    /// Starts a transaction on a pooled connection, for [`PgEventStore::append_in`].
    ///
    /// # Errors
    /// `Transient` when the pool is exhausted or the server unreachable.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        let connection = self.inner.pool.acquire().await?;
        Transaction::begin(connection, None)
            .await
            .map_err(|e| classify(&e))
    }

    /// Appends `batch` inside the caller's transaction, so the application can commit its
    /// own rows (a read model, a command log) atomically with the events. Runs under a
    /// savepoint: a conflict rolls back only this append and leaves `transaction` usable.
    /// The receipt is valid once the caller commits; if the commit fails, nothing was
    /// appended. Several appends may share one transaction, up to
    /// [`MAX_EVENTS_PER_TRANSACTION`] events in all.
    ///
    /// # Errors
    /// As [`EventStore::append`].
    pub async fn append_in(
        &self,
        transaction: &mut Transaction<'_, Postgres>,
        batch: &AppendBatch,
    ) -> Result<AppendReceipt, StoreError> {
        check_batch(batch)?;
        let connection: &mut PgConnection = transaction;
        let mut savepoint = connection.begin().await.map_err(|e| classify(&e))?;
        // The caller commits, so the notification must ride in the transaction (see
        // notifier.rs for what that costs; appending in a caller's transaction is rare).
        match write_batch(&mut savepoint, batch, self.notify_channel()).await {
            Ok(receipt) => {
                savepoint.commit().await.map_err(|e| classify(&e))?;
                Ok(receipt)
            }
            Err(error) => {
                savepoint.rollback().await.map_err(|e| classify(&e))?;
                diagnose(connection, batch, &error, false).await
            }
        }
    }

    fn notify_channel(&self) -> Option<&str> {
        self.inner.notify_channel()
    }

    /// A span per operation, named and attributed per OpenTelemetry's database conventions,
    /// so traces show the store call between the command and its events.
    fn span(&self, operation: &'static str) -> tracing::Span {
        tracing::info_span!(
            "reprise_pg",
            otel.name = operation,
            db.system.name = "postgresql",
            db.namespace = %self.inner.config.schema,
            db.operation.name = operation,
        )
    }

    /// Runs `operation` within the configured operation timeout.
    async fn bounded<T>(
        &self,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        bounded(self.inner.config.operation_timeout, operation).await
    }

    /// A page of the global order below the visibility horizon, without waiting for held
    /// back events: the building block of catch-up subscriptions.
    pub(crate) async fn read_committed_page(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<(Vec<RecordedEvent>, bool), StoreError> {
        let inner = Arc::clone(&self.inner);
        self.bounded(async move {
            let mut connection = inner.pool.acquire().await?;
            let page = committed_prefix(&mut connection, from_position, limit).await?;
            Ok((page.events, page.held_back))
        })
        .await
    }

    pub(crate) async fn with_connection<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, StoreError>>,
    {
        let inner = Arc::clone(&self.inner);
        self.bounded(async move {
            let mut connection = inner.pool.acquire().await?;
            work(&mut connection).await
        })
        .await
    }
}

async fn bounded<T>(
    limit: Duration,
    operation: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, operation)
        .await
        .unwrap_or(Err(StoreError::Timeout))
}

/// Well-formedness checks that need no I/O.
fn check_batch(batch: &AppendBatch) -> Result<(), StoreError> {
    batch.validate()?;
    if batch.event_count() > MAX_EVENTS_PER_TRANSACTION {
        return Err(StoreError::InvalidBatch(format!(
            "{} events in one batch; at most {MAX_EVENTS_PER_TRANSACTION} fit in a transaction",
            batch.event_count()
        )));
    }
    Ok(())
}

impl Inner {
    fn notify_channel(&self) -> Option<&str> {
        self.config.notify.then_some(self.channel.as_str())
    }

    /// Through the group committer (`group.rs`), or with group commit off one autocommit
    /// statement on its own connection (`append.rs`): one round trip, commit included.
    async fn append(&self, batch: AppendBatch) -> Result<AppendReceipt, StoreError> {
        check_batch(&batch)?;
        let started = Instant::now();
        let events = batch.event_count() as u64;
        let receipt = match &self.committer {
            Some(committer) => committer.append(batch).await?,
            None => single_append(&self.pool, &batch).await?,
        };
        if receipt.was_duplicate {
            return Ok(receipt);
        }
        if let Some(notifier) = &self.notifier {
            notifier.poke();
        }
        let schema = self.config.schema.clone();
        metrics::histogram!(APPEND_DURATION, "schema" => schema.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(EVENTS_APPENDED, "schema" => schema).increment(events);
        Ok(receipt)
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut connection = self.pool.acquire().await?;
        let deadline = Instant::now() + self.config.visibility_wait;
        let mut pause = Duration::from_millis(1);
        loop {
            let page = committed_prefix(&mut connection, from_position, limit).await?;
            // Waiting only matters when the caller would otherwise see "nothing new" although
            // committed events exist behind a transaction that is still running: writers'
            // transactions are short, so the horizon usually moves within milliseconds.
            if !page.events.is_empty() || !page.held_back || Instant::now() >= deadline {
                return Ok(page.events);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

impl EventStore for PgEventStore {
    fn append(&self, batch: AppendBatch) -> BoxFuture<'static, Result<AppendReceipt, StoreError>> {
        let store = self.clone();
        Box::pin(async move {
            let inner = Arc::clone(&store.inner);
            store
                .bounded(async move { inner.append(batch).await })
                .await
        })
    }

    fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<RecordedEvent>, StoreError>> {
        let store = self.clone();
        let stream = stream.clone();
        let span = self.span("read_stream");
        Box::pin(
            async move {
                store
                    .with_connection(move |c| {
                        Box::pin(
                            async move { stream_events(c, &stream, from_version, limit).await },
                        )
                    })
                    .await
            }
            .instrument(span),
        )
    }

    fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<RecordedEvent>, StoreError>> {
        let store = self.clone();
        let span = self.span("read_all");
        Box::pin(
            async move {
                let inner = Arc::clone(&store.inner);
                // The visibility wait happens inside the operation: give it room on top.
                let limit_time =
                    store.inner.config.operation_timeout + store.inner.config.visibility_wait;
                bounded(limit_time, async move {
                    inner.read_all(from_position, limit).await
                })
                .await
            }
            .instrument(span),
        )
    }

    fn stream_version(&self, stream: &StreamId) -> BoxFuture<'static, Result<u64, StoreError>> {
        let store = self.clone();
        let stream = stream.clone();
        let span = self.span("stream_version");
        Box::pin(
            async move {
                store
                    .with_connection(move |c| {
                        Box::pin(async move { current_version(c, &stream).await })
                    })
                    .await
            }
            .instrument(span),
        )
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'static, Result<(), StoreError>> {
        let store = self.clone();
        let span = self.span("save_snapshot");
        Box::pin(
            async move {
                store
                    .with_connection(move |c| {
                        Box::pin(async move { save_snapshot(c, &snapshot).await })
                    })
                    .await
            }
            .instrument(span),
        )
    }

    fn load_snapshot(
        &self,
        stream: &StreamId,
    ) -> BoxFuture<'static, Result<Option<Snapshot>, StoreError>> {
        let store = self.clone();
        let stream = stream.clone();
        let span = self.span("load_snapshot");
        Box::pin(
            async move {
                store
                    .with_connection(move |c| {
                        Box::pin(async move { load_snapshot(c, &stream).await })
                    })
                    .await
            }
            .instrument(span),
        )
    }
}

/// Keeps the newest snapshot: an older one arriving late (a slow writer) never replaces it.
async fn save_snapshot(
    connection: &mut PgConnection,
    snapshot: &Snapshot,
) -> Result<(), StoreError> {
    if snapshot.version == 0 || snapshot.schema_version == 0 {
        return Err(StoreError::InvalidBatch(format!(
            "snapshot of {} needs a version and a schema version above 0",
            snapshot.stream
        )));
    }
    sqlx::query(
        "INSERT INTO snapshots (stream_id, stream_version, schema_version, state) \
         VALUES ($1, $2, $3, $4::json) \
         ON CONFLICT (stream_id) DO UPDATE SET stream_version = excluded.stream_version, \
           schema_version = excluded.schema_version, state = excluded.state, taken_at = now() \
         WHERE snapshots.stream_version <= excluded.stream_version",
    )
    .bind(snapshot.stream.as_str())
    .bind(to_i64(snapshot.version))
    .bind(i32::try_from(snapshot.schema_version).unwrap_or(i32::MAX))
    .bind(snapshot.state.as_str())
    .execute(&mut *connection)
    .await
    .map_err(|e| match crate::error::database_error(&e) {
        Some((code, _)) if code.starts_with("22") => StoreError::InvalidBatch(e.to_string()),
        _ => classify(&e),
    })?;
    Ok(())
}

async fn load_snapshot(
    connection: &mut PgConnection,
    stream: &StreamId,
) -> Result<Option<Snapshot>, StoreError> {
    let row = sqlx::query(
        "SELECT stream_version, schema_version, state::text FROM snapshots WHERE stream_id = $1",
    )
    .bind(stream.as_str())
    .fetch_optional(&mut *connection)
    .await
    .map_err(|e| classify(&e))?;
    let Some(row) = row else { return Ok(None) };
    let decode = |e: sqlx::Error| StoreError::Permanent(format!("snapshots row: {e}"));
    let version: i64 = row.try_get(0).map_err(decode)?;
    let schema_version: i32 = row.try_get(1).map_err(decode)?;
    let state: String = row.try_get(2).map_err(decode)?;
    Ok(Some(Snapshot {
        stream: stream.clone(),
        version: to_u64(version, "stream_version")?,
        schema_version: u32::try_from(schema_version)
            .map_err(|e| StoreError::Permanent(format!("snapshots row: {e}")))?,
        state: Payload::from_json_text(state),
    }))
}
