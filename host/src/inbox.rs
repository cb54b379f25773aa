//! The inbox: a consumer's durable record of the messages it has handled.
//!
//! At-least-once delivery means every handler sees duplicates (redelivery after a crash,
//! a rebalance, a lost offset commit). The inbox turns that into *exactly-once effect*:
//! the marker for a message has an id derived from (consumer, message id), and it is
//! appended **in the same atomic batch** as the handler's events. A second handling of the
//! same message builds the same marker id, so the store refuses the whole batch (or
//! reports it as the duplicate of a committed one) and the effect cannot happen twice.
//!
//! The markers also make the contract checkable from outside: every message below a
//! group's committed offset must have its marker (nothing acknowledged was lost), and no
//! effect carries the same causation twice.

use std::sync::Arc;

use reprise_core::event_bus::header;
use reprise_core::resilience::dead_letter::REDELIVERED_FROM_HEADER;
use reprise_core::{
    Delivery, EventId, ExpectedVersion, Headers, Metadata, NewEvent, Payload, StoreError, StreamId,
};
use xxhash_rust::xxh3::Xxh3;

use crate::Platform;
use crate::ids::{format_event_id, parse_event_id};

/// Stream category of inbox streams.
pub const CATEGORY: &str = "inbox";
/// Event type of a marker.
pub const MARKER_TYPE: &str = "reprise.MessageHandled";

/// The inbox stream of one consumer (group).
#[must_use]
pub fn stream(consumer: &str) -> StreamId {
    StreamId::of(CATEGORY, consumer)
}

/// The marker's event id: a pure function of consumer and message, so every handling of
/// one message by one consumer produces the same id.
#[must_use]
pub fn marker_id(consumer: &str, message: EventId) -> EventId {
    // Streamed: the same digest as `xxh3_128(consumer ++ [0] ++ message)`, without
    // building the buffer (checkers compute one per acknowledged message).
    let mut hasher = Xxh3::new();
    hasher.update(consumer.as_bytes());
    hasher.update(&[0]);
    hasher.update(&message.0.to_le_bytes());
    EventId(hasher.digest128())
}

/// The marker event for `message`, to append beside the handler's own events.
#[must_use]
pub fn marker(consumer: &str, message: EventId) -> NewEvent {
    NewEvent {
        event_id: marker_id(consumer, message),
        event_type: MARKER_TYPE.into(),
        schema_version: 1,
        // The id is the content; the payload only helps a person reading the store.
        payload: Payload::from_json_text(
            ["{\"message\":\"", &format_event_id(message), "\"}"].concat(),
        ),
        metadata: Metadata {
            causation_id: Some(message.0),
            ..Metadata::default()
        },
    }
}

/// The id the inbox knows a delivery by: see [`message_id_in`].
#[must_use]
pub fn message_id(delivery: &Delivery) -> Option<EventId> {
    message_id_in(&delivery.headers)
}

/// The id the inbox knows a message by: the one its producer put in the
/// `reprise-event-id` header — unless the message is a dead letter sent back by an
/// operator ([`redeliver`](reprise_core::resilience::redeliver) keeps the original
/// headers and adds [`REDELIVERED_FROM_HEADER`]). The consumer recorded the original as
/// handled when it parked it (so it would not block its partition), so the redelivered
/// copy must count as a new message or its marker would make it a silent no-op. Its id
/// is derived from the original id and the dead letter's id: a duplicate delivery of one
/// redelivery is still recognised, and two redeliveries of one message are two messages.
#[must_use]
pub fn message_id_in(headers: &Headers) -> Option<EventId> {
    let original = headers.get(header::EVENT_ID).and_then(parse_event_id)?;
    Some(match headers.get(REDELIVERED_FROM_HEADER) {
        None => original,
        Some(letter) => redelivered_id(original, letter),
    })
}

/// The id of a redelivered copy of `original`, sent back from dead letter `letter`.
#[must_use]
pub fn redelivered_id(original: EventId, letter: &str) -> EventId {
    let mut hasher = Xxh3::new();
    hasher.update(b"redelivered\0");
    hasher.update(&original.0.to_le_bytes());
    hasher.update(letter.as_bytes());
    EventId(hasher.digest128())
}

/// Whether an append error means "this message was handled before": the marker (and so
/// the whole batch, atomically) is already stored.
#[must_use]
pub fn is_already_handled(error: &StoreError) -> bool {
    matches!(error, StoreError::DuplicateEventId(_))
}

/// Records `message` as handled on its own, for handlers whose effect is made idempotent
/// elsewhere (a saga deduplicates by its state) and cannot share the batch. Retries
/// transient failures until the marker is stored.
pub async fn record_alone(platform: &Platform, consumer: &Arc<str>, message: EventId) {
    let mut backoff = platform.backoff();
    loop {
        let batch = reprise_core::AppendBatch::single(
            stream(consumer),
            ExpectedVersion::Any,
            vec![marker(consumer, message)],
        );
        match platform.store.append(batch).await {
            Ok(_) => return,
            Err(error) if is_already_handled(&error) => return,
            Err(error) => {
                tracing::debug!(%consumer, %error, "inbox marker not stored; retrying");
                platform.pause(&mut backoff).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_ids_depend_on_consumer_and_message_only() {
        let m = EventId(0x1234);
        assert_eq!(marker_id("a", m), marker_id("a", m));
        assert_ne!(marker_id("a", m), marker_id("b", m));
        assert_ne!(marker_id("a", m), marker_id("a", EventId(0x1235)));
        // The separator keeps ("ab", x) and ("a", "b"+x) apart.
        assert_ne!(marker_id("ab", m), marker_id("a", m));
        // Same ids as the one-shot hash of the concatenation (ids are stored durably).
        let mut bytes = b"a\0".to_vec();
        bytes.extend_from_slice(&m.0.to_le_bytes());
        assert_eq!(
            marker_id("a", m),
            EventId(xxhash_rust::xxh3::xxh3_128(&bytes))
        );
    }

    #[test]
    fn marker_payload_names_the_message() {
        let m = EventId(0xabc);
        assert_eq!(
            marker("c", m).payload,
            Payload::from_json_text(format!("{{\"message\":\"{m}\"}}"))
        );
    }

    #[test]
    fn a_redelivered_copy_is_a_new_message_and_its_duplicates_are_not() {
        let original = EventId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let headers = Headers::default().with(header::EVENT_ID, format_event_id(original));
        assert_eq!(message_id_in(&headers), Some(original));
        let first = headers.clone().with(REDELIVERED_FROM_HEADER, "7");
        let again = headers.clone().with(REDELIVERED_FROM_HEADER, "7");
        let second = first.clone().with(REDELIVERED_FROM_HEADER, "9");
        let first_id = message_id_in(&first).unwrap();
        assert_ne!(first_id, original);
        assert_eq!(message_id_in(&again), Some(first_id));
        assert_ne!(message_id_in(&second), Some(first_id));
        assert_eq!(message_id_in(&Headers::default()), None);
    }
}
