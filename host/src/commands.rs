//! A saga's commands travel as bus messages: one topic per target service, keyed by the
//! entity they concern so that commands about one order stay in order.
//!
//! Every publish carries a fresh message id (the inbox deduplicates *deliveries* of one
//! message). A command issued again on purpose — a saga retrying after a deadline — is a
//! new message; the target's aggregate makes it harmless by deciding on its state.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use reprise_core::event_bus::header;
use reprise_core::{
    BoxFuture, Delivery, DispatchError, Dispatcher, EventId, Headers, OutgoingMessage, Payload,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Platform;
use crate::ids::format_event_id;

/// Where a command goes.
pub trait CommandRoute {
    /// The topic of the service that handles it.
    fn topic(&self) -> &'static str;
    /// The partition key: the entity the command is about.
    fn key(&self) -> String;
    /// A bounded name for traces and headers.
    fn name(&self) -> &'static str;
}

/// Publishes commands to the bus. See the module docs.
pub struct BusDispatcher<C> {
    platform: Platform,
    publish_attempts: u32,
    _command: PhantomData<fn(C)>,
}

impl<C> fmt::Debug for BusDispatcher<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusDispatcher")
            .field("publish_attempts", &self.publish_attempts)
            .finish_non_exhaustive()
    }
}

impl<C> BusDispatcher<C> {
    /// A dispatcher that tries each publish `publish_attempts` times before reporting the
    /// target unavailable (the saga's deadline then covers the lost command).
    #[must_use]
    pub fn new(platform: Platform, publish_attempts: u32) -> Self {
        assert!(publish_attempts > 0, "a dispatcher must try at least once");
        BusDispatcher {
            platform,
            publish_attempts,
            _command: PhantomData,
        }
    }
}

/// The bus message for `command`, with message id `id`.
///
/// # Errors
/// If the command does not serialize.
pub fn encode<C: CommandRoute + Serialize>(
    command: &C,
    id: EventId,
) -> Result<OutgoingMessage, serde_json::Error> {
    Ok(OutgoingMessage {
        topic: command.topic().into(),
        key: command.key().into(),
        payload: Payload::encode(command)?,
        headers: Headers::default()
            .with(header::EVENT_ID, format_event_id(id))
            .with(header::EVENT_TYPE, command.name()),
    })
}

/// The command in a delivery.
///
/// # Errors
/// If the payload is not a `C`.
pub fn decode<C: DeserializeOwned>(delivery: &Delivery) -> Result<C, serde_json::Error> {
    delivery.payload.decode()
}

impl<C> Dispatcher<C> for BusDispatcher<C>
where
    C: CommandRoute + Serialize + fmt::Debug + Send + 'static,
{
    fn dispatch(&self, command: C) -> BoxFuture<'static, Result<(), DispatchError>> {
        let env = self.platform.clone();
        let attempts = self.publish_attempts;
        let id = EventId(env.runtime.next_id());
        Box::pin(async move {
            let message =
                encode(&command, id).map_err(|e| DispatchError::Refused(e.to_string()))?;
            let topic: Arc<str> = Arc::clone(&message.topic);
            let mut last_error = None;
            let mut backoff = env.backoff();
            for attempt in 0..attempts {
                match env.bus.publish(vec![message.clone()]).await {
                    Ok(()) => {
                        env.note(format_args!(
                            "command {} {} -> {topic}",
                            command.name(),
                            command.key()
                        ));
                        return Ok(());
                    }
                    Err(error) => {
                        last_error = Some(error);
                        if attempt + 1 < attempts {
                            env.pause(&mut backoff).await;
                        }
                    }
                }
            }
            let error = last_error.map_or_else(String::new, |e| e.to_string());
            env.note(format_args!(
                "command {} {} lost: {error}",
                command.name(),
                command.key()
            ));
            Err(DispatchError::Unavailable(error))
        })
    }
}
