//! # reprise-kafka
//!
//! The production [`EventBus`](reprise_core::EventBus) on any Kafka-API broker (Apache
//! Kafka, Redpanda, MSK, Event Hubs, Confluent Cloud, tansu), through `rdkafka`. It passes
//! the same [`conformance`](reprise_core::conformance) suite as the in-memory and simulated
//! buses, so code tested in the simulator meets the same semantics here:
//!
//! - **Per-key order, no duplicates from retries**: an idempotent producer with `acks=all`;
//!   the key is the stream id, and librdkafka's `murmur2_random` partitioner puts a key on
//!   the partition [`partition_for_key`](reprise_core::event_bus::partition_for_key)
//!   predicts (the Java client's hash), whichever client wrote it.
//! - **At-least-once consumption**: no automatic commits; an offset is committed only once
//!   the message and every earlier one of its partition are acknowledged
//!   ([`offsets`]); rebalances commit the handled prefix before giving partitions away.
//! - **Poison messages** go to a dead-letter topic, can be listed, inspected and replayed
//!   ([`dead_letter`]).
//!   [`KafkaDeadLetterQueue`] serves them through the core
//!   [`DeadLetterQueue`](reprise_core::resilience::DeadLetterQueue) contract, with durable
//!   resolutions; errors classify as transient or permanent ([`classify`], [`KafkaError`]).
//! - **Observability**: lag, throughput, commits, rebalances and errors as `metrics`
//!   ([`metrics`]), warnings through `tracing`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use reprise_core::event_bus::{EventBus, Subscription};
//! use reprise_kafka::{KafkaConfig, KafkaEventBus};
//!
//! let config = KafkaConfig::new("127.0.0.1:9092")
//!     .client_id("billing")
//!     .group_timing(Duration::from_secs(6), Duration::from_millis(500));
//! let bus = KafkaEventBus::new(config)?;
//! bus.create_topic("orders", 6, 1).await?;
//! let mut sub = bus.subscribe("billing", &["orders"]).await?;
//! let delivery = sub.next().await?;
//! // … handle it (idempotently: deduplicate by event id) …
//! sub.ack(&delivery);
//! sub.commit().await?;
//! # Ok(()) }
//! ```
//!
//! `docs/event-bus.md` covers topics, keys, groups, offsets, rebalancing, lag, dead letters
//! and configuration for managed services.

// A production adapter: it talks to a real broker on real time, so the determinism lints
// (wall clock, tokio spawn/sleep, HashMap) that guard the pure crates do not apply here.
// Nothing in this crate runs inside the simulator; `reprise-sim` has its own bus.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod bus;
mod config;
mod consumer;
pub mod dead_letter;
mod error;
pub mod metrics;
pub mod offsets;

pub use bus::{KafkaEventBus, Receipt};
pub use config::{
    ConfigError, DEAD_LETTER_RETRY, KafkaConfig, MessageCheck, OffsetReset, parse_properties,
};
pub use consumer::{GroupContext, KafkaSubscription};
pub use dead_letter::{
    DeadLetter, DeadLetterError, DeadLetterHandler, DeadLetterPolicy, DeadLetterQueue,
    HandlerError, Outcome,
};
pub use dead_letter::{KafkaDeadLetterQueue, RESOLUTIONS_SUFFIX, TopicLayout};
pub use error::{KafkaError, classify};
