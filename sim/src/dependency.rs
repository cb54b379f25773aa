//! External services (a payment gateway, an email provider): a latency distribution, an
//! inherent error rate, outage windows, and the partition between each node and each
//! service.
//!
//! The simulator does not model *what* the service does — the scenario does, in its own
//! state (e.g. a gateway ledger behind an `Arc<Mutex<…>>`), and hands
//! [`NodeContext::call`](crate::NodeContext::call) a closure that performs the call on
//! that model. The simulator decides whether and when the closure runs:
//!
//! | outcome                   | closure ran? | caller sees                    |
//! |---------------------------|--------------|--------------------------------|
//! | outage or partition       | no           | [`DependencyError::Unavailable`] |
//! | error (inherent or fault) | no           | [`DependencyError::Failed`]      |
//! | response lost             | **yes**      | [`DependencyError::Timeout`]     |
//! | success                   | yes          | `Ok(value)`                    |
//!
//! The "response lost" row is the one that double-charges customers when callers retry
//! without an idempotency key.
//!
//! An *inherent* error ([`DependencyOptions::error_probability`]) is the service's own
//! failure rate, present in every phase: it is recorded apart from injected faults
//! ([`crate::RunReport::inherent_errors`], a `dependency.inherent_error` trace line), draws
//! from a stream of its own, and is neither a fault fired nor something a shrinker can
//! remove. A call's trace line names the dependency and, given
//! [`NodeContext::call_op`](crate::NodeContext::call_op), the operation (`charge
//! order-o01`), so failure reports find the calls about an entity.

use std::sync::Arc;

use reprise_core::BoxFuture;

use crate::clock::Sleep;
use crate::executor::{Draw, NodeIndex, Shared};
use crate::faults::dependency_index;
use crate::network::Link;
use crate::trace::{Tag, hash_str, mix};

/// A service's steady-state profile.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DependencyOptions {
    /// Round-trip latency, uniform in `latency_min_ms..=latency_max_ms` (before any
    /// slowdown fault).
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// Chance that a call fails on its own, in every phase (real services do): liveness
    /// must hold despite it.
    pub error_probability: f64,
    /// How long a caller waits for a lost response.
    pub timeout_ms: u64,
}

impl Default for DependencyOptions {
    fn default() -> Self {
        DependencyOptions {
            latency_min_ms: 5,
            latency_max_ms: 50,
            error_probability: 0.0,
            timeout_ms: 1_000,
        }
    }
}

impl DependencyOptions {
    /// # Errors
    /// A description of the first invalid field.
    pub fn validate(&self) -> Result<(), String> {
        if self.latency_min_ms > self.latency_max_ms {
            return Err(format!(
                "latency_min_ms {} > latency_max_ms {}",
                self.latency_min_ms, self.latency_max_ms
            ));
        }
        if !(0.0..1.0).contains(&self.error_probability) {
            return Err(format!(
                "error_probability {} is not in [0, 1)",
                self.error_probability
            ));
        }
        if self.timeout_ms == 0 {
            return Err("timeout_ms must be positive".into());
        }
        Ok(())
    }
}

/// Why a dependency call did not return a value. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DependencyError {
    /// The service could not be reached (outage or partition). Nothing happened.
    #[error("{0} is unavailable")]
    Unavailable(String),
    /// The service answered with an error. Nothing happened.
    #[error("{0} failed the call")]
    Failed(String),
    /// No response in time. The call **may have been applied**.
    #[error("{0} did not answer in time; outcome unknown")]
    Timeout(String),
    /// No dependency of that name is registered in the world.
    #[error("no dependency named {0} is registered")]
    Unknown(String),
}

impl DependencyError {
    /// Worth retrying (with an idempotency key, for `Timeout`).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        !matches!(self, DependencyError::Unknown(_))
    }
}

enum Fate {
    Unavailable,
    Failed,
    ResponseLost,
    Deliver,
}

/// `name` or `name operation`, for trace lines and fault details.
fn subject(name: &str, operation: &str) -> String {
    if operation.is_empty() {
        name.to_owned()
    } else {
        format!("{name} {operation}")
    }
}

pub(crate) fn call<T, F>(
    shared: Arc<Shared>,
    node: NodeIndex,
    name: &str,
    operation: &str,
    call: F,
) -> BoxFuture<'static, Result<T, DependencyError>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let name: Arc<str> = Arc::from(name);
    let operation: Box<str> = Box::from(operation);
    Box::pin(async move {
        let decided = {
            let mut k = shared.kernel.lock();
            k.stats.dependency_calls += 1;
            match dependency_index(&k.env.dependencies, &name) {
                None => None,
                Some(dependency) => {
                    let options = k.env.dependencies[usize::from(dependency)].options;
                    let faults = k.dependency_faults(node, dependency);
                    let base = k.uniform(
                        Draw::Latency.of(node),
                        options.latency_min_ms * 1000,
                        options.latency_max_ms * 1000,
                    ) * 1000;
                    // IEEE multiplication and truncation: identical on every platform.
                    #[allow(
                        clippy::cast_precision_loss,
                        clippy::cast_possible_truncation,
                        clippy::cast_sign_loss
                    )]
                    let latency = (base as f64 * faults.slowdown_factor) as u64;
                    let link = Link::Dependency(dependency);
                    let fate = if k.network.is_down(dependency)
                        || k.network.request_blocked(node, link)
                    {
                        Fate::Unavailable
                    } else if k.chance(Draw::DependencyInherent.of(node), options.error_probability)
                    {
                        k.inherent_error(
                            Some(node),
                            "dependency.inherent_error",
                            subject(&name, &operation),
                        );
                        Fate::Failed
                    } else if k.chance(Draw::DependencyError.of(node), faults.error_probability) {
                        k.fault(Some(node), "dependency.error", subject(&name, &operation));
                        Fate::Failed
                    } else if k.chance(
                        Draw::DependencyResponseLost.of(node),
                        faults.response_lost_probability,
                    ) {
                        k.fault(
                            Some(node),
                            "dependency.response_lost",
                            subject(&name, &operation),
                        );
                        Fate::ResponseLost
                    } else {
                        Fate::Deliver
                    };
                    Some((dependency, latency, options.timeout_ms * 1_000_000, fate))
                }
            }
        };
        let Some((dependency, latency, timeout, fate)) = decided else {
            return Err(DependencyError::Unknown(name.to_string()));
        };
        let outcome = |label: &'static str| {
            let mut k = shared.kernel.lock();
            k.record(
                Tag::Dependency,
                Some(node),
                mix(u64::from(dependency), hash_str(&operation)),
                hash_str(label),
                || format!("call {} -> {label}", subject(&name, &operation)),
            );
        };
        match fate {
            Fate::Unavailable => {
                Sleep::after_nanos(&shared, latency / 2).await;
                outcome("unavailable");
                Err(DependencyError::Unavailable(name.to_string()))
            }
            Fate::Failed => {
                Sleep::after_nanos(&shared, latency).await;
                outcome("failed");
                Err(DependencyError::Failed(name.to_string()))
            }
            Fate::ResponseLost | Fate::Deliver => {
                Sleep::after_nanos(&shared, latency / 2).await;
                let value = call();
                let lost = matches!(fate, Fate::ResponseLost)
                    || shared
                        .kernel
                        .lock()
                        .network
                        .response_blocked(node, Link::Dependency(dependency));
                if lost {
                    Sleep::after_nanos(&shared, timeout.saturating_sub(latency / 2)).await;
                    outcome("timeout (applied)");
                    return Err(DependencyError::Timeout(name.to_string()));
                }
                Sleep::after_nanos(&shared, latency - latency / 2).await;
                outcome("ok");
                Ok(value)
            }
        }
    })
}
