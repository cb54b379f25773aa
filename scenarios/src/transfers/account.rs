//! A bank account. Every movement names the transfer it belongs to, and each transfer
//! debits an account at most once and credits it at most once: the commands are
//! idempotent by transfer id, and a reversal or void leaves a record that blocks a late,
//! reordered debit or credit.

use std::collections::BTreeMap;

use reprise_core::{Aggregate, Event};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DebitState {
    Debited(u64),
    Refused,
    Reversed,
    /// Reversed before it was ever made: a tombstone.
    Voided,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CreditState {
    Credited(u64),
    /// Cancelled before it was made: a tombstone.
    Voided,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub opened: bool,
    pub balance: u64,
    pub debits: BTreeMap<String, DebitState>,
    pub credits: BTreeMap<String, CreditState>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountCommand {
    Open { balance: u64 },
    Debit { transfer: String, amount: u64 },
    ReverseDebit { transfer: String },
    Credit { transfer: String, amount: u64 },
    VoidCredit { transfer: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountEvent {
    Opened {
        balance: u64,
    },
    Debited {
        transfer: String,
        amount: u64,
    },
    DebitRefused {
        transfer: String,
        amount: u64,
        balance: u64,
    },
    DebitReversed {
        transfer: String,
        amount: u64,
    },
    DebitVoided {
        transfer: String,
    },
    Credited {
        transfer: String,
        amount: u64,
    },
    CreditVoided {
        transfer: String,
    },
}

impl AccountEvent {
    #[must_use]
    pub fn transfer(&self) -> Option<&str> {
        match self {
            AccountEvent::Opened { .. } => None,
            AccountEvent::Debited { transfer, .. }
            | AccountEvent::DebitRefused { transfer, .. }
            | AccountEvent::DebitReversed { transfer, .. }
            | AccountEvent::DebitVoided { transfer }
            | AccountEvent::Credited { transfer, .. }
            | AccountEvent::CreditVoided { transfer } => Some(transfer),
        }
    }
}

impl Event for AccountEvent {
    fn event_type(&self) -> &'static str {
        match self {
            AccountEvent::Opened { .. } => "AccountOpened",
            AccountEvent::Debited { .. } => "AccountDebited",
            AccountEvent::DebitRefused { .. } => "DebitRefused",
            AccountEvent::DebitReversed { .. } => "DebitReversed",
            AccountEvent::DebitVoided { .. } => "DebitVoided",
            AccountEvent::Credited { .. } => "AccountCredited",
            AccountEvent::CreditVoided { .. } => "CreditVoided",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("account is not open")]
    NotOpen,
}

impl Aggregate for Account {
    const CATEGORY: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn decide(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        if let AccountCommand::Open { balance } = command {
            return Ok(if self.opened {
                vec![]
            } else {
                vec![AccountEvent::Opened { balance: *balance }]
            });
        }
        if !self.opened {
            return Err(AccountError::NotOpen);
        }
        Ok(match command {
            AccountCommand::Open { .. } => unreachable!("handled above"),
            AccountCommand::Debit { transfer, amount } => match self.debits.get(transfer) {
                Some(_) => vec![],
                None if self.balance >= *amount => vec![AccountEvent::Debited {
                    transfer: transfer.clone(),
                    amount: *amount,
                }],
                None => vec![AccountEvent::DebitRefused {
                    transfer: transfer.clone(),
                    amount: *amount,
                    balance: self.balance,
                }],
            },
            AccountCommand::ReverseDebit { transfer } => match self.debits.get(transfer) {
                Some(DebitState::Debited(amount)) => vec![AccountEvent::DebitReversed {
                    transfer: transfer.clone(),
                    amount: *amount,
                }],
                None => vec![AccountEvent::DebitVoided {
                    transfer: transfer.clone(),
                }],
                Some(_) => vec![],
            },
            AccountCommand::Credit { transfer, amount } => match self.credits.get(transfer) {
                Some(_) => vec![],
                None => vec![AccountEvent::Credited {
                    transfer: transfer.clone(),
                    amount: *amount,
                }],
            },
            AccountCommand::VoidCredit { transfer } => match self.credits.get(transfer) {
                Some(_) => vec![],
                None => vec![AccountEvent::CreditVoided {
                    transfer: transfer.clone(),
                }],
            },
        })
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { balance } => {
                self.opened = true;
                self.balance = *balance;
            }
            AccountEvent::Debited { transfer, amount } => {
                // Saturating keeps apply total on an overdrawn stream, which the checker reports.
                self.balance = self.balance.saturating_sub(*amount);
                self.debits
                    .insert(transfer.clone(), DebitState::Debited(*amount));
            }
            AccountEvent::DebitRefused { transfer, .. } => {
                self.debits.insert(transfer.clone(), DebitState::Refused);
            }
            AccountEvent::DebitReversed { transfer, amount } => {
                self.balance += amount;
                self.debits.insert(transfer.clone(), DebitState::Reversed);
            }
            AccountEvent::DebitVoided { transfer } => {
                self.debits.insert(transfer.clone(), DebitState::Voided);
            }
            AccountEvent::Credited { transfer, amount } => {
                self.balance += amount;
                self.credits
                    .insert(transfer.clone(), CreditState::Credited(*amount));
            }
            AccountEvent::CreditVoided { transfer } => {
                self.credits.insert(transfer.clone(), CreditState::Voided);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(account: &mut Account, command: &AccountCommand) -> Vec<AccountEvent> {
        let events = account.decide(command).unwrap();
        for e in &events {
            account.apply(e);
        }
        events
    }

    #[test]
    fn debits_and_credits_are_once_per_transfer_and_tombstones_block_late_ones() {
        let mut a = Account::default();
        assert_eq!(
            a.decide(&AccountCommand::Debit {
                transfer: "t".into(),
                amount: 1
            }),
            Err(AccountError::NotOpen)
        );
        step(&mut a, &AccountCommand::Open { balance: 100 });
        assert_eq!(
            step(
                &mut a,
                &AccountCommand::Debit {
                    transfer: "t1".into(),
                    amount: 60
                }
            )
            .len(),
            1
        );
        assert_eq!(
            step(
                &mut a,
                &AccountCommand::Debit {
                    transfer: "t1".into(),
                    amount: 60
                }
            ),
            vec![]
        );
        assert!(matches!(
            step(
                &mut a,
                &AccountCommand::Debit {
                    transfer: "t2".into(),
                    amount: 60
                }
            )[..],
            [AccountEvent::DebitRefused { .. }]
        ));
        step(
            &mut a,
            &AccountCommand::ReverseDebit {
                transfer: "t1".into(),
            },
        );
        assert_eq!(a.balance, 100);
        assert_eq!(
            step(
                &mut a,
                &AccountCommand::ReverseDebit {
                    transfer: "t3".into()
                }
            ),
            vec![AccountEvent::DebitVoided {
                transfer: "t3".into()
            }]
        );
        assert_eq!(
            step(
                &mut a,
                &AccountCommand::Debit {
                    transfer: "t3".into(),
                    amount: 1
                }
            ),
            vec![],
            "voided debit stays void"
        );
        step(
            &mut a,
            &AccountCommand::VoidCredit {
                transfer: "t4".into(),
            },
        );
        assert_eq!(
            step(
                &mut a,
                &AccountCommand::Credit {
                    transfer: "t4".into(),
                    amount: 5
                }
            ),
            vec![],
            "voided credit stays void"
        );
        assert_eq!(a.balance, 100);
    }
}
