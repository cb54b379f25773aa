//! The relay: publishes the event store's log to the bus, in global order — one code
//! path for the simulator and production.
//!
//! Services never publish their own events. They append to the store, and the relay tails
//! the store's **gap-free global log** (`EventStore::read_all`) and publishes what it finds,
//! keyed by stream so one aggregate's events stay in order on one partition. Append and
//! publish therefore cannot diverge: a crash between them only delays the publish. No
//! outbox table is written, so published work cannot pile up in one: the log *is* the
//! outbox, and the relay's only state is its checkpoint (a snapshot of the `relay-<name>`
//! stream). Saving the checkpoint is an optimisation — a relay that restarts from an
//! older position publishes some events again, which consumers deduplicate by event id.
//!
//! ## One publisher: a lease
//!
//! Any number of relay instances may run (one per service replica); the one holding the
//! [`Lease`] `relay-<name>` publishes, the others wait and try again every
//! [`RelayOptions::lease_retry`]. Two publishers racing each other to the broker could let
//! a key's later message overtake its earlier one, so the leader [`confirm`]s its lease
//! before every publish and steps down (back to standby) when the lease is lost *or merely
//! not proven*. A leader cannot know at once that it lost its lease (its session died
//! mid-publish), so for a bounded moment two leaders may publish; that yields duplicates,
//! which consumers absorb — the simulator's lease opens exactly that window on purpose. A
//! zombie leader may also save an older checkpoint over a newer one: again duplicates
//! only. (Why a lease and not `SELECT … FOR UPDATE SKIP LOCKED` on a table: parallel
//! publishers break per-key order, and row locks held across a broker round trip hold a
//! transaction open; see `reprise-postgres`'s lease module.)
//!
//! ## Failures
//!
//! A failed read or publish is retried with the platform's backoff (core's `RetryPolicy`:
//! jitter from the environment, pauses on its clock); a batch that fails is retried
//! **whole, before any later event**, so per-key order holds. Every bus error is retried:
//! skipping an event would lose it.
//!
//! ## Fault points
//!
//! - [`POINT_PAUSE_BEFORE_PUBLISH`]: a pause between confirming the lease and publishing
//!   (the two-leader window);
//! - [`POINT_SKIP_CHECKPOINT`]: a batch is published but the checkpoint not saved (a later
//!   restart republishes it);
//! - [`POINT_PAUSE_BEFORE_CHECKPOINT`]: a pause between publishing and checkpointing.
//!
//! ## Metrics
//!
//! [`RELAYED`] (counter), [`RELAY_POSITION`] (gauge: last published position),
//! [`RELAY_LEADER`] (gauge: 1 while leading), [`RELAY_ERRORS`] (counter, label `stage`
//! = `read`/`publish`/`checkpoint`/`lease`); label `relay` on each.
//!
//! [`confirm`]: reprise_core::Leadership::confirm

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use reprise_core::event::trace::{self, TraceParent};
use reprise_core::event_bus::header;
use reprise_core::{
    BoxFuture, Delivery, EventId, Headers, Leadership, Lease, LeaseError, OutgoingMessage, Payload,
    RecordedEvent, Snapshot, StreamId, buggify,
};

use crate::Platform;
use crate::ids::format_event_id;

/// BUGGIFY: pause between confirming the lease and publishing.
pub const POINT_PAUSE_BEFORE_PUBLISH: &str = "relay.pause-before-publish";
/// BUGGIFY: publish a batch without saving the checkpoint.
pub const POINT_SKIP_CHECKPOINT: &str = "relay.skip-checkpoint";
/// BUGGIFY: pause between publishing and checkpointing.
pub const POINT_PAUSE_BEFORE_CHECKPOINT: &str = "relay.pause-before-checkpoint";

/// Counter: events published. Label `relay`.
pub const RELAYED: &str = "reprise_relay_published_total";
/// Gauge: the last position published. Label `relay`.
pub const RELAY_POSITION: &str = "reprise_relay_position";
/// Gauge: 1 while this instance leads. Label `relay`.
pub const RELAY_LEADER: &str = "reprise_relay_leader";
/// Counter: failed operations. Labels `relay`, `stage`.
pub const RELAY_ERRORS: &str = "reprise_relay_errors_total";

/// Longest BUGGIFY pause.
const MAX_BUGGIFY_PAUSE: Duration = Duration::from_millis(200);

/// Maps a stream category to the topic its events are published on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub category: Arc<str>,
    pub topic: Arc<str>,
}

impl Route {
    #[must_use]
    pub fn new(category: &str, topic: &str) -> Self {
        Route {
            category: category.into(),
            topic: topic.into(),
        }
    }
}

/// Configuration of a relay.
#[derive(Clone, Debug)]
pub struct RelayOptions {
    /// Names the checkpoint stream and the lease; one publisher per name.
    pub name: Arc<str>,
    pub routes: Vec<Route>,
    /// Events read per `read_all`.
    pub batch_size: usize,
    /// Pause after finding nothing new; doubled while idle, up to `max_idle_pause`. Also
    /// the pause after a batch shorter than `batch_size` (the relay has caught up: reading
    /// again at once would almost always find nothing).
    ///
    /// On a store that says when its log grows ([`EventStore::appended_since`]) the
    /// caught-up relay does not poll: it waits for an event it routes to be appended,
    /// then `min_idle_pause` more to gather the rest of the burst, and saves its checkpoint once the log has
    /// been quiet for `max_idle_pause`.
    ///
    /// [`EventStore::appended_since`]: reprise_core::EventStore::appended_since
    pub min_idle_pause: Duration,
    pub max_idle_pause: Duration,
    /// The checkpoint is saved when the relay catches up (a read finds nothing new, or on
    /// a notifying store the log stays quiet for `max_idle_pause`), or once this many
    /// positions were published since the last save, whichever is first.
    pub checkpoint_every: u64,
    /// How often a standby tries to take the lease.
    pub lease_retry: Duration,
}

impl RelayOptions {
    /// # Panics
    /// Without routes or a name.
    #[must_use]
    pub fn new(name: &str, routes: Vec<Route>) -> Self {
        assert!(!name.is_empty(), "a relay needs a name");
        assert!(
            !routes.is_empty(),
            "a relay without routes publishes nothing"
        );
        RelayOptions {
            name: name.into(),
            routes,
            batch_size: 256,
            min_idle_pause: Duration::from_millis(5),
            max_idle_pause: Duration::from_millis(100),
            checkpoint_every: 256,
            lease_retry: Duration::from_millis(500),
        }
    }

    /// The lease's name: `relay-<name>`.
    #[must_use]
    pub fn lease_name(&self) -> String {
        ["relay-", &self.name].concat()
    }

    /// # Errors
    /// A description of the first invalid field.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_size == 0 {
            return Err("batch_size must be at least 1".into());
        }
        if self.min_idle_pause.is_zero() || self.min_idle_pause > self.max_idle_pause {
            return Err(format!(
                "idle pauses must satisfy 0 < min ({:?}) <= max ({:?})",
                self.min_idle_pause, self.max_idle_pause
            ));
        }
        if self.checkpoint_every == 0 {
            return Err("checkpoint_every must be at least 1".into());
        }
        if self.lease_retry.is_zero() {
            return Err("lease_retry must be positive: a zero retry spins".into());
        }
        Ok(())
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
            event_id: crate::inbox::message_id(delivery)?,
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

/// The message for `event`. `trace` is the context of the relay's send span for it (see
/// [`send_span`]); `traceparent` header when given.
fn message(event: &RecordedEvent, topic: &Arc<str>, trace: Option<TraceParent>) -> OutgoingMessage {
    // The names are distinct, so this is what `Headers::with` would build, minus its
    // duplicate scans.
    let mut headers = Vec::with_capacity(6);
    headers.push((header::EVENT_ID.to_owned(), format_event_id(event.event_id)));
    headers.push((header::EVENT_TYPE.to_owned(), event.event_type.to_string()));
    headers.push((header::STREAM.to_owned(), event.stream.as_str().to_owned()));
    headers.push((header::STREAM_VERSION.to_owned(), event.version.to_string()));
    if let Some(causation) = event.metadata.causation_id {
        headers.push((
            header::CAUSATION_ID.to_owned(),
            format_event_id(EventId(causation)),
        ));
    }
    if let Some(trace) = trace {
        headers.push((header::TRACEPARENT.to_owned(), trace.to_string()));
    }
    let headers = Headers(headers);
    OutgoingMessage {
        topic: Arc::clone(topic),
        key: event.stream.as_str().into(),
        payload: event.payload.clone(),
        headers,
    }
}

/// Runs the relay forever (until its task is dropped: a crash or a shutdown): waits for
/// the lease, leads while it holds it, and waits again when it loses it.
///
/// # Panics
/// If `options` are invalid ([`RelayOptions::validate`]).
pub async fn run(platform: Platform, options: Arc<RelayOptions>, lease: Arc<dyn Lease>) {
    if let Err(reason) = options.validate() {
        panic!("invalid relay options: {reason}");
    }
    let name: &str = &options.name;
    let leader_gauge = metrics::gauge!(RELAY_LEADER, "relay" => name.to_owned());
    let mut backoff = platform.backoff();
    loop {
        let leadership = match lease.try_acquire().await {
            Ok(Some(leadership)) => leadership,
            Ok(None) => {
                backoff.reset();
                platform.sleep(options.lease_retry).await;
                continue;
            }
            Err(error) => {
                error_counter(name, "lease").increment(1);
                tracing::debug!(relay = name, %error, "lease not acquired; retrying");
                platform.pause(&mut backoff).await;
                continue;
            }
        };
        backoff.reset();
        platform.note(format_args!("relay {name} leads"));
        leader_gauge.set(1.0);
        let reason = lead(&platform, &options, leadership).await;
        leader_gauge.set(0.0);
        error_counter(name, "lease").increment(1);
        platform.note(format_args!("relay {name} steps down: {reason}"));
        tracing::info!(relay = name, %reason, "relay stepped down");
    }
}

/// The relay's span for publishing a traced event (one whose metadata carries a
/// `traceparent`): a `send` span (OpenTelemetry messaging conventions), child of the span
/// that appended the event, whose context the message's `traceparent` header carries.
/// Untraced events get neither span nor header.
pub fn send_span(
    platform: &Platform,
    relay: &str,
    event: &RecordedEvent,
    topic: &str,
) -> Option<(tracing::Span, TraceParent)> {
    let parent = TraceParent::parse(event.metadata.traceparent.as_deref()?)?;
    let span = tracing::info_span!(
        "reprise.relay.send",
        otel.name = %format_args!("send {topic}"),
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.destination.name = topic,
        messaging.message.id = %format_event_id(event.event_id),
        messaging.kafka.message.key = event.stream.as_str(),
        reprise.relay = relay,
        reprise.event.type = &*event.event_type,
        reprise.position = event.position,
        trace_id = tracing::field::Empty,
    );
    let context = trace::continue_trace(&span, parent, platform.runtime.as_ref());
    Some((span, context))
}

fn error_counter(relay: &str, stage: &'static str) -> metrics::Counter {
    metrics::counter!(RELAY_ERRORS, "relay" => relay.to_owned(), "stage" => stage)
}

/// Leads until the lease is lost or cannot be proven; returns why it stopped.
async fn lead(
    platform: &Platform,
    options: &RelayOptions,
    mut leadership: Box<dyn Leadership>,
) -> LeaseError {
    let name: &str = &options.name;
    let checkpoint = StreamId::of("relay", name);
    let mut backoff = platform.backoff();
    let mut next = loop {
        match platform.store.load_snapshot(&checkpoint).await {
            Ok(snapshot) => break snapshot.map_or(1, |s| s.version + 1),
            Err(_) => {
                error_counter(name, "checkpoint").increment(1);
                platform.pause(&mut backoff).await;
            }
        }
    };
    platform.note(format_args!("relay {name} resumes at position {next}"));
    let published = metrics::counter!(RELAYED, "relay" => name.to_owned());
    let position = metrics::gauge!(RELAY_POSITION, "relay" => name.to_owned());
    let mut idle_pause = options.min_idle_pause;
    // Only events the relay publishes are worth waking it for: the others (saga
    // streams, inbox markers) are passed over by the next read anyway.
    let categories: Vec<&str> = options.routes.iter().map(|r| &*r.category).collect();
    // Last position the stored checkpoint covers (as far as this relay knows).
    let mut saved = next - 1;
    backoff.reset();
    loop {
        let Ok(events) = platform.store.read_all(next, options.batch_size).await else {
            error_counter(name, "read").increment(1);
            platform.pause(&mut backoff).await;
            continue;
        };
        backoff.reset();
        let Some(last) = events.last() else {
            if let Some(appended) = platform.store.appended_since(next, &categories) {
                let at = next - 1;
                let due = (saved < at).then_some(at);
                if wait_for_appends(platform, options, &checkpoint, appended, due).await {
                    saved = at;
                }
                continue;
            }
            if next - 1 > saved && save_checkpoint(platform, name, &checkpoint, next - 1).await {
                saved = next - 1;
            }
            platform.sleep(idle_pause).await;
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
        let route = |e: &RecordedEvent| {
            let category = e.stream.category();
            options.routes.iter().find(|r| &*r.category == category)
        };
        // Traced events get a send span each, held until the batch is published; its
        // context goes into the message's header. Untraced batches (the simulator's) pay
        // one scan.
        let traced: Vec<Option<(tracing::Span, TraceParent)>> =
            if events.iter().any(|e| e.metadata.traceparent.is_some()) {
                events
                    .iter()
                    .map(|e| route(e).and_then(|r| send_span(platform, name, e, &r.topic)))
                    .collect()
            } else {
                Vec::new()
            };
        // Built afresh for every attempt instead of cloned: the first attempt, which
        // nearly always succeeds, then costs no copy of the batch.
        let build = || -> Vec<OutgoingMessage> {
            events
                .iter()
                .enumerate()
                .filter_map(|(i, e)| {
                    let trace = traced.get(i).and_then(|t| t.as_ref().map(|(_, c)| *c));
                    route(e).map(|r| message(e, &r.topic, trace))
                })
                .collect()
        };
        let mut messages = build();
        let count = messages.len() as u64;
        while !messages.is_empty() {
            if let Err(lost) = leadership.confirm().await {
                leadership.release().await;
                return lost;
            }
            if buggify(POINT_PAUSE_BEFORE_PUBLISH) {
                platform.sleep(buggify_pause(platform)).await;
            }
            match platform.bus.publish(std::mem::take(&mut messages)).await {
                Ok(()) => break,
                Err(error) => {
                    error_counter(name, "publish").increment(1);
                    tracing::debug!(relay = name, %error, "publish failed; retrying");
                    platform.pause(&mut backoff).await;
                    messages = build();
                }
            }
        }
        // The send spans end once the broker confirmed the batch.
        drop(traced);
        backoff.reset();
        published.increment(count);
        #[allow(clippy::cast_precision_loss)]
        position.set(last_position as f64);
        next = last_position + 1;
        if buggify(POINT_SKIP_CHECKPOINT) {
            continue;
        }
        if last_position - saved >= options.checkpoint_every {
            if buggify(POINT_PAUSE_BEFORE_CHECKPOINT) {
                platform.sleep(buggify_pause(platform)).await;
            }
            if save_checkpoint(platform, name, &checkpoint, last_position).await {
                saved = last_position;
            }
        }
        if events.len() < options.batch_size {
            // Caught up: with a store that says when the log grows, wait for that instead
            // of reading again; otherwise what is appended meanwhile is picked up after
            // the pause.
            match platform.store.appended_since(next, &categories) {
                Some(appended) => {
                    let at = next - 1;
                    let due = (saved < at).then_some(at);
                    if wait_for_appends(platform, options, &checkpoint, appended, due).await {
                        saved = at;
                    }
                }
                None => platform.sleep(options.min_idle_pause).await,
            }
        }
    }
}

/// The caught-up relay's wait on a store that notifies: until the log grows, then
/// `min_idle_pause` more, so that one read and one publish carry the rest of a burst
/// rather than one each per append. A checkpoint `due` at a position is saved once the
/// log has stayed quiet for `max_idle_pause` (a busy relay would otherwise save one after
/// every batch); returns whether it was saved.
async fn wait_for_appends(
    platform: &Platform,
    options: &RelayOptions,
    checkpoint: &StreamId,
    appended: BoxFuture<'static, ()>,
    due: Option<u64>,
) -> bool {
    let mut saved = false;
    match due {
        Some(position) => {
            let quiet = platform.runtime.sleep(options.max_idle_pause);
            if let Some(appended) = first_or_rest(appended, quiet).await {
                saved = save_checkpoint(platform, &options.name, checkpoint, position).await;
                appended.await;
            }
        }
        None => appended.await,
    }
    platform.sleep(options.min_idle_pause).await;
    saved
}

/// Waits for `wanted` or `timer`, whichever completes first (`wanted` is polled first);
/// `None` if `wanted` did, otherwise `wanted` still pending.
async fn first_or_rest(
    wanted: BoxFuture<'static, ()>,
    mut timer: BoxFuture<'static, ()>,
) -> Option<BoxFuture<'static, ()>> {
    let mut wanted = Some(wanted);
    std::future::poll_fn(move |cx| {
        let pending = wanted.as_mut().expect("polled after completion");
        if pending.as_mut().poll(cx).is_ready() {
            wanted = None;
            return Poll::Ready(None);
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(wanted.take());
        }
        Poll::Pending
    })
    .await
}

fn buggify_pause(platform: &Platform) -> Duration {
    let nanos = u64::try_from(MAX_BUGGIFY_PAUSE.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(platform.runtime.next_u64() % nanos)
}

/// Saves the relay's position; `false` if the store did not confirm it. A lost
/// checkpoint only means republishing from an older position.
async fn save_checkpoint(
    platform: &Platform,
    relay: &str,
    checkpoint: &StreamId,
    position: u64,
) -> bool {
    let snapshot = Snapshot {
        stream: checkpoint.clone(),
        version: position,
        schema_version: 1,
        state: Payload::from_json_text("{}"),
    };
    let saved = platform.store.save_snapshot(snapshot).await.is_ok();
    if !saved {
        error_counter(relay, "checkpoint").increment(1);
    }
    saved
}
