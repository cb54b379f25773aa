//! OpenTelemetry (feature `otel`): the process's `tracing` spans exported over OTLP/HTTP
//! with protobuf bodies, with the ids that travel in `traceparent` (`crate::trace`).
//!
//! - **Export**: `opentelemetry-otlp`'s HTTP exporter behind the SDK's batch span
//!   processor, sending with the hyper-util client this crate already uses (no tonic, no
//!   reqwest). Configured by the standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; export is on only when one is set, and
//!   `OTEL_SDK_DISABLED=true` turns it off), `OTEL_EXPORTER_OTLP_HEADERS`,
//!   `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, and the batch processor's
//!   `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`, ….
//! - **Which spans**: those `SHOP_OTEL_FILTER` enables (an `EnvFilter`; default
//!   [`DEFAULT_FILTER`]: the `info` spans of a trace — HTTP server and client, store
//!   appends, relay and command sends, consumers). The store's own per-operation spans
//!   and the broker clients' (`debug`) stay out unless asked for: most of them (the
//!   relay's polls) belong to no trace.
//! - **Ids**: [`OtelSpanIds`] makes the span carrying a propagated `traceparent` a child of
//!   it (W3C TraceContext: a remote parent) and hands the exported span's own ids back to
//!   `reprise_core::event::trace`, so the `traceparent` written into events and headers
//!   names a span that exists in the backend.
//! - **Shutdown**: [`Otel::shutdown`] flushes what is queued (the binary calls it after
//!   the service stopped, while the tokio runtime still runs).

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use reprise_core::event::trace::{self, SpanIds, TraceParent};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The spans exported unless `SHOP_OTEL_FILTER` says otherwise.
pub const DEFAULT_FILTER: &str = "info,reprise_postgres=off,sqlx=off";

/// Largest answer body read from the collector.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Bound on one export request.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The installed exporter; [`Otel::shutdown`] flushes it.
pub struct Otel {
    provider: SdkTracerProvider,
}

impl fmt::Debug for Otel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Otel").finish_non_exhaustive()
    }
}

impl Otel {
    /// Exports every span still queued and stops the exporter.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("reprise-shop: flushing OpenTelemetry spans: {error}");
        }
    }
}

/// Whether the environment asks for export (see the module docs).
#[must_use]
pub fn enabled() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim() == "true");
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The span filter of the OpenTelemetry layer.
#[must_use]
pub fn filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("SHOP_OTEL_FILTER")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER))
}

/// Builds the exporter and its `tracing` layer for service `service` (overridden by
/// `OTEL_SERVICE_NAME`), installs [`OtelSpanIds`], and sends with a client spawned on
/// `runtime`.
///
/// # Errors
/// The exporter's configuration is invalid (e.g. the endpoint is not a URL).
pub fn init<S>(
    service: &'static str,
    runtime: tokio::runtime::Handle,
) -> Result<(Otel, impl tracing_subscriber::Layer<S>), String>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(TokioHttpClient::new(runtime))
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service);
    }
    let resource = resource
        .with_attribute(KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION").to_owned(),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("reprise-shop");
    trace::install_span_ids(Box::new(OtelSpanIds));
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false);
    Ok((Otel { provider }, layer))
}

/// Span ids from the OpenTelemetry layer (see the module docs).
#[derive(Debug)]
pub struct OtelSpanIds;

impl SpanIds for OtelSpanIds {
    fn adopt(&self, span: &tracing::Span, parent: Option<TraceParent>) -> Option<TraceParent> {
        if span.is_disabled() {
            return None;
        }
        let parent = match parent {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(p.trace_id.to_be_bytes()),
                SpanId::from_bytes(p.span_id.to_be_bytes()),
                TraceFlags::new(p.flags),
                true,
                TraceState::default(),
            )),
            // A new trace: no parent, not even the contextual one.
            None => Context::new(),
        };
        span.set_parent(parent).ok()?;
        let context = span.context();
        let own = context.span().span_context().clone();
        own.is_valid().then(|| TraceParent {
            trace_id: u128::from_be_bytes(own.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(own.span_id().to_bytes()),
            flags: own.trace_flags().to_u8(),
        })
    }
}

/// The exporter's HTTP client: hyper-util's, each request run on the service's tokio
/// runtime (the SDK's batch processor exports from a thread of its own, outside it).
#[derive(Clone)]
struct TokioHttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
}

impl fmt::Debug for TokioHttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokioHttpClient").finish_non_exhaustive()
    }
}

impl TokioHttpClient {
    fn new(runtime: tokio::runtime::Handle) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = {
            let _entered = runtime.enter();
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector)
        };
        TokioHttpClient { client, runtime }
    }
}

#[async_trait::async_trait]
impl HttpClient for TokioHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let (parts, body) = request.into_parts();
        let request = hyper::Request::from_parts(parts, Full::new(body));
        let exchange = async move {
            let response = client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        let task = self
            .runtime
            .spawn(async move { tokio::time::timeout(EXPORT_TIMEOUT, exchange).await });
        match task.await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err("OTLP export timed out".into()),
            Err(error) => Err(format!("OTLP export task: {error}").into()),
        }
    }
}
