//! Events and outbox messages commit together or not at all.

use reprise_core::{AppendBatch, ExpectedVersion, Headers, OutgoingMessage, Payload, StoreError};

use crate::support::{drop_schema, event, fresh_store, id_base};

fn message(key: &str, n: u64) -> OutgoingMessage {
    OutgoingMessage {
        topic: "orders".into(),
        key: key.into(),
        payload: Payload::from_json_text(format!(r#"{{"n":{n}}}"#)),
        headers: Headers::default()
            .with("reprise-event-id", n.to_string())
            .with("traceparent", "00-x"),
    }
}

#[tokio::test]
async fn events_and_outbox_messages_commit_together_or_not_at_all() {
    let store = fresh_store("outbox").await;
    let base = id_base();
    let batch = AppendBatch::single(
        "order-1".into(),
        ExpectedVersion::NoStream,
        vec![event(base, 1), event(base + 1, 2)],
    );
    let receipt = store
        .append_with_outbox(
            batch.clone(),
            vec![message("order-1", 1), message("order-1", 2)],
        )
        .await
        .unwrap();
    assert_eq!(receipt.version_of(&"order-1".into()), Some(2));

    // A conflicting append writes neither events nor messages.
    let stale = AppendBatch::single(
        "order-1".into(),
        ExpectedVersion::NoStream,
        vec![event(base + 2, 3)],
    );
    let conflict = store
        .append_with_outbox(stale, vec![message("order-1", 3)])
        .await;
    assert!(
        matches!(conflict, Err(StoreError::Conflict { actual: 2, .. })),
        "{conflict:?}"
    );

    // Retrying the committed batch (lost acknowledgement) enqueues nothing twice.
    let retry = store
        .append_with_outbox(batch, vec![message("order-1", 1), message("order-1", 2)])
        .await
        .unwrap();
    assert!(retry.was_duplicate);

    let pending = store.outbox_pending(10).await.unwrap();
    let messages: Vec<_> = pending.iter().map(|p| p.message.clone()).collect();
    assert_eq!(
        messages,
        [message("order-1", 1), message("order-1", 2)],
        "byte for byte, in order"
    );
    assert!(pending[0].id < pending[1].id);

    assert_eq!(
        store.mark_outbox_published(&[pending[0].id]).await.unwrap(),
        1
    );
    assert_eq!(
        store.mark_outbox_published(&[pending[0].id]).await.unwrap(),
        0,
        "idempotent"
    );
    let left = store.outbox_pending(10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, pending[1].id);
    drop_schema(&store).await;
}
