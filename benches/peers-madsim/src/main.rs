//! `peers-madsim [--workload rtt|sleeps|loss|all] [--reps N] [--warmup N] [--smoke]`: the
//! peer comparison's workloads (`benches/peers/src/spec.rs`, compiled in below) on madsim
//! 0.2: each node a madsim node, tasks spawned on it, sleeps and timeouts on madsim's
//! clock, messages over madsim's simulated `UdpSocket` (a datagram per request and per
//! reply, as on turmoil; see `benches/peers/src/on_turmoil.rs` for why UDP).
//!
//! - **Latency**: madsim draws each packet's latency from `send_latency`, a half-open
//!   range that may not be empty, so `1 ms .. 1 ms + 1 ns`: 1 ms, as on the others. Each
//!   send and receive also sleeps madsim's own 0–5 µs jitter (not configurable).
//! - **Loss**: `packet_loss_rate = 0.1`, drawn independently per packet.

#[cfg(not(madsim))]
compile_error!(
    "madsim only simulates under `--cfg madsim`: build with RUSTFLAGS=\"--cfg madsim\" (see Cargo.toml)"
);

#[path = "../../peers/src/spec.rs"]
#[allow(dead_code)]
mod spec;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::net::UdpSocket;
use madsim::runtime::{Handle, Runtime};
use madsim::time::Instant;

use spec::{Args, LATENCY, LOSS_RATE, MAX_ATTEMPTS, Outcome, SEED, Sizes, TIMEOUT, Workload};

// Documentation addresses (RFC 5737): simulated nodes only, nothing leaves the process.
const SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
const PORT: u16 = 9000;

fn main() {
    let args = match Args::parse(&["madsim"], std::env::args().skip(1)) {
        Ok(args) => args,
        Err(usage) => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    if let Err(e) = spec::bench(&args, &[("madsim", &run)]) {
        eprintln!("peers-madsim: {e}");
        std::process::exit(1);
    }
}

/// Runs `workload` on a fresh madsim runtime and returns what it counted.
fn run(workload: Workload, sizes: Sizes) -> Outcome {
    let mut config = madsim::Config::default();
    config.net.send_latency = LATENCY..LATENCY + Duration::from_nanos(1);
    if workload == Workload::Loss {
        config.net.packet_loss_rate = LOSS_RATE;
    }
    let runtime = Runtime::with_seed_and_config(SEED, config);
    runtime.block_on(async move {
        let handle = Handle::current();
        match workload {
            Workload::Rtt | Workload::Loss => {
                let served = Arc::new(AtomicU64::new(0));
                let server = handle.create_node().name("server").ip(SERVER).build();
                let counter = Arc::clone(&served);
                server.spawn(async move { serve(counter).await });
                let client = handle.create_node().name("client").ip(CLIENT).build();
                let mut outcome = client
                    .spawn(async move {
                        if workload == Workload::Rtt {
                            round_trips(sizes).await
                        } else {
                            lossy_requests(sizes).await
                        }
                    })
                    .await
                    .expect("the client does not panic");
                outcome.served = served.load(Ordering::Relaxed);
                outcome
            }
            Workload::Sleeps => {
                let node = handle.create_node().name("sleepers").build();
                node.spawn(async move { sleepers(sizes).await })
                    .await
                    .expect("the sleepers do not panic")
            }
        }
    })
}

async fn serve(served: Arc<AtomicU64>) {
    let socket = UdpSocket::bind(SocketAddr::new(SERVER, PORT))
        .await
        .expect("the port is free");
    let mut buf = [0u8; 64];
    loop {
        let (len, from) = socket.recv_from(&mut buf).await.expect("the network is up");
        let id = spec::decode_request(&buf[..len]).expect("well-formed request");
        served.fetch_add(1, Ordering::Relaxed);
        socket
            .send_to(from, &spec::encode_reply(id))
            .await
            .expect("the network is up");
    }
}

async fn round_trips(sizes: Sizes) -> Outcome {
    let socket = UdpSocket::bind(SocketAddr::new(CLIENT, PORT))
        .await
        .expect("free port");
    let server = SocketAddr::new(SERVER, PORT);
    let start = Instant::now();
    let mut outcome = Outcome::default();
    let mut buf = [0u8; 64];
    for id in 0..sizes.round_trips {
        socket
            .send_to(server, &spec::encode_request(id))
            .await
            .expect("the network is up");
        let (len, _) = socket.recv_from(&mut buf).await.expect("the network is up");
        match spec::decode_reply(&buf[..len]) {
            Some((got, value)) if got == id && value == spec::reply_for(id) => {
                outcome.completed += 1;
            }
            _ => outcome.wrong += 1,
        }
    }
    outcome.sim_time = start.elapsed();
    outcome
}

async fn sleepers(sizes: Sizes) -> Outcome {
    let start = Instant::now();
    // The node's task must be `Send`, so the tally is shared as on Reprise's side.
    let tally = Arc::new(Mutex::new(Outcome::default()));
    let tasks: Vec<_> = (0..sizes.sleep_tasks)
        .map(|task| {
            let tally = Arc::clone(&tally);
            madsim::task::spawn(async move {
                let (mut slept, mut max_late) = (0, Duration::ZERO);
                for index in 0..sizes.sleeps_per_task {
                    let wanted = Duration::from_millis(spec::sleep_ms(task, index));
                    let before = Instant::now();
                    madsim::time::sleep(wanted).await;
                    let took = before.elapsed();
                    if took >= wanted {
                        slept += 1;
                        max_late = max_late.max(took - wanted);
                    }
                }
                let mut tally = tally.lock().expect("not poisoned");
                tally.completed += slept;
                tally.max_late = tally.max_late.max(max_late);
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("sleepers do not panic");
    }
    let mut outcome = std::mem::take(&mut *tally.lock().expect("not poisoned"));
    outcome.sim_time = start.elapsed();
    outcome
}

async fn lossy_requests(sizes: Sizes) -> Outcome {
    let socket = UdpSocket::bind(SocketAddr::new(CLIENT, PORT))
        .await
        .expect("free port");
    let server = SocketAddr::new(SERVER, PORT);
    let start = Instant::now();
    let mut outcome = Outcome::default();
    let mut buf = [0u8; 64];
    for id in 0..sizes.requests {
        loop {
            assert!(
                outcome.attempts < (id + 1) * MAX_ATTEMPTS,
                "request {id} unanswered after {MAX_ATTEMPTS} attempts"
            );
            outcome.attempts += 1;
            socket
                .send_to(server, &spec::encode_request(id))
                .await
                .expect("the network is up");
            let deadline = Instant::now() + TIMEOUT;
            let answer = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match madsim::time::timeout(left, socket.recv_from(&mut buf)).await {
                    Err(_) => break None,
                    Ok(received) => {
                        let (len, _) = received.expect("the network is up");
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
    outcome
}
