//! The service's configuration: flags (each also an environment variable), checked at
//! start with **one clear message per problem**, all of them reported at once, before
//! anything is connected.
//!
//! What cannot be checked without the network (PostgreSQL answering, the schema's
//! migration version, the broker answering) is checked right after, at start-up, and
//! each failure names the address it tried ([`crate::serve`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use axum::http::Uri;
use clap::Args;
use reprise_kafka::{KafkaConfig, parse_properties};
use reprise_postgres::PgConfig;
use sqlx::postgres::PgConnectOptions;

/// `reprise-shop serve`.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Address the HTTP API listens on (IP:PORT; port 0 picks a free one).
    #[arg(long, env = "SHOP_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// Base URL of the payment provider (plain http).
    #[arg(
        long,
        env = "SHOP_PAYMENT_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub payment_url: String,
    /// Base URL of the carrier (plain http).
    #[arg(
        long,
        env = "SHOP_CARRIER_URL",
        default_value = "http://127.0.0.1:8082"
    )]
    pub carrier_url: String,
    /// PostgreSQL URL, postgres://user:password@host:port/database.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Kafka-API bootstrap servers, host:port[,host:port…]. `KAFKA_PROPERTIES` (librdkafka
    /// name=value pairs, `;`- or newline-separated), `KAFKA_CLIENT_ID`,
    /// `KAFKA_SESSION_TIMEOUT_MS`, `KAFKA_HEARTBEAT_INTERVAL_MS` and
    /// `KAFKA_DELIVERY_TIMEOUT_MS` are honoured as by `reprise dlq`.
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    pub kafka_bootstrap: Option<String>,
    /// PostgreSQL schema holding the shop's tables (must be migrated: `reprise-shop migrate`).
    #[arg(long, env = "SHOP_SCHEMA", default_value = "shop")]
    pub schema: String,
    /// Prefix of every topic and consumer group on the broker (several shops on one broker).
    #[arg(long, env = "SHOP_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    /// How long a graceful shutdown (SIGTERM, SIGINT) may take before the process exits anyway.
    #[arg(long, env = "SHOP_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,
    /// Partitions of each checkout topic, when the service creates it.
    #[arg(long, env = "SHOP_PARTITIONS", default_value_t = 4)]
    pub partitions: u32,
    /// Replication factor of each checkout topic, when the service creates it.
    #[arg(long, env = "SHOP_REPLICATION_FACTOR", default_value_t = 1)]
    pub replication_factor: u32,
    /// Timeout of one HTTP call to the payment provider or the carrier. The scenario's
    /// retry ladder (4 attempts) must fit in a saga step (2 s), hence the small default.
    #[arg(long, env = "SHOP_DEPENDENCY_TIMEOUT_MS", default_value_t = 250)]
    pub dependency_timeout_ms: u64,
    /// PostgreSQL connections per service (orders, inventory, payments, shipping, saga, API).
    #[arg(long, env = "SHOP_DB_CONNECTIONS", default_value_t = 4)]
    pub db_connections: u32,
}

/// A validated [`ServeArgs`].
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub payment_url: String,
    pub carrier_url: String,
    /// The store settings every service's pool starts from (schema set).
    pub postgres: PgConfig,
    /// The broker settings every client starts from (client id set per service).
    pub kafka: KafkaConfig,
    pub topic_prefix: String,
    pub shutdown_grace: Duration,
    pub partitions: u32,
    pub replication_factor: u32,
    pub dependency_timeout: Duration,
    pub db_connections: u32,
}

/// Consumer-group timing unless `KAFKA_SESSION_TIMEOUT_MS` / `KAFKA_HEARTBEAT_INTERVAL_MS`
/// say otherwise: a group forms (and fails over) in about one session timeout.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `host:port` and database of a PostgreSQL URL, for messages (never the password).
#[must_use]
pub fn pg_address(url: &str) -> String {
    match PgConnectOptions::from_str(url) {
        Ok(options) => {
            let database = options.get_database().unwrap_or("(default database)");
            match options.get_socket() {
                Some(socket) => format!("{} (database {database})", socket.display()),
                None => format!(
                    "{}:{} (database {database})",
                    options.get_host(),
                    options.get_port()
                ),
            }
        }
        Err(_) => "(unparsable URL)".to_owned(),
    }
}

/// Opens (and closes) one connection to `url`, so that an unreachable server, a refused
/// login or a missing database is reported as such — a pool only says it timed out.
///
/// # Errors
/// The connection's error, as text.
pub async fn preflight_postgres(url: &str, timeout: Duration) -> Result<(), String> {
    use sqlx::Connection;
    let options = PgConnectOptions::from_str(url).map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, sqlx::PgConnection::connect_with(&options)).await {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            Ok(())
        }
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// A base URL the HTTP client can use: `http://host[:port][/path]`, no query.
fn check_http_url(flag: &str, url: &str) -> Result<String, String> {
    let trimmed = url.trim();
    let bad = |why: &str| Err(format!("{flag} {trimmed:?}: {why}"));
    if trimmed.is_empty() {
        return bad("is empty");
    }
    let Ok(uri) = Uri::from_str(trimmed) else {
        return bad("is not a URL (expected http://host:port)");
    };
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return bad(
                "https is not supported (this build has no TLS client): use http:// to a \
                 local TLS-terminating proxy",
            );
        }
        Some(other) => return bad(&format!("scheme {other}:// is not supported; use http://")),
        None => return bad("has no scheme (expected http://host:port)"),
    }
    match uri.host() {
        Some(host) if !host.is_empty() => {}
        _ => return bad("has no host (expected http://host:port)"),
    }
    if uri.query().is_some() {
        return bad("must not have a query string");
    }
    Ok(trimmed.trim_end_matches('/').to_owned())
}

/// A PostgreSQL schema name the store accepts: `[a-z_][a-z0-9_]*`, at most 40 bytes.
#[must_use]
pub fn is_schema_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 40
        && matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

/// Whether `name` is a usable topic prefix: Kafka topic characters only.
fn is_topic_prefix(name: &str) -> bool {
    name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Builds the broker configuration from `bootstrap` and the `KAFKA_*` environment
/// (`reprise_kafka::KafkaConfig::from_env`'s variables, parsed the same way).
///
/// # Errors
/// Every problem found, one message each.
pub fn kafka_config(bootstrap: &str) -> Result<KafkaConfig, Vec<String>> {
    let mut problems = Vec::new();
    let mut config = KafkaConfig::new(bootstrap.trim().to_owned())
        .client_id("reprise-shop")
        .group_timing(SESSION_TIMEOUT, HEARTBEAT_INTERVAL);
    for server in bootstrap.split(',').map(str::trim) {
        let port = server.rsplit_once(':').map(|(_, port)| port.parse::<u16>());
        if server.is_empty() || !matches!(port, Some(Ok(p)) if p > 0) {
            problems.push(format!(
                "--kafka-bootstrap {bootstrap:?}: {server:?} is not host:port"
            ));
        }
    }
    if let Some(id) = env_var("KAFKA_CLIENT_ID") {
        config.client_id = id;
    }
    let mut millis = |name: &'static str| -> Option<Duration> {
        let value = env_var(name)?;
        match value.trim().parse::<u64>() {
            Ok(ms) => Some(Duration::from_millis(ms)),
            Err(e) => {
                problems.push(format!(
                    "{name}={value:?}: not a number of milliseconds ({e})"
                ));
                None
            }
        }
    };
    let session = millis("KAFKA_SESSION_TIMEOUT_MS");
    let heartbeat = millis("KAFKA_HEARTBEAT_INTERVAL_MS");
    let delivery = millis("KAFKA_DELIVERY_TIMEOUT_MS");
    if let Some(session) = session {
        config.session_timeout = session;
    }
    if let Some(heartbeat) = heartbeat {
        config.heartbeat_interval = heartbeat;
    }
    if let Some(delivery) = delivery {
        config.delivery_timeout = delivery;
    }
    if let Some(text) = env_var("KAFKA_PROPERTIES") {
        match parse_properties(&text) {
            Ok(properties) => config.properties.extend(properties),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty()
        && let Err(e) = config.validate()
    {
        problems.push(format!("Kafka configuration: {e}"));
    }
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

impl ServeArgs {
    /// Checks everything that can be checked without the network.
    ///
    /// # Errors
    /// Every problem found, one message each.
    pub fn validate(&self) -> Result<ServeConfig, Vec<String>> {
        let mut problems = Vec::new();
        let listen = SocketAddr::from_str(self.listen.trim())
            .map_err(|_| {
                problems.push(format!(
                    "--listen {:?}: expected IP:PORT, such as 0.0.0.0:8080 or 127.0.0.1:8080",
                    self.listen
                ));
            })
            .ok();
        let payment_url = check_http_url("--payment-url", &self.payment_url)
            .map_err(|e| problems.push(e))
            .ok();
        let carrier_url = check_http_url("--carrier-url", &self.carrier_url)
            .map_err(|e| problems.push(e))
            .ok();
        let schema_ok = is_schema_name(&self.schema);
        if !schema_ok {
            problems.push(format!(
                "--schema {:?}: must match [a-z_][a-z0-9_]* and be at most 40 bytes",
                self.schema
            ));
        }
        let postgres = match self.database_url.as_deref().map(str::trim) {
            None | Some("") => {
                problems.push(
                    "no database: pass --database-url or set DATABASE_URL \
                     (postgres://user:password@host:port/database)"
                        .to_owned(),
                );
                None
            }
            Some(url) => {
                // A placeholder schema when ours is refused (reported above), so that the
                // URL is still checked.
                let schema = if schema_ok {
                    self.schema.as_str()
                } else {
                    "shop"
                };
                let config = PgConfig::new(url)
                    .with_schema(schema)
                    .with_max_connections(self.db_connections.clamp(1, 64))
                    .with_notify(false);
                match config.validate() {
                    Ok(()) => Some(config),
                    Err(e) => {
                        problems.push(format!("--database-url: {e}"));
                        None
                    }
                }
            }
        };
        let kafka = match self.kafka_bootstrap.as_deref().map(str::trim) {
            None | Some("") => {
                problems.push(
                    "no broker: pass --kafka-bootstrap or set KAFKA_BOOTSTRAP (host:port)"
                        .to_owned(),
                );
                None
            }
            Some(bootstrap) => kafka_config(bootstrap)
                .map_err(|found| problems.extend(found))
                .ok(),
        };
        if !is_topic_prefix(&self.topic_prefix) {
            problems.push(format!(
                "--topic-prefix {:?}: only [A-Za-z0-9._-], at most 100 bytes",
                self.topic_prefix
            ));
        }
        if self.shutdown_grace_ms < 100 {
            problems.push(format!(
                "--shutdown-grace-ms {}: at least 100",
                self.shutdown_grace_ms
            ));
        }
        if !(1..=256).contains(&self.partitions) {
            problems.push(format!("--partitions {}: 1..=256", self.partitions));
        }
        if !(1..=16).contains(&self.replication_factor) {
            problems.push(format!(
                "--replication-factor {}: 1..=16",
                self.replication_factor
            ));
        }
        if !(10..=60_000).contains(&self.dependency_timeout_ms) {
            problems.push(format!(
                "--dependency-timeout-ms {}: 10..=60000",
                self.dependency_timeout_ms
            ));
        }
        if !(1..=64).contains(&self.db_connections) {
            problems.push(format!("--db-connections {}: 1..=64", self.db_connections));
        }
        match (listen, payment_url, carrier_url, postgres, kafka) {
            (Some(listen), Some(payment_url), Some(carrier_url), Some(postgres), Some(kafka))
                if problems.is_empty() =>
            {
                Ok(ServeConfig {
                    listen,
                    payment_url,
                    carrier_url,
                    postgres,
                    kafka,
                    topic_prefix: self.topic_prefix.clone(),
                    shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
                    partitions: self.partitions,
                    replication_factor: self.replication_factor,
                    dependency_timeout: Duration::from_millis(self.dependency_timeout_ms),
                    db_connections: self.db_connections,
                })
            }
            _ => Err(problems),
        }
    }
}

impl ServeConfig {
    /// The broker settings of one client of this process.
    #[must_use]
    pub fn kafka_for(&self, client: &str) -> KafkaConfig {
        let base = &self.kafka.client_id;
        let prefix = self.topic_prefix.trim_end_matches(['.', '-', '_']);
        let id = if prefix.is_empty() {
            format!("{base}-{client}")
        } else {
            format!("{base}-{prefix}-{client}")
        };
        self.kafka.clone().client_id(id)
    }

    /// Settings shown at start (no password).
    #[must_use]
    pub fn summary(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("listen", self.listen.to_string()),
            ("payment_url", self.payment_url.clone()),
            ("carrier_url", self.carrier_url.clone()),
            ("postgres", pg_address(&self.postgres.url)),
            ("schema", self.postgres.schema.clone()),
            ("kafka_bootstrap", self.kafka.bootstrap_servers.clone()),
            ("topic_prefix", self.topic_prefix.clone()),
            (
                "shutdown_grace_ms",
                self.shutdown_grace.as_millis().to_string(),
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs {
            listen: "127.0.0.1:8080".into(),
            payment_url: "http://127.0.0.1:8081/".into(),
            carrier_url: "http://127.0.0.1:8082".into(),
            database_url: Some("postgres://u:secret@127.0.0.1:5432/db".into()),
            kafka_bootstrap: Some("127.0.0.1:9092".into()),
            schema: "shop".into(),
            topic_prefix: String::new(),
            shutdown_grace_ms: 10_000,
            partitions: 4,
            replication_factor: 1,
            dependency_timeout_ms: 250,
            db_connections: 4,
        }
    }

    #[test]
    fn good_settings_pass() {
        let config = args().validate().unwrap();
        assert_eq!(config.payment_url, "http://127.0.0.1:8081");
        assert_eq!(config.postgres.schema, "shop");
        assert!(!config.postgres.notify);
        assert_eq!(config.kafka.session_timeout, SESSION_TIMEOUT);
        assert!(
            !format!("{:?}", config.summary()).contains("secret"),
            "no password in the summary"
        );
        assert_eq!(config.kafka_for("api").client_id, "reprise-shop-api");
    }

    #[test]
    fn every_problem_gets_its_own_message() {
        let bad = ServeArgs {
            listen: "everywhere".into(),
            payment_url: "ftp://x".into(),
            carrier_url: "https://carrier".into(),
            database_url: None,
            kafka_bootstrap: Some("broker".into()),
            schema: "Shop".into(),
            topic_prefix: "a b".into(),
            shutdown_grace_ms: 0,
            partitions: 0,
            replication_factor: 1,
            dependency_timeout_ms: 250,
            db_connections: 4,
        };
        let problems = bad.validate().unwrap_err();
        let all = problems.join("\n");
        for needle in [
            "--listen",
            "--payment-url",
            "https is not supported",
            "DATABASE_URL",
            "--kafka-bootstrap",
            "--topic-prefix",
            "--shutdown-grace-ms",
            "--partitions",
            "--schema",
        ] {
            assert!(all.contains(needle), "{needle} missing from:\n{all}");
        }
        assert_eq!(problems.len(), 9, "{all}");
        let schema = ServeArgs {
            schema: "Robert'); drop".into(),
            ..args()
        };
        assert!(schema.validate().unwrap_err()[0].starts_with("--schema"));
    }

    #[test]
    fn urls_need_http_and_a_host() {
        assert!(check_http_url("--x", "http://h:1/base/").unwrap() == "http://h:1/base");
        assert!(check_http_url("--x", "127.0.0.1:8081").is_err());
        assert!(check_http_url("--x", "http://h?x=1").is_err());
        assert!(check_http_url("--x", "").is_err());
    }

    #[test]
    fn addresses_never_show_the_password() {
        let address = pg_address("postgres://u:hunter2@db.internal:6432/shop");
        assert_eq!(address, "db.internal:6432 (database shop)");
    }
}
