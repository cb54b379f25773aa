//! A saga's commands travel as bus messages: one topic per target service, keyed by the
//! entity they concern so that commands about one order stay in order.
//!
//! Every publish carries a fresh message id (the inbox deduplicates *deliveries* of one
//! message). A command issued again on purpose — a saga retrying after a deadline — is a
//! new message; the target's aggregate makes it harmless by deciding on its state.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use reprise_core::event::trace::{self, TraceParent};
use reprise_core::event_bus::header;
use reprise_core::{
    BoxFuture, Delivery, DispatchError, Dispatcher, EventId, Headers, OutgoingMessage, Payload,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

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

/// The bus message for `command`, with message id `id`, carrying the [current] trace
/// context (if any) in its `traceparent` header.
///
/// # Errors
/// If the command does not serialize.
///
/// [current]: reprise_core::event::trace::current
pub fn encode<C: CommandRoute + Serialize>(
    command: &C,
    id: EventId,
) -> Result<OutgoingMessage, serde_json::Error> {
    encode_traced(command, id, trace::current())
}

/// [`encode`] with an explicit trace context (`None`: no `traceparent` header).
///
/// # Errors
/// If the command does not serialize.
pub fn encode_traced<C: CommandRoute + Serialize>(
    command: &C,
    id: EventId,
    trace: Option<TraceParent>,
) -> Result<OutgoingMessage, serde_json::Error> {
    let mut headers = Headers::default()
        .with(header::EVENT_ID, format_event_id(id))
        .with(header::EVENT_TYPE, command.name());
    if let Some(trace) = trace {
        headers.insert(header::TRACEPARENT, trace.to_string());
    }
    Ok(OutgoingMessage {
        topic: command.topic().into(),
        key: command.key().into(),
        payload: Payload::encode(command)?,
        headers,
    })
}

/// The dispatcher's span for a command sent under a trace context: a `send` span
/// (OpenTelemetry messaging conventions), child of `parent`.
fn send_span<C: CommandRoute>(
    platform: &Platform,
    command: &C,
    id: EventId,
    parent: TraceParent,
) -> (tracing::Span, TraceParent) {
    let topic = command.topic();
    let span = tracing::info_span!(
        "reprise.command.send",
        otel.name = %format_args!("send {topic}"),
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.destination.name = topic,
        messaging.message.id = %format_event_id(id),
        messaging.kafka.message.key = %command.key(),
        reprise.command = command.name(),
        trace_id = tracing::field::Empty,
    );
    let context = trace::continue_trace(&span, parent, platform.runtime.as_ref());
    (span, context)
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
        // Under a trace (the saga reacting to a traced event), the command is sent in a
        // span of its own, whose context the message carries.
        let traced = trace::current().map(|parent| send_span(&env, &command, id, parent));
        let span = traced.as_ref().map(|(span, _)| span.clone());
        let send = async move {
            let message = encode_traced(&command, id, traced.map(|(_, context)| context))
                .map_err(|e| DispatchError::Refused(e.to_string()))?;
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
        };
        match span {
            Some(span) => Box::pin(send.instrument(span)),
            None => Box::pin(send),
        }
    }
}
