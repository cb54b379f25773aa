//! Load–decide–append for message handlers, with an aggregate cache and the inbox marker
//! in the same atomic batch.
//!
//! Why a cache: a handler reloading a busy stream (one inventory SKU sees every order) from
//! the first event on every message does quadratic work. The cache keeps each aggregate's
//! state *and the version it reflects*, and a load reads only the tail after that version.
//!
//! The rule that keeps the cache honest is the framework's: **state changes only after the
//! append that makes it durable succeeded**. A failed or conflicting append leaves the cache
//! at the last state the store confirmed; the next load reads the tail and decides again on
//! fresh state (never a blind retry of the same events). [`PlantedBug::ApplyBeforeAppend`]
//! breaks exactly this rule.
//!
//! [`PlantedBug::ApplyBeforeAppend`]: crate::bugs::PlantedBug::ApplyBeforeAppend

use std::collections::BTreeMap;
use std::fmt;

use parking_lot::Mutex;
use reprise_core::{
    Aggregate, AppendBatch, DecodeError, EventId, ExpectedVersion, Metadata, NewEvent, StoreError,
    Upcasters,
};

use super::env::ServiceEnv;
use super::inbox;

/// Decisions attempted for one command before giving up on a contended stream.
pub const MAX_DECISIONS: u32 = 5;

/// The message being handled, for the inbox marker and the events' causation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handling<'a> {
    pub consumer: &'a str,
    pub message: EventId,
}

/// What a handled command did.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled<A: Aggregate> {
    /// Events appended (empty for a no-op, a rejection or a duplicate).
    pub events: Vec<A::Event>,
    /// The aggregate after the command.
    pub state: A,
    /// The message had been handled before (its marker was already stored).
    pub duplicate: bool,
    /// The aggregate refused the command (a business rule); the marker is stored anyway,
    /// because a refused command has been handled.
    pub rejection: Option<A::Error>,
}

/// Why a command could not be handled *now*. Callers retry these after a pause.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExecuteError {
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Decode(DecodeError),
    #[error("cannot serialize event: {0}")]
    Encode(String),
    #[error("stream kept changing: gave up after {0} decisions")]
    Contended(u32),
}

#[derive(Clone)]
struct Cached<A> {
    state: A,
    version: u64,
}

/// Aggregates of one type, cached by id. See the module docs.
pub struct AggregateCache<A: Aggregate> {
    entries: Mutex<BTreeMap<String, Cached<A>>>,
    upcasters: Upcasters,
    apply_before_append: bool,
}

impl<A: Aggregate> fmt::Debug for AggregateCache<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateCache")
            .field("category", &A::CATEGORY)
            .field("entries", &self.entries.lock().len())
            .finish()
    }
}

impl<A: Aggregate> Default for AggregateCache<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Aggregate> AggregateCache<A> {
    #[must_use]
    pub fn new() -> Self {
        AggregateCache {
            entries: Mutex::default(),
            upcasters: Upcasters::new(),
            apply_before_append: false,
        }
    }

    /// Plants [`PlantedBug::ApplyBeforeAppend`](crate::bugs::PlantedBug::ApplyBeforeAppend).
    #[must_use]
    pub fn with_apply_before_append(mut self, planted: bool) -> Self {
        self.apply_before_append = planted;
        self
    }

    /// The aggregate's state and version: the cached entry plus the stream's tail.
    ///
    /// # Errors
    /// Store failures and undecodable events.
    pub async fn load(&self, env: &ServiceEnv, id: &str) -> Result<(A, u64), ExecuteError> {
        let (mut state, mut version) = self
            .entries
            .lock()
            .get(id)
            .map_or_else(|| (A::default(), 0), |c| (c.state.clone(), c.version));
        let stream = A::stream_id(id);
        let tail = env
            .store
            .read_stream(&stream, version + 1, usize::MAX)
            .await
            .map_err(ExecuteError::Store)?;
        if tail.is_empty() {
            return Ok((state, version));
        }
        for record in &tail {
            state.apply(
                &record
                    .decode::<A::Event>(&self.upcasters)
                    .map_err(ExecuteError::Decode)?,
            );
            assert_eq!(
                record.version,
                version + 1,
                "{stream}: stream versions must be contiguous"
            );
            version = record.version;
        }
        self.remember(id, &state, version);
        Ok((state, version))
    }

    fn remember(&self, id: &str, state: &A, version: u64) {
        self.entries.lock().insert(
            id.to_owned(),
            Cached {
                state: state.clone(),
                version,
            },
        );
    }

    /// Decides `command` on the aggregate `id` and appends the events — together with the
    /// inbox marker of `handling`, if given — in one atomic batch. On a conflict it reloads
    /// and decides again, at most [`MAX_DECISIONS`] times.
    ///
    /// # Errors
    /// Transient store failures (retry later with the same `handling`: the marker makes the
    /// retry safe), undecodable streams, and contention.
    pub async fn execute(
        &self,
        env: &ServiceEnv,
        id: &str,
        command: &A::Command,
        handling: Option<Handling<'_>>,
    ) -> Result<Handled<A>, ExecuteError> {
        let stream = A::stream_id(id);
        let metadata = Metadata {
            causation_id: handling.map(|h| h.message.0),
            ..Metadata::default()
        };
        for _ in 0..MAX_DECISIONS {
            let (state, version) = self.load(env, id).await?;
            let (events, rejection) = match state.decide(command) {
                Ok(events) => (events, None),
                Err(error) => (Vec::new(), Some(error)),
            };
            if events.is_empty() && handling.is_none() {
                return Ok(Handled {
                    events,
                    state,
                    duplicate: false,
                    rejection,
                });
            }
            let mut batch = AppendBatch::default();
            if !events.is_empty() {
                let encoded = events
                    .iter()
                    .map(|e| NewEvent::encode(EventId(env.runtime.next_id()), e, metadata.clone()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ExecuteError::Encode(e.to_string()))?;
                batch = batch.and(stream.clone(), ExpectedVersion::after(version), encoded);
            }
            if let Some(h) = handling {
                batch = batch.and(
                    inbox::stream(h.consumer),
                    ExpectedVersion::Any,
                    vec![inbox::marker(h.consumer, h.message)],
                );
            }
            let new_version = version + events.len() as u64;
            // The state after the events is built only when needed (one clone of the
            // aggregate fewer per command on the usual path).
            let applied = |mut state: A| {
                for event in &events {
                    state.apply(event);
                }
                state
            };
            let mut planted_after = None;
            if self.apply_before_append && !events.is_empty() {
                // PLANTED BUG: the cache believes the decision before the store does.
                let after = applied(state.clone());
                self.remember(id, &after, new_version);
                planted_after = Some(after);
            }
            match env.store.append(batch).await {
                Ok(receipt) if receipt.was_duplicate => {
                    return Ok(Handled {
                        events: Vec::new(),
                        state,
                        duplicate: true,
                        rejection: None,
                    });
                }
                Ok(_) => {
                    let after = match planted_after {
                        Some(after) => after,
                        None => applied(state),
                    };
                    if !events.is_empty() {
                        self.remember(id, &after, new_version);
                        let types: Vec<&str> =
                            events.iter().map(reprise_core::Event::event_type).collect();
                        env.note(format_args!(
                            "{stream} v{new_version}: {}",
                            types.join(", ")
                        ));
                    }
                    return Ok(Handled {
                        events,
                        state: after,
                        duplicate: false,
                        rejection,
                    });
                }
                Err(error) if inbox::is_already_handled(&error) => {
                    return Ok(Handled {
                        events: Vec::new(),
                        state,
                        duplicate: true,
                        rejection: None,
                    });
                }
                Err(StoreError::Conflict { .. }) => {}
                Err(error) => return Err(ExecuteError::Store(error)),
            }
        }
        Err(ExecuteError::Contended(MAX_DECISIONS))
    }
}

impl<A: Aggregate> AggregateCache<A> {
    /// [`execute`](Self::execute), retried with backoff until it gives an answer: transient
    /// store failures and contention pass, and the inbox marker makes every retry safe.
    pub async fn execute_until_done(
        &self,
        env: &ServiceEnv,
        id: &str,
        command: &A::Command,
        handling: Option<Handling<'_>>,
    ) -> Handled<A> {
        let mut attempt = 0;
        loop {
            match self.execute(env, id, command, handling).await {
                Ok(handled) => return handled,
                Err(error) => {
                    tracing::debug!(category = A::CATEGORY, id, %error, "command not handled yet; retrying");
                    env.sleep(super::Backoff::SERVICE.delay(attempt, env)).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }
}
