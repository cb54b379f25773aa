//! [`NamespacedBus`]: the Kafka bus with every topic and consumer group of one run behind
//! a prefix, and a record of which partitions each group member holds.
//!
//! The checkout's topics and groups are `&'static str` constants
//! ([`reprise_scenarios::checkout::saga::topics`],
//! [`reprise_scenarios::checkout::services::groups`]). Rather than delete and recreate
//! those shared names before every run — which breaks two runs on one broker (a test and
//! the CLI, two nextest processes) and relies on topic deletion, which not every broker
//! does promptly — the bus the services see maps `checkout.events` to
//! `<prefix>checkout.events` and group `checkout-saga` to `<prefix>checkout-saga` on the
//! way out, and strips the prefix from deliveries on the way in. The services, the inbox
//! marker ids (derived from the unprefixed group name) and the checkers all keep the
//! scenario's names; only the broker sees the prefixed ones.
//!
//! Readiness: a consumer receives nothing until its group has formed. The subscription
//! wraps [`Subscription::next`] (cancellation-safe in the Kafka adapter) in short
//! timeouts and records the member's assignment after each one, so
//! [`NamespacedBus::unassigned`] can tell when every partition of every topic has an
//! owner — the moment the workload may start without racing the group joins.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use reprise_core::event_bus::{EventBus, OutgoingMessage, Subscription};
use reprise_core::{BoxFuture, BusError, Delivery};
use reprise_kafka::{KafkaEventBus, KafkaSubscription};

/// How often an idle member records its assignment.
const ASSIGNMENT_REFRESH: Duration = Duration::from_millis(200);

#[derive(Debug, Default)]
struct Members {
    next_id: u64,
    /// Member id → (prefixed group, assigned (prefixed topic, partition)).
    assignments: BTreeMap<u64, (String, Vec<(String, u32)>)>,
}

/// See the module docs. Cheap to clone; clones share the member registry.
#[derive(Clone)]
pub struct NamespacedBus {
    inner: KafkaEventBus,
    prefix: Arc<str>,
    members: Arc<Mutex<Members>>,
}

impl fmt::Debug for NamespacedBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamespacedBus")
            .field("prefix", &self.prefix)
            .field("members", &self.members.lock().assignments.len())
            .finish_non_exhaustive()
    }
}

impl NamespacedBus {
    #[must_use]
    pub fn new(inner: KafkaEventBus, prefix: impl Into<Arc<str>>) -> Self {
        NamespacedBus {
            inner,
            prefix: prefix.into(),
            members: Arc::default(),
        }
    }

    /// The same prefix and member registry over another client (one per service instance,
    /// as separate processes would have).
    #[must_use]
    pub fn sibling(&self, inner: KafkaEventBus) -> Self {
        NamespacedBus {
            inner,
            prefix: Arc::clone(&self.prefix),
            members: Arc::clone(&self.members),
        }
    }

    /// The broker-side name of a scenario topic or group.
    #[must_use]
    pub fn broker_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The `(group, topic, partition)` triples (scenario names) no member of the group
    /// currently holds. Empty once every group has formed over every partition.
    #[must_use]
    pub fn unassigned(&self, expected: &[(&str, &str, u32)]) -> Vec<String> {
        let members = self.members.lock();
        let mut held: BTreeSet<(&str, &str, u32)> = BTreeSet::new();
        for (group, assignment) in members.assignments.values() {
            for (topic, partition) in assignment {
                held.insert((group.as_str(), topic.as_str(), *partition));
            }
        }
        let mut missing = Vec::new();
        for &(group, topic, partitions) in expected {
            let (group_name, topic_name) = (self.broker_name(group), self.broker_name(topic));
            for partition in 0..partitions {
                if !held.contains(&(group_name.as_str(), topic_name.as_str(), partition)) {
                    missing.push(format!("{group} {topic}/{partition}"));
                }
            }
        }
        missing
    }

    fn strip(&self, mut delivery: Delivery) -> Delivery {
        if let Some(topic) = delivery.topic.strip_prefix(&*self.prefix) {
            delivery.topic = Arc::from(topic);
        }
        delivery
    }
}

impl EventBus for NamespacedBus {
    fn publish(&self, messages: Vec<OutgoingMessage>) -> BoxFuture<'static, Result<(), BusError>> {
        let messages = messages
            .into_iter()
            .map(|mut message| {
                message.topic = Arc::from(self.broker_name(&message.topic));
                message
            })
            .collect();
        self.inner.publish(messages)
    }

    fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
    ) -> BoxFuture<'static, Result<Box<dyn Subscription>, BusError>> {
        let group = self.broker_name(group);
        let topics: Vec<String> = topics.iter().map(|t| self.broker_name(t)).collect();
        let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        let result = self
            .inner
            .subscribe_group(&group, &topic_refs)
            .map(|inner| {
                let id = {
                    let mut members = self.members.lock();
                    members.next_id += 1;
                    let id = members.next_id;
                    members.assignments.insert(id, (group, Vec::new()));
                    id
                };
                Box::new(NamespacedSubscription {
                    inner,
                    bus: self.clone(),
                    id,
                }) as Box<dyn Subscription>
            });
        Box::pin(std::future::ready(result))
    }
}

/// One group member behind the prefix.
struct NamespacedSubscription {
    inner: KafkaSubscription,
    bus: NamespacedBus,
    id: u64,
}

impl NamespacedSubscription {
    fn record_assignment(&self) {
        let assignment = self.inner.assignment();
        if let Some((_, held)) = self.bus.members.lock().assignments.get_mut(&self.id) {
            *held = assignment;
        }
    }
}

impl Drop for NamespacedSubscription {
    fn drop(&mut self) {
        self.bus.members.lock().assignments.remove(&self.id);
    }
}

impl Subscription for NamespacedSubscription {
    fn next(&mut self) -> BoxFuture<'_, Result<Delivery, BusError>> {
        Box::pin(async move {
            loop {
                // The adapter's `next` is cancellation-safe: timing out only gives this
                // member a chance to report its assignment while the partition is idle.
                let outcome = tokio::time::timeout(ASSIGNMENT_REFRESH, self.inner.next()).await;
                self.record_assignment();
                if let Ok(result) = outcome {
                    return result.map(|delivery| self.bus.strip(delivery));
                }
            }
        })
    }

    fn ack(&mut self, delivery: &Delivery) {
        let mut on_broker = delivery.clone();
        on_broker.topic = Arc::from(self.bus.broker_name(&delivery.topic));
        self.inner.ack(&on_broker);
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<(), BusError>> {
        self.inner.commit()
    }
}
