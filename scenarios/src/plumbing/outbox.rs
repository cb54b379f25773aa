//! The outbox relay: publishes stored events to the bus, in global order.
//!
//! Services never publish their own events. They append to the store, and this relay
//! tails the store's global log (`read_all`) and publishes what it finds, keyed by stream
//! so one aggregate's events stay in order on one partition. Append and publish therefore
//! cannot diverge: a crash between them only delays the publish. The relay's position is
//! kept as a snapshot of a `relay-<name>` stream; saving it is an optimisation — a relay
//! that restarts from an older position publishes some events again, which consumers
//! deduplicate by event id.

use std::sync::Arc;
use std::time::Duration;

use reprise_core::event_bus::header;
use reprise_core::{
    Delivery, EventId, Headers, OutgoingMessage, Payload, RecordedEvent, Snapshot, StreamId,
};

use super::env::{Backoff, ServiceEnv};
use super::inbox;

/// Maps a stream category to the topic its events are published on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub category: &'static str,
    pub topic: &'static str,
}

/// Configuration of a relay.
#[derive(Clone, Debug)]
pub struct RelayOptions {
    /// Names the checkpoint stream; one relay per name.
    pub name: &'static str,
    pub routes: Vec<Route>,
    /// Events read per `read_all`.
    pub batch_size: usize,
    /// Pause after finding nothing new; doubled while idle, up to `max_idle_pause`. Also
    /// the pause after a batch shorter than `batch_size` (the relay has caught up: reading
    /// again at once would almost always find nothing).
    pub min_idle_pause: Duration,
    pub max_idle_pause: Duration,
    /// The checkpoint is saved when the relay catches up (a read finds nothing new), or
    /// once this many positions were published since the last save, whichever is first.
    /// Saving is an optimisation (a restart republishes from the last checkpoint, which
    /// consumers deduplicate), so it need not follow every batch.
    pub checkpoint_every: u64,
}

impl RelayOptions {
    #[must_use]
    pub fn new(name: &'static str, routes: Vec<Route>) -> Self {
        assert!(
            !routes.is_empty(),
            "a relay without routes publishes nothing"
        );
        RelayOptions {
            name,
            routes,
            batch_size: 256,
            min_idle_pause: Duration::from_millis(5),
            max_idle_pause: Duration::from_millis(100),
            checkpoint_every: 256,
        }
    }
}

/// An event as it arrives from the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayedEvent {
    pub stream: StreamId,
    pub version: u64,
    pub event_id: EventId,
    pub payload: Payload,
}

impl RelayedEvent {
    /// Reads the relay's headers back; `None` if the message did not come from a relay.
    #[must_use]
    pub fn from_delivery(delivery: &Delivery) -> Option<Self> {
        Some(RelayedEvent {
            stream: StreamId::new(delivery.headers.get(header::STREAM)?),
            version: delivery.headers.get(header::STREAM_VERSION)?.parse().ok()?,
            event_id: inbox::message_id(delivery)?,
            payload: delivery.payload.clone(),
        })
    }

    /// The instance id: the stream name after the category.
    #[must_use]
    pub fn entity(&self) -> &str {
        let name = self.stream.as_str();
        name.split_once('-').map_or(name, |(_, id)| id)
    }
}

fn message(event: &RecordedEvent, topic: &Arc<str>) -> OutgoingMessage {
    // The names are distinct, so this is what `Headers::with` would build, minus its
    // duplicate scans.
    let mut headers = Vec::with_capacity(5);
    headers.push((
        header::EVENT_ID.to_owned(),
        inbox::format_event_id(event.event_id),
    ));
    headers.push((header::EVENT_TYPE.to_owned(), event.event_type.to_string()));
    headers.push((header::STREAM.to_owned(), event.stream.as_str().to_owned()));
    headers.push((header::STREAM_VERSION.to_owned(), event.version.to_string()));
    if let Some(causation) = event.metadata.causation_id {
        headers.push((
            header::CAUSATION_ID.to_owned(),
            inbox::format_event_id(EventId(causation)),
        ));
    }
    let headers = Headers(headers);
    OutgoingMessage {
        topic: Arc::clone(topic),
        key: event.stream.as_str().into(),
        payload: event.payload.clone(),
        headers,
    }
}

/// Runs the relay forever (until its task is dropped, e.g. by a crash).
pub async fn run(env: ServiceEnv, options: Arc<RelayOptions>) {
    let checkpoint = StreamId::of("relay", options.name);
    let mut attempt = 0;
    let mut next = loop {
        match env.store.load_snapshot(&checkpoint).await {
            Ok(snapshot) => break snapshot.map_or(1, |s| s.version + 1),
            Err(_) => {
                env.sleep(Backoff::SERVICE.delay(attempt, &env)).await;
                attempt = attempt.saturating_add(1);
            }
        }
    };
    env.note(format_args!(
        "relay {} resumes at position {next}",
        options.name
    ));
    // One `Arc` per route, not one allocation per message.
    let routes: Vec<(&str, Arc<str>)> = options
        .routes
        .iter()
        .map(|r| (r.category, Arc::from(r.topic)))
        .collect();
    let mut idle_pause = options.min_idle_pause;
    let mut read_attempt = 0;
    // Last position the stored checkpoint covers (as far as this relay knows).
    let mut saved = next - 1;
    loop {
        let Ok(events) = env.store.read_all(next, options.batch_size).await else {
            env.sleep(Backoff::SERVICE.delay(read_attempt, &env)).await;
            read_attempt = read_attempt.saturating_add(1);
            continue;
        };
        read_attempt = 0;
        let Some(last) = events.last() else {
            if next - 1 > saved && save_checkpoint(&env, &checkpoint, next - 1).await {
                saved = next - 1;
            }
            env.sleep(idle_pause).await;
            idle_pause = (idle_pause * 2).min(options.max_idle_pause);
            continue;
        };
        idle_pause = options.min_idle_pause;
        // Positions are strictly increasing but may be sparse (PostgreSQL's are): a
        // gap-free read returns nothing before `next`, not necessarily `next` itself.
        assert!(
            events[0].position >= next,
            "read_all returned a position before {next}"
        );
        let last_position = last.position;
        // Built afresh for every attempt instead of cloned: the first attempt, which
        // nearly always succeeds, then costs no copy of the batch.
        let build = || -> Vec<OutgoingMessage> {
            events
                .iter()
                .filter_map(|e| {
                    let category = e.stream.category();
                    routes
                        .iter()
                        .find(|(c, _)| *c == category)
                        .map(|(_, topic)| message(e, topic))
                })
                .collect()
        };
        let mut messages = build();
        let mut publish_attempt = 0;
        while !messages.is_empty() {
            match env.bus.publish(std::mem::take(&mut messages)).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::debug!(relay = options.name, %error, "publish failed; retrying");
                    env.sleep(Backoff::SERVICE.delay(publish_attempt, &env))
                        .await;
                    publish_attempt = publish_attempt.saturating_add(1);
                    messages = build();
                }
            }
        }
        next = last_position + 1;
        if last_position - saved >= options.checkpoint_every
            && save_checkpoint(&env, &checkpoint, last_position).await
        {
            saved = last_position;
        }
        if events.len() < options.batch_size {
            // Caught up: what is appended meanwhile is picked up after the pause.
            env.sleep(options.min_idle_pause).await;
        }
    }
}

/// Saves the relay's position; `false` if the store did not confirm it. A lost
/// checkpoint only means republishing from an older position.
async fn save_checkpoint(env: &ServiceEnv, checkpoint: &StreamId, position: u64) -> bool {
    let snapshot = Snapshot {
        stream: checkpoint.clone(),
        version: position,
        schema_version: 1,
        state: Payload::from_json_text("{}"),
    };
    env.store.save_snapshot(snapshot).await.is_ok()
}
