//! The counter on the production runtime: a delayed increment that fires, one that is
//! cancelled, and a graceful shutdown.
//!
//! `cargo run -p reprise-examples --example counter`

use std::sync::Arc;
use std::time::Duration;

use reprise_core::{BoxFuture, Store};
use reprise_examples::counter::{
    Counter, CounterAction, CounterEnv, CounterFeature, FactError, NumberFacts,
};
use reprise_tokio::TokioRuntime;

/// A facts service that answers locally; a real one would call out over the network.
struct LocalFacts;

impl NumberFacts for LocalFacts {
    fn fact(&self, n: i64) -> BoxFuture<'static, Result<String, FactError>> {
        let parity = if n % 2 == 0 { "even" } else { "odd" };
        Box::pin(async move { Ok(format!("{n} is {parity}")) })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = TokioRuntime::try_current()?.shared();
    let env = CounterEnv {
        facts: Arc::new(LocalFacts),
        increment_delay: Duration::from_millis(50),
    };
    let store = Store::builder(CounterFeature, Counter::default(), env, runtime).build();

    store.send(CounterAction::Increment).await;
    // Awaiting the send waits for everything it caused: here, the delayed increment.
    store.send(CounterAction::ScheduleIncrement).await;
    println!("after the delayed increment: {}", store.state().count);

    let scheduled = store.send(CounterAction::ScheduleIncrement);
    store.send(CounterAction::CancelScheduledIncrement).await;
    scheduled.await; // completes at once: its timer was cancelled
    println!("after a cancelled one:       {}", store.state().count);

    store.send(CounterAction::FactRequested).await;
    println!(
        "fact:                        {}",
        store.state().fact.unwrap_or_default()
    );

    store.shutdown(Duration::from_secs(1)).await?;
    Ok(())
}
