//! The workloads on Reprise's simulator (`reprise-sim`), written as a scenario's nodes
//! are: tasks spawned from a node's boot function, sleeps on the node's clock, messages
//! through the simulated bus.
//!
//! **Node to node is the bus.** The simulator models no direct node-to-node link
//! (`sim/src/network.rs`: in an event-sourced system nodes talk through the store and the
//! bus), so a request is a publish to topic `requests` that the server's consumer-group
//! subscription receives, and the reply a publish to `replies`. The bus's one-way latency
//! is set to exactly 1 ms ([`BusOptions`]), so a round trip is 2 ms of virtual time as on
//! the other simulators. Consumers neither acknowledge nor commit: nothing here crashes,
//! and the other simulators' sockets have no offsets either.
//!
//! **Loss is drawn by the sender.** The simulated bus loses no acknowledged message
//! (Kafka does not), and there is no lossy node-to-node link to configure; so each
//! message is dropped before it is published with probability
//! [`LOSS_RATE`](crate::spec::LOSS_RATE), drawn from the sending node's seeded
//! `Entropy`, independently per message — what madsim's `packet_loss_rate` does inside
//! its network. A dropped message costs one draw and no publish.
//!
//! The run uses `SimConfig`'s defaults (calm plan, running trace hash, coverage
//! collection on): what a scenario run in a sweep pays.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{Either, select};
use reprise_core::{Headers, OutgoingMessage, Payload};
use reprise_sim::{
    BusOptions, NodeContext, NodeOptions, Scenario, ScenarioRun, SimConfig, Violation, World,
    WorldView,
};

use crate::spec::{
    self, LATENCY, LOSS_RATE, MAX_ATTEMPTS, Outcome, SEED, Sizes, TIMEOUT, Workload,
};

const REQUESTS: &str = "requests";
const REPLIES: &str = "replies";

/// Runs `workload` on a fresh simulation and returns what it counted.
///
/// # Panics
/// If the run does not pass (it has no invariant that can fail: a failure is a broken
/// workload).
pub fn run(workload: Workload, sizes: Sizes) -> Outcome {
    let scenario = Peers::new(workload, sizes);
    let report = reprise_sim::run(&scenario, &SimConfig::new(SEED));
    assert!(
        report.passed(),
        "{} on reprise-sim: {}",
        workload.name(),
        report.outcome
    );
    let outcome = scenario.result.lock().expect("not poisoned").take();
    let mut outcome = outcome.expect("the workload finished");
    if workload == Workload::Loss {
        outcome.served = scenario.served.load(Ordering::Relaxed);
    }
    outcome
}

struct Peers {
    workload: Workload,
    sizes: Sizes,
    result: Arc<Mutex<Option<Outcome>>>,
    done: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
}

impl Peers {
    fn new(workload: Workload, sizes: Sizes) -> Self {
        Peers {
            workload,
            sizes,
            result: Arc::default(),
            done: Arc::default(),
            served: Arc::default(),
        }
    }
}

struct Finished(Arc<AtomicBool>);

impl ScenarioRun for Finished {
    fn check_safety(&self, _: &WorldView<'_>) -> Result<(), Violation> {
        Ok(())
    }

    fn check_liveness(&self, _: &WorldView<'_>) -> Result<(), Violation> {
        if self.0.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(Violation::new(
                "workload-finished",
                "the client is still running",
            ))
        }
    }
}

impl Scenario for Peers {
    fn name(&self) -> &'static str {
        "peers"
    }

    fn description(&self) -> &'static str {
        "the peer comparison's workloads"
    }

    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        let latency_us = u64::try_from(LATENCY.as_micros()).expect("small");
        world.set_bus_options(BusOptions {
            latency_min_us: latency_us,
            latency_max_us: latency_us,
            ..BusOptions::default()
        });
        let (sizes, result, done) = (self.sizes, Arc::clone(&self.result), Arc::clone(&self.done));
        let finish = move |outcome: Outcome| {
            *result.lock().expect("not poisoned") = Some(outcome);
            done.store(true, Ordering::Relaxed);
        };
        match self.workload {
            Workload::Rtt => {
                world.add_node("server", NodeOptions::default(), |ctx| {
                    ctx.spawn("server", serve(ctx.clone(), false, Arc::default()));
                });
                world.add_node("client", NodeOptions::default(), move |ctx| {
                    ctx.spawn("client", round_trips(ctx.clone(), sizes, finish.clone()));
                });
            }
            Workload::Sleeps => {
                world.add_node("sleepers", NodeOptions::default(), move |ctx| {
                    sleepers(&ctx, sizes, finish.clone());
                });
            }
            Workload::Loss => {
                let served = Arc::clone(&self.served);
                world.add_node("server", NodeOptions::default(), move |ctx| {
                    ctx.spawn("server", serve(ctx.clone(), true, Arc::clone(&served)));
                });
                world.add_node("client", NodeOptions::default(), move |ctx| {
                    ctx.spawn("client", lossy_requests(ctx.clone(), sizes, finish.clone()));
                });
            }
        }
        Box::new(Finished(Arc::clone(&self.done)))
    }
}

fn message(topic: &str, payload: String) -> OutgoingMessage {
    OutgoingMessage {
        topic: Arc::from(topic),
        // One key: one partition, so requests and replies stay in order.
        key: Arc::from("peer"),
        payload: Payload::from_json_text(payload),
        headers: Headers::default(),
    }
}

/// Whether this message is lost: a draw from the node's seeded entropy.
fn lost(ctx: &NodeContext) -> bool {
    // Exact threshold on 64 bits: P(draw < LOSS_RATE * 2^64) = LOSS_RATE.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let threshold = (LOSS_RATE * 18_446_744_073_709_551_616.0) as u64;
    ctx.runtime().next_u64() < threshold
}

/// Appends `n` in decimal. `format!` costs more than the rest of a publish; what is
/// measured here is the simulator, not `core::fmt` (the other simulators' workloads send
/// the same numbers as raw bytes).
fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + u8::try_from(n % 10).expect("a digit");
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[at..]).expect("ASCII digits"));
}

fn request_payload(id: u64) -> String {
    let mut out = String::with_capacity(20);
    push_decimal(&mut out, id);
    out
}

fn reply_payload(id: u64) -> String {
    let mut out = String::with_capacity(43);
    out.push('[');
    push_decimal(&mut out, id);
    out.push(',');
    push_decimal(&mut out, spec::reply_for(id));
    out.push(']');
    out
}

/// Requests are JSON numbers (the id), replies JSON pairs `[id,value]`: the bus carries
/// JSON text.
fn parse_reply(payload: &Payload) -> Option<(u64, u64)> {
    let text = payload.as_str().strip_prefix('[')?.strip_suffix(']')?;
    let (id, value) = text.split_once(',')?;
    Some((id.parse().ok()?, value.parse().ok()?))
}

async fn serve(ctx: NodeContext, lossy: bool, served: Arc<AtomicU64>) {
    let bus = ctx.event_bus();
    let mut requests = bus
        .subscribe("server", &[REQUESTS])
        .await
        .expect("a calm bus accepts subscriptions");
    loop {
        let Ok(delivery) = requests.next().await else {
            return;
        };
        let id: u64 = delivery.payload.as_str().parse().expect("requests are ids");
        served.fetch_add(1, Ordering::Relaxed);
        if lossy && lost(&ctx) {
            continue;
        }
        bus.publish(vec![message(REPLIES, reply_payload(id))])
            .await
            .expect("a calm bus accepts publishes");
    }
}

async fn round_trips(ctx: NodeContext, sizes: Sizes, finish: impl FnOnce(Outcome) + Send) {
    let bus = ctx.event_bus();
    let runtime = ctx.runtime();
    let mut replies = bus.subscribe("client", &[REPLIES]).await.expect("calm bus");
    let start = runtime.now();
    let mut outcome = Outcome::default();
    for id in 0..sizes.round_trips {
        bus.publish(vec![message(REQUESTS, request_payload(id))])
            .await
            .expect("calm bus");
        let delivery = replies.next().await.expect("the server answers");
        match parse_reply(&delivery.payload) {
            Some((got, value)) if got == id && value == spec::reply_for(id) => {
                outcome.completed += 1;
            }
            _ => outcome.wrong += 1,
        }
    }
    outcome.sim_time = runtime.now().saturating_since(start);
    finish(outcome);
}

fn sleepers(ctx: &NodeContext, sizes: Sizes, finish: impl FnOnce(Outcome) + Send + 'static) {
    let runtime = ctx.runtime();
    let start = runtime.now();
    let tally = Arc::new(Mutex::new((
        Outcome::default(),
        sizes.sleep_tasks,
        Some(finish),
    )));
    for task in 0..sizes.sleep_tasks {
        let (runtime, tally) = (Arc::clone(&runtime), Arc::clone(&tally));
        ctx.spawn("sleeper", async move {
            let (mut slept, mut max_late) = (0, Duration::ZERO);
            for index in 0..sizes.sleeps_per_task {
                let wanted = Duration::from_millis(spec::sleep_ms(task, index));
                let before = runtime.now();
                runtime.sleep(wanted).await;
                let took = runtime.now().saturating_since(before);
                if took >= wanted {
                    slept += 1;
                    max_late = max_late.max(took - wanted);
                }
            }
            let mut guard = tally.lock().expect("not poisoned");
            let (outcome, left, finish) = &mut *guard;
            outcome.completed += slept;
            outcome.max_late = outcome.max_late.max(max_late);
            *left -= 1;
            if *left == 0 {
                outcome.sim_time = runtime.now().saturating_since(start);
                if let Some(finish) = finish.take() {
                    finish(std::mem::take(outcome));
                }
            }
        });
    }
}

async fn lossy_requests(ctx: NodeContext, sizes: Sizes, finish: impl FnOnce(Outcome) + Send) {
    let bus = ctx.event_bus();
    let runtime = ctx.runtime();
    let mut replies = bus.subscribe("client", &[REPLIES]).await.expect("calm bus");
    let start = runtime.now();
    let mut outcome = Outcome::default();
    for id in 0..sizes.requests {
        loop {
            assert!(
                outcome.attempts < (id + 1) * MAX_ATTEMPTS,
                "request {id} unanswered after {MAX_ATTEMPTS} attempts"
            );
            outcome.attempts += 1;
            let drop_request = lost(&ctx);
            let (bus, replies, counts) = (&bus, &mut replies, &mut outcome);
            // The exchange (and its borrows) ends with this block, answered or not.
            let answer = {
                let exchange = pin!(async move {
                    if !drop_request {
                        bus.publish(vec![message(REQUESTS, request_payload(id))])
                            .await
                            .expect("calm bus");
                    }
                    loop {
                        let delivery = replies.next().await.expect("the bus stays up");
                        counts.replies += 1;
                        match parse_reply(&delivery.payload) {
                            Some((got, value)) if got == id => return value,
                            _ => counts.stale += 1,
                        }
                    }
                });
                match select(exchange, runtime.sleep(TIMEOUT)).await {
                    Either::Left((value, _)) => Some(value),
                    Either::Right(((), _)) => None,
                }
            };
            match answer {
                Some(value) if value == spec::reply_for(id) => outcome.completed += 1,
                Some(_) => outcome.wrong += 1,
                None => {
                    outcome.timeouts += 1;
                    continue;
                }
            }
            break;
        }
    }
    outcome.sim_time = runtime.now().saturating_since(start);
    finish(outcome);
}
