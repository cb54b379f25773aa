//! Leadership: at most one holder of a named lease at a time — as far as the holder can
//! tell when it asks.
//!
//! Some work must be done by one instance of a service at a time even when many run: the
//! relay that publishes the store's log to the bus is the example (two publishers racing
//! to the broker would let a key's later message overtake its earlier one). The relay asks
//! a [`Lease`] for [`Leadership`] and [`Leadership::confirm`]s it before each step only the
//! leader may take.
//!
//! What no lease can promise is that the previous holder *knows* it lost: a leader whose
//! connection died while a publish was in flight finishes that publish before its next
//! `confirm` fails. For a moment there are two leaders. Code under a lease must therefore
//! stay correct with two leaders for a bounded window (the relay is: a second publisher
//! yields duplicates, which consumers deduplicate by event id). The simulator's lease
//! opens that window on purpose; the PostgreSQL one (an advisory lock on a dedicated
//! session) has it whenever a session dies.
//!
//! Dropping a [`Leadership`] without [`release`](Leadership::release) — a crashed task —
//! frees the lease as a dead database session would: possibly a little later, never never.

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::runtime::BoxFuture;

/// Why a lease operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// The lease is no longer held by the caller: stop leading at once.
    #[error("lease lost: {0}")]
    Lost(String),
    /// The lease service could not answer now (network, database restart): the caller may
    /// try again after a pause. For [`Leadership::confirm`] it means "not proven": a
    /// careful leader stops leading until it is.
    #[error("lease service unavailable: {0}")]
    Transient(String),
}

/// A named lease that service instances compete for. One value per contender (for
/// PostgreSQL: one dedicated session); two values with the same name are two contenders.
pub trait Lease: Send + Sync {
    /// The lease's name (what it protects).
    fn name(&self) -> &str;

    /// Tries once to take the lease. `Ok(None)`: another contender holds it.
    fn try_acquire(&self) -> BoxFuture<'static, Result<Option<Box<dyn Leadership>>, LeaseError>>;
}

/// The lease, held. See the module docs for what holding guarantees.
pub trait Leadership: Send {
    /// Proves that the lease is still held *now*.
    ///
    /// # Errors
    /// [`LeaseError::Lost`]: the lease is gone (this leadership is dead; drop it).
    /// [`LeaseError::Transient`]: not proven; stop leading until a later confirm succeeds.
    fn confirm(&mut self) -> BoxFuture<'_, Result<(), LeaseError>>;

    /// Gives the lease up (graceful shutdown, or after a loss).
    fn release(self: Box<Self>) -> BoxFuture<'static, ()>;
}

impl fmt::Debug for dyn Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Leadership")
    }
}

impl fmt::Debug for dyn Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease").field("name", &self.name()).finish()
    }
}

/// Leases in one process's memory: for unit tests and single-process deployments. Every
/// [`InMemoryLease::contender`] of one table competes for the same names.
#[derive(Clone, Debug, Default)]
pub struct InMemoryLeases {
    /// Holder token per lease name (`BTreeMap`: deterministic iteration).
    held: Arc<Mutex<std::collections::BTreeMap<String, u64>>>,
    tokens: Arc<std::sync::atomic::AtomicU64>,
}

impl InMemoryLeases {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A new contender for lease `name`.
    #[must_use]
    pub fn contender(&self, name: &str) -> InMemoryLease {
        InMemoryLease {
            name: name.into(),
            leases: self.clone(),
        }
    }

    /// Takes `name` away from its holder (as an expired lease or a killed session would):
    /// the holder's next confirm reports [`LeaseError::Lost`].
    pub fn revoke(&self, name: &str) {
        self.held.lock().remove(name);
    }
}

/// One contender of an [`InMemoryLeases`] table.
#[derive(Clone, Debug)]
pub struct InMemoryLease {
    name: Arc<str>,
    leases: InMemoryLeases,
}

impl Lease for InMemoryLease {
    fn name(&self) -> &str {
        &self.name
    }

    fn try_acquire(&self) -> BoxFuture<'static, Result<Option<Box<dyn Leadership>>, LeaseError>> {
        let mut held = self.leases.held.lock();
        let result: Option<Box<dyn Leadership>> = if held.contains_key(&*self.name) {
            None
        } else {
            let token = self
                .leases
                .tokens
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            held.insert(self.name.to_string(), token);
            Some(Box::new(InMemoryLeadership {
                name: Arc::clone(&self.name),
                token,
                leases: self.leases.clone(),
            }))
        };
        Box::pin(std::future::ready(Ok(result)))
    }
}

struct InMemoryLeadership {
    name: Arc<str>,
    token: u64,
    leases: InMemoryLeases,
}

impl InMemoryLeadership {
    fn holds(&self) -> bool {
        self.leases.held.lock().get(&*self.name) == Some(&self.token)
    }
}

impl Leadership for InMemoryLeadership {
    fn confirm(&mut self) -> BoxFuture<'_, Result<(), LeaseError>> {
        let result = if self.holds() {
            Ok(())
        } else {
            Err(LeaseError::Lost(format!(
                "{} is held by another",
                self.name
            )))
        };
        Box::pin(std::future::ready(result))
    }

    fn release(self: Box<Self>) -> BoxFuture<'static, ()> {
        drop(self);
        Box::pin(std::future::ready(()))
    }
}

impl Drop for InMemoryLeadership {
    fn drop(&mut self) {
        let mut held = self.leases.held.lock();
        if held.get(&*self.name) == Some(&self.token) {
            held.remove(&*self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_memory_lease_passes_the_conformance_suite() {
        let leases = InMemoryLeases::new();
        let contender = || -> Arc<dyn Lease> { Arc::new(leases.contender("relay")) };
        futures::executor::block_on(crate::conformance::lease_suite(&contender, || {
            std::future::ready(())
        }))
        .unwrap();
    }

    #[test]
    fn a_revoked_holder_learns_it_lost_and_others_may_take_over() {
        let leases = InMemoryLeases::new();
        let a = leases.contender("relay");
        let b = leases.contender("relay");
        futures::executor::block_on(async {
            let mut held = a.try_acquire().await.unwrap().unwrap();
            leases.revoke("relay");
            assert!(matches!(held.confirm().await, Err(LeaseError::Lost(_))));
            let mut taken = b.try_acquire().await.unwrap().unwrap();
            // The stale holder's drop must not free the new holder's lease.
            drop(held);
            taken.confirm().await.unwrap();
            assert!(a.try_acquire().await.unwrap().is_none());
        });
    }
}
