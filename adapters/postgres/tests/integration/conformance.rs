use std::sync::Arc;

use reprise_core::conformance::event_store_suite;

use crate::support::{drop_schema, fresh_store, unique_schema};

#[tokio::test]
async fn the_core_event_store_conformance_suite_passes() {
    let store = fresh_store("conformance").await;
    let ns = unique_schema("ns");
    event_store_suite(Arc::new(store.clone()), &ns)
        .await
        .unwrap();
    // A second namespace in the same schema: the suite must hold on a non-empty store too.
    event_store_suite(Arc::new(store.clone()), &format!("{ns}again"))
        .await
        .unwrap();
    drop_schema(&store).await;
}

/// The same suite with group commit off (one statement per append, the pre-group path) and
/// with a gathering wait (groups formed by time, not only by backlog).
#[tokio::test]
async fn the_conformance_suite_passes_without_group_commit_and_with_a_gathering_wait() {
    use std::time::Duration;

    use reprise_postgres::GroupCommit;

    use crate::support::{config, connect};

    for (name, config) in [
        (
            "conformance_off",
            config("conformance_off")
                .with_group_commit(GroupCommit::off().max_group_size, Duration::ZERO),
        ),
        (
            "conformance_wait",
            config("conformance_wait").with_group_commit(16, Duration::from_millis(2)),
        ),
    ] {
        let store = connect(config).await;
        event_store_suite(Arc::new(store.clone()), &unique_schema(name))
            .await
            .unwrap();
        let stats = store.group_commit_stats();
        if name == "conformance_off" {
            assert_eq!(stats.groups, 0, "{stats:?}");
        } else {
            assert!(stats.groups > 0, "{stats:?}");
        }
        drop_schema(&store).await;
    }
}

#[tokio::test]
async fn recorded_events_carry_server_time_metadata_and_the_exact_payload() {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use reprise_core::{AppendBatch, EventStore, ExpectedVersion, Payload};

    use crate::support::{event, id_base};

    let store = fresh_store("roundtrip").await;
    let mut sent = event(id_base(), 1);
    // Spacing and key order are part of the payload: they must come back untouched.
    sent.payload = Payload::from_json_text(r#"{ "z": 1,  "a": [true, null, "é\u00e9"] }"#);
    store
        .append(AppendBatch::single(
            "rt-1".into(),
            ExpectedVersion::NoStream,
            vec![sent.clone()],
        ))
        .await
        .unwrap();
    let read = store.read_stream(&"rt-1".into(), 1, 10).await.unwrap();
    assert_eq!(read.len(), 1);
    let got = &read[0];
    assert_eq!(
        (got.event_id, &got.event_type, got.schema_version),
        (sent.event_id, &sent.event_type, 1)
    );
    assert_eq!(got.payload, sent.payload);
    assert_eq!(got.metadata, sent.metadata);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let recorded = Duration::from_nanos(got.recorded_at.as_unix_nanos());
    let skew = now.abs_diff(recorded);
    assert!(
        skew < Duration::from_secs(60),
        "recorded_at {recorded:?} is {skew:?} away from now"
    );
    drop_schema(&store).await;
}
