//! Stock of one SKU and the reservations held against it, one reservation per order.
//!
//! Reservations are keyed by order so every command is idempotent: reserving twice for
//! one order is a no-op, and releasing an order that never reserved leaves a tombstone
//! ([`InventoryEvent::ReservationVoided`]) so that a late, reordered `Reserve` cannot
//! take stock for an order the saga has already given up on.

use std::collections::BTreeMap;

use reprise_core::{Aggregate, Event};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reservation {
    Held(u32),
    Released,
    Refused,
    /// Released before it was ever made: a tombstone.
    Voided,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub initialized: bool,
    pub available: u32,
    pub reservations: BTreeMap<String, Reservation>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InventoryCommand {
    /// Sets the initial stock; a no-op once stock exists.
    Initialize {
        quantity: u32,
    },
    Reserve {
        order: String,
        quantity: u32,
    },
    Release {
        order: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InventoryEvent {
    Initialized {
        quantity: u32,
    },
    Reserved {
        order: String,
        quantity: u32,
    },
    ReservationRefused {
        order: String,
        requested: u32,
        available: u32,
    },
    Released {
        order: String,
        quantity: u32,
    },
    ReservationVoided {
        order: String,
    },
}

impl InventoryEvent {
    /// The order the event concerns, if any.
    #[must_use]
    pub fn order(&self) -> Option<&str> {
        match self {
            InventoryEvent::Initialized { .. } => None,
            InventoryEvent::Reserved { order, .. }
            | InventoryEvent::ReservationRefused { order, .. }
            | InventoryEvent::Released { order, .. }
            | InventoryEvent::ReservationVoided { order } => Some(order),
        }
    }
}

impl Event for InventoryEvent {
    fn event_type(&self) -> &'static str {
        match self {
            InventoryEvent::Initialized { .. } => "StockInitialized",
            InventoryEvent::Reserved { .. } => "StockReserved",
            InventoryEvent::ReservationRefused { .. } => "ReservationRefused",
            InventoryEvent::Released { .. } => "StockReleased",
            InventoryEvent::ReservationVoided { .. } => "ReservationVoided",
        }
    }
}

/// Inventory never refuses a command outright: running out of stock is an event the saga
/// must hear about, not an error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {}

impl Inventory {
    /// The reservation decision, shared with the (buggy) projection-based handler so the
    /// two differ only in *what state* they decide on.
    #[must_use]
    pub fn decide_reserve(order: &str, quantity: u32, available: u32) -> InventoryEvent {
        if available >= quantity {
            InventoryEvent::Reserved {
                order: order.to_owned(),
                quantity,
            }
        } else {
            InventoryEvent::ReservationRefused {
                order: order.to_owned(),
                requested: quantity,
                available,
            }
        }
    }
}

impl Aggregate for Inventory {
    const CATEGORY: &'static str = "inventory";
    type Command = InventoryCommand;
    type Event = InventoryEvent;
    type Error = InventoryError;

    fn decide(&self, command: &InventoryCommand) -> Result<Vec<InventoryEvent>, InventoryError> {
        Ok(match command {
            InventoryCommand::Initialize { quantity } => {
                if self.initialized {
                    vec![]
                } else {
                    vec![InventoryEvent::Initialized {
                        quantity: *quantity,
                    }]
                }
            }
            InventoryCommand::Reserve { order, quantity } => match self.reservations.get(order) {
                Some(_) => vec![],
                None => vec![Inventory::decide_reserve(order, *quantity, self.available)],
            },
            InventoryCommand::Release { order } => match self.reservations.get(order) {
                Some(Reservation::Held(quantity)) => vec![InventoryEvent::Released {
                    order: order.clone(),
                    quantity: *quantity,
                }],
                None => vec![InventoryEvent::ReservationVoided {
                    order: order.clone(),
                }],
                Some(_) => vec![],
            },
        })
    }

    fn apply(&mut self, event: &InventoryEvent) {
        match event {
            InventoryEvent::Initialized { quantity } => {
                self.initialized = true;
                self.available += quantity;
            }
            InventoryEvent::Reserved { order, quantity } => {
                // Events are facts: apply stays total even for an oversold stream (which
                // the invariant checker reports), hence saturating.
                self.available = self.available.saturating_sub(*quantity);
                self.reservations
                    .insert(order.clone(), Reservation::Held(*quantity));
            }
            InventoryEvent::ReservationRefused { order, .. } => {
                self.reservations
                    .insert(order.clone(), Reservation::Refused);
            }
            InventoryEvent::Released { order, quantity } => {
                self.available += quantity;
                self.reservations
                    .insert(order.clone(), Reservation::Released);
            }
            InventoryEvent::ReservationVoided { order } => {
                self.reservations.insert(order.clone(), Reservation::Voided);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stocked(quantity: u32) -> Inventory {
        let mut inventory = Inventory::default();
        inventory.apply(&InventoryEvent::Initialized { quantity });
        inventory
    }

    fn run(inventory: &mut Inventory, command: &InventoryCommand) -> Vec<InventoryEvent> {
        let events = inventory.decide(command).unwrap();
        for event in &events {
            inventory.apply(event);
        }
        events
    }

    #[test]
    fn reserves_until_out_of_stock_then_refuses() {
        let mut inv = stocked(3);
        assert_eq!(
            run(
                &mut inv,
                &InventoryCommand::Reserve {
                    order: "1".into(),
                    quantity: 2
                }
            )
            .len(),
            1
        );
        assert_eq!(
            run(
                &mut inv,
                &InventoryCommand::Reserve {
                    order: "1".into(),
                    quantity: 2
                }
            ),
            vec![],
            "duplicate reserve"
        );
        assert_eq!(
            run(
                &mut inv,
                &InventoryCommand::Reserve {
                    order: "2".into(),
                    quantity: 2
                }
            ),
            vec![InventoryEvent::ReservationRefused {
                order: "2".into(),
                requested: 2,
                available: 1
            }]
        );
        assert_eq!(inv.available, 1);
        run(&mut inv, &InventoryCommand::Release { order: "1".into() });
        assert_eq!(inv.available, 3);
        assert_eq!(
            run(&mut inv, &InventoryCommand::Release { order: "1".into() }),
            vec![],
            "duplicate release"
        );
    }

    #[test]
    fn release_before_reserve_leaves_a_tombstone_that_blocks_a_late_reserve() {
        let mut inv = stocked(5);
        assert_eq!(
            run(&mut inv, &InventoryCommand::Release { order: "9".into() }),
            vec![InventoryEvent::ReservationVoided { order: "9".into() }]
        );
        assert_eq!(
            run(
                &mut inv,
                &InventoryCommand::Reserve {
                    order: "9".into(),
                    quantity: 1
                }
            ),
            vec![]
        );
        assert_eq!(inv.available, 5);
        assert_eq!(
            run(&mut inv, &InventoryCommand::Initialize { quantity: 99 }),
            vec![],
            "initialize once"
        );
    }
}
