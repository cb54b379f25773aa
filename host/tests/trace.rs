//! Trace context propagation without any tracing backend (plain W3C `traceparent` text):
//! an event's `Metadata::traceparent` becomes the relay's message header (the context of
//! the relay's send span: same trace, a new span id), a consumer handling a traced message
//! makes a child context current, and what the handler causes carries it — the events a
//! `CommandHandler` appends and the commands a `BusDispatcher` sends. Untraced work stays
//! untraced: no header, no metadata, no entropy drawn.

#[allow(dead_code)]
mod common;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use reprise_core::event::trace::{self, TraceParent};
use reprise_core::event_bus::header;
use reprise_core::testing::TestRuntime;
use reprise_core::{
    AppendBatch, BoxFuture, Delivery, Dispatcher, EventBus, EventId, ExpectedVersion,
    InMemoryEventBus, InMemoryEventStore, InMemoryLeases, Metadata, NewEvent, OutgoingMessage,
    SharedRuntime, Spawner, StreamId,
};
use reprise_host::commands::{self, BusDispatcher, CommandRoute};
use reprise_host::{
    CommandHandler, ConsumerOptions, Handling, MessageHandler, Platform, RelayOptions, Route,
    consume, relay,
};
use serde::{Deserialize, Serialize};

use common::{Counter, CounterCommand};

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn parent() -> TraceParent {
    TraceParent::parse(PARENT).expect("valid")
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Ping(String);

impl CommandRoute for Ping {
    fn topic(&self) -> &'static str {
        "pings"
    }
    fn key(&self) -> String {
        self.0.clone()
    }
    fn name(&self) -> &'static str {
        "Ping"
    }
}

struct Fixture {
    runtime: Arc<TestRuntime>,
    store: Arc<InMemoryEventStore>,
    bus: Arc<InMemoryEventBus>,
    platform: Platform,
}

impl Fixture {
    fn new() -> Self {
        let runtime = TestRuntime::shared(7);
        let store = Arc::new(InMemoryEventStore::new());
        let bus = Arc::new(InMemoryEventBus::new());
        let shared: SharedRuntime = runtime.clone();
        let platform = Platform::new(shared, store.clone(), bus.clone());
        Fixture {
            runtime,
            store,
            bus,
            platform,
        }
    }

    /// Everything published on `topic`, read by a fresh consumer group.
    fn published(&self, topic: &str) -> Vec<Delivery> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let bus = Arc::clone(&self.bus);
        let topic = topic.to_owned();
        self.runtime.spawn(
            "reader",
            Box::pin(async move {
                let mut subscription = bus
                    .subscribe("reader", &[&topic])
                    .await
                    .expect("subscribes");
                while let Ok(delivery) = subscription.next().await {
                    sink.lock().push(delivery);
                }
            }),
        );
        self.runtime.run_until_idle();
        self.runtime.advance(Duration::from_millis(50));
        self.runtime.run_until_idle();
        seen.lock().clone()
    }
}

fn event(id: u128, traceparent: Option<&str>) -> NewEvent {
    common::added(id, 1, 1).with_metadata(Metadata {
        traceparent: traceparent.map(str::to_owned),
        ..Metadata::default()
    })
}

trait WithMetadata {
    fn with_metadata(self, metadata: Metadata) -> Self;
}

impl WithMetadata for NewEvent {
    fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }
}

#[test]
fn the_relay_puts_a_child_of_the_events_trace_context_into_the_header() {
    let f = Fixture::new();
    f.store
        .append_now(&AppendBatch::single(
            StreamId::new("counter-a"),
            ExpectedVersion::NoStream,
            vec![event(1, Some(PARENT)), event(2, None)],
        ))
        .expect("appends");
    let leases = InMemoryLeases::new();
    let options = Arc::new(RelayOptions::new(
        "t",
        vec![Route::new("counter", "counters")],
    ));
    let lease = Arc::new(leases.contender(&options.lease_name()));
    f.runtime.spawn(
        "relay",
        Box::pin(relay::run(f.platform.clone(), options, lease)),
    );
    let published = f.published("counters");
    assert_eq!(published.len(), 2, "{published:?}");
    let traced = TraceParent::parse(
        published[0]
            .headers
            .get(header::TRACEPARENT)
            .expect("the traced event's message carries a traceparent"),
    )
    .expect("valid W3C text");
    assert_eq!(traced.trace_id, parent().trace_id, "same trace");
    assert_eq!(traced.flags, parent().flags);
    assert_ne!(traced.span_id, parent().span_id, "the relay's own span");
    assert_eq!(published[1].headers.get(header::TRACEPARENT), None);
}

/// Records what a handler sees and causes.
struct Recorder {
    handler: CommandHandler<Counter>,
    dispatcher: BusDispatcher<Ping>,
    seen: Mutex<Vec<Option<TraceParent>>>,
}

impl MessageHandler for Recorder {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.seen.lock().push(trace::current());
            let message = reprise_host::inbox::message_id(delivery).expect("has an id");
            let handling = Handling {
                consumer: "g",
                message,
            };
            self.handler
                .execute_until_done(&delivery.key, &CounterCommand::Add(1), Some(handling))
                .await;
            self.dispatcher
                .dispatch(Ping(delivery.key.to_string()))
                .await
                .expect("published");
        })
    }
}

fn incoming(id: u128, key: &str, traceparent: Option<&str>) -> OutgoingMessage {
    let mut message = OutgoingMessage {
        topic: "in".into(),
        key: key.into(),
        payload: reprise_core::Payload::from_json_text("{}"),
        headers: reprise_core::Headers::default().with(
            header::EVENT_ID,
            reprise_host::ids::format_event_id(EventId(id)),
        ),
    };
    if let Some(t) = traceparent {
        message.headers.insert(header::TRACEPARENT, t);
    }
    message
}

#[test]
fn a_consumer_continues_the_trace_of_a_traced_message_in_what_it_causes() {
    let f = Fixture::new();
    let recorder = Arc::new(Recorder {
        handler: CommandHandler::new(&f.platform),
        dispatcher: BusDispatcher::new(f.platform.clone(), 1),
        seen: Mutex::new(Vec::new()),
    });
    f.runtime.spawn(
        "consumer",
        Box::pin(consume::run(
            f.platform.clone(),
            ConsumerOptions::new("g", &["in"]),
            recorder.clone(),
        )),
    );
    f.runtime.run_until_idle();
    let bus = Arc::clone(&f.bus);
    f.runtime.spawn(
        "producer",
        Box::pin(async move {
            bus.publish(vec![incoming(1, "a", Some(PARENT)), incoming(2, "b", None)])
                .await
                .expect("published");
        }),
    );
    f.runtime.run_until_idle();
    f.runtime.advance(Duration::from_millis(50));
    f.runtime.run_until_idle();

    let seen = recorder.seen.lock().clone();
    assert_eq!(seen.len(), 2, "both messages handled");
    let context = seen[0].expect("a traced message makes a context current");
    assert_eq!(context.trace_id, parent().trace_id);
    assert_ne!(context.span_id, parent().span_id, "the consumer's own span");
    assert_eq!(seen[1], None, "an untraced message stays untraced");

    // The events the handler appended continue the trace.
    let stored = f.store.read_stream_now(&StreamId::new("counter-a"), 1, 10);
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].metadata.traceparent.as_deref(),
        Some(context.to_string().as_str())
    );
    let untraced = f.store.read_stream_now(&StreamId::new("counter-b"), 1, 10);
    assert_eq!(untraced[0].metadata.traceparent, None);

    // So do the commands it sent: the dispatcher's send span, a child of the consumer's.
    let pings = f.published("pings");
    assert_eq!(pings.len(), 2);
    let ping = pings.iter().find(|d| &*d.key == "a").expect("ping a");
    let sent =
        TraceParent::parse(ping.headers.get(header::TRACEPARENT).expect("traced")).expect("valid");
    assert_eq!(sent.trace_id, parent().trace_id);
    assert_ne!(sent.span_id, context.span_id);
    let other = pings.iter().find(|d| &*d.key == "b").expect("ping b");
    assert_eq!(other.headers.get(header::TRACEPARENT), None);
}

#[test]
fn encode_carries_the_current_context() {
    let id = EventId(9);
    let plain = commands::encode(&Ping("x".into()), id).expect("encodes");
    assert_eq!(plain.headers.get(header::TRACEPARENT), None);
    let traced =
        trace::enter(Some(parent()), || commands::encode(&Ping("x".into()), id)).expect("encodes");
    assert_eq!(traced.headers.get(header::TRACEPARENT), Some(PARENT));
}
