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
