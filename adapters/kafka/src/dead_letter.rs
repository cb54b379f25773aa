//! Poison messages: retry what may pass, park what cannot in a dead-letter topic, and let an
//! operator list, inspect and replay what was parked.
//!
//! Why a topic and not a table: the dead letter keeps the original key, payload and
//! headers byte for byte (it may be undecodable), lands on the same partition for the same
//! key (so replay keeps per-key order), is retained and replicated like the original, and
//! needs nothing but the broker. Each dead letter carries where it came from and why in
//! `reprise-dlq-*` headers ([`header`]).
//!
//! The flow, in [`DeadLetterHandler::handle`]: run the handler; on
//! [`HandlerError::Transient`] retry under the [`DeadLetterPolicy`]'s core
//! [`RetryPolicy`](reprise_core::RetryPolicy) (exponential backoff with jitter, pauses on
//! the environment's clock) up to its `max_attempts`; on [`HandlerError::Permanent`] (or
//! when retries are exhausted) publish the message to `<topic><suffix>` (default `.dlq`,
//! [`KafkaConfig::dead_letter_suffix`](crate::KafkaConfig::dead_letter_suffix)), await the
//! broker's acknowledgement, and only then `ack` the original, so a crash in between
//! redelivers the message instead of losing it (the dead letter may then exist twice; replay
//! is idempotent for idempotent handlers). Offsets never stall behind a poison message.
//!
//! A concurrency conflict or any error the caller can resolve by itself must not be sent
//! here: classify it as transient, or handle it before returning.
//!
//! A dead letter that cannot be written (the topic is unreachable, or refuses the write) is
//! retried under [`KafkaConfig::dead_letter_retry`](crate::KafkaConfig::dead_letter_retry),
//! then reported — counter `reprise_bus_dead_letter_failures_total`, an error log, and the
//! error itself to the caller — and the original stays unacknowledged: its partition's
//! commits stop before it, loudly, instead of skipping it.
//!
//! Two ways to work with what was parked: [`DeadLetterQueue`] (list, inspect and replay the
//! raw records, byte for byte) and [`KafkaDeadLetterQueue`], the
//! [`reprise_core::resilience::DeadLetterQueue`] on a dead-letter topic, which also records
//! resolutions (retried, discarded) durably in `<dead-letter-topic>.resolutions`. Both read
//! the one header encoding ([`header`]) that the handler, the subscription and
//! [`KafkaDeadLetterQueue`]'s `put` write.
//!
//! ## Modules
//!
//! | module | concern |
//! |---|---|
//! | `envelope` | the header codec: the `reprise-dlq-*` headers ([`header`]), written and read in one place |
//! | `handler` | [`DeadLetterHandler`]: retry, dead-letter, then acknowledge |
//! | `raw` | [`DeadLetterQueue`]: raw letters, byte for byte — list, inspect, replay |
//! | `queue` | [`KafkaDeadLetterQueue`]: the core contract, with durable resolutions |
//! | `reader` | group-less reads of a topic, shared by both queues |

use reprise_core::BusError;
use reprise_core::resilience::{Classify, ErrorClass};

mod envelope;
mod handler;
mod queue;
mod raw;
mod reader;

pub use envelope::header;
pub(crate) use envelope::{Failure, send_retrying};
pub use handler::{DeadLetterHandler, DeadLetterPolicy, HandlerError, Outcome};
pub use queue::{KafkaDeadLetterQueue, RESOLUTIONS_SUFFIX, TopicLayout};
pub use raw::{DeadLetter, DeadLetterQueue};

/// Errors of the dead-letter tools.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeadLetterError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("invalid dead-letter policy: {0}")]
    InvalidPolicy(String),
    #[error("no message at {topic}/{partition}@{offset}")]
    NotFound {
        topic: String,
        partition: u32,
        offset: u64,
    },
    #[error("{coordinates} is not a dead letter: {problem}")]
    Malformed {
        coordinates: String,
        problem: String,
    },
}

impl Classify for DeadLetterError {
    fn class(&self) -> ErrorClass {
        match self {
            DeadLetterError::Bus(e) => e.class(),
            DeadLetterError::InvalidPolicy(_)
            | DeadLetterError::NotFound { .. }
            | DeadLetterError::Malformed { .. } => ErrorClass::Permanent,
        }
    }
}
