//! Effects: *descriptions* of work a reducer wants done, executed by the store's runtime.
//!
//! The variants that matter for correctness — append, publish, timer, cancel — are plain
//! data a test can compare and the simulator can log ([`Effect::describe`]). Only the
//! continuation that turns an effect's result back into an action is a closure, and it is
//! deliberately left out of comparisons: what a test asserts is *what* was asked for.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;

use crate::event_bus::{BusError, OutgoingMessage};
use crate::event_store::{AppendBatch, AppendReceipt, StoreError};
use crate::resilience::{CallError, Classify, Resilience};
use crate::runtime::{BoxFuture, SharedRuntime};

/// What a reducer returns. Four inline slots: most actions cause zero to two effects, so
/// the common case never allocates.
pub type Effects<A> = SmallVec<[Effect<A>; 4]>;

/// A stable name for a long-running or delayed effect, used to cancel it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EffectId(Arc<str>);

impl EffectId {
    #[must_use]
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        EffectId(name.into())
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EffectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for EffectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for EffectId {
    fn from(value: &str) -> Self {
        EffectId::new(value)
    }
}

impl From<String> for EffectId {
    fn from(value: String) -> Self {
        EffectId::new(value)
    }
}

/// Maps an effect's outcome to the action fed back into the reducer (`None`: nothing).
pub type Continuation<T, A> = Box<dyn FnOnce(T) -> Option<A> + Send>;

/// One unit of work described by a reducer.
pub enum Effect<A> {
    /// Nothing to do.
    None,
    /// Arbitrary async work (an external call, say) whose result may become an action.
    /// With an `id` it can be cancelled; `label` names it in traces and metrics.
    Run {
        id: Option<EffectId>,
        label: &'static str,
        work: BoxFuture<'static, Option<A>>,
    },
    /// Feed `action` back after `after` of the runtime's clock. Scheduling a timer under
    /// an id that is already pending replaces (cancels) the pending one.
    Timer {
        id: EffectId,
        after: Duration,
        action: A,
    },
    /// Cancels every pending effect registered under `id`.
    Cancel(EffectId),
    /// Runs the effects concurrently.
    Parallel(Vec<Effect<A>>),
    /// Runs each effect only after the previous one has finished.
    Sequential(Vec<Effect<A>>),
    /// Appends events atomically to the store.
    Append {
        batch: AppendBatch,
        then: Continuation<Result<AppendReceipt, StoreError>, A>,
    },
    /// Publishes messages to the bus.
    Publish {
        messages: Vec<OutgoingMessage>,
        then: Continuation<Result<(), BusError>, A>,
    },
    /// Calls an external dependency under its retry policy and circuit breaker (see
    /// [`Resilience`]); after the last attempt the work may be parked in the dead-letter
    /// queue.
    Call(DependencyCall<A>),
}

/// What a [`DependencyCall`] runs against: handed in by the interpreter.
pub(crate) struct CallPlatform {
    pub(crate) runtime: SharedRuntime,
    pub(crate) resilience: Arc<Resilience>,
}

type CallRunner<A> =
    Box<dyn FnOnce(CallPlatform, Option<OutgoingMessage>) -> BoxFuture<'static, Option<A>> + Send>;

/// A call to a named dependency, built with [`Effect::call`].
///
/// The dependency's name picks the retry policy and the breaker; the attempt closure is
/// called once per attempt (so it must be safe to repeat — pass an idempotency key to
/// services that take one); `then` turns the final outcome into an action.
pub struct DependencyCall<A> {
    pub id: Option<EffectId>,
    pub dependency: &'static str,
    pub operation: &'static str,
    /// The message to park in the dead-letter queue if the call finally fails (anything
    /// but a conflict): the unit of work as it arrived, so an operator can redeliver it.
    pub dead_letter: Option<OutgoingMessage>,
    run: CallRunner<A>,
}

impl<A: 'static> DependencyCall<A> {
    /// Parks `message` in the dead-letter queue if the call finally fails.
    #[must_use]
    pub fn dead_letter(mut self, message: OutgoingMessage) -> Self {
        self.dead_letter = Some(message);
        self
    }

    /// Makes the call cancellable with [`Effect::Cancel`] under `id` (a cancelled call
    /// stops between attempts or mid-attempt and produces no action).
    #[must_use]
    pub fn cancellable(mut self, id: impl Into<EffectId>) -> Self {
        self.id = Some(id.into());
        self
    }

    pub(crate) fn start(self, platform: CallPlatform) -> BoxFuture<'static, Option<A>> {
        (self.run)(platform, self.dead_letter)
    }

    fn map<B: 'static>(self, f: impl Fn(A) -> B + Send + Sync + 'static) -> DependencyCall<B> {
        let run = self.run;
        DependencyCall {
            id: self.id,
            dependency: self.dependency,
            operation: self.operation,
            dead_letter: self.dead_letter,
            run: Box::new(move |platform, dead_letter| {
                let work = run(platform, dead_letter);
                Box::pin(async move { work.await.map(f) })
            }),
        }
    }
}

impl<A> fmt::Debug for DependencyCall<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DependencyCall")
            .field("id", &self.id)
            .field("dependency", &self.dependency)
            .field("operation", &self.operation)
            .field("dead_letter", &self.dead_letter)
            .finish_non_exhaustive()
    }
}

impl<A> From<DependencyCall<A>> for Effect<A> {
    fn from(call: DependencyCall<A>) -> Self {
        Effect::Call(call)
    }
}

impl<A> Effect<A> {
    /// Async work producing at most one action.
    pub fn run<F>(label: &'static str, work: F) -> Self
    where
        F: Future<Output = Option<A>> + Send + 'static,
    {
        Effect::Run {
            id: None,
            label,
            work: Box::pin(work),
        }
    }

    /// Async work that [`Effect::Cancel`] with the same id stops.
    pub fn cancellable<F>(id: impl Into<EffectId>, label: &'static str, work: F) -> Self
    where
        F: Future<Output = Option<A>> + Send + 'static,
    {
        Effect::Run {
            id: Some(id.into()),
            label,
            work: Box::pin(work),
        }
    }

    /// Sends `action` after `after`.
    pub fn timer(id: impl Into<EffectId>, after: Duration, action: A) -> Self {
        Effect::Timer {
            id: id.into(),
            after,
            action,
        }
    }

    pub fn cancel(id: impl Into<EffectId>) -> Self {
        Effect::Cancel(id.into())
    }

    pub fn append(
        batch: AppendBatch,
        then: impl FnOnce(Result<AppendReceipt, StoreError>) -> Option<A> + Send + 'static,
    ) -> Self {
        Effect::Append {
            batch,
            then: Box::new(then),
        }
    }

    pub fn publish(
        messages: Vec<OutgoingMessage>,
        then: impl FnOnce(Result<(), BusError>) -> Option<A> + Send + 'static,
    ) -> Self {
        Effect::Publish {
            messages,
            then: Box::new(then),
        }
    }

    /// A call to the dependency named `dependency` under its retry policy and breaker.
    /// `attempt` makes one attempt; its error's [`Classify`] class decides whether
    /// another follows. Turn the result into an [`Effect`] with `.into()` after optionally
    /// adding [`DependencyCall::dead_letter`] or [`DependencyCall::cancellable`].
    pub fn call<T, E, F, Fut>(
        dependency: &'static str,
        operation: &'static str,
        attempt: F,
        then: impl FnOnce(Result<T, CallError<E>>) -> Option<A> + Send + 'static,
    ) -> DependencyCall<A>
    where
        A: 'static,
        T: Send + 'static,
        E: Classify + fmt::Display + Send + 'static,
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        DependencyCall {
            id: None,
            dependency,
            operation,
            dead_letter: None,
            run: Box::new(
                move |platform: CallPlatform, dead_letter: Option<OutgoingMessage>| {
                    Box::pin(async move {
                        let CallPlatform {
                            runtime,
                            resilience,
                        } = platform;
                        let mut result = resilience
                            .call(&*runtime, dependency, operation, attempt)
                            .await;
                        if let (Err(error), Some(message)) = (&mut result, &dead_letter) {
                            resilience
                                .dead_letter(&*runtime, message, None, error)
                                .await;
                        }
                        then(result)
                    })
                },
            ),
        }
    }

    /// `true` for [`Effect::None`] and empty groups: nothing would run.
    #[must_use]
    pub fn is_none(&self) -> bool {
        match self {
            Effect::None => true,
            Effect::Parallel(effects) | Effect::Sequential(effects) => {
                effects.iter().all(Effect::is_none)
            }
            _ => false,
        }
    }

    /// A bounded label for metrics and spans.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Effect::None => "none",
            Effect::Run { .. } => "run",
            Effect::Timer { .. } => "timer",
            Effect::Cancel(_) => "cancel",
            Effect::Parallel(_) => "parallel",
            Effect::Sequential(_) => "sequential",
            Effect::Append { .. } => "append",
            Effect::Publish { .. } => "publish",
            Effect::Call(_) => "call",
        }
    }

    /// Converts the actions this effect produces, e.g. to lift a child's effects into a
    /// parent's action type.
    pub fn map<B>(self, f: impl Fn(A) -> B + Send + Sync + Clone + 'static) -> Effect<B>
    where
        A: 'static,
        B: 'static,
    {
        match self {
            Effect::None => Effect::None,
            Effect::Run { id, label, work } => Effect::Run {
                id,
                label,
                work: Box::pin(async move { work.await.map(f) }),
            },
            Effect::Timer { id, after, action } => Effect::Timer {
                id,
                after,
                action: f(action),
            },
            Effect::Cancel(id) => Effect::Cancel(id),
            Effect::Parallel(effects) => {
                Effect::Parallel(effects.into_iter().map(|e| e.map(f.clone())).collect())
            }
            Effect::Sequential(effects) => {
                Effect::Sequential(effects.into_iter().map(|e| e.map(f.clone())).collect())
            }
            Effect::Append { batch, then } => Effect::Append {
                batch,
                then: Box::new(move |r| then(r).map(f)),
            },
            Effect::Publish { messages, then } => Effect::Publish {
                messages,
                then: Box::new(move |r| then(r).map(f)),
            },
            Effect::Call(call) => Effect::Call(call.map(f)),
        }
    }
}

impl<A: fmt::Debug> Effect<A> {
    /// The comparable, loggable description of this effect.
    #[must_use]
    pub fn describe(&self) -> EffectDescription {
        match self {
            Effect::None => EffectDescription::None,
            Effect::Run { id, label, .. } => EffectDescription::Run {
                id: id.clone(),
                label,
            },
            Effect::Timer { id, after, action } => EffectDescription::Timer {
                id: id.clone(),
                after: *after,
                action: format!("{action:?}"),
            },
            Effect::Cancel(id) => EffectDescription::Cancel(id.clone()),
            Effect::Parallel(effects) => {
                EffectDescription::Parallel(effects.iter().map(Effect::describe).collect())
            }
            Effect::Sequential(effects) => {
                EffectDescription::Sequential(effects.iter().map(Effect::describe).collect())
            }
            Effect::Append { batch, .. } => EffectDescription::Append(batch.clone()),
            Effect::Publish { messages, .. } => EffectDescription::Publish(messages.clone()),
            Effect::Call(call) => EffectDescription::Call {
                id: call.id.clone(),
                dependency: call.dependency,
                operation: call.operation,
                dead_letter: call.dead_letter.clone(),
            },
        }
    }
}

impl<A: fmt::Debug> fmt::Debug for Effect<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.describe(), f)
    }
}

/// An effect with its continuations and futures stripped: what tests assert on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EffectDescription {
    None,
    Run {
        id: Option<EffectId>,
        label: &'static str,
    },
    /// The action is kept as its `Debug` text so descriptions stay comparable for any
    /// action type.
    Timer {
        id: EffectId,
        after: Duration,
        action: String,
    },
    Cancel(EffectId),
    Parallel(Vec<EffectDescription>),
    Sequential(Vec<EffectDescription>),
    Append(AppendBatch),
    Publish(Vec<OutgoingMessage>),
    Call {
        id: Option<EffectId>,
        dependency: &'static str,
        operation: &'static str,
        dead_letter: Option<OutgoingMessage>,
    },
}

/// Builds [`Effects`] from a list: `effects![Effect::cancel("t"), Effect::timer(..)]`.
#[macro_export]
macro_rules! effects {
    () => { $crate::Effects::new() };
    ($($effect:expr),+ $(,)?) => {{
        let mut effects = $crate::Effects::new();
        $(effects.push($effect);)+
        effects
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_compare_what_was_asked_not_the_closures() {
        let a: Effect<u8> = Effect::timer("t", Duration::from_secs(1), 7);
        let b: Effect<u8> = Effect::timer("t", Duration::from_secs(1), 7);
        assert_eq!(a.describe(), b.describe());
        let c: Effect<u8> = Effect::timer("t", Duration::from_secs(2), 7);
        assert_ne!(a.describe(), c.describe());
    }

    #[test]
    fn map_lifts_timer_actions() {
        let e: Effect<u8> = Effect::timer("t", Duration::from_secs(1), 7);
        let lifted = e.map(|a| u16::from(a) * 100);
        match lifted {
            Effect::Timer { action, .. } => assert_eq!(action, 700),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn empty_groups_are_none() {
        let e: Effect<u8> = Effect::Parallel(vec![Effect::None, Effect::Sequential(vec![])]);
        assert!(e.is_none());
        assert!(!Effect::<u8>::cancel("x").is_none());
    }
}
