//! The service's side of a run, sampled once a second: its backlog (from its own
//! `/metrics`) and its memory (resident set size from `/proc`).
//!
//! Backlog is measured as the service itself counts it: orders placed but not yet
//! terminal (`shop_orders_placed_total − shop_orders_terminal_total`), messages consumed
//! but not yet committed (`reprise_bus_uncommitted_messages`) and dead letters pending. A
//! healthy run keeps all three flat; a service falling behind shows the first one
//! growing long before requests fail.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::client::Api;

/// The counters a run reads from `/metrics`, summed over their labels.
pub const PLACED: &str = "shop_orders_placed_total";
pub const TERMINAL: &str = "shop_orders_terminal_total";
pub const UNCOMMITTED: &str = "reprise_bus_uncommitted_messages";
pub const DEAD_LETTERS: &str = "reprise_dead_letters_pending";
pub const APPENDED: &str = "reprise_pg_events_appended_total";
pub const PUBLISHED: &str = "reprise_bus_published_total";
pub const CONSUMED: &str = "reprise_bus_consumed_total";
pub const HTTP_REQUESTS: &str = "http_server_request_duration_seconds_count";
const WATCHED: [&str; 8] = [
    PLACED,
    TERMINAL,
    UNCOMMITTED,
    DEAD_LETTERS,
    APPENDED,
    PUBLISHED,
    CONSUMED,
    HTTP_REQUESTS,
];

/// Sums of the watched metrics in one exposition.
#[must_use]
pub fn parse(exposition: &str) -> BTreeMap<&'static str, f64> {
    let mut sums = BTreeMap::new();
    for line in exposition.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let Some(watched) = WATCHED.iter().find(|w| **w == name) else {
            continue;
        };
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        *sums.entry(*watched).or_insert(0.0) += value;
    }
    sums
}

/// Resident set size of `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
#[must_use]
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// One sample of the service.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    pub second: f64,
    /// Placed and not yet terminal.
    pub orders_in_flight: Option<f64>,
    pub uncommitted_messages: Option<f64>,
    pub dead_letters: Option<f64>,
    /// Resident memory of the watched processes together, MiB.
    pub rss_mib: Option<f64>,
    #[serde(skip)]
    pub counters: BTreeMap<&'static str, f64>,
}

/// Samples the service once a second until `stop` fires; every sample, in order.
pub async fn watch(
    api: Api,
    pids: Vec<u32>,
    started: tokio::time::Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => {
                samples.push(sample(&api, &pids, started).await);
                return samples;
            }
        }
        samples.push(sample(&api, &pids, started).await);
    }
}

async fn sample(api: &Api, pids: &[u32], started: tokio::time::Instant) -> Sample {
    let second = started.elapsed().as_secs_f64();
    let counters = api
        .metrics()
        .await
        .map(|text| parse(&text))
        .unwrap_or_default();
    let get = |name| counters.get(name).copied();
    let orders_in_flight = match (get(PLACED), get(TERMINAL)) {
        (Some(placed), terminal) => Some((placed - terminal.unwrap_or(0.0)).max(0.0)),
        _ => None,
    };
    #[allow(clippy::cast_precision_loss)]
    let rss_mib = (!pids.is_empty())
        .then(|| pids.iter().filter_map(|pid| rss_kib(*pid)).sum::<u64>() as f64 / 1024.0);
    Sample {
        second,
        orders_in_flight,
        uncommitted_messages: get(UNCOMMITTED),
        dead_letters: get(DEAD_LETTERS),
        rss_mib,
        counters,
    }
}

/// Least-squares slope of `(x, y)` points, per unit of `x`; `None` under two points.
#[must_use]
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    #[allow(clippy::cast_precision_loss)]
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let covariance: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let variance: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    (variance > 0.0).then(|| covariance / variance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_metrics_are_summed_over_labels_and_others_ignored() {
        let text = "# HELP shop_orders_placed_total Orders\n\
                    shop_orders_placed_total 12\n\
                    shop_orders_terminal_total{status=\"completed\"} 7\n\
                    shop_orders_terminal_total{status=\"cancelled\"} 2\n\
                    reprise_bus_uncommitted_messages{group=\"a b\"} 3\n\
                    shop_orders_placed_total_other 99\n";
        let sums = parse(text);
        assert_eq!(sums[PLACED], 12.0);
        assert_eq!(sums[TERMINAL], 9.0);
        assert_eq!(sums[UNCOMMITTED], 3.0);
        assert_eq!(sums.len(), 3);
    }

    #[test]
    fn the_slope_of_a_line_is_its_gradient() {
        let points: Vec<(f64, f64)> = (0..10)
            .map(|x| (f64::from(x), 3.0 * f64::from(x) + 1.0))
            .collect();
        let slope = slope(&points).unwrap();
        assert!((slope - 3.0).abs() < 1e-9, "{slope}");
        assert_eq!(super::slope(&[(1.0, 1.0)]), None);
    }

    #[test]
    fn this_process_has_a_resident_set() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }
}
