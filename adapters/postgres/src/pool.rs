//! The connection pool's health, as numbers: size, idle connections, how long operations
//! wait for a connection, and how often they gave up.
//!
//! Acquire wait is the earliest sign of an undersized pool (or of slow queries holding
//! connections): it climbs long before requests fail. Every acquisition goes through
//! [`InstrumentedPool::acquire`], which times it, updates [`PoolStats`] and reports to the
//! `metrics` facade:
//!
//! - `reprise_pg_pool_connections{schema, state="idle"|"in_use"}` (gauge)
//! - `reprise_pg_pool_acquire_wait_seconds{schema}` (histogram)
//! - `reprise_pg_pool_acquire_timeouts_total{schema}` (counter)

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reprise_core::StoreError;
use sqlx::PgPool;
use sqlx::pool::PoolConnection;
use sqlx::postgres::Postgres;

use crate::error::classify;

pub const POOL_CONNECTIONS: &str = "reprise_pg_pool_connections";
pub const POOL_ACQUIRE_WAIT: &str = "reprise_pg_pool_acquire_wait_seconds";
pub const POOL_ACQUIRE_TIMEOUTS: &str = "reprise_pg_pool_acquire_timeouts_total";

/// A point-in-time view of the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    /// Open connections (idle + in use).
    pub size: u32,
    pub idle: usize,
    pub max_connections: u32,
    /// Successful acquisitions since start.
    pub acquires: u64,
    /// Acquisitions that gave up after the acquire timeout.
    pub acquire_timeouts: u64,
    pub acquire_wait_total: Duration,
    pub acquire_wait_max: Duration,
}

/// The sqlx pool plus acquisition accounting.
#[derive(Debug)]
pub(crate) struct InstrumentedPool {
    pool: PgPool,
    schema: String,
    acquires: AtomicU64,
    acquire_timeouts: AtomicU64,
    wait_total_nanos: AtomicU64,
    wait_max_nanos: AtomicU64,
}

impl InstrumentedPool {
    pub(crate) fn new(pool: PgPool, schema: String) -> Self {
        InstrumentedPool {
            pool,
            schema,
            acquires: AtomicU64::new(0),
            acquire_timeouts: AtomicU64::new(0),
            wait_total_nanos: AtomicU64::new(0),
            wait_max_nanos: AtomicU64::new(0),
        }
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A connection, or `StoreError::Transient` once the acquire timeout has passed.
    pub(crate) async fn acquire(&self) -> Result<PoolConnection<Postgres>, StoreError> {
        let started = Instant::now();
        let result = self.pool.acquire().await;
        let waited = started.elapsed();
        let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        let schema = self.schema.clone();
        metrics::histogram!(POOL_ACQUIRE_WAIT, "schema" => schema.clone())
            .record(waited.as_secs_f64());
        match result {
            Ok(connection) => {
                self.acquires.fetch_add(1, Ordering::Relaxed);
                self.wait_total_nanos.fetch_add(nanos, Ordering::Relaxed);
                self.wait_max_nanos.fetch_max(nanos, Ordering::Relaxed);
                self.report_gauges();
                Ok(connection)
            }
            Err(error) => {
                if matches!(error, sqlx::Error::PoolTimedOut) {
                    self.acquire_timeouts.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(POOL_ACQUIRE_TIMEOUTS, "schema" => schema).increment(1);
                    tracing::warn!(schema = %self.schema, ?waited, "connection pool exhausted");
                }
                Err(classify(&error))
            }
        }
    }

    fn report_gauges(&self) {
        let size = self.pool.size();
        let idle = self.pool.num_idle();
        let in_use = f64::from(size).max(0.0) - idle as f64;
        metrics::gauge!(POOL_CONNECTIONS, "schema" => self.schema.clone(), "state" => "idle")
            .set(idle as f64);
        metrics::gauge!(POOL_CONNECTIONS, "schema" => self.schema.clone(), "state" => "in_use")
            .set(in_use.max(0.0));
    }

    pub(crate) fn stats(&self) -> PoolStats {
        PoolStats {
            size: self.pool.size(),
            idle: self.pool.num_idle(),
            max_connections: self.pool.options().get_max_connections(),
            acquires: self.acquires.load(Ordering::Relaxed),
            acquire_timeouts: self.acquire_timeouts.load(Ordering::Relaxed),
            acquire_wait_total: Duration::from_nanos(self.wait_total_nanos.load(Ordering::Relaxed)),
            acquire_wait_max: Duration::from_nanos(self.wait_max_nanos.load(Ordering::Relaxed)),
        }
    }
}
