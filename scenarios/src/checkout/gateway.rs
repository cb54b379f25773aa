//! The outside world of the checkout: a payment provider and a carrier, each behind a
//! trait (what production implements with an HTTP client) plus the *model* of the
//! service itself — its own books, which outlive any of our nodes.
//!
//! The models are real components, not mocks: they keep state, answer idempotently by
//! key the way real providers do, and their books are what the invariant checker audits
//! ("every captured payment belongs to a shipped or refunded order" is a statement about
//! the provider's books, not ours). In the simulator the traits are implemented by
//! wrappers that route every call through the simulator's faulty dependency channel, so
//! a call can fail, time out, or succeed at the provider with the answer lost.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use reprise_core::{BoxFuture, Classify, Clock, ErrorClass, Timestamp};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Why a call to an external service did not give an answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExternalError {
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// No answer in time: the call may or may not have taken effect.
    #[error("no answer in time; outcome unknown")]
    Timeout,
}

/// Both are transient: the service may answer the next attempt, and every call is
/// idempotent by key, so retrying a call whose outcome is unknown is safe. A declined card
/// or a refused charge is not an error at all but an answer ([`ChargeOutcome`]): it is
/// never retried and counts as a healthy call for the breaker.
impl Classify for ExternalError {
    fn class(&self) -> ErrorClass {
        match self {
            ExternalError::Unavailable(_) | ExternalError::Timeout => ErrorClass::Transient,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Payments
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeRequest {
    /// The provider captures at most once per key; a repeated key replays the answer.
    pub idempotency_key: String,
    pub order: String,
    pub amount: u64,
    pub card: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChargeOutcome {
    Captured {
        charge: String,
    },
    Declined {
        reason: String,
    },
    /// The key was voided (refunded before any capture): the charge is refused for good.
    Refused,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefundOutcome {
    /// The capture under the key was refunded (now or earlier).
    Refunded { amount: u64 },
    /// Nothing was captured under the key; it is now voided.
    Voided,
}

/// A payment provider, as the payment service sees it.
pub trait PaymentGateway: Send + Sync {
    fn charge(
        &self,
        request: ChargeRequest,
    ) -> BoxFuture<'static, Result<ChargeOutcome, ExternalError>>;
    /// Refunds the capture made under `idempotency_key`, or voids the key.
    fn refund(
        &self,
        idempotency_key: String,
    ) -> BoxFuture<'static, Result<RefundOutcome, ExternalError>>;
}

/// One capture in the provider's books.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderCharge {
    pub order: String,
    pub amount: u64,
    pub refunded: bool,
}

/// The provider's books, for the invariant checker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderBooks {
    /// Captures by idempotency key.
    pub charges: BTreeMap<String, ProviderCharge>,
    pub voided: BTreeSet<String>,
    pub declines: u64,
}

impl ProviderBooks {
    /// Money the provider holds for `order` (captured and not refunded), and the number
    /// of captures made for it.
    #[must_use]
    pub fn held_for(&self, order: &str) -> (u64, usize) {
        let mut held = 0;
        let mut captures = 0;
        for charge in self.charges.values().filter(|c| c.order == order) {
            captures += 1;
            if !charge.refunded {
                held += charge.amount;
            }
        }
        (held, captures)
    }
}

/// The payment provider itself (its books and rules). Cards whose token is a multiple of
/// `decline_every` are declined.
pub struct PaymentProvider {
    books: Mutex<ProviderBooks>,
    /// Bumped by every change to the books: lets a checker skip books it has already
    /// checked ([`revision`](Self::revision)).
    revision: AtomicU64,
    decline_every: u32,
}

impl fmt::Debug for PaymentProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PaymentProvider")
            .field("charges", &self.books.lock().charges.len())
            .finish()
    }
}

impl PaymentProvider {
    #[must_use]
    pub fn new(decline_every: u32) -> Self {
        assert!(
            decline_every >= 2,
            "decline_every={decline_every} would decline every card"
        );
        PaymentProvider {
            books: Mutex::default(),
            revision: AtomicU64::new(0),
            decline_every,
        }
    }

    /// Handles a charge at the provider (synchronously: the provider's side of the call).
    pub fn charge_now(&self, request: &ChargeRequest) -> ChargeOutcome {
        let mut books = self.books.lock();
        if books.voided.contains(&request.idempotency_key) {
            return ChargeOutcome::Refused;
        }
        if books.charges.contains_key(&request.idempotency_key) {
            return ChargeOutcome::Captured {
                charge: request.idempotency_key.clone(),
            };
        }
        if request.card % self.decline_every == 0 {
            self.revision.fetch_add(1, Ordering::Relaxed);
            books.declines += 1;
            return ChargeOutcome::Declined {
                reason: format!("card {} declined", request.card),
            };
        }
        self.revision.fetch_add(1, Ordering::Relaxed);
        books.charges.insert(
            request.idempotency_key.clone(),
            ProviderCharge {
                order: request.order.clone(),
                amount: request.amount,
                refunded: false,
            },
        );
        ChargeOutcome::Captured {
            charge: request.idempotency_key.clone(),
        }
    }

    /// Handles a refund at the provider.
    pub fn refund_now(&self, idempotency_key: &str) -> RefundOutcome {
        let mut books = self.books.lock();
        self.revision.fetch_add(1, Ordering::Relaxed);
        match books.charges.get_mut(idempotency_key) {
            Some(charge) => {
                charge.refunded = true;
                RefundOutcome::Refunded {
                    amount: charge.amount,
                }
            }
            None => {
                books.voided.insert(idempotency_key.to_owned());
                RefundOutcome::Voided
            }
        }
    }

    #[must_use]
    pub fn books(&self) -> ProviderBooks {
        self.books.lock().clone()
    }

    /// A number that changes whenever the books change (same number, same books).
    #[must_use]
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Relaxed)
    }

    /// Reads the books without copying them.
    pub fn with_books<T>(&self, read: impl FnOnce(&ProviderBooks) -> T) -> T {
        read(&self.books.lock())
    }
}

/// Calls the provider directly, without a network in between (unit tests, local runs).
impl PaymentGateway for PaymentProvider {
    fn charge(
        &self,
        request: ChargeRequest,
    ) -> BoxFuture<'static, Result<ChargeOutcome, ExternalError>> {
        Box::pin(std::future::ready(Ok(self.charge_now(&request))))
    }

    fn refund(
        &self,
        idempotency_key: String,
    ) -> BoxFuture<'static, Result<RefundOutcome, ExternalError>> {
        Box::pin(std::future::ready(Ok(self.refund_now(&idempotency_key))))
    }
}

impl<T: PaymentGateway + ?Sized> PaymentGateway for Arc<T> {
    fn charge(
        &self,
        request: ChargeRequest,
    ) -> BoxFuture<'static, Result<ChargeOutcome, ExternalError>> {
        (**self).charge(request)
    }

    fn refund(
        &self,
        idempotency_key: String,
    ) -> BoxFuture<'static, Result<RefundOutcome, ExternalError>> {
        (**self).refund(idempotency_key)
    }
}

// ---------------------------------------------------------------------------------------
// Carrier
// ---------------------------------------------------------------------------------------

/// What the carrier reports about a shipment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CarrierStatus {
    Registered,
    InTransit { updates: u32 },
    Delivered,
    Lost,
}

/// A parcel carrier, as the shipping service sees it.
pub trait Carrier: Send + Sync {
    /// Registers a shipment for `order` (idempotent by order); returns its tracking code.
    fn register(&self, order: String) -> BoxFuture<'static, Result<String, ExternalError>>;
    fn track(&self, order: String) -> BoxFuture<'static, Result<CarrierStatus, ExternalError>>;
}

/// How shipments progress at the carrier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CarrierOptions {
    pub pickup_after: Duration,
    pub tracking_update_every: Duration,
    pub tracking_updates: u32,
    /// Out of 1000 shipments, how many the carrier loses.
    pub lost_per_mille: u32,
    /// Mixed into the per-shipment fate so different runs lose different parcels.
    pub seed: u64,
}

impl CarrierOptions {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        CarrierOptions {
            pickup_after: Duration::from_millis(400),
            tracking_update_every: Duration::from_millis(600),
            tracking_updates: 2,
            lost_per_mille: 60,
            seed,
        }
    }

    fn delivered_after(&self) -> Duration {
        self.pickup_after + self.tracking_update_every * (self.tracking_updates + 1)
    }
}

/// The carrier itself: shipments progress with time; a deterministic share of them is
/// lost half-way. Time is passed in by the caller (the carrier's side of the call), so the
/// model works under any clock.
pub struct CarrierModel {
    options: CarrierOptions,
    registered: Mutex<BTreeMap<String, Timestamp>>,
}

impl fmt::Debug for CarrierModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CarrierModel")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl CarrierModel {
    #[must_use]
    pub fn new(options: CarrierOptions) -> Self {
        assert!(
            options.lost_per_mille <= 1000,
            "lost_per_mille is out of 1000: {options:?}"
        );
        assert!(
            !options.tracking_update_every.is_zero(),
            "tracking_update_every must be positive: {options:?}"
        );
        CarrierModel {
            options,
            registered: Mutex::default(),
        }
    }

    /// Registers a shipment (idempotent by order) at time `now`.
    pub fn register_at(&self, order: &str, now: Timestamp) -> String {
        self.registered
            .lock()
            .entry(order.to_owned())
            .or_insert(now);
        format!("TRK-{order}")
    }

    /// The shipment's status at time `now`; `None` if it was never registered.
    #[must_use]
    pub fn track_at(&self, order: &str, now: Timestamp) -> Option<CarrierStatus> {
        let since = *self.registered.lock().get(order)?;
        let elapsed = now.saturating_since(since);
        let o = &self.options;
        let lost = xxh3_64_with_seed(order.as_bytes(), o.seed) % 1000 < u64::from(o.lost_per_mille);
        Some(if elapsed < o.pickup_after {
            CarrierStatus::Registered
        } else if lost && elapsed >= o.delivered_after() / 2 {
            CarrierStatus::Lost
        } else if elapsed >= o.delivered_after() {
            CarrierStatus::Delivered
        } else {
            let updates =
                (elapsed - o.pickup_after).as_nanos() / o.tracking_update_every.as_nanos();
            CarrierStatus::InTransit {
                updates: u32::try_from(updates).unwrap_or(u32::MAX),
            }
        })
    }
}

/// Calls the carrier directly, reading time from `clock` (unit tests, local runs).
pub struct DirectCarrier {
    pub model: Arc<CarrierModel>,
    pub clock: Arc<dyn Clock>,
}

impl fmt::Debug for DirectCarrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectCarrier")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl Carrier for DirectCarrier {
    fn register(&self, order: String) -> BoxFuture<'static, Result<String, ExternalError>> {
        Box::pin(std::future::ready(Ok(self
            .model
            .register_at(&order, self.clock.now()))))
    }

    fn track(&self, order: String) -> BoxFuture<'static, Result<CarrierStatus, ExternalError>> {
        let status = self
            .model
            .track_at(&order, self.clock.now())
            .ok_or_else(|| ExternalError::Unavailable(format!("unknown shipment {order}")));
        Box::pin(std::future::ready(status))
    }
}

impl<T: Carrier + ?Sized> Carrier for Arc<T> {
    fn register(&self, order: String) -> BoxFuture<'static, Result<String, ExternalError>> {
        (**self).register(order)
    }

    fn track(&self, order: String) -> BoxFuture<'static, Result<CarrierStatus, ExternalError>> {
        (**self).track(order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_is_idempotent_by_key_and_void_blocks_late_charges() {
        let p = PaymentProvider::new(10);
        let req = ChargeRequest {
            idempotency_key: "o1".into(),
            order: "o1".into(),
            amount: 500,
            card: 3,
        };
        assert!(matches!(p.charge_now(&req), ChargeOutcome::Captured { .. }));
        assert!(matches!(p.charge_now(&req), ChargeOutcome::Captured { .. }));
        assert_eq!(p.books().held_for("o1"), (500, 1));
        assert_eq!(p.refund_now("o1"), RefundOutcome::Refunded { amount: 500 });
        assert_eq!(p.books().held_for("o1"), (0, 1));
        assert_eq!(p.refund_now("o2"), RefundOutcome::Voided);
        let late = ChargeRequest {
            idempotency_key: "o2".into(),
            order: "o2".into(),
            amount: 1,
            card: 3,
        };
        assert_eq!(p.charge_now(&late), ChargeOutcome::Refused);
        let declined = ChargeRequest {
            idempotency_key: "o3".into(),
            order: "o3".into(),
            amount: 1,
            card: 20,
        };
        assert!(matches!(
            p.charge_now(&declined),
            ChargeOutcome::Declined { .. }
        ));
    }
}
