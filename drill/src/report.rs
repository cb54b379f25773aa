//! What a drill reports: the faults with their times and the recovery after each, the
//! load offered and acknowledged, and the verdict of every check — printed for a person,
//! written as JSON for `docs/reliability.md` and for scripts.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::check::Audit;
use crate::client::OrderOutcome;
use crate::poison::Produced;

/// One injected fault.
#[derive(Clone, Debug, Serialize)]
pub struct FaultRecord {
    pub description: String,
    /// Seconds after the load started.
    pub at: f64,
    pub healed_at: f64,
    /// From the heal until the first order first tried after the heal was acknowledged.
    pub recovered_after_secs: Option<f64>,
    /// Orders acknowledged between the fault and its heal.
    pub acknowledged_during: usize,
    /// Failed attempts started between the fault and its heal.
    pub failed_attempts_during: usize,
    /// Extra facts (a restarted replica's time to ready, poison offsets).
    pub notes: Vec<String>,
}

/// Counts over the client's orders.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadSummary {
    pub offered: usize,
    pub acknowledged: usize,
    /// Every attempt failed: the shop owes these nothing.
    pub not_acknowledged: usize,
    pub attempts: u64,
    /// Failed attempts by kind (`connection`, `timeout`, `503`, …).
    pub failures: BTreeMap<String, u64>,
}

impl LoadSummary {
    #[must_use]
    pub fn of(outcomes: &[OrderOutcome]) -> Self {
        let mut summary = LoadSummary {
            offered: outcomes.len(),
            ..LoadSummary::default()
        };
        for outcome in outcomes {
            summary.attempts += u64::from(outcome.attempts);
            if outcome.order_id.is_some() {
                summary.acknowledged += 1;
            } else {
                summary.not_acknowledged += 1;
            }
            for failure in &outcome.failures {
                *summary.failures.entry(failure.clone()).or_default() += 1;
            }
        }
        summary
    }
}

/// The drill's report.
#[derive(Clone, Debug, Serialize)]
pub struct DrillReport {
    pub plan: String,
    pub simulator_plan: Option<String>,
    pub seed: u64,
    pub rate_per_sec: f64,
    pub duration_secs: f64,
    pub load: LoadSummary,
    pub faults: Vec<FaultRecord>,
    /// Processes that ended without being killed by the drill (a crash), with when and
    /// how; each is also a finding.
    pub unexpected_exits: Vec<String>,
    /// Acknowledged orders that reached `completed` / `cancelled`.
    pub terminal: usize,
    pub completed: usize,
    pub cancelled: usize,
    /// Cancelled orders by the reason the shop gives.
    pub cancelled_reasons: BTreeMap<String, usize>,
    /// From the last heal until every acknowledged order was terminal; `None` if some
    /// never were within the bound.
    pub settled_after_last_heal_secs: Option<f64>,
    pub settle_bound_secs: f64,
    /// From the last heal until the log stopped growing (the sagas' bookkeeping done);
    /// `None` if it never did within the bound.
    pub quiet_after_last_heal_secs: Option<f64>,
    pub audit: Audit,
    pub poison: Vec<Produced>,
    /// Every violation, named; empty when the drill passed.
    pub findings: Vec<String>,
    /// The drill's directory: every process's log (kept when the drill fails or with
    /// `--keep`).
    pub dir: PathBuf,
    pub dir_kept: bool,
    /// `/proc/loadavg` at the end (the figures mean little on a machine busy elsewhere).
    pub load_average: String,
}

impl DrillReport {
    #[must_use]
    pub fn passed(&self) -> bool {
        self.findings.is_empty()
    }
}

impl fmt::Display for DrillReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "drill {}{}: {} orders/s for {:.0}s, seed {}",
            self.plan,
            self.simulator_plan
                .as_ref()
                .map_or(String::new(), |p| format!(" (simulator: {p})")),
            self.rate_per_sec,
            self.duration_secs,
            self.seed
        )?;
        writeln!(f, "faults:")?;
        for fault in &self.faults {
            writeln!(
                f,
                "  {:>6.1}s → {:>6.1}s  {}  | acknowledged meanwhile {}, failed attempts {}, recovered {}",
                fault.at,
                fault.healed_at,
                fault.description,
                fault.acknowledged_during,
                fault.failed_attempts_during,
                fault
                    .recovered_after_secs
                    .map_or("never".to_string(), |s| format!("{s:.1}s after the heal")),
            )?;
            for note in &fault.notes {
                writeln!(f, "           {note}")?;
            }
        }
        let failures: Vec<String> = self
            .load
            .failures
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        writeln!(
            f,
            "orders: offered {}, acknowledged {}, never acknowledged {} ({} attempts; failed attempts: {})",
            self.load.offered,
            self.load.acknowledged,
            self.load.not_acknowledged,
            self.load.attempts,
            if failures.is_empty() {
                "none".to_string()
            } else {
                failures.join(", ")
            }
        )?;
        writeln!(
            f,
            "acknowledged orders terminal: {} of {} (completed {}, cancelled {}{}); {}",
            self.terminal,
            self.load.acknowledged,
            self.completed,
            self.cancelled,
            if self.cancelled_reasons.is_empty() {
                String::new()
            } else {
                format!(
                    ": {}",
                    self.cancelled_reasons
                        .iter()
                        .map(|(reason, n)| format!("{reason} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            self.settled_after_last_heal_secs.map_or(
                format!(
                    "NOT all terminal {:.0}s after the last heal",
                    self.settle_bound_secs
                ),
                |s| format!("all terminal {s:.1}s after the last heal")
            )
        )?;
        writeln!(
            f,
            "log quiet (nothing appended for 5 s): {}",
            self.quiet_after_last_heal_secs
                .map_or("not within the bound".to_string(), |s| format!(
                    "{s:.1}s after the last heal"
                ))
        )?;
        writeln!(
            f,
            "log: {} events; provider: {} captures; broker: {} messages, {} acknowledged and verified, {} dead-lettered, {} not yet committed",
            self.audit.events,
            self.audit.captures,
            self.audit.bus_messages,
            self.audit.bus_acknowledged_verified,
            self.audit.bus_dead_lettered,
            self.audit.bus_uncommitted
        )?;
        if !self.poison.is_empty() {
            writeln!(
                f,
                "poison produced: {} messages ({})",
                self.poison.len(),
                self.poison
                    .iter()
                    .map(|p| format!("{}@{}/{}", p.shape, p.partition, p.offset))
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
        }
        for exit in &self.unexpected_exits {
            writeln!(f, "unexpected exit: {exit}")?;
        }
        if self.findings.is_empty() {
            writeln!(
                f,
                "PASSED: nothing acknowledged lost, nothing captured twice, every invariant holds"
            )?;
        } else {
            writeln!(f, "FAILED: {} finding(s)", self.findings.len())?;
            for finding in &self.findings {
                writeln!(f, "  - {finding}")?;
            }
        }
        write!(
            f,
            "directory: {}{}",
            self.dir.display(),
            if self.dir_kept {
                " (kept: every process's log is there)"
            } else {
                " (removed)"
            }
        )
    }
}
