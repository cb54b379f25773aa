//! The HTTP API.
//!
//! | route | answer |
//! |---|---|
//! | `POST /orders` | `202 {"order_id"}` (+ `Location`); problems: 400 malformed JSON or a bad `Idempotency-Key`, 413 body over 64 KiB, 415 a media type other than JSON (a missing one, or `curl -d`'s form type, is read as JSON), 422 invalid order / unknown SKU / key reused with another request, 503 starting, draining, store or payment provider unavailable |
//! | `GET /orders/{id}` | `200 {"order_id","status","customer","lines","amount_cents","history":[…]}`; 404 problem if unknown |
//! | `GET /catalog` | the SKUs with prices and available stock |
//! | `GET /health/live`, `/health/startup`, `/health/ready` | [`crate::health`] |
//! | `GET /metrics` | Prometheus exposition ([`crate::telemetry`]) |
//!
//! ## Placing an order
//!
//! The body is `{"customer": "...", "lines": [{"sku": "...", "quantity": N}], "card": N}`
//! (`card`, the token the provider charges, is optional: 1 by default; the fake provider
//! declines multiples of its `--decline-every`). The checkout takes one line per order,
//! as the scenario's `Order` aggregate does.
//!
//! Placing is `OrderCommand::Place` on the scenario's `Order` aggregate through core's
//! `Repository` (load–decide–append), and with it, **in the same atomic append**, a
//! `ShopOrderRequested` event in stream `shoprequest-<order id>` recording who asked for
//! what (customer, idempotency key, a fingerprint of the request). From there the relay
//! publishes `OrderPlaced` and the saga takes over.
//!
//! ## Idempotency
//!
//! With an `Idempotency-Key` header the order id is derived from the customer and the
//! key (the key is scoped to the customer), so a retry addresses the same order. The
//! request record's event id is derived from the order id, so a second append of it —
//! a retry, or two copies of the request racing — is recognised by the store as a
//! duplicate *atomically with* the placement: there is never a second order, and the
//! retry gets `202` with the same `order_id` (and `Idempotent-Replayed: true`). The same
//! key with a different request is refused (422, `idempotency-key-reused`). This holds
//! across replicas and restarts: the record is in PostgreSQL, not in a process.
//!
//! Without a key every request is a new order. If the store does not confirm an append
//! in time (503), the outcome is unknown: retry with a key to be safe.

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use reprise_core::repository::Companion;
use reprise_core::repository::Repository;
use reprise_core::{
    Aggregate, CommandError, Entropy, Event, EventId, Metadata, NewEvent, RecordedEvent, Saga,
    StreamId, Timestamp,
};
use reprise_host::Platform;
use reprise_scenarios::checkout::inventory::Inventory;
use reprise_scenarios::checkout::order::{Order, OrderCommand, OrderEvent, OrderLine, OrderStatus};
use reprise_scenarios::checkout::payment::Payment;
use reprise_scenarios::checkout::saga::CheckoutSaga;
use reprise_scenarios::checkout::shipping::Shipment;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument;
use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

use crate::catalog::{Catalog, MAX_QUANTITY};
use crate::health;
use crate::problem::{Problem, json};
use crate::serve::Lifecycle;
use crate::{telemetry, trace};

/// Largest request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Stream category of the request records.
pub const REQUEST_CATEGORY: &str = "shoprequest";
/// Longest customer name, in characters.
const MAX_CUSTOMER: usize = 200;
/// Longest idempotency key, in bytes.
const MAX_KEY: usize = 255;
/// Attempts at placing an order when the store fails transiently.
const PLACE_ATTEMPTS: u32 = 3;
/// Bound on placing one order, retries included.
const PLACE_TIMEOUT: Duration = Duration::from_secs(15);
/// Event types the framework writes into a saga's stream for its own bookkeeping
/// (deadlines set and cleared, commands issued): left out of an order's history.
const FRAMEWORK_EVENTS: &str = "reprise.";
/// Events read per stream for an order's history.
const HISTORY_LIMIT: usize = 512;

/// What the order routes need: a platform (store, runtime, shared resilience, backoff),
/// the two repositories and the catalog. [`crate::serve`] builds it on PostgreSQL; any
/// [`EventStore`] will do, which is how the API runs under a simulated network in the
/// tests (`tests/turmoil.rs`, on the in-memory store).
#[derive(Clone)]
pub struct OrderDesk {
    /// `store` is the API's pool; `resilience` is the process's, shared with the services,
    /// so an open breaker refuses orders.
    pub platform: Platform,
    pub orders: Repository<Order>,
    pub stock: Repository<Inventory>,
    pub catalog: Catalog,
}

impl std::fmt::Debug for OrderDesk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderDesk")
            .field("platform", &self.platform)
            .finish_non_exhaustive()
    }
}

impl OrderDesk {
    /// The repositories over `platform.store`; the order repository caches 4,096 orders.
    #[must_use]
    pub fn new(platform: Platform, catalog: Catalog) -> Self {
        let entropy: Arc<dyn Entropy> = platform.runtime.clone();
        let orders = Repository::<Order>::new(Arc::clone(&platform.store), Arc::clone(&entropy))
            .with_cache(4096);
        let stock = Repository::<Inventory>::new(Arc::clone(&platform.store), entropy);
        OrderDesk {
            platform,
            orders,
            stock,
            catalog,
        }
    }
}

/// The state every handler gets.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    lifecycle: Arc<Lifecycle>,
    prometheus: PrometheusHandle,
    catalog: Catalog,
    /// Set when the API runs without the rest of the service (tests): the desk to use
    /// instead of the running service's.
    desk: Option<OrderDesk>,
    /// Span ids of the requests' server spans.
    entropy: crate::trace::ProcessEntropy,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("lifecycle", &self.0.lifecycle)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The service's state: the order routes answer 503 until `lifecycle` is running.
    #[must_use]
    pub fn new(lifecycle: Arc<Lifecycle>, prometheus: PrometheusHandle, catalog: Catalog) -> Self {
        AppState(Arc::new(Inner {
            lifecycle,
            prometheus,
            catalog,
            desk: None,
            entropy: crate::trace::ProcessEntropy::default(),
        }))
    }

    /// The order routes on `desk` alone — no services, relay or broker behind them (the
    /// health routes still report the lifecycle, which never starts). For tests that put
    /// the HTTP layer under a simulated network.
    #[must_use]
    pub fn for_desk(desk: OrderDesk, prometheus: PrometheusHandle) -> Self {
        AppState(Arc::new(Inner {
            lifecycle: Arc::new(Lifecycle::new()),
            prometheus,
            catalog: desk.catalog.clone(),
            desk: Some(desk),
            entropy: crate::trace::ProcessEntropy::default(),
        }))
    }

    /// The order desk, or the 503 to answer while the service starts.
    fn desk(&self) -> Result<&OrderDesk, Problem> {
        if let Some(desk) = &self.0.desk {
            return Ok(desk);
        }
        self.0
            .lifecycle
            .running()
            .map(|running| &running.desk)
            .ok_or_else(|| {
                Problem::unavailable(
                    "starting",
                    "Starting",
                    "the service is still starting (see /health/startup)",
                )
            })
    }
}

/// The API's router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/orders", post(place_order))
        .route("/orders/{id}", get(get_order))
        .route("/catalog", get(catalog))
        .route("/health/live", get(live))
        .route("/health/startup", get(startup))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Whether a route is part of the API proper (refused while draining), as opposed to
/// health and metrics (which keep answering until the process exits).
fn is_api(route: &str) -> bool {
    route.starts_with("/orders") || route == "/catalog"
}

/// The method label: the standard methods, everything else `_OTHER` (bounded cardinality).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "_OTHER",
    }
}

/// Times every request, counts it in flight, refuses API requests while draining.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let lifecycle = &state.0.lifecycle;
    let response = if is_api(&route) && lifecycle.is_draining() {
        Problem::unavailable(
            "shutting-down",
            "Shutting down",
            "this instance is shutting down; retry (another instance will answer)",
        )
        .closing()
        .into_response()
    } else {
        let _in_flight = lifecycle.enter();
        // Every log line of the request (and every store span it starts) nests here; its
        // trace context (the request's `traceparent`, or a new trace) is current while
        // the request is handled, so the order's events carry it (`crate::trace`).
        let (span, context) =
            trace::server_span(method, &route, request.headers(), &state.0.entropy);
        let response = reprise_core::event::trace::in_trace(Some(context), next.run(request))
            .instrument(span.clone())
            .await;
        trace::record_status(&span, response.status().as_u16());
        response
    };
    metrics::histogram!(
        telemetry::HTTP_DURATION,
        "http_request_method" => method,
        "http_route" => route,
        "http_response_status_code" => response.status().as_str().to_owned(),
    )
    .record(started.elapsed().as_secs_f64());
    response
}

async fn not_found(uri: Uri) -> Response {
    Problem::not_found(uri.path()).into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!("{} does not answer {method}", uri.path()),
    )
    .into_response()
}

async fn live(State(state): State<AppState>) -> Response {
    health::live(&state.0.lifecycle).into_response()
}

async fn startup(State(state): State<AppState>) -> Response {
    health::startup(&state.0.lifecycle).into_response()
}

async fn ready(State(state): State<AppState>) -> Response {
    health::ready(&state.0.lifecycle).await.into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.0.prometheus.render();
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

// ---------------------------------------------------------------------------------------
// POST /orders
// ---------------------------------------------------------------------------------------

/// The request body of `POST /orders`. Unknown fields are ignored.
#[derive(Clone, Debug, Deserialize)]
pub struct PlaceOrderRequest {
    pub customer: String,
    pub lines: Vec<LineRequest>,
    #[serde(default)]
    pub card: Option<i64>,
}

/// One line of [`PlaceOrderRequest`]. The quantity is read as a signed number so that
/// a zero or negative one gets a precise message rather than a type error.
#[derive(Clone, Debug, Deserialize)]
pub struct LineRequest {
    pub sku: String,
    pub quantity: i64,
}

/// The answer to an accepted order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub order_id: String,
}

/// Who asked for what: recorded with the placement, in the same atomic append.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRequested {
    pub customer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// xxh3 of the request's content: a replay must match it.
    pub fingerprint: String,
    pub sku: String,
    pub quantity: u32,
    pub card: u32,
    pub amount_cents: u64,
}

impl Event for OrderRequested {
    fn event_type(&self) -> &'static str {
        "ShopOrderRequested"
    }
}

/// A valid order request.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Validated {
    customer: String,
    sku: String,
    quantity: u32,
    card: u32,
    amount: u64,
}

impl Validated {
    fn fingerprint(&self) -> String {
        let canonical = serde_json::json!([self.customer, self.sku, self.quantity, self.card]);
        format!("{:016x}", xxh3_64(canonical.to_string().as_bytes()))
    }
}

fn field_error(pointer: &str, detail: impl Into<String>) -> Value {
    serde_json::json!({"pointer": pointer, "detail": detail.into()})
}

/// Checks a parsed request against the catalog. One problem lists every error.
fn validate(request: &PlaceOrderRequest, catalog: &Catalog) -> Result<Validated, Problem> {
    let mut errors = Vec::new();
    let mut unknown = Vec::new();
    let customer = request.customer.trim();
    if customer.is_empty() {
        errors.push(field_error("/customer", "must not be empty"));
    } else if customer.chars().count() > MAX_CUSTOMER {
        errors.push(field_error(
            "/customer",
            format!("at most {MAX_CUSTOMER} characters"),
        ));
    }
    if request.lines.is_empty() {
        errors.push(field_error("/lines", "an order needs a line"));
    } else if request.lines.len() > 1 {
        errors.push(field_error(
            "/lines",
            format!(
                "this checkout takes one line per order (got {}): place one order per SKU",
                request.lines.len()
            ),
        ));
    }
    for (i, line) in request.lines.iter().enumerate() {
        if line.quantity < 1 {
            errors.push(field_error(
                &format!("/lines/{i}/quantity"),
                format!("must be at least 1 (got {})", line.quantity),
            ));
        } else if line.quantity > i64::from(MAX_QUANTITY) {
            errors.push(field_error(
                &format!("/lines/{i}/quantity"),
                format!("at most {MAX_QUANTITY} (got {})", line.quantity),
            ));
        }
        if catalog.get(&line.sku).is_none() {
            unknown.push(line.sku.clone());
            errors.push(field_error(
                &format!("/lines/{i}/sku"),
                format!("unknown sku {:?}", line.sku),
            ));
        }
    }
    let card = request.card.unwrap_or(1);
    if !(1..=i64::from(u32::MAX)).contains(&card) {
        errors.push(field_error(
            "/card",
            format!("a card token is 1..={} (got {card})", u32::MAX),
        ));
    }
    if errors.is_empty() {
        let line = &request.lines[0];
        let item = catalog.get(&line.sku).expect("checked above");
        let quantity = u32::try_from(line.quantity).expect("checked above");
        return Ok(Validated {
            customer: customer.to_owned(),
            sku: line.sku.clone(),
            quantity,
            card: u32::try_from(card).expect("checked above"),
            amount: item.price_cents * u64::from(quantity),
        });
    }
    let details: Vec<String> = errors
        .iter()
        .filter_map(|e| {
            let pointer = e["pointer"].as_str()?;
            let detail = e["detail"].as_str()?;
            Some(format!("{pointer}: {detail}"))
        })
        .collect();
    let problem = if errors.len() == unknown.len() {
        let names: Vec<String> = unknown.iter().map(|s| format!("{s:?}")).collect();
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-sku",
            "Unknown SKU",
            format!(
                "unknown sku {}; the catalog has: {}",
                names.join(", "),
                catalog.skus()
            ),
        )
        .with("sku", unknown[0].clone())
    } else {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-order",
            "Invalid order",
            details.join("; "),
        )
    };
    Err(problem.with("errors", Value::Array(errors)))
}

/// The `Idempotency-Key` header, if any.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = |why: &str| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-idempotency-key",
            "Invalid Idempotency-Key",
            format!("the Idempotency-Key header {why}"),
        )
    };
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_KEY {
        return Err(bad(&format!("must be 1..={MAX_KEY} bytes")));
    }
    if !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(bad("must be printable ASCII without spaces"));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// Parses the body into a request, or the problem that says why not.
fn parse_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<PlaceOrderRequest, Problem> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let text = content_type.to_str().unwrap_or("").to_ascii_lowercase();
        let essence = text.split(';').next().unwrap_or("").trim();
        // `curl -d` labels its body a form; this API has no form encoding, so such a
        // body is read as the JSON it almost always is.
        let json_like = essence == "application/json"
            || essence.ends_with("+json")
            || essence == "application/x-www-form-urlencoded";
        if !json_like {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                format!("the body must be application/json, not {essence:?}"),
            ));
        }
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Body too large",
                format!("the body must be at most {MAX_BODY_BYTES} bytes"),
            ));
        }
        Err(rejection) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "unreadable-body",
                "Unreadable body",
                rejection.body_text(),
            ));
        }
    };
    serde_json::from_slice::<PlaceOrderRequest>(&body).map_err(|error| {
        use serde_json::error::Category;
        match error.classify() {
            Category::Syntax | Category::Eof | Category::Io => Problem::new(
                StatusCode::BAD_REQUEST,
                "malformed-json",
                "Malformed JSON",
                format!("the body is not valid JSON: {error}"),
            ),
            Category::Data => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-order",
                "Invalid order",
                format!(
                    "{error}; expected {{\"customer\": string, \"lines\": [{{\"sku\": string, \"quantity\": integer}}]}}"
                ),
            ),
        }
    })
}

async fn place_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match place_order_inner(&state, &headers, body).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

async fn place_order_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let desk = state.desk()?;
    let request = parse_body(headers, body)?;
    let key = idempotency_key(headers)?;
    let validated = validate(&request, &state.0.catalog)?;
    let resilience = &desk.platform.resilience;
    if let (check, Some(left)) = health::breakers(resilience, desk.platform.runtime.now()) {
        // An open breaker fails every charge or shipment for a while: accepting orders
        // now would only produce cancellations.
        return Err(Problem::unavailable(
            "dependency-unavailable",
            "Dependency unavailable",
            format!(
                "a circuit breaker is open ({}): orders are refused until it lets a probe \
                 through",
                check.detail
            ),
        )
        .retry_after(left.as_secs().max(1)));
    }
    match tokio::time::timeout(PLACE_TIMEOUT, place(desk, validated, key)).await {
        Ok(result) => result,
        Err(_) => Err(Problem::unavailable(
            "store-unavailable",
            "Event store unavailable",
            "the order could not be confirmed in time; its outcome is unknown: retry with \
             the same Idempotency-Key",
        )),
    }
}

/// The order id: derived from the customer and the key when there is one, fresh
/// otherwise. 32 hex digits either way (also the correlation id of its events).
fn order_id(customer: &str, key: Option<&str>, entropy: &dyn Entropy) -> u128 {
    match key {
        Some(key) => xxh3_128(format!("reprise-shop/order\n{customer}\n{key}").as_bytes()),
        None => entropy.next_id(),
    }
}

/// The id of an order's request record: a function of the order id, so a second
/// record for one order is a duplicate the store recognises.
fn request_event_id(order_id: &str) -> EventId {
    EventId(xxh3_128(
        format!("reprise-shop/request\n{order_id}").as_bytes(),
    ))
}

fn accepted(order_id: &str, replayed: bool) -> Response {
    let mut response = json(
        StatusCode::ACCEPTED,
        &Accepted {
            order_id: order_id.to_owned(),
        },
    );
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("/orders/{order_id}")) {
        headers.insert(header::LOCATION, location);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

fn store_problem(error: &impl std::fmt::Display) -> Problem {
    Problem::unavailable(
        "store-unavailable",
        "Event store unavailable",
        format!("the order could not be recorded: {error}; retry with the same Idempotency-Key"),
    )
    .retry_after(2)
}

async fn load_request(desk: &OrderDesk, order_id: &str) -> Result<Option<OrderRequested>, Problem> {
    let stream = StreamId::of(REQUEST_CATEGORY, order_id);
    let events = desk
        .platform
        .store
        .read_stream(&stream, 1, 1)
        .await
        .map_err(|e| store_problem(&e))?;
    Ok(events
        .first()
        .and_then(|event| event.payload.decode::<OrderRequested>().ok()))
}

fn replay(
    existing: &OrderRequested,
    order_id: &str,
    fingerprint: &str,
) -> Result<Response, Problem> {
    if existing.fingerprint == fingerprint {
        Ok(accepted(order_id, true))
    } else {
        Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key reused",
            format!(
                "this Idempotency-Key was first used for a different request (order {order_id}); \
                 use a new key for a new order"
            ),
        )
        .with("order_id", order_id))
    }
}

async fn place(
    desk: &OrderDesk,
    validated: Validated,
    key: Option<String>,
) -> Result<Response, Problem> {
    let id = order_id(&validated.customer, key.as_deref(), &*desk.platform.runtime);
    let order_id = format!("{id:032x}");
    let fingerprint = validated.fingerprint();
    if key.is_some()
        && let Some(existing) = load_request(desk, &order_id).await?
    {
        return replay(&existing, &order_id, &fingerprint);
    }
    let metadata = Metadata {
        correlation_id: Some(id),
        ..Metadata::default()
    };
    let record = OrderRequested {
        customer: validated.customer.clone(),
        idempotency_key: key.clone(),
        fingerprint: fingerprint.clone(),
        sku: validated.sku.clone(),
        quantity: validated.quantity,
        card: validated.card,
        amount_cents: validated.amount,
    };
    let event = NewEvent::encode(request_event_id(&order_id), &record, metadata.clone())
        .map_err(|e| store_problem(&e))?;
    let companion = Companion {
        stream: StreamId::of(REQUEST_CATEGORY, &order_id),
        events: vec![event],
    };
    let command = OrderCommand::Place(OrderLine {
        sku: validated.sku.clone(),
        quantity: validated.quantity,
        amount: validated.amount,
        card: validated.card,
    });
    let mut backoff = desk.platform.backoff();
    let mut attempt = 1;
    let decided = loop {
        let outcome = desk
            .orders
            .decide_and_append(
                &order_id,
                &command,
                &metadata,
                std::slice::from_ref(&companion),
            )
            .await;
        match outcome {
            Ok(decided) => break decided,
            Err(error @ (CommandError::Store(_) | CommandError::Contended { .. }))
                if attempt < PLACE_ATTEMPTS =>
            {
                tracing::debug!(order_id, %error, attempt, "placing an order failed; retrying");
                attempt += 1;
                desk.platform.pause(&mut backoff).await;
            }
            Err(error) => return Err(store_problem(&error)),
        }
    };
    if !decided.duplicate && !decided.events.is_empty() {
        metrics::counter!(telemetry::ORDERS_PLACED).increment(1);
        tracing::info!(
            order_id,
            sku = validated.sku,
            quantity = validated.quantity,
            "order placed"
        );
        return Ok(accepted(&order_id, false));
    }
    // Placed before: this is a copy of the same request that lost the race, or a retry
    // whose first attempt committed without an answer.
    match load_request(desk, &order_id).await? {
        Some(existing) => replay(&existing, &order_id, &fingerprint),
        None => Ok(accepted(&order_id, true)),
    }
}

// ---------------------------------------------------------------------------------------
// GET /orders/{id}
// ---------------------------------------------------------------------------------------

/// One line of an order, as shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineView {
    pub sku: String,
    pub quantity: u32,
}

/// One event of an order's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When the store recorded it (RFC 3339, UTC).
    pub at: String,
    /// The stream category: `shoprequest`, `order`, `checkout` (the saga), `payment`,
    /// `shipment`.
    pub source: String,
    pub event: String,
    /// The event's payload, as stored.
    pub data: Value,
}

/// `GET /orders/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderView {
    pub order_id: String,
    /// `pending` until the saga completes or cancels the order.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    pub lines: Vec<LineView>,
    pub amount_cents: u64,
    /// Why the order was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub history: Vec<HistoryEntry>,
}

/// Order ids the API hands out are 32 hex digits; anything outside `[A-Za-z0-9_-]` is
/// not an order.
fn is_order_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn rfc3339(at: Timestamp) -> String {
    let time = UNIX_EPOCH + Duration::from_nanos(at.as_unix_nanos());
    humantime::format_rfc3339_millis(time).to_string()
}

fn entry(event: &RecordedEvent) -> HistoryEntry {
    HistoryEntry {
        at: rfc3339(event.recorded_at),
        source: event.stream.category().to_owned(),
        event: event.event_type.to_string(),
        data: serde_json::from_str(event.payload.as_str()).unwrap_or(Value::Null),
    }
}

async fn get_order(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match get_order_inner(&state, &id).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

fn order_not_found(id: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "order-not-found",
        "Order not found",
        format!("there is no order {id:?}"),
    )
    .with("order_id", id)
}

async fn get_order_inner(state: &AppState, id: &str) -> Result<Response, Problem> {
    let desk = state.desk()?;
    if !is_order_id(id) {
        return Err(order_not_found(id));
    }
    let streams = [
        StreamId::of(Order::CATEGORY, id),
        StreamId::of(REQUEST_CATEGORY, id),
        StreamId::of(CheckoutSaga::NAME, id),
        StreamId::of(Payment::CATEGORY, id),
        StreamId::of(Shipment::CATEGORY, id),
    ];
    let reads = futures::future::join_all(
        streams
            .iter()
            .map(|stream| desk.platform.store.read_stream(stream, 1, HISTORY_LIMIT)),
    )
    .await;
    let mut events = Vec::new();
    for read in reads {
        events.extend(read.map_err(|e| store_problem(&e))?);
    }
    let mut order = Order::default();
    let mut reason = None;
    let mut request = None;
    for event in &events {
        match event.stream.category() {
            Order::CATEGORY => {
                if let Ok(decoded) = event.payload.decode::<OrderEvent>() {
                    if let OrderEvent::Cancelled { reason: why } = &decoded {
                        reason = Some(why.clone());
                    }
                    order.apply(&decoded);
                }
            }
            REQUEST_CATEGORY => request = event.payload.decode::<OrderRequested>().ok(),
            _ => {}
        }
    }
    let status = match order.status {
        OrderStatus::NotPlaced => return Err(order_not_found(id)),
        OrderStatus::Placed => "pending",
        OrderStatus::Completed => "completed",
        OrderStatus::Cancelled => "cancelled",
    };
    events.sort_by_key(|e| e.position);
    let line = order.line.clone();
    let view = OrderView {
        order_id: id.to_owned(),
        status: status.to_owned(),
        customer: request.map(|r| r.customer),
        lines: line
            .iter()
            .map(|l| LineView {
                sku: l.sku.clone(),
                quantity: l.quantity,
            })
            .collect(),
        amount_cents: line.map_or(0, |l| l.amount),
        reason,
        history: events
            .iter()
            .filter(|e| !e.event_type.starts_with(FRAMEWORK_EVENTS))
            .map(entry)
            .collect(),
    };
    Ok(json(StatusCode::OK, &view))
}

// ---------------------------------------------------------------------------------------
// GET /catalog
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct CatalogItem {
    sku: String,
    name: String,
    price_cents: u64,
    /// Stock not reserved; `null` if the store did not answer.
    available: Option<u32>,
}

async fn catalog(State(state): State<AppState>) -> Response {
    let desk = match state.desk() {
        Ok(desk) => desk,
        Err(problem) => return problem.into_response(),
    };
    let loads =
        futures::future::join_all(desk.catalog.items().map(|item| desk.stock.load(item.sku))).await;
    let items: Vec<CatalogItem> = desk
        .catalog
        .items()
        .zip(loads)
        .map(|(item, load)| CatalogItem {
            sku: item.sku.to_owned(),
            name: item.name.to_owned(),
            price_cents: item.price_cents,
            available: load.ok().map(|(inventory, _)| inventory.available),
        })
        .collect();
    json(StatusCode::OK, &serde_json::json!({ "items": items }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &str) -> Result<PlaceOrderRequest, Problem> {
        parse_body(&HeaderMap::new(), Ok(Bytes::from(body.to_owned())))
    }

    #[test]
    fn bodies_are_sorted_into_malformed_and_invalid() {
        let malformed = request("{\"customer\": ").unwrap_err();
        assert_eq!(
            (malformed.status, malformed.slug()),
            (400, "malformed-json")
        );
        let missing = request("{\"lines\": []}").unwrap_err();
        assert_eq!((missing.status, missing.slug()), (422, "invalid-order"));
        assert!(missing.detail.contains("customer"), "{}", missing.detail);
        let wrong_type = request("[1, 2]").unwrap_err();
        assert_eq!(wrong_type.status, 422);
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let text = parse_body(&headers, Ok(Bytes::from_static(b"{}"))).unwrap_err();
        assert_eq!(text.status, 415);
    }

    #[test]
    fn validation_names_every_problem_and_the_unknown_sku() {
        let catalog = Catalog::default();
        let unknown = validate(
            &request(r#"{"customer":"ada","lines":[{"sku":"nope","quantity":1}]}"#).unwrap(),
            &catalog,
        )
        .unwrap_err();
        assert_eq!((unknown.status, unknown.slug()), (422, "unknown-sku"));
        assert!(unknown.detail.contains("\"nope\""), "{}", unknown.detail);
        assert_eq!(unknown.extensions["sku"], "nope");
        let zero = validate(
            &request(r#"{"customer":"ada","lines":[{"sku":"beans-1kg","quantity":0}]}"#).unwrap(),
            &catalog,
        )
        .unwrap_err();
        assert_eq!((zero.status, zero.slug()), (422, "invalid-order"));
        assert!(zero.detail.contains("/lines/0/quantity"), "{}", zero.detail);
        let many = validate(
            &request(r#"{"customer":" ","lines":[]}"#).unwrap(),
            &catalog,
        )
        .unwrap_err();
        assert_eq!(many.extensions["errors"].as_array().unwrap().len(), 2);
        let good = validate(
            &request(r#"{"customer":"ada","lines":[{"sku":"beans-1kg","quantity":2}],"card":7}"#)
                .unwrap(),
            &catalog,
        )
        .unwrap();
        assert_eq!(good.amount, 4_800);
        assert_eq!(good.card, 7);
    }

    #[test]
    fn keys_and_ids() {
        let mut headers = HeaderMap::new();
        assert_eq!(idempotency_key(&headers).unwrap(), None);
        headers.insert("idempotency-key", HeaderValue::from_static("abc-123"));
        assert_eq!(
            idempotency_key(&headers).unwrap().as_deref(),
            Some("abc-123")
        );
        headers.insert("idempotency-key", HeaderValue::from_static("a b"));
        assert_eq!(idempotency_key(&headers).unwrap_err().status, 400);
        struct Never;
        impl Entropy for Never {
            fn next_u64(&self) -> u64 {
                unreachable!("a keyed id draws nothing")
            }
        }
        let a = order_id("ada", Some("k1"), &Never);
        assert_eq!(a, order_id("ada", Some("k1"), &Never));
        assert_ne!(
            a,
            order_id("bob", Some("k1"), &Never),
            "keys are scoped per customer"
        );
        assert!(is_order_id(&format!("{a:032x}")));
        assert!(!is_order_id("../etc"));
        assert_eq!(request_event_id("x"), request_event_id("x"));
        assert!(rfc3339(Timestamp::from_unix_nanos(0)).starts_with("1970-01-01T00:00:00"));
    }
}
