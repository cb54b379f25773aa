//! The wallet service: consumes instructions from the bus and applies them to wallets —
//! the production code, written only against the host library, so the simulator and the
//! real deployment run this very file.

use std::sync::Arc;

use reprise_core::{BoxFuture, Delivery};
use reprise_host::commands::{self, CommandRoute};
use reprise_host::consume::{self, ConsumerOptions, MessageHandler};
use reprise_host::{CommandHandler, Handling, Platform, inbox};
use serde::{Deserialize, Serialize};

use crate::wallet::{Wallet, WalletCommand};

/// The topic instructions travel on.
pub const TOPIC: &str = "wallet-instructions";
/// The service's consumer group (and inbox).
pub const GROUP: &str = "wallet-service";

/// A command for one wallet, as a bus message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instruction {
    pub wallet: String,
    pub command: WalletCommand,
}

impl CommandRoute for Instruction {
    fn topic(&self) -> &'static str {
        TOPIC
    }

    fn key(&self) -> String {
        self.wallet.clone()
    }

    fn name(&self) -> &'static str {
        match self.command {
            WalletCommand::TopUp { .. } => "TopUp",
            WalletCommand::Spend { .. } => "Spend",
        }
    }
}

/// Applies each instruction to its wallet, with the inbox marker in the same batch: a
/// redelivered instruction changes nothing.
pub struct WalletHandler {
    wallets: CommandHandler<Wallet>,
    /// `false` plants the guide's bug: the handler forgets the inbox.
    use_inbox: bool,
}

impl WalletHandler {
    #[must_use]
    pub fn new(platform: &Platform) -> Self {
        WalletHandler {
            wallets: CommandHandler::new(platform),
            use_inbox: true,
        }
    }

    /// The guide's planted bug: the same handler without the inbox marker. Every
    /// redelivery (a crash before the ack, a rebalance, a lost commit) applies twice.
    #[must_use]
    pub fn without_inbox(platform: &Platform) -> Self {
        WalletHandler {
            use_inbox: false,
            ..WalletHandler::new(platform)
        }
    }
}

impl MessageHandler for WalletHandler {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            // A message without an id or with a payload we cannot read is a producer bug
            // that no retry fixes; a real service would dead-letter it.
            let Some(message) = inbox::message_id(delivery) else {
                return;
            };
            let Ok(instruction) = commands::decode::<Instruction>(delivery) else {
                return;
            };
            let handling = self.use_inbox.then_some(Handling {
                consumer: GROUP,
                message,
            });
            self.wallets
                .execute_until_done(&instruction.wallet, &instruction.command, handling)
                .await;
        })
    }
}

/// Starts the service's consume loop on `platform`.
pub fn start(platform: &Platform, handler: WalletHandler) {
    let consumer = platform.clone();
    platform.runtime.spawn(
        "wallet-service",
        Box::pin(consume::run(
            consumer,
            ConsumerOptions::new(GROUP, &[TOPIC]),
            Arc::new(handler),
        )),
    );
}
