//! Composing features: `scope` embeds a child reducer in a parent, `combine` runs two
//! reducers over the same state, and both together build a parent with its own logic and
//! two independent children. Checked exhaustively with `TestStore` and on a `Store`.

use std::time::Duration;

use reprise_core::testing::{TestRuntime, TestStore};
use reprise_core::{
    Effect, Effects, Reducer, SharedRuntime, Store, combine, effects, from_fn, scope,
};

// ---- the child: a counter with a delayed increment --------------------------------------

#[derive(Clone, Debug, Default, PartialEq)]
struct Child {
    count: i64,
}

#[derive(Clone, Debug, PartialEq)]
enum ChildAction {
    Add(i64),
    AddLater(i64),
    CancelLater,
}

/// The child's environment: how long "later" is, and the id of its timer. Effect ids are
/// store-wide, so two instances of one child in a parent need distinct ids, or one
/// child's timer would replace (and its cancel would cancel) the other's.
#[derive(Debug)]
struct ChildEnv {
    delay: Duration,
    timer: &'static str,
}

fn child() -> impl Reducer<State = Child, Action = ChildAction, Env = ChildEnv> {
    from_fn(
        |s: &mut Child, a: ChildAction, env: &ChildEnv| -> Effects<ChildAction> {
            match a {
                ChildAction::Add(n) => {
                    s.count += n;
                    effects![]
                }
                ChildAction::AddLater(n) => {
                    effects![Effect::timer(env.timer, env.delay, ChildAction::Add(n))]
                }
                ChildAction::CancelLater => effects![Effect::cancel(env.timer)],
            }
        },
    )
}

// ---- the parent ------------------------------------------------------------------------

#[derive(Clone, Debug, Default, PartialEq)]
struct Parent {
    left: Child,
    right: Child,
    /// Parent logic: counts every child action it sees, and resets both children.
    child_actions_seen: u32,
}

#[derive(Clone, Debug, PartialEq)]
enum ParentAction {
    Left(ChildAction),
    Right(ChildAction),
    Reset,
}

#[derive(Debug)]
struct ParentEnv {
    left: ChildEnv,
    right: ChildEnv,
}

fn parent_logic() -> impl Reducer<State = Parent, Action = ParentAction, Env = ParentEnv> {
    from_fn(
        |s: &mut Parent, a: ParentAction, _: &ParentEnv| -> Effects<ParentAction> {
            match a {
                ParentAction::Left(_) | ParentAction::Right(_) => s.child_actions_seen += 1,
                ParentAction::Reset => {
                    s.left = Child::default();
                    s.right = Child::default();
                }
            }
            effects![]
        },
    )
}

fn left() -> impl Reducer<State = Parent, Action = ParentAction, Env = ParentEnv> {
    scope(
        child(),
        |p: &mut Parent| &mut p.left,
        |a: ParentAction| match a {
            ParentAction::Left(c) => Ok(c),
            other => Err(other),
        },
        ParentAction::Left,
        |e: &ParentEnv| &e.left,
    )
}

fn right() -> impl Reducer<State = Parent, Action = ParentAction, Env = ParentEnv> {
    scope(
        child(),
        |p: &mut Parent| &mut p.right,
        |a: ParentAction| match a {
            ParentAction::Right(c) => Ok(c),
            other => Err(other),
        },
        ParentAction::Right,
        |e: &ParentEnv| &e.right,
    )
}

fn env() -> ParentEnv {
    ParentEnv {
        left: ChildEnv {
            delay: Duration::from_secs(1),
            timer: "left.later",
        },
        right: ChildEnv {
            delay: Duration::from_secs(3),
            timer: "right.later",
        },
    }
}

#[test]
fn scope_routes_only_the_childs_actions_and_lifts_its_effects() {
    let mut store = TestStore::new(left(), Parent::default(), env());
    store.send(ParentAction::Left(ChildAction::Add(2)), |p| {
        p.left.count = 2;
    });
    // Not the left child's: the scope leaves state alone and starts nothing.
    store.send(ParentAction::Right(ChildAction::Add(5)), |_| {});
    store.send(ParentAction::Reset, |_| {});
    // The child's timer uses the child's environment and comes back as a parent action.
    store.send(ParentAction::Left(ChildAction::AddLater(10)), |_| {});
    store.advance(Duration::from_secs(1));
    store.receive(ParentAction::Left(ChildAction::Add(10)), |p| {
        p.left.count = 12;
    });
    store.finish();
}

#[test]
fn combine_runs_both_reducers_in_order_on_every_action() {
    let mut store = TestStore::new(combine(parent_logic(), left()), Parent::default(), env());
    store.send(ParentAction::Left(ChildAction::Add(1)), |p| {
        p.child_actions_seen = 1;
        p.left.count = 1;
    });
    store.send(ParentAction::Reset, |p| p.left.count = 0);
    store.finish();
}

fn whole() -> impl Reducer<State = Parent, Action = ParentAction, Env = ParentEnv> {
    combine(combine(parent_logic(), left()), right())
}

#[test]
fn a_parent_with_two_scoped_children_keeps_them_independent() {
    let mut store = TestStore::new(whole(), Parent::default(), env());
    store.send(ParentAction::Left(ChildAction::Add(1)), |p| {
        p.child_actions_seen = 1;
        p.left.count = 1;
    });
    store.send(ParentAction::Right(ChildAction::Add(-4)), |p| {
        p.child_actions_seen = 2;
        p.right.count = -4;
    });
    // Each child's delay comes from its own slice of the environment: left after 1 s.
    store.send(ParentAction::Right(ChildAction::AddLater(100)), |p| {
        p.child_actions_seen = 3;
    });
    store.advance(Duration::from_secs(1));
    store.advance(Duration::from_secs(2));
    store.receive(ParentAction::Right(ChildAction::Add(100)), |p| {
        p.child_actions_seen = 4;
        p.right.count = 96;
    });
    store.send(ParentAction::Reset, |p| {
        p.left = Child::default();
        p.right = Child::default();
    });
    store.finish();
}

#[test]
fn a_childs_cancellation_reaches_its_timer_through_the_scope() {
    let mut store = TestStore::new(whole(), Parent::default(), env());
    store.send(ParentAction::Left(ChildAction::AddLater(1)), |p| {
        p.child_actions_seen = 1;
    });
    store.send(ParentAction::Right(ChildAction::AddLater(2)), |p| {
        p.child_actions_seen = 2;
    });
    store.send(ParentAction::Left(ChildAction::CancelLater), |p| {
        p.child_actions_seen = 3;
    });
    // Only the left timer is gone; the right one still fires.
    store.advance(Duration::from_secs(60));
    store.receive(ParentAction::Right(ChildAction::Add(2)), |p| {
        p.child_actions_seen = 4;
        p.right.count = 2;
    });
    store.finish();
}

#[test]
fn the_composed_reducer_runs_the_same_on_a_store() {
    let runtime = TestRuntime::shared(5);
    let shared: SharedRuntime = runtime.clone();
    let store = Store::builder(whole(), Parent::default(), env(), shared).build();
    drop(store.send(ParentAction::Left(ChildAction::AddLater(7))));
    drop(store.send(ParentAction::Right(ChildAction::AddLater(11))));
    runtime.advance(Duration::from_secs(2));
    assert_eq!(
        (store.state().left.count, store.state().right.count),
        (7, 0)
    );
    runtime.advance(Duration::from_secs(1));
    let state = store.state();
    assert_eq!(
        (
            state.left.count,
            state.right.count,
            state.child_actions_seen
        ),
        (7, 11, 4)
    );
    assert_eq!(store.in_flight(), 0);
}
