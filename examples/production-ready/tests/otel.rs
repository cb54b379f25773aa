//! OpenTelemetry export (feature `otel`): one order is one trace.
//!
//! An OTLP/HTTP receiver runs inside the test (axum on loopback, decoding each
//! `ExportTraceServiceRequest` with the OTLP protobuf definitions). The service and both
//! fake providers export to it. The test places one order with its own `traceparent`,
//! waits until the order is terminal, and asserts that the spans of that order share the
//! request's trace id and that the parent links connect, across processes:
//!
//! HTTP request (server) → store append → relay send (producer) → saga process (consumer)
//! → … → payments process (consumer) → provider call (client) → provider (server).
//!
//! Needs `DATABASE_URL` and `KAFKA_BOOTSTRAP`, like `tests/shop.rs`.

#![cfg(feature = "otel")]
// A test of processes: it sleeps, reads the wall clock and reads child output on threads.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use hyper::Method;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use parking_lot::Mutex;
use prost::Message as _;
use support::{Shop, ShopOptions, await_terminal, request};

/// One received span, flattened.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    /// OTLP `SpanKind`: 2 server, 3 client, 4 producer, 5 consumer.
    kind: i32,
    attributes: BTreeMap<String, String>,
}

impl Received {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

type Spans = Arc<Mutex<Vec<Received>>>;

/// `POST /v1/traces`: an OTLP/HTTP protobuf export.
async fn export(State(spans): State<Spans>, body: Bytes) -> (StatusCode, Vec<u8>) {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut received = spans.lock();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .and_then(|a| a.get("service.name").cloned())
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                received.push(Received {
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    name: span.name.clone(),
                    kind: span.kind,
                    attributes: attributes(&span.attributes),
                });
            }
        }
    }
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    (StatusCode::OK, answer)
}

/// Starts the receiver; its base URL.
async fn receiver(spans: Spans) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let address = listener.local_addr().expect("address");
    let router = Router::new()
        .route("/v1/traces", post(export))
        .with_state(spans);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{address}")
}

/// The ancestors of `span` within `trace` (nearest first), following parent ids.
fn ancestors<'a>(span: &'a Received, trace: &'a [Received]) -> Vec<&'a Received> {
    let by_id: BTreeMap<&str, &Received> = trace.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut chain = Vec::new();
    let mut parent = span.parent.as_str();
    while let Some(next) = by_id.get(parent) {
        chain.push(*next);
        parent = next.parent.as_str();
        assert!(chain.len() < 200, "a parent cycle");
    }
    chain
}

fn describe(chain: &[&Received]) -> String {
    chain
        .iter()
        .map(|s| format!("{} [{}] ({})", s.name, s.kind, s.service))
        .collect::<Vec<_>>()
        .join("\n  <- ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_is_one_trace_from_the_request_to_the_provider() {
    let spans: Spans = Arc::default();
    let endpoint = receiver(Arc::clone(&spans)).await;
    let shop = Shop::start(
        "otel",
        ShopOptions {
            env: vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
                ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ],
            ..ShopOptions::default()
        },
    )
    .await;
    let base = shop.url();

    // The caller's own span: the trace id the whole order must keep.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos();
    let trace_id = format!("{:032x}", nanos ^ 0x5eed_0000_0000_0000_0000_0000_0000_0001);
    let caller = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{caller}-01");
    let body = serde_json::json!({"customer": "ada", "lines": [{"sku": "espresso-cup", "quantity": 1}], "card": 1})
        .to_string();
    let answer = request(
        Method::POST,
        &format!("{base}/orders"),
        &[
            ("content-type", "application/json"),
            ("traceparent", &traceparent),
        ],
        Some(&body),
    )
    .await
    .expect("an answer");
    assert_eq!(answer.status.as_u16(), 202, "{}", answer.text());
    let order_id = answer.json()["order_id"]
        .as_str()
        .expect("order id")
        .to_owned();
    let view = await_terminal(&base, &order_id, Duration::from_secs(60)).await;
    assert_eq!(view["status"], "completed", "{view}");

    // Wait for the exports: the provider's server span is the last link of the chain.
    let deadline = Instant::now() + Duration::from_secs(30);
    let trace: Vec<Received> = loop {
        let trace: Vec<Received> = spans
            .lock()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        let charged = trace.iter().any(|s| {
            s.kind == SERVER
                && s.attr("http.route") == Some("/charges")
                && s.service.contains("payment")
        });
        if charged {
            break trace;
        }
        assert!(
            Instant::now() < deadline,
            "no provider span in trace {trace_id} within 30 s; spans of the trace:\n{:#?}\nlogs:\n{}",
            trace,
            shop.service().log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // One trace: every span that names the order (a message key, an appended stream)
    // belongs to the request's trace.
    let everything = spans.lock().clone();
    let about_order: Vec<&Received> = everything
        .iter()
        .filter(|s| s.attributes.values().any(|v| v.contains(&order_id)))
        .collect();
    assert!(!about_order.is_empty());
    for span in &about_order {
        assert_eq!(
            span.trace_id, trace_id,
            "a span of order {order_id} in another trace: {span:#?}"
        );
    }

    // The HTTP server span continues the caller's span.
    let http = trace
        .iter()
        .find(|s| s.kind == SERVER && s.attr("http.route") == Some("/orders"))
        .expect("the request's server span");
    assert_eq!(http.parent, caller, "{http:#?}");
    assert_eq!(http.service, "reprise-shop");
    assert_eq!(http.attr("http.request.method"), Some("POST"));
    assert_eq!(http.attr("http.response.status_code"), Some("202"));
    assert_eq!(http.name, "POST /orders");

    // The provider's span: child of the service's client span (across processes), whose
    // ancestors lead back to the HTTP request through consumers, sends and appends.
    let provider = trace
        .iter()
        .find(|s| s.kind == SERVER && s.attr("http.route") == Some("/charges"))
        .expect("the provider's server span");
    let chain = ancestors(provider, &trace);
    let text = describe(&chain);
    eprintln!(
        "trace {trace_id}, from the provider up:\n  {} [{}] ({})\n  <- {text}",
        provider.name, provider.kind, provider.service
    );
    let call = chain.first().expect("the provider span has a parent");
    assert_eq!(call.kind, CLIENT, "{text}");
    assert_eq!(call.service, "reprise-shop");
    assert_eq!(call.attr("http.request.method"), Some("POST"));
    assert_eq!(
        call.attr("http.response.status_code"),
        Some("200"),
        "{text}"
    );
    assert!(
        call.attr("url.full")
            .is_some_and(|u| u.ends_with("/charges"))
    );
    assert_eq!(
        chain.last().map(|s| s.span_id.as_str()),
        Some(http.span_id.as_str()),
        "the chain from the provider call must end at the HTTP request:\n  {text}"
    );

    // In order, nearest first: the payments consumer, the saga's command send, the saga
    // consumer, the relay's send, a store append; the HTTP request at the root.
    let position = |what: &str, found: &dyn Fn(&Received) -> bool| -> usize {
        chain
            .iter()
            .position(|s| found(s))
            .unwrap_or_else(|| panic!("no {what} in the chain:\n  {text}"))
    };
    let payments = position("payments consumer", &|s| {
        s.kind == CONSUMER
            && s.attr("messaging.system") == Some("kafka")
            && s.attr("messaging.operation.type") == Some("process")
            && s.attr("messaging.consumer.group.name")
                .is_some_and(|g| g.contains("payment"))
    });
    let command = position("command send", &|s| {
        s.kind == PRODUCER
            && s.attr("messaging.destination.name")
                .is_some_and(|d| d.contains("payment"))
            && s.attr("reprise.command").is_some()
    });
    let saga = position("saga consumer", &|s| {
        s.kind == CONSUMER
            && s.attr("messaging.consumer.group.name")
                .is_some_and(|g| g.contains("saga"))
    });
    let relay = position("relay send", &|s| {
        s.kind == PRODUCER && s.attr("reprise.relay").is_some()
    });
    let append = position("store append", &|s| {
        s.attr("db.system") == Some("postgresql") && s.attr("db.operation.name") == Some("append")
    });
    assert!(
        payments < command && command < saga && saga < relay && relay < append,
        "out of order:\n  {text}"
    );
    // The order's first append (OrderPlaced with the request record) is the request's child.
    let first_append = chain[chain.len() - 2];
    assert_eq!(
        first_append.attr("db.operation.name"),
        Some("append"),
        "{text}"
    );
    assert!(
        first_append
            .attr("reprise.streams")
            .is_some_and(|s| s.contains(&format!("order-{order_id}"))),
        "{text}"
    );
    for span in &chain {
        if span.kind == PRODUCER || span.kind == CONSUMER {
            assert_eq!(span.attr("messaging.system"), Some("kafka"), "{span:#?}");
            assert!(
                span.attr("messaging.destination.name").is_some(),
                "{span:#?}"
            );
        }
    }
}
