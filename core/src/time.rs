//! Time as the framework sees it: a [`Timestamp`] handed out by the environment's
//! [`Clock`](crate::runtime::Clock), never read from the operating system by business code.
//!
//! One type serves both "now" and deadlines. It counts nanoseconds since the Unix epoch so
//! that a deadline persisted by one process (a saga's timeout) means the same instant to the
//! process that restores it; the simulator starts its virtual clock at a fixed epoch.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Nanoseconds since the Unix epoch, as reported by the environment's clock.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);
    /// Where the simulator's virtual clocks start: 2026-01-01T00:00:00Z.
    pub const SIMULATION_EPOCH: Timestamp = Timestamp(1_767_225_600 * 1_000_000_000);

    #[must_use]
    pub const fn from_unix_nanos(nanos: u64) -> Self {
        Timestamp(nanos)
    }

    #[must_use]
    pub const fn as_unix_nanos(self) -> u64 {
        self.0
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    #[must_use]
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, rhs: Duration) -> Timestamp {
        let nanos = u64::try_from(rhs.as_nanos()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(nanos))
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, rhs: Duration) -> Timestamp {
        let nanos = u64::try_from(rhs.as_nanos()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_sub(nanos))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Timestamp {
    /// Seconds since the Unix epoch with millisecond precision: short, sortable, and
    /// readable in simulator traces where the offset from the epoch is what matters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0 / 1_000_000_000;
        let millis = (self.0 % 1_000_000_000) / 1_000_000;
        write!(f, "{secs}.{millis:03}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        let t = Timestamp::from_unix_nanos(5);
        assert_eq!(t - Duration::from_nanos(10), Timestamp::EPOCH);
        assert_eq!(
            Timestamp::from_unix_nanos(u64::MAX) + Duration::from_secs(1),
            Timestamp::from_unix_nanos(u64::MAX)
        );
        assert_eq!(
            t.saturating_since(Timestamp::from_unix_nanos(9)),
            Duration::ZERO
        );
    }
}
