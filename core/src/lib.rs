//! # reprise-core
//!
//! The pure heart of Reprise: reducers, effects as data, the [`Store`] that runs them,
//! event-sourced [aggregates](aggregate) and [sagas](saga), and the environment traits
//! through which every source of nondeterminism (time, randomness, spawning, storage,
//! messaging) must pass.
//!
//! This crate performs no I/O of its own and depends on no runtime: the simulator
//! (`reprise-sim`) and the production adapters (`reprise-tokio`, `reprise-postgres`, …)
//! implement its traits. See `docs/ARCHITECTURE.md` for the map.

pub mod aggregate;
pub mod buggify;
pub mod conformance;
pub mod coverage;
pub mod effect;
pub mod event;
pub mod event_bus;
pub mod event_store;
pub mod instrument;
mod interpret;
pub mod lease;
pub mod memory;
pub mod reducer;
pub mod repository;
pub mod resilience;
pub mod router;
pub mod runtime;
pub mod saga;
pub mod store;
pub mod testing;
pub mod time;
pub mod tracker;

pub use aggregate::{
    Aggregate, AggregateAction, AggregateReducer, AggregateRoot, CommandError, Repository,
};
pub use buggify::buggify;
pub use coverage::Situation;
pub use effect::{Effect, EffectDescription, EffectId, Effects};
pub use event::{
    DecodeError, Event, EventId, Metadata, NewEvent, Payload, RecordedEvent, StreamId, Upcasters,
};
pub use event_bus::{BusError, Delivery, EventBus, Headers, OutgoingMessage, Subscription};
pub use event_store::{
    AppendBatch, AppendReceipt, EventStore, ExpectedVersion, Snapshot, SnapshotPolicy, StoreError,
};
pub use interpret::Dependencies;
pub use lease::{InMemoryLease, InMemoryLeases, Leadership, Lease, LeaseError};
pub use memory::{InMemoryEventBus, InMemoryEventStore};
pub use reducer::{Combine, Reducer, Scope, combine, from_fn, scope};
pub use resilience::{
    CallError, ClassifiedError, Classify, DeadLetterQueue, DependencyPolicy, ErrorClass,
    Resilience, RetryPolicy,
};
pub use router::{DispatchError, Dispatcher, Router};
pub use runtime::{BoxFuture, Clock, Entropy, Runtime, SharedRuntime, Spawner};
pub use saga::{Reaction, Saga, SagaAction, SagaReducer, SagaState};
pub use store::{SendHandle, ShutdownError, Store, StoreBuilder};
pub use time::Timestamp;

pub use smallvec;

/// The README's example is compiled and run as a doc test, so it cannot rot.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
