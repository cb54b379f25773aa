//! The outbox relay: drains the transactional [`outbox`](crate::outbox) to an
//! [`EventBus`], so "appended" and "published" cannot diverge (no dual writes).
//!
//! ```no_run
//! # async fn demo(store: reprise_postgres::PgEventStore,
//! #               bus: std::sync::Arc<dyn reprise_core::EventBus>) -> Result<(), Box<dyn std::error::Error>> {
//! use reprise_postgres::{OutboxRelay, RelayOptions};
//! let relay = OutboxRelay::new(store, bus, RelayOptions::default())?.spawn();
//! // ... serve ...
//! let stats = relay.shutdown().await; // finishes the batch in flight, releases the lock
//! # let _ = stats; Ok(()) }
//! ```
//!
//! ## Delivery: at-least-once, in order per key
//!
//! One loop: read up to `batch_size` unpublished rows in id order, publish them as one
//! [`EventBus::publish`] call, and only after the bus acknowledged the whole batch, stamp
//! them published. Rows are never stamped before the broker has them, so nothing is lost:
//! a bus that fails leaves the rows pending. A relay that crashes (or loses its lock, or is
//! shut down past its grace period) between publish and stamp publishes those rows again
//! later: **consumers must deduplicate by the event id header**
//! ([`header::EVENT_ID`](reprise_core::event_bus::header::EVENT_ID)), as at-least-once
//! requires everywhere (DESIGN §5).
//!
//! A batch that fails is retried **whole, before any later row** (exponential backoff from
//! `min_backoff` to `max_backoff`, no busy loop), so a later message of a key can never
//! overtake an earlier one. A stamp that fails is retried on its own (the broker already has
//! the batch; republishing it would only add duplicates). Every bus error is retried,
//! `Permanent` ones included: skipping a row would break per-key order and lose the
//! message, so a poison row stalls the relay loudly instead (`reprise_outbox_relay_errors_total`
//! and `reprise_outbox_pending` grow; logs say which rows) until an operator fixes it.
//!
//! Per-key order holds because outbox ids grow in commit order per stream: two appends to
//! one stream are serialised by the stream's row lock, and the outbox rows are inserted
//! after that lock is taken. Rows of *different* streams may commit out of id order (a
//! smaller id still invisible while a larger one is published); the relay does not wait for
//! them, it publishes them when they commit — which is fine because only per-key order
//! exists on the bus. Use the stream id as the message key (or keep messages of one key in
//! appends to one stream) to keep that guarantee.
//!
//! ## One publisher at a time: a session advisory lock
//!
//! Any number of relay instances may run (one per service replica); exactly one publishes.
//! Each instance takes `pg_try_advisory_lock(classid, hashtext(schema))` on a **dedicated
//! connection** (not pooled, `application_name = reprise-outbox-relay`), so the lock lives
//! exactly as long as that session: a crashed leader's lock is released by the server when
//! its connection dies, and a standby takes over within `lock_retry_interval`. Before each
//! publish the leader runs a statement on that connection, which proves the session — and
//! so the lock — is still alive.
//!
//! Why not `SELECT ... FOR UPDATE SKIP LOCKED`:
//! - it lets several relays work *in parallel on different rows*, and two relays publishing
//!   neighbouring batches race each other to the broker: a key's later message can land
//!   before its earlier one. Per-key order needs one publisher (or partitioning the outbox by
//!   key, which is what Kafka partitions already do downstream);
//! - the row locks must be held across the publish, i.e. a transaction stays open (with an
//!   xid: `FOR UPDATE` writes row marks) for a broker round trip or, on bus trouble, for the
//!   whole backoff. An open writing transaction holds back the visibility horizon every
//!   catch-up subscription of this cluster reads below (see the crate docs), and runs into
//!   `idle_in_transaction_session_timeout`. The advisory lock holds no transaction at all.
//!
//! What the lock does not cover: if the leader's connection dies *while* a publish is in
//! flight, a standby may take the lock and publish the same rows before the old leader
//! notices on its next check. That window yields duplicates (deduplicated downstream), as
//! any at-least-once crash does. Locks are per database, so the key includes the schema:
//! relays of different schemas never exclude each other (a `hashtext` collision between two
//! schema names would only make them share one leader).
//!
//! ## Waiting for rows
//!
//! When caught up, the leader waits for the store's append notification (`LISTEN` on
//! [`PgEventStore::channel`], sent after each committed append when `PgConfig::notify` is on;
//! one pooled connection for the leader's lifetime), or `poll_interval` at most. A lost
//! notification only delays publication to the poll interval.
//!
//! ## Observability
//!
//! Metrics (label `schema`, like the store's own): [`OUTBOX_RELAYED`],
//! [`OUTBOX_RELAY_ERRORS`] (extra labels `stage` = `read`/`publish`/`mark`/`lock`, and
//! `kind`), [`OUTBOX_PENDING`] (unpublished rows, refreshed at most every second while
//! draining, 0 when caught up) and [`OUTBOX_RELAY_LEADER`]. Everything runs in an
//! `outbox_relay` span; batches are `debug` events, leadership changes `info`, failures
//! `warn`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use reprise_core::{BusError, EventBus, StoreError};
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::outbox::OutboxEntry;
use crate::store::PgEventStore;

/// Counter: outbox messages published and stamped. Labels: `schema`.
pub const OUTBOX_RELAYED: &str = "reprise_outbox_relayed_total";
/// Counter: relay failures. Labels: `schema`, `stage` (`read`, `publish`, `mark`, `lock`),
/// `kind` (the `StoreError`/`BusError` kind, or `lost` for a lost lock).
pub const OUTBOX_RELAY_ERRORS: &str = "reprise_outbox_relay_errors_total";
/// Gauge: unpublished outbox rows, as last counted by the leader. Labels: `schema`.
pub const OUTBOX_PENDING: &str = "reprise_outbox_pending";
/// Gauge: 1 while this instance holds the relay lock, else 0. Labels: `schema`.
pub const OUTBOX_RELAY_LEADER: &str = "reprise_outbox_relay_leader";

/// First half of the advisory lock key (`'Rprs'`): the two-key form keeps it apart from
/// single-key advisory locks such as sqlx's migration lock.
const LOCK_CLASS: i32 = 0x5270_7273;
/// Longest interval between two counts of pending rows while draining a backlog.
const PENDING_REFRESH: Duration = Duration::from_secs(1);

/// How a relay reads, waits, retries and stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayOptions {
    /// Rows per read and per `publish` call.
    pub batch_size: usize,
    /// Longest wait for new rows when no notification arrives.
    pub poll_interval: Duration,
    /// Wake on the store's append notifications (one pooled connection while leading).
    pub listen: bool,
    /// How often a standby tries to take the lock.
    pub lock_retry_interval: Duration,
    /// First pause after a failure; doubles per consecutive failure.
    pub min_backoff: Duration,
    /// Longest pause between retries.
    pub max_backoff: Duration,
    /// Bound on one `publish` call; past it the call counts as a `Timeout` (outcome unknown:
    /// the batch is published again).
    pub publish_timeout: Duration,
    /// On shutdown, how long a publish in flight may still finish (and be stamped).
    pub shutdown_grace: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            listen: true,
            lock_retry_interval: Duration::from_secs(1),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl RelayOptions {
    #[must_use]
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    #[must_use]
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    #[must_use]
    pub fn with_listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    #[must_use]
    pub fn with_lock_retry_interval(mut self, interval: Duration) -> Self {
        self.lock_retry_interval = interval;
        self
    }

    #[must_use]
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max;
        self
    }

    #[must_use]
    pub fn with_publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    #[must_use]
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Refuses settings that would busy-loop or never make progress.
    ///
    /// # Errors
    /// [`RelayError::InvalidOptions`] naming the setting.
    pub fn validate(&self) -> Result<(), RelayError> {
        let invalid = |what: &str| Err(RelayError::InvalidOptions(what.to_owned()));
        if self.batch_size == 0 {
            return invalid("batch_size must be above 0");
        }
        if self.batch_size > crate::MAX_EVENTS_PER_TRANSACTION {
            return invalid("batch_size must be at most 65 535");
        }
        for (name, value) in [
            ("poll_interval", self.poll_interval),
            ("lock_retry_interval", self.lock_retry_interval),
            ("min_backoff", self.min_backoff),
            ("publish_timeout", self.publish_timeout),
        ] {
            if value.is_zero() {
                return invalid(&format!("{name} must be above 0"));
            }
        }
        if self.max_backoff < self.min_backoff {
            return invalid("max_backoff must be at least min_backoff");
        }
        Ok(())
    }
}

/// What can go wrong in the relay. Only [`RelayError::InvalidOptions`] reaches the caller
/// (from [`OutboxRelay::new`]); the others are retried by the loop and reported through
/// logs and `reprise_outbox_relay_errors_total`.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("invalid relay options: {0}")]
    InvalidOptions(String),
    /// Reading or stamping outbox rows failed.
    #[error("outbox store: {0}")]
    Store(#[from] StoreError),
    /// The bus refused or lost a batch; its rows stay pending.
    #[error("event bus: {0}")]
    Bus(#[from] BusError),
    /// The lock connection failed (taking the lock, or checking it is still held).
    #[error("relay lock: {0}")]
    Lock(String),
}

impl RelayError {
    /// Short label for metrics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            RelayError::InvalidOptions(_) => "invalid_options",
            RelayError::Store(error) => error.kind(),
            RelayError::Bus(error) => error.kind(),
            RelayError::Lock(_) => "lost",
        }
    }
}

/// Counters of one relay, readable while it runs ([`RelayHandle::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Messages published and stamped by this instance.
    pub relayed: u64,
    /// Batches published and stamped by this instance.
    pub batches: u64,
    /// Failures (every retry counts).
    pub errors: u64,
    /// Whether this instance holds the relay lock right now.
    pub leader: bool,
}

#[derive(Debug, Default)]
struct Counters {
    relayed: AtomicU64,
    batches: AtomicU64,
    errors: AtomicU64,
    leader: AtomicBool,
}

impl Counters {
    fn snapshot(&self) -> RelayStats {
        RelayStats {
            relayed: self.relayed.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            leader: self.leader.load(Ordering::Relaxed),
        }
    }
}

/// Drains the outbox of a [`PgEventStore`] to an [`EventBus`]. See the module docs.
pub struct OutboxRelay {
    store: PgEventStore,
    bus: Arc<dyn EventBus>,
    options: RelayOptions,
    counters: Arc<Counters>,
}

impl fmt::Debug for OutboxRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("schema", &self.store.config().schema)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A running relay task ([`OutboxRelay::spawn`]). Dropping the handle stops the relay too
/// (gracefully, in the background); [`RelayHandle::shutdown`] also waits for it.
#[derive(Debug)]
pub struct RelayHandle {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<RelayStats>,
    counters: Arc<Counters>,
}

impl RelayHandle {
    /// The relay's counters so far.
    #[must_use]
    pub fn stats(&self) -> RelayStats {
        self.counters.snapshot()
    }

    /// Whether the task has ended (only after a stop signal, or a panic).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Signals the relay to stop and waits for it: a publish in flight gets
    /// `shutdown_grace` to finish and be stamped, then the lock is released.
    ///
    /// # Panics
    /// If the relay task panicked (the panic is propagated).
    pub async fn shutdown(mut self) -> RelayStats {
        if let Some(stop) = self.stop.take() {
            // Err: the task already ended.
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(stats) => stats,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => self.counters.snapshot(),
        }
    }
}

/// The stop signal, pollable more than once.
struct Stop<'a> {
    signal: Pin<&'a mut (dyn Future<Output = ()> + Send)>,
    fired: bool,
}

impl Stop<'_> {
    /// Without waiting: has the signal fired?
    fn check(&mut self) -> bool {
        if !self.fired && self.signal.as_mut().now_or_never().is_some() {
            self.fired = true;
        }
        self.fired
    }

    async fn wait(&mut self) {
        if !self.fired {
            self.signal.as_mut().await;
            self.fired = true;
        }
    }

    /// Sleeps `pause`; true if stopped meanwhile.
    async fn sleep(&mut self, pause: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(pause) => false,
            () = self.wait() => true,
        }
    }
}

/// Exponential backoff between `min` and `max`.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(options: &RelayOptions) -> Self {
        Backoff {
            min: options.min_backoff,
            max: options.max_backoff,
            next: options.min_backoff,
        }
    }

    fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Why a term as leader ended.
enum Term {
    Stopped,
    LockLost(RelayError),
}

/// The outcome of publishing one batch.
enum Published {
    Done,
    Failed(BusError),
    /// Shutdown, and the publish did not finish within the grace period.
    Abandoned,
}

impl OutboxRelay {
    /// A relay for `store`'s outbox publishing to `bus`. Nothing runs until
    /// [`run`](Self::run) or [`spawn`](Self::spawn).
    ///
    /// # Errors
    /// [`RelayError::InvalidOptions`].
    pub fn new(
        store: PgEventStore,
        bus: Arc<dyn EventBus>,
        options: RelayOptions,
    ) -> Result<Self, RelayError> {
        options.validate()?;
        Ok(OutboxRelay {
            store,
            bus,
            options,
            counters: Arc::default(),
        })
    }

    #[must_use]
    pub fn options(&self) -> &RelayOptions {
        &self.options
    }

    /// Runs the relay on a tokio task until [`RelayHandle::shutdown`] (or the handle is
    /// dropped).
    #[must_use]
    pub fn spawn(self) -> RelayHandle {
        let (stop, stopped) = oneshot::channel::<()>();
        let counters = Arc::clone(&self.counters);
        let task = tokio::spawn(self.run(async move {
            // Ok: shutdown requested; Err: the handle was dropped. Both mean stop.
            let _ = stopped.await;
        }));
        RelayHandle {
            stop: Some(stop),
            task,
            counters,
        }
    }

    /// Runs the relay until `shutdown` completes: contend for the lock, and while holding
    /// it drain the outbox. Never returns early on errors (they are retried with backoff);
    /// returns the final counters.
    pub async fn run<S>(self, shutdown: S) -> RelayStats
    where
        S: Future<Output = ()> + Send,
    {
        let span = tracing::info_span!(
            "outbox_relay",
            db.namespace = %self.store.config().schema,
        );
        let mut signal = std::pin::pin!(shutdown);
        let mut stop = Stop {
            signal: signal.as_mut(),
            fired: false,
        };
        self.contend(&mut stop).instrument(span).await;
        self.counters.snapshot()
    }

    fn schema(&self) -> String {
        self.store.config().schema.clone()
    }

    fn count_error(&self, stage: &'static str, error: &RelayError) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(
            OUTBOX_RELAY_ERRORS,
            "schema" => self.schema(),
            "stage" => stage,
            "kind" => error.kind(),
        )
        .increment(1);
    }

    fn set_leader(&self, leader: bool) {
        self.counters.leader.store(leader, Ordering::Relaxed);
        metrics::gauge!(OUTBOX_RELAY_LEADER, "schema" => self.schema()).set(if leader {
            1.0
        } else {
            0.0
        });
    }

    /// Standby until the lock is ours, lead until the term ends, repeat until stopped.
    async fn contend(&self, stop: &mut Stop<'_>) {
        let mut backoff = Backoff::new(&self.options);
        // Standbys export 0 too, so "no leader anywhere" is visible as a sum of 0.
        self.set_leader(false);
        while !stop.check() {
            let mut lock = match self.try_lock().await {
                Ok(Some(connection)) => connection,
                Ok(None) => {
                    if stop.sleep(self.options.lock_retry_interval).await {
                        break;
                    }
                    continue;
                }
                Err(error) => {
                    self.count_error("lock", &error);
                    let pause = backoff.next_pause();
                    tracing::warn!(%error, ?pause, "cannot take the relay lock; retrying");
                    if stop.sleep(pause).await {
                        break;
                    }
                    continue;
                }
            };
            backoff.reset();
            self.set_leader(true);
            tracing::info!("relay lock taken: this instance publishes the outbox");
            let term = self.lead(&mut lock, stop).await;
            self.set_leader(false);
            // Ending the session releases the advisory lock; if the connection is already
            // broken, the server has released it.
            let _ = lock.close().await;
            match term {
                Term::Stopped => {
                    tracing::info!("relay stopped; lock released");
                    break;
                }
                Term::LockLost(error) => {
                    self.count_error("lock", &error);
                    tracing::warn!(%error, "relay lock lost; contending again");
                    if stop.sleep(backoff.next_pause()).await {
                        break;
                    }
                }
            }
        }
    }

    /// A dedicated session holding the advisory lock, or `None` if another relay holds it.
    async fn try_lock(&self) -> Result<Option<PgConnection>, RelayError> {
        let options = (*self.store.pool().connect_options())
            .clone()
            .application_name("reprise-outbox-relay");
        let lock_error = |e: sqlx::Error| RelayError::Lock(e.to_string());
        let attempt = async {
            let mut connection = PgConnection::connect_with(&options)
                .await
                .map_err(lock_error)?;
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
                .bind(LOCK_CLASS)
                .bind(&self.store.config().schema)
                .fetch_one(&mut connection)
                .await
                .map_err(lock_error)?;
            if taken {
                Ok(Some(connection))
            } else {
                let _ = connection.close().await;
                Ok(None)
            }
        };
        tokio::time::timeout(self.store.config().operation_timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(RelayError::Lock("taking the lock timed out".into())))
    }

    /// Proves the lock session is alive (so the lock is held); refreshes the pending gauge
    /// at most every [`PENDING_REFRESH`].
    async fn check_lock(
        &self,
        lock: &mut PgConnection,
        last_count: &mut Option<Instant>,
    ) -> Result<(), RelayError> {
        let lock_error = |e: sqlx::Error| RelayError::Lock(e.to_string());
        let check = async {
            if last_count.is_none_or(|at| at.elapsed() >= PENDING_REFRESH) {
                let pending: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                        .fetch_one(&mut *lock)
                        .await
                        .map_err(lock_error)?;
                *last_count = Some(Instant::now());
                metrics::gauge!(OUTBOX_PENDING, "schema" => self.schema()).set(pending as f64);
            } else {
                sqlx::query("SELECT 1")
                    .execute(&mut *lock)
                    .await
                    .map_err(lock_error)?;
            }
            Ok(())
        };
        tokio::time::timeout(self.store.config().operation_timeout, check)
            .await
            .unwrap_or_else(|_| Err(RelayError::Lock("lock check timed out".into())))
    }

    /// Drains the outbox while holding the lock.
    async fn lead(&self, lock: &mut PgConnection, stop: &mut Stop<'_>) -> Term {
        let mut listener = None;
        // Listen before the first read, so a commit between that read and the wait still
        // wakes us.
        self.ensure_listener(&mut listener).await;
        let mut backoff = Backoff::new(&self.options);
        let mut last_count = None;
        // Rows read and not yet stamped; `published` once the bus acknowledged them.
        let mut batch: Vec<OutboxEntry> = Vec::new();
        let mut published = false;
        loop {
            if stop.check() {
                return Term::Stopped;
            }
            if batch.is_empty() {
                match self.store.outbox_pending(self.options.batch_size).await {
                    Ok(rows) if rows.is_empty() => {
                        metrics::gauge!(OUTBOX_PENDING, "schema" => self.schema()).set(0.0);
                        if self.wait(&mut listener, stop).await {
                            return Term::Stopped;
                        }
                        continue;
                    }
                    Ok(rows) => batch = rows,
                    Err(error) => {
                        if self.fail("read", &error.into(), &mut backoff, stop).await {
                            return Term::Stopped;
                        }
                        continue;
                    }
                }
            }
            if !published {
                if let Err(error) = self.check_lock(lock, &mut last_count).await {
                    return Term::LockLost(error);
                }
                match self.publish(&batch, stop).await {
                    Published::Done => published = true,
                    Published::Failed(error) => {
                        let error = RelayError::Bus(error);
                        tracing::warn!(
                            first_id = batch[0].id,
                            rows = batch.len(),
                            "batch not published; it stays pending and is retried whole"
                        );
                        if self.fail("publish", &error, &mut backoff, stop).await {
                            return Term::Stopped;
                        }
                        continue;
                    }
                    Published::Abandoned => {
                        tracing::warn!(
                            first_id = batch[0].id,
                            rows = batch.len(),
                            "shutdown: publish abandoned after the grace period; \
                             the batch stays pending"
                        );
                        return Term::Stopped;
                    }
                }
            }
            let ids: Vec<i64> = batch.iter().map(|entry| entry.id).collect();
            match self.store.mark_outbox_published(&ids).await {
                Ok(_) => {
                    let count = batch.len() as u64;
                    self.counters.relayed.fetch_add(count, Ordering::Relaxed);
                    self.counters.batches.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(OUTBOX_RELAYED, "schema" => self.schema()).increment(count);
                    tracing::debug!(
                        first_id = ids[0],
                        last_id = ids[ids.len() - 1],
                        rows = count,
                        "outbox batch relayed"
                    );
                    batch.clear();
                    published = false;
                    backoff.reset();
                }
                Err(error) => {
                    // The bus has the batch: retry the stamp only. If we stop or lose the
                    // lock first, the next leader publishes the batch again (duplicates,
                    // never loss).
                    if self.fail("mark", &error.into(), &mut backoff, stop).await {
                        return Term::Stopped;
                    }
                }
            }
        }
    }

    /// Counts and logs a failure, then backs off; true if stopped meanwhile.
    async fn fail(
        &self,
        stage: &'static str,
        error: &RelayError,
        backoff: &mut Backoff,
        stop: &mut Stop<'_>,
    ) -> bool {
        self.count_error(stage, error);
        let pause = backoff.next_pause();
        tracing::warn!(stage, %error, ?pause, "outbox relay failure; retrying");
        stop.sleep(pause).await
    }

    /// One `publish` call, bounded by `publish_timeout`; on shutdown it gets
    /// `shutdown_grace` to finish.
    async fn publish(&self, batch: &[OutboxEntry], stop: &mut Stop<'_>) -> Published {
        let messages = batch.iter().map(|entry| entry.message.clone()).collect();
        let mut publish = std::pin::pin!(tokio::time::timeout(
            self.options.publish_timeout,
            self.bus.publish(messages),
        ));
        let outcome = tokio::select! {
            outcome = &mut publish => outcome,
            () = stop.wait() => {
                match tokio::time::timeout(self.options.shutdown_grace, &mut publish).await {
                    Ok(outcome) => outcome,
                    Err(_) => return Published::Abandoned,
                }
            }
        };
        match outcome {
            Ok(Ok(())) => Published::Done,
            Ok(Err(error)) => Published::Failed(error),
            Err(_) => Published::Failed(BusError::Timeout),
        }
    }

    async fn ensure_listener(&self, listener: &mut Option<PgListener>) {
        if !self.options.listen || !self.store.config().notify || listener.is_some() {
            return;
        }
        let channel = self.store.channel().to_owned();
        let connect = async {
            let mut new = PgListener::connect_with(self.store.pool()).await?;
            new.listen(&channel).await?;
            Ok::<_, sqlx::Error>(new)
        };
        match tokio::time::timeout(self.store.config().operation_timeout, connect).await {
            Ok(Ok(new)) => *listener = Some(new),
            Ok(Err(error)) => tracing::warn!(%error, "cannot listen for appends; polling"),
            Err(_) => tracing::warn!("listening for appends timed out; polling"),
        }
    }

    /// Waits for an append notification, the poll interval, or the stop signal; true if
    /// stopped.
    async fn wait(&self, listener: &mut Option<PgListener>, stop: &mut Stop<'_>) -> bool {
        self.ensure_listener(listener).await;
        let interval = self.options.poll_interval;
        let Some(active) = listener.as_mut() else {
            return stop.sleep(interval).await;
        };
        let woken = tokio::select! {
            woken = tokio::time::timeout(interval, active.try_recv()) => woken,
            () = stop.wait() => return true,
        };
        // Ok(Ok(Some)): notified; Err: the interval passed; Ok(Ok(None)): the connection
        // dropped and sqlx reconnects on the next call. All mean "read again".
        if let Ok(Err(error)) = woken {
            tracing::warn!(%error, "append listener failed; polling");
            *listener = None;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let options = RelayOptions::default()
            .with_backoff(Duration::from_millis(50), Duration::from_millis(300));
        let mut backoff = Backoff::new(&options);
        let pauses: Vec<u128> = (0..5).map(|_| backoff.next_pause().as_millis()).collect();
        assert_eq!(pauses, [50, 100, 200, 300, 300]);
        backoff.reset();
        assert_eq!(backoff.next_pause(), Duration::from_millis(50));
    }

    #[test]
    fn default_options_are_valid() {
        RelayOptions::default().validate().unwrap();
        assert!(matches!(
            RelayOptions::default().with_publish_timeout(Duration::ZERO).validate(),
            Err(RelayError::InvalidOptions(m)) if m.contains("publish_timeout")
        ));
    }
}
