//! Chaos scenarios: checkout saga and bank transfers, with invariants and planted bugs
