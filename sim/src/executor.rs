//! The single-threaded executor at the bottom of every run: the task table, the ready set,
//! the timer heap and the control queue, all inside one [`Kernel`].
//!
//! Why a hand-written executor: determinism needs the *choice* of the next task to be a
//! function of the seed, and no off-the-shelf executor exposes that choice. The design is
//! FoundationDB's: tasks are futures; a waker only puts its task's key on the ready list;
//! the run loop asks the seeded scheduler RNG which ready task runs next; when nothing is
//! ready the virtual clock jumps to the earliest timer. Nothing here reads the wall clock
//! or spawns a thread, so a run is a pure function of (seed, scenario, plan).
//!
//! Locking: core's traits require `Send + Sync` futures and runtimes, so state sits behind
//! `parking_lot` mutexes even though one thread drives everything (uncontended, they cost
//! a couple of atomic operations). Two rules keep it deadlock-free:
//! - the kernel lock is never held while a task is polled, a checker runs or a boot
//!   function is called (all of them re-enter the kernel);
//! - futures are never *dropped* under the kernel lock either (a dropped timer
//!   deregisters itself, which takes the lock). Crashing a node therefore collects the
//!   node's futures first and drops them after unlocking.
//!
//! Wakers only touch the ready list (its own small mutex), so waking from anywhere — a
//! bus publish, a timer firing, another task — is always safe.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use parking_lot::Mutex;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reprise_core::{BoxFuture, InMemoryEventBus, InMemoryEventStore};

use crate::faults::{FaultRecord, Injector};
use crate::lease::LeaseTable;
use crate::network::Network;
use crate::run::{Phase, RunStats};
use crate::script::Script;
use crate::trace::{Tag, Trace, TraceMode, hash_str};
use crate::world::{Environment, Node, NodeStatus};

/// Index of a node in the kernel's node table.
pub(crate) type NodeIndex = u16;

/// A task's slot and generation: a stale key (its task has finished or died) is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TaskKey {
    index: u32,
    generation: u32,
}

/// The ready list. Wakers push, the scheduler picks.
pub(crate) type ReadyQueue = Mutex<Vec<TaskKey>>;

struct TaskWaker {
    key: TaskKey,
    /// Set while the key is on the ready list (or parked): a task is listed once however
    /// many times it is woken.
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready.lock().push(self.key);
        }
    }
}

struct TaskSlot {
    generation: u32,
    occupied: bool,
    /// Spawn order, shown in traces (slot indices are reused, serials are not).
    serial: u64,
    node: NodeIndex,
    name: &'static str,
    /// `None` while the task is being polled.
    future: Option<BoxFuture<'static, ()>>,
    waker: Option<Arc<TaskWaker>>,
}

/// A registered timer: its slot and its sequence number (a stale handle — its timer
/// fired or was disarmed, and the slot perhaps reused — matches nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimerHandle {
    slot: u32,
    seq: u64,
}

/// A timer's slot: the sequence number of its current timer, and that timer's waker
/// (`None` once it fired or was disarmed: the slot is free).
struct TimerSlot {
    seq: u64,
    waker: Option<Waker>,
}

/// Things the run loop does at a point of virtual time (as opposed to task timers, which
/// only wake tasks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Control {
    NemesisTick,
    SafetyCheck,
    EndFaultWindow,
    LivenessDeadline,
    /// Reboot a node that crashed as incarnation `.1` (skipped if it rebooted already).
    Restart(NodeIndex, u32),
    /// Resume a node paused by pause number `.1`.
    Resume(NodeIndex, u64),
    HealPartition(u64),
    EndOutage(u64),
    /// Carry out scripted action number `.0` (see `crate::script`).
    Script(u32),
}

/// All mutable simulation state.
pub(crate) struct Kernel {
    /// Virtual time, Unix nanoseconds.
    pub(crate) now: u64,
    pub(crate) start: u64,
    scheduler_rng: ChaCha8Rng,
    /// Fault and latency draws: a stream per kind (and per node for per-operation kinds).
    pub(crate) draws: Draws,
    /// What nodes get from `Entropy` (ids, jitter).
    pub(crate) entropy_rng: ChaCha8Rng,
    tasks: Vec<TaskSlot>,
    free: Vec<u32>,
    live_tasks: usize,
    next_serial: u64,
    /// Timers by (deadline, sequence): a min-heap of entries pointing at slots. A
    /// disarmed timer frees its slot at once and leaves its heap entry behind, skipped
    /// when it surfaces (its slot's sequence no longer matches).
    timer_heap: BinaryHeap<Reverse<(u64, u64, u32)>>,
    timer_slots: Vec<TimerSlot>,
    timer_free: Vec<u32>,
    live_timers: usize,
    timer_seq: u64,
    controls: BTreeMap<(u64, u64), Control>,
    control_seq: u64,
    pub(crate) nodes: Vec<Node>,
    pub(crate) trace: Trace,
    pub(crate) faults: Vec<FaultRecord>,
    /// Failures that are not injected faults (a dependency's inherent error rate).
    pub(crate) inherent_errors: Vec<FaultRecord>,
    /// Scripted actions, as scheduled and then resolved.
    pub(crate) script: Script,
    pub(crate) stats: RunStats,
    pub(crate) network: Network,
    /// The durable lease table (survives node crashes, like the store).
    pub(crate) leases: LeaseTable,
    pub(crate) injector: Injector,
    pub(crate) env: Environment,
    pub(crate) phase: Phase,
    /// The node whose task is being polled (attributes BUGGIFY firings).
    pub(crate) current: Option<NodeIndex>,
}

/// Kernel plus the durable shared state every node handle points at.
pub(crate) struct Shared {
    pub(crate) kernel: Mutex<Kernel>,
    pub(crate) ready: Arc<ReadyQueue>,
    pub(crate) store: Arc<InMemoryEventStore>,
    pub(crate) bus: Arc<InMemoryEventBus>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// The independent random streams of a run, all from one seed. Separate streams keep one
/// concern's draws from shifting another's: changing the fault plan does not change
/// which ids the workload generates before the first fault.
pub(crate) fn rng_stream(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

pub(crate) const STREAM_SCHEDULER: u64 = 1;
// Stream 2 drew every fault and latency until each got a stream of its own (`Draw`).
pub(crate) const STREAM_ENTROPY: u64 = 3;
pub(crate) const STREAM_PLAN: u64 = 4;
pub(crate) const STREAM_WORKLOAD: u64 = 5;
/// The first stream number of the `Draw` streams (see [`Source::stream`]).
const STREAM_DRAWS: u64 = 0x100;

/// What a draw decides, and so which streams it comes from. Every fault kind draws from
/// streams of its own (a store timeout never consumes a bus duplicate's randomness), and
/// so do the ordinary latencies and a dependency's inherent error rate, which are not
/// faults: removing a fault spec, or switching off one kind, leaves every other kind's
/// sequence of draws unchanged. Per-operation kinds (and latencies) have one stream per
/// node, the node whose operation it is: a node's decisions do not depend on how many
/// operations the *other* nodes made, so a fault that makes one node retry does not move
/// the draws of the others. Nemesis kinds have one stream each (their draws happen at
/// nemesis ticks, not per operation). Draws still happen in the order a node's operations
/// run, so a fault that changes the schedule changes which operation gets which draw from
/// then on.
///
/// Stable numbers: renumbering a kind changes every run that draws it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Draw {
    /// Ordinary one-way latencies of the store, the bus, the lease table and services.
    Latency = 0,
    /// A dependency's inherent error rate ([`crate::DependencyOptions::error_probability`]).
    DependencyInherent = 1,
    StoreLatency = 2,
    StoreTransient = 3,
    StoreTimeout = 4,
    StoreCommitUnknown = 5,
    BusDelay = 6,
    BusDuplicate = 7,
    BusReorder = 8,
    BusPublishError = 9,
    BusPublishAckLost = 10,
    BusCommitLost = 11,
    DependencyError = 12,
    DependencyResponseLost = 13,
    /// Lease loss and its zombie window.
    Lease = 14,
    /// BUGGIFY points: enabling a point (one stream), then firing it (per node).
    Buggify = 15,
    // Nemesis kinds: the per-tick draw, the target, the duration.
    Partition = 16,
    Crash = 17,
    Pause = 18,
    ClockSkew = 19,
    Rebalance = 20,
    Outage = 21,
}

impl Draw {
    const COUNT: usize = 22;

    /// The stream of this kind for `node`'s operations.
    pub(crate) fn of(self, node: NodeIndex) -> Source {
        Source {
            draw: self,
            node: Some(node),
        }
    }

    /// The one stream of this kind that belongs to no node (nemesis kinds).
    pub(crate) fn global(self) -> Source {
        Source {
            draw: self,
            node: None,
        }
    }
}

/// One stream: a kind of draw, and the node it belongs to (if any).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Source {
    draw: Draw,
    node: Option<NodeIndex>,
}

impl Source {
    /// 0 for the node-less stream, `n + 1` for node `n`'s.
    fn slot(self) -> usize {
        self.node.map_or(0, |n| usize::from(n) + 1)
    }

    /// The ChaCha8 stream number: `0x100 + (kind << 17) + slot`.
    fn stream(self) -> u64 {
        STREAM_DRAWS + ((self.draw as u64) << 17) + self.slot() as u64
    }
}

/// The `Draw` streams of a run, each made when first drawn from.
pub(crate) struct Draws {
    seed: u64,
    streams: [Vec<Option<ChaCha8Rng>>; Draw::COUNT],
}

impl Draws {
    fn new(seed: u64) -> Self {
        Draws {
            seed,
            streams: std::array::from_fn(|_| Vec::new()),
        }
    }

    pub(crate) fn rng(&mut self, source: Source) -> &mut ChaCha8Rng {
        let (seed, slot) = (self.seed, source.slot());
        let streams = &mut self.streams[source.draw as usize];
        if streams.len() <= slot {
            streams.resize_with(slot + 1, || None);
        }
        streams[slot].get_or_insert_with(|| rng_stream(seed, source.stream()))
    }
}

impl Kernel {
    pub(crate) fn new(seed: u64, mode: TraceMode, injector: Injector, env: Environment) -> Self {
        let start = reprise_core::Timestamp::SIMULATION_EPOCH.as_unix_nanos();
        Kernel {
            now: start,
            start,
            scheduler_rng: rng_stream(seed, STREAM_SCHEDULER),
            draws: Draws::new(seed),
            entropy_rng: rng_stream(seed, STREAM_ENTROPY),
            tasks: Vec::new(),
            free: Vec::new(),
            live_tasks: 0,
            next_serial: 0,
            timer_heap: BinaryHeap::new(),
            timer_slots: Vec::new(),
            timer_free: Vec::new(),
            live_timers: 0,
            timer_seq: 0,
            controls: BTreeMap::new(),
            control_seq: 0,
            nodes: Vec::new(),
            trace: Trace::new(mode, seed),
            faults: Vec::new(),
            inherent_errors: Vec::new(),
            script: Script::default(),
            stats: RunStats::default(),
            network: Network::default(),
            leases: LeaseTable::default(),
            injector,
            env,
            phase: Phase::Faults,
            current: None,
        }
    }

    /// Nanoseconds of virtual time since the run started.
    pub(crate) fn elapsed(&self) -> u64 {
        self.now - self.start
    }

    /// Records a trace event attributed to `node`.
    pub(crate) fn record(
        &mut self,
        tag: Tag,
        node: Option<NodeIndex>,
        a: u64,
        b: u64,
        text: impl FnOnce() -> String,
    ) {
        let elapsed = self.now - self.start;
        let name = node.map(|n| (n, &self.nodes[usize::from(n)].name));
        self.trace.record(tag, elapsed, name, a, b, text);
    }

    // -- tasks ------------------------------------------------------------------------

    pub(crate) fn spawn(
        &mut self,
        ready: &Arc<ReadyQueue>,
        node: NodeIndex,
        name: &'static str,
        future: BoxFuture<'static, ()>,
    ) {
        let index = if let Some(index) = self.free.pop() {
            index
        } else {
            let index = u32::try_from(self.tasks.len()).expect("fewer than 2^32 live tasks");
            self.tasks.push(TaskSlot {
                generation: 0,
                occupied: false,
                serial: 0,
                node: 0,
                name: "",
                future: None,
                waker: None,
            });
            index
        };
        let serial = self.next_serial;
        self.next_serial += 1;
        let slot = &mut self.tasks[index as usize];
        debug_assert!(!slot.occupied, "a free slot is unoccupied");
        let key = TaskKey {
            index,
            generation: slot.generation,
        };
        slot.occupied = true;
        slot.serial = serial;
        slot.node = node;
        slot.name = name;
        slot.future = Some(future);
        slot.waker = Some(Arc::new(TaskWaker {
            key,
            queued: AtomicBool::new(true),
            ready: Arc::clone(ready),
        }));
        ready.lock().push(key);
        self.live_tasks += 1;
        self.stats.tasks_spawned += 1;
        self.nodes[usize::from(node)].live_tasks += 1;
        self.record(Tag::Spawn, Some(node), serial, hash_str(name), || {
            format!("spawn task #{serial} {name}")
        });
    }

    fn slot(&self, key: TaskKey) -> Option<&TaskSlot> {
        self.tasks
            .get(key.index as usize)
            .filter(|s| s.occupied && s.generation == key.generation)
    }

    fn release(&mut self, key: TaskKey) -> Option<BoxFuture<'static, ()>> {
        let slot = &mut self.tasks[key.index as usize];
        assert!(
            slot.occupied && slot.generation == key.generation,
            "releasing a live task"
        );
        slot.occupied = false;
        slot.generation = slot.generation.wrapping_add(1);
        slot.waker = None;
        let node = slot.node;
        let future = slot.future.take();
        self.free.push(key.index);
        self.live_tasks -= 1;
        self.nodes[usize::from(node)].live_tasks -= 1;
        future
    }

    /// Removes every task of `node`, returning the futures for the caller to drop after
    /// unlocking.
    pub(crate) fn kill_tasks_of(&mut self, node: NodeIndex) -> Vec<BoxFuture<'static, ()>> {
        let keys: Vec<TaskKey> = self
            .tasks
            .iter()
            .enumerate()
            .filter(|(_, s)| s.occupied && s.node == node)
            .map(|(i, s)| TaskKey {
                index: u32::try_from(i).expect("slot index fits"),
                generation: s.generation,
            })
            .collect();
        self.nodes[usize::from(node)].parked.clear();
        keys.into_iter()
            .filter_map(|key| self.release(key))
            .collect()
    }

    /// Names of live tasks, for hang reports: `node/name#serial`.
    pub(crate) fn live_task_names(&self) -> Vec<String> {
        self.tasks
            .iter()
            .filter(|s| s.occupied)
            .map(|s| {
                format!(
                    "{}/{}#{}",
                    self.nodes[usize::from(s.node)].name,
                    s.name,
                    s.serial
                )
            })
            .collect()
    }

    pub(crate) fn live_tasks(&self) -> usize {
        self.live_tasks
    }

    /// Puts the parked tasks of a resumed node back on the ready list.
    pub(crate) fn unpark(&mut self, ready: &ReadyQueue, node: NodeIndex) {
        let parked = std::mem::take(&mut self.nodes[usize::from(node)].parked);
        ready.lock().extend(parked);
    }

    // -- timers and controls ------------------------------------------------------------

    /// The live timer `handle` names, if it has neither fired nor been disarmed.
    fn timer_slot(&mut self, handle: TimerHandle) -> Option<&mut TimerSlot> {
        self.timer_slots
            .get_mut(handle.slot as usize)
            .filter(|s| s.seq == handle.seq && s.waker.is_some())
    }

    /// Registers (or refreshes) a timer; returns its handle. Timers fire in (deadline,
    /// registration order).
    pub(crate) fn arm_timer(
        &mut self,
        deadline: u64,
        existing: Option<TimerHandle>,
        waker: &Waker,
    ) -> TimerHandle {
        if let Some(handle) = existing {
            if let Some(stored) = self.timer_slot(handle).and_then(|s| s.waker.as_mut()) {
                if !stored.will_wake(waker) {
                    stored.clone_from(waker);
                }
                return handle;
            }
        }
        self.timer_seq += 1;
        let seq = self.timer_seq;
        let slot = if let Some(slot) = self.timer_free.pop() {
            self.timer_slots[slot as usize] = TimerSlot {
                seq,
                waker: Some(waker.clone()),
            };
            slot
        } else {
            let slot = u32::try_from(self.timer_slots.len()).expect("fewer than 2^32 timers");
            self.timer_slots.push(TimerSlot {
                seq,
                waker: Some(waker.clone()),
            });
            slot
        };
        self.timer_heap.push(Reverse((deadline, seq, slot)));
        self.live_timers += 1;
        TimerHandle { slot, seq }
    }

    /// Removes a timer (no-op if it fired already). Returns its waker, for the caller to
    /// drop.
    pub(crate) fn disarm_timer(&mut self, handle: TimerHandle) -> Option<Waker> {
        let waker = self.timer_slot(handle)?.waker.take();
        self.timer_free.push(handle.slot);
        self.live_timers -= 1;
        waker
    }

    pub(crate) fn pending_timers(&self) -> usize {
        self.live_timers
    }

    /// The deadline of the earliest live timer, dropping stale heap entries on the way.
    fn next_timer(&mut self) -> Option<u64> {
        while let Some(&Reverse((deadline, seq, slot))) = self.timer_heap.peek() {
            let slot = &self.timer_slots[slot as usize];
            if slot.seq == seq && slot.waker.is_some() {
                return Some(deadline);
            }
            self.timer_heap.pop();
        }
        None
    }

    pub(crate) fn schedule(&mut self, at: u64, control: Control) {
        self.control_seq += 1;
        self.controls.insert((at, self.control_seq), control);
    }

    /// Drops scheduled controls matching `predicate` (e.g. nemesis ticks after the window).
    pub(crate) fn unschedule(&mut self, mut predicate: impl FnMut(&Control) -> bool) {
        self.controls.retain(|_, c| !predicate(c));
    }

    /// Whether a scheduled control will change what can run: a reboot, a resume, a
    /// healed partition, an ended outage or a scripted action.
    pub(crate) fn recovery_pending(&self) -> bool {
        self.controls.values().any(|c| {
            matches!(
                c,
                Control::Restart(..)
                    | Control::Resume(..)
                    | Control::HealPartition(_)
                    | Control::EndOutage(_)
                    | Control::Script(_)
            )
        })
    }

    /// Whether a scripted action is still to come.
    pub(crate) fn script_pending(&self) -> bool {
        self.controls
            .values()
            .any(|c| matches!(c, Control::Script(_)))
    }

    pub(crate) fn pop_due_control(&mut self) -> Option<Control> {
        let (&(at, _), _) = self.controls.first_key_value()?;
        if at > self.now {
            return None;
        }
        self.controls.pop_first().map(|(_, c)| c)
    }

    /// Moves the clock to the next timer or control, collecting the wakers of every timer
    /// then due. Returns `false` if there is nothing to move to.
    pub(crate) fn advance(&mut self, due: &mut Vec<Waker>) -> bool {
        let next_timer = self.next_timer();
        let next_control = self.controls.first_key_value().map(|(&(at, _), _)| at);
        let Some(next) = [next_timer, next_control].into_iter().flatten().min() else {
            return false;
        };
        self.now = self.now.max(next);
        while let Some(at) = self.next_timer() {
            if at > self.now {
                break;
            }
            let Some(Reverse((_, _, slot))) = self.timer_heap.pop() else {
                break;
            };
            if let Some(waker) = self.timer_slots[slot as usize].waker.take() {
                due.push(waker);
            }
            self.timer_free.push(slot);
            self.live_timers -= 1;
        }
        true
    }
}

impl Shared {
    pub(crate) fn new(
        kernel: Kernel,
        store: Arc<InMemoryEventStore>,
        bus: Arc<InMemoryEventBus>,
    ) -> Self {
        Shared {
            kernel: Mutex::new(kernel),
            ready: Arc::default(),
            store,
            bus,
        }
    }

    /// Polls one ready task chosen by the scheduler RNG. Returns `false` if none was ready.
    pub(crate) fn run_one(&self) -> bool {
        let picked = {
            let mut k = self.kernel.lock();
            loop {
                let key = {
                    let mut ready = self.ready.lock();
                    match ready.len() {
                        0 => return false,
                        1 => ready.pop().expect("one ready"),
                        n => {
                            let i = k.scheduler_rng.random_range(0..n);
                            ready.swap_remove(i)
                        }
                    }
                };
                let Some(slot) = k.slot(key) else { continue };
                let node = slot.node;
                if k.nodes[usize::from(node)].status == NodeStatus::Paused {
                    k.nodes[usize::from(node)].parked.push(key);
                    continue;
                }
                let (serial, name) = (slot.serial, slot.name);
                let index = key.index as usize;
                let waker = Arc::clone(
                    k.tasks[index]
                        .waker
                        .as_ref()
                        .expect("live tasks have wakers"),
                );
                waker.queued.store(false, Ordering::Release);
                let future = k.tasks[index]
                    .future
                    .take()
                    .expect("a ready task is not being polled");
                k.stats.steps += 1;
                k.current = Some(node);
                k.record(Tag::Step, Some(node), serial, 0, || {
                    format!("run task #{serial} {name}")
                });
                break (key, future, Waker::from(waker));
            }
        };
        let (key, mut future, waker) = picked;
        let poll = future.as_mut().poll(&mut Context::from_waker(&waker));
        match poll {
            Poll::Ready(()) => {
                drop(future);
                let mut k = self.kernel.lock();
                k.current = None;
                if k.slot(key).is_some() {
                    let serial = k.tasks[key.index as usize].serial;
                    let node = k.tasks[key.index as usize].node;
                    let leftover = k.release(key);
                    debug_assert!(leftover.is_none());
                    k.record(Tag::TaskDone, Some(node), serial, 0, || {
                        format!("task #{serial} finished")
                    });
                }
            }
            Poll::Pending => {
                let mut k = self.kernel.lock();
                k.current = None;
                let orphan = if k.slot(key).is_some() {
                    k.tasks[key.index as usize].future = Some(future);
                    None
                } else {
                    Some(future)
                };
                drop(k);
                drop(orphan);
            }
        }
        true
    }

    /// Next scheduler-independent draw for node entropy.
    pub(crate) fn entropy(&self) -> u64 {
        self.kernel.lock().entropy_rng.next_u64()
    }

    /// Drops every task (end of run): breaks the reference cycles futures hold on the
    /// kernel.
    pub(crate) fn shutdown(&self) {
        let futures: Vec<_> = {
            let mut k = self.kernel.lock();
            let nodes = u16::try_from(k.nodes.len()).expect("node count fits u16");
            (0..nodes).flat_map(|n| k.kill_tasks_of(n)).collect()
        };
        drop(futures);
        let timers = {
            let mut k = self.kernel.lock();
            k.timer_heap.clear();
            k.timer_free.clear();
            k.live_timers = 0;
            std::mem::take(&mut k.timer_slots)
        };
        drop(timers);
        self.ready.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_and_node_has_a_stream_of_its_own() {
        let sources = [
            Draw::Latency.global(),
            Draw::Latency.of(0),
            Draw::Latency.of(1),
            Draw::StoreTimeout.of(0),
            Draw::BusDuplicate.of(0),
            Draw::Outage.global(),
            Draw::Latency.of(u16::MAX),
            Draw::DependencyInherent.global(),
        ];
        let numbers: std::collections::BTreeSet<u64> = sources.iter().map(|s| s.stream()).collect();
        assert_eq!(numbers.len(), sources.len());
        let mut draws = Draws::new(7);
        let firsts: std::collections::BTreeSet<u64> =
            sources.iter().map(|&s| draws.rng(s).next_u64()).collect();
        assert_eq!(firsts.len(), sources.len(), "streams differ");
        // Drawing from one stream leaves the others where they were.
        let mut a = Draws::new(7);
        let mut b = Draws::new(7);
        for _ in 0..10 {
            a.rng(Draw::BusDuplicate.of(0)).next_u64();
            a.rng(Draw::StoreTimeout.of(1)).next_u64();
        }
        assert_eq!(
            a.rng(Draw::StoreTimeout.of(0)).next_u64(),
            b.rng(Draw::StoreTimeout.of(0)).next_u64()
        );
        // And a stream is the seed's: the same seed, the same draws.
        assert_eq!(
            Draws::new(9).rng(Draw::Crash.global()).next_u64(),
            Draws::new(9).rng(Draw::Crash.global()).next_u64()
        );
    }
}
