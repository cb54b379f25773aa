//! The [`Store`]: owns a feature's state, runs its reducer, executes the effects on the
//! runtime and feeds their results back in.
//!
//! The state lock is held only while the reducer runs, never across an effect, so a
//! store is safe to share across tasks and the reducer sees actions one at a time.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;

use crate::effect::Effects;
use crate::instrument as names;
use crate::interpret::{self, Cancellables, Dependencies, EffectHost};
use crate::memory::{InMemoryEventBus, InMemoryEventStore};
use crate::reducer::Reducer;
use crate::runtime::SharedRuntime;
use crate::tracker::{Idle, Tracker};

/// A running feature. Cheap to clone: clones share the state.
pub struct Store<R: Reducer> {
    inner: Arc<Inner<R>>,
}

impl<R: Reducer> Clone for Store<R> {
    fn clone(&self) -> Self {
        Store {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<R: Reducer> std::fmt::Debug for Store<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

struct Inner<R: Reducer> {
    name: &'static str,
    reducer: R,
    env: R::Env,
    state: Mutex<Guarded<R::State>>,
    reducer_duration: OnceLock<metrics::Histogram>,
    deps: Dependencies,
    cancellables: Arc<Cancellables>,
    all_work: Arc<Tracker>,
    closing: AtomicBool,
    sends: AtomicU64,
    /// Tasks waiting in [`Store::until`] for the state to change.
    watchers: Watchers,
}

/// Wakers of [`Store::until`] futures. Registered under the state lock and woken after
/// each reduce, so a change between a watcher's check and its registration cannot be
/// missed. The flag keeps a store nobody watches from taking a second lock per action.
#[derive(Default)]
struct Watchers {
    any: AtomicBool,
    wakers: Mutex<smallvec::SmallVec<[std::task::Waker; 2]>>,
}

impl Watchers {
    fn register(&self, waker: &std::task::Waker) {
        let mut wakers = self.wakers.lock();
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
        self.any.store(true, Ordering::Release);
    }

    fn wake_all(&self) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let wakers = {
            let mut wakers = self.wakers.lock();
            self.any.store(false, Ordering::Release);
            std::mem::take(&mut *wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

/// What the state lock guards: the state, and the per-action counters the reducer's
/// caller bumps while it holds the lock anyway.
struct Guarded<S> {
    state: S,
    action_counters: ActionCounters,
}

/// `reprise_actions_total` handles by action name, registered on first use.
///
/// Building a metrics key (a label vector, a hash, an allocation) costs more than the
/// rest of a send together; the `metrics` crate's answer is to register a handle once and
/// keep it. Action names are bounded (see [`Reducer::action_name`]), so a short list
/// scanned under the state lock is the whole cache. Consequence: install the metrics
/// recorder before the first action reaches a store, as the `metrics` crate asks anyway.
#[derive(Default)]
struct ActionCounters {
    by_name: Vec<(&'static str, metrics::Counter)>,
}

impl ActionCounters {
    /// Beyond this many distinct names the action label is not bounded after all; stop
    /// caching rather than grow without limit (the metric itself still works).
    const MAX_CACHED: usize = 64;

    fn increment(&mut self, store: &'static str, action: &'static str) {
        // Pointer equality first: the same literal is usually the same address.
        if let Some((_, counter)) = self
            .by_name
            .iter()
            .find(|(name, _)| std::ptr::eq(*name, action) || *name == action)
        {
            counter.increment(1);
            return;
        }
        let counter = metrics::counter!(names::ACTIONS, "store" => store, "action" => action);
        counter.increment(1);
        if self.by_name.len() < Self::MAX_CACHED {
            self.by_name.push((action, counter));
        }
    }
}

impl<R: Reducer> Inner<R> {
    fn reduce(&self, action: R::Action) -> Effects<R::Action> {
        let action_name = self.reducer.action_name(&action);
        let _span = tracing::debug_span!("reprise.reduce", store = self.name, action = action_name)
            .entered();
        let sample =
            self.sends.fetch_add(1, Ordering::Relaxed) % names::REDUCER_TIMING_SAMPLE_EVERY == 0;
        let started = if sample {
            self.deps.runtime.stopwatch_nanos()
        } else {
            0
        };
        let effects = {
            let mut guarded = self.state.lock();
            let Guarded {
                state,
                action_counters,
            } = &mut *guarded;
            action_counters.increment(self.name, action_name);
            self.reducer.reduce(state, action, &self.env)
        };
        self.watchers.wake_all();
        if sample {
            let elapsed = self.deps.runtime.stopwatch_nanos().saturating_sub(started);
            #[allow(clippy::cast_precision_loss)]
            self.reducer_duration
                .get_or_init(|| metrics::histogram!(names::REDUCER_DURATION, "store" => self.name))
                .record(elapsed as f64 / 1e9);
        }
        effects
    }
}

impl<R: Reducer> EffectHost for Inner<R> {
    type Action = R::Action;

    fn dependencies(&self) -> &Dependencies {
        &self.deps
    }

    fn cancellables(&self) -> &Arc<Cancellables> {
        &self.cancellables
    }

    fn store_name(&self) -> &'static str {
        self.name
    }

    fn feed(self: &Arc<Self>, action: R::Action, cause: &Arc<Tracker>) {
        let effects = self.reduce(action);
        if !effects.iter().all(crate::Effect::is_none) {
            interpret::start(self, effects, cause);
        }
    }
}

impl<R: Reducer> Store<R> {
    /// Starts building a store. Without further configuration it runs on `runtime` with
    /// an in-memory event store and bus.
    pub fn builder(
        reducer: R,
        initial_state: R::State,
        env: R::Env,
        runtime: SharedRuntime,
    ) -> StoreBuilder<R> {
        StoreBuilder {
            name: crate::reducer::short_type_name::<R::State>(),
            reducer,
            state: initial_state,
            env,
            runtime,
            event_store: None,
            event_bus: None,
            resilience: None,
        }
    }

    /// Reduces `action` and starts its effects. The handle completes when the action and
    /// every effect and feedback action it caused (transitively) have finished. Dropping
    /// the handle does not cancel anything.
    ///
    /// While the store shuts down, new actions from outside are refused (counted in
    /// `reprise_actions_rejected_total`); actions fed back by in-flight effects still run.
    pub fn send(&self, action: R::Action) -> SendHandle {
        if self.inner.closing.load(Ordering::Acquire) {
            metrics::counter!(names::ACTIONS_REJECTED, "store" => self.inner.name).increment(1);
            tracing::warn!(
                store = self.inner.name,
                "action refused: store is shutting down"
            );
            return SendHandle {
                tracker: None,
                refused: true,
            };
        }
        let effects = self.inner.reduce(action);
        if effects.iter().all(crate::Effect::is_none) {
            return SendHandle {
                tracker: None,
                refused: false,
            };
        }
        let tracker = Tracker::child(&self.inner.all_work);
        interpret::start(&self.inner, effects, &tracker);
        SendHandle {
            tracker: Some(tracker),
            refused: false,
        }
    }

    /// Whether `self` and `other` are handles to the same store (not merely equal state).
    #[must_use]
    pub fn is_same(&self, other: &Store<R>) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Reads the state under the lock.
    pub fn with_state<T>(&self, read: impl FnOnce(&R::State) -> T) -> T {
        read(&self.inner.state.lock().state)
    }

    /// Completes once `condition` holds for the state: at once if it holds now, else
    /// after the first action whose reduction makes it hold. Waiting costs nothing
    /// between actions (no polling): the future is woken by each reduce.
    pub fn until<F>(&self, condition: F) -> impl Future<Output = ()> + Send + use<R, F>
    where
        F: Fn(&R::State) -> bool + Send,
    {
        let inner = Arc::clone(&self.inner);
        std::future::poll_fn(move |cx| {
            let guarded = inner.state.lock();
            if condition(&guarded.state) {
                return Poll::Ready(());
            }
            // Registered while the state lock is held: a reduce that changes the state
            // after this check wakes us, since it wakes only after taking that lock.
            inner.watchers.register(cx.waker());
            Poll::Pending
        })
    }

    /// A copy of the state.
    #[must_use]
    pub fn state(&self) -> R::State
    where
        R::State: Clone,
    {
        self.inner.state.lock().state.clone()
    }

    #[must_use]
    pub fn env(&self) -> &R::Env {
        &self.inner.env
    }

    #[must_use]
    pub fn dependencies(&self) -> &Dependencies {
        &self.inner.deps
    }

    #[must_use]
    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    /// Effects still running (timers included).
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.inner.all_work.pending()
    }

    /// Completes when no effect is in flight.
    #[must_use]
    pub fn idle(&self) -> Idle {
        self.inner.all_work.idle()
    }

    /// Refuses new actions, waits up to `grace` for in-flight effects, then cancels what
    /// is still cancellable.
    ///
    /// # Errors
    /// [`ShutdownError`] with the number of effects still running at the deadline.
    pub async fn shutdown(&self, grace: Duration) -> Result<(), ShutdownError> {
        self.inner.closing.store(true, Ordering::Release);
        let idle = self.inner.all_work.idle();
        let deadline = self.inner.deps.runtime.sleep(grace);
        match futures::future::select(idle, deadline).await {
            futures::future::Either::Left(_) => Ok(()),
            futures::future::Either::Right(_) => {
                let still_running = self.inner.all_work.pending();
                let cancelled = self.inner.cancellables.cancel_all();
                tracing::warn!(
                    store = self.inner.name,
                    still_running,
                    cancelled,
                    "shutdown deadline passed"
                );
                Err(ShutdownError {
                    still_running,
                    cancelled,
                })
            }
        }
    }
}

/// See [`Store::shutdown`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{still_running} effects still running at the shutdown deadline ({cancelled} cancelled)")]
pub struct ShutdownError {
    pub still_running: usize,
    pub cancelled: usize,
}

/// Configures a [`Store`].
pub struct StoreBuilder<R: Reducer> {
    name: &'static str,
    reducer: R,
    state: R::State,
    env: R::Env,
    runtime: SharedRuntime,
    event_store: Option<Arc<dyn crate::EventStore>>,
    event_bus: Option<Arc<dyn crate::EventBus>>,
    resilience: Option<Arc<crate::Resilience>>,
}

impl<R: Reducer> std::fmt::Debug for StoreBuilder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreBuilder")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<R: Reducer> StoreBuilder<R> {
    /// The `store` label on spans and metrics (default: the state type's name).
    #[must_use]
    pub fn name(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    #[must_use]
    pub fn event_store(mut self, store: Arc<dyn crate::EventStore>) -> Self {
        self.event_store = Some(store);
        self
    }

    #[must_use]
    pub fn event_bus(mut self, bus: Arc<dyn crate::EventBus>) -> Self {
        self.event_bus = Some(bus);
        self
    }

    /// Retry policies, breakers and dead-letter queue for this store's effects (default:
    /// [`Resilience::new`](crate::Resilience::new), private to the store). Pass the same
    /// `Arc` to every store of a service so each dependency has one breaker.
    #[must_use]
    pub fn resilience(mut self, resilience: Arc<crate::Resilience>) -> Self {
        self.resilience = Some(resilience);
        self
    }

    #[must_use]
    pub fn build(self) -> Store<R> {
        let runtime = self.runtime;
        let event_store = self.event_store.unwrap_or_else(|| {
            let clock: Arc<dyn crate::Clock> = runtime.clone();
            Arc::new(InMemoryEventStore::with_clock(clock))
        });
        let event_bus = self
            .event_bus
            .unwrap_or_else(|| Arc::new(InMemoryEventBus::new()));
        Store {
            inner: Arc::new(Inner {
                name: self.name,
                reducer: self.reducer,
                env: self.env,
                state: Mutex::new(Guarded {
                    state: self.state,
                    action_counters: ActionCounters::default(),
                }),
                reducer_duration: OnceLock::new(),
                deps: Dependencies {
                    runtime,
                    event_store,
                    event_bus,
                    resilience: self.resilience.unwrap_or_default(),
                },
                cancellables: Arc::default(),
                all_work: Tracker::root(),
                closing: AtomicBool::new(false),
                sends: AtomicU64::new(0),
                watchers: Watchers::default(),
            }),
        }
    }
}

/// Awaits everything one [`Store::send`] caused.
#[derive(Debug)]
#[must_use = "await the handle to wait for the action's effects, or drop it to fire and forget"]
pub struct SendHandle {
    tracker: Option<Arc<Tracker>>,
    refused: bool,
}

impl SendHandle {
    /// Whether the store refused the action (it was shutting down).
    #[must_use]
    pub fn was_refused(&self) -> bool {
        self.refused
    }

    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.tracker.as_ref().is_none_or(|t| t.pending() == 0)
    }

    /// Completes when everything the action caused has finished.
    pub fn finished(self) -> impl Future<Output = ()> + Send {
        self
    }
}

impl Future for SendHandle {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &self.tracker {
            None => Poll::Ready(()),
            Some(tracker) => tracker.poll_idle(cx),
        }
    }
}
