//! Transient, permanent or conflict: the one question every failure must answer before
//! anything retries it.
//!
//! The class decides what the machinery does — nothing else does:
//!
//! | class       | retried?              | counts against the breaker? | dead-lettered? |
//! |-------------|-----------------------|-----------------------------|----------------|
//! | `Transient` | yes, with backoff     | yes                         | after the last attempt |
//! | `Permanent` | no                    | no (the service answered)   | yes            |
//! | `Conflict`  | never blindly         | no                          | **never**      |
//!
//! A conflict (optimistic concurrency lost a race) is not a fault: the caller must reload
//! and decide again, which the aggregate machinery does. Retrying the same write would
//! either fail forever or, worse, succeed on stale state; parking it in a dead-letter queue
//! would turn a normal race into an operator's ticket. Each adapter classifies its own
//! errors (a PostgreSQL serialization failure is transient, a constraint violation is
//! permanent) by implementing [`Classify`] for its error type or by mapping into
//! [`StoreError`] / [`BusError`], whose classes are fixed here.

use std::fmt;

use crate::event_bus::BusError;
use crate::event_store::StoreError;

/// What kind of failure an error is. See the module docs for what each class causes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorClass {
    /// Worth trying again after a pause: unreachable, overloaded, timed out.
    Transient,
    /// Will fail again the same way: malformed input, a refusal, a missing resource.
    Permanent,
    /// Lost an optimistic-concurrency race: reload and decide again.
    Conflict,
}

impl ErrorClass {
    /// A short, bounded label for metrics and logs.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Conflict => "conflict",
        }
    }

    /// Whether the retry policy may try the same request again.
    #[must_use]
    pub const fn is_retryable(self) -> bool {
        matches!(self, ErrorClass::Transient)
    }

    /// Whether the failure says something about the dependency's health (and so counts
    /// against its circuit breaker). A permanent error or a conflict is an *answer*.
    #[must_use]
    pub const fn indicts_dependency(self) -> bool {
        matches!(self, ErrorClass::Transient)
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error that knows its [`ErrorClass`].
pub trait Classify {
    fn class(&self) -> ErrorClass;
}

impl Classify for ErrorClass {
    fn class(&self) -> ErrorClass {
        *self
    }
}

impl<E: Classify + ?Sized> Classify for &E {
    fn class(&self) -> ErrorClass {
        (**self).class()
    }
}

impl Classify for StoreError {
    fn class(&self) -> ErrorClass {
        match self {
            StoreError::Conflict { .. } => ErrorClass::Conflict,
            // A timed-out write is retried with the very same batch: the store recognises
            // its event ids, so the retry cannot write twice.
            StoreError::Transient(_) | StoreError::Timeout => ErrorClass::Transient,
            StoreError::DuplicateEventId(_)
            | StoreError::InvalidBatch(_)
            | StoreError::Permanent(_) => ErrorClass::Permanent,
        }
    }
}

impl Classify for BusError {
    fn class(&self) -> ErrorClass {
        match self {
            BusError::Transient(_) | BusError::Timeout => ErrorClass::Transient,
            // A revoked partition is redelivered to its new owner: retrying here would
            // process the message twice in parallel.
            BusError::UnknownTopic(_)
            | BusError::Revoked { .. }
            | BusError::Closed
            | BusError::Permanent(_) => ErrorClass::Permanent,
        }
    }
}

/// An error with an explicit class, for callers whose own error type does not implement
/// [`Classify`] (an HTTP client's, say).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ClassifiedError {
    pub class: ErrorClass,
    pub message: String,
}

impl ClassifiedError {
    pub fn transient(message: impl fmt::Display) -> Self {
        ClassifiedError {
            class: ErrorClass::Transient,
            message: message.to_string(),
        }
    }

    pub fn permanent(message: impl fmt::Display) -> Self {
        ClassifiedError {
            class: ErrorClass::Permanent,
            message: message.to_string(),
        }
    }

    pub fn conflict(message: impl fmt::Display) -> Self {
        ClassifiedError {
            class: ErrorClass::Conflict,
            message: message.to_string(),
        }
    }
}

impl Classify for ClassifiedError {
    fn class(&self) -> ErrorClass {
        self.class
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExpectedVersion, StreamId};

    #[test]
    fn store_conflicts_are_conflicts_not_transient() {
        let conflict = StoreError::Conflict {
            stream: StreamId::new("s"),
            expected: ExpectedVersion::Exact(1),
            actual: 2,
        };
        assert_eq!(conflict.class(), ErrorClass::Conflict);
        assert!(!conflict.class().is_retryable());
        assert!(!conflict.class().indicts_dependency());
        assert_eq!(StoreError::Timeout.class(), ErrorClass::Transient);
        assert_eq!(
            StoreError::InvalidBatch("x".into()).class(),
            ErrorClass::Permanent
        );
    }

    #[test]
    fn bus_errors_classify_like_their_retry_semantics() {
        assert_eq!(BusError::Timeout.class(), ErrorClass::Transient);
        assert_eq!(
            BusError::UnknownTopic("t".into()).class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            BusError::Revoked {
                topic: "t".into(),
                partition: 0
            }
            .class(),
            ErrorClass::Permanent
        );
    }
}
