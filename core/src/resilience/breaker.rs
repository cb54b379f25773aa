//! Circuit breaker: stop calling a dependency that is down, probe it, resume when it
//! answers again.
//!
//! ```text
//!            ≥ threshold failures in the window          open_for elapsed
//!   Closed ───────────────────────────────────▶ Open ──────────────────▶ HalfOpen
//!     ▲                                           ▲                        │  │
//!     │            every probe succeeded          │      a probe failed    │  │
//!     └───────────────────────────────────────────┼────────────────────────┘  │
//!                                                 └───────────────────────────┘
//! ```
//!
//! Time comes from the caller (the environment's clock), never from the OS, so the
//! simulator drives the breaker on virtual time and a seed replays its every transition.
//! The window counts *calls*, not seconds: a dependency that is called rarely is judged
//! on its last `window` answers, however old.
//!
//! Only failures that indict the dependency (transient ones: unreachable, overloaded,
//! timed out) count. A permanent error — a declined card — is the dependency working.
//!
//! Each call holds a [`Permit`] stamped with the breaker's *generation*; a call that
//! started before a transition reports into a window that no longer exists and is
//! ignored, so a slow straggler from before an outage cannot re-open a freshly closed
//! breaker.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::instrument as names;
use crate::time::Timestamp;

/// When to open, how long to stay open, how carefully to close.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Open when the share of failed calls in the window reaches this (0, 1].
    pub failure_rate_threshold: f64,
    /// How many of the most recent calls are judged.
    pub window_calls: usize,
    /// No verdict before this many calls are in the window (defaults to the window):
    /// two failures out of three calls say little.
    pub minimum_calls: usize,
    /// How long an open breaker refuses calls before letting probes through.
    pub open_for: Duration,
    /// Probes let through while half-open; all must succeed to close.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_rate_threshold: 0.5,
            window_calls: 10,
            minimum_calls: 10,
            open_for: Duration::from_secs(30),
            half_open_probes: 1,
        }
    }
}

impl BreakerConfig {
    /// # Errors
    /// A description of the first invalid field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.failure_rate_threshold > 0.0 && self.failure_rate_threshold <= 1.0) {
            return Err(format!(
                "failure_rate_threshold {} is not in (0, 1]",
                self.failure_rate_threshold
            ));
        }
        if self.window_calls == 0 {
            return Err("window_calls must be positive".into());
        }
        if self.minimum_calls == 0 || self.minimum_calls > self.window_calls {
            return Err(format!(
                "minimum_calls {} must be in 1..={}",
                self.minimum_calls, self.window_calls
            ));
        }
        if self.open_for.is_zero() {
            return Err("open_for must be positive".into());
        }
        if self.half_open_probes == 0 {
            return Err("half_open_probes must be positive".into());
        }
        Ok(())
    }
}

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open { until: Timestamp },
    HalfOpen,
}

impl BreakerState {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    const fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open { .. } => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }
}

/// The call was refused without reaching the dependency.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("circuit for {dependency} is open until {until}")]
pub struct CircuitOpen {
    pub dependency: Arc<str>,
    /// When probes will be let through again (for a half-open breaker whose probes are
    /// all out: now).
    pub until: Timestamp,
}

/// Leave to make one call; hand it back with the outcome.
#[derive(Debug)]
#[must_use = "report the call's outcome with CircuitBreaker::record"]
pub struct Permit {
    generation: u64,
    probe: bool,
}

/// The outcome of one permitted call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    Success,
    /// A failure that indicts the dependency.
    Failure,
    /// Neither (the call was abandoned, or failed for reasons of the caller's own): frees
    /// a half-open probe slot without a verdict.
    Ignored,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    generation: u64,
    /// Most recent outcomes of the closed state, `true` = failure.
    window: VecDeque<bool>,
    failures: usize,
    probes_out: u32,
    probes_passed: u32,
    transitions: u64,
}

/// A circuit breaker for one dependency. Cheap to share behind an `Arc`.
pub struct CircuitBreaker {
    dependency: Arc<str>,
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("dependency", &self.dependency)
            .field("state", &self.inner.lock().state)
            .finish_non_exhaustive()
    }
}

impl CircuitBreaker {
    /// # Panics
    /// If `config` is invalid (see [`BreakerConfig::validate`]): a misconfigured breaker
    /// is a programming error best found at start-up.
    #[must_use]
    pub fn new(dependency: impl Into<Arc<str>>, config: BreakerConfig) -> Self {
        let dependency = dependency.into();
        if let Err(reason) = config.validate() {
            panic!("invalid breaker config for {dependency}: {reason}");
        }
        metrics::gauge!(names::BREAKER_STATE, "dependency" => dependency.to_string()).set(0.0);
        CircuitBreaker {
            dependency,
            config,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                generation: 0,
                window: VecDeque::with_capacity(config.window_calls),
                failures: 0,
                probes_out: 0,
                probes_passed: 0,
                transitions: 0,
            }),
        }
    }

    #[must_use]
    pub fn dependency(&self) -> &str {
        &self.dependency
    }

    #[must_use]
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The state as of `now` (an open breaker whose time is up reads as half-open).
    #[must_use]
    pub fn state(&self, now: Timestamp) -> BreakerState {
        match self.inner.lock().state {
            BreakerState::Open { until } if now >= until => BreakerState::HalfOpen,
            state => state,
        }
    }

    /// How many state changes this breaker has gone through.
    #[must_use]
    pub fn transitions(&self) -> u64 {
        self.inner.lock().transitions
    }

    /// Asks to make a call at `now`.
    ///
    /// # Errors
    /// [`CircuitOpen`] while the breaker is open, or half-open with every probe out.
    pub fn acquire(&self, now: Timestamp) -> Result<Permit, CircuitOpen> {
        let mut inner = self.inner.lock();
        if let BreakerState::Open { until } = inner.state {
            if now < until {
                drop(inner);
                return Err(self.reject(until));
            }
            self.transition(&mut inner, BreakerState::HalfOpen, now);
        }
        match inner.state {
            BreakerState::Closed => Ok(Permit {
                generation: inner.generation,
                probe: false,
            }),
            BreakerState::HalfOpen if inner.probes_out < self.config.half_open_probes => {
                inner.probes_out += 1;
                Ok(Permit {
                    generation: inner.generation,
                    probe: true,
                })
            }
            BreakerState::HalfOpen => {
                drop(inner);
                Err(self.reject(now))
            }
            BreakerState::Open { .. } => unreachable!("open was handled above"),
        }
    }

    /// Reports how the permitted call went, at `now`.
    #[allow(clippy::needless_pass_by_value)] // consuming the permit is the point: one verdict per call
    pub fn record(&self, permit: Permit, outcome: CallOutcome, now: Timestamp) {
        let mut inner = self.inner.lock();
        if permit.generation != inner.generation {
            // Started before the last transition: its verdict is about a state that
            // no longer exists.
            return;
        }
        if permit.probe {
            debug_assert!(matches!(inner.state, BreakerState::HalfOpen));
            debug_assert!(inner.probes_out > 0);
            inner.probes_out -= 1;
            match outcome {
                CallOutcome::Ignored => {}
                CallOutcome::Failure => {
                    let until = now + self.config.open_for;
                    self.transition(&mut inner, BreakerState::Open { until }, now);
                }
                CallOutcome::Success => {
                    inner.probes_passed += 1;
                    if inner.probes_passed >= self.config.half_open_probes {
                        self.transition(&mut inner, BreakerState::Closed, now);
                    }
                }
            }
            return;
        }
        debug_assert!(matches!(inner.state, BreakerState::Closed));
        let failed = match outcome {
            CallOutcome::Ignored => return,
            CallOutcome::Failure => true,
            CallOutcome::Success => false,
        };
        if inner.window.len() == self.config.window_calls && inner.window.pop_front() == Some(true)
        {
            inner.failures -= 1;
        }
        inner.window.push_back(failed);
        inner.failures += usize::from(failed);
        debug_assert!(inner.failures <= inner.window.len());
        if inner.window.len() >= self.config.minimum_calls {
            #[allow(clippy::cast_precision_loss)]
            let rate = inner.failures as f64 / inner.window.len() as f64;
            if rate >= self.config.failure_rate_threshold {
                let until = now + self.config.open_for;
                self.transition(&mut inner, BreakerState::Open { until }, now);
            }
        }
    }

    fn reject(&self, until: Timestamp) -> CircuitOpen {
        metrics::counter!(names::BREAKER_REJECTED, "dependency" => self.dependency.to_string())
            .increment(1);
        CircuitOpen {
            dependency: Arc::clone(&self.dependency),
            until,
        }
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState, now: Timestamp) {
        let from = inner.state;
        debug_assert_ne!(from.as_str(), to.as_str(), "a transition changes the state");
        inner.state = to;
        inner.generation += 1;
        inner.transitions += 1;
        inner.window.clear();
        inner.failures = 0;
        inner.probes_out = 0;
        inner.probes_passed = 0;
        let dependency = self.dependency.to_string();
        metrics::gauge!(names::BREAKER_STATE, "dependency" => dependency.clone()).set(to.gauge());
        metrics::counter!(
            names::BREAKER_TRANSITIONS,
            "dependency" => dependency,
            "from" => from.as_str(),
            "to" => to.as_str()
        )
        .increment(1);
        match to {
            BreakerState::Open { until } => tracing::warn!(
                dependency = %self.dependency, from = from.as_str(), %now, %until,
                "circuit opened"
            ),
            _ => tracing::info!(
                dependency = %self.dependency, from = from.as_str(), to = to.as_str(), %now,
                "circuit state changed"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp::SIMULATION_EPOCH;

    fn at(secs: u64) -> Timestamp {
        T0 + Duration::from_secs(secs)
    }

    fn call(breaker: &CircuitBreaker, now: Timestamp, outcome: CallOutcome) {
        let permit = breaker.acquire(now).expect("call admitted");
        breaker.record(permit, outcome, now);
    }

    #[test]
    fn opens_at_half_failures_over_ten_calls_and_not_before() {
        let breaker = CircuitBreaker::new("payments", BreakerConfig::default());
        for _ in 0..4 {
            call(&breaker, T0, CallOutcome::Failure);
        }
        for _ in 0..5 {
            call(&breaker, T0, CallOutcome::Success);
        }
        assert_eq!(
            breaker.state(T0),
            BreakerState::Closed,
            "9 calls: no verdict"
        );
        call(&breaker, T0, CallOutcome::Failure);
        assert_eq!(
            breaker.state(T0),
            BreakerState::Open { until: at(30) },
            "5 of 10 failed"
        );
        let refused = breaker.acquire(at(29)).unwrap_err();
        assert_eq!(refused.until, at(30));
    }

    #[test]
    fn the_window_slides_so_old_failures_age_out() {
        let breaker = CircuitBreaker::new("payments", BreakerConfig::default());
        for _ in 0..4 {
            call(&breaker, T0, CallOutcome::Failure);
        }
        for _ in 0..20 {
            call(&breaker, T0, CallOutcome::Success);
        }
        for _ in 0..4 {
            call(&breaker, T0, CallOutcome::Failure);
        }
        assert_eq!(breaker.state(T0), BreakerState::Closed, "4 of the last 10");
        call(&breaker, T0, CallOutcome::Failure);
        assert!(matches!(breaker.state(T0), BreakerState::Open { .. }));
    }

    fn opened() -> CircuitBreaker {
        let breaker = CircuitBreaker::new("payments", BreakerConfig::default());
        for _ in 0..10 {
            call(&breaker, T0, CallOutcome::Failure);
        }
        breaker
    }

    #[test]
    fn half_open_lets_one_probe_through_and_a_success_closes() {
        let breaker = opened();
        assert_eq!(breaker.state(at(30)), BreakerState::HalfOpen);
        let probe = breaker.acquire(at(30)).unwrap();
        assert!(breaker.acquire(at(30)).is_err(), "one probe at a time");
        breaker.record(probe, CallOutcome::Success, at(31));
        assert_eq!(breaker.state(at(31)), BreakerState::Closed);
        call(&breaker, at(31), CallOutcome::Success);
        assert_eq!(breaker.transitions(), 3, "closed→open→half-open→closed");
    }

    #[test]
    fn a_failed_probe_reopens_for_a_full_period() {
        let breaker = opened();
        let probe = breaker.acquire(at(40)).unwrap();
        breaker.record(probe, CallOutcome::Failure, at(41));
        assert_eq!(breaker.state(at(41)), BreakerState::Open { until: at(71) });
        assert!(breaker.acquire(at(70)).is_err());
        assert!(breaker.acquire(at(71)).is_ok());
    }

    #[test]
    fn an_ignored_probe_frees_its_slot_without_a_verdict() {
        let breaker = opened();
        let probe = breaker.acquire(at(30)).unwrap();
        breaker.record(probe, CallOutcome::Ignored, at(30));
        assert_eq!(breaker.state(at(30)), BreakerState::HalfOpen);
        assert!(breaker.acquire(at(30)).is_ok());
    }

    #[test]
    fn stragglers_from_before_a_transition_are_ignored() {
        let breaker = CircuitBreaker::new("payments", BreakerConfig::default());
        let straggler = breaker.acquire(T0).unwrap();
        for _ in 0..10 {
            call(&breaker, T0, CallOutcome::Failure);
        }
        let probe = breaker.acquire(at(30)).unwrap();
        breaker.record(probe, CallOutcome::Success, at(30));
        breaker.record(straggler, CallOutcome::Failure, at(30));
        assert_eq!(breaker.state(at(30)), BreakerState::Closed);
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        let mut config = BreakerConfig {
            minimum_calls: 11,
            ..BreakerConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("minimum_calls"));
        config = BreakerConfig {
            failure_rate_threshold: 0.0,
            ..BreakerConfig::default()
        };
        assert!(config.validate().is_err());
    }
}
