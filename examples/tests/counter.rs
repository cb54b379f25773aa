//! The counter, tested exhaustively: every state change, every action fed back and every
//! running effect is accounted for, or the `TestStore` fails the test.

use std::sync::Arc;
use std::time::Duration;

use reprise_core::BoxFuture;
use reprise_core::testing::TestStore;
use reprise_examples::counter::{
    Counter, CounterAction, CounterEnv, CounterFeature, FactError, NumberFacts,
};

/// The facts service, as the test wants it to answer. A stand-in for an external service
/// belongs in the environment, which is what the environment is for.
struct Facts(Result<&'static str, &'static str>);

impl NumberFacts for Facts {
    fn fact(&self, n: i64) -> BoxFuture<'static, Result<String, FactError>> {
        let answer = self
            .0
            .map(|fact| format!("{n} {fact}"))
            .map_err(|e| FactError(e.into()));
        Box::pin(async move { answer })
    }
}

const DELAY: Duration = Duration::from_secs(2);

fn store_with(facts: Facts) -> TestStore<CounterFeature> {
    let env = CounterEnv {
        facts: Arc::new(facts),
        increment_delay: DELAY,
    };
    TestStore::new(CounterFeature, Counter::default(), env)
}

fn store() -> TestStore<CounterFeature> {
    store_with(Facts(Ok("is a number")))
}

#[test]
fn increments_and_decrements() {
    let mut store = store();
    store.send(CounterAction::Increment, |s| s.count = 1);
    store.send(CounterAction::Increment, |s| s.count = 2);
    store.send(CounterAction::Decrement, |s| s.count = 1);
    store.finish();
}

#[test]
fn a_scheduled_increment_fires_after_the_delay_and_not_before() {
    let mut store = store();
    store.send(CounterAction::ScheduleIncrement, |s| {
        s.increment_scheduled = true;
    });
    store.advance(DELAY - Duration::from_millis(1));
    assert_eq!(store.runtime().pending_timers(), 1, "fired early");
    store.advance(Duration::from_millis(1));
    store.receive(CounterAction::ScheduledIncrementFired, |s| {
        s.increment_scheduled = false;
        s.count = 1;
    });
    store.finish();
}

#[test]
fn a_cancelled_increment_never_fires() {
    let mut store = store();
    store.send(CounterAction::ScheduleIncrement, |s| {
        s.increment_scheduled = true;
    });
    store.advance(DELAY / 2);
    store.send(CounterAction::CancelScheduledIncrement, |s| {
        s.increment_scheduled = false;
    });
    assert_eq!(store.runtime().pending_timers(), 0);
    store.advance(DELAY * 10);
    // `finish` fails if the timer were still armed or had fed an action back.
    store.finish();
}

#[test]
fn rescheduling_restarts_the_delay() {
    let mut store = store();
    store.send(CounterAction::ScheduleIncrement, |s| {
        s.increment_scheduled = true;
    });
    store.advance(DELAY / 2);
    store.send(CounterAction::ScheduleIncrement, |_| {});
    store.advance(DELAY / 2); // the first timer's deadline: replaced, so nothing
    assert_eq!(store.runtime().pending_timers(), 1);
    store.advance(DELAY / 2);
    store.receive(CounterAction::ScheduledIncrementFired, |s| {
        s.increment_scheduled = false;
        s.count = 1;
    });
    store.finish();
}

#[test]
fn a_fact_about_the_current_count_is_loaded() {
    let mut store = store();
    store.send(CounterAction::Increment, |s| s.count = 1);
    store.send(CounterAction::FactRequested, |s| s.fact_loading = true);
    store.receive(CounterAction::FactLoaded(Ok("1 is a number".into())), |s| {
        s.fact_loading = false;
        s.fact = Some("1 is a number".into());
    });
    store.finish();
}

#[test]
fn a_failed_fact_lookup_keeps_the_state_consistent() {
    let mut store = store_with(Facts(Err("service down")));
    store.send(CounterAction::FactRequested, |s| s.fact_loading = true);
    store.receive(
        CounterAction::FactLoaded(Err(FactError("service down".into()))),
        |s| s.fact_loading = false,
    );
    store.finish();
}
