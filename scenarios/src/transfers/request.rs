//! A customer's transfer order: the fact that starts a [`TransferSaga`](super::TransferSaga).
//! Submitting is idempotent, so a client that retries (or restarts) submits once.

use reprise_core::{Aggregate, Event};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferOrder {
    pub from: String,
    pub to: String,
    pub amount: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TransferRequest {
    pub order: Option<TransferOrder>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestCommand {
    Submit(TransferOrder),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestEvent {
    Submitted(TransferOrder),
}

impl Event for RequestEvent {
    fn event_type(&self) -> &'static str {
        "TransferSubmitted"
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("a transfer moves money between two different accounts")]
    SameAccount,
    #[error("a transfer moves a positive amount")]
    NothingToMove,
}

impl Aggregate for TransferRequest {
    const CATEGORY: &'static str = "request";
    type Command = RequestCommand;
    type Event = RequestEvent;
    type Error = RequestError;

    fn decide(&self, command: &RequestCommand) -> Result<Vec<RequestEvent>, RequestError> {
        let RequestCommand::Submit(order) = command;
        if order.from == order.to {
            return Err(RequestError::SameAccount);
        }
        if order.amount == 0 {
            return Err(RequestError::NothingToMove);
        }
        Ok(if self.order.is_some() {
            vec![]
        } else {
            vec![RequestEvent::Submitted(order.clone())]
        })
    }

    fn apply(&mut self, event: &RequestEvent) {
        let RequestEvent::Submitted(order) = event;
        self.order = Some(order.clone());
    }
}
