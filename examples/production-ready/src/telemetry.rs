//! Metrics: the Prometheus recorder behind `GET /metrics`, a description (with its unit)
//! of every metric the process emits, and the shop's own measurements.
//!
//! Everything the framework emits (`docs/observability.md`: stores, aggregates, sagas,
//! retries, breakers, dead letters, relay, lease; `docs/database.md` and
//! `docs/event-bus.md`: the PostgreSQL pool and the broker clients) goes through the
//! `metrics` facade, so installing the recorder **before the first store is built** is
//! all it takes to export it. On top:
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `http_server_request_duration_seconds` | histogram | `http_request_method`, `http_route`, `http_response_status_code` | HTTP requests served (OpenTelemetry's semantic names) |
//! | `shop_orders_placed_total` | counter | | orders accepted by `POST /orders` (a replayed request is not counted again) |
//! | `shop_orders_terminal_total` | counter | `status` = `completed`/`cancelled` | orders that reached a final state, counted where the orders service appended it |
//! | `shop_http_requests_in_flight` | gauge | | requests being served |
//! | `shop_draining` | gauge | | 1 once a graceful shutdown began |
//!
//! Histograms are exported as Prometheus histograms with [`BUCKETS`] (not summaries), so
//! they aggregate across replicas. Names carry their unit (`_seconds`, `_total`), and the
//! exporter's unit-suffix check is on: a described unit that the name lacked would show.

use std::sync::Arc;

use metrics::Unit;
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};
use reprise_core::{
    AppendBatch, AppendReceipt, BoxFuture, EventStore, RecordedEvent, Snapshot, StoreError,
    StreamId,
};
use reprise_scenarios::checkout::order::Order;

use reprise_core::Aggregate;

/// Histogram (seconds): HTTP requests served.
pub const HTTP_DURATION: &str = "http_server_request_duration_seconds";
/// Counter: orders accepted.
pub const ORDERS_PLACED: &str = "shop_orders_placed_total";
/// Counter, label `status`: orders that reached a final state.
pub const ORDERS_TERMINAL: &str = "shop_orders_terminal_total";
/// Gauge: HTTP requests being served.
pub const HTTP_IN_FLIGHT: &str = "shop_http_requests_in_flight";
/// Gauge: 1 while draining.
pub const DRAINING: &str = "shop_draining";

/// Bucket bounds (seconds) of every histogram.
pub const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the global recorder. Call once, before any store exists.
///
/// # Errors
/// A recorder is already installed.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = builder()?.install_recorder()?;
    describe();
    // Present from the first scrape, before any order.
    metrics::counter!(ORDERS_PLACED).absolute(0);
    for status in ["completed", "cancelled"] {
        metrics::counter!(ORDERS_TERMINAL, "status" => status).absolute(0);
    }
    metrics::gauge!(DRAINING).set(0.0);
    metrics::gauge!(HTTP_IN_FLIGHT).set(0.0);
    Ok(handle)
}

/// The exporter's settings: real histograms, and Prometheus' recommended naming (unit
/// and `_total` suffixes), which leaves every name here as it is (a test proves it).
fn builder() -> Result<PrometheusBuilder, BuildError> {
    Ok(PrometheusBuilder::new()
        .set_buckets(&BUCKETS)?
        .with_recommended_naming(true))
}

enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric of the process: name, kind, unit, help.
const DESCRIPTIONS: &[(&str, Kind, Unit, &str)] = {
    use Kind::{Counter, Gauge, Histogram};
    use Unit::{Count, Seconds};
    use reprise_core::instrument as core;
    use reprise_host::relay as host;
    use reprise_kafka::metrics as bus;
    use reprise_postgres::{lease, pool, store};
    &[
        // The shop.
        (
            HTTP_DURATION,
            Histogram,
            Seconds,
            "HTTP requests served, by method, route and status",
        ),
        (
            ORDERS_PLACED,
            Counter,
            Count,
            "Orders accepted by POST /orders",
        ),
        (
            ORDERS_TERMINAL,
            Counter,
            Count,
            "Orders that reached a final state, by status",
        ),
        (HTTP_IN_FLIGHT, Gauge, Count, "HTTP requests being served"),
        (DRAINING, Gauge, Count, "1 once a graceful shutdown began"),
        // reprise-core (docs/observability.md).
        (
            core::ACTIONS,
            Counter,
            Count,
            "Actions reduced, by store and action",
        ),
        (
            core::ACTIONS_REJECTED,
            Counter,
            Count,
            "Actions refused by a store that was shutting down",
        ),
        (
            core::REDUCER_DURATION,
            Histogram,
            Seconds,
            "Time inside Reducer::reduce (sampled 1 in 16)",
        ),
        (
            core::EFFECT_DURATION,
            Histogram,
            Seconds,
            "From an effect's start to its completion (sampled 1 in 16)",
        ),
        (
            core::EFFECT_ERRORS,
            Counter,
            Count,
            "Failed append/publish effects",
        ),
        (
            core::EFFECTS_IN_FLIGHT,
            Gauge,
            Count,
            "Effects in flight, by store",
        ),
        (
            core::COMMANDS_REJECTED,
            Counter,
            Count,
            "Commands an aggregate's decide refused",
        ),
        (
            core::SAGA_DEADLINES_FIRED,
            Counter,
            Count,
            "Saga deadlines that fired (a step timed out)",
        ),
        (
            core::RETRIES,
            Counter,
            Count,
            "Retries (attempts after the first) of guarded calls",
        ),
        (
            core::CALLS_FAILED,
            Counter,
            Count,
            "Guarded calls that gave up, by reason",
        ),
        (
            core::BREAKER_STATE,
            Gauge,
            Count,
            "Circuit breaker state: 0 closed, 1 open, 2 half-open",
        ),
        (
            core::BREAKER_TRANSITIONS,
            Counter,
            Count,
            "Circuit breaker state changes",
        ),
        (
            core::BREAKER_REJECTED,
            Counter,
            Count,
            "Calls refused by an open breaker",
        ),
        (core::DEAD_LETTERS, Counter, Count, "Dead letters written"),
        (
            core::DEAD_LETTERS_PENDING,
            Gauge,
            Count,
            "Dead letters waiting for an operator",
        ),
        (
            core::DEAD_LETTERS_OLDEST_AGE,
            Gauge,
            Seconds,
            "Age of the oldest pending dead letter",
        ),
        // reprise-host.
        (
            host::RELAYED,
            Counter,
            Count,
            "Events the relay published from the store's log",
        ),
        (
            host::RELAY_POSITION,
            Gauge,
            Count,
            "Last global position the relay published",
        ),
        (
            host::RELAY_LEADER,
            Gauge,
            Count,
            "1 while this instance leads the relay",
        ),
        (
            host::RELAY_ERRORS,
            Counter,
            Count,
            "Relay failures, by stage",
        ),
        // reprise-postgres (docs/database.md).
        (
            store::APPEND_DURATION,
            Histogram,
            Seconds,
            "Duration of a successful append, acquire to commit",
        ),
        (store::EVENTS_APPENDED, Counter, Count, "Events appended"),
        (
            pool::POOL_CONNECTIONS,
            Gauge,
            Count,
            "Pool connections, by state (idle, in_use)",
        ),
        (
            pool::POOL_ACQUIRE_WAIT,
            Histogram,
            Seconds,
            "Time waiting for a pooled connection",
        ),
        (
            pool::POOL_ACQUIRE_TIMEOUTS,
            Counter,
            Count,
            "Acquisitions that gave up (pool exhausted)",
        ),
        (
            lease::LEASE_HELD,
            Gauge,
            Count,
            "1 while this process holds the lease",
        ),
        // reprise-kafka (docs/event-bus.md).
        (
            bus::PUBLISHED_TOTAL,
            Counter,
            Count,
            "Messages acknowledged by the broker",
        ),
        (
            bus::PUBLISH_ERRORS_TOTAL,
            Counter,
            Count,
            "Messages whose publish failed",
        ),
        (
            bus::PUBLISH_DURATION_SECONDS,
            Histogram,
            Seconds,
            "Publish batch duration, to the last delivery report",
        ),
        (
            bus::CONSUMED_TOTAL,
            Counter,
            Count,
            "Messages handed to subscribers",
        ),
        (
            bus::CONSUMER_ERRORS_TOTAL,
            Counter,
            Count,
            "Errors while receiving or committing",
        ),
        (bus::COMMITS_TOTAL, Counter, Count, "Offset commits"),
        (
            bus::REBALANCES_TOTAL,
            Counter,
            Count,
            "Consumer group rebalance callbacks",
        ),
        (
            bus::CONSUMER_LAG,
            Gauge,
            Count,
            "High watermark minus committed offset, per partition",
        ),
        (
            bus::UNCOMMITTED,
            Gauge,
            Count,
            "Delivered messages not yet committed by this member",
        ),
        (
            bus::DEAD_LETTERS_TOTAL,
            Counter,
            Count,
            "Messages sent to a dead-letter topic",
        ),
        (
            bus::REPLAYED_TOTAL,
            Counter,
            Count,
            "Dead letters re-published to their original topic",
        ),
        (
            bus::HANDLER_RETRIES_TOTAL,
            Counter,
            Count,
            "Transient handler failures that were retried",
        ),
    ]
};

/// The names of every metric described, for tests and docs.
pub fn described_names() -> impl Iterator<Item = &'static str> {
    DESCRIPTIONS.iter().map(|(name, ..)| *name)
}

/// Describes every metric (with its unit) to the installed recorder.
pub fn describe() {
    for (name, kind, unit, help) in DESCRIPTIONS {
        let (name, unit, help) = (*name, *unit, *help);
        match kind {
            Kind::Counter => metrics::describe_counter!(name, unit, help),
            Kind::Gauge => metrics::describe_gauge!(name, unit, help),
            Kind::Histogram => metrics::describe_histogram!(name, unit, help),
        }
    }
}

/// The order events that close an order, and the status label each counts under.
fn terminal_status(event_type: &str) -> Option<&'static str> {
    match event_type {
        "OrderCompleted" => Some("completed"),
        "OrderCancelled" => Some("cancelled"),
        _ => None,
    }
}

/// The orders service's store, counting [`ORDERS_TERMINAL`] on every append that made an
/// order's final event durable. Each order closes exactly once (the aggregate refuses a
/// second close, and a redelivered command finds its inbox marker), so the counts of all
/// replicas add up to the number of closed orders. An append whose acknowledgement was
/// lost (outcome unknown) is not counted: rare, and it undercounts, never double-counts.
pub struct CountingStore {
    inner: Arc<dyn EventStore>,
}

impl std::fmt::Debug for CountingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingStore").finish_non_exhaustive()
    }
}

impl CountingStore {
    #[must_use]
    pub fn new(inner: Arc<dyn EventStore>) -> Self {
        CountingStore { inner }
    }
}

impl EventStore for CountingStore {
    fn append(&self, batch: AppendBatch) -> BoxFuture<'static, Result<AppendReceipt, StoreError>> {
        let closing: Vec<&'static str> = batch
            .streams
            .iter()
            .filter(|s| s.stream.category() == Order::CATEGORY)
            .flat_map(|s| s.events.iter())
            .filter_map(|e| terminal_status(&e.event_type))
            .collect();
        let append = self.inner.append(batch);
        if closing.is_empty() {
            return append;
        }
        Box::pin(async move {
            let receipt = append.await;
            if let Ok(receipt) = &receipt
                && !receipt.was_duplicate
            {
                for status in closing {
                    metrics::counter!(ORDERS_TERMINAL, "status" => status).increment(1);
                }
            }
            receipt
        })
    }

    fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<RecordedEvent>, StoreError>> {
        self.inner.read_stream(stream, from_version, limit)
    }

    fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<RecordedEvent>, StoreError>> {
        self.inner.read_all(from_position, limit)
    }

    fn stream_version(&self, stream: &StreamId) -> BoxFuture<'static, Result<u64, StoreError>> {
        self.inner.stream_version(stream)
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'static, Result<(), StoreError>> {
        self.inner.save_snapshot(snapshot)
    }

    fn load_snapshot(
        &self,
        stream: &StreamId,
    ) -> BoxFuture<'static, Result<Option<Snapshot>, StoreError>> {
        self.inner.load_snapshot(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reprise_core::{EventId, ExpectedVersion, InMemoryEventStore, Metadata, NewEvent};
    use reprise_scenarios::checkout::order::OrderEvent;

    #[test]
    fn only_closing_order_events_count() {
        assert_eq!(terminal_status("OrderCompleted"), Some("completed"));
        assert_eq!(terminal_status("OrderCancelled"), Some("cancelled"));
        assert_eq!(terminal_status("OrderPlaced"), None);
        let names: Vec<&str> = described_names().collect();
        let unique: std::collections::BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(names.len(), unique.len(), "a metric described twice");
        assert!(
            names
                .iter()
                .all(|n| n.ends_with("_total") || n.ends_with("_seconds") || !n.contains("_total"))
        );
    }

    #[test]
    fn recommended_naming_keeps_every_name_and_every_metric_has_help() {
        let recorder = builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            for (name, kind, ..) in DESCRIPTIONS {
                match kind {
                    Kind::Counter => metrics::counter!(*name).increment(1),
                    Kind::Gauge => metrics::gauge!(*name).set(1.0),
                    Kind::Histogram => metrics::histogram!(*name).record(0.5),
                }
            }
        });
        let text = handle.render();
        for (name, kind, ..) in DESCRIPTIONS {
            let kind = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} renamed or missing:\n{text}"
            );
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no help"
            );
        }
        assert!(
            text.contains(&format!("{HTTP_DURATION}_bucket{{le=\"0.005\"}}")),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_counting_store_passes_appends_through() {
        let store = CountingStore::new(Arc::new(InMemoryEventStore::new()));
        let event =
            NewEvent::encode(EventId(1), &OrderEvent::Completed, Metadata::default()).unwrap();
        let batch = AppendBatch::single(
            StreamId::of(Order::CATEGORY, "o1"),
            ExpectedVersion::Any,
            vec![event],
        );
        let receipt = store.append(batch.clone()).await.unwrap();
        assert!(!receipt.was_duplicate);
        assert!(store.append(batch).await.unwrap().was_duplicate);
        let events = store
            .read_stream(&StreamId::of(Order::CATEGORY, "o1"), 1, 10)
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
    }
}
