//! Checks every scenario shares, over the store's global log and the bus: per-stream
//! order, "each message takes effect at most once", and "nothing acknowledged was lost".
//!
//! Checkers see only durable truth (the log, the bus's offsets, an external service's
//! books), which is also all an operator has. They fold the log *incrementally* — each
//! check reads only the events appended since the previous one — so checking every 100 ms
//! of simulated time stays cheap.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use reprise_core::{Delivery, EventId, InMemoryEventBus, RecordedEvent, StreamId};

use reprise_host::inbox;

/// A broken invariant: its name, the entities involved (stream names, so the trace lines
/// that mention them can be picked out), and what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub invariant: &'static str,
    pub entities: Vec<String>,
    pub message: String,
}

impl Finding {
    #[must_use]
    pub fn new(invariant: &'static str, entities: Vec<String>, message: impl Into<String>) -> Self {
        Finding {
            invariant,
            entities,
            message: message.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{}]: {}",
            self.invariant,
            self.entities.join(", "),
            self.message
        )
    }
}

/// Invariant names, shared so tests and reports agree on them.
pub mod invariant {
    pub const STREAM_ORDER: &str = "per-stream order holds";
    pub const EFFECT_ONCE: &str = "each message takes effect at most once per consumer";
    pub const NOTHING_LOST: &str = "every acknowledged message took effect";
    pub const BUS_ORDER: &str = "each stream's events reach the bus in version order";
}

/// Next offset to look at in one partition, and the highest version of each stream
/// published there so far.
type PartitionOrder = (u64, BTreeMap<Arc<str>, u64>);

/// The generic part of a log fold.
#[derive(Debug, Default)]
pub struct LogAudit {
    /// Next global position to read.
    pub next_position: u64,
    versions: BTreeMap<StreamId, u64>,
    causations: BTreeSet<(u128, StreamId, Arc<str>)>,
    markers: BTreeSet<EventId>,
    /// Per (group, topic, partition): offsets below this were checked by
    /// [`check_nothing_lost`](Self::check_nothing_lost).
    verified: BTreeMap<(&'static str, &'static str, u32), u64>,
    /// Per (topic, partition): next offset to look at, and the highest version of each
    /// stream published there so far.
    published: BTreeMap<(&'static str, u32), PartitionOrder>,
    /// Bus revision at which [`check_nothing_lost`](Self::check_nothing_lost) and
    /// [`check_bus_order`](Self::check_bus_order) last passed: both read only the bus
    /// (and markers, which only grow), so an unchanged bus needs no second look.
    lost_checked_at: Option<(u64, Vec<(&'static str, &'static str)>)>,
    order_checked_at: Option<(u64, Vec<&'static str>)>,
}

impl LogAudit {
    #[must_use]
    pub fn new() -> Self {
        LogAudit {
            next_position: 1,
            ..Self::default()
        }
    }

    /// Whether the inbox marker `marker` ([`inbox::marker_id`]) is in the log folded so far.
    #[must_use]
    pub fn has_marker(&self, marker: EventId) -> bool {
        self.markers.contains(&marker)
    }

    /// Folds one event; called in global order.
    ///
    /// # Errors
    /// A gap or reordering within a stream; a second effect of one message on one stream.
    pub fn observe(&mut self, event: &RecordedEvent) -> Result<(), Finding> {
        assert_eq!(
            event.position, self.next_position,
            "the audit must see the log gap-free and in order"
        );
        self.next_position += 1;
        let version = self.versions.entry(event.stream.clone()).or_default();
        if event.version != *version + 1 {
            return Err(Finding::new(
                invariant::STREAM_ORDER,
                vec![event.stream.to_string()],
                format!(
                    "event at position {} has version {} after version {}",
                    event.position, event.version, version
                ),
            ));
        }
        *version = event.version;
        if event.stream.category() == inbox::CATEGORY {
            self.markers.insert(event.event_id);
            return Ok(());
        }
        if let Some(cause) = event.metadata.causation_id
            && !self
                .causations
                .insert((cause, event.stream.clone(), Arc::clone(&event.event_type)))
        {
            return Err(Finding::new(
                invariant::EFFECT_ONCE,
                vec![event.stream.to_string()],
                format!(
                    "message {} caused a second {} on {}",
                    EventId(cause),
                    event.event_type,
                    event.stream
                ),
            ));
        }
        Ok(())
    }

    /// Every message below each group's committed offset must have the group's inbox
    /// marker: the consumer acknowledged it, so its effect must be durable. Incremental:
    /// only offsets committed since the previous call are read. Fold the log first, so
    /// the markers seen are at least as recent as the offsets.
    ///
    /// # Errors
    /// The first acknowledged message without a marker.
    pub fn check_nothing_lost(
        &mut self,
        bus: &InMemoryEventBus,
        groups: &[(&'static str, &'static str)],
    ) -> Result<(), Finding> {
        let revision = bus.revision();
        if self
            .lost_checked_at
            .as_ref()
            .is_some_and(|(r, g)| *r == revision && g == groups)
        {
            return Ok(());
        }
        for &(group, topic) in groups {
            let offsets = bus.committed_offsets(group, topic);
            for (partition, committed) in (0u32..).zip(offsets) {
                let verified = self.verified.entry((group, topic, partition)).or_default();
                if committed <= *verified {
                    continue;
                }
                let limit = usize::try_from(committed - *verified).unwrap_or(usize::MAX);
                // Headers are lent, not copied: this reads every acknowledged message.
                let markers = &self.markers;
                let missing = bus.try_for_each_header(
                    topic,
                    partition,
                    *verified,
                    limit,
                    |offset, headers| {
                        let Some(message) = inbox::message_id_in(headers) else {
                            return Ok(());
                        };
                        if markers.contains(&inbox::marker_id(group, message)) {
                            Ok(())
                        } else {
                            Err((offset, message))
                        }
                    },
                );
                if let Err((offset, message)) = missing {
                    let delivery = bus
                        .messages_from(topic, partition, offset, 1)
                        .pop()
                        .expect("the message was just read");
                    return Err(lost(group, &delivery, message));
                }
                *verified = committed;
            }
        }
        self.lost_checked_at = Some((revision, groups.to_vec()));
        Ok(())
    }
}

impl LogAudit {
    /// Each stream's events first appear on an event topic in version order with no
    /// gap: a consumer of the topic never sees version `n + 1` of a stream before `n`.
    /// Republished (older) versions are fine — that is at-least-once. Incremental.
    ///
    /// # Errors
    /// The first message that skips ahead in its stream.
    pub fn check_bus_order(
        &mut self,
        bus: &InMemoryEventBus,
        topics: &[&'static str],
    ) -> Result<(), Finding> {
        use reprise_core::event_bus::header;
        let revision = bus.revision();
        if self
            .order_checked_at
            .as_ref()
            .is_some_and(|(r, t)| *r == revision && t == topics)
        {
            return Ok(());
        }
        for &topic in topics {
            for partition in 0..bus.partition_count(topic) {
                let (next, highest) = self.published.entry((topic, partition)).or_default();
                // Headers are lent, not copied: this reads every published message once.
                let skipped = bus.try_for_each_header(
                    topic,
                    partition,
                    *next,
                    usize::MAX,
                    |offset, headers| {
                        *next = offset + 1;
                        let (Some(stream), Some(version)) = (
                            headers.get(header::STREAM),
                            headers
                                .get(header::STREAM_VERSION)
                                .and_then(|v| v.parse::<u64>().ok()),
                        ) else {
                            return Ok(());
                        };
                        let seen = if let Some(seen) = highest.get_mut(stream) {
                            seen
                        } else {
                            highest.entry(Arc::from(stream)).or_default()
                        };
                        if version > *seen + 1 {
                            return Err((offset, stream.to_owned(), version, *seen + 1));
                        }
                        *seen = (*seen).max(version);
                        Ok(())
                    },
                );
                if let Err((offset, stream, version, expected)) = skipped {
                    // `Delivery::coordinates` format.
                    return Err(Finding::new(
                        invariant::BUS_ORDER,
                        vec![stream.clone()],
                        format!(
                            "{topic}/{partition}@{offset} carries v{version} of {stream} before v{expected}"
                        ),
                    ));
                }
            }
        }
        self.order_checked_at = Some((revision, topics.to_vec()));
        Ok(())
    }
}

fn lost(group: &str, delivery: &Delivery, message: EventId) -> Finding {
    let mut entities = vec![delivery.key.to_string()];
    if let Some(stream) = delivery
        .headers
        .get(reprise_core::event_bus::header::STREAM)
    {
        entities.push(stream.to_owned());
    }
    Finding::new(
        invariant::NOTHING_LOST,
        entities,
        format!(
            "{group} committed past {} ({}) but never recorded handling message {message}",
            delivery.coordinates(),
            delivery
                .headers
                .get(reprise_core::event_bus::header::EVENT_TYPE)
                .unwrap_or("?"),
        ),
    )
}
