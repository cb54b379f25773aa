//! The checkout scenario on real infrastructure.
//!
//! [`run_checkout`] is the whole run; [`CheckoutRun`] exposes its phases so tests can
//! look at (or tamper with) the world between them:
//!
//! 1. [`CheckoutRun::start`]: a fresh namespace (schema migrated by the adapter, topics
//!    created — the broker does not auto-create them), every service instance on its own
//!    store pool and bus client, a wait until every consumer group holds every partition,
//!    then the workload client.
//! 2. [`CheckoutRun::wait`]: polls the store's log like the simulator's periodic safety
//!    check (the same [`CheckoutAudit`], fed incrementally, plus the provider's books)
//!    until every order is terminal and settled, a safety invariant breaks, or the
//!    timeout passes.
//! 3. [`CheckoutRun::stop`]: aborts every service task.
//! 4. [`CheckoutRun::check`]: a fresh audit over the whole log read back from PostgreSQL,
//!    the provider's books, the settled/terminal checks, and the consumer invariants read
//!    from the broker ([`crate::bus_check`]).
//!
//! **Positions.** PostgreSQL positions are strictly increasing but sparse
//! (`(xid8 << 16) | ordinal`), while the scenario's [`LogAudit`] wants the dense,
//! gap-free numbering of the in-memory store. The reader here keeps PostgreSQL's order
//! and renumbers events `1, 2, 3, …` as it hands them to the audit; positions in
//! findings are those ordinals, not PostgreSQL positions.
//!
//! [`LogAudit`]: reprise_scenarios::audit::LogAudit

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use reprise_core::{Aggregate, EventId, EventStore, RecordedEvent, Spawner, StoreError};
use reprise_host::{Platform, inbox};
use reprise_kafka::{KafkaConfig, KafkaEventBus};
use reprise_postgres::{MigrationMode, PgConfig, PgEventStore, PgLease};
use reprise_scenarios::Bugs;
use reprise_scenarios::audit::Finding;
use reprise_scenarios::checkout::gateway::ProviderBooks;
use reprise_scenarios::checkout::invariants::{CheckoutAudit, invariant};
use reprise_scenarios::checkout::order::{Order, OrderEvent};
use reprise_scenarios::checkout::saga::topics;
use reprise_scenarios::checkout::services::{self, groups};
use reprise_scenarios::checkout::workload::{CheckoutOptions, CheckoutWorkload, run_client};
use reprise_scenarios::checkout::{CarrierModel, CarrierOptions, PaymentProvider, resilience};
use reprise_tokio::TokioRuntime;

use crate::bus_check::{self, BusCheck};
use crate::external::{Latency, LiveCarrier, LiveProvider};
use crate::namespace::NamespacedBus;
use crate::runtime::ScopedRuntime;
use crate::{CHECKER_CONNECTIONS, CONNECTIONS_PER_INSTANCE, LiveConfig, LiveError, LiveReport};

/// How often [`CheckoutRun::wait`] reads the log.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// How often it reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Events per `read_all`.
const READ_BATCH: usize = 1000;

/// What a run reports while it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Schema migrated and topics created.
    Prepared { namespace: String, topics: usize },
    /// Every service instance started.
    ServicesStarted { instances: usize },
    /// Every consumer group holds every partition; the workload starts.
    Ready { after: Duration },
    Waiting {
        elapsed: Duration,
        planned: u32,
        placed: u32,
        completed: u32,
        compensated: u32,
        events: u64,
    },
    /// The services are stopped; the final checks run.
    Checking { elapsed: Duration },
}

/// How [`CheckoutRun::wait`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Every order is terminal and the books and stock are settled.
    Settled { after: Duration },
    /// A safety invariant broke while the run was going on.
    Broken(Finding),
    /// The timeout passed first.
    TimedOut,
}

/// What the orders' own streams say about them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    placed: u32,
    completed: u32,
    compensated: u32,
}

/// Order fates, folded from the log.
#[derive(Debug, Default)]
struct Orders {
    fates: BTreeMap<String, (bool, bool, bool)>,
}

impl Orders {
    fn observe(&mut self, event: &RecordedEvent) {
        if event.stream.category() != Order::CATEGORY {
            return;
        }
        let Some((_, id)) = event.stream.as_str().split_once('-') else {
            return;
        };
        // An undecodable event is the audit's finding; it is not counted here.
        let Ok(decoded) = event.payload.decode::<OrderEvent>() else {
            return;
        };
        let fate = self.fates.entry(id.to_owned()).or_default();
        match decoded {
            OrderEvent::Placed(_) => fate.0 = true,
            OrderEvent::Completed => fate.1 = true,
            OrderEvent::Cancelled { .. } => fate.2 = true,
        }
    }

    fn tally(&self) -> Tally {
        let count = |f: fn(&(bool, bool, bool)) -> bool| {
            u32::try_from(self.fates.values().filter(|v| f(v)).count()).unwrap_or(u32::MAX)
        };
        Tally {
            placed: count(|f| f.0),
            completed: count(|f| f.1),
            compensated: count(|f| f.2),
        }
    }
}

/// Reads the global log in PostgreSQL's order, renumbering positions densely (see the
/// module docs).
#[derive(Debug)]
struct LogReader {
    next_store_position: u64,
    ordinal: u64,
}

impl LogReader {
    fn new() -> Self {
        LogReader {
            next_store_position: 1,
            ordinal: 0,
        }
    }

    async fn read_new(&mut self, store: &dyn EventStore) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut read = Vec::new();
        loop {
            let batch = store.read_all(self.next_store_position, READ_BATCH).await?;
            let full = batch.len() == READ_BATCH;
            for mut event in batch {
                self.next_store_position = event.position + 1;
                self.ordinal += 1;
                event.position = self.ordinal;
                read.push(event);
            }
            if !full {
                return Ok(read);
            }
        }
    }
}

/// The run's incremental view of the log while it runs.
#[derive(Debug)]
struct Watch {
    reader: LogReader,
    audit: CheckoutAudit,
    orders: Orders,
    /// The first safety finding; the audit stops folding after it.
    broken: Option<Finding>,
}

/// The outcome of [`CheckoutRun::check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    pub events: u64,
    pub placed: u32,
    pub completed: u32,
    pub compensated: u32,
    pub bus: BusCheck,
    pub findings: Vec<Finding>,
}

/// One service instance's resources, closed when the run stops.
struct Instance {
    store: Arc<PgEventStore>,
}

/// A checkout run on real infrastructure, phase by phase (see the module docs).
pub struct CheckoutRun {
    config: LiveConfig,
    namespace: String,
    started: Instant,
    ready_after: Duration,
    runtime: ScopedRuntime,
    /// The checker's own connection to the run's schema.
    store: Arc<PgEventStore>,
    instances: Vec<Instance>,
    provider: Arc<PaymentProvider>,
    workload: Arc<CheckoutWorkload>,
    watch: Watch,
    stopped: bool,
}

impl std::fmt::Debug for CheckoutRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckoutRun")
            .field("namespace", &self.namespace)
            .field("config", &self.config)
            .field("instances", &self.instances.len())
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

/// The workload of `orders` orders, arriving over 100 ms per order (between 1 s and 30 s).
fn workload_options(orders: u32) -> CheckoutOptions {
    let span = Duration::from_millis(100)
        .saturating_mul(orders)
        .clamp(Duration::from_secs(1), Duration::from_secs(30));
    CheckoutOptions {
        orders,
        arrival_span: span,
        ..CheckoutOptions::default()
    }
}

fn fresh_namespace() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // Low bits of the clock and the process id: unique across concurrent runs and reruns.
    format!(
        "live_{:x}_{:x}",
        std::process::id(),
        (nanos & 0xffff_ffff_ffff) as u64
    )
}

fn notes(service: &'static str, instance: u32) -> reprise_host::Notes {
    Arc::new(move |text| {
        tracing::debug!(target: "reprise_live::notes", service, instance, "{text}");
    })
}

impl CheckoutRun {
    /// Prepares the namespace, starts every service and, once every consumer group has
    /// formed, the workload client.
    ///
    /// # Errors
    /// Invalid configuration; PostgreSQL or the broker unreachable; consumer groups that
    /// do not form before the timeout.
    pub async fn start(
        config: LiveConfig,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Self, LiveError> {
        config.validate()?;
        let started = Instant::now();
        let namespace = config.namespace.clone().unwrap_or_else(fresh_namespace);
        let tokio = TokioRuntime::try_current().map_err(|e| LiveError::Config(e.to_string()))?;
        let runtime = ScopedRuntime::new(tokio);

        // The broker first: an unreachable one must not leave a migrated schema behind.
        let kafka = Self::kafka_config(&config, &namespace, "setup")?;
        let setup = KafkaEventBus::new(kafka)?;
        setup.check_connection().await?;

        // The store: a fresh schema, migrated by the checker's connection; the services'
        // pools only verify the schema version, as a deployment's would.
        let pg = PgConfig::new(config.database_url.clone()).with_schema(namespace.clone());
        let store = Arc::new(
            PgEventStore::connect(pg.clone().with_max_connections(CHECKER_CONNECTIONS)).await?,
        );
        let keep = config.keep_schema;
        let setup_store = Arc::clone(&store);
        let ns = namespace.clone();
        match Self::start_in(
            config, pg, store, setup, namespace, started, runtime, progress,
        )
        .await
        {
            Ok(run) => Ok(run),
            Err(cause) => Err(abandon(&setup_store, &ns, keep, cause).await),
        }
    }

    /// [`CheckoutRun::start`] once the schema exists: an error here is cleaned up there.
    #[allow(clippy::too_many_arguments)]
    async fn start_in(
        config: LiveConfig,
        pg: PgConfig,
        store: Arc<PgEventStore>,
        setup: KafkaEventBus,
        namespace: String,
        started: Instant,
        runtime: ScopedRuntime,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Self, LiveError> {
        let prefix = format!("{namespace}.");
        // The bus: topics created up front (the broker does not auto-create them).
        let names = [
            topics::ORDERS,
            topics::INVENTORY,
            topics::PAYMENTS,
            topics::SHIPPING,
            topics::EVENTS,
        ];
        for topic in names {
            setup
                .create_topic(&format!("{prefix}{topic}"), config.partitions, 1)
                .await?;
        }
        progress(&Progress::Prepared {
            namespace: namespace.clone(),
            topics: names.len(),
        });

        // The workload and the models of the outside world, drawn from the seed.
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let options = workload_options(config.orders);
        let workload = Arc::new(CheckoutWorkload::generate(&options, &mut || rng.next_u64()));
        let provider = Arc::new(PaymentProvider::new(options.decline_every));
        let carrier = Arc::new(CarrierModel::new(CarrierOptions::new(rng.next_u64())));

        let bus = NamespacedBus::new(setup, prefix);
        let mut run = CheckoutRun {
            namespace,
            started,
            ready_after: Duration::ZERO,
            runtime,
            store,
            instances: Vec::new(),
            provider,
            workload,
            watch: Watch {
                reader: LogReader::new(),
                audit: CheckoutAudit::new(),
                orders: Orders::default(),
                broken: None,
            },
            stopped: false,
            config,
        };
        let bugs = Bugs::NONE;
        let saga_instances = run.config.saga_instances;
        let service_instances = run.config.service_instances;
        for i in 0..saga_instances {
            let env = run.instance(&pg, &bus, "saga", i).await?;
            // The relay the simulator runs, under a PostgreSQL advisory-lock lease: every
            // saga instance runs one, one of them publishes.
            let lease = PgLease::new(
                &run.instances[run.instances.len() - 1].store,
                &services::relay_options().lease_name(),
            );
            services::start_saga_service(&env, Arc::new(lease), bugs);
        }
        for i in 0..service_instances {
            let env = run.instance(&pg, &bus, "orders", i).await?;
            services::start_orders_service(&env, bugs);
            let env = run.instance(&pg, &bus, "inventory", i).await?;
            services::start_inventory_service(&env, bugs);
            let env = run.instance(&pg, &bus, "payments", i).await?;
            let gateway = Arc::new(LiveProvider {
                provider: Arc::clone(&run.provider),
                runtime: Arc::clone(&env.runtime),
                latency: Latency::new(Duration::from_millis(5), Duration::from_millis(40)),
            });
            services::start_payment_service(&env, gateway, bugs);
            let env = run.instance(&pg, &bus, "shipping", i).await?;
            let carrier = Arc::new(LiveCarrier {
                model: Arc::clone(&carrier),
                runtime: Arc::clone(&env.runtime),
                latency: Latency::new(Duration::from_millis(2), Duration::from_millis(20)),
            });
            services::start_shipping_service(&env, carrier, bugs);
        }
        progress(&Progress::ServicesStarted {
            instances: run.instances.len(),
        });

        run.await_groups(&bus).await?;
        progress(&Progress::Ready {
            after: run.ready_after,
        });

        let client = run.instance(&pg, &bus, "client", 0).await?;
        let workload = Arc::clone(&run.workload);
        run.runtime
            .spawn("client", Box::pin(run_client(client, workload)));
        Ok(run)
    }

    fn kafka_config(
        config: &LiveConfig,
        namespace: &str,
        client: &str,
    ) -> Result<KafkaConfig, LiveError> {
        let mut kafka = KafkaConfig::new(config.kafka_bootstrap.clone())
            .client_id(format!("reprise-live-{namespace}-{client}"))
            .group_timing(config.session_timeout, config.heartbeat_interval);
        for (name, value) in &config.kafka_properties {
            kafka = kafka.property(name.clone(), value.clone());
        }
        kafka.validate()?;
        Ok(kafka)
    }

    /// A service instance's environment: its own store pool and bus client, as a
    /// separate process would have, on the run's scoped runtime.
    async fn instance(
        &mut self,
        pg: &PgConfig,
        bus: &NamespacedBus,
        service: &'static str,
        index: u32,
    ) -> Result<Platform, LiveError> {
        let store = Arc::new(
            PgEventStore::connect(
                pg.clone()
                    .with_max_connections(CONNECTIONS_PER_INSTANCE)
                    .with_migrations(MigrationMode::Verify),
            )
            .await?,
        );
        let kafka =
            Self::kafka_config(&self.config, &self.namespace, &format!("{service}-{index}"))?;
        let bus = bus.sibling(KafkaEventBus::new(kafka)?);
        self.instances.push(Instance {
            store: Arc::clone(&store),
        });
        Ok(Platform::new(self.runtime.shared(), store, Arc::new(bus))
            .with_resilience(Arc::new(resilience::resilience()))
            .with_notes(notes(service, index)))
    }

    /// Waits until every consumer group holds every partition of its topic.
    async fn await_groups(&mut self, bus: &NamespacedBus) -> Result<(), LiveError> {
        let expected: Vec<(&str, &str, u32)> = groups::ALL
            .iter()
            .map(|&(group, topic)| (group, topic, self.config.partitions))
            .collect();
        loop {
            let unassigned = bus.unassigned(&expected);
            if unassigned.is_empty() {
                self.ready_after = self.started.elapsed();
                return Ok(());
            }
            if self.started.elapsed() >= self.config.timeout {
                self.stop().await;
                return Err(LiveError::NotReady {
                    waited: self.started.elapsed(),
                    unassigned,
                });
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// The run's namespace (schema and topic/group prefix).
    #[must_use]
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The payment provider model (its books are checked against the log).
    #[must_use]
    pub fn provider(&self) -> &Arc<PaymentProvider> {
        &self.provider
    }

    /// The checker's connection to the run's store.
    #[must_use]
    pub fn store(&self) -> &Arc<PgEventStore> {
        &self.store
    }

    #[must_use]
    pub fn workload(&self) -> &CheckoutWorkload {
        &self.workload
    }

    /// Polls the log until the run settles, breaks a safety invariant or times out,
    /// reporting progress every couple of seconds.
    ///
    /// # Errors
    /// The store failing to answer the checker.
    pub async fn wait(
        &mut self,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<WaitOutcome, LiveError> {
        let planned = self.config.orders;
        let mut last_progress = Instant::now();
        loop {
            self.poll().await?;
            if let Some(finding) = &self.watch.broken {
                return Ok(WaitOutcome::Broken(finding.clone()));
            }
            let tally = self.watch.orders.tally();
            if tally.completed + tally.compensated >= planned {
                let audit = &self.watch.audit;
                let settled = self
                    .provider
                    .with_books(|books| audit.check_settled(&self.workload, books));
                match settled {
                    Ok(()) => {
                        return Ok(WaitOutcome::Settled {
                            after: self.started.elapsed(),
                        });
                    }
                    // Every saga is terminal and the outcome is wrong: nothing will
                    // change it any more; the final check reports it.
                    Err(finding) if finding.invariant != invariant::SAGAS_TERMINAL => {
                        return Ok(WaitOutcome::Broken(finding));
                    }
                    Err(_) => {}
                }
            }
            if self.started.elapsed() >= self.config.timeout {
                return Ok(WaitOutcome::TimedOut);
            }
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                progress(&Progress::Waiting {
                    elapsed: self.started.elapsed(),
                    planned,
                    placed: tally.placed,
                    completed: tally.completed,
                    compensated: tally.compensated,
                    events: self.watch.reader.ordinal,
                });
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// One incremental safety check, as the simulator's `check_safety`.
    async fn poll(&mut self) -> Result<(), LiveError> {
        let events = self.watch.reader.read_new(self.store.as_ref()).await?;
        for event in &events {
            self.watch.orders.observe(event);
        }
        if self.watch.broken.is_some() {
            return Ok(());
        }
        let audit = &mut self.watch.audit;
        if let Err(finding) = audit.observe(&events) {
            self.watch.broken = Some(finding);
            return Ok(());
        }
        if let Err(finding) = self.provider.with_books(|books| audit.check_books(books)) {
            self.watch.broken = Some(finding);
        }
        Ok(())
    }

    /// Stops every service: aborts their tasks (consumers leave their groups as their
    /// subscriptions drop) and closes their store pools. Idempotent.
    pub async fn stop(&mut self) {
        self.runtime.stop();
        if !self.stopped {
            self.stopped = true;
            for instance in &self.instances {
                instance.store.close().await;
            }
        }
    }

    /// The final checks over what the run left behind: a fresh audit of the whole log,
    /// the provider's books, the settled/terminal checks and the consumer invariants on
    /// the broker. Call after [`stop`](Self::stop), so nothing changes underneath.
    ///
    /// # Errors
    /// The store or the broker failing to answer the checker (findings are in
    /// [`Checked::findings`]).
    pub async fn check(&self) -> Result<Checked, LiveError> {
        let mut reader = LogReader::new();
        let events = reader.read_new(self.store.as_ref()).await?;
        let mut orders = Orders::default();
        let mut markers: BTreeSet<EventId> = BTreeSet::new();
        for event in &events {
            orders.observe(event);
            if event.stream.category() == inbox::CATEGORY {
                markers.insert(event.event_id);
            }
        }
        let books: ProviderBooks = self.provider.books();
        let mut findings = Vec::new();
        let mut audit = CheckoutAudit::new();
        match audit.observe(&events) {
            Err(finding) => findings.push(finding),
            Ok(()) => {
                if let Err(finding) = audit.check_books(&books) {
                    findings.push(finding);
                }
                if let Err(finding) = audit.check_settled(&self.workload, &books) {
                    findings.push(finding);
                }
            }
        }
        let kafka = Self::kafka_config(&self.config, &self.namespace, "checker")?;
        let (bus, bus_findings) = bus_check::check(
            kafka.bootstrap_servers,
            kafka.properties,
            format!("{}.", self.namespace),
            self.config.partitions,
            markers,
            kafka.operation_timeout.max(Duration::from_secs(30)),
        )
        .await?;
        findings.extend(bus_findings);
        let tally = orders.tally();
        Ok(Checked {
            events: reader.ordinal,
            placed: tally.placed,
            completed: tally.completed,
            compensated: tally.compensated,
            bus,
            findings,
        })
    }

    /// The report of a checked run.
    #[must_use]
    pub fn report(&self, checked: Checked, settled_after: Option<Duration>) -> LiveReport {
        LiveReport {
            namespace: self.namespace.clone(),
            seed: self.config.seed,
            orders_planned: self.config.orders,
            orders_placed: checked.placed,
            orders_completed: checked.completed,
            orders_compensated: checked.compensated,
            events: checked.events,
            bus_messages: checked.bus.messages,
            acknowledged_verified: checked.bus.acknowledged_verified,
            dead_lettered: checked.bus.dead_lettered,
            saga_instances: self.config.saga_instances,
            service_instances: self.config.service_instances,
            ready_after: self.ready_after,
            settled_after,
            elapsed: self.started.elapsed(),
            schema_kept: self.config.keep_schema || !checked.findings.is_empty(),
            findings: checked.findings,
        }
    }

    /// Drops the run's schema (topics stay: the broker keeps them until it restarts or
    /// an operator deletes them; their names never collide with another run's).
    ///
    /// # Errors
    /// The drop failing.
    pub async fn drop_schema(&self) -> Result<(), LiveError> {
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.namespace))
            .execute(self.store.pool())
            .await
            .map_err(|e| LiveError::Cleanup(format!("drop schema {}: {e}", self.namespace)))?;
        Ok(())
    }

    /// Stops, closes the checker's pool, and drops the schema unless asked to keep it.
    async fn finish(mut self, keep: bool) -> Result<(), LiveError> {
        self.stop().await;
        let dropped = if keep {
            Ok(())
        } else {
            self.drop_schema().await
        };
        self.store.close().await;
        dropped
    }
}

impl Drop for CheckoutRun {
    fn drop(&mut self) {
        // A run abandoned half-way (an error, a panicking test) must not leave its services
        // running in the caller's runtime.
        self.runtime.stop();
    }
}

/// A run whose setup failed after its schema was created: drops the schema (unless asked
/// to keep it) and says what is left, so a failed run never leaves an unnamed schema.
async fn abandon(store: &PgEventStore, namespace: &str, keep: bool, cause: LiveError) -> LiveError {
    let schema = if keep {
        format!("schema {namespace} kept (--keep-schema)")
    } else {
        match sqlx::query(&format!("DROP SCHEMA {namespace} CASCADE"))
            .execute(store.pool())
            .await
        {
            Ok(_) => format!("schema {namespace} dropped"),
            Err(e) => format!(
                "schema {namespace} left behind (dropping it failed: {e}); remove it with \
                 DROP SCHEMA {namespace} CASCADE"
            ),
        }
    };
    store.close().await;
    LiveError::SetupFailed {
        cause: Box::new(cause),
        cleanup: format!(
            "{schema}; topics named {namespace}.* (if any were created) stay on the broker"
        ),
    }
}

/// [`run_checkout_with_progress`] without progress reports.
///
/// # Errors
/// See [`run_checkout_with_progress`].
pub async fn run_checkout(config: LiveConfig) -> Result<LiveReport, LiveError> {
    run_checkout_with_progress(config, |_| {}).await
}

/// Runs the checkout for `config.orders` orders on real infrastructure and checks every
/// invariant the simulator checks. Must be called inside a tokio runtime with its time
/// driver enabled.
///
/// # Errors
/// [`LiveError::Violation`] (with the report) when an invariant broke, including
/// "every saga is terminal" when the run did not settle before the timeout; other
/// variants when the run could not be set up or checked.
pub async fn run_checkout_with_progress(
    config: LiveConfig,
    mut progress: impl FnMut(&Progress),
) -> Result<LiveReport, LiveError> {
    let keep = config.keep_schema;
    let mut run = CheckoutRun::start(config, &mut progress).await?;
    let outcome = run.wait(&mut progress).await?;
    run.stop().await;
    progress(&Progress::Checking {
        elapsed: run.started.elapsed(),
    });
    let settled_after = match outcome {
        WaitOutcome::Settled { after } => Some(after),
        WaitOutcome::Broken(_) | WaitOutcome::TimedOut => None,
    };
    let mut checked = run.check().await?;
    if let WaitOutcome::Broken(finding) = outcome
        && !checked.findings.contains(&finding)
    {
        // Seen during the run but not by the final check: report it anyway.
        checked.findings.insert(0, finding);
    }
    let report = run.report(checked, settled_after);
    run.finish(keep || !report.is_clean()).await?;
    if report.is_clean() {
        Ok(report)
    } else {
        Err(LiveError::Violation {
            report: Box::new(report),
        })
    }
}
