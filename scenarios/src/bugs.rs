//! Planted bugs: deliberately wrong variants of correct code, switched on per run.
//!
//! A simulator earns trust by finding bugs, not by passing on correct code. Each variant
//! here is a mistake that real event-driven services make and that unit tests rarely
//! catch, because it only bites under a particular interleaving of faults. The tests in
//! `tests/planted_bugs.rs` show that the simulator finds each one within a stated number
//! of seeds and that the failing seed replays.
//!
//! Most are found within the first few seeds of a swarm sweep. The **deep** ones
//! ([`PlantedBug::DEEP`]) are not: their code looks right and breaks an invariant only when
//! two or three faults meet inside a narrow window, so a plain swarm sweep needs hundreds
//! to thousands of seeds to find each — the yardstick for guided exploration
//! (`reprise explore`, `docs/exploration.md`).
//!
//! None of them lives in library code. Where a bug replaces a component of the host library
//! (the consume loop's acknowledgement, the command handler's cache), the wrong version is
//! scenario code in [`crate::planted`] — a wrapper or a copy — swapped in by the scenario
//! variant; the others are alternative branches of the scenarios' own handlers and sagas,
//! next to the correct code, so the diff between them is the lesson.

use std::fmt;

/// One planted bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PlantedBug {
    /// The consumer acknowledges and commits a message *before* handling it: a crash in
    /// between loses the message although the bus reports it consumed.
    AckBeforeProcess,
    /// The payment handler charges the gateway with a fresh idempotency key on every
    /// delivery and skips the "already settled?" check: a redelivered command charges twice.
    PaymentNotIdempotent,
    /// When the payment step times out the saga cancels the order but neither voids the
    /// payment nor releases the inventory: a late capture keeps the customer's money.
    NoCompensationOnTimeout,
    /// The service's aggregate cache applies a decision *before* its append succeeded and
    /// keeps it when the append fails: cached state and version drift from the stream.
    ApplyBeforeAppend,
    /// The inventory handler decides reservations from a lagging stock projection and
    /// appends without an expected version, instead of deciding on the stream itself
    /// (the read-your-projection mistake): stock gets oversold.
    DecideFromProjection,
    /// The payment handler retries the provider until it answers — a short fixed pause, no
    /// attempt limit, no circuit breaker — instead of calling it through its resilience
    /// policy: during an outage every stuck command hammers the provider (a retry storm
    /// that keeps a recovering service down).
    RetryStorm,
    /// **Deep.** A refund that an operator sends back after an incident is settled from
    /// our own books: with no capture recorded, the handler records a void without asking
    /// the provider ("nothing captured, nothing to give back"). Wrong only when three things
    /// meet: a charge reached the provider but every answer to it was lost (so it was
    /// parked, captured there and on nobody's books), the saga's refund was parked too (the
    /// provider unreachable during compensation), and after the heal the operator's copy
    /// of that refund arrives before the saga's own re-issued one. The provider keeps
    /// money for a cancelled order.
    VoidUnrecordedCharge,
    /// **Deep.** The shipping tracker records what the carrier said with the right expected
    /// version, but when that append times out it retries expecting *any* version ("a
    /// timed-out append may have landed; the old version would refuse our own write") —
    /// whereas appends are idempotent by event id, so the same expectation is what makes
    /// the retry safe. Wrong only when the lost append carried a delivery and the saga's
    /// cancellation of that very shipment (its deadline, itself late) lands in the pause
    /// before the retry: the shipment is cancelled *and* delivered, and the saga refunds a
    /// parcel the customer received.
    TrackerBlindWrite,
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 8] = [
        PlantedBug::AckBeforeProcess,
        PlantedBug::PaymentNotIdempotent,
        PlantedBug::NoCompensationOnTimeout,
        PlantedBug::ApplyBeforeAppend,
        PlantedBug::DecideFromProjection,
        PlantedBug::RetryStorm,
        PlantedBug::VoidUnrecordedCharge,
        PlantedBug::TrackerBlindWrite,
    ];

    /// The deep ones: found by a plain swarm sweep only about once in hundreds to
    /// thousands of seeds (measured in `docs/performance.md`, "Guided exploration").
    pub const DEEP: [PlantedBug; 2] = [
        PlantedBug::VoidUnrecordedCharge,
        PlantedBug::TrackerBlindWrite,
    ];

    /// Kebab-case name used in scenario names (`checkout-bug-<slug>`).
    #[must_use]
    pub fn slug(self) -> &'static str {
        match self {
            PlantedBug::AckBeforeProcess => "ack-before-process",
            PlantedBug::PaymentNotIdempotent => "payment-not-idempotent",
            PlantedBug::NoCompensationOnTimeout => "no-compensation-on-timeout",
            PlantedBug::ApplyBeforeAppend => "apply-before-append",
            PlantedBug::DecideFromProjection => "decide-from-projection",
            PlantedBug::RetryStorm => "retry-storm",
            PlantedBug::VoidUnrecordedCharge => "void-unrecorded-charge",
            PlantedBug::TrackerBlindWrite => "tracker-blind-write",
        }
    }

    #[must_use]
    pub fn from_slug(slug: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.slug() == slug)
    }

    const fn bit(self) -> u16 {
        1 << (self as u8)
    }
}

impl fmt::Display for PlantedBug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.slug())
    }
}

/// The set of bugs planted in one run (empty: the correct code).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Bugs {
    bits: u16,
}

impl Bugs {
    /// The correct code.
    pub const NONE: Bugs = Bugs { bits: 0 };

    #[must_use]
    pub const fn only(bug: PlantedBug) -> Self {
        Bugs { bits: bug.bit() }
    }

    #[must_use]
    pub const fn contains(self, bug: PlantedBug) -> bool {
        self.bits & bug.bit() != 0
    }

    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.bits == 0
    }
}

impl fmt::Debug for Bugs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(PlantedBug::ALL.into_iter().filter(|b| self.contains(*b)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_round_trip_and_bits_are_distinct() {
        for bug in PlantedBug::ALL {
            assert_eq!(PlantedBug::from_slug(bug.slug()), Some(bug));
            let set = Bugs::only(bug);
            for other in PlantedBug::ALL {
                assert_eq!(set.contains(other), other == bug);
            }
        }
        assert!(Bugs::NONE.is_empty());
        assert_eq!(PlantedBug::from_slug("nonsense"), None);
    }
}
