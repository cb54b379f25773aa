//! # reprise-live
//!
//! Runs the scenarios on real infrastructure — tokio, PostgreSQL, a Kafka-API broker — and
//! checks the simulator's invariants on what actually happened. The analogue of
//! TigerBeetle's `vortex`: the same workload and the same checkers as the simulator, a
//! different world underneath.
//!
//! ## Why it exists
//!
//! The simulator proves the scenario code correct against *models* of the store and the
//! bus (`reprise-sim`'s faulty in-memory versions). The conformance suites prove each
//! adapter meets the trait contracts one operation at a time. Neither shows that the
//! whole system — six services, outbox relay, consumer groups, sagas with real timers —
//! holds together on the production adapters: that a real rebalance, a real
//! `pg_snapshot_xmin` hold-back, real concurrency on a multi-threaded runtime, or a
//! broker's group-join delay do not break an invariant the models never exercised. A
//! live run does exactly that, and fails with the same invariant names the simulator
//! uses.
//!
//! ## How it differs from the simulator
//!
//! - **Not deterministic.** The workload (orders, quantities, cards, arrival times) and
//!   the carrier's fate of each parcel are drawn from `seed`, so two runs with one seed
//!   ask the same things; how the system answers depends on real scheduling and I/O. A
//!   failing live run cannot be replayed step by step — its namespace (schema and
//!   topics) is kept for inspection instead.
//! - **No injected faults of its own**: the faults are those of real timing — group joins
//!   and rebalances, commit latency, concurrent writers on PostgreSQL — and whatever the
//!   operator does to the infrastructure meanwhile. A PostgreSQL restart or a broker
//!   restart during a run is ridden out: the services retry through the host's backoff,
//!   the workload's placements retry, and the run's watcher waits for the store (the
//!   report counts the time it could not read it); only the run's timeout bounds an
//!   outage. (Measured: `pg_ctl stop -m immediate` with a restart 3 s later, 7.6 s
//!   without a store, and a 5 s broker outage both pass with 50 orders.) The payment
//!   provider and carrier are the simulator's models, in-process, with small real
//!   latencies ([`external`]). Scripted chaos on the shop's real processes is
//!   `reprise drill`'s.
//! - **Checked from durable truth only**: the log is read back from PostgreSQL with
//!   `read_all`, the provider's books from the model, and the consumer invariants from the
//!   broker's committed offsets and messages ([`bus_check`]) rather than from an in-memory
//!   bus. A message a consumer could not handle (another client's garbage on a topic) is
//!   handled by being dead-lettered: the checker finds its letter in `<topic>.dlq`.
//! - **Isolation by namespace**: each run gets a fresh PostgreSQL schema and its own
//!   prefix on every topic and consumer group ([`namespace`]), so runs never see each
//!   other's data, even concurrently on one broker and one database.
//!
//! ## Namespaces
//!
//! A namespace `live_…` is a schema `NAME` and topics and groups `NAME.*`. Its name is
//! printed before anything is created, so even a run killed with `kill -9` can be found.
//! A clean run removes it; a failing, incomplete or interrupted run keeps it, and its
//! report ends with the commands that check and remove it ([`admin`]: `reprise real
//! check --namespace NAME` runs the checkers from durable truth alone and says what that
//! cannot answer — the provider's own books lived in the run's process; `reprise real
//! clean --namespace NAME` drops the schema and deletes topics, `.dlq` ones included, and
//! groups). **A run never reuses a namespace**: `--namespace NAME` names a new one and an
//! existing one is refused. Re-running the workload into a namespace whose provider books
//! are gone would leave the money invariants of the first run unverifiable and mix two
//! runs' outcomes in one log; `check` and `clean` are the way to deal with a leftover.
//!
//! ## Ending early
//!
//! [`run_checkout_until`] takes an interrupt (the CLI: SIGINT, SIGTERM). The services are
//! stopped, the safety checks run on what happened, the liveness checks are skipped (and
//! said to be), and the report comes back as [`LiveError::Incomplete`]; the same for a
//! final check that cannot reach the store or the broker (a broker that stays down). The
//! report always names the namespace.
//!
//! ## Found by running it
//!
//! - **Two saga instances used to leave sagas stuck.** A saga's inputs are keyed by the
//!   aggregate that produced them (`inventory-sku0`, `order-o040`), so they land on
//!   partitions owned by different saga instances, each with its own cached saga; a stale
//!   cache judged an input irrelevant and the consumer acknowledged it. This run found it;
//!   the simulator now runs two saga nodes too (it finds the bug at seed 1 without the
//!   fix), and `SagaHost` checks after every input that no event lies beyond its cached
//!   state, reloading and judging again if one does. Two instances are the default here.
//!
//! ## Use
//!
//! ```no_run
//! # async fn demo() -> Result<(), reprise_live::LiveError> {
//! let config = reprise_live::LiveConfig::from_env(50)?.with_seed(7);
//! let report = reprise_live::run_checkout(config).await?;
//! println!("{report}");
//! # Ok(()) }
//! ```
//!
//! or `reprise real checkout --orders 50` with `DATABASE_URL` and `KAFKA_BOOTSTRAP` set;
//! `reprise real check --namespace NAME` and `reprise real clean --namespace NAME` for
//! what a run left ([`admin::check_namespace`], [`admin::clean_namespace`]).

// A harness of real infrastructure: it reads the wall clock (to time the run and bound
// the wait), sleeps and times out on tokio, spawns tokio tasks and blocking broker reads.
// The determinism lints that guard core, sim and scenarios do not apply; nothing here runs
// inside the simulator, and the scenario code it drives still sees only the `Runtime`.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod admin;
pub mod bus_check;
mod checkout;
pub mod external;
pub mod namespace;
pub mod runtime;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use reprise_core::{BusError, StoreError};
use reprise_kafka::ConfigError;
use reprise_postgres::SetupError;
use reprise_scenarios::audit::Finding;

pub use checkout::{
    Checked, CheckoutRun, Progress, WaitOutcome, fresh_namespace, read_log, run_checkout,
    run_checkout_until, run_checkout_with_progress,
};

/// Store connections per service instance (the checker has its own pool).
pub(crate) const CONNECTIONS_PER_INSTANCE: u32 = 4;
/// The checker's pool.
pub(crate) const CHECKER_CONNECTIONS: u32 = 4;
/// Instances of one service a run may start.
pub const MAX_INSTANCES: u32 = 16;
/// PostgreSQL connections a run may open in all ([`LiveConfig::postgres_connections`]):
/// room for the defaults many times over, and well under PostgreSQL's default 100, which
/// other clients of the server share.
pub const MAX_POSTGRES_CONNECTIONS: u64 = 64;
/// The longest run.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// What a live run does and where. Build with [`LiveConfig::new`] or
/// [`LiveConfig::from_env`], then adjust with the `with_*` methods.
#[derive(Clone, PartialEq, Eq)]
pub struct LiveConfig {
    /// `postgres://user:password@host:port/database`.
    pub database_url: String,
    /// Kafka-API bootstrap servers, `host:port[,host:port…]`.
    pub kafka_bootstrap: String,
    /// Orders the workload places.
    pub orders: u32,
    /// Seeds the workload and the carrier model (not the run: see the crate docs).
    pub seed: u64,
    /// Bound on the whole run: group joins, the workload and settling.
    pub timeout: Duration,
    /// Schema name and topic/group prefix; a fresh unique one when `None`. Must match
    /// [`NAMESPACE_PATTERN`] and not exist yet: a run never reuses a namespace (see the
    /// crate docs, "Namespaces").
    pub namespace: Option<String>,
    /// Saga service instances (each with its own outbox relay), as in the simulator.
    pub saga_instances: u32,
    /// Instances of each of the orders, inventory, payment and shipping services.
    pub service_instances: u32,
    /// Partitions of each checkout topic.
    pub partitions: u32,
    /// Consumer group timing; the broker forms a group in roughly one session timeout.
    pub session_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// Extra librdkafka properties for every client (TLS, SASL, tuning).
    pub kafka_properties: BTreeMap<String, String>,
    /// Keep the run's schema even when the run is clean (a failing run always keeps it).
    pub keep_schema: bool,
}

impl fmt::Debug for LiveConfig {
    /// The database URL is left out: it carries a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveConfig")
            .field("kafka_bootstrap", &self.kafka_bootstrap)
            .field("orders", &self.orders)
            .field("seed", &self.seed)
            .field("timeout", &self.timeout)
            .field("namespace", &self.namespace)
            .field("saga_instances", &self.saga_instances)
            .field("service_instances", &self.service_instances)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl LiveConfig {
    /// Defaults: seed 1, 120 s timeout, one instance of every service (as the
    /// simulator), 4 partitions per topic, 6 s session timeout with 500 ms heartbeats.
    #[must_use]
    pub fn new(
        database_url: impl Into<String>,
        kafka_bootstrap: impl Into<String>,
        orders: u32,
    ) -> Self {
        LiveConfig {
            database_url: database_url.into(),
            kafka_bootstrap: kafka_bootstrap.into(),
            orders,
            seed: 1,
            timeout: Duration::from_secs(120),
            namespace: None,
            saga_instances: 2,
            service_instances: 1,
            partitions: 4,
            session_timeout: Duration::from_secs(6),
            heartbeat_interval: Duration::from_millis(500),
            kafka_properties: BTreeMap::new(),
            keep_schema: false,
        }
    }

    /// Reads `DATABASE_URL` and `KAFKA_BOOTSTRAP`, and `KAFKA_PROPERTIES` when set (extra
    /// librdkafka properties — TLS, SASL — parsed as `reprise_kafka::parse_properties` does,
    /// so `reprise real` reaches the brokers `reprise dlq` does).
    ///
    /// # Errors
    /// [`LiveError::MissingEnv`] naming the first one unset or empty;
    /// [`LiveError::KafkaConfig`] for `KAFKA_PROPERTIES` that do not parse.
    pub fn from_env(orders: u32) -> Result<Self, LiveError> {
        let read = |name: &'static str, hint: &'static str| match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => Ok(value),
            _ => Err(LiveError::MissingEnv { name, hint }),
        };
        let mut config = LiveConfig::new(
            read(
                "DATABASE_URL",
                "start PostgreSQL with `eval \"$(bash scripts/postgres.sh)\"`",
            )?,
            read(
                "KAFKA_BOOTSTRAP",
                "start a broker with `eval \"$(bash scripts/kafka.sh)\"`",
            )?,
            orders,
        );
        if let Ok(text) = std::env::var("KAFKA_PROPERTIES") {
            config.kafka_properties = reprise_kafka::parse_properties(&text)?;
        }
        Ok(config)
    }

    /// Extra librdkafka properties for every client of the run (TLS, SASL, tuning).
    #[must_use]
    pub fn with_kafka_properties(mut self, properties: BTreeMap<String, String>) -> Self {
        self.kafka_properties = properties;
        self
    }

    /// PostgreSQL connections the run opens at most: a pool per service instance, the
    /// workload client's and the checker's, and one lease connection per saga instance.
    #[must_use]
    pub fn postgres_connections(&self) -> u64 {
        let instances = u64::from(self.saga_instances) + 4 * u64::from(self.service_instances) + 1;
        instances * u64::from(CONNECTIONS_PER_INSTANCE)
            + u64::from(CHECKER_CONNECTIONS)
            + u64::from(self.saga_instances)
    }

    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    #[must_use]
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    #[must_use]
    pub fn with_instances(mut self, saga: u32, services: u32) -> Self {
        self.saga_instances = saga;
        self.service_instances = services;
        self
    }

    #[must_use]
    pub fn with_keep_schema(mut self, keep: bool) -> Self {
        self.keep_schema = keep;
        self
    }

    /// Checks the settings before anything is created.
    ///
    /// # Errors
    /// [`LiveError::Config`] naming the first problem.
    pub fn validate(&self) -> Result<(), LiveError> {
        let invalid = |why: String| Err(LiveError::Config(why));
        if self.orders == 0 || self.orders > 10_000 {
            return invalid(format!("orders must be 1..=10000, got {}", self.orders));
        }
        if self.saga_instances == 0 || self.service_instances == 0 {
            return invalid("every service needs at least one instance".into());
        }
        if self.saga_instances > MAX_INSTANCES || self.service_instances > MAX_INSTANCES {
            return invalid(format!(
                "saga and service instances must be 1..={MAX_INSTANCES} each, got {} and {}",
                self.saga_instances, self.service_instances
            ));
        }
        if self.postgres_connections() > MAX_POSTGRES_CONNECTIONS {
            return invalid(format!(
                "{} saga and {} x4 service instances need {} PostgreSQL connections, more \
                 than the {MAX_POSTGRES_CONNECTIONS} a run may take (PostgreSQL allows 100 by \
                 default, for every client together): use fewer instances",
                self.saga_instances,
                self.service_instances,
                self.postgres_connections()
            ));
        }
        if self.timeout > MAX_TIMEOUT {
            return invalid(format!(
                "timeout {:?} exceeds {MAX_TIMEOUT:?}",
                self.timeout
            ));
        }
        if self.session_timeout < Duration::from_millis(1)
            || self.heartbeat_interval < Duration::from_millis(1)
            || self.session_timeout > Duration::from_secs(300)
        {
            return invalid(format!(
                "session timeout {:?} / heartbeat {:?} out of range",
                self.session_timeout, self.heartbeat_interval
            ));
        }
        if self.partitions == 0 || self.partitions > 64 {
            return invalid(format!(
                "partitions must be 1..=64, got {}",
                self.partitions
            ));
        }
        if self.timeout < Duration::from_secs(5) {
            return invalid(format!(
                "timeout {:?} is too short for consumer groups to form",
                self.timeout
            ));
        }
        if let Some(namespace) = &self.namespace
            && !is_namespace(namespace)
        {
            return invalid(format!(
                "namespace {namespace:?} must match {NAMESPACE_PATTERN}"
            ));
        }
        Ok(())
    }
}

/// What every namespace starts with. Runs make their own names (`live_<pid>_<clock>`);
/// a given name must carry the prefix too, so that `reprise real clean` — which drops a
/// schema and deletes topics by this name — can never be pointed at `public` or at a
/// service's own schema and topics.
pub const NAMESPACE_PREFIX: &str = "live_";

/// The namespace pattern, as the error messages spell it.
pub const NAMESPACE_PATTERN: &str = "live_[a-z0-9_]*, at most 32 bytes";

/// A name usable as a PostgreSQL schema and a topic prefix, and recognisably a run's:
/// `live_[a-z0-9_]*`, at most 32 bytes (see [`NAMESPACE_PREFIX`]).
#[must_use]
pub fn is_namespace(name: &str) -> bool {
    name.len() <= 32
        && name.starts_with(NAMESPACE_PREFIX)
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

/// What a live run did, and what its checkers found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveReport {
    /// The run's schema and topic/group prefix.
    pub namespace: String,
    pub seed: u64,
    pub orders_planned: u32,
    pub orders_placed: u32,
    /// Orders completed (delivered, paid).
    pub orders_completed: u32,
    /// Orders cancelled: out of stock, declined, lost by the carrier or timed out, with
    /// stock and money returned.
    pub orders_compensated: u32,
    /// Events in the run's store (domain events, saga events, inbox markers, deadlines).
    pub events: u64,
    /// Messages on the run's topics.
    pub bus_messages: u64,
    /// Acknowledged messages verified to have taken effect.
    pub acknowledged_verified: u64,
    /// Acknowledged messages verified to be in their dead-letter topic instead (messages
    /// no handler could take, e.g. from a foreign producer).
    pub dead_lettered: u64,
    pub saga_instances: u32,
    pub service_instances: u32,
    /// From start until every consumer group held every partition.
    pub ready_after: Duration,
    /// From start until every order was terminal and settled; `None` on timeout.
    pub settled_after: Option<Duration>,
    /// The whole run, checks included.
    pub elapsed: Duration,
    /// Broken invariants; empty for a clean run.
    pub findings: Vec<Finding>,
    /// Checks that could not run, each with why (the broker still down when the run
    /// ended, an interrupted run's liveness checks, …). Empty for a fully checked run.
    pub unchecked: Vec<String>,
    /// Why the run ended before it settled or timed out: a signal, or an infrastructure
    /// failure that outlasted the run's bounds. `None` for a run that went its course.
    pub ended_early: Option<String>,
    /// How long the run's watcher could not read the store (outages it rode out).
    pub store_unavailable: Duration,
    /// Whether the namespace (schema, topics, groups) was left in place (failing or
    /// incomplete runs, `keep_schema`); a clean run removes it.
    pub schema_kept: bool,
}

impl LiveReport {
    /// Every invariant checked and holding, on a run that went its course.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty() && self.unchecked.is_empty() && self.ended_early.is_none()
    }
}

/// The commands that check and remove a kept namespace, one per line.
#[must_use]
pub fn namespace_commands(namespace: &str) -> String {
    format!(
        "check it:  reprise real check --namespace {namespace}\nremove it: reprise real clean --namespace {namespace}"
    )
}

impl fmt::Display for LiveReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "namespace: {}", self.namespace)?;
        writeln!(
            f,
            "instances: saga x{}, orders/inventory/payments/shipping x{} each",
            self.saga_instances, self.service_instances
        )?;
        writeln!(
            f,
            "orders:    {} planned, {} placed, {} completed, {} compensated",
            self.orders_planned, self.orders_placed, self.orders_completed, self.orders_compensated
        )?;
        writeln!(
            f,
            "events:    {} in the store, {} messages on the bus, {} acknowledged messages verified",
            self.events, self.bus_messages, self.acknowledged_verified
        )?;
        if self.dead_lettered > 0 {
            writeln!(
                f,
                "           {} acknowledged messages dead-lettered (reprise dlq --backend kafka --topic {}.<topic>.dlq list)",
                self.dead_lettered, self.namespace
            )?;
        }
        let settled = self.settled_after.map_or_else(
            || "never".to_owned(),
            |d| format!("{:.1}s", d.as_secs_f64()),
        );
        writeln!(
            f,
            "elapsed:   {:.1}s (groups ready after {:.1}s, settled after {settled})",
            self.elapsed.as_secs_f64(),
            self.ready_after.as_secs_f64()
        )?;
        if !self.store_unavailable.is_zero() {
            writeln!(
                f,
                "outages:   the store was unreadable for {:.1}s in all (ridden out)",
                self.store_unavailable.as_secs_f64()
            )?;
        }
        if let Some(why) = &self.ended_early {
            writeln!(f, "ended:     early: {why}")?;
        }
        for what in &self.unchecked {
            writeln!(f, "unchecked: {what}")?;
        }
        if self.findings.is_empty() && self.unchecked.is_empty() && self.ended_early.is_none() {
            write!(f, "outcome:   every invariant holds (seed={})", self.seed)?;
        } else if self.findings.is_empty() {
            write!(
                f,
                "outcome:   incomplete: no violation among what could be checked (seed={})",
                self.seed
            )?;
        } else {
            write!(
                f,
                "outcome:   {} invariant violation(s) (seed={})",
                self.findings.len(),
                self.seed
            )?;
            for finding in &self.findings {
                write!(f, "\n  - {finding}")?;
            }
        }
        if self.schema_kept {
            write!(
                f,
                "\nkept:      namespace {ns} (schema {ns}, topics and groups {ns}.*)\n{}",
                namespace_commands(&self.namespace),
                ns = self.namespace
            )?;
        }
        Ok(())
    }
}

/// Why a live run could not run, or what it found.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("invalid live configuration: {0}")]
    Config(String),
    #[error("{name} is not set: {hint}")]
    MissingEnv {
        name: &'static str,
        hint: &'static str,
    },
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] SetupError),
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    #[error("Kafka configuration: {0}")]
    KafkaConfig(#[from] ConfigError),
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    #[error("broker: {0}")]
    Broker(String),
    #[error("consumer groups did not form within {waited:?}; unassigned: {}", unassigned.join(", "))]
    NotReady {
        waited: Duration,
        unassigned: Vec<String>,
    },
    #[error("cleanup: {0}")]
    Cleanup(String),
    /// Setting the run up failed after something was created: what happened to it.
    #[error("{cause}; {cleanup}")]
    SetupFailed {
        cause: Box<LiveError>,
        /// What was removed, or what was left behind and where.
        cleanup: String,
    },
    /// The run completed and broke at least one invariant.
    #[error("{}", violation_summary(report))]
    Violation { report: Box<LiveReport> },
    /// The run ended before it could be fully checked — interrupted, or the store or the
    /// broker failed beyond the run's bounds — and no checked invariant broke. The report
    /// holds what was observed and checked; the namespace is kept.
    #[error("run in namespace {} incomplete: {cause}", report.namespace)]
    Incomplete {
        cause: String,
        report: Box<LiveReport>,
    },
    /// `--namespace` named one that already exists: a run never reuses a namespace.
    #[error(
        "namespace {namespace} already exists ({what}); a run never reuses one (the \
         provider's books of the run that made it are gone). {}",
        namespace_commands(namespace).replace('\n', "; ")
    )]
    NamespaceInUse { namespace: String, what: String },
    /// `check` or `clean` named a namespace with nothing to check or remove.
    #[error("namespace {namespace} does not exist: {looked}; nothing was created")]
    NoSuchNamespace { namespace: String, looked: String },
}

fn violation_summary(report: &LiveReport) -> String {
    match report.findings.first() {
        Some(first) => format!(
            "{} invariant violation(s) in namespace {}; first: {first}",
            report.findings.len(),
            report.namespace
        ),
        None => "invariant violation".to_owned(),
    }
}

impl LiveError {
    /// The report of a run that broke an invariant or ended incomplete.
    #[must_use]
    pub fn report(&self) -> Option<&LiveReport> {
        match self {
            LiveError::Violation { report } | LiveError::Incomplete { report, .. } => Some(report),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LiveConfig {
        LiveConfig::new("postgres://u:p@127.0.0.1/db", "127.0.0.1:9092", 10)
    }

    #[test]
    fn sizes_have_bounds_with_clear_errors() {
        config().validate().expect("the defaults are valid");
        let error = config()
            .with_instances(u32::MAX, 1)
            .validate()
            .expect_err("4294967295 saga instances");
        assert!(error.to_string().contains("1..=16"), "{error}");
        let error = config()
            .with_instances(8, 8)
            .validate()
            .expect_err("too many connections");
        assert!(
            error.to_string().contains("PostgreSQL connections"),
            "{error}"
        );
        let error = config()
            .with_timeout(Duration::from_secs(u64::MAX / 4))
            .validate()
            .expect_err("a timeout of ages");
        assert!(error.to_string().contains("exceeds"), "{error}");
    }
}
