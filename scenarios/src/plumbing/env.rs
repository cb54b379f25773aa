//! What a service needs from the platform it runs on, in one cloneable bundle.
//!
//! Every field is a reprise-core trait object: the simulator hands in its seeded runtime
//! and fault-injecting store and bus, production hands in tokio, PostgreSQL and Kafka.
//! Nothing in this crate reaches around it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reprise_core::{EventBus, EventStore, Resilience, SharedRuntime};

/// Writes a line into the run's trace (the simulator) or a log (production). The
/// arguments are formatted only if the sink wants text, so notes cost nothing in bulk
/// sweeps.
pub type Notes = Arc<dyn Fn(fmt::Arguments<'_>) + Send + Sync>;

/// The platform of one service instance.
#[derive(Clone)]
pub struct ServiceEnv {
    pub runtime: SharedRuntime,
    pub store: Arc<dyn EventStore>,
    pub bus: Arc<dyn EventBus>,
    pub notes: Notes,
    /// Retry policies, circuit breakers and dead-letter queue for calls to external
    /// services. One per service *instance*: breaker state is volatile, so a restarted
    /// process starts with closed breakers, as a real one would.
    pub resilience: Arc<Resilience>,
}

impl fmt::Debug for ServiceEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceEnv")
            .field("runtime", &self.runtime)
            .field("resilience", &self.resilience)
            .finish_non_exhaustive()
    }
}

impl ServiceEnv {
    /// An environment with the checkout's dependency policies
    /// ([`checkout::resilience`](crate::checkout::resilience), fresh breakers) and no
    /// dead-letter queue: a call that gives up is reported to the handler only.
    #[must_use]
    pub fn new(runtime: SharedRuntime, store: Arc<dyn EventStore>, bus: Arc<dyn EventBus>) -> Self {
        ServiceEnv {
            runtime,
            store,
            bus,
            notes: Arc::new(|_| {}),
            resilience: Arc::new(crate::checkout::resilience::resilience()),
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

    /// Records a trace note.
    pub fn note(&self, text: fmt::Arguments<'_>) {
        (self.notes)(text);
    }

    /// Sleeps on the environment's clock.
    pub async fn sleep(&self, duration: Duration) {
        self.runtime.sleep(duration).await;
    }
}

/// Exponential backoff with full jitter, its randomness drawn from the environment (so it
/// is deterministic in the simulator).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Retry pauses for calls to the event store and the bus (external services go
    /// through [`ServiceEnv::resilience`] instead).
    pub const SERVICE: Backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(1_000),
    };

    #[must_use]
    pub fn new(initial: Duration, max: Duration) -> Self {
        assert!(!initial.is_zero(), "a zero backoff spins");
        assert!(
            initial <= max,
            "backoff initial {initial:?} exceeds max {max:?}"
        );
        Backoff { initial, max }
    }

    /// The pause before retry number `attempt` (0-based): uniform in `[cap/2, cap]` with
    /// `cap = min(max, initial * 2^attempt)`. Half-jitter keeps a floor so a retry storm
    /// still spreads out but never retries instantly.
    #[must_use]
    pub fn delay(&self, attempt: u32, env: &ServiceEnv) -> Duration {
        let cap = self
            .initial
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        let half = cap / 2;
        let jitter_nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let extra = if jitter_nanos == 0 {
            0
        } else {
            env.runtime.next_u64() % jitter_nanos
        };
        half + Duration::from_nanos(extra)
    }
}
