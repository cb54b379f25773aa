//! Group-less reads of a topic (nothing committed anywhere, no group disturbed): what both
//! queues list and inspect with.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use reprise_core::BusError;

use crate::bus::blocking;
use crate::config::KafkaConfig;
use crate::error::to_bus_error;

/// Up to `limit` records of `topic`, partition by partition, oldest first, up to the high
/// watermarks read at the start. A group-less reader: nothing is committed anywhere.
pub(super) async fn read_topic(
    config: &KafkaConfig,
    topic: &str,
    partitions: u32,
    limit: usize,
) -> Result<Vec<OwnedMessage>, BusError> {
    let (config, topic) = (config.clone(), topic.to_owned());
    blocking(move || {
        let reader: BaseConsumer = config
            .reader_config()
            .create()
            .map_err(|e| to_bus_error(&e, &topic))?;
        let mut out = Vec::new();
        for partition in 0..partitions {
            if out.len() >= limit {
                break;
            }
            read_partition(
                &reader,
                &topic,
                partition,
                None,
                limit - out.len(),
                config.operation_timeout,
                &mut out,
            )?;
        }
        Ok(out)
    })
    .await
}

/// The record at exactly `partition@offset` of `topic`, if there is one.
pub(super) async fn read_at(
    config: &KafkaConfig,
    topic: &str,
    partition: u32,
    offset: u64,
) -> Result<Option<OwnedMessage>, BusError> {
    let (config, name) = (config.clone(), topic.to_owned());
    let found = blocking(move || {
        let reader: BaseConsumer = config
            .reader_config()
            .create()
            .map_err(|e| to_bus_error(&e, &name))?;
        let mut out = Vec::new();
        read_partition(
            &reader,
            &name,
            partition,
            Some(offset),
            1,
            config.operation_timeout,
            &mut out,
        )?;
        Ok(out.pop())
    })
    .await?;
    // Reading from a missing offset (compacted, or a gap) starts at the next record.
    Ok(found.filter(|m| u64::try_from(m.offset()).ok() == Some(offset)))
}

/// Reads `partition` from `from` (or its low watermark) up to the high watermark as of now,
/// at most `limit` records.
fn read_partition(
    reader: &BaseConsumer,
    topic: &str,
    partition: u32,
    from: Option<u64>,
    limit: usize,
    timeout: Duration,
    out: &mut Vec<rdkafka::message::OwnedMessage>,
) -> Result<(), BusError> {
    let p = i32::try_from(partition)
        .map_err(|_| BusError::Permanent(format!("partition {partition} out of range")))?;
    let (low, high) = reader
        .fetch_watermarks(topic, p, timeout)
        .map_err(|e| to_bus_error(&e, topic))?;
    let start = match from {
        Some(offset) => i64::try_from(offset).unwrap_or(i64::MAX),
        None => low,
    };
    if start < low || start >= high || limit == 0 {
        return Ok(());
    }
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, p, Offset::Offset(start))
        .map_err(|e| to_bus_error(&e, topic))?;
    reader.assign(&list).map_err(|e| to_bus_error(&e, topic))?;
    let deadline = std::time::Instant::now() + timeout;
    let mut read = 0;
    while read < limit {
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let offset = message.offset();
                out.push(message.detach());
                read += 1;
                if offset + 1 >= high {
                    break;
                }
            }
            Some(Err(e)) => return Err(to_bus_error(&e, topic)),
            None if std::time::Instant::now() > deadline => return Err(BusError::Timeout),
            None => {}
        }
    }
    reader.unassign().map_err(|e| to_bus_error(&e, topic))?;
    Ok(())
}
