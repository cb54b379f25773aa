//! The shop's catalog: the SKUs the API accepts, their prices, and the stock each gets
//! the first time the service starts on a schema.
//!
//! Stocking is idempotent (`InventoryCommand::Initialize` is a no-op once a SKU has
//! stock), so every replica stocks at start and a restart never adds stock: stock that
//! orders took stays taken. A fresh schema starts with [`DEFAULT_CATALOG`]'s quantities.

use std::collections::BTreeMap;

use serde::Serialize;

/// One SKU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Item {
    pub sku: &'static str,
    pub name: &'static str,
    /// Unit price in cents.
    pub price_cents: u64,
    /// Stock given to the SKU on a fresh schema.
    pub initial_stock: u32,
}

/// The default catalog (`docs/production-service.md` shows it as a table). The last
/// SKU is scarce on purpose: ordering it a few times shows the out-of-stock
/// compensation.
pub const DEFAULT_CATALOG: [Item; 4] = [
    Item {
        sku: "espresso-cup",
        name: "Espresso cup",
        price_cents: 900,
        initial_stock: 1_000,
    },
    Item {
        sku: "pour-over-kit",
        name: "Pour-over kit",
        price_cents: 3_450,
        initial_stock: 500,
    },
    Item {
        sku: "beans-1kg",
        name: "Coffee beans, 1 kg",
        price_cents: 2_400,
        initial_stock: 2_000,
    },
    Item {
        sku: "limited-print",
        name: "Limited art print",
        price_cents: 12_000,
        initial_stock: 3,
    },
];

/// Largest quantity one order may ask for.
pub const MAX_QUANTITY: u32 = 100;

/// The SKUs, by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalog {
    items: BTreeMap<&'static str, Item>,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog::new(DEFAULT_CATALOG.to_vec())
    }
}

impl Catalog {
    /// # Panics
    /// On an empty catalog, a SKU twice, or a SKU that is not `[a-z0-9-]+`.
    #[must_use]
    pub fn new(items: Vec<Item>) -> Self {
        assert!(!items.is_empty(), "a shop needs something to sell");
        let mut by_sku = BTreeMap::new();
        for item in items {
            assert!(
                !item.sku.is_empty()
                    && item
                        .sku
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "sku {:?} must be [a-z0-9-]+",
                item.sku
            );
            assert!(
                by_sku.insert(item.sku, item.clone()).is_none(),
                "sku {} twice",
                item.sku
            );
        }
        Catalog { items: by_sku }
    }

    #[must_use]
    pub fn get(&self, sku: &str) -> Option<&Item> {
        self.items.get(sku)
    }

    /// Every item, by SKU.
    pub fn items(&self) -> impl Iterator<Item = &Item> {
        self.items.values()
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The SKUs, comma-separated (for messages).
    #[must_use]
    pub fn skus(&self) -> String {
        self.items.keys().copied().collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_catalog_is_valid_and_has_a_scarce_sku() {
        let catalog = Catalog::default();
        assert_eq!(catalog.len(), DEFAULT_CATALOG.len());
        assert!(catalog.get("espresso-cup").is_some());
        assert!(catalog.get("nope").is_none());
        assert!(catalog.items().any(|i| i.initial_stock < 10));
        assert!(catalog.skus().contains("beans-1kg"));
    }
}
