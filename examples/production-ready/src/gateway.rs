//! The payment provider and the carrier over HTTP: the scenario's [`PaymentGateway`] and
//! [`Carrier`] traits implemented with hyper-util's client.
//!
//! The services call these through their instance's `Resilience` (retry policy and
//! circuit breaker per dependency, `reprise_scenarios::checkout::resilience`), so this
//! layer makes exactly one HTTP exchange per call and classifies what went wrong:
//!
//! | what happened | [`ExternalError`] | why |
//! |---|---|---|
//! | no answer within the call timeout | `Timeout` | the provider may have acted: outcome unknown |
//! | connection refused or reset, an HTTP error status, an undecodable answer | `Unavailable` | no usable answer |
//!
//! Both are transient: every call is idempotent by key (the charge by the order's
//! idempotency key, a refund by the same key, a shipment by order), so the retry the
//! policy makes is safe even when the provider did act. A declined card is not an
//! error but an answer (`ChargeOutcome::Declined`).
//!
//! The wire format is the scenario's own types as JSON ([`ChargeRequest`],
//! [`ChargeOutcome`], [`RefundOutcome`], [`CarrierStatus`]) plus the small request types
//! below; [`crate::providers`] serves the other end.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use reprise_core::BoxFuture;
use reprise_scenarios::checkout::gateway::{
    CarrierStatus, ChargeOutcome, ChargeRequest, ExternalError, RefundOutcome,
};
use reprise_scenarios::checkout::{Carrier, PaymentGateway};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::trace;

/// Largest answer body read from a provider.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// `POST /refunds`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequest {
    pub idempotency_key: String,
}

/// `POST /shipments`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentRequest {
    pub order: String,
}

/// The answer to `POST /shipments`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentRegistered {
    pub tracking: String,
}

/// A hyper-util client over any connector, behind one object type so that
/// [`HttpService`] stays a plain type: production uses [`HttpConnector`], the tests a
/// connector onto a simulated network (`tests/turmoil.rs`).
trait Exchange: Send + Sync {
    fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> BoxFuture<'static, Result<Response<Incoming>, hyper_util::client::legacy::Error>>;
}

impl<C> Exchange for Client<C, Full<Bytes>>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> BoxFuture<'static, Result<Response<Incoming>, hyper_util::client::legacy::Error>> {
        Box::pin(self.request(request))
    }
}

/// One external HTTP service: a base URL, a shared connection pool, a per-call timeout.
#[derive(Clone)]
pub struct HttpService {
    client: Arc<dyn Exchange>,
    name: &'static str,
    base: Arc<str>,
    timeout: Duration,
    /// Span ids of the client spans.
    entropy: Arc<trace::ProcessEntropy>,
}

impl fmt::Debug for HttpService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpService")
            .field("name", &self.name)
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpService {
    /// `base` is an `http://host:port` URL (validated by [`crate::config`]); a trailing
    /// `/` is ignored. Must be called inside a tokio runtime.
    #[must_use]
    pub fn new(name: &'static str, base: &str, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        Self::with_connector(name, base, timeout, connector)
    }

    /// The same over another connector: anything hyper-util's client accepts (a
    /// simulated network in the tests, a TLS connector in a fork that needs one).
    #[must_use]
    pub fn with_connector<C>(
        name: &'static str,
        base: &str,
        timeout: Duration,
        connector: C,
    ) -> Self
    where
        C: Connect + Clone + Send + Sync + 'static,
    {
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(32)
            .build(connector);
        HttpService {
            client: Arc::new(client),
            name,
            base: base.trim_end_matches('/').into(),
            timeout,
            entropy: Arc::default(),
        }
    }

    /// One JSON exchange. See the module docs for the error classes.
    ///
    /// # Errors
    /// [`ExternalError::Timeout`] past the call timeout, [`ExternalError::Unavailable`]
    /// for everything else that is not a 2xx answer with a decodable body.
    pub async fn call<Answer: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, ExternalError> {
        let uri = format!("{}{path}", self.base);
        let unavailable =
            |what: String| ExternalError::Unavailable(format!("{}: {what}", self.name));
        // Under a trace (a service handling a traced command), the call is a client span
        // whose context the provider gets in `traceparent`.
        let traced = trace::client_span(self.name, method.as_str(), &uri, self.entropy.as_ref());
        let mut request = Request::builder()
            .method(method)
            .uri(&uri)
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/json");
        if let Some((_, context)) = &traced {
            request = request.header(trace::TRACEPARENT, context.to_string());
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| unavailable(format!("bad request to {uri}: {e}")))?;
        let Some((span, _)) = traced else {
            return self.exchange(request, &uri).await;
        };
        let answer = self.exchange(request, &uri).instrument(span.clone()).await;
        if let Err(error) = &answer {
            let kind = match error {
                ExternalError::Timeout => "timeout",
                _ => "unavailable",
            };
            span.record("error.type", kind);
            span.record("otel.status_code", "ERROR");
        }
        answer
    }

    /// One exchange within the call timeout.
    async fn exchange<Answer: DeserializeOwned>(
        &self,
        request: Request<Full<Bytes>>,
        uri: &str,
    ) -> Result<Answer, ExternalError> {
        let unavailable =
            |what: String| ExternalError::Unavailable(format!("{}: {what}", self.name));
        let exchange = async {
            let response = self
                .client
                .send(request)
                .await
                .map_err(|e| unavailable(format!("{uri}: {}", error_chain(&e))))?;
            let status = response.status();
            tracing::Span::current().record("http.response.status_code", status.as_u16());
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| unavailable(format!("{uri}: reading the answer: {e}")))?
                .to_bytes();
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body);
                let snippet: String = text.chars().take(200).collect();
                return Err(unavailable(format!("{uri} answered {status}: {snippet}")));
            }
            serde_json::from_slice(&body)
                .map_err(|e| unavailable(format!("{uri}: undecodable answer: {e}")))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(ExternalError::Timeout),
        }
    }
}

/// `error` and its sources, `: `-separated (hyper-util's errors say little on their own).
#[must_use]
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn encode(value: &impl Serialize) -> Result<Vec<u8>, ExternalError> {
    serde_json::to_vec(value)
        .map_err(|e| ExternalError::Unavailable(format!("cannot encode a request: {e}")))
}

/// [`PaymentGateway`] over HTTP: `POST /charges`, `POST /refunds`.
#[derive(Clone, Debug)]
pub struct HttpPaymentGateway {
    pub service: HttpService,
}

impl HttpPaymentGateway {
    #[must_use]
    pub fn new(base: &str, timeout: Duration) -> Self {
        HttpPaymentGateway {
            service: HttpService::new("payment provider", base, timeout),
        }
    }
}

impl PaymentGateway for HttpPaymentGateway {
    fn charge(
        &self,
        request: ChargeRequest,
    ) -> BoxFuture<'static, Result<ChargeOutcome, ExternalError>> {
        let service = self.service.clone();
        Box::pin(async move {
            let body = encode(&request)?;
            service.call(Method::POST, "/charges", Some(body)).await
        })
    }

    fn refund(
        &self,
        idempotency_key: String,
    ) -> BoxFuture<'static, Result<RefundOutcome, ExternalError>> {
        let service = self.service.clone();
        Box::pin(async move {
            let body = encode(&RefundRequest { idempotency_key })?;
            service.call(Method::POST, "/refunds", Some(body)).await
        })
    }
}

/// [`Carrier`] over HTTP: `POST /shipments`, `GET /shipments/{order}`.
#[derive(Clone, Debug)]
pub struct HttpCarrier {
    pub service: HttpService,
}

impl HttpCarrier {
    #[must_use]
    pub fn new(base: &str, timeout: Duration) -> Self {
        HttpCarrier {
            service: HttpService::new("carrier", base, timeout),
        }
    }
}

/// Order ids are `[A-Za-z0-9_-]` (the API refuses anything else), but a path segment is
/// escaped anyway.
fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl Carrier for HttpCarrier {
    fn register(&self, order: String) -> BoxFuture<'static, Result<String, ExternalError>> {
        let service = self.service.clone();
        Box::pin(async move {
            let body = encode(&ShipmentRequest { order })?;
            let registered: ShipmentRegistered =
                service.call(Method::POST, "/shipments", Some(body)).await?;
            Ok(registered.tracking)
        })
    }

    fn track(&self, order: String) -> BoxFuture<'static, Result<CarrierStatus, ExternalError>> {
        let service = self.service.clone();
        Box::pin(async move {
            let path = format!("/shipments/{}", path_segment(&order));
            service.call(Method::GET, &path, None).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(path_segment("abc-1_2"), "abc-1_2");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }

    #[tokio::test]
    async fn a_refused_connection_is_unavailable_and_silence_is_a_timeout() {
        // Nothing listens on port 9 of loopback (discard): refused at once.
        let gateway = HttpPaymentGateway::new("http://127.0.0.1:9", Duration::from_secs(2));
        match gateway.refund("k".into()).await {
            Err(ExternalError::Unavailable(why)) => {
                assert!(why.contains("payment provider"), "{why}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        // A listener that never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let _held = tokio::spawn(async move {
            let mut sockets = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                sockets.push(socket);
            }
        });
        let carrier = HttpCarrier::new(&format!("http://{address}"), Duration::from_millis(200));
        assert_eq!(
            carrier.track("o1".into()).await,
            Err(ExternalError::Timeout)
        );
    }
}
