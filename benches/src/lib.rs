//! # reprise-benches
//!
//! Criterion benchmarks of the framework's own overhead: reducers, `Store::send`, and the
//! effect round trip (reduce → spawn → run → feed back → reduce) on the production tokio
//! runtime. Run them with `cargo bench -p reprise-benches`; `docs/performance.md` records
//! the figures and the command that produced them.
//!
//! [`BenchFeature`] is deliberately trivial — its reducer adds to a number and its effects
//! are ready futures — so that what is measured is the framework, not the feature.

use std::time::Duration;

use reprise_core::{Effect, Effects, Reducer, effects};

/// The benchmarked feature's actions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BenchAction {
    /// Changes state, no effect.
    Add(u64),
    /// One async effect whose result comes back as `Add`.
    Fetch(u64),
    /// `n` async effects, each feeding back one `Add(1)`.
    FanOut(usize),
    /// A timer of `Duration` that feeds back `Add(1)`.
    After(Duration),
}

/// A feature that costs as little as a feature can.
#[derive(Clone, Copy, Debug, Default)]
pub struct BenchFeature;

impl Reducer for BenchFeature {
    type State = u64;
    type Action = BenchAction;
    type Env = ();

    fn reduce(&self, total: &mut u64, action: BenchAction, (): &()) -> Effects<BenchAction> {
        match action {
            BenchAction::Add(n) => {
                *total += n;
                effects![]
            }
            BenchAction::Fetch(n) => {
                effects![Effect::run(
                    "fetch",
                    async move { Some(BenchAction::Add(n)) }
                )]
            }
            BenchAction::FanOut(n) => (0..n)
                .map(|_| Effect::run("fan-out", async { Some(BenchAction::Add(1)) }))
                .collect(),
            BenchAction::After(delay) => {
                effects![Effect::timer("after", delay, BenchAction::Add(1))]
            }
        }
    }

    fn action_name(&self, action: &BenchAction) -> &'static str {
        match action {
            BenchAction::Add(_) => "Add",
            BenchAction::Fetch(_) => "Fetch",
            BenchAction::FanOut(_) => "FanOut",
            BenchAction::After(_) => "After",
        }
    }
}
