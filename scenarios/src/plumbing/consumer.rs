//! The consume loop: next → handle → ack → commit.
//!
//! The order is the whole point. An offset is acknowledged only after the handler has made
//! the message's effect durable, so a crash at any moment leads to redelivery (which the
//! inbox absorbs), never to loss. [`PlantedBug::AckBeforeProcess`] swaps the order.
//!
//! [`PlantedBug::AckBeforeProcess`]: crate::bugs::PlantedBug::AckBeforeProcess

use std::sync::Arc;

use reprise_core::{BoxFuture, BusError, Delivery, Subscription};

use super::env::{Backoff, ServiceEnv};

/// Handles one message completely: when the future completes, the message's effect is
/// durable (handlers retry transient failures themselves) or the message was judged
/// irrelevant.
pub trait MessageHandler: Send + Sync + 'static {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, ()>;
}

/// Configuration of one consumer.
#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    pub group: Arc<str>,
    pub topics: Vec<&'static str>,
    /// Plants [`PlantedBug::AckBeforeProcess`](crate::bugs::PlantedBug::AckBeforeProcess).
    pub ack_before_process: bool,
}

impl ConsumerOptions {
    #[must_use]
    pub fn new(group: &str, topics: Vec<&'static str>) -> Self {
        assert!(
            !group.is_empty() && !topics.is_empty(),
            "a consumer needs a group and topics"
        );
        ConsumerOptions {
            group: group.into(),
            topics,
            ack_before_process: false,
        }
    }
}

async fn subscribe(env: &ServiceEnv, options: &ConsumerOptions) -> Box<dyn Subscription> {
    let mut attempt = 0;
    loop {
        match env.bus.subscribe(&options.group, &options.topics).await {
            Ok(subscription) => return subscription,
            Err(error) => {
                tracing::debug!(group = %options.group, %error, "subscribe failed; retrying");
                env.sleep(Backoff::SERVICE.delay(attempt, env)).await;
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

/// Runs the consumer forever (until its task is dropped, e.g. by a crash).
pub async fn run(env: ServiceEnv, options: ConsumerOptions, handler: Arc<dyn MessageHandler>) {
    let mut subscription = subscribe(&env, &options).await;
    let mut attempt = 0;
    loop {
        let delivery = match subscription.next().await {
            Ok(delivery) => delivery,
            Err(BusError::Closed) => {
                subscription = subscribe(&env, &options).await;
                continue;
            }
            Err(error) => {
                tracing::debug!(group = %options.group, %error, "receive failed; retrying");
                env.sleep(Backoff::SERVICE.delay(attempt, &env)).await;
                attempt = attempt.saturating_add(1);
                continue;
            }
        };
        attempt = 0;
        if options.ack_before_process {
            // PLANTED BUG: the bus now believes the message consumed, whatever happens next.
            subscription.ack(&delivery);
            let _ = subscription.commit().await;
            handler.handle(&delivery).await;
        } else {
            handler.handle(&delivery).await;
            subscription.ack(&delivery);
            // A failed commit only means redelivery later; the inbox absorbs it.
            let _ = subscription.commit().await;
        }
    }
}
