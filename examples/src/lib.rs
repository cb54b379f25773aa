//! # reprise-examples
//!
//! Two small features written the way Reprise intends them to be written, and tested the
//! way it intends them to be tested. Copy from here.
//!
//! - [`counter`]: a plain reducer with an injected dependency, an async effect, a delayed
//!   effect and its cancellation.
//! - [`order`]: an event-sourced aggregate (`decide`/`apply`) with typed errors and
//!   checked invariants, run in a `Store` through `AggregateReducer` or request/response
//!   through a `Repository`.
//!
//! The tests in `examples/tests/` drive both with the exhaustive `TestStore`; the
//! programs in `examples/examples/` run them on tokio
//! (`cargo run -p reprise-examples --example counter`, `--example order_service`).

pub mod counter;
pub mod order;
