//! The domain: a wallet that can be topped up and spent from. Pure: `decide` and `apply`
//! touch nothing but their arguments.

use reprise_core::Aggregate;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wallet {
    pub balance: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WalletCommand {
    TopUp { amount: u64 },
    Spend { amount: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WalletEvent {
    ToppedUp { amount: u64 },
    Spent { amount: u64 },
}

impl reprise_core::Event for WalletEvent {
    fn event_type(&self) -> &'static str {
        match self {
            WalletEvent::ToppedUp { .. } => "ToppedUp",
            WalletEvent::Spent { .. } => "Spent",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WalletError {
    #[error("an amount must be positive")]
    ZeroAmount,
    #[error("balance {balance} does not cover {amount}")]
    InsufficientFunds { balance: u64, amount: u64 },
}

impl Aggregate for Wallet {
    const CATEGORY: &'static str = "wallet";
    type Command = WalletCommand;
    type Event = WalletEvent;
    type Error = WalletError;

    fn decide(&self, command: &WalletCommand) -> Result<Vec<WalletEvent>, WalletError> {
        match *command {
            WalletCommand::TopUp { amount: 0 } | WalletCommand::Spend { amount: 0 } => {
                Err(WalletError::ZeroAmount)
            }
            WalletCommand::TopUp { amount } => Ok(vec![WalletEvent::ToppedUp { amount }]),
            WalletCommand::Spend { amount } if amount > self.balance => {
                Err(WalletError::InsufficientFunds {
                    balance: self.balance,
                    amount,
                })
            }
            WalletCommand::Spend { amount } => Ok(vec![WalletEvent::Spent { amount }]),
        }
    }

    fn apply(&mut self, event: &WalletEvent) {
        match *event {
            WalletEvent::ToppedUp { amount } => self.balance += amount,
            WalletEvent::Spent { amount } => self.balance -= amount,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spending_more_than_the_balance_is_refused() {
        let wallet = Wallet { balance: 5 };
        assert_eq!(
            wallet.decide(&WalletCommand::Spend { amount: 6 }),
            Err(WalletError::InsufficientFunds {
                balance: 5,
                amount: 6
            })
        );
        assert_eq!(
            wallet.decide(&WalletCommand::TopUp { amount: 0 }),
            Err(WalletError::ZeroAmount)
        );
    }
}
