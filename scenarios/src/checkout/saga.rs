//! The checkout saga: place order → reserve inventory → charge payment → create shipment
//! → delivered → complete the order, with a compensation for every way it can go wrong.
//!
//! Principles that make it safe under duplicates, reordering, crashes and silence:
//! - **The saga acts on facts, never on guesses.** A timeout does not conclude "the
//!   payment failed"; it *asks* for the payment to be voided, and the payment aggregate
//!   (informed by the provider, who refuses a late charge once voided) reports what really
//!   happened. Likewise a shipment is cancelled through the shipping aggregate, which
//!   decides between a delivery and a cancellation that race.
//! - **Every step has a deadline**, durable in the saga's stream, so silence always leads
//!   somewhere: to compensation while the happy path is still open, to a retry of the
//!   command once the outcome is settled (completing, compensating).
//! - **Compensation waits for confirmation.** The saga is `Cancelled` only when refund,
//!   release and cancellation are each confirmed; until then the deadline re-issues what is
//!   missing. Commands are idempotent at their targets, so re-issuing is always safe.
//! - **Duplicate and late inputs are recognised by state** and produce an empty reaction.

use std::time::Duration;

use reprise_core::{Event, Reaction, Saga, sometimes};
use serde::{Deserialize, Serialize};

use super::order::OrderLine;
use super::situations;
use reprise_host::commands::CommandRoute;

/// Topics of the checkout's services.
pub mod topics {
    pub const ORDERS: &str = "checkout.orders";
    pub const INVENTORY: &str = "checkout.inventory";
    pub const PAYMENTS: &str = "checkout.payments";
    pub const SHIPPING: &str = "checkout.shipping";
    /// Domain events, published by the outbox relay.
    pub const EVENTS: &str = "checkout.events";
}

/// How long each step may stay silent.
pub mod timeouts {
    use std::time::Duration;

    pub const RESERVE: Duration = Duration::from_secs(2);
    pub const PAYMENT: Duration = Duration::from_secs(3);
    pub const SHIPMENT: Duration = Duration::from_secs(2);
    /// From shipment creation to delivery; past it the saga asks to cancel the shipment.
    pub const DELIVERY: Duration = Duration::from_secs(10);
    /// Re-issue period for commands whose outcome is already decided (complete, compensate).
    pub const RETRY: Duration = Duration::from_secs(2);
}

/// The named deadlines of a checkout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Deadline {
    Reserve,
    Payment,
    Shipment,
    Delivery,
    Complete,
    Compensate,
}

impl Deadline {
    #[must_use]
    pub fn id(self) -> &'static str {
        match self {
            Deadline::Reserve => "reserve",
            Deadline::Payment => "payment",
            Deadline::Shipment => "shipment",
            Deadline::Delivery => "delivery",
            Deadline::Complete => "complete",
            Deadline::Compensate => "compensate",
        }
    }
}

/// Everything the checkout saga reacts to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckoutInput {
    Start {
        order: String,
        line: OrderLine,
        compensate_on_timeout: bool,
    },
    InventoryReserved,
    ReservationRefused,
    InventoryReleased,
    PaymentCaptured,
    PaymentDeclined,
    /// Refunded or voided: the provider holds nothing for the order.
    PaymentRefunded,
    ShipmentCreated,
    ShipmentDelivered,
    ShipmentFailed,
    OrderCancelled,
    OrderCompleted,
    Timeout(Deadline),
}

/// Commands the checkout issues, each to the service that owns the entity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckoutCommand {
    ReserveInventory {
        order: String,
        sku: String,
        quantity: u32,
    },
    ReleaseInventory {
        order: String,
        sku: String,
    },
    ChargePayment {
        order: String,
        amount: u64,
        card: u32,
    },
    RefundPayment {
        order: String,
    },
    CreateShipment {
        order: String,
    },
    CancelShipment {
        order: String,
    },
    CancelOrder {
        order: String,
        reason: String,
    },
    CompleteOrder {
        order: String,
    },
}

impl CheckoutCommand {
    #[must_use]
    pub fn order(&self) -> &str {
        match self {
            CheckoutCommand::ReserveInventory { order, .. }
            | CheckoutCommand::ReleaseInventory { order, .. }
            | CheckoutCommand::ChargePayment { order, .. }
            | CheckoutCommand::RefundPayment { order }
            | CheckoutCommand::CreateShipment { order }
            | CheckoutCommand::CancelShipment { order }
            | CheckoutCommand::CancelOrder { order, .. }
            | CheckoutCommand::CompleteOrder { order } => order,
        }
    }
}

impl CommandRoute for CheckoutCommand {
    fn topic(&self) -> &'static str {
        match self {
            CheckoutCommand::ReserveInventory { .. } | CheckoutCommand::ReleaseInventory { .. } => {
                topics::INVENTORY
            }
            CheckoutCommand::ChargePayment { .. } | CheckoutCommand::RefundPayment { .. } => {
                topics::PAYMENTS
            }
            CheckoutCommand::CreateShipment { .. } | CheckoutCommand::CancelShipment { .. } => {
                topics::SHIPPING
            }
            CheckoutCommand::CancelOrder { .. } | CheckoutCommand::CompleteOrder { .. } => {
                topics::ORDERS
            }
        }
    }

    /// Keyed by order: the commands about one order stay in order on one partition.
    fn key(&self) -> String {
        format!("order-{}", self.order())
    }

    fn name(&self) -> &'static str {
        match self {
            CheckoutCommand::ReserveInventory { .. } => "ReserveInventory",
            CheckoutCommand::ReleaseInventory { .. } => "ReleaseInventory",
            CheckoutCommand::ChargePayment { .. } => "ChargePayment",
            CheckoutCommand::RefundPayment { .. } => "RefundPayment",
            CheckoutCommand::CreateShipment { .. } => "CreateShipment",
            CheckoutCommand::CancelShipment { .. } => "CancelShipment",
            CheckoutCommand::CancelOrder { .. } => "CancelOrder",
            CheckoutCommand::CompleteOrder { .. } => "CompleteOrder",
        }
    }
}

/// A part of the compensation that must be confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Undo {
    Refund,
    Release,
    Cancel,
}

/// The saga's own events: its durable state transitions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckoutEvent {
    Started {
        order: String,
        line: OrderLine,
        compensate_on_timeout: bool,
    },
    InventoryReserved,
    PaymentCaptured,
    ShipmentCreated,
    Delivered,
    Completed,
    CompensationStarted {
        reason: String,
        refund: bool,
        release: bool,
    },
    Undone(Undo),
    Cancelled,
}

impl Event for CheckoutEvent {
    fn event_type(&self) -> &'static str {
        match self {
            CheckoutEvent::Started { .. } => "CheckoutStarted",
            CheckoutEvent::InventoryReserved => "CheckoutInventoryReserved",
            CheckoutEvent::PaymentCaptured => "CheckoutPaymentCaptured",
            CheckoutEvent::ShipmentCreated => "CheckoutShipmentCreated",
            CheckoutEvent::Delivered => "CheckoutDelivered",
            CheckoutEvent::Completed => "CheckoutCompleted",
            CheckoutEvent::CompensationStarted { .. } => "CheckoutCompensationStarted",
            CheckoutEvent::Undone(_) => "CheckoutUndone",
            CheckoutEvent::Cancelled => "CheckoutCancelled",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Step {
    #[default]
    NotStarted,
    Reserving,
    Charging,
    CreatingShipment,
    AwaitingDelivery,
    Completing,
    Compensating,
    Completed,
    Cancelled,
}

/// What a compensation still waits for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub refund: bool,
    pub release: bool,
    pub cancel: bool,
}

impl Pending {
    fn is_done(self) -> bool {
        !(self.refund || self.release || self.cancel)
    }

    fn take(&mut self, undo: Undo) {
        match undo {
            Undo::Refund => self.refund = false,
            Undo::Release => self.release = false,
            Undo::Cancel => self.cancel = false,
        }
    }

    fn waits_for(self, undo: Undo) -> bool {
        match undo {
            Undo::Refund => self.refund,
            Undo::Release => self.release,
            Undo::Cancel => self.cancel,
        }
    }
}

/// One checkout. See the module docs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckoutSaga {
    pub order: String,
    pub line: Option<OrderLine>,
    pub step: Step,
    pub pending: Pending,
    pub reason: Option<String>,
    /// `false` plants [`PlantedBug::NoCompensationOnTimeout`](crate::bugs::PlantedBug::NoCompensationOnTimeout).
    pub compensate_on_timeout: bool,
}

impl CheckoutSaga {
    fn line(&self) -> &OrderLine {
        self.line
            .as_ref()
            .expect("every step after Start has the order line")
    }

    fn commands_for(&self, pending: Pending, reason: &str) -> Vec<CheckoutCommand> {
        let order = self.order.clone();
        let mut commands = Vec::new();
        if pending.refund {
            commands.push(CheckoutCommand::RefundPayment {
                order: order.clone(),
            });
        }
        if pending.release {
            commands.push(CheckoutCommand::ReleaseInventory {
                order: order.clone(),
                sku: self.line().sku.clone(),
            });
        }
        if pending.cancel {
            commands.push(CheckoutCommand::CancelOrder {
                order,
                reason: reason.to_owned(),
            });
        }
        commands
    }

    /// Starts compensating from the current step; `open` is the deadline of that step.
    fn compensate(
        &self,
        reason: &str,
        refund: bool,
        release: bool,
        open: Deadline,
    ) -> Reaction<Self> {
        let pending = Pending {
            refund,
            release,
            cancel: true,
        };
        let mut reaction = Reaction::none()
            .event(CheckoutEvent::CompensationStarted {
                reason: reason.to_owned(),
                refund,
                release,
            })
            .clear_deadline(open.id())
            .set_deadline(
                Deadline::Compensate.id(),
                timeouts::RETRY,
                CheckoutInput::Timeout(Deadline::Compensate),
            );
        reaction.commands = self.commands_for(pending, reason);
        reaction
    }

    fn undone(&self, undo: Undo) -> Reaction<Self> {
        if !self.pending.waits_for(undo) {
            return Reaction::none();
        }
        let mut after = self.pending;
        after.take(undo);
        let reaction = Reaction::none().event(CheckoutEvent::Undone(undo));
        sometimes!(situations::COMPENSATION_COMPLETED.name, after.is_done());
        if after.is_done() {
            reaction
                .event(CheckoutEvent::Cancelled)
                .clear_deadline(Deadline::Compensate.id())
        } else {
            reaction
        }
    }

    fn retry(deadline: Deadline, after: Duration, command: CheckoutCommand) -> Reaction<Self> {
        Reaction::none().command(command).set_deadline(
            deadline.id(),
            after,
            CheckoutInput::Timeout(deadline),
        )
    }
}

impl Saga for CheckoutSaga {
    const NAME: &'static str = "checkout";
    type Input = CheckoutInput;
    type Event = CheckoutEvent;
    type Command = CheckoutCommand;

    #[allow(
        clippy::too_many_lines,
        reason = "one match over (step, input) reads best as a single table"
    )]
    fn react(&self, input: &CheckoutInput) -> Reaction<Self> {
        use CheckoutInput as I;
        use Step as S;
        let order = || self.order.clone();
        sometimes!(
            situations::LATE_CAPTURE_WHILE_COMPENSATING.name,
            matches!((self.step, input), (S::Compensating, I::PaymentCaptured))
        );
        match (self.step, input) {
            (
                S::NotStarted,
                I::Start {
                    order,
                    line,
                    compensate_on_timeout,
                },
            ) => Reaction::none()
                .event(CheckoutEvent::Started {
                    order: order.clone(),
                    line: line.clone(),
                    compensate_on_timeout: *compensate_on_timeout,
                })
                .command(CheckoutCommand::ReserveInventory {
                    order: order.clone(),
                    sku: line.sku.clone(),
                    quantity: line.quantity,
                })
                .set_deadline(
                    Deadline::Reserve.id(),
                    timeouts::RESERVE,
                    I::Timeout(Deadline::Reserve),
                ),

            (S::Reserving, I::InventoryReserved) => {
                let line = self.line();
                Reaction::none()
                    .event(CheckoutEvent::InventoryReserved)
                    .clear_deadline(Deadline::Reserve.id())
                    .command(CheckoutCommand::ChargePayment {
                        order: order(),
                        amount: line.amount,
                        card: line.card,
                    })
                    .set_deadline(
                        Deadline::Payment.id(),
                        timeouts::PAYMENT,
                        I::Timeout(Deadline::Payment),
                    )
            }
            (S::Reserving, I::ReservationRefused) => {
                self.compensate("out of stock", false, false, Deadline::Reserve)
            }
            // The reservation may still land late: release it (or tombstone it) to be sure.
            (S::Reserving, I::Timeout(Deadline::Reserve)) => {
                self.compensate("inventory timed out", false, true, Deadline::Reserve)
            }

            (S::Charging, I::PaymentCaptured) => Reaction::none()
                .event(CheckoutEvent::PaymentCaptured)
                .clear_deadline(Deadline::Payment.id())
                .command(CheckoutCommand::CreateShipment { order: order() })
                .set_deadline(
                    Deadline::Shipment.id(),
                    timeouts::SHIPMENT,
                    I::Timeout(Deadline::Shipment),
                ),
            (S::Charging, I::PaymentDeclined) => {
                self.compensate("payment declined", false, true, Deadline::Payment)
            }
            (S::Charging, I::Timeout(Deadline::Payment)) => {
                sometimes!(situations::PAYMENT_DEADLINE_FIRED.name);
                if self.compensate_on_timeout {
                    // The charge may have gone through with its answer lost: void or refund it.
                    self.compensate("payment timed out", true, true, Deadline::Payment)
                } else {
                    // PLANTED BUG: gives up on the order and forgets money and stock.
                    self.compensate("payment timed out", false, false, Deadline::Payment)
                }
            }

            (S::CreatingShipment, I::ShipmentCreated) => Reaction::none()
                .event(CheckoutEvent::ShipmentCreated)
                .clear_deadline(Deadline::Shipment.id())
                .set_deadline(
                    Deadline::Delivery.id(),
                    timeouts::DELIVERY,
                    I::Timeout(Deadline::Delivery),
                ),
            // Ask the shipping aggregate to cancel; its verdict (failed or delivered) decides.
            (S::CreatingShipment, I::Timeout(Deadline::Shipment)) => {
                sometimes!(situations::SHIPMENT_DEADLINE_FIRED.name);
                Self::retry(
                    Deadline::Shipment,
                    timeouts::RETRY,
                    CheckoutCommand::CancelShipment { order: order() },
                )
            }
            (S::AwaitingDelivery, I::Timeout(Deadline::Delivery)) => {
                sometimes!(situations::SHIPMENT_DEADLINE_FIRED.name);
                Self::retry(
                    Deadline::Delivery,
                    timeouts::RETRY,
                    CheckoutCommand::CancelShipment { order: order() },
                )
            }
            (S::CreatingShipment | S::AwaitingDelivery, I::ShipmentDelivered) => Reaction::none()
                .event(CheckoutEvent::Delivered)
                .clear_deadline(Deadline::Shipment.id())
                .clear_deadline(Deadline::Delivery.id())
                .command(CheckoutCommand::CompleteOrder { order: order() })
                .set_deadline(
                    Deadline::Complete.id(),
                    timeouts::RETRY,
                    I::Timeout(Deadline::Complete),
                ),
            (S::CreatingShipment, I::ShipmentFailed) => {
                self.compensate("shipment failed", true, true, Deadline::Shipment)
            }
            (S::AwaitingDelivery, I::ShipmentFailed) => {
                self.compensate("shipment failed", true, true, Deadline::Delivery)
            }

            (S::Completing, I::OrderCompleted) => Reaction::none()
                .event(CheckoutEvent::Completed)
                .clear_deadline(Deadline::Complete.id()),
            (S::Completing, I::Timeout(Deadline::Complete)) => Self::retry(
                Deadline::Complete,
                timeouts::RETRY,
                CheckoutCommand::CompleteOrder { order: order() },
            ),

            // A refund is settled by a refund, a void, or a decline (nothing was captured).
            (S::Compensating, I::PaymentRefunded | I::PaymentDeclined) => self.undone(Undo::Refund),
            // A release is settled by a release, a tombstone, or a refusal (nothing was held).
            (S::Compensating, I::InventoryReleased | I::ReservationRefused) => {
                self.undone(Undo::Release)
            }
            (S::Compensating, I::OrderCancelled) => self.undone(Undo::Cancel),
            (S::Compensating, I::Timeout(Deadline::Compensate)) => {
                let reason = self.reason.clone().unwrap_or_default();
                let mut reaction = Reaction::none().set_deadline(
                    Deadline::Compensate.id(),
                    timeouts::RETRY,
                    I::Timeout(Deadline::Compensate),
                );
                reaction.commands = self.commands_for(self.pending, &reason);
                reaction
            }

            // Duplicates, late answers, and stale timeouts.
            _ => Reaction::none(),
        }
    }

    fn apply(&mut self, event: &CheckoutEvent) {
        match event {
            CheckoutEvent::Started {
                order,
                line,
                compensate_on_timeout,
            } => {
                self.order.clone_from(order);
                self.line = Some(line.clone());
                self.compensate_on_timeout = *compensate_on_timeout;
                self.step = Step::Reserving;
            }
            CheckoutEvent::InventoryReserved => self.step = Step::Charging,
            CheckoutEvent::PaymentCaptured => self.step = Step::CreatingShipment,
            CheckoutEvent::ShipmentCreated => self.step = Step::AwaitingDelivery,
            CheckoutEvent::Delivered => self.step = Step::Completing,
            CheckoutEvent::Completed => self.step = Step::Completed,
            CheckoutEvent::CompensationStarted {
                reason,
                refund,
                release,
            } => {
                self.step = Step::Compensating;
                self.reason = Some(reason.clone());
                self.pending = Pending {
                    refund: *refund,
                    release: *release,
                    cancel: true,
                };
            }
            CheckoutEvent::Undone(undo) => self.pending.take(*undo),
            CheckoutEvent::Cancelled => self.step = Step::Cancelled,
        }
    }

    fn is_terminal(&self) -> bool {
        matches!(self.step, Step::Completed | Step::Cancelled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saga_at(events: &[CheckoutEvent]) -> CheckoutSaga {
        let mut saga = CheckoutSaga::default();
        saga.apply(&CheckoutEvent::Started {
            order: "o1".into(),
            line: OrderLine {
                sku: "s".into(),
                quantity: 1,
                amount: 10,
                card: 1,
            },
            compensate_on_timeout: true,
        });
        for event in events {
            saga.apply(event);
        }
        saga
    }

    fn compensating(refund: bool, release: bool) -> CheckoutSaga {
        saga_at(&[CheckoutEvent::CompensationStarted {
            reason: "r".into(),
            refund,
            release,
        }])
    }

    #[test]
    fn a_refusal_or_a_decline_settles_the_matching_compensation() {
        let saga = compensating(true, true);
        assert_eq!(
            saga.react(&CheckoutInput::ReservationRefused).events,
            vec![CheckoutEvent::Undone(Undo::Release)]
        );
        assert_eq!(
            saga.react(&CheckoutInput::PaymentDeclined).events,
            vec![CheckoutEvent::Undone(Undo::Refund)]
        );
        // Not waiting for a refund: a decline is just a late duplicate.
        assert!(
            compensating(false, true)
                .react(&CheckoutInput::PaymentDeclined)
                .is_empty()
        );
    }

    #[test]
    fn the_last_confirmation_cancels_and_clears_the_retry_deadline() {
        let saga = saga_at(&[
            CheckoutEvent::CompensationStarted {
                reason: "r".into(),
                refund: false,
                release: true,
            },
            CheckoutEvent::Undone(Undo::Release),
        ]);
        let reaction = saga.react(&CheckoutInput::OrderCancelled);
        assert_eq!(
            reaction.events,
            vec![
                CheckoutEvent::Undone(Undo::Cancel),
                CheckoutEvent::Cancelled
            ]
        );
        assert_eq!(
            reaction.clear_deadlines,
            vec![Deadline::Compensate.id().to_owned()]
        );
    }

    #[test]
    fn the_retry_deadline_reissues_only_what_is_unconfirmed() {
        let saga = saga_at(&[
            CheckoutEvent::CompensationStarted {
                reason: "r".into(),
                refund: true,
                release: true,
            },
            CheckoutEvent::Undone(Undo::Refund),
        ]);
        let reaction = saga.react(&CheckoutInput::Timeout(Deadline::Compensate));
        let names: Vec<&str> = reaction.commands.iter().map(CommandRoute::name).collect();
        assert_eq!(names, ["ReleaseInventory", "CancelOrder"]);
        assert_eq!(reaction.set_deadlines.len(), 1);
    }

    #[test]
    fn stale_timeouts_and_answers_from_other_steps_are_ignored() {
        let charging = saga_at(&[CheckoutEvent::InventoryReserved]);
        assert!(
            charging
                .react(&CheckoutInput::Timeout(Deadline::Reserve))
                .is_empty()
        );
        assert!(charging.react(&CheckoutInput::ShipmentDelivered).is_empty());
        let done = saga_at(&[
            CheckoutEvent::InventoryReserved,
            CheckoutEvent::PaymentCaptured,
            CheckoutEvent::Delivered,
            CheckoutEvent::Completed,
        ]);
        assert!(done.is_terminal());
        assert!(done.react(&CheckoutInput::ShipmentFailed).is_empty());
    }
}
