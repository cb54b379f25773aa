//! Retry policy: exponential backoff with jitter, driven by the environment.
//!
//! The delay arithmetic and the jitter are `backon`'s ([`backon::ExponentialBuilder`]);
//! what this module adds is the determinism contract. `backon` would seed its jitter from
//! the OS and sleep on tokio — both forbidden in business code — so the jitter seed is
//! drawn from the environment's [`Entropy`] (once per call that actually needs a retry,
//! so a successful call does not consume randomness) and the pauses are taken on the
//! environment's [`Clock`]. In the simulator both are seeded and virtual: a retry storm
//! replays to the nanosecond.
//!
//! Only [`ErrorClass::Transient`] failures are retried. Permanent errors and conflicts
//! return at once with the attempt count, which is what a dead letter records.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use super::classify::{Classify, ErrorClass};
use crate::runtime::{Clock, Entropy};

/// How many times to try and how long to pause in between.
///
/// Pause before retry `n` (1-based) is `base(n) + jitter` with
/// `base(n) = min(initial_delay * multiplier^(n-1), max_delay)` and, when `jitter` is on,
/// `jitter` uniform in `[0, base(n))` — then capped at `max_delay` once more, so no pause
/// ever exceeds the cap. With the defaults (5 attempts, 1 s, ×2, 32 s) the four pauses
/// are drawn from [1, 2) s, [2, 4) s, [4, 8) s and [8, 16) s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included: 1 means "never retry".
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub multiplier: f32,
    /// Spread retries of many callers apart so they do not hit a recovering dependency
    /// in lockstep.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(32),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retry.
    #[must_use]
    pub const fn no_retry() -> Self {
        RetryPolicy {
            max_attempts: 1,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(32),
            multiplier: 2.0,
            jitter: true,
        }
    }

    #[must_use]
    pub const fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    #[must_use]
    pub const fn with_delays(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_delay = initial;
        self.max_delay = max;
        self
    }

    #[must_use]
    pub const fn with_multiplier(mut self, multiplier: f32) -> Self {
        self.multiplier = multiplier;
        self
    }

    #[must_use]
    pub const fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// # Errors
    /// A description of the first invalid field.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1 (the first attempt)".into());
        }
        if self.initial_delay.is_zero() {
            return Err("initial_delay must be positive: a zero backoff spins".into());
        }
        if self.initial_delay > self.max_delay {
            return Err(format!(
                "initial_delay {:?} exceeds max_delay {:?}",
                self.initial_delay, self.max_delay
            ));
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(format!(
                "multiplier {} must be finite and at least 1",
                self.multiplier
            ));
        }
        Ok(())
    }

    /// The pauses between attempts (`max_attempts - 1` of them), jitter drawn from a
    /// generator seeded with `seed`.
    pub fn delays(&self, seed: u64) -> impl Iterator<Item = Duration> + Send + use<> {
        let mut builder = ExponentialBuilder::new()
            .with_min_delay(self.initial_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.multiplier)
            .with_max_times(usize::try_from(self.max_attempts.saturating_sub(1)).unwrap_or(0));
        if self.jitter {
            builder = builder.with_jitter().with_jitter_seed(seed);
        }
        let cap = self.max_delay;
        builder.build().map(move |pause| pause.min(cap))
    }

    /// Runs `attempt` until it succeeds, fails with a non-transient error, or the
    /// attempts are used up; pauses on `env`'s clock with jitter from `env`'s entropy.
    /// `on_retry` hears about each retry before its pause (for metrics and logs).
    ///
    /// # Errors
    /// The last error, with how many attempts were made and why the loop stopped.
    pub async fn run<T, E, F, Fut, Env>(
        &self,
        env: &Env,
        mut attempt: F,
        mut on_retry: impl FnMut(&E, u32, Duration),
    ) -> Result<T, RetryError<E>>
    where
        E: Classify,
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        Env: Clock + Entropy + ?Sized,
    {
        debug_assert!(self.validate().is_ok(), "invalid retry policy {self:?}");
        let mut delays: Option<Box<dyn Iterator<Item = Duration> + Send>> = None;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let error = match attempt(attempts).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let class = error.class();
            if !class.is_retryable() {
                return Err(RetryError {
                    error,
                    attempts,
                    class,
                    exhausted: false,
                });
            }
            let pauses = delays.get_or_insert_with(|| Box::new(self.delays(env.next_u64())));
            let Some(pause) = pauses.next() else {
                return Err(RetryError {
                    error,
                    attempts,
                    class,
                    exhausted: true,
                });
            };
            on_retry(&error, attempts, pause);
            env.sleep(pause).await;
        }
    }
}

/// Pauses between tries of something that must eventually succeed — a consume loop's
/// receive, a relay's publish, a checkpoint write — where giving up is not an option
/// (the work would be lost) but hammering a failing dependency is not either.
///
/// The pauses are a [`RetryPolicy`]'s (backon's exponential ladder, jitter seeded from
/// the environment's [`Entropy`] on the first pause, sleeps on its [`Clock`]); past the
/// policy's last pause every further pause is the last one again. [`reset`](Self::reset)
/// after a success starts the ladder over. Keep one `Backoff` per loop, not per try.
#[derive(Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    pauses: Option<Pauses>,
    failures: u32,
}

/// The drawn ladder of one run of failures.
struct Pauses {
    ladder: Box<dyn Iterator<Item = Duration> + Send>,
    last: Duration,
}

impl std::fmt::Debug for Pauses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pauses").field("last", &self.last).finish()
    }
}

impl Backoff {
    /// # Panics
    /// If `policy` is invalid ([`RetryPolicy::validate`]) or never pauses (one attempt).
    #[must_use]
    pub fn new(policy: RetryPolicy) -> Self {
        if let Err(reason) = policy.validate() {
            panic!("invalid backoff policy: {reason}");
        }
        assert!(
            policy.max_attempts > 1,
            "a backoff needs a policy with at least one pause"
        );
        Backoff {
            policy,
            pauses: None,
            failures: 0,
        }
    }

    /// Failures since the last [`reset`](Self::reset).
    #[must_use]
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The next pause (without sleeping): the policy's ladder, then its last rung forever.
    pub fn next_pause<Env: Entropy + ?Sized>(&mut self, env: &Env) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let policy = self.policy;
        let pauses = self.pauses.get_or_insert_with(|| Pauses {
            ladder: Box::new(policy.delays(env.next_u64())),
            last: policy.initial_delay,
        });
        if let Some(pause) = pauses.ladder.next() {
            pauses.last = pause;
        }
        pauses.last
    }

    /// Sleeps the next pause on `env`'s clock; returns how long it slept.
    pub async fn pause<Env: Clock + Entropy + ?Sized>(&mut self, env: &Env) -> Duration {
        let pause = self.next_pause(env);
        env.sleep(pause).await;
        pause
    }

    /// A success: the next failure starts the ladder from its first rung.
    pub fn reset(&mut self) {
        self.pauses = None;
        self.failures = 0;
    }
}

/// Why a retried call gave up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryError<E> {
    /// The last attempt's error.
    pub error: E,
    /// Attempts made, the first included.
    pub attempts: u32,
    pub class: ErrorClass,
    /// `true`: the error was transient but the attempts ran out; `false`: the error was
    /// not retryable.
    pub exhausted: bool,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::resilience::classify::ClassifiedError;
    use crate::testing::{TestRuntime, block_on};

    #[test]
    fn a_backoff_climbs_the_ladder_stays_on_its_last_rung_and_starts_over_after_reset() {
        let runtime = TestRuntime::new(3);
        let policy = RetryPolicy::default()
            .with_max_attempts(4)
            .with_delays(Duration::from_millis(10), Duration::from_millis(100))
            .without_jitter();
        let mut backoff = Backoff::new(policy);
        // backon computes in floating point: compare to the microsecond.
        let micros = |d: Duration| (d.as_nanos() + 500) / 1_000;
        let pauses: Vec<u128> = (0..6)
            .map(|_| micros(backoff.next_pause(&runtime)))
            .collect();
        assert_eq!(pauses, [10_000, 20_000, 40_000, 40_000, 40_000, 40_000]);
        assert_eq!(backoff.failures(), 6);
        backoff.reset();
        assert_eq!(backoff.failures(), 0);
        assert_eq!(micros(backoff.next_pause(&runtime)), 10_000);
    }

    #[test]
    #[should_panic(expected = "at least one pause")]
    fn a_backoff_without_pauses_is_refused() {
        let _ = Backoff::new(RetryPolicy::no_retry());
    }

    #[test]
    fn default_policy_matches_the_documented_ladder() {
        let policy = RetryPolicy::default();
        policy.validate().unwrap();
        let pauses: Vec<_> = policy.delays(7).collect();
        assert_eq!(pauses.len(), 4, "5 attempts = 4 pauses");
        for (pause, base) in pauses.iter().zip([1u64, 2, 4, 8]) {
            let base = Duration::from_secs(base);
            assert!(
                *pause >= base && *pause < base * 2,
                "{pause:?} not in [{base:?}, 2×)"
            );
        }
    }

    #[test]
    fn pauses_never_exceed_the_cap_and_the_same_seed_gives_the_same_jitter() {
        let policy = RetryPolicy::default().with_max_attempts(12);
        let a: Vec<_> = policy.delays(42).collect();
        let b: Vec<_> = policy.delays(42).collect();
        let c: Vec<_> = policy.delays(43).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|p| *p <= Duration::from_secs(32)), "{a:?}");
        assert_eq!(*a.last().unwrap(), Duration::from_secs(32));
    }

    #[test]
    fn invalid_policies_are_refused_with_a_reason() {
        assert!(
            RetryPolicy::default()
                .with_max_attempts(0)
                .validate()
                .is_err()
        );
        let inverted =
            RetryPolicy::default().with_delays(Duration::from_secs(5), Duration::from_secs(1));
        assert!(inverted.validate().unwrap_err().contains("exceeds"));
        assert!(
            RetryPolicy::default()
                .with_multiplier(0.5)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn transient_errors_are_retried_on_the_environment_clock_until_exhausted() {
        let runtime = Arc::new(TestRuntime::new(1));
        let started = runtime.now();
        let rt = Arc::clone(&runtime);
        let (error, calls, retries) = block_on(&runtime, async move {
            let mut calls = 0u32;
            let mut retries = Vec::new();
            let result: Result<(), _> = RetryPolicy::default()
                .run(
                    &*rt,
                    |_| {
                        calls += 1;
                        async { Err(ClassifiedError::transient("connection refused")) }
                    },
                    |_, attempt, pause| retries.push((attempt, pause)),
                )
                .await;
            (result.unwrap_err(), calls, retries)
        });
        assert_eq!(error.attempts, 5);
        assert!(error.exhausted);
        assert_eq!(calls, 5);
        assert_eq!(retries.len(), 4);
        let slept: Duration = retries.iter().map(|(_, p)| *p).sum();
        assert_eq!(runtime.now().saturating_since(started), slept);
    }

    #[test]
    fn a_conflict_is_never_retried() {
        let runtime = Arc::new(TestRuntime::new(1));
        let rt = Arc::clone(&runtime);
        let (error, calls) = block_on(&runtime, async move {
            let mut calls = 0u32;
            let result: Result<(), _> = RetryPolicy::default()
                .run(
                    &*rt,
                    |_| {
                        calls += 1;
                        async { Err(ClassifiedError::conflict("stream moved on")) }
                    },
                    |_, _, _| panic!("a conflict must not be retried"),
                )
                .await;
            (result.unwrap_err(), calls)
        });
        assert_eq!((calls, error.attempts, error.exhausted), (1, 1, false));
        assert_eq!(error.class, ErrorClass::Conflict);
    }

    #[test]
    fn a_permanent_error_stops_at_once_and_success_after_a_retry_returns_the_value() {
        let runtime = Arc::new(TestRuntime::new(3));
        let rt = Arc::clone(&runtime);
        let (permanent, value) = block_on(&runtime, async move {
            let permanent: Result<(), _> = RetryPolicy::default()
                .run(
                    &*rt,
                    |_| async { Err(ClassifiedError::permanent("card declined")) },
                    |_, _, _| {},
                )
                .await;
            let value = RetryPolicy::default()
                .run(
                    &*rt,
                    |n| async move {
                        if n < 3 {
                            Err(ClassifiedError::transient("busy"))
                        } else {
                            Ok(n)
                        }
                    },
                    |_, _, _| {},
                )
                .await;
            (permanent, value)
        });
        assert_eq!(permanent.unwrap_err().attempts, 1);
        assert_eq!(value, Ok(3));
    }
}
