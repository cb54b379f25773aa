//! What a run measured, second by second and in total.
//!
//! Latencies are HdrHistograms in microseconds (1 µs to 1 h, three significant digits),
//! counted from each request's *scheduled* start. A request is filed under the second in
//! which it was scheduled (so a stall shows up where the users met it); completions and
//! failures under the second in which they happened (what the service achieved).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::Failure;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, 3_600_000_000)
}

/// One second of a run.
#[derive(Debug)]
struct Second {
    offered: u64,
    completed: u64,
    failures: BTreeMap<String, u64>,
    edge: Histogram<u64>,
    end_to_end: Histogram<u64>,
}

impl Second {
    fn new() -> Self {
        Second {
            offered: 0,
            completed: 0,
            failures: BTreeMap::new(),
            edge: histogram(),
            end_to_end: histogram(),
        }
    }
}

#[derive(Debug)]
struct Inner {
    seconds: Vec<Second>,
    edge: Histogram<u64>,
    end_to_end: Histogram<u64>,
    failures: BTreeMap<String, u64>,
    accepted: u64,
    reads: u64,
    terminal: BTreeMap<String, u64>,
    end_to_end_lost: u64,
}

/// Shared by every request task.
#[derive(Debug)]
pub struct Recorder(Mutex<Inner>);

impl Recorder {
    #[must_use]
    pub fn new(duration: Duration) -> Self {
        let seconds = usize::try_from(duration.as_secs()).unwrap_or(0) + 120;
        Recorder(Mutex::new(Inner {
            seconds: (0..seconds).map(|_| Second::new()).collect(),
            edge: histogram(),
            end_to_end: histogram(),
            failures: BTreeMap::new(),
            accepted: 0,
            reads: 0,
            terminal: BTreeMap::new(),
            end_to_end_lost: 0,
        }))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut inner = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut inner)
    }

    fn second(inner: &mut Inner, at: Duration) -> &mut Second {
        let index = usize::try_from(at.as_secs()).unwrap_or(usize::MAX);
        let last = inner.seconds.len() - 1;
        &mut inner.seconds[index.min(last)]
    }

    /// A request was scheduled at `scheduled`.
    pub fn offered(&self, scheduled: Duration) {
        self.with(|inner| Self::second(inner, scheduled).offered += 1);
    }

    /// A placement scheduled at `scheduled` was accepted at `done`.
    pub fn accepted(&self, scheduled: Duration, done: Duration) {
        let latency = micros(done.saturating_sub(scheduled));
        self.with(|inner| {
            inner.accepted += 1;
            let _ = inner.edge.record(latency);
            let _ = Self::second(inner, scheduled).edge.record(latency);
            Self::second(inner, done).completed += 1;
        });
    }

    /// A read (`GET /orders/{id}` of the mix) answered.
    pub fn read(&self, scheduled: Duration, done: Duration) {
        let latency = micros(done.saturating_sub(scheduled));
        self.with(|inner| {
            inner.reads += 1;
            let _ = inner.edge.record(latency);
            let _ = Self::second(inner, scheduled).edge.record(latency);
            Self::second(inner, done).completed += 1;
        });
    }

    /// A request failed at `done`.
    pub fn failed(&self, failure: &Failure, done: Duration) {
        let kind = failure.to_string();
        self.with(|inner| {
            *inner.failures.entry(kind.clone()).or_default() += 1;
            *Self::second(inner, done).failures.entry(kind).or_default() += 1;
        });
    }

    /// A sampled order scheduled at `scheduled` was seen in a terminal `status` at `seen`.
    pub fn terminal(&self, scheduled: Duration, seen: Duration, status: &str) {
        let latency = micros(seen.saturating_sub(scheduled));
        self.with(|inner| {
            *inner.terminal.entry(status.to_owned()).or_default() += 1;
            let _ = inner.end_to_end.record(latency);
            let _ = Self::second(inner, scheduled).end_to_end.record(latency);
        });
    }

    /// A sampled order never reached a terminal status within the wait.
    pub fn never_terminal(&self) {
        self.with(|inner| inner.end_to_end_lost += 1);
    }

    /// Totals and the per-second timeline up to `seconds`.
    #[must_use]
    pub fn summary(&self, seconds: usize) -> Measured {
        self.with(|inner| {
            let timeline = inner
                .seconds
                .iter()
                .take(seconds)
                .enumerate()
                .map(|(second, s)| SecondView {
                    second: second as u64,
                    offered: s.offered,
                    completed: s.completed,
                    failed: s.failures.values().sum(),
                    edge_ms: Percentiles::of(&s.edge),
                    end_to_end_ms: Percentiles::of(&s.end_to_end),
                })
                .collect();
            Measured {
                accepted: inner.accepted,
                reads: inner.reads,
                failures: inner.failures.clone(),
                edge_ms: Percentiles::of(&inner.edge),
                end_to_end_ms: Percentiles::of(&inner.end_to_end),
                end_to_end_samples: inner.end_to_end.len(),
                end_to_end_never_terminal: inner.end_to_end_lost,
                terminal: inner.terminal.clone(),
                timeline,
            }
        })
    }
}

/// Latency percentiles in milliseconds; `None` when nothing was recorded.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        #[allow(clippy::cast_precision_loss)]
        let ms = |micros: u64| Some(micros as f64 / 1000.0);
        Percentiles {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p95: ms(histogram.value_at_quantile(0.95)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// One second of the timeline.
#[derive(Clone, Debug, Serialize)]
pub struct SecondView {
    pub second: u64,
    pub offered: u64,
    pub completed: u64,
    pub failed: u64,
    pub edge_ms: Percentiles,
    pub end_to_end_ms: Percentiles,
}

/// What the requests measured.
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    pub accepted: u64,
    pub reads: u64,
    pub failures: BTreeMap<String, u64>,
    pub edge_ms: Percentiles,
    pub end_to_end_ms: Percentiles,
    pub end_to_end_samples: u64,
    pub end_to_end_never_terminal: u64,
    pub terminal: BTreeMap<String, u64>,
    pub timeline: Vec<SecondView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_counts_from_the_scheduled_start_and_files_by_second() {
        let recorder = Recorder::new(Duration::from_secs(3));
        recorder.offered(Duration::from_millis(500));
        // Scheduled at 0.5 s, answered at 2.5 s: 2 s of latency, filed under second 0,
        // completed in second 2.
        recorder.accepted(Duration::from_millis(500), Duration::from_millis(2500));
        recorder.failed(&Failure::Timeout, Duration::from_millis(1200));
        let measured = recorder.summary(3);
        assert_eq!(measured.accepted, 1);
        assert_eq!(measured.timeline[0].offered, 1);
        assert_eq!(measured.timeline[2].completed, 1);
        assert_eq!(measured.timeline[1].failed, 1);
        let p50 = measured.timeline[0].edge_ms.p50.unwrap();
        assert!((1999.0..=2001.0).contains(&p50), "{p50}");
        assert_eq!(measured.failures["timeout"], 1);
    }
}
