//! Trace context propagation: one order is one trace, from the HTTP request to the
//! provider call, across the store, the bus and every service.
//!
//! The context is plain W3C `traceparent` text ([`TraceParent`]), so propagation works
//! without any tracing backend; with the `otel` feature the spans below are exported over
//! OTLP with the same ids ([`crate::otel`]). The path:
//!
//! 1. **HTTP** ([`server_span`]): the request's `traceparent` header is the parent of the
//!    server span (a request without one starts a trace); the span's context is *current*
//!    while the handler runs ([`trace::in_trace`]).
//! 2. **Store** ([`TracedStore`]): an append under a current context gets a `db` client
//!    span, and its events carry that span's context in `Metadata::traceparent` (stored in
//!    the `traceparent` column).
//! 3. **Bus**: the relay publishes each traced event in a `send` span whose context the
//!    message carries in its `traceparent` header (`reprise_host::relay`).
//! 4. **Consumers**: the consume loop handles a traced message in a `process` span, child
//!    of the header's context, current while the handler runs (`reprise_host::consume`);
//!    the events it appends (2 again) and the commands it sends (the saga's
//!    `BusDispatcher`: a `send` span, header) continue the trace.
//! 5. **Tasks**: the work a handler starts on the runtime — the saga instance's effects,
//!    which persist its reaction and dispatch its commands — keeps the context of the code
//!    that spawned it ([`TracedRuntime`]).
//! 6. **Provider calls** ([`client_span`]): an HTTP client span, its context in the
//!    request's `traceparent` header; the fake providers answer inside a server span
//!    ([`server_span`] again).
//!
//! Span and attribute names follow OpenTelemetry's semantic conventions (`http.*`,
//! `db.*`, `messaging.*`, `server.*`, `url.*`); `otel.name` and `otel.kind` set the
//! exported name and kind. Span ids come from the runtime's entropy, or from the
//! OpenTelemetry layer when one is installed. Work outside any trace (the relay's polls,
//! the shipping tracker, health checks) makes no span here.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use reprise_core::event::trace::{self, TraceParent};
use reprise_core::{
    AppendBatch, AppendReceipt, BoxFuture, Clock, Entropy, EventStore, RecordedEvent, Runtime,
    SharedRuntime, Snapshot, Spawner, StoreError, StreamId, Timestamp,
};
use tracing::Instrument;

/// The W3C header name.
pub const TRACEPARENT: &str = "traceparent";

/// The context in a `traceparent` header, if it is valid (an invalid one is ignored, as
/// W3C Trace Context asks).
#[must_use]
pub fn extract(headers: &HeaderMap) -> Option<TraceParent> {
    headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
}

/// An HTTP server span (`http.*` conventions) continuing the request's `traceparent` or
/// starting a trace, and its context. `route` is the matched route template.
#[must_use]
pub fn server_span(
    method: &str,
    route: &str,
    headers: &HeaderMap,
    entropy: &dyn Entropy,
) -> (tracing::Span, TraceParent) {
    let span = tracing::info_span!(
        "http",
        method,
        route,
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let context = match extract(headers) {
        Some(parent) => trace::continue_trace(&span, parent, entropy),
        None => trace::start_trace(&span, entropy),
    };
    (span, context)
}

/// Records the answer's status on a [`server_span`] (5xx: an error, per the conventions).
pub fn record_status(span: &tracing::Span, status: u16) {
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// An HTTP client span (`http.*`, `server.*`, `url.*` conventions) for a call made under
/// the current trace context, and the context to send in its `traceparent` header; `None`
/// outside a trace.
#[must_use]
pub fn client_span(
    service: &str,
    method: &str,
    url: &str,
    entropy: &dyn Entropy,
) -> Option<(tracing::Span, TraceParent)> {
    let parent = trace::current()?;
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest.split('/').next().unwrap_or(rest));
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().unwrap_or(80)),
        None => (authority, 80),
    };
    let span = tracing::info_span!(
        "http.client",
        otel.name = method,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.response.status_code = tracing::field::Empty,
        server.address = host,
        server.port = port,
        url.full = url,
        peer.service = service,
        "error.type" = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let context = trace::continue_trace(&span, parent, entropy);
    Some((span, context))
}

/// Ids for spans that start in this crate's own code (HTTP requests) when no runtime is
/// at hand: SipHash of a counter under keys the OS seeded.
#[derive(Debug)]
pub struct ProcessEntropy {
    keys: std::hash::RandomState,
    counter: std::sync::atomic::AtomicU64,
}

impl Default for ProcessEntropy {
    fn default() -> Self {
        ProcessEntropy {
            keys: std::hash::RandomState::new(),
            counter: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Entropy for ProcessEntropy {
    fn next_u64(&self) -> u64 {
        use std::hash::BuildHasher;
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.keys.hash_one(n)
    }
}

/// The runtime of the services, spawning every task with the trace context current where
/// it was spawned (see the module docs, step 5). Untraced spawns cost one thread-local
/// read.
#[derive(Clone)]
pub struct TracedRuntime(pub SharedRuntime);

impl std::fmt::Debug for TracedRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TracedRuntime").field(&self.0).finish()
    }
}

impl TracedRuntime {
    #[must_use]
    pub fn shared(inner: SharedRuntime) -> SharedRuntime {
        Arc::new(TracedRuntime(inner))
    }
}

impl Clock for TracedRuntime {
    fn now(&self) -> Timestamp {
        self.0.now()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.0.sleep(duration)
    }
}

impl Entropy for TracedRuntime {
    fn next_u64(&self) -> u64 {
        self.0.next_u64()
    }

    fn next_id(&self) -> u128 {
        self.0.next_id()
    }
}

impl Spawner for TracedRuntime {
    fn spawn(&self, name: &'static str, task: BoxFuture<'static, ()>) {
        match trace::current() {
            None => self.0.spawn(name, task),
            Some(context) => self
                .0
                .spawn(name, Box::pin(trace::in_trace(Some(context), task))),
        }
    }
}

impl Runtime for TracedRuntime {
    fn stopwatch_nanos(&self) -> u64 {
        self.0.stopwatch_nanos()
    }
}

/// An event store whose appends under a trace context get a `db` client span (the
/// store's own `reprise_pg` span nests inside it) and carry that span's context in
/// their events' metadata (see the module docs, step 2). Reads pass through untouched.
pub struct TracedStore {
    inner: Arc<dyn EventStore>,
    entropy: Arc<dyn Entropy>,
    /// `db.namespace`: the PostgreSQL schema.
    namespace: Arc<str>,
}

impl std::fmt::Debug for TracedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedStore")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl TracedStore {
    #[must_use]
    pub fn new(inner: Arc<dyn EventStore>, entropy: Arc<dyn Entropy>, namespace: &str) -> Self {
        TracedStore {
            inner,
            entropy,
            namespace: namespace.into(),
        }
    }
}

impl EventStore for TracedStore {
    fn append(
        &self,
        mut batch: AppendBatch,
    ) -> BoxFuture<'static, Result<AppendReceipt, StoreError>> {
        let Some(parent) = trace::current() else {
            return self.inner.append(batch);
        };
        let streams: Vec<&str> = batch.streams.iter().map(|s| s.stream.as_str()).collect();
        let span = tracing::info_span!(
            "reprise.store.append",
            otel.name = "append events",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            db.system = "postgresql",
            db.system.name = "postgresql",
            db.namespace = &*self.namespace,
            db.operation.name = "append",
            db.collection.name = "events",
            db.operation.batch.size = batch.event_count(),
            reprise.streams = %streams.join(","),
            "error.type" = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        let context = trace::continue_trace(&span, parent, self.entropy.as_ref());
        // Events continue the trace from the append span, unless someone set a context
        // of their own on purpose (one other than the current one).
        let current = parent.to_string();
        let text = context.to_string();
        for event in batch.streams.iter_mut().flat_map(|s| s.events.iter_mut()) {
            let metadata = &mut event.metadata;
            if metadata.traceparent.as_ref().is_none_or(|t| *t == current) {
                metadata.traceparent = Some(text.clone());
            }
        }
        let append = span.in_scope(|| self.inner.append(batch));
        let recorded = span.clone();
        Box::pin(
            async move {
                let result = trace::in_trace(Some(context), append).await;
                if let Err(error) = &result {
                    recorded.record("error.type", error.kind());
                    recorded.record("otel.status_code", "ERROR");
                }
                result
            }
            .instrument(span),
        )
    }

    fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<RecordedEvent>, StoreError>> {
        self.inner.read_stream(stream, from_version, limit)
    }

    fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<RecordedEvent>, StoreError>> {
        self.inner.read_all(from_position, limit)
    }

    fn stream_version(&self, stream: &StreamId) -> BoxFuture<'static, Result<u64, StoreError>> {
        self.inner.stream_version(stream)
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'static, Result<(), StoreError>> {
        self.inner.save_snapshot(snapshot)
    }

    fn load_snapshot(
        &self,
        stream: &StreamId,
    ) -> BoxFuture<'static, Result<Option<Snapshot>, StoreError>> {
        self.inner.load_snapshot(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reprise_core::{EventId, ExpectedVersion, InMemoryEventStore, Metadata, NewEvent};

    struct Counting(std::sync::atomic::AtomicU64);

    impl Entropy for Counting {
        fn next_u64(&self) -> u64 {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 100
        }
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn event(id: u128) -> NewEvent {
        NewEvent {
            event_id: EventId(id),
            event_type: "E".into(),
            schema_version: 1,
            payload: reprise_core::Payload::from_json_text("{}"),
            metadata: Metadata::default(),
        }
    }

    #[tokio::test]
    async fn appends_under_a_trace_carry_the_append_spans_context() {
        let memory = Arc::new(InMemoryEventStore::new());
        let store = TracedStore::new(
            memory.clone(),
            Arc::new(Counting(std::sync::atomic::AtomicU64::new(0))),
            "shop",
        );
        let stream = StreamId::new("s-1");
        let parent = TraceParent::parse(PARENT).unwrap();
        store
            .append(AppendBatch::single(
                stream.clone(),
                ExpectedVersion::Any,
                vec![event(1)],
            ))
            .await
            .unwrap();
        trace::in_trace(
            Some(parent),
            store.append(trace::enter(Some(parent), || {
                AppendBatch::single(stream.clone(), ExpectedVersion::Any, vec![event(2)])
            })),
        )
        .await
        .unwrap();
        // The span is made when `append` is called: with the context current then.
        let append = trace::enter(Some(parent), || {
            store.append(AppendBatch::single(
                stream.clone(),
                ExpectedVersion::Any,
                vec![event(3)],
            ))
        });
        append.await.unwrap();
        let events = memory.read_stream_now(&stream, 1, 10);
        assert_eq!(
            events[0].metadata.traceparent, None,
            "untraced stays untraced"
        );
        assert_eq!(
            events[1].metadata.traceparent, None,
            "context not current at the call"
        );
        let carried =
            TraceParent::parse(events[2].metadata.traceparent.as_deref().unwrap()).expect("valid");
        assert_eq!(carried.trace_id, parent.trace_id);
        assert_eq!(
            carried.span_id, 100,
            "the append span's id, from the entropy"
        );
    }

    #[test]
    fn requests_continue_a_valid_traceparent_or_start_a_trace() {
        let entropy = Counting(std::sync::atomic::AtomicU64::new(0));
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, PARENT.parse().unwrap());
        let (_, continued) = server_span("POST", "/orders", &headers, &entropy);
        assert_eq!(
            continued.trace_id,
            TraceParent::parse(PARENT).unwrap().trace_id
        );
        headers.insert(TRACEPARENT, "garbage".parse().unwrap());
        let (_, started) = server_span("POST", "/orders", &headers, &entropy);
        assert_ne!(started.trace_id, continued.trace_id);
        assert!(started.is_sampled());
        assert!(client_span("p", "POST", "http://h:1/x", &entropy).is_none());
        let (_, child) = trace::enter(Some(continued), || {
            client_span("p", "POST", "http://h:1/x", &entropy)
        })
        .unwrap();
        assert_eq!(child.trace_id, continued.trace_id);
        assert_ne!(child.span_id, continued.span_id);
    }
}
