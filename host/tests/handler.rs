//! `CommandHandler` on its own: the inbox marker travels with the decision (also for a
//! refusal), a redelivery is a duplicate that appends nothing, a conflict is decided
//! again on fresh state, long streams load page by page, and the cache never gets ahead
//! of the store when an append fails.

#[allow(dead_code)]
mod common;

use std::sync::Arc;

use reprise_core::repository::{Decided, LOAD_PAGE};
use reprise_core::testing::{TestRuntime, block_on};
use reprise_core::{Aggregate, CommandError, EventId, InMemoryEventStore, Repository, StoreError};
use reprise_host::handler::MAX_DECISIONS;
use reprise_host::{CommandHandler, Handling, inbox};

use common::{
    AppendFault, Counter, CounterCommand, CounterError, CounterEvent, LIMIT, ScriptedStore, added,
    append_all, counter_events, platform,
};

const CONSUMER: &str = "counter-service";

struct Fixture {
    runtime: Arc<TestRuntime>,
    durable: Arc<InMemoryEventStore>,
    store: ScriptedStore,
}

impl Fixture {
    fn new() -> Self {
        let durable = Arc::new(InMemoryEventStore::new());
        Fixture {
            runtime: TestRuntime::shared(7),
            store: ScriptedStore::new(Arc::clone(&durable)),
            durable,
        }
    }

    /// A handler (with a cold cache) over the scripted store.
    fn handler(&self) -> Arc<CommandHandler<Counter>> {
        Arc::new(CommandHandler::new(&platform(
            &self.runtime,
            Arc::new(self.store.clone()),
        )))
    }

    /// Runs one `execute` to completion on the test runtime.
    fn execute(
        &self,
        handler: &Arc<CommandHandler<Counter>>,
        id: &str,
        amount: u64,
        message: Option<u128>,
    ) -> Result<Decided<Counter>, CommandError<CounterError>> {
        let handler = Arc::clone(handler);
        let id = id.to_owned();
        block_on(&self.runtime, async move {
            let handling = message.map(|m| Handling {
                consumer: CONSUMER,
                message: EventId(m),
            });
            handler
                .execute(&id, &CounterCommand::Add(amount), handling)
                .await
        })
    }

    /// Ids of the inbox markers of [`CONSUMER`].
    fn markers(&self) -> Vec<EventId> {
        self.durable
            .read_stream_now(&inbox::stream(CONSUMER), 1, usize::MAX)
            .iter()
            .map(|r| {
                assert_eq!(&*r.event_type, inbox::MARKER_TYPE);
                r.event_id
            })
            .collect()
    }

    /// The counter as the store knows it (a cold load, no cache involved).
    fn truth(&self, id: &str) -> (Counter, u64) {
        let repository = Repository::<Counter>::new(self.durable.clone(), self.runtime.clone());
        let id = id.to_owned();
        block_on(&self.runtime, async move { repository.load(&id).await }).expect("loads")
    }

    /// The counter as the handler's repository (and its cache) sees it.
    fn seen_by(&self, handler: &Arc<CommandHandler<Counter>>, id: &str) -> (Counter, u64) {
        let handler = Arc::clone(handler);
        let id = id.to_owned();
        block_on(&self.runtime, async move {
            handler.repository().load(&id).await
        })
        .expect("loads")
    }
}

fn marker(message: u128) -> EventId {
    inbox::marker_id(CONSUMER, EventId(message))
}

#[test]
fn a_refused_command_still_stores_its_marker_and_a_redelivery_is_a_duplicate() {
    let f = Fixture::new();
    let handler = f.handler();
    let decided = f.execute(&handler, "c", 0, Some(1)).expect("an answer");
    assert_eq!(decided.rejection, Some(CounterError::Zero));
    assert!(decided.events.is_empty() && !decided.duplicate);
    assert_eq!(f.markers(), [marker(1)], "a refused command was handled");
    let stored = f
        .durable
        .read_stream_now(&inbox::stream(CONSUMER), 1, 1)
        .remove(0);
    assert_eq!(stored.metadata.causation_id, Some(1));
    assert_eq!(f.durable.stream_version_now(&Counter::stream_id("c")), 0);

    // The redelivered refusal: recognised by its marker, nothing appended.
    let again = f.execute(&handler, "c", 0, Some(1)).expect("an answer");
    assert!(again.duplicate, "{again:?}");
    assert_eq!(f.markers(), [marker(1)]);
    assert_eq!(f.durable.len(), 1);

    // Without a message there is nothing to record, so a refusal appends nothing.
    let appends = f.store.appends();
    let bare = f.execute(&handler, "c", 0, None).expect("an answer");
    assert_eq!(bare.rejection, Some(CounterError::Zero));
    assert_eq!(f.store.appends(), appends);
}

#[test]
fn a_redelivered_message_is_a_duplicate_and_appends_nothing() {
    let f = Fixture::new();
    let handler = f.handler();
    let first = f.execute(&handler, "c", 4, Some(10)).expect("handled");
    assert_eq!(
        (first.version, first.state.total, first.duplicate),
        (1, 4, false)
    );
    assert_eq!(f.durable.len(), 2, "the event and its marker");
    let (recorded, _) = counter_events(&f.durable, "c").remove(0);
    assert_eq!(
        recorded.metadata.causation_id,
        Some(10),
        "the effect names its cause"
    );

    for handler in [Arc::clone(&handler), f.handler()] {
        // The warm handler and a cold one (a restarted process) both see the duplicate.
        let again = f.execute(&handler, "c", 4, Some(10)).expect("handled");
        assert!(again.duplicate, "{again:?}");
        assert!(again.events.is_empty() && again.rejection.is_none());
        assert_eq!(f.durable.len(), 2, "nothing appended");
        assert_eq!(f.truth("c"), (Counter { total: 4, adds: 1 }, 1));
    }

    // Another message with the same content is another message.
    let other = f.execute(&handler, "c", 4, Some(11)).expect("handled");
    assert_eq!(
        (other.version, other.state.total, other.duplicate),
        (2, 8, false)
    );
    assert_eq!(f.markers(), [marker(10), marker(11)]);

    // Another consumer handling message 10 is not a duplicate of this consumer's work.
    let elsewhere = Arc::clone(&handler);
    let done = block_on(&f.runtime, async move {
        elsewhere
            .execute(
                "c",
                &CounterCommand::Add(4),
                Some(Handling {
                    consumer: "audit",
                    message: EventId(10),
                }),
            )
            .await
    })
    .expect("handled");
    assert!(!done.duplicate);
    assert_eq!(done.state.total, 12);
}

#[test]
fn a_conflict_is_decided_again_on_fresh_state() {
    let f = Fixture::new();
    let handler = f.handler();
    // Another writer lands between the handler's load and its append.
    f.store.push(AppendFault::Interleave(Box::new(|store| {
        append_all(store, &Counter::stream_id("c"), vec![added(900, 5, 5)]);
    })));
    let decided = f.execute(&handler, "c", 3, Some(1)).expect("handled");
    assert_eq!(f.store.appends(), 2, "one conflict, one success");
    assert_eq!(decided.version, 2);
    assert_eq!(decided.state, Counter { total: 8, adds: 2 });
    assert_eq!(
        decided.events,
        [CounterEvent::Added {
            amount: 3,
            total: 8
        }],
        "decided on the fresh total, not replayed from the stale one"
    );
    let totals: Vec<CounterEvent> = counter_events(&f.durable, "c")
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    assert_eq!(
        totals,
        [
            CounterEvent::Added {
                amount: 5,
                total: 5
            },
            CounterEvent::Added {
                amount: 3,
                total: 8
            }
        ]
    );
    assert_eq!(f.markers(), [marker(1)]);
    assert_eq!(f.seen_by(&handler, "c"), f.truth("c"));
}

#[test]
fn a_conflict_can_turn_the_decision_into_a_refusal_with_the_marker_stored() {
    let f = Fixture::new();
    let handler = f.handler();
    f.store.push(AppendFault::Interleave(Box::new(|store| {
        append_all(
            store,
            &Counter::stream_id("c"),
            vec![added(900, LIMIT - 1, LIMIT - 1)],
        );
    })));
    // Accepted on the stale (empty) counter, refused on the fresh one.
    let decided = f.execute(&handler, "c", 2, Some(1)).expect("an answer");
    assert_eq!(
        decided.rejection,
        Some(CounterError::OverLimit {
            total: LIMIT - 1,
            amount: 2
        })
    );
    assert!(decided.events.is_empty());
    assert_eq!(
        f.truth("c"),
        (
            Counter {
                total: LIMIT - 1,
                adds: 1
            },
            1
        )
    );
    assert_eq!(f.markers(), [marker(1)]);
}

#[test]
fn a_stream_that_keeps_changing_gives_up_after_max_decisions_and_stores_nothing() {
    let f = Fixture::new();
    let handler = f.handler();
    for i in 0..MAX_DECISIONS {
        let id = 900 + u128::from(i);
        f.store.push(AppendFault::Interleave(Box::new(move |store| {
            let stream = Counter::stream_id("c");
            let total = store.stream_version_now(&stream) + 1;
            append_all(store, &stream, vec![added(id, 1, total)]);
        })));
    }
    let error = f.execute(&handler, "c", 1, Some(1)).expect_err("contended");
    assert_eq!(
        error,
        CommandError::Contended {
            attempts: MAX_DECISIONS
        }
    );
    assert_eq!(f.store.appends(), MAX_DECISIONS as usize);
    assert!(
        f.markers().is_empty(),
        "an unhandled message leaves no marker"
    );
    // The next delivery of the message is handled normally.
    let decided = f.execute(&handler, "c", 1, Some(1)).expect("handled");
    assert_eq!(decided.state.total, u64::from(MAX_DECISIONS) + 1);
    assert_eq!(f.markers(), [marker(1)]);
}

/// Writes `count` events (amount = version) to `counter-<id>` directly.
fn long_stream(f: &Fixture, id: &str, count: u64) -> u64 {
    let events = (1..=count)
        .map(|v| added(u128::from(v) + 1_000_000, v, v * (v + 1) / 2))
        .collect();
    append_all(&f.durable, &Counter::stream_id(id), events);
    count * (count + 1) / 2
}

#[test]
fn loads_page_through_streams_longer_than_a_page() {
    for count in [1_300, 2 * LOAD_PAGE as u64, LOAD_PAGE as u64 - 1] {
        let f = Fixture::new();
        let sum = long_stream(&f, "big", count);
        let handler = f.handler();
        let decided = f.execute(&handler, "big", 1, Some(1)).expect("handled");
        assert_eq!(
            decided.state,
            Counter {
                total: sum + 1,
                adds: count + 1
            },
            "{count} events: each applied exactly once"
        );
        assert_eq!(decided.version, count + 1);
        assert_eq!(
            decided.events,
            [CounterEvent::Added {
                amount: 1,
                total: sum + 1
            }]
        );
        // Page by page, each read starting right after the last event seen.
        let page = LOAD_PAGE as u64;
        let reads: Vec<(u64, usize)> = f
            .store
            .stream_reads()
            .into_iter()
            .filter(|(stream, _, _)| *stream == Counter::stream_id("big"))
            .map(|(_, from, limit)| (from, limit))
            .collect();
        let expected: Vec<(u64, usize)> = (0..=count / page)
            .map(|i| (i * page + 1, LOAD_PAGE))
            .collect();
        assert_eq!(reads, expected, "{count} events");
        // The cache now holds the whole stream: the next command reads only the tail.
        let decided = f.execute(&handler, "big", 2, Some(2)).expect("handled");
        assert_eq!(decided.state.total, sum + 3);
        let last = f.store.stream_reads().pop().expect("a read");
        assert_eq!((last.1, last.2), (count + 2, LOAD_PAGE));
    }
}

#[test]
fn the_cache_never_gets_ahead_of_the_store_when_an_append_fails() {
    let f = Fixture::new();
    let handler = f.handler();
    f.execute(&handler, "c", 5, Some(1)).expect("handled");
    assert_eq!(handler.repository().cached(), 1);

    // Refused: nothing stored, and the cache stays at the stored state.
    f.store.push(AppendFault::Refuse(StoreError::Transient(
        "connection reset".into(),
    )));
    let error = f.execute(&handler, "c", 7, Some(2)).expect_err("refused");
    assert!(
        matches!(error, CommandError::Store(StoreError::Transient(_))),
        "{error}"
    );
    assert_eq!(f.truth("c"), (Counter { total: 5, adds: 1 }, 1));
    assert_eq!(
        f.seen_by(&handler, "c"),
        f.truth("c"),
        "cache ahead of the store"
    );
    assert_eq!(f.markers(), [marker(1)]);

    // Commit unknown: stored, but the handler was told it timed out. The cache may lag
    // behind (the next load reads the tail) but not run ahead.
    f.store.push(AppendFault::ApplyThenTimeout);
    let error = f.execute(&handler, "c", 7, Some(2)).expect_err("timed out");
    assert_eq!(error, CommandError::Store(StoreError::Timeout));
    assert_eq!(f.truth("c"), (Counter { total: 12, adds: 2 }, 2));
    assert_eq!(f.seen_by(&handler, "c"), f.truth("c"));

    // The retry with the same message is recognised; the effect happened once.
    let retried = f.execute(&handler, "c", 7, Some(2)).expect("handled");
    assert!(retried.duplicate, "{retried:?}");
    assert_eq!(f.truth("c"), (Counter { total: 12, adds: 2 }, 2));

    // A failure on a later command after several successes: same rule.
    f.execute(&handler, "c", 1, Some(3)).expect("handled");
    f.store.push(AppendFault::Refuse(StoreError::Permanent(
        "disk full".into(),
    )));
    f.execute(&handler, "c", 100, Some(4)).expect_err("refused");
    assert_eq!(
        f.seen_by(&handler, "c"),
        (Counter { total: 13, adds: 3 }, 3)
    );

    // And the handler goes on deciding on what is stored: no conflict loop from a cache
    // that believes in a version the store never reached.
    let appends = f.store.appends();
    let decided = f.execute(&handler, "c", 100, Some(4)).expect("handled");
    assert_eq!(f.store.appends(), appends + 1, "no conflict");
    assert_eq!((decided.version, decided.state.total), (4, 113));
    assert_eq!(f.markers(), [marker(1), marker(2), marker(3), marker(4)]);
}

#[test]
fn execute_until_done_retries_failures_until_the_effect_is_stored_once() {
    let f = Fixture::new();
    let handler = f.handler();
    f.store
        .push(AppendFault::Refuse(StoreError::Transient("busy".into())));
    f.store.push(AppendFault::ApplyThenTimeout);
    f.store.push(AppendFault::Refuse(StoreError::Timeout));
    let worker = Arc::clone(&handler);
    let decided = block_on(&f.runtime, async move {
        worker
            .execute_until_done(
                "c",
                &CounterCommand::Add(6),
                Some(Handling {
                    consumer: CONSUMER,
                    message: EventId(1),
                }),
            )
            .await
    });
    // The second try landed (its answer was lost); the last one found its marker.
    assert!(decided.duplicate, "{decided:?}");
    assert_eq!(f.truth("c"), (Counter { total: 6, adds: 1 }, 1));
    assert_eq!(f.markers(), [marker(1)]);
    assert!(
        common::elapsed(&f.runtime) > std::time::Duration::ZERO,
        "retries pause on the clock"
    );
}
