//! The determinism self-check sees data, not only which operations ran: a wall-clock value
//! written into an event (and never read back) or into a published message, and a timer
//! set from the wall clock, are all caught; the same scenario on the node's clock passes.

use std::time::Duration;

use reprise_core::{
    AppendBatch, EventId, ExpectedVersion, Headers, Metadata, NewEvent, OutgoingMessage, Payload,
    StreamId,
};
use reprise_sim::{
    FaultPlan, NodeContext, NodeOptions, Scenario, ScenarioRun, SimConfig, TraceMode, Violation,
    World, WorldView, check_determinism, run,
};

/// Nanoseconds since the Unix epoch by the wall clock: what a careless handler reaches for.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
fn wall_clock_nanos() -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the wall clock is after 1970");
    u64::try_from(since_epoch.as_nanos()).expect("fits until 2554")
}

/// Where the wall clock leaks in, if anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leak {
    /// None: the handler stamps its event with the node's (virtual) clock.
    Nothing,
    /// The event's payload carries the wall-clock time.
    EventPayload,
    /// The event's metadata carries it (a traceparent built from the wall clock).
    EventMetadata,
    /// A published message's header carries it.
    MessageHeader,
    /// The handler waits a wall-clock-derived delay before appending.
    Timer,
}

/// One node appends a `Stamped` event; nothing ever reads the stamp back.
struct Stamping(Leak);

fn stamped(ctx: &NodeContext, leak: Leak) -> NewEvent {
    let stamp = if leak == Leak::EventPayload {
        wall_clock_nanos()
    } else {
        ctx.runtime().now().as_unix_nanos()
    };
    let traceparent =
        (leak == Leak::EventMetadata).then(|| format!("00-{:032x}-01", wall_clock_nanos()));
    NewEvent {
        event_id: EventId(7),
        event_type: "Stamped".into(),
        schema_version: 1,
        payload: Payload::from_json_text(format!("{{\"at\":{stamp}}}")),
        metadata: Metadata {
            traceparent,
            ..Metadata::default()
        },
    }
}

impl Scenario for Stamping {
    fn name(&self) -> &'static str {
        "stamping"
    }
    fn description(&self) -> &'static str {
        "appends one timestamped event and publishes one message"
    }
    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        let leak = self.0;
        world.event_bus().create_topic("stamps", 1);
        world.add_node("stamper", NodeOptions::default(), move |ctx| {
            let c = ctx.clone();
            ctx.spawn("stamp", async move {
                let delay = if leak == Leak::Timer {
                    // Microseconds from the wall clock: a different wait every run.
                    wall_clock_nanos() % 1_000_000_000
                } else {
                    500_000_000
                };
                c.sleep(Duration::from_nanos(delay)).await;
                let event = stamped(&c, leak);
                let store = c.event_store();
                let batch = AppendBatch::single(
                    StreamId::of("stamp", 1),
                    ExpectedVersion::NoStream,
                    vec![event],
                );
                while store.append(batch.clone()).await.is_err() {}
                let mut headers = Headers::default();
                let sent = if leak == Leak::MessageHeader {
                    wall_clock_nanos()
                } else {
                    c.runtime().now().as_unix_nanos()
                };
                headers.insert("sent-at", sent.to_string());
                let message = OutgoingMessage {
                    topic: "stamps".into(),
                    key: "stamp-1".into(),
                    payload: Payload::from_json_text("{}"),
                    headers,
                };
                while c.event_bus().publish(vec![message.clone()]).await.is_err() {}
            });
        });
        Box::new(Published)
    }
}

struct Published;
impl ScenarioRun for Published {
    fn check_safety(&self, _: &WorldView<'_>) -> Result<(), Violation> {
        Ok(())
    }
    fn check_liveness(&self, world: &WorldView<'_>) -> Result<(), Violation> {
        if world.event_bus().messages("stamps").is_empty() {
            Err(Violation::new("stamp-published", "not yet"))
        } else {
            Ok(())
        }
    }
}

fn config() -> SimConfig {
    SimConfig::new(11)
}

#[test]
fn the_correct_variant_passes_the_determinism_check() {
    let scenario = Stamping(Leak::Nothing);
    let hash = check_determinism(&scenario, &config()).expect("deterministic");
    let report = run(&scenario, &config());
    assert!(report.passed(), "{}", report.outcome);
    assert_eq!(report.hash, hash);
    // Under a swarm plan too.
    for seed in 1..=20 {
        check_determinism(
            &scenario,
            &config().with_seed(seed).with_plan(FaultPlan::swarm()),
        )
        .unwrap_or_else(|d| panic!("{d}"));
    }
}

#[test]
fn a_wall_clock_value_written_into_an_event_payload_is_caught_at_the_append() {
    let scenario = Stamping(Leak::EventPayload);
    let divergence = check_determinism(&scenario, &config())
        .expect_err("a wall-clock payload makes every run different");
    let first = divergence.first.as_ref().expect("both runs reached it");
    let second = divergence.second.as_ref().expect("both runs reached it");
    // Same text (the payload is not printed), different hash: the data is in the hash.
    assert_eq!(first.text, second.text, "{divergence}");
    assert_ne!(first.hash, second.hash);
    assert!(
        first.text.starts_with("store append stamp-1 +[Stamped]"),
        "the divergence is named at the append: {divergence}"
    );
    // And the plain hash of two runs differs (a sweep comparing hashes sees it too).
    assert_ne!(
        run(&scenario, &config()).hash,
        run(&scenario, &config()).hash
    );
}

#[test]
fn a_wall_clock_value_in_event_metadata_is_caught() {
    let divergence = check_determinism(&Stamping(Leak::EventMetadata), &config())
        .expect_err("metadata is data too");
    let first = divergence.first.expect("both runs reached it");
    assert!(first.text.starts_with("store append stamp-1"), "{first}");
}

#[test]
fn a_wall_clock_value_in_a_message_header_is_caught_at_the_publish() {
    let divergence = check_determinism(&Stamping(Leak::MessageHeader), &config())
        .expect_err("headers are data too");
    let first = divergence.first.expect("both runs reached it");
    assert!(
        first.text.starts_with("publish [stamps key=stamp-1]"),
        "{first}"
    );
}

#[test]
fn a_timer_set_from_the_wall_clock_is_caught() {
    let scenario = Stamping(Leak::Timer);
    let divergence =
        check_determinism(&scenario, &config()).expect_err("a wall-clock delay moves the run");
    let (first, second) = (
        divergence.first.as_ref().expect("both runs reached it"),
        divergence.second.as_ref().expect("both runs reached it"),
    );
    assert_ne!(first.at, second.at, "{divergence}");
    assert_ne!(
        run(&scenario, &config().with_trace(TraceMode::Hash)).hash,
        run(&scenario, &config().with_trace(TraceMode::Hash)).hash
    );
}
