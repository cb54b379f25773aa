//! The payment provider and the carrier, in-process.
//!
//! They are *models* of external services (the same [`PaymentProvider`] and
//! [`CarrierModel`] the simulator uses), reached through the scenario's
//! [`PaymentGateway`] and [`Carrier`] traits with a small real round-trip latency drawn
//! from the runtime's entropy: half of it before the request reaches the model, half on
//! the way back — the window in which a real provider has acted but the caller does not
//! know yet. A live run injects no faults of its own, so these calls always answer; the
//! faults come from real timing (tokio scheduling, broker and database latency, group
//! rebalances).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reprise_core::{BoxFuture, SharedRuntime};
use reprise_scenarios::checkout::gateway::{
    CarrierStatus, ChargeOutcome, ChargeRequest, ExternalError, RefundOutcome,
};
use reprise_scenarios::checkout::{Carrier, CarrierModel, PaymentGateway, PaymentProvider};

/// A uniform round-trip latency in `[min, max]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latency {
    pub min: Duration,
    pub max: Duration,
}

impl Latency {
    /// # Panics
    /// If `min > max`.
    #[must_use]
    pub fn new(min: Duration, max: Duration) -> Self {
        assert!(min <= max, "latency min {min:?} exceeds max {max:?}");
        Latency { min, max }
    }

    fn draw(self, runtime: &SharedRuntime) -> Duration {
        let spread = u64::try_from((self.max - self.min).as_micros()).unwrap_or(u64::MAX);
        let extra = if spread == 0 {
            0
        } else {
            runtime.next_u64() % (spread + 1)
        };
        self.min + Duration::from_micros(extra)
    }
}

/// Calls `work` half-way through a drawn round trip.
async fn round_trip<T>(runtime: SharedRuntime, latency: Latency, work: impl FnOnce() -> T) -> T {
    let total = latency.draw(&runtime);
    runtime.sleep(total / 2).await;
    let answer = work();
    runtime.sleep(total - total / 2).await;
    answer
}

/// The payment provider as a live service reaches it.
pub struct LiveProvider {
    pub provider: Arc<PaymentProvider>,
    pub runtime: SharedRuntime,
    pub latency: Latency,
}

impl fmt::Debug for LiveProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveProvider")
            .field("latency", &self.latency)
            .finish_non_exhaustive()
    }
}

impl PaymentGateway for LiveProvider {
    fn charge(
        &self,
        request: ChargeRequest,
    ) -> BoxFuture<'static, Result<ChargeOutcome, ExternalError>> {
        let (provider, runtime) = (Arc::clone(&self.provider), Arc::clone(&self.runtime));
        let latency = self.latency;
        Box::pin(async move {
            Ok(round_trip(runtime, latency, move || provider.charge_now(&request)).await)
        })
    }

    fn refund(
        &self,
        idempotency_key: String,
    ) -> BoxFuture<'static, Result<RefundOutcome, ExternalError>> {
        let (provider, runtime) = (Arc::clone(&self.provider), Arc::clone(&self.runtime));
        let latency = self.latency;
        Box::pin(async move {
            Ok(round_trip(runtime, latency, move || {
                provider.refund_now(&idempotency_key)
            })
            .await)
        })
    }
}

/// The carrier as a live service reaches it; the model reads the runtime's clock when the
/// request arrives.
pub struct LiveCarrier {
    pub model: Arc<CarrierModel>,
    pub runtime: SharedRuntime,
    pub latency: Latency,
}

impl fmt::Debug for LiveCarrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveCarrier")
            .field("model", &self.model)
            .field("latency", &self.latency)
            .finish_non_exhaustive()
    }
}

impl Carrier for LiveCarrier {
    fn register(&self, order: String) -> BoxFuture<'static, Result<String, ExternalError>> {
        let (model, runtime) = (Arc::clone(&self.model), Arc::clone(&self.runtime));
        let latency = self.latency;
        Box::pin(async move {
            let clock = Arc::clone(&runtime);
            Ok(round_trip(runtime, latency, move || {
                model.register_at(&order, clock.now())
            })
            .await)
        })
    }

    fn track(&self, order: String) -> BoxFuture<'static, Result<CarrierStatus, ExternalError>> {
        let (model, runtime) = (Arc::clone(&self.model), Arc::clone(&self.runtime));
        let latency = self.latency;
        Box::pin(async move {
            let clock = Arc::clone(&runtime);
            let unknown = order.clone();
            round_trip(runtime, latency, move || {
                model.track_at(&order, clock.now())
            })
            .await
            .ok_or_else(|| ExternalError::Unavailable(format!("unknown shipment {unknown}")))
        })
    }
}
