//! `reprise-shop serve`: start-up, the running service, and graceful shutdown.
//!
//! ## Start-up
//!
//! 1. The metrics recorder is installed (before any store exists: stores resolve their
//!    counters once) and the HTTP listener bound, so `/health/live` and
//!    `/health/startup` answer from the first moment; the API answers 503 until step 5.
//! 2. **PostgreSQL**: the API's pool connects and *verifies* the schema (never migrates:
//!    `reprise-shop migrate` does, as a separate step); an unreachable server or a schema
//!    behind this build stops the start with the address or the versions.
//! 3. **Broker**: one metadata round trip (an unreachable broker stops the start, naming
//!    the bootstrap servers), then the checkout topics are created if missing.
//! 4. **Catalog**: every SKU is stocked (idempotent: only a fresh schema gets stock).
//! 5. **Services**: each with its own store pool and broker client, as separate
//!    processes would have: the saga service (the host's relay under a `PgLease`, the
//!    saga host recovering every saga instance, the saga consumer), orders, inventory,
//!    payments (calling the payment provider over HTTP) and shipping (the carrier). The
//!    payment and shipping calls go through one shared `Resilience` — the scenario's
//!    retry policy and breaker per dependency — whose dead letters go to the
//!    `dead_letters` table (`reprise dlq list --schema <schema>`).
//!
//! ## Graceful shutdown (SIGTERM, SIGINT)
//!
//! Within `--shutdown-grace-ms`, step by step, each step bounded by what is left of it:
//!
//! 1. readiness fails (`shutdown: draining`) and new API requests are refused with 503
//!    (`Connection: close`); health and metrics keep answering;
//! 2. requests in flight finish;
//! 3. consumers stop taking messages; each message in hand is handled, acknowledged and
//!    its offset committed ([`ShopBus::start_draining`]);
//! 4. every service task ends; each consumer's subscription commits what it handled and
//!    leaves its group (so a replacement is assigned at once, not after a session
//!    timeout), the relay's lease session closes;
//! 5. the HTTP server closes and the store pools close.
//!
//! The process then exits 0 — also when the grace ran out first (logged as a warning):
//! whatever was cut short is redelivered or recovered by the next start, since every
//! handler is idempotent and every saga reaction durable.

use std::collections::BTreeMap;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use reprise_core::resilience::DeadLetterQueue;
use reprise_core::resilience::dead_letter::export_stats_every;
use reprise_core::{Clock, Entropy, EventStore, Resilience, Spawner};
use reprise_host::Platform;
use reprise_kafka::KafkaEventBus;
use reprise_live::runtime::ScopedRuntime;
use reprise_postgres::{MigrationMode, PgDeadLetterQueue, PgEventStore, PgLease, SetupError};
use reprise_scenarios::Bugs;
use reprise_scenarios::checkout::resilience;
use reprise_scenarios::checkout::saga::topics;
use reprise_scenarios::checkout::services;
use reprise_tokio::TokioRuntime;
use tokio::sync::oneshot;

use crate::api::{self, AppState, OrderDesk};
use crate::bus::ShopBus;
use crate::catalog::Catalog;
use crate::config::{ServeConfig, pg_address};
use crate::gateway::{HttpCarrier, HttpPaymentGateway};
use crate::health::Check;
use crate::telemetry;

/// Every checkout topic.
pub const TOPICS: [&str; 5] = [
    topics::ORDERS,
    topics::INVENTORY,
    topics::PAYMENTS,
    topics::SHIPPING,
    topics::EVENTS,
];

/// Bound on stocking the catalog at start.
const STOCKING_TIMEOUT: Duration = Duration::from_secs(30);
/// How often dead-letter gauges are refreshed.
const DEAD_LETTER_STATS_EVERY: Duration = Duration::from_secs(15);
/// Part of the grace kept for the process to exit after draining.
const EXIT_MARGIN: Duration = Duration::from_millis(400);

/// Why `serve` stopped before running.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("PostgreSQL at {address}: {reason}")]
    Postgres { address: String, reason: String },
    #[error("broker at {bootstrap}: {reason}")]
    Broker { bootstrap: String, reason: String },
    #[error("{0}")]
    Other(String),
}

fn postgres_error(config: &ServeConfig, error: &SetupError) -> StartupError {
    let schema = &config.postgres.schema;
    let reason = match error {
        SetupError::Connect(e) => format!("cannot connect: {e}"),
        SetupError::SchemaBehind { database, code } => format!(
            "schema {schema} is at migration {database}, this build needs {code}: run \
             `reprise-shop migrate` (same DATABASE_URL and --schema) first"
        ),
        other => other.to_string(),
    };
    StartupError::Postgres {
        address: pg_address(&config.postgres.url),
        reason,
    }
}

fn broker_error(config: &ServeConfig, reason: impl fmt::Display) -> StartupError {
    StartupError::Broker {
        bootstrap: config.kafka.bootstrap_servers.clone(),
        reason: reason.to_string(),
    }
}

/// The process's life: start-up progress, draining, requests in flight, and (once
/// started) the running service.
pub struct Lifecycle {
    started: Instant,
    draining: AtomicBool,
    in_flight: AtomicUsize,
    steps: Mutex<BTreeMap<&'static str, Check>>,
    running: OnceLock<Arc<Running>>,
}

impl fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lifecycle")
            .field("draining", &self.is_draining())
            .field("in_flight", &self.in_flight())
            .field("running", &self.running.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle::new()
    }
}

/// Start-up steps, in order.
pub const STEPS: [&str; 4] = ["migrations", "broker", "catalog", "services"];

impl Lifecycle {
    #[must_use]
    pub fn new() -> Self {
        let steps = STEPS
            .iter()
            .map(|name| (*name, Check::fail("not started yet")))
            .collect();
        Lifecycle {
            started: Instant::now(),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            steps: Mutex::new(steps),
            running: OnceLock::new(),
        }
    }

    /// Time since the process started.
    #[must_use]
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn step(&self, name: &'static str, check: Check) {
        self.steps.lock().insert(name, check);
    }

    /// The start-up steps as they stand.
    #[must_use]
    pub fn steps(&self) -> BTreeMap<&'static str, Check> {
        self.steps.lock().clone()
    }

    #[must_use]
    pub fn running(&self) -> Option<&Arc<Running>> {
        self.running.get()
    }

    #[must_use]
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    fn begin_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        metrics::gauge!(telemetry::DRAINING).set(1.0);
    }

    /// Requests being served.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Counts a request in flight until the guard drops.
    #[must_use]
    pub fn enter(self: &Arc<Self>) -> InFlight {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(telemetry::HTTP_IN_FLIGHT).set(now as f64);
        InFlight(Arc::clone(self))
    }
}

/// A request in flight (see [`Lifecycle::enter`]).
#[derive(Debug)]
pub struct InFlight(Arc<Lifecycle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.0.in_flight.fetch_sub(1, Ordering::SeqCst) - 1;
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(telemetry::HTTP_IN_FLIGHT).set(now as f64);
    }
}

/// The started service: what the API and the health checks use.
pub struct Running {
    pub config: ServeConfig,
    /// Every service task runs on it; [`ScopedRuntime::stop`] ends them all.
    pub runtime: ScopedRuntime,
    /// The order routes' platform (the API's own pool, the shared resilience) and
    /// repositories.
    pub desk: OrderDesk,
    /// The API's pool (reads, health).
    pub store: PgEventStore,
    /// Every pool of the process, closed last at shutdown.
    pub stores: Vec<PgEventStore>,
    /// The bus of the process (admin client); its siblings are the services'.
    pub bus: ShopBus,
    pub resilience: Arc<Resilience>,
}

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("bus", &self.bus)
            .field("pools", &self.stores.len())
            .finish_non_exhaustive()
    }
}

/// Resolves at SIGTERM or SIGINT.
pub async fn signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; only SIGINT stops the service");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

fn notes(service: &'static str) -> reprise_host::Notes {
    Arc::new(move |text| {
        tracing::debug!(target: "reprise_shop::notes", service, "{text}");
    })
}

/// Runs the service until SIGTERM or SIGINT, then shuts it down gracefully.
///
/// # Errors
/// A start-up failure ([`StartupError`]); once started, the service only stops on a
/// signal.
pub async fn run(config: ServeConfig) -> Result<(), StartupError> {
    let prometheus =
        telemetry::install().map_err(|e| StartupError::Other(format!("metrics recorder: {e}")))?;
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    for (name, value) in config.summary() {
        tracing::info!(setting = name, %value, "configuration");
    }
    let lifecycle = Arc::new(Lifecycle::new());
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartupError::Listen {
            address: config.listen,
            source,
        })?;
    let address = listener
        .local_addr()
        .map_err(|e| StartupError::Other(e.to_string()))?;
    let state = AppState::new(Arc::clone(&lifecycle), prometheus, Catalog::default());
    let (stop_http, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, api::router(state))
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .into_future(),
    );
    crate::cli::announce(address);
    tracing::info!(%address, "HTTP API listening; starting the services");

    let mut signalled = pin!(signal());
    let running = tokio::select! {
        started = start(&config, &lifecycle) => started?,
        () = &mut signalled => {
            tracing::info!("stopping before start-up completed");
            lifecycle.begin_draining();
            let _ = stop_http.send(());
            let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
            return Ok(());
        }
    };
    let _ = lifecycle.running.set(Arc::clone(&running));
    tracing::info!(
        after_ms = lifecycle.uptime().as_millis(),
        "started: taking orders"
    );
    signalled.await;
    shutdown(&lifecycle, &running, server, stop_http).await;
    Ok(())
}

/// Connects one pool to the schema, verifying its migration version.
async fn connect_store(config: &ServeConfig) -> Result<PgEventStore, StartupError> {
    let pg = config
        .postgres
        .clone()
        .with_migrations(MigrationMode::Verify)
        .with_max_connections(config.db_connections)
        .with_acquire_timeout(Duration::from_secs(2))
        .with_operation_timeout(Duration::from_secs(5));
    PgEventStore::connect(pg)
        .await
        .map_err(|e| postgres_error(config, &e))
}

/// Bound on the admin client's metadata requests and topic creation (the start-up check
/// and the readiness check, which gives up sooner, use it).
const ADMIN_OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

fn client(config: &ServeConfig, service: &str) -> Result<KafkaEventBus, StartupError> {
    let mut kafka = config.kafka_for(service);
    if service == "admin" {
        kafka = kafka.operation_timeout(ADMIN_OPERATION_TIMEOUT);
    }
    KafkaEventBus::new(kafka).map_err(|e| broker_error(config, e))
}

async fn start(config: &ServeConfig, lifecycle: &Lifecycle) -> Result<Arc<Running>, StartupError> {
    let tokio = TokioRuntime::try_current().map_err(|e| StartupError::Other(e.to_string()))?;
    let runtime = ScopedRuntime::new(tokio);
    let schema = config.postgres.schema.clone();
    let address = pg_address(&config.postgres.url);

    lifecycle.step(
        "migrations",
        Check::fail(format!("connecting to {address}")),
    );
    crate::config::preflight_postgres(&config.postgres.url, Duration::from_secs(5))
        .await
        .map_err(|reason| StartupError::Postgres {
            address: address.clone(),
            reason: format!("cannot connect: {reason}"),
        })?;
    let api_store = connect_store(config).await?;
    lifecycle.step(
        "migrations",
        Check::ok(format!(
            "schema {schema} at {address} is at migration {} (verified)",
            reprise_postgres::schema::code_version()
        )),
    );

    let bootstrap = &config.kafka.bootstrap_servers;
    lifecycle.step("broker", Check::fail(format!("asking {bootstrap}")));
    let admin = client(config, "admin")?;
    admin
        .check_connection()
        .await
        .map_err(|e| broker_error(config, format!("no answer to a metadata request: {e}")))?;
    let bus = ShopBus::new(admin, config.topic_prefix.clone());
    for topic in TOPICS {
        bus.kafka()
            .create_topic(
                &bus.broker_name(topic),
                config.partitions,
                config.replication_factor,
            )
            .await
            .map_err(|e| broker_error(config, format!("creating topic: {e}")))?;
    }
    lifecycle.step(
        "broker",
        Check::ok(format!(
            "{bootstrap} answered; topics {} present",
            TOPICS.map(|t| bus.broker_name(t)).join(", ")
        )),
    );

    // Every task spawned for the services keeps the trace context of its spawner, and
    // every appended event carries the context of its append (`crate::trace`).
    let shared = crate::trace::TracedRuntime::shared(runtime.shared());
    let traced = |store: Arc<dyn EventStore>| -> Arc<dyn EventStore> {
        Arc::new(crate::trace::TracedStore::new(
            store,
            Arc::clone(&shared) as Arc<dyn Entropy>,
            &schema,
        ))
    };
    let dead_letters: Arc<dyn DeadLetterQueue> = Arc::new(PgDeadLetterQueue::new(&api_store));
    let resilience =
        Arc::new(resilience::resilience().with_dead_letters(Arc::clone(&dead_letters)));
    let platform = |store: Arc<dyn EventStore>, bus: ShopBus, service: &'static str| {
        Platform::new(Arc::clone(&shared), traced(store), Arc::new(bus))
            .with_resilience(Arc::clone(&resilience))
            .with_notes(notes(service))
    };

    let catalog = Catalog::default();
    let api = platform(Arc::new(api_store.clone()), bus.clone(), "api");
    lifecycle.step("catalog", Check::fail("stocking"));
    for item in catalog.items() {
        tokio::time::timeout(
            STOCKING_TIMEOUT,
            services::initialize_stock(&api, item.sku, item.initial_stock),
        )
        .await
        .map_err(|_| StartupError::Postgres {
            address: address.clone(),
            reason: format!(
                "could not stock sku {} within {STOCKING_TIMEOUT:?}",
                item.sku
            ),
        })?;
    }
    lifecycle.step(
        "catalog",
        Check::ok(format!(
            "{} SKUs stocked: {}",
            catalog.len(),
            catalog.skus()
        )),
    );

    lifecycle.step("services", Check::fail("starting"));
    let mut stores = vec![api_store.clone()];
    let timeout = config.dependency_timeout;

    let saga_store = connect_store(config).await?;
    stores.push(saga_store.clone());
    let saga = platform(
        Arc::new(saga_store.clone()),
        bus.sibling(client(config, "saga")?),
        "saga",
    );
    // The relay the simulator sweeps, under a PostgreSQL advisory-lock lease: every
    // replica runs one, one of them publishes.
    let lease = PgLease::new(&saga_store, &services::relay_options().lease_name());
    services::start_saga_service(&saga, Arc::new(lease), Bugs::NONE);

    let orders_store = connect_store(config).await?;
    stores.push(orders_store.clone());
    let orders = platform(
        Arc::new(telemetry::CountingStore::new(Arc::new(orders_store))),
        bus.sibling(client(config, "orders")?),
        "orders",
    );
    services::start_orders_service(&orders, Bugs::NONE);

    let inventory_store = connect_store(config).await?;
    stores.push(inventory_store.clone());
    let inventory = platform(
        Arc::new(inventory_store),
        bus.sibling(client(config, "inventory")?),
        "inventory",
    );
    services::start_inventory_service(&inventory, Bugs::NONE);

    let payments_store = connect_store(config).await?;
    stores.push(payments_store.clone());
    let payments = platform(
        Arc::new(payments_store),
        bus.sibling(client(config, "payments")?),
        "payments",
    );
    let gateway = HttpPaymentGateway::new(&config.payment_url, timeout);
    services::start_payment_service(&payments, Arc::new(gateway), Bugs::NONE);

    let shipping_store = connect_store(config).await?;
    stores.push(shipping_store.clone());
    let shipping = platform(
        Arc::new(shipping_store),
        bus.sibling(client(config, "shipping")?),
        "shipping",
    );
    let carrier = HttpCarrier::new(&config.carrier_url, timeout);
    services::start_shipping_service(&shipping, Arc::new(carrier), Bugs::NONE);

    let clock: Arc<dyn Clock> = Arc::new(runtime.clone());
    runtime.spawn(
        "dead-letter-stats",
        Box::pin(export_stats_every(
            dead_letters,
            clock,
            DEAD_LETTER_STATS_EVERY,
        )),
    );
    lifecycle.step(
        "services",
        Check::ok(
            "saga (relay, saga host), orders, inventory, payments, shipping started".to_owned(),
        ),
    );

    Ok(Arc::new(Running {
        config: config.clone(),
        runtime,
        desk: OrderDesk::new(api, catalog),
        store: api_store,
        stores,
        bus,
        resilience,
    }))
}

/// Polls `done` every 10 ms until it holds or `deadline` passes; whether it held.
async fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `future`, or `None` once `deadline` passed.
async fn before<T>(deadline: Instant, future: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout_at(deadline.into(), future).await.ok()
}

/// The graceful shutdown. See the module docs.
async fn shutdown(
    lifecycle: &Lifecycle,
    running: &Running,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    stop_http: oneshot::Sender<()>,
) {
    let started = Instant::now();
    let grace = running.config.shutdown_grace;
    let deadline = started + grace.saturating_sub(EXIT_MARGIN).max(grace / 2);
    lifecycle.begin_draining();
    tracing::info!(
        grace_ms = grace.as_millis(),
        in_flight = lifecycle.in_flight(),
        "shutting down: readiness fails, new API requests are refused"
    );

    let requests = wait_until(deadline, || lifecycle.in_flight() == 0).await;
    running.bus.start_draining();
    let busy = running.bus.busy_members();
    let consumers = wait_until(deadline, || running.bus.busy_members() == 0).await;
    tracing::info!(
        requests_finished = requests,
        consumers_were_busy = busy,
        consumers_finished = consumers,
        "in-flight work done; stopping the services"
    );

    running.runtime.stop();
    let left = wait_until(deadline, || running.bus.members() == 0).await;

    let _ = stop_http.send(());
    let http = before(deadline, server).await.is_some();
    let pools = before(
        deadline,
        futures::future::join_all(running.stores.iter().map(PgEventStore::close)),
    )
    .await
    .is_some();

    let clean = requests && consumers && left && http && pools;
    if clean {
        tracing::info!(
            after_ms = started.elapsed().as_millis(),
            "shut down cleanly: consumers committed and left their groups, pools closed"
        );
    } else {
        tracing::warn!(
            after_ms = started.elapsed().as_millis(),
            requests_finished = requests,
            consumers_finished = consumers,
            groups_left = left,
            http_closed = http,
            pools_closed = pools,
            "the shutdown grace ran out; exiting anyway (unfinished work is redelivered)"
        );
    }
}
