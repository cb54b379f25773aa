//! The event-driven plumbing both scenarios share, written only against reprise-core's
//! traits (`Runtime`, `EventStore`, `EventBus`) so that the simulator and the production
//! adapters (tokio + PostgreSQL + Kafka) run the very same code:
//!
//! - [`outbox`]: the relay that publishes stored events to the bus (append and publish
//!   cannot diverge, because the bus is fed *from* the store);
//! - [`commands`]: a saga's commands as bus messages, one topic per target service;
//! - [`inbox`]: a consumer's durable record of handled messages, written atomically with
//!   the handler's effect — what makes "each message takes effect once" true and checkable;
//! - [`cache`]: load–decide–append with an aggregate cache, optimistic concurrency, and the
//!   inbox marker in the same batch;
//! - [`consumer`]: the consume loop (ack only after handling, commit contiguously);
//! - [`saga_host`]: one saga store per instance, recovered after a restart.

pub mod cache;
pub mod commands;
pub mod consumer;
pub mod env;
pub mod inbox;
pub mod outbox;
pub mod saga_host;

pub use env::{Backoff, Notes, ServiceEnv};
