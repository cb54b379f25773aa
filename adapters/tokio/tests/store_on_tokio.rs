//! A `Store` on the production runtime: async effects, timers, cancellation, concurrent
//! senders and graceful shutdown, on real tokio runtimes.

// A production adapter's tests: they time shutdown with tokio's clock, which the
// `start_paused` tests advance virtually. The determinism lints do not apply here.
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use reprise_core::{Effect, Effects, Reducer, Runtime, ShutdownError, Store, effects, from_fn};
use reprise_tokio::TokioRuntime;

#[derive(Clone, Debug, Default, PartialEq)]
struct Counter {
    count: i64,
    fetched: Vec<i64>,
}

#[derive(Clone, Debug, PartialEq)]
enum Action {
    Increment,
    IncrementAfter(Duration),
    CancelDelayed,
    /// Stands in for an external call that takes `Duration` and answers `i64`.
    Fetch(i64, Duration),
    Fetched(i64),
}

const DELAYED: &str = "delayed-increment";

fn counter(
    runtime: reprise_core::SharedRuntime,
) -> impl Reducer<State = Counter, Action = Action, Env = ()> {
    from_fn(
        move |s: &mut Counter, a: Action, (): &()| -> Effects<Action> {
            match a {
                Action::Increment => {
                    s.count += 1;
                    effects![]
                }
                Action::IncrementAfter(after) => {
                    effects![Effect::timer(DELAYED, after, Action::Increment)]
                }
                Action::CancelDelayed => effects![Effect::cancel(DELAYED)],
                Action::Fetch(answer, latency) => {
                    let latency = runtime.sleep(latency);
                    effects![Effect::run("fetch", async move {
                        latency.await;
                        Some(Action::Fetched(answer))
                    })]
                }
                Action::Fetched(n) => {
                    s.fetched.push(n);
                    effects![]
                }
            }
        },
    )
}

fn store() -> (
    Store<impl Reducer<State = Counter, Action = Action, Env = ()>>,
    TokioRuntime,
) {
    let runtime = TokioRuntime::try_current().expect("inside tokio");
    let shared = runtime.clone().shared();
    (
        Store::builder(counter(shared.clone()), Counter::default(), (), shared).build(),
        runtime,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_effects_and_timers_feed_back_on_tokio() {
    let (store, runtime) = store();
    let started = runtime.stopwatch_nanos();
    let fetch = store.send(Action::Fetch(41, Duration::from_millis(5)));
    let delayed = store.send(Action::IncrementAfter(Duration::from_millis(30)));
    fetch.await;
    assert_eq!(store.state().fetched, vec![41]);
    delayed.await;
    let elapsed = Duration::from_nanos(runtime.stopwatch_nanos() - started);
    assert!(
        elapsed >= Duration::from_millis(30),
        "the timer fired early: {elapsed:?}"
    );
    assert_eq!(store.state().count, 1);
    assert_eq!(store.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_timer_never_fires_and_its_handle_completes() {
    let (store, _) = store();
    let delayed = store.send(Action::IncrementAfter(Duration::from_secs(3600)));
    assert!(!delayed.is_finished());
    store.send(Action::CancelDelayed).await;
    delayed.await;
    assert_eq!(store.state().count, 0);
    assert_eq!(store.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn rearming_a_timer_replaces_the_pending_one() {
    let (store, _) = store();
    let first = store.send(Action::IncrementAfter(Duration::from_secs(10)));
    let second = store.send(Action::IncrementAfter(Duration::from_secs(20)));
    first.await;
    assert_eq!(store.state().count, 0, "the replaced timer must not fire");
    second.await;
    assert_eq!(store.state().count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_lose_no_action() {
    let (store, runtime) = store();
    let senders: Vec<_> = (0..10)
        .map(|_| {
            let store = store.clone();
            runtime.handle().spawn(async move {
                for _ in 0..1_000 {
                    store.send(Action::Increment).await;
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    assert_eq!(store.state().count, 10_000);
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_effects_that_finish_within_the_grace_period() {
    let (store, _) = store();
    let fetch = store.send(Action::Fetch(7, Duration::from_secs(2)));
    store
        .shutdown(Duration::from_secs(5))
        .await
        .expect("the fetch ends within the grace period");
    // The in-flight effect's feedback action was still reduced during shutdown...
    assert_eq!(store.state().fetched, vec![7]);
    assert!(fetch.is_finished());
    // ...but new actions from outside are refused.
    assert!(store.send(Action::Increment).was_refused());
    assert_eq!(store.state().count, 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_what_outlives_the_deadline() {
    let (store, _) = store();
    let timer = store.send(Action::IncrementAfter(Duration::from_secs(3600)));
    let fetch = store.send(Action::Fetch(1, Duration::from_secs(1)));
    let before = tokio::time::Instant::now();
    let result = store.shutdown(Duration::from_secs(10)).await;
    assert_eq!(
        result,
        Err(ShutdownError {
            still_running: 1,
            cancelled: 1
        })
    );
    let waited = before.elapsed();
    assert!(
        waited >= Duration::from_secs(10),
        "shutdown returned before its deadline: {waited:?}"
    );
    fetch.await;
    timer.await; // cancelled: completes without firing
    assert_eq!(
        store.state(),
        Counter {
            count: 0,
            fetched: vec![1]
        }
    );
    assert_eq!(store.in_flight(), 0);
}

#[test]
fn a_store_driven_from_a_plain_thread_runs_its_effects_on_the_runtime() {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    let shared = TokioRuntime::from_handle(tokio.handle().clone()).shared();
    let store = Store::builder(counter(shared.clone()), Counter::default(), (), shared).build();
    // send() runs the reducer here and arms the timer on the runtime's timer wheel.
    let delayed = store.send(Action::IncrementAfter(Duration::from_millis(10)));
    tokio.block_on(delayed);
    assert_eq!(store.state().count, 1);
}
