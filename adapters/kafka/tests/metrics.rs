//! The metrics the adapter promises in `docs/event-bus.md`, observed through a recorder
//! while it talks to a real broker (`KAFKA_BOOTSTRAP`, see `tests/broker.rs`; never
//! skipped). A separate test binary because a `metrics` recorder is process-global.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use reprise_core::Payload;
use reprise_core::event_bus::{EventBus, Headers, OutgoingMessage};
use reprise_kafka::{KafkaConfig, KafkaEventBus, metrics as m};

type Sample = (String, Vec<(String, String)>, f64);

/// Every metric's current value. The debugging recorder resets values when it snapshots,
/// so each checkpoint takes one snapshot and looks up everything in it.
fn snapshot(snapshotter: &Snapshotter) -> Vec<Sample> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, v)| {
            let k = key.key();
            let labels = k
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            #[allow(clippy::cast_precision_loss)]
            let value = match v {
                DebugValue::Counter(c) => c as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(h) => h.len() as f64,
            };
            (k.name().to_owned(), labels, value)
        })
        .collect()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples.iter().find_map(|(n, ls, v)| {
        (n == name
            && labels
                .iter()
                .all(|(ln, lv)| ls.iter().any(|(k, val)| k == ln && val == lv)))
        .then_some(*v)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_commit_and_lag_metrics_are_exported() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let bootstrap = std::env::var("KAFKA_BOOTSTRAP")
        .unwrap_or_else(|_| panic!("KAFKA_BOOTSTRAP is unset: start a broker with `eval \"$(scripts/kafka.sh)\"`. These tests never skip."));
    let config = KafkaConfig::new(bootstrap)
        .group_timing(Duration::from_secs(6), Duration::from_millis(500))
        .statistics_interval(Some(Duration::from_millis(200)))
        // Bare numbers without event ids: not Reprise messages.
        .message_check(reprise_kafka::MessageCheck::Text);
    let budget = config.group_join_budget();
    let bus = KafkaEventBus::new(config).expect("bus");
    bus.check_connection()
        .await
        .expect("the broker at KAFKA_BOOTSTRAP must answer");

    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let topic = format!("rk-metrics-{nanos}-events");
    let group = format!("rk-metrics-{nanos}-group");
    bus.create_topic(&topic, 1, 1).await.expect("create topic");
    let messages = (0..10)
        .map(|n| OutgoingMessage {
            topic: topic.as_str().into(),
            key: "k".into(),
            payload: Payload::from_json_text(format!("{n}")),
            headers: Headers::default(),
        })
        .collect();
    bus.publish(messages).await.expect("publish");
    let after_publish = snapshot(&snapshotter);
    assert_eq!(
        value(&after_publish, m::PUBLISH_DURATION_SECONDS, &[]),
        Some(1.0),
        "one batch timed"
    );
    assert_eq!(
        value(&after_publish, m::PUBLISHED_TOTAL, &[("topic", &topic)]),
        Some(10.0)
    );

    let mut sub = bus.subscribe(&group, &[&topic]).await.expect("subscribe");
    for i in 0..10 {
        let d = tokio::time::timeout(budget, sub.next())
            .await
            .expect("a message within the join budget")
            .expect("next");
        if i < 4 {
            sub.ack(&d);
        }
    }
    sub.commit().await.expect("commit");
    let after_commit = snapshot(&snapshotter);
    assert_eq!(
        value(
            &after_commit,
            m::CONSUMED_TOTAL,
            &[("group", &group), ("topic", &topic)]
        ),
        Some(10.0)
    );
    assert_eq!(
        value(&after_commit, m::COMMITS_TOTAL, &[("group", &group)]),
        Some(1.0)
    );
    assert_eq!(
        value(&after_commit, m::UNCOMMITTED, &[("group", &group)]),
        Some(6.0),
        "6 delivered, not handled"
    );
    assert_eq!(
        value(
            &after_commit,
            m::REBALANCES_TOTAL,
            &[("group", &group), ("event", "assign")]
        ),
        Some(1.0)
    );

    // Statistics are served while the consumer polls: wait on an empty topic until the lag
    // gauge reports high watermark (10) minus committed offset (4).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut lag = None;
    while tokio::time::Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
        lag = value(
            &snapshot(&snapshotter),
            m::CONSUMER_LAG,
            &[("group", &group), ("topic", &topic), ("partition", "0")],
        );
        if lag == Some(6.0) {
            break;
        }
    }
    assert_eq!(lag, Some(6.0), "consumer lag = 10 published - 4 committed");
}
