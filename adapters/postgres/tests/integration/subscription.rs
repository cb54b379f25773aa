//! Checkpoints and wake-ups of catch-up subscriptions.

use std::time::{Duration, Instant};

use reprise_core::{AppendBatch, EventStore, ExpectedVersion};
use reprise_postgres::SubscriptionOptions;

use crate::support::{drop_schema, event, fresh_store, id_base};

#[tokio::test]
async fn a_subscription_resumes_after_its_checkpoint() {
    let store = fresh_store("resume").await;
    let base = id_base();
    for i in 0..5u128 {
        store
            .append(AppendBatch::single(
                "resume-1".into(),
                ExpectedVersion::Any,
                vec![event(base + i, 0)],
            ))
            .await
            .unwrap();
    }
    let options = SubscriptionOptions {
        batch_size: 3,
        ..SubscriptionOptions::default()
    };
    let mut first = store.subscribe("projector", options).await.unwrap();
    let batch = first.next_batch().await.unwrap();
    assert_eq!(batch.len(), 3);
    first.checkpoint().await.unwrap();
    // Handed out but never checkpointed: must come again after a restart.
    let unhandled = first.next_batch().await.unwrap();
    assert_eq!(unhandled.len(), 2);
    drop(first);

    let mut second = store.subscribe("projector", options).await.unwrap();
    assert_eq!(second.position(), batch[2].position);
    let again = second.next_batch().await.unwrap();
    assert_eq!(
        again, unhandled,
        "at-least-once: the unacknowledged tail is delivered again"
    );
    second.checkpoint().await.unwrap();
    assert_eq!(
        store.load_checkpoint("projector").await.unwrap(),
        unhandled[1].position
    );

    // A checkpoint never moves backwards.
    store.save_checkpoint("projector", 1).await.unwrap();
    assert_eq!(
        store.load_checkpoint("projector").await.unwrap(),
        unhandled[1].position
    );
    drop_schema(&store).await;
}

#[tokio::test]
async fn a_notification_wakes_a_waiting_subscription_long_before_its_poll_interval() {
    let store = fresh_store("notify").await;
    let options = SubscriptionOptions {
        poll_interval: Duration::from_secs(30),
        ..SubscriptionOptions::default()
    };
    let mut subscription = store.subscribe("waker", options).await.unwrap();
    let writer = store.clone();
    let id = id_base();
    let started = Instant::now();
    let append = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        writer
            .append(AppendBatch::single(
                "notify-1".into(),
                ExpectedVersion::NoStream,
                vec![event(id, 0)],
            ))
            .await
    });
    let batch = tokio::time::timeout(Duration::from_secs(10), subscription.next_batch())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch.len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken by the notification, not the 30 s poll"
    );
    append.await.unwrap().unwrap();
    drop(subscription);
    drop_schema(&store).await;
}
