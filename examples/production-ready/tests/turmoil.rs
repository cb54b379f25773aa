//! The service's network code under turmoil's simulated network.
//!
//! Reprise's simulator owns the code written against its traits; the HTTP layer is
//! third-party network code (axum's server, hyper's client) that the simulator cannot
//! see. turmoil runs that code unchanged over simulated TCP — virtual time, message
//! latency, dropped segments, partitions — deterministically per seed, so the two
//! failures HTTP is notorious for can be staged exactly and replayed:
//!
//! - **a lost response**: the shop appended the order and answered, the client never
//!   heard; the client retries `POST /orders` with the same `Idempotency-Key` and must
//!   get the same order back, not a second one;
//! - **a provider that drops responses**: the provider captured the charge and the
//!   answer was lost; the payment service's retry policy (the scenario's own
//!   [`resilience`]) must retry with the same key and end with one capture.
//!
//! The API runs on [`OrderDesk`] over core's in-memory store (the store is not what is
//! under test here; the PostgreSQL one has its own suites), the provider is the fake
//! provider's real router. Every test runs each seed twice and compares what the client
//! observed, so a nondeterminism in the HTTP layer fails the test too.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusBuilder;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use reprise_core::{
    Aggregate, BoxFuture, Clock, Entropy, EventStore, InMemoryEventBus, InMemoryEventStore,
    Resilience, Timestamp,
};
use reprise_host::Platform;
use reprise_scenarios::checkout::gateway::{ChargeOutcome, ChargeRequest, ExternalError};
use reprise_scenarios::checkout::order::Order;
use reprise_scenarios::checkout::resilience::{self, PAYMENT_PROVIDER};
use reprise_scenarios::checkout::{PaymentGateway, PaymentProvider};
use reprise_shop::api::{AppState, OrderDesk, REQUEST_CATEGORY};
use reprise_shop::catalog::Catalog;
use reprise_shop::gateway::{HttpPaymentGateway, HttpService};
use reprise_shop::providers::{FaultOptions, Faults, payment_router};
use reprise_tokio::TokioRuntime;
use serde_json::Value;

const SHOP_PORT: u16 = 8080;
const PROVIDER_PORT: u16 = 9000;

// ---------------------------------------------------------------------------------------
// Plumbing: axum's server and hyper's client over turmoil's TCP.
// ---------------------------------------------------------------------------------------

/// axum's `serve` over a turmoil listener.
struct SimListener(turmoil::net::TcpListener);

impl axum::serve::Listener for SimListener {
    type Io = turmoil::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(accepted) => return accepted,
                // As axum's own TCP listener does: an accept error concerns one
                // connection, not the listener.
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

async fn serve(port: u16, router: axum::Router) -> Result<(), Box<dyn std::error::Error>> {
    let listener =
        turmoil::net::TcpListener::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)).await?;
    axum::serve(SimListener(listener), router).await?;
    Ok(())
}

/// hyper-util's connector onto turmoil's network: what [`HttpService::with_connector`]
/// takes instead of the production `HttpConnector`.
#[derive(Clone, Copy, Debug)]
struct SimConnector;

struct SimStream(TokioIo<turmoil::net::TcpStream>);

impl tower_service::Service<Uri> for SimConnector {
    type Response = SimStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<SimStream>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().to_owned();
            let port = uri.port_u16().unwrap_or(80);
            let stream = turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
            Ok(SimStream(TokioIo::new(stream)))
        })
    }
}

impl Connection for SimStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A clock on the simulation's virtual time and a seeded random stream: the retry
/// policy's pauses and jitter, replayable per seed (the production runtime reads the
/// wall clock and the OS's randomness).
struct SimEnv {
    rng: Mutex<SmallRng>,
}

impl SimEnv {
    fn new(seed: u64) -> Self {
        SimEnv {
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
        }
    }
}

impl Clock for SimEnv {
    fn now(&self) -> Timestamp {
        let elapsed = turmoil::sim_elapsed().unwrap_or_default();
        Timestamp::from_unix_nanos(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }
}

impl Entropy for SimEnv {
    fn next_u64(&self) -> u64 {
        self.rng.lock().next_u64()
    }
}

/// One HTTP/1.1 exchange on a fresh connection, given up after `timeout`. `before_send`
/// runs once the connection is established, just before the request leaves.
async fn exchange(
    request: Request<Full<Bytes>>,
    timeout: Duration,
    before_send: impl FnOnce(),
) -> Result<(StatusCode, hyper::HeaderMap, Value), String> {
    let attempt = async {
        let stream = turmoil::net::TcpStream::connect(("shop", SHOP_PORT))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(connection);
        before_send();
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok((status, headers, value))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

fn place_request(customer: &str, key: &str) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "customer": customer,
        "lines": [{"sku": "espresso-cup", "quantity": 1}],
    });
    Request::builder()
        .method(Method::POST)
        .uri("/orders")
        .header("host", "shop")
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid request")
}

fn get_request(order_id: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::GET)
        .uri(format!("/orders/{order_id}"))
        .header("host", "shop")
        .body(Full::new(Bytes::new()))
        .expect("a valid request")
}

/// The shop's HTTP API on `store`, as `serve` builds it but without services behind it.
fn shop_router(store: Arc<InMemoryEventStore>) -> axum::Router {
    let runtime = TokioRuntime::try_current()
        .expect("inside a turmoil host")
        .shared();
    let platform = Platform::new(runtime, store, Arc::new(InMemoryEventBus::new()))
        .with_resilience(Arc::new(resilience::resilience()));
    let desk = OrderDesk::new(platform, Catalog::default());
    let prometheus = PrometheusBuilder::new().build_recorder().handle();
    reprise_shop::api::router(AppState::for_desk(desk, prometheus))
}

/// Every event of the store, as (stream, type).
async fn all_events(store: &InMemoryEventStore) -> Vec<(String, String)> {
    store
        .read_all(1, 100_000)
        .await
        .expect("the in-memory store reads")
        .into_iter()
        .map(|event| (event.stream.to_string(), event.event_type.to_string()))
        .collect()
}

fn builder(seed: u64) -> turmoil::Builder {
    let mut builder = turmoil::Builder::new();
    builder
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(600))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(25));
    builder
}

fn sim(seed: u64) -> turmoil::Sim<'static> {
    builder(seed).build()
}

/// Host "shop": the API on `store`, rebuilt on the same store if the host restarts.
fn add_shop(sim: &mut turmoil::Sim<'static>, store: &Arc<InMemoryEventStore>) {
    let store = Arc::clone(store);
    sim.host("shop", move || {
        let store = Arc::clone(&store);
        async move { serve(SHOP_PORT, shop_router(store)).await }
    });
}

/// The events of `events` whose stream is in `category`.
fn in_category<'a>(events: &'a [(String, String)], category: &str) -> Vec<&'a (String, String)> {
    let prefix = format!("{category}-");
    events
        .iter()
        .filter(|(stream, _)| stream.starts_with(&prefix))
        .collect()
}

// ---------------------------------------------------------------------------------------
// A lost response to POST /orders.
// ---------------------------------------------------------------------------------------

/// What the client saw, in order: compared between two runs of a seed.
type Observations = Arc<Mutex<Vec<String>>>;

fn lost_response_run(seed: u64) -> (Vec<String>, Vec<(String, String)>) {
    let store = Arc::new(InMemoryEventStore::new());
    let seen: Observations = Arc::default();
    let mut sim = sim(seed);
    add_shop(&mut sim, &store);
    let log = Arc::clone(&seen);
    sim.client("customer", async move {
        let note = |line: String| log.lock().push(line);
        // The request reaches the shop, the order is placed, and the answer is lost:
        // from the moment the connection is up, nothing flows from the shop back.
        let lost = exchange(
            place_request("ada", "checkout-7"),
            Duration::from_secs(2),
            || turmoil::partition_oneway("shop", "customer"),
        )
        .await;
        let Err(why) = lost else {
            panic!("the answer was to be lost, got {lost:?}");
        };
        note(format!("first attempt: {why}"));
        turmoil::repair_oneway("shop", "customer");

        // The client retries with the same key: the same order, marked as a replay.
        let (status, headers, body) = exchange(
            place_request("ada", "checkout-7"),
            Duration::from_secs(2),
            || {},
        )
        .await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(
            headers
                .get("idempotent-replayed")
                .and_then(|v| v.to_str().ok()),
            Some("true"),
            "a retry of a placed order says it is a replay"
        );
        let order_id = body["order_id"].as_str().expect("an order id").to_owned();
        note(format!("retry: {status} {order_id} replayed"));

        // The order is there, once, pending (no services run behind this API).
        let (status, _, order) =
            exchange(get_request(&order_id), Duration::from_secs(2), || {}).await?;
        assert_eq!(status, StatusCode::OK, "{order}");
        assert_eq!(order["status"], "pending");
        note(format!("read back: {}", order["status"]));

        // A new key is a new order: the key, not luck, made the retry safe.
        let (status, _, other) = exchange(
            place_request("ada", "checkout-8"),
            Duration::from_secs(2),
            || {},
        )
        .await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{other}");
        assert_ne!(other["order_id"], body["order_id"]);
        note(format!("new key: {status}"));
        Ok(())
    });
    sim.run().expect("the simulation ends without error");
    let events = futures::executor::block_on(all_events(&store));
    let seen = seen.lock().clone();
    (seen, events)
}

#[test]
fn a_lost_answer_retried_with_the_same_key_places_one_order() {
    for seed in 0..8 {
        let (seen, events) = lost_response_run(seed);
        // Two orders (keys 7 and 8), each placed once, each with one request record.
        let placements = in_category(&events, Order::CATEGORY);
        let records = in_category(&events, REQUEST_CATEGORY);
        assert_eq!(placements.len(), 2, "seed {seed}: {events:?}");
        assert_ne!(placements[0].0, placements[1].0, "seed {seed}");
        assert_eq!(records.len(), 2, "seed {seed}: {events:?}");
        assert_eq!(seen.len(), 4, "seed {seed}: {seen:?}");
        assert!(
            seen[0].contains("no answer within"),
            "seed {seed}: {seen:?}"
        );
        // Replayable: the same seed, the same story.
        assert_eq!(lost_response_run(seed), (seen, events), "seed {seed}");
    }
}

// ---------------------------------------------------------------------------------------
// Random loss on every link: retries with keys never make a second order.
// ---------------------------------------------------------------------------------------

fn lossy_run(seed: u64) -> (Vec<String>, Vec<(String, String)>) {
    let store = Arc::new(InMemoryEventStore::new());
    let seen: Observations = Arc::default();
    let mut sim = builder(seed)
        // Links fail at random and heal at random: segments, answers and handshakes lost.
        .fail_rate(0.1)
        .repair_rate(0.2)
        .build();
    add_shop(&mut sim, &store);
    let log = Arc::clone(&seen);
    sim.client("customer", async move {
        for n in 0..5 {
            let key = format!("lossy-{n}");
            let mut attempts = 0;
            let (order_id, replayed) = loop {
                attempts += 1;
                assert!(attempts <= 200, "order {n}: no answer after 200 attempts");
                match exchange(
                    place_request("bob", &key),
                    Duration::from_millis(300),
                    || {},
                )
                .await
                {
                    Ok((StatusCode::ACCEPTED, headers, body)) => {
                        let id = body["order_id"].as_str().unwrap_or_default().to_owned();
                        break (id, headers.contains_key("idempotent-replayed"));
                    }
                    Ok((status, _, body)) => panic!("order {n}: {status} {body}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            let replayed = if replayed { " (replayed)" } else { "" };
            log.lock().push(format!(
                "order {n}: {order_id} after {attempts} attempts{replayed}"
            ));
        }
        Ok(())
    });
    sim.run().expect("the simulation ends without error");
    let events = futures::executor::block_on(all_events(&store));
    let seen = seen.lock().clone();
    (seen, events)
}

#[test]
fn under_random_loss_every_keyed_order_is_placed_exactly_once() {
    let (mut retried, mut replayed) = (0, 0);
    for seed in 0..8 {
        let (seen, events) = lossy_run(seed);
        let placements = in_category(&events, Order::CATEGORY).len();
        assert_eq!(placements, 5, "seed {seed}: {events:?}\n{seen:?}");
        assert_eq!(seen.len(), 5, "seed {seed}");
        retried += seen
            .iter()
            .filter(|line| !line.ends_with("after 1 attempts"))
            .count();
        replayed += seen
            .iter()
            .filter(|line| line.ends_with("(replayed)"))
            .count();
        assert_eq!(lossy_run(seed), (seen, events), "seed {seed} replays");
    }
    // Otherwise the loss never bit and the test proves nothing.
    assert!(retried > 0, "no order needed a retry in any seed");
    // ... and at least once an answer was lost after the order was placed: the case the
    // key exists for.
    assert!(
        replayed > 0,
        "no answer was lost after a placement in any seed"
    );
}

// ---------------------------------------------------------------------------------------
// A payment provider that drops its answers.
// ---------------------------------------------------------------------------------------

fn provider_router(provider: Arc<PaymentProvider>) -> axum::Router {
    let entropy = TokioRuntime::try_current().expect("inside a turmoil host");
    let faults = Faults::new(
        FaultOptions {
            latency: Duration::ZERO,
            error_rate: 0.0,
            outages: Vec::new(),
        },
        entropy,
    );
    payment_router(provider, faults)
}

fn gateway() -> HttpPaymentGateway {
    HttpPaymentGateway {
        service: HttpService::with_connector(
            "payment provider",
            &format!("http://provider:{PROVIDER_PORT}"),
            Duration::from_millis(200),
            SimConnector,
        ),
    }
}

fn charge(order: &str) -> ChargeRequest {
    ChargeRequest {
        idempotency_key: format!("pay-{order}"),
        order: order.to_owned(),
        amount: 1_250,
        card: 1,
    }
}

/// Calls the provider under the scenario's retry policy and breaker, as the payment
/// service does.
async fn charge_with_policy(
    resilience: &Resilience,
    env: &SimEnv,
    gateway: &HttpPaymentGateway,
    request: &ChargeRequest,
) -> Result<ChargeOutcome, String> {
    resilience
        .call(env, PAYMENT_PROVIDER, "charge", || {
            gateway.charge(request.clone())
        })
        .await
        .map_err(|e| e.to_string())
}

fn dropping_provider_run(seed: u64) -> (Vec<String>, usize, u64) {
    let provider = Arc::new(PaymentProvider::new(7));
    let seen: Observations = Arc::default();
    let mut sim = sim(seed);
    let served = Arc::clone(&provider);
    sim.host("provider", move || {
        let provider = Arc::clone(&served);
        async move { serve(PROVIDER_PORT, provider_router(provider)).await }
    });
    let log = Arc::clone(&seen);
    let retries = Arc::new(Mutex::new(0));
    let retries_seen = Arc::clone(&retries);
    sim.client("payments", async move {
        let env = SimEnv::new(seed);
        let resilience = resilience::resilience();
        let gateway = gateway();
        let note = |line: String| log.lock().push(line);

        // A healthy call first: the connection pool now holds a live connection.
        let first = charge_with_policy(&resilience, &env, &gateway, &charge("o-1")).await;
        note(format!("o-1: {first:?}"));

        // The provider goes deaf in one direction for 450 ms: the charge arrives on the
        // pooled connection and is captured, its answer is lost, and the attempts after
        // it cannot even connect. The policy's third or fourth attempt gets through and
        // the provider, idempotent by key, answers with the capture it already made.
        turmoil::partition_oneway("provider", "payments");
        let heal = tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(450)).await;
            turmoil::repair_oneway("provider", "payments");
        });
        let second = charge_with_policy(&resilience, &env, &gateway, &charge("o-2")).await;
        note(format!("o-2: {second:?}"));
        heal.await.expect("the heal task ends");

        // Deaf for longer than the whole ladder: the policy gives up, and says so.
        turmoil::partition_oneway("provider", "payments");
        let third = charge_with_policy(&resilience, &env, &gateway, &charge("o-3")).await;
        note(format!("o-3 while deaf: {third:?}"));
        turmoil::repair_oneway("provider", "payments");
        // The saga's deadline would retry the step later with the same key: one capture.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let again = charge_with_policy(&resilience, &env, &gateway, &charge("o-3")).await;
        note(format!("o-3 later: {again:?}"));
        *retries_seen.lock() = resilience.retries_made();
        Ok(())
    });
    sim.run().expect("the simulation ends without error");
    let seen = seen.lock().clone();
    let captures = provider.with_books(|books| books.charges.len());
    let retries = *retries.lock();
    (seen, captures, retries)
}

#[test]
fn a_provider_dropping_answers_is_retried_by_key_and_charges_once() {
    for seed in 0..8 {
        let (seen, captures, retries) = dropping_provider_run(seed);
        let captured = |order: &str| ChargeOutcome::Captured {
            charge: format!("pay-{order}"),
        };
        assert_eq!(
            seen[0],
            format!("o-1: {:?}", Ok::<_, String>(captured("o-1")))
        );
        assert_eq!(
            seen[1],
            format!("o-2: {:?}", Ok::<_, String>(captured("o-2"))),
            "seed {seed}: the ladder outlasts a 450 ms loss of answers"
        );
        assert!(
            seen[2].contains("after 4 attempt") || seen[2].contains("circuit"),
            "seed {seed}: deaf past the ladder ends in an error naming the attempts: {}",
            seen[2]
        );
        assert_eq!(
            seen[3],
            format!("o-3 later: {:?}", Ok::<_, String>(captured("o-3")))
        );
        // One capture per order although o-2 and o-3 reached the provider several times.
        assert_eq!(captures, 3, "seed {seed}: {seen:?}");
        assert!(retries >= 4, "seed {seed}: {retries} retries");
        assert_eq!(
            dropping_provider_run(seed),
            (seen, captures, retries),
            "seed {seed} replays"
        );
    }
}

/// The error classes the policy sees: silence on a connection is a timeout (the provider
/// may have acted), a refused connection is "unavailable". Both are retried.
#[test]
fn silence_is_a_timeout_and_no_listener_is_unavailable() {
    let mut sim = sim(1);
    let provider = Arc::new(PaymentProvider::new(7));
    sim.host("provider", move || {
        let provider = Arc::clone(&provider);
        async move { serve(PROVIDER_PORT, provider_router(provider)).await }
    });
    sim.host("nobody", || async {
        std::future::pending::<()>().await;
        Ok(())
    });
    sim.client("payments", async {
        let deaf = gateway();
        // A connection in the pool, then no answers on it.
        assert!(deaf.charge(charge("o-8")).await.is_ok());
        turmoil::partition_oneway("provider", "payments");
        let silent = deaf.charge(charge("o-9")).await;
        assert_eq!(silent, Err(ExternalError::Timeout));
        turmoil::repair_oneway("provider", "payments");
        let nobody = HttpPaymentGateway {
            service: HttpService::with_connector(
                "payment provider",
                &format!("http://nobody:{PROVIDER_PORT}"),
                Duration::from_millis(200),
                SimConnector,
            ),
        };
        match nobody.charge(charge("o-9")).await {
            Err(ExternalError::Unavailable(why)) => {
                assert!(why.contains("payment provider"), "{why}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        Ok(())
    });
    sim.run().expect("the simulation ends without error");
}
