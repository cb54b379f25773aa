//! The checkout's services, each a consumer of its command topic, plus the saga service
//! (outbox relay + saga worker) and the shipping tracker.
//!
//! Every handler follows the same shape: decode the command, decide on the aggregate
//! (through the [`AggregateCache`]), and append the events *with the inbox marker* in one
//! batch — so a redelivered command is recognised and has no second effect. Calls to the
//! outside world (payment provider, carrier) happen before the append and are made
//! idempotent by key, because no batch can include them.
//!
//! Those calls go through the instance's [`Resilience`](reprise_core::Resilience)
//! ([`Platform::resilience`]): retried under the dependency's policy, refused at once
//! while its breaker is open ([`super::resilience`] has the numbers and why). A command
//! that still cannot be handled is parked in the dead-letter queue — the command message
//! as it arrived — and recorded handled, so it does not block its partition; the saga's
//! deadline covers the step meanwhile, and an operator may send the letter back later
//! (the handlers are idempotent by key, and the provider refuses a charge whose key was
//! voided by a refund).
//!
//! `start_*` functions spawn a service's long-running tasks on the environment's runtime;
//! a node calls them from its boot function, so after a crash they start afresh with
//! empty volatile state and resume from durable state (store, committed offsets).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use reprise_core::resilience::dead_letter::REDELIVERED_FROM_HEADER;
use reprise_core::resilience::{DeadLetterQuery, redeliver};
use reprise_core::{
    Aggregate, AppendBatch, BoxFuture, CallError, Classify, DeadLetterQueue, Delivery, EventId,
    ExpectedVersion, Lease, Metadata, NewEvent, OutgoingMessage, StoreError,
};

use super::gateway::{
    Carrier, CarrierStatus, ChargeOutcome, ChargeRequest, ExternalError, PaymentGateway,
    RefundOutcome,
};
use super::inventory::{Inventory, InventoryCommand, InventoryEvent};
use super::order::{Order, OrderCommand, OrderEvent};
use super::payment::{Payment, PaymentCommand, PaymentEvent, PaymentStatus};
use super::resilience::{CARRIER, PAYMENT_PROVIDER};
use super::saga::{CheckoutCommand, CheckoutInput, CheckoutSaga, topics};
use super::shipping::{Shipment, ShipmentStatus, ShippingCommand, ShippingEvent};
use crate::bugs::{Bugs, PlantedBug};
use crate::planted::{self, Aggregates};
use reprise_host::SagaHost;
use reprise_host::commands::{self, BusDispatcher};
use reprise_host::consume::{self, ConsumerOptions, MessageHandler};
use reprise_host::relay::{self, RelayOptions, RelayedEvent, Route};
use reprise_host::{CommandHandler, Handling};
use reprise_host::{Platform, inbox};

/// Consumer groups (and inbox names) of the checkout.
pub mod groups {
    pub const ORDERS: &str = "orders-service";
    pub const INVENTORY: &str = "inventory-service";
    pub const PAYMENTS: &str = "payment-service";
    pub const SHIPPING: &str = "shipping-service";
    pub const SAGA: &str = "checkout-saga";
    /// Every (group, topic) pair, for the at-least-once checker.
    pub const ALL: [(&str, &str); 5] = [
        (ORDERS, super::topics::ORDERS),
        (INVENTORY, super::topics::INVENTORY),
        (PAYMENTS, super::topics::PAYMENTS),
        (SHIPPING, super::topics::SHIPPING),
        (SAGA, super::topics::EVENTS),
    ];
}

/// Pause between the attempts of [`PlantedBug::RetryStorm`]'s hand-rolled retry loop.
const STORM_PAUSE: Duration = Duration::from_millis(20);
/// How often the shipping tracker asks the carrier about open shipments.
const TRACK_EVERY: Duration = Duration::from_millis(300);
/// How often the (planted-bug) stock projection catches up.
const PROJECTION_POLL: Duration = Duration::from_millis(50);

fn consumer_options(group: &str, topic: &'static str) -> ConsumerOptions {
    ConsumerOptions::new(group, &[topic])
}

fn spawn_consumer(
    env: &Platform,
    name: &'static str,
    options: ConsumerOptions,
    handler: Arc<dyn MessageHandler>,
    bugs: Bugs,
) {
    let consumer = planted::consumer_platform(env, bugs);
    env.runtime
        .spawn(name, Box::pin(consume::run(consumer, options, handler)));
}

/// Decodes a command message; an undecodable one is recorded as handled (a producer bug:
/// retrying cannot help) so it does not block its partition.
async fn decode_command(
    env: &Platform,
    group: &Arc<str>,
    delivery: &Delivery,
) -> Option<(CheckoutCommand, EventId)> {
    let message = inbox::message_id(delivery)?;
    match commands::decode::<CheckoutCommand>(delivery) {
        Ok(command) => Some((command, message)),
        Err(error) => {
            env.note(format_args!(
                "{group}: undecodable message {}: {error}",
                delivery.coordinates()
            ));
            inbox::record_alone(env, group, message).await;
            None
        }
    }
}

/// Calls `dependency` under the instance's resilience policy (retries, breaker).
async fn call_external<T>(
    env: &Platform,
    dependency: &str,
    operation: &'static str,
    call: impl Fn() -> BoxFuture<'static, Result<T, ExternalError>>,
) -> Result<T, CallError<ExternalError>> {
    env.resilience
        .call(&*env.runtime, dependency, operation, call)
        .await
}

/// PLANTED BUG ([`PlantedBug::RetryStorm`]): "the provider will be back in a moment" —
/// retries until it answers, with a short fixed pause, no attempt limit and no breaker.
/// During an outage every stuck handler hammers the provider several times a second.
async fn call_until_answered<T>(
    env: &Platform,
    call: impl Fn() -> BoxFuture<'static, Result<T, ExternalError>>,
) -> Result<T, CallError<ExternalError>> {
    loop {
        if let Ok(value) = call().await {
            return Ok(value);
        }
        env.sleep(STORM_PAUSE).await;
    }
}

/// Parks a command that could not be handled: the message as it arrived goes to the
/// dead-letter queue (if the instance has one), then it is recorded handled so it does
/// not block its partition.
async fn park<E: Classify + fmt::Display>(
    env: &Platform,
    group: &Arc<str>,
    delivery: &Delivery,
    message: EventId,
    error: &mut CallError<E>,
) {
    let command = OutgoingMessage {
        topic: Arc::clone(&delivery.topic),
        key: Arc::clone(&delivery.key),
        payload: delivery.payload.clone(),
        headers: delivery.headers.clone(),
    };
    env.resilience
        .dead_letter(&*env.runtime, &command, Some(delivery.coordinates()), error)
        .await;
    env.note(format_args!(
        "{}: {} parked as dead letter {}: {error}",
        delivery.key,
        delivery.coordinates(),
        error
            .dead_lettered
            .as_ref()
            .map_or_else(|| "(no queue)".to_owned(), ToString::to_string),
    ));
    inbox::record_alone(env, group, message).await;
}

// ---------------------------------------------------------------------------------------
// Orders
// ---------------------------------------------------------------------------------------

struct OrdersHandler {
    env: Platform,
    group: Arc<str>,
    orders: Aggregates<Order>,
}

impl MessageHandler for OrdersHandler {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some((command, message)) = decode_command(&self.env, &self.group, delivery).await
            else {
                return;
            };
            let handling = Some(Handling {
                consumer: &self.group,
                message,
            });
            let (order, order_command) = match command {
                CheckoutCommand::CancelOrder { order, reason } => {
                    (order, OrderCommand::Cancel { reason })
                }
                CheckoutCommand::CompleteOrder { order } => (order, OrderCommand::Complete),
                other => {
                    self.env.note(format_args!(
                        "{}: {} is not for this service",
                        self.group,
                        commands::CommandRoute::name(&other)
                    ));
                    inbox::record_alone(&self.env, &self.group, message).await;
                    return;
                }
            };
            let handled = self
                .orders
                .execute_until_done(&order, &order_command, handling)
                .await;
            if let Some(rejection) = handled.rejection {
                self.env.note(format_args!(
                    "order-{order}: {order_command:?} refused: {rejection}"
                ));
            }
        })
    }
}

/// Starts the orders service (cancels and completes orders for the saga).
pub fn start_orders_service(env: &Platform, bugs: Bugs) {
    let handler = Arc::new(OrdersHandler {
        env: env.clone(),
        group: groups::ORDERS.into(),
        orders: Aggregates::new(env, bugs),
    });
    spawn_consumer(
        env,
        "orders-service",
        consumer_options(groups::ORDERS, topics::ORDERS),
        handler,
        bugs,
    );
}

// ---------------------------------------------------------------------------------------
// Inventory
// ---------------------------------------------------------------------------------------

/// Stock levels read from the global log by polling: an eventually consistent read model.
/// Only the planted bug [`PlantedBug::DecideFromProjection`] uses it for decisions.
#[derive(Default)]
struct StockProjection {
    next_position: u64,
    available: BTreeMap<String, i64>,
    decided: BTreeSet<String>,
}

impl fmt::Debug for StockProjection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StockProjection")
            .field("next_position", &self.next_position)
            .finish_non_exhaustive()
    }
}

async fn run_stock_projection(env: Platform, projection: Arc<Mutex<StockProjection>>) {
    loop {
        let from = projection.lock().next_position.max(1);
        if let Ok(events) = env.store.read_all(from, 512).await {
            let mut p = projection.lock();
            for event in &events {
                p.next_position = event.position + 1;
                if event.stream.category() != Inventory::CATEGORY {
                    continue;
                }
                let sku = event
                    .stream
                    .as_str()
                    .split_once('-')
                    .map_or("", |(_, s)| s)
                    .to_owned();
                let Ok(decoded) = event.payload.decode::<InventoryEvent>() else {
                    continue;
                };
                let delta = match &decoded {
                    InventoryEvent::Initialized { quantity }
                    | InventoryEvent::Released { quantity, .. } => i64::from(*quantity),
                    InventoryEvent::Reserved { quantity, .. } => -i64::from(*quantity),
                    InventoryEvent::ReservationRefused { .. }
                    | InventoryEvent::ReservationVoided { .. } => 0,
                };
                *p.available.entry(sku).or_default() += delta;
                if let Some(order) = decoded.order() {
                    p.decided.insert(order.to_owned());
                }
            }
            if !events.is_empty() {
                continue;
            }
        }
        env.sleep(PROJECTION_POLL).await;
    }
}

struct InventoryHandler {
    env: Platform,
    group: Arc<str>,
    stock: Aggregates<Inventory>,
    projection: Option<Arc<Mutex<StockProjection>>>,
}

impl InventoryHandler {
    /// PLANTED BUG: decides a reservation on the lagging projection and appends it with
    /// no expected version, so two reservations can both take the last units.
    async fn reserve_from_projection(
        &self,
        projection: &Mutex<StockProjection>,
        sku: &str,
        order: &str,
        quantity: u32,
        message: EventId,
    ) {
        let (available, decided) = {
            let p = projection.lock();
            (
                p.available.get(sku).copied().unwrap_or(0),
                p.decided.contains(order),
            )
        };
        let mut batch = AppendBatch::default();
        if !decided {
            let available = u32::try_from(available.max(0)).unwrap_or(u32::MAX);
            let event = Inventory::decide_reserve(order, quantity, available);
            self.env.note(format_args!(
                "inventory-{sku}: {} for {order} decided on the projection (available {available})",
                reprise_core::Event::event_type(&event)
            ));
            let metadata = Metadata {
                causation_id: Some(message.0),
                ..Metadata::default()
            };
            let Ok(encoded) =
                NewEvent::encode(EventId(self.env.runtime.next_id()), &event, metadata)
            else {
                return;
            };
            batch = batch.and(
                Inventory::stream_id(sku),
                ExpectedVersion::Any,
                vec![encoded],
            );
        }
        batch = batch.and(
            inbox::stream(&self.group),
            ExpectedVersion::Any,
            vec![inbox::marker(&self.group, message)],
        );
        let mut backoff = self.env.backoff();
        while let Err(error) = self.env.store.append(batch.clone()).await {
            if inbox::is_already_handled(&error) {
                return;
            }
            self.env.pause(&mut backoff).await;
        }
    }
}

impl MessageHandler for InventoryHandler {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some((command, message)) = decode_command(&self.env, &self.group, delivery).await
            else {
                return;
            };
            let handling = Some(Handling {
                consumer: &self.group,
                message,
            });
            let (sku, inventory_command) = match command {
                CheckoutCommand::ReserveInventory {
                    order,
                    sku,
                    quantity,
                } => {
                    if let Some(projection) = &self.projection {
                        self.reserve_from_projection(projection, &sku, &order, quantity, message)
                            .await;
                        return;
                    }
                    (sku, InventoryCommand::Reserve { order, quantity })
                }
                CheckoutCommand::ReleaseInventory { order, sku } => {
                    (sku, InventoryCommand::Release { order })
                }
                _ => {
                    inbox::record_alone(&self.env, &self.group, message).await;
                    return;
                }
            };
            self.stock
                .execute_until_done(&sku, &inventory_command, handling)
                .await;
        })
    }
}

/// Starts the inventory service (reserves and releases stock for the saga).
pub fn start_inventory_service(env: &Platform, bugs: Bugs) {
    let projection = bugs.contains(PlantedBug::DecideFromProjection).then(|| {
        let projection = Arc::new(Mutex::new(StockProjection::default()));
        env.runtime.spawn(
            "stock-projection",
            Box::pin(run_stock_projection(env.clone(), Arc::clone(&projection))),
        );
        projection
    });
    let handler = Arc::new(InventoryHandler {
        env: env.clone(),
        group: groups::INVENTORY.into(),
        stock: Aggregates::new(env, bugs),
        projection,
    });
    spawn_consumer(
        env,
        "inventory-service",
        consumer_options(groups::INVENTORY, topics::INVENTORY),
        handler,
        bugs,
    );
}

/// Sets a SKU's initial stock (idempotent), retrying until the store takes it.
pub async fn initialize_stock(env: &Platform, sku: &str, quantity: u32) {
    let cache = CommandHandler::<Inventory>::new(env);
    cache
        .execute_until_done(sku, &InventoryCommand::Initialize { quantity }, None)
        .await;
}

// ---------------------------------------------------------------------------------------
// Payments
// ---------------------------------------------------------------------------------------

struct PaymentHandler {
    env: Platform,
    group: Arc<str>,
    payments: Aggregates<Payment>,
    gateway: Arc<dyn PaymentGateway>,
    not_idempotent: bool,
    retry_storm: bool,
    void_unrecorded: bool,
}

impl PaymentHandler {
    async fn status(&self, order: &str) -> PaymentStatus {
        let mut backoff = self.env.backoff();
        loop {
            match self.payments.load(order).await {
                Ok((payment, _)) => return payment.status,
                Err(_) => self.env.pause(&mut backoff).await,
            }
        }
    }

    /// Calls the provider: through the resilience policy, or (planted bug) until it answers.
    async fn call_provider<T>(
        &self,
        operation: &'static str,
        call: impl Fn() -> BoxFuture<'static, Result<T, ExternalError>>,
    ) -> Result<T, CallError<ExternalError>> {
        if self.retry_storm {
            call_until_answered(&self.env, call).await
        } else {
            call_external(&self.env, PAYMENT_PROVIDER, operation, call).await
        }
    }

    async fn charge(
        &self,
        delivery: &Delivery,
        order: String,
        amount: u64,
        card: u32,
        message: EventId,
    ) {
        let handling = Some(Handling {
            consumer: &self.group,
            message,
        });
        let idempotency_key = if self.not_idempotent {
            // PLANTED BUG: a fresh key per delivery, and no look at what was already recorded.
            format!("{order}/{:x}", self.env.runtime.next_u64())
        } else {
            if self.status(&order).await != PaymentStatus::Pending {
                inbox::record_alone(&self.env, &self.group, message).await;
                return;
            }
            order.clone()
        };
        let request = ChargeRequest {
            idempotency_key,
            order: order.clone(),
            amount,
            card,
        };
        let gateway = Arc::clone(&self.gateway);
        let outcome = self
            .call_provider("charge", || gateway.charge(request.clone()))
            .await;
        self.env.note(format_args!(
            "payment-{order}: charge {amount} -> {outcome:?}"
        ));
        let command = match outcome {
            Ok(ChargeOutcome::Captured { charge }) => {
                PaymentCommand::RecordCapture { amount, charge }
            }
            Ok(ChargeOutcome::Declined { reason }) => PaymentCommand::RecordDecline { reason },
            // Refused: voided meanwhile, the void settles the payment; nothing to record.
            Ok(ChargeOutcome::Refused) => {
                inbox::record_alone(&self.env, &self.group, message).await;
                return;
            }
            // No answer: the saga's deadline and the void it triggers settle the payment;
            // the command waits in the dead-letter queue for an operator.
            Err(mut error) => {
                park(&self.env, &self.group, delivery, message, &mut error).await;
                return;
            }
        };
        self.payments
            .execute_until_done(&order, &command, handling)
            .await;
    }

    async fn refund(&self, delivery: &Delivery, order: String, message: EventId) {
        let handling = Some(Handling {
            consumer: &self.group,
            message,
        });
        let status = self.status(&order).await;
        if status.is_closed() {
            inbox::record_alone(&self.env, &self.group, message).await;
            return;
        }
        if self.void_unrecorded
            && status == PaymentStatus::Pending
            && delivery.headers.get(REDELIVERED_FROM_HEADER).is_some()
        {
            // PLANTED BUG (VoidUnrecordedCharge): an operator sends a parked refund back
            // after the incident, and "no capture on our books means nothing to give back",
            // so the void is recorded here to drain the queue without bothering the
            // provider again. But a charge whose every answer was lost is captured at the
            // provider and on nobody's books; only the provider's own void settles it.
            self.payments
                .execute_until_done(&order, &PaymentCommand::RecordVoid, handling)
                .await;
            return;
        }
        let gateway = Arc::clone(&self.gateway);
        let outcome = self
            .call_provider("refund", || gateway.refund(order.clone()))
            .await;
        self.env
            .note(format_args!("payment-{order}: refund -> {outcome:?}"));
        let command = match outcome {
            Ok(RefundOutcome::Refunded { amount }) => PaymentCommand::RecordRefund { amount },
            Ok(RefundOutcome::Voided) => PaymentCommand::RecordVoid,
            // No answer: the saga re-issues the refund on its compensation deadline.
            Err(mut error) => {
                park(&self.env, &self.group, delivery, message, &mut error).await;
                return;
            }
        };
        self.payments
            .execute_until_done(&order, &command, handling)
            .await;
    }
}

impl MessageHandler for PaymentHandler {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some((command, message)) = decode_command(&self.env, &self.group, delivery).await
            else {
                return;
            };
            match command {
                CheckoutCommand::ChargePayment {
                    order,
                    amount,
                    card,
                } => self.charge(delivery, order, amount, card, message).await,
                CheckoutCommand::RefundPayment { order } => {
                    self.refund(delivery, order, message).await;
                }
                _ => inbox::record_alone(&self.env, &self.group, message).await,
            }
        })
    }
}

/// Starts the payment service (charges and refunds through the provider).
pub fn start_payment_service(env: &Platform, gateway: Arc<dyn PaymentGateway>, bugs: Bugs) {
    let handler = Arc::new(PaymentHandler {
        env: env.clone(),
        group: groups::PAYMENTS.into(),
        payments: Aggregates::new(env, bugs),
        gateway,
        not_idempotent: bugs.contains(PlantedBug::PaymentNotIdempotent),
        retry_storm: bugs.contains(PlantedBug::RetryStorm),
        void_unrecorded: bugs.contains(PlantedBug::VoidUnrecordedCharge),
    });
    spawn_consumer(
        env,
        "payment-service",
        consumer_options(groups::PAYMENTS, topics::PAYMENTS),
        handler,
        bugs,
    );
}

// ---------------------------------------------------------------------------------------
// Shipping
// ---------------------------------------------------------------------------------------

type OpenShipments = Arc<Mutex<BTreeSet<String>>>;

struct ShippingHandler {
    env: Platform,
    group: Arc<str>,
    shipments: Arc<Aggregates<Shipment>>,
    carrier: Arc<dyn Carrier>,
    open: OpenShipments,
}

impl ShippingHandler {
    async fn create(&self, delivery: &Delivery, order: String, message: EventId) {
        let handling = Some(Handling {
            consumer: &self.group,
            message,
        });
        if let Ok((shipment, _)) = self.shipments.load(&order).await
            && !matches!(shipment.status, ShipmentStatus::NotCreated)
            && !shipment.status.is_open()
        {
            // Delivered, failed or cancelled (a cancellation leaves a tombstone): a late
            // or redelivered create has nothing to ask the carrier.
            inbox::record_alone(&self.env, &self.group, message).await;
            return;
        }
        let carrier = Arc::clone(&self.carrier);
        let registered = call_external(&self.env, CARRIER, "register", || {
            carrier.register(order.clone())
        })
        .await;
        let tracking = match registered {
            Ok(tracking) => tracking,
            Err(mut error) => {
                // The saga's shipment deadline cancels; a later retry of ours would race
                // it, so the command waits for an operator.
                self.env.note(format_args!(
                    "shipping-{order}: carrier refused registration: {error}"
                ));
                park(&self.env, &self.group, delivery, message, &mut error).await;
                return;
            }
        };
        let handled = self
            .shipments
            .execute_until_done(&order, &ShippingCommand::Create { tracking }, handling)
            .await;
        if handled.state.status.is_open() {
            self.open.lock().insert(order);
        }
    }
}

impl MessageHandler for ShippingHandler {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some((command, message)) = decode_command(&self.env, &self.group, delivery).await
            else {
                return;
            };
            match command {
                CheckoutCommand::CreateShipment { order } => {
                    self.create(delivery, order, message).await;
                }
                CheckoutCommand::CancelShipment { order } => {
                    let handling = Some(Handling {
                        consumer: &self.group,
                        message,
                    });
                    let handled = self
                        .shipments
                        .execute_until_done(&order, &ShippingCommand::Cancel, handling)
                        .await;
                    if !handled.state.status.is_open() {
                        self.open.lock().remove(&order);
                    }
                }
                _ => inbox::record_alone(&self.env, &self.group, message).await,
            }
        })
    }
}

/// The shipping tracker: asks the carrier about every open shipment and records what it
/// reports. On boot it finds the open shipments in the store.
async fn run_tracker(
    env: Platform,
    shipments: Arc<Aggregates<Shipment>>,
    carrier: Arc<dyn Carrier>,
    open: OpenShipments,
    blind_writes: bool,
) {
    let mut next = 1;
    loop {
        let Ok(events) = env.store.read_all(next, 1024).await else {
            env.sleep(TRACK_EVERY).await;
            continue;
        };
        let Some(last) = events.last() else { break };
        next = last.position + 1;
        for event in events
            .iter()
            .filter(|e| e.stream.category() == Shipment::CATEGORY)
        {
            if let Ok(ShippingEvent::Created { .. }) = event.payload.decode::<ShippingEvent>()
                && let Some((_, order)) = event.stream.as_str().split_once('-')
            {
                open.lock().insert(order.to_owned());
            }
        }
    }
    loop {
        env.sleep(TRACK_EVERY).await;
        let orders: Vec<String> = open.lock().iter().cloned().collect();
        for order in orders {
            let Ok((shipment, version)) = shipments.load(&order).await else {
                continue;
            };
            if !shipment.status.is_open() {
                open.lock().remove(&order);
                continue;
            }
            let Ok(status) = carrier.track(order.clone()).await else {
                continue;
            };
            let mut commands = Vec::new();
            let seen_updates = match shipment.status {
                ShipmentStatus::InTransit { updates } => Some(updates),
                _ => None,
            };
            match status {
                CarrierStatus::Registered => {}
                CarrierStatus::InTransit { updates } => {
                    if seen_updates.is_none() {
                        commands.push(ShippingCommand::RecordInTransit);
                    }
                    for update in seen_updates.unwrap_or(0) + 1..=updates {
                        commands.push(ShippingCommand::RecordTracking { update });
                    }
                }
                CarrierStatus::Delivered => commands.push(ShippingCommand::RecordDelivered),
                CarrierStatus::Lost => commands.push(ShippingCommand::RecordFailed {
                    reason: "lost by carrier".into(),
                }),
            }
            if blind_writes {
                if !record_retrying_blindly(&env, &order, shipment, version, &commands).await {
                    open.lock().remove(&order);
                }
                continue;
            }
            for command in commands {
                match shipments.execute(&order, &command, None).await {
                    Ok(handled) if !handled.state.status.is_open() => {
                        open.lock().remove(&order);
                    }
                    Ok(_) => {}
                    // Next round.
                    Err(_) => break,
                }
            }
        }
    }
}

/// PLANTED BUG ([`PlantedBug::TrackerBlindWrite`]): records what the carrier said as
/// decided on `loaded` (at `version`), in one batch with the right expected version — but
/// when that append times out, retries it expecting *any* version, reasoning that a
/// timed-out append may have landed and the old version would then refuse our own write.
/// (Appends are idempotent by event id: retrying with the same expectation is what makes
/// a timeout safe.) A cancellation that lands between the lost append and its retry is
/// overwritten: the shipment ends up cancelled *and* delivered. Returns whether the
/// shipment is still open as far as this decision knows.
async fn record_retrying_blindly(
    env: &Platform,
    order: &str,
    loaded: Shipment,
    version: u64,
    commands: &[ShippingCommand],
) -> bool {
    let mut state = loaded;
    let mut events = Vec::new();
    for command in commands {
        let decided = match state.decide(command) {
            Ok(decided) => decided,
            Err(never) => match never {},
        };
        for event in &decided {
            state.apply(event);
        }
        events.extend(decided);
    }
    if events.is_empty() {
        return state.status.is_open();
    }
    let mut encoded = Vec::with_capacity(events.len());
    for event in &events {
        let Ok(new) = NewEvent::encode(EventId(env.runtime.next_id()), event, Metadata::default())
        else {
            return true;
        };
        encoded.push(new);
    }
    let stream = Shipment::stream_id(order);
    let mut expected = if version == 0 {
        ExpectedVersion::NoStream
    } else {
        ExpectedVersion::Exact(version)
    };
    let mut backoff = env.backoff();
    loop {
        let batch = AppendBatch::default().and(stream.clone(), expected, encoded.clone());
        match env.store.append(batch).await {
            Ok(_) => return state.status.is_open(),
            Err(StoreError::Timeout) => expected = ExpectedVersion::Any,
            // A conflict or a refusal: decide again next round, on fresh state.
            Err(_) => return true,
        }
        env.pause(&mut backoff).await;
    }
}

/// Starts the shipping service (creates and cancels shipments, tracks them at the carrier).
pub fn start_shipping_service(env: &Platform, carrier: Arc<dyn Carrier>, bugs: Bugs) {
    let shipments = Arc::new(Aggregates::new(env, bugs));
    let open: OpenShipments = Arc::default();
    env.runtime.spawn(
        "shipping-tracker",
        Box::pin(run_tracker(
            env.clone(),
            Arc::clone(&shipments),
            Arc::clone(&carrier),
            Arc::clone(&open),
            bugs.contains(PlantedBug::TrackerBlindWrite),
        )),
    );
    let handler = Arc::new(ShippingHandler {
        env: env.clone(),
        group: groups::SHIPPING.into(),
        shipments,
        carrier,
        open,
    });
    spawn_consumer(
        env,
        "shipping-service",
        consumer_options(groups::SHIPPING, topics::SHIPPING),
        handler,
        bugs,
    );
}

// ---------------------------------------------------------------------------------------
// Operator
// ---------------------------------------------------------------------------------------

/// One pass of the operator's chore after an incident: sends every pending dead letter
/// back to its topic ([`redeliver`]: publish first, then mark retried). The handlers
/// meet the copy as a new message and decide on current state — a charge whose payment
/// was voided meanwhile is refused by the provider, a create for a cancelled shipment is
/// ignored. Returns how many letters were sent back; a letter that could not be stays
/// pending for the next pass.
pub async fn redeliver_dead_letters(env: &Platform, queue: &dyn DeadLetterQueue) -> usize {
    let query = DeadLetterQuery {
        limit: usize::MAX,
        ..DeadLetterQuery::default()
    };
    let pending = match queue.list(query).await {
        Ok(pending) => pending,
        Err(error) => {
            env.note(format_args!("operator: cannot list dead letters: {error}"));
            return 0;
        }
    };
    let mut sent = 0;
    for letter in pending {
        match redeliver(queue, &*env.bus, &letter.id, env.runtime.now()).await {
            Ok(()) => {
                sent += 1;
                reprise_core::sometimes!(super::situations::DEAD_LETTER_REDELIVERED.name);
                env.note(format_args!(
                    "operator: dead letter {} ({} on {}, {} attempt(s): {}) redelivered",
                    letter.id,
                    letter.letter.key,
                    letter.letter.topic,
                    letter.letter.attempts,
                    letter.letter.error
                ));
            }
            Err(error) => env.note(format_args!(
                "operator: dead letter {} not redelivered: {error}",
                letter.id
            )),
        }
    }
    sent
}

// ---------------------------------------------------------------------------------------
// Saga service
// ---------------------------------------------------------------------------------------

/// The saga input a relayed domain event means, and the order it concerns.
#[must_use]
pub fn saga_input(
    event: &RelayedEvent,
    compensate_on_timeout: bool,
) -> Option<(String, CheckoutInput)> {
    let entity = event.entity().to_owned();
    match event.stream.category() {
        Order::CATEGORY => match event.payload.decode::<OrderEvent>().ok()? {
            OrderEvent::Placed(line) => Some((
                entity.clone(),
                CheckoutInput::Start {
                    order: entity,
                    line,
                    compensate_on_timeout,
                },
            )),
            OrderEvent::Cancelled { .. } => Some((entity, CheckoutInput::OrderCancelled)),
            OrderEvent::Completed => Some((entity, CheckoutInput::OrderCompleted)),
        },
        Inventory::CATEGORY => {
            let decoded = event.payload.decode::<InventoryEvent>().ok()?;
            let order = decoded.order()?.to_owned();
            let input = match decoded {
                InventoryEvent::Reserved { .. } => CheckoutInput::InventoryReserved,
                InventoryEvent::ReservationRefused { .. } => CheckoutInput::ReservationRefused,
                InventoryEvent::Released { .. } | InventoryEvent::ReservationVoided { .. } => {
                    CheckoutInput::InventoryReleased
                }
                InventoryEvent::Initialized { .. } => return None,
            };
            Some((order, input))
        }
        Payment::CATEGORY => {
            let input = match event.payload.decode::<PaymentEvent>().ok()? {
                PaymentEvent::Captured { .. } => CheckoutInput::PaymentCaptured,
                PaymentEvent::Declined { .. } => CheckoutInput::PaymentDeclined,
                PaymentEvent::Refunded { .. } | PaymentEvent::Voided => {
                    CheckoutInput::PaymentRefunded
                }
            };
            Some((entity, input))
        }
        Shipment::CATEGORY => {
            let input = match event.payload.decode::<ShippingEvent>().ok()? {
                ShippingEvent::Created { .. } => CheckoutInput::ShipmentCreated,
                ShippingEvent::Delivered => CheckoutInput::ShipmentDelivered,
                ShippingEvent::Failed { .. } => CheckoutInput::ShipmentFailed,
                ShippingEvent::InTransit | ShippingEvent::TrackingUpdated { .. } => return None,
            };
            Some((entity, input))
        }
        _ => None,
    }
}

struct SagaWorker {
    env: Platform,
    group: Arc<str>,
    host: Arc<SagaHost<CheckoutSaga>>,
    compensate_on_timeout: bool,
}

impl MessageHandler for SagaWorker {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(event) = RelayedEvent::from_delivery(delivery) else {
                self.env.note(format_args!(
                    "{}: not a relayed event at {}",
                    self.group,
                    delivery.coordinates()
                ));
                return;
            };
            if let Some((order, input)) = saga_input(&event, self.compensate_on_timeout) {
                self.host.deliver(&order, input).await;
            }
            inbox::record_alone(&self.env, &self.group, event.event_id).await;
        })
    }
}

/// The outbox relay options of the checkout.
#[must_use]
pub fn relay_options() -> RelayOptions {
    let routes = [
        Order::CATEGORY,
        Inventory::CATEGORY,
        Payment::CATEGORY,
        Shipment::CATEGORY,
    ]
    .into_iter()
    .map(|category| Route::new(category, topics::EVENTS))
    .collect();
    RelayOptions::new("checkout", routes)
}

/// How often the saga host restarts failed saga instances.
const SUPERVISE_EVERY: Duration = Duration::from_millis(500);

/// Starts the saga service: the outbox relay, the recovery of every saga instance, and the
/// consumer feeding domain events to the sagas.
pub fn start_saga_service(env: &Platform, relay_lease: Arc<dyn Lease>, bugs: Bugs) {
    env.runtime.spawn(
        "outbox-relay",
        Box::pin(relay::run(
            env.clone(),
            Arc::new(relay_options()),
            relay_lease,
        )),
    );
    let dispatcher = Arc::new(BusDispatcher::<CheckoutCommand>::new(env.clone(), 3));
    let host = Arc::new(SagaHost::<CheckoutSaga>::new(env.clone(), dispatcher));
    let worker = Arc::new(SagaWorker {
        env: env.clone(),
        group: groups::SAGA.into(),
        host: Arc::clone(&host),
        compensate_on_timeout: !bugs.contains(PlantedBug::NoCompensationOnTimeout),
    });
    let options = consumer_options(groups::SAGA, topics::EVENTS);
    reprise_host::saga_host::spawn_saga_service(
        &planted::consumer_platform(env, bugs),
        "checkout-saga",
        host,
        SUPERVISE_EVERY,
        options,
        worker,
    );
}
