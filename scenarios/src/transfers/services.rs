//! The transfers' services: the accounts service (one consumer of the account command
//! topic), the saga service (outbox relay + saga worker), and the client that opens
//! accounts and submits transfers. Same shapes as the checkout's; see
//! [`crate::checkout::services`] for the reasoning.

use std::sync::Arc;
use std::time::Duration;

use reprise_core::{Aggregate, BoxFuture, Delivery, Lease};

use super::account::{Account, AccountCommand, AccountEvent};
use super::request::{RequestCommand, RequestEvent, TransferOrder, TransferRequest};
use super::saga::{TransferCommand, TransferInput, TransferSaga, topics};
use crate::bugs::Bugs;
use crate::planted::{self, Aggregates};
use reprise_host::CommandHandler;
use reprise_host::Handling;
use reprise_host::SagaHost;
use reprise_host::commands::{self, BusDispatcher};
use reprise_host::consume::{self, ConsumerOptions, MessageHandler};
use reprise_host::relay::{self, RelayOptions, RelayedEvent, Route};
use reprise_host::{Platform, inbox};

/// Consumer groups (and inbox names).
pub mod groups {
    pub const ACCOUNTS: &str = "accounts-service";
    pub const SAGA: &str = "transfer-saga";
    pub const ALL: [(&str, &str); 2] = [
        (ACCOUNTS, super::topics::ACCOUNTS),
        (SAGA, super::topics::EVENTS),
    ];
}

fn consumer_options(group: &str, topic: &'static str) -> ConsumerOptions {
    ConsumerOptions::new(group, &[topic])
}

struct AccountsHandler {
    env: Platform,
    group: Arc<str>,
    accounts: Aggregates<Account>,
}

impl MessageHandler for AccountsHandler {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(message) = inbox::message_id(delivery) else {
                return;
            };
            let command = match commands::decode::<TransferCommand>(delivery) {
                Ok(command) => command,
                Err(error) => {
                    self.env.note(format_args!(
                        "{}: undecodable message {}: {error}",
                        self.group,
                        delivery.coordinates()
                    ));
                    inbox::record_alone(&self.env, &self.group, message).await;
                    return;
                }
            };
            let account_command = match command.clone() {
                TransferCommand::Debit {
                    transfer, amount, ..
                } => AccountCommand::Debit { transfer, amount },
                TransferCommand::ReverseDebit { transfer, .. } => {
                    AccountCommand::ReverseDebit { transfer }
                }
                TransferCommand::Credit {
                    transfer, amount, ..
                } => AccountCommand::Credit { transfer, amount },
                TransferCommand::VoidCredit { transfer, .. } => {
                    AccountCommand::VoidCredit { transfer }
                }
            };
            let handling = Some(Handling {
                consumer: &self.group,
                message,
            });
            let handled = self
                .accounts
                .execute_until_done(command.account(), &account_command, handling)
                .await;
            if let Some(rejection) = handled.rejection {
                self.env.note(format_args!(
                    "account-{}: {account_command:?} refused: {rejection}",
                    command.account()
                ));
            }
        })
    }
}

/// Starts the accounts service.
pub fn start_accounts_service(env: &Platform, bugs: Bugs) {
    let handler = Arc::new(AccountsHandler {
        env: env.clone(),
        group: groups::ACCOUNTS.into(),
        accounts: Aggregates::new(env, bugs),
    });
    env.runtime.spawn(
        "accounts-service",
        Box::pin(consume::run(
            env.clone(),
            consumer_options(groups::ACCOUNTS, topics::ACCOUNTS),
            handler,
        )),
    );
}

/// The saga input a relayed event means, and the transfer it concerns.
#[must_use]
pub fn saga_input(event: &RelayedEvent) -> Option<(String, TransferInput)> {
    match event.stream.category() {
        TransferRequest::CATEGORY => {
            let RequestEvent::Submitted(order) = event.payload.decode().ok()?;
            let transfer = event.entity().to_owned();
            Some((transfer.clone(), TransferInput::Start { transfer, order }))
        }
        Account::CATEGORY => {
            let decoded: AccountEvent = event.payload.decode().ok()?;
            let transfer = decoded.transfer()?.to_owned();
            let input = match decoded {
                AccountEvent::Debited { .. } => TransferInput::Debited,
                AccountEvent::DebitRefused { .. } => TransferInput::DebitRefused,
                AccountEvent::DebitReversed { .. } | AccountEvent::DebitVoided { .. } => {
                    TransferInput::DebitUndone
                }
                AccountEvent::Credited { .. } => TransferInput::Credited,
                AccountEvent::CreditVoided { .. } => TransferInput::CreditVoided,
                AccountEvent::Opened { .. } => return None,
            };
            Some((transfer, input))
        }
        _ => None,
    }
}

struct SagaWorker {
    env: Platform,
    group: Arc<str>,
    host: Arc<SagaHost<TransferSaga>>,
}

impl MessageHandler for SagaWorker {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(event) = RelayedEvent::from_delivery(delivery) else {
                return;
            };
            if let Some((transfer, input)) = saga_input(&event) {
                self.host.deliver(&transfer, input).await;
            }
            inbox::record_alone(&self.env, &self.group, event.event_id).await;
        })
    }
}

/// The outbox relay options of the transfers.
#[must_use]
pub fn relay_options() -> RelayOptions {
    let routes = [Account::CATEGORY, TransferRequest::CATEGORY]
        .into_iter()
        .map(|category| Route::new(category, topics::EVENTS))
        .collect();
    RelayOptions::new("transfers", routes)
}

/// How often the saga host restarts failed saga instances.
const SUPERVISE_EVERY: Duration = Duration::from_millis(500);

/// Starts the saga service: relay, recovery, and the consumer feeding the sagas.
pub fn start_saga_service(env: &Platform, relay_lease: Arc<dyn Lease>, bugs: Bugs) {
    env.runtime.spawn(
        "outbox-relay",
        Box::pin(relay::run(
            env.clone(),
            Arc::new(relay_options()),
            relay_lease,
        )),
    );
    let dispatcher = Arc::new(BusDispatcher::<TransferCommand>::new(env.clone(), 3));
    let host = Arc::new(SagaHost::<TransferSaga>::new(env.clone(), dispatcher));
    let worker = Arc::new(SagaWorker {
        env: env.clone(),
        group: groups::SAGA.into(),
        host: Arc::clone(&host),
    });
    let options = consumer_options(groups::SAGA, topics::EVENTS);
    reprise_host::saga_host::spawn_saga_service(
        &planted::consumer_platform(env, bugs),
        "transfer-saga",
        host,
        SUPERVISE_EVERY,
        options,
        worker,
    );
}

// ---------------------------------------------------------------------------------------
// Workload
// ---------------------------------------------------------------------------------------

/// The shape of a transfers workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransfersOptions {
    pub accounts: u32,
    pub initial_balance: u64,
    pub transfers: u32,
    /// Largest amount of one transfer (uniform in `1..=max_amount`); above a third of the
    /// initial balance, some transfers meet insufficient funds.
    pub max_amount: u64,
    pub arrival_span: Duration,
}

impl Default for TransfersOptions {
    /// 8 accounts of 1000, 50 transfers of up to 600 over 5 s.
    fn default() -> Self {
        TransfersOptions {
            accounts: 8,
            initial_balance: 1_000,
            transfers: 50,
            max_amount: 600,
            arrival_span: Duration::from_secs(5),
        }
    }
}

/// One transfer the client will submit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedTransfer {
    pub id: String,
    pub order: TransferOrder,
    pub at: Duration,
}

/// A generated workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransfersWorkload {
    pub accounts: Vec<(String, u64)>,
    pub transfers: Vec<PlannedTransfer>,
}

impl TransfersWorkload {
    /// Draws a workload from `draw` (uniform `u64`s).
    ///
    /// # Panics
    /// On options that describe no meaningful run (fewer than two accounts, no transfers).
    #[must_use]
    pub fn generate(options: &TransfersOptions, draw: &mut dyn FnMut() -> u64) -> Self {
        assert!(
            options.accounts >= 2 && options.transfers > 0 && options.max_amount > 0,
            "empty workload: {options:?}"
        );
        let accounts = (0..options.accounts)
            .map(|i| (format!("a{i}"), options.initial_balance))
            .collect();
        let span = u64::try_from(options.arrival_span.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let n = u64::from(options.accounts);
        let mut transfers: Vec<PlannedTransfer> = (0..options.transfers)
            .map(|i| {
                let from = draw() % n;
                let to = (from + 1 + draw() % (n - 1)) % n;
                let order = TransferOrder {
                    from: format!("a{from}"),
                    to: format!("a{to}"),
                    amount: 1 + draw() % options.max_amount,
                };
                PlannedTransfer {
                    id: format!("t{i:03}"),
                    order,
                    at: Duration::from_millis(100 + draw() % span),
                }
            })
            .collect();
        transfers.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.id.cmp(&b.id)));
        TransfersWorkload {
            accounts,
            transfers,
        }
    }

    /// The money in the system.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.accounts.iter().map(|(_, b)| b).sum()
    }
}

/// The client: opens the accounts, then submits each transfer at its time (idempotent,
/// so a restarted client starts over).
pub async fn run_client(env: Platform, workload: Arc<TransfersWorkload>) {
    let start = env.runtime.now();
    let accounts = CommandHandler::<Account>::new(&env);
    for (id, balance) in &workload.accounts {
        accounts
            .execute_until_done(id, &AccountCommand::Open { balance: *balance }, None)
            .await;
    }
    let requests = CommandHandler::<TransferRequest>::new(&env);
    for planned in &workload.transfers {
        env.sleep((start + planned.at).saturating_since(env.runtime.now()))
            .await;
        let handled = requests
            .execute_until_done(
                &planned.id,
                &RequestCommand::Submit(planned.order.clone()),
                None,
            )
            .await;
        if !handled.events.is_empty() {
            env.note(format_args!(
                "request-{} submitted: {:?}",
                planned.id, planned.order
            ));
        }
    }
}
