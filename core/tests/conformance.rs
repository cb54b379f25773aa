//! The in-memory event store and bus against the same conformance suites the simulated,
//! PostgreSQL and Kafka implementations run. If these fail, the in-memory versions no
//! longer stand in faithfully for production in unit tests.

use std::sync::Arc;

use reprise_core::conformance::{event_bus_suite, event_store_suite};
use reprise_core::testing::{TestRuntime, block_on};
use reprise_core::{Clock, InMemoryEventBus, InMemoryEventStore};

#[test]
fn in_memory_event_store_conforms() {
    let runtime = TestRuntime::shared(1);
    let clock: Arc<dyn Clock> = runtime.clone();
    let store = Arc::new(InMemoryEventStore::with_clock(clock));
    let result = block_on(&runtime, event_store_suite(store.clone(), "conformance-"));
    assert_eq!(result, Ok(()));
    assert!(
        !store.is_empty(),
        "the suite must actually have written events"
    );
}

#[test]
fn in_memory_event_store_conforms_twice_in_one_store_under_different_namespaces() {
    // The suite namespaces streams and ids so it can share a database with other runs.
    let runtime = TestRuntime::shared(2);
    let store = Arc::new(InMemoryEventStore::new());
    for ns in ["first-", "second-"] {
        let result = block_on(&runtime, event_store_suite(store.clone(), ns));
        assert_eq!(result, Ok(()), "namespace {ns}");
    }
}

#[test]
fn in_memory_event_bus_conforms() {
    let runtime = TestRuntime::shared(3);
    let bus = Arc::new(InMemoryEventBus::new());
    let result = block_on(&runtime, event_bus_suite(bus.clone(), "conformance-"));
    assert_eq!(result, Ok(()));
    assert_eq!(bus.messages("conformance-orders").len(), 20);
}

#[test]
fn in_memory_event_bus_conforms_with_a_single_partition() {
    let runtime = TestRuntime::shared(4);
    let result = block_on(
        &runtime,
        event_bus_suite(Arc::new(InMemoryEventBus::with_partitions(1)), "single-"),
    );
    assert_eq!(result, Ok(()));
}
