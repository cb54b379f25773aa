//! The retrying handler: run a handler, retry what failed transiently under core's
//! [`RetryPolicy`], dead-letter what failed for good, and only then acknowledge.
//!
//! The pauses are core's (`backon`'s exponential ladder; jitter seeded from the
//! environment's `Entropy`, sleeps on its `Clock`) — the same backoff every retry in
//! Reprise uses. The environment is tokio's ([`TokioRuntime`]) unless the handler is given
//! another one ([`DeadLetterHandler::with_runtime`]).

use std::sync::OnceLock;
use std::time::Duration;

use reprise_core::event_bus::{Delivery, Subscription};
use reprise_core::resilience::{Classify, ErrorClass, RetryError, RetryPolicy};
use reprise_core::{BusError, SharedRuntime};
use reprise_tokio::TokioRuntime;

use super::DeadLetterError;
use super::envelope::{Failure, send_retrying};
use crate::bus::{KafkaEventBus, RawMessage, Receipt};
use crate::metrics as m;

/// How a handler failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// May succeed if tried again (a dependency is down, a timeout).
    #[error("transient: {0}")]
    Transient(String),
    /// Will fail the same way every time (undecodable payload, invariant violated).
    #[error("permanent: {0}")]
    Permanent(String),
}

impl HandlerError {
    pub fn transient(error: impl std::fmt::Display) -> Self {
        HandlerError::Transient(error.to_string())
    }

    pub fn permanent(error: impl std::fmt::Display) -> Self {
        HandlerError::Permanent(error.to_string())
    }
}

/// A payload that does not decode will never decode: permanent.
impl From<reprise_core::DecodeError> for HandlerError {
    fn from(error: reprise_core::DecodeError) -> Self {
        HandlerError::Permanent(error.to_string())
    }
}

impl Classify for HandlerError {
    fn class(&self) -> ErrorClass {
        match self {
            HandlerError::Transient(_) => ErrorClass::Transient,
            HandlerError::Permanent(_) => ErrorClass::Permanent,
        }
    }
}

/// Retry settings of a [`DeadLetterHandler`]: a core [`RetryPolicy`]. A message still
/// failing transiently after `retry.max_attempts` attempts is dead-lettered; permanent
/// failures are dead-lettered at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeadLetterPolicy {
    /// Attempts (the first included) and the pauses between them.
    pub retry: RetryPolicy,
}

impl Default for DeadLetterPolicy {
    /// 3 attempts, pauses from 100 ms doubling up to 5 s, with jitter: the two pauses are
    /// drawn from [100, 200) ms and [200, 400) ms.
    fn default() -> Self {
        DeadLetterPolicy {
            retry: RetryPolicy {
                max_attempts: 3,
                initial_delay: Duration::from_millis(100),
                max_delay: Duration::from_secs(5),
                multiplier: 2.0,
                jitter: true,
            },
        }
    }
}

impl From<RetryPolicy> for DeadLetterPolicy {
    fn from(retry: RetryPolicy) -> Self {
        DeadLetterPolicy { retry }
    }
}

impl DeadLetterPolicy {
    /// Handler attempts before a transiently failing message is dead-lettered.
    #[must_use]
    pub fn max_attempts(&self) -> u32 {
        self.retry.max_attempts
    }
}

/// What happened to one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Handled {
        attempts: u32,
    },
    DeadLettered {
        attempts: u32,
        error: HandlerError,
        receipt: Receipt,
    },
}

/// Runs handlers with retries and sends poison messages to the dead-letter topic.
#[derive(Clone, Debug)]
pub struct DeadLetterHandler {
    bus: KafkaEventBus,
    group: Option<String>,
    policy: DeadLetterPolicy,
    /// Clock and entropy of the retry pauses: the given runtime, or tokio's, taken when
    /// the handler is built inside a tokio runtime or else on first use.
    runtime: OnceLock<SharedRuntime>,
}

impl DeadLetterHandler {
    /// `group` is recorded in dead letters ([`header::GROUP`](super::header::GROUP)) for
    /// operators. Retry pauses run on tokio ([`TokioRuntime`]); see
    /// [`with_runtime`](Self::with_runtime).
    ///
    /// # Errors
    /// [`DeadLetterError::InvalidPolicy`] for a retry policy [`RetryPolicy::validate`]
    /// refuses (no attempt, a zero or inverted delay range, a multiplier below 1).
    pub fn new(
        bus: KafkaEventBus,
        group: Option<&str>,
        policy: DeadLetterPolicy,
    ) -> Result<Self, DeadLetterError> {
        policy
            .retry
            .validate()
            .map_err(DeadLetterError::InvalidPolicy)?;
        let runtime = OnceLock::new();
        if let Ok(tokio) = TokioRuntime::try_current() {
            let _ = runtime.set(tokio.shared());
        }
        Ok(DeadLetterHandler {
            bus,
            group: group.map(str::to_owned),
            policy,
            runtime,
        })
    }

    /// Takes retry pauses on `runtime`'s clock, with jitter from its entropy (a test's
    /// manual clock, or a runtime shared with the service's stores).
    #[must_use]
    pub fn with_runtime(mut self, runtime: SharedRuntime) -> Self {
        self.runtime = OnceLock::from(runtime);
        self
    }

    #[must_use]
    pub fn policy(&self) -> &DeadLetterPolicy {
        &self.policy
    }

    /// # Panics
    /// Without a runtime given and outside a tokio runtime (nothing to sleep on).
    fn runtime(&self) -> &SharedRuntime {
        self.runtime.get_or_init(|| {
            TokioRuntime::try_current()
                .unwrap_or_else(|e| panic!("DeadLetterHandler: {e} (or use with_runtime)"))
                .shared()
        })
    }

    /// Handles `delivery` with `handler`, then acknowledges it on `subscription` — after
    /// success, or after the dead letter is safely on the broker.
    ///
    /// # Errors
    /// Only if the dead letter cannot be published, even after the bus's
    /// [`dead_letter_retry`](crate::KafkaConfig::dead_letter_retry) attempts (the failure
    /// is counted and logged): the delivery is then *not* acknowledged, so it is
    /// redelivered rather than lost.
    ///
    /// # Panics
    /// Outside a tokio runtime, unless the handler was given one
    /// ([`with_runtime`](Self::with_runtime)).
    pub async fn handle<S, F, Fut>(
        &self,
        subscription: &mut S,
        delivery: &Delivery,
        mut handler: F,
    ) -> Result<Outcome, BusError>
    where
        S: Subscription + ?Sized,
        F: FnMut(&Delivery) -> Fut,
        Fut: Future<Output = Result<(), HandlerError>>,
    {
        let mut attempts = 0;
        let handled = self
            .policy
            .retry
            .run(
                self.runtime().as_ref(),
                |attempt| {
                    attempts = attempt;
                    handler(delivery)
                },
                |error, attempt, pause| {
                    metrics::counter!(m::HANDLER_RETRIES_TOTAL, "topic" => delivery.topic.to_string())
                        .increment(1);
                    tracing::debug!(
                        coordinates = delivery.coordinates(),
                        attempt,
                        %error,
                        ?pause,
                        "transient handler failure, retrying"
                    );
                },
            )
            .await;
        let (error, attempts) = match handled {
            Ok(()) => {
                subscription.ack(delivery);
                return Ok(Outcome::Handled { attempts });
            }
            Err(RetryError {
                error, attempts, ..
            }) => (error, attempts),
        };
        let text = error.to_string();
        tracing::warn!(
            coordinates = delivery.coordinates(),
            attempts,
            error = text,
            "dead-lettering"
        );
        let original = RawMessage {
            topic: &delivery.topic,
            key: Some(delivery.key.as_bytes()),
            payload: Some(delivery.payload.as_str().as_bytes()),
            headers: delivery
                .headers
                .0
                .iter()
                .map(|(k, v)| (k.as_str(), Some(v.as_bytes())))
                .collect(),
        };
        let failure = Failure {
            partition: delivery.partition,
            offset: delivery.offset,
            error: &text,
            attempts,
            group: self.group.as_deref(),
        };
        let receipt = send_retrying(
            &self.bus,
            self.runtime().as_ref(),
            &original,
            &failure,
            error.class(),
        )
        .await?;
        subscription.ack(delivery);
        Ok(Outcome::DeadLettered {
            attempts,
            error,
            receipt,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use reprise_core::event_bus::header;
    use reprise_core::{Headers, InMemoryEventBus, OutgoingMessage, Payload};

    use super::*;
    use crate::KafkaConfig;

    /// The broker is unreachable: the letter's write is retried under the bus's policy,
    /// then counted, and the delivery stays unacknowledged.
    #[tokio::test]
    async fn a_letter_that_cannot_be_written_is_retried_counted_and_not_acknowledged() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _local = metrics::set_default_local_recorder(&recorder);
        let memory = InMemoryEventBus::new();
        let mut subscription = memory.subscribe_now("g", &["orders"]);
        memory.publish_now(&[OutgoingMessage {
            topic: "orders".into(),
            key: "order-1".into(),
            payload: Payload::from_json_text("{}"),
            headers: Headers::default().with(header::EVENT_ID, "1"),
        }]);
        let delivery = subscription.try_next().expect("a delivery");
        let config = KafkaConfig::new("127.0.0.1:1")
            .delivery_timeout(Duration::from_millis(200))
            .dead_letter_retry(
                RetryPolicy::default()
                    .with_max_attempts(2)
                    .with_delays(Duration::from_millis(5), Duration::from_millis(10)),
            );
        let handler = DeadLetterHandler::new(
            KafkaEventBus::new(config).unwrap(),
            Some("g"),
            DeadLetterPolicy::from(RetryPolicy::default().with_max_attempts(1)),
        )
        .unwrap();
        let error = handler
            .handle(&mut subscription, &delivery, |_| {
                std::future::ready(Err(HandlerError::permanent("cannot decode")))
            })
            .await
            .expect_err("the dead letter cannot be written");
        assert!(
            error.to_string().contains("orders.dlq") && error.to_string().contains("2 attempt"),
            "{error}"
        );
        subscription.commit_now().unwrap();
        assert_eq!(memory.committed("g", "orders", delivery.partition), 0);
        let failures: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == m::DEAD_LETTER_FAILURES_TOTAL)
            .map(|(.., value)| value)
            .collect();
        assert_eq!(failures, [DebugValue::Counter(1)]);
    }

    #[test]
    fn decode_errors_are_permanent() {
        let e = reprise_core::DecodeError::Payload {
            event_type: "T".into(),
            reason: "bad".into(),
        };
        assert!(matches!(HandlerError::from(e), HandlerError::Permanent(_)));
    }

    #[test]
    fn the_default_policy_is_valid_and_invalid_ones_are_refused() {
        DeadLetterPolicy::default().retry.validate().unwrap();
        assert_eq!(DeadLetterPolicy::default().max_attempts(), 3);
        // Needs no broker: the producer connects lazily.
        let bus = KafkaEventBus::new(KafkaConfig::new("127.0.0.1:1")).unwrap();
        let none = DeadLetterPolicy::from(RetryPolicy::default().with_max_attempts(0));
        assert!(matches!(
            DeadLetterHandler::new(bus.clone(), None, none),
            Err(DeadLetterError::InvalidPolicy(m)) if m.contains("max_attempts")
        ));
        let inverted = DeadLetterPolicy::from(
            RetryPolicy::default().with_delays(Duration::from_secs(2), Duration::from_secs(1)),
        );
        assert!(matches!(
            DeadLetterHandler::new(bus, None, inverted),
            Err(DeadLetterError::InvalidPolicy(m)) if m.contains("exceeds")
        ));
    }

    /// The pauses are the policy's: with tokio's clock paused, the time that passed
    /// between three attempts is two jittered rungs of the ladder.
    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_with_the_policys_pauses_then_handled() {
        let memory = InMemoryEventBus::new();
        let mut subscription = memory.subscribe_now("g", &["orders"]);
        memory.publish_now(&[OutgoingMessage {
            topic: "orders".into(),
            key: "order-1".into(),
            payload: Payload::from_json_text("{}"),
            headers: Headers::default().with(header::EVENT_ID, "1"),
        }]);
        let delivery = subscription.try_next().expect("a delivery");
        // Never used: nothing is dead-lettered.
        let bus = KafkaEventBus::new(KafkaConfig::new("127.0.0.1:1")).unwrap();
        let handler = DeadLetterHandler::new(bus, Some("g"), DeadLetterPolicy::default())
            .unwrap()
            .with_runtime(Arc::new(TokioRuntime::try_current().unwrap()));

        let started = tokio::time::Instant::now();
        let mut calls = 0;
        let outcome = handler
            .handle(&mut subscription, &delivery, |_| {
                calls += 1;
                std::future::ready(if calls < 3 {
                    Err(HandlerError::transient("busy"))
                } else {
                    Ok(())
                })
            })
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Handled { attempts: 3 });
        let waited = started.elapsed();
        // [100, 200) ms + [200, 400) ms.
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_millis(600),
            "{waited:?}"
        );
        subscription.commit_now().unwrap();
        assert_eq!(
            memory.committed("g", "orders", delivery.partition),
            1,
            "acknowledged after success"
        );
    }
}
