//! The fake external services: the scenario's own models served over HTTP, each as a
//! separate process (`reprise-shop payment-provider`, `reprise-shop carrier`).
//!
//! They are the models the simulator sweeps — [`PaymentProvider`] (books, idempotency by
//! key, declines, voids that refuse a late charge) and [`CarrierModel`] (shipments that
//! progress with time, a deterministic share lost) — so the service meets the same
//! behaviour over a real network. On top, [`Faults`] make them misbehave on request:
//!
//! - `--latency-ms N`: every answer takes a uniform random time in `[N/2, 3N/2]`; half of
//!   it passes before the model acts and half after — the window in which the provider
//!   has acted but the caller does not know yet (a caller that times out meanwhile sees
//!   an unknown outcome, which its idempotent retry resolves);
//! - `--error-rate P`: a share `P` of requests is answered `500` without reaching the
//!   model;
//! - `--outage START..END` (or `START+LENGTH`), repeatable and comma-separated: in those
//!   windows, measured from the process start, every request is answered `503`.
//!
//! Endpoints, payment provider: `POST /charges` ([`ChargeRequest`] → [`ChargeOutcome`](reprise_scenarios::checkout::gateway::ChargeOutcome)),
//! `POST /refunds` ([`RefundRequest`] → [`RefundOutcome`](reprise_scenarios::checkout::gateway::RefundOutcome)), `GET /books` (a summary of
//! the provider's books), `GET /health/live`. Carrier: `POST /shipments`
//! ([`ShipmentRequest`] → [`ShipmentRegistered`]), `GET /shipments/{order}`
//! ([`CarrierStatus`](reprise_scenarios::checkout::gateway::CarrierStatus); 404 if never registered), `GET /health/live`.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use reprise_core::{Clock, Entropy};
use reprise_scenarios::checkout::gateway::{ChargeRequest, ProviderBooks, ProviderCharge};
use reprise_scenarios::checkout::{CarrierModel, CarrierOptions, PaymentProvider};
use reprise_tokio::TokioRuntime;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::gateway::{RefundRequest, ShipmentRegistered, ShipmentRequest};
use crate::problem::{Problem, json};

/// A window in which the service is down, from the process start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outage {
    pub start: Duration,
    pub end: Duration,
}

impl FromStr for Outage {
    type Err = String;

    /// `START..END` or `START+LENGTH`, each a duration such as `30s`, `1m30s`, `500ms`.
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let parse = |part: &str| {
            humantime::parse_duration(part.trim())
                .map_err(|e| format!("outage {text:?}: {part:?} is not a duration ({e})"))
        };
        let (start, end) = if let Some((start, end)) = text.split_once("..") {
            (parse(start)?, parse(end)?)
        } else if let Some((start, length)) = text.split_once('+') {
            let start = parse(start)?;
            (start, start + parse(length)?)
        } else {
            return Err(format!(
                "outage {text:?}: expected START..END or START+LENGTH, e.g. 30s..45s or 30s+15s"
            ));
        };
        if end <= start {
            return Err(format!("outage {text:?}: it ends before it starts"));
        }
        Ok(Outage { start, end })
    }
}

/// Parses a comma-separated list of outages (empty: none).
///
/// # Errors
/// The first window that does not parse.
pub fn parse_outages(text: &str) -> Result<Vec<Outage>, String> {
    text.split(',')
        .filter(|part| !part.trim().is_empty())
        .map(Outage::from_str)
        .collect()
}

/// How a fake provider misbehaves. See the module docs.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultOptions {
    pub latency: Duration,
    pub error_rate: f64,
    pub outages: Vec<Outage>,
}

impl FaultOptions {
    /// # Errors
    /// A description of every invalid setting.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if !(0.0..=1.0).contains(&self.error_rate) {
            problems.push(format!(
                "--error-rate {}: must be between 0 and 1",
                self.error_rate
            ));
        }
        if self.latency > Duration::from_secs(60) {
            problems.push(format!(
                "--latency-ms {}: at most 60000",
                self.latency.as_millis()
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// [`FaultOptions`] in action: the process start and a random stream.
pub struct Faults {
    options: FaultOptions,
    started: Instant,
    entropy: TokioRuntime,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Faults {
    #[must_use]
    pub fn new(options: FaultOptions, entropy: TokioRuntime) -> Self {
        Faults {
            options,
            started: Instant::now(),
            entropy,
        }
    }

    /// The outage in force now, if any.
    #[must_use]
    pub fn outage_now(&self) -> Option<Outage> {
        let elapsed = self.started.elapsed();
        self.options
            .outages
            .iter()
            .copied()
            .find(|o| o.start <= elapsed && elapsed < o.end)
    }

    fn latency(&self) -> Duration {
        self.options.latency.mul_f64(0.5 + self.entropy.next_f64())
    }

    /// Runs `work` (the model acting) under the faults: an outage or an injected error
    /// refuse before it, the latency is spent around it.
    ///
    /// # Errors
    /// The problem answered instead.
    pub async fn gate<T>(&self, work: impl FnOnce() -> T) -> Result<T, Problem> {
        if let Some(outage) = self.outage_now() {
            let left = outage.end.saturating_sub(self.started.elapsed());
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outage",
                "Scheduled outage",
                format!(
                    "down from {:?} to {:?} after start",
                    outage.start, outage.end
                ),
            )
            .retry_after(left.as_secs().max(1)));
        }
        if self.options.error_rate > 0.0 && self.entropy.next_f64() < self.options.error_rate {
            return Err(Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "injected-error",
                "Injected error",
                format!("a share {} of requests fails", self.options.error_rate),
            ));
        }
        let total = self.latency();
        tokio::time::sleep(total / 2).await;
        let answer = work();
        tokio::time::sleep(total - total / 2).await;
        Ok(answer)
    }
}

/// Decodes a JSON request body, or answers a problem.
fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice(body).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            "Invalid request body",
            e.to_string(),
        )
    })
}

fn answer<T: Serialize>(result: Result<T, Problem>) -> Response {
    match result {
        Ok(value) => json(StatusCode::OK, &value),
        Err(problem) => problem.into_response(),
    }
}

async fn live() -> Response {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

// ---------------------------------------------------------------------------------------
// Payment provider
// ---------------------------------------------------------------------------------------

struct PaymentState {
    provider: Arc<PaymentProvider>,
    faults: Faults,
}

/// A summary of the provider's books (`GET /books`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BooksSummary {
    /// Captures made (one per idempotency key).
    pub charges: usize,
    /// Captures refunded since.
    pub refunded: usize,
    /// Money held: captured and not refunded, in cents.
    pub held_cents: u64,
    /// Keys voided before any capture.
    pub voided: usize,
    pub declines: u64,
}

impl BooksSummary {
    #[must_use]
    pub fn of(books: &ProviderBooks) -> Self {
        BooksSummary {
            charges: books.charges.len(),
            refunded: books.charges.values().filter(|c| c.refunded).count(),
            held_cents: books
                .charges
                .values()
                .filter(|c| !c.refunded)
                .map(|c| c.amount)
                .sum(),
            voided: books.voided.len(),
            declines: books.declines,
        }
    }
}

async fn charge(State(state): State<Arc<PaymentState>>, body: Bytes) -> Response {
    let result = match decode::<ChargeRequest>(&body) {
        Ok(request) => {
            let outcome = state
                .faults
                .gate(|| state.provider.charge_now(&request))
                .await;
            tracing::debug!(order = request.order, ?outcome, "charge");
            outcome
        }
        Err(problem) => Err(problem),
    };
    answer(result)
}

async fn refund(State(state): State<Arc<PaymentState>>, body: Bytes) -> Response {
    let result = match decode::<RefundRequest>(&body) {
        Ok(request) => {
            let outcome = state
                .faults
                .gate(|| state.provider.refund_now(&request.idempotency_key))
                .await;
            tracing::debug!(key = request.idempotency_key, ?outcome, "refund");
            outcome
        }
        Err(problem) => Err(problem),
    };
    answer(result)
}

async fn books(State(state): State<Arc<PaymentState>>) -> Response {
    json(StatusCode::OK, &state.provider.with_books(BooksSummary::of))
}

/// Every entry of the provider's books (`GET /books/detail`): what an invariant checker in
/// another process needs to rebuild [`ProviderBooks`] and look for a second capture of one
/// order — the summary's counts cannot show that.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BooksDetail {
    /// One entry per capture (per idempotency key).
    pub charges: Vec<ChargeEntry>,
    /// Keys voided before any capture.
    pub voided: Vec<String>,
    pub declines: u64,
}

/// One capture in [`BooksDetail`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeEntry {
    pub idempotency_key: String,
    pub order: String,
    pub amount_cents: u64,
    pub refunded: bool,
}

impl BooksDetail {
    #[must_use]
    pub fn of(books: &ProviderBooks) -> Self {
        BooksDetail {
            charges: books
                .charges
                .iter()
                .map(|(key, charge)| ChargeEntry {
                    idempotency_key: key.clone(),
                    order: charge.order.clone(),
                    amount_cents: charge.amount,
                    refunded: charge.refunded,
                })
                .collect(),
            voided: books.voided.iter().cloned().collect(),
            declines: books.declines,
        }
    }

    /// The books as the scenario's checker reads them.
    #[must_use]
    pub fn to_books(&self) -> ProviderBooks {
        ProviderBooks {
            charges: self
                .charges
                .iter()
                .map(|entry| {
                    (
                        entry.idempotency_key.clone(),
                        ProviderCharge {
                            order: entry.order.clone(),
                            amount: entry.amount_cents,
                            refunded: entry.refunded,
                        },
                    )
                })
                .collect(),
            voided: self.voided.iter().cloned().collect(),
            declines: self.declines,
        }
    }
}

async fn books_detail(State(state): State<Arc<PaymentState>>) -> Response {
    json(StatusCode::OK, &state.provider.with_books(BooksDetail::of))
}

/// The payment provider's router. `provider` is shared so that whoever started it can read
/// its books (the tests do).
pub fn payment_router(provider: Arc<PaymentProvider>, faults: Faults) -> Router {
    let state = Arc::new(PaymentState { provider, faults });
    Router::new()
        .route("/charges", post(charge))
        .route("/refunds", post(refund))
        .route("/books", get(books))
        .route("/books/detail", get(books_detail))
        .route("/health/live", get(live))
        .fallback(|uri: axum::http::Uri| async move { Problem::not_found(uri.path()) })
        .with_state(state)
}

// ---------------------------------------------------------------------------------------
// Carrier
// ---------------------------------------------------------------------------------------

struct CarrierState {
    model: CarrierModel,
    clock: TokioRuntime,
    faults: Faults,
}

async fn register(State(state): State<Arc<CarrierState>>, body: Bytes) -> Response {
    let result = match decode::<ShipmentRequest>(&body) {
        Ok(request) => {
            let tracking = state
                .faults
                .gate(|| state.model.register_at(&request.order, state.clock.now()))
                .await;
            tracing::debug!(order = request.order, ?tracking, "register");
            tracking.map(|tracking| ShipmentRegistered { tracking })
        }
        Err(problem) => Err(problem),
    };
    answer(result)
}

async fn track(State(state): State<Arc<CarrierState>>, Path(order): Path<String>) -> Response {
    let result = state
        .faults
        .gate(|| state.model.track_at(&order, state.clock.now()))
        .await;
    match result {
        Ok(Some(status)) => json(StatusCode::OK, &status),
        Ok(None) => Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-shipment",
            "Unknown shipment",
            format!("no shipment was registered for order {order}"),
        )
        .into_response(),
        Err(problem) => problem.into_response(),
    }
}

/// The carrier's router.
pub fn carrier_router(options: CarrierOptions, clock: TokioRuntime, faults: Faults) -> Router {
    let state = Arc::new(CarrierState {
        model: CarrierModel::new(options),
        clock,
        faults,
    });
    Router::new()
        .route("/shipments", post(register))
        .route("/shipments/{order}", get(track))
        .route("/health/live", get(live))
        .fallback(|uri: axum::http::Uri| async move { Problem::not_found(uri.path()) })
        .with_state(state)
}

/// Serves `router` on `listen` until SIGTERM or SIGINT; prints `listening on
/// http://ADDR` on stdout once bound (port 0 picks a free port).
///
/// # Errors
/// The address cannot be bound, or the server fails.
pub async fn serve_until_signal(
    what: &str,
    listen: SocketAddr,
    router: Router,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("{what}: cannot listen on {listen}: {e}"))?;
    let address = listener.local_addr().map_err(|e| format!("{what}: {e}"))?;
    crate::cli::announce(address);
    tracing::info!(%address, "{what} listening");
    let entropy = Arc::new(crate::trace::ProcessEntropy::default());
    let router = router.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            traced(Arc::clone(&entropy), request, next)
        },
    ));
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            crate::serve::signal().await;
        })
        .await
        .map_err(|e| format!("{what}: {e}"))
}

/// A request that carries a `traceparent` (a call from a traced service) is answered
/// inside a server span continuing it; others (health checks, curl) make no span.
async fn traced(
    entropy: Arc<crate::trace::ProcessEntropy>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if crate::trace::extract(request.headers()).is_none() {
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let (span, context) =
        crate::trace::server_span(&method, &route, request.headers(), entropy.as_ref());
    let response = tracing::Instrument::instrument(
        reprise_core::event::trace::in_trace(Some(context), next.run(request)),
        span.clone(),
    )
    .await;
    crate::trace::record_status(&span, response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_parse_in_both_forms() {
        assert_eq!(
            "30s..45s".parse::<Outage>().unwrap(),
            Outage {
                start: Duration::from_secs(30),
                end: Duration::from_secs(45)
            }
        );
        assert_eq!(
            "1m+500ms".parse::<Outage>().unwrap(),
            Outage {
                start: Duration::from_secs(60),
                end: Duration::from_millis(60_500)
            }
        );
        assert_eq!(parse_outages(" 0s..1s, 2s+1s ,").unwrap().len(), 2);
        assert!(parse_outages("").unwrap().is_empty());
        assert!(
            "5s..1s"
                .parse::<Outage>()
                .unwrap_err()
                .contains("ends before")
        );
        assert!("soon".parse::<Outage>().unwrap_err().contains("START..END"));
        assert!(
            "x..1s"
                .parse::<Outage>()
                .unwrap_err()
                .contains("not a duration")
        );
    }

    #[test]
    fn fault_options_are_validated() {
        let options = FaultOptions {
            latency: Duration::from_secs(61),
            error_rate: 1.5,
            outages: Vec::new(),
        };
        assert_eq!(options.validate().unwrap_err().len(), 2);
    }

    #[tokio::test]
    async fn an_outage_refuses_and_an_error_rate_of_one_always_fails() {
        let runtime = TokioRuntime::try_current().unwrap();
        let down = Faults::new(
            FaultOptions {
                latency: Duration::ZERO,
                error_rate: 0.0,
                outages: vec![Outage {
                    start: Duration::ZERO,
                    end: Duration::from_secs(60),
                }],
            },
            runtime.clone(),
        );
        let refused = down.gate(|| ()).await.unwrap_err();
        assert_eq!(refused.status, 503);
        assert!(refused.retry_after_secs.is_some());
        let failing = Faults::new(
            FaultOptions {
                latency: Duration::ZERO,
                error_rate: 1.0,
                outages: Vec::new(),
            },
            runtime.clone(),
        );
        assert_eq!(failing.gate(|| ()).await.unwrap_err().status, 500);
        let fine = Faults::new(
            FaultOptions {
                latency: Duration::from_millis(2),
                error_rate: 0.0,
                outages: Vec::new(),
            },
            runtime,
        );
        assert_eq!(fine.gate(|| 7).await.unwrap(), 7);
    }
}
