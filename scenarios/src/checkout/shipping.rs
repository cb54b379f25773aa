//! The shipment of one order: created → in transit (with tracking updates) → delivered,
//! or failed (lost by the carrier, or cancelled by the saga before delivery).
//!
//! The aggregate is the single arbiter between a delivery report and a cancellation that
//! race: whichever it records first wins, and the saga acts on that fact, never on its own
//! guess. Cancelling a shipment that was never created leaves a failure tombstone so a late
//! `Create` does nothing.

use reprise_core::{Aggregate, Event};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShipmentStatus {
    #[default]
    NotCreated,
    Created {
        tracking: String,
    },
    InTransit {
        updates: u32,
    },
    Delivered,
    Failed {
        reason: String,
    },
}

impl ShipmentStatus {
    /// Created or in transit: the carrier still has it.
    #[must_use]
    pub fn is_open(&self) -> bool {
        matches!(
            self,
            ShipmentStatus::Created { .. } | ShipmentStatus::InTransit { .. }
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Shipment {
    pub status: ShipmentStatus,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShippingCommand {
    Create { tracking: String },
    RecordInTransit,
    RecordTracking { update: u32 },
    RecordDelivered,
    RecordFailed { reason: String },
    Cancel,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShippingEvent {
    Created { tracking: String },
    InTransit,
    TrackingUpdated { update: u32 },
    Delivered,
    Failed { reason: String },
}

impl Event for ShippingEvent {
    fn event_type(&self) -> &'static str {
        match self {
            ShippingEvent::Created { .. } => "ShipmentCreated",
            ShippingEvent::InTransit => "ShipmentInTransit",
            ShippingEvent::TrackingUpdated { .. } => "TrackingUpdated",
            ShippingEvent::Delivered => "ShipmentDelivered",
            ShippingEvent::Failed { .. } => "ShipmentFailed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShippingError {}

impl Aggregate for Shipment {
    const CATEGORY: &'static str = "shipping";
    type Command = ShippingCommand;
    type Event = ShippingEvent;
    type Error = ShippingError;

    fn decide(&self, command: &ShippingCommand) -> Result<Vec<ShippingEvent>, ShippingError> {
        use ShipmentStatus::{Created, InTransit, NotCreated};
        Ok(match (command, &self.status) {
            (ShippingCommand::Create { tracking }, NotCreated) => vec![ShippingEvent::Created {
                tracking: tracking.clone(),
            }],
            (ShippingCommand::RecordInTransit, Created { .. }) => vec![ShippingEvent::InTransit],
            (ShippingCommand::RecordTracking { update }, InTransit { updates })
                if update > updates =>
            {
                vec![ShippingEvent::TrackingUpdated { update: *update }]
            }
            (ShippingCommand::RecordDelivered, Created { .. } | InTransit { .. }) => {
                vec![ShippingEvent::Delivered]
            }
            (ShippingCommand::RecordFailed { reason }, Created { .. } | InTransit { .. }) => {
                vec![ShippingEvent::Failed {
                    reason: reason.clone(),
                }]
            }
            (ShippingCommand::Cancel, NotCreated | Created { .. } | InTransit { .. }) => {
                vec![ShippingEvent::Failed {
                    reason: "cancelled".into(),
                }]
            }
            _ => vec![],
        })
    }

    fn apply(&mut self, event: &ShippingEvent) {
        self.status = match event {
            ShippingEvent::Created { tracking } => ShipmentStatus::Created {
                tracking: tracking.clone(),
            },
            ShippingEvent::InTransit => ShipmentStatus::InTransit { updates: 0 },
            ShippingEvent::TrackingUpdated { update } => {
                ShipmentStatus::InTransit { updates: *update }
            }
            ShippingEvent::Delivered => ShipmentStatus::Delivered,
            ShippingEvent::Failed { reason } => ShipmentStatus::Failed {
                reason: reason.clone(),
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_of_delivery_and_cancellation_wins() {
        let mut s = Shipment::default();
        s.apply(&ShippingEvent::Created {
            tracking: "t".into(),
        });
        s.apply(&ShippingEvent::Delivered);
        assert_eq!(s.decide(&ShippingCommand::Cancel), Ok(vec![]));
        let mut t = Shipment::default();
        t.apply(&ShippingEvent::Failed {
            reason: "cancelled".into(),
        });
        assert_eq!(
            t.decide(&ShippingCommand::Create {
                tracking: "late".into()
            }),
            Ok(vec![])
        );
        assert_eq!(t.decide(&ShippingCommand::RecordDelivered), Ok(vec![]));
    }
}
