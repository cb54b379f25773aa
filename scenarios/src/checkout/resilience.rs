//! How the checkout's services call the outside world: one retry policy and one circuit
//! breaker per external dependency, applied by reprise-core's [`Resilience::call`].
//!
//! The numbers are the scenario's, not core's defaults (5 attempts, 1 s ×2 up to 32 s;
//! breaker open for 30 s), because the scenario runs on a compressed clock: a saga waits
//! [`PAYMENT`](super::saga::timeouts::PAYMENT) = 3 s for a payment and
//! [`SHIPMENT`](super::saga::timeouts::SHIPMENT) = 2 s for a shipment before it
//! compensates, and the simulator's liveness phase allows 30 s for everything to settle.
//!
//! - **Retry**: [`MAX_ATTEMPTS`] = 4 attempts, pauses from 50 ms doubling up to 400 ms with
//!   jitter, so the three pauses are drawn from [50, 100), [100, 200) and [200, 400) ms:
//!   under 700 ms in all. Add four attempts that each fail within the dependency's
//!   latency (≤ 200 ms for the provider, ≤ 100 ms for the carrier) and a whole ladder
//!   ends within 1.5 s — inside the shortest step deadline (2 s), so a handler gives up
//!   and the saga's deadline, not the retry loop, decides what happens next. Core's
//!   default ladder (1 + 2 + 4 + 8 s of pauses) would outlast every deadline: the saga
//!   would compensate while the handler was still retrying a charge.
//! - **Breaker**: core's default verdict (open at ≥ 50% failures over the last 10 calls,
//!   one half-open probe) but open for [`BREAKER_OPEN_FOR`] = 2 s instead of 30 s. A 30 s
//!   open period is as long as the whole liveness bound: a breaker opened near the end
//!   of the fault window would refuse the refunds that compensation needs for most of the
//!   liveness phase, and one failed probe (the provider's inherent 2% error rate) would
//!   push settlement past the bound. 2 s is one saga step on this clock — the same ratio a
//!   30 s breaker has to minute-long deadlines in production.
//!
//! Production deployments with real deadlines should use core's defaults (or their own
//! numbers) through [`Platform::with_resilience`](reprise_host::Platform::with_resilience).

use std::time::Duration;

use reprise_core::Resilience;
use reprise_core::resilience::{BreakerConfig, DependencyPolicy, RetryPolicy};

/// The payment provider's dependency name (in the resilience policies, in metrics, and in
/// the simulator's dependency channel).
pub const PAYMENT_PROVIDER: &str = "payment-provider";
/// The carrier's dependency name.
pub const CARRIER: &str = "carrier";

/// Attempts per call, the first included.
pub const MAX_ATTEMPTS: u32 = 4;
/// First pause between attempts; doubles up to [`MAX_PAUSE`].
pub const FIRST_PAUSE: Duration = Duration::from_millis(50);
/// Longest pause between attempts.
pub const MAX_PAUSE: Duration = Duration::from_millis(400);
/// How long an open breaker refuses calls before it lets one probe through.
pub const BREAKER_OPEN_FOR: Duration = Duration::from_secs(2);

/// The retry policy of both external dependencies. See the module docs.
pub const RETRY: RetryPolicy = RetryPolicy::no_retry()
    .with_max_attempts(MAX_ATTEMPTS)
    .with_delays(FIRST_PAUSE, MAX_PAUSE)
    .with_multiplier(2.0);

/// The breaker of both external dependencies. See the module docs.
pub const BREAKER: BreakerConfig = BreakerConfig {
    failure_rate_threshold: 0.5,
    window_calls: 10,
    minimum_calls: 10,
    open_for: BREAKER_OPEN_FOR,
    half_open_probes: 1,
};

/// The policy of one external dependency.
#[must_use]
pub const fn dependency_policy() -> DependencyPolicy {
    DependencyPolicy {
        retry: RETRY,
        breaker: Some(BREAKER),
    }
}

/// Fresh policies and breakers for one service instance, without a dead-letter queue
/// (add one with [`Resilience::with_dead_letters`]). Breaker state is volatile: build one
/// per process, so a crash forgets it as a real restart would.
#[must_use]
pub fn resilience() -> Resilience {
    Resilience::new()
        .with_policy(PAYMENT_PROVIDER, dependency_policy())
        .with_policy(CARRIER, dependency_policy())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkout::saga::timeouts;

    #[test]
    fn a_whole_ladder_fits_inside_the_shortest_step_deadline() {
        RETRY.validate().unwrap();
        BREAKER.validate().unwrap();
        assert_eq!(RETRY.max_attempts, MAX_ATTEMPTS);
        // Worst case: every pause at its cap, every attempt failing at the provider's
        // slowest answer (200 ms).
        let mut worst = Duration::ZERO;
        for seed in 0..200 {
            let pauses: Vec<Duration> = RETRY.delays(seed).collect();
            assert_eq!(pauses.len(), MAX_ATTEMPTS as usize - 1);
            worst = worst.max(pauses.iter().sum());
        }
        assert!(worst < Duration::from_millis(700), "{worst:?}");
        let ladder = worst + Duration::from_millis(200) * MAX_ATTEMPTS;
        assert!(
            ladder < timeouts::SHIPMENT.min(timeouts::PAYMENT),
            "a retry ladder of {ladder:?} outlasts a saga step"
        );
        assert!(BREAKER.open_for <= timeouts::RETRY);
    }

    #[test]
    fn both_dependencies_get_the_scenario_policy() {
        let resilience = resilience();
        assert_eq!(resilience.policy(PAYMENT_PROVIDER), dependency_policy());
        assert_eq!(resilience.policy(CARRIER), dependency_policy());
        assert!(resilience.dead_letters().is_none());
    }
}
