//! Catch-up subscriptions: read the global order from a stored checkpoint, then follow new
//! appends, never skipping a committed event and never delivering one twice within a run.
//!
//! Correctness rests on the visibility horizon of the read path (see the crate docs), not on
//! notifications: `LISTEN/NOTIFY` is only a wake-up hint. A notification can be lost (the
//! listening connection dropped, the notify queue overflowed) and the subscription still
//! makes progress at its poll interval; a notification that arrives early (the horizon has
//! not moved yet) only costs one empty read.
//!
//! Delivery is at-least-once across restarts: the checkpoint is written when the consumer
//! calls [`CatchUpSubscription::checkpoint`] after handling a batch, so a crash in between
//! replays that batch. Handlers deduplicate on the event id.

use std::time::Duration;

use reprise_core::{RecordedEvent, StoreError};
use sqlx::postgres::PgListener;

use crate::error::classify;
use crate::rows::{to_i64, to_u64};
use crate::store::PgEventStore;

const HELD_BACK_FIRST_PAUSE: Duration = Duration::from_millis(1);
const HELD_BACK_MAX_PAUSE: Duration = Duration::from_millis(50);

/// How a subscription reads and waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscriptionOptions {
    /// Events per read.
    pub batch_size: usize,
    /// Longest wait between reads when no notification arrives.
    pub poll_interval: Duration,
    /// Listen for append notifications (takes one pooled connection for the subscription's
    /// lifetime). Without it, new events are noticed at the poll interval.
    pub listen: bool,
}

impl Default for SubscriptionOptions {
    fn default() -> Self {
        SubscriptionOptions {
            batch_size: 1_000,
            poll_interval: Duration::from_millis(500),
            listen: true,
        }
    }
}

/// A checkpointed reader of the global order. See the module docs.
#[derive(Debug)]
pub struct CatchUpSubscription {
    store: PgEventStore,
    name: String,
    options: SubscriptionOptions,
    /// Position of the last event handed out (0 before the first).
    delivered: u64,
    /// Position last written to the checkpoint table.
    checkpointed: u64,
    listener: Option<PgListener>,
}

impl PgEventStore {
    /// The stored checkpoint of subscription `name` (0 when it has none).
    ///
    /// # Errors
    /// Store failures.
    pub async fn load_checkpoint(&self, name: &str) -> Result<u64, StoreError> {
        let name = name.to_owned();
        self.with_connection(move |connection| {
            Box::pin(async move {
                let position: Option<i64> = sqlx::query_scalar(
                    "SELECT position FROM subscription_checkpoints WHERE subscription_id = $1",
                )
                .bind(&name)
                .fetch_optional(connection)
                .await
                .map_err(|e| classify(&e))?;
                to_u64(position.unwrap_or(0), "position")
            })
        })
        .await
    }

    /// Stores `position` as the checkpoint of `name`. A checkpoint never moves backwards:
    /// a stale writer (an old instance still running during a deploy) cannot rewind it.
    ///
    /// # Errors
    /// Store failures; `InvalidBatch` for an empty name.
    pub async fn save_checkpoint(&self, name: &str, position: u64) -> Result<(), StoreError> {
        if name.is_empty() {
            return Err(StoreError::InvalidBatch(
                "a subscription needs a name".into(),
            ));
        }
        let name = name.to_owned();
        self.with_connection(move |connection| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO subscription_checkpoints (subscription_id, position) \
                     VALUES ($1, $2) ON CONFLICT (subscription_id) DO UPDATE \
                     SET position = excluded.position, updated_at = now() \
                     WHERE subscription_checkpoints.position <= excluded.position",
                )
                .bind(&name)
                .bind(to_i64(position))
                .execute(connection)
                .await
                .map_err(|e| classify(&e))?;
                Ok(())
            })
        })
        .await
    }

    /// Starts subscription `name` after its stored checkpoint.
    ///
    /// # Errors
    /// Store failures; `InvalidBatch` for an empty name or a zero batch size.
    pub async fn subscribe(
        &self,
        name: &str,
        options: SubscriptionOptions,
    ) -> Result<CatchUpSubscription, StoreError> {
        if name.is_empty() || options.batch_size == 0 {
            return Err(StoreError::InvalidBatch(
                "a subscription needs a name and a batch size above 0".into(),
            ));
        }
        let checkpoint = self.load_checkpoint(name).await?;
        let mut subscription = CatchUpSubscription {
            store: self.clone(),
            name: name.to_owned(),
            options,
            delivered: checkpoint,
            checkpointed: checkpoint,
            listener: None,
        };
        // Listen before the first read, so a commit between that read and the first wait
        // still wakes us.
        subscription.ensure_listener().await;
        Ok(subscription)
    }
}

impl CatchUpSubscription {
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Position of the last event handed out.
    #[must_use]
    pub fn position(&self) -> u64 {
        self.delivered
    }

    /// The next events in global order, without waiting; empty when caught up.
    ///
    /// # Errors
    /// Store failures. The position does not advance on error: call again.
    pub async fn poll(&mut self) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(self.read().await?.0)
    }

    /// The next events in global order, waiting until there is at least one.
    ///
    /// # Errors
    /// Store failures.
    pub async fn next_batch(&mut self) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut pause = HELD_BACK_FIRST_PAUSE;
        loop {
            let (events, held_back) = self.read().await?;
            if !events.is_empty() {
                return Ok(events);
            }
            if held_back {
                // Committed events exist but an older transaction is still open: it will end
                // within milliseconds, and no notification announces that.
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(HELD_BACK_MAX_PAUSE);
            } else {
                pause = HELD_BACK_FIRST_PAUSE;
                self.wait().await;
            }
        }
    }

    async fn read(&mut self) -> Result<(Vec<RecordedEvent>, bool), StoreError> {
        let (events, held_back) = self
            .store
            .read_committed_page(self.delivered + 1, self.options.batch_size)
            .await?;
        if let Some(last) = events.last() {
            assert!(
                events.first().is_some_and(|e| e.position > self.delivered),
                "the read path returned an event at or before the position already delivered"
            );
            self.delivered = last.position;
        }
        Ok((events, held_back))
    }

    /// Writes the position of the last event handed out as the checkpoint. Call it after
    /// the handler has finished with the events.
    ///
    /// # Errors
    /// Store failures.
    pub async fn checkpoint(&mut self) -> Result<(), StoreError> {
        if self.delivered > self.checkpointed {
            self.store
                .save_checkpoint(&self.name, self.delivered)
                .await?;
            self.checkpointed = self.delivered;
        }
        Ok(())
    }

    /// Sleeps until a notification arrives or the poll interval passes.
    async fn wait(&mut self) {
        self.ensure_listener().await;
        let interval = self.options.poll_interval;
        match self.listener.as_mut() {
            Some(listener) => {
                // Ok(Some): woken; Err: the poll interval passed; Ok(None): the connection
                // dropped and sqlx reconnects on the next call. All mean "read again".
                if let Ok(Err(error)) = tokio::time::timeout(interval, listener.try_recv()).await {
                    tracing::warn!(subscription = %self.name, %error, "listener failed; polling");
                    self.listener = None;
                }
            }
            None => tokio::time::sleep(interval).await,
        }
    }

    async fn ensure_listener(&mut self) {
        if !self.options.listen || self.listener.is_some() {
            return;
        }
        let channel = self.store.channel().to_owned();
        let listener = async {
            let mut listener = PgListener::connect_with(self.store.pool()).await?;
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match listener.await {
            Ok(listener) => self.listener = Some(listener),
            Err(error) => {
                tracing::warn!(subscription = %self.name, %error, "cannot listen; polling");
            }
        }
    }
}
