//! Events as stored and transported: identity, type, schema version, payload, metadata.
//!
//! **Serialization format: JSON** (`serde_json`). Events outlive the code that wrote them,
//! so the format must survive schema evolution: JSON is self-describing (a new optional
//! field deserializes old events through `#[serde(default)]`, a removed field is ignored),
//! an upcaster can rewrite old shapes as plain `serde_json::Value` surgery, and the
//! PostgreSQL adapter stores it as `json` (byte for byte; `payload::jsonb` queries it) that an
//! operator can read during an incident.
//! Compact binary formats (bincode, postcard) are positional and break on the first field
//! added in the middle; schema-registry formats (Avro, Protobuf) need a code generator and
//! a registry for a gain that matters only at volumes where the bus compresses anyway.

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// A domain event type.
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable name stored with every event (`"OrderPlaced"`). Renaming a Rust type
    /// must not change it.
    fn event_type(&self) -> &'static str;

    /// The schema version of this type as written by the current code. Bump it when the
    /// shape changes incompatibly, and register an [`Upcaster`] for the old version.
    fn schema_version() -> u32 {
        1
    }
}

/// A stream name being written by [`StreamId::of`]: names are short, so most never leave
/// the stack.
struct NameBuffer(smallvec::SmallVec<[u8; 64]>);

impl fmt::Write for NameBuffer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The name of an event stream, e.g. `order-42`. One aggregate instance, one stream.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamId(Arc<str>);

impl StreamId {
    #[must_use]
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        StreamId(name.into())
    }

    /// `category-id`, the usual naming scheme.
    #[must_use]
    pub fn of(category: &str, id: impl fmt::Display) -> Self {
        // Hot (every load, append and inbox marker names a stream): written on the stack
        // and copied once, into the `Arc`. `format!` allocated a `String`, grew it and
        // then copied it into a second allocation.
        let mut name = NameBuffer(smallvec::SmallVec::new());
        name.0.extend_from_slice(category.as_bytes());
        name.0.push(b'-');
        let _ = fmt::Write::write_fmt(&mut name, format_args!("{id}"));
        let name = std::str::from_utf8(&name.0).expect("written from `str`s only");
        StreamId(Arc::from(name))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the first `-`: the aggregate type.
    #[must_use]
    pub fn category(&self) -> &str {
        self.0.split('-').next().unwrap_or(&self.0)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for StreamId {
    fn from(value: &str) -> Self {
        StreamId::new(value)
    }
}

impl From<String> for StreamId {
    fn from(value: String) -> Self {
        StreamId::new(value)
    }
}

/// A globally unique event id. Producers choose it (from the environment's entropy), so a
/// retried append carries the same ids and consumers deduplicate on them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub u128);

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for EventId {
    /// Formatted as a UUID so it round-trips through `uuid` columns and headers.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = format!("{:032x}", self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

/// Serialized event body (JSON text). Cheap to clone: stores and buses pass it around a lot.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Payload(Arc<str>);

impl Payload {
    /// Serializes a value as JSON.
    ///
    /// # Errors
    /// Fails if the value's `Serialize` impl fails (e.g. a map with non-string keys).
    pub fn encode<T: Serialize>(value: &T) -> Result<Self, serde_json::Error> {
        Ok(Payload(serde_json::to_string(value)?.into()))
    }

    /// Takes JSON text as it is (from a database row or a message).
    #[must_use]
    pub fn from_json_text(text: impl Into<Arc<str>>) -> Self {
        Payload(text.into())
    }

    /// # Errors
    /// Fails if the text does not deserialize into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Payload::from_json_text)
    }
}

/// Who caused an event and under which trace: carried from command to subscriber.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The id shared by everything one user request caused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<u128>,
    /// The id of the message (command or event) that directly caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<u128>,
    /// W3C `traceparent` of the span that produced the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// An event about to be appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub event_id: EventId,
    pub event_type: Arc<str>,
    pub schema_version: u32,
    pub payload: Payload,
    pub metadata: Metadata,
}

impl NewEvent {
    /// Serializes a domain event.
    ///
    /// # Errors
    /// Fails if the event's `Serialize` impl fails.
    pub fn encode<E: Event>(
        event_id: EventId,
        event: &E,
        metadata: Metadata,
    ) -> Result<Self, serde_json::Error> {
        Ok(NewEvent {
            event_id,
            event_type: event.event_type().into(),
            schema_version: E::schema_version(),
            payload: Payload::encode(event)?,
            metadata,
        })
    }
}

/// An event as the store recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    pub stream: StreamId,
    /// 1-based position within the stream.
    pub version: u64,
    /// Position across all streams, in commit order. Strictly increasing, but not
    /// necessarily contiguous (PostgreSQL derives it from transaction ids); "gap-free"
    /// means a reader never skips a committed event, not that every number is used.
    pub position: u64,
    pub event_id: EventId,
    pub event_type: Arc<str>,
    pub schema_version: u32,
    pub payload: Payload,
    pub metadata: Metadata,
    pub recorded_at: Timestamp,
}

impl RecordedEvent {
    /// Deserializes the payload after running the registered upcasters.
    ///
    /// # Errors
    /// [`DecodeError`] when no upcaster bridges the stored schema version or the payload
    /// does not match the type.
    pub fn decode<E: Event>(&self, upcasters: &Upcasters) -> Result<E, DecodeError> {
        let current = E::schema_version();
        if self.schema_version == current {
            return self.payload.decode().map_err(|e| DecodeError::Payload {
                event_type: self.event_type.to_string(),
                reason: e.to_string(),
            });
        }
        let value = upcasters.upcast(
            &self.event_type,
            self.schema_version,
            current,
            &self.payload,
        )?;
        serde_json::from_value(value).map_err(|e| DecodeError::Payload {
            event_type: self.event_type.to_string(),
            reason: e.to_string(),
        })
    }
}

/// Why a stored event could not be turned back into a domain event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("event {event_type}: payload does not match the type: {reason}")]
    Payload { event_type: String, reason: String },
    #[error("event {event_type}: no upcaster from schema v{from} towards v{to}")]
    NoUpcaster {
        event_type: String,
        from: u32,
        to: u32,
    },
    #[error("event {event_type}: stored schema v{stored} is newer than this code's v{known}")]
    FromTheFuture {
        event_type: String,
        stored: u32,
        known: u32,
    },
}

type UpcastFn = Arc<dyn Fn(serde_json::Value) -> serde_json::Value + Send + Sync>;

/// Rewrites stored payloads of old schema versions into the current shape, one version
/// step at a time (v1 → v2 → v3), so each upcaster stays small and testable.
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: std::collections::BTreeMap<(String, u32), UpcastFn>,
}

impl Upcasters {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the step from `from_version` to `from_version + 1` for `event_type`.
    #[must_use]
    pub fn with(
        mut self,
        event_type: &str,
        from_version: u32,
        step: impl Fn(serde_json::Value) -> serde_json::Value + Send + Sync + 'static,
    ) -> Self {
        self.steps
            .insert((event_type.to_owned(), from_version), Arc::new(step));
        self
    }

    /// # Errors
    /// See [`DecodeError`].
    pub fn upcast(
        &self,
        event_type: &str,
        from: u32,
        to: u32,
        payload: &Payload,
    ) -> Result<serde_json::Value, DecodeError> {
        if from > to {
            return Err(DecodeError::FromTheFuture {
                event_type: event_type.to_owned(),
                stored: from,
                known: to,
            });
        }
        let mut value: serde_json::Value =
            serde_json::from_str(payload.as_str()).map_err(|e| DecodeError::Payload {
                event_type: event_type.to_owned(),
                reason: e.to_string(),
            })?;
        for version in from..to {
            let step = self
                .steps
                .get(&(event_type.to_owned(), version))
                .ok_or_else(|| DecodeError::NoUpcaster {
                    event_type: event_type.to_owned(),
                    from: version,
                    to,
                })?;
            value = step(value);
        }
        Ok(value)
    }
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.steps.keys()).finish()
    }
}

pub mod trace {
    //! W3C trace context (`traceparent`) as plain data, and the *current* one of a task.
    //!
    //! Propagation needs no tracing backend: a [`TraceParent`] is parsed from an HTTP
    //! header or a bus message's `traceparent` header, carried by events in
    //! [`Metadata::traceparent`](super::Metadata::traceparent), and written back into the
    //! headers of what the work causes. Inside a process it travels as the *current*
    //! context of a future ([`in_trace`], read with [`current`]): set while the future is
    //! polled, so it follows the work across await points and threads and costs one
    //! thread-local read where nothing sets it (the simulator never does).
    //!
    //! New span ids come from the environment's [`Entropy`] ([`continue_trace`]) — or, once
    //! an OpenTelemetry layer is installed ([`install_span_ids`]), from the `tracing` span
    //! that represents the work, so the ids on the wire are those of the exported spans.

    use std::cell::Cell;
    use std::fmt;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::OnceLock;
    use std::task::{Context, Poll};

    use crate::runtime::Entropy;

    /// A W3C `traceparent`: trace id, the id of the span that is the parent of whatever
    /// receives it, and the trace flags (bit 0: sampled).
    #[derive(Clone, Copy, PartialEq, Eq, Hash)]
    pub struct TraceParent {
        pub trace_id: u128,
        pub span_id: u64,
        pub flags: u8,
    }

    /// Trace flag bit 0.
    pub const SAMPLED: u8 = 0x01;

    impl TraceParent {
        /// A new trace's first span (sampled). Zero ids are invalid in W3C, so a zero is
        /// replaced by 1.
        #[must_use]
        pub fn root(trace_id: u128, span_id: u64) -> Self {
            TraceParent {
                trace_id: trace_id.max(1),
                span_id: span_id.max(1),
                flags: SAMPLED,
            }
        }

        /// A child span of this one: same trace and flags, span id `span_id`.
        #[must_use]
        pub fn child(self, span_id: u64) -> Self {
            TraceParent {
                span_id: span_id.max(1),
                ..self
            }
        }

        #[must_use]
        pub fn is_sampled(self) -> bool {
            self.flags & SAMPLED != 0
        }

        /// Parses a `traceparent` header (W3C Trace Context, level 1): version `00` exactly
        /// `00-<32 hex>-<16 hex>-<2 hex>`; a higher version may carry more fields after
        /// those; version `ff`, upper-case hex and all-zero ids are invalid.
        #[must_use]
        pub fn parse(text: &str) -> Option<Self> {
            let text = text.trim();
            let bytes = text.as_bytes();
            if bytes.len() < 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
                return None;
            }
            let version = hex(&text[0..2])?;
            if version == 0xff || (version == 0 && bytes.len() != 55) {
                return None;
            }
            if bytes.len() > 55 && bytes[55] != b'-' {
                return None;
            }
            let trace_id = hex(&text[3..35])?;
            let span_id = u64::try_from(hex(&text[36..52])?).ok()?;
            let flags = u8::try_from(hex(&text[53..55])?).ok()?;
            (trace_id != 0 && span_id != 0).then_some(TraceParent {
                trace_id,
                span_id,
                flags,
            })
        }

        /// The trace id as 32 lower-case hex digits (for log fields).
        #[must_use]
        pub fn trace_id_hex(self) -> String {
            format!("{:032x}", self.trace_id)
        }
    }

    /// Lower-case hex only (W3C); at most 32 digits.
    fn hex(text: &str) -> Option<u128> {
        if text.is_empty()
            || text.len() > 32
            || !text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        u128::from_str_radix(text, 16).ok()
    }

    impl fmt::Display for TraceParent {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "00-{:032x}-{:016x}-{:02x}",
                self.trace_id, self.span_id, self.flags
            )
        }
    }

    impl fmt::Debug for TraceParent {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            fmt::Display::fmt(self, f)
        }
    }

    thread_local! {
        static CURRENT: Cell<Option<TraceParent>> = const { Cell::new(None) };
    }

    /// The trace context of the work being polled on this thread, if any.
    #[must_use]
    pub fn current() -> Option<TraceParent> {
        CURRENT.with(Cell::get)
    }

    /// Restores the previous current context when dropped (also on a panic).
    struct Restore(Option<TraceParent>);

    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }

    /// Makes `context` the current one while `f` runs.
    pub fn enter<T>(context: Option<TraceParent>, f: impl FnOnce() -> T) -> T {
        let _restore = Restore(CURRENT.with(|c| c.replace(context)));
        f()
    }

    /// A future with a current trace context: see [`in_trace`].
    #[must_use = "futures do nothing unless polled"]
    pub struct InTrace<F> {
        context: Option<TraceParent>,
        inner: Pin<Box<F>>,
    }

    impl<F> fmt::Debug for InTrace<F> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("InTrace")
                .field("context", &self.context)
                .finish_non_exhaustive()
        }
    }

    impl<F: Future> Future for InTrace<F> {
        type Output = F::Output;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            let context = self.context;
            enter(context, || self.inner.as_mut().poll(cx))
        }
    }

    /// `future`, with `context` as the [`current`] trace context whenever it is polled.
    pub fn in_trace<F: Future>(context: Option<TraceParent>, future: F) -> InTrace<F> {
        InTrace {
            context,
            inner: Box::pin(future),
        }
    }

    /// Lets a tracing backend own span ids (an OpenTelemetry layer: the ids on the wire
    /// must be those of the exported spans). See [`install_span_ids`].
    pub trait SpanIds: Send + Sync + 'static {
        /// Makes `span` a child of `parent` (a new root without one) in the backend and
        /// returns the span's own context; `None` when the backend does not record
        /// `span` (then the caller makes up an id).
        fn adopt(&self, span: &tracing::Span, parent: Option<TraceParent>) -> Option<TraceParent>;
    }

    static SPAN_IDS: OnceLock<Box<dyn SpanIds>> = OnceLock::new();

    /// Installs the process's [`SpanIds`] (once; later calls are refused: `false`).
    pub fn install_span_ids(ids: Box<dyn SpanIds>) -> bool {
        SPAN_IDS.set(ids).is_ok()
    }

    /// The context of `span`, a new span continuing `parent`: the installed [`SpanIds`]'
    /// answer, or `parent` with a span id drawn from `entropy`. Records the ids in the
    /// span's `trace_id` field when it has one.
    pub fn continue_trace(
        span: &tracing::Span,
        parent: TraceParent,
        entropy: &dyn Entropy,
    ) -> TraceParent {
        let context = SPAN_IDS
            .get()
            .and_then(|ids| ids.adopt(span, Some(parent)))
            .unwrap_or_else(|| parent.child(entropy.next_u64()));
        record(span, context);
        context
    }

    /// The context of `span`, the first span of a new trace (the installed [`SpanIds`]'
    /// answer, or fresh ids from `entropy`).
    pub fn start_trace(span: &tracing::Span, entropy: &dyn Entropy) -> TraceParent {
        let context = SPAN_IDS
            .get()
            .and_then(|ids| ids.adopt(span, None))
            .unwrap_or_else(|| TraceParent::root(entropy.next_id(), entropy.next_u64()));
        record(span, context);
        context
    }

    fn record(span: &tracing::Span, context: TraceParent) {
        if !span.is_disabled() {
            span.record("trace_id", tracing::field::display(context.trace_id_hex()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Renamed {
        full_name: String,
        #[serde(default)]
        nickname: Option<String>,
    }

    impl Event for Renamed {
        fn event_type(&self) -> &'static str {
            "Renamed"
        }
        fn schema_version() -> u32 {
            3
        }
    }

    fn recorded(schema_version: u32, json: &str) -> RecordedEvent {
        RecordedEvent {
            stream: "person-1".into(),
            version: 1,
            position: 1,
            event_id: EventId(1),
            event_type: "Renamed".into(),
            schema_version,
            payload: Payload::from_json_text(json),
            metadata: Metadata::default(),
            recorded_at: Timestamp::EPOCH,
        }
    }

    fn upcasters() -> Upcasters {
        Upcasters::new()
            .with("Renamed", 1, |mut v| {
                v["name"] = serde_json::Value::String(v["first"].as_str().unwrap_or("").into());
                v
            })
            .with("Renamed", 2, |mut v| {
                let name = v["name"].take();
                serde_json::json!({ "full_name": name })
            })
    }

    #[test]
    fn upcasters_chain_old_versions_to_the_current_shape() {
        let event: Renamed = recorded(1, r#"{"first":"Ada"}"#)
            .decode(&upcasters())
            .unwrap();
        assert_eq!(
            event,
            Renamed {
                full_name: "Ada".into(),
                nickname: None
            }
        );
    }

    #[test]
    fn a_missing_upcaster_step_is_a_typed_error() {
        let partial = Upcasters::new().with("Renamed", 2, |v| v);
        let err = recorded(1, "{}").decode::<Renamed>(&partial).unwrap_err();
        assert_eq!(
            err,
            DecodeError::NoUpcaster {
                event_type: "Renamed".into(),
                from: 1,
                to: 3
            }
        );
    }

    #[test]
    fn a_newer_stored_schema_is_refused_not_misread() {
        let err = recorded(4, "{}")
            .decode::<Renamed>(&upcasters())
            .unwrap_err();
        assert!(matches!(
            err,
            DecodeError::FromTheFuture {
                stored: 4,
                known: 3,
                ..
            }
        ));
    }

    #[test]
    fn event_ids_print_as_uuids() {
        assert_eq!(
            EventId(0xabc).to_string(),
            "00000000-0000-0000-0000-000000000abc"
        );
    }

    mod traceparent {
        use super::super::trace::{self, TraceParent};

        const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

        #[test]
        fn parses_and_formats_the_w3c_example() {
            let parsed = TraceParent::parse(EXAMPLE).unwrap();
            assert_eq!(parsed.trace_id, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
            assert_eq!(parsed.span_id, 0x00f0_67aa_0ba9_02b7);
            assert!(parsed.is_sampled());
            assert_eq!(parsed.to_string(), EXAMPLE);
            assert_eq!(
                TraceParent::parse(&format!(" {EXAMPLE} ")),
                Some(parsed),
                "surrounding whitespace is allowed"
            );
        }

        #[test]
        fn refuses_invalid_headers() {
            for bad in [
                "",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            ] {
                assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
            }
            // A later version may append fields.
            let future = format!("01{}-what-comes-next", &EXAMPLE[2..]);
            assert!(TraceParent::parse(&future).is_some());
        }

        #[test]
        fn children_keep_the_trace_and_roots_have_nonzero_ids() {
            let parent = TraceParent::parse(EXAMPLE).unwrap();
            let child = parent.child(7);
            assert_eq!(
                (child.trace_id, child.span_id, child.flags),
                (parent.trace_id, 7, 1)
            );
            let root = TraceParent::root(0, 0);
            assert_eq!((root.trace_id, root.span_id), (1, 1));
            assert_eq!(
                root.to_string(),
                "00-00000000000000000000000000000001-0000000000000001-01"
            );
        }

        #[test]
        fn the_current_context_follows_the_future_and_is_restored() {
            let context = TraceParent::parse(EXAMPLE).unwrap();
            assert_eq!(trace::current(), None);
            let seen = futures::executor::block_on(trace::in_trace(Some(context), async {
                let outer = trace::current();
                let inner = trace::in_trace(None, async { trace::current() }).await;
                (outer, inner, trace::current())
            }));
            assert_eq!(seen, (Some(context), None, Some(context)));
            assert_eq!(trace::current(), None);
            assert_eq!(trace::enter(Some(context), trace::current), Some(context));
            assert_eq!(trace::current(), None);
        }
    }
}
