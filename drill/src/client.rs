//! The drill's customers: a steady stream of orders, each placed the way a careful client
//! places it — with an `Idempotency-Key`, retried (same key, any replica) until the shop
//! answers or the client gives up.
//!
//! This is not the load generator (`reprise-load`), which measures latency and must never
//! retry (a retry hides the failure it should count). A drill asks a different question —
//! *is anything the shop acknowledged ever lost or done twice?* — so its client records, for
//! every order, whether and when a `202` came back, and under which id. An order whose
//! every attempt failed was never acknowledged; the shop owes it nothing (it may still
//! exist: the answer can be lost after the placement).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tokio::time::Instant;

use crate::http::{CallError, Http};

/// The SKUs of the shop's catalog, with the share of orders for each (the scarce print
/// makes out-of-stock compensations happen).
const SKUS: [(&str, u32); 4] = [
    ("espresso-cup", 40),
    ("pour-over-kit", 25),
    ("beans-1kg", 33),
    ("limited-print", 2),
];
/// A client keeps retrying one order for this long.
const GIVE_UP_AFTER: Duration = Duration::from_secs(45);
/// Per attempt.
const ATTEMPT_DEADLINE: Duration = Duration::from_secs(5);

/// What the client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OrderRequest {
    pub key: String,
    pub customer: String,
    pub sku: &'static str,
    pub quantity: u32,
    pub card: u32,
}

/// How one order ended at the client.
#[derive(Clone, Debug, Serialize)]
pub struct OrderOutcome {
    pub request: OrderRequest,
    /// Seconds after the load started.
    pub first_attempt_at: f64,
    pub attempts: u32,
    /// The order id of the `202`, when acknowledged.
    pub order_id: Option<String>,
    /// Seconds after the load started.
    pub acknowledged_at: Option<f64>,
    /// Why the attempts failed, by kind (`connection`, `timeout`, `503`, …).
    pub failures: Vec<String>,
    /// Answers that contradict each other or the contract (another id for the same key,
    /// a 4xx for a valid order): each is a finding.
    pub contradictions: Vec<String>,
}

/// Where the shop's replicas listen; a replica is tried in turn.
#[derive(Clone, Debug)]
pub struct Replicas(pub Vec<String>);

/// Runs the steady load: `rate` orders per second for `duration`, each retried until
/// acknowledged or [`GIVE_UP_AFTER`]. Returns every order's outcome once every client is
/// done.
pub async fn run_load(
    http: Http,
    replicas: Replicas,
    rate: f64,
    duration: Duration,
    seed: u64,
    started: Instant,
) -> Vec<OrderOutcome> {
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let total = (rate * duration.as_secs_f64()).floor() as u64;
    let mut clients = tokio::task::JoinSet::new();
    for n in 0..total {
        let at = started + Duration::from_secs_f64(n as f64 / rate);
        let request = draw(&mut rng, seed, n);
        let http = http.clone();
        let replicas = replicas.clone();
        let outcomes = outcomes.clone();
        tokio::time::sleep_until(at).await;
        clients.spawn(async move {
            let outcome = place(&http, &replicas, request, n as usize, started).await;
            outcomes.lock().push(outcome);
        });
    }
    while clients.join_next().await.is_some() {}
    let mut outcomes = std::mem::take(&mut *outcomes.lock());
    outcomes.sort_by(|a, b| a.first_attempt_at.total_cmp(&b.first_attempt_at));
    outcomes
}

fn draw(rng: &mut ChaCha8Rng, seed: u64, n: u64) -> OrderRequest {
    let total: u32 = SKUS.iter().map(|(_, w)| w).sum();
    let mut pick = rng.random_range(0..total);
    let mut sku = SKUS[0].0;
    for (name, weight) in SKUS {
        if pick < weight {
            sku = name;
            break;
        }
        pick -= weight;
    }
    OrderRequest {
        key: format!("drill-{seed}-{n}"),
        customer: format!("customer-{}@drill.example", n % 97),
        sku,
        quantity: rng.random_range(1..=2),
        // The fake provider declines multiples of 10: about one order in ten.
        card: rng.random_range(1..=100),
    }
}

async fn place(
    http: &Http,
    replicas: &Replicas,
    request: OrderRequest,
    first_replica: usize,
    started: Instant,
) -> OrderOutcome {
    let body = Bytes::from(
        serde_json::json!({
            "customer": request.customer,
            "lines": [{"sku": request.sku, "quantity": request.quantity}],
            "card": request.card,
        })
        .to_string(),
    );
    let begun = Instant::now();
    let mut outcome = OrderOutcome {
        request,
        first_attempt_at: (begun - started).as_secs_f64(),
        attempts: 0,
        order_id: None,
        acknowledged_at: None,
        failures: Vec::new(),
        contradictions: Vec::new(),
    };
    let mut pause = Duration::from_millis(200);
    while begun.elapsed() < GIVE_UP_AFTER {
        let replica = &replicas.0[(first_replica + outcome.attempts as usize) % replicas.0.len()];
        outcome.attempts += 1;
        let answer = http
            .post_json(
                &format!("{replica}/orders"),
                &[("idempotency-key", &outcome.request.key)],
                body.clone(),
                ATTEMPT_DEADLINE,
            )
            .await;
        match answer {
            Ok(answer) if answer.status.as_u16() == 202 => {
                let id = serde_json::from_slice::<serde_json::Value>(&answer.body)
                    .ok()
                    .and_then(|v| v["order_id"].as_str().map(str::to_owned));
                match id {
                    Some(id) => {
                        outcome.acknowledged_at = Some(started.elapsed().as_secs_f64());
                        outcome.order_id = Some(id);
                        return outcome;
                    }
                    None => outcome.contradictions.push(format!(
                        "202 without an order_id: {}",
                        String::from_utf8_lossy(&answer.body)
                    )),
                }
            }
            Ok(answer) if answer.status.is_server_error() || answer.status.as_u16() == 429 => {
                outcome.failures.push(answer.status.as_u16().to_string());
            }
            Ok(answer) => {
                // A valid order refused: the contract says this never happens.
                outcome.contradictions.push(format!(
                    "{} for a valid order: {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                ));
                return outcome;
            }
            Err(CallError::Timeout) => outcome.failures.push("timeout".into()),
            Err(CallError::Connection(_)) => outcome.failures.push("connection".into()),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(3));
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_mix_is_drawn_from_the_seed_and_uses_every_sku() {
        let draw_all = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..400)
                .map(|n| draw(&mut rng, seed, n))
                .collect::<Vec<_>>()
        };
        let first = draw_all(7);
        assert_eq!(first, draw_all(7));
        assert_ne!(first, draw_all(8));
        for (sku, _) in SKUS {
            assert!(first.iter().any(|r| r.sku == sku), "{sku}");
        }
        let keys: std::collections::BTreeSet<_> = first.iter().map(|r| &r.key).collect();
        assert_eq!(keys.len(), first.len(), "one key per order");
        assert!(
            first.iter().any(|r| r.card % 10 == 0),
            "some cards are declined"
        );
    }
}
