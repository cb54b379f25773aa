//! # reprise-tokio
//!
//! The production [`Runtime`] for Reprise stores: wall-clock time, tokio timers, tokio
//! tasks and OS-seeded randomness.
//!
//! Business code never sees this crate. It talks to the [`Runtime`] trait, which the
//! simulator implements with virtual time and a seeded scheduler; a service picks this
//! implementation once, at start-up, and hands it to its stores:
//!
//! ```no_run
//! # async fn run() -> Result<(), reprise_tokio::NoTokioRuntime> {
//! use reprise_core::{Store, from_fn, effects};
//! let runtime = reprise_tokio::TokioRuntime::try_current()?.shared();
//! let store = Store::builder(
//!     from_fn(|n: &mut u64, (): (), (): &()| { *n += 1; effects![] }),
//!     0,
//!     (),
//!     runtime,
//! )
//! .build();
//! store.send(()).await;
//! # Ok(())
//! # }
//! ```
//!
//! ## Choices
//!
//! - **`now()` is the system clock** (nanoseconds since the Unix epoch), because it is
//!   persisted: a saga deadline written by one process must mean the same instant to the
//!   process that recovers it. It can jump (NTP); that is why durations are measured with
//!   timers and the monotonic stopwatch, never by subtracting two `now()` readings.
//! - **Timers are tokio timers**, created on the runtime the adapter was built for, so
//!   `sleep` may be called from any thread (a `Store::send` from a plain thread arms its
//!   timer effects here). The runtime must have its time driver enabled.
//! - **Randomness is ChaCha8 seeded from the OS**: ids must be unique across processes,
//!   which 256 bits of OS seed per runtime make a certainty in practice; ChaCha8 produces
//!   a `u64` in about a nanosecond, so there is no reason to pick a weaker generator. A
//!   mutex, not a thread-local, holds it so that one runtime value is one random stream,
//!   which is what the trait promises.
//! - **Spawning is `Handle::spawn`**: effects are `Send` futures and may run on any worker.

// This crate is the production side of the determinism boundary: reading the wall clock,
// sleeping on tokio timers, spawning tokio tasks and seeding from the OS is its whole job.
// `clippy.toml` forbids these everywhere else; here they are the point.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use reprise_core::{BoxFuture, Clock, Entropy, Runtime, SharedRuntime, Spawner, Timestamp};
use tokio::runtime::Handle;

/// [`TokioRuntime::try_current`] was called outside a tokio runtime.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no tokio runtime is running on this thread: build TokioRuntime::from_handle instead")]
pub struct NoTokioRuntime;

/// A Reprise [`Runtime`] on a tokio runtime. Cheap to clone (clones share the random
/// stream and the stopwatch origin).
#[derive(Clone)]
pub struct TokioRuntime {
    handle: Handle,
    /// Origin of [`Runtime::stopwatch_nanos`]: monotonic, unaffected by clock steps.
    started: Instant,
    rng: Arc<Mutex<ChaCha8Rng>>,
}

impl fmt::Debug for TokioRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokioRuntime")
            .field("flavor", &self.handle.runtime_flavor())
            .field("uptime", &self.started.elapsed())
            .finish_non_exhaustive()
    }
}

impl TokioRuntime {
    /// A runtime on the tokio runtime the caller is running in.
    ///
    /// # Errors
    /// [`NoTokioRuntime`] outside a tokio runtime.
    pub fn try_current() -> Result<Self, NoTokioRuntime> {
        Handle::try_current()
            .map(Self::from_handle)
            .map_err(|_| NoTokioRuntime)
    }

    /// A runtime that spawns on and arms timers with `handle`. The tokio runtime behind it
    /// must have its time driver enabled (`enable_time()` or `enable_all()`); tokio
    /// panics on the first timer otherwise.
    #[must_use]
    pub fn from_handle(handle: Handle) -> Self {
        TokioRuntime {
            handle,
            started: Instant::now(),
            rng: Arc::new(Mutex::new(ChaCha8Rng::from_os_rng())),
        }
    }

    /// This runtime as the [`SharedRuntime`] a `Store` takes.
    #[must_use]
    pub fn shared(self) -> SharedRuntime {
        Arc::new(self)
    }

    /// The tokio handle effects are spawned on.
    #[must_use]
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Clock for TokioRuntime {
    fn now(&self) -> Timestamp {
        // Before 1970 only on a badly broken clock; saturate rather than panic in a
        // production service. u64 nanoseconds last until the year 2554.
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp::from_unix_nanos(u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX))
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        if duration.is_zero() {
            // tokio rounds every deadline up to its next 1 ms tick, so `sleep(0)` would
            // take a millisecond; zero means "now", so say so without a timer.
            return Box::pin(std::future::ready(()));
        }
        // Entering the handle lets callers outside the runtime's threads create timers;
        // the timer starts now, not when the future is first polled.
        let _entered = self.handle.enter();
        Box::pin(tokio::time::sleep(duration))
    }
}

impl Entropy for TokioRuntime {
    fn next_u64(&self) -> u64 {
        self.rng.lock().next_u64()
    }

    fn next_id(&self) -> u128 {
        // One lock for both halves.
        let mut rng = self.rng.lock();
        (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64())
    }
}

impl Spawner for TokioRuntime {
    fn spawn(&self, _name: &'static str, task: BoxFuture<'static, ()>) {
        // The join handle is dropped: the Store tracks completion itself, and dropping a
        // tokio JoinHandle detaches the task without cancelling it.
        drop(self.handle.spawn(task));
    }
}

impl Runtime for TokioRuntime {
    fn stopwatch_nanos(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_runtime_try_current_is_a_typed_error() {
        assert_eq!(TokioRuntime::try_current().unwrap_err(), NoTokioRuntime);
    }

    #[tokio::test]
    async fn now_is_wall_clock_time_in_unix_nanos() {
        let runtime = TokioRuntime::try_current().unwrap();
        let now = runtime.now().as_unix_nanos();
        // 2024-01-01 and 2200-01-01: catches seconds-vs-nanos mistakes, not clock skew.
        assert!(
            (1_704_067_200_000_000_000..7_258_118_400_000_000_000).contains(&now),
            "{now}"
        );
    }

    #[tokio::test]
    async fn ids_differ_between_runtimes_and_calls() {
        let a = TokioRuntime::try_current().unwrap();
        let b = TokioRuntime::try_current().unwrap();
        let ids = [a.next_id(), a.next_id(), b.next_id(), b.next_id()];
        for (i, x) in ids.iter().enumerate() {
            assert!(
                ids[i + 1..].iter().all(|y| y != x),
                "duplicate id in {ids:x?}"
            );
        }
        let f = a.next_f64();
        assert!((0.0..1.0).contains(&f));
    }

    #[tokio::test]
    async fn a_zero_sleep_is_ready_at_once_not_at_the_next_timer_tick() {
        use futures::FutureExt;
        let runtime = TokioRuntime::try_current().unwrap();
        assert_eq!(runtime.sleep(Duration::ZERO).now_or_never(), Some(()));
        assert_eq!(runtime.sleep(Duration::from_nanos(1)).now_or_never(), None);
    }

    #[test]
    fn timers_can_be_armed_from_a_thread_outside_the_runtime() {
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let runtime = TokioRuntime::from_handle(tokio.handle().clone());
        // Created here, on a thread that is not running tokio.
        let sleep = runtime.sleep(Duration::from_millis(5));
        let stopwatch = runtime.stopwatch_nanos();
        tokio.block_on(sleep);
        assert!(runtime.stopwatch_nanos() - stopwatch >= 5_000_000);
    }
}
