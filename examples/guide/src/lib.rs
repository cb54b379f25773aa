//! # wallets — the example of Reprise's guide (`docs/guide/`)
//!
//! A wallet service ([`service`]) on the host library, its domain ([`wallet`]), and a
//! simulation scenario with its invariants ([`scenario`]). `src/bin/wallet-sims.rs` turns
//! the scenarios into a command line with one call; `src/bin/wallet-service.rs` runs the
//! same service on tokio, PostgreSQL and a Kafka-API broker.

pub mod scenario;
pub mod service;
pub mod wallet;
