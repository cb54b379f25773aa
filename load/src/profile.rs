//! What rate to offer at each moment of a run, and the schedule of request start times
//! that follows from it.
//!
//! The schedule is fixed before the run and does not depend on how the service answers:
//! that is what makes the load *open*. A closed-loop client (send, wait, send) slows down
//! when the service does and so never measures the queueing a real crowd of users builds
//! up (coordinated omission); here request *n* starts at its scheduled time whatever
//! happened to request *n − 1*, and its latency is counted from that scheduled time.

use std::fmt;
use std::time::Duration;

/// The shape of a run.
#[derive(Clone, Debug, PartialEq)]
pub enum Profile {
    /// From `from` to `to` requests/s, linearly, over the whole duration.
    Ramp { from: f64, to: f64 },
    /// `rate` requests/s throughout.
    Steady { rate: f64 },
    /// `base` requests/s, `peak` from `at` for `length`, then `base` again.
    Spike {
        base: f64,
        peak: f64,
        at: Duration,
        length: Duration,
    },
    /// `rate` requests/s for a long time: the same as steady, reported as a soak (memory and
    /// backlog slopes are the result that matters).
    Soak { rate: f64 },
}

impl Profile {
    /// The offered rate `elapsed` into a run of `duration`.
    #[must_use]
    pub fn rate_at(&self, elapsed: Duration, duration: Duration) -> f64 {
        match *self {
            Profile::Ramp { from, to } => {
                let share = if duration.is_zero() {
                    1.0
                } else {
                    (elapsed.as_secs_f64() / duration.as_secs_f64()).clamp(0.0, 1.0)
                };
                from + (to - from) * share
            }
            Profile::Steady { rate } | Profile::Soak { rate } => rate,
            Profile::Spike {
                base,
                peak,
                at,
                length,
            } => {
                if elapsed >= at && elapsed < at + length {
                    peak
                } else {
                    base
                }
            }
        }
    }

    /// The largest rate the profile offers (sizes the client's connection pool).
    #[must_use]
    pub fn peak_rate(&self) -> f64 {
        match *self {
            Profile::Ramp { from, to } => from.max(to),
            Profile::Steady { rate } | Profile::Soak { rate } => rate,
            Profile::Spike { base, peak, .. } => base.max(peak),
        }
    }

    /// # Errors
    /// Every rate or window that makes no sense, one message each.
    pub fn validate(&self, duration: Duration) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let mut rate = |name: &str, value: f64, zero_ok: bool| {
            if !value.is_finite() || value < 0.0 || (!zero_ok && value == 0.0) {
                problems.push(format!(
                    "{name} {value}: must be a positive number of requests/s"
                ));
            } else if value > 100_000.0 {
                problems.push(format!("{name} {value}: at most 100000 requests/s"));
            }
        };
        match *self {
            Profile::Ramp { from, to } => {
                rate("--from-rate", from, true);
                rate("--rate", to, false);
            }
            Profile::Steady { rate: r } | Profile::Soak { rate: r } => rate("--rate", r, false),
            Profile::Spike {
                base,
                peak,
                at,
                length,
            } => {
                rate("--rate", base, false);
                rate("--spike-rate", peak, false);
                if at + length > duration {
                    problems.push(format!(
                        "the spike ({}s from {}s) ends after the run ({}s): lengthen --duration",
                        length.as_secs(),
                        at.as_secs(),
                        duration.as_secs()
                    ));
                }
                if length.is_zero() {
                    problems.push("--spike-for must be longer than 0s".to_owned());
                }
            }
        }
        if duration.is_zero() {
            problems.push("--duration must be longer than 0s".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The profile's name in reports.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Profile::Ramp { .. } => "ramp",
            Profile::Steady { .. } => "steady",
            Profile::Spike { .. } => "spike",
            Profile::Soak { .. } => "soak",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Profile::Ramp { from, to } => write!(f, "ramp {from}/s → {to}/s"),
            Profile::Steady { rate } => write!(f, "steady {rate}/s"),
            Profile::Soak { rate } => write!(f, "soak {rate}/s"),
            Profile::Spike {
                base,
                peak,
                at,
                length,
            } => write!(
                f,
                "spike {base}/s, {peak}/s from {}s for {}s",
                at.as_secs(),
                length.as_secs()
            ),
        }
    }
}

/// The start offsets of a run's requests, in order: each next start is one interval of
/// the rate in force at the previous one. Rates below one request a minute are treated as
/// a pause (the schedule jumps a second ahead and looks again), so a ramp from 0 starts.
#[derive(Clone, Debug)]
pub struct Schedule {
    profile: Profile,
    duration: Duration,
    next: Duration,
}

impl Schedule {
    #[must_use]
    pub fn new(profile: Profile, duration: Duration) -> Self {
        Schedule {
            profile,
            duration,
            next: Duration::ZERO,
        }
    }
}

impl Iterator for Schedule {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        loop {
            if self.next >= self.duration {
                return None;
            }
            let rate = self.profile.rate_at(self.next, self.duration);
            if rate < 1.0 / 60.0 {
                self.next += Duration::from_secs(1);
                continue;
            }
            let start = self.next;
            self.next += Duration::from_secs_f64(1.0 / rate);
            return Some(start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(profile: Profile, seconds: u64) -> usize {
        Schedule::new(profile, Duration::from_secs(seconds)).count()
    }

    #[test]
    fn a_steady_schedule_offers_rate_times_duration() {
        assert_eq!(count(Profile::Steady { rate: 250.0 }, 4), 1000);
    }

    #[test]
    fn a_spike_offers_its_peak_inside_the_window_only() {
        let spike = Profile::Spike {
            base: 100.0,
            peak: 400.0,
            at: Duration::from_secs(2),
            length: Duration::from_secs(1),
        };
        let starts: Vec<Duration> = Schedule::new(spike, Duration::from_secs(4)).collect();
        let in_second = |s: u64| starts.iter().filter(|t| t.as_secs() == s).count();
        assert_eq!((in_second(0), in_second(2), in_second(3)), (100, 400, 100));
    }

    #[test]
    fn a_ramp_from_zero_starts_and_ends_near_its_target() {
        let ramp = Profile::Ramp {
            from: 0.0,
            to: 200.0,
        };
        let starts: Vec<Duration> = Schedule::new(ramp, Duration::from_secs(10)).collect();
        let last_second = starts.iter().filter(|t| t.as_secs() == 9).count();
        assert!((170..=200).contains(&last_second), "{last_second}");
        // Area under the ramp: 10 s × 100/s on average.
        assert!((950..=1050).contains(&starts.len()), "{}", starts.len());
    }

    #[test]
    fn nonsense_is_refused_with_a_reason_each() {
        let bad = Profile::Spike {
            base: -1.0,
            peak: f64::NAN,
            at: Duration::from_secs(50),
            length: Duration::from_secs(20),
        };
        let problems = bad.validate(Duration::from_secs(60)).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
