//! Connection and group settings, and the librdkafka properties they become.
//!
//! Why a struct instead of a bag of strings: the adapter's guarantees (at-least-once,
//! per-key order, partitions that agree with [`reprise_core::event_bus::partition_for_key`])
//! depend on a handful of librdkafka properties. Those are set by the adapter and cannot be
//! overridden through [`KafkaConfig::property`]; everything else (TLS, SASL, tuning) passes
//! through untouched, so a managed service is a matter of configuration, not code
//! (`docs/event-bus.md` has examples for Redpanda, Apache Kafka, MSK, Event Hubs, Confluent
//! Cloud and Redpanda Cloud).
//!
//! Group timing matters more than it looks: a consumer receives nothing until the group
//! has formed, which takes roughly one session timeout on some brokers (tansu: ~23 s with
//! librdkafka's defaults, ~3 s with `session.timeout.ms=6000`, `heartbeat.interval.ms=500`).
//! Tests and latency-sensitive services should lower both; see [`KafkaConfig::group_timing`].

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use reprise_core::RetryPolicy;

/// Properties the adapter owns: overriding them would silently break a guarantee.
const RESERVED: &[(&str, &str)] = &[
    (
        "enable.idempotence",
        "the producer is always idempotent (no duplicates on retry, per-key order kept)",
    ),
    ("acks", "acks=all is required for durability"),
    (
        "partitioner",
        "murmur2_random keeps partitions identical to reprise_core::event_bus::partition_for_key",
    ),
    (
        "enable.auto.commit",
        "offsets are committed only for handled messages, by Subscription::commit",
    ),
    (
        "enable.auto.offset.store",
        "offsets are stored only for handled messages, contiguously",
    ),
    (
        "group.id",
        "the group is chosen per subscription (EventBus::subscribe)",
    ),
    (
        "bootstrap.servers",
        "use KafkaConfig::new / bootstrap_servers",
    ),
    ("client.id", "use KafkaConfig::client_id"),
    ("session.timeout.ms", "use KafkaConfig::group_timing"),
    ("heartbeat.interval.ms", "use KafkaConfig::group_timing"),
    ("message.timeout.ms", "use KafkaConfig::delivery_timeout"),
    ("delivery.timeout.ms", "use KafkaConfig::delivery_timeout"),
    (
        "statistics.interval.ms",
        "use KafkaConfig::statistics_interval (drives the lag metric)",
    ),
    (
        "allow.auto.create.topics",
        "use KafkaConfig::allow_auto_create_topics",
    ),
];

/// The default [`KafkaConfig::dead_letter_retry`]: 5 attempts, pauses from 100 ms doubling
/// to 2 s with jitter (about 2 s in all) — long enough to ride out a leader election of
/// the dead-letter topic, short enough that a consumer reports a lasting failure quickly.
pub const DEAD_LETTER_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 5,
    initial_delay: Duration::from_millis(100),
    max_delay: Duration::from_secs(2),
    multiplier: 2.0,
    jitter: true,
};

/// A configuration the adapter refuses, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("bootstrap servers are empty")]
    NoBootstrapServers,
    #[error("property `{name}` is set by the adapter: {reason}")]
    Reserved { name: String, reason: &'static str },
    #[error("{name} must be between 1 ms and {max_ms} ms, got {got:?}")]
    OutOfRange {
        name: &'static str,
        got: Duration,
        max_ms: u64,
    },
    #[error(
        "heartbeat interval {heartbeat:?} must be below a third of the session timeout {session:?}"
    )]
    HeartbeatTooSlow {
        heartbeat: Duration,
        session: Duration,
    },
    #[error("environment variable {name}: {problem}")]
    Env { name: &'static str, problem: String },
    #[error("dead-letter suffix `{0}` must be non-empty and use only [A-Za-z0-9._-]")]
    BadDeadLetterSuffix(String),
    #[error("dead-letter retry policy: {0}")]
    BadDeadLetterRetry(String),
    #[error("librdkafka refused the configuration: {0}")]
    Rejected(String),
}

/// Where new consumer groups start reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetReset {
    /// From the oldest retained message: a new group processes history (the default, and
    /// the only at-least-once choice for a projection or saga that must see every event).
    Earliest,
    /// Only messages published after the group first joined.
    Latest,
}

/// What a consumed message must be to reach the handler; anything else is dead-lettered
/// with the reason ([`crate::dead_letter`]) instead of being handed out.
///
/// Why the adapter checks at all: a Reprise consumer (the host's consume loop and inbox)
/// knows a message by its `reprise-event-id` header and decodes a JSON payload. A message
/// without either cannot be handled, only skipped — and a skip is an acknowledged message
/// that left no trace. Checked here, such a message lands in the dead-letter topic with
/// its reason, whichever client produced it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MessageCheck {
    /// Key, payload and header values must be UTF-8 and the payload present (not a
    /// tombstone): the least a [`Delivery`](reprise_core::Delivery) can hold. For buses
    /// carrying something other than Reprise messages (and for the core conformance
    /// suite, whose event ids are arbitrary text).
    Text,
    /// [`MessageCheck::Text`], plus a JSON payload and a `reprise-event-id` header holding
    /// an event id (UUID layout or 32 hex digits): what every Reprise consumer needs. The
    /// default.
    #[default]
    Envelope,
}

/// Settings for [`crate::KafkaEventBus`]. Defaults follow librdkafka's, except where the
/// adapter's guarantees need otherwise (`auto.offset.reset=earliest`).
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub bootstrap_servers: String,
    /// Shown in broker logs and quotas.
    pub client_id: String,
    /// A member that sends no heartbeat for this long is removed from its group.
    pub session_timeout: Duration,
    /// How often a member heartbeats; also bounds how fast it notices a rebalance.
    pub heartbeat_interval: Duration,
    /// How long the producer keeps retrying one message before reporting
    /// [`reprise_core::BusError::Timeout`] (`message.timeout.ms`).
    pub delivery_timeout: Duration,
    /// Bound on admin calls, synchronous commits, metadata and watermark queries.
    pub operation_timeout: Duration,
    /// How often librdkafka reports statistics, from which the consumer-lag gauge is set.
    /// `None` disables the lag metric.
    pub statistics_interval: Option<Duration>,
    /// Where a group with no committed offset starts.
    pub offset_reset: OffsetReset,
    /// Whether a publish or metadata request may make the broker create a missing topic
    /// (with the *broker's* default partition count). Off by default: the partition count
    /// fixes which keys share a partition, so topics should be created deliberately
    /// ([`crate::KafkaEventBus::create_topic`]); with it off, publishing to a missing
    /// topic fails instead of silently creating one.
    pub allow_auto_create_topics: bool,
    /// Dead letters of topic `t` go to `t` + this suffix (default `.dlq`).
    pub dead_letter_suffix: String,
    /// What a consumed message must be to be delivered (default
    /// [`MessageCheck::Envelope`]); the rest is dead-lettered with its reason.
    pub message_check: MessageCheck,
    /// Attempts and pauses when writing a dead letter fails (the dead-letter topic is
    /// unreachable or refuses the write). Past them the subscription reports the failure
    /// (metric `reprise_bus_dead_letter_failures_total`, an error log, and an error from
    /// `next`) and keeps the message, so its partition's commits stop before it rather
    /// than skip it; the next `next` tries again.
    pub dead_letter_retry: RetryPolicy,
    /// Any other librdkafka property, passed through (`security.protocol`, `sasl.*`,
    /// `ssl.*`, `linger.ms`, `compression.type`, `partition.assignment.strategy`, …).
    pub properties: BTreeMap<String, String>,
}

// By hand because the retry policy's multiplier is a float: compared by its bits, so that
// a configuration equals itself (the policy is validated finite).
impl PartialEq for KafkaConfig {
    fn eq(&self, other: &Self) -> bool {
        let KafkaConfig {
            bootstrap_servers,
            client_id,
            session_timeout,
            heartbeat_interval,
            delivery_timeout,
            operation_timeout,
            statistics_interval,
            offset_reset,
            allow_auto_create_topics,
            dead_letter_suffix,
            message_check,
            dead_letter_retry,
            properties,
        } = self;
        let retry = |r: &RetryPolicy| {
            (
                r.max_attempts,
                r.initial_delay,
                r.max_delay,
                r.multiplier.to_bits(),
                r.jitter,
            )
        };
        *bootstrap_servers == other.bootstrap_servers
            && *client_id == other.client_id
            && *session_timeout == other.session_timeout
            && *heartbeat_interval == other.heartbeat_interval
            && *delivery_timeout == other.delivery_timeout
            && *operation_timeout == other.operation_timeout
            && *statistics_interval == other.statistics_interval
            && *offset_reset == other.offset_reset
            && *allow_auto_create_topics == other.allow_auto_create_topics
            && *dead_letter_suffix == other.dead_letter_suffix
            && *message_check == other.message_check
            && retry(dead_letter_retry) == retry(&other.dead_letter_retry)
            && *properties == other.properties
    }
}

impl Eq for KafkaConfig {}

impl KafkaConfig {
    /// A configuration with librdkafka's group timing (45 s session, 3 s heartbeat).
    #[must_use]
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            client_id: "reprise".to_owned(),
            session_timeout: Duration::from_secs(45),
            heartbeat_interval: Duration::from_secs(3),
            delivery_timeout: Duration::from_secs(30),
            operation_timeout: Duration::from_secs(10),
            statistics_interval: Some(Duration::from_secs(5)),
            offset_reset: OffsetReset::Earliest,
            allow_auto_create_topics: false,
            dead_letter_suffix: ".dlq".to_owned(),
            message_check: MessageCheck::Envelope,
            dead_letter_retry: DEAD_LETTER_RETRY,
            properties: BTreeMap::new(),
        }
    }

    /// Reads `KAFKA_BOOTSTRAP` (required) and, when set, `KAFKA_CLIENT_ID`,
    /// `KAFKA_SESSION_TIMEOUT_MS`, `KAFKA_HEARTBEAT_INTERVAL_MS`,
    /// `KAFKA_DELIVERY_TIMEOUT_MS` and `KAFKA_PROPERTIES` (see [`parse_properties`]).
    ///
    /// # Errors
    /// [`ConfigError::Env`] if `KAFKA_BOOTSTRAP` is missing or a value does not parse;
    /// any error of [`KafkaConfig::validate`].
    pub fn from_env() -> Result<Self, ConfigError> {
        let bootstrap = std::env::var("KAFKA_BOOTSTRAP").map_err(|e| ConfigError::Env {
            name: "KAFKA_BOOTSTRAP",
            problem: format!("{e} (start a broker with `eval \"$(scripts/kafka.sh)\"`)"),
        })?;
        let mut config = KafkaConfig::new(bootstrap);
        if let Ok(id) = std::env::var("KAFKA_CLIENT_ID") {
            config.client_id = id;
        }
        let millis = |name: &'static str| -> Result<Option<Duration>, ConfigError> {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse::<u64>()
                    .map(|ms| Some(Duration::from_millis(ms)))
                    .map_err(|e| ConfigError::Env {
                        name,
                        problem: format!("`{v}` is not a number of milliseconds: {e}"),
                    }),
                Err(_) => Ok(None),
            }
        };
        if let Some(d) = millis("KAFKA_SESSION_TIMEOUT_MS")? {
            config.session_timeout = d;
        }
        if let Some(d) = millis("KAFKA_HEARTBEAT_INTERVAL_MS")? {
            config.heartbeat_interval = d;
        }
        if let Some(d) = millis("KAFKA_DELIVERY_TIMEOUT_MS")? {
            config.delivery_timeout = d;
        }
        if let Ok(text) = std::env::var("KAFKA_PROPERTIES") {
            config.properties.extend(parse_properties(&text)?);
        }
        config.validate()?;
        Ok(config)
    }

    #[must_use]
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    /// Session timeout and heartbeat interval of consumer groups. Lower values make groups
    /// form and fail over faster at the cost of more heartbeats.
    #[must_use]
    pub fn group_timing(mut self, session_timeout: Duration, heartbeat_interval: Duration) -> Self {
        self.session_timeout = session_timeout;
        self.heartbeat_interval = heartbeat_interval;
        self
    }

    #[must_use]
    pub fn delivery_timeout(mut self, timeout: Duration) -> Self {
        self.delivery_timeout = timeout;
        self
    }

    #[must_use]
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    #[must_use]
    pub fn statistics_interval(mut self, interval: Option<Duration>) -> Self {
        self.statistics_interval = interval;
        self
    }

    #[must_use]
    pub fn offset_reset(mut self, reset: OffsetReset) -> Self {
        self.offset_reset = reset;
        self
    }

    #[must_use]
    pub fn allow_auto_create_topics(mut self, allow: bool) -> Self {
        self.allow_auto_create_topics = allow;
        self
    }

    /// The suffix naming dead-letter topics (`orders` → `orders.dlq` by default).
    #[must_use]
    pub fn dead_letter_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.dead_letter_suffix = suffix.into();
        self
    }

    /// What a consumed message must be to reach the handler ([`MessageCheck`]).
    #[must_use]
    pub fn message_check(mut self, check: MessageCheck) -> Self {
        self.message_check = check;
        self
    }

    /// Retries of a failed dead-letter write ([`KafkaConfig::dead_letter_retry`]).
    #[must_use]
    pub fn dead_letter_retry(mut self, retry: RetryPolicy) -> Self {
        self.dead_letter_retry = retry;
        self
    }

    /// The dead-letter topic of `topic`.
    #[must_use]
    pub fn dead_letter_topic(&self, topic: &str) -> String {
        format!("{topic}{}", self.dead_letter_suffix)
    }

    /// A librdkafka property passed through as is. Reserved properties are refused by
    /// [`KafkaConfig::validate`].
    #[must_use]
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// How long a new group member may wait for its first assignment: two session
    /// timeouts plus the time to fetch. Size test and readiness timeouts with this.
    #[must_use]
    pub fn group_join_budget(&self) -> Duration {
        self.session_timeout * 2 + Duration::from_secs(5)
    }

    /// Checks everything that can be checked without a broker.
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self
            .bootstrap_servers
            .split(',')
            .all(|s| s.trim().is_empty())
        {
            return Err(ConfigError::NoBootstrapServers);
        }
        for (name, reason) in RESERVED {
            if self.properties.contains_key(*name) {
                return Err(ConfigError::Reserved {
                    name: (*name).to_owned(),
                    reason,
                });
            }
        }
        let suffix_ok = !self.dead_letter_suffix.is_empty()
            && self
                .dead_letter_suffix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !suffix_ok {
            return Err(ConfigError::BadDeadLetterSuffix(
                self.dead_letter_suffix.clone(),
            ));
        }
        self.dead_letter_retry
            .validate()
            .map_err(ConfigError::BadDeadLetterRetry)?;
        let max = u64::try_from(i32::MAX).unwrap_or(u64::MAX);
        let mut durations = vec![
            ("session_timeout", self.session_timeout),
            ("heartbeat_interval", self.heartbeat_interval),
            ("delivery_timeout", self.delivery_timeout),
            ("operation_timeout", self.operation_timeout),
        ];
        if let Some(interval) = self.statistics_interval {
            durations.push(("statistics_interval", interval));
        }
        for (name, got) in durations {
            if got < Duration::from_millis(1) || got.as_millis() > u128::from(max) {
                return Err(ConfigError::OutOfRange {
                    name,
                    got,
                    max_ms: max,
                });
            }
        }
        if self.heartbeat_interval * 3 > self.session_timeout {
            return Err(ConfigError::HeartbeatTooSlow {
                heartbeat: self.heartbeat_interval,
                session: self.session_timeout,
            });
        }
        Ok(())
    }

    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", &self.client_id)
            .set(
                "allow.auto.create.topics",
                if self.allow_auto_create_topics {
                    "true"
                } else {
                    "false"
                },
            );
        if let Some(interval) = self.statistics_interval {
            c.set("statistics.interval.ms", interval.as_millis().to_string());
        }
        for (name, value) in &self.properties {
            c.set(name, value);
        }
        c
    }

    /// The producer's librdkafka configuration.
    pub(crate) fn producer_config(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set(
                "message.timeout.ms",
                self.delivery_timeout.as_millis().to_string(),
            );
        c
    }

    /// A group member's librdkafka configuration.
    pub(crate) fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "session.timeout.ms",
                self.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                self.heartbeat_interval.as_millis().to_string(),
            )
            .set(
                "auto.offset.reset",
                match self.offset_reset {
                    OffsetReset::Earliest => "earliest",
                    OffsetReset::Latest => "latest",
                },
            );
        c
    }

    /// A group-less reader (dead-letter listing) or admin client configuration.
    pub(crate) fn reader_config(&self) -> ClientConfig {
        let mut c = self.base();
        // librdkafka refuses `assign` without a group id. Readers assign partitions
        // explicitly and never subscribe or commit, so this group is never joined.
        c.set("group.id", format!("{}-reader", self.client_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        // Statistics only feed the group lag gauge; a reader has no group.
        c.remove("statistics.interval.ms");
        c
    }
}

/// Parses `name=value` pairs: one per line when the text has several lines (so values may
/// contain `;`, like an Event Hubs connection string), otherwise separated by `;`
/// (`security.protocol=SASL_SSL;sasl.mechanism=PLAIN`). Values may contain `=`.
///
/// # Errors
/// [`ConfigError::Env`] naming `KAFKA_PROPERTIES` for a pair without `=` or an empty name.
pub fn parse_properties(text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let separator = if text.trim().contains('\n') {
        '\n'
    } else {
        ';'
    };
    let mut properties = BTreeMap::new();
    for pair in text
        .split(separator)
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair
            .split_once('=')
            .filter(|(name, _)| !name.trim().is_empty())
            .ok_or_else(|| ConfigError::Env {
                name: "KAFKA_PROPERTIES",
                problem: format!("`{pair}` is not `name=value`"),
            })?;
        properties.insert(name.trim().to_owned(), value.trim().to_owned());
    }
    Ok(properties)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_parse_from_one_line_or_many() {
        let one =
            parse_properties("security.protocol=SASL_SSL; sasl.mechanism=PLAIN;").expect("parses");
        assert_eq!(
            one.get("security.protocol").map(String::as_str),
            Some("SASL_SSL")
        );
        assert_eq!(one.get("sasl.mechanism").map(String::as_str), Some("PLAIN"));
        let connection =
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=a=b";
        let many = parse_properties(&format!(
            "sasl.username=$ConnectionString\nsasl.password={connection}\n"
        ))
        .expect("parses");
        assert_eq!(
            many.get("sasl.password").map(String::as_str),
            Some(connection),
            "`;` and `=` kept inside values"
        );
        assert!(matches!(
            parse_properties("linger.ms"),
            Err(ConfigError::Env { .. })
        ));
        assert!(matches!(
            parse_properties("=5"),
            Err(ConfigError::Env { .. })
        ));
    }

    #[test]
    fn defaults_validate() {
        assert_eq!(KafkaConfig::new("127.0.0.1:9092").validate(), Ok(()));
    }

    #[test]
    fn reserved_properties_are_refused() {
        let config = KafkaConfig::new("b:9092").property("enable.auto.commit", "true");
        assert!(
            matches!(config.validate(), Err(ConfigError::Reserved { name, .. }) if name == "enable.auto.commit")
        );
        let config = KafkaConfig::new("b:9092").property("acks", "1");
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Reserved { .. })
        ));
    }

    #[test]
    fn pass_through_properties_reach_librdkafka() {
        let config = KafkaConfig::new("b:9092")
            .property("security.protocol", "SASL_SSL")
            .property("sasl.mechanism", "PLAIN");
        assert_eq!(config.validate(), Ok(()));
        let producer = config.producer_config();
        assert_eq!(producer.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(producer.get("sasl.mechanism"), Some("PLAIN"));
        assert_eq!(producer.get("partitioner"), Some("murmur2_random"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(producer.get("acks"), Some("all"));
    }

    #[test]
    fn consumer_settings_follow_the_config() {
        let config = KafkaConfig::new("b:9092")
            .group_timing(Duration::from_secs(6), Duration::from_millis(500));
        let consumer = config.consumer_config("g1");
        assert_eq!(consumer.get("group.id"), Some("g1"));
        assert_eq!(consumer.get("session.timeout.ms"), Some("6000"));
        assert_eq!(consumer.get("heartbeat.interval.ms"), Some("500"));
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(consumer.get("auto.offset.reset"), Some("earliest"));
    }

    #[test]
    fn bad_values_get_typed_errors() {
        assert_eq!(
            KafkaConfig::new(" , ").validate(),
            Err(ConfigError::NoBootstrapServers)
        );
        let slow =
            KafkaConfig::new("b:9092").group_timing(Duration::from_secs(6), Duration::from_secs(3));
        assert!(matches!(
            slow.validate(),
            Err(ConfigError::HeartbeatTooSlow { .. })
        ));
        let zero = KafkaConfig::new("b:9092").delivery_timeout(Duration::ZERO);
        assert!(matches!(
            zero.validate(),
            Err(ConfigError::OutOfRange {
                name: "delivery_timeout",
                ..
            })
        ));
        let huge = KafkaConfig::new("b:9092").operation_timeout(Duration::from_secs(10_000_000));
        assert!(matches!(
            huge.validate(),
            Err(ConfigError::OutOfRange {
                name: "operation_timeout",
                ..
            })
        ));
        let suffix = KafkaConfig::new("b:9092").dead_letter_suffix("/dlq");
        assert_eq!(
            suffix.validate(),
            Err(ConfigError::BadDeadLetterSuffix("/dlq".into()))
        );
        assert_eq!(
            KafkaConfig::new("b:9092").dead_letter_topic("orders"),
            "orders.dlq"
        );
    }
}
