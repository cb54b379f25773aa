//! What one checkout run does: a few SKUs with limited stock, and orders arriving over a
//! few seconds — some for more than is left, some paid with cards the provider declines.
//!
//! The workload is generated up front from a stream of random numbers handed in by the
//! caller (the simulator's workload stream), so the same seed gives the same orders
//! whatever the fault plan; the client that places them is an ordinary service.

use std::sync::Arc;
use std::time::Duration;

use super::order::{Order, OrderCommand, OrderLine};
use super::services::initialize_stock;
use reprise_host::CommandHandler;
use reprise_host::Platform;

/// The shape of a checkout workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckoutOptions {
    pub orders: u32,
    pub skus: u32,
    /// Largest quantity of one order (uniform in `1..=max_quantity`).
    pub max_quantity: u32,
    /// Stock as a share (in percent) of the expected demand: below 100 some orders must
    /// run out of stock.
    pub stock_percent_of_demand: u32,
    /// Orders arrive uniformly over this span.
    pub arrival_span: Duration,
    /// The provider declines cards whose token is a multiple of this.
    pub decline_every: u32,
}

impl Default for CheckoutOptions {
    /// About 50 checkouts over 5 s, stock for 80% of them, 1 card in 10 declined.
    fn default() -> Self {
        CheckoutOptions {
            orders: 50,
            skus: 3,
            max_quantity: 3,
            stock_percent_of_demand: 80,
            arrival_span: Duration::from_secs(5),
            decline_every: 10,
        }
    }
}

impl CheckoutOptions {
    /// # Panics
    /// On options that describe no meaningful run.
    pub fn validate(&self) {
        assert!(
            self.orders > 0 && self.skus > 0 && self.max_quantity > 0,
            "empty workload: {self:?}"
        );
        assert!(
            (1..=1000).contains(&self.stock_percent_of_demand),
            "stock_percent_of_demand out of range: {self:?}"
        );
        assert!(
            self.decline_every >= 2,
            "decline_every must be at least 2: {self:?}"
        );
    }
}

/// One order the client will place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedOrder {
    pub id: String,
    pub line: OrderLine,
    /// When to place it, from the client's start.
    pub at: Duration,
}

/// A generated workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckoutWorkload {
    pub stock: Vec<(String, u32)>,
    pub orders: Vec<PlannedOrder>,
}

/// Unit price of a SKU in cents, so amounts differ between SKUs.
fn price(sku_index: u32) -> u64 {
    u64::from(sku_index + 1) * 250
}

impl CheckoutWorkload {
    /// Draws a workload from `draw` (uniform `u64`s).
    #[must_use]
    pub fn generate(options: &CheckoutOptions, draw: &mut dyn FnMut() -> u64) -> Self {
        options.validate();
        let demand_per_sku = u64::from(options.orders) * u64::from(options.max_quantity + 1)
            / 2
            / u64::from(options.skus);
        let stock_per_sku =
            u32::try_from(demand_per_sku * u64::from(options.stock_percent_of_demand) / 100)
                .unwrap_or(u32::MAX)
                .max(1);
        let stock = (0..options.skus)
            .map(|i| (format!("sku{i}"), stock_per_sku))
            .collect();
        let span = u64::try_from(options.arrival_span.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut orders: Vec<PlannedOrder> = (0..options.orders)
            .map(|n| {
                let sku_index = u32::try_from(draw() % u64::from(options.skus)).unwrap_or(0);
                let quantity =
                    u32::try_from(draw() % u64::from(options.max_quantity)).unwrap_or(0) + 1;
                let card = u32::try_from(draw() % 1000).unwrap_or(0) + 1;
                let line = OrderLine {
                    sku: format!("sku{sku_index}"),
                    quantity,
                    amount: price(sku_index) * u64::from(quantity),
                    card,
                };
                // A short pause after start lets the stock be initialized first.
                PlannedOrder {
                    id: format!("o{n:03}"),
                    line,
                    at: Duration::from_millis(100 + draw() % span),
                }
            })
            .collect();
        orders.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.id.cmp(&b.id)));
        CheckoutWorkload { stock, orders }
    }
}

/// The customer-facing client: initializes stock, then places each order at its time.
/// Placing is idempotent, so a restarted client simply starts over.
pub async fn run_client(env: Platform, workload: Arc<CheckoutWorkload>) {
    let start = env.runtime.now();
    for (sku, quantity) in &workload.stock {
        initialize_stock(&env, sku, *quantity).await;
    }
    let orders = CommandHandler::<Order>::new(&env);
    for planned in &workload.orders {
        let due = start + planned.at;
        env.sleep(due.saturating_since(env.runtime.now())).await;
        let handled = orders
            .execute_until_done(
                &planned.id,
                &OrderCommand::Place(planned.line.clone()),
                None,
            )
            .await;
        if !handled.events.is_empty() {
            env.note(format_args!(
                "order-{} placed: {:?}",
                planned.id, planned.line
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_a_function_of_the_draws() {
        let mut counter = 0u64;
        let mut draw = || {
            counter = counter
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            counter >> 11
        };
        let a = CheckoutWorkload::generate(&CheckoutOptions::default(), &mut draw);
        let mut counter = 0u64;
        let mut draw = || {
            counter = counter
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            counter >> 11
        };
        assert_eq!(
            a,
            CheckoutWorkload::generate(&CheckoutOptions::default(), &mut draw)
        );
        assert_eq!(a.orders.len(), 50);
        assert!(a.orders.windows(2).all(|w| w[0].at <= w[1].at));
        let demand: u32 = a.orders.iter().map(|o| o.line.quantity).sum();
        let stock: u32 = a.stock.iter().map(|(_, q)| q).sum();
        assert!(
            stock < demand,
            "some orders must run out of stock (stock {stock}, demand {demand})"
        );
    }
}
