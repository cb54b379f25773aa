//! Virtual time: the timer future, each node's (possibly skewed) clock, and the node
//! runtime that hands business code its clock, entropy and spawner.
//!
//! There is one true virtual clock, in the kernel. It only moves when no task is ready,
//! jumping to the next deadline — which is where the time compression comes from: a
//! thirty-second saga timeout costs one heap operation, not thirty seconds.
//!
//! Clock skew is per node and is an *offset* on what `now()` reports, not a different
//! rate: timers still fire after the requested duration of true time. That is the fault
//! that breaks code which compares timestamps written by different nodes (a saga deadline
//! persisted by one node and checked by another) while keeping runs easy to read.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use reprise_core::{BoxFuture, Clock, Entropy, Runtime, Spawner, Timestamp};

use crate::executor::{NodeIndex, Shared, TimerHandle};
use crate::trace::{Tag, hash_str};
use crate::world::NodeStatus;

/// Completes once the virtual clock reaches `deadline`. Deregisters its timer when dropped
/// early (a cancelled effect, a crashed node), so dead timers never move the clock.
pub(crate) struct Sleep {
    shared: Arc<Shared>,
    deadline: u64,
    timer: Option<TimerHandle>,
}

impl Sleep {
    pub(crate) fn until(shared: Arc<Shared>, deadline: u64) -> Self {
        Sleep {
            shared,
            deadline,
            timer: None,
        }
    }

    /// A sleep of `duration` from now.
    pub(crate) fn after(shared: &Arc<Shared>, duration: Duration) -> Self {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let now = shared.kernel.lock().now;
        Sleep::until(Arc::clone(shared), now.saturating_add(nanos))
    }

    pub(crate) fn after_nanos(shared: &Arc<Shared>, nanos: u64) -> Self {
        let now = shared.kernel.lock().now;
        Sleep::until(Arc::clone(shared), now.saturating_add(nanos))
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut k = this.shared.kernel.lock();
        if k.now >= this.deadline {
            let waker = this.timer.take().and_then(|handle| k.disarm_timer(handle));
            drop(k);
            drop(waker);
            return Poll::Ready(());
        }
        this.timer = Some(k.arm_timer(this.deadline, this.timer, cx.waker()));
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(handle) = self.timer.take() {
            let waker = self.shared.kernel.lock().disarm_timer(handle);
            drop(waker);
        }
    }
}

/// The runtime a node's code sees. Tied to one incarnation of the node: once the node
/// crashes, spawning through a stale handle is refused (and traced), so no task of a dead
/// incarnation can come back to life.
pub(crate) struct NodeRuntime {
    pub(crate) shared: Arc<Shared>,
    pub(crate) node: NodeIndex,
    pub(crate) incarnation: u32,
}

impl std::fmt::Debug for NodeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeRuntime")
            .field("node", &self.node)
            .field("incarnation", &self.incarnation)
            .finish()
    }
}

impl Clock for NodeRuntime {
    fn now(&self) -> Timestamp {
        let k = self.shared.kernel.lock();
        let skew = k.nodes[usize::from(self.node)].skew_nanos;
        Timestamp::from_unix_nanos(k.now.saturating_add_signed(skew))
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(Sleep::after(&self.shared, duration))
    }
}

impl Entropy for NodeRuntime {
    fn next_u64(&self) -> u64 {
        self.shared.entropy()
    }
}

impl Spawner for NodeRuntime {
    fn spawn(&self, name: &'static str, task: BoxFuture<'static, ()>) {
        let refused = {
            let mut k = self.shared.kernel.lock();
            let node = &k.nodes[usize::from(self.node)];
            if node.incarnation == self.incarnation && node.status != NodeStatus::Crashed {
                k.spawn(&self.shared.ready, self.node, name, task);
                None
            } else {
                let incarnation = self.incarnation;
                k.record(
                    Tag::SpawnRefused,
                    Some(self.node),
                    hash_str(name),
                    0,
                    || format!("spawn of {name} refused: incarnation {incarnation} is dead"),
                );
                Some(task)
            }
        };
        drop(refused);
    }
}

impl Runtime for NodeRuntime {
    fn stopwatch_nanos(&self) -> u64 {
        self.shared.kernel.lock().elapsed()
    }
}

/// True virtual time, for the durable store's `recorded_at` stamps.
pub(crate) struct GlobalClock {
    pub(crate) shared: std::sync::Weak<Shared>,
}

impl Clock for GlobalClock {
    fn now(&self) -> Timestamp {
        self.shared
            .upgrade()
            .map_or(Timestamp::SIMULATION_EPOCH, |s| {
                Timestamp::from_unix_nanos(s.kernel.lock().now)
            })
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        match self.shared.upgrade() {
            Some(shared) => Box::pin(Sleep::after(&shared, duration)),
            None => Box::pin(std::future::pending()),
        }
    }
}
