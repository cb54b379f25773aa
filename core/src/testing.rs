//! Testing support: [`TestRuntime`], a manual deterministic runtime with a virtual clock,
//! and [`TestStore`], an exhaustive store after Swift TCA's.
//!
//! An exhaustive `TestStore` fails the test when:
//! - a `send`/`receive` changes the state differently from what the test declared;
//! - an action fed back by an effect was never asserted with `receive`;
//! - a `send` happens while received actions are still unasserted;
//! - effects are still running when the test ends (`finish`, or drop);
//! - an append or publish the reducer asked for was never asserted (`expect_effect`),
//!   or differs from the one asserted.
//!
//! Effects run through the same interpreter as [`Store`](crate::Store), so a test
//! exercises the semantics production uses.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use parking_lot::Mutex;

use crate::effect::{Effect, EffectDescription, Effects};
use crate::interpret::{self, Cancellables, Dependencies, EffectHost};
use crate::memory::{InMemoryEventBus, InMemoryEventStore};
use crate::reducer::Reducer;
use crate::runtime::{BoxFuture, Clock, Entropy, Runtime, SharedRuntime, Spawner};
use crate::time::Timestamp;
use crate::tracker::Tracker;

// ---------------------------------------------------------------------------------------
// TestRuntime
// ---------------------------------------------------------------------------------------

/// A deterministic runtime driven by the test: tasks run FIFO when the test asks
/// ([`TestRuntime::run_until_idle`]), time moves only by [`TestRuntime::advance`].
///
/// Randomness is SplitMix64 from a fixed seed: the core crate stays free of RNG
/// dependencies, and tests need reproducibility, not statistical quality.
pub struct TestRuntime {
    inner: Arc<Mutex<RuntimeState>>,
    rng: AtomicU64,
    ticks: AtomicU64,
}

#[derive(Default)]
struct RuntimeState {
    now: u64,
    tasks: BTreeMap<u64, BoxFuture<'static, ()>>,
    ready: VecDeque<u64>,
    next_task: u64,
    timers: BTreeMap<(u64, u64), Waker>,
    next_timer: u64,
}

impl Debug for TestRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("TestRuntime")
            .field("now", &Timestamp::from_unix_nanos(state.now))
            .field("tasks", &state.tasks.len())
            .finish()
    }
}

struct TaskWaker {
    id: u64,
    state: std::sync::Weak<Mutex<RuntimeState>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(state) = self.state.upgrade() {
            let mut state = state.lock();
            if state.tasks.contains_key(&self.id) && !state.ready.contains(&self.id) {
                state.ready.push_back(self.id);
            }
        }
    }
}

impl Default for TestRuntime {
    fn default() -> Self {
        Self::new(0)
    }
}

impl TestRuntime {
    /// A runtime at [`Timestamp::SIMULATION_EPOCH`] with entropy seeded by `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        let state = RuntimeState {
            now: Timestamp::SIMULATION_EPOCH.as_unix_nanos(),
            ..RuntimeState::default()
        };
        TestRuntime {
            inner: Arc::new(Mutex::new(state)),
            rng: AtomicU64::new(seed),
            ticks: AtomicU64::new(0),
        }
    }

    #[must_use]
    pub fn shared(seed: u64) -> Arc<Self> {
        Arc::new(Self::new(seed))
    }

    /// Polls ready tasks until none is ready. Returns how many polls ran.
    pub fn run_until_idle(&self) -> usize {
        let mut polls = 0;
        loop {
            let next = {
                let mut state = self.inner.lock();
                state
                    .ready
                    .pop_front()
                    .and_then(|id| state.tasks.remove(&id).map(|t| (id, t)))
            };
            let Some((id, mut task)) = next else {
                return polls;
            };
            polls += 1;
            let waker = Waker::from(Arc::new(TaskWaker {
                id,
                state: Arc::downgrade(&self.inner),
            }));
            if task
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
            {
                self.inner.lock().tasks.insert(id, task);
            }
        }
    }

    /// Moves the clock forward by `duration`, firing due timers in order and running
    /// the tasks they wake after each.
    pub fn advance(&self, duration: Duration) {
        let target = self.now() + duration;
        self.run_until_idle();
        loop {
            let due = {
                let mut state = self.inner.lock();
                match state.timers.first_key_value() {
                    Some((&(at, _), _)) if at <= target.as_unix_nanos() => {
                        state.now = state.now.max(at);
                        let (_, waker) = state.timers.pop_first().expect("just seen");
                        Some(waker)
                    }
                    _ => None,
                }
            };
            match due {
                Some(waker) => {
                    waker.wake();
                    self.run_until_idle();
                }
                None => break,
            }
        }
        self.inner.lock().now = target.as_unix_nanos();
        self.run_until_idle();
    }

    /// Tasks spawned and not finished.
    #[must_use]
    pub fn live_tasks(&self) -> usize {
        self.inner.lock().tasks.len()
    }

    /// Timers armed and not fired.
    #[must_use]
    pub fn pending_timers(&self) -> usize {
        self.inner.lock().timers.len()
    }
}

impl Clock for TestRuntime {
    fn now(&self) -> Timestamp {
        Timestamp::from_unix_nanos(self.inner.lock().now)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let deadline = (self.now() + duration).as_unix_nanos();
        Box::pin(TestSleep {
            state: Arc::clone(&self.inner),
            deadline,
            registered: None,
        })
    }
}

/// A timer on the [`TestRuntime`]. Dropping it (a cancelled effect) disarms it, so
/// `pending_timers` and `block_on` never see timers nobody waits for.
struct TestSleep {
    state: Arc<Mutex<RuntimeState>>,
    deadline: u64,
    registered: Option<(u64, u64)>,
}

impl Future for TestSleep {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut s = this.state.lock();
        if s.now >= this.deadline {
            if let Some(key) = this.registered.take() {
                s.timers.remove(&key);
            }
            return Poll::Ready(());
        }
        let key = *this.registered.get_or_insert_with(|| {
            s.next_timer += 1;
            (this.deadline, s.next_timer)
        });
        s.timers.insert(key, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for TestSleep {
    fn drop(&mut self) {
        if let Some(key) = self.registered.take() {
            self.state.lock().timers.remove(&key);
        }
    }
}

impl Entropy for TestRuntime {
    fn next_u64(&self) -> u64 {
        // SplitMix64.
        let mut z = self
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Spawner for TestRuntime {
    fn spawn(&self, _name: &'static str, task: BoxFuture<'static, ()>) {
        let mut state = self.inner.lock();
        let id = state.next_task;
        state.next_task += 1;
        state.tasks.insert(id, task);
        state.ready.push_back(id);
    }
}

impl Runtime for TestRuntime {
    fn stopwatch_nanos(&self) -> u64 {
        self.ticks.fetch_add(1, Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------------------
// TestStore
// ---------------------------------------------------------------------------------------

/// How strictly a [`TestStore`] checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exhaustivity {
    /// Every state change, received action, domain effect and running effect must be
    /// accounted for.
    On,
    /// Only what the test asserts is checked: `receive` skips unasserted actions, and
    /// unasserted effects or running effects at the end are allowed (and cancelled).
    Off,
}

struct TestHost<R: Reducer> {
    reducer: R,
    env: R::Env,
    state: Mutex<R::State>,
    deps: Dependencies,
    cancellables: Arc<Cancellables>,
    received: Mutex<VecDeque<R::Action>>,
}

impl<R: Reducer> EffectHost for TestHost<R> {
    type Action = R::Action;

    fn dependencies(&self) -> &Dependencies {
        &self.deps
    }

    fn cancellables(&self) -> &Arc<Cancellables> {
        &self.cancellables
    }

    fn store_name(&self) -> &'static str {
        "test"
    }

    fn feed(self: &Arc<Self>, action: R::Action, _cause: &Arc<Tracker>) {
        self.received.lock().push_back(action);
    }
}

/// An exhaustive test harness for a reducer. See the module docs.
pub struct TestStore<R: Reducer>
where
    R::State: Clone + PartialEq + Debug,
    R::Action: PartialEq + Debug,
{
    host: Arc<TestHost<R>>,
    runtime: Arc<TestRuntime>,
    event_store: Arc<InMemoryEventStore>,
    event_bus: Arc<InMemoryEventBus>,
    work: Arc<Tracker>,
    unasserted_effects: VecDeque<EffectDescription>,
    exhaustivity: Exhaustivity,
    finished: bool,
}

impl<R: Reducer> Debug for TestStore<R>
where
    R::State: Clone + PartialEq + Debug,
    R::Action: PartialEq + Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestStore")
            .field("state", &*self.host.state.lock())
            .finish_non_exhaustive()
    }
}

impl<R: Reducer> TestStore<R>
where
    R::State: Clone + PartialEq + Debug,
    R::Action: PartialEq + Debug,
{
    /// A store whose environment does not depend on the runtime.
    pub fn new(reducer: R, state: R::State, env: R::Env) -> Self {
        Self::build(reducer, state, |_| env)
    }

    /// A store whose environment is made from the test runtime, in-memory event store and
    /// bus (e.g. an [`AggregateEnv`](crate::aggregate::AggregateEnv)).
    pub fn build(
        reducer: R,
        state: R::State,
        make_env: impl FnOnce(&TestDependencies) -> R::Env,
    ) -> Self {
        let runtime = TestRuntime::shared(0);
        let shared: SharedRuntime = runtime.clone();
        let event_store = Arc::new(InMemoryEventStore::with_clock(
            Arc::clone(&shared) as Arc<dyn Clock>
        ));
        let event_bus = Arc::new(InMemoryEventBus::new());
        let deps = TestDependencies {
            runtime: Arc::clone(&runtime),
            event_store: Arc::clone(&event_store),
            event_bus: Arc::clone(&event_bus),
        };
        let env = make_env(&deps);
        let host = Arc::new(TestHost {
            reducer,
            env,
            state: Mutex::new(state),
            deps: Dependencies {
                runtime: shared,
                event_store: event_store.clone(),
                event_bus: event_bus.clone(),
                resilience: Arc::default(),
            },
            cancellables: Arc::default(),
            received: Mutex::default(),
        });
        TestStore {
            host,
            runtime,
            event_store,
            event_bus,
            work: Tracker::root(),
            unasserted_effects: VecDeque::new(),
            exhaustivity: Exhaustivity::On,
            finished: false,
        }
    }

    #[must_use]
    pub fn with_exhaustivity(mut self, exhaustivity: Exhaustivity) -> Self {
        self.exhaustivity = exhaustivity;
        self
    }

    #[must_use]
    pub fn state(&self) -> R::State {
        self.host.state.lock().clone()
    }

    #[must_use]
    pub fn runtime(&self) -> &Arc<TestRuntime> {
        &self.runtime
    }

    #[must_use]
    pub fn event_store(&self) -> &Arc<InMemoryEventStore> {
        &self.event_store
    }

    #[must_use]
    pub fn event_bus(&self) -> &Arc<InMemoryEventBus> {
        &self.event_bus
    }

    /// Sends `action` and asserts the state changed exactly as `expect` describes
    /// (it receives a copy of the previous state to mutate into the expected one).
    ///
    /// # Panics
    /// On any exhaustiveness violation; see the module docs.
    #[track_caller]
    pub fn send(&mut self, action: R::Action, expect: impl FnOnce(&mut R::State)) {
        if self.exhaustivity == Exhaustivity::On {
            let pending = self.host.received.lock().len();
            if pending > 0 {
                let actions = format!("{:#?}", self.host.received.lock());
                self.fail(&format!(
                    "must handle {pending} received action(s) before sending {action:?}:\n{actions}"
                ));
            }
        } else {
            self.reduce_received_unchecked();
        }
        let label = format!("send({action:?})");
        self.reduce_and_check(action, expect, &label);
    }

    /// Runs pending effects, then asserts the next action they fed back is `expected`
    /// and that reducing it changes the state as `expect` describes.
    ///
    /// # Panics
    /// If no action arrives, or a different one does (exhaustive mode).
    #[track_caller]
    #[allow(clippy::needless_pass_by_value)] // by value, like `send`: the call reads as the action it expects
    pub fn receive(&mut self, expected: R::Action, expect: impl FnOnce(&mut R::State)) {
        self.runtime.run_until_idle();
        loop {
            let next = self.host.received.lock().pop_front();
            match next {
                None => {
                    self.fail(&format!("expected to receive {expected:?}, but no action was received (effects in flight: {})", self.work.pending()));
                }
                Some(actual) if actual == expected => {
                    let label = format!("receive({actual:?})");
                    self.reduce_and_check(actual, expect, &label);
                    return;
                }
                Some(actual) if self.exhaustivity == Exhaustivity::Off => {
                    // Skipped actions still run, so the state stays what production would have.
                    self.reduce_unchecked(actual);
                    self.runtime.run_until_idle();
                }
                Some(actual) => {
                    self.fail(&format!("received an unexpected action:\n  expected: {expected:?}\n  received: {actual:?}"));
                }
            }
        }
    }

    /// Asserts the next unasserted append/publish the reducer asked for.
    ///
    /// # Panics
    /// If there is none or it differs.
    #[track_caller]
    pub fn expect_effect(&mut self, expected: &EffectDescription) {
        match self.unasserted_effects.pop_front() {
            None => self.fail(&format!(
                "expected effect {expected:?}, but the reducer asked for none"
            )),
            Some(actual) if actual == *expected => {}
            Some(actual) => self.fail(&format!(
                "wrong effect:\n  expected: {expected:#?}\n    actual: {actual:#?}"
            )),
        }
    }

    /// Asserts the next unasserted append/publish with a predicate (for effects carrying
    /// generated ids).
    ///
    /// # Panics
    /// If there is none or the predicate refuses it.
    #[track_caller]
    pub fn expect_effect_matching(
        &mut self,
        what: &str,
        check: impl FnOnce(&EffectDescription) -> bool,
    ) {
        match self.unasserted_effects.pop_front() {
            None => self.fail(&format!(
                "expected effect {what}, but the reducer asked for none"
            )),
            Some(actual) if check(&actual) => {}
            Some(actual) => self.fail(&format!("wrong effect: expected {what}, got {actual:#?}")),
        }
    }

    /// Moves virtual time forward, running timers and the effects they start.
    pub fn advance(&mut self, duration: Duration) {
        self.runtime.advance(duration);
    }

    /// Ends the test, checking nothing is left over (exhaustive mode).
    ///
    /// # Panics
    /// On unasserted received actions, unasserted domain effects, or effects in flight.
    #[track_caller]
    pub fn finish(mut self) {
        self.finished = true;
        self.check_end();
    }

    #[track_caller]
    fn check_end(&mut self) {
        self.runtime.run_until_idle();
        if self.exhaustivity == Exhaustivity::Off {
            self.reduce_received_unchecked();
            self.host.cancellables.cancel_all();
            self.runtime.run_until_idle();
            return;
        }
        let received = self.host.received.lock().len();
        if received > 0 {
            let actions = format!("{:#?}", self.host.received.lock());
            self.fail(&format!(
                "the test ended with {received} received action(s) not asserted:\n{actions}"
            ));
        }
        if let Some(effect) = self.unasserted_effects.front() {
            let effect = format!("{effect:#?}");
            self.fail(&format!(
                "the test ended with {} effect(s) not asserted, first:\n{effect}",
                self.unasserted_effects.len()
            ));
        }
        let in_flight = self.work.pending();
        if in_flight > 0 {
            let ids = self.host.cancellables.pending_ids();
            self.fail(&format!("the test ended with {in_flight} effect(s) still running (cancellable ids: {ids:?}); cancel them or advance time until they finish"));
        }
    }

    #[track_caller]
    fn fail(&mut self, message: &str) -> ! {
        // Don't fail a second time from `drop` while unwinding from this one.
        self.finished = true;
        panic!("TestStore: {message}");
    }

    /// Non-exhaustive mode: actions nobody asserted still reach the reducer, as they
    /// would in production, so later assertions see the state production would have.
    fn reduce_received_unchecked(&mut self) {
        loop {
            let next = self.host.received.lock().pop_front();
            let Some(action) = next else { return };
            self.reduce_unchecked(action);
        }
    }

    fn reduce_unchecked(&mut self, action: R::Action) {
        let effects = self
            .host
            .reducer
            .reduce(&mut self.host.state.lock(), action, &self.host.env);
        self.start(effects);
    }

    #[track_caller]
    fn reduce_and_check(
        &mut self,
        action: R::Action,
        expect: impl FnOnce(&mut R::State),
        label: &str,
    ) {
        let mut expected = self.host.state.lock().clone();
        expect(&mut expected);
        let effects = {
            let mut state = self.host.state.lock();
            self.host.reducer.reduce(&mut state, action, &self.host.env)
        };
        let actual = self.host.state.lock().clone();
        if actual != expected {
            let diff = line_diff(&format!("{expected:#?}"), &format!("{actual:#?}"));
            self.fail(&format!(
                "state after {label} differs from the expected (- expected, + actual):\n{diff}"
            ));
        }
        self.start(effects);
    }

    fn start(&mut self, effects: Effects<R::Action>) {
        for effect in &effects {
            record_domain_effects(effect, &mut self.unasserted_effects);
        }
        let cause = Tracker::child(&self.work);
        interpret::start(&self.host, effects, &cause);
        self.runtime.run_until_idle();
    }
}

fn record_domain_effects<A: Debug>(effect: &Effect<A>, out: &mut VecDeque<EffectDescription>) {
    match effect {
        Effect::Append { .. } | Effect::Publish { .. } | Effect::Call(_) => {
            out.push_back(effect.describe());
        }
        Effect::Parallel(effects) | Effect::Sequential(effects) => {
            for e in effects {
                record_domain_effects(e, out);
            }
        }
        _ => {}
    }
}

impl<R: Reducer> Drop for TestStore<R>
where
    R::State: Clone + PartialEq + Debug,
    R::Action: PartialEq + Debug,
{
    fn drop(&mut self) {
        if !self.finished && !std::thread::panicking() {
            self.finished = true;
            self.check_end();
        }
    }
}

/// What [`TestStore::build`] hands the environment factory.
#[derive(Debug, Clone)]
pub struct TestDependencies {
    pub runtime: Arc<TestRuntime>,
    pub event_store: Arc<InMemoryEventStore>,
    pub event_bus: Arc<InMemoryEventBus>,
}

/// A minimal line diff: lines only in `expected` get `-`, only in `actual` get `+`.
/// Good enough for `{:#?}` output, where each field is a line.
fn line_diff(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    // Longest common subsequence table; Debug dumps are small.
    let mut lcs = vec![vec![0usize; a.len() + 1]; e.len() + 1];
    for i in (0..e.len()).rev() {
        for j in (0..a.len()).rev() {
            lcs[i][j] = if e[i] == a[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < e.len() || j < a.len() {
        if i < e.len() && j < a.len() && e[i] == a[j] {
            out.push_str(&format!("  {}\n", e[i]));
            i += 1;
            j += 1;
        } else if j < a.len() && (i == e.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+ {}\n", a[j]));
            j += 1;
        } else {
            out.push_str(&format!("- {}\n", e[i]));
            i += 1;
        }
    }
    out
}

/// Runs a future to completion on a [`TestRuntime`], advancing virtual time whenever
/// the future is blocked on a timer. For async unit tests without tokio.
///
/// # Panics
/// If the future can never complete (blocked with no timer pending).
pub fn block_on<T: Send + 'static>(
    runtime: &Arc<TestRuntime>,
    future: impl Future<Output = T> + Send + 'static,
) -> T {
    let slot = Arc::new(Mutex::new(None));
    let out = Arc::clone(&slot);
    runtime.spawn(
        "block_on",
        Box::pin(async move {
            let value = future.await;
            *out.lock() = Some(value);
        }),
    );
    loop {
        runtime.run_until_idle();
        if let Some(value) = slot.lock().take() {
            return value;
        }
        let next = runtime
            .inner
            .lock()
            .timers
            .first_key_value()
            .map(|(&(at, _), _)| at);
        match next {
            Some(at) => {
                runtime.advance(Timestamp::from_unix_nanos(at).saturating_since(runtime.now()));
            }
            None => panic!("block_on: the future is stuck (no task ready, no timer pending)"),
        }
    }
}
