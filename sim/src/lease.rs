//! The simulated lease: a table of named leases (durable across node crashes: it lives
//! "in the database", like the event store) reached through each node's link to the
//! store, with latency, partitions and the two faults every lease has in production.
//!
//! Each contender ([`crate::NodeContext::lease`]) is one database session. Every operation
//! takes the store's path and its latency and timeout ([`crate::StoreOptions`]):
//! 1. the request travels; an outbound partition loses it — nothing is applied and the
//!    caller gets [`LeaseError::Transient`] after the timeout;
//! 2. the table answers (grants, refuses, confirms, frees);
//! 3. the response travels back; an inbound partition loses it — a grant **is** applied
//!    but the caller gets `Transient` after the timeout and the orphaned grant is freed
//!    like a dead session's. Never a false `Ok`.
//!
//! **Dead sessions.** A leadership dropped without [`Leadership::release`] — its task
//! ended or its node crashed (a crash drops the node's tasks, and this table also marks
//! every lease the node held) — keeps the lease for
//! [`LeaseOptions::dead_holder_release_ms`], the time the database takes to notice a
//! dead session, then frees it. A leadership of a crashed incarnation reports
//! [`LeaseError::Lost`].
//!
//! **Loss and zombies** ([`crate::Fault::Lease`]). At each [`Leadership::confirm`] of a
//! targeted node's leadership while the spec's window is open, a `loss_probability` draw
//! may take the lease away (`lease.loss`): the table frees it at once — another contender
//! may acquire it on its next try — but the old holder does not know yet. For a duration
//! drawn in `0..=zombie_max_ms` of simulated time its confirms keep succeeding (each one a
//! `lease.zombie_confirm` fault: the trace shows the two-leader window), then they report
//! `Lost`. A zero draw reports `Lost` at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use reprise_core::{BoxFuture, Leadership, Lease, LeaseError};

use crate::clock::Sleep;
use crate::executor::{Draw, Kernel, NodeIndex, Shared};
use crate::network::Link;
use crate::trace::{Tag, hash_str};

/// A zombie holder's confirm succeeded while another contender held the lease: two
/// leaders at once, the window the relay's duplicates come from.
pub const TWO_LEADERS: reprise_core::Situation = reprise_core::Situation::new(
    "sim.lease.two-leaders",
    "a zombie holder confirmed its lease while another contender held it (two leaders)",
);

const MILLI: u64 = 1_000_000;

/// The lease table's steady-state profile. Latency and timeouts are the event store's
/// ([`crate::StoreOptions`]): the table lives in the same database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseOptions {
    /// How long a lease stays held after its holder's session died without releasing it
    /// (a dropped leadership, a crashed node, a grant whose response was lost).
    pub dead_holder_release_ms: u64,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions {
            dead_holder_release_ms: 100,
        }
    }
}

/// Who holds a lease in the table.
#[derive(Clone, Copy, Debug)]
struct Holder {
    token: u64,
    node: NodeIndex,
    /// Set once the holder's session died: the lease is free from then on.
    freed_at: Option<u64>,
}

/// The durable lease table: holder per lease name (`BTreeMap`: deterministic iteration).
#[derive(Debug, Default)]
pub(crate) struct LeaseTable {
    held: BTreeMap<Arc<str>, Holder>,
    next_token: u64,
}

const OP_ACQUIRE: u64 = 1;
const OP_CONFIRM: u64 = 2;
const OP_RELEASE: u64 = 3;
const OP_FREED: u64 = 4;

impl Kernel {
    fn trace_lease(
        &mut self,
        node: Option<NodeIndex>,
        name: &str,
        op: u64,
        outcome: &'static str,
        text: impl FnOnce() -> String,
    ) {
        self.record(
            Tag::Lease,
            node,
            hash_str(name) ^ op,
            hash_str(outcome),
            text,
        );
    }

    /// The holder of `name` now, if any; frees (and traces) a dead holder whose session
    /// has expired.
    fn lease_holder(&mut self, name: &str) -> Option<Holder> {
        let holder = *self.leases.held.get(name)?;
        match holder.freed_at {
            Some(at) if at <= self.now => {
                self.leases.held.remove(name);
                self.trace_lease(None, name, OP_FREED, "expired", || {
                    format!("lease {name} freed: its dead holder's session expired")
                });
                None
            }
            _ => Some(holder),
        }
    }

    /// Whether the lease is held by the live session `token`.
    fn holds_lease(&mut self, name: &str, token: u64) -> bool {
        self.lease_holder(name)
            .is_some_and(|h| h.token == token && h.freed_at.is_none())
    }

    /// The session `token` died: its lease, if it still holds it, is freed after the dead
    /// holder delay.
    fn lease_session_died(&mut self, name: &str, token: u64, why: &'static str) {
        let delay_ms = self.env.lease.dead_holder_release_ms;
        let now = self.now;
        let Some(holder) = self.leases.held.get_mut(name) else {
            return;
        };
        if holder.token != token || holder.freed_at.is_some() {
            return;
        }
        let node = holder.node;
        if delay_ms == 0 {
            self.leases.held.remove(name);
        } else {
            holder.freed_at = Some(now + delay_ms * MILLI);
        }
        self.trace_lease(Some(node), name, OP_FREED, why, || {
            format!("lease {name}: {why}; freed in {delay_ms}ms")
        });
    }

    /// Marks every lease `node` holds as held by a dead session (the node crashed).
    pub(crate) fn leases_of_crashed_node(&mut self, node: NodeIndex) {
        let held: Vec<(Arc<str>, u64)> = self
            .leases
            .held
            .iter()
            .filter(|(_, h)| h.node == node && h.freed_at.is_none())
            .map(|(name, h)| (Arc::clone(name), h.token))
            .collect();
        for (name, token) in held {
            self.lease_session_died(&name, token, "its holder's node crashed");
        }
    }
}

/// The network part of one lease operation, drawn when it starts.
#[derive(Clone, Copy, Debug)]
struct Trip {
    out_nanos: u64,
    back_nanos: u64,
    timeout_nanos: u64,
    request_lost: bool,
}

impl Trip {
    fn draw(shared: &Shared, node: NodeIndex) -> Trip {
        let mut k = shared.kernel.lock();
        k.stats.lease_ops += 1;
        let options = k.env.store;
        let out_nanos = k.uniform(
            Draw::Latency.of(node),
            options.latency_min_us,
            options.latency_max_us,
        ) * 1000;
        let back_nanos = k.uniform(
            Draw::Latency.of(node),
            options.latency_min_us,
            options.latency_max_us,
        ) * 1000;
        Trip {
            out_nanos,
            back_nanos,
            timeout_nanos: options.timeout_ms * MILLI,
            request_lost: k.network.request_blocked(node, Link::Store),
        }
    }

    /// Waits out the caller's timeout after the request (or the response) was lost.
    async fn time_out(&self, shared: &Arc<Shared>) {
        Sleep::after_nanos(shared, self.timeout_nanos.saturating_sub(self.out_nanos)).await;
    }
}

fn response_lost(shared: &Shared, node: NodeIndex) -> bool {
    shared
        .kernel
        .lock()
        .network
        .response_blocked(node, Link::Store)
}

fn transient(name: &str, op: &str, what: &str) -> LeaseError {
    LeaseError::Transient(format!("simulated: lease {name} {op} timed out ({what})"))
}

/// One contender (one database session) of a node for the lease `name`.
pub(crate) struct SimLease {
    shared: Arc<Shared>,
    node: NodeIndex,
    incarnation: u32,
    name: Arc<str>,
}

impl SimLease {
    pub(crate) fn new(shared: Arc<Shared>, node: NodeIndex, incarnation: u32, name: &str) -> Self {
        SimLease {
            shared,
            node,
            incarnation,
            name: Arc::from(name),
        }
    }
}

impl Lease for SimLease {
    fn name(&self) -> &str {
        &self.name
    }

    fn try_acquire(&self) -> BoxFuture<'static, Result<Option<Box<dyn Leadership>>, LeaseError>> {
        let shared = Arc::clone(&self.shared);
        let (node, incarnation, name) = (self.node, self.incarnation, Arc::clone(&self.name));
        let trip = Trip::draw(&shared, node);
        Box::pin(async move {
            Sleep::after_nanos(&shared, trip.out_nanos).await;
            if trip.request_lost {
                trip.time_out(&shared).await;
                shared.kernel.lock().trace_lease(
                    Some(node),
                    &name,
                    OP_ACQUIRE,
                    "timeout (request lost)",
                    || format!("lease {name} acquire -> timeout (request lost)"),
                );
                return Err(transient(&name, "acquire", "request lost"));
            }
            // At the database.
            let token = {
                let mut k = shared.kernel.lock();
                if k.nodes[usize::from(node)].incarnation != incarnation {
                    // A handle of a crashed incarnation: its session died with it.
                    k.trace_lease(Some(node), &name, OP_ACQUIRE, "dead session", || {
                        format!("lease {name} acquire -> refused (its node crashed since)")
                    });
                    return Err(LeaseError::Transient(format!(
                        "simulated: lease {name} acquire from a crashed incarnation"
                    )));
                }
                if k.lease_holder(&name).is_some() {
                    None
                } else {
                    let token = k.leases.next_token;
                    k.leases.next_token += 1;
                    k.leases.held.insert(
                        Arc::clone(&name),
                        Holder {
                            token,
                            node,
                            freed_at: None,
                        },
                    );
                    Some(token)
                }
            };
            // Made at once, so that a caller dropped from here on frees the grant.
            let leadership = token.map(|token| SimLeadership {
                shared: Arc::clone(&shared),
                node,
                incarnation,
                name: Arc::clone(&name),
                token,
                zombie: None,
                released: false,
            });
            if response_lost(&shared, node) {
                trip.time_out(&shared).await;
                let outcome = if leadership.is_some() {
                    "timeout (granted, response lost)"
                } else {
                    "timeout (response lost)"
                };
                shared
                    .kernel
                    .lock()
                    .trace_lease(Some(node), &name, OP_ACQUIRE, outcome, || {
                        format!("lease {name} acquire -> {outcome}")
                    });
                if let Some(mut orphan) = leadership {
                    // Nobody will ever use this grant: its session is as good as dead.
                    shared.kernel.lock().lease_session_died(
                        &name,
                        orphan.token,
                        "its grant's response was lost",
                    );
                    orphan.released = true;
                }
                return Err(transient(&name, "acquire", "response lost"));
            }
            Sleep::after_nanos(&shared, trip.back_nanos).await;
            let outcome = if leadership.is_some() {
                "granted"
            } else {
                "held by another"
            };
            shared
                .kernel
                .lock()
                .trace_lease(Some(node), &name, OP_ACQUIRE, outcome, || {
                    format!("lease {name} acquire -> {outcome}")
                });
            Ok(leadership.map(|l| Box::new(l) as Box<dyn Leadership>))
        })
    }
}

/// A lease taken away whose holder has not noticed yet.
#[derive(Clone, Copy, Debug)]
struct Zombie {
    since: u64,
    until: u64,
}

/// What the table answers to a confirm.
enum Verdict {
    Held,
    /// Taken away, but the holder is still inside its zombie window.
    Zombie,
    Lost(&'static str),
}

/// A held lease. Dropping it without `release` frees the lease as a dead session would.
struct SimLeadership {
    shared: Arc<Shared>,
    node: NodeIndex,
    incarnation: u32,
    name: Arc<str>,
    token: u64,
    zombie: Option<Zombie>,
    released: bool,
}

impl SimLeadership {
    /// The table's answer to a confirm arriving now (may fire the loss fault).
    fn judge(&mut self, k: &mut Kernel) -> Verdict {
        let (node, name, now) = (self.node, &*self.name, k.now);
        if k.nodes[usize::from(node)].incarnation != self.incarnation {
            return Verdict::Lost("its node crashed");
        }
        if let Some(zombie) = self.zombie {
            if now >= zombie.until {
                return Verdict::Lost("its zombie window is over");
            }
            let (into, window) = (
                (now - zombie.since) / MILLI,
                (zombie.until - zombie.since) / MILLI,
            );
            k.fault(
                Some(node),
                "lease.zombie_confirm",
                format!("{name} confirmed {into}ms into a {window}ms zombie window"),
            );
            // Read without `lease_holder`, which may free an expired holder and trace it.
            reprise_core::sometimes!(
                TWO_LEADERS.name,
                k.leases
                    .held
                    .get(name)
                    .is_some_and(|h| h.token != self.token && h.freed_at.is_none())
            );
            return Verdict::Zombie;
        }
        if !k.holds_lease(name, self.token) {
            return Verdict::Lost("it was freed or is held by another");
        }
        let faults = k.lease_faults(node);
        if !k.chance(Draw::Lease.of(node), faults.loss_probability) {
            return Verdict::Held;
        }
        let window_ms = k.uniform(Draw::Lease.of(node), 0, faults.zombie_max_ms);
        k.leases.held.remove(name);
        k.fault(
            Some(node),
            "lease.loss",
            format!("{name} taken from its holder, which stays confirmed for {window_ms}ms"),
        );
        if window_ms == 0 {
            return Verdict::Lost("it was taken away");
        }
        self.zombie = Some(Zombie {
            since: now,
            until: now + window_ms * MILLI,
        });
        k.fault(
            Some(node),
            "lease.zombie_confirm",
            format!("{name} confirmed 0ms into a {window_ms}ms zombie window"),
        );
        Verdict::Zombie
    }

    fn trace(&self, op: u64, outcome: &'static str) {
        let name = &self.name;
        let text = || match op {
            OP_CONFIRM => format!("lease {name} confirm -> {outcome}"),
            _ => format!("lease {name} release -> {outcome}"),
        };
        self.shared
            .kernel
            .lock()
            .trace_lease(Some(self.node), name, op, outcome, text);
    }
}

impl Leadership for SimLeadership {
    fn confirm(&mut self) -> BoxFuture<'_, Result<(), LeaseError>> {
        Box::pin(async move {
            let trip = Trip::draw(&self.shared, self.node);
            Sleep::after_nanos(&self.shared, trip.out_nanos).await;
            if trip.request_lost {
                trip.time_out(&self.shared).await;
                self.trace(OP_CONFIRM, "timeout (request lost)");
                return Err(transient(&self.name, "confirm", "request lost"));
            }
            let shared = Arc::clone(&self.shared);
            let verdict = self.judge(&mut shared.kernel.lock());
            if response_lost(&self.shared, self.node) {
                trip.time_out(&self.shared).await;
                self.trace(OP_CONFIRM, "timeout (response lost)");
                return Err(transient(&self.name, "confirm", "response lost"));
            }
            Sleep::after_nanos(&self.shared, trip.back_nanos).await;
            match verdict {
                Verdict::Held => {
                    self.trace(OP_CONFIRM, "ok");
                    Ok(())
                }
                Verdict::Zombie => {
                    self.trace(OP_CONFIRM, "ok (zombie: the lease is gone)");
                    Ok(())
                }
                Verdict::Lost(why) => {
                    self.trace(OP_CONFIRM, "lost");
                    Err(LeaseError::Lost(format!("{}: {why}", self.name)))
                }
            }
        })
    }

    fn release(self: Box<Self>) -> BoxFuture<'static, ()> {
        let mut this = self;
        Box::pin(async move {
            let trip = Trip::draw(&this.shared, this.node);
            Sleep::after_nanos(&this.shared, trip.out_nanos).await;
            if trip.request_lost {
                trip.time_out(&this.shared).await;
                this.trace(OP_RELEASE, "timeout (request lost)");
                // The session is abandoned: dropping `this` frees the lease as a dead one.
                return;
            }
            let freed = {
                let mut k = this.shared.kernel.lock();
                let held = k.holds_lease(&this.name, this.token);
                if held {
                    k.leases.held.remove(&*this.name);
                }
                held
            };
            this.released = true;
            this.trace(OP_RELEASE, if freed { "freed" } else { "not held" });
            if response_lost(&this.shared, this.node) {
                trip.time_out(&this.shared).await;
            } else {
                Sleep::after_nanos(&this.shared, trip.back_nanos).await;
            }
        })
    }
}

impl Drop for SimLeadership {
    fn drop(&mut self) {
        if !self.released {
            self.shared.kernel.lock().lease_session_died(
                &self.name,
                self.token,
                "its holder was dropped without release",
            );
        }
    }
}
