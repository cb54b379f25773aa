//! What must hold for the checkout, checked from the store's log and the payment
//! provider's books.
//!
//! Safety (at every check):
//! - inventory is never oversold, and one order never reserves twice;
//! - no order is both delivered and refunded (in our log or at the provider);
//! - an order is never both completed and cancelled, and is completed only once delivered;
//! - the provider captures at most once per order;
//! - plus the shared [`LogAudit`] checks (per-stream order, effect once per message).
//!
//! Liveness (once faults stop — "settled"):
//! - every planned order was placed and its saga is terminal;
//! - a completed order was delivered and the provider holds exactly its amount; a
//!   cancelled order holds no money and no stock (every captured payment belongs to a
//!   shipped or refunded order);
//!
//! And at the consumers (safety): every message a consumer acknowledged took effect.

use std::collections::BTreeMap;

use reprise_core::{Aggregate, InMemoryEventBus, RecordedEvent, Saga};

use super::gateway::ProviderBooks;
use super::inventory::{Inventory, InventoryEvent};
use super::order::{Order, OrderEvent, OrderLine};
use super::payment::{Payment, PaymentEvent};
use super::saga::{CheckoutEvent, CheckoutSaga, Step};
use super::services::groups;
use super::shipping::{Shipment, ShippingEvent};
use super::workload::CheckoutWorkload;
use crate::audit::{Finding, LogAudit};

/// Invariant names.
pub mod invariant {
    pub const OVERSOLD: &str = "inventory never oversold";
    pub const RESERVED_TWICE: &str = "an order reserves stock at most once";
    pub const SHIPPED_AND_REFUNDED: &str = "no order is both shipped and refunded";
    pub const COMPLETED_AND_CANCELLED: &str = "no order is both completed and cancelled";
    pub const COMPLETED_UNDELIVERED: &str = "an order is completed only after delivery";
    pub const DOUBLE_CAPTURE: &str = "the provider captures at most once per order";
    pub const SAGAS_TERMINAL: &str = "after the liveness phase every saga is terminal";
    pub const CAPTURE_BELONGS: &str =
        "every captured payment belongs to a shipped or refunded order";
    pub const STOCK_RETURNED: &str = "a cancelled order holds no stock";
    pub const UNDECODABLE: &str = "every stored event decodes";
}

#[derive(Clone, Debug, Default)]
struct OrderFacts {
    line: Option<OrderLine>,
    cancelled: bool,
    completed: bool,
    delivered: bool,
    refunded: bool,
}

#[derive(Clone, Debug, Default)]
struct StockFacts {
    available: i64,
    held: BTreeMap<String, u32>,
    ever_reserved: BTreeMap<String, u32>,
}

/// The checkout's log fold. See the module docs.
#[derive(Debug, Default)]
pub struct CheckoutAudit {
    log: LogAudit,
    orders: BTreeMap<String, OrderFacts>,
    stock: BTreeMap<String, StockFacts>,
    sagas: BTreeMap<String, CheckoutSaga>,
    /// Orders seen delivered so far: with the provider's revision, what
    /// [`check_books`](Self::check_books) depends on.
    delivered: usize,
}

fn order_entity(order: &str) -> String {
    Order::stream_id(order).to_string()
}

fn decode<T: serde::de::DeserializeOwned>(event: &RecordedEvent) -> Result<T, Finding> {
    event.payload.decode().map_err(|e| {
        Finding::new(
            invariant::UNDECODABLE,
            vec![event.stream.to_string()],
            format!("{} at position {}: {e}", event.event_type, event.position),
        )
    })
}

impl CheckoutAudit {
    #[must_use]
    pub fn new() -> Self {
        CheckoutAudit {
            log: LogAudit::new(),
            ..Self::default()
        }
    }

    /// The next global position the audit wants (pass `read_all_now(next_position, ..)`).
    #[must_use]
    pub fn next_position(&self) -> u64 {
        self.log.next_position
    }

    /// Folds newly committed events, checking safety as it goes.
    ///
    /// # Errors
    /// The first broken safety invariant.
    pub fn observe(&mut self, events: &[RecordedEvent]) -> Result<(), Finding> {
        for event in events {
            self.log.observe(event)?;
            self.observe_domain(event)?;
        }
        Ok(())
    }

    fn observe_domain(&mut self, event: &RecordedEvent) -> Result<(), Finding> {
        let entity = event
            .stream
            .as_str()
            .split_once('-')
            .map_or("", |(_, id)| id);
        match event.stream.category() {
            Order::CATEGORY => {
                let facts = self.orders.entry(entity.to_owned()).or_default();
                match decode::<OrderEvent>(event)? {
                    OrderEvent::Placed(line) => facts.line = Some(line),
                    OrderEvent::Cancelled { .. } => facts.cancelled = true,
                    OrderEvent::Completed => {
                        facts.completed = true;
                        if !facts.delivered {
                            return Err(Finding::new(
                                invariant::COMPLETED_UNDELIVERED,
                                vec![event.stream.to_string()],
                                "completed before its shipment was delivered",
                            ));
                        }
                    }
                }
                if facts.cancelled && facts.completed {
                    return Err(Finding::new(
                        invariant::COMPLETED_AND_CANCELLED,
                        vec![event.stream.to_string()],
                        "the order was completed and cancelled",
                    ));
                }
            }
            Inventory::CATEGORY => {
                let stock = self.stock.entry(entity.to_owned()).or_default();
                match decode::<InventoryEvent>(event)? {
                    InventoryEvent::Initialized { quantity } => {
                        stock.available += i64::from(quantity);
                    }
                    InventoryEvent::Reserved { order, quantity } => {
                        stock.available -= i64::from(quantity);
                        stock.held.insert(order.clone(), quantity);
                        let times = stock.ever_reserved.entry(order.clone()).or_default();
                        *times += 1;
                        if *times > 1 {
                            return Err(Finding::new(
                                invariant::RESERVED_TWICE,
                                vec![order_entity(&order), event.stream.to_string()],
                                format!("order {order} reserved {} times", *times),
                            ));
                        }
                        if stock.available < 0 {
                            return Err(Finding::new(
                                invariant::OVERSOLD,
                                vec![event.stream.to_string(), order_entity(&order)],
                                format!(
                                    "reserving {quantity} for order {order} left {} units",
                                    stock.available
                                ),
                            ));
                        }
                    }
                    InventoryEvent::Released { order, quantity } => {
                        stock.available += i64::from(quantity);
                        stock.held.remove(&order);
                    }
                    InventoryEvent::ReservationRefused { .. }
                    | InventoryEvent::ReservationVoided { .. } => {}
                }
            }
            Payment::CATEGORY => {
                if let PaymentEvent::Refunded { .. } = decode::<PaymentEvent>(event)? {
                    let facts = self.orders.entry(entity.to_owned()).or_default();
                    facts.refunded = true;
                    if facts.delivered {
                        return Err(shipped_and_refunded(entity, "refunded after delivery"));
                    }
                }
            }
            Shipment::CATEGORY => {
                if let ShippingEvent::Delivered = decode::<ShippingEvent>(event)? {
                    let facts = self.orders.entry(entity.to_owned()).or_default();
                    if !facts.delivered {
                        self.delivered += 1;
                    }
                    facts.delivered = true;
                    if facts.refunded {
                        return Err(shipped_and_refunded(entity, "delivered after a refund"));
                    }
                }
            }
            CheckoutSaga::NAME if !event.event_type.starts_with("reprise.") => {
                let saga_event = decode::<CheckoutEvent>(event)?;
                self.sagas
                    .entry(entity.to_owned())
                    .or_default()
                    .apply(&saga_event);
            }
            _ => {}
        }
        Ok(())
    }

    /// Everything [`check_books`](Self::check_books) reads from the audit changes this
    /// number: a caller that saw the books pass for (provider revision, this) need not
    /// check them again until one of the two moves.
    #[must_use]
    pub fn books_dependency(&self) -> usize {
        self.delivered
    }

    /// Safety at the provider.
    ///
    /// # Errors
    /// A double capture, or money kept for a delivered order that was refunded.
    pub fn check_books(&self, books: &ProviderBooks) -> Result<(), Finding> {
        let mut captures: BTreeMap<&str, usize> = BTreeMap::new();
        for charge in books.charges.values() {
            let n = captures.entry(&charge.order).or_default();
            *n += 1;
            if *n > 1 {
                return Err(Finding::new(
                    invariant::DOUBLE_CAPTURE,
                    vec![
                        order_entity(&charge.order),
                        format!("payment-{}", charge.order),
                    ],
                    format!("{n} captures at the provider"),
                ));
            }
            if charge.refunded && self.orders.get(&charge.order).is_some_and(|f| f.delivered) {
                return Err(shipped_and_refunded(
                    &charge.order,
                    "the provider refunded a delivered order",
                ));
            }
        }
        Ok(())
    }

    /// Whether the run has settled correctly. Call after [`observe`](Self::observe) has
    /// seen the whole log.
    ///
    /// # Errors
    /// What has not settled, or settled wrongly.
    pub fn check_settled(
        &self,
        workload: &CheckoutWorkload,
        books: &ProviderBooks,
    ) -> Result<(), Finding> {
        for planned in &workload.orders {
            let id = &planned.id;
            let placed = self.orders.get(id).is_some_and(|f| f.line.is_some());
            let step = self.sagas.get(id).map_or(Step::NotStarted, |s| s.step);
            if !placed || !matches!(step, Step::Completed | Step::Cancelled) {
                return Err(Finding::new(
                    invariant::SAGAS_TERMINAL,
                    vec![order_entity(id), format!("{}-{id}", CheckoutSaga::NAME)],
                    format!("order placed: {placed}, saga step: {step:?}"),
                ));
            }
        }
        for planned in &workload.orders {
            let id = &planned.id;
            let facts = &self.orders[id];
            let (held, _) = books.held_for(id);
            let completed = self.sagas[id].step == Step::Completed;
            let expected = if completed { planned.line.amount } else { 0 };
            if held != expected
                || (completed && !(facts.delivered && facts.completed))
                || (!completed && !facts.cancelled)
            {
                return Err(Finding::new(
                    invariant::CAPTURE_BELONGS,
                    vec![
                        order_entity(id),
                        format!("payment-{id}"),
                        format!("shipping-{id}"),
                        format!("{}-{id}", CheckoutSaga::NAME),
                    ],
                    format!(
                        "saga {}, order completed={} cancelled={}, delivered={}, provider holds {held} (expected {expected})",
                        if completed { "completed" } else { "cancelled" },
                        facts.completed,
                        facts.cancelled,
                        facts.delivered
                    ),
                ));
            }
            if !completed
                && let Some(stock) = self.stock.get(&planned.line.sku)
                && let Some(quantity) = stock.held.get(id)
            {
                return Err(Finding::new(
                    invariant::STOCK_RETURNED,
                    vec![
                        order_entity(id),
                        format!("inventory-{}", planned.line.sku),
                        format!("{}-{id}", CheckoutSaga::NAME),
                    ],
                    format!("cancelled order still holds {quantity} units"),
                ));
            }
        }
        Ok(())
    }

    /// Safety at the bus and its consumers: each stream's events reach the bus in order
    /// ([`LogAudit::check_bus_order`]), and every message a checkout consumer acknowledged
    /// took effect ([`LogAudit::check_nothing_lost`]).
    ///
    /// # Errors
    /// The first acknowledged message without its inbox marker.
    pub fn check_consumers(&mut self, bus: &InMemoryEventBus) -> Result<(), Finding> {
        self.log
            .check_bus_order(bus, &[super::saga::topics::EVENTS])?;
        self.log.check_nothing_lost(bus, &groups::ALL)
    }
}

fn shipped_and_refunded(order: &str, what: &str) -> Finding {
    Finding::new(
        invariant::SHIPPED_AND_REFUNDED,
        vec![
            order_entity(order),
            format!("payment-{order}"),
            format!("shipping-{order}"),
        ],
        what,
    )
}
