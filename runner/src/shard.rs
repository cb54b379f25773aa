//! Splitting one sweep over many machines without a coordinator.
//!
//! A shard is named `K/N` (1-based, `1 ≤ K ≤ N`). Seed `start + i` (the sweep's i-th
//! seed, `i` from 0) belongs to shard `(i mod N) + 1`: a pure function of the sweep's
//! range and N, so every machine computes its own share from its index alone, the shares
//! are disjoint, their union is the whole range, and a seed runs on the same shard every
//! time. Striding (rather than cutting the range into blocks) spreads the slow seeds and
//! the failing ones evenly. The determinism sample is chosen by `i` too, so the union of
//! the shards re-runs exactly the seeds one unsharded sweep would.
//!
//! A batch engine (a Kubernetes Indexed Job, a CI matrix) starts the N shards and keeps
//! their JSON results; `merge` folds them into the summary one sweep prints
//! (`docs/distributed-sweeps.md`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Shard `index` of `count` (1-based). See the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    /// Parses `K/N`.
    ///
    /// # Errors
    /// Anything but two numbers with `1 ≤ K ≤ N`, with a message saying which rule broke.
    pub fn parse(text: &str) -> Result<Self, String> {
        let usage = || format!("--shard takes K/N with 1 <= K <= N (e.g. 3/8), not {text:?}");
        let (k, n) = text.split_once('/').ok_or_else(usage)?;
        let index: u64 = k.trim().parse().map_err(|_| usage())?;
        let count: u64 = n.trim().parse().map_err(|_| usage())?;
        if count == 0 {
            return Err(format!(
                "--shard {text}: the shard count N must be at least 1"
            ));
        }
        if index == 0 {
            return Err(format!(
                "--shard {text}: shards are numbered from 1 (1/{count} … {count}/{count}); \
                 with a 0-based index such as JOB_COMPLETION_INDEX, pass index + 1"
            ));
        }
        if index > count {
            return Err(format!(
                "--shard {text}: there are only {count} shard(s), so K must be at most {count}"
            ));
        }
        Ok(Shard { index, count })
    }

    /// Whether the sweep's `i`-th seed (from 0) is this shard's.
    #[must_use]
    pub fn owns(self, i: u64) -> bool {
        i % self.count == self.index - 1
    }

    /// How many of a sweep's `seeds` seeds are this shard's.
    #[must_use]
    pub fn share(self, seeds: u64) -> u64 {
        let first = self.index - 1;
        if seeds <= first {
            0
        } else {
            (seeds - first).div_ceil(self.count)
        }
    }

    /// The sweep index (from 0) of this shard's `j`-th seed.
    #[must_use]
    pub fn index_of(self, j: u64) -> u64 {
        (self.index - 1) + j * self.count
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_with_reasons() {
        assert_eq!(Shard::parse("3/8"), Ok(Shard { index: 3, count: 8 }));
        assert_eq!(Shard::parse("1/1"), Ok(Shard { index: 1, count: 1 }));
        assert!(Shard::parse("0/4").unwrap_err().contains("numbered from 1"));
        assert!(Shard::parse("5/4").unwrap_err().contains("only 4 shard"));
        assert!(Shard::parse("1/0").unwrap_err().contains("at least 1"));
        assert!(Shard::parse("2").unwrap_err().contains("K/N"));
        assert!(Shard::parse("a/b").unwrap_err().contains("K/N"));
        assert!(Shard::parse("-1/4").unwrap_err().contains("K/N"));
    }

    #[test]
    fn shares_are_disjoint_and_cover_the_range() {
        for seeds in [0, 1, 2, 7, 10, 11] {
            for count in 1..=5 {
                let mut seen = vec![0u32; usize::try_from(seeds).unwrap()];
                let mut total = 0;
                for index in 1..=count {
                    let shard = Shard { index, count };
                    let share = shard.share(seeds);
                    total += share;
                    for j in 0..share {
                        let i = shard.index_of(j);
                        assert!(shard.owns(i) && i < seeds);
                        seen[usize::try_from(i).unwrap()] += 1;
                    }
                }
                assert_eq!(total, seeds);
                assert!(
                    seen.iter().all(|&n| n == 1),
                    "{seeds} seeds, {count} shards"
                );
            }
        }
    }
}
