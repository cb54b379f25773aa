//! The capabilities through which every source of nondeterminism reaches business code.
//!
//! A [`Store`](crate::Store) never spawns, sleeps or reads a clock by itself: it asks its
//! [`Runtime`]. The simulator implements these traits on a seeded single-threaded executor
//! with virtual time; `reprise-tokio` implements them on tokio. Because the boundary is a
//! trait (not an intercepted libc or an aliased tokio), nothing can leak around it — the
//! `clippy.toml` at the workspace root forbids the leaks that remain possible.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::time::Timestamp;

/// A heap-allocated, sendable future: the currency of effects and runtimes.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Now and timers.
pub trait Clock: Send + Sync {
    /// The current time of this node (the simulator may skew it per node).
    fn now(&self) -> Timestamp;
    /// Completes after `duration` of this clock's time has passed.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

/// Randomness: the only source of it business code may use.
pub trait Entropy: Send + Sync {
    fn next_u64(&self) -> u64;

    /// A uniformly drawn float in `[0, 1)`.
    fn next_f64(&self) -> f64 {
        // 53 random mantissa bits: the standard construction, exact and unbiased.
        #[allow(clippy::cast_precision_loss)]
        let mantissa = (self.next_u64() >> 11) as f64;
        mantissa / (1u64 << 53) as f64
    }

    /// A new identifier (for events, commands, correlation).
    fn next_id(&self) -> u128 {
        (u128::from(self.next_u64()) << 64) | u128::from(self.next_u64())
    }
}

/// Task spawning.
pub trait Spawner: Send + Sync {
    /// Runs `task` to completion concurrently with the caller. `name` shows up in
    /// simulator traces and tracing spans.
    fn spawn(&self, name: &'static str, task: BoxFuture<'static, ()>);
}

/// Everything a store needs from the platform it runs on.
pub trait Runtime: Clock + Entropy + Spawner {
    /// A monotonic reading in nanoseconds, used only to time reducers and effects for
    /// metrics. It never influences behaviour, which is why the simulator may return
    /// virtual time (or zero) here without breaking determinism.
    fn stopwatch_nanos(&self) -> u64;
}

/// A shared runtime handle.
pub type SharedRuntime = Arc<dyn Runtime>;

impl fmt::Debug for dyn Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Runtime(now={})", self.now())
    }
}
