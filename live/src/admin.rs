//! A namespace after its run: find what it holds, check it, remove it.
//!
//! A run leaves its namespace behind when it fails, ends early (a signal, an outage longer
//! than its timeout) or is killed outright (`kill -9` runs no cleanup at all): a schema
//! `NAME`, topics `NAME.*` (the `.dlq` ones included) and consumer groups `NAME.*`. This
//! module is what `reprise real check` and `reprise real clean` run on such a leftover,
//! knowing nothing but its name:
//!
//! - [`footprint`] says what exists under the name, creating nothing (the schema is
//!   looked up with `MigrationMode::Verify`, the broker's topics and groups are listed);
//! - [`check_namespace`] runs every checker that needs only durable truth: the log read
//!   back from PostgreSQL, and the consumer invariants read from the broker. The payment
//!   provider's books lived in the run's process and are gone, so the money invariants
//!   are checked against the payment service's own record of the provider (its `payment-*`
//!   streams) instead, and the report says so ([`NamespaceReport::unchecked`]);
//! - [`clean_namespace`] drops the schema and deletes the topics and groups, and says what
//!   it removed; a name with nothing behind it is an error, so a typo never looks like
//!   success.
//!
//! Every name must match [`crate::NAMESPACE_PATTERN`]: `clean` cannot be pointed at
//! `public` or at a deployment's schema and topics.
//!
//! The run's own parameters (seed, orders, partitions) are kept *in* the namespace, as the
//! snapshot of stream [`RUN_RECORD`] (snapshots are not part of the log the checkers
//! audit), so that `check` can regenerate the workload and tell whether every planned
//! order was placed and finished.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use reprise_core::Aggregate;
use reprise_core::{EventStore, Payload, RecordedEvent, Snapshot, StreamId};
use reprise_postgres::{MigrationMode, PgConfig, PgEventStore, SetupError};
use reprise_scenarios::audit::Finding;
use reprise_scenarios::checkout::gateway::{ProviderBooks, ProviderCharge};
use reprise_scenarios::checkout::payment::{Payment, PaymentEvent};
use reprise_scenarios::checkout::workload::CheckoutWorkload;

use crate::bus_check::BusCheck;
use crate::checkout::{self, Books, LogCheck};
use crate::{LiveConfig, LiveError, NAMESPACE_PATTERN, is_namespace};

/// The stream whose snapshot records a run's parameters.
pub const RUN_RECORD: &str = "live-run";

/// Bound on each broker call of [`footprint`] and [`clean_namespace`].
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// A run's parameters, as recorded in its namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunRecord {
    pub seed: u64,
    pub orders: u32,
    pub partitions: u32,
    pub saga_instances: u32,
    pub service_instances: u32,
}

impl RunRecord {
    pub(crate) fn of(config: &LiveConfig) -> Self {
        RunRecord {
            seed: config.seed,
            orders: config.orders,
            partitions: config.partitions,
            saga_instances: config.saga_instances,
            service_instances: config.service_instances,
        }
    }

    fn fields(self) -> BTreeMap<String, u64> {
        [
            ("format", 1),
            ("seed", self.seed),
            ("orders", u64::from(self.orders)),
            ("partitions", u64::from(self.partitions)),
            ("saga_instances", u64::from(self.saga_instances)),
            ("service_instances", u64::from(self.service_instances)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Saves the record in the run's store.
    pub(crate) async fn save(self, store: &dyn EventStore) -> Result<(), LiveError> {
        let state = Payload::encode(&self.fields())
            .map_err(|e| LiveError::Config(format!("encode the run record: {e}")))?;
        store
            .save_snapshot(Snapshot {
                stream: StreamId::new(RUN_RECORD),
                version: 1,
                schema_version: 1,
                state,
            })
            .await?;
        Ok(())
    }

    /// The record of the run in `store`; `None` if there is none (a run interrupted before
    /// it wrote one) or it does not read as one.
    async fn load(store: &dyn EventStore) -> Result<Option<Self>, LiveError> {
        let Some(snapshot) = store.load_snapshot(&StreamId::new(RUN_RECORD)).await? else {
            return Ok(None);
        };
        let Ok(fields) = snapshot.state.decode::<BTreeMap<String, u64>>() else {
            return Ok(None);
        };
        let get = |name: &str| fields.get(name).copied();
        let small = |name: &str| get(name).and_then(|v| u32::try_from(v).ok());
        Ok((|| {
            Some(RunRecord {
                seed: get("seed")?,
                orders: small("orders")?,
                partitions: small("partitions")?,
                saga_instances: small("saga_instances")?,
                service_instances: small("service_instances")?,
            })
        })())
    }
}

/// What exists under a namespace's name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    pub schema: bool,
    /// Topics `NAME.*`, dead-letter topics included.
    pub topics: Vec<String>,
    /// Consumer groups `NAME.*`.
    pub groups: Vec<String>,
}

impl Footprint {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        !self.schema && self.topics.is_empty() && self.groups.is_empty()
    }

    fn describe(&self, namespace: &str) -> String {
        let mut parts = Vec::new();
        if self.schema {
            parts.push(format!("schema {namespace}"));
        }
        if !self.topics.is_empty() {
            parts.push(format!("{} topics {namespace}.*", self.topics.len()));
        }
        if !self.groups.is_empty() {
            parts.push(format!(
                "{} consumer groups {namespace}.*",
                self.groups.len()
            ));
        }
        parts.join(", ")
    }
}

fn refuse_pattern(namespace: &str) -> Result<(), LiveError> {
    if is_namespace(namespace) {
        Ok(())
    } else {
        Err(LiveError::Config(format!(
            "namespace {namespace:?} does not match {NAMESPACE_PATTERN}: not a run's namespace"
        )))
    }
}

/// The run's store, if its schema exists; nothing is created either way.
async fn open_store(
    config: &LiveConfig,
    namespace: &str,
) -> Result<Option<PgEventStore>, LiveError> {
    let pg = PgConfig::new(config.database_url.clone())
        .with_schema(namespace.to_owned())
        .with_max_connections(2)
        .with_migrations(MigrationMode::Verify);
    match PgEventStore::connect(pg).await {
        Ok(store) => Ok(Some(store)),
        Err(SetupError::SchemaMissing { .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

fn admin_config(config: &LiveConfig, namespace: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (name, value) in &config.kafka_properties {
        client.set(name, value);
    }
    client
        .set("bootstrap.servers", &config.kafka_bootstrap)
        .set("client.id", format!("reprise-live-{namespace}-admin"))
        .set("group.id", format!("{namespace}.live-admin"))
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false");
    client
}

fn broker_error(config: &LiveConfig, what: &str, error: impl fmt::Display) -> LiveError {
    LiveError::Broker(format!(
        "broker at {}: {what}: {error}",
        config.kafka_bootstrap
    ))
}

/// Topics and groups `NAME.*` on the broker.
async fn broker_footprint(
    config: &LiveConfig,
    namespace: &str,
) -> Result<(Vec<String>, Vec<String>), LiveError> {
    let client = admin_config(config, namespace);
    let prefix = format!("{namespace}.");
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client
            .create()
            .map_err(|e| broker_error(&config, "cannot create a client", e))?;
        let metadata = consumer
            .fetch_metadata(None, BROKER_TIMEOUT)
            .map_err(|e| broker_error(&config, "list topics", e))?;
        let topics = metadata
            .topics()
            .iter()
            .map(|t| t.name().to_owned())
            .filter(|name| name.starts_with(&prefix))
            .collect::<BTreeSet<_>>();
        let groups = consumer
            .fetch_group_list(None, BROKER_TIMEOUT)
            .map_err(|e| broker_error(&config, "list consumer groups", e))?
            .groups()
            .iter()
            .map(|g| g.name().to_owned())
            .filter(|name| name.starts_with(&prefix))
            .collect::<BTreeSet<_>>();
        Ok((topics.into_iter().collect(), groups.into_iter().collect()))
    })
    .await
    .map_err(|e| LiveError::Broker(format!("broker listing task failed: {e}")))?
}

/// What exists under `namespace`, creating nothing.
///
/// # Errors
/// A name outside [`NAMESPACE_PATTERN`]; PostgreSQL or the broker unreachable (named
/// with their address).
pub async fn footprint(config: &LiveConfig, namespace: &str) -> Result<Footprint, LiveError> {
    refuse_pattern(namespace)?;
    let (topics, groups) = broker_footprint(config, namespace).await?;
    let store = open_store(config, namespace).await?;
    let schema = store.is_some();
    if let Some(store) = store {
        store.close().await;
    }
    Ok(Footprint {
        schema,
        topics,
        groups,
    })
}

/// Refuses a namespace that already exists (see [`LiveError::NamespaceInUse`]).
pub(crate) async fn require_unused(config: &LiveConfig, namespace: &str) -> Result<(), LiveError> {
    let found = footprint(config, namespace).await?;
    if found.is_empty() {
        Ok(())
    } else {
        Err(LiveError::NamespaceInUse {
            namespace: namespace.to_owned(),
            what: found.describe(namespace),
        })
    }
}

/// What [`clean_namespace`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    pub namespace: String,
    pub schema_dropped: bool,
    pub topics_deleted: Vec<String>,
    pub groups_deleted: Vec<String>,
}

impl fmt::Display for Cleaned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "namespace {}:", self.namespace)?;
        if self.schema_dropped {
            writeln!(f, "  dropped schema {}", self.namespace)?;
        }
        for topic in &self.topics_deleted {
            writeln!(f, "  deleted topic {topic}")?;
        }
        for group in &self.groups_deleted {
            writeln!(f, "  deleted consumer group {group}")?;
        }
        write!(
            f,
            "removed: {} schema, {} topics, {} consumer groups",
            u8::from(self.schema_dropped),
            self.topics_deleted.len(),
            self.groups_deleted.len()
        )
    }
}

/// Drops `namespace`'s schema and deletes its topics (`.dlq` ones included) and consumer
/// groups. Groups go first: a group still holding a member is refused by the broker,
/// which is then named in the error (a run still going in another process).
///
/// # Errors
/// A name outside [`NAMESPACE_PATTERN`]; [`LiveError::NoSuchNamespace`] when nothing
/// exists under it; PostgreSQL or the broker unreachable or refusing (named).
pub async fn clean_namespace(config: &LiveConfig, namespace: &str) -> Result<Cleaned, LiveError> {
    let found = footprint(config, namespace).await?;
    if found.is_empty() {
        return Err(LiveError::NoSuchNamespace {
            namespace: namespace.to_owned(),
            looked: format!(
                "no schema {namespace} in the database, no topic or consumer group \
                 {namespace}.* on the broker at {}",
                config.kafka_bootstrap
            ),
        });
    }
    let mut cleaned = Cleaned {
        namespace: namespace.to_owned(),
        ..Cleaned::default()
    };
    if !found.groups.is_empty() || !found.topics.is_empty() {
        let admin: AdminClient<DefaultClientContext> = admin_config(config, namespace)
            .create()
            .map_err(|e| broker_error(config, "cannot create an admin client", e))?;
        let options = AdminOptions::new().operation_timeout(Some(BROKER_TIMEOUT));
        if !found.groups.is_empty() {
            let names: Vec<&str> = found.groups.iter().map(String::as_str).collect();
            let results = admin
                .delete_groups(&names, &options)
                .await
                .map_err(|e| broker_error(config, "delete consumer groups", e))?;
            for result in results {
                match result {
                    Ok(group) => cleaned.groups_deleted.push(group),
                    // Gone meanwhile (a group without offsets may vanish by itself).
                    Err((group, RDKafkaErrorCode::GroupIdNotFound)) => {
                        cleaned.groups_deleted.push(group);
                    }
                    Err((group, code)) => {
                        return Err(broker_error(
                            config,
                            &format!("delete consumer group {group}"),
                            code,
                        ));
                    }
                }
            }
        }
        if !found.topics.is_empty() {
            let names: Vec<&str> = found.topics.iter().map(String::as_str).collect();
            let results = admin
                .delete_topics(&names, &options)
                .await
                .map_err(|e| broker_error(config, "delete topics", e))?;
            for result in results {
                match result {
                    Ok(topic) | Err((topic, RDKafkaErrorCode::UnknownTopicOrPartition)) => {
                        cleaned.topics_deleted.push(topic);
                    }
                    Err((topic, code)) => {
                        return Err(broker_error(config, &format!("delete topic {topic}"), code));
                    }
                }
            }
        }
    }
    if found.schema {
        drop_schema(config, namespace).await?;
        cleaned.schema_dropped = true;
    }
    cleaned.topics_deleted.sort();
    cleaned.groups_deleted.sort();
    Ok(cleaned)
}

/// `DROP SCHEMA namespace CASCADE` on a connection of its own.
async fn drop_schema(config: &LiveConfig, namespace: &str) -> Result<(), LiveError> {
    let Some(store) = open_store(config, namespace).await? else {
        return Ok(());
    };
    // The name matched the namespace pattern: a plain identifier, safe in SQL text.
    let dropped = sqlx::query(&format!("DROP SCHEMA IF EXISTS {namespace} CASCADE"))
        .execute(store.pool())
        .await;
    store.close().await;
    dropped.map_err(|e| LiveError::Cleanup(format!("drop schema {namespace}: {e}")))?;
    Ok(())
}

/// The money the payment service *recorded* at the provider: its `payment-*` streams'
/// captures and refunds, in the shape of the provider's books. What [`check_namespace`]
/// checks the money invariants against once the provider itself is gone.
pub(crate) fn recorded_books(events: &[RecordedEvent]) -> ProviderBooks {
    let mut books = ProviderBooks::default();
    for event in events {
        if event.stream.category() != Payment::CATEGORY {
            continue;
        }
        let Some((_, order)) = event.stream.as_str().split_once('-') else {
            continue;
        };
        // An undecodable event is the log audit's finding.
        match event.payload.decode::<PaymentEvent>() {
            Ok(PaymentEvent::Captured { amount, charge }) => {
                books.charges.insert(
                    charge,
                    ProviderCharge {
                        order: order.to_owned(),
                        amount,
                        refunded: false,
                    },
                );
            }
            Ok(PaymentEvent::Refunded { .. }) => {
                for charge in books.charges.values_mut().filter(|c| c.order == order) {
                    charge.refunded = true;
                }
            }
            _ => {}
        }
    }
    books
}

/// What [`check_namespace`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceReport {
    pub namespace: String,
    /// The run's parameters, if it recorded them.
    pub record: Option<RunRecord>,
    pub events: u64,
    pub placed: u32,
    pub completed: u32,
    pub compensated: u32,
    /// The broker-side checks' counts, if they ran.
    pub bus: Option<BusCheck>,
    pub findings: Vec<Finding>,
    /// What was checked, in words.
    pub checked: Vec<String>,
    /// What could not be checked, and why.
    pub unchecked: Vec<String>,
}

impl NamespaceReport {
    /// No checked invariant broke.
    #[must_use]
    pub fn holds(&self) -> bool {
        self.findings.is_empty()
    }
}

impl fmt::Display for NamespaceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "namespace: {}", self.namespace)?;
        match self.record {
            Some(r) => writeln!(
                f,
                "run:       seed={} orders={} partitions={} (saga x{}, services x{} each)",
                r.seed, r.orders, r.partitions, r.saga_instances, r.service_instances
            )?,
            None => writeln!(f, "run:       no run record (the run stopped during setup)")?,
        }
        writeln!(
            f,
            "orders:    {} placed, {} completed, {} compensated",
            self.placed, self.completed, self.compensated
        )?;
        match &self.bus {
            Some(bus) => writeln!(
                f,
                "events:    {} in the store, {} messages on the bus, {} acknowledged messages verified, {} dead-lettered",
                self.events, bus.messages, bus.acknowledged_verified, bus.dead_lettered
            )?,
            None => writeln!(f, "events:    {} in the store", self.events)?,
        }
        for what in &self.checked {
            writeln!(f, "checked:   {what}")?;
        }
        for what in &self.unchecked {
            writeln!(f, "unchecked: {what}")?;
        }
        if self.findings.is_empty() {
            write!(f, "outcome:   every checked invariant holds")
        } else {
            write!(
                f,
                "outcome:   {} invariant violation(s)",
                self.findings.len()
            )?;
            for finding in &self.findings {
                write!(f, "\n  - {finding}")?;
            }
            Ok(())
        }
    }
}

/// Runs the invariant checkers on what `namespace` holds, from durable truth alone (see
/// the module docs). Creates nothing.
///
/// # Errors
/// A name outside [`NAMESPACE_PATTERN`]; [`LiveError::NoSuchNamespace`] without a schema
/// (the log is what every other check stands on); PostgreSQL unreachable. A broker that
/// cannot be read leaves the consumer checks in [`NamespaceReport::unchecked`].
pub async fn check_namespace(
    config: &LiveConfig,
    namespace: &str,
) -> Result<NamespaceReport, LiveError> {
    refuse_pattern(namespace)?;
    let Some(store) = open_store(config, namespace).await? else {
        return Err(LiveError::NoSuchNamespace {
            namespace: namespace.to_owned(),
            looked: format!("no schema {namespace} in the database, so no log to check"),
        });
    };
    let store = Arc::new(store);
    let outcome = check_open(config, namespace, &store).await;
    store.close().await;
    outcome
}

async fn check_open(
    config: &LiveConfig,
    namespace: &str,
    store: &Arc<PgEventStore>,
) -> Result<NamespaceReport, LiveError> {
    let record = RunRecord::load(store.as_ref()).await?;
    let workload: Option<CheckoutWorkload> =
        record.map(|r| checkout::workload_for(r.seed, r.orders));
    let deadline = Instant::now() + checkout::CHECK_PATIENCE;
    let events = checkout::read_log(store.as_ref(), deadline).await?;
    let books = recorded_books(&events);
    let LogCheck {
        tally,
        markers,
        mut findings,
        mut checked,
        mut unchecked,
    } = checkout::check_log(&events, workload.as_ref(), Books::Recorded(&books), true);
    unchecked.push(
        "the provider's own books (a capture the payment service never recorded, a \
         second capture at the provider): they lived in the run's process"
            .to_owned(),
    );
    let partitions = record.map(|r| r.partitions);
    let (bus, bus_checked, bus_unchecked, bus_findings) =
        checkout::check_bus(config, namespace, partitions, markers).await;
    checked.extend(bus_checked);
    unchecked.extend(bus_unchecked);
    findings.extend(bus_findings);
    Ok(NamespaceReport {
        namespace: namespace.to_owned(),
        record,
        events: events.len() as u64,
        placed: tally.placed,
        completed: tally.completed,
        compensated: tally.compensated,
        bus,
        findings,
        checked,
        unchecked,
    })
}
