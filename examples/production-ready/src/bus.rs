//! [`ShopBus`]: the Kafka bus as the shop's services see it.
//!
//! Three jobs on top of `reprise_kafka::KafkaEventBus`, all at the bus boundary so the
//! scenario's services stay untouched:
//!
//! - **A topic prefix.** The checkout's topics and consumer groups are `&'static str`
//!   constants; a non-empty `--topic-prefix` maps `checkout.events` to
//!   `<prefix>checkout.events` (and group `checkout-saga` to `<prefix>checkout-saga`) on
//!   the way out and strips it from deliveries on the way in — how `reprise-live`
//!   isolates runs (`NamespacedBus`), so several shops (tests) can share one broker.
//! - **Bookkeeping for health.** Which groups this process has joined and which
//!   partitions its members hold (readiness: "consumer groups assigned"), and whether the
//!   saga consumer has subscribed — which `reprise_host::saga_host::spawn_saga_service`
//!   does only after `SagaHost::recover_all` returned (start-up: "sagas recovered").
//! - **Draining.** At shutdown [`ShopBus::start_draining`] makes every subscription stop
//!   handing out messages. A member is *busy* from the moment it hands out a delivery
//!   until the consume loop's commit after it returns (or the loop asks for the next
//!   message), so [`ShopBus::busy_members`] reaching 0 means every message in hand was
//!   handled, acknowledged and committed. The consume loops then sit idle until the
//!   shutdown ends their tasks; dropping a `KafkaSubscription` commits its handled prefix
//!   and leaves the group, and [`ShopBus::members`] counts the subscriptions still alive.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use reprise_core::event_bus::{EventBus, OutgoingMessage, Subscription};
use reprise_core::{BoxFuture, BusError, Delivery};
use reprise_kafka::{KafkaEventBus, KafkaSubscription};
use tokio::sync::watch;

/// How often an idle member records its assignment.
const ASSIGNMENT_REFRESH: Duration = Duration::from_millis(250);

#[derive(Debug)]
struct Member {
    /// The scenario's (unprefixed) group name.
    group: String,
    /// Partitions held, as (prefixed topic, partition).
    assignment: Vec<(String, u32)>,
    busy: bool,
}

#[derive(Debug, Default)]
struct Members {
    next_id: u64,
    by_id: BTreeMap<u64, Member>,
    subscribed: BTreeSet<String>,
}

struct Shared {
    members: Mutex<Members>,
    draining: watch::Sender<bool>,
}

/// See the module docs. Cheap to clone; clones (and [`ShopBus::sibling`]s) share the
/// bookkeeping and the draining switch.
#[derive(Clone)]
pub struct ShopBus {
    inner: KafkaEventBus,
    prefix: Arc<str>,
    shared: Arc<Shared>,
}

impl fmt::Debug for ShopBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShopBus")
            .field("prefix", &self.prefix)
            .field("members", &self.members())
            .field("draining", &self.is_draining())
            .finish_non_exhaustive()
    }
}

impl ShopBus {
    #[must_use]
    pub fn new(inner: KafkaEventBus, prefix: impl Into<Arc<str>>) -> Self {
        ShopBus {
            inner,
            prefix: prefix.into(),
            shared: Arc::new(Shared {
                members: Mutex::default(),
                draining: watch::Sender::new(false),
            }),
        }
    }

    /// The same prefix, bookkeeping and switch over another client (one per service, as
    /// separate processes would have).
    #[must_use]
    pub fn sibling(&self, inner: KafkaEventBus) -> Self {
        ShopBus {
            inner,
            prefix: Arc::clone(&self.prefix),
            shared: Arc::clone(&self.shared),
        }
    }

    /// The broker-side name of a scenario topic or group.
    #[must_use]
    pub fn broker_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The client underneath (metadata checks, topic creation).
    #[must_use]
    pub fn kafka(&self) -> &KafkaEventBus {
        &self.inner
    }

    /// Stops every subscription (of every sibling) from handing out messages.
    pub fn start_draining(&self) {
        self.shared.draining.send_replace(true);
    }

    #[must_use]
    pub fn is_draining(&self) -> bool {
        *self.shared.draining.borrow()
    }

    /// Subscriptions alive.
    #[must_use]
    pub fn members(&self) -> usize {
        self.shared.members.lock().by_id.len()
    }

    /// Subscriptions holding a message that is not yet handled and committed.
    #[must_use]
    pub fn busy_members(&self) -> usize {
        self.shared
            .members
            .lock()
            .by_id
            .values()
            .filter(|m| m.busy)
            .count()
    }

    /// Whether a member of `group` (scenario name) has ever subscribed in this process.
    #[must_use]
    pub fn has_subscribed(&self, group: &str) -> bool {
        self.shared.members.lock().subscribed.contains(group)
    }

    /// Partitions held by this process's members of `group` (scenario name).
    #[must_use]
    pub fn partitions_held(&self, group: &str) -> usize {
        self.shared
            .members
            .lock()
            .by_id
            .values()
            .filter(|m| m.group == group)
            .map(|m| m.assignment.len())
            .sum()
    }

    fn strip(&self, mut delivery: Delivery) -> Delivery {
        if let Some(topic) = delivery.topic.strip_prefix(&*self.prefix) {
            delivery.topic = Arc::from(topic);
        }
        delivery
    }
}

impl EventBus for ShopBus {
    fn publish(&self, messages: Vec<OutgoingMessage>) -> BoxFuture<'static, Result<(), BusError>> {
        if self.prefix.is_empty() {
            return self.inner.publish(messages);
        }
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
        let broker_group = self.broker_name(group);
        let topics: Vec<String> = topics.iter().map(|t| self.broker_name(t)).collect();
        let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        let result = self
            .inner
            .subscribe_group(&broker_group, &topic_refs)
            .map(|inner| {
                let id = {
                    let mut members = self.shared.members.lock();
                    members.next_id += 1;
                    let id = members.next_id;
                    members.by_id.insert(
                        id,
                        Member {
                            group: group.to_owned(),
                            assignment: Vec::new(),
                            busy: false,
                        },
                    );
                    members.subscribed.insert(group.to_owned());
                    id
                };
                Box::new(ShopSubscription {
                    inner,
                    bus: self.clone(),
                    id,
                }) as Box<dyn Subscription>
            });
        Box::pin(std::future::ready(result))
    }
}

/// One group member. See the module docs.
struct ShopSubscription {
    inner: KafkaSubscription,
    bus: ShopBus,
    id: u64,
}

impl ShopSubscription {
    fn update(&self, busy: Option<bool>) {
        let assignment = self.inner.assignment();
        if let Some(member) = self.bus.shared.members.lock().by_id.get_mut(&self.id) {
            member.assignment = assignment;
            if let Some(busy) = busy {
                member.busy = busy;
            }
        }
    }
}

impl Drop for ShopSubscription {
    fn drop(&mut self) {
        self.bus.shared.members.lock().by_id.remove(&self.id);
    }
}

impl Subscription for ShopSubscription {
    fn next(&mut self) -> BoxFuture<'_, Result<Delivery, BusError>> {
        Box::pin(async move {
            // Asking for the next message: the previous one is done with.
            self.update(Some(false));
            let mut draining = self.bus.shared.draining.subscribe();
            loop {
                if *draining.borrow_and_update() {
                    // Hand out nothing more; the shutdown ends this task.
                    std::future::pending::<()>().await;
                }
                tokio::select! {
                    outcome = tokio::time::timeout(ASSIGNMENT_REFRESH, self.inner.next()) => {
                        // `KafkaSubscription::next` is cancellation-safe: timing out only
                        // gives an idle member a chance to report its assignment.
                        match outcome {
                            Ok(Ok(delivery)) => {
                                if self.bus.is_draining() {
                                    // Never handed out, never acknowledged: the group
                                    // delivers it again (here after a restart, or to
                                    // another member).
                                    continue;
                                }
                                self.update(Some(true));
                                return Ok(self.bus.strip(delivery));
                            }
                            Ok(Err(error)) => {
                                self.update(None);
                                return Err(error);
                            }
                            Err(_) => self.update(None),
                        }
                    }
                    _ = draining.changed() => {}
                }
            }
        })
    }

    fn ack(&mut self, delivery: &Delivery) {
        if self.bus.prefix.is_empty() {
            self.inner.ack(delivery);
        } else {
            let mut on_broker = delivery.clone();
            on_broker.topic = Arc::from(self.bus.broker_name(&delivery.topic));
            self.inner.ack(&on_broker);
        }
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            let result = self.inner.commit().await;
            self.update(Some(false));
            result
        })
    }
}
