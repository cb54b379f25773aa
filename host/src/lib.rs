//! # reprise-host
//!
//! The machinery between core's traits and a running service: what every event-driven
//! service needs and what is easiest to get subtly wrong. It is written only against
//! `reprise-core`'s traits (`Runtime`, `EventStore`, `EventBus`, `Lease`), depends on
//! neither the simulator nor any adapter, and ships no deliberately wrong path behind a switch: the simulator
//! runs exactly this code, and so does production.
//!
//! | module | concept |
//! |---|---|
//! | [`platform`] | [`Platform`]: the runtime, store, bus, resilience and notes a service instance gets |
//! | [`consume`] | the consume loop: next → handle → ack → contiguous commit; a typed answer to receive errors |
//! | [`inbox`] | a consumer's durable record of handled messages, appended atomically with the handler's effect |
//! | [`handler`] | [`CommandHandler`]: load–decide–append on core's `Repository`, with the inbox marker in the same batch |
//! | [`commands`] | a saga's commands as bus messages, one topic per target service |
//! | [`saga_host`] | [`SagaHost`]: saga instances recovered from their streams, deadlines re-armed, idle ones evicted |
//! | [`relay`] | the one relay: the store's global log to the bus, one leader per name through a `Lease` |
//! | [`ids`] | event ids as header text |
//!
//! Each risky window carries a BUGGIFY point ([`reprise_core::buggify`]): inert in
//! production, widened at random by the simulator's swarm plans. Their names are the
//! `POINT_*` constants of each module; [`FAULT_POINTS`] lists them all.

pub mod commands;
pub mod consume;
pub mod handler;
pub mod ids;
pub mod inbox;
pub mod platform;
pub mod relay;
pub mod saga_host;

pub use consume::{ConsumerOptions, MessageHandler};
pub use handler::{CommandHandler, Handling};
pub use platform::{Notes, Platform};
pub use relay::{RelayOptions, Route};
pub use saga_host::{SagaHost, SagaHostOptions};

/// Every BUGGIFY point of this crate.
pub const FAULT_POINTS: [&str; 8] = [
    consume::POINT_PAUSE_BEFORE_ACK,
    consume::POINT_RESUBSCRIBE_BEFORE_ACK,
    consume::POINT_SKIP_COMMIT,
    handler::POINT_EVICT_BEFORE_LOAD,
    saga_host::POINT_EVICT_AFTER_DELIVER,
    relay::POINT_PAUSE_BEFORE_PUBLISH,
    relay::POINT_SKIP_CHECKPOINT,
    relay::POINT_PAUSE_BEFORE_CHECKPOINT,
];

/// The situations this crate's code can reach ([`reprise_core::sometimes!`]): scenarios
/// running the host declare them, so a coverage report names those no run reached.
pub const SITUATIONS: [reprise_core::Situation; 3] = [
    handler::DUPLICATE_DEDUPLICATED,
    handler::COMMIT_UNKNOWN_RESOLVED,
    handler::COMMIT_UNKNOWN_WAS_COMMITTED,
];
