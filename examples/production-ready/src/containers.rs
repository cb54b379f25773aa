//! (feature `testcontainers`) PostgreSQL and Redpanda in Docker containers, for users who
//! have Docker and neither a database nor a broker: `reprise-shop serve` given neither
//! `DATABASE_URL` nor `KAFKA_BOOTSTRAP` starts both, migrates the schema, serves, and
//! removes the containers when it stops.
//!
//! The project's own tests and CI do not use this: they run on machines without a Docker
//! engine and start the real services from packages (`scripts/postgres.sh`,
//! `scripts/kafka.sh`). CI compiles the feature so that it cannot rot.
//!
//! Redpanda advertises the address clients must use, and that address is the host's end
//! of the port mapping, so the host port is chosen before the container starts (a free
//! loopback port) rather than left to Docker.

use std::time::{Duration, Instant};

use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// PostgreSQL's image. Any release the adapter supports (≥ 13) will do.
pub const POSTGRES_IMAGE: (&str, &str) = ("postgres", "16-alpine");
/// Redpanda's image: a Kafka-API broker in one container, no ZooKeeper or KRaft set-up.
pub const REDPANDA_IMAGE: (&str, &str) = ("docker.redpanda.com/redpandadata/redpanda", "v24.2.7");
/// The database's password inside its throwaway container.
const PASSWORD: &str = "reprise-container";
/// Longest wait for either container to accept connections.
const STARTUP: Duration = Duration::from_secs(120);

/// Both containers, removed when dropped.
pub struct Containers {
    pub database_url: String,
    pub kafka_bootstrap: String,
    _postgres: ContainerAsync<GenericImage>,
    _redpanda: ContainerAsync<GenericImage>,
}

impl std::fmt::Debug for Containers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containers")
            .field("kafka_bootstrap", &self.kafka_bootstrap)
            .finish_non_exhaustive()
    }
}

/// Starts PostgreSQL and Redpanda and waits until both accept connections.
///
/// # Errors
/// No Docker engine, an image that cannot be pulled, a container that does not start
/// within two minutes — each named.
pub async fn start() -> Result<Containers, String> {
    let (image, tag) = POSTGRES_IMAGE;
    let postgres = GenericImage::new(image, tag)
        .with_exposed_port(5432.tcp())
        .with_wait_for(WaitFor::message_on_stderr(
            "database system is ready to accept connections",
        ))
        .with_env_var("POSTGRES_PASSWORD", PASSWORD)
        .with_startup_timeout(STARTUP)
        .start()
        .await
        .map_err(|e| format!("starting PostgreSQL ({image}:{tag}) in Docker: {e}"))?;
    let pg_port = postgres
        .get_host_port_ipv4(5432.tcp())
        .await
        .map_err(|e| format!("PostgreSQL container's port: {e}"))?;
    let database_url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{pg_port}/postgres");
    // The image's entry point restarts the server once after initialising the data
    // directory: the first "ready" line may belong to the temporary server.
    wait_for_postgres(&database_url).await?;

    let kafka_port = free_port()?;
    let (image, tag) = REDPANDA_IMAGE;
    let redpanda = GenericImage::new(image, tag)
        .with_wait_for(WaitFor::message_on_either_std(
            "Successfully started Redpanda!",
        ))
        .with_mapped_port(kafka_port, 9092.tcp())
        .with_cmd([
            "redpanda".to_owned(),
            "start".to_owned(),
            "--mode=dev-container".to_owned(),
            "--smp=1".to_owned(),
            "--kafka-addr=0.0.0.0:9092".to_owned(),
            format!("--advertise-kafka-addr=127.0.0.1:{kafka_port}"),
        ])
        .with_startup_timeout(STARTUP)
        .start()
        .await
        .map_err(|e| format!("starting Redpanda ({image}:{tag}) in Docker: {e}"))?;
    Ok(Containers {
        database_url,
        kafka_bootstrap: format!("127.0.0.1:{kafka_port}"),
        _postgres: postgres,
        _redpanda: redpanda,
    })
}

async fn wait_for_postgres(url: &str) -> Result<(), String> {
    use sqlx::Connection;
    let deadline = Instant::now() + STARTUP;
    loop {
        match sqlx::PgConnection::connect(url).await {
            Ok(connection) => {
                let _ = connection.close().await;
                return Ok(());
            }
            Err(error) if Instant::now() >= deadline => {
                return Err(format!(
                    "the PostgreSQL container never accepted a connection: {error}"
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// A loopback port nobody listens on now.
fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("finding a free port for the broker: {e}"))?;
    listener
        .local_addr()
        .map(|address| address.port())
        .map_err(|e| format!("finding a free port for the broker: {e}"))
}
