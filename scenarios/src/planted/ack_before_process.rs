//! [`PlantedBug::AckBeforeProcess`](crate::bugs::PlantedBug::AckBeforeProcess): the
//! consumer acknowledges and commits a message *before* handling it, so a crash in between
//! loses the message although the bus reports it consumed.
//!
//! Planted as a bus wrapper rather than a second consume loop: its subscriptions ack and
//! commit every delivery inside `next()`, before the host's (correct) loop gets to handle
//! it. The loop's own ack and commit afterwards change nothing.

use std::sync::Arc;

use reprise_core::{BoxFuture, BusError, Delivery, EventBus, OutgoingMessage, Subscription};

/// An [`EventBus`] whose subscriptions acknowledge on receipt. See the module docs.
pub struct AckOnReceive {
    inner: Arc<dyn EventBus>,
}

impl std::fmt::Debug for AckOnReceive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AckOnReceive")
    }
}

impl AckOnReceive {
    #[must_use]
    pub fn new(inner: Arc<dyn EventBus>) -> Self {
        AckOnReceive { inner }
    }
}

impl EventBus for AckOnReceive {
    fn publish(&self, messages: Vec<OutgoingMessage>) -> BoxFuture<'static, Result<(), BusError>> {
        self.inner.publish(messages)
    }

    fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
    ) -> BoxFuture<'static, Result<Box<dyn Subscription>, BusError>> {
        let subscribing = self.inner.subscribe(group, topics);
        Box::pin(async move {
            let inner = subscribing.await?;
            Ok(Box::new(AckingSubscription { inner }) as Box<dyn Subscription>)
        })
    }
}

struct AckingSubscription {
    inner: Box<dyn Subscription>,
}

impl Subscription for AckingSubscription {
    fn next(&mut self) -> BoxFuture<'_, Result<Delivery, BusError>> {
        Box::pin(async move {
            let delivery = self.inner.next().await?;
            // PLANTED BUG: the bus now believes the message consumed, whatever happens next.
            self.inner.ack(&delivery);
            let _ = self.inner.commit().await;
            Ok(delivery)
        })
    }

    fn ack(&mut self, delivery: &Delivery) {
        self.inner.ack(delivery);
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<(), BusError>> {
        self.inner.commit()
    }
}
