//! Metric names, as constants so `docs/event-bus.md` and the code cannot drift apart.
//!
//! They follow `docs/observability.md`: `reprise_` prefix, Prometheus base units in the
//! name, bounded label sets (`topic`, `group`, `partition`, and `kind` from
//! [`reprise_core::BusError::kind`]). Nothing is exported until the application installs a
//! `metrics` recorder.

/// Counter, labels `topic`: messages whose delivery report came back successful.
pub const PUBLISHED_TOTAL: &str = "reprise_bus_published_total";
/// Counter, labels `topic`, `kind`: messages whose publish failed.
pub const PUBLISH_ERRORS_TOTAL: &str = "reprise_bus_publish_errors_total";
/// Histogram, no labels: from `publish` to the last delivery report of the batch.
pub const PUBLISH_DURATION_SECONDS: &str = "reprise_bus_publish_duration_seconds";
/// Counter, labels `group`, `topic`: messages handed to a subscriber.
pub const CONSUMED_TOTAL: &str = "reprise_bus_consumed_total";
/// Counter, labels `group`, `kind`: errors while receiving or committing.
pub const CONSUMER_ERRORS_TOTAL: &str = "reprise_bus_consumer_errors_total";
/// Counter, labels `group`: successful offset commits (explicit and on revoke).
pub const COMMITS_TOTAL: &str = "reprise_bus_commits_total";
/// Counter, labels `group`, `event` (`assign` | `revoke` | `error`): rebalance callbacks.
pub const REBALANCES_TOTAL: &str = "reprise_bus_rebalances_total";
/// Gauge, labels `group`, `topic`, `partition`: messages between the partition's high
/// watermark and the group's committed offset, from librdkafka statistics.
pub const CONSUMER_LAG: &str = "reprise_bus_consumer_lag";
/// Gauge, labels `group`: delivered messages not yet committed by this member.
pub const UNCOMMITTED: &str = "reprise_bus_uncommitted_messages";
/// Counter, labels `topic` (the original topic): messages sent to a dead-letter topic.
pub const DEAD_LETTERS_TOTAL: &str = "reprise_bus_dead_letters_total";
/// Counter, labels `topic` (the original topic), `group` (empty when unknown): dead
/// letters that could not be written after every retry. Each one is a message left
/// unacknowledged: its partition commits nothing past it until a later attempt succeeds.
/// Alert on any increase.
pub const DEAD_LETTER_FAILURES_TOTAL: &str = "reprise_bus_dead_letter_failures_total";
/// Counter, labels `topic` (the original topic): dead letters re-published by `replay`.
pub const REPLAYED_TOTAL: &str = "reprise_bus_dead_letters_replayed_total";
/// Counter, labels `topic`: handler attempts that failed transiently and were retried.
pub const HANDLER_RETRIES_TOTAL: &str = "reprise_bus_handler_retries_total";

/// Registers descriptions and units with the installed recorder (call once at start-up,
/// after installing it; harmless without one).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(PUBLISHED_TOTAL, "Messages acknowledged by the broker");
    describe_counter!(PUBLISH_ERRORS_TOTAL, "Messages whose publish failed");
    describe_histogram!(
        PUBLISH_DURATION_SECONDS,
        Unit::Seconds,
        "Publish batch duration, to the last delivery report"
    );
    describe_counter!(CONSUMED_TOTAL, "Messages handed to subscribers");
    describe_counter!(
        CONSUMER_ERRORS_TOTAL,
        "Errors while receiving or committing"
    );
    describe_counter!(COMMITS_TOTAL, "Offset commits");
    describe_counter!(REBALANCES_TOTAL, "Consumer group rebalance callbacks");
    describe_gauge!(
        CONSUMER_LAG,
        "High watermark minus committed offset, per partition"
    );
    describe_gauge!(
        UNCOMMITTED,
        "Delivered messages not yet committed by this member"
    );
    describe_counter!(DEAD_LETTERS_TOTAL, "Messages sent to a dead-letter topic");
    describe_counter!(
        DEAD_LETTER_FAILURES_TOTAL,
        "Dead letters that could not be written after every retry (a partition stopped committing)"
    );
    describe_counter!(
        REPLAYED_TOTAL,
        "Dead letters re-published to their original topic"
    );
    describe_counter!(
        HANDLER_RETRIES_TOTAL,
        "Transient handler failures that were retried"
    );
}
