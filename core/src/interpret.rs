//! The effect interpreter shared by [`Store`](crate::Store) and
//! [`TestStore`](crate::testing::TestStore): turns effect descriptions into futures on the
//! host's runtime, feeds resulting actions back through the host, and keeps the
//! cancellation registry. Sharing it is what guarantees that a test exercises exactly the
//! execution semantics production uses.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::{AbortHandle, Abortable};
use parking_lot::Mutex;
use tracing::Instrument;

use crate::effect::{CallPlatform, Effect, EffectId, Effects};
use crate::event_bus::{BusError, EventBus};
use crate::event_store::{EventStore, StoreError};
use crate::instrument::{self as names};
use crate::resilience::{CallFailure, EVENT_BUS, EVENT_STORE, Resilience};
use crate::runtime::{BoxFuture, SharedRuntime};
use crate::tracker::{Tracker, Work};

/// The platform an effect runs against.
#[derive(Clone)]
pub struct Dependencies {
    pub runtime: SharedRuntime,
    pub event_store: Arc<dyn EventStore>,
    pub event_bus: Arc<dyn EventBus>,
    /// Retry policies and breakers for [`Effect::Call`], appends and publishes. Share one
    /// between the stores of a service so each dependency has one breaker.
    pub resilience: Arc<Resilience>,
}

impl std::fmt::Debug for Dependencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dependencies")
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

/// Pending cancellable effects by id.
#[derive(Debug, Default)]
pub(crate) struct Cancellables {
    next_registration: AtomicU64,
    pending: Mutex<BTreeMap<EffectId, Vec<(u64, AbortHandle)>>>,
}

impl Cancellables {
    pub(crate) fn cancel(&self, id: &EffectId) -> usize {
        let handles = self.pending.lock().remove(id).unwrap_or_default();
        for (_, handle) in &handles {
            handle.abort();
        }
        handles.len()
    }

    pub(crate) fn cancel_all(&self) -> usize {
        let all = std::mem::take(&mut *self.pending.lock());
        let mut n = 0;
        for (_, handles) in all {
            for (_, handle) in handles {
                handle.abort();
                n += 1;
            }
        }
        n
    }

    pub(crate) fn pending_ids(&self) -> Vec<EffectId> {
        self.pending.lock().keys().cloned().collect()
    }

    fn register(
        self: &Arc<Self>,
        id: EffectId,
        work: BoxFuture<'static, ()>,
    ) -> BoxFuture<'static, ()> {
        let (handle, registration) = AbortHandle::new_pair();
        let seq = self.next_registration.fetch_add(1, Ordering::Relaxed);
        self.pending
            .lock()
            .entry(id.clone())
            .or_default()
            .push((seq, handle));
        let this = Arc::clone(self);
        Box::pin(async move {
            let _ = Abortable::new(work, registration).await;
            let mut pending = this.pending.lock();
            if let Some(handles) = pending.get_mut(&id) {
                handles.retain(|(s, _)| *s != seq);
                if handles.is_empty() {
                    pending.remove(&id);
                }
            }
        })
    }
}

/// What the interpreter needs from whoever owns the state.
pub(crate) trait EffectHost: Send + Sync + Sized + 'static {
    type Action: Send + 'static;

    fn dependencies(&self) -> &Dependencies;
    fn cancellables(&self) -> &Arc<Cancellables>;
    fn store_name(&self) -> &'static str;
    /// An effect produced `action` as part of the work tracked by `cause`.
    fn feed(self: &Arc<Self>, action: Self::Action, cause: &Arc<Tracker>);
}

/// Starts every effect; each non-trivial top-level effect becomes one spawned task.
pub(crate) fn start<H: EffectHost>(
    host: &Arc<H>,
    mut effects: Effects<H::Action>,
    cause: &Arc<Tracker>,
) {
    // `drain` rather than `into_iter`: the iterator of an inline `SmallVec` carries the
    // whole inline array with it, one more copy of a few hundred bytes per send.
    for effect in effects.drain(..) {
        let kind = effect.kind();
        match effect {
            // The most common effect gets one allocation fewer: its work and the feeding
            // back of its action are one task, not a task around a boxed future.
            Effect::Run {
                id: None,
                label,
                work,
            } => {
                tracing::trace!(label, "run");
                let (host2, cause2) = (Arc::clone(host), Arc::clone(cause));
                spawn(host, kind, cause, async move {
                    if let Some(action) = work.await {
                        host2.feed(action, &cause2);
                    }
                });
            }
            other => {
                if let Some(work) = prepare(host, other, cause) {
                    spawn(host, kind, cause, work);
                }
            }
        }
    }
}

/// Spawns one top-level effect's work as a task tracked by `cause`, timed (sampled) and
/// traced.
fn spawn<H: EffectHost>(
    host: &Arc<H>,
    kind: &'static str,
    cause: &Arc<Tracker>,
    work: impl Future<Output = ()> + Send + 'static,
) {
    let guard = Work::start(cause);
    let runtime = &host.dependencies().runtime;
    let store = host.store_name();
    let span = tracing::debug_span!("reprise.effect", store, kind);
    let timed = sample_effect_timing().then(|| Arc::clone(runtime));
    let task = async move {
        let started = timed.as_ref().map(|clock| clock.stopwatch_nanos());
        work.await;
        if let (Some(clock), Some(started)) = (timed, started) {
            let elapsed = clock.stopwatch_nanos().saturating_sub(started);
            #[allow(clippy::cast_precision_loss)]
            metrics::histogram!(names::EFFECT_DURATION, "store" => store, "kind" => kind)
                .record(elapsed as f64 / 1e9);
        }
        drop(guard);
    };
    runtime.spawn("effect", Box::pin(task.instrument(span)));
}

/// Effects are timed one in [`names::REDUCER_TIMING_SAMPLE_EVERY`], like reducers: two
/// clock reads plus a histogram lookup cost more than the whole round trip of a
/// trivial effect (measured in `docs/performance.md`), while a uniform sample keeps the
/// histogram's quantiles unbiased. The counter is per thread so that counting costs no
/// shared cache line; it influences metrics only, never behaviour.
fn sample_effect_timing() -> bool {
    thread_local! {
        static STARTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    STARTED.with(|started| {
        let n = started.get();
        started.set(n.wrapping_add(1));
        n % names::REDUCER_TIMING_SAMPLE_EVERY == 0
    })
}

fn prepare<H: EffectHost>(
    host: &Arc<H>,
    effect: Effect<H::Action>,
    cause: &Arc<Tracker>,
) -> Option<BoxFuture<'static, ()>> {
    match effect {
        Effect::None => None,
        Effect::Cancel(id) => {
            let cancelled = host.cancellables().cancel(&id);
            tracing::trace!(%id, cancelled, "cancel");
            None
        }
        Effect::Run { id, label, work } => {
            let (host2, cause) = (Arc::clone(host), Arc::clone(cause));
            let fut: BoxFuture<'static, ()> = Box::pin(async move {
                if let Some(action) = work.await {
                    host2.feed(action, &cause);
                }
            });
            tracing::trace!(label, "run");
            Some(match id {
                Some(id) => host.cancellables().register(id, fut),
                None => fut,
            })
        }
        Effect::Timer { id, after, action } => {
            // A timer re-armed under the same id replaces the pending one.
            host.cancellables().cancel(&id);
            let sleep = host.dependencies().runtime.sleep(after);
            let (host2, cause) = (Arc::clone(host), Arc::clone(cause));
            let fut: BoxFuture<'static, ()> = Box::pin(async move {
                sleep.await;
                host2.feed(action, &cause);
            });
            Some(host.cancellables().register(id, fut))
        }
        Effect::Parallel(effects) => {
            let futures: Vec<_> = effects
                .into_iter()
                .filter_map(|e| prepare(host, e, cause))
                .collect();
            match futures.len() {
                0 => None,
                _ => Some(Box::pin(async move {
                    futures::future::join_all(futures).await;
                })),
            }
        }
        Effect::Sequential(effects) => {
            let (host, cause) = (Arc::clone(host), Arc::clone(cause));
            Some(Box::pin(async move {
                // Prepared one at a time so a timer's delay starts when its turn comes.
                for effect in effects {
                    if let Some(fut) = prepare(&host, effect, &cause) {
                        fut.await;
                    }
                }
            }))
        }
        Effect::Append { batch, then } => {
            let store = Arc::clone(&host.dependencies().event_store);
            let name = host.store_name();
            let (host, cause) = (Arc::clone(host), Arc::clone(cause));
            let runtime = Arc::clone(&host.dependencies().runtime);
            let resilience = Arc::clone(&host.dependencies().resilience);
            Some(Box::pin(async move {
                let result = if resilience.policy(EVENT_STORE).is_passthrough() {
                    store.append(batch).await
                } else {
                    resilience
                        .call(&*runtime, EVENT_STORE, "append", || {
                            store.append(batch.clone())
                        })
                        .await
                        .map_err(|error| match error.failure {
                            CallFailure::Failed(error) => error,
                            CallFailure::CircuitOpen(open) => {
                                StoreError::Transient(open.to_string())
                            }
                        })
                };
                if let Err(error) = &result {
                    metrics::counter!(names::EFFECT_ERRORS, "store" => name, "kind" => "append", "error" => error.kind())
                        .increment(1);
                    tracing::warn!(store = name, %error, "append failed");
                }
                if let Some(action) = then(result) {
                    host.feed(action, &cause);
                }
            }))
        }
        Effect::Publish { messages, then } => {
            let bus = Arc::clone(&host.dependencies().event_bus);
            let name = host.store_name();
            let (host, cause) = (Arc::clone(host), Arc::clone(cause));
            let runtime = Arc::clone(&host.dependencies().runtime);
            let resilience = Arc::clone(&host.dependencies().resilience);
            Some(Box::pin(async move {
                let result = if resilience.policy(EVENT_BUS).is_passthrough() {
                    bus.publish(messages).await
                } else {
                    resilience
                        .call(&*runtime, EVENT_BUS, "publish", || {
                            bus.publish(messages.clone())
                        })
                        .await
                        .map_err(|error| match error.failure {
                            CallFailure::Failed(error) => error,
                            CallFailure::CircuitOpen(open) => BusError::Transient(open.to_string()),
                        })
                };
                if let Err(error) = &result {
                    metrics::counter!(names::EFFECT_ERRORS, "store" => name, "kind" => "publish", "error" => error.kind())
                        .increment(1);
                    tracing::warn!(store = name, %error, "publish failed");
                }
                if let Some(action) = then(result) {
                    host.feed(action, &cause);
                }
            }))
        }
        Effect::Call(call) => {
            let deps = host.dependencies();
            tracing::trace!(
                dependency = call.dependency,
                operation = call.operation,
                "call"
            );
            let id = call.id.clone();
            let work = call.start(CallPlatform {
                runtime: Arc::clone(&deps.runtime),
                resilience: Arc::clone(&deps.resilience),
            });
            let (host2, cause) = (Arc::clone(host), Arc::clone(cause));
            let fut: BoxFuture<'static, ()> = Box::pin(async move {
                if let Some(action) = work.await {
                    host2.feed(action, &cause);
                }
            });
            Some(match id {
                Some(id) => host.cancellables().register(id, fut),
                None => fut,
            })
        }
    }
}
