//! The checkout service's contract as the deployment artifacts rely on it: binary,
//! subcommands, ports, HTTP paths, environment and metrics. The metric list mirrors
//! `docs/observability.md`, `docs/event-bus.md`, `docs/database.md` and the service's own
//! metrics; set `REPRISE_METRICS_EXPOSITION` to a file holding a real `/metrics` scrape of
//! the service and the checks use that scrape instead ([`catalogue`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::exposition;

/// The binary, and the image's `ENTRYPOINT`.
pub const BINARY: &str = "reprise-shop";
/// The package that builds it (`cargo build -p`).
pub const PACKAGE: &str = "reprise-shop";
/// Subcommands: the service, the migration, the two fake providers.
pub const SUBCOMMANDS: &[&str] = &["serve", "migrate", "payment-provider", "carrier"];

/// Port of the service: API, health checks and `/metrics`.
pub const SERVICE_PORT: u16 = 8080;
/// Port of the fake payment provider.
pub const PAYMENT_PROVIDER_PORT: u16 = 8081;
/// Port of the fake carrier.
pub const CARRIER_PORT: u16 = 8082;

/// `GET` — 200 while the process is responsive.
pub const HEALTH_LIVE: &str = "/health/live";
/// `GET` — 200 once start-up finished.
pub const HEALTH_STARTUP: &str = "/health/startup";
/// `GET` — 200 while the service can serve, 503 otherwise.
pub const HEALTH_READY: &str = "/health/ready";
/// Every health path.
pub const HEALTH_PATHS: &[&str] = &[HEALTH_LIVE, HEALTH_READY, HEALTH_STARTUP];
/// `GET` — Prometheus exposition.
pub const METRICS_PATH: &str = "/metrics";

/// Environment variables the binary reads.
pub const ENV: &[&str] = &[
    "SHOP_LISTEN",
    "SHOP_PAYMENT_URL",
    "SHOP_CARRIER_URL",
    "DATABASE_URL",
    "KAFKA_BOOTSTRAP",
    "KAFKA_PROPERTIES",
    "SHOP_SCHEMA",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];
/// Tuning variables the binary also reads (examples/production-ready: `config.rs`,
/// `cli.rs`; the Kafka ones through `reprise_kafka::KafkaConfig::from_env`), and the
/// standard ones the artifacts may set.
pub const OPTIONAL_ENV: &[&str] = &[
    "SHOP_TOPIC_PREFIX",
    "SHOP_SHUTDOWN_GRACE_MS",
    "SHOP_PARTITIONS",
    "SHOP_REPLICATION_FACTOR",
    "SHOP_DEPENDENCY_TIMEOUT_MS",
    "SHOP_DB_CONNECTIONS",
    "KAFKA_CLIENT_ID",
    "KAFKA_SESSION_TIMEOUT_MS",
    "KAFKA_HEARTBEAT_INTERVAL_MS",
    "KAFKA_DELIVERY_TIMEOUT_MS",
    // The fake providers' behaviour.
    "SHOP_LATENCY_MS",
    "SHOP_ERROR_RATE",
    "SHOP_OUTAGE",
    "SHOP_DECLINE_EVERY",
    "SHOP_LOST_PER_MILLE",
    "SHOP_PICKUP_MS",
    "SHOP_TRACKING_EVERY_MS",
    "SHOP_CARRIER_SEED",
    // Standard: log filter, OpenTelemetry resource name.
    "RUST_LOG",
    "OTEL_SERVICE_NAME",
];

/// Whether the binary (or a library it uses) reads this variable.
#[must_use]
pub fn is_known_env(name: &str) -> bool {
    ENV.contains(&name) || OPTIONAL_ENV.contains(&name)
}
/// What `serve` cannot start without.
pub const REQUIRED_SERVE_ENV: &[&str] = &[
    "SHOP_LISTEN",
    "SHOP_PAYMENT_URL",
    "SHOP_CARRIER_URL",
    "DATABASE_URL",
    "KAFKA_BOOTSTRAP",
    "SHOP_SCHEMA",
];

/// `SHOP_SHUTDOWN_GRACE_MS` when unset: how long the graceful shutdown after SIGTERM may
/// take (drain HTTP, commit offsets and leave the consumer groups, release the lease).
/// Kubernetes' `terminationGracePeriodSeconds` must exceed it plus the `preStop` pause.
pub const DEFAULT_SHUTDOWN_GRACE_MS: i64 = 10_000;

/// `SHOP_PARTITIONS` when unset: partitions of each checkout topic `serve` creates. A
/// replica is ready only while it holds a partition of every consumer group, so the
/// replicas (during a rollout: plus the surge) may not exceed it.
pub const DEFAULT_PARTITIONS: i64 = 4;

/// Labels Prometheus attaches to every scraped series (target labels of
/// `deploy/prometheus/prometheus.yml` and the Kubernetes pod discovery).
pub const TARGET_LABELS: &[&str] = &["job", "instance", "service", "namespace", "pod"];

/// Prometheus' own series about each scrape.
pub const SYNTHETIC: &[Metric] = &[Metric::gauge("up", &[])];

/// Kind of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric family of the contract.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
}

impl Metric {
    const fn counter(name: &'static str, labels: &'static [&'static str]) -> Self {
        Self {
            name,
            kind: Kind::Counter,
            labels,
        }
    }
    const fn gauge(name: &'static str, labels: &'static [&'static str]) -> Self {
        Self {
            name,
            kind: Kind::Gauge,
            labels,
        }
    }
    const fn histogram(name: &'static str, labels: &'static [&'static str]) -> Self {
        Self {
            name,
            kind: Kind::Histogram,
            labels,
        }
    }
}

/// Every metric family the service exports, with its labels.
pub const METRICS: &[Metric] = &[
    // The service's own (examples/production-ready). The HTTP histogram follows OTel's
    // semantic conventions; it must be exported as a histogram (buckets), not a summary.
    Metric::histogram(
        "http_server_request_duration_seconds",
        &[
            "http_request_method",
            "http_route",
            "http_response_status_code",
        ],
    ),
    Metric::counter("shop_orders_placed_total", &[]),
    Metric::counter("shop_orders_terminal_total", &["status"]),
    Metric::gauge("shop_http_requests_in_flight", &[]),
    Metric::gauge("shop_draining", &[]),
    // docs/observability.md (reprise-core, reprise-host, the PostgreSQL lease).
    Metric::counter("reprise_actions_total", &["store", "action"]),
    Metric::counter("reprise_actions_rejected_total", &["store"]),
    Metric::histogram("reprise_reducer_duration_seconds", &["store"]),
    Metric::histogram("reprise_effect_duration_seconds", &["store", "kind"]),
    Metric::counter("reprise_effect_errors_total", &["store", "kind", "error"]),
    Metric::counter("reprise_commands_rejected_total", &["aggregate", "error"]),
    Metric::counter("reprise_saga_deadlines_fired_total", &["saga"]),
    Metric::counter("reprise_retries_total", &["dependency", "operation"]),
    Metric::counter(
        "reprise_dependency_calls_failed_total",
        &["dependency", "operation", "reason"],
    ),
    Metric::gauge("reprise_breaker_state", &["dependency"]),
    Metric::counter(
        "reprise_breaker_transitions_total",
        &["dependency", "from", "to"],
    ),
    Metric::counter("reprise_breaker_rejected_total", &["dependency"]),
    Metric::counter("reprise_dead_letters_total", &["topic"]),
    Metric::gauge("reprise_dead_letters_pending", &["queue"]),
    Metric::gauge("reprise_dead_letters_oldest_age_seconds", &["queue"]),
    Metric::counter("reprise_relay_published_total", &["relay"]),
    Metric::gauge("reprise_relay_position", &["relay"]),
    Metric::gauge("reprise_relay_leader", &["relay"]),
    Metric::gauge("reprise_lease_held", &["lease", "schema"]),
    Metric::counter("reprise_relay_errors_total", &["relay", "stage"]),
    // docs/event-bus.md (reprise-kafka).
    Metric::counter("reprise_bus_published_total", &["topic"]),
    Metric::counter("reprise_bus_publish_errors_total", &["topic", "kind"]),
    Metric::histogram("reprise_bus_publish_duration_seconds", &[]),
    Metric::counter("reprise_bus_consumed_total", &["group", "topic"]),
    Metric::counter("reprise_bus_consumer_errors_total", &["group", "kind"]),
    Metric::counter("reprise_bus_commits_total", &["group"]),
    Metric::counter("reprise_bus_rebalances_total", &["group", "event"]),
    Metric::gauge("reprise_bus_consumer_lag", &["group", "topic", "partition"]),
    Metric::gauge("reprise_bus_uncommitted_messages", &["group"]),
    Metric::counter("reprise_bus_dead_letters_total", &["topic"]),
    Metric::counter(
        "reprise_bus_dead_letter_failures_total",
        &["topic", "group"],
    ),
    Metric::counter("reprise_bus_dead_letters_replayed_total", &["topic"]),
    Metric::counter("reprise_bus_handler_retries_total", &["topic"]),
    // docs/database.md (reprise-postgres).
    Metric::gauge("reprise_pg_pool_connections", &["schema", "state"]),
    Metric::histogram("reprise_pg_pool_acquire_wait_seconds", &["schema"]),
    Metric::counter("reprise_pg_pool_acquire_timeouts_total", &["schema"]),
    Metric::histogram("reprise_pg_append_duration_seconds", &["schema"]),
    Metric::counter("reprise_pg_events_appended_total", &["schema"]),
];

/// The environment variable naming a file with a `/metrics` scrape of the service.
pub const EXPOSITION_ENV: &str = "REPRISE_METRICS_EXPOSITION";

/// Every series name a query may select, with the labels it carries (target labels
/// included). Histograms contribute `_bucket` (with `le`), `_sum` and `_count`.
#[derive(Clone, Debug, Default)]
pub struct Catalogue {
    series: BTreeMap<String, BTreeSet<String>>,
    /// Where the names came from, for failure messages.
    pub source: String,
}

impl Catalogue {
    /// The static list of this module.
    #[must_use]
    pub fn from_contract() -> Self {
        let mut catalogue = Self {
            source: "the static list in deploy/tests/src/contract.rs".to_owned(),
            ..Self::default()
        };
        for metric in METRICS.iter().chain(SYNTHETIC) {
            catalogue.add_family(metric);
        }
        catalogue
    }

    /// The series of a real scrape, plus Prometheus' synthetic ones.
    ///
    /// # Errors
    /// When a line of the exposition cannot be parsed.
    pub fn from_exposition(text: &str, source: &str) -> Result<Self, String> {
        let mut catalogue = Self {
            source: source.to_owned(),
            ..Self::default()
        };
        for (name, labels) in exposition::series(text)? {
            catalogue.add(&name, labels.iter().map(String::as_str));
        }
        for metric in SYNTHETIC {
            catalogue.add_family(metric);
        }
        Ok(catalogue)
    }

    fn add_family(&mut self, metric: &Metric) {
        let labels = metric.labels.iter().copied();
        match metric.kind {
            Kind::Counter | Kind::Gauge => self.add(metric.name, labels),
            Kind::Histogram => {
                self.add(
                    &format!("{}_bucket", metric.name),
                    labels.clone().chain(["le"]),
                );
                self.add(&format!("{}_sum", metric.name), labels.clone());
                self.add(&format!("{}_count", metric.name), labels);
            }
        }
    }

    /// Adds a series name (a recording rule's, say) and its labels.
    pub fn add<'a>(&mut self, name: &str, labels: impl IntoIterator<Item = &'a str>) {
        let entry = self.series.entry(name.to_owned()).or_default();
        entry.extend(labels.into_iter().map(str::to_owned));
        entry.extend(TARGET_LABELS.iter().map(|l| (*l).to_owned()));
    }

    /// The labels of a series, if the catalogue has it.
    #[must_use]
    pub fn labels(&self, name: &str) -> Option<&BTreeSet<String>> {
        self.series.get(name)
    }

    /// Whether the catalogue has this series name.
    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        self.series.contains_key(name)
    }
}

/// The catalogue the checks use: the scrape named by `REPRISE_METRICS_EXPOSITION` when it
/// is set, the static list otherwise.
///
/// # Panics
/// When the variable names a file that cannot be read or parsed.
#[must_use]
pub fn catalogue() -> Catalogue {
    match std::env::var(EXPOSITION_ENV) {
        Ok(path) if !path.is_empty() => {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{EXPOSITION_ENV}={path}: cannot read: {e}"));
            Catalogue::from_exposition(&text, &format!("the scrape in {path}"))
                .unwrap_or_else(|e| panic!("{EXPOSITION_ENV}={path}: {e}"))
        }
        _ => Catalogue::from_contract(),
    }
}
