//! Poison: messages no handler can take, produced onto a topic the shop consumes by a plain
//! Kafka client — not through Reprise's bus, which would never write them. Each shape is
//! one the consumers must dead-letter with its reason (and then commit past), never drop
//! silently and never stall on: no headers and a payload that is not JSON, a malformed
//! event id, bytes that are not UTF-8, a tombstone (a key and no payload).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use reprise_core::event_bus::header;
use reprise_scenarios::checkout::saga::topics;

use crate::DrillError;

/// The topic the poison goes to: consumed by one group (the orders service), so each
/// message is owed exactly one letter.
pub const TOPIC: &str = topics::ORDERS;

/// Where one poison message landed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Produced {
    pub shape: &'static str,
    pub partition: i32,
    pub offset: i64,
}

/// Produces one message of each shape onto [`TOPIC`] and returns where each landed.
///
/// # Errors
/// The broker refuses or does not acknowledge a message within 30 s.
pub async fn produce(bootstrap: &str, batch: u32) -> Result<Vec<Produced>, DrillError> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("allow.auto.create.topics", "false")
        .set("message.timeout.ms", "30000")
        .create()
        .map_err(|e| DrillError::Fault(format!("cannot create the poison producer: {e}")))?;
    let key = format!("poison-{batch}");
    let key = key.as_str();
    let bad_id = OwnedHeaders::new().insert(Header {
        key: header::EVENT_ID,
        value: Some("not-an-event-id"),
    });
    let shapes: [(&'static str, FutureRecord<'_, str, [u8]>); 4] = [
        (
            "no headers, not JSON",
            FutureRecord::to(TOPIC)
                .key(key)
                .payload(&b"this is not json"[..]),
        ),
        (
            "malformed event id",
            FutureRecord::to(TOPIC)
                .key(key)
                .payload(&b"{}"[..])
                .headers(bad_id),
        ),
        (
            "not UTF-8",
            FutureRecord::to(TOPIC)
                .key(key)
                .payload(&[0xff, 0xfe, 0x00, 0x80][..]),
        ),
        ("tombstone", FutureRecord::to(TOPIC).key(key)),
    ];
    let mut produced = Vec::new();
    for (shape, record) in shapes {
        let delivery = producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| DrillError::Fault(format!("poison '{shape}' not produced: {e}")))?;
        produced.push(Produced {
            shape,
            partition: delivery.partition,
            offset: delivery.offset,
        });
    }
    Ok(produced)
}
