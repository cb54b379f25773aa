//! # reprise-shop
//!
//! The checkout scenario as a service you can deploy: one binary, `reprise-shop`, whose
//! `serve` subcommand runs an HTTP API for placing and reading orders **and** every
//! checkout service instance — orders, inventory, payments, shipping, the checkout saga
//! host and the relay — on tokio, PostgreSQL and a Kafka-API broker.
//!
//! Nothing of the domain is copied here. The services are
//! `reprise_scenarios::checkout::services::start_*_service`, the saga is
//! `reprise_scenarios::checkout::CheckoutSaga` on `reprise_host::SagaHost`, the relay is
//! `reprise_host::relay` under a `reprise_postgres::PgLease` — the very code the simulator
//! sweeps. What this crate adds is what a deployment needs around it:
//!
//! | module | what |
//! |---|---|
//! | [`cli`] | the `reprise-shop` command: `serve`, `migrate`, `payment-provider`, `carrier` |
//! | [`config`] | flags and environment, validated at start with one message per problem |
//! | [`serve`] | start-up (schema verified, topics, catalog, services) and graceful shutdown |
//! | [`api`] | the HTTP API: `POST /orders`, `GET /orders/{id}`, `GET /catalog`, health, metrics |
//! | [`problem`] | RFC 9457 problem documents for every refusal |
//! | [`health`] | liveness, start-up and readiness checks |
//! | [`telemetry`] | the Prometheus recorder, metric descriptions, the shop's own counters |
//! | [`bus`] | the Kafka bus the services see: topic prefix, partition bookkeeping, draining |
//! | [`gateway`] | `PaymentGateway` and `Carrier` over HTTP (hyper-util's client) |
//! | [`providers`] | the fake payment provider and carrier: the scenario's models served over HTTP, with latency, errors and outages |
//! | [`catalog`] | the default catalog, stocked idempotently at start |
//! | [`migrate`] | `migrate` and `migrate --check` |
//! | [`trace`] | W3C trace context from the HTTP request through store, bus and services to the provider calls |
//! | `otel` | (feature `otel`) OpenTelemetry: the spans exported over OTLP/HTTP |
//! | `containers` | (feature `testcontainers`) PostgreSQL and Redpanda in Docker when `serve` is given neither |
//!
//! `docs/production-service.md` is the operator's guide.

// A production service, like the adapters: it reads the wall clock (request durations,
// shutdown deadlines, outage windows of the fake providers), sleeps and times out on
// tokio and spawns tokio tasks (the HTTP server, signal handling). The determinism lints
// guard core, sim, scenarios and chaos; the domain code this crate runs still sees only
// the `Runtime` trait.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod api;
pub mod bus;
pub mod catalog;
pub mod cli;
pub mod config;
#[cfg(feature = "testcontainers")]
pub mod containers;
pub mod gateway;
pub mod health;
pub mod migrate;
#[cfg(feature = "otel")]
pub mod otel;
pub mod problem;
pub mod providers;
pub mod serve;
pub mod telemetry;
pub mod trace;
