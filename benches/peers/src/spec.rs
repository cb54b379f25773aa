//! The three workloads as data: counts, latencies, sleep durations, the server's answer and
//! the checks every simulator's result must pass. This one file is compiled into both
//! binaries (`reprise-peers` and, by `#[path]`, the madsim package outside the workspace),
//! so the simulators cannot drift apart in what they are asked to do.
//!
//! - **rtt**: `round_trips` request/response exchanges between two nodes, one at a time,
//!   1 ms one-way latency, no loss. Every reply must carry [`reply_for`] its request.
//! - **sleeps**: `sleep_tasks` tasks on one node, each sleeping `sleeps_per_task` times
//!   for [`sleep_ms`] (1–100 ms, the same seeded durations on every simulator). Every
//!   task checks after each sleep that the virtual clock moved at least that far.
//! - **loss**: `requests` exchanges, each one-way message lost with probability 10 %
//!   by the simulator's network (see each simulator's module for how), 50 ms timeout.
//!   Semantics, the same everywhere: the client sends request `id` and waits 50 ms of
//!   virtual time for the reply to `id`; if none came it counts a timeout and sends the
//!   same request again, until answered (at most [`MAX_ATTEMPTS`] times). The server
//!   answers every request it receives. A reply to an earlier attempt that arrives late
//!   is counted as stale and ignored (with a fixed 1 ms latency none does).

use std::time::Duration;

/// Seed of every simulator's run and of the sleep durations.
pub const SEED: u64 = 0x5eed_0f9e;

/// One-way latency of every message.
pub const LATENCY: Duration = Duration::from_millis(1);
pub const SLEEP_MIN_MS: u64 = 1;
pub const SLEEP_MAX_MS: u64 = 100;
/// Probability that one message (request or reply) is lost in the loss workload.
pub const LOSS_RATE: f64 = 0.1;
pub const TIMEOUT: Duration = Duration::from_millis(50);
/// A request unanswered after this many attempts fails the run (p = 0.19^100: never, on
/// a working simulator).
pub const MAX_ATTEMPTS: u64 = 100;

/// How big each workload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    pub round_trips: u64,
    pub sleep_tasks: u64,
    pub sleeps_per_task: u64,
    pub requests: u64,
}

impl Sizes {
    /// The sizes the issue asks for, the ones in `docs/performance.md`.
    pub const FULL: Sizes = Sizes {
        round_trips: 10_000,
        sleep_tasks: 1_000,
        sleeps_per_task: 10,
        requests: 1_000,
    };
    /// A check that each workload still runs and passes its checks, in well under a second.
    pub const SMOKE: Sizes = Sizes {
        round_trips: 200,
        sleep_tasks: 50,
        sleeps_per_task: 10,
        requests: 200,
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Rtt,
    Sleeps,
    Loss,
}

impl Workload {
    pub const ALL: [Workload; 3] = [Workload::Rtt, Workload::Sleeps, Workload::Loss];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Rtt => "rtt",
            Workload::Sleeps => "sleeps",
            Workload::Loss => "loss",
        }
    }

    pub fn parse(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }

    /// What one operation is: a round trip, a sleep, a request (with its retries).
    pub fn ops(self, sizes: Sizes) -> u64 {
        match self {
            Workload::Rtt => sizes.round_trips,
            Workload::Sleeps => sizes.sleep_tasks * sizes.sleeps_per_task,
            Workload::Loss => sizes.requests,
        }
    }
}

/// SplitMix64: a fixed, dependency-free generator, so every simulator sleeps exactly the
/// same durations whatever RNG it uses inside.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// How long task `task` sleeps the `index`-th time, in milliseconds (1–100).
pub fn sleep_ms(task: u64, index: u64) -> u64 {
    let draw = splitmix64(SEED ^ splitmix64(task.wrapping_mul(1_000_003).wrapping_add(index)));
    SLEEP_MIN_MS + draw % (SLEEP_MAX_MS - SLEEP_MIN_MS + 1)
}

/// The server's answer to request `id`: the client checks it, so a workload that skipped
/// the server (or mixed up replies) cannot pass.
pub fn reply_for(id: u64) -> u64 {
    splitmix64(id ^ 0x0ddb_a115)
}

/// A request on the wire: its id, little-endian.
pub fn encode_request(id: u64) -> [u8; 8] {
    id.to_le_bytes()
}

pub fn decode_request(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// A reply on the wire: the request's id and [`reply_for`] it.
pub fn encode_reply(id: u64) -> [u8; 16] {
    let mut out = [0; 16];
    out[..8].copy_from_slice(&id.to_le_bytes());
    out[8..].copy_from_slice(&reply_for(id).to_le_bytes());
    out
}

pub fn decode_reply(bytes: &[u8]) -> Option<(u64, u64)> {
    let id = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let value = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((id, value))
}

/// What a run did, as its workload counted it. Unused fields stay zero.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Round trips answered correctly, sleeps completed, or requests answered correctly.
    pub completed: u64,
    /// Replies whose payload did not match [`reply_for`] their request (must stay 0).
    pub wrong: u64,
    /// Virtual time from the workload's start to its end.
    pub sim_time: Duration,
    /// Largest amount by which a sleep overslept (tick-based simulators round up).
    pub max_late: Duration,
    /// Loss workload: requests sent (first sends and retries).
    pub attempts: u64,
    /// Loss workload: requests the server received (each answered once).
    pub served: u64,
    /// Loss workload: replies the client received, stale ones included.
    pub replies: u64,
    pub timeouts: u64,
    pub stale: u64,
}

impl Outcome {
    /// Fraction of messages lost in the loss workload, inferred from the counts at both
    /// ends: sent = attempts + served, received = served + replies.
    #[allow(clippy::cast_precision_loss)]
    pub fn loss_fraction(&self) -> f64 {
        let sent = self.attempts + self.served;
        let received = self.served + self.replies;
        if sent == 0 {
            return 0.0;
        }
        (sent.saturating_sub(received)) as f64 / sent as f64
    }
}

/// Checks a run's outcome against what the workload must have done.
///
/// # Errors
/// What is wrong, for the run's output.
#[allow(clippy::cast_precision_loss)]
pub fn check(workload: Workload, sizes: Sizes, outcome: &Outcome) -> Result<(), String> {
    let ops = workload.ops(sizes);
    if outcome.completed != ops {
        return Err(format!("completed {} of {ops}", outcome.completed));
    }
    if outcome.wrong != 0 {
        return Err(format!("{} wrong replies", outcome.wrong));
    }
    match workload {
        Workload::Rtt => {
            let least = 2 * LATENCY * u32::try_from(ops).unwrap_or(u32::MAX);
            if outcome.sim_time < least {
                return Err(format!(
                    "{ops} round trips took {:?} of virtual time, less than 2 x latency each",
                    outcome.sim_time
                ));
            }
        }
        Workload::Sleeps => {
            let longest = (0..sizes.sleep_tasks)
                .map(|t| {
                    (0..sizes.sleeps_per_task)
                        .map(|i| sleep_ms(t, i))
                        .sum::<u64>()
                })
                .max()
                .unwrap_or(0);
            if outcome.sim_time < Duration::from_millis(longest) {
                return Err(format!(
                    "the longest task sleeps {longest} ms, the run took {:?}",
                    outcome.sim_time
                ));
            }
        }
        Workload::Loss => {
            if outcome.attempts != ops + outcome.timeouts {
                return Err(format!(
                    "{} attempts for {ops} requests and {} timeouts: an attempt neither \
                     answered nor timed out",
                    outcome.attempts, outcome.timeouts
                ));
            }
            // Per attempt, the exchange fails if either message is lost: q = 1 - 0.9^2,
            // and a request needs 1/(1-q) attempts on average. Five standard deviations
            // plus 2 % of the requests either side (turmoil's losses are not independent:
            // see its module).
            let q = 1.0 - (1.0 - LOSS_RATE) * (1.0 - LOSS_RATE);
            let n = ops as f64;
            let expected = n * q / (1.0 - q);
            let spread = 5.0 * (n * q / ((1.0 - q) * (1.0 - q))).sqrt() + 0.02 * n;
            let t = outcome.timeouts as f64;
            if (t - expected).abs() > spread {
                return Err(format!(
                    "{} timeouts for {ops} requests, expected {expected:.0} ± {spread:.0}",
                    outcome.timeouts
                ));
            }
            let sent = (outcome.attempts + outcome.served) as f64;
            let fraction = outcome.loss_fraction();
            let tolerance = 5.0 * (LOSS_RATE * (1.0 - LOSS_RATE) / sent).sqrt() + 0.01;
            if (fraction - LOSS_RATE).abs() > tolerance {
                return Err(format!(
                    "{:.1} % of messages lost, expected {:.0} % ± {:.1}",
                    fraction * 100.0,
                    LOSS_RATE * 100.0,
                    tolerance * 100.0
                ));
            }
        }
    }
    Ok(())
}

/// Command line shared by both binaries:
/// `[--sim NAME|all] [--workload rtt|sleeps|loss|all] [--reps N] [--warmup N] [--smoke]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Args {
    pub sims: Vec<String>,
    pub workloads: Vec<Workload>,
    pub reps: u32,
    pub warmup: u32,
    pub sizes: Sizes,
}

impl Args {
    /// # Errors
    /// A usage message.
    pub fn parse(
        known_sims: &[&str],
        args: impl IntoIterator<Item = String>,
    ) -> Result<Self, String> {
        let mut parsed = Args {
            sims: known_sims.iter().map(|s| (*s).to_owned()).collect(),
            workloads: Workload::ALL.to_vec(),
            reps: 1,
            warmup: 1,
            sizes: Sizes::FULL,
        };
        let usage = format!(
            "usage: [--sim {}|all] [--workload rtt|sleeps|loss|all] [--reps N] [--warmup N] [--smoke]",
            known_sims.join("|")
        );
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or_else(|| usage.clone());
            match arg.as_str() {
                "--sim" => {
                    let sim = value()?;
                    if sim != "all" {
                        if !known_sims.contains(&sim.as_str()) {
                            return Err(format!("unknown simulator {sim}; {usage}"));
                        }
                        parsed.sims = vec![sim];
                    }
                }
                "--workload" => {
                    let name = value()?;
                    if name != "all" {
                        let workload = Workload::parse(&name)
                            .ok_or_else(|| format!("unknown workload {name}; {usage}"))?;
                        parsed.workloads = vec![workload];
                    }
                }
                "--reps" => parsed.reps = value()?.parse().map_err(|_| usage.clone())?,
                "--warmup" => parsed.warmup = value()?.parse().map_err(|_| usage.clone())?,
                "--smoke" => parsed.sizes = Sizes::SMOKE,
                _ => return Err(usage),
            }
        }
        if parsed.reps == 0 {
            return Err(format!("--reps must be at least 1; {usage}"));
        }
        Ok(parsed)
    }
}

/// The line each timed run prints (`run.sh` reads `us_per_op`: CPU time, see [`bench`]).
pub fn run_line(
    workload: Workload,
    sim: &str,
    rep: u32,
    sizes: Sizes,
    cpu: Duration,
    wall: Duration,
    outcome: &Outcome,
) -> String {
    let ops = workload.ops(sizes);
    let mut line = format!(
        "workload={} sim={sim} rep={rep} ops={ops} us_per_op={:.3} wall_us_per_op={:.3} sim_ms={}",
        workload.name(),
        per_op_us(cpu, ops),
        per_op_us(wall, ops),
        outcome.sim_time.as_millis()
    );
    match workload {
        Workload::Rtt => {}
        Workload::Sleeps => {
            line.push_str(&format!(" max_late_us={}", outcome.max_late.as_micros()));
        }
        Workload::Loss => line.push_str(&format!(
            " timeouts={} attempts={} loss_pct={:.1} stale={}",
            outcome.timeouts,
            outcome.attempts,
            outcome.loss_fraction() * 100.0,
            outcome.stale
        )),
    }
    line
}

#[allow(clippy::cast_precision_loss)]
fn per_op_us(time: Duration, ops: u64) -> f64 {
    time.as_secs_f64() * 1e6 / ops.max(1) as f64
}

/// The median of a non-empty list (the mean of the middle two for an even count).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        f64::midpoint(values[n / 2 - 1], values[n / 2])
    }
}

/// A simulator as the driver sees it: a name and a function that builds a fresh
/// simulation, runs one workload on it to the end and returns what it counted.
pub type Runner<'a> = (&'a str, &'a dyn Fn(Workload, Sizes) -> Outcome);

/// Runs `args.reps` repetitions of each requested workload on each requested simulator,
/// alternating the simulators' order from one repetition to the next (so that a drift in
/// machine load does not favour one of them), checks every run and prints one
/// [`run_line`] per timed run, then one `median_us_per_op` line per workload and
/// simulator. Each timed run is preceded by `args.warmup` untimed (but checked) runs.
///
/// The figure compared is the thread's CPU time per operation (`us_per_op`): every
/// simulator here runs on the calling thread alone, and on a shared machine wall time
/// mostly measures preemption by other processes. Wall time is printed beside it.
///
/// # Errors
/// The first run that failed its checks.
// The one place that reads the wall clock: what is measured is time per operation.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
pub fn bench(args: &Args, runners: &[Runner<'_>]) -> Result<(), String> {
    let selected: Vec<&Runner<'_>> = runners
        .iter()
        .filter(|(name, _)| args.sims.iter().any(|s| s == name))
        .collect();
    let mut samples: Vec<(Workload, &str, Vec<f64>)> = Vec::new();
    for rep in 1..=args.reps {
        for &workload in &args.workloads {
            let mut order = selected.clone();
            if rep % 2 == 0 {
                order.reverse();
            }
            for (sim, run) in order {
                for _ in 0..args.warmup {
                    let outcome = run(workload, args.sizes);
                    check(workload, args.sizes, &outcome)
                        .map_err(|e| format!("{} on {sim} (warm-up): {e}", workload.name()))?;
                }
                let (wall, cpu) = (std::time::Instant::now(), cpu_time::ThreadTime::now());
                let outcome = run(workload, args.sizes);
                let (cpu, wall) = (cpu.elapsed(), wall.elapsed());
                check(workload, args.sizes, &outcome)
                    .map_err(|e| format!("{} on {sim}: {e}", workload.name()))?;
                println!(
                    "{}",
                    run_line(workload, sim, rep, args.sizes, cpu, wall, &outcome)
                );
                let per_op = per_op_us(cpu, workload.ops(args.sizes));
                match samples
                    .iter_mut()
                    .find(|(w, s, _)| *w == workload && s == sim)
                {
                    Some((_, _, values)) => values.push(per_op),
                    None => samples.push((workload, sim, vec![per_op])),
                }
            }
        }
    }
    for (workload, sim, mut values) in samples {
        let reps = values.len();
        println!(
            "workload={} sim={sim} reps={reps} median_us_per_op={:.3}",
            workload.name(),
            median(&mut values)
        );
    }
    Ok(())
}
