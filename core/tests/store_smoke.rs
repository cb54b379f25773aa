//! End-to-end checks of `Store` on the deterministic `TestRuntime`.

use std::time::Duration;

use reprise_core::testing::{TestRuntime, TestStore};
use reprise_core::{Effect, Effects, SharedRuntime, Store, effects, from_fn};

#[derive(Clone, Debug, PartialEq, Default)]
struct Counter {
    count: i64,
}

#[derive(Clone, Debug, PartialEq)]
enum Action {
    Increment,
    IncrementLater,
    Fetch,
    Fetched(i64),
    CancelLater,
}

fn counter() -> impl reprise_core::Reducer<State = Counter, Action = Action, Env = ()> {
    from_fn(|s: &mut Counter, a: Action, (): &()| -> Effects<Action> {
        match a {
            Action::Increment => {
                s.count += 1;
                effects![]
            }
            Action::IncrementLater => effects![Effect::timer(
                "later",
                Duration::from_secs(5),
                Action::Increment
            )],
            Action::CancelLater => effects![Effect::cancel("later")],
            Action::Fetch => effects![Effect::run("fetch", async { Some(Action::Fetched(41)) })],
            Action::Fetched(n) => {
                s.count = n;
                effects![]
            }
        }
    })
}

#[test]
fn store_runs_effects_and_feeds_results_back() {
    let rt = TestRuntime::shared(1);
    let shared: SharedRuntime = rt.clone();
    let store = Store::builder(counter(), Counter::default(), (), shared).build();
    let handle = store.send(Action::Fetch);
    assert!(!handle.is_finished());
    rt.run_until_idle();
    assert!(handle.is_finished());
    assert_eq!(store.state().count, 41);
    let timer = store.send(Action::IncrementLater);
    rt.advance(Duration::from_secs(4));
    assert_eq!(store.state().count, 41);
    rt.advance(Duration::from_secs(1));
    assert_eq!(store.state().count, 42);
    assert!(timer.is_finished());
    assert_eq!(store.in_flight(), 0);
}

#[test]
fn cancelled_timers_never_fire() {
    let rt = TestRuntime::shared(1);
    let store = Store::builder(counter(), Counter::default(), (), rt.clone()).build();
    drop(store.send(Action::IncrementLater));
    drop(store.send(Action::CancelLater));
    rt.advance(Duration::from_secs(10));
    assert_eq!(store.state().count, 0);
    assert_eq!(store.in_flight(), 0);
}

#[test]
fn shutdown_waits_then_reports_stragglers() {
    let rt = TestRuntime::shared(1);
    let store = Store::builder(counter(), Counter::default(), (), rt.clone()).build();
    drop(store.send(Action::IncrementLater));
    let s = store.clone();
    let result =
        reprise_core::testing::block_on(
            &rt,
            async move { s.shutdown(Duration::from_secs(1)).await },
        );
    assert_eq!(result.unwrap_err().still_running, 1);
    assert!(store.send(Action::Increment).was_refused());
}

#[test]
fn test_store_happy_path() {
    let mut store = TestStore::new(counter(), Counter::default(), ());
    store.send(Action::Increment, |s| s.count = 1);
    store.send(Action::Fetch, |_| {});
    store.receive(Action::Fetched(41), |s| s.count = 41);
    store.send(Action::IncrementLater, |_| {});
    store.advance(Duration::from_secs(5));
    store.receive(Action::Increment, |s| s.count = 42);
    store.finish();
}
