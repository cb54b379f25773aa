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
