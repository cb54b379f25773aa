//! The simulation: a client sends top-up instructions over the bus, two instances of the
//! wallet service share one consumer group, and the simulator injects its faults
//! (crashes, partitions, duplicates, lost commits, rebalances, store timeouts …).
//!
//! Invariants, read from the durable store:
//! - **applied once** (safety): no instruction's top-up appears twice in a wallet;
//! - **no money from nowhere** (safety): a wallet never holds more than its instructions
//!   add up to;
//! - **everything arrives** (liveness): once faults heal, every instruction has been
//!   applied.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use reprise_core::{Aggregate, EventId};
use reprise_host::Platform;
use reprise_host::commands;
use reprise_sim::{NodeContext, NodeOptions, Scenario, ScenarioRun, Violation, World, WorldView};

use crate::service::{self, Instruction, TOPIC, WalletHandler};
use crate::wallet::{Wallet, WalletCommand, WalletEvent};

/// The scenario. See the module docs.
#[derive(Clone, Debug)]
pub struct Wallets {
    pub wallets: u32,
    pub instructions: u32,
    /// Plants the guide's bug: the service forgets the inbox.
    pub without_inbox: bool,
}

impl Wallets {
    #[must_use]
    pub fn correct() -> Self {
        Wallets {
            wallets: 4,
            instructions: 40,
            without_inbox: false,
        }
    }

    #[must_use]
    pub fn without_inbox() -> Self {
        Wallets {
            without_inbox: true,
            ..Wallets::correct()
        }
    }
}

/// The platform a simulated node hands its service: the node's runtime, store and bus,
/// and its trace for notes.
fn platform(ctx: &NodeContext) -> Platform {
    let notes = ctx.clone();
    Platform::new(ctx.runtime(), ctx.event_store(), ctx.event_bus())
        .with_notes(Arc::new(move |text| notes.note_fmt(text)))
}

/// One instruction with the message id it is always sent under (a retry or a reboot
/// sends the same id: at-least-once, deduplicated by the service's inbox).
#[derive(Clone, Debug)]
struct Planned {
    id: EventId,
    instruction: Instruction,
}

/// Publishes every instruction until the bus acknowledges it. Runs again from the first
/// one after a reboot, like a client that does not know what got through.
async fn run_client(ctx: NodeContext, planned: Arc<[Planned]>) {
    let platform = platform(&ctx);
    for plan in planned.iter() {
        let message = commands::encode(&plan.instruction, plan.id).expect("instructions serialize");
        let mut backoff = platform.backoff();
        while platform.bus.publish(vec![message.clone()]).await.is_err() {
            platform.pause(&mut backoff).await;
        }
    }
}

impl Scenario for Wallets {
    fn name(&self) -> &'static str {
        if self.without_inbox {
            "wallets-bug-without-inbox"
        } else {
            "wallets"
        }
    }

    fn description(&self) -> &'static str {
        if self.without_inbox {
            "wallets whose service forgets the inbox: redeliveries top up twice"
        } else {
            "top-ups sent over the bus to two wallet-service instances"
        }
    }

    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        world.event_bus().create_topic(TOPIC, 4);
        let mut expected: BTreeMap<String, BTreeMap<EventId, u64>> = BTreeMap::new();
        let planned: Vec<Planned> = (0..self.instructions)
            .map(|n| {
                let wallet = format!("w{}", world.random_u64() % u64::from(self.wallets));
                let amount = 1 + world.random_u64() % 100;
                let id = EventId(u128::from(world.random_u64()) << 32 | u128::from(n));
                expected
                    .entry(wallet.clone())
                    .or_default()
                    .insert(id, amount);
                Planned {
                    id,
                    instruction: Instruction {
                        wallet,
                        command: WalletCommand::TopUp { amount },
                    },
                }
            })
            .collect();
        let planned: Arc<[Planned]> = planned.into();
        world.add_node("client", NodeOptions::default(), move |ctx| {
            ctx.spawn("client", run_client(ctx.clone(), Arc::clone(&planned)));
        });
        let without_inbox = self.without_inbox;
        for name in ["wallet-1", "wallet-2"] {
            world.add_node(name, NodeOptions::default(), move |ctx| {
                let platform = platform(&ctx);
                let handler = if without_inbox {
                    WalletHandler::without_inbox(&platform)
                } else {
                    WalletHandler::new(&platform)
                };
                service::start(&platform, handler);
            });
        }
        Box::new(Checker {
            expected,
            seen: RefCell::default(),
        })
    }
}

/// What the store holds so far, folded incrementally.
#[derive(Debug, Default)]
struct Seen {
    next_position: u64,
    /// Per wallet: instruction (the event's causation) → amount applied.
    applied: BTreeMap<String, BTreeMap<u128, u64>>,
    /// The first instruction applied twice: (wallet, instruction).
    twice: Option<(String, u128)>,
}

struct Checker {
    expected: BTreeMap<String, BTreeMap<EventId, u64>>,
    seen: RefCell<Seen>,
}

impl Checker {
    fn refresh(&self, view: &WorldView<'_>) {
        let mut seen = self.seen.borrow_mut();
        let from = seen.next_position.max(1);
        for recorded in view.event_store().read_all_now(from, usize::MAX) {
            seen.next_position = recorded.position + 1;
            if recorded.stream.category() != Wallet::CATEGORY {
                continue;
            }
            let wallet = recorded.stream.as_str()[Wallet::CATEGORY.len() + 1..].to_owned();
            let Ok(WalletEvent::ToppedUp { amount }) = recorded.payload.decode() else {
                continue;
            };
            let cause = recorded
                .metadata
                .causation_id
                .unwrap_or(recorded.event_id.0);
            let previous = seen
                .applied
                .entry(wallet.clone())
                .or_default()
                .insert(cause, amount);
            if previous.is_some() && seen.twice.is_none() {
                seen.twice = Some((wallet, cause));
            }
        }
    }
}

impl ScenarioRun for Checker {
    fn check_safety(&self, view: &WorldView<'_>) -> Result<(), Violation> {
        self.refresh(view);
        let seen = self.seen.borrow();
        if let Some((wallet, cause)) = &seen.twice {
            return Err(Violation::new(
                "applied once",
                format!(
                    "instruction {:?} topped up wallet {wallet} twice",
                    EventId(*cause)
                ),
            )
            .entity(format!("wallet-{wallet}")));
        }
        for (wallet, applied) in &seen.applied {
            let balance: u64 = applied.values().sum();
            let most: u64 = self.expected.get(wallet).map_or(0, |e| e.values().sum());
            if balance > most {
                return Err(Violation::new(
                    "no money from nowhere",
                    format!("wallet {wallet} holds {balance}, its instructions add up to {most}"),
                )
                .entity(format!("wallet-{wallet}")));
            }
        }
        Ok(())
    }

    fn check_liveness(&self, view: &WorldView<'_>) -> Result<(), Violation> {
        self.refresh(view);
        let seen = self.seen.borrow();
        for (wallet, instructions) in &self.expected {
            let applied = seen.applied.get(wallet);
            let missing: BTreeSet<&EventId> = instructions
                .keys()
                .filter(|id| applied.is_none_or(|a| !a.contains_key(&id.0)))
                .collect();
            if !missing.is_empty() {
                return Err(Violation::new(
                    "everything arrives",
                    format!(
                        "wallet {wallet}: {} instruction(s) never applied",
                        missing.len()
                    ),
                )
                .entity(format!("wallet-{wallet}")));
            }
        }
        Ok(())
    }
}
