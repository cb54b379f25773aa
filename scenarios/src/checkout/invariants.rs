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
//!
//! External calls and dead letters:
//! - retries stay bounded (safety): per order, the calls that reached an external service
//!   number at most [`MAX_ATTEMPTS`] × the command deliveries that could cause them
//!   ([`CallLedger::check_bounded`] derives the bound);
//! - after the liveness phase no dead letter is pending, and every redelivered letter's
//!   copy on the bus was handled by its consumer ([`CheckoutAudit::check_dead_letters`]).

use std::collections::{BTreeMap, BTreeSet};

use reprise_core::resilience::dead_letter::REDELIVERED_FROM_HEADER;
use reprise_core::resilience::{DeadLetter, DeadLetterStatus};
use reprise_core::{Aggregate, InMemoryEventBus, RecordedEvent, Saga};

use super::gateway::ProviderBooks;
use super::inventory::{Inventory, InventoryEvent};
use super::order::{Order, OrderEvent, OrderLine};
use super::payment::{Payment, PaymentEvent};
use super::resilience::MAX_ATTEMPTS;
use super::saga::{CheckoutEvent, CheckoutSaga, Step};
use super::services::groups;
use super::shipping::{Shipment, ShippingEvent};
use super::workload::CheckoutWorkload;
use crate::audit::{Finding, LogAudit};
use reprise_host::inbox;

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
    pub const ATTEMPTS_BOUNDED: &str =
        "retries stay bounded: at most MAX_ATTEMPTS calls to a service per command delivered";
    pub const DEAD_LETTERS_DRAINED: &str = "after the liveness phase no dead letter is pending";
    pub const REDELIVERED_HANDLED: &str = "every redelivered dead letter was handled";
}

/// The calls made to one external service and the command deliveries that may cause
/// them, per command key (`order-<id>`), counted outside the services: deliveries where
/// the bus hands them to the consumer, calls where they enter the dependency channel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallLedger {
    delivered: BTreeMap<String, u64>,
    calls: BTreeMap<String, u64>,
    changes: u64,
}

impl CallLedger {
    /// A command about `key` was handed to the service's consumer.
    pub fn delivered(&mut self, key: &str) {
        *self.delivered.entry(key.to_owned()).or_default() += 1;
        self.changes += 1;
    }

    /// A call about `key` left for the service.
    pub fn called(&mut self, key: &str) {
        *self.calls.entry(key.to_owned()).or_default() += 1;
        self.changes += 1;
    }

    #[must_use]
    pub fn total_delivered(&self) -> u64 {
        self.delivered.values().sum()
    }

    #[must_use]
    pub fn total_calls(&self) -> u64 {
        self.calls.values().sum()
    }

    /// Bumped by every record: a ledger that passed at this number still passes.
    #[must_use]
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Retries stay bounded. The bound, derived: a handler makes at most one guarded
    /// call per delivery (charge *or* refund; register), and a guarded call makes at most
    /// [`MAX_ATTEMPTS`] attempts — the breaker's half-open probe is one of them, and an
    /// attempt the open breaker refuses never reaches the service. So for every key,
    /// `calls ≤ MAX_ATTEMPTS × deliveries`. Redeliveries (crash, rebalance, duplicate, an
    /// operator's redelivery) are deliveries too, each with its own budget.
    ///
    /// # Errors
    /// The first key whose calls exceed its budget.
    pub fn check_bounded(&self, service: &str) -> Result<(), Finding> {
        for (key, &calls) in &self.calls {
            let delivered = self.delivered.get(key).copied().unwrap_or(0);
            let budget = u64::from(MAX_ATTEMPTS) * delivered;
            if calls > budget {
                return Err(Finding::new(
                    invariant::ATTEMPTS_BOUNDED,
                    vec![key.clone()],
                    format!(
                        "{calls} calls to {service} for {delivered} command deliveries (budget {budget} = {MAX_ATTEMPTS} attempts each)"
                    ),
                ));
            }
        }
        Ok(())
    }
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
    /// Dead letters whose redelivered copy was seen handled (handled stays handled).
    redelivered_handled: BTreeSet<String>,
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

    /// Dead letters after an operator's pass: none pending, and each letter marked
    /// retried has its copy on the bus (tagged with the letter's id) handled by the
    /// topic's consumer — recorded in its inbox under the copy's own id
    /// ([`inbox::message_id_in`]). Call after [`observe`](Self::observe) has seen the log.
    ///
    /// # Errors
    /// A pending letter, or a redelivered copy not (yet) handled.
    pub fn check_dead_letters(
        &mut self,
        bus: &InMemoryEventBus,
        letters: &[DeadLetter],
    ) -> Result<(), Finding> {
        for letter in letters {
            let id = &letter.id.0;
            let entities = || vec![letter.letter.key.clone(), format!("dead-letter-{id}")];
            match letter.status {
                DeadLetterStatus::Pending => {
                    return Err(Finding::new(
                        invariant::DEAD_LETTERS_DRAINED,
                        entities(),
                        format!(
                            "dead letter {id} ({} from {}) is still pending: {}",
                            letter.letter.key, letter.letter.topic, letter.letter.error
                        ),
                    ));
                }
                DeadLetterStatus::Discarded { .. } => continue,
                DeadLetterStatus::Retried { .. } => {}
            }
            if self.redelivered_handled.contains(id) {
                continue;
            }
            let topic = letter.letter.topic.as_str();
            let Some(&(group, _)) = groups::ALL.iter().find(|(_, t)| *t == topic) else {
                return Err(Finding::new(
                    invariant::REDELIVERED_HANDLED,
                    entities(),
                    format!("dead letter {id} was redelivered to {topic}, which no consumer reads"),
                ));
            };
            let mut copies = 0;
            let mut handled = 0;
            for partition in 0..bus.partition_count(topic) {
                let _ = bus.try_for_each_header(topic, partition, 0, usize::MAX, |_, headers| {
                    if headers.get(REDELIVERED_FROM_HEADER) == Some(id.as_str()) {
                        copies += 1;
                        if inbox::message_id_in(headers).is_some_and(|message| {
                            self.log.has_marker(inbox::marker_id(group, message))
                        }) {
                            handled += 1;
                        }
                    }
                    Ok::<(), ()>(())
                });
            }
            if handled == 0 {
                return Err(Finding::new(
                    invariant::REDELIVERED_HANDLED,
                    entities(),
                    format!(
                        "dead letter {id} ({} on {topic}) was redelivered ({copies} cop{} on the bus) but {group} has not handled it",
                        letter.letter.key,
                        if copies == 1 { "y" } else { "ies" }
                    ),
                ));
            }
            self.redelivered_handled.insert(id.clone());
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

#[cfg(test)]
mod tests {
    use reprise_core::event_bus::header;
    use reprise_core::resilience::{DeadLetterId, NewDeadLetter};
    use reprise_core::{
        AppendBatch, ErrorClass, EventId, ExpectedVersion, Headers, InMemoryEventStore, NewEvent,
        Payload, Timestamp,
    };

    use super::*;
    use crate::checkout::saga::topics;

    #[test]
    fn the_retry_bound_allows_max_attempts_calls_per_delivery_and_not_one_more() {
        let mut ledger = CallLedger::default();
        ledger.delivered("order-o1");
        for _ in 0..MAX_ATTEMPTS {
            ledger.called("order-o1");
        }
        ledger.check_bounded("payment-provider").unwrap();
        ledger.called("order-o1");
        let found = ledger.check_bounded("payment-provider").unwrap_err();
        assert_eq!(found.invariant, invariant::ATTEMPTS_BOUNDED);
        assert_eq!(found.entities, vec!["order-o1".to_owned()]);
        // A redelivery brings a budget of its own.
        ledger.delivered("order-o1");
        ledger.check_bounded("payment-provider").unwrap();
        // A call no delivery explains is over budget at once.
        ledger.called("order-o2");
        assert!(ledger.check_bounded("payment-provider").is_err());
        assert_eq!((ledger.total_delivered(), ledger.total_calls()), (2, 6));
    }

    fn letter(status: DeadLetterStatus) -> DeadLetter {
        DeadLetter {
            id: DeadLetterId("1".into()),
            letter: NewDeadLetter {
                topic: topics::PAYMENTS.into(),
                source_position: Some("checkout.payments/0@3".into()),
                key: "order-o1".into(),
                payload: Payload::from_json_text("{}"),
                headers: Headers::default().with(
                    header::EVENT_ID,
                    reprise_host::ids::format_event_id(EventId(7)),
                ),
                error: "payment-provider.charge failed after 4 attempt(s)".into(),
                error_class: ErrorClass::Transient,
                attempts: 4,
                failed_at: Timestamp::SIMULATION_EPOCH,
            },
            status,
        }
    }

    fn fold_marker(audit: &mut CheckoutAudit, store: &InMemoryEventStore, marker: NewEvent) {
        store
            .append_now(&AppendBatch::single(
                inbox::stream(groups::PAYMENTS),
                ExpectedVersion::Any,
                vec![marker],
            ))
            .unwrap();
        audit
            .observe(&store.read_all_now(audit.next_position(), usize::MAX))
            .unwrap();
    }

    #[test]
    fn dead_letters_must_be_drained_and_each_redelivered_copy_handled() {
        let mut audit = CheckoutAudit::new();
        let (bus, store) = (InMemoryEventBus::new(), InMemoryEventStore::new());
        let pending = audit
            .check_dead_letters(&bus, &[letter(DeadLetterStatus::Pending)])
            .unwrap_err();
        assert_eq!(pending.invariant, invariant::DEAD_LETTERS_DRAINED);
        assert!(pending.entities.contains(&"order-o1".to_owned()));

        let retried = letter(DeadLetterStatus::Retried {
            at: Timestamp::SIMULATION_EPOCH,
        });
        let unpublished = audit
            .check_dead_letters(&bus, std::slice::from_ref(&retried))
            .unwrap_err();
        assert_eq!(unpublished.invariant, invariant::REDELIVERED_HANDLED);

        let mut copy = retried.letter.message();
        copy.headers.insert(REDELIVERED_FROM_HEADER, "1");
        bus.publish_now(std::slice::from_ref(&copy));
        // The marker the consumer wrote when it parked the original does not count.
        fold_marker(
            &mut audit,
            &store,
            inbox::marker(groups::PAYMENTS, EventId(7)),
        );
        let unhandled = audit
            .check_dead_letters(&bus, std::slice::from_ref(&retried))
            .unwrap_err();
        assert_eq!(unhandled.invariant, invariant::REDELIVERED_HANDLED);

        let copy_id = inbox::message_id_in(&copy.headers).unwrap();
        fold_marker(&mut audit, &store, inbox::marker(groups::PAYMENTS, copy_id));
        audit
            .check_dead_letters(&bus, std::slice::from_ref(&retried))
            .unwrap();
        let discarded = letter(DeadLetterStatus::Discarded {
            at: Timestamp::SIMULATION_EPOCH,
        });
        audit.check_dead_letters(&bus, &[discarded]).unwrap();
    }
}
