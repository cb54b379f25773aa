//! The reducer abstraction and its composition: [`Combine`] runs two reducers over the
//! same state, [`Scope`] embeds a child feature into a parent through a state lens and an
//! action prism.

use std::marker::PhantomData;

use crate::effect::{Effect, Effects};

/// Pure business logic: `(state, action, environment) → (new state, effects)`.
///
/// A reducer performs no I/O, reads no clock and draws no randomness except through
/// `env`; all work it wants done is returned as [`Effect`] values.
pub trait Reducer: Send + Sync + 'static {
    type State: Send + 'static;
    type Action: Send + 'static;
    type Env: Send + Sync + 'static;

    fn reduce(
        &self,
        state: &mut Self::State,
        action: Self::Action,
        env: &Self::Env,
    ) -> Effects<Self::Action>;

    /// A bounded name for the action, used as a metrics label and span field. Override
    /// it to return the variant name; the default is the action type's name.
    fn action_name(&self, _action: &Self::Action) -> &'static str {
        short_type_name::<Self::Action>()
    }
}

/// `std::any::type_name` without the module path.
#[must_use]
pub fn short_type_name<T: ?Sized>() -> &'static str {
    let full = std::any::type_name::<T>();
    let generic_start = full.find('<').unwrap_or(full.len());
    let last_sep = full[..generic_start].rfind("::").map_or(0, |i| i + 2);
    &full[last_sep..]
}

/// A reducer from a plain function.
pub struct FnReducer<S, A, E, F> {
    f: F,
    _types: PhantomData<fn(S, A, E)>,
}

impl<S, A, E, F> std::fmt::Debug for FnReducer<S, A, E, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnReducer")
    }
}

/// Wraps `f` as a [`Reducer`].
pub fn from_fn<S, A, E, F>(f: F) -> FnReducer<S, A, E, F>
where
    F: Fn(&mut S, A, &E) -> Effects<A> + Send + Sync + 'static,
{
    FnReducer {
        f,
        _types: PhantomData,
    }
}

impl<S, A, E, F> Reducer for FnReducer<S, A, E, F>
where
    S: Send + 'static,
    A: Send + 'static,
    E: Send + Sync + 'static,
    F: Fn(&mut S, A, &E) -> Effects<A> + Send + Sync + 'static,
{
    type State = S;
    type Action = A;
    type Env = E;

    fn reduce(&self, state: &mut S, action: A, env: &E) -> Effects<A> {
        (self.f)(state, action, env)
    }
}

/// Runs `first` then `second` on every action, concatenating their effects.
#[derive(Debug, Clone)]
pub struct Combine<R1, R2> {
    first: R1,
    second: R2,
}

/// See [`Combine`].
pub fn combine<R1, R2>(first: R1, second: R2) -> Combine<R1, R2>
where
    R1: Reducer,
    R2: Reducer<State = R1::State, Action = R1::Action, Env = R1::Env>,
    R1::Action: Clone,
{
    Combine { first, second }
}

impl<R1, R2> Reducer for Combine<R1, R2>
where
    R1: Reducer,
    R2: Reducer<State = R1::State, Action = R1::Action, Env = R1::Env>,
    R1::Action: Clone,
{
    type State = R1::State;
    type Action = R1::Action;
    type Env = R1::Env;

    fn reduce(
        &self,
        state: &mut Self::State,
        action: Self::Action,
        env: &Self::Env,
    ) -> Effects<Self::Action> {
        let mut effects = self.first.reduce(state, action.clone(), env);
        effects.extend(self.second.reduce(state, action, env));
        effects
    }

    fn action_name(&self, action: &Self::Action) -> &'static str {
        self.first.action_name(action)
    }
}

/// Embeds a child reducer into a parent.
///
/// - `lens` borrows the child's state inside the parent's (no clone per action);
/// - `extract` picks the parent actions meant for the child (`Err` hands the action back
///   untouched, and the scope does nothing with it);
/// - `embed` lifts the child's feedback actions into parent actions;
/// - `env` borrows the child's environment from the parent's.
pub struct Scope<R, PS, PA, PE, L, X, M, V> {
    child: R,
    lens: L,
    extract: X,
    embed: M,
    env: V,
    _parent: PhantomData<fn(PS, PA, PE)>,
}

impl<R, PS, PA, PE, L, X, M, V> std::fmt::Debug for Scope<R, PS, PA, PE, L, X, M, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scope")
    }
}

/// See [`Scope`].
pub fn scope<R, PS, PA, PE, L, X, M, V>(
    child: R,
    lens: L,
    extract: X,
    embed: M,
    env: V,
) -> Scope<R, PS, PA, PE, L, X, M, V>
where
    R: Reducer,
    L: Fn(&mut PS) -> &mut R::State + Send + Sync + 'static,
    X: Fn(PA) -> Result<R::Action, PA> + Send + Sync + 'static,
    M: Fn(R::Action) -> PA + Clone + Send + Sync + 'static,
    V: Fn(&PE) -> &R::Env + Send + Sync + 'static,
{
    Scope {
        child,
        lens,
        extract,
        embed,
        env,
        _parent: PhantomData,
    }
}

impl<R, PS, PA, PE, L, X, M, V> Reducer for Scope<R, PS, PA, PE, L, X, M, V>
where
    R: Reducer,
    PS: Send + 'static,
    PA: Send + 'static,
    PE: Send + Sync + 'static,
    L: Fn(&mut PS) -> &mut R::State + Send + Sync + 'static,
    X: Fn(PA) -> Result<R::Action, PA> + Send + Sync + 'static,
    M: Fn(R::Action) -> PA + Clone + Send + Sync + 'static,
    V: Fn(&PE) -> &R::Env + Send + Sync + 'static,
{
    type State = PS;
    type Action = PA;
    type Env = PE;

    fn reduce(&self, state: &mut PS, action: PA, env: &PE) -> Effects<PA> {
        let Ok(child_action) = (self.extract)(action) else {
            return Effects::new();
        };
        let child_effects = self
            .child
            .reduce((self.lens)(state), child_action, (self.env)(env));
        child_effects
            .into_iter()
            .filter(|e| !matches!(e, Effect::None))
            .map(|e| e.map(self.embed.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects;
    use std::time::Duration;

    #[derive(Default, Debug, PartialEq)]
    struct Parent {
        clicks: u32,
        child: Child,
    }

    #[derive(Default, Debug, PartialEq)]
    struct Child {
        value: i64,
    }

    #[derive(Clone, Debug, PartialEq)]
    enum ParentAction {
        Click,
        Child(ChildAction),
    }

    #[derive(Clone, Debug, PartialEq)]
    enum ChildAction {
        Add(i64),
        AddLater(i64),
    }

    fn child() -> impl Reducer<State = Child, Action = ChildAction, Env = ()> {
        from_fn(|s: &mut Child, a: ChildAction, (): &()| match a {
            ChildAction::Add(n) => {
                s.value += n;
                effects![]
            }
            ChildAction::AddLater(n) => {
                effects![Effect::timer(
                    "later",
                    Duration::from_secs(1),
                    ChildAction::Add(n)
                )]
            }
        })
    }

    fn counting() -> impl Reducer<State = Parent, Action = ParentAction, Env = ()> {
        from_fn(|s: &mut Parent, _a: ParentAction, (): &()| {
            s.clicks += 1;
            effects![]
        })
    }

    fn scoped() -> impl Reducer<State = Parent, Action = ParentAction, Env = ()> {
        scope(
            child(),
            |p: &mut Parent| &mut p.child,
            |a: ParentAction| match a {
                ParentAction::Child(c) => Ok(c),
                other => Err(other),
            },
            ParentAction::Child,
            |e: &()| e,
        )
    }

    #[test]
    fn scope_routes_child_actions_and_ignores_others() {
        let r = scoped();
        let mut s = Parent::default();
        assert!(r.reduce(&mut s, ParentAction::Click, &()).is_empty());
        r.reduce(&mut s, ParentAction::Child(ChildAction::Add(5)), &());
        assert_eq!(
            s,
            Parent {
                clicks: 0,
                child: Child { value: 5 }
            }
        );
    }

    #[test]
    fn scope_lifts_child_effects_into_parent_actions() {
        let r = scoped();
        let mut s = Parent::default();
        let effects = r.reduce(&mut s, ParentAction::Child(ChildAction::AddLater(2)), &());
        assert_eq!(effects.len(), 1);
        match effects.into_iter().next() {
            Some(Effect::Timer { action, .. }) => {
                assert_eq!(action, ParentAction::Child(ChildAction::Add(2)));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn combine_runs_both_in_order() {
        let r = combine(counting(), scoped());
        let mut s = Parent::default();
        r.reduce(&mut s, ParentAction::Child(ChildAction::Add(3)), &());
        r.reduce(&mut s, ParentAction::Click, &());
        assert_eq!(
            s,
            Parent {
                clicks: 2,
                child: Child { value: 3 }
            }
        );
    }

    #[test]
    fn short_type_names_drop_the_path() {
        assert_eq!(short_type_name::<ParentAction>(), "ParentAction");
        assert_eq!(short_type_name::<Vec<u8>>(), "Vec<u8>");
    }
}
