//! The checkout: an order placed by a customer goes through inventory, payment and
//! shipping, coordinated by [`CheckoutSaga`], with compensation on every failure path.
//!
//! - aggregates: [`order`], [`inventory`], [`payment`], [`shipping`];
//! - the outside world: [`gateway`] (payment provider and carrier, traits and models) and
//!   [`resilience`] (how the services call it: retry policy and breaker per dependency);
//! - coordination: [`saga`];
//! - the services that run it all: [`services`];
//! - what a run does: [`workload`]; what must hold: [`invariants`].

pub mod gateway;
pub mod invariants;
pub mod inventory;
pub mod order;
pub mod payment;
pub mod resilience;
pub mod saga;
pub mod services;
pub mod shipping;
pub mod workload;

pub use gateway::{
    Carrier, CarrierModel, CarrierOptions, DirectCarrier, PaymentGateway, PaymentProvider,
};
pub use saga::{CheckoutCommand, CheckoutInput, CheckoutSaga};

/// The situations the checkout exists to reach. A sweep whose runs never time out a
/// payment after its capture, or never finish a compensation, has not tested the
/// invariants that guard those paths, however many seeds passed; `reprise sweep checkout
/// --coverage` lists which of these each sweep reached.
pub mod situations {
    use reprise_core::Situation;

    pub const PAYMENT_DEADLINE_FIRED: Situation = Situation::new(
        "checkout.payment-deadline-fired",
        "the saga's payment deadline fired while the charge was still open",
    );
    pub const PAYMENT_TIMED_OUT_AFTER_CAPTURE: Situation = Situation::new(
        "checkout.payment-timed-out-after-capture",
        "the provider captured a charge but the payment service saw a timeout",
    );
    pub const LATE_CAPTURE_WHILE_COMPENSATING: Situation = Situation::new(
        "checkout.late-capture-while-compensating",
        "a capture reached the saga after it had started compensating",
    );
    pub const COMPENSATION_COMPLETED: Situation = Situation::new(
        "checkout.compensation-completed",
        "a saga compensation ran to the end (refund, release and cancel confirmed)",
    );
    pub const SHIPMENT_DEADLINE_FIRED: Situation = Situation::new(
        "checkout.shipment-deadline-fired",
        "a shipment or delivery deadline fired and the saga asked to cancel the shipment",
    );
    pub const DEAD_LETTER_REDELIVERED: Situation = Situation::new(
        "checkout.dead-letter-redelivered",
        "the operator sent a parked command back after the incident",
    );

    /// Every situation above.
    pub const ALL: [Situation; 6] = [
        PAYMENT_DEADLINE_FIRED,
        PAYMENT_TIMED_OUT_AFTER_CAPTURE,
        LATE_CAPTURE_WHILE_COMPENSATING,
        COMPENSATION_COMPLETED,
        SHIPMENT_DEADLINE_FIRED,
        DEAD_LETTER_REDELIVERED,
    ];
}
