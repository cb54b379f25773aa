//! The order aggregate on the production runtime: one order run by a `Store`, another
//! handled request/response by a `Repository`, both on the same event store.
//!
//! `cargo run -p reprise-examples --example order_service`

use std::sync::Arc;

use reprise_core::{
    AggregateAction, CommandError, Entropy, EventStore, InMemoryEventStore, Metadata, Repository,
};
use reprise_examples::order::{Order, OrderCommand, OrderError, order_store};
use reprise_tokio::TokioRuntime;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = TokioRuntime::try_current()?.shared();
    let events: Arc<dyn EventStore> = Arc::new(InMemoryEventStore::with_clock(runtime.clone()));

    // A long-lived order in a Store: each send completes once its events are appended.
    let store = order_store("1", runtime.clone(), Arc::clone(&events));
    for command in [
        OrderCommand::Place {
            customer: "ada".into(),
        },
        OrderCommand::AddLine {
            sku: "tea".into(),
            quantity: 2,
            unit_price_cents: 350,
        },
        OrderCommand::Submit,
    ] {
        store.send(AggregateAction::Execute(command)).await;
    }
    let root = store.state();
    println!(
        "store:      order-1 is {:?}, total {} cents, v{}",
        root.state.status, root.state.total_cents, root.version
    );

    // The same aggregate behind a request/response API.
    let entropy: Arc<dyn Entropy> = runtime.clone();
    let orders = Repository::<Order>::new(Arc::clone(&events), entropy);
    orders
        .execute(
            "2",
            &OrderCommand::Place {
                customer: "bob".into(),
            },
            Metadata::default(),
        )
        .await?;
    match orders
        .execute("2", &OrderCommand::Submit, Metadata::default())
        .await
    {
        Err(CommandError::Rejected(OrderError::EmptyOrder)) => {
            println!("repository: order-2 refused: empty");
        }
        other => return Err(format!("expected an empty-order rejection, got {other:?}").into()),
    }
    let (order, version) = orders.load("2").await?;
    println!("repository: order-2 is {:?} at v{version}", order.status);
    store.shutdown(std::time::Duration::from_secs(1)).await?;
    Ok(())
}
