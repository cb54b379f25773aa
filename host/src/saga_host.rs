//! Hosts the instances of one saga type on a node: one [`Store`] running a
//! [`SagaReducer`] per instance, created when its first input arrives and recovered from
//! the saga's own stream.
//!
//! Crash safety: on boot, [`SagaHost::recover_all`] finds every saga stream in the store
//! and recovers it, which re-arms durable deadlines — an instance that was waiting on a
//! timeout when the node died still gets it. [`SagaHost::deliver`] returns only once the
//! instance has durably reacted to the input (or judged it a duplicate), so the consumer
//! that called it acknowledges the message no earlier. It *awaits* the instance's settle
//! ([`Store::until`]): no polling.
//!
//! Several hosts may run one saga type in one consumer group, and a saga's inputs are
//! keyed by the aggregates that produced them, so they reach whichever host owns that
//! partition; a cached instance is stale whenever another host advanced the saga since.
//! A stale instance that *reacts* finds out by a conflict on its append; one that judges
//! the input irrelevant would never find out, and the consumer would acknowledge an input
//! the saga needed. So after every input the host checks that no event lies beyond what
//! the instance has seen. Causality makes that enough: the input answers a command the
//! saga persisted *before* dispatching it.
//!
//! Memory stays bounded: past [`SagaHostOptions::max_instances`] the least recently used
//! *idle* instances (settled, no pending deadline — a finished saga, or one waiting for an
//! input) are evicted; the next input reloads them from their stream. Instances waiting on
//! a deadline stay resident, since their timer lives in the instance.
//!
//! Fault point [`POINT_EVICT_AFTER_DELIVER`]: an idle instance is evicted right after an
//! input, so the simulator exercises reloads mid-run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use reprise_core::saga::SagaEnv;
use reprise_core::{Dispatcher, Saga, SagaAction, SagaReducer, SagaState, Store, buggify};

use crate::Platform;
use crate::consume::{self, ConsumerOptions, MessageHandler};

/// BUGGIFY: evict an idle instance right after it handled an input.
pub const POINT_EVICT_AFTER_DELIVER: &str = "saga-host.evict-after-deliver";

/// Events per `read_all` page during [`SagaHost::recover_all`].
const RECOVERY_PAGE: usize = 1024;

/// How a [`SagaHost`] keeps its instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SagaHostOptions {
    /// Instances kept in memory before idle ones are evicted.
    pub max_instances: usize,
}

impl Default for SagaHostOptions {
    fn default() -> Self {
        SagaHostOptions {
            max_instances: 10_000,
        }
    }
}

struct Instance<S: Saga> {
    store: Store<SagaReducer<S>>,
    last_used: u64,
}

struct Instances<S: Saga> {
    by_id: BTreeMap<String, Instance<S>>,
    uses: u64,
}

/// See the module docs.
pub struct SagaHost<S: Saga> {
    platform: Platform,
    dispatcher: Arc<dyn Dispatcher<S::Command>>,
    options: SagaHostOptions,
    instances: Mutex<Instances<S>>,
}

impl<S: Saga> fmt::Debug for SagaHost<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaHost")
            .field("saga", &S::NAME)
            .field("instances", &self.instances.lock().by_id.len())
            .field("options", &self.options)
            .finish()
    }
}

/// Whether an instance has finished with every input it was given: recovered, nothing
/// being appended, nothing queued — or stopped by a failure.
fn settled<S: Saga>(state: &SagaState<S>) -> bool {
    state.failure.is_some()
        || (state.recovered && state.persisting.is_none() && state.queued.is_empty())
}

/// Whether an instance may be evicted: settled without failure, no deadline pending.
fn idle<S: Saga>(state: &SagaState<S>) -> bool {
    state.failure.is_none() && settled(state) && state.deadlines.is_empty()
}

impl<S: Saga> SagaHost<S> {
    #[must_use]
    pub fn new(platform: Platform, dispatcher: Arc<dyn Dispatcher<S::Command>>) -> Self {
        Self::with_options(platform, dispatcher, SagaHostOptions::default())
    }

    /// # Panics
    /// If `options.max_instances` is 0.
    #[must_use]
    pub fn with_options(
        platform: Platform,
        dispatcher: Arc<dyn Dispatcher<S::Command>>,
        options: SagaHostOptions,
    ) -> Self {
        assert!(
            options.max_instances > 0,
            "a saga host must hold an instance"
        );
        SagaHost {
            platform,
            dispatcher,
            options,
            instances: Mutex::new(Instances {
                by_id: BTreeMap::new(),
                uses: 0,
            }),
        }
    }

    /// The running instance `id`, started (and told to recover) if it is not running or
    /// stopped after a failure: a failed instance is reloaded from its stream rather than
    /// left stuck.
    fn instance(&self, id: &str) -> Store<SagaReducer<S>> {
        let mut instances = self.instances.lock();
        instances.uses += 1;
        let now = instances.uses;
        if let Some(instance) = instances.by_id.get_mut(id) {
            instance.last_used = now;
            let store = &instance.store;
            if store.with_state(|s| s.failure.is_none()) {
                return store.clone();
            }
            let failure = store.with_state(|s| s.failure.clone()).unwrap_or_default();
            self.platform.note(format_args!(
                "saga {}-{id} failed ({failure}); reloading",
                S::NAME
            ));
        }
        let saga_env = SagaEnv::new(
            Arc::clone(&self.platform.runtime),
            Arc::clone(&self.platform.store),
            Arc::clone(&self.dispatcher),
        );
        let store = Store::builder(
            SagaReducer::<S>::default(),
            SagaState::new(id),
            saga_env,
            Arc::clone(&self.platform.runtime),
        )
        .name(S::NAME)
        .event_store(Arc::clone(&self.platform.store))
        .event_bus(Arc::clone(&self.platform.bus))
        .build();
        // Fire and forget: the handle would also wait for the deadlines' timers.
        drop(store.send(SagaAction::Recover));
        instances.by_id.insert(
            id.to_owned(),
            Instance {
                store: store.clone(),
                last_used: now,
            },
        );
        if instances.by_id.len() > self.options.max_instances {
            self.evict_idle(&mut instances, id);
        }
        store
    }

    /// Evicts the least recently used idle instances until a tenth of the capacity is
    /// free (amortising the scan), never `keep`.
    fn evict_idle(&self, instances: &mut Instances<S>, keep: &str) {
        let target = self.options.max_instances - self.options.max_instances / 10;
        let mut candidates: Vec<(u64, String)> = instances
            .by_id
            .iter()
            .filter(|(id, i)| id.as_str() != keep && i.store.with_state(idle))
            .map(|(id, i)| (i.last_used, id.clone()))
            .collect();
        candidates.sort_unstable();
        let excess = instances.by_id.len().saturating_sub(target);
        for (_, id) in candidates.into_iter().take(excess) {
            instances.by_id.remove(&id);
        }
    }

    /// Recovers every instance that has a stream in the store (after a restart).
    pub async fn recover_all(&self) {
        let mut ids = BTreeSet::new();
        let mut next = 1;
        let mut backoff = self.platform.backoff();
        loop {
            match self.platform.store.read_all(next, RECOVERY_PAGE).await {
                Ok(events) if events.is_empty() => break,
                Ok(events) => {
                    backoff.reset();
                    next = events.last().map_or(next, |e| e.position + 1);
                    for event in &events {
                        if event.stream.category() == S::NAME
                            && let Some((_, id)) = event.stream.as_str().split_once('-')
                        {
                            ids.insert(id.to_owned());
                        }
                    }
                }
                Err(_) => self.platform.pause(&mut backoff).await,
            }
        }
        self.platform.note(format_args!(
            "{} host recovers {} instances",
            S::NAME,
            ids.len()
        ));
        for id in ids {
            self.instance(&id);
        }
    }

    /// Feeds `input` to instance `id` and waits until the instance has durably reacted.
    /// An instance that fails meanwhile has dropped the input, so it is reloaded and the
    /// input fed again (the saga recognises it if it was persisted after all).
    pub async fn deliver(&self, id: &str, input: S::Input) {
        self.platform
            .note(format_args!("{}-{id} <- {input:?}", S::NAME));
        let mut backoff = self.platform.backoff();
        loop {
            let store = self.instance(id);
            drop(store.send(SagaAction::Input(input.clone())));
            store.until(settled).await;
            if store.with_state(|s| s.failure.is_none()) {
                let current = self.is_current(&store).await;
                match current {
                    Some(true) => {
                        if buggify(POINT_EVICT_AFTER_DELIVER) && store.with_state(idle) {
                            self.evict(id, &store);
                        }
                        return;
                    }
                    Some(false) => {
                        self.platform.note(format_args!(
                            "{}-{id} cached state is stale; reloading to judge {input:?} again",
                            S::NAME
                        ));
                        self.evict(id, &store);
                        continue;
                    }
                    None => {}
                }
            }
            self.platform.pause(&mut backoff).await;
        }
    }

    /// Whether `store`'s saga has seen every event of its stream (`None`: the store could
    /// not say). See the module docs.
    async fn is_current(&self, store: &Store<SagaReducer<S>>) -> Option<bool> {
        let (stream, version) = store.with_state(|s| (s.stream(), s.version));
        match self
            .platform
            .store
            .read_stream(&stream, version + 1, 1)
            .await
        {
            Ok(newer) => Some(newer.is_empty()),
            Err(_) => None,
        }
    }

    /// Drops the cached instance `store` of saga `id` (if it is still the cached one), so
    /// the next [`instance`](Self::instance) call recovers it from its stream.
    fn evict(&self, id: &str, store: &Store<SagaReducer<S>>) {
        let mut instances = self.instances.lock();
        if instances
            .by_id
            .get(id)
            .is_some_and(|cached| cached.store.is_same(store))
        {
            instances.by_id.remove(id);
            self.platform.note(format_args!("{}-{id} evicted", S::NAME));
        }
    }

    /// Restarts, every `every`, the instances that stopped after a failure (a stream
    /// refusing writes for a while, the store failing every retry of one decision):
    /// without a new input nothing else would look at them, and their deadlines would
    /// never fire. Runs until its task is dropped.
    pub async fn supervise(&self, every: Duration) {
        assert!(!every.is_zero(), "a zero supervision period spins");
        loop {
            self.platform.sleep(every).await;
            let failed: Vec<String> = self
                .instances
                .lock()
                .by_id
                .iter()
                .filter(|(_, i)| i.store.with_state(|s| s.failure.is_some()))
                .map(|(id, _)| id.clone())
                .collect();
            for id in failed {
                self.instance(&id);
            }
        }
    }

    /// Ids of the instances in memory on this host.
    #[must_use]
    pub fn instance_ids(&self) -> Vec<String> {
        self.instances.lock().by_id.keys().cloned().collect()
    }
}

/// Runs a saga service's main task on the platform's runtime: recover every saga instance
/// first (re-armed deadlines must not wait for new traffic), start the supervisor that
/// restarts failed instances every `supervise_every`, then feed the consumer's messages to
/// `worker`. Every domain boots its sagas this way.
pub fn spawn_saga_service<S: Saga>(
    platform: &Platform,
    task: &'static str,
    host: Arc<SagaHost<S>>,
    supervise_every: Duration,
    options: ConsumerOptions,
    worker: Arc<dyn MessageHandler>,
) {
    let platform2 = platform.clone();
    platform.runtime.spawn(
        task,
        Box::pin(async move {
            host.recover_all().await;
            let supervised = Arc::clone(&host);
            platform2.runtime.spawn(
                "saga-supervisor",
                Box::pin(async move { supervised.supervise(supervise_every).await }),
            );
            consume::run(platform2, options, worker).await;
        }),
    );
}
