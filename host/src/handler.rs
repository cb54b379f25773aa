//! The command handler: load–decide–append for message handlers, with the inbox marker in
//! the same atomic batch.
//!
//! Built on core's [`Repository`] (its cache, paged loads, re-decision on conflicts and
//! companion events), so there is one implementation of the rule that keeps cached state
//! honest — *state changes only after the append that makes it durable succeeded*. What
//! this module adds is the inbox: the marker of the message being handled is the
//! decision's [`Companion`], so "the effect happened" and "the message was handled" are
//! one atomic fact, and a redelivery finds the marker and changes nothing
//! ([`Decided::duplicate`]).
//!
//! Fault point [`POINT_EVICT_BEFORE_LOAD`]: the cached aggregate is dropped before a
//! command, so the simulator exercises cold loads (paging through the stream, rebuilding
//! the cache) in the middle of busy runs, not only after a restart.

use std::fmt;

use reprise_core::repository::{Companion, Decided};
use reprise_core::{
    Aggregate, CommandError, EventId, Metadata, Repository, Situation, StoreError, buggify,
    sometimes,
};

use crate::{Platform, inbox};

/// BUGGIFY: drop the cached aggregate before loading it.
pub const POINT_EVICT_BEFORE_LOAD: &str = "handler.evict-before-load";

/// A redelivered message found its inbox marker: the handler's effect did not happen twice.
pub const DUPLICATE_DEDUPLICATED: Situation = Situation::new(
    "host.inbox.duplicate-deduplicated",
    "a message handled before was delivered again and the inbox marker absorbed it",
);

/// An append whose outcome was unknown (timed out) was retried to an answer.
pub const COMMIT_UNKNOWN_RESOLVED: Situation = Situation::new(
    "host.handler.commit-unknown-resolved",
    "a command's append timed out (outcome unknown) and a retry settled it",
);

/// ... and the retry found the timed-out append had been committed after all.
pub const COMMIT_UNKNOWN_WAS_COMMITTED: Situation = Situation::new(
    "host.handler.commit-unknown-was-committed",
    "a retried command found its timed-out append already committed (inbox marker present)",
);

/// Aggregates kept in memory per handler unless configured otherwise.
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

/// Decisions attempted for one command before giving up on a contended stream.
pub const MAX_DECISIONS: u32 = 5;

/// The message being handled, for the inbox marker and the events' causation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handling<'a> {
    pub consumer: &'a str,
    pub message: EventId,
}

/// Load–decide–append for one aggregate type. See the module docs.
pub struct CommandHandler<A: Aggregate> {
    platform: Platform,
    repository: Repository<A>,
}

impl<A: Aggregate> fmt::Debug for CommandHandler<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandHandler")
            .field("repository", &self.repository)
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> CommandHandler<A> {
    /// A handler caching up to [`DEFAULT_CACHE_CAPACITY`] aggregates.
    #[must_use]
    pub fn new(platform: &Platform) -> Self {
        Self::with_capacity(platform, DEFAULT_CACHE_CAPACITY)
    }

    /// A handler caching up to `capacity` aggregates.
    #[must_use]
    pub fn with_capacity(platform: &Platform, capacity: usize) -> Self {
        let entropy: std::sync::Arc<dyn reprise_core::Entropy> = platform.runtime.clone();
        CommandHandler {
            platform: platform.clone(),
            repository: Repository::new(platform.store.clone(), entropy)
                .with_cache(capacity)
                .with_max_decisions(MAX_DECISIONS),
        }
    }

    /// The repository underneath (loads, cache).
    #[must_use]
    pub fn repository(&self) -> &Repository<A> {
        &self.repository
    }

    /// Decides `command` on aggregate `id` and appends the events — with the inbox marker
    /// of `handling`, if given — in one atomic batch. A refusal is
    /// [`Decided::rejection`] (with the marker stored: a refused command was handled); a
    /// redelivery is [`Decided::duplicate`].
    ///
    /// # Errors
    /// Transient store failures (retry with the same `handling`: the marker makes the
    /// retry safe), undecodable streams, and contention. Never
    /// [`CommandError::Rejected`].
    pub async fn execute(
        &self,
        id: &str,
        command: &A::Command,
        handling: Option<Handling<'_>>,
    ) -> Result<Decided<A>, CommandError<A::Error>> {
        let metadata = Metadata {
            causation_id: handling.map(|h| h.message.0),
            // The current trace context (the consumer's span, when the message was traced):
            // the events continue the trace.
            traceparent: reprise_core::event::trace::current().map(|t| t.to_string()),
            ..Metadata::default()
        };
        let companions: Vec<Companion> = handling
            .map(|h| Companion {
                stream: inbox::stream(h.consumer),
                events: vec![inbox::marker(h.consumer, h.message)],
            })
            .into_iter()
            .collect();
        if buggify(POINT_EVICT_BEFORE_LOAD) {
            self.repository.evict(id);
        }
        let decided = self
            .repository
            .decide_and_append(id, command, &metadata, &companions)
            .await?;
        sometimes!(
            DUPLICATE_DEDUPLICATED.name,
            decided.duplicate && handling.is_some()
        );
        if !decided.events.is_empty() {
            let types: Vec<&str> = decided
                .events
                .iter()
                .map(reprise_core::Event::event_type)
                .collect();
            self.platform.note(format_args!(
                "{} v{}: {}",
                A::stream_id(id),
                decided.version,
                types.join(", ")
            ));
        }
        Ok(decided)
    }

    /// [`execute`](Self::execute), retried with the platform's backoff until it gives an
    /// answer: transient store failures and contention pass, and the inbox marker makes
    /// every retry safe.
    pub async fn execute_until_done(
        &self,
        id: &str,
        command: &A::Command,
        handling: Option<Handling<'_>>,
    ) -> Decided<A> {
        let mut backoff = self.platform.backoff();
        let mut outcome_unknown = false;
        loop {
            match self.execute(id, command, handling).await {
                Ok(decided) => {
                    sometimes!(COMMIT_UNKNOWN_RESOLVED.name, outcome_unknown);
                    sometimes!(
                        COMMIT_UNKNOWN_WAS_COMMITTED.name,
                        outcome_unknown && decided.duplicate
                    );
                    return decided;
                }
                Err(error) => {
                    outcome_unknown |= matches!(error, CommandError::Store(StoreError::Timeout));
                    tracing::debug!(category = A::CATEGORY, id, %error, "command not handled yet; retrying");
                    self.platform.pause(&mut backoff).await;
                }
            }
        }
    }
}
