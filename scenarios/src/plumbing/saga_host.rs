//! Hosts the instances of one saga type on a node: one [`Store`] running a
//! [`SagaReducer`] per instance, created when its first input arrives and recovered from
//! the saga's own stream.
//!
//! Two things make a host crash-safe. On boot, [`SagaHost::recover_all`] finds every saga
//! stream in the store and recovers it, which re-arms durable deadlines — an instance that
//! was waiting on a timeout when the node died still gets it. And [`SagaHost::deliver`]
//! returns only once the instance has durably reacted to the input (or decided it was a
//! duplicate), so the consumer that called it acknowledges the message no earlier.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use reprise_core::saga::SagaEnv;
use reprise_core::{Dispatcher, Saga, SagaAction, SagaReducer, SagaState, Store};

use super::env::{Backoff, ServiceEnv};

/// How often [`SagaHost::deliver`] looks whether the instance has settled.
const SETTLE_POLL: Duration = Duration::from_millis(1);

/// See the module docs.
pub struct SagaHost<S: Saga> {
    env: ServiceEnv,
    dispatcher: Arc<dyn Dispatcher<S::Command>>,
    instances: Mutex<BTreeMap<String, Store<SagaReducer<S>>>>,
}

impl<S: Saga> fmt::Debug for SagaHost<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaHost")
            .field("saga", &S::NAME)
            .field("instances", &self.instances.lock().len())
            .finish()
    }
}

/// Whether an instance has finished with every input it was given: recovered, nothing
/// being appended, nothing queued — or stopped by a failure.
fn settled<S: Saga>(state: &SagaState<S>) -> bool {
    state.failure.is_some()
        || (state.recovered && state.persisting.is_none() && state.queued.is_empty())
}

impl<S: Saga> SagaHost<S> {
    #[must_use]
    pub fn new(env: ServiceEnv, dispatcher: Arc<dyn Dispatcher<S::Command>>) -> Self {
        SagaHost {
            env,
            dispatcher,
            instances: Mutex::default(),
        }
    }

    /// The running instance `id`, started (and told to recover) if it is not running or
    /// stopped after a failure: a failed instance is reloaded from its stream rather than
    /// left stuck.
    fn instance(&self, id: &str) -> Store<SagaReducer<S>> {
        let mut instances = self.instances.lock();
        if let Some(store) = instances.get(id) {
            if store.with_state(|s| s.failure.is_none()) {
                return store.clone();
            }
            let failure = store.with_state(|s| s.failure.clone()).unwrap_or_default();
            self.env.note(format_args!(
                "saga {}-{id} failed ({failure}); reloading",
                S::NAME
            ));
        }
        let saga_env = SagaEnv::new(
            Arc::clone(&self.env.runtime),
            Arc::clone(&self.env.store),
            Arc::clone(&self.dispatcher),
        );
        let store = Store::builder(
            SagaReducer::<S>::default(),
            SagaState::new(id),
            saga_env,
            Arc::clone(&self.env.runtime),
        )
        .name(S::NAME)
        .event_store(Arc::clone(&self.env.store))
        .event_bus(Arc::clone(&self.env.bus))
        .build();
        // Fire and forget: the handle would also wait for the deadlines' timers.
        drop(store.send(SagaAction::Recover));
        instances.insert(id.to_owned(), store.clone());
        store
    }

    /// Recovers every instance that has a stream in the store (after a restart).
    pub async fn recover_all(&self) {
        let mut ids = BTreeSet::new();
        let mut next = 1;
        let mut attempt = 0;
        loop {
            match self.env.store.read_all(next, 1024).await {
                Ok(events) if events.is_empty() => break,
                Ok(events) => {
                    next = events.last().map_or(next, |e| e.position + 1);
                    for event in &events {
                        if event.stream.category() == S::NAME
                            && let Some((_, id)) = event.stream.as_str().split_once('-')
                        {
                            ids.insert(id.to_owned());
                        }
                    }
                }
                Err(_) => {
                    self.env
                        .sleep(Backoff::SERVICE.delay(attempt, &self.env))
                        .await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
        self.env.note(format_args!(
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
        self.env.note(format_args!("{}-{id} <- {input:?}", S::NAME));
        let mut attempt = 0;
        loop {
            let store = self.instance(id);
            drop(store.send(SagaAction::Input(input.clone())));
            while !store.with_state(settled) {
                self.env.sleep(SETTLE_POLL).await;
            }
            if store.with_state(|s| s.failure.is_none()) {
                match self.is_current(&store).await {
                    Some(true) => return,
                    Some(false) => {
                        self.env.note(format_args!(
                            "{}-{id} cached state is stale; reloading to judge {input:?} again",
                            S::NAME
                        ));
                        self.evict(id, &store);
                        continue;
                    }
                    None => {}
                }
            }
            self.env
                .sleep(Backoff::SERVICE.delay(attempt, &self.env))
                .await;
            attempt = attempt.saturating_add(1);
        }
    }

    /// Whether `store`'s saga has seen every event of its stream (`None`: the store could
    /// not say).
    ///
    /// Several hosts may run the same saga type in one consumer group, and a saga's inputs
    /// are keyed by the aggregates that produced them, so they reach whichever host owns
    /// that partition. A host's cached instance is then stale whenever another host has
    /// advanced the saga since. A stale instance that *reacts* finds out by a conflict on
    /// its append; one that judges the input irrelevant would find out never — and the
    /// consumer would acknowledge an input the saga needed. So after every input the host
    /// checks that no event lies beyond what the instance has seen. Causality makes that
    /// enough: the input answers a command the saga persisted *before* dispatching it, so
    /// whatever state makes the input relevant is in the stream by the time it arrives.
    async fn is_current(&self, store: &Store<SagaReducer<S>>) -> Option<bool> {
        let (stream, version) = store.with_state(|s| (s.stream(), s.version));
        match self.env.store.read_stream(&stream, version + 1, 1).await {
            Ok(newer) => Some(newer.is_empty()),
            Err(_) => None,
        }
    }

    /// Drops the cached instance `store` of saga `id` (if it is still the cached one), so
    /// the next [`instance`](Self::instance) call recovers it from its stream.
    fn evict(&self, id: &str, store: &Store<SagaReducer<S>>) {
        let mut instances = self.instances.lock();
        if instances
            .get(id)
            .is_some_and(|cached| cached.is_same(store))
        {
            instances.remove(id);
        }
    }

    /// Restarts, every `every`, the instances that stopped after a failure (a stream
    /// refusing writes for a while, the store failing every retry of one decision):
    /// without a new input nothing else would look at them, and their deadlines would
    /// never fire. Runs until its task is dropped.
    pub async fn supervise(&self, every: Duration) {
        assert!(!every.is_zero(), "a zero supervision period spins");
        loop {
            self.env.sleep(every).await;
            let failed: Vec<String> = self
                .instances
                .lock()
                .iter()
                .filter(|(_, store)| store.with_state(|s| s.failure.is_some()))
                .map(|(id, _)| id.clone())
                .collect();
            for id in failed {
                self.instance(&id);
            }
        }
    }

    /// Ids of the instances running on this host.
    #[must_use]
    pub fn instance_ids(&self) -> Vec<String> {
        self.instances.lock().keys().cloned().collect()
    }
}

/// Runs a saga service's main task on `env`'s runtime: recover every saga instance first
/// (re-armed deadlines must not wait for new traffic), start the supervisor that restarts
/// failed instances every `supervise_every`, then feed the consumer's messages to `worker`.
/// Shared by every domain so they boot their sagas the same way.
pub fn spawn_saga_service<S: Saga>(
    env: &ServiceEnv,
    task: &'static str,
    host: Arc<SagaHost<S>>,
    supervise_every: Duration,
    options: super::consumer::ConsumerOptions,
    worker: Arc<dyn super::consumer::MessageHandler>,
) {
    let env2 = env.clone();
    env.runtime.spawn(
        task,
        Box::pin(async move {
            host.recover_all().await;
            let supervised = Arc::clone(&host);
            env2.runtime.spawn(
                "saga-supervisor",
                Box::pin(async move { supervised.supervise(supervise_every).await }),
            );
            super::consumer::run(env2, options, worker).await;
        }),
    );
}
