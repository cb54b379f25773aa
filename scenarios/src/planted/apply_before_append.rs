//! [`PlantedBug::ApplyBeforeAppend`](crate::bugs::PlantedBug::ApplyBeforeAppend): an
//! aggregate cache that applies a decision *before* its append succeeded and keeps it when
//! the append fails, so cached state and version drift from the stream.
//!
//! The correct cache is core's `Repository` (used by the host's `CommandHandler`), which
//! changes cached state only after the store confirmed the append. This copy differs in
//! exactly one place, marked `PLANTED BUG`.

use std::collections::BTreeMap;
use std::fmt;

use parking_lot::Mutex;
use reprise_core::repository::Decided;
use reprise_core::{
    Aggregate, AppendBatch, CommandError, EventId, ExpectedVersion, Metadata, NewEvent, StoreError,
    Upcasters,
};
use reprise_host::{Handling, Platform, inbox};

/// Decisions attempted for one command before giving up on a contended stream.
const MAX_DECISIONS: u32 = 5;

/// See the module docs.
pub struct EagerCache<A: Aggregate> {
    platform: Platform,
    entries: Mutex<BTreeMap<String, (A, u64)>>,
}

impl<A: Aggregate> fmt::Debug for EagerCache<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EagerCache")
            .field("category", &A::CATEGORY)
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> EagerCache<A> {
    #[must_use]
    pub fn new(platform: &Platform) -> Self {
        EagerCache {
            platform: platform.clone(),
            entries: Mutex::default(),
        }
    }

    /// The aggregate's state and version: the cached entry plus the stream's tail.
    ///
    /// # Errors
    /// Store failures and undecodable events.
    pub async fn load(&self, id: &str) -> Result<(A, u64), CommandError<A::Error>> {
        let (mut state, mut version) = self
            .entries
            .lock()
            .get(id)
            .cloned()
            .unwrap_or_else(|| (A::default(), 0));
        let tail = self
            .platform
            .store
            .read_stream(&A::stream_id(id), version + 1, usize::MAX)
            .await
            .map_err(CommandError::Store)?;
        for record in &tail {
            let event = record
                .decode::<A::Event>(&Upcasters::new())
                .map_err(CommandError::Decode)?;
            state.apply(&event);
            version = record.version;
        }
        self.entries
            .lock()
            .insert(id.to_owned(), (state.clone(), version));
        Ok((state, version))
    }

    /// Load–decide–append with the inbox marker, like the host's handler.
    ///
    /// # Errors
    /// Store failures, undecodable streams, contention.
    pub async fn execute(
        &self,
        id: &str,
        command: &A::Command,
        handling: Option<Handling<'_>>,
    ) -> Result<Decided<A>, CommandError<A::Error>> {
        let metadata = Metadata {
            causation_id: handling.map(|h| h.message.0),
            ..Metadata::default()
        };
        for _ in 0..MAX_DECISIONS {
            let (state, version) = self.load(id).await?;
            let (events, rejection) = match state.decide(command) {
                Ok(events) => (events, None),
                Err(error) => (Vec::new(), Some(error)),
            };
            let mut batch = AppendBatch::default();
            if !events.is_empty() {
                let encoded = events
                    .iter()
                    .map(|e| {
                        NewEvent::encode(
                            EventId(self.platform.runtime.next_id()),
                            e,
                            metadata.clone(),
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| CommandError::Encode(e.to_string()))?;
                batch = batch.and(A::stream_id(id), ExpectedVersion::after(version), encoded);
            }
            if let Some(h) = handling {
                batch = batch.and(
                    inbox::stream(h.consumer),
                    ExpectedVersion::Any,
                    vec![inbox::marker(h.consumer, h.message)],
                );
            }
            let unchanged = |state: A, duplicate: bool| Decided {
                state,
                version,
                events: Vec::new(),
                rejection: None,
                duplicate,
            };
            if batch.event_count() == 0 {
                return Ok(Decided {
                    rejection,
                    ..unchanged(state, false)
                });
            }
            let mut after = state.clone();
            for event in &events {
                after.apply(event);
            }
            let new_version = version + events.len() as u64;
            if !events.is_empty() {
                // PLANTED BUG: the cache believes the decision before the store does.
                self.entries
                    .lock()
                    .insert(id.to_owned(), (after.clone(), new_version));
            }
            match self.platform.store.append(batch).await {
                Ok(receipt) if receipt.was_duplicate => return Ok(unchanged(state, true)),
                Ok(_) => {
                    return Ok(Decided {
                        state: after,
                        version: new_version,
                        events,
                        rejection,
                        duplicate: false,
                    });
                }
                Err(error) if inbox::is_already_handled(&error) => {
                    return Ok(unchanged(state, true));
                }
                Err(StoreError::Conflict { .. }) => {}
                Err(error) => return Err(CommandError::Store(error)),
            }
        }
        Err(CommandError::Contended {
            attempts: MAX_DECISIONS,
        })
    }

    /// [`execute`](Self::execute) until it gives an answer.
    pub async fn execute_until_done(
        &self,
        id: &str,
        command: &A::Command,
        handling: Option<Handling<'_>>,
    ) -> Decided<A> {
        let mut backoff = self.platform.backoff();
        loop {
            if let Ok(decided) = self.execute(id, command, handling).await {
                return decided;
            }
            self.platform.pause(&mut backoff).await;
        }
    }
}
