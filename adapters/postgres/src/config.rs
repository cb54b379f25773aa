//! Connection, pool and timeout settings.
//!
//! Every knob that bounds waiting is here, because an event store that can hang is worse than
//! one that fails: the pool's acquire timeout turns exhaustion into a typed error, the
//! server-side `statement_timeout` bounds a query, the client-side operation timeout bounds
//! everything including a dead network, and `idle_in_transaction_session_timeout` stops an
//! abandoned transaction from holding catch-up subscribers back (see the crate docs).
//!
//! [`PgConfig::validate`] refuses inconsistent settings before any connection is made.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use crate::error::SetupError;

/// The most connections one pool may open: far above what one service needs, far below
/// what would exhaust a server (a typo or an overflow should fail here, not there).
pub const MAX_CONNECTIONS: u32 = 1_000;

/// What [`PgEventStore::connect`](crate::PgEventStore::connect) does about the schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrationMode {
    /// Apply pending migrations (takes sqlx's migration lock, so concurrent starts are safe).
    Apply,
    /// Require the schema to be exactly at this code's version; change nothing. For
    /// deployments where migrations run as a separate, reviewed step.
    Verify,
}

/// Settings of a [`PgEventStore`](crate::PgEventStore).
#[derive(Clone)]
pub struct PgConfig {
    /// `postgres://user:password@host:port/database`.
    pub url: String,
    /// PostgreSQL schema holding the tables; created if missing. Separate schemas give
    /// isolated stores in one database (tests, benchmarks, tenants).
    pub schema: String,
    pub max_connections: u32,
    pub min_connections: u32,
    /// How long an operation waits for a pooled connection before failing with
    /// `StoreError::Transient` (pool exhausted).
    pub acquire_timeout: Duration,
    /// Server-side limit per statement; exceeding it is `StoreError::Timeout`.
    pub statement_timeout: Duration,
    /// Server-side limit on a transaction left idle by its client.
    pub idle_in_transaction_timeout: Duration,
    /// Client-side limit on one whole operation (acquire + statements + commit), which also
    /// covers a network that stopped answering. Exceeding it is `StoreError::Timeout`.
    pub operation_timeout: Duration,
    /// How long `read_all` waits for older in-flight transactions when every visible event
    /// after the requested position is held back by them. After that it returns the safe
    /// (possibly empty) prefix; it never returns past a hole that may still fill.
    pub visibility_wait: Duration,
    /// Send a `NOTIFY` with each append so subscriptions wake at once instead of at their
    /// next poll.
    pub notify: bool,
    pub migrations: MigrationMode,
    /// How concurrent appends are coalesced into one transaction (see [`GroupCommit`]).
    pub group_commit: GroupCommit,
}

/// Largest [`GroupCommit::max_group_size`] accepted: one group is one statement whose
/// parameter arrays grow with it; far beyond this a group only adds latency.
pub const MAX_GROUP_SIZE: usize = 4_096;

/// Group commit settings: concurrent `append` calls of one store are committed together, in
/// one statement and one transaction, each caller still getting its own outcome (the design
/// is in `adapters/postgres/src/group.rs` and `docs/database.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupCommit {
    /// The most appends (callers) one group carries. `1` turns group commit off: every
    /// append runs its own statement on its own pooled connection, as before.
    pub max_group_size: usize,
    /// How long the committer waits for more callers once it has one, unless the group is
    /// full. Zero (the default) adds no latency: a group is whatever queued while the
    /// previous group was being committed — the classic group commit.
    pub max_wait: Duration,
    /// How long a group's statement may wait for a stream row lock held by a transaction
    /// outside the group (an `append_in` transaction, another process) before the group is
    /// split into individual appends (the statement's own `lock_timeout`). Bounds how long one locked stream can hold up the
    /// callers of unrelated streams that share its group.
    pub max_lock_wait: Duration,
    /// How many groups may be committing at once, each on its own pooled connection and
    /// on streams no other group in flight touches. A caller that arrives while fewer are
    /// in flight starts a group at once; beyond that, callers queue and form the next
    /// groups. More than one keeps both the server's cores and the WAL flush busy. Never
    /// more than `max_connections` in effect.
    pub max_groups_in_flight: usize,
}

/// Off by default: measured on 2 cores, groups win from ~32 concurrent appenders (1.3–2.5×)
/// but lose to independent appends at ~8 (about half the rate: a few groups keep fewer
/// connections busy than eight callers do) — see `docs/performance.md`, "Group commit".
/// Turn it on with [`PgConfig::with_group_commit`] where many appenders share one store.
impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit {
            max_group_size: 1,
            max_wait: Duration::ZERO,
            max_lock_wait: Duration::from_millis(100),
            max_groups_in_flight: 2,
        }
    }
}

impl GroupCommit {
    /// Group commit off (the default): one statement and one connection per append.
    #[must_use]
    pub fn off() -> Self {
        GroupCommit::default()
    }

    /// Group commit on, with the settings measured in `docs/performance.md`: up to 128
    /// callers per group, no added wait, two groups in flight.
    #[must_use]
    pub fn on() -> Self {
        GroupCommit {
            max_group_size: 128,
            ..GroupCommit::default()
        }
    }

    #[must_use]
    pub fn enabled(&self) -> bool {
        self.max_group_size > 1
    }
}

impl PgConfig {
    /// Defaults sized for a service on a small machine: 10 connections, 5 s statement
    /// timeout, migrations applied at start.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        PgConfig {
            url: url.into(),
            schema: "reprise".into(),
            max_connections: 10,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(5),
            idle_in_transaction_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(10),
            visibility_wait: Duration::from_secs(1),
            notify: true,
            migrations: MigrationMode::Apply,
            group_commit: GroupCommit::default(),
        }
    }

    #[must_use]
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    #[must_use]
    pub fn with_max_connections(mut self, max_connections: u32) -> Self {
        self.max_connections = max_connections;
        self
    }

    #[must_use]
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    #[must_use]
    pub fn with_statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    #[must_use]
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    #[must_use]
    pub fn with_notify(mut self, notify: bool) -> Self {
        self.notify = notify;
        self
    }

    /// Group commit: at most `max_group_size` appends per transaction, gathered for at most
    /// `max_wait` (zero: only what queued while the previous group committed).
    #[must_use]
    pub fn with_group_commit(mut self, max_group_size: usize, max_wait: Duration) -> Self {
        self.group_commit.max_group_size = max_group_size;
        self.group_commit.max_wait = max_wait;
        self
    }

    #[must_use]
    pub fn with_migrations(mut self, mode: MigrationMode) -> Self {
        self.migrations = mode;
        self
    }

    /// Checks the settings are usable and consistent.
    ///
    /// # Errors
    /// [`SetupError::InvalidConfig`] naming the first problem.
    pub fn validate(&self) -> Result<(), SetupError> {
        let invalid = |why: String| Err(SetupError::InvalidConfig(why));
        if !is_plain_identifier(&self.schema) {
            return invalid(format!(
                "schema {:?} must match [a-z_][a-z0-9_]* and be at most 40 bytes",
                self.schema
            ));
        }
        if self.max_connections == 0 || self.max_connections > MAX_CONNECTIONS {
            return invalid(format!(
                "max_connections must be 1..={MAX_CONNECTIONS}, got {} (PostgreSQL itself \
                 allows 100 by default, for every client together)",
                self.max_connections
            ));
        }
        if self.min_connections > self.max_connections {
            return invalid(format!(
                "min_connections ({}) exceeds max_connections ({})",
                self.min_connections, self.max_connections
            ));
        }
        for (name, value) in [
            ("acquire_timeout", self.acquire_timeout),
            ("statement_timeout", self.statement_timeout),
            (
                "idle_in_transaction_timeout",
                self.idle_in_transaction_timeout,
            ),
            ("operation_timeout", self.operation_timeout),
        ] {
            if value < Duration::from_millis(1) {
                return invalid(format!("{name} must be at least 1 ms"));
            }
        }
        // Otherwise a pool exhaustion would surface as "outcome unknown" instead of the
        // accurate "nothing was sent".
        if self.acquire_timeout >= self.operation_timeout {
            return invalid(format!(
                "acquire_timeout ({:?}) must be shorter than operation_timeout ({:?})",
                self.acquire_timeout, self.operation_timeout
            ));
        }
        let group = &self.group_commit;
        if group.max_group_size == 0 || group.max_group_size > MAX_GROUP_SIZE {
            return invalid(format!(
                "group_commit.max_group_size must be 1..={MAX_GROUP_SIZE} (1 turns group \
                 commit off), got {}",
                group.max_group_size
            ));
        }
        // A caller waits for its group inside its own operation timeout.
        if group.max_wait >= self.operation_timeout {
            return invalid(format!(
                "group_commit.max_wait ({:?}) must be shorter than operation_timeout ({:?})",
                group.max_wait, self.operation_timeout
            ));
        }
        if group.enabled() && group.max_groups_in_flight == 0 {
            return invalid("group_commit.max_groups_in_flight must be at least 1".into());
        }
        if group.enabled() && group.max_lock_wait < Duration::from_millis(1) {
            return invalid("group_commit.max_lock_wait must be at least 1 ms".into());
        }
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            return invalid("url must start with postgres:// or postgresql://".into());
        }
        PgConnectOptions::from_str(&self.url)
            .map_err(|e| SetupError::InvalidConfig(format!("url: {e}")))?;
        Ok(())
    }

    /// Connection options: the URL plus the per-session settings every connection gets.
    pub(crate) fn connect_options(&self) -> Result<PgConnectOptions, SetupError> {
        let options = PgConnectOptions::from_str(&self.url)
            .map_err(|e| SetupError::InvalidConfig(format!("url: {e}")))?;
        Ok(options.application_name("reprise").options([
            ("search_path", self.schema.clone()),
            ("statement_timeout", millis(self.statement_timeout)),
            (
                "idle_in_transaction_session_timeout",
                millis(self.idle_in_transaction_timeout),
            ),
        ]))
    }

    /// `host:port/database` of the URL, for error messages (never the password).
    #[must_use]
    pub fn address(&self) -> String {
        match PgConnectOptions::from_str(&self.url) {
            Ok(options) => format!(
                "{}:{}/{}",
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or("")
            ),
            Err(_) => "(unparsable URL)".to_owned(),
        }
    }

    /// The `LISTEN/NOTIFY` channel of this store's schema.
    pub(crate) fn channel(&self) -> String {
        format!("reprise_events_{}", self.schema)
    }
}

fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

/// Schema names end up in SQL text (`CREATE SCHEMA`, `search_path`) and in the notification
/// channel name (63 bytes at most), so only plain lower-case identifiers are accepted.
fn is_plain_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
        && name.len() <= 40
}

impl fmt::Debug for PgConfig {
    /// The URL may carry a password: print it redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = match (self.url.find("://"), self.url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***{}", &self.url[..scheme], &self.url[at..])
            }
            _ => self.url.clone(),
        };
        f.debug_struct("PgConfig")
            .field("url", &url)
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("min_connections", &self.min_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field(
                "idle_in_transaction_timeout",
                &self.idle_in_transaction_timeout,
            )
            .field("operation_timeout", &self.operation_timeout)
            .field("visibility_wait", &self.visibility_wait)
            .field("notify", &self.notify)
            .field("migrations", &self.migrations)
            .field("group_commit", &self.group_commit)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "postgres://user:hunter2@127.0.0.1:5432/db";

    #[test]
    fn defaults_are_valid() {
        PgConfig::new(URL).validate().unwrap();
    }

    #[test]
    fn inconsistent_settings_are_refused_with_a_reason() {
        let cases = [
            (
                PgConfig::new(URL).with_max_connections(0),
                "max_connections",
            ),
            (PgConfig::new(URL).with_schema("Robert'); drop"), "schema"),
            (PgConfig::new(URL).with_schema(""), "schema"),
            (
                PgConfig::new(URL).with_statement_timeout(Duration::ZERO),
                "statement_timeout",
            ),
            (
                PgConfig::new(URL)
                    .with_acquire_timeout(Duration::from_secs(5))
                    .with_operation_timeout(Duration::from_secs(5)),
                "acquire_timeout",
            ),
            (PgConfig::new("mysql://nope"), "url"),
            (
                PgConfig::new(URL).with_max_connections(u32::MAX),
                "max_connections",
            ),
            (
                PgConfig::new(URL).with_group_commit(0, Duration::ZERO),
                "max_group_size",
            ),
            (
                PgConfig::new(URL).with_group_commit(MAX_GROUP_SIZE + 1, Duration::ZERO),
                "max_group_size",
            ),
            (
                PgConfig::new(URL).with_group_commit(8, Duration::from_secs(10)),
                "max_wait",
            ),
        ];
        for (config, needle) in cases {
            match config.validate() {
                Err(SetupError::InvalidConfig(why)) => assert!(why.contains(needle), "{why}"),
                other => panic!("{config:?} should be invalid ({needle}), got {other:?}"),
            }
        }
    }

    #[test]
    fn the_address_names_host_port_and_database_only() {
        assert_eq!(PgConfig::new(URL).address(), "127.0.0.1:5432/db");
    }

    #[test]
    fn debug_output_hides_the_password() {
        let printed = format!("{:?}", PgConfig::new(URL));
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("***@127.0.0.1"), "{printed}");
    }
}
