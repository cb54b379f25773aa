//! Load–decide–append for request/response services and message handlers.
//!
//! A [`Repository`] loads an aggregate (snapshot, or its cached state, plus the stream's
//! tail, read page by page), decides a command, and appends the events with the expected
//! version. On a conflict it reloads and decides again on the fresh state — never a blind
//! retry of the same events — a bounded number of times.
//!
//! **Companions.** A message handler must record "message M handled" in the *same atomic
//! batch* as the events M caused, or a crash between the two makes a redelivery take
//! effect twice. [`Repository::decide_and_append`] takes such companion events and appends
//! them with the decision — also when the aggregate refuses the command (a refused
//! command has been handled too). A companion with a deterministic id makes a second
//! handling of the same message fail as a duplicate, atomically with its events:
//! [`Decided::duplicate`].
//!
//! **Cache.** A busy stream (one inventory SKU sees every order) reloaded from its first
//! event on every command is quadratic. With [`Repository::with_cache`] the repository
//! keeps each aggregate's state *and the version it reflects*; a load reads only the tail
//! after that version. The rule that keeps it honest: **the cache changes only after the
//! append that makes a decision durable succeeded**; a failed or conflicting append
//! leaves it at the last state the store confirmed. The cache is bounded: past its
//! capacity an entry is evicted (the one with the smallest id — deterministic, and an
//! evicted aggregate simply reloads).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::aggregate::{Aggregate, CommandError, decode_all, encode_all};
use crate::event::{Metadata, NewEvent, Payload, StreamId, Upcasters};
use crate::event_store::{
    AppendBatch, EventStore, ExpectedVersion, Snapshot, SnapshotPolicy, StoreError,
};
use crate::instrument as names;
use crate::runtime::Entropy;

/// Events read per `read_stream` call while loading: a long stream is read in pages, never
/// in one unbounded read.
pub const LOAD_PAGE: usize = 512;

/// Load–decide–append. See the module docs.
pub struct Repository<A: Aggregate> {
    store: Arc<dyn EventStore>,
    entropy: Arc<dyn Entropy>,
    upcasters: Upcasters,
    snapshots: SnapshotPolicy,
    max_decisions: u32,
    cache: Option<Arc<Cache<A>>>,
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Repository {
            store: Arc::clone(&self.store),
            entropy: Arc::clone(&self.entropy),
            upcasters: self.upcasters.clone(),
            snapshots: self.snapshots,
            max_decisions: self.max_decisions,
            cache: self.cache.clone(),
        }
    }
}

impl<A: Aggregate> fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("category", &A::CATEGORY)
            .field("snapshots", &self.snapshots)
            .field("max_decisions", &self.max_decisions)
            .field(
                "cached",
                &self.cache.as_ref().map(|c| c.entries.lock().len()),
            )
            .finish_non_exhaustive()
    }
}

struct Cache<A> {
    entries: Mutex<BTreeMap<String, (A, u64)>>,
    capacity: usize,
}

impl<A: Aggregate> Cache<A> {
    fn get(&self, id: &str) -> Option<(A, u64)> {
        self.entries.lock().get(id).cloned()
    }

    fn remember(&self, id: &str, state: &A, version: u64) {
        let mut entries = self.entries.lock();
        if let Some(entry) = entries.get_mut(id) {
            // Never move backwards: a slower load must not replace a newer decision.
            if entry.1 <= version {
                *entry = (state.clone(), version);
            }
            return;
        }
        if entries.len() >= self.capacity {
            entries.pop_first();
        }
        entries.insert(id.to_owned(), (state.clone(), version));
    }
}

/// The result of a successful [`Repository::execute`].
#[derive(Clone, Debug, PartialEq)]
pub struct Executed<A: Aggregate> {
    pub state: A,
    pub version: u64,
    pub events: Vec<A::Event>,
}

/// Events appended atomically with a decision: see the module docs.
#[derive(Clone, Debug, PartialEq)]
pub struct Companion {
    pub stream: StreamId,
    pub events: Vec<NewEvent>,
}

/// What [`Repository::decide_and_append`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct Decided<A: Aggregate> {
    /// The aggregate after the command (unchanged for a refusal or a duplicate).
    pub state: A,
    pub version: u64,
    /// Events appended (empty for a no-op, a refusal or a duplicate).
    pub events: Vec<A::Event>,
    /// The aggregate refused the command; the companions were appended anyway.
    pub rejection: Option<A::Error>,
    /// The store already held the batch's companions: this work was done before, and
    /// nothing was appended now.
    pub duplicate: bool,
}

impl<A: Aggregate> Repository<A> {
    #[must_use]
    pub fn new(store: Arc<dyn EventStore>, entropy: Arc<dyn Entropy>) -> Self {
        Repository {
            store,
            entropy,
            upcasters: Upcasters::new(),
            snapshots: SnapshotPolicy::Never,
            max_decisions: 3,
            cache: None,
        }
    }

    #[must_use]
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    #[must_use]
    pub fn with_snapshots(mut self, policy: SnapshotPolicy) -> Self {
        self.snapshots = policy;
        self
    }

    #[must_use]
    pub fn with_max_decisions(mut self, max_decisions: u32) -> Self {
        assert!(max_decisions > 0, "a repository must decide at least once");
        self.max_decisions = max_decisions;
        self
    }

    /// Keeps up to `capacity` aggregates' states in memory (see the module docs).
    #[must_use]
    pub fn with_cache(mut self, capacity: usize) -> Self {
        assert!(capacity > 0, "a cache of capacity 0 caches nothing");
        self.cache = Some(Arc::new(Cache {
            entries: Mutex::default(),
            capacity,
        }));
        self
    }

    /// Aggregates currently cached.
    #[must_use]
    pub fn cached(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.entries.lock().len())
    }

    /// Forgets the cached state of `id` (the next load reads it from the store).
    pub fn evict(&self, id: &str) {
        if let Some(cache) = &self.cache {
            cache.entries.lock().remove(id);
        }
    }

    /// The aggregate's current state and version: the cached state (or latest snapshot)
    /// plus the events after it, read in pages of [`LOAD_PAGE`].
    ///
    /// # Errors
    /// Store failures and undecodable events.
    pub async fn load(&self, id: &str) -> Result<(A, u64), CommandError<A::Error>> {
        let stream = A::stream_id(id);
        let cached = self.cache.as_ref().and_then(|c| c.get(id));
        let from_cache = cached.is_some();
        let (mut state, mut version) = match cached {
            Some(entry) => entry,
            None => self.load_snapshot(&stream).await?,
        };
        let start = version;
        loop {
            let page = self
                .store
                .read_stream(&stream, version + 1, LOAD_PAGE)
                .await
                .map_err(CommandError::Store)?;
            for (event, record) in decode_all::<A>(&self.upcasters, &page)
                .map_err(CommandError::Decode)?
                .iter()
                .zip(&page)
            {
                assert_eq!(
                    record.version,
                    version + 1,
                    "{stream}: stream versions must be contiguous"
                );
                state.apply(event);
                version = record.version;
            }
            if page.len() < LOAD_PAGE {
                break;
            }
        }
        if let Some(cache) = &self.cache
            && (version > start || !from_cache)
        {
            cache.remember(id, &state, version);
        }
        Ok((state, version))
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<(A, u64), CommandError<A::Error>> {
        if self.snapshots == SnapshotPolicy::Never {
            return Ok((A::default(), 0));
        }
        Ok(
            match self
                .store
                .load_snapshot(stream)
                .await
                .map_err(CommandError::Store)?
            {
                Some(s) if s.schema_version == A::snapshot_version() => {
                    match s.state.decode::<A>() {
                        Ok(state) => (state, s.version),
                        // A snapshot that no longer decodes is a cache miss, not an error.
                        Err(_) => (A::default(), 0),
                    }
                }
                _ => (A::default(), 0),
            },
        )
    }

    /// Loads, decides and appends; on a conflict reloads and decides again, at most
    /// `max_decisions` times in all.
    ///
    /// # Errors
    /// See [`CommandError`]; a refusal is [`CommandError::Rejected`].
    pub async fn execute(
        &self,
        id: &str,
        command: &A::Command,
        metadata: Metadata,
    ) -> Result<Executed<A>, CommandError<A::Error>> {
        let decided = self.decide_and_append(id, command, &metadata, &[]).await?;
        match decided.rejection {
            Some(error) => Err(CommandError::Rejected(error)),
            None => Ok(Executed {
                state: decided.state,
                version: decided.version,
                events: decided.events,
            }),
        }
    }

    /// [`execute`](Self::execute) with `companions` appended in the same atomic batch,
    /// also when the aggregate refuses the command. See the module docs.
    ///
    /// # Errors
    /// Store failures (a timeout's outcome is unknown: retry with the same companions,
    /// whose ids make the retry safe), undecodable streams, unencodable events, and
    /// contention past `max_decisions`.
    pub async fn decide_and_append(
        &self,
        id: &str,
        command: &A::Command,
        metadata: &Metadata,
        companions: &[Companion],
    ) -> Result<Decided<A>, CommandError<A::Error>> {
        let stream = A::stream_id(id);
        for _ in 0..self.max_decisions {
            let (state, version) = self.load(id).await?;
            let (events, rejection) = match state.decide(command) {
                Ok(events) => (events, None),
                Err(error) => {
                    metrics::counter!(names::COMMANDS_REJECTED, "aggregate" => A::CATEGORY, "error" => "rejected").increment(1);
                    (Vec::new(), Some(error))
                }
            };
            if events.is_empty() && companions.is_empty() {
                return Ok(Decided {
                    state,
                    version,
                    events,
                    rejection,
                    duplicate: false,
                });
            }
            let mut batch = AppendBatch::default();
            if !events.is_empty() {
                let encoded = encode_all::<A>(self.entropy.as_ref(), &events, metadata)?;
                batch = batch.and(stream.clone(), ExpectedVersion::after(version), encoded);
            }
            for companion in companions {
                batch = batch.and(
                    companion.stream.clone(),
                    ExpectedVersion::Any,
                    companion.events.clone(),
                );
            }
            let unchanged = |state: A| Decided {
                state,
                version,
                events: Vec::new(),
                rejection: None,
                duplicate: true,
            };
            match self.store.append(batch).await {
                Ok(receipt) if receipt.was_duplicate => return Ok(unchanged(state)),
                Ok(receipt) => {
                    let mut state = state;
                    for event in &events {
                        state.apply(event);
                    }
                    let new_version = receipt
                        .version_of(&stream)
                        .unwrap_or(version + events.len() as u64);
                    if !events.is_empty() {
                        if let Some(cache) = &self.cache {
                            cache.remember(id, &state, new_version);
                        }
                        if self.snapshots.due(version, new_version) {
                            self.save_snapshot(&stream, &state, new_version).await;
                        }
                    }
                    return Ok(Decided {
                        state,
                        version: new_version,
                        events,
                        rejection,
                        duplicate: false,
                    });
                }
                // Our events' ids are fresh: a known id is a companion's, written before.
                Err(StoreError::DuplicateEventId(_)) if !companions.is_empty() => {
                    return Ok(unchanged(state));
                }
                Err(StoreError::Conflict { .. }) => {}
                Err(error) => return Err(CommandError::Store(error)),
            }
        }
        Err(CommandError::Contended {
            attempts: self.max_decisions,
        })
    }

    async fn save_snapshot(&self, stream: &StreamId, state: &A, version: u64) {
        let Ok(payload) = Payload::encode(state) else {
            return;
        };
        let snapshot = Snapshot {
            stream: stream.clone(),
            version,
            schema_version: A::snapshot_version(),
            state: payload,
        };
        if let Err(error) = self.store.save_snapshot(snapshot).await {
            // A snapshot is an optimisation: failing to write one loses nothing.
            tracing::warn!(%stream, %error, "snapshot not saved");
        }
    }
}
