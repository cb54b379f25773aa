//! Metric names, in one place so the naming scheme in `docs/observability.md` has a single
//! source. Every name starts with `reprise_`, uses Prometheus base units (`_seconds`,
//! `_total`) and carries the `store` label naming the store that emitted it.

/// Counter: actions reduced. Labels: `store`, `action`.
pub const ACTIONS: &str = "reprise_actions_total";
/// Counter: actions sent to a store that was shutting down and refused. Labels: `store`.
pub const ACTIONS_REJECTED: &str = "reprise_actions_rejected_total";
/// Histogram (seconds): time inside `Reducer::reduce`, sampled. Labels: `store`.
pub const REDUCER_DURATION: &str = "reprise_reducer_duration_seconds";
/// Histogram (seconds): time from an effect's start to its completion. Labels: `store`, `kind`.
pub const EFFECT_DURATION: &str = "reprise_effect_duration_seconds";
/// Counter: failed effects. Labels: `store`, `kind`, `error`.
pub const EFFECT_ERRORS: &str = "reprise_effect_errors_total";
/// Gauge: effects in flight. Labels: `store`.
pub const EFFECTS_IN_FLIGHT: &str = "reprise_effects_in_flight";
/// Counter: aggregate commands rejected by `decide`. Labels: `aggregate`, `error`.
pub const COMMANDS_REJECTED: &str = "reprise_commands_rejected_total";
/// Counter: saga deadlines that fired. Labels: `saga`.
pub const SAGA_DEADLINES_FIRED: &str = "reprise_saga_deadlines_fired_total";

/// How often the reducer is timed: one send in this many. Timing costs two clock reads,
/// a large share of a ~100 ns send; sampling keeps the histogram honest and cheap.
pub const REDUCER_TIMING_SAMPLE_EVERY: u64 = 16;

/// Retries of calls to a dependency (after the first attempt), by dependency and operation.
pub const RETRIES: &str = "reprise_retries_total";
/// Calls that gave up (exhausted retries, permanent error, open breaker), by reason.
pub const CALLS_FAILED: &str = "reprise_dependency_calls_failed_total";
/// Circuit-breaker state per dependency: 0 closed, 1 open, 2 half-open.
pub const BREAKER_STATE: &str = "reprise_breaker_state";
/// Circuit-breaker state changes, labelled `dependency`, `from`, `to`.
pub const BREAKER_TRANSITIONS: &str = "reprise_breaker_transitions_total";
/// Calls refused without reaching the dependency because its breaker was open.
pub const BREAKER_REJECTED: &str = "reprise_breaker_rejected_total";
/// Dead letters written, by source.
pub const DEAD_LETTERS: &str = "reprise_dead_letters_total";
/// Dead letters waiting for an operator (gauge).
pub const DEAD_LETTERS_PENDING: &str = "reprise_dead_letters_pending";
/// Age of the oldest pending dead letter in seconds (gauge; 0 when none).
pub const DEAD_LETTERS_OLDEST_AGE: &str = "reprise_dead_letters_oldest_age_seconds";
