//! A counter: the smallest feature that shows every moving part of a reducer.
//!
//! - State changes happen only in [`CounterFeature::reduce`], synchronously.
//! - Slow work (asking a [`NumberFacts`] service) is an [`Effect::run`] whose answer comes
//!   back as an action; the reducer never awaits.
//! - Time is an [`Effect::timer`] with a stable id, so a later action can cancel it. The
//!   delay lives in the environment, so tests choose it and the simulator controls it.

use std::sync::Arc;
use std::time::Duration;

use reprise_core::{BoxFuture, Effect, Effects, Reducer, effects};

/// The counter's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub count: i64,
    /// A delayed increment is armed and has not fired or been cancelled.
    pub increment_scheduled: bool,
    pub fact: Option<String>,
    pub fact_loading: bool,
}

/// Everything that can happen to a counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CounterAction {
    Increment,
    Decrement,
    /// Increment once the environment's delay has passed.
    ScheduleIncrement,
    CancelScheduledIncrement,
    /// The scheduled increment's timer fired.
    ScheduledIncrementFired,
    /// Ask the facts service about the current count.
    FactRequested,
    FactLoaded(Result<String, FactError>),
}

/// Why the facts service could not answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("number facts unavailable: {0}")]
pub struct FactError(pub String);

/// An external service, injected through the environment so tests and the simulator can
/// stand in for it.
pub trait NumberFacts: Send + Sync {
    fn fact(&self, n: i64) -> BoxFuture<'static, Result<String, FactError>>;
}

/// The counter's dependencies.
#[derive(Clone)]
pub struct CounterEnv {
    pub facts: Arc<dyn NumberFacts>,
    pub increment_delay: Duration,
}

impl std::fmt::Debug for CounterEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterEnv")
            .field("increment_delay", &self.increment_delay)
            .finish_non_exhaustive()
    }
}

/// The id of the delayed increment's timer: scheduling again replaces it, cancelling
/// removes it.
pub const SCHEDULED_INCREMENT: &str = "counter.scheduled-increment";

/// The counter's reducer.
#[derive(Clone, Copy, Debug, Default)]
pub struct CounterFeature;

impl Reducer for CounterFeature {
    type State = Counter;
    type Action = CounterAction;
    type Env = CounterEnv;

    fn reduce(
        &self,
        state: &mut Counter,
        action: CounterAction,
        env: &CounterEnv,
    ) -> Effects<CounterAction> {
        match action {
            CounterAction::Increment => {
                state.count += 1;
                effects![]
            }
            CounterAction::Decrement => {
                state.count -= 1;
                effects![]
            }
            CounterAction::ScheduleIncrement => {
                state.increment_scheduled = true;
                effects![Effect::timer(
                    SCHEDULED_INCREMENT,
                    env.increment_delay,
                    CounterAction::ScheduledIncrementFired
                )]
            }
            CounterAction::CancelScheduledIncrement => {
                state.increment_scheduled = false;
                effects![Effect::cancel(SCHEDULED_INCREMENT)]
            }
            CounterAction::ScheduledIncrementFired => {
                state.increment_scheduled = false;
                state.count += 1;
                effects![]
            }
            CounterAction::FactRequested => {
                state.fact_loading = true;
                let fact = env.facts.fact(state.count);
                effects![Effect::run("counter.fact", async move {
                    Some(CounterAction::FactLoaded(fact.await))
                })]
            }
            CounterAction::FactLoaded(result) => {
                state.fact_loading = false;
                // A failed lookup keeps the previous fact: stale beats blank here.
                if let Ok(fact) = result {
                    state.fact = Some(fact);
                }
                effects![]
            }
        }
    }

    fn action_name(&self, action: &CounterAction) -> &'static str {
        match action {
            CounterAction::Increment => "Increment",
            CounterAction::Decrement => "Decrement",
            CounterAction::ScheduleIncrement => "ScheduleIncrement",
            CounterAction::CancelScheduledIncrement => "CancelScheduledIncrement",
            CounterAction::ScheduledIncrementFired => "ScheduledIncrementFired",
            CounterAction::FactRequested => "FactRequested",
            CounterAction::FactLoaded(_) => "FactLoaded",
        }
    }
}
