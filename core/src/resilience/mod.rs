//! Resilience: what happens when a dependency fails — retry it, stop calling it, or park
//! the work for an operator — decided by the error's class and driven entirely by the
//! environment's clock and entropy, so the simulator replays every retry and every
//! breaker transition exactly.
//!
//! - [`classify`]: transient, permanent or conflict; the one question asked first.
//! - [`retry`]: exponential backoff with jitter (`backon`'s arithmetic, our clock).
//! - [`breaker`]: a circuit breaker per dependency.
//! - [`dead_letter`]: the dead-letter queue contract and redelivery.
//! - [`policy`]: per-dependency policies and [`Resilience::call`], which composes them.
//!
//! See `docs/error-handling.md` for the policies, the classification table and the
//! operator's side of dead letters.

pub mod breaker;
pub mod classify;
pub mod dead_letter;
pub mod policy;
pub mod retry;

pub use breaker::{BreakerConfig, BreakerState, CallOutcome, CircuitBreaker, CircuitOpen, Permit};
pub use classify::{ClassifiedError, Classify, ErrorClass};
pub use dead_letter::{
    DeadLetter, DeadLetterError, DeadLetterId, DeadLetterQuery, DeadLetterQueue, DeadLetterStats,
    DeadLetterStatus, InMemoryDeadLetterQueue, NewDeadLetter, Resolution, redeliver,
};
pub use policy::{CallError, CallFailure, DependencyPolicy, EVENT_BUS, EVENT_STORE, Resilience};
pub use retry::{Backoff, RetryError, RetryPolicy};
