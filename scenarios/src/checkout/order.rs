//! The order: placed by the customer, then either completed (delivered) or cancelled.
//! The saga decides which; the order only refuses contradictions (completing a cancelled
//! order, cancelling a completed one).

use reprise_core::{Aggregate, Event};
use serde::{Deserialize, Serialize};

/// What was ordered. One line per order keeps the workload small and the invariants sharp.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub sku: String,
    pub quantity: u32,
    /// Total price in cents.
    pub amount: u64,
    /// The card token the customer pays with (the payment provider declines some).
    pub card: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    #[default]
    NotPlaced,
    Placed,
    Cancelled,
    Completed,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub status: OrderStatus,
    pub line: Option<OrderLine>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderCommand {
    Place(OrderLine),
    Cancel { reason: String },
    Complete,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderEvent {
    Placed(OrderLine),
    Cancelled { reason: String },
    Completed,
}

impl Event for OrderEvent {
    fn event_type(&self) -> &'static str {
        match self {
            OrderEvent::Placed(_) => "OrderPlaced",
            OrderEvent::Cancelled { .. } => "OrderCancelled",
            OrderEvent::Completed => "OrderCompleted",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("order was never placed")]
    NotPlaced,
    #[error("order is already {0:?}")]
    Closed(OrderStatus),
}

impl Aggregate for Order {
    const CATEGORY: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn decide(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        use OrderStatus::{Cancelled, Completed, NotPlaced, Placed};
        match (command, self.status) {
            (OrderCommand::Place(line), NotPlaced) => Ok(vec![OrderEvent::Placed(line.clone())]),
            // Placing again (a client retry) is a no-op.
            (OrderCommand::Place(_), _)
            | (OrderCommand::Cancel { .. }, Cancelled)
            | (OrderCommand::Complete, Completed) => Ok(vec![]),
            (OrderCommand::Cancel { reason }, Placed) => Ok(vec![OrderEvent::Cancelled {
                reason: reason.clone(),
            }]),
            (OrderCommand::Complete, Placed) => Ok(vec![OrderEvent::Completed]),
            (_, NotPlaced) => Err(OrderError::NotPlaced),
            (_, status) => Err(OrderError::Closed(status)),
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed(line) => {
                self.status = OrderStatus::Placed;
                self.line = Some(line.clone());
            }
            OrderEvent::Cancelled { .. } => self.status = OrderStatus::Cancelled,
            OrderEvent::Completed => self.status = OrderStatus::Completed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed() -> Order {
        let mut order = Order::default();
        order.apply(&OrderEvent::Placed(OrderLine {
            sku: "a".into(),
            quantity: 1,
            amount: 100,
            card: 1,
        }));
        order
    }

    #[test]
    fn placing_is_idempotent_and_closing_is_final() {
        let order = placed();
        assert_eq!(
            order.decide(&OrderCommand::Place(order.line.clone().unwrap())),
            Ok(vec![])
        );
        let mut cancelled = order.clone();
        cancelled.apply(&OrderEvent::Cancelled { reason: "x".into() });
        assert_eq!(
            cancelled.decide(&OrderCommand::Cancel {
                reason: "again".into()
            }),
            Ok(vec![])
        );
        assert_eq!(
            cancelled.decide(&OrderCommand::Complete),
            Err(OrderError::Closed(OrderStatus::Cancelled))
        );
        assert_eq!(
            Order::default().decide(&OrderCommand::Complete),
            Err(OrderError::NotPlaced)
        );
    }
}
