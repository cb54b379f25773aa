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
//!
//! Trace lines name what they touch: a publish every message's topic and key, a delivery
//! its topic, partition, offset and key, a subscription or commit its group. The hash
//! covers those names and a publish's data: payloads and headers (see [`crate::trace`]).

use std::collections::VecDeque;
use std::sync::Arc;

use reprise_core::memory::InMemorySubscription;
use reprise_core::{BoxFuture, BusError, Delivery, EventBus, OutgoingMessage, Subscription};

use crate::clock::Sleep;
use crate::executor::{Draw, NodeIndex, Shared};
use crate::network::Link;
use crate::trace::{Digest, Tag, TraceMode, hash_str, mix};

/// A consumer-group member was rebalanced away while it held deliveries it had not
/// committed yet: the new owner gets them again, and the inbox must absorb the repeats.
pub const REBALANCE_MID_BATCH: reprise_core::Situation = reprise_core::Situation::new(
    "sim.bus.rebalance-mid-batch",
    "a rebalance took partitions from a consumer holding uncommitted deliveries",
);

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

/// Records a bus line: `op` and `subject` (the digest of what it names) in the first
/// field, the outcome in the second.
fn trace_bus(
    shared: &Shared,
    node: NodeIndex,
    op: u64,
    subject: u64,
    outcome: &'static str,
    text: impl FnOnce() -> String,
) {
    shared.kernel.lock().record(
        Tag::Bus,
        Some(node),
        mix(op, subject),
        hash_str(outcome),
        text,
    );
}

/// The topics, keys, payloads and headers of a publish.
fn publish_digest(messages: &[OutgoingMessage]) -> u64 {
    let mut d = Digest::new(u64::from(Tag::Bus as u8));
    for m in messages {
        d.str(&m.topic)
            .str(&m.key)
            .str(m.payload.as_str())
            .u64(m.headers.0.len() as u64);
        for (name, value) in &m.headers.0 {
            d.str(name).str(value);
        }
    }
    d.finish()
}

/// `credits key=account-3, credits key=account-5`.
fn render_messages(messages: &[OutgoingMessage]) -> String {
    let mut out = String::new();
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&m.topic);
        out.push_str(" key=");
        out.push_str(&m.key);
    }
    out
}

/// `credits/2@17 key=account-3`.
fn render_delivery(delivery: &Delivery) -> String {
    format!("{} key={}", delivery.coordinates(), delivery.key)
}

fn group_digest(group: &str, topics: &[String]) -> u64 {
    let mut d = Digest::new(u64::from(Tag::Bus as u8));
    d.str(group);
    for topic in topics {
        d.str(topic);
    }
    d.finish()
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
            let (latency, timeout, request_lost, refused, ack_lost, digest, names) = {
                let mut k = shared.kernel.lock();
                k.stats.bus_publishes += 1;
                let options = k.env.bus;
                let faults = k.bus_faults(node);
                let latency = k.uniform(
                    Draw::Latency.of(node),
                    options.latency_min_us,
                    options.latency_max_us,
                ) * 1000;
                let request_lost = k.network.request_blocked(node, Link::Bus);
                let refused = !request_lost
                    && k.chance(
                        Draw::BusPublishError.of(node),
                        faults.publish_error_probability,
                    );
                let ack_lost = !request_lost
                    && !refused
                    && k.chance(
                        Draw::BusPublishAckLost.of(node),
                        faults.publish_ack_lost_probability,
                    );
                let count = messages.len();
                if refused {
                    k.fault(
                        Some(node),
                        "bus.publish_error",
                        format!("{count} message(s) refused: {}", render_messages(&messages)),
                    );
                }
                if ack_lost {
                    k.fault(
                        Some(node),
                        "bus.publish_ack_lost",
                        format!(
                            "{count} message(s) applied, acknowledgement lost: {}",
                            render_messages(&messages)
                        ),
                    );
                }
                let mode = k.trace.mode();
                let digest = if mode == TraceMode::Off {
                    0
                } else {
                    publish_digest(&messages)
                };
                let names = (mode == TraceMode::Full).then(|| render_messages(&messages));
                (
                    latency,
                    options.timeout_ms * 1_000_000,
                    request_lost,
                    refused,
                    ack_lost,
                    digest,
                    names.unwrap_or_default(),
                )
            };
            Sleep::after_nanos(&shared, latency).await;
            if request_lost {
                Sleep::after_nanos(&shared, timeout.saturating_sub(latency)).await;
                trace_bus(&shared, node, OP_PUBLISH, digest, "timeout", || {
                    format!("publish [{names}] -> timeout (request lost)")
                });
                return Err(BusError::Timeout);
            }
            if refused {
                trace_bus(&shared, node, OP_PUBLISH, digest, "transient", || {
                    format!("publish [{names}] -> transient error")
                });
                return Err(BusError::Transient(
                    "simulated: the broker refused the publish".into(),
                ));
            }
            shared.bus.publish_owned(messages);
            if ack_lost
                || shared
                    .kernel
                    .lock()
                    .network
                    .response_blocked(node, Link::Bus)
            {
                Sleep::after_nanos(&shared, timeout.saturating_sub(latency)).await;
                trace_bus(&shared, node, OP_PUBLISH, digest, "timeout-applied", || {
                    format!("publish [{names}] -> timeout (applied)")
                });
                return Err(BusError::Timeout);
            }
            Sleep::after_nanos(&shared, latency).await;
            trace_bus(&shared, node, OP_PUBLISH, digest, "ok", || {
                format!("publish [{names}] -> ok")
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
            let digest = group_digest(&group, &topics);
            if cut {
                Sleep::after_nanos(&shared, timeout).await;
                trace_bus(&shared, node, OP_SUBSCRIBE, digest, "timeout", || {
                    format!("subscribe {group} {topics:?} -> timeout")
                });
                return Err(BusError::Timeout);
            }
            Sleep::after_nanos(&shared, latency).await;
            let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
            let inner = shared.bus.subscribe_now(&group, &refs);
            let epoch = shared.kernel.lock().nodes[usize::from(node)].rebalance_epoch;
            trace_bus(&shared, node, OP_SUBSCRIBE, digest, "ok", || {
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
                uncommitted: 0,
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
    /// Deliveries handed over since the last commit that reached the bus: a rebalance now
    /// hands them to another member (coverage only).
    uncommitted: u64,
}

impl SimSubscription {
    /// Leaves and rejoins the group if a rebalance fault hit the node since we joined.
    fn rejoin_if_rebalanced(&mut self) {
        let epoch = self.shared.kernel.lock().nodes[usize::from(self.node)].rebalance_epoch;
        if epoch == self.epoch {
            return;
        }
        self.epoch = epoch;
        reprise_core::sometimes!(REBALANCE_MID_BATCH.name, self.uncommitted > 0);
        self.uncommitted = 0;
        self.held.clear();
        let refs: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        // Join with a new member first, then let the old one leave (on assignment): the
        // group rebalances twice, as a real rejoin does.
        self.inner = self.shared.bus.subscribe_now(&self.group, &refs);
        let group = self.group.clone();
        let digest = group_digest(&group, &self.topics);
        trace_bus(
            &self.shared,
            self.node,
            OP_SUBSCRIBE,
            digest,
            "rejoin",
            || format!("rejoined {group} after rebalance"),
        );
    }

    fn trace_delivery(&mut self, delivery: &Delivery) {
        self.uncommitted += 1;
        let mut k = self.shared.kernel.lock();
        k.stats.bus_deliveries += 1;
        let coordinates = Digest::new(u64::from(Tag::Bus as u8))
            .str(&delivery.topic)
            .u64(u64::from(delivery.partition))
            .u64(delivery.offset)
            .str(&delivery.key)
            .finish();
        k.record(Tag::Bus, Some(self.node), OP_DELIVER, coordinates, || {
            format!("deliver {}", render_delivery(delivery))
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
                    let duplicate = k.chance(
                        Draw::BusDuplicate.of(self.node),
                        faults.duplicate_probability,
                    );
                    let reorder =
                        k.chance(Draw::BusReorder.of(self.node), faults.reorder_probability);
                    let delay = k.uniform(
                        Draw::BusDelay.of(self.node),
                        0,
                        faults.delivery_delay_max_ms * 1_000_000,
                    );
                    if duplicate {
                        k.fault(Some(self.node), "bus.duplicate", render_delivery(&delivery));
                    }
                    (duplicate, reorder, delay)
                };
                if duplicate {
                    self.held.push_back(delivery.clone());
                }
                if reorder {
                    if let Some(later) = self.inner.try_next() {
                        let held = std::mem::replace(&mut delivery, later);
                        let detail = format!(
                            "{} before {}",
                            render_delivery(&delivery),
                            render_delivery(&held)
                        );
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
                // The rebalance came while the consumer was still handling what it had
                // been given (it rejoins only at its next receive).
                reprise_core::sometimes!(
                    REBALANCE_MID_BATCH.name,
                    self.uncommitted > 0
                        && k.nodes[usize::from(self.node)].rebalance_epoch != self.epoch
                );
                let options = k.env.bus;
                let faults = k.bus_faults(self.node);
                let latency = k.uniform(
                    Draw::Latency.of(self.node),
                    options.latency_min_us,
                    options.latency_max_us,
                ) * 1000;
                let request_lost = k.network.request_blocked(self.node, Link::Bus);
                let lost = !request_lost
                    && k.chance(
                        Draw::BusCommitLost.of(self.node),
                        faults.commit_lost_probability,
                    );
                if lost {
                    k.fault(
                        Some(self.node),
                        "bus.commit_lost",
                        format!("group {}", self.group),
                    );
                }
                (latency, options.timeout_ms * 1_000_000, request_lost, lost)
            };
            let digest = group_digest(&self.group, &[]);
            Sleep::after_nanos(&self.shared, latency).await;
            if request_lost {
                Sleep::after_nanos(&self.shared, timeout.saturating_sub(latency)).await;
                trace_bus(
                    &self.shared,
                    self.node,
                    OP_COMMIT,
                    digest,
                    "timeout",
                    || format!("commit {} -> timeout (request lost)", self.group),
                );
                return Err(BusError::Timeout);
            }
            if !lost {
                self.inner.commit_now()?;
                self.uncommitted = 0;
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
                    digest,
                    "timeout-applied",
                    || format!("commit {} -> timeout (applied)", self.group),
                );
                return Err(BusError::Timeout);
            }
            Sleep::after_nanos(&self.shared, latency).await;
            trace_bus(&self.shared, self.node, OP_COMMIT, digest, "ok", || {
                format!("commit {} -> ok", self.group)
            });
            Ok(())
        })
    }
}
