//! Event-sourced aggregates: `decide` turns a command into events (or a typed error),
//! `apply` folds events into state.
//!
//! Two ways to run one:
//! - [`AggregateReducer`] inside a [`Store`](crate::Store): commands are actions, the
//!   append is an [`Effect::Append`], and the state changes **only when the append has
//!   succeeded**. Commands that arrive during an append wait their turn, so each decision
//!   sees the latest state.
//! - [`Repository`] for request/response services: load (snapshot + tail), decide, append
//!   with the expected version.
//!
//! Both treat a concurrency conflict the same way: never a blind retry of the same
//! events. They reload what was written meanwhile and *decide again* on the fresh state,
//! a bounded number of times. An append whose outcome is unknown (timeout) is resolved the
//! same way: the reload shows whether our events (recognised by id) made it.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::effect::{Effect, Effects};
use crate::effects;
use crate::event::{
    DecodeError, Event, EventId, Metadata, NewEvent, RecordedEvent, StreamId, Upcasters,
};
use crate::event_store::{AppendBatch, EventStore, ExpectedVersion, StoreError};
use crate::instrument as names;
use crate::reducer::Reducer;
use crate::runtime::Entropy;

/// An event-sourced consistency boundary.
pub trait Aggregate:
    Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// Stream category: instance `42` lives in stream `"{CATEGORY}-42"`.
    const CATEGORY: &'static str;
    type Command: Clone + fmt::Debug + PartialEq + Send + Sync + 'static;
    type Event: Event + Clone + fmt::Debug + PartialEq;
    type Error: std::error::Error + Clone + PartialEq + Send + Sync + 'static;

    /// Validates `command` against the current state. Pure.
    ///
    /// # Errors
    /// The domain's reason to refuse the command.
    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Folds one event into the state. Pure and total: events are facts.
    fn apply(&mut self, event: &Self::Event);

    /// Schema version of the serialized state in snapshots.
    fn snapshot_version() -> u32 {
        1
    }

    #[must_use]
    fn stream_id(id: &str) -> StreamId {
        StreamId::of(Self::CATEGORY, id)
    }
}

/// Why a command did not produce events.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The aggregate refused it (a business rule).
    #[error("rejected: {0}")]
    Rejected(E),
    /// Others kept writing to the stream; gave up after this many decisions.
    #[error("stream kept changing: gave up after {attempts} decisions")]
    Contended { attempts: u32 },
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Decode(DecodeError),
    #[error("cannot serialize: {0}")]
    Encode(String),
}

impl<E: std::error::Error> CommandError<E> {
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            CommandError::Rejected(_) => "rejected",
            CommandError::Contended { .. } => "contended",
            CommandError::Store(e) => e.kind(),
            CommandError::Decode(_) => "decode",
            CommandError::Encode(_) => "encode",
        }
    }
}

pub(crate) fn encode_all<A: Aggregate>(
    entropy: &dyn Entropy,
    events: &[A::Event],
    metadata: &Metadata,
) -> Result<Vec<NewEvent>, CommandError<A::Error>> {
    events
        .iter()
        .map(|e| {
            NewEvent::encode(EventId(entropy.next_id()), e, metadata.clone())
                .map_err(|err| CommandError::Encode(err.to_string()))
        })
        .collect()
}

pub(crate) fn decode_all<A: Aggregate>(
    upcasters: &Upcasters,
    recorded: &[RecordedEvent],
) -> Result<Vec<A::Event>, DecodeError> {
    recorded
        .iter()
        .map(|r| r.decode::<A::Event>(upcasters))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Inside a Store
// ---------------------------------------------------------------------------------------

/// What an [`AggregateReducer`] needs from its environment.
#[derive(Clone)]
pub struct AggregateEnv {
    pub entropy: Arc<dyn Entropy>,
    pub store: Arc<dyn EventStore>,
    pub upcasters: Upcasters,
    /// How many times a command is decided again after conflicts before giving up.
    pub max_decisions: u32,
}

impl fmt::Debug for AggregateEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateEnv")
            .field("max_decisions", &self.max_decisions)
            .finish_non_exhaustive()
    }
}

impl AggregateEnv {
    #[must_use]
    pub fn new(entropy: Arc<dyn Entropy>, store: Arc<dyn EventStore>) -> Self {
        AggregateEnv {
            entropy,
            store,
            upcasters: Upcasters::new(),
            max_decisions: 3,
        }
    }
}

/// One aggregate instance as a store's state.
#[derive(Clone, Debug, PartialEq)]
pub struct AggregateRoot<A: Aggregate> {
    pub id: String,
    pub state: A,
    /// Version of the last event applied (0: none).
    pub version: u64,
    pub hydrated: bool,
    /// The command being decided/appended and the events it produced.
    pub in_flight: Option<InFlight<A>>,
    pub queued: VecDeque<A::Command>,
    /// Outcome of the most recent command, for callers and tests.
    pub last_outcome: Option<Result<u64, CommandError<A::Error>>>,
}

/// A command whose events are being appended.
#[derive(Clone, Debug, PartialEq)]
pub struct InFlight<A: Aggregate> {
    pub command: A::Command,
    pub events: Vec<A::Event>,
    pub event_ids: Vec<EventId>,
    pub decisions: u32,
}

impl<A: Aggregate> AggregateRoot<A> {
    #[must_use]
    pub fn new(id: impl Into<String>) -> Self {
        AggregateRoot {
            id: id.into(),
            state: A::default(),
            version: 0,
            hydrated: false,
            in_flight: None,
            queued: VecDeque::new(),
            last_outcome: None,
        }
    }

    #[must_use]
    pub fn stream(&self) -> StreamId {
        A::stream_id(&self.id)
    }
}

/// Actions of an [`AggregateReducer`].
#[derive(Clone, Debug, PartialEq)]
pub enum AggregateAction<A: Aggregate> {
    /// A command to decide.
    Execute(A::Command),
    /// Events read from the stream past our version (hydration or after a conflict).
    Refreshed(Result<Vec<RecordedEvent>, StoreError>),
    /// The append of the in-flight command's events finished.
    Appended(Result<u64, StoreError>),
}

/// Runs an [`Aggregate`] inside a store. See the module docs.
#[derive(Debug)]
pub struct AggregateReducer<A> {
    _aggregate: std::marker::PhantomData<fn() -> A>,
}

impl<A> Default for AggregateReducer<A> {
    fn default() -> Self {
        AggregateReducer {
            _aggregate: std::marker::PhantomData,
        }
    }
}

impl<A: Aggregate> AggregateReducer<A> {
    fn refresh(root: &AggregateRoot<A>, env: &AggregateEnv) -> Effect<AggregateAction<A>> {
        let read = env
            .store
            .read_stream(&root.stream(), root.version + 1, usize::MAX);
        Effect::run("aggregate.refresh", async move {
            Some(AggregateAction::Refreshed(read.await))
        })
    }

    /// Decides `command` (already marked in flight or not) and starts its append.
    fn decide(
        root: &mut AggregateRoot<A>,
        command: A::Command,
        decisions: u32,
        env: &AggregateEnv,
    ) -> Effects<AggregateAction<A>> {
        match root.state.decide(&command) {
            Err(error) => {
                metrics::counter!(names::COMMANDS_REJECTED, "aggregate" => A::CATEGORY, "error" => "rejected").increment(1);
                root.last_outcome = Some(Err(CommandError::Rejected(error)));
                Self::next_queued(root, env)
            }
            Ok(events) if events.is_empty() => {
                root.last_outcome = Some(Ok(root.version));
                Self::next_queued(root, env)
            }
            Ok(events) => {
                match encode_all::<A>(env.entropy.as_ref(), &events, &Metadata::default()) {
                    Err(error) => {
                        root.last_outcome = Some(Err(error));
                        Self::next_queued(root, env)
                    }
                    Ok(encoded) => {
                        let event_ids = encoded.iter().map(|e| e.event_id).collect();
                        let batch = AppendBatch::single(
                            root.stream(),
                            ExpectedVersion::after(root.version),
                            encoded,
                        );
                        root.in_flight = Some(InFlight {
                            command,
                            events,
                            event_ids,
                            decisions: decisions + 1,
                        });
                        effects![Effect::append(batch, |result| {
                            Some(AggregateAction::Appended(
                                result.map(|receipt| receipt.last_position),
                            ))
                        })]
                    }
                }
            }
        }
    }

    fn next_queued(root: &mut AggregateRoot<A>, env: &AggregateEnv) -> Effects<AggregateAction<A>> {
        match root.queued.pop_front() {
            Some(command) => Self::decide(root, command, 0, env),
            None => Effects::new(),
        }
    }

    fn apply_recorded(
        root: &mut AggregateRoot<A>,
        recorded: &[RecordedEvent],
        env: &AggregateEnv,
    ) -> Result<(), DecodeError> {
        let events = decode_all::<A>(&env.upcasters, recorded)?;
        for (event, record) in events.iter().zip(recorded) {
            debug_assert_eq!(
                record.version,
                root.version + 1,
                "stream versions are contiguous"
            );
            root.state.apply(event);
            root.version = record.version;
        }
        Ok(())
    }
}

impl<A: Aggregate> Reducer for AggregateReducer<A> {
    type State = AggregateRoot<A>;
    type Action = AggregateAction<A>;
    type Env = AggregateEnv;

    fn reduce(
        &self,
        root: &mut AggregateRoot<A>,
        action: AggregateAction<A>,
        env: &AggregateEnv,
    ) -> Effects<AggregateAction<A>> {
        match action {
            AggregateAction::Execute(command) => {
                if !root.hydrated {
                    let first_command = root.queued.is_empty();
                    root.queued.push_back(command);
                    return if first_command {
                        effects![Self::refresh(root, env)]
                    } else {
                        Effects::new()
                    };
                }
                if root.in_flight.is_some() {
                    root.queued.push_back(command);
                    return Effects::new();
                }
                Self::decide(root, command, 0, env)
            }
            AggregateAction::Refreshed(Err(error)) => {
                root.last_outcome = Some(Err(CommandError::Store(error)));
                root.in_flight = None;
                root.queued.clear();
                Effects::new()
            }
            AggregateAction::Refreshed(Ok(recorded)) => {
                let ours = root
                    .in_flight
                    .as_ref()
                    .is_some_and(|f| recorded.iter().any(|r| f.event_ids.contains(&r.event_id)));
                if let Err(error) = Self::apply_recorded(root, &recorded, env) {
                    root.last_outcome = Some(Err(CommandError::Decode(error)));
                    root.in_flight = None;
                    root.queued.clear();
                    return Effects::new();
                }
                root.hydrated = true;
                match root.in_flight.take() {
                    // The "failed" append had in fact committed (its ack was lost).
                    Some(_) if ours => {
                        root.last_outcome = Some(Ok(root.version));
                        Self::next_queued(root, env)
                    }
                    // Someone else wrote: a lost race, which counts towards giving up.
                    Some(flight)
                        if !recorded.is_empty() && flight.decisions >= env.max_decisions =>
                    {
                        root.last_outcome = Some(Err(CommandError::Contended {
                            attempts: flight.decisions,
                        }));
                        Self::next_queued(root, env)
                    }
                    Some(flight) if !recorded.is_empty() => {
                        Self::decide(root, flight.command, flight.decisions, env)
                    }
                    // Nothing was written: the append failed transiently; deciding again is a
                    // retry of the same step and does not count as a lost race.
                    Some(flight) => Self::decide(
                        root,
                        flight.command,
                        flight.decisions.saturating_sub(1),
                        env,
                    ),
                    None => Self::next_queued(root, env),
                }
            }
            AggregateAction::Appended(Ok(_position)) => {
                let Some(flight) = root.in_flight.take() else {
                    debug_assert!(false, "append finished with nothing in flight");
                    return Effects::new();
                };
                for event in &flight.events {
                    root.state.apply(event);
                }
                root.version += flight.events.len() as u64;
                root.last_outcome = Some(Ok(root.version));
                Self::next_queued(root, env)
            }
            AggregateAction::Appended(Err(error)) => {
                let retryable =
                    matches!(error, StoreError::Conflict { .. }) || error.is_transient();
                if retryable && root.in_flight.is_some() {
                    // Not a blind retry: reload, then either find our events or decide anew.
                    return effects![Self::refresh(root, env)];
                }
                root.in_flight = None;
                root.last_outcome = Some(Err(CommandError::Store(error)));
                Self::next_queued(root, env)
            }
        }
    }

    fn action_name(&self, action: &AggregateAction<A>) -> &'static str {
        match action {
            AggregateAction::Execute(_) => "Execute",
            AggregateAction::Refreshed(_) => "Refreshed",
            AggregateAction::Appended(_) => "Appended",
        }
    }
}

pub use crate::repository::{Companion, Decided, Executed, Repository};
