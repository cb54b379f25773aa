//! The consume loop: next → handle → ack → commit.
//!
//! The order is the whole point. An offset is acknowledged only after the handler has made
//! the message's effect durable, so a crash at any moment leads to redelivery (which the
//! [inbox](crate::inbox) absorbs), never to loss. Offsets are committed contiguously by the
//! [`Subscription`] (a message acknowledged out of order waits for the ones before it), and
//! a subscription that loses partitions in a rebalance commits what it acknowledged before
//! giving them up (the adapter's job: see `reprise-kafka`).
//!
//! ## Receive errors
//!
//! What the loop does when [`Subscription::next`] fails is a decision, not an accident, so
//! it is one function with a typed answer: [`recovery_for`].
//!
//! | error | [`ReceiveRecovery`] | why |
//! |---|---|---|
//! | `Closed` | `Resubscribe` | the membership is gone; join the group again |
//! | `Revoked` | `Continue` | partitions moved; the subscription serves the new assignment |
//! | `Transient`, `Timeout` | `RetryAfterPause` | the broker is briefly unreachable |
//! | `UnknownTopic`, `Permanent` | `ResubscribeAfterPause` | configuration or broker trouble: loud, paced, never a spin |
//!
//! Pauses follow the platform's backoff ([`Platform::backoff`]), reset by every delivery.
//!
//! ## Fault points
//!
//! Under the simulator, BUGGIFY widens the windows where a consumer most often goes wrong:
//! - [`POINT_PAUSE_BEFORE_ACK`]: a pause between handling and acknowledging (a crash or a
//!   rebalance is then likely to land in between: the message is redelivered although its
//!   effect is durable);
//! - [`POINT_RESUBSCRIBE_BEFORE_ACK`]: the handled message is not acknowledged at all and the
//!   subscription is dropped and joined again — a guaranteed redelivery;
//! - [`POINT_SKIP_COMMIT`]: acknowledged but not committed now (a later commit covers it, or
//!   a crash before it makes the group redeliver).

use std::sync::Arc;
use std::time::Duration;

use reprise_core::event::trace::{self, TraceParent};
use reprise_core::event_bus::header;
use reprise_core::{BoxFuture, BusError, Delivery, Subscription, buggify};
use tracing::Instrument;

use crate::Platform;

/// BUGGIFY: pause between handling and acknowledging.
pub const POINT_PAUSE_BEFORE_ACK: &str = "consume.pause-before-ack";
/// BUGGIFY: drop the subscription instead of acknowledging a handled message.
pub const POINT_RESUBSCRIBE_BEFORE_ACK: &str = "consume.resubscribe-before-ack";
/// BUGGIFY: acknowledge without committing now.
pub const POINT_SKIP_COMMIT: &str = "consume.skip-commit";

/// Longest BUGGIFY pause before an acknowledgement.
const MAX_BUGGIFY_PAUSE: Duration = Duration::from_millis(200);

/// Handles one message completely: when the future completes, the message's effect is
/// durable (handlers retry transient failures themselves), or the message was judged
/// irrelevant, or it was parked in a dead-letter queue.
pub trait MessageHandler: Send + Sync + 'static {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, ()>;
}

/// Configuration of one consumer.
#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    pub group: Arc<str>,
    pub topics: Vec<Arc<str>>,
}

impl ConsumerOptions {
    /// # Panics
    /// Without a group or a topic.
    #[must_use]
    pub fn new(group: &str, topics: &[&str]) -> Self {
        assert!(
            !group.is_empty() && !topics.is_empty() && topics.iter().all(|t| !t.is_empty()),
            "a consumer needs a group and topics"
        );
        ConsumerOptions {
            group: group.into(),
            topics: topics.iter().map(|t| Arc::from(*t)).collect(),
        }
    }
}

/// What the consume loop does after [`Subscription::next`] failed. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiveRecovery {
    /// Ask again at once.
    Continue,
    /// Ask again after the next backoff pause.
    RetryAfterPause,
    /// Join the group again at once.
    Resubscribe,
    /// Join the group again after the next backoff pause.
    ResubscribeAfterPause,
}

/// The consume loop's answer to a receive error. See the module docs.
#[must_use]
pub fn recovery_for(error: &BusError) -> ReceiveRecovery {
    match error {
        BusError::Closed => ReceiveRecovery::Resubscribe,
        BusError::Revoked { .. } => ReceiveRecovery::Continue,
        BusError::Transient(_) | BusError::Timeout => ReceiveRecovery::RetryAfterPause,
        BusError::UnknownTopic(_) | BusError::Permanent(_) => {
            ReceiveRecovery::ResubscribeAfterPause
        }
    }
}

async fn subscribe(platform: &Platform, options: &ConsumerOptions) -> Box<dyn Subscription> {
    let topics: Vec<&str> = options.topics.iter().map(|t| &**t).collect();
    let mut backoff = platform.backoff();
    loop {
        match platform.bus.subscribe(&options.group, &topics).await {
            Ok(subscription) => return subscription,
            Err(error) => {
                tracing::warn!(group = %options.group, %error, "subscribe failed; retrying");
                platform.pause(&mut backoff).await;
            }
        }
    }
}

/// The consumer's span for a traced delivery (one with a `traceparent` header): a
/// `process` span (OpenTelemetry messaging conventions), child of the producer's span,
/// and the context it gives what the handler causes.
#[must_use]
pub fn process_span(
    platform: &Platform,
    group: &str,
    delivery: &Delivery,
) -> Option<(tracing::Span, TraceParent)> {
    let parent = TraceParent::parse(delivery.headers.get(header::TRACEPARENT)?)?;
    let span = tracing::info_span!(
        "reprise.consume",
        otel.name = %format_args!("process {}", delivery.topic),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = &*delivery.topic,
        messaging.consumer.group.name = group,
        messaging.destination.partition.id = delivery.partition,
        messaging.kafka.offset = delivery.offset,
        messaging.kafka.message.key = &*delivery.key,
        messaging.message.id = delivery.headers.get(header::EVENT_ID),
        reprise.message.type = delivery.headers.get(header::EVENT_TYPE),
        trace_id = tracing::field::Empty,
    );
    let context = trace::continue_trace(&span, parent, platform.runtime.as_ref());
    Some((span, context))
}

/// Hands `delivery` to `handler`; a traced delivery inside its [`process_span`], with the
/// span's context current (so the events and commands it causes carry it).
async fn handle(
    platform: &Platform,
    options: &ConsumerOptions,
    handler: &dyn MessageHandler,
    delivery: &Delivery,
) {
    match process_span(platform, &options.group, delivery) {
        None => handler.handle(delivery).await,
        Some((span, context)) => {
            trace::in_trace(Some(context), handler.handle(delivery))
                .instrument(span)
                .await;
        }
    }
}

/// Runs the consumer forever (until its task is dropped: a crash, or a shutdown).
pub async fn run(platform: Platform, options: ConsumerOptions, handler: Arc<dyn MessageHandler>) {
    let mut subscription = subscribe(&platform, &options).await;
    let mut backoff = platform.backoff();
    loop {
        let delivery = match subscription.next().await {
            Ok(delivery) => delivery,
            Err(error) => {
                let recovery = recovery_for(&error);
                tracing::debug!(group = %options.group, %error, ?recovery, "receive failed");
                match recovery {
                    ReceiveRecovery::Continue => {}
                    ReceiveRecovery::RetryAfterPause => platform.pause(&mut backoff).await,
                    ReceiveRecovery::Resubscribe => {
                        subscription = subscribe(&platform, &options).await;
                    }
                    ReceiveRecovery::ResubscribeAfterPause => {
                        platform.pause(&mut backoff).await;
                        subscription = subscribe(&platform, &options).await;
                    }
                }
                continue;
            }
        };
        backoff.reset();
        handle(&platform, &options, handler.as_ref(), &delivery).await;
        if buggify(POINT_PAUSE_BEFORE_ACK) {
            let nanos = u64::try_from(MAX_BUGGIFY_PAUSE.as_nanos()).unwrap_or(u64::MAX);
            platform
                .sleep(Duration::from_nanos(platform.runtime.next_u64() % nanos))
                .await;
        }
        if buggify(POINT_RESUBSCRIBE_BEFORE_ACK) {
            drop(subscription);
            subscription = subscribe(&platform, &options).await;
            continue;
        }
        subscription.ack(&delivery);
        if buggify(POINT_SKIP_COMMIT) {
            continue;
        }
        // A failed commit only means redelivery later; the inbox absorbs it.
        if let Err(error) = subscription.commit().await {
            tracing::debug!(group = %options.group, %error, "commit failed; work will be redelivered");
        }
    }
}
