//! Integration tests against a real PostgreSQL. They need `DATABASE_URL` (see
//! `scripts/postgres.sh`) and fail loudly without it: a missing database must never turn into
//! a green run that tested nothing.
//!
//! Each test works in its own freshly created schema, so tests run in parallel and reruns
//! never see each other's data.

// Tests measure wall-clock time and use tokio directly, like the adapter they test.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod aggregates;
mod conformance;
mod dead_letter;
mod errors;
mod gap_free;
mod group_commit;
mod lease;
mod migrations;
mod subscription;
mod support;
