//! The planted bugs' code: deliberately wrong alternatives to the host library's
//! components, kept here — in scenario code — so the library itself never ships a wrong
//! path behind a switch. [`crate::bugs`] names them; each scenario variant swaps one in.
//!
//! - [`ack_before_process`]: a bus wrapper whose subscriptions acknowledge and commit each
//!   message as it is received, before the (correct) consume loop has handled it;
//! - [`apply_before_append`]: an aggregate cache that believes a decision before the store
//!   does;
//! - [`Aggregates`]: what a service handler holds — the host's
//!   [`CommandHandler`](reprise_host::CommandHandler), or the planted cache.
//!
//! The other planted bugs are alternative branches of the scenarios' own handlers and
//! sagas (payment idempotency, compensation on timeout, deciding from a projection, the
//! retry storm, and the deep ones: a refund voided from our own books, the tracker's blind
//! retry), next to the correct code they get wrong.

pub mod ack_before_process;
pub mod apply_before_append;

use reprise_core::repository::Decided;
use reprise_core::{Aggregate, CommandError};
use reprise_host::{CommandHandler, Handling, Platform};

use crate::bugs::{Bugs, PlantedBug};

/// The command handler a service uses for one aggregate type: the host's, or the one
/// with [`PlantedBug::ApplyBeforeAppend`].
#[derive(Debug)]
pub enum Aggregates<A: Aggregate> {
    Correct(CommandHandler<A>),
    ApplyBeforeAppend(apply_before_append::EagerCache<A>),
}

impl<A: Aggregate> Aggregates<A> {
    #[must_use]
    pub fn new(platform: &Platform, bugs: Bugs) -> Self {
        if bugs.contains(PlantedBug::ApplyBeforeAppend) {
            Aggregates::ApplyBeforeAppend(apply_before_append::EagerCache::new(platform))
        } else {
            Aggregates::Correct(CommandHandler::new(platform))
        }
    }

    /// The aggregate's state and version.
    ///
    /// # Errors
    /// Store failures and undecodable events.
    pub async fn load(&self, id: &str) -> Result<(A, u64), CommandError<A::Error>> {
        match self {
            Aggregates::Correct(handler) => handler.repository().load(id).await,
            Aggregates::ApplyBeforeAppend(cache) => cache.load(id).await,
        }
    }

    /// See [`CommandHandler::execute`].
    ///
    /// # Errors
    /// See [`CommandHandler::execute`].
    pub async fn execute(
        &self,
        id: &str,
        command: &A::Command,
        handling: Option<Handling<'_>>,
    ) -> Result<Decided<A>, CommandError<A::Error>> {
        match self {
            Aggregates::Correct(handler) => handler.execute(id, command, handling).await,
            Aggregates::ApplyBeforeAppend(cache) => cache.execute(id, command, handling).await,
        }
    }

    /// See [`CommandHandler::execute_until_done`].
    pub async fn execute_until_done(
        &self,
        id: &str,
        command: &A::Command,
        handling: Option<Handling<'_>>,
    ) -> Decided<A> {
        match self {
            Aggregates::Correct(handler) => handler.execute_until_done(id, command, handling).await,
            Aggregates::ApplyBeforeAppend(cache) => {
                cache.execute_until_done(id, command, handling).await
            }
        }
    }
}

/// The platform a consumer of a service runs on: `platform` itself, or — with
/// [`PlantedBug::AckBeforeProcess`] — one whose bus acknowledges on receipt.
#[must_use]
pub fn consumer_platform(platform: &Platform, bugs: Bugs) -> Platform {
    if bugs.contains(PlantedBug::AckBeforeProcess) {
        platform
            .clone()
            .with_bus(std::sync::Arc::new(ack_before_process::AckOnReceive::new(
                std::sync::Arc::clone(&platform.bus),
            )))
    } else {
        platform.clone()
    }
}
