//! Folding shard results into the result of the one sweep they split.
//!
//! Every count of a sweep is a sum over its seeds, and the failing seeds listed are the
//! smallest ones, so shards of one range ([`crate::shard`]) merge exactly: the merged
//! counts, failing seeds and coverage are those one unsharded sweep of the range reports.
//! Only the timings differ (shards ran side by side: the merged wall time is the slowest
//! shard's). Results that are not the shards of one sweep — another scenario, plan,
//! range or determinism sample, a shard twice, a shard missing, a shard that stopped
//! early — are refused rather than summed into a plausible-looking wrong answer.

use std::collections::BTreeMap;

use crate::shard::Shard;
use crate::sweep::{MAX_LISTED_FAILURES, SweepOutcome};

/// Merges the JSON results of the shards of one sweep. See the module docs.
///
/// # Errors
/// Results that are not exactly the N shards of one sweep, with what is wrong.
pub fn merge(parts: Vec<SweepOutcome>) -> Result<SweepOutcome, String> {
    let Some(first) = parts.first() else {
        return Err("nothing to merge: give the JSON result of every shard".into());
    };
    let count = match first.shard {
        Some(shard) => shard.count,
        None if parts.len() == 1 => return Ok(parts.into_iter().next().expect("one part")),
        None => {
            return Err(
                "these results are not shards (no `shard` field): merging whole sweeps \
                 would count their seeds twice"
                    .into(),
            );
        }
    };
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for (i, part) in parts.iter().enumerate() {
        let same = |what: &str, ours: &dyn std::fmt::Debug, theirs: &dyn std::fmt::Debug| {
            Err(format!(
                "result {} is of another sweep: {what} {theirs:?}, not {ours:?}",
                i + 1
            ))
        };
        if part.scenario != first.scenario {
            return same("scenario", &first.scenario, &part.scenario);
        }
        if part.plan != first.plan {
            return same("plan", &first.plan, &part.plan);
        }
        if (part.start, part.seeds) != (first.start, first.seeds) {
            return same(
                "seed range (start, seeds)",
                &(first.start, first.seeds),
                &(part.start, part.seeds),
            );
        }
        if part.determinism != first.determinism {
            return same("determinism sample", &first.determinism, &part.determinism);
        }
        let Some(shard) = part.shard else {
            return Err(format!("result {} is a whole sweep, not a shard", i + 1));
        };
        if shard.count != count {
            return same("shard count", &count, &shard.count);
        }
        if let Some(previous) = seen.insert(shard.index, i) {
            return Err(format!(
                "shard {shard} appears twice (results {} and {})",
                previous + 1,
                i + 1
            ));
        }
        let share = shard.share(part.seeds);
        if part.passed + part.failed != share {
            return Err(format!(
                "shard {shard} reports {} seed(s) but owns {share}: did it stop early?",
                part.passed + part.failed
            ));
        }
    }
    let missing: Vec<String> = (1..=count)
        .filter(|k| !seen.contains_key(k))
        .map(|index| Shard { index, count }.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "shard(s) {} missing: the merge would not be the whole sweep",
            missing.join(", ")
        ));
    }
    Ok(fold(parts))
}

#[allow(clippy::cast_precision_loss)]
fn fold(parts: Vec<SweepOutcome>) -> SweepOutcome {
    let mut parts = parts.into_iter();
    let mut merged = parts.next().expect("checked non-empty");
    merged.shard = None;
    let mut busy = merged.wall_seconds * merged.jobs as f64;
    for part in parts {
        merged.passed += part.passed;
        merged.failed += part.failed;
        merged.panics += part.panics;
        merged.determinism_checked += part.determinism_checked;
        merged.nondeterministic += part.nondeterministic;
        merged.failures.extend(part.failures);
        merged.simulated_seconds += part.simulated_seconds;
        merged.wall_seconds = merged.wall_seconds.max(part.wall_seconds);
        busy += part.wall_seconds * part.jobs as f64;
        merged.jobs += part.jobs;
        for (name, count) in part.faults {
            merged.faults.entry(name).or_default().add(count);
        }
        merged.inherent_errors.add(part.inherent_errors);
        merged.coverage.merge(&part.coverage);
    }
    merged.failures.sort_by_key(|f| f.seed);
    merged.failures.truncate(MAX_LISTED_FAILURES);
    merged.runs_per_second = merged.seeds as f64 / merged.wall_seconds.max(1e-9);
    merged.time_compression = merged.simulated_seconds / busy.max(1e-9);
    merged
}
