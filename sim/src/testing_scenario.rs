//! A small, complete scenario: tokens move between accounts through the event store and
//! the bus. The simulator's own tests and benchmark run it, and it doubles as the shortest
//! example of writing a scenario by hand (without core's `Store`/`Saga` machinery).
//!
//! - The **teller** node runs one task per transfer: it debits the source account and
//!   records the transfer in one atomic two-stream append (optimistic concurrency on the
//!   account, so concurrent transfers retry), then publishes a credit message keyed by the
//!   destination account. After a crash it re-runs every transfer: finished debits are
//!   detected by their stream, and the credit is published again (at-least-once).
//! - Two **ledger** nodes share the `ledger` consumer group: each credit message becomes a
//!   `Credited` event with an event id derived from the transfer, so redeliveries are
//!   absorbed by the store's idempotency.
//! - Invariants: no transfer is credited twice and money is never created (safety);
//!   every transfer is debited and credited and the total is conserved (liveness).
//!
//! [`PlantedBug::RandomCreditId`] draws the credit's event id at random instead: every
//! redelivery (a duplicate, a rebalance, a crash before the commit, a lost commit, a
//! teller restart) then credits twice. The tests check that a seed sweep finds it.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use reprise_core::event::StreamId;
use reprise_core::{
    AppendBatch, BusError, EventBus, EventId, EventStore, ExpectedVersion, Headers, Metadata,
    NewEvent, OutgoingMessage, Payload, Situation, StoreError,
};
use serde::{Deserialize, Serialize};

use crate::checker::{Scenario, ScenarioRun, Violation, WorldView};
use crate::world::{NodeContext, NodeOptions, World};

/// A deliberate bug, to prove the simulator finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// The ledger gives each credit a fresh random event id, so a redelivered credit is
    /// applied twice.
    RandomCreditId,
}

/// The token-transfer scenario. See the module docs.
#[derive(Clone, Debug)]
pub struct TokenTransfers {
    pub accounts: u32,
    pub transfers: u32,
    pub initial_balance: u64,
    pub ledgers: u32,
    pub bug: Option<PlantedBug>,
}

impl Default for TokenTransfers {
    /// 8 accounts, 50 transfers, 2 ledger nodes, no bug: "checkout-sized".
    fn default() -> Self {
        TokenTransfers {
            accounts: 8,
            transfers: 50,
            initial_balance: 1_000,
            ledgers: 2,
            bug: None,
        }
    }
}

impl TokenTransfers {
    #[must_use]
    pub fn with_bug(bug: PlantedBug) -> Self {
        TokenTransfers {
            bug: Some(bug),
            ..Self::default()
        }
    }
}

/// Two transfers raced for one account and the loser decided again.
pub const DEBIT_CONFLICT: Situation = Situation::new(
    "token-transfers.debit-conflict",
    "a debit lost an optimistic-concurrency race and was decided again",
);

/// A credit message came back and the store's idempotency absorbed it.
pub const CREDIT_ABSORBED: Situation = Situation::new(
    "token-transfers.credit-absorbed",
    "a redelivered credit was absorbed by its derived event id",
);

const TOPIC: &str = "credits";
const GROUP: &str = "ledger";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum AccountEvent {
    Opened { balance: u64 },
    Debited { transfer: u32, amount: u64 },
    Credited { transfer: u32, amount: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Credit {
    transfer: u32,
    to: u32,
    amount: u64,
}

#[derive(Clone, Copy, Debug)]
struct Transfer {
    id: u32,
    from: u32,
    to: u32,
    amount: u64,
}

/// Event ids derived from what the event means, so retries carry the same id.
fn derived_id(kind: u8, n: u32) -> EventId {
    EventId((u128::from(kind) << 64) | u128::from(n))
}

fn account(n: u32) -> StreamId {
    StreamId::of("account", n)
}

fn event(id: EventId, event: &AccountEvent) -> NewEvent {
    let event_type = match event {
        AccountEvent::Opened { .. } => "Opened",
        AccountEvent::Debited { .. } => "Debited",
        AccountEvent::Credited { .. } => "Credited",
    };
    NewEvent {
        event_id: id,
        event_type: event_type.into(),
        schema_version: 1,
        payload: Payload::encode(event).expect("account events serialize"),
        metadata: Metadata::default(),
    }
}

/// A jittered pause before retrying: the jitter comes from the node's entropy, so it is
/// deterministic under the simulator.
async fn backoff(ctx: &NodeContext) {
    let jitter = ctx.runtime().next_u64() % 20;
    ctx.sleep(Duration::from_millis(10 + jitter)).await;
}

async fn run_transfer(
    ctx: NodeContext,
    store: Arc<dyn EventStore>,
    bus: Arc<dyn EventBus>,
    t: Transfer,
) {
    let stream = StreamId::of("transfer", t.id);
    loop {
        match store.stream_version(&stream).await {
            Ok(0) => {}
            Ok(_) => break,
            Err(_) => {
                backoff(&ctx).await;
                continue;
            }
        }
        let Ok(version) = store.stream_version(&account(t.from)).await else {
            backoff(&ctx).await;
            continue;
        };
        let debit = AccountEvent::Debited {
            transfer: t.id,
            amount: t.amount,
        };
        let batch = AppendBatch::single(
            stream.clone(),
            ExpectedVersion::NoStream,
            vec![event(derived_id(1, t.id), &debit)],
        )
        .and(
            account(t.from),
            ExpectedVersion::Exact(version),
            vec![event(derived_id(2, t.id), &debit)],
        );
        match store.append(batch).await {
            Ok(_) => break,
            // Another writer moved the account (or our own lost-ack write landed): look again.
            Err(StoreError::Conflict { .. }) => {
                reprise_core::sometimes!(DEBIT_CONFLICT.name);
            }
            Err(e) if e.is_transient() => backoff(&ctx).await,
            Err(e) => {
                ctx.note(&format!("transfer {} failed permanently: {e}", t.id));
                return;
            }
        }
    }
    let credit = Credit {
        transfer: t.id,
        to: t.to,
        amount: t.amount,
    };
    let message = OutgoingMessage {
        topic: TOPIC.into(),
        key: account(t.to).as_str().into(),
        payload: Payload::encode(&credit).expect("credits serialize"),
        headers: Headers::default(),
    };
    while bus.publish(vec![message.clone()]).await.is_err() {
        backoff(&ctx).await;
    }
}

fn boot_teller(ctx: &NodeContext, transfers: &[Transfer]) {
    let store = ctx.event_store();
    let bus = ctx.event_bus();
    for &t in transfers {
        ctx.spawn(
            "transfer",
            run_transfer(ctx.clone(), Arc::clone(&store), Arc::clone(&bus), t),
        );
    }
}

async fn run_ledger(ctx: NodeContext, bug: Option<PlantedBug>) {
    let store = ctx.event_store();
    let bus = ctx.event_bus();
    loop {
        let Ok(mut subscription) = bus.subscribe(GROUP, &[TOPIC]).await else {
            backoff(&ctx).await;
            continue;
        };
        loop {
            let delivery = match subscription.next().await {
                Ok(d) => d,
                Err(BusError::Closed) => break,
                Err(_) => continue,
            };
            let Ok(credit) = delivery.payload.decode::<Credit>() else {
                ctx.note(&format!(
                    "poison message {} skipped",
                    delivery.coordinates()
                ));
                subscription.ack(&delivery);
                continue;
            };
            let id = match bug {
                None => derived_id(3, credit.transfer),
                Some(PlantedBug::RandomCreditId) => EventId(ctx.runtime().next_id()),
            };
            let credited = AccountEvent::Credited {
                transfer: credit.transfer,
                amount: credit.amount,
            };
            let batch = AppendBatch::single(
                account(credit.to),
                ExpectedVersion::Any,
                vec![event(id, &credited)],
            );
            loop {
                match store.append(batch.clone()).await {
                    Ok(receipt) => {
                        reprise_core::sometimes!(CREDIT_ABSORBED.name, receipt.was_duplicate);
                        break;
                    }
                    Err(e) if e.is_transient() => backoff(&ctx).await,
                    Err(e) => {
                        ctx.note(&format!(
                            "credit of transfer {} refused: {e}",
                            credit.transfer
                        ));
                        break;
                    }
                }
            }
            subscription.ack(&delivery);
            // A failed commit only means the message comes back: the credit is idempotent.
            let _ = subscription.commit().await;
        }
    }
}

impl Scenario for TokenTransfers {
    fn name(&self) -> &'static str {
        "token-transfers"
    }

    fn situations(&self) -> Vec<Situation> {
        vec![
            DEBIT_CONFLICT,
            CREDIT_ABSORBED,
            crate::bus::REBALANCE_MID_BATCH,
        ]
    }

    fn description(&self) -> &'static str {
        "tokens move between accounts via the event store and the bus; money is conserved"
    }

    fn setup(&self, world: &mut World) -> Box<dyn ScenarioRun> {
        assert!(
            self.accounts >= 2 && self.ledgers >= 1,
            "need two accounts and a ledger"
        );
        let store = world.event_store();
        for a in 0..self.accounts {
            let opened = AccountEvent::Opened {
                balance: self.initial_balance,
            };
            store
                .append_now(&AppendBatch::single(
                    account(a),
                    ExpectedVersion::NoStream,
                    vec![event(derived_id(0, a), &opened)],
                ))
                .expect("opening accounts on an empty store succeeds");
        }
        world.event_bus().create_topic(TOPIC, 4);
        let transfers: Vec<Transfer> = (0..self.transfers)
            .map(|id| {
                let from =
                    u32::try_from(world.random_u64() % u64::from(self.accounts)).expect("fits");
                let to = (from
                    + 1
                    + u32::try_from(world.random_u64() % u64::from(self.accounts - 1))
                        .expect("fits"))
                    % self.accounts;
                Transfer {
                    id,
                    from,
                    to,
                    amount: 1 + world.random_u64() % 10,
                }
            })
            .collect();
        let transfers: Arc<[Transfer]> = transfers.into();
        world.add_node("teller", NodeOptions::default(), move |ctx| {
            boot_teller(&ctx, &transfers);
        });
        for n in 1..=self.ledgers {
            let bug = self.bug;
            world.add_node(&format!("ledger-{n}"), NodeOptions::default(), move |ctx| {
                ctx.spawn("ledger", run_ledger(ctx.clone(), bug));
            });
        }
        Box::new(Checker {
            accounts: self.accounts,
            transfers: self.transfers,
            total: u64::from(self.accounts) * self.initial_balance,
            tally: RefCell::default(),
        })
    }
}

/// What the durable store says so far, folded incrementally.
#[derive(Debug, Default)]
struct Tally {
    next_position: u64,
    balances: BTreeMap<u32, u64>,
    debited: BTreeSet<u32>,
    credits: BTreeMap<u32, u32>,
    /// The first transfer credited twice, if any.
    double_credit: Option<(u32, String)>,
}

struct Checker {
    accounts: u32,
    transfers: u32,
    total: u64,
    tally: RefCell<Tally>,
}

impl Checker {
    fn refresh(&self, world: &WorldView<'_>) -> Result<(), Violation> {
        let mut tally = self.tally.borrow_mut();
        let from = tally.next_position.max(1);
        for recorded in world.event_store().read_all_now(from, usize::MAX) {
            tally.next_position = recorded.position + 1;
            if recorded.stream.category() != "account" {
                continue;
            }
            let account: u32 = recorded.stream.as_str()["account-".len()..]
                .parse()
                .map_err(|_| {
                    Violation::new(
                        "well-formed-streams",
                        format!("unexpected stream {}", recorded.stream),
                    )
                })?;
            let event: AccountEvent = recorded.payload.decode().map_err(|e| {
                Violation::new("well-formed-events", e.to_string())
                    .entity(recorded.stream.to_string())
            })?;
            let balance = tally.balances.entry(account).or_insert(0);
            match event {
                AccountEvent::Opened { balance: b } => *balance += b,
                AccountEvent::Debited { transfer, amount } => {
                    *balance = balance.checked_sub(amount).ok_or_else(|| {
                        Violation::new("no-overdraft", format!("debit of {amount} overdraws"))
                            .entity(recorded.stream.to_string())
                    })?;
                    tally.debited.insert(transfer);
                }
                AccountEvent::Credited { transfer, amount } => {
                    *balance += amount;
                    let count = tally.credits.entry(transfer).or_insert(0);
                    *count += 1;
                    if *count > 1 && tally.double_credit.is_none() {
                        tally.double_credit = Some((transfer, recorded.stream.to_string()));
                    }
                }
            }
        }
        Ok(())
    }
}

impl ScenarioRun for Checker {
    fn check_safety(&self, world: &WorldView<'_>) -> Result<(), Violation> {
        self.refresh(world)?;
        let tally = self.tally.borrow();
        if let Some((transfer, stream)) = &tally.double_credit {
            return Err(Violation::new(
                "no-double-credit",
                "a transfer was credited more than once",
            )
            .entity(format!("transfer-{transfer}"))
            .entity(stream.clone()));
        }
        let sum: u64 = tally.balances.values().sum();
        if sum > self.total {
            return Err(Violation::new(
                "money-is-never-created",
                format!("balances sum to {sum}, more than the {} issued", self.total),
            ));
        }
        if let Some(t) = tally.credits.keys().find(|t| !tally.debited.contains(t)) {
            return Err(
                Violation::new("no-credit-without-debit", "credited before any debit")
                    .entity(format!("transfer-{t}")),
            );
        }
        Ok(())
    }

    fn check_liveness(&self, world: &WorldView<'_>) -> Result<(), Violation> {
        self.refresh(world)?;
        let tally = self.tally.borrow();
        let credited = u32::try_from(tally.credits.len()).unwrap_or(u32::MAX);
        let debited = u32::try_from(tally.debited.len()).unwrap_or(u32::MAX);
        if debited < self.transfers || credited < self.transfers {
            let pending = (0..self.transfers)
                .find(|t| !tally.credits.contains_key(t))
                .map(|t| format!("transfer-{t}"));
            let mut v = Violation::new(
                "all-transfers-complete",
                format!(
                    "{debited}/{} debited, {credited}/{} credited",
                    self.transfers, self.transfers
                ),
            );
            if let Some(p) = pending {
                v = v.entity(p);
            }
            return Err(v);
        }
        let sum: u64 = tally.balances.values().sum();
        if sum != self.total || tally.balances.len() != self.accounts as usize {
            return Err(Violation::new(
                "conservation",
                format!("balances sum to {sum}, expected {}", self.total),
            ));
        }
        Ok(())
    }
}
