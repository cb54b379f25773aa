//! [`ScopedRuntime`]: the production [`TokioRuntime`] with a stop button.
//!
//! A service spawns long-running tasks (consumers, relays, trackers, saga supervisors)
//! that never end by themselves. In a deployment the process exit ends them; a live run
//! shares its process with the checker (and, in tests, with other runs), so every task a
//! run's services spawn — directly or through their stores' effects — is registered here
//! and aborted by [`ScopedRuntime::stop`]. Clock, timers and randomness are the tokio
//! adapter's, unchanged.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use reprise_core::{BoxFuture, Clock, Entropy, Runtime, SharedRuntime, Spawner, Timestamp};
use reprise_tokio::TokioRuntime;
use tokio::task::AbortHandle;

/// Finished tasks are pruned from the registry after this many spawns.
const PRUNE_EVERY: usize = 512;

#[derive(Default)]
struct Tasks {
    handles: Vec<AbortHandle>,
    spawned_since_prune: usize,
}

/// See the module docs. Clones share the task registry.
#[derive(Clone)]
pub struct ScopedRuntime {
    inner: TokioRuntime,
    tasks: Arc<Mutex<Tasks>>,
    stopped: Arc<AtomicBool>,
}

impl fmt::Debug for ScopedRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopedRuntime")
            .field("tasks", &self.tasks.lock().handles.len())
            .field("stopped", &self.stopped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ScopedRuntime {
    #[must_use]
    pub fn new(inner: TokioRuntime) -> Self {
        ScopedRuntime {
            inner,
            tasks: Arc::default(),
            stopped: Arc::new(AtomicBool::new(false)),
        }
    }

    #[must_use]
    pub fn shared(&self) -> SharedRuntime {
        Arc::new(self.clone())
    }

    /// Tasks spawned and not yet finished (approximately: finished ones are pruned lazily).
    #[must_use]
    pub fn running_tasks(&self) -> usize {
        self.tasks
            .lock()
            .handles
            .iter()
            .filter(|h| !h.is_finished())
            .count()
    }

    /// Aborts every task spawned through this runtime; later spawns are dropped unstarted.
    /// Idempotent.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let handles = std::mem::take(&mut self.tasks.lock().handles);
        for handle in handles {
            handle.abort();
        }
    }

    #[must_use]
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

impl Clock for ScopedRuntime {
    fn now(&self) -> Timestamp {
        self.inner.now()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.inner.sleep(duration)
    }
}

impl Entropy for ScopedRuntime {
    fn next_u64(&self) -> u64 {
        self.inner.next_u64()
    }

    fn next_id(&self) -> u128 {
        self.inner.next_id()
    }
}

impl Spawner for ScopedRuntime {
    fn spawn(&self, _name: &'static str, task: BoxFuture<'static, ()>) {
        // Checked under the lock that `stop` takes, so no task slips in after it.
        let mut tasks = self.tasks.lock();
        if self.stopped.load(Ordering::SeqCst) {
            return;
        }
        let handle = self.inner.handle().spawn(task);
        tasks.handles.push(handle.abort_handle());
        tasks.spawned_since_prune += 1;
        if tasks.spawned_since_prune >= PRUNE_EVERY {
            tasks.spawned_since_prune = 0;
            tasks.handles.retain(|h| !h.is_finished());
        }
    }
}

impl Runtime for ScopedRuntime {
    fn stopwatch_nanos(&self) -> u64 {
        self.inner.stopwatch_nanos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_aborts_spawned_tasks_and_refuses_new_ones() {
        let runtime = ScopedRuntime::new(TokioRuntime::try_current().expect("in tokio"));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let forever = tx.clone();
        runtime.spawn(
            "forever",
            Box::pin(async move {
                let _keep = forever;
                std::future::pending::<()>().await;
            }),
        );
        assert_eq!(runtime.running_tasks(), 1);
        runtime.stop();
        tokio::task::yield_now().await;
        let late = tx.clone();
        runtime.spawn(
            "late",
            Box::pin(async move {
                let _ = late.send(1);
            }),
        );
        drop(tx);
        // Every sender is gone only if the aborted task dropped its clone and the late task
        // never ran (it would have sent 1 first).
        assert_eq!(rx.recv().await, None);
        assert!(runtime.is_stopped());
    }
}
