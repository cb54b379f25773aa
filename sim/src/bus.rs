//! The simulated event bus: core's [`InMemoryEventBus`] (topics, partitions, consumer
//! groups, committed offsets — durable across node crashes) reached through each node's
//! network link, with Kafka's failure modes on top.
//!
//! - **Publish**: latency; refused (nothing applied); acknowledgement lost (applied, the
//!   producer sees `Timeout` and its retry duplicates the messages); partitions.
//! - **Delivery**: extra delay; duplication (at-least-once redelivery of the same offset);
//!   reordering (a delivery is held back and a later one — usually of another partition —
//!   goes first; order *within* a partition is kept, as Kafka keeps it); partitions stall
//!   deliveries until healed.
//! - **Commit**: lost silently (the work comes back after the next rebalance or crash);
//!   partitions.
//! - **Rebalance**: a nemesis [`crate::Fault::Rebalance`] makes the node's subscriptions
//!   leave and rejoin their groups; moved partitions restart at the committed offset.
//!   A crashed node's subscriptions leave their groups because its tasks, which own
//!   them, are dropped — so the survivors take the partitions over, as in Kafka.

use std::collections::VecDeque;
use std::sync::Arc;

use reprise_core::memory::InMemorySubscription;
use reprise_core::{BoxFuture, BusError, Delivery, EventBus, OutgoingMessage, Subscription};

use crate::clock::Sleep;
use crate::executor::{NodeIndex, Shared};
use crate::network::Link;
use crate::trace::{Tag, hash_str};

/// The bus's steady-state profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusOptions {
    /// One-way latency of publish and commit requests, uniform in the range.
    pub latency_min_us: u64,
    pub latency_max_us: u64,
    /// How long a producer or committer waits for a response that never comes.
    pub timeout_ms: u64,
    /// How often a consumer cut off from the bus retries its fetch.
    pub partitioned_poll_ms: u64,
}

impl Default for BusOptions {
    fn default() -> Self {
        BusOptions {
            latency_min_us: 100,
            latency_max_us: 1_000,
            timeout_ms: 500,
            partitioned_poll_ms: 50,
        }
    }
}

impl BusOptions {
    /// # Errors
    /// A description of the first invalid field.
    pub fn validate(&self) -> Result<(), String> {
        if self.latency_min_us > self.latency_max_us {
            return Err(format!(
                "latency_min_us {} > latency_max_us {}",
                self.latency_min_us, self.latency_max_us
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms * 1000 <= self.latency_max_us * 2 {
            return Err(format!(
                "timeout_ms {} must exceed a round trip at maximum latency",
                self.timeout_ms
            ));
        }
        if self.partitioned_poll_ms == 0 {
            return Err("partitioned_poll_ms must be positive".into());
        }
        Ok(())
    }
}

/// A node's handle on the simulated bus.
pub(crate) struct SimEventBus {
    shared: Arc<Shared>,
    node: NodeIndex,
}

impl SimEventBus {
    pub(crate) fn new(shared: Arc<Shared>, node: NodeIndex) -> Self {
        SimEventBus { shared, node }
    }
}

fn trace_bus(
    shared: &Shared,
    node: NodeIndex,
    op: u64,
    outcome: &'static str,
    text: impl FnOnce() -> String,
) {
    shared
        .kernel
        .lock()
        .record(Tag::Bus, Some(node), op, hash_str(outcome), text);
}

const OP_PUBLISH: u64 = 1;
const OP_SUBSCRIBE: u64 = 2;
const OP_DELIVER: u64 = 3;
const OP_COMMIT: u64 = 4;

impl EventBus for SimEventBus {
    fn publish(&self, messages: Vec<OutgoingMessage>) -> BoxFuture<'static, Result<(), BusError>> {
        let shared = Arc::clone(&self.shared);
        let node = self.node;
        Box::pin(async move {
            let (latency, timeout, request_lost, refused, ack_lost) = {
                let mut k = shared.kernel.lock();
                k.stats.bus_publishes += 1;
                let options = k.env.bus;
                let faults = k.bus_faults(node);
                let latency = k.uniform(options.latency_min_us, options.latency_max_us) * 1000;
                let request_lost = k.network.request_blocked(node, Link::Bus);
                let refused = !request_lost && k.chance(faults.publish_error_probability);
                let ack_lost =
                    !request_lost && !refused && k.chance(faults.publish_ack_lost_probability);
                let count = messages.len();
                if refused {
                    k.fault(
                        Some(node),
                        "bus.publish_error",
                        format!("{count} message(s) refused"),
                    );
                }
                if ack_lost {
                    k.fault(
                        Some(node),
                        "bus.publish_ack_lost",
                        format!("{count} message(s) applied, acknowledgement lost"),
                    );
                }
                (
                    latency,
                    options.timeout_ms * 1_000_000,
                    request_lost,
                    refused,
                    ack_lost,
                )
            };
            Sleep::after_nanos(&shared, latency).await;
            if request_lost {
                Sleep::after_nanos(&shared, timeout.saturating_sub(latency)).await;
                trace_bus(&shared, node, OP_PUBLISH, "timeout", || {
                    "publish -> timeout (request lost)".into()
                });
                return Err(BusError::Timeout);
            }
            if refused {
                trace_bus(&shared, node, OP_PUBLISH, "transient", || {
                    "publish -> transient error".into()
                });
                return Err(BusError::Transient(
                    "simulated: the broker refused the publish".into(),
                ));
            }
            let count = messages.len() as u64;
            shared.bus.publish_owned(messages);
            if ack_lost
                || shared
                    .kernel
                    .lock()
                    .network
                    .response_blocked(node, Link::Bus)
            {
                Sleep::after_nanos(&shared, timeout.saturating_sub(latency)).await;
                trace_bus(&shared, node, OP_PUBLISH, "timeout-applied", || {
                    format!("publish of {count} -> timeout (applied)")
                });
                return Err(BusError::Timeout);
            }
            Sleep::after_nanos(&shared, latency).await;
            trace_bus(&shared, node, OP_PUBLISH, "ok", || {
                format!("publish of {count} -> ok")
            });
            Ok(())
        })
    }

    fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
    ) -> BoxFuture<'static, Result<Box<dyn Subscription>, BusError>> {
        let shared = Arc::clone(&self.shared);
        let node = self.node;
        let group = group.to_owned();
        let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        Box::pin(async move {
            let (latency, timeout, cut) = {
                let k = shared.kernel.lock();
                let options = k.env.bus;
                (
                    options.latency_min_us * 1000,
                    options.timeout_ms * 1_000_000,
                    k.network.cut(node, Link::Bus),
                )
            };
            if cut {
                Sleep::after_nanos(&shared, timeout).await;
                trace_bus(&shared, node, OP_SUBSCRIBE, "timeout", || {
                    format!("subscribe {group} -> timeout")
                });
                return Err(BusError::Timeout);
            }
            Sleep::after_nanos(&shared, latency).await;
            let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
            let inner = shared.bus.subscribe_now(&group, &refs);
            let epoch = shared.kernel.lock().nodes[usize::from(node)].rebalance_epoch;
            trace_bus(&shared, node, OP_SUBSCRIBE, "ok", || {
                format!("subscribe {group} {topics:?} -> ok")
            });
            let subscription: Box<dyn Subscription> = Box::new(SimSubscription {
                shared,
                node,
                group,
                topics,
                inner,
                held: VecDeque::new(),
                epoch,
            });
            Ok(subscription)
        })
    }
}

/// A consumer-group member behind the node's link.
struct SimSubscription {
    shared: Arc<Shared>,
    node: NodeIndex,
    group: String,
    topics: Vec<String>,
    inner: InMemorySubscription,
    /// Deliveries held back (duplicates to hand over again, reordered ones, ones that
    /// arrived while the link was cut).
    held: VecDeque<Delivery>,
    /// The node's rebalance epoch this member joined at.
    epoch: u64,
}

impl SimSubscription {
    /// Leaves and rejoins the group if a rebalance fault hit the node since we joined.
    fn rejoin_if_rebalanced(&mut self) {
        let epoch = self.shared.kernel.lock().nodes[usize::from(self.node)].rebalance_epoch;
        if epoch == self.epoch {
            return;
        }
        self.epoch = epoch;
        self.held.clear();
        let refs: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        // Join with a new member first, then let the old one leave (on assignment): the
        // group rebalances twice, as a real rejoin does.
        self.inner = self.shared.bus.subscribe_now(&self.group, &refs);
        let group = self.group.clone();
        trace_bus(&self.shared, self.node, OP_SUBSCRIBE, "rejoin", || {
            format!("rejoined {group} after rebalance")
        });
    }

    fn trace_delivery(&self, delivery: &Delivery) {
        let mut k = self.shared.kernel.lock();
        k.stats.bus_deliveries += 1;
        let coordinates =
            (u64::from(delivery.partition) << 48) ^ delivery.offset ^ hash_str(&delivery.topic);
        k.record(Tag::Bus, Some(self.node), OP_DELIVER, coordinates, || {
            format!("deliver {}", delivery.coordinates())
        });
    }
}

impl Subscription for SimSubscription {
    fn next(&mut self) -> BoxFuture<'_, Result<Delivery, BusError>> {
        Box::pin(async move {
            loop {
                self.rejoin_if_rebalanced();
                let (cut, poll_nanos) = {
                    let k = self.shared.kernel.lock();
                    (
                        k.network.cut(self.node, Link::Bus),
                        k.env.bus.partitioned_poll_ms * 1_000_000,
                    )
                };
                if cut {
                    Sleep::after_nanos(&self.shared, poll_nanos).await;
                    continue;
                }
                // Held deliveries already went through the fault draws: a duplicate is
                // not duplicated again (with probability 1 that would never end).
                if let Some(delivery) = self.held.pop_front() {
                    self.trace_delivery(&delivery);
                    return Ok(delivery);
                }
                let mut delivery = Subscription::next(&mut self.inner).await?;
                let (duplicate, reorder, delay) = {
                    let mut k = self.shared.kernel.lock();
                    let faults = k.bus_faults(self.node);
                    let duplicate = k.chance(faults.duplicate_probability);
                    let reorder = k.chance(faults.reorder_probability);
                    let delay = k.uniform(0, faults.delivery_delay_max_ms * 1_000_000);
                    if duplicate {
                        k.fault(Some(self.node), "bus.duplicate", delivery.coordinates());
                    }
                    (duplicate, reorder, delay)
                };
                if duplicate {
                    self.held.push_back(delivery.clone());
                }
                if reorder {
                    if let Some(later) = self.inner.try_next() {
                        let held = std::mem::replace(&mut delivery, later);
                        let detail =
                            format!("{} before {}", delivery.coordinates(), held.coordinates());
                        self.held.push_front(held);
                        self.shared
                            .kernel
                            .lock()
                            .fault(Some(self.node), "bus.reorder", detail);
                    }
                }
                if delay > 0 {
                    Sleep::after_nanos(&self.shared, delay).await;
                }
                if self.shared.kernel.lock().network.cut(self.node, Link::Bus) {
                    // The link went down while the delivery was in flight: hand it over
                    // once it heals.
                    self.held.push_front(delivery);
                    continue;
                }
                self.trace_delivery(&delivery);
                return Ok(delivery);
            }
        })
    }

    fn ack(&mut self, delivery: &Delivery) {
        Subscription::ack(&mut self.inner, delivery);
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            let (latency, timeout, request_lost, lost) = {
                let mut k = self.shared.kernel.lock();
                let options = k.env.bus;
                let faults = k.bus_faults(self.node);
                let latency = k.uniform(options.latency_min_us, options.latency_max_us) * 1000;
                let request_lost = k.network.request_blocked(self.node, Link::Bus);
                let lost = !request_lost && k.chance(faults.commit_lost_probability);
                if lost {
                    k.fault(
                        Some(self.node),
                        "bus.commit_lost",
                        format!("group {}", self.group),
                    );
                }
                (latency, options.timeout_ms * 1_000_000, request_lost, lost)
            };
            Sleep::after_nanos(&self.shared, latency).await;
            if request_lost {
                Sleep::after_nanos(&self.shared, timeout.saturating_sub(latency)).await;
                trace_bus(&self.shared, self.node, OP_COMMIT, "timeout", || {
                    "commit -> timeout (request lost)".into()
                });
                return Err(BusError::Timeout);
            }
            if !lost {
                self.inner.commit_now()?;
            }
            if self
                .shared
                .kernel
                .lock()
                .network
                .response_blocked(self.node, Link::Bus)
            {
                Sleep::after_nanos(&self.shared, timeout.saturating_sub(latency)).await;
                trace_bus(
                    &self.shared,
                    self.node,
                    OP_COMMIT,
                    "timeout-applied",
                    || "commit -> timeout (applied)".into(),
                );
                return Err(BusError::Timeout);
            }
            Sleep::after_nanos(&self.shared, latency).await;
            trace_bus(&self.shared, self.node, OP_COMMIT, "ok", || {
                "commit -> ok".into()
            });
            Ok(())
        })
    }
}
