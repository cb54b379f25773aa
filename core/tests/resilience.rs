//! The Store's effect executor applies retry policies, circuit breakers and the
//! dead-letter queue per dependency, on the environment's clock (here: virtual).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use reprise_core::event_bus::Headers;
use reprise_core::resilience::{
    BreakerState, CallError, CallFailure, ClassifiedError, DeadLetterQuery, DeadLetterQueue,
    DependencyPolicy, EVENT_STORE, ErrorClass, InMemoryDeadLetterQueue, Resilience, RetryPolicy,
};
use reprise_core::testing::{TestRuntime, block_on};
use reprise_core::{
    AppendBatch, Clock, Effect, Effects, EventId, ExpectedVersion, Metadata, NewEvent,
    OutgoingMessage, Payload, SharedRuntime, Store, StoreError, StreamId, effects,
};

/// A payment provider model: counts calls, fails while `down`, or for the next `flaky`
/// calls.
#[derive(Debug, Default)]
struct Gateway {
    down: AtomicBool,
    flaky: AtomicU32,
    calls: AtomicU32,
}

impl Gateway {
    fn charge(&self, order: u32) -> Result<String, ClassifiedError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(ClassifiedError::transient("connection refused"));
        }
        if self
            .flaky
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(ClassifiedError::transient("503 service unavailable"));
        }
        if order == 13 {
            return Err(ClassifiedError::permanent("card declined"));
        }
        Ok(format!("charge-{order}"))
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Payments {
    captured: Vec<String>,
    failed: Vec<(u32, &'static str, u32)>,
    conflicts: u32,
}

#[derive(Clone, Debug)]
enum Action {
    Charge(u32),
    Charged(String),
    Failed(u32, &'static str, u32),
    AppendStale,
    Appended(Result<(), StoreError>),
}

fn command(order: u32) -> OutgoingMessage {
    OutgoingMessage {
        topic: "payments".into(),
        key: format!("order-{order}").into(),
        payload: Payload::from_json_text(format!(r#"{{"charge":{order}}}"#)),
        headers: Headers::default(),
    }
}

struct PaymentsReducer {
    gateway: Arc<Gateway>,
}

impl reprise_core::Reducer for PaymentsReducer {
    type State = Payments;
    type Action = Action;
    type Env = ();

    fn reduce(&self, s: &mut Payments, a: Action, (): &()) -> Effects<Action> {
        match a {
            Action::Charge(order) => {
                let gateway = Arc::clone(&self.gateway);
                effects![
                    Effect::call(
                        "payments",
                        "charge",
                        move || {
                            let result = gateway.charge(order);
                            async move { result }
                        },
                        move |result: Result<String, CallError<ClassifiedError>>| {
                            Some(match result {
                                Ok(charge) => Action::Charged(charge),
                                Err(error) => Action::Failed(order, error.reason(), error.attempts),
                            })
                        },
                    )
                    .dead_letter(command(order))
                    .into()
                ]
            }
            Action::Charged(charge) => {
                s.captured.push(charge);
                effects![]
            }
            Action::Failed(order, reason, attempts) => {
                s.failed.push((order, reason, attempts));
                effects![]
            }
            Action::AppendStale => {
                let event = NewEvent {
                    event_id: EventId(1),
                    event_type: "Deposited".into(),
                    schema_version: 1,
                    payload: Payload::from_json_text(r#"{"n":1}"#),
                    metadata: Metadata::default(),
                };
                let batch = AppendBatch::single(
                    StreamId::new("account-1"),
                    ExpectedVersion::Exact(5),
                    vec![event],
                );
                effects![Effect::append(batch, |r| Some(Action::Appended(
                    r.map(|_| ())
                )))]
            }
            Action::Appended(result) => {
                if matches!(result, Err(StoreError::Conflict { .. })) {
                    s.conflicts += 1;
                }
                effects![]
            }
        }
    }
}

struct Fixture {
    rt: Arc<TestRuntime>,
    gateway: Arc<Gateway>,
    resilience: Arc<Resilience>,
    dead_letters: Arc<InMemoryDeadLetterQueue>,
    store: Store<PaymentsReducer>,
}

fn fixture(resilience: Resilience) -> Fixture {
    let rt = TestRuntime::shared(7);
    let gateway = Arc::new(Gateway::default());
    let dead_letters = Arc::new(InMemoryDeadLetterQueue::new());
    let resilience = Arc::new(resilience.with_dead_letters(dead_letters.clone()));
    let shared: SharedRuntime = rt.clone();
    let reducer = PaymentsReducer {
        gateway: Arc::clone(&gateway),
    };
    let store = Store::builder(reducer, Payments::default(), (), shared)
        .resilience(Arc::clone(&resilience))
        .build();
    Fixture {
        rt,
        gateway,
        resilience,
        dead_letters,
        store,
    }
}

fn pending_letters(f: &Fixture) -> Vec<reprise_core::resilience::DeadLetter> {
    let queue = Arc::clone(&f.dead_letters);
    block_on(&f.rt, async move {
        queue
            .list(DeadLetterQuery::default())
            .await
            .expect("in-memory list")
    })
}

#[test]
fn transient_failures_are_retried_with_backoff_and_the_result_comes_back_as_an_action() {
    let f = fixture(Resilience::new());
    f.gateway.flaky.store(2, Ordering::SeqCst);
    let started = f.rt.now();
    drop(f.store.send(Action::Charge(1)));
    f.rt.run_until_idle();
    assert!(
        f.store.state().captured.is_empty(),
        "the retry waits on the clock"
    );
    f.rt.advance(Duration::from_secs(60));
    assert_eq!(f.store.state().captured, vec!["charge-1".to_owned()]);
    assert_eq!(f.gateway.calls.load(Ordering::SeqCst), 3);
    assert_eq!(f.resilience.retries_made(), 2);
    // Two pauses of the default ladder: [1, 2) s then [2, 4) s.
    let waited = f.rt.now().saturating_since(started);
    assert!(waited >= Duration::from_secs(3), "{waited:?}");
    assert!(pending_letters(&f).is_empty());
}

#[test]
fn a_permanent_error_is_not_retried_and_is_dead_lettered_with_its_attempt_count() {
    let f = fixture(Resilience::new());
    drop(f.store.send(Action::Charge(13)));
    f.rt.advance(Duration::from_secs(60));
    assert_eq!(f.gateway.calls.load(Ordering::SeqCst), 1);
    assert_eq!(f.store.state().failed, vec![(13, "permanent", 1)]);
    let letters = pending_letters(&f);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].letter.error_class, ErrorClass::Permanent);
    assert_eq!(letters[0].letter.attempts, 1);
    assert_eq!(letters[0].letter.message(), command(13));
    assert!(letters[0].letter.error.contains("card declined"));
}

#[test]
fn an_outage_opens_the_breaker_then_calls_fail_fast_and_a_probe_closes_it_after_recovery() {
    let f = fixture(Resilience::new());
    f.gateway.down.store(true, Ordering::SeqCst);
    for order in 1..=2 {
        drop(f.store.send(Action::Charge(order)));
        // The whole ladder (four pauses, under 30 s with jitter) before the next charge.
        f.rt.advance(Duration::from_secs(31));
    }
    drop(f.store.send(Action::Charge(3)));
    f.rt.advance(Duration::from_secs(1));
    // Ten real attempts (5 + 5) fill the window with failures and open the breaker; the
    // third charge is refused without reaching the gateway.
    assert_eq!(f.gateway.calls.load(Ordering::SeqCst), 10);
    assert_eq!(
        f.store.state().failed,
        vec![
            (1, "exhausted", 5),
            (2, "exhausted", 5),
            (3, "circuit_open", 1)
        ]
    );
    let breaker = f
        .resilience
        .breaker("payments")
        .expect("default policy has a breaker");
    assert!(matches!(
        breaker.state(f.rt.now()),
        BreakerState::Open { .. }
    ));
    let letters = pending_letters(&f);
    let attempts: Vec<_> = letters.iter().map(|l| l.letter.attempts).collect();
    assert_eq!(
        attempts,
        vec![5, 5, 1],
        "every failed charge is parked, none lost"
    );

    f.gateway.down.store(false, Ordering::SeqCst);
    f.rt.advance(Duration::from_secs(60));
    assert_eq!(breaker.state(f.rt.now()), BreakerState::HalfOpen);
    drop(f.store.send(Action::Charge(4)));
    f.rt.advance(Duration::from_secs(1));
    assert_eq!(f.store.state().captured, vec!["charge-4".to_owned()]);
    assert_eq!(breaker.state(f.rt.now()), BreakerState::Closed);
    assert_eq!(f.gateway.calls.load(Ordering::SeqCst), 11);
}

#[test]
fn a_conflict_is_not_retried_even_when_the_event_store_has_a_retry_policy() {
    let f = fixture(Resilience::new().with_policy(
        EVENT_STORE,
        DependencyPolicy::default().with_retry(RetryPolicy::default().with_max_attempts(10)),
    ));
    let started = f.rt.now();
    drop(f.store.send(Action::AppendStale));
    f.rt.advance(Duration::from_secs(600));
    assert_eq!(f.store.state().conflicts, 1);
    assert_eq!(f.resilience.attempts_made(), 1, "one attempt, no retry");
    assert_eq!(f.resilience.retries_made(), 0);
    assert_eq!(f.rt.pending_timers(), 0);
    assert!(
        pending_letters(&f).is_empty(),
        "conflicts are never dead-lettered"
    );
    let breaker = f
        .resilience
        .breaker(EVENT_STORE)
        .expect("policy has a breaker");
    assert_eq!(breaker.state(f.rt.now()), BreakerState::Closed);
    assert!(f.rt.now() >= started);
}

#[test]
fn a_conflict_from_a_dependency_call_is_returned_after_one_attempt() {
    let rt = TestRuntime::shared(3);
    let resilience = Arc::new(Resilience::new());
    let calls = Arc::new(AtomicU32::new(0));
    let (r, c) = (Arc::clone(&resilience), Arc::clone(&calls));
    let rt2 = Arc::clone(&rt);
    let result = block_on(&rt, async move {
        r.call(&*rt2, "ledger", "post", || {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(ClassifiedError::conflict("version moved")) }
        })
        .await
    });
    let error = result.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(matches!(error.failure, CallFailure::Failed(_)));
    assert!(!error.should_dead_letter());
}
