//! Bank transfers: money moves between accounts through [`TransferSaga`] — debit the
//! source, credit the destination, reverse the debit if the credit cannot be made — with
//! many transfers in flight at once, touching the same accounts.
//!
//! - aggregates: [`account`] (balances, one debit and one credit per transfer) and
//!   [`request`] (a customer's transfer order, which starts the saga);
//! - coordination: [`saga`]; services and client: [`services`]; checks: [`invariants`].

pub mod account;
pub mod invariants;
pub mod request;
pub mod saga;
pub mod services;

pub use saga::{TransferCommand, TransferInput, TransferSaga};
