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
//! **Outages.** The services ride out a PostgreSQL or broker restart on their own (the
//! host's loops retry every store and bus operation with backoff; the workload client's
//! placements too). The watcher of step 2 must as well: a store error while it reads the
//! log is an outage to wait out — counted in [`LiveReport::store_unavailable`] and shown
//! as [`Progress::StoreUnavailable`] — not the end of the run; only the run's timeout
//! bounds it. (Before, the first `read_all` that met a restarting server ended the whole
//! run with "transient store failure … EOF" and no report: the abort came from this
//! watcher, not from the services.) A non-transient store error (the schema dropped
//! under the run) ends the wait at once. The final check retries the store for
//! [`CHECK_PATIENCE`] and probes the broker before reading it; what it still cannot reach
//! is reported as unchecked rather than failing the report.
//!
//! **Ending early.** [`run_checkout_until`] takes an interrupt (the CLI's SIGINT/SIGTERM):
//! the services are stopped, what can be checked is checked — the liveness checks
//! ("every saga terminal", settled stock and money) are skipped, an interrupted run was
//! not given its time — and the report comes back as [`LiveError::Incomplete`] with the
//! namespace kept.
//!
//! [`LiveReport::store_unavailable`]: crate::LiveReport::store_unavailable
//!
//! **Positions.** PostgreSQL positions are strictly increasing but sparse
//! (`(xid8 << 16) | ordinal`), while the scenario's [`LogAudit`] wants the dense,
//! gap-free numbering of the in-memory store. The reader here keeps PostgreSQL's order
//! and renumbers events `1, 2, 3, …` as it hands them to the audit; positions in
//! findings are those ordinals, not PostgreSQL positions.
//!
//! [`LogAudit`]: reprise_scenarios::audit::LogAudit

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
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

use crate::admin::{self, RunRecord};
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
/// How long the final check keeps retrying a store that does not answer.
/// (30 s: [`CheckoutRun::check`] says so.)
pub(crate) const CHECK_PATIENCE: Duration = Duration::from_secs(30);
/// Bound on the broker probe before the consumer checks.
const BROKER_PROBE: Duration = Duration::from_secs(10);
/// Bound on each broker read of the consumer checks.
const BROKER_READ: Duration = Duration::from_secs(30);

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
    /// The watcher cannot read the store (an outage, ridden out until the timeout).
    /// Reported when it starts and every couple of seconds while it lasts.
    StoreUnavailable {
        elapsed: Duration,
        down_for: Duration,
        error: String,
    },
    /// The store answers again after an outage of `down_for`.
    StoreBack {
        elapsed: Duration,
        down_for: Duration,
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
    /// The interrupt given to [`run_checkout_until`] fired (its text: which signal).
    Interrupted(String),
    /// The store failed in a way waiting does not mend (the schema dropped under the run).
    Failed(String),
}

/// What the orders' own streams say about them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) placed: u32,
    pub(crate) completed: u32,
    pub(crate) compensated: u32,
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
    /// When the current store outage began (as the watcher sees it), and the last error.
    down_since: Option<(Instant, String)>,
    /// Outages ridden out so far, in all.
    down_total: Duration,
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
    /// Checks that could not run, each with why (empty when everything was checked).
    pub unchecked: Vec<String>,
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
pub(crate) fn workload_options(orders: u32) -> CheckoutOptions {
    let span = Duration::from_millis(100)
        .saturating_mul(orders)
        .clamp(Duration::from_secs(1), Duration::from_secs(30));
    CheckoutOptions {
        orders,
        arrival_span: span,
        ..CheckoutOptions::default()
    }
}

/// The workload of a run with `seed` and `orders`, and the carrier model's seed: the
/// same draws a run makes, so `reprise real check` can regenerate what a run planned.
fn draw(seed: u64, orders: u32) -> (CheckoutWorkload, u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let workload = CheckoutWorkload::generate(&workload_options(orders), &mut || rng.next_u64());
    (workload, rng.next_u64())
}

/// The workload a run with `seed` and `orders` placed.
pub(crate) fn workload_for(seed: u64, orders: u32) -> CheckoutWorkload {
    draw(seed, orders).0
}

/// A fresh, unique namespace name: `live_<pid>_<clock>` in hex.
#[must_use]
pub fn fresh_namespace() -> String {
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
    /// Invalid configuration; a given namespace that already exists
    /// ([`LiveError::NamespaceInUse`]); PostgreSQL or the broker unreachable; consumer
    /// groups that do not form before the timeout.
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
        // A run never reuses a namespace: the one that made it is over, and its provider's
        // books went with it (a second workload could not be checked against them).
        if config.namespace.is_some() {
            admin::require_unused(&config, &namespace).await?;
        }

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

        // The run's parameters, kept in the namespace for `reprise real check`.
        RunRecord::of(&config).save(store.as_ref()).await?;
        // The workload and the models of the outside world, drawn from the seed.
        let (workload, carrier_seed) = draw(config.seed, config.orders);
        let options = workload_options(config.orders);
        let workload = Arc::new(workload);
        let provider = Arc::new(PaymentProvider::new(options.decline_every));
        let carrier = Arc::new(CarrierModel::new(CarrierOptions::new(carrier_seed)));

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
                down_since: None,
                down_total: Duration::ZERO,
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
    /// reporting progress every couple of seconds. A store that does not answer is waited
    /// for (see the module docs, "Outages"); a store that refuses ends the wait
    /// ([`WaitOutcome::Failed`]).
    pub async fn wait(&mut self, progress: &mut dyn FnMut(&Progress)) -> WaitOutcome {
        let planned = self.config.orders;
        let mut last_progress = Instant::now();
        loop {
            match self.poll().await {
                Ok(()) => {
                    if let Some((since, _)) = self.watch.down_since.take() {
                        let down_for = since.elapsed();
                        self.watch.down_total += down_for;
                        progress(&Progress::StoreBack {
                            elapsed: self.started.elapsed(),
                            down_for,
                        });
                    }
                }
                // An outage: the services wait it out, and so does the watcher.
                Err(error) if error.is_transient() => {
                    let first = self.watch.down_since.is_none();
                    let (since, last) = self
                        .watch
                        .down_since
                        .get_or_insert_with(|| (Instant::now(), String::new()));
                    *last = error.to_string();
                    let since = *since;
                    if first || last_progress.elapsed() >= PROGRESS_EVERY {
                        last_progress = Instant::now();
                        progress(&Progress::StoreUnavailable {
                            elapsed: self.started.elapsed(),
                            down_for: since.elapsed(),
                            error: error.to_string(),
                        });
                    }
                    if self.started.elapsed() >= self.config.timeout {
                        self.close_outage();
                        return WaitOutcome::TimedOut;
                    }
                    tokio::time::sleep(POLL_EVERY).await;
                    continue;
                }
                Err(error) => {
                    self.close_outage();
                    return WaitOutcome::Failed(format!(
                        "the store refused the run's watcher: {error}"
                    ));
                }
            }
            if let Some(finding) = &self.watch.broken {
                return WaitOutcome::Broken(finding.clone());
            }
            let tally = self.watch.orders.tally();
            if tally.completed + tally.compensated >= planned {
                let audit = &self.watch.audit;
                let settled = self
                    .provider
                    .with_books(|books| audit.check_settled(&self.workload, books));
                match settled {
                    Ok(()) => {
                        return WaitOutcome::Settled {
                            after: self.started.elapsed(),
                        };
                    }
                    // Every saga is terminal and the outcome is wrong: nothing will
                    // change it any more; the final check reports it.
                    Err(finding) if finding.invariant != invariant::SAGAS_TERMINAL => {
                        return WaitOutcome::Broken(finding);
                    }
                    Err(_) => {}
                }
            }
            if self.started.elapsed() >= self.config.timeout {
                return WaitOutcome::TimedOut;
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

    /// Ends an outage still going on, counting it.
    fn close_outage(&mut self) {
        if let Some((since, _)) = self.watch.down_since.take() {
            self.watch.down_total += since.elapsed();
        }
    }

    /// One incremental safety check, as the simulator's `check_safety`.
    async fn poll(&mut self) -> Result<(), StoreError> {
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
    /// The store not answering for 30 s, or refusing (findings are in
    /// [`Checked::findings`]; a broker that cannot be read leaves the consumer checks in
    /// [`Checked::unchecked`]).
    pub async fn check(&self) -> Result<Checked, LiveError> {
        self.check_with(true).await
    }

    /// [`check`](Self::check); `liveness: false` skips the checks that need the run to
    /// have gone its course (every saga terminal, settled stock and money).
    async fn check_with(&self, liveness: bool) -> Result<Checked, LiveError> {
        let deadline = Instant::now() + CHECK_PATIENCE;
        let events = read_log(self.store.as_ref(), deadline).await?;
        let books: ProviderBooks = self.provider.books();
        let LogCheck {
            tally,
            markers,
            mut findings,
            unchecked: mut log_unchecked,
            ..
        } = check_log(
            &events,
            Some(&self.workload),
            Books::Provider(&books),
            liveness,
        );
        let (bus, _, bus_unchecked, bus_findings) = check_bus(
            &self.config,
            &self.namespace,
            Some(self.config.partitions),
            markers,
        )
        .await;
        findings.extend(bus_findings);
        log_unchecked.extend(bus_unchecked);
        Ok(Checked {
            events: events.len() as u64,
            placed: tally.placed,
            completed: tally.completed,
            compensated: tally.compensated,
            bus: bus.unwrap_or_default(),
            findings,
            unchecked: log_unchecked,
        })
    }

    /// The report of a checked run.
    #[must_use]
    pub fn report(&self, checked: Checked, settled_after: Option<Duration>) -> LiveReport {
        let mut report = self.partial_report(settled_after);
        report.orders_placed = checked.placed;
        report.orders_completed = checked.completed;
        report.orders_compensated = checked.compensated;
        report.events = checked.events;
        report.bus_messages = checked.bus.messages;
        report.acknowledged_verified = checked.bus.acknowledged_verified;
        report.dead_lettered = checked.bus.dead_lettered;
        report.findings = checked.findings;
        report.unchecked = checked.unchecked;
        report.schema_kept = self.config.keep_schema || !report.is_clean();
        report
    }

    /// What the watcher saw, for a run whose final check could not read the log.
    fn partial_report(&self, settled_after: Option<Duration>) -> LiveReport {
        let tally = self.watch.orders.tally();
        LiveReport {
            namespace: self.namespace.clone(),
            seed: self.config.seed,
            orders_planned: self.config.orders,
            orders_placed: tally.placed,
            orders_completed: tally.completed,
            orders_compensated: tally.compensated,
            events: self.watch.reader.ordinal,
            bus_messages: 0,
            acknowledged_verified: 0,
            dead_lettered: 0,
            saga_instances: self.config.saga_instances,
            service_instances: self.config.service_instances,
            ready_after: self.ready_after,
            settled_after,
            elapsed: self.started.elapsed(),
            findings: self.watch.broken.iter().cloned().collect(),
            unchecked: Vec::new(),
            ended_early: None,
            store_unavailable: self.watch.down_total,
            schema_kept: true,
        }
    }

    /// Drops the run's schema (topics stay; [`crate::admin::clean_namespace`] removes
    /// them too).
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

    /// Stops and closes the checker's pool; unless asked to keep it, removes the
    /// namespace (schema, topics, groups).
    async fn finish(mut self, keep: bool) -> Result<(), LiveError> {
        self.stop().await;
        self.store.close().await;
        if keep {
            return Ok(());
        }
        admin::clean_namespace(&self.config, &self.namespace)
            .await
            .map(drop)
    }
}

impl Drop for CheckoutRun {
    fn drop(&mut self) {
        // A run abandoned half-way (an error, a panicking test) must not leave its services
        // running in the caller's runtime.
        self.runtime.stop();
    }
}

/// Every event of the log in PostgreSQL's order, renumbered densely (see the module
/// docs), retrying a store that does not answer until `deadline`.
///
/// # Errors
/// The store failing permanently, or still failing at `deadline`.
pub async fn read_log(
    store: &dyn EventStore,
    deadline: Instant,
) -> Result<Vec<RecordedEvent>, LiveError> {
    let mut events: Vec<RecordedEvent> = Vec::new();
    let mut next = 1;
    loop {
        match store.read_all(next, READ_BATCH).await {
            Ok(batch) => {
                let full = batch.len() == READ_BATCH;
                for mut event in batch {
                    next = event.position + 1;
                    event.position = events.len() as u64 + 1;
                    events.push(event);
                }
                if !full {
                    return Ok(events);
                }
            }
            Err(error) if error.is_transient() && Instant::now() < deadline => {
                tracing::debug!(%error, "reading the log back failed; retrying");
                tokio::time::sleep(POLL_EVERY).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// The provider's books a check compares the log with.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Books<'a> {
    /// The provider model's own books (a run in progress).
    Provider(&'a ProviderBooks),
    /// What the payment service recorded of the provider ([`admin::recorded_books`]):
    /// all that is left once the run's process is gone.
    Recorded(&'a ProviderBooks),
}

/// What [`check_log`] found.
#[derive(Debug, Default)]
pub(crate) struct LogCheck {
    pub(crate) tally: Tally,
    /// Ids of every inbox marker, for the consumer checks.
    pub(crate) markers: BTreeSet<EventId>,
    pub(crate) findings: Vec<Finding>,
    pub(crate) checked: Vec<String>,
    pub(crate) unchecked: Vec<String>,
}

/// The log's invariants: a fresh [`CheckoutAudit`] over `events`, the books, and — with
/// `liveness` and a known `workload` — the settled/terminal checks.
pub(crate) fn check_log(
    events: &[RecordedEvent],
    workload: Option<&CheckoutWorkload>,
    books: Books<'_>,
    liveness: bool,
) -> LogCheck {
    let mut check = LogCheck::default();
    let mut orders = Orders::default();
    for event in events {
        orders.observe(event);
        if event.stream.category() == inbox::CATEGORY {
            check.markers.insert(event.event_id);
        }
    }
    check.tally = orders.tally();
    let (books, whose) = match books {
        Books::Provider(books) => (books, "the provider's books"),
        Books::Recorded(books) => (
            books,
            "the payment service's record of the provider (its payment streams)",
        ),
    };
    let mut audit = CheckoutAudit::new();
    if let Err(finding) = audit.observe(events) {
        check.findings.push(finding);
        check
            .unchecked
            .push("the books and liveness checks: the log audit stopped at its finding".into());
        return check;
    }
    check.checked.push(
        "the log's safety invariants (stock never oversold or reserved twice, no order both \
         completed and cancelled or shipped and refunded, every event decodes, per-stream \
         versions)"
            .into(),
    );
    match audit.check_books(books) {
        Ok(()) => check
            .checked
            .push(format!("at most one capture per order, against {whose}")),
        Err(finding) => check.findings.push(finding),
    }
    match (liveness, workload) {
        (false, _) => check.unchecked.push(
            "every saga terminal, stock returned, money where it belongs: the run ended \
             before its orders were given their time"
                .into(),
        ),
        (true, None) => check.unchecked.push(
            "every planned order placed and terminal: the run's parameters were never \
             recorded (it stopped during setup)"
                .into(),
        ),
        (true, Some(workload)) => match audit.check_settled(workload, books) {
            Ok(()) => check.checked.push(format!(
                "every planned order placed and its saga terminal, cancelled orders hold \
                 no stock, money held only for completed orders, against {whose}"
            )),
            Err(finding) => check.findings.push(finding),
        },
    }
    check
}

/// The consumer invariants on the broker ([`bus_check`]), after a probe that the broker
/// answers at all (a broker that is down would otherwise make every per-partition read
/// wait its timeout). Returns the counts (if the checks ran), what was checked, what
/// could not be, and the findings.
pub(crate) async fn check_bus(
    config: &LiveConfig,
    namespace: &str,
    partitions: Option<u32>,
    markers: BTreeSet<EventId>,
) -> (Option<BusCheck>, Vec<String>, Vec<String>, Vec<Finding>) {
    const WHAT: &str = "every acknowledged message took effect, per-stream order on the bus";
    let unchecked = |why: String| (None, Vec::new(), vec![format!("{WHAT}: {why}")], Vec::new());
    let probe = CheckoutRun::kafka_config(config, namespace, "checker").and_then(|kafka| {
        KafkaEventBus::new(kafka.operation_timeout(BROKER_PROBE)).map_err(LiveError::from)
    });
    let probe = match probe {
        Ok(probe) => probe,
        Err(error) => return unchecked(error.to_string()),
    };
    if let Err(error) = probe.check_connection().await {
        return unchecked(error.to_string());
    }
    let partitions = match partitions {
        Some(p) => p,
        None => match probe
            .partition_count(&format!("{namespace}.{}", topics::EVENTS))
            .await
        {
            Ok(p) => p,
            Err(error) => return unchecked(format!("the run's topics: {error}")),
        },
    };
    let kafka = probe.config().clone();
    match bus_check::check(
        kafka.bootstrap_servers.clone(),
        kafka.properties,
        format!("{namespace}."),
        partitions,
        markers,
        BROKER_READ,
    )
    .await
    {
        Ok((bus, findings)) => (Some(bus), vec![WHAT.to_owned()], Vec::new(), findings),
        Err(error) => unchecked(format!("broker at {}: {error}", kafka.bootstrap_servers)),
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
            "{schema}; topics named {namespace}.* (if any were created) stay on the broker \
             (reprise real clean --namespace {namespace} removes them)"
        ),
    }
}

/// [`run_checkout_with_progress`] without progress reports.
///
/// # Errors
/// See [`run_checkout_until`].
pub async fn run_checkout(config: LiveConfig) -> Result<LiveReport, LiveError> {
    run_checkout_with_progress(config, |_| {}).await
}

/// [`run_checkout_until`] without an interrupt.
///
/// # Errors
/// See [`run_checkout_until`].
pub async fn run_checkout_with_progress(
    config: LiveConfig,
    progress: impl FnMut(&Progress),
) -> Result<LiveReport, LiveError> {
    run_checkout_until(config, progress, std::future::pending()).await
}

/// Runs the checkout for `config.orders` orders on real infrastructure and checks every
/// invariant the simulator checks, until it settles, times out, or `interrupt` completes
/// (its output says why: the CLI passes the signal's name). Must be called inside a tokio
/// runtime with its time driver enabled.
///
/// A clean run removes its namespace (schema, topics, groups) unless
/// [`LiveConfig::keep_schema`]; any other keeps it and its report says how to check and
/// remove it.
///
/// # Errors
/// [`LiveError::Violation`] (with the report) when an invariant broke, including
/// "every saga is terminal" when the run did not settle before the timeout;
/// [`LiveError::Incomplete`] (with the report of what was observed and checked) when the
/// run was interrupted, its store refused the watcher, or the final check could not read
/// the store or the broker; other variants when the run could not be set up (an
/// interrupt during setup removes what setup created).
pub async fn run_checkout_until(
    mut config: LiveConfig,
    mut progress: impl FnMut(&Progress),
    interrupt: impl Future<Output = String>,
) -> Result<LiveReport, LiveError> {
    config.validate()?;
    let given = config.namespace.is_some();
    let namespace = config.namespace.clone().unwrap_or_else(fresh_namespace);
    config.namespace = Some(namespace.clone());
    let keep = config.keep_schema;
    let mut interrupt = std::pin::pin!(interrupt);
    let setup_config = config.clone();
    let started = tokio::select! {
        run = CheckoutRun::start(config, &mut progress) => run,
        signal = &mut interrupt => {
            // Setup dropped half-way. Whatever exists under a fresh name is this run's; a
            // given name may have been someone else's (the interrupt can land before the
            // check that it is unused), so it is left for `clean`.
            let cleanup = if keep || given {
                format!(
                    "namespace {namespace} may be partly created; check with reprise real \
                     clean --namespace {namespace}, which says what it removes"
                )
            } else {
                match admin::clean_namespace(&setup_config, &namespace).await {
                    Ok(cleaned) => cleaned.to_string().replace('\n', "; "),
                    Err(LiveError::NoSuchNamespace { .. }) => {
                        format!("nothing of namespace {namespace} was created")
                    }
                    Err(error) => format!(
                        "namespace {namespace} may be left behind ({error}); remove it with \
                         reprise real clean --namespace {namespace}"
                    ),
                }
            };
            return Err(LiveError::SetupFailed {
                cause: Box::new(LiveError::Config(format!("interrupted ({signal}) during setup"))),
                cleanup,
            });
        }
    };
    let mut run = started?;
    let outcome = tokio::select! {
        outcome = run.wait(&mut progress) => outcome,
        signal = &mut interrupt => WaitOutcome::Interrupted(signal),
    };
    run.close_outage();
    run.stop().await;
    progress(&Progress::Checking {
        elapsed: run.started.elapsed(),
    });
    let (settled_after, ended_early) = match &outcome {
        WaitOutcome::Settled { after } => (Some(*after), None),
        WaitOutcome::Broken(_) | WaitOutcome::TimedOut => (None, None),
        WaitOutcome::Interrupted(signal) => (None, Some(format!("interrupted by {signal}"))),
        WaitOutcome::Failed(why) => (None, Some(why.clone())),
    };
    let mut report = match run.check_with(ended_early.is_none()).await {
        Ok(checked) => run.report(checked, settled_after),
        Err(error) => {
            let mut report = run.partial_report(settled_after);
            report.unchecked.push(format!(
                "every invariant of the final check: the log could not be read back ({error}); \
                 the counts are the watcher's"
            ));
            report
        }
    };
    if let WaitOutcome::Broken(finding) = &outcome
        && !report.findings.contains(finding)
    {
        // Seen during the run but not by the final check: report it anyway.
        report.findings.insert(0, finding.clone());
    }
    report.ended_early = ended_early;
    report.store_unavailable = run.watch.down_total;
    report.schema_kept = keep || !report.is_clean();
    if let Err(error) = run.finish(report.schema_kept).await {
        // The run was clean but its namespace could not be removed: say so, keep the
        // report.
        report.schema_kept = true;
        return Err(LiveError::Incomplete {
            cause: format!("the clean run's namespace could not be removed: {error}"),
            report: Box::new(report),
        });
    }
    if report.is_clean() {
        Ok(report)
    } else if !report.findings.is_empty() {
        Err(LiveError::Violation {
            report: Box::new(report),
        })
    } else {
        let cause = report
            .ended_early
            .clone()
            .unwrap_or_else(|| format!("{} check(s) could not run", report.unchecked.len()));
        Err(LiveError::Incomplete {
            cause,
            report: Box::new(report),
        })
    }
}
