//! Health: three questions, three endpoints, one shape —
//! `{"status": "ok"|"fail", "checks": {name: {"status", "detail"}}}`, 200 when every
//! check is ok, 503 otherwise.
//!
//! | endpoint | question | checks |
//! |---|---|---|
//! | `/health/live` | is the process able to answer at all? (restart it if not) | `process` |
//! | `/health/startup` | has start-up completed? | `migrations` (schema verified), `broker` (answered, topics present), `catalog` (stocked), `services` (started), `sagas` (every saga instance recovered) |
//! | `/health/ready` | should it get traffic now? | `startup`, `shutdown` (not draining), `postgres` (a query answered within 1 s), `broker` (a metadata request answered within 1.5 s), `consumers` (every consumer group holds partitions in this process), `breakers` (no open circuit breaker forcing refusal) |
//!
//! "Sagas recovered" is observed, not assumed: `reprise_host`'s saga service subscribes
//! its consumer only after `SagaHost::recover_all` returned, so the saga group's first
//! subscription in this process ([`crate::bus::ShopBus::has_subscribed`]) marks it.
//!
//! "Consumers": each of the five groups (orders, inventory, payments, shipping,
//! saga) must hold at least one partition in this process. A replica beyond the
//! partition count would stay unready, so run at most `--partitions` replicas.
//!
//! "Breakers": while the payment provider's or the carrier's breaker is open, the
//! service refuses new orders (`POST /orders` answers 503 with `Retry-After`: accepting
//! them would only produce cancellations) and readiness says so.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use reprise_core::resilience::BreakerState;
use reprise_core::{Clock, Resilience, Timestamp};
use reprise_scenarios::checkout::resilience::{CARRIER, PAYMENT_PROVIDER};
use reprise_scenarios::checkout::services::groups;
use serde::Serialize;

use crate::config::pg_address;
use crate::serve::{Lifecycle, Running};

/// Bound on the PostgreSQL check. Both checks run concurrently and stay under a second
/// and a half: probes commonly time out after 2 s.
const POSTGRES_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Bound on the broker check.
const BROKER_TIMEOUT: Duration = Duration::from_millis(1_500);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Fail,
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub status: Status,
    pub detail: String,
}

impl Check {
    #[must_use]
    pub fn ok(detail: impl Into<String>) -> Self {
        Check {
            status: Status::Ok,
            detail: detail.into(),
        }
    }

    #[must_use]
    pub fn fail(detail: impl Into<String>) -> Self {
        Check {
            status: Status::Fail,
            detail: detail.into(),
        }
    }

    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }
}

/// A health answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub status: Status,
    pub checks: BTreeMap<&'static str, Check>,
}

impl Report {
    #[must_use]
    pub fn of(checks: BTreeMap<&'static str, Check>) -> Self {
        let status = if checks.values().all(Check::is_ok) {
            Status::Ok
        } else {
            Status::Fail
        };
        Report { status, checks }
    }

    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }
}

impl IntoResponse for Report {
    fn into_response(self) -> Response {
        let status = if self.is_ok() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let mut response = crate::problem::json(status, &self);
        response.headers_mut().insert(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        );
        response
    }
}

/// `/health/live`.
#[must_use]
pub fn live(lifecycle: &Lifecycle) -> Report {
    let uptime = lifecycle.uptime().as_secs();
    let mut detail = format!("up {uptime}s");
    if lifecycle.is_draining() {
        detail.push_str(", shutting down");
    }
    Report::of(BTreeMap::from([("process", Check::ok(detail))]))
}

/// `/health/startup`.
#[must_use]
pub fn startup(lifecycle: &Lifecycle) -> Report {
    let mut checks = lifecycle.steps();
    let sagas = match lifecycle.running() {
        Some(running) if running.bus.has_subscribed(groups::SAGA) => {
            Check::ok("every saga instance recovered from its stream (deadlines re-armed)")
        }
        Some(_) => Check::fail("recovering saga instances"),
        None => Check::fail("not started yet"),
    };
    checks.insert("sagas", sagas);
    Report::of(checks)
}

/// `/health/ready`.
pub async fn ready(lifecycle: &Lifecycle) -> Report {
    let mut checks = BTreeMap::new();
    checks.insert(
        "shutdown",
        if lifecycle.is_draining() {
            Check::fail("draining: this instance is shutting down")
        } else {
            Check::ok("accepting requests")
        },
    );
    let started = startup(lifecycle);
    let pending: Vec<&str> = started
        .checks
        .iter()
        .filter(|(_, c)| !c.is_ok())
        .map(|(name, _)| *name)
        .collect();
    checks.insert(
        "startup",
        if pending.is_empty() {
            Check::ok("complete")
        } else {
            Check::fail(format!("waiting for: {}", pending.join(", ")))
        },
    );
    match lifecycle.running() {
        Some(running) => {
            let (postgres, broker) = tokio::join!(postgres(running), broker(running));
            checks.insert("postgres", postgres);
            checks.insert("broker", broker);
            checks.insert("consumers", consumers(running));
            let resilience = &running.desk.platform.resilience;
            checks.insert("breakers", breakers(resilience, running.runtime.now()).0);
        }
        None => {
            for name in ["postgres", "broker", "consumers", "breakers"] {
                checks.insert(name, Check::fail("not started yet"));
            }
        }
    }
    Report::of(checks)
}

async fn postgres(running: &Running) -> Check {
    let address = pg_address(&running.config.postgres.url);
    let query = sqlx::query("SELECT 1").execute(running.store.pool());
    match tokio::time::timeout(POSTGRES_TIMEOUT, query).await {
        Ok(Ok(_)) => {
            let pool = running.store.pool_stats();
            Check::ok(format!(
                "{address} answered (schema {}); API pool {} open, {} idle, max {}",
                running.config.postgres.schema, pool.size, pool.idle, pool.max_connections
            ))
        }
        Ok(Err(error)) => Check::fail(format!("{address}: {error}")),
        Err(_) => Check::fail(format!("{address}: no answer within {POSTGRES_TIMEOUT:?}")),
    }
}

async fn broker(running: &Running) -> Check {
    let bootstrap = &running.config.kafka.bootstrap_servers;
    match tokio::time::timeout(BROKER_TIMEOUT, running.bus.kafka().check_connection()).await {
        Ok(Ok(())) => Check::ok(format!("{bootstrap} answered a metadata request")),
        Ok(Err(error)) => Check::fail(format!("{bootstrap}: {error}")),
        Err(_) => Check::fail(format!("{bootstrap}: no answer within {BROKER_TIMEOUT:?}")),
    }
}

fn consumers(running: &Running) -> Check {
    let held: Vec<(&str, usize)> = groups::ALL
        .iter()
        .map(|(group, _)| (*group, running.bus.partitions_held(group)))
        .collect();
    let text = held
        .iter()
        .map(|(group, n)| format!("{group} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    if held.iter().all(|(_, n)| *n > 0) {
        Check::ok(format!("partitions held: {text}"))
    } else if running.bus.is_draining() {
        Check::fail(format!("draining; partitions held: {text}"))
    } else {
        Check::fail(format!("waiting for partition assignment: {text}"))
    }
}

/// The breakers' check, and how long until the last open one lets a probe through.
#[must_use]
pub fn breakers(resilience: &Resilience, now: Timestamp) -> (Check, Option<Duration>) {
    let mut open_for: Option<Duration> = None;
    let mut parts = Vec::new();
    for dependency in [PAYMENT_PROVIDER, CARRIER] {
        let state = resilience
            .breaker(dependency)
            .map_or(BreakerState::Closed, |b| b.state(now));
        match state {
            BreakerState::Open { until } => {
                let left = until.saturating_since(now);
                open_for = Some(open_for.map_or(left, |d| d.max(left)));
                parts.push(format!("{dependency} open for {}ms", left.as_millis()));
            }
            other => parts.push(format!("{dependency} {}", other.as_str())),
        }
    }
    let text = parts.join(", ");
    let check = if open_for.is_some() {
        Check::fail(format!("refusing orders: {text}"))
    } else {
        Check::ok(text)
    };
    (check, open_for)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_fails_when_any_check_fails() {
        let ok = Report::of(BTreeMap::from([("a", Check::ok("fine"))]));
        assert!(ok.is_ok());
        let failing = Report::of(BTreeMap::from([
            ("a", Check::ok("fine")),
            ("b", Check::fail("broken")),
        ]));
        assert!(!failing.is_ok());
        let value = serde_json::to_value(&failing).unwrap();
        assert_eq!(value["status"], "fail");
        assert_eq!(value["checks"]["b"]["status"], "fail");
        assert_eq!(value["checks"]["b"]["detail"], "broken");
        assert_eq!(
            failing.into_response().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn before_start_up_nothing_is_ready_but_the_process_is_live() {
        let lifecycle = Lifecycle::new();
        assert!(live(&lifecycle).is_ok());
        let started = startup(&lifecycle);
        assert!(!started.is_ok());
        assert!(started.checks.contains_key("sagas"));
        assert!(started.checks.contains_key("migrations"));
    }
}
