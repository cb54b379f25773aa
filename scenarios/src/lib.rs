//! # reprise-scenarios
//!
//! Chaos scenarios: an e-commerce checkout saga and bank transfers, each with its
//! invariants and a set of planted bugs the simulator must find.
//!
//! Everything here is written against reprise-core's traits only — `Runtime`,
//! `EventStore`, `EventBus`, and small service traits for the outside world
//! ([`checkout::PaymentGateway`], [`checkout::Carrier`]) — so the same code runs in the
//! deterministic simulator and on tokio + PostgreSQL + Kafka.
//!
//! The simulator sees them through [`simulation`]: [`all`] lists every registered
//! scenario (`checkout`, `transfers`, and one `<name>-bug-<slug>` per planted bug),
//! [`by_name`] finds one, [`explain_failure`] renders a failing run for a person.
//!
//! Layout: the event-driven machinery (relay, command bus, inbox, consume loop, saga host)
//! is the `reprise-host` library's, exactly as production runs it; [`checkout`] and
//! [`transfers`] hold the domains (aggregates, sagas, service handlers, workloads,
//! invariant checkers); [`bugs`] names the planted bugs and [`planted`] holds the wrong
//! alternatives to host components that some of them swap in.

pub mod audit;
pub mod bugs;
pub mod checkout;
pub mod planted;
pub mod simulation;
pub mod transfers;

pub use bugs::{Bugs, PlantedBug};
pub use simulation::{CheckoutScenario, TransfersScenario, all, by_name, explain_failure};
