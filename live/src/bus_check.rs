//! The consumer-side invariants, checked on the real broker.
//!
//! In the simulator, [`CheckoutAudit::check_consumers`] reads the in-memory bus: its
//! messages and each group's committed offsets. A Kafka broker can tell the same two
//! things — `OffsetFetch` gives a group's committed offsets without joining it, and an
//! assigned (group-less) consumer reads a partition from the beginning — so the same two
//! invariants are checked here, under the same names:
//!
//! - [`invariant::NOTHING_LOST`]: every message below a checkout group's committed offset
//!   has that group's inbox marker in the store (the consumer acknowledged it, so its
//!   effect must be durable) — or a dead letter in the topic's dead-letter topic naming
//!   that message and group (a message no handler could take, parked with its reason: it
//!   was handled by being parked). A committed message with neither, including one without
//!   an event id, was dropped without a trace;
//! - [`invariant::BUS_ORDER`]: on `checkout.events`, each stream's versions first appear
//!   in order, without a gap.
//!
//! The reads are blocking librdkafka calls, run on tokio's blocking pool.
//!
//! [`CheckoutAudit::check_consumers`]: reprise_scenarios::checkout::invariants::CheckoutAudit::check_consumers

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers as _, Message};
use rdkafka::{Offset, TopicPartitionList};
use reprise_core::EventId;
use reprise_core::event_bus::header;
use reprise_host::{ids, inbox};
use reprise_kafka::dead_letter::header as dlq;
use reprise_scenarios::audit::{Finding, invariant};
use reprise_scenarios::checkout::saga::topics;
use reprise_scenarios::checkout::services::groups;

use crate::LiveError;

/// One message as the checker needs it.
#[derive(Clone, Debug)]
struct Read {
    offset: u64,
    event_id: Option<EventId>,
    stream: Option<String>,
    version: Option<u64>,
    /// On a dead-letter topic: the original's topic, partition and offset (broker names),
    /// and the group that parked it.
    letter: Option<Letter>,
}

#[derive(Clone, Debug, Default)]
struct Letter {
    topic: Option<String>,
    partition: Option<u32>,
    offset: Option<u64>,
    group: Option<String>,
}

/// What the consumer checks looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BusCheck {
    /// Messages on the checkout's topics.
    pub messages: u64,
    /// Messages below a group's committed offset, each verified to have taken effect.
    pub acknowledged_verified: u64,
    /// Messages no group has committed past yet (informational).
    pub uncommitted: u64,
    /// Messages below a group's committed offset that the group dead-lettered (each
    /// verified to be in the dead-letter topic).
    pub dead_lettered: u64,
}

/// Reads the checkout's topics and groups (broker names: `prefix` + scenario name) and
/// checks them against `markers`, the ids of every inbox marker in the store.
///
/// # Errors
/// [`LiveError::Broker`] if the broker cannot be read; otherwise the findings are in the
/// returned vector (empty when both invariants hold).
pub async fn check(
    bootstrap: String,
    properties: BTreeMap<String, String>,
    prefix: String,
    partitions: u32,
    markers: BTreeSet<EventId>,
    timeout: Duration,
) -> Result<(BusCheck, Vec<Finding>), LiveError> {
    tokio::task::spawn_blocking(move || {
        check_blocking(
            &bootstrap,
            &properties,
            &prefix,
            partitions,
            &markers,
            timeout,
        )
    })
    .await
    .map_err(|e| LiveError::Broker(format!("bus check task failed: {e}")))?
}

fn client(
    bootstrap: &str,
    properties: &BTreeMap<String, String>,
    group: &str,
) -> Result<BaseConsumer, LiveError> {
    let mut config = ClientConfig::new();
    for (name, value) in properties {
        config.set(name, value);
    }
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("allow.auto.create.topics", "false")
        .create()
        .map_err(|e| LiveError::Broker(format!("cannot create a checker client: {e}")))
}

fn partition_i32(partition: u32) -> i32 {
    i32::try_from(partition).unwrap_or(i32::MAX)
}

/// Every message of `topic` (broker name) up to the high watermark at the time of the
/// call, per partition in offset order.
fn read_topic(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: u32,
    timeout: Duration,
) -> Result<Vec<Vec<Read>>, LiveError> {
    let mut ends = Vec::new();
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition_i32(partition), timeout)
            .map_err(|e| LiveError::Broker(format!("watermarks of {topic}/{partition}: {e}")))?;
        if low != 0 {
            return Err(LiveError::Broker(format!(
                "{topic}/{partition} starts at offset {low}: retention removed messages the check needs"
            )));
        }
        ends.push(u64::try_from(high).unwrap_or(0));
        list.add_partition_offset(topic, partition_i32(partition), Offset::Beginning)
            .map_err(|e| LiveError::Broker(format!("assign {topic}/{partition}: {e}")))?;
    }
    consumer
        .assign(&list)
        .map_err(|e| LiveError::Broker(format!("assign {topic}: {e}")))?;
    let mut read: Vec<Vec<Read>> = vec![Vec::new(); ends.len()];
    let deadline = Instant::now() + timeout;
    let complete = |read: &Vec<Vec<Read>>| {
        read.iter()
            .zip(&ends)
            .all(|(messages, end)| messages.last().map_or(0, |m| m.offset + 1) >= *end)
    };
    while !complete(&read) {
        if Instant::now() > deadline {
            return Err(LiveError::Broker(format!(
                "reading {topic} back took longer than {timeout:?}"
            )));
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.map_err(|e| LiveError::Broker(format!("read {topic}: {e}")))?;
        let (Ok(partition), Ok(offset)) = (
            usize::try_from(message.partition()),
            u64::try_from(message.offset()),
        ) else {
            continue;
        };
        let mut entry = Read {
            offset,
            event_id: None,
            stream: None,
            version: None,
            letter: None,
        };
        if let Some(headers) = message.headers() {
            for h in headers.iter() {
                let Some(value) = h.value.and_then(|v| std::str::from_utf8(v).ok()) else {
                    continue;
                };
                match h.key {
                    header::EVENT_ID => entry.event_id = ids::parse_event_id(value),
                    header::STREAM => entry.stream = Some(value.to_owned()),
                    header::STREAM_VERSION => entry.version = value.parse().ok(),
                    dlq::ORIGINAL_TOPIC => {
                        entry.letter.get_or_insert_with(Letter::default).topic =
                            Some(value.to_owned());
                    }
                    dlq::ORIGINAL_PARTITION => {
                        entry.letter.get_or_insert_with(Letter::default).partition =
                            value.parse().ok();
                    }
                    dlq::ORIGINAL_OFFSET => {
                        entry.letter.get_or_insert_with(Letter::default).offset =
                            value.parse().ok();
                    }
                    dlq::GROUP => {
                        entry.letter.get_or_insert_with(Letter::default).group =
                            Some(value.to_owned());
                    }
                    _ => {}
                }
            }
        }
        if let Some(messages) = read.get_mut(partition) {
            messages.push(entry);
        }
    }
    consumer
        .unassign()
        .map_err(|e| LiveError::Broker(format!("unassign {topic}: {e}")))?;
    Ok(read)
}

/// The partition count of `topic`, or `None` when it does not exist.
fn partition_count(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Option<u32>, LiveError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| LiveError::Broker(format!("metadata of {topic}: {e}")))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| u32::try_from(t.partitions().len()).unwrap_or(u32::MAX)))
}

fn check_blocking(
    bootstrap: &str,
    properties: &BTreeMap<String, String>,
    prefix: &str,
    partitions: u32,
    markers: &BTreeSet<EventId>,
    timeout: Duration,
) -> Result<(BusCheck, Vec<Finding>), LiveError> {
    let reader = client(bootstrap, properties, &format!("{prefix}live-checker"))?;
    let mut summary = BusCheck::default();
    let mut findings = Vec::new();
    let mut contents: BTreeMap<&str, Vec<Vec<Read>>> = BTreeMap::new();
    for (_, topic) in groups::ALL {
        if contents.contains_key(topic) {
            continue;
        }
        let read = read_topic(&reader, &format!("{prefix}{topic}"), partitions, timeout)?;
        summary.messages += read.iter().map(|p| p.len() as u64).sum::<u64>();
        contents.insert(topic, read);
    }

    // What each group parked: (group, topic, partition, offset), broker names. A letter
    // without a group (written by a handler that did not say) counts for every group.
    let mut parked: BTreeSet<(String, String, u32, u64)> = BTreeSet::new();
    for (_, topic) in groups::ALL {
        let dead_letter_topic = format!("{prefix}{topic}.dlq");
        let Some(partitions) = partition_count(&reader, &dead_letter_topic, timeout)? else {
            continue;
        };
        for message in read_topic(&reader, &dead_letter_topic, partitions, timeout)?
            .into_iter()
            .flatten()
        {
            if let Some(Letter {
                topic: Some(topic),
                partition: Some(partition),
                offset: Some(offset),
                group,
            }) = message.letter
            {
                parked.insert((group.unwrap_or_default(), topic, partition, offset));
            }
        }
    }

    // Each stream's events first appear on the events topic in version order.
    'partitions: for (partition, messages) in contents[topics::EVENTS].iter().enumerate() {
        let mut highest: BTreeMap<&str, u64> = BTreeMap::new();
        for message in messages {
            let (Some(stream), Some(version)) = (&message.stream, message.version) else {
                continue;
            };
            let seen = highest.entry(stream.as_str()).or_default();
            if version > *seen + 1 {
                findings.push(Finding::new(
                    invariant::BUS_ORDER,
                    vec![stream.clone()],
                    format!(
                        "{}/{partition}@{} carries v{version} of {stream} before v{}",
                        topics::EVENTS,
                        message.offset,
                        *seen + 1
                    ),
                ));
                break 'partitions;
            }
            *seen = (*seen).max(version);
        }
    }

    // Every acknowledged message took effect.
    'groups: for (group, topic) in groups::ALL {
        let consumer = client(bootstrap, properties, &format!("{prefix}{group}"))?;
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition(&format!("{prefix}{topic}"), partition_i32(partition));
        }
        let committed = consumer
            .committed_offsets(list, timeout)
            .map_err(|e| LiveError::Broker(format!("committed offsets of {group}: {e}")))?;
        for element in committed.elements() {
            let Ok(partition) = usize::try_from(element.partition()) else {
                continue;
            };
            let below = match element.offset() {
                Offset::Offset(n) => u64::try_from(n).unwrap_or(0),
                _ => 0,
            };
            let messages = &contents[topic][partition];
            let (broker_group, broker_topic) =
                (format!("{prefix}{group}"), format!("{prefix}{topic}"));
            let partition_u32 = u32::try_from(partition).unwrap_or(u32::MAX);
            for message in messages {
                if message.offset >= below {
                    summary.uncommitted += 1;
                    continue;
                }
                let was_parked = |by: &str| {
                    parked.contains(&(
                        by.to_owned(),
                        broker_topic.clone(),
                        partition_u32,
                        message.offset,
                    ))
                };
                if was_parked(&broker_group) || was_parked("") {
                    summary.dead_lettered += 1;
                    continue;
                }
                let Some(id) = message.event_id else {
                    findings.push(Finding::new(
                        invariant::NOTHING_LOST,
                        Vec::new(),
                        format!(
                            "{group} committed past {topic}/{partition}@{}, a message without a valid event id, but never dead-lettered it",
                            message.offset
                        ),
                    ));
                    break 'groups;
                };
                if !markers.contains(&inbox::marker_id(group, id)) {
                    let mut entities = Vec::new();
                    entities.extend(message.stream.clone());
                    findings.push(Finding::new(
                        invariant::NOTHING_LOST,
                        entities,
                        format!(
                            "{group} committed past {topic}/{partition}@{} but never recorded handling message {id}",
                            message.offset
                        ),
                    ));
                    break 'groups;
                }
                summary.acknowledged_verified += 1;
            }
        }
    }
    Ok((summary, findings))
}
