//! What a service instance gets from the platform it runs on, in one cloneable bundle.
//!
//! Every field is a reprise-core trait object: the simulator hands in its seeded runtime
//! and fault-injecting store and bus, production hands in tokio, PostgreSQL and Kafka.
//! Nothing in this crate reaches around it — which is what lets the simulator run the
//! host unchanged.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reprise_core::resilience::Backoff;
use reprise_core::{EventBus, EventStore, Resilience, RetryPolicy, SharedRuntime};

/// Writes a line into the run's trace (the simulator) or a debug log (production). The
/// arguments are formatted only if the sink wants text, so notes cost nothing in bulk
/// sweeps.
pub type Notes = Arc<dyn Fn(fmt::Arguments<'_>) + Send + Sync>;

/// Pauses between tries of store and bus operations the host must eventually get done
/// (subscribing, receiving, publishing, recording): 20 ms doubling to 1 s, with jitter.
/// External services are not retried with this: they go through [`Platform::resilience`].
pub const DEFAULT_BACKOFF: RetryPolicy = RetryPolicy {
    max_attempts: 8,
    initial_delay: Duration::from_millis(20),
    max_delay: Duration::from_secs(1),
    multiplier: 2.0,
    jitter: true,
};

/// The platform of one service instance.
#[derive(Clone)]
pub struct Platform {
    pub runtime: SharedRuntime,
    pub store: Arc<dyn EventStore>,
    pub bus: Arc<dyn EventBus>,
    pub notes: Notes,
    /// Retry policies, circuit breakers and dead-letter queue for calls to external
    /// services. One per service *instance*: breaker state is volatile, so a restarted
    /// process starts with closed breakers, as a real one would.
    pub resilience: Arc<Resilience>,
    /// The ladder of [`Platform::backoff`].
    pub retry: RetryPolicy,
}

impl fmt::Debug for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Platform")
            .field("runtime", &self.runtime)
            .field("resilience", &self.resilience)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Platform {
    /// A platform with default resilience (no policies, fresh breakers, no dead-letter
    /// queue), no notes and [`DEFAULT_BACKOFF`].
    #[must_use]
    pub fn new(runtime: SharedRuntime, store: Arc<dyn EventStore>, bus: Arc<dyn EventBus>) -> Self {
        Platform {
            runtime,
            store,
            bus,
            notes: Arc::new(|_| {}),
            resilience: Arc::new(Resilience::new()),
            retry: DEFAULT_BACKOFF,
        }
    }

    /// Replaces the resilience policies (and with them the breakers and the dead-letter
    /// queue).
    #[must_use]
    pub fn with_resilience(mut self, resilience: Arc<Resilience>) -> Self {
        self.resilience = resilience;
        self
    }

    #[must_use]
    pub fn with_notes(mut self, notes: Notes) -> Self {
        self.notes = notes;
        self
    }

    /// Replaces the store (e.g. with a wrapper).
    #[must_use]
    pub fn with_store(mut self, store: Arc<dyn EventStore>) -> Self {
        self.store = store;
        self
    }

    /// Replaces the bus (e.g. with a wrapper, or a namespaced view).
    #[must_use]
    pub fn with_bus(mut self, bus: Arc<dyn EventBus>) -> Self {
        self.bus = bus;
        self
    }

    /// # Panics
    /// If `retry` is invalid or never pauses.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        drop(Backoff::new(retry));
        self.retry = retry;
        self
    }

    /// Records a trace note.
    pub fn note(&self, text: fmt::Arguments<'_>) {
        (self.notes)(text);
    }

    /// Sleeps on the environment's clock.
    pub async fn sleep(&self, duration: Duration) {
        self.runtime.sleep(duration).await;
    }

    /// A fresh backoff on [`Platform::retry`]; keep one per loop.
    #[must_use]
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.retry)
    }

    /// Sleeps `backoff`'s next pause on this platform's clock.
    pub async fn pause(&self, backoff: &mut Backoff) {
        backoff.pause(self.runtime.as_ref()).await;
    }
}
