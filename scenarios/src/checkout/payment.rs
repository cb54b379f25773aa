//! The payment of one order, as the shop records it. The payment provider holds the
//! money; this aggregate records what the provider said, so it is idempotent by state:
//! once settled (captured, declined, refunded, voided) a second report of the same kind
//! changes nothing.

use reprise_core::{Aggregate, Event};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentStatus {
    #[default]
    Pending,
    Captured {
        amount: u64,
    },
    Declined,
    Refunded {
        amount: u64,
    },
    /// Cancelled before anything was captured: the provider will refuse a late charge.
    Voided,
}

impl PaymentStatus {
    /// Declined, refunded or voided: the provider holds no money for this order.
    #[must_use]
    pub fn is_closed(self) -> bool {
        matches!(
            self,
            PaymentStatus::Declined | PaymentStatus::Refunded { .. } | PaymentStatus::Voided
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    pub status: PaymentStatus,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentCommand {
    RecordCapture { amount: u64, charge: String },
    RecordDecline { reason: String },
    RecordRefund { amount: u64 },
    RecordVoid,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentEvent {
    Captured { amount: u64, charge: String },
    Declined { reason: String },
    Refunded { amount: u64 },
    Voided,
}

impl Event for PaymentEvent {
    fn event_type(&self) -> &'static str {
        match self {
            PaymentEvent::Captured { .. } => "PaymentCaptured",
            PaymentEvent::Declined { .. } => "PaymentDeclined",
            PaymentEvent::Refunded { .. } => "PaymentRefunded",
            PaymentEvent::Voided => "PaymentVoided",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {}

impl Aggregate for Payment {
    const CATEGORY: &'static str = "payment";
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Error = PaymentError;

    fn decide(&self, command: &PaymentCommand) -> Result<Vec<PaymentEvent>, PaymentError> {
        use PaymentStatus::{Captured, Pending};
        Ok(match (command, self.status) {
            (PaymentCommand::RecordCapture { amount, charge }, Pending) => {
                vec![PaymentEvent::Captured {
                    amount: *amount,
                    charge: charge.clone(),
                }]
            }
            (PaymentCommand::RecordDecline { reason }, Pending) => vec![PaymentEvent::Declined {
                reason: reason.clone(),
            }],
            // A refund of a capture whose report was lost is still a refund.
            (PaymentCommand::RecordRefund { amount }, Pending | Captured { .. }) => {
                vec![PaymentEvent::Refunded { amount: *amount }]
            }
            (PaymentCommand::RecordVoid, Pending) => vec![PaymentEvent::Voided],
            _ => vec![],
        })
    }

    fn apply(&mut self, event: &PaymentEvent) {
        self.status = match event {
            PaymentEvent::Captured { amount, .. } => PaymentStatus::Captured { amount: *amount },
            PaymentEvent::Declined { .. } => PaymentStatus::Declined,
            PaymentEvent::Refunded { amount } => PaymentStatus::Refunded { amount: *amount },
            PaymentEvent::Voided => PaymentStatus::Voided,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_payments_ignore_late_reports() {
        let mut p = Payment::default();
        p.apply(&PaymentEvent::Voided);
        assert_eq!(
            p.decide(&PaymentCommand::RecordCapture {
                amount: 5,
                charge: "c".into()
            }),
            Ok(vec![])
        );
        let mut q = Payment::default();
        q.apply(&PaymentEvent::Captured {
            amount: 5,
            charge: "c".into(),
        });
        assert_eq!(
            q.decide(&PaymentCommand::RecordRefund { amount: 5 }),
            Ok(vec![PaymentEvent::Refunded { amount: 5 }])
        );
        assert_eq!(q.decide(&PaymentCommand::RecordVoid), Ok(vec![]));
    }
}
