//! # reprise-postgres
//!
//! The production [`EventStore`](reprise_core::EventStore) on PostgreSQL (15+), through
//! `sqlx`. It passes the same [`conformance`](reprise_core::conformance) suite as the
//! in-memory and simulated stores, so code tested in the simulator meets the same semantics
//! here: atomic multi-stream batches, optimistic concurrency with typed conflicts, idempotent
//! retries of a committed batch, and a gap-free global order for catch-up readers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use reprise_postgres::{PgConfig, PgEventStore};
//! let store = PgEventStore::connect(PgConfig::new("postgres://reprise:secret@127.0.0.1/app")).await?;
//! # let _ = store; Ok(()) }
//! ```
//!
//! ## Gap-free global order
//!
//! A catch-up subscriber reads "everything after the last position I handled". With a plain
//! sequence, positions are handed out at insert time but become visible at commit time, in
//! another order: transaction A takes position 10, B takes 11 and commits first, a reader sees
//! 11, stores checkpoint 11, and never sees 10 when A commits. That is the classic lost event.
//!
//! This adapter makes the position a function of the writing transaction's id:
//! `global_position = (xid8 << 16) | ordinal`. Every transaction that may still commit has
//! an xid at or above `pg_snapshot_xmin(pg_current_snapshot())` (the oldest transaction still
//! running), so a reader that returns only rows with positions below `xmin << 16` returns a
//! prefix of the final order that no later commit can extend backwards. Readers then resume
//! from `last + 1` without ever skipping a committed event or seeing one twice.
//!
//! Why this and not the alternatives:
//! - a global advisory lock held from insert to commit also gives gap-free order, but it
//!   serialises every commit, defeating group commit: throughput becomes 1 / fsync latency;
//! - positions assigned after commit by a background "sequencer" need a second write per
//!   event and a process that must be running for subscribers to make progress;
//! - `xid8 + xmin` costs nothing on the write path. Its price: positions are sparse (they
//!   jump by 65 536 per transaction; only order matters, never density), a transaction may
//!   hold at most 65 535 events, and a long-running *writing* transaction anywhere in the
//!   cluster holds subscribers back until it ends (never makes them skip). The connection
//!   options set `idle_in_transaction_session_timeout` to bound that; see `docs/database.md`.
//!
//! ## Write path
//!
//! One append is one statement, run in autocommit mode (one network round trip, commit
//! included). The statement upserts the rows of the touched streams in `streams` (row locks,
//! taken in stream-id order so concurrent multi-stream batches cannot deadlock), checks each
//! stream's expected version against the version its locked row had (a miss aborts the whole
//! statement with SQLSTATE `RP409`), bumps the versions, and inserts all events with a single
//! `INSERT .. SELECT FROM unnest(..)`. A batch therefore lands whole or not at all. A unique
//! violation on the event id (or an `RP409` on a retry) makes the adapter look the ids up and
//! answer as the core contract says: the same batch again is acknowledged with
//! `was_duplicate`, a partly known batch is `DuplicateEventId`, anything else is `Conflict`.
//!
//! Concurrent appends of one store are group-committed: the appends that queued while the
//! previous group was committing are written by one statement that decides every caller
//! first (conflicts and duplicates are excluded, not fatal) and commits the rest at once.
//! `group.rs` explains the design and its failure handling.
//!
//! ## Modules
//! - [`config`]: connection, pool and timeout settings, validated at construction.
//! - [`schema`]: embedded migrations; refuses to run against an unknown newer schema.
//! - [`store`]: [`PgEventStore`], the `EventStore` implementation and snapshots.
//! - [`error`]: how PostgreSQL errors map onto [`StoreError`](reprise_core::StoreError).
//! - [`dead_letter`]: [`PgDeadLetterQueue`], the core's dead-letter queue on the
//!   `dead_letters` table (race-safe resolution, exact round trip).
//! - `append` (private): the append statement and the diagnosis of its failures.
//! - `group` (private): group commit — concurrent appends committed by one statement, each
//!   caller with its own outcome ([`GroupCommit`] configures it, [`GroupCommitStats`]
//!   counts it).
//! - `read` (private): stream reads and global reads below the visibility horizon.
//! - [`pool`]: pool statistics and metrics (size, idle, acquire wait).
//! - [`subscription`]: checkpointed catch-up subscriptions woken by `LISTEN/NOTIFY`
//!   (notifications are sent after commit, coalesced, by a background task: `notifier.rs`).
//! - [`lease`]: [`PgLease`], leadership ([`reprise_core::Lease`]) as a session advisory
//!   lock on a dedicated connection; why not row locks (`SKIP LOCKED`).
//! - `headers` (private): the JSON encoding of message headers in `dead_letters`.
//!
//! Publishing events to a bus is not this crate's job: the relay in `reprise-host` tails
//! the gap-free global order ([`EventStore::read_all`](reprise_core::EventStore::read_all))
//! from a checkpoint, under a [`PgLease`], so appended and published cannot diverge without
//! an outbox table (migration 0009 dropped the former one).

// This crate is a production adapter: it talks to a real database on tokio, measures real
// elapsed time for pool metrics and timeouts, and sleeps between polls. The determinism lints
// guard core, sim, scenarios and chaos; they do not apply to I/O adapters.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod config;
pub mod dead_letter;
pub mod error;
pub mod lease;
pub mod pool;
pub mod schema;
pub mod store;
pub mod subscription;

mod append;
mod group;
mod headers;
mod notifier;
mod read;
mod rows;

pub use config::{GroupCommit, MigrationMode, PgConfig};
pub use dead_letter::PgDeadLetterQueue;
pub use error::PgError;
pub use error::SetupError;
pub use group::{APPEND_GROUP_SIZE, APPEND_GROUP_SPLITS, APPEND_GROUPS, GroupCommitStats};
pub use lease::PgLease;
pub use pool::PoolStats;
pub use store::PgEventStore;
pub use subscription::{CatchUpSubscription, SubscriptionOptions};

/// Events one transaction may append: the low 16 bits of a global position.
pub const MAX_EVENTS_PER_TRANSACTION: usize = 65_535;
