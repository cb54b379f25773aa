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

use std::sync::Arc;

use reprise_core::event::StreamId;
use reprise_core::{
    AppendBatch, AppendReceipt, BoxFuture, EventStore, InMemoryEventStore, RecordedEvent, Snapshot,
    StoreError,
};

use crate::clock::Sleep;
use crate::executor::{NodeIndex, Shared};
use crate::network::Link;
use crate::trace::Tag;

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

#[derive(Clone, Copy, Debug)]
struct Plan {
    out_nanos: u64,
    back_nanos: u64,
    timeout_nanos: u64,
    fate: Fate,
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

    fn plan(&self, op: StoreOp) -> Plan {
        let mut k = self.shared.kernel.lock();
        k.stats.store_ops += 1;
        let options = k.env.store;
        let faults = k.store_faults(self.node);
        let extra = k.uniform(0, faults.extra_latency_max_ms * 1000);
        let out_nanos = (k.uniform(options.latency_min_us, options.latency_max_us) + extra) * 1000;
        let back_nanos = k.uniform(options.latency_min_us, options.latency_max_us) * 1000;
        let timeout_nanos = options.timeout_ms * 1_000_000;
        let node = Some(self.node);
        let fate = if k.network.request_blocked(self.node, Link::Store) {
            Fate::RequestLost
        } else if k.chance(faults.transient_probability) {
            k.fault(node, "store.transient", op.name().into());
            Fate::Refused
        } else if k.chance(faults.timeout_probability) {
            k.fault(node, "store.timeout", format!("{} request lost", op.name()));
            Fate::RequestLost
        } else if op == StoreOp::Append && k.chance(faults.commit_unknown_probability) {
            k.fault(
                node,
                "store.commit_unknown",
                "append applied, acknowledgement lost".into(),
            );
            Fate::ResponseLost
        } else {
            Fate::Deliver
        };
        Plan {
            out_nanos,
            back_nanos,
            timeout_nanos,
            fate,
        }
    }

    /// Runs one operation through the link. `apply` touches the durable store.
    fn operate<T, F>(&self, op: StoreOp, apply: F) -> BoxFuture<'static, Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce(&InMemoryEventStore) -> Result<T, StoreError> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        let node = self.node;
        let plan = self.plan(op);
        Box::pin(async move {
            Sleep::after_nanos(&shared, plan.out_nanos).await;
            match plan.fate {
                Fate::RequestLost => {
                    Sleep::after_nanos(&shared, plan.timeout_nanos.saturating_sub(plan.out_nanos))
                        .await;
                    trace_outcome(&shared, node, op, "timeout (request lost)");
                    return Err(StoreError::Timeout);
                }
                Fate::Refused => {
                    trace_outcome(&shared, node, op, "transient error");
                    return Err(StoreError::Transient(format!(
                        "simulated: the store refused {}",
                        op.name()
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
                trace_outcome(&shared, node, op, "timeout (applied, response lost)");
                return Err(StoreError::Timeout);
            }
            Sleep::after_nanos(&shared, plan.back_nanos).await;
            trace_outcome(
                &shared,
                node,
                op,
                match &result {
                    Ok(_) => "ok",
                    Err(e) => e.kind(),
                },
            );
            result
        })
    }
}

fn trace_outcome(shared: &Shared, node: NodeIndex, op: StoreOp, outcome: &'static str) {
    let mut k = shared.kernel.lock();
    k.record(
        Tag::Store,
        Some(node),
        op as u64,
        crate::trace::hash_str(outcome),
        || format!("store {} -> {outcome}", op.name()),
    );
}

impl EventStore for SimEventStore {
    fn append(&self, batch: AppendBatch) -> BoxFuture<'static, Result<AppendReceipt, StoreError>> {
        self.operate(StoreOp::Append, move |store| store.append_now(&batch))
    }

    fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<RecordedEvent>, StoreError>> {
        let stream = stream.clone();
        self.operate(StoreOp::ReadStream, move |store| {
            Ok(store.read_stream_now(&stream, from_version, limit))
        })
    }

    fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<RecordedEvent>, StoreError>> {
        self.operate(StoreOp::ReadAll, move |store| {
            Ok(store.read_all_now(from_position, limit))
        })
    }

    fn stream_version(&self, stream: &StreamId) -> BoxFuture<'static, Result<u64, StoreError>> {
        let stream = stream.clone();
        self.operate(StoreOp::StreamVersion, move |store| {
            Ok(store.stream_version_now(&stream))
        })
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'static, Result<(), StoreError>> {
        self.operate(StoreOp::SaveSnapshot, move |store| {
            store.save_snapshot_now(snapshot);
            Ok(())
        })
    }

    fn load_snapshot(
        &self,
        stream: &StreamId,
    ) -> BoxFuture<'static, Result<Option<Snapshot>, StoreError>> {
        let stream = stream.clone();
        self.operate(StoreOp::LoadSnapshot, move |store| {
            Ok(store.load_snapshot_now(&stream))
        })
    }
}
