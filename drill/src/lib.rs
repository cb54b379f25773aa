//! # reprise-drill
//!
//! Chaos on the real thing. The simulator proves the design under faults it models; a
//! drill runs the production-ready shop (`reprise-shop`) as separate processes on real
//! PostgreSQL and a real Kafka-API broker, under a steady stream of customers, and does to
//! them what production will: `kill -9` of a replica, PostgreSQL stopped with `-m
//! immediate`, the broker killed and restarted, latency, resets, black holes and one-way
//! loss on the network, a payment provider that answers 503, poison on a topic. After the
//! last heal it checks what a customer and an auditor would: every order acknowledged with
//! a `202` exists and reaches a terminal state in time, no payment was captured twice, no
//! acknowledged bus message was lost, stock and money add up — the simulator's invariants,
//! by the same names ([`check`]).
//!
//! ## What runs where (all on loopback, all private to one drill)
//!
//! ```text
//!  drill client ──HTTP──► shop replica 0 ─┐            ┌─► PostgreSQL (private, initdb'd)
//!   (retries with  ──────► shop replica 1 ─┼─► proxies ─┼─► broker (tansu, SQLite storage)
//!    one key)                              │  (faults)  ├─► payment provider (fake, 503 windows)
//!                                          ┘            └─► carrier (fake)
//! ```
//!
//! Every connection from a replica to a dependency crosses a [`proxy::FaultProxy`]; the
//! broker advertises its proxy's address, so the connections the metadata hands out cross
//! it too. The drill's own reads (the checks, the poison producer, readiness) go direct.
//!
//! ## Why private PostgreSQL and broker
//!
//! A crash drill stops the database and kills the broker; the machine's shared ones serve
//! other tests and people. So each drill creates its own PostgreSQL cluster in its
//! directory ([`postgres`]) and its own broker with durable storage ([`broker`]) on ports
//! of its own, and removes them at the end (or keeps the directory, with every process's
//! log, when the drill fails).
//!
//! ## Not deterministic
//!
//! The client's orders are drawn from `--seed`, and the faults happen at the plan's times;
//! how the system answers depends on real scheduling. A failing drill is investigated from
//! its report and logs; its faults are named so the same kind can be tried in the
//! simulator, where a failure replays exactly ([`plan::DrillPlan::simulator_plan`]).

// A harness of real processes: it reads the wall clock, sleeps on tokio, spawns tokio
// tasks and child processes. None of it runs in the simulator.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod broker;
pub mod check;
pub mod client;
pub mod http;
pub mod plan;
pub mod poison;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod report;
mod run;

use std::path::Path;

pub use run::{DrillOptions, run, validate_load};

/// Why a drill could not run or finish (a violation is not an error: it is in the
/// report).
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// Something the drill needs is missing or would not start.
    #[error("drill setup: {0}")]
    Setup(String),
    /// A fault could not be injected or healed.
    #[error("drill fault: {0}")]
    Fault(String),
    /// A check could not read what it checks.
    #[error("drill check: {0}")]
    Check(String),
}

impl DrillError {
    pub(crate) fn io(path: &Path, error: &std::io::Error) -> Self {
        DrillError::Setup(format!("{}: {error}", path.display()))
    }
}

/// A loopback port nobody listens on now (bound and released: another process could take
/// it in between, which on a drill's own machine does not happen in practice).
///
/// # Errors
/// No port can be bound.
pub fn free_port() -> Result<u16, DrillError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|e| DrillError::Setup(format!("no free loopback port: {e}")))
}
