//! `PgLease`: the core lease suite on PostgreSQL, and what happens when the leader's session
//! is killed under it.

use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use reprise_core::conformance::lease_suite;
use reprise_core::{Leadership, Lease, LeaseError};
use reprise_postgres::lease::{APPLICATION_NAME, LEASE_HELD, LOCK_CLASS};
use reprise_postgres::{PgConfig, PgEventStore, PgLease};

use crate::support::{drop_schema, fresh_store};

/// Backends holding `name`'s lock in `store`'s schema.
async fn holders(store: &PgEventStore, name: &str) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND objsubid = 2 \
           AND classid = $1::int4::oid AND objid = hashtext($2)::oid \
         ORDER BY pid",
    )
    .bind(LOCK_CLASS)
    .bind(format!("{}:{name}", store.config().schema))
    .fetch_all(store.pool())
    .await
    .expect("read pg_locks")
}

/// Tries `lease` until it is granted (a freed lock may take a moment), at most 5 s.
async fn acquire_within(lease: &PgLease) -> Box<dyn Leadership> {
    for _ in 0..100 {
        match lease.try_acquire().await {
            Ok(Some(held)) => return held,
            Ok(None) | Err(LeaseError::Transient(_)) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("acquire: {e}"),
        }
    }
    panic!("the lease was never granted");
}

#[tokio::test]
async fn the_postgres_lease_passes_the_conformance_suite() {
    let store = fresh_store("lease_suite").await;
    let contender = || -> Arc<dyn Lease> { Arc::new(PgLease::new(&store, "relay-suite")) };
    lease_suite(&contender, || tokio::time::sleep(Duration::from_millis(50)))
        .await
        .unwrap();
    // The suite ends with a release: nothing holds the lock any more.
    assert_eq!(holders(&store, "relay-suite").await, Vec::<i32>::new());
    drop_schema(&store).await;
}

#[tokio::test]
async fn leases_of_other_names_and_schemas_do_not_exclude_each_other() {
    let store = fresh_store("lease_names").await;
    let other = fresh_store("lease_names").await;
    let a = PgLease::new(&store, "relay-a")
        .try_acquire()
        .await
        .unwrap()
        .expect("free");
    let b = PgLease::new(&store, "relay-b")
        .try_acquire()
        .await
        .unwrap()
        .expect("another name is another lease");
    let c = PgLease::new(&other, "relay-a")
        .try_acquire()
        .await
        .unwrap()
        .expect("another schema is another lease");
    assert_eq!(holders(&store, "relay-a").await.len(), 1);
    for held in [a, b, c] {
        held.release().await;
    }
    assert_eq!(holders(&store, "relay-a").await, Vec::<i32>::new());
    drop_schema(&other).await;
    drop_schema(&store).await;
}

#[tokio::test]
async fn an_unreachable_server_is_a_transient_error_naming_the_address() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let config = PgConfig::new("postgres://reprise:unused@127.0.0.1:1/nowhere")
        .with_schema("lease_unreachable")
        .with_operation_timeout(Duration::from_secs(5));
    let lease = PgLease::from_config(&config, "relay-unreachable").unwrap();
    match lease.try_acquire().await {
        Err(LeaseError::Transient(message)) => {
            assert!(
                message.contains("127.0.0.1:1"),
                "names the address: {message}"
            );
            assert!(
                message.contains("relay-unreachable"),
                "names the lease: {message}"
            );
            assert!(message.contains("refused"), "says why: {message}");
        }
        other => panic!("expected a transient error, got {other:?}"),
    }
    assert!(PgLease::from_config(&config.with_schema("Not-An-Identifier"), "x").is_err());
}

/// The [`LEASE_HELD`] gauge of one lease. The debugging recorder's snapshots take the
/// value and reset it (deltas), and the lease only increments and decrements it, so the
/// gauge is the running sum of the snapshots.
struct HeldGauge {
    snapshotter: Snapshotter,
    lease: &'static str,
    value: f64,
    seen: bool,
}

impl HeldGauge {
    fn read(&mut self) -> f64 {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let key = key.key();
            if key.name() == LEASE_HELD
                && key
                    .labels()
                    .any(|l| l.key() == "lease" && l.value() == self.lease)
            {
                self.seen = true;
                match value {
                    DebugValue::Gauge(delta) => self.value += delta.into_inner(),
                    other => panic!("{LEASE_HELD} is a gauge, got {other:?}"),
                }
            }
        }
        assert!(
            self.seen,
            "{LEASE_HELD} of {} was never registered",
            self.lease
        );
        self.value
    }
}

/// A killed session is a lost lease: the old leader's next confirm says `Lost` (never
/// `Ok`), and a standby takes over. Runs on one thread so the metrics recorder, local to
/// it, sees every update.
#[test]
fn terminating_the_leaders_backend_loses_the_lease_and_a_standby_takes_over() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let store = fresh_store("lease_terminate").await;
            let name = "relay-terminate";
            let leader = PgLease::new(&store, name);
            let standby = PgLease::new(&store, name);
            let mut gauge = HeldGauge {
                snapshotter,
                lease: name,
                value: 0.0,
                seen: false,
            };
            assert_eq!(gauge.read(), 0.0, "registered at 0");

            let mut held = leader.try_acquire().await.unwrap().expect("a free lease");
            held.confirm().await.unwrap();
            assert!(standby.try_acquire().await.unwrap().is_none());
            assert_eq!(gauge.read(), 1.0);

            let pids = holders(&store, name).await;
            assert_eq!(pids.len(), 1, "one session holds the lock: {pids:?}");
            let application: String =
                sqlx::query_scalar("SELECT application_name FROM pg_stat_activity WHERE pid = $1")
                    .bind(pids[0])
                    .fetch_one(store.pool())
                    .await
                    .unwrap();
            assert_eq!(application, APPLICATION_NAME);
            // With a timeout, it returns once the backend is gone (not just signalled).
            let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
                .bind(pids[0])
                .fetch_one(store.pool())
                .await
                .unwrap();
            assert!(terminated);

            match held.confirm().await {
                Err(LeaseError::Lost(reason)) => {
                    assert!(reason.contains(name), "{reason}");
                }
                other => panic!("a terminated session must be a lost lease, got {other:?}"),
            }
            assert!(
                matches!(held.confirm().await, Err(LeaseError::Lost(_))),
                "lost stays lost"
            );
            assert_eq!(gauge.read(), 0.0, "a lost lease is not held");

            let mut successor = acquire_within(&standby).await;
            successor.confirm().await.unwrap();
            assert_eq!(gauge.read(), 1.0);
            // The stale leadership's release must not free the successor's lock.
            held.release().await;
            successor.confirm().await.unwrap();
            assert!(leader.try_acquire().await.unwrap().is_none());
            successor.release().await;
            assert_eq!(gauge.read(), 0.0);
            assert_eq!(holders(&store, name).await, Vec::<i32>::new());
            drop_schema(&store).await;
        });
    });
}
