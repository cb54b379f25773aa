//! Counting outstanding work so callers can await "everything this caused".
//!
//! A [`Tracker`] counts live [`Work`] guards. Trackers chain: the tracker of one `send`
//! has the store-wide tracker as parent, so one guard keeps both the send's handle and
//! the store's shutdown waiting.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use smallvec::SmallVec;

#[derive(Debug, Default)]
pub struct Tracker {
    pending: AtomicUsize,
    /// Usually one waiter (the `SendHandle` being awaited): kept inline, so awaiting a
    /// send allocates nothing beyond the tracker itself.
    waiters: Mutex<SmallVec<[Waker; 1]>>,
    parent: Option<Arc<Tracker>>,
}

impl Tracker {
    #[must_use]
    pub fn root() -> Arc<Self> {
        Arc::new(Tracker::default())
    }

    #[must_use]
    pub fn child(parent: &Arc<Tracker>) -> Arc<Self> {
        Arc::new(Tracker {
            parent: Some(Arc::clone(parent)),
            ..Tracker::default()
        })
    }

    #[must_use]
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    fn increment(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        if let Some(parent) = &self.parent {
            parent.increment();
        }
    }

    fn decrement(&self) {
        // The parent first: whoever sees this tracker reach zero (a `SendHandle`) must
        // also see the store-wide count without this work, or `store.in_flight()` right
        // after awaiting a send could still count it.
        if let Some(parent) = &self.parent {
            parent.decrement();
        }
        let before = self.pending.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "tracker underflow");
        if before == 1 {
            for waker in self.waiters.lock().drain(..) {
                waker.wake();
            }
        }
    }

    /// Completes once nothing is pending.
    #[must_use]
    pub fn idle(self: &Arc<Self>) -> Idle {
        Idle {
            tracker: Arc::clone(self),
        }
    }

    /// [`Idle`]'s poll, for futures that hold the tracker already (no `Arc` clone per
    /// poll).
    pub fn poll_idle(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.pending() == 0 {
            return Poll::Ready(());
        }
        let mut waiters = self.waiters.lock();
        // Re-check under the lock: a decrement to zero drains the waiters under it.
        if self.pending() == 0 {
            return Poll::Ready(());
        }
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// A unit of outstanding work; dropping it (normally or by cancellation) completes it.
#[derive(Debug)]
pub struct Work(Arc<Tracker>);

impl Work {
    #[must_use]
    pub fn start(tracker: &Arc<Tracker>) -> Self {
        tracker.increment();
        Work(Arc::clone(tracker))
    }

    #[must_use]
    pub fn tracker(&self) -> &Arc<Tracker> {
        &self.0
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        self.0.decrement();
    }
}

/// Future returned by [`Tracker::idle`].
#[derive(Debug)]
pub struct Idle {
    tracker: Arc<Tracker>,
}

impl Future for Idle {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.tracker.poll_idle(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_work_keeps_the_parent_busy() {
        let root = Tracker::root();
        let child = Tracker::child(&root);
        let work = Work::start(&child);
        assert_eq!((root.pending(), child.pending()), (1, 1));
        drop(work);
        assert_eq!((root.pending(), child.pending()), (0, 0));
        futures::executor::block_on(root.idle());
    }
}
