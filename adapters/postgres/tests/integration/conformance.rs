use std::sync::Arc;

use reprise_core::conformance::event_store_suite;

use crate::support::{drop_schema, fresh_store, unique_schema};

#[tokio::test]
async fn the_core_event_store_conformance_suite_passes() {
    let store = fresh_store("conformance").await;
    let ns = unique_schema("ns");
    event_store_suite(Arc::new(store.clone()), &ns).await.unwrap();
    // A second namespace in the same schema: the suite must hold on a non-empty store too.
    event_store_suite(Arc::new(store.clone()), &format!("{ns}again")).await.unwrap();
    drop_schema(&store).await;
}
