//! Per-dependency policies and the one function that applies them: [`Resilience::call`].
//!
//! A [`Resilience`] is shared by everything that calls the same dependencies (clone the
//! `Arc` into every store of a service): the breaker for `payments` must see every call
//! to `payments`, or it would open late. Each dependency gets its own retry policy and
//! breaker; unnamed dependencies get the default policy (5 attempts, 1 s ×2 up to 32 s,
//! breaker at 50% of 10 calls, open 30 s).
//!
//! The event store and the bus are dependencies too ([`EVENT_STORE`], [`EVENT_BUS`]), but
//! their default is [`DependencyPolicy::none`]: the aggregate machinery already answers
//! their failures precisely (a conflict decides again; a commit-unknown is resolved by
//! event id), and a blind retry underneath it would only delay that answer. Opt in with
//! [`Resilience::with_policy`].
//!
//! How retry and breaker compose: every attempt asks the breaker first. An open breaker
//! ends the call at once with [`CallFailure::CircuitOpen`] — waiting in a retry loop for a
//! dependency known to be down would hold the caller for the whole open period, which is
//! what the breaker exists to prevent. So during an outage each caller makes at most a
//! handful of real attempts before the breaker opens, and none after.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::breaker::{BreakerConfig, CallOutcome, CircuitBreaker, CircuitOpen};
use super::classify::{Classify, ErrorClass};
use super::dead_letter::{DeadLetterId, DeadLetterQueue, NewDeadLetter};
use super::retry::RetryPolicy;
use crate::event_bus::OutgoingMessage;
use crate::instrument as names;
use crate::runtime::{Clock, Entropy};

/// The dependency name of the event store (for [`Resilience::with_policy`]).
pub const EVENT_STORE: &str = "event-store";
/// The dependency name of the event bus.
pub const EVENT_BUS: &str = "event-bus";

/// How calls to one dependency are retried and guarded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DependencyPolicy {
    pub retry: RetryPolicy,
    /// `None`: no breaker.
    pub breaker: Option<BreakerConfig>,
}

impl Default for DependencyPolicy {
    fn default() -> Self {
        DependencyPolicy {
            retry: RetryPolicy::default(),
            breaker: Some(BreakerConfig::default()),
        }
    }
}

impl DependencyPolicy {
    /// One attempt, no breaker: the call's own error, untouched.
    #[must_use]
    pub const fn none() -> Self {
        DependencyPolicy {
            retry: RetryPolicy::no_retry(),
            breaker: None,
        }
    }

    #[must_use]
    pub const fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    #[must_use]
    pub const fn with_breaker(mut self, breaker: Option<BreakerConfig>) -> Self {
        self.breaker = breaker;
        self
    }

    /// # Errors
    /// The first invalid field of the retry policy or breaker.
    pub fn validate(&self) -> Result<(), String> {
        self.retry.validate()?;
        if let Some(breaker) = &self.breaker {
            breaker.validate()?;
        }
        Ok(())
    }

    /// One attempt and no breaker: calls go straight through.
    #[must_use]
    pub fn is_passthrough(&self) -> bool {
        self.retry.max_attempts == 1 && self.breaker.is_none()
    }
}

/// Why a guarded call gave up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallFailure<E> {
    /// The dependency's error: permanent, a conflict, or transient with the attempts
    /// used up ([`CallError::exhausted`]).
    Failed(E),
    /// Refused by the open breaker without reaching the dependency (on the first attempt
    /// or a retry).
    CircuitOpen(CircuitOpen),
}

/// A guarded call that did not succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError<E> {
    pub dependency: Arc<str>,
    pub operation: &'static str,
    pub failure: CallFailure<E>,
    /// Attempts made, the first included (a refused attempt counts: it was tried).
    pub attempts: u32,
    /// Transient to the end: the attempts ran out.
    pub exhausted: bool,
    /// Where the work was parked, when the caller supplied a dead letter.
    pub dead_lettered: Option<DeadLetterId>,
}

impl<E: Classify> CallError<E> {
    /// The failure's class; an open circuit is transient (the dependency may come back).
    #[must_use]
    pub fn class(&self) -> ErrorClass {
        match &self.failure {
            CallFailure::Failed(error) => error.class(),
            CallFailure::CircuitOpen(_) => ErrorClass::Transient,
        }
    }

    /// Whether the work belongs in a dead-letter queue: everything except conflicts.
    #[must_use]
    pub fn should_dead_letter(&self) -> bool {
        self.class() != ErrorClass::Conflict
    }

    /// A bounded label for metrics.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match (&self.failure, self.exhausted) {
            (CallFailure::CircuitOpen(_), _) => "circuit_open",
            (CallFailure::Failed(_), true) => "exhausted",
            (CallFailure::Failed(error), false) => error.class().as_str(),
        }
    }
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{} failed after {} attempt(s): ",
            self.dependency, self.operation, self.attempts
        )?;
        match &self.failure {
            CallFailure::Failed(error) => write!(f, "{error}"),
            CallFailure::CircuitOpen(open) => write!(f, "{open}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for CallError<E> {}

/// One attempt's failure inside [`Resilience::call`].
enum Attempt<E> {
    Failed(E),
    Refused(CircuitOpen),
}

impl<E: Classify> Classify for Attempt<E> {
    fn class(&self) -> ErrorClass {
        match self {
            Attempt::Failed(error) => error.class(),
            // Not retried: see the module docs.
            Attempt::Refused(_) => ErrorClass::Permanent,
        }
    }
}

/// Retry policies, breakers and the dead-letter queue of one service.
pub struct Resilience {
    default: DependencyPolicy,
    policies: BTreeMap<String, DependencyPolicy>,
    breakers: Mutex<BTreeMap<String, Arc<CircuitBreaker>>>,
    dead_letters: Option<Arc<dyn DeadLetterQueue>>,
    attempts: AtomicU64,
    retries: AtomicU64,
}

impl fmt::Debug for Resilience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resilience")
            .field("default", &self.default)
            .field("policies", &self.policies)
            .field(
                "dead_letters",
                &self.dead_letters.as_ref().map(|q| q.name()),
            )
            .finish_non_exhaustive()
    }
}

impl Default for Resilience {
    fn default() -> Self {
        Resilience::new()
    }
}

impl Resilience {
    /// Default policy for every dependency; none for the event store and bus.
    #[must_use]
    pub fn new() -> Self {
        let mut policies = BTreeMap::new();
        policies.insert(EVENT_STORE.to_owned(), DependencyPolicy::none());
        policies.insert(EVENT_BUS.to_owned(), DependencyPolicy::none());
        Resilience {
            default: DependencyPolicy::default(),
            policies,
            breakers: Mutex::new(BTreeMap::new()),
            dead_letters: None,
            attempts: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    /// No retries and no breakers anywhere (calls pass straight through).
    #[must_use]
    pub fn disabled() -> Self {
        Resilience::new().with_default(DependencyPolicy::none())
    }

    /// # Panics
    /// If `policy` is invalid: a configuration error found at start-up.
    #[must_use]
    pub fn with_default(mut self, policy: DependencyPolicy) -> Self {
        if let Err(reason) = policy.validate() {
            panic!("invalid default dependency policy: {reason}");
        }
        self.default = policy;
        self
    }

    /// # Panics
    /// If `policy` is invalid.
    #[must_use]
    pub fn with_policy(mut self, dependency: &str, policy: DependencyPolicy) -> Self {
        if let Err(reason) = policy.validate() {
            panic!("invalid policy for {dependency}: {reason}");
        }
        self.policies.insert(dependency.to_owned(), policy);
        self
    }

    #[must_use]
    pub fn with_dead_letters(mut self, queue: Arc<dyn DeadLetterQueue>) -> Self {
        self.dead_letters = Some(queue);
        self
    }

    #[must_use]
    pub fn policy(&self, dependency: &str) -> DependencyPolicy {
        self.policies
            .get(dependency)
            .copied()
            .unwrap_or(self.default)
    }

    /// The breaker guarding `dependency`, created on first use (`None` if its policy has
    /// no breaker).
    #[must_use]
    pub fn breaker(&self, dependency: &str) -> Option<Arc<CircuitBreaker>> {
        let config = self.policy(dependency).breaker?;
        let mut breakers = self.breakers.lock();
        Some(Arc::clone(
            breakers
                .entry(dependency.to_owned())
                .or_insert_with(|| Arc::new(CircuitBreaker::new(dependency, config))),
        ))
    }

    #[must_use]
    pub fn dead_letters(&self) -> Option<&Arc<dyn DeadLetterQueue>> {
        self.dead_letters.as_ref()
    }

    /// Attempts made through [`call`](Self::call) so far, refused ones included: the
    /// number a retry-storm check bounds.
    #[must_use]
    pub fn attempts_made(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Retries (attempts after the first) so far.
    #[must_use]
    pub fn retries_made(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Calls `attempt` under `dependency`'s retry policy and breaker, sleeping on `env`'s
    /// clock with jitter from `env`'s entropy.
    ///
    /// # Errors
    /// The last error with the attempt count, or the open circuit that refused the call.
    pub async fn call<T, E, F, Fut, Env>(
        &self,
        env: &Env,
        dependency: &str,
        operation: &'static str,
        mut attempt: F,
    ) -> Result<T, CallError<E>>
    where
        E: Classify + fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        Env: Clock + Entropy + ?Sized,
    {
        let policy = self.policy(dependency);
        if policy.is_passthrough() {
            self.attempts.fetch_add(1, Ordering::Relaxed);
            return attempt().await.map_err(|error| CallError {
                dependency: Arc::from(dependency),
                operation,
                failure: CallFailure::Failed(error),
                attempts: 1,
                exhausted: false,
                dead_lettered: None,
            });
        }
        let breaker = self.breaker(dependency);
        let result = policy
            .retry
            .run(
                env,
                |_| {
                    self.attempts.fetch_add(1, Ordering::Relaxed);
                    let permit = breaker.as_ref().map(|b| b.acquire(env.now()));
                    let call = match &permit {
                        Some(Err(_)) => None,
                        _ => Some(attempt()),
                    };
                    let breaker = breaker.clone();
                    async move {
                        let permit = match permit {
                            Some(Err(open)) => return Err(Attempt::Refused(open)),
                            Some(Ok(permit)) => Some(permit),
                            None => None,
                        };
                        let Some(call) = call else {
                            unreachable!("a call is made whenever a permit was granted");
                        };
                        let result = call.await;
                        if let (Some(breaker), Some(permit)) = (&breaker, permit) {
                            let outcome = match &result {
                                Err(error) if error.class().indicts_dependency() => {
                                    CallOutcome::Failure
                                }
                                // An answer, even a refusal, is the dependency working.
                                _ => CallOutcome::Success,
                            };
                            breaker.record(permit, outcome, env.now());
                        }
                        result.map_err(Attempt::Failed)
                    }
                },
                |error, attempt, pause: Duration| {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(names::RETRIES, "dependency" => dependency.to_owned(), "operation" => operation)
                        .increment(1);
                    if let Attempt::Failed(error) = error {
                        tracing::debug!(dependency, operation, attempt, ?pause, %error, "retrying");
                    }
                },
            )
            .await;
        result.map_err(|error| {
            let failure = match error.error {
                Attempt::Failed(e) => CallFailure::Failed(e),
                Attempt::Refused(open) => CallFailure::CircuitOpen(open),
            };
            let error = CallError {
                dependency: Arc::from(dependency),
                operation,
                failure,
                attempts: error.attempts,
                exhausted: error.exhausted,
                dead_lettered: None,
            };
            metrics::counter!(names::CALLS_FAILED, "dependency" => dependency.to_owned(), "operation" => operation, "reason" => error.reason())
                .increment(1);
            tracing::warn!(dependency, operation, attempts = error.attempts, reason = error.reason(), %error, "call gave up");
            error
        })
    }

    /// Parks `message` in the dead-letter queue after `error`, if a queue is configured
    /// and the error belongs there (conflicts never do). Storage failures are logged and
    /// counted, and the caller still gets the original error.
    pub async fn dead_letter<E: Classify + fmt::Display, Env: Clock + ?Sized>(
        &self,
        env: &Env,
        message: &OutgoingMessage,
        source_position: Option<String>,
        error: &mut CallError<E>,
    ) {
        if !error.should_dead_letter() {
            return;
        }
        let Some(queue) = &self.dead_letters else {
            tracing::error!(dependency = %error.dependency, %error, "no dead-letter queue configured; the failure is reported to the caller only");
            return;
        };
        let letter = NewDeadLetter {
            topic: message.topic.to_string(),
            source_position,
            key: message.key.to_string(),
            payload: message.payload.clone(),
            headers: message.headers.clone(),
            error: error.to_string(),
            error_class: error.class(),
            attempts: error.attempts,
            failed_at: env.now(),
        };
        match queue.put(letter).await {
            Ok(id) => error.dead_lettered = Some(id),
            Err(storage) => {
                tracing::error!(queue = queue.name(), %storage, %error, "dead letter could not be stored");
            }
        }
    }
}
