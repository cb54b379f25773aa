//! The run's trace: every scheduling decision, time jump, fault, node transition, I/O
//! outcome and scenario note, folded into one running xxh3 hash.
//!
//! Why a hash and not a log: the simulator runs millions of times, and almost every run
//! only needs to prove *which* execution it was. Folding fixed-size fields (a tag, the
//! virtual time, the node, two numbers) into xxh3 costs a few nanoseconds and allocates
//! nothing, so it stays on in every mode but [`TraceMode::Off`]. Readable lines are built
//! only in [`TraceMode::Full`] — when someone replays a seed with `--trace` or the
//! determinism self-check needs to name the first divergent step.
//!
//! The hash covers data, not only which operations ran: an append's line folds in the
//! streams it names and every event's id, type, schema version, payload bytes and
//! metadata; a publish's line every message's topic, key, payload and headers (a
//! digest fed straight from the bytes, no formatting). A handler that writes a
//! wall-clock value into an event it never reads back still changes the hash, and
//! [`crate::check_determinism`] names that append.
//!
//! Two runs of the same (seed, scenario, plan) must produce the same hash; the per-line
//! hashes kept in full mode let [`crate::check_determinism`] point at the first line where
//! they stop agreeing.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use xxhash_rust::xxh3::{Xxh3, xxh3_64, xxh3_64_with_seed};

/// How much of the trace a run keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum TraceMode {
    /// Nothing: no hash (reported as 0), no lines. The cheapest mode, for bulk sweeps
    /// that only care about pass/fail.
    Off,
    /// The running hash only (the default): enough to print `seed=… hash=…` and to
    /// compare two runs.
    #[default]
    Hash,
    /// The hash plus one readable [`TraceLine`] per event, each carrying the running hash
    /// after it (for `--trace` and the determinism self-check).
    Full,
}

/// One rendered trace event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TraceLine {
    /// 0-based index of the event in the run.
    pub index: u64,
    /// Virtual time since the run started.
    pub at: Duration,
    /// The node the event belongs to, if any.
    pub node: Option<Arc<str>>,
    /// What happened.
    pub text: String,
    /// The running hash after this event.
    pub hash: u64,
}

impl fmt::Display for TraceLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.at.as_millis();
        let micros = self.at.subsec_micros() % 1000;
        let node = self.node.as_deref().unwrap_or("-");
        write!(f, "{:>7}.{micros:03}ms {node:<12} {}", millis, self.text)
    }
}

/// The line every run ends with: `seed=<n> hash=<16 hex digits>`.
#[must_use]
pub fn summary_line(seed: u64, hash: u64) -> String {
    format!("seed={seed} hash={hash:016x}")
}

/// Event tags folded into the hash. Stable numbers: changing one changes every hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Tag {
    Step = 1,
    Spawn = 2,
    TaskDone = 3,
    Fault = 5,
    Node = 6,
    Store = 7,
    Bus = 8,
    Dependency = 9,
    Note = 10,
    Phase = 11,
    Check = 12,
    SpawnRefused = 13,
    Lease = 14,
    /// A dependency failing on its own (its inherent error rate): not an injected fault.
    Inherent = 15,
    /// A scripted action that found nothing to act on (e.g. pausing a crashed node).
    ScriptSkipped = 16,
}

/// The recorder. Lives inside the executor's kernel; every component records through it.
pub(crate) struct Trace {
    mode: TraceMode,
    hash: u64,
    events: u64,
    lines: Vec<TraceLine>,
}

impl Trace {
    pub(crate) fn new(mode: TraceMode, seed: u64) -> Self {
        // Seeding the hash with the seed makes two seeds' empty traces differ too.
        Trace {
            mode,
            hash: xxh3_64(&seed.to_le_bytes()),
            events: 0,
            lines: Vec::new(),
        }
    }

    pub(crate) fn hash(&self) -> u64 {
        if self.mode == TraceMode::Off {
            0
        } else {
            self.hash
        }
    }

    pub(crate) fn mode(&self) -> TraceMode {
        self.mode
    }

    pub(crate) fn events(&self) -> u64 {
        self.events
    }

    /// Folds one event. `text` is called only in full mode.
    pub(crate) fn record(
        &mut self,
        tag: Tag,
        elapsed_nanos: u64,
        node: Option<(u16, &Arc<str>)>,
        a: u64,
        b: u64,
        text: impl FnOnce() -> String,
    ) {
        if self.mode == TraceMode::Off {
            return;
        }
        let node_index = node.map_or(u64::from(u16::MAX), |(n, _)| u64::from(n));
        let mut bytes = [0u8; 33];
        bytes[0] = tag as u8;
        bytes[1..9].copy_from_slice(&elapsed_nanos.to_le_bytes());
        bytes[9..17].copy_from_slice(&node_index.to_le_bytes());
        bytes[17..25].copy_from_slice(&a.to_le_bytes());
        bytes[25..33].copy_from_slice(&b.to_le_bytes());
        self.hash = xxh3_64_with_seed(&bytes, self.hash);
        if self.mode == TraceMode::Full {
            self.lines.push(TraceLine {
                index: self.events,
                at: Duration::from_nanos(elapsed_nanos),
                node: node.map(|(_, name)| Arc::clone(name)),
                text: text(),
                hash: self.hash,
            });
        }
        self.events += 1;
    }

    pub(crate) fn take_lines(&mut self) -> Option<Vec<TraceLine>> {
        (self.mode == TraceMode::Full).then(|| std::mem::take(&mut self.lines))
    }
}

/// Hashes a string for the fixed-size fields of a trace event (names, notes, details).
pub(crate) fn hash_str(s: &str) -> u64 {
    xxh3_64(s.as_bytes())
}

/// Combines two fields into one (`a` then `b`; not symmetric).
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    xxh3_64_with_seed(&b.to_le_bytes(), a)
}

/// Folds variable-length data — the streams an operation names, the events it appends,
/// the messages it publishes — into one field of a trace event: the bytes are fed straight
/// into chained xxh3 (each piece hashed with the digest so far as its seed), without
/// formatting or allocating. Field boundaries count: `("ab", "c")` and `("a", "bc")`
/// digest differently.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Digest(u64);

impl Digest {
    /// A digest for one kind of subject (`domain` keeps e.g. a stream name and a topic of
    /// the same spelling apart).
    pub(crate) fn new(domain: u64) -> Self {
        Digest(domain)
    }

    pub(crate) fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.0 = xxh3_64_with_seed(bytes, self.0);
        self
    }

    pub(crate) fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    pub(crate) fn u64(&mut self, value: u64) -> &mut Self {
        self.bytes(&value.to_le_bytes())
    }

    pub(crate) fn u128(&mut self, value: u128) -> &mut Self {
        self.bytes(&value.to_le_bytes())
    }

    /// An optional value: absence and every present value digest differently.
    pub(crate) fn opt_u128(&mut self, value: Option<u128>) -> &mut Self {
        match value {
            None => self.u64(0),
            Some(v) => self.u64(1).u128(v),
        }
    }

    pub(crate) fn opt_str(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            None => self.u64(0),
            Some(v) => self.u64(1).str(v),
        }
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

/// [`hash_str`] of the text `args` renders to, without building the string: the pieces
/// are streamed into the hasher as they are formatted (streaming xxh3 gives the one-shot
/// result, so this equals `hash_str(&args.to_string())`).
pub(crate) fn hash_fmt(args: fmt::Arguments<'_>) -> u64 {
    if let Some(text) = args.as_str() {
        return hash_str(text);
    }
    struct Hasher(Xxh3);
    impl fmt::Write for Hasher {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.0.update(s.as_bytes());
            Ok(())
        }
    }
    let mut hasher = Hasher(Xxh3::new());
    let _ = fmt::Write::write_fmt(&mut hasher, args);
    hasher.0.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> Arc<str> {
        Arc::from("n")
    }

    #[test]
    fn hash_depends_on_every_field_and_on_order() {
        let n = name();
        let run = |events: &[(Tag, u64, u64)]| {
            let mut t = Trace::new(TraceMode::Hash, 1);
            for &(tag, at, a) in events {
                t.record(tag, at, Some((0, &n)), a, 0, String::new);
            }
            t.hash()
        };
        let base = run(&[(Tag::Step, 1, 1), (Tag::Step, 2, 2)]);
        assert_eq!(base, run(&[(Tag::Step, 1, 1), (Tag::Step, 2, 2)]));
        assert_ne!(base, run(&[(Tag::Step, 2, 2), (Tag::Step, 1, 1)]));
        assert_ne!(base, run(&[(Tag::Step, 1, 1), (Tag::Step, 2, 3)]));
        assert_ne!(base, run(&[(Tag::Step, 1, 1), (Tag::Spawn, 2, 2)]));
    }

    #[test]
    fn full_mode_keeps_lines_with_running_hashes_and_off_keeps_nothing() {
        let n = name();
        let mut full = Trace::new(TraceMode::Full, 7);
        full.record(Tag::Note, 1_500_000, Some((0, &n)), 1, 2, || "hello".into());
        let lines = full.take_lines().expect("full mode keeps lines");
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].hash, full.hash());
        assert!(lines[0].to_string().contains("hello"));
        let mut off = Trace::new(TraceMode::Off, 7);
        off.record(Tag::Note, 1, None, 1, 2, || {
            unreachable!("no text in off mode")
        });
        assert_eq!(off.hash(), 0);
        assert!(off.take_lines().is_none());
    }

    #[test]
    fn streamed_note_hash_equals_the_hash_of_the_rendered_text() {
        let (n, name) = (17, "o-042");
        let rendered = format!("order {name} has {n} lines, {:?}", Some(3));
        assert_eq!(
            hash_fmt(format_args!("order {name} has {n} lines, {:?}", Some(3))),
            hash_str(&rendered)
        );
        assert_eq!(hash_fmt(format_args!("plain")), hash_str("plain"));
        let long = "x".repeat(1000);
        assert_eq!(
            hash_fmt(format_args!("{long}-{long}")),
            hash_str(&format!("{long}-{long}"))
        );
    }

    #[test]
    fn digests_see_every_byte_and_every_boundary() {
        let digest = |parts: &[&str]| {
            let mut d = Digest::new(1);
            for part in parts {
                d.str(part);
            }
            d.finish()
        };
        assert_eq!(digest(&["ab", "c"]), digest(&["ab", "c"]));
        assert_ne!(digest(&["ab", "c"]), digest(&["a", "bc"]));
        assert_ne!(digest(&["ab", "c"]), digest(&["ab", "d"]));
        assert_ne!(digest(&["ab"]), digest(&["ab", ""]));
        assert_ne!(Digest::new(1).finish(), Digest::new(2).finish());
        let (mut none, mut empty) = (Digest::new(1), Digest::new(1));
        none.opt_str(None);
        empty.opt_str(Some(""));
        assert_ne!(none.finish(), empty.finish());
        assert_ne!(mix(1, 2), mix(2, 1));
    }

    #[test]
    fn summary_line_has_sixteen_hex_digits() {
        assert_eq!(summary_line(42, 0xab), "seed=42 hash=00000000000000ab");
    }
}
