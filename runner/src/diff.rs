//! Comparing two runs event by event: two seeds, two plans, or a run against a trace
//! saved by another build of the code.
//!
//! A trace hash says *whether* two runs differ; when they do, the question is *where*,
//! and the first divergent event answers it — everything after it is consequence. Two
//! runs are compared line by line on what a trace line shows (simulated time, node,
//! text); when both sides ran the same seed, the running hash is compared too, so a
//! difference only in data (an event's payload, which lines do not print) is found at the
//! event that carried it. Different seeds start from different hashes, so for them the
//! lines alone decide.
//!
//! A saved trace is JSON lines, one object per line, stable across builds so that a trace
//! written by last week's binary can be compared with today's run: a header
//! (`{"format":"reprise-trace","version":1,…}` with scenario, seed, plan, outcome, final
//! hash and event count), then one `{"i","at_ns","node","text","hash"}` object per event.
//! Hashes are 16 hex digits (as `seed=… hash=…` prints them), because JSON numbers lose
//! the low bits of a u64 in many readers.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reprise_sim::{RunReport, TraceLine};
use serde::{Deserialize, Serialize};

/// The `format` field of a saved trace's header.
pub const FORMAT: &str = "reprise-trace";
/// The version of the format this build writes and reads.
pub const VERSION: u32 = 1;

/// The first line of a saved trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceHeader {
    pub format: String,
    pub version: u32,
    pub scenario: String,
    pub seed: u64,
    /// What `--plan` was given (a name or a file).
    pub plan: String,
    pub outcome: String,
    pub hash: String,
    pub events: u64,
}

#[derive(Serialize, Deserialize)]
struct Line {
    i: u64,
    at_ns: u64,
    node: Option<String>,
    text: String,
    hash: String,
}

/// One side of a comparison: a run's identity and its full trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    /// How the side is named in the output (`seed 4711 plan swarm`, a file name).
    pub label: String,
    pub seed: u64,
    pub hash: u64,
    pub lines: Vec<TraceLine>,
}

impl Side {
    /// A run made with a full trace.
    ///
    /// # Panics
    /// If the run kept no trace lines (not run with `TraceMode::Full`).
    #[must_use]
    pub fn of_run(label: String, report: &RunReport) -> Self {
        Side {
            label,
            seed: report.seed,
            hash: report.hash,
            lines: report
                .trace
                .clone()
                .expect("a diff needs runs made with a full trace"),
        }
    }
}

fn hex(hash: u64) -> String {
    format!("{hash:016x}")
}

fn parse_hex(text: &str, what: &str) -> Result<u64, String> {
    u64::from_str_radix(text, 16)
        .map_err(|_| format!("{what}: {text:?} is not a 16-digit hex hash"))
}

/// The saved form of `report` (run with a full trace): header, then one line per event.
///
/// # Panics
/// If the run kept no trace lines.
#[must_use]
pub fn to_jsonl(report: &RunReport, plan: &str) -> String {
    let lines = report
        .trace
        .as_deref()
        .expect("saving a trace needs a run made with a full trace");
    let header = TraceHeader {
        format: FORMAT.to_owned(),
        version: VERSION,
        scenario: report.scenario.to_owned(),
        seed: report.seed,
        plan: plan.to_owned(),
        outcome: report.outcome.to_string(),
        hash: hex(report.hash),
        events: lines.len() as u64,
    };
    let mut out = serde_json::to_string(&header).expect("plain data");
    out.push('\n');
    for line in lines {
        let saved = Line {
            i: line.index,
            at_ns: u64::try_from(line.at.as_nanos()).unwrap_or(u64::MAX),
            node: line.node.as_deref().map(str::to_owned),
            text: line.text.clone(),
            hash: hex(line.hash),
        };
        out.push_str(&serde_json::to_string(&saved).expect("plain data"));
        out.push('\n');
    }
    out
}

/// Writes `report`'s trace to `path` ([`to_jsonl`]).
///
/// # Errors
/// The file cannot be written.
pub fn save(path: &Path, report: &RunReport, plan: &str) -> Result<(), String> {
    std::fs::write(path, to_jsonl(report, plan))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Reads a saved trace back.
///
/// # Errors
/// Not a saved trace, another format version, a malformed or missing line, or a trace
/// that does not end at its header's hash (cut short).
pub fn from_jsonl(text: &str, origin: &str) -> Result<(TraceHeader, Vec<TraceLine>), String> {
    let mut rows = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, first) = rows
        .next()
        .ok_or_else(|| format!("{origin}: empty, not a saved trace"))?;
    let header: TraceHeader = serde_json::from_str(first)
        .map_err(|e| format!("{origin}: not a saved trace (header: {e})"))?;
    if header.format != FORMAT {
        return Err(format!(
            "{origin}: format {:?}, not {FORMAT:?}",
            header.format
        ));
    }
    if header.version != VERSION {
        return Err(format!(
            "{origin}: trace format version {}, this build reads version {VERSION}",
            header.version
        ));
    }
    let hash = parse_hex(&header.hash, origin)?;
    let mut lines = Vec::with_capacity(usize::try_from(header.events).unwrap_or(0));
    for (number, row) in rows {
        let line: Line =
            serde_json::from_str(row).map_err(|e| format!("{origin}:{}: {e}", number + 1))?;
        if line.i != lines.len() as u64 {
            return Err(format!(
                "{origin}:{}: event {} where event {} was expected",
                number + 1,
                line.i,
                lines.len()
            ));
        }
        lines.push(TraceLine {
            index: line.i,
            at: Duration::from_nanos(line.at_ns),
            node: line.node.map(Arc::from),
            text: line.text,
            hash: parse_hex(&line.hash, origin)?,
        });
    }
    if lines.len() as u64 != header.events || lines.last().is_some_and(|l| l.hash != hash) {
        return Err(format!(
            "{origin}: {} event(s) ending at another hash than the header's {} event(s) and hash {}: cut short?",
            lines.len(),
            header.events,
            header.hash
        ));
    }
    Ok((header, lines))
}

/// Reads a saved trace as a side of a comparison.
///
/// # Errors
/// See [`from_jsonl`]; an unreadable file.
pub fn load(path: &Path) -> Result<Side, String> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {origin}: {e}"))?;
    let (header, lines) = from_jsonl(&text, &origin)?;
    Ok(Side {
        label: format!(
            "{origin} ({} seed {} plan {})",
            header.scenario, header.seed, header.plan
        ),
        seed: header.seed,
        hash: parse_hex(&header.hash, &origin)?,
        lines,
    })
}

/// The index of the first event where `a` and `b` differ (one ending before the other
/// counts), or `None` if they agree on every event and on the final hash. See the
/// module docs for what "differ" means.
#[must_use]
pub fn first_divergence(a: &Side, b: &Side) -> Option<usize> {
    let same_seed = a.seed == b.seed;
    let index = a.lines.iter().zip(&b.lines).position(|(x, y)| {
        x.at != y.at || x.node != y.node || x.text != y.text || (same_seed && x.hash != y.hash)
    });
    match index {
        Some(i) => Some(i),
        None if a.lines.len() != b.lines.len() => Some(a.lines.len().min(b.lines.len())),
        None if same_seed && a.hash != b.hash => Some(a.lines.len()),
        None => None,
    }
}

/// The comparison as a person reads it: both sides, then "identical (hash …)" or the
/// first divergence with `context` events before it (common to both sides) and
/// `context` events from it on each side.
#[must_use]
pub fn render(a: &Side, b: &Side, context: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "A: {} — hash {}, {} events",
        a.label,
        hex(a.hash),
        a.lines.len()
    );
    let _ = writeln!(
        out,
        "B: {} — hash {}, {} events",
        b.label,
        hex(b.hash),
        b.lines.len()
    );
    let Some(index) = first_divergence(a, b) else {
        if a.hash == b.hash {
            let _ = writeln!(out, "identical (hash {})", hex(a.hash));
        } else {
            // Only different seeds get here: their hashes start apart.
            let _ = writeln!(
                out,
                "identical events (hashes {} and {} differ by their seeds only)",
                hex(a.hash),
                hex(b.hash)
            );
        }
        return out;
    };
    let at = a
        .lines
        .get(index)
        .or_else(|| b.lines.get(index))
        .map_or_else(String::new, |l| {
            format!(" at {:.3}ms", l.at.as_secs_f64() * 1e3)
        });
    let _ = writeln!(out, "first divergence at event {index}{at}");
    let same_text = match (a.lines.get(index), b.lines.get(index)) {
        (Some(x), Some(y)) => x.at == y.at && x.node == y.node && x.text == y.text,
        _ => false,
    };
    if same_text {
        let _ = writeln!(
            out,
            "  (same line on both sides, different hash: the event's data differs — payloads, \
             metadata or ids that the line does not print)"
        );
    }
    let before = index.saturating_sub(context);
    if before < index {
        let _ = writeln!(out, "  before (both sides):");
        for line in &a.lines[before..index] {
            let _ = writeln!(out, "    {:>7}  {line}", line.index);
        }
    }
    for (name, side) in [("A", a), ("B", b)] {
        let _ = writeln!(out, "  {name} from event {index}:");
        let after = side.lines.iter().skip(index).take(context.max(1));
        let mut shown = 0;
        for line in after {
            let mark = if line.index as usize == index {
                '>'
            } else {
                ' '
            };
            let _ = writeln!(out, "  {mark} {:>7}  {line}", line.index);
            shown += 1;
        }
        if shown == 0 {
            let _ = writeln!(out, "    <run ended>");
        }
    }
    out
}
