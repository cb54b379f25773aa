//! `TestStore` must fail a test whenever the test does not account for something the
//! feature did. A harness that silently passes is worse than none, so each failure mode
//! is proven to fail here — and the same scripts in non-exhaustive mode are proven to pass.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use reprise_core::testing::{Exhaustivity, TestStore};
use reprise_core::{
    AppendBatch, Effect, EffectDescription, Effects, EventId, ExpectedVersion, Metadata, NewEvent,
    Payload, Reducer, StoreError, effects, from_fn,
};

#[derive(Clone, Debug, Default, PartialEq)]
struct State {
    count: i64,
    recorded: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq)]
enum Action {
    Increment,
    /// Increments, then feeds back `Increment` through an async effect.
    IncrementTwice,
    IncrementAfter(Duration),
    /// Appends one event with this id to stream `log-1`.
    Record(u128),
    Recorded(Result<u64, StoreError>),
}

fn feature() -> impl Reducer<State = State, Action = Action, Env = ()> {
    from_fn(|s: &mut State, a: Action, (): &()| -> Effects<Action> {
        match a {
            Action::Increment => {
                s.count += 1;
                effects![]
            }
            Action::IncrementTwice => {
                s.count += 1;
                effects![Effect::run("again", async { Some(Action::Increment) })]
            }
            Action::IncrementAfter(after) => {
                effects![Effect::timer("later", after, Action::Increment)]
            }
            Action::Record(id) => effects![Effect::append(record_batch(id), |r| {
                Some(Action::Recorded(r.map(|receipt| receipt.last_position)))
            })],
            Action::Recorded(result) => {
                if let Ok(position) = result {
                    s.recorded.push(position);
                }
                effects![]
            }
        }
    })
}

fn record_batch(id: u128) -> AppendBatch {
    let event = NewEvent {
        event_id: EventId(id),
        event_type: "Recorded".into(),
        schema_version: 1,
        payload: Payload::from_json_text("{}"),
        metadata: Metadata::default(),
    };
    AppendBatch::single("log-1".into(), ExpectedVersion::Any, vec![event])
}

fn exhaustive() -> TestStore<impl Reducer<State = State, Action = Action, Env = ()>> {
    TestStore::new(feature(), State::default(), ())
}

fn non_exhaustive() -> TestStore<impl Reducer<State = State, Action = Action, Env = ()>> {
    exhaustive().with_exhaustivity(Exhaustivity::Off)
}

/// Runs `script` and returns the panic message it failed with.
fn failure_of(script: impl FnOnce()) -> String {
    let payload = catch_unwind(AssertUnwindSafe(script))
        .expect_err("the TestStore should have failed the test");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(ToString::to_string))
        .unwrap_or_default()
}

// ---- state -----------------------------------------------------------------------------

#[test]
#[should_panic(expected = "state after send(Increment) differs from the expected")]
fn an_unexpected_state_change_fails() {
    let mut store = exhaustive();
    store.send(Action::Increment, |_| {}); // the count did change
}

#[test]
fn a_wrong_expected_state_fails_with_a_diff() {
    let message = failure_of(|| {
        let mut store = exhaustive();
        store.send(Action::Increment, |s| s.count = 2);
    });
    assert!(
        message.contains("-     count: 2,") && message.contains("+     count: 1,"),
        "{message}"
    );
}

// ---- received actions ------------------------------------------------------------------

#[test]
#[should_panic(expected = "the test ended with 1 received action(s) not asserted")]
fn an_unasserted_received_action_fails_at_finish() {
    let mut store = exhaustive();
    store.send(Action::IncrementTwice, |s| s.count = 1);
    store.finish();
}

#[test]
#[should_panic(expected = "the test ended with 1 received action(s) not asserted")]
fn an_unasserted_received_action_fails_when_the_store_is_dropped_unfinished() {
    let mut store = exhaustive();
    store.send(Action::IncrementTwice, |s| s.count = 1);
}

#[test]
#[should_panic(expected = "must handle 1 received action(s) before sending Increment")]
fn sending_while_received_actions_are_pending_fails() {
    let mut store = exhaustive();
    store.send(Action::IncrementTwice, |s| s.count = 1);
    store.send(Action::Increment, |s| s.count = 2);
}

#[test]
fn receiving_the_wrong_action_fails_and_names_both() {
    let message = failure_of(|| {
        let mut store = exhaustive();
        store.send(Action::IncrementTwice, |s| s.count = 1);
        store.receive(Action::IncrementTwice, |_| {});
    });
    assert!(
        message.contains("received an unexpected action"),
        "{message}"
    );
    assert!(
        message.contains("expected: IncrementTwice") && message.contains("received: Increment"),
        "{message}"
    );
}

#[test]
#[should_panic(expected = "expected to receive Increment, but no action was received")]
fn receiving_when_nothing_arrives_fails() {
    let mut store = exhaustive();
    store.send(Action::Increment, |s| s.count = 1);
    store.receive(Action::Increment, |s| s.count = 2);
}

#[test]
#[should_panic(expected = "state after receive(Increment) differs")]
fn a_received_actions_state_change_is_checked_too() {
    let mut store = exhaustive();
    store.send(Action::IncrementTwice, |s| s.count = 1);
    store.receive(Action::Increment, |_| {});
}

// ---- effects still running -------------------------------------------------------------

#[test]
#[should_panic(expected = "the test ended with 1 effect(s) still running")]
fn a_timer_still_armed_at_the_end_fails() {
    let mut store = exhaustive();
    store.send(Action::IncrementAfter(Duration::from_secs(10)), |_| {});
    store.advance(Duration::from_secs(9));
    store.finish();
}

#[test]
fn the_running_effect_is_named_by_its_id() {
    let message = failure_of(|| {
        let mut store = exhaustive();
        store.send(Action::IncrementAfter(Duration::from_secs(10)), |_| {});
        store.finish();
    });
    assert!(
        message.contains(r#"cancellable ids: ["later"]"#),
        "{message}"
    );
}

// ---- domain effects (append / publish) -------------------------------------------------

#[test]
#[should_panic(expected = "the test ended with 1 effect(s) not asserted")]
fn an_unasserted_append_fails() {
    let mut store = exhaustive();
    store.send(Action::Record(1), |_| {});
    store.receive(Action::Recorded(Ok(1)), |s| s.recorded = vec![1]);
    store.finish();
}

#[test]
fn a_different_append_than_asserted_fails() {
    let message = failure_of(|| {
        let mut store = exhaustive();
        store.send(Action::Record(1), |_| {});
        store.expect_effect(&EffectDescription::Append(record_batch(2)));
    });
    assert!(message.contains("wrong effect"), "{message}");
}

#[test]
#[should_panic(expected = "wrong effect: expected an append with ExpectedVersion::NoStream")]
fn an_append_refused_by_the_predicate_fails() {
    let mut store = exhaustive();
    store.send(Action::Record(1), |_| {});
    store.expect_effect_matching("an append with ExpectedVersion::NoStream", |e| {
        matches!(e, EffectDescription::Append(b) if b.streams[0].expected == ExpectedVersion::NoStream)
    });
}

#[test]
#[should_panic(expected = "expected effect an append, but the reducer asked for none")]
fn expecting_an_effect_that_was_never_asked_for_fails() {
    let mut store = exhaustive();
    store.send(Action::Increment, |s| s.count = 1);
    store.expect_effect_matching("an append", |_| true);
}

#[test]
fn an_asserted_append_passes() {
    let mut store = exhaustive();
    store.send(Action::Record(1), |_| {});
    store.expect_effect(&EffectDescription::Append(record_batch(1)));
    store.receive(Action::Recorded(Ok(1)), |s| s.recorded = vec![1]);
    store.send(Action::Record(2), |_| {});
    store.expect_effect_matching("an append of one event to log-1", |e| {
        matches!(e, EffectDescription::Append(b) if b.event_count() == 1 && b.streams[0].stream.as_str() == "log-1")
    });
    store.receive(Action::Recorded(Ok(2)), |s| s.recorded = vec![1, 2]);
    store.finish();
}

// ---- non-exhaustive mode ---------------------------------------------------------------

/// A script that leaves everything unasserted: received actions, an append, a running
/// timer, and actions skipped on the way to the one it cares about.
fn partial_script(store: &mut TestStore<impl Reducer<State = State, Action = Action, Env = ()>>) {
    store.send(Action::IncrementTwice, |s| s.count = 1);
    store.send(Action::Record(5), |_| {});
    store.receive(Action::Recorded(Ok(1)), |s| {
        s.count = 2; // the skipped Increment still ran
        s.recorded = vec![1];
    });
    store.send(Action::IncrementAfter(Duration::from_secs(60)), |_| {});
}

#[test]
fn the_partial_script_fails_exhaustively() {
    let message = failure_of(|| {
        let mut store = exhaustive();
        partial_script(&mut store);
        store.finish();
    });
    assert!(
        message.contains("must handle 1 received action(s) before sending Record(5)"),
        "{message}"
    );
}

#[test]
fn the_partial_script_passes_non_exhaustively() {
    let mut store = non_exhaustive();
    partial_script(&mut store);
    assert_eq!(
        store.state(),
        State {
            count: 2,
            recorded: vec![1]
        }
    );
    store.finish();
    // Non-exhaustive mode cancels what still runs instead of failing on it.
}

#[test]
fn non_exhaustive_mode_still_checks_what_the_test_asserts() {
    let message = failure_of(|| {
        let mut store = non_exhaustive();
        store.send(Action::Increment, |s| s.count = 5);
    });
    assert!(message.contains("differs from the expected"), "{message}");
}
