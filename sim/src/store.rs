//! The simulated event store: core's [`InMemoryEventStore`] (durable across node crashes)
//! reached through each node's network link, with latency and faults.
//!
//! Every operation follows the same path, and each step can go wrong the way a real
//! database connection does:
//! 1. the request travels (latency); an outbound partition or an injected *timeout* loses
//!    it — nothing is applied and the caller waits out its timeout;
//! 2. the store may refuse (*transient* error, nothing applied);
//! 3. the operation is applied, atomically, by the in-memory store;
//! 4. the response travels back; an inbound partition or an injected *commit-unknown*
//!    loses it — the write **is** applied and the caller sees `Timeout`.
//!
//! Step 4 is the case sloppy code gets wrong, and the reason the store's idempotent retry
//! (same batch, same event ids → acknowledged again) exists.
//!
//! Every operation's trace line names what it touched — an append every stream of its
//! batch (with the event types and expected versions), a read its stream or its range of
//! the global log — so a failure report can pick out the lines about one entity. The hash
//! covers those names and, for writes, the data written (see [`crate::trace`]).

use std::fmt::Write as _;
use std::sync::Arc;

use reprise_core::event::StreamId;
use reprise_core::{
    AppendBatch, AppendReceipt, BoxFuture, EventStore, ExpectedVersion, InMemoryEventStore,
    RecordedEvent, Snapshot, StoreError,
};

use crate::clock::Sleep;
use crate::executor::{Draw, NodeIndex, Shared};
use crate::network::Link;
use crate::trace::{Digest, Tag, TraceMode, hash_str, mix};

/// The store's steady-state profile. Latencies are per direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// One-way latency, drawn uniformly from `latency_min_us..=latency_max_us`.
    pub latency_min_us: u64,
    pub latency_max_us: u64,
    /// How long a caller waits for a response that never comes.
    pub timeout_ms: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            latency_min_us: 100,
            latency_max_us: 1_000,
            timeout_ms: 500,
        }
    }
}

impl StoreOptions {
    /// # Errors
    /// A description of the first invalid field.
    pub fn validate(&self) -> Result<(), String> {
        if self.latency_min_us > self.latency_max_us {
            return Err(format!(
                "latency_min_us {} > latency_max_us {}",
                self.latency_min_us, self.latency_max_us
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms * 1000 <= self.latency_max_us * 2 {
            return Err(format!(
                "timeout_ms {} must exceed a round trip at maximum latency",
                self.timeout_ms
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StoreOp {
    Append,
    ReadStream,
    ReadAll,
    StreamVersion,
    SaveSnapshot,
    LoadSnapshot,
}

impl StoreOp {
    fn name(self) -> &'static str {
        match self {
            StoreOp::Append => "append",
            StoreOp::ReadStream => "read_stream",
            StoreOp::ReadAll => "read_all",
            StoreOp::StreamVersion => "stream_version",
            StoreOp::SaveSnapshot => "save_snapshot",
            StoreOp::LoadSnapshot => "load_snapshot",
        }
    }
}

/// What happens to one operation, decided when it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Deliver,
    /// The request is lost: nothing applied, timeout.
    RequestLost,
    /// Refused: nothing applied, transient error.
    Refused,
    /// Applied, response lost: timeout.
    ResponseLost,
}

/// What an operation names, for its trace line and fault details.
enum Target<'a> {
    /// Every stream of the batch, with the events' data.
    Append(&'a AppendBatch),
    /// One stream (`read_stream` from a version, `stream_version`, `load_snapshot`).
    Stream(&'a StreamId, Option<u64>),
    /// The global log from a position.
    ReadAll { from: u64, limit: usize },
    /// A snapshot being saved, with its state.
    Snapshot(&'a Snapshot),
}

impl Target<'_> {
    /// The names and the data written, for the hash. Writes fold in what they write:
    /// event ids, types, schema versions, payload bytes and metadata, snapshot states.
    fn digest(&self) -> u64 {
        let mut d = Digest::new(u64::from(Tag::Store as u8));
        match self {
            Target::Append(batch) => {
                for append in &batch.streams {
                    d.str(append.stream.as_str())
                        .u64(expected_code(append.expected));
                    for event in &append.events {
                        d.u128(event.event_id.0)
                            .str(&event.event_type)
                            .u64(u64::from(event.schema_version))
                            .str(event.payload.as_str())
                            .opt_u128(event.metadata.correlation_id)
                            .opt_u128(event.metadata.causation_id)
                            .opt_str(event.metadata.traceparent.as_deref());
                    }
                }
            }
            Target::Stream(stream, from) => {
                d.str(stream.as_str()).u64(from.map_or(u64::MAX, |v| v));
            }
            Target::ReadAll { from, limit } => {
                d.u64(*from).u64(*limit as u64);
            }
            Target::Snapshot(snapshot) => {
                d.str(snapshot.stream.as_str())
                    .u64(snapshot.version)
                    .u64(u64::from(snapshot.schema_version))
                    .str(snapshot.state.as_str());
            }
        }
        d.finish()
    }

    /// `order-o01 +[OrderPlaced, PaymentRequested] expecting v3; …`, `order-o01 from v4`,
    /// `from position 17 (limit 100)`, `order-o01 v12`.
    fn render(&self) -> String {
        match self {
            Target::Append(batch) => {
                let mut out = String::new();
                for (i, append) in batch.streams.iter().enumerate() {
                    if i > 0 {
                        out.push_str("; ");
                    }
                    let types: Vec<&str> = append.events.iter().map(|e| &*e.event_type).collect();
                    let _ = write!(
                        out,
                        "{} +[{}] expecting {}",
                        append.stream,
                        types.join(", "),
                        append.expected
                    );
                }
                out
            }
            Target::Stream(stream, Some(from)) => format!("{stream} from v{from}"),
            Target::Stream(stream, None) => stream.to_string(),
            Target::ReadAll { from, limit } if *limit == usize::MAX => {
                format!("from position {from}")
            }
            Target::ReadAll { from, limit } => format!("from position {from} (limit {limit})"),
            Target::Snapshot(snapshot) => format!("{} v{}", snapshot.stream, snapshot.version),
        }
    }
}

/// A stable number per expected version, for the digest.
fn expected_code(expected: ExpectedVersion) -> u64 {
    match expected {
        ExpectedVersion::Any => u64::MAX,
        ExpectedVersion::NoStream => u64::MAX - 1,
        ExpectedVersion::StreamExists => u64::MAX - 2,
        ExpectedVersion::Exact(v) => v,
    }
}

/// The decisions for one operation and what its trace line names.
struct Plan {
    op: StoreOp,
    out_nanos: u64,
    back_nanos: u64,
    timeout_nanos: u64,
    fate: Fate,
    /// [`Target::digest`] (0 without a trace).
    digest: u64,
    /// [`Target::render`] (full traces only).
    target: Option<String>,
}

/// A node's handle on the simulated store.
pub(crate) struct SimEventStore {
    shared: Arc<Shared>,
    node: NodeIndex,
}

impl SimEventStore {
    pub(crate) fn new(shared: Arc<Shared>, node: NodeIndex) -> Self {
        SimEventStore { shared, node }
    }

    fn plan(&self, op: StoreOp, target: &Target<'_>) -> Plan {
        let mut k = self.shared.kernel.lock();
        k.stats.store_ops += 1;
        let options = k.env.store;
        let faults = k.store_faults(self.node);
        let extra = k.uniform(
            Draw::StoreLatency.of(self.node),
            0,
            faults.extra_latency_max_ms * 1000,
        );
        let out_nanos = (k.uniform(
            Draw::Latency.of(self.node),
            options.latency_min_us,
            options.latency_max_us,
        ) + extra)
            * 1000;
        let back_nanos = k.uniform(
            Draw::Latency.of(self.node),
            options.latency_min_us,
            options.latency_max_us,
        ) * 1000;
        let timeout_nanos = options.timeout_ms * 1_000_000;
        let node = Some(self.node);
        let fate = if k.network.request_blocked(self.node, Link::Store) {
            Fate::RequestLost
        } else if k.chance(
            Draw::StoreTransient.of(self.node),
            faults.transient_probability,
        ) {
            k.fault(
                node,
                "store.transient",
                format!("{} {}", op.name(), target.render()),
            );
            Fate::Refused
        } else if k.chance(Draw::StoreTimeout.of(self.node), faults.timeout_probability) {
            k.fault(
                node,
                "store.timeout",
                format!("{} {} request lost", op.name(), target.render()),
            );
            Fate::RequestLost
        } else if op == StoreOp::Append
            && k.chance(
                Draw::StoreCommitUnknown.of(self.node),
                faults.commit_unknown_probability,
            )
        {
            k.fault(
                node,
                "store.commit_unknown",
                format!("append {} applied, acknowledgement lost", target.render()),
            );
            Fate::ResponseLost
        } else {
            Fate::Deliver
        };
        let mode = k.trace.mode();
        Plan {
            op,
            out_nanos,
            back_nanos,
            timeout_nanos,
            fate,
            digest: if mode == TraceMode::Off {
                0
            } else {
                target.digest()
            },
            target: (mode == TraceMode::Full).then(|| target.render()),
        }
    }

    /// Runs one planned operation through the link. `apply` touches the durable store.
    fn operate<T, F>(&self, plan: Plan, apply: F) -> BoxFuture<'static, Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce(&InMemoryEventStore) -> Result<T, StoreError> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        let node = self.node;
        Box::pin(async move {
            Sleep::after_nanos(&shared, plan.out_nanos).await;
            match plan.fate {
                Fate::RequestLost => {
                    Sleep::after_nanos(&shared, plan.timeout_nanos.saturating_sub(plan.out_nanos))
                        .await;
                    trace_outcome(&shared, node, &plan, "timeout (request lost)");
                    return Err(StoreError::Timeout);
                }
                Fate::Refused => {
                    trace_outcome(&shared, node, &plan, "transient error");
                    return Err(StoreError::Transient(format!(
                        "simulated: the store refused {}",
                        plan.op.name()
                    )));
                }
                Fate::Deliver | Fate::ResponseLost => {}
            }
            let result = apply(&shared.store);
            let lost = plan.fate == Fate::ResponseLost
                || shared
                    .kernel
                    .lock()
                    .network
                    .response_blocked(node, Link::Store);
            if lost {
                Sleep::after_nanos(&shared, plan.timeout_nanos.saturating_sub(plan.out_nanos))
                    .await;
                trace_outcome(&shared, node, &plan, "timeout (applied, response lost)");
                return Err(StoreError::Timeout);
            }
            Sleep::after_nanos(&shared, plan.back_nanos).await;
            trace_outcome(
                &shared,
                node,
                &plan,
                match &result {
                    Ok(_) => "ok",
                    Err(e) => e.kind(),
                },
            );
            result
        })
    }
}

/// `store <op> <target> -> <outcome>`; the hash covers the operation, the target's digest
/// (names and data) and the outcome.
fn trace_outcome(shared: &Shared, node: NodeIndex, plan: &Plan, outcome: &'static str) {
    let mut k = shared.kernel.lock();
    k.record(
        Tag::Store,
        Some(node),
        mix(plan.op as u64, plan.digest),
        hash_str(outcome),
        || {
            format!(
                "store {} {} -> {outcome}",
                plan.op.name(),
                plan.target.as_deref().unwrap_or_default()
            )
        },
    );
}

impl EventStore for SimEventStore {
    fn append(&self, batch: AppendBatch) -> BoxFuture<'static, Result<AppendReceipt, StoreError>> {
        let plan = self.plan(StoreOp::Append, &Target::Append(&batch));
        self.operate(plan, move |store| store.append_now(&batch))
    }

    fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<RecordedEvent>, StoreError>> {
        let plan = self.plan(
            StoreOp::ReadStream,
            &Target::Stream(stream, Some(from_version)),
        );
        let stream = stream.clone();
        self.operate(plan, move |store| {
            Ok(store.read_stream_now(&stream, from_version, limit))
        })
    }

    fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<RecordedEvent>, StoreError>> {
        let plan = self.plan(
            StoreOp::ReadAll,
            &Target::ReadAll {
                from: from_position,
                limit,
            },
        );
        self.operate(plan, move |store| {
            Ok(store.read_all_now(from_position, limit))
        })
    }

    fn stream_version(&self, stream: &StreamId) -> BoxFuture<'static, Result<u64, StoreError>> {
        let plan = self.plan(StoreOp::StreamVersion, &Target::Stream(stream, None));
        let stream = stream.clone();
        self.operate(plan, move |store| Ok(store.stream_version_now(&stream)))
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'static, Result<(), StoreError>> {
        let plan = self.plan(StoreOp::SaveSnapshot, &Target::Snapshot(&snapshot));
        self.operate(plan, move |store| {
            store.save_snapshot_now(snapshot);
            Ok(())
        })
    }

    fn load_snapshot(
        &self,
        stream: &StreamId,
    ) -> BoxFuture<'static, Result<Option<Snapshot>, StoreError>> {
        let plan = self.plan(StoreOp::LoadSnapshot, &Target::Stream(stream, None));
        let stream = stream.clone();
        self.operate(plan, move |store| Ok(store.load_snapshot_now(&stream)))
    }

    /// Straight from the durable store, woken by the append itself, whichever node made
    /// it: a tailer registers a waker, and appends wake the due ones in registration
    /// order, so wake-ups are as deterministic as the schedule. The hint does not cross
    /// the node's link (a partition does not delay it); the read it prompts does, with
    /// every fault of a read.
    fn appended_since(&self, position: u64, categories: &[&str]) -> Option<BoxFuture<'static, ()>> {
        Some(Box::pin(
            self.shared.store.appended_since_now(position, categories),
        ))
    }
}
