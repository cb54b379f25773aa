//! What must hold for the transfers, from the store's log.
//!
//! Safety: no account is overdrawn; a transfer debits at most once and credits at most
//! once; a credit only follows a debit; a reversed debit is never also credited (that
//! would create money); plus the shared [`LogAudit`] checks.
//!
//! Liveness: every submitted transfer's saga is terminal; money is conserved (the
//! balances sum to the initial total); a completed transfer is debited and credited, a
//! failed one moved nothing. At the consumers (safety): every acknowledged message took
//! effect.

use std::collections::BTreeMap;

use reprise_core::{Aggregate, InMemoryEventBus, RecordedEvent, Saga};

use super::account::{Account, AccountEvent};
use super::saga::{Step, TransferEvent, TransferSaga};
use super::services::{TransfersWorkload, groups};
use crate::audit::{Finding, LogAudit};

pub mod invariant {
    pub const OVERDRAWN: &str = "no account is overdrawn";
    pub const MOVED_ONCE: &str = "a transfer debits and credits at most once";
    pub const CREDIT_WITHOUT_DEBIT: &str = "a credit only follows a debit";
    pub const CONSERVED: &str = "money is conserved";
    pub const SAGAS_TERMINAL: &str = "after the liveness phase every saga is terminal";
    pub const UNDECODABLE: &str = "every stored event decodes";
}

#[derive(Clone, Debug, Default)]
struct Movements {
    debits: u32,
    reversals: u32,
    credits: u32,
}

/// The transfers' log fold.
#[derive(Debug, Default)]
pub struct TransfersAudit {
    log: LogAudit,
    balances: BTreeMap<String, i128>,
    movements: BTreeMap<String, Movements>,
    sagas: BTreeMap<String, TransferSaga>,
}

fn decode<T: serde::de::DeserializeOwned>(event: &RecordedEvent) -> Result<T, Finding> {
    event.payload.decode().map_err(|e| {
        Finding::new(
            invariant::UNDECODABLE,
            vec![event.stream.to_string()],
            format!("{}: {e}", event.event_type),
        )
    })
}

fn transfer_entities(transfer: &str, account: &RecordedEvent) -> Vec<String> {
    vec![
        format!("{}-{transfer}", TransferSaga::NAME),
        format!("request-{transfer}"),
        account.stream.to_string(),
    ]
}

impl TransfersAudit {
    #[must_use]
    pub fn new() -> Self {
        TransfersAudit {
            log: LogAudit::new(),
            ..Self::default()
        }
    }

    #[must_use]
    pub fn next_position(&self) -> u64 {
        self.log.next_position
    }

    /// Folds newly committed events, checking safety.
    ///
    /// # Errors
    /// The first broken safety invariant.
    pub fn observe(&mut self, events: &[RecordedEvent]) -> Result<(), Finding> {
        for event in events {
            self.log.observe(event)?;
            let entity = event
                .stream
                .as_str()
                .split_once('-')
                .map_or("", |(_, id)| id);
            match event.stream.category() {
                Account::CATEGORY => self.observe_account(entity, event)?,
                TransferSaga::NAME if !event.event_type.starts_with("reprise.") => {
                    let saga_event = decode::<TransferEvent>(event)?;
                    self.sagas
                        .entry(entity.to_owned())
                        .or_default()
                        .apply(&saga_event);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn observe_account(&mut self, account: &str, event: &RecordedEvent) -> Result<(), Finding> {
        let decoded = decode::<AccountEvent>(event)?;
        let balance = self.balances.entry(account.to_owned()).or_default();
        let Some(transfer) = decoded.transfer() else {
            if let AccountEvent::Opened { balance: opened } = decoded {
                *balance += i128::from(opened);
            }
            return Ok(());
        };
        let moved = self.movements.entry(transfer.to_owned()).or_default();
        match &decoded {
            AccountEvent::Debited { amount, .. } => {
                *balance -= i128::from(*amount);
                moved.debits += 1;
            }
            AccountEvent::DebitReversed { amount, .. } => {
                *balance += i128::from(*amount);
                moved.reversals += 1;
            }
            AccountEvent::Credited { amount, .. } => {
                *balance += i128::from(*amount);
                moved.credits += 1;
                if moved.debits == 0 {
                    return Err(Finding::new(
                        invariant::CREDIT_WITHOUT_DEBIT,
                        transfer_entities(transfer, event),
                        "credited before any debit",
                    ));
                }
            }
            _ => {}
        }
        if *balance < 0 {
            return Err(Finding::new(
                invariant::OVERDRAWN,
                transfer_entities(transfer, event),
                format!("balance went to {balance}"),
            ));
        }
        if moved.debits > 1
            || moved.credits > 1
            || moved.reversals > moved.debits
            || (moved.credits > 0 && moved.reversals > 0)
        {
            return Err(Finding::new(
                invariant::MOVED_ONCE,
                transfer_entities(transfer, event),
                format!(
                    "{} debits, {} reversals, {} credits",
                    moved.debits, moved.reversals, moved.credits
                ),
            ));
        }
        Ok(())
    }

    /// Whether the run has settled correctly (call after observing the whole log).
    ///
    /// # Errors
    /// What has not settled, or settled wrongly.
    pub fn check_settled(&self, workload: &TransfersWorkload) -> Result<(), Finding> {
        for planned in &workload.transfers {
            let step = self
                .sagas
                .get(&planned.id)
                .map_or(Step::NotStarted, |s| s.step);
            if !matches!(step, Step::Completed | Step::Failed) {
                return Err(Finding::new(
                    invariant::SAGAS_TERMINAL,
                    vec![
                        format!("{}-{}", TransferSaga::NAME, planned.id),
                        format!("request-{}", planned.id),
                    ],
                    format!("saga step: {step:?}"),
                ));
            }
        }
        let total: i128 = self.balances.values().sum();
        if total != i128::from(workload.total()) {
            return Err(Finding::new(
                invariant::CONSERVED,
                self.balances
                    .keys()
                    .map(|a| format!("account-{a}"))
                    .collect(),
                format!("balances sum to {total}, expected {}", workload.total()),
            ));
        }
        for planned in &workload.transfers {
            let moved = self.movements.get(&planned.id).cloned().unwrap_or_default();
            let completed = self.sagas[&planned.id].step == Step::Completed;
            let net_ok = if completed {
                moved.debits == 1 && moved.credits == 1 && moved.reversals == 0
            } else {
                moved.credits == 0 && moved.reversals == moved.debits
            };
            if !net_ok {
                return Err(Finding::new(
                    invariant::CONSERVED,
                    vec![
                        format!("{}-{}", TransferSaga::NAME, planned.id),
                        format!("account-{}", planned.order.from),
                        format!("account-{}", planned.order.to),
                    ],
                    format!(
                        "saga {:?} but {} debits, {} reversals, {} credits",
                        self.sagas[&planned.id].step, moved.debits, moved.reversals, moved.credits
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Safety at the bus and its consumers: each stream's events reach the bus in order,
    /// and every acknowledged message took effect.
    ///
    /// # Errors
    /// The first acknowledged message without its inbox marker.
    pub fn check_consumers(&mut self, bus: &InMemoryEventBus) -> Result<(), Finding> {
        self.log
            .check_bus_order(bus, &[super::saga::topics::EVENTS])?;
        self.log.check_nothing_lost(bus, &groups::ALL)
    }
}
