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

/// The situations the transfers exist to reach (see `checkout::situations` for why they
/// are declared).
pub mod situations {
    use reprise_core::Situation;

    pub const CREDIT_DEADLINE_FIRED: Situation = Situation::new(
        "transfers.credit-deadline-fired",
        "a credit's deadline fired and the saga retried or abandoned it",
    );
    pub const CREDIT_VOIDED: Situation = Situation::new(
        "transfers.credit-voided",
        "an abandoned credit was voided and the reversal of the debit began",
    );
    pub const LATE_CREDIT_WHILE_VOIDING: Situation = Situation::new(
        "transfers.late-credit-while-voiding",
        "a credit landed after the saga had decided to void it, and completed the transfer",
    );
    pub const DEBIT_REVERSED: Situation = Situation::new(
        "transfers.debit-reversed",
        "a debit was undone and the transfer failed cleanly",
    );

    /// Every situation above.
    pub const ALL: [Situation; 4] = [
        CREDIT_DEADLINE_FIRED,
        CREDIT_VOIDED,
        LATE_CREDIT_WHILE_VOIDING,
        DEBIT_REVERSED,
    ];
}
