//! The wallet service on real infrastructure: tokio, PostgreSQL (`DATABASE_URL`) and a
//! Kafka-API broker (`KAFKA_BOOTSTRAP`) — the very `service` module the simulator sweeps.
//!
//! ```text
//! wallet-service [TOP_UPS]
//! ```
//!
//! Starts the service, sends `TOP_UPS` (default 20) top-ups to four wallets over the
//! broker, waits until the store shows every one applied, prints the balances and exits.

// A production binary: the wall clock (timeouts) and tokio are its business.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reprise_core::{EventId, EventStore};
use reprise_host::{CommandHandler, Platform, commands};
use reprise_kafka::{KafkaConfig, KafkaEventBus};
use reprise_postgres::{MigrationMode, PgConfig, PgEventStore};
use reprise_tokio::TokioRuntime;
use wallets::service::{self, Instruction, TOPIC, WalletHandler};
use wallets::wallet::{Wallet, WalletCommand};

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| {
        format!("{name} is not set: start the services with scripts/postgres.sh and scripts/kafka.sh and export what they print")
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let top_ups: u32 = match std::env::args().nth(1) {
        Some(n) => n
            .parse()
            .map_err(|_| format!("TOP_UPS must be a number, not {n:?}"))?,
        None => 20,
    };
    let store = PgEventStore::connect(
        PgConfig::new(env("DATABASE_URL")?)
            .with_schema("wallets")
            .with_migrations(MigrationMode::Apply),
    )
    .await?;
    let bus = KafkaEventBus::new(
        KafkaConfig::new(env("KAFKA_BOOTSTRAP")?)
            .client_id("wallet-service")
            .group_timing(Duration::from_secs(6), Duration::from_millis(500)),
    )?;
    // The broker does not create topics on first use (a typo must not create one).
    if bus.partition_count(TOPIC).await.is_err() {
        bus.create_topic(TOPIC, 4, 1).await?;
    }
    let runtime = TokioRuntime::try_current()?.shared();
    let store: Arc<dyn EventStore> = Arc::new(store);
    let platform = Platform::new(runtime, Arc::clone(&store), Arc::new(bus));
    service::start(&platform, WalletHandler::new(&platform));

    // Top-ups under ids unique to this run, so a rerun adds to the balances.
    let run = u128::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64,
    );
    let mut expected = [0u64; 4];
    for n in 0..top_ups {
        let wallet = n % 4;
        let amount = u64::from(n + 1);
        expected[wallet as usize] += amount;
        let instruction = Instruction {
            wallet: format!("w{wallet}"),
            command: WalletCommand::TopUp { amount },
        };
        let message = commands::encode(&instruction, EventId(run << 32 | u128::from(n)))?;
        platform.bus.publish(vec![message]).await?;
    }

    let wallets = CommandHandler::<Wallet>::new(&platform);
    let before = Instant::now();
    let mut applied = [0u64; 4];
    let deadline = Duration::from_secs(60);
    loop {
        for (w, total) in applied.iter_mut().enumerate() {
            let (wallet, _) = wallets.repository().load(&format!("w{w}")).await?;
            *total = wallet.balance;
        }
        println!("balances: {applied:?}");
        // Balances include earlier runs: done once each has grown by this run's top-ups.
        if applied.iter().zip(&expected).all(|(a, e)| a >= e) {
            println!(
                "every top-up applied after {:.1}s",
                before.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if before.elapsed() > deadline {
            return Err(format!("top-ups not applied within {deadline:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
