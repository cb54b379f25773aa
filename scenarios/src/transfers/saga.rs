//! The transfer saga: debit the source, then credit the destination; if the debit's
//! outcome stays unknown, reverse it; if the credit cannot be confirmed after a few tries,
//! void it and reverse the debit.
//!
//! As in the checkout, the saga acts on facts: a timeout *asks* the account to reverse or
//! void, and the account — which serializes everything that touches it — answers with what
//! really happened (a late debit becomes a reversal, a late credit wins over the void).

use std::time::Duration;

use reprise_core::{Event, Reaction, Saga, sometimes};
use serde::{Deserialize, Serialize};

use super::request::TransferOrder;
use super::situations;
use reprise_host::commands::CommandRoute;

/// Topics of the transfers.
pub mod topics {
    pub const ACCOUNTS: &str = "transfers.accounts";
    pub const EVENTS: &str = "transfers.events";
}

/// How long a step may stay silent, and how often a settled command is re-issued.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(2);
/// Credits tried before the saga gives up on the destination and reverses the debit.
pub const CREDIT_ATTEMPTS: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Deadline {
    Debit,
    Credit,
    VoidCredit,
    Reverse,
}

impl Deadline {
    #[must_use]
    pub fn id(self) -> &'static str {
        match self {
            Deadline::Debit => "debit",
            Deadline::Credit => "credit",
            Deadline::VoidCredit => "void-credit",
            Deadline::Reverse => "reverse",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferInput {
    Start {
        transfer: String,
        order: TransferOrder,
    },
    Debited,
    DebitRefused,
    /// Reversed, or voided before it happened.
    DebitUndone,
    Credited,
    CreditVoided,
    Timeout(Deadline),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferCommand {
    Debit {
        account: String,
        transfer: String,
        amount: u64,
    },
    ReverseDebit {
        account: String,
        transfer: String,
    },
    Credit {
        account: String,
        transfer: String,
        amount: u64,
    },
    VoidCredit {
        account: String,
        transfer: String,
    },
}

impl TransferCommand {
    #[must_use]
    pub fn account(&self) -> &str {
        match self {
            TransferCommand::Debit { account, .. }
            | TransferCommand::ReverseDebit { account, .. }
            | TransferCommand::Credit { account, .. }
            | TransferCommand::VoidCredit { account, .. } => account,
        }
    }
}

impl CommandRoute for TransferCommand {
    fn topic(&self) -> &'static str {
        topics::ACCOUNTS
    }

    /// Keyed by account: an account's commands are handled in order, by one consumer.
    fn key(&self) -> String {
        format!("account-{}", self.account())
    }

    fn name(&self) -> &'static str {
        match self {
            TransferCommand::Debit { .. } => "Debit",
            TransferCommand::ReverseDebit { .. } => "ReverseDebit",
            TransferCommand::Credit { .. } => "Credit",
            TransferCommand::VoidCredit { .. } => "VoidCredit",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferEvent {
    Started {
        transfer: String,
        order: TransferOrder,
    },
    DebitConfirmed,
    CreditRetried,
    CreditAbandoned,
    ReversalStarted {
        reason: String,
    },
    Completed,
    Failed {
        reason: String,
    },
}

impl Event for TransferEvent {
    fn event_type(&self) -> &'static str {
        match self {
            TransferEvent::Started { .. } => "TransferStarted",
            TransferEvent::DebitConfirmed => "TransferDebitConfirmed",
            TransferEvent::CreditRetried => "TransferCreditRetried",
            TransferEvent::CreditAbandoned => "TransferCreditAbandoned",
            TransferEvent::ReversalStarted { .. } => "TransferReversalStarted",
            TransferEvent::Completed => "TransferCompleted",
            TransferEvent::Failed { .. } => "TransferFailed",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Step {
    #[default]
    NotStarted,
    Debiting,
    Crediting,
    VoidingCredit,
    Reversing,
    Completed,
    Failed,
}

/// One transfer. See the module docs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TransferSaga {
    pub transfer: String,
    pub order: Option<TransferOrder>,
    pub step: Step,
    pub credit_attempts: u32,
}

impl TransferSaga {
    fn order(&self) -> &TransferOrder {
        self.order
            .as_ref()
            .expect("every step after Start has the order")
    }

    fn debit(&self) -> TransferCommand {
        let o = self.order();
        TransferCommand::Debit {
            account: o.from.clone(),
            transfer: self.transfer.clone(),
            amount: o.amount,
        }
    }

    fn credit(&self) -> TransferCommand {
        let o = self.order();
        TransferCommand::Credit {
            account: o.to.clone(),
            transfer: self.transfer.clone(),
            amount: o.amount,
        }
    }

    fn reverse(&self) -> TransferCommand {
        TransferCommand::ReverseDebit {
            account: self.order().from.clone(),
            transfer: self.transfer.clone(),
        }
    }

    fn void_credit(&self) -> TransferCommand {
        TransferCommand::VoidCredit {
            account: self.order().to.clone(),
            transfer: self.transfer.clone(),
        }
    }

    fn ask(command: TransferCommand, deadline: Deadline) -> Reaction<Self> {
        Reaction::none().command(command).set_deadline(
            deadline.id(),
            STEP_TIMEOUT,
            TransferInput::Timeout(deadline),
        )
    }

    fn start_reversal(&self, reason: &str, open: Deadline) -> Reaction<Self> {
        let mut reaction =
            Self::ask(self.reverse(), Deadline::Reverse).event(TransferEvent::ReversalStarted {
                reason: reason.to_owned(),
            });
        reaction.clear_deadlines.push(open.id().to_owned());
        reaction
    }
}

impl Saga for TransferSaga {
    const NAME: &'static str = "transfer";
    type Input = TransferInput;
    type Event = TransferEvent;
    type Command = TransferCommand;

    fn react(&self, input: &TransferInput) -> Reaction<Self> {
        use Step as S;
        use TransferInput as I;
        match (self.step, input) {
            (S::NotStarted, I::Start { transfer, order }) => {
                let started = TransferSaga {
                    transfer: transfer.clone(),
                    order: Some(order.clone()),
                    ..Self::default()
                };
                Self::ask(started.debit(), Deadline::Debit).event(TransferEvent::Started {
                    transfer: transfer.clone(),
                    order: order.clone(),
                })
            }
            (S::Debiting, I::Debited) => Self::ask(self.credit(), Deadline::Credit)
                .event(TransferEvent::DebitConfirmed)
                .clear_deadline(Deadline::Debit.id()),
            (S::Debiting, I::DebitRefused) => Reaction::none()
                .event(TransferEvent::Failed {
                    reason: "insufficient funds".into(),
                })
                .clear_deadline(Deadline::Debit.id()),
            (S::Debiting, I::Timeout(Deadline::Debit)) => {
                self.start_reversal("debit timed out", Deadline::Debit)
            }
            (S::Crediting | S::VoidingCredit, I::Credited) => {
                sometimes!(
                    situations::LATE_CREDIT_WHILE_VOIDING.name,
                    matches!(self.step, S::VoidingCredit)
                );
                Reaction::none()
                    .event(TransferEvent::Completed)
                    .clear_deadline(Deadline::Credit.id())
                    .clear_deadline(Deadline::VoidCredit.id())
            }
            (S::Crediting, I::Timeout(Deadline::Credit)) => {
                sometimes!(situations::CREDIT_DEADLINE_FIRED.name);
                if self.credit_attempts + 1 < CREDIT_ATTEMPTS {
                    Self::ask(self.credit(), Deadline::Credit).event(TransferEvent::CreditRetried)
                } else {
                    let mut reaction = Self::ask(self.void_credit(), Deadline::VoidCredit)
                        .event(TransferEvent::CreditAbandoned);
                    reaction
                        .clear_deadlines
                        .push(Deadline::Credit.id().to_owned());
                    reaction
                }
            }
            (S::VoidingCredit, I::CreditVoided) => {
                sometimes!(situations::CREDIT_VOIDED.name);
                self.start_reversal("credit could not be made", Deadline::VoidCredit)
            }
            (S::VoidingCredit, I::Timeout(Deadline::VoidCredit)) => {
                Self::ask(self.void_credit(), Deadline::VoidCredit)
            }
            (S::Reversing, I::DebitUndone | I::DebitRefused) => {
                sometimes!(
                    situations::DEBIT_REVERSED.name,
                    matches!(input, I::DebitUndone)
                );
                Reaction::none()
                    .event(TransferEvent::Failed {
                        reason: "reversed".into(),
                    })
                    .clear_deadline(Deadline::Reverse.id())
            }
            (S::Reversing, I::Timeout(Deadline::Reverse)) => {
                Self::ask(self.reverse(), Deadline::Reverse)
            }
            _ => Reaction::none(),
        }
    }

    fn apply(&mut self, event: &TransferEvent) {
        match event {
            TransferEvent::Started { transfer, order } => {
                self.transfer.clone_from(transfer);
                self.order = Some(order.clone());
                self.step = Step::Debiting;
            }
            TransferEvent::DebitConfirmed => self.step = Step::Crediting,
            TransferEvent::CreditRetried => self.credit_attempts += 1,
            TransferEvent::CreditAbandoned => self.step = Step::VoidingCredit,
            TransferEvent::ReversalStarted { .. } => self.step = Step::Reversing,
            TransferEvent::Completed => self.step = Step::Completed,
            TransferEvent::Failed { .. } => self.step = Step::Failed,
        }
    }

    fn is_terminal(&self) -> bool {
        matches!(self.step, Step::Completed | Step::Failed)
    }
}
