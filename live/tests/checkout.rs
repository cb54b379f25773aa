//! The checkout on PostgreSQL and a Kafka-API broker, checked with the simulator's
//! invariants — and proof that those checks can fail.
//!
//! Needs `DATABASE_URL` and `KAFKA_BOOTSTRAP` (`eval "$(bash scripts/postgres.sh)"`,
//! `eval "$(bash scripts/kafka.sh)"`). Without them the tests say so and pass on a
//! developer machine; under `CI` (any value) they fail instead, so a green CI run means
//! the services were exercised.

// A test of real infrastructure: it blocks on a librdkafka commit off the async workers,
// as the crate itself does (see the crate root).
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use reprise_core::event_bus::header;
use reprise_core::{
    Aggregate, AppendBatch, EventId, EventStore, ExpectedVersion, Metadata, NewEvent,
};
use reprise_core::{Headers, OutgoingMessage, Payload};
use reprise_kafka::{KafkaConfig, KafkaEventBus};
use reprise_live::{
    CheckoutRun, LiveConfig, LiveError, Progress, WaitOutcome, admin, run_checkout,
    run_checkout_until,
};
use reprise_scenarios::checkout::gateway::{ChargeOutcome, ChargeRequest};
use reprise_scenarios::checkout::invariants::invariant;
use reprise_scenarios::checkout::inventory::{Inventory, InventoryEvent};
use reprise_scenarios::checkout::saga::topics;
use reprise_scenarios::checkout::services::groups;

/// The configuration from the environment, or `None` (after saying why) when the
/// services are not configured outside CI.
fn config(orders: u32) -> Option<LiveConfig> {
    // `RUST_LOG=reprise_live=debug` shows the services' notes; a second init is a no-op.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    match LiveConfig::from_env(orders) {
        Ok(config) => Some(config),
        Err(error) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: {error} (under CI=true this test fails instead)");
            None
        }
        Err(error) => panic!("{error}: CI must run the live checkout"),
    }
}

fn print_progress(progress: &Progress) {
    eprintln!("{progress:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_on_real_infrastructure_keeps_every_invariant() {
    let Some(config) = config(20) else { return };
    let config = config.with_seed(20).with_timeout(Duration::from_secs(150));
    let infrastructure = config.clone();
    let report = match run_checkout(config).await {
        Ok(report) => report,
        Err(LiveError::Violation { report }) => panic!("invariant violated:\n{report}"),
        Err(error) => panic!("the live run failed: {error}"),
    };
    eprintln!("{report}");
    assert!(report.is_clean());
    assert_eq!(report.orders_planned, 20);
    assert_eq!(report.orders_placed, 20, "every planned order was placed");
    assert_eq!(
        report.orders_completed + report.orders_compensated,
        20,
        "every order is terminal exactly once"
    );
    assert!(
        report.orders_completed > 0,
        "a run where nothing completes says little: {report}"
    );
    assert!(report.settled_after.is_some());
    assert!(
        report.acknowledged_verified > 0,
        "the consumer check looked at no acknowledged message: {report}"
    );
    assert!(report.events > 20 * 5, "too few events for 20 checkouts");
    assert!(!report.schema_kept, "a clean run removes its namespace");
    let left = admin::footprint(&infrastructure, &report.namespace)
        .await
        .expect("the namespace is looked up");
    assert!(left.is_empty(), "a clean run left {left:?}");
}

/// Settles a small run, then breaks the world in two ways the services never would and
/// requires the final check to name each break.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_reports_tampered_books_and_bogus_events() {
    let Some(config) = config(8) else { return };
    let config = config.with_seed(8).with_timeout(Duration::from_secs(150));
    let mut progress = print_progress;
    let mut run = CheckoutRun::start(config, &mut progress)
        .await
        .expect("the run starts");
    let outcome = run.wait(&mut progress).await;
    run.stop().await;
    assert!(
        matches!(outcome, WaitOutcome::Settled { .. }),
        "the untampered run settles: {outcome:?}"
    );
    let clean = run.check().await.expect("the run is checked");
    assert_eq!(clean.findings, vec![], "the untampered run is clean");
    assert_eq!(
        clean.unchecked,
        Vec::<String>::new(),
        "everything was checked"
    );

    // 1. The provider captures a second time for a completed order (a fresh key: what a
    //    non-idempotent payment handler would send).
    let completed = run
        .workload()
        .orders
        .iter()
        .find(|planned| run.provider().books().held_for(&planned.id).0 > 0)
        .expect("some order completed and holds money")
        .clone();
    let outcome = run.provider().charge_now(&ChargeRequest {
        idempotency_key: format!("{}-tampered", completed.id),
        order: completed.id.clone(),
        amount: completed.line.amount,
        card: completed.line.card,
    });
    assert!(matches!(outcome, ChargeOutcome::Captured { .. }));
    let checked = run.check().await.expect("the run is checked");
    assert!(
        checked
            .findings
            .iter()
            .any(|f| f.invariant == invariant::DOUBLE_CAPTURE
                && f.entities.contains(&format!("order-{}", completed.id))),
        "a double capture must be reported: {:?}",
        checked.findings
    );

    // 2. A second reservation for the same order lands in the store.
    let reserved_again = InventoryEvent::Reserved {
        order: completed.id.clone(),
        quantity: completed.line.quantity,
    };
    let event = NewEvent::encode(
        EventId(u128::from(u64::MAX) + 7),
        &reserved_again,
        Metadata::default(),
    )
    .expect("encode");
    let batch = AppendBatch::single(
        Inventory::stream_id(&completed.line.sku),
        ExpectedVersion::Any,
        vec![event],
    );
    EventStore::append(run.store().as_ref(), batch)
        .await
        .expect("append the bogus reservation");
    // Gap-free reads show an event only once every transaction older than it has ended,
    // database-wide; other tests running against the same server can hold that horizon
    // back for a while, so the checker may need a few passes to see the bogus event. The
    // books are still tampered with, so the double capture is reported too; the order of
    // findings follows the checkers' order, which the test does not pin.
    let reported = |findings: &[reprise_scenarios::audit::Finding]| {
        findings.iter().any(|f| {
            f.invariant == invariant::RESERVED_TWICE
                && f.entities.contains(&format!("order-{}", completed.id))
        })
    };
    let mut passes = 0;
    let checked = loop {
        let checked = run.check().await.expect("the run is checked");
        passes += 1;
        // At most a minute of 250 ms pauses.
        if reported(&checked.findings) || passes >= 240 {
            break checked;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        reported(&checked.findings),
        "a second reservation must be reported: {:?}",
        checked.findings
    );

    // 3. An acknowledged message that never took effect: a command nobody handled, with
    //    the orders service's committed offset moved past it (what committing before
    //    handling leaves behind).
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").expect("checked by config()");
    let bus = KafkaEventBus::new(KafkaConfig::new(bootstrap.clone())).expect("bus");
    let message_id = EventId(u128::from(u64::MAX) + 11);
    let receipts = bus
        .publish_with_receipts(vec![OutgoingMessage {
            topic: format!("{}.{}", run.namespace(), topics::ORDERS).into(),
            key: "order-unhandled".into(),
            payload: Payload::from_json_text("{}"),
            headers: Headers::default().with(
                header::EVENT_ID,
                reprise_host::ids::format_event_id(message_id),
            ),
        }])
        .await
        .expect("publish the unhandled command");
    let receipt = receipts[0].clone();
    let group = format!("{}.{}", run.namespace(), groups::ORDERS);
    let committed = receipt.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(
                &committed.topic,
                i32::try_from(committed.partition).expect("partition"),
                Offset::Offset(i64::try_from(committed.offset + 1).expect("offset")),
            )
            .expect("offset");
        consumer
            .commit(&offsets, CommitMode::Sync)
            .expect("commit past the unhandled command");
    })
    .await
    .expect("commit task");
    let checked = run.check().await.expect("the run is checked");
    assert!(
        checked.findings.iter().any(|f| f.invariant
            == reprise_scenarios::audit::invariant::NOTHING_LOST
            && f.message.contains(&message_id.to_string())),
        "an acknowledged but unhandled message must be reported (receipt {receipt:?}): {:?}",
        checked.findings
    );
    run.drop_schema().await.expect("drop the tampered schema");
}

/// Messages no checkout service can handle, produced by a plain Kafka client onto the
/// topics the services consume: each is dead-lettered with its reason (never dropped
/// without a trace), the run still settles, and the checker counts the letters as handled
/// instead of reporting them lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_poison_messages_are_dead_lettered_and_the_run_stays_clean() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let Some(config) = config(6) else { return };
    let config = config.with_seed(6).with_timeout(Duration::from_secs(150));
    let mut progress = print_progress;
    let mut run = CheckoutRun::start(config, &mut progress)
        .await
        .expect("the run starts");
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").expect("checked by config()");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("a plain producer");
    let id = b"0123abcd-0000-4000-8000-00000000beef";
    // (topic, key, payload, headers): no headers, not JSON, a bad id, not UTF-8, a
    // tombstone — on a command topic and on the saga's events topic.
    type Shape<'a> = (
        &'a str,
        Option<&'a [u8]>,
        Option<&'a [u8]>,
        Option<&'a [u8]>,
    );
    let shapes: [Shape<'_>; 6] = [
        (topics::ORDERS, None, Some(b"{}"), None),
        (topics::ORDERS, Some(b"order-x"), Some(b"{oops"), Some(id)),
        (topics::INVENTORY, Some(b"sku-x"), Some(b"{}"), Some(b"42")),
        (
            topics::PAYMENTS,
            Some(b"order-x"),
            Some(&[0xff, 0xfe]),
            Some(id),
        ),
        (topics::EVENTS, Some(b"order-x"), None, Some(id)),
        (topics::EVENTS, None, Some(b"[1,2"), None),
    ];
    for (topic, key, payload, event_id) in shapes {
        let topic = format!("{}.{topic}", run.namespace());
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        if let Some(event_id) = event_id {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: header::EVENT_ID,
                value: Some(event_id),
            }));
        }
        producer
            .send(record, Duration::from_secs(5))
            .await
            .map_err(|(e, _)| e)
            .expect("produce a poison message");
    }

    let outcome = run.wait(&mut progress).await;
    assert!(
        matches!(outcome, WaitOutcome::Settled { .. }),
        "poison messages do not stop the checkout: {outcome:?}"
    );
    // The services dead-letter asynchronously: give the last letters a moment.
    let mut checked = None;
    for _ in 0..40 {
        let c = run.check().await.expect("the run is checked");
        if c.bus.dead_lettered >= 6 {
            checked = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    run.stop().await;
    let checked = match checked {
        Some(c) => c,
        None => run.check().await.expect("the run is checked"),
    };
    assert_eq!(
        checked.findings,
        vec![],
        "dead-lettered messages count as handled"
    );
    assert_eq!(checked.bus.dead_lettered, 6, "{:?}", checked.bus);
    run.drop_schema().await.expect("drop the schema");
}

/// A run that cannot reach its broker fails naming the address, and leaves no schema
/// behind (the broker is checked before the schema is created).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_fails_naming_it_and_leaves_no_schema() {
    let Some(config) = config(1) else { return };
    // Unique per run: OS entropy through the production runtime.
    let entropy = reprise_tokio::TokioRuntime::try_current().expect("in tokio");
    let namespace = format!(
        "live_nobroker_{:x}",
        reprise_core::Entropy::next_u64(&entropy) >> 16
    );
    let database_url = config.database_url.clone();
    let mut config = config.with_namespace(namespace.clone());
    config.kafka_bootstrap = "127.0.0.1:1".into();
    let error = run_checkout(config)
        .await
        .expect_err("nothing listens on port 1");
    assert!(
        error.to_string().contains("127.0.0.1:1"),
        "the error names the broker: {error}"
    );
    let pool = sqlx::PgPool::connect(&database_url).await.expect("connect");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)")
            .bind(&namespace)
            .fetch_one(&pool)
            .await
            .expect("query");
    assert!(!exists, "a failed run left schema {namespace} behind");
    pool.close().await;
}

/// A name no other run uses: OS entropy through the production runtime.
fn unique_namespace(what: &str) -> String {
    let entropy = reprise_tokio::TokioRuntime::try_current().expect("in tokio");
    format!(
        "live_{what}_{:x}",
        reprise_core::Entropy::next_u64(&entropy) >> 24
    )
}

/// A clean run kept on purpose: `check` passes on it from durable truth alone and says
/// what it cannot check; a second run is refused its namespace; `clean` removes the
/// schema, every topic (`.dlq` included) and every group, and a second `clean` finds
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_run_is_checked_from_durable_truth_then_cleaned_completely() {
    let Some(config) = config(8) else { return };
    let namespace = unique_namespace("kept");
    let config = config
        .with_seed(9)
        .with_timeout(Duration::from_secs(150))
        .with_namespace(namespace.clone())
        .with_keep_schema(true);
    let report = match run_checkout(config.clone()).await {
        Ok(report) => report,
        Err(error) => panic!("the run failed: {error}"),
    };
    assert!(report.schema_kept, "keep_schema keeps the namespace");
    assert_eq!(report.namespace, namespace);

    let checked = admin::check_namespace(&config, &namespace)
        .await
        .expect("the namespace is checked");
    eprintln!("{checked}");
    assert!(checked.holds(), "{checked}");
    assert_eq!(checked.findings, vec![]);
    let record = checked.record.expect("the run recorded its parameters");
    assert_eq!((record.seed, record.orders), (9, 8));
    assert_eq!(checked.completed + checked.compensated, 8, "{checked}");
    let bus = checked.bus.clone().expect("the broker was read");
    assert!(bus.acknowledged_verified > 0, "{checked}");
    assert!(
        checked
            .checked
            .iter()
            .any(|c| c.contains("every planned order placed")),
        "the liveness checks ran against the recorded workload: {checked}"
    );
    assert_eq!(
        checked.unchecked.len(),
        1,
        "only the provider's own books are out of reach: {checked}"
    );
    assert!(checked.unchecked[0].contains("provider's own books"));

    // The namespace holds a run: a second one is refused before anything changes.
    let error = run_checkout(config.clone().with_keep_schema(false))
        .await
        .expect_err("the namespace is in use");
    assert!(matches!(error, LiveError::NamespaceInUse { .. }), "{error}");
    assert!(
        error.to_string().contains("reprise real clean --namespace"),
        "{error}"
    );

    let cleaned = admin::clean_namespace(&config, &namespace)
        .await
        .expect("the namespace is removed");
    eprintln!("{cleaned}");
    assert!(cleaned.schema_dropped);
    assert!(
        cleaned.topics_deleted.len() >= 10,
        "5 topics and their dead-letter topics: {cleaned}"
    );
    assert!(
        cleaned
            .topics_deleted
            .iter()
            .any(|t| t == &format!("{namespace}.{}.dlq", topics::ORDERS)),
        "{cleaned}"
    );
    assert!(
        cleaned.groups_deleted.len() >= groups::ALL.len(),
        "{cleaned}"
    );
    let left = admin::footprint(&config, &namespace)
        .await
        .expect("looked up");
    assert!(left.is_empty(), "clean left {left:?}");
    let again = admin::clean_namespace(&config, &namespace)
        .await
        .expect_err("nothing left to remove");
    assert!(
        matches!(again, LiveError::NoSuchNamespace { .. }),
        "{again}"
    );
}

/// `check` and `clean` of a name with nothing behind it fail, saying so, and create
/// nothing; a name outside the namespace pattern is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_clean_of_a_missing_namespace_fail_and_create_nothing() {
    let Some(config) = config(1) else { return };
    let namespace = unique_namespace("missing");
    let error = admin::check_namespace(&config, &namespace)
        .await
        .expect_err("no such namespace");
    assert!(
        matches!(error, LiveError::NoSuchNamespace { .. }),
        "{error}"
    );
    let error = admin::clean_namespace(&config, &namespace)
        .await
        .expect_err("no such namespace");
    assert!(error.to_string().contains("does not exist"), "{error}");
    let left = admin::footprint(&config, &namespace)
        .await
        .expect("looked up");
    assert!(left.is_empty(), "{left:?}");
    for name in ["public", "shop", "live-x", "LIVE_X"] {
        let error = admin::clean_namespace(&config, name)
            .await
            .expect_err("not a run's namespace");
        assert!(error.to_string().contains("live_[a-z0-9_]*"), "{error}");
    }
}

/// An interrupted run stops its services, checks what it can, and comes back
/// incomplete with its report and namespace (kept), which `clean` then removes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_reports_what_it_saw_and_keeps_its_namespace() {
    let Some(config) = config(40) else { return };
    let config = config.with_seed(4).with_timeout(Duration::from_secs(150));
    let infrastructure = config.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut tx = Some(tx);
    // Interrupted at the first progress report after orders start flowing.
    let progress = move |p: &Progress| {
        eprintln!("{p:?}");
        if matches!(p, Progress::Waiting { placed, .. } if *placed > 0)
            && let Some(tx) = tx.take()
        {
            let _ = tx.send(());
        }
    };
    let interrupt = async move {
        let _ = rx.await;
        "SIGINT".to_owned()
    };
    let error = run_checkout_until(config, progress, interrupt)
        .await
        .expect_err("an interrupted run is incomplete");
    let LiveError::Incomplete { cause, report } = &error else {
        panic!("expected an incomplete run, got {error}");
    };
    eprintln!("{report}");
    assert!(cause.contains("SIGINT"), "{cause}");
    assert_eq!(report.ended_early.as_deref(), Some("interrupted by SIGINT"));
    assert!(report.schema_kept);
    assert!(
        report.orders_placed > 0 && report.orders_placed < 40,
        "{report}"
    );
    assert_eq!(report.findings, vec![], "nothing broke: {report}");
    assert!(
        report
            .unchecked
            .iter()
            .any(|u| u.contains("every saga terminal")),
        "the liveness checks are skipped, and said to be: {report}"
    );
    let text = report.to_string();
    assert!(
        text.contains(&format!(
            "reprise real clean --namespace {}",
            report.namespace
        )),
        "{text}"
    );
    let cleaned = admin::clean_namespace(&infrastructure, &report.namespace)
        .await
        .expect("the kept namespace is removed");
    assert!(cleaned.schema_dropped, "{cleaned}");
}
