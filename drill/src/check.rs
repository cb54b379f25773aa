//! After the heal: what the drill checks, from durable truth only.
//!
//! - every order acknowledged to a client (a `202` with its id) exists and reaches a
//!   terminal state (`completed` or `cancelled`) within the settle bound — asked of the
//!   shop's own API, as a customer would;
//! - the simulator's checkout invariants over the whole log read back from PostgreSQL
//!   (stock never oversold nor reserved twice, no order both shipped and refunded, …), the
//!   payment provider's books (no order captured twice; money held exactly for completed
//!   orders) and every acknowledged order's saga terminal — the same `CheckoutAudit` the
//!   simulator and `reprise real` use, under the same invariant names;
//! - on the broker: every message below a group's committed offset took effect or was
//!   dead-lettered, and the events topic carries each stream in version order (the
//!   `reprise real` consumer check) — and every poison message the drill produced is in a
//!   dead-letter topic.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reprise_core::EventId;
use reprise_host::inbox;
use reprise_postgres::{MigrationMode, PgConfig, PgEventStore};
use reprise_scenarios::audit::Finding;
use reprise_scenarios::checkout::invariants::CheckoutAudit;
use reprise_scenarios::checkout::order::OrderLine;
use reprise_scenarios::checkout::workload::{CheckoutWorkload, PlannedOrder};
use reprise_shop::providers::BooksDetail;
use serde::Serialize;
use tokio::time::Instant;

use crate::DrillError;
use crate::client::OrderOutcome;
use crate::http::Http;

/// How an acknowledged order looks at the end, as `GET /orders/{id}` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct FinalOrder {
    pub order_id: String,
    pub status: String,
    pub amount_cents: u64,
    /// Why a cancelled order was cancelled.
    pub reason: Option<String>,
}

/// Waits until every acknowledged order is terminal or `deadline` passes. Returns the final
/// view of each order found, and when the last one became terminal (from `since`).
pub async fn await_terminal(
    http: &Http,
    replicas: &[String],
    acknowledged: &[&OrderOutcome],
    since: Instant,
    deadline: Instant,
) -> (BTreeMap<String, FinalOrder>, Option<Duration>) {
    let mut pending: BTreeSet<String> = acknowledged
        .iter()
        .filter_map(|o| o.order_id.clone())
        .collect();
    let mut finals = BTreeMap::new();
    let mut round = 0_usize;
    loop {
        let mut still = BTreeSet::new();
        for id in &pending {
            round += 1;
            let replica = &replicas[round % replicas.len()];
            let view = http
                .get(&format!("{replica}/orders/{id}"), Duration::from_secs(3))
                .await
                .ok()
                .filter(|a| a.status.is_success())
                .and_then(|a| serde_json::from_slice::<serde_json::Value>(&a.body).ok());
            let final_order = view.map(|v| FinalOrder {
                order_id: id.clone(),
                status: v["status"].as_str().unwrap_or("unknown").to_owned(),
                amount_cents: v["amount_cents"].as_u64().unwrap_or(0),
                reason: v["reason"].as_str().map(str::to_owned),
            });
            match final_order {
                Some(order) if order.status == "completed" || order.status == "cancelled" => {
                    finals.insert(id.clone(), order);
                }
                Some(order) => {
                    finals.insert(id.clone(), order);
                    still.insert(id.clone());
                }
                None => {
                    still.insert(id.clone());
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            return (finals, Some(since.elapsed()));
        }
        if Instant::now() > deadline {
            return (finals, None);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until the log stops growing — no event appended for [`QUIET_FOR`] — or
/// `deadline`. An order's status turns terminal before its saga has finished its
/// bookkeeping (a compensation's confirmations still on the bus); the audit judges the
/// sagas, so it waits for the system to settle. A saga stuck retrying keeps appending, so
/// the wait ends at the deadline and the audit reports it. Returns when the log went
/// quiet, from `since`.
///
/// # Errors
/// The database cannot be reached.
pub async fn await_quiet(
    database_url: &str,
    schema: &str,
    since: Instant,
    deadline: Instant,
) -> Result<Option<Duration>, DrillError> {
    use sqlx::Connection as _;
    let mut connection = sqlx::PgConnection::connect(database_url)
        .await
        .map_err(|e| DrillError::Check(format!("cannot connect to the shop's database: {e}")))?;
    // The schema name is the drill's own constant, not input: safe to format in.
    let head = format!("SELECT coalesce(max(global_position), 0) FROM {schema}.events");
    let mut last: Option<(i64, Instant)> = None;
    loop {
        let position: i64 = sqlx::query_scalar(&head)
            .fetch_one(&mut connection)
            .await
            .map_err(|e| DrillError::Check(format!("cannot read the log's head: {e}")))?;
        let now = Instant::now();
        match last {
            Some((seen, at)) if seen == position => {
                if now - at >= QUIET_FOR {
                    return Ok(Some(at.saturating_duration_since(since)));
                }
            }
            _ => last = Some((position, now)),
        }
        if now > deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How long the log must not grow to count as settled: longer than the saga's re-issue
/// period (2 s) and a carrier's tracking round.
pub const QUIET_FOR: Duration = Duration::from_secs(5);

/// What the invariant checks looked at and found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Audit {
    pub events: u64,
    pub captures: usize,
    pub bus_messages: u64,
    pub bus_acknowledged_verified: u64,
    pub bus_dead_lettered: u64,
    pub bus_uncommitted: u64,
    /// `invariant: detail` for each violation.
    pub findings: Vec<String>,
}

/// Where the checks read.
#[derive(Clone, Debug)]
pub struct Sources {
    pub database_url: String,
    pub schema: String,
    pub payment_url: String,
    pub bootstrap: String,
    pub partitions: u32,
}

/// Runs the invariant checks over the log, the provider's books and the broker.
///
/// # Errors
/// A source cannot be read (the findings are in [`Audit::findings`]).
pub async fn audit(
    sources: &Sources,
    http: &Http,
    acknowledged: &[&OrderOutcome],
    finals: &BTreeMap<String, FinalOrder>,
) -> Result<Audit, DrillError> {
    let mut config = PgConfig::new(sources.database_url.clone());
    config.schema.clone_from(&sources.schema);
    config.migrations = MigrationMode::Verify;
    config.max_connections = 2;
    config.notify = false;
    let store = PgEventStore::connect(config)
        .await
        .map_err(|e| DrillError::Check(format!("cannot open the shop's store: {e}")))?;
    let events =
        reprise_live::read_log(&store, std::time::Instant::now() + Duration::from_secs(30))
            .await
            .map_err(|e| DrillError::Check(format!("cannot read the log: {e}")))?;

    let answer = http
        .get(
            &format!("{}/books/detail", sources.payment_url),
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| DrillError::Check(format!("cannot read the provider's books: {e}")))?;
    let detail: BooksDetail = serde_json::from_slice(&answer.body).map_err(|e| {
        DrillError::Check(format!(
            "the provider's books are not what /books/detail serves ({e}): {}",
            String::from_utf8_lossy(&answer.body)
        ))
    })?;
    let books = detail.to_books();

    let mut result = Audit {
        events: events.len() as u64,
        captures: books.charges.len(),
        ..Audit::default()
    };
    let mut findings: Vec<Finding> = Vec::new();
    let mut audit = CheckoutAudit::new();
    match audit.observe(&events) {
        Err(finding) => findings.push(finding),
        Ok(()) => {
            if let Err(finding) = audit.check_books(&books) {
                findings.push(finding);
            }
            let workload = acknowledged_workload(acknowledged, finals);
            if let Err(finding) = audit.check_settled(&workload, &books) {
                findings.push(finding);
            }
        }
    }
    let markers: BTreeSet<EventId> = events
        .iter()
        .filter(|e| e.stream.category() == inbox::CATEGORY)
        .map(|e| e.event_id)
        .collect();
    let bus = reprise_live::bus_check::check(
        sources.bootstrap.clone(),
        BTreeMap::new(),
        String::new(),
        sources.partitions,
        markers,
        // A full read-back of every topic; generous for a slow broker.
        Duration::from_secs(120),
    )
    .await;
    let mut unreadable = None;
    match bus {
        Ok((bus, bus_findings)) => {
            findings.extend(bus_findings);
            result.bus_messages = bus.messages;
            result.bus_acknowledged_verified = bus.acknowledged_verified;
            result.bus_dead_lettered = bus.dead_lettered;
            result.bus_uncommitted = bus.uncommitted;
        }
        // A broker that cannot be read back is a finding about the run, not a reason to
        // lose the report.
        Err(error) => unreadable = Some(format!("the broker cannot be read back: {error}")),
    }
    result.findings = findings.iter().map(ToString::to_string).collect();
    result.findings.extend(unreadable);
    Ok(result)
}

/// The acknowledged orders as the audit's workload: what each client asked for, at the
/// amount the shop priced it.
fn acknowledged_workload(
    acknowledged: &[&OrderOutcome],
    finals: &BTreeMap<String, FinalOrder>,
) -> CheckoutWorkload {
    let orders = acknowledged
        .iter()
        .filter_map(|outcome| {
            let id = outcome.order_id.clone()?;
            let amount = finals.get(&id).map_or(0, |f| f.amount_cents);
            Some(PlannedOrder {
                id,
                line: OrderLine {
                    sku: outcome.request.sku.to_owned(),
                    quantity: outcome.request.quantity,
                    amount,
                    card: outcome.request.card,
                },
                at: Duration::ZERO,
            })
        })
        .collect();
    CheckoutWorkload {
        stock: Vec::new(),
        orders,
    }
}
