//! The workloads on turmoil 0.7: each node a turmoil host (its own tokio runtime on a
//! paused clock, advanced one 1 ms tick per simulation step), tasks spawned with
//! `spawn_local`, sleeps and timeouts on tokio's clock, messages over turmoil's UDP.
//!
//! **UDP, not TCP.** turmoil's network loses *messages*: its `fail_rate` drops whatever
//! the link carries, and its TCP has no retransmission, so a lost segment silently
//! corrupts or stalls the stream — TCP cannot carry the loss workload at all. A
//! datagram per request and per reply is also the closest match to one bus publish per
//! message (Reprise) and one `UdpSocket` send (madsim), so all three workloads use UDP
//! and no simulator pays for a connection handshake the others do not.
//!
//! **Latency** is `min = max = 1 ms`, so every datagram takes exactly one tick.
//!
//! **Loss.** `fail_rate` is not an independent per-message drop: a send breaks the link
//! with that probability (dropping the message), and the next send on the link mends it
//! (`repair_rate` 1, the default) before going through — so two messages in a row are
//! never both lost. `fail_rate = 1/9` makes the long-run fraction of lost messages
//! `(1/9) / (1 + 1/9) = 10 %`, the other simulators' rate; the run prints the fraction it
//! observed and the check holds it to 10 % like the others'.

// turmoil *is* tokio on a paused clock: its time is the simulation's virtual time, which
// is why tokio's timers are the right ones here (the workspace bans them elsewhere).
#![allow(clippy::disallowed_methods)]

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::Duration;

use tokio::time::Instant;
use turmoil::net::UdpSocket;

use crate::spec::{
    self, LATENCY, LOSS_RATE, MAX_ATTEMPTS, Outcome, SEED, Sizes, TIMEOUT, Workload,
};

const PORT: u16 = 9000;

/// Runs `workload` on a fresh simulation and returns what it counted.
///
/// # Panics
/// If the simulation fails (a host returned an error, or it ran out of time).
pub fn run(workload: Workload, sizes: Sizes) -> Outcome {
    let mut builder = turmoil::Builder::new();
    builder
        .simulation_duration(Duration::from_secs(3_600))
        .min_message_latency(LATENCY)
        .max_message_latency(LATENCY)
        .rng_seed(SEED);
    if workload == Workload::Loss {
        builder
            .fail_rate(LOSS_RATE / (1.0 - LOSS_RATE))
            .repair_rate(1.0);
    }
    let mut sim = builder.build();
    let result = Rc::new(RefCell::new(Outcome::default()));
    let served = Rc::new(RefCell::new(0u64));
    match workload {
        Workload::Rtt | Workload::Loss => {
            let counter = Rc::clone(&served);
            sim.host("server", move || serve(Rc::clone(&counter)));
            let result = Rc::clone(&result);
            sim.client("client", async move {
                let outcome = if workload == Workload::Rtt {
                    round_trips(sizes).await?
                } else {
                    lossy_requests(sizes).await?
                };
                *result.borrow_mut() = outcome;
                Ok(())
            });
        }
        Workload::Sleeps => {
            let result = Rc::clone(&result);
            sim.client("sleepers", async move {
                *result.borrow_mut() = sleepers(sizes).await;
                Ok(())
            });
        }
    }
    if let Err(e) = sim.run() {
        panic!("{} on turmoil: {e}", workload.name());
    }
    drop(sim);
    let mut outcome = result.take();
    outcome.served = served.take();
    outcome
}

fn any_address() -> (IpAddr, u16) {
    (IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT)
}

async fn serve(served: Rc<RefCell<u64>>) -> turmoil::Result {
    let socket = UdpSocket::bind(any_address()).await?;
    let mut buf = [0u8; 64];
    loop {
        let (len, from) = socket.recv_from(&mut buf).await?;
        let id = spec::decode_request(&buf[..len]).ok_or("malformed request")?;
        *served.borrow_mut() += 1;
        socket.send_to(&spec::encode_reply(id), from).await?;
    }
}

async fn round_trips(sizes: Sizes) -> Result<Outcome, Box<dyn std::error::Error>> {
    let socket = UdpSocket::bind(any_address()).await?;
    let server = (turmoil::lookup("server"), PORT);
    let start = Instant::now();
    let mut outcome = Outcome::default();
    let mut buf = [0u8; 64];
    for id in 0..sizes.round_trips {
        socket.send_to(&spec::encode_request(id), server).await?;
        let (len, _) = socket.recv_from(&mut buf).await?;
        match spec::decode_reply(&buf[..len]) {
            Some((got, value)) if got == id && value == spec::reply_for(id) => {
                outcome.completed += 1;
            }
            _ => outcome.wrong += 1,
        }
    }
    outcome.sim_time = start.elapsed();
    Ok(outcome)
}

async fn sleepers(sizes: Sizes) -> Outcome {
    let start = Instant::now();
    let tally = Rc::new(RefCell::new(Outcome::default()));
    let tasks: Vec<_> = (0..sizes.sleep_tasks)
        .map(|task| {
            let tally = Rc::clone(&tally);
            tokio::task::spawn_local(async move {
                let (mut slept, mut max_late) = (0, Duration::ZERO);
                for index in 0..sizes.sleeps_per_task {
                    let wanted = Duration::from_millis(spec::sleep_ms(task, index));
                    let before = Instant::now();
                    tokio::time::sleep(wanted).await;
                    let took = before.elapsed();
                    if took >= wanted {
                        slept += 1;
                        max_late = max_late.max(took - wanted);
                    }
                }
                let mut tally = tally.borrow_mut();
                tally.completed += slept;
                tally.max_late = tally.max_late.max(max_late);
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("sleepers do not panic");
    }
    let mut outcome = tally.take();
    outcome.sim_time = start.elapsed();
    outcome
}

async fn lossy_requests(sizes: Sizes) -> Result<Outcome, Box<dyn std::error::Error>> {
    let socket = UdpSocket::bind(any_address()).await?;
    let server = (turmoil::lookup("server"), PORT);
    let start = Instant::now();
    let mut outcome = Outcome::default();
    let mut buf = [0u8; 64];
    for id in 0..sizes.requests {
        loop {
            if outcome.attempts >= (id + 1) * MAX_ATTEMPTS {
                return Err(
                    format!("request {id} unanswered after {MAX_ATTEMPTS} attempts").into(),
                );
            }
            outcome.attempts += 1;
            socket.send_to(&spec::encode_request(id), server).await?;
            let deadline = Instant::now() + TIMEOUT;
            let answer = loop {
                match tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
                    Err(_) => break None,
                    Ok(received) => {
                        let (len, _) = received?;
                        outcome.replies += 1;
                        match spec::decode_reply(&buf[..len]) {
                            Some((got, value)) if got == id => break Some(value),
                            _ => outcome.stale += 1,
                        }
                    }
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
    outcome.sim_time = start.elapsed();
    Ok(outcome)
}
