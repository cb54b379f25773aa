//! An order, event-sourced: `decide` validates a command against the current state and
//! returns the events it causes (or a typed [`OrderError`]); `apply` folds an event into
//! the state and never fails, because events are facts that already happened.
//!
//! The rules live in `decide`, so `apply` stays trivially replayable. The invariants they
//! protect are spelled out once, in [`Order::check_invariants`], which tests run after
//! every step (this file is also compiled into `reprise-core`'s property tests, so it uses
//! nothing beyond `reprise-core`, `serde` and `thiserror`):
//!
//! - the total equals the sum of the lines, and never overflows (nor goes negative: it is
//!   unsigned, and a line can only be removed if it is there);
//! - a line has a positive quantity;
//! - no line is added or removed once the order is submitted or cancelled;
//! - a submitted order has at least one line.
//!
//! Run it in a `Store` with `AggregateReducer<Order>` (see [`order_store`]) or behind a
//! request/response API with `Repository<Order>`.

use std::collections::BTreeMap;
use std::sync::Arc;

use reprise_core::aggregate::AggregateEnv;
use reprise_core::{
    Aggregate, AggregateReducer, AggregateRoot, Entropy, Event, EventStore, SharedRuntime, Store,
};
use serde::{Deserialize, Serialize};

/// Lines per order, a business limit that also bounds the state's size.
pub const MAX_LINES: usize = 50;

/// Where an order is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    /// Not placed yet: the stream is empty.
    #[default]
    New,
    Open,
    Submitted,
    Cancelled,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub quantity: u32,
    pub unit_price_cents: u64,
}

impl OrderLine {
    fn amount_cents(&self) -> Option<u64> {
        u64::from(self.quantity).checked_mul(self.unit_price_cents)
    }
}

/// The order aggregate's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub status: OrderStatus,
    pub customer: String,
    /// By SKU: one line per product.
    pub lines: BTreeMap<String, OrderLine>,
    pub total_cents: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderCommand {
    Place {
        customer: String,
    },
    AddLine {
        sku: String,
        quantity: u32,
        unit_price_cents: u64,
    },
    RemoveLine {
        sku: String,
    },
    Submit,
    Cancel {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum OrderEvent {
    Placed {
        customer: String,
    },
    LineAdded {
        sku: String,
        quantity: u32,
        unit_price_cents: u64,
    },
    LineRemoved {
        sku: String,
    },
    Submitted {
        total_cents: u64,
    },
    Cancelled {
        reason: String,
    },
}

impl Event for OrderEvent {
    fn event_type(&self) -> &'static str {
        match self {
            OrderEvent::Placed { .. } => "OrderPlaced",
            OrderEvent::LineAdded { .. } => "OrderLineAdded",
            OrderEvent::LineRemoved { .. } => "OrderLineRemoved",
            OrderEvent::Submitted { .. } => "OrderSubmitted",
            OrderEvent::Cancelled { .. } => "OrderCancelled",
        }
    }
}

/// Why an order refused a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("the order has already been placed")]
    AlreadyPlaced,
    #[error("a customer is required")]
    NoCustomer,
    #[error("the order is {0:?}, so it cannot be changed")]
    NotOpen(OrderStatus),
    #[error("quantity must be at least 1")]
    ZeroQuantity,
    #[error("line {0} already exists; remove it first")]
    LineExists(String),
    #[error("no line {0}")]
    NoSuchLine(String),
    #[error("an order holds at most {MAX_LINES} lines")]
    TooManyLines,
    #[error("the amount does not fit in the order total")]
    AmountTooLarge,
    #[error("an empty order cannot be submitted")]
    EmptyOrder,
    #[error("the order is already {0:?}")]
    AlreadyClosed(OrderStatus),
}

impl Order {
    fn require_open(&self) -> Result<(), OrderError> {
        match self.status {
            OrderStatus::Open => Ok(()),
            other => Err(OrderError::NotOpen(other)),
        }
    }

    /// The invariants every reachable state satisfies. See the module docs.
    ///
    /// # Errors
    /// A description of the first violated invariant.
    pub fn check_invariants(&self) -> Result<(), String> {
        let sum = self
            .lines
            .values()
            .try_fold(0u64, |sum, line| sum.checked_add(line.amount_cents()?));
        if sum != Some(self.total_cents) {
            return Err(format!(
                "total {} differs from the lines' sum {sum:?}",
                self.total_cents
            ));
        }
        if let Some((sku, _)) = self.lines.iter().find(|(_, line)| line.quantity == 0) {
            return Err(format!("line {sku} has quantity 0"));
        }
        if self.lines.len() > MAX_LINES {
            return Err(format!("{} lines exceed the limit", self.lines.len()));
        }
        match self.status {
            OrderStatus::New if !self.lines.is_empty() || !self.customer.is_empty() => {
                Err("an order that was never placed has content".into())
            }
            OrderStatus::Submitted if self.lines.is_empty() => {
                Err("a submitted order has no lines".into())
            }
            _ => Ok(()),
        }
    }
}

impl Aggregate for Order {
    const CATEGORY: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn decide(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match command {
            OrderCommand::Place { customer } => {
                if self.status != OrderStatus::New {
                    return Err(OrderError::AlreadyPlaced);
                }
                if customer.trim().is_empty() {
                    return Err(OrderError::NoCustomer);
                }
                Ok(vec![OrderEvent::Placed {
                    customer: customer.clone(),
                }])
            }
            OrderCommand::AddLine {
                sku,
                quantity,
                unit_price_cents,
            } => {
                self.require_open()?;
                if *quantity == 0 {
                    return Err(OrderError::ZeroQuantity);
                }
                if self.lines.contains_key(sku) {
                    return Err(OrderError::LineExists(sku.clone()));
                }
                if self.lines.len() == MAX_LINES {
                    return Err(OrderError::TooManyLines);
                }
                let line = OrderLine {
                    quantity: *quantity,
                    unit_price_cents: *unit_price_cents,
                };
                line.amount_cents()
                    .and_then(|amount| self.total_cents.checked_add(amount))
                    .ok_or(OrderError::AmountTooLarge)?;
                Ok(vec![OrderEvent::LineAdded {
                    sku: sku.clone(),
                    quantity: *quantity,
                    unit_price_cents: *unit_price_cents,
                }])
            }
            OrderCommand::RemoveLine { sku } => {
                self.require_open()?;
                if !self.lines.contains_key(sku) {
                    return Err(OrderError::NoSuchLine(sku.clone()));
                }
                Ok(vec![OrderEvent::LineRemoved { sku: sku.clone() }])
            }
            OrderCommand::Submit => {
                self.require_open()?;
                if self.lines.is_empty() {
                    return Err(OrderError::EmptyOrder);
                }
                Ok(vec![OrderEvent::Submitted {
                    total_cents: self.total_cents,
                }])
            }
            OrderCommand::Cancel { reason } => match self.status {
                OrderStatus::New => Err(OrderError::NotOpen(OrderStatus::New)),
                OrderStatus::Cancelled => Err(OrderError::AlreadyClosed(OrderStatus::Cancelled)),
                OrderStatus::Open | OrderStatus::Submitted => Ok(vec![OrderEvent::Cancelled {
                    reason: reason.clone(),
                }]),
            },
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed { customer } => {
                self.status = OrderStatus::Open;
                self.customer.clone_from(customer);
            }
            OrderEvent::LineAdded {
                sku,
                quantity,
                unit_price_cents,
            } => {
                let line = OrderLine {
                    quantity: *quantity,
                    unit_price_cents: *unit_price_cents,
                };
                // `decide` checked the amount; an overflow here means a corrupt stream.
                let amount = line.amount_cents().expect("line amount checked by decide");
                self.total_cents = self
                    .total_cents
                    .checked_add(amount)
                    .expect("order total checked by decide");
                self.lines.insert(sku.clone(), line);
            }
            OrderEvent::LineRemoved { sku } => {
                if let Some(line) = self.lines.remove(sku) {
                    self.total_cents -= line
                        .amount_cents()
                        .expect("stored lines have valid amounts");
                }
            }
            OrderEvent::Submitted { .. } => self.status = OrderStatus::Submitted,
            OrderEvent::Cancelled { .. } => self.status = OrderStatus::Cancelled,
        }
    }
}

/// A store running one order: commands go in as `AggregateAction::Execute`, the state
/// changes only after the events are appended to `event_store`.
#[must_use]
pub fn order_store(
    id: &str,
    runtime: SharedRuntime,
    event_store: Arc<dyn EventStore>,
) -> Store<AggregateReducer<Order>> {
    let entropy: Arc<dyn Entropy> = runtime.clone();
    let env = AggregateEnv::new(entropy, Arc::clone(&event_store));
    Store::builder(
        AggregateReducer::default(),
        AggregateRoot::new(id),
        env,
        runtime,
    )
    .event_store(event_store)
    .name("order")
    .build()
}
