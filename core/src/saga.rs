//! Sagas (process managers): long-running, durable coordination across aggregates, with
//! compensation and timeouts.
//!
//! A saga is a pure decision function: given an input (an event from elsewhere, a reply,
//! a fired deadline) it returns a [`Reaction`] — its own events, commands to issue,
//! deadlines to set or clear. [`SagaReducer`] makes that durable:
//!
//! 1. the reaction's events **and its deadline changes** are appended to the saga's own
//!    stream first;
//! 2. only then are state and deadlines updated, timers armed and commands dispatched.
//!
//! Deadlines are therefore part of the saga's event stream: after a crash, [`SagaAction::Recover`]
//! replays the stream, finds deadlines that were set and not cleared, and re-arms them for
//! the time remaining (firing at once if already due). A restart never loses a timeout.
//! The commands of the last reaction are dispatched again on recovery (they may have been
//! lost with the crash): targets deduplicate, per the framework's at-least-once rule.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::effect::{Effect, Effects};
use crate::event::{
    DecodeError, Event, EventId, Metadata, NewEvent, Payload, RecordedEvent, StreamId, Upcasters,
};
use crate::event_store::{AppendBatch, EventStore, ExpectedVersion, StoreError};
use crate::instrument as names;
use crate::reducer::Reducer;
use crate::router::Dispatcher;
use crate::runtime::SharedRuntime;
use crate::time::Timestamp;

/// A process manager. See the module docs.
pub trait Saga: Default + Clone + Send + Sync + 'static {
    /// Stream category of the saga's own events.
    const NAME: &'static str;
    type Input: Clone
        + fmt::Debug
        + PartialEq
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static;
    type Event: Event + Clone + fmt::Debug + PartialEq;
    type Command: Clone
        + fmt::Debug
        + PartialEq
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static;

    /// Decides what to do about `input`. Pure. Duplicate and late inputs must be
    /// recognised here (by state) and answered with an empty reaction.
    fn react(&self, input: &Self::Input) -> Reaction<Self>;

    fn apply(&mut self, event: &Self::Event);

    /// Completed or compensated: nothing more will happen.
    fn is_terminal(&self) -> bool;
}

/// What a saga decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Reaction<S: Saga> {
    pub events: Vec<S::Event>,
    pub commands: Vec<S::Command>,
    /// `(id, after, input)`: feed `input` back after `after` unless cleared first.
    /// Setting an id that is pending replaces it.
    pub set_deadlines: Vec<(String, Duration, S::Input)>,
    pub clear_deadlines: Vec<String>,
}

impl<S: Saga> Default for Reaction<S> {
    fn default() -> Self {
        Reaction {
            events: Vec::new(),
            commands: Vec::new(),
            set_deadlines: Vec::new(),
            clear_deadlines: Vec::new(),
        }
    }
}

impl<S: Saga> Reaction<S> {
    #[must_use]
    pub fn none() -> Self {
        Self::default()
    }

    #[must_use]
    pub fn event(mut self, event: S::Event) -> Self {
        self.events.push(event);
        self
    }

    #[must_use]
    pub fn command(mut self, command: S::Command) -> Self {
        self.commands.push(command);
        self
    }

    #[must_use]
    pub fn set_deadline(mut self, id: impl Into<String>, after: Duration, input: S::Input) -> Self {
        self.set_deadlines.push((id.into(), after, input));
        self
    }

    #[must_use]
    pub fn clear_deadline(mut self, id: impl Into<String>) -> Self {
        self.clear_deadlines.push(id.into());
        self
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.commands.is_empty()
            && self.set_deadlines.is_empty()
            && self.clear_deadlines.is_empty()
    }
}

/// Framework records stored in the saga stream beside the domain events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
enum SagaRecord<I, C> {
    DeadlineSet {
        id: String,
        due: Timestamp,
        input: I,
    },
    DeadlineCleared {
        id: String,
    },
    CommandsIssued {
        commands: Vec<C>,
    },
}

const DEADLINE_SET: &str = "reprise.DeadlineSet";
const DEADLINE_CLEARED: &str = "reprise.DeadlineCleared";
const COMMANDS_ISSUED: &str = "reprise.CommandsIssued";

/// What a [`SagaReducer`] needs.
pub struct SagaEnv<S: Saga> {
    pub runtime: SharedRuntime,
    pub store: Arc<dyn EventStore>,
    pub dispatcher: Arc<dyn Dispatcher<S::Command>>,
    pub upcasters: Upcasters,
    /// Decisions attempted for one input before giving up on a contended stream.
    pub max_decisions: u32,
}

impl<S: Saga> fmt::Debug for SagaEnv<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaEnv")
            .field("saga", &S::NAME)
            .finish_non_exhaustive()
    }
}

impl<S: Saga> SagaEnv<S> {
    #[must_use]
    pub fn new(
        runtime: SharedRuntime,
        store: Arc<dyn EventStore>,
        dispatcher: Arc<dyn Dispatcher<S::Command>>,
    ) -> Self {
        SagaEnv {
            runtime,
            store,
            dispatcher,
            upcasters: Upcasters::new(),
            max_decisions: 3,
        }
    }
}

/// One saga instance as a store's state.
#[derive(Clone, Debug, PartialEq)]
pub struct SagaState<S: Saga> {
    pub id: String,
    pub saga: S,
    pub version: u64,
    /// Durable pending deadlines: id → (due, input to feed).
    pub deadlines: BTreeMap<String, (Timestamp, S::Input)>,
    pub recovered: bool,
    pub persisting: Option<Persisting<S>>,
    /// Inputs waiting for the current append, with the deadline that produced them.
    pub queued: VecDeque<(S::Input, Option<String>)>,
    /// Commands of the last persisted reaction (re-dispatched on recovery).
    pub last_commands: Vec<S::Command>,
    /// Set when the saga cannot go on (undecodable stream, store refusing writes).
    pub failure: Option<String>,
}

/// A reaction being appended.
#[derive(Clone, Debug, PartialEq)]
pub struct Persisting<S: Saga> {
    pub input: S::Input,
    /// The deadline whose firing produced `input`; it is cleared in the same append.
    pub fired: Option<String>,
    pub reaction: Reaction<S>,
    pub deadlines_due: Vec<(String, Timestamp, S::Input)>,
    pub event_ids: Vec<EventId>,
    pub decisions: u32,
}

impl<S: Saga> SagaState<S> {
    /// A saga that has never run (or whose durable state must be loaded first: send
    /// [`SagaAction::Recover`]).
    #[must_use]
    pub fn new(id: impl Into<String>) -> Self {
        SagaState {
            id: id.into(),
            saga: S::default(),
            version: 0,
            deadlines: BTreeMap::new(),
            recovered: false,
            persisting: None,
            queued: VecDeque::new(),
            last_commands: Vec::new(),
            failure: None,
        }
    }

    #[must_use]
    pub fn stream(&self) -> StreamId {
        StreamId::of(S::NAME, &self.id)
    }
}

/// Actions of a [`SagaReducer`].
#[derive(Clone, Debug, PartialEq)]
pub enum SagaAction<S: Saga> {
    Input(S::Input),
    /// Load the saga's stream, rebuild state and deadlines, re-arm timers.
    Recover,
    Loaded(Result<Vec<RecordedEvent>, StoreError>),
    Persisted(Result<u64, StoreError>),
    DeadlineFired(String),
}

/// Runs a [`Saga`] inside a store. See the module docs.
pub struct SagaReducer<S> {
    _saga: std::marker::PhantomData<fn() -> S>,
}

impl<S> fmt::Debug for SagaReducer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SagaReducer")
    }
}

impl<S> Default for SagaReducer<S> {
    fn default() -> Self {
        SagaReducer {
            _saga: std::marker::PhantomData,
        }
    }
}

fn timer_id<S: Saga>(state: &SagaState<S>, deadline: &str) -> String {
    format!("{}-{}/{}", S::NAME, state.id, deadline)
}

impl<S: Saga> SagaReducer<S> {
    fn load(state: &SagaState<S>, env: &SagaEnv<S>) -> Effect<SagaAction<S>> {
        let read = env
            .store
            .read_stream(&state.stream(), state.version + 1, usize::MAX);
        Effect::run(
            "saga.load",
            async move { Some(SagaAction::Loaded(read.await)) },
        )
    }

    fn handle(
        state: &mut SagaState<S>,
        input: S::Input,
        fired: Option<String>,
        decisions: u32,
        env: &SagaEnv<S>,
    ) -> Effects<SagaAction<S>> {
        let mut reaction = state.saga.react(&input);
        if let Some(id) = &fired
            && !reaction.clear_deadlines.contains(id)
            && !reaction.set_deadlines.iter().any(|(set, _, _)| set == id)
        {
            reaction.clear_deadlines.push(id.clone());
        }
        if reaction.is_empty() {
            return Self::next_queued(state, env);
        }
        let now = env.runtime.now();
        let deadlines_due: Vec<_> = reaction
            .set_deadlines
            .iter()
            .map(|(id, after, i)| (id.clone(), now + *after, i.clone()))
            .collect();
        match Self::encode(&reaction, &deadlines_due, env) {
            Err(reason) => {
                state.failure = Some(reason);
                Effects::new()
            }
            Ok(encoded) => {
                let event_ids = encoded.iter().map(|e| e.event_id).collect();
                let batch = AppendBatch::single(
                    state.stream(),
                    ExpectedVersion::after(state.version),
                    encoded,
                );
                state.persisting = Some(Persisting {
                    input,
                    fired,
                    reaction,
                    deadlines_due,
                    event_ids,
                    decisions: decisions + 1,
                });
                crate::effects![Effect::append(batch, |r| Some(SagaAction::Persisted(
                    r.map(|receipt| receipt.last_position)
                )))]
            }
        }
    }

    fn encode(
        reaction: &Reaction<S>,
        due: &[(String, Timestamp, S::Input)],
        env: &SagaEnv<S>,
    ) -> Result<Vec<NewEvent>, String> {
        let entropy = env.runtime.as_ref();
        let mut out = Vec::new();
        for event in &reaction.events {
            out.push(
                NewEvent::encode(EventId(entropy.next_id()), event, Metadata::default())
                    .map_err(|e| e.to_string())?,
            );
        }
        let record =
            |event_type: &str, r: &SagaRecord<S::Input, S::Command>| -> Result<NewEvent, String> {
                Ok(NewEvent {
                    event_id: EventId(entropy.next_id()),
                    event_type: event_type.into(),
                    schema_version: 1,
                    payload: Payload::encode(r).map_err(|e| e.to_string())?,
                    metadata: Metadata::default(),
                })
            };
        for id in &reaction.clear_deadlines {
            out.push(record(
                DEADLINE_CLEARED,
                &SagaRecord::DeadlineCleared { id: id.clone() },
            )?);
        }
        for (id, due, input) in due {
            out.push(record(
                DEADLINE_SET,
                &SagaRecord::DeadlineSet {
                    id: id.clone(),
                    due: *due,
                    input: input.clone(),
                },
            )?);
        }
        if !reaction.commands.is_empty() {
            out.push(record(
                COMMANDS_ISSUED,
                &SagaRecord::CommandsIssued {
                    commands: reaction.commands.clone(),
                },
            )?);
        }
        Ok(out)
    }

    fn next_queued(state: &mut SagaState<S>, env: &SagaEnv<S>) -> Effects<SagaAction<S>> {
        match state.queued.pop_front() {
            Some((input, fired)) => Self::handle(state, input, fired, 0, env),
            None => Effects::new(),
        }
    }

    fn dispatch(commands: Vec<S::Command>, env: &SagaEnv<S>) -> Effect<SagaAction<S>> {
        let dispatcher = Arc::clone(&env.dispatcher);
        Effect::run("saga.dispatch", async move {
            for command in commands {
                if let Err(error) = dispatcher.dispatch(command.clone()).await {
                    // The step's deadline covers a lost command; log and go on.
                    tracing::warn!(saga = S::NAME, ?command, %error, "command not delivered");
                }
            }
            None
        })
    }

    fn arm(
        state: &SagaState<S>,
        id: &str,
        due: Timestamp,
        env: &SagaEnv<S>,
    ) -> Effect<SagaAction<S>> {
        let after = due.saturating_since(env.runtime.now());
        Effect::timer(
            timer_id(state, id),
            after,
            SagaAction::DeadlineFired(id.to_owned()),
        )
    }

    /// Applies a persisted reaction: state, deadlines, timers, commands.
    fn commit(
        state: &mut SagaState<S>,
        persisted: Persisting<S>,
        env: &SagaEnv<S>,
    ) -> Effects<SagaAction<S>> {
        let mut effects = Effects::new();
        for event in &persisted.reaction.events {
            state.saga.apply(event);
        }
        for id in &persisted.reaction.clear_deadlines {
            if state.deadlines.remove(id).is_some() {
                effects.push(Effect::cancel(timer_id(state, id)));
            }
        }
        for (id, due, input) in persisted.deadlines_due {
            effects.push(Self::arm(state, &id, due, env));
            state.deadlines.insert(id, (due, input));
        }
        if !persisted.reaction.commands.is_empty() {
            state.last_commands.clone_from(&persisted.reaction.commands);
            effects.push(Self::dispatch(persisted.reaction.commands, env));
        }
        effects.extend(Self::next_queued(state, env));
        effects
    }

    fn replay(
        state: &mut SagaState<S>,
        recorded: &[RecordedEvent],
        env: &SagaEnv<S>,
    ) -> Result<(), DecodeError> {
        for record in recorded {
            match &*record.event_type {
                DEADLINE_SET | DEADLINE_CLEARED | COMMANDS_ISSUED => {
                    let decoded: SagaRecord<S::Input, S::Command> =
                        record.payload.decode().map_err(|e| DecodeError::Payload {
                            event_type: record.event_type.to_string(),
                            reason: e.to_string(),
                        })?;
                    match decoded {
                        SagaRecord::DeadlineSet { id, due, input } => {
                            state.deadlines.insert(id, (due, input));
                        }
                        SagaRecord::DeadlineCleared { id } => {
                            state.deadlines.remove(&id);
                        }
                        SagaRecord::CommandsIssued { commands } => state.last_commands = commands,
                    }
                }
                _ => state
                    .saga
                    .apply(&record.decode::<S::Event>(&env.upcasters)?),
            }
            state.version = record.version;
        }
        Ok(())
    }
}

impl<S: Saga> Reducer for SagaReducer<S> {
    type State = SagaState<S>;
    type Action = SagaAction<S>;
    type Env = SagaEnv<S>;

    fn reduce(
        &self,
        state: &mut SagaState<S>,
        action: SagaAction<S>,
        env: &SagaEnv<S>,
    ) -> Effects<SagaAction<S>> {
        if state.failure.is_some() {
            return Effects::new();
        }
        match action {
            SagaAction::Input(input) => {
                if !state.recovered || state.persisting.is_some() {
                    state.queued.push_back((input, None));
                    return Effects::new();
                }
                Self::handle(state, input, None, 0, env)
            }
            SagaAction::Recover => {
                if state.persisting.is_some() {
                    return Effects::new();
                }
                crate::effects![Self::load(state, env)]
            }
            SagaAction::Loaded(Err(error)) => {
                // Could not load; try again shortly rather than run on stale state. The
                // retry loads directly instead of going through `Recover`: after a failed
                // append `persisting` is still set (the load decides whether our events
                // landed), and `Recover` ignores a saga that is persisting — routing the
                // retry through it would leave the saga stuck for good.
                tracing::warn!(saga = S::NAME, id = %state.id, %error, "saga load failed; retrying");
                let pause = env.runtime.sleep(Duration::from_millis(100));
                let (store, stream, from) =
                    (Arc::clone(&env.store), state.stream(), state.version + 1);
                crate::effects![Effect::cancellable(
                    format!("{}-{}/reload", S::NAME, state.id),
                    "saga.reload",
                    async move {
                        pause.await;
                        Some(SagaAction::Loaded(
                            store.read_stream(&stream, from, usize::MAX).await,
                        ))
                    }
                )]
            }
            SagaAction::Loaded(Ok(recorded)) => {
                let ours = state
                    .persisting
                    .as_ref()
                    .is_some_and(|p| recorded.iter().any(|r| p.event_ids.contains(&r.event_id)));
                let first_recovery = !state.recovered;
                // If `ours`, the append committed after all (its ack was lost): the replay
                // applies it, and its side effects (timers, commands) run below.
                let pending = state.persisting.take();
                if let Err(error) = Self::replay(state, &recorded, env) {
                    state.failure = Some(error.to_string());
                    return Effects::new();
                }
                state.recovered = true;
                let mut effects = Effects::new();
                if first_recovery {
                    // Re-arm every durable deadline; re-issue the last commands.
                    for (id, (due, _)) in &state.deadlines {
                        effects.push(Self::arm(state, id, *due, env));
                    }
                    if !state.saga.is_terminal() && !state.last_commands.is_empty() {
                        effects.push(Self::dispatch(state.last_commands.clone(), env));
                    }
                }
                match pending {
                    Some(p) if ours => {
                        for (id, due, _) in &p.deadlines_due {
                            effects.push(Self::arm(state, id, *due, env));
                        }
                        for id in &p.reaction.clear_deadlines {
                            effects.push(Effect::cancel(timer_id(state, id)));
                        }
                        if !p.reaction.commands.is_empty() {
                            effects.push(Self::dispatch(p.reaction.commands, env));
                        }
                        effects.extend(Self::next_queued(state, env));
                    }
                    // Someone else wrote to the stream: a real conflict, which counts
                    // towards giving up.
                    Some(p) if !recorded.is_empty() && p.decisions >= env.max_decisions => {
                        state.failure = Some(format!(
                            "stream contended: gave up after {} decisions on {:?}",
                            p.decisions, p.input
                        ));
                    }
                    Some(p) if !recorded.is_empty() => {
                        effects.extend(Self::handle(state, p.input, p.fired, p.decisions, env));
                    }
                    // Nothing was written at all: the append failed transiently. Deciding
                    // again is a retry of the same step, not a lost race, so it does not
                    // count towards `max_decisions`.
                    Some(p) => effects.extend(Self::handle(
                        state,
                        p.input,
                        p.fired,
                        p.decisions.saturating_sub(1),
                        env,
                    )),
                    None => effects.extend(Self::next_queued(state, env)),
                }
                effects
            }
            SagaAction::Persisted(Ok(_)) => {
                let Some(persisted) = state.persisting.take() else {
                    debug_assert!(false, "persisted with nothing pending");
                    return Effects::new();
                };
                state.version += persisted.event_ids.len() as u64;
                Self::commit(state, persisted, env)
            }
            SagaAction::Persisted(Err(error)) => {
                if matches!(error, StoreError::Conflict { .. }) || error.is_transient() {
                    // Reload: our events may be there (lost ack), or someone else's are.
                    return crate::effects![Self::load(state, env)];
                }
                state.failure = Some(format!("append refused: {error}"));
                Effects::new()
            }
            SagaAction::DeadlineFired(id) => {
                let Some((_, input)) = state.deadlines.get(&id).cloned() else {
                    return Effects::new(); // cleared meanwhile: a late timer
                };
                metrics::counter!(names::SAGA_DEADLINES_FIRED, "saga" => S::NAME).increment(1);
                if state.persisting.is_some() || !state.recovered {
                    state.queued.push_back((input, Some(id)));
                    return Effects::new();
                }
                Self::handle(state, input, Some(id), 0, env)
            }
        }
    }

    fn action_name(&self, action: &SagaAction<S>) -> &'static str {
        match action {
            SagaAction::Input(_) => "Input",
            SagaAction::Recover => "Recover",
            SagaAction::Loaded(_) => "Loaded",
            SagaAction::Persisted(_) => "Persisted",
            SagaAction::DeadlineFired(_) => "DeadlineFired",
        }
    }
}
