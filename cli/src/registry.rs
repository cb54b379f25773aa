//! Which scenarios the CLI knows: the checkout and transfer scenarios (with their planted-bug
//! variants) from `reprise-scenarios`, plus the simulator's own token-transfer scenario.

use reprise_sim::Scenario;
use reprise_sim::testing_scenario::TokenTransfers;

/// Every scenario, in the order `reprise list` shows them.
pub fn all() -> Vec<Box<dyn Scenario>> {
    let mut scenarios = reprise_scenarios::simulation::all();
    scenarios.push(Box::new(TokenTransfers::default()));
    scenarios
}

/// The scenario called `name`.
///
/// # Errors
/// An unknown name, with the list of known ones.
pub fn by_name(name: &str) -> Result<Box<dyn Scenario>, String> {
    let mut known = Vec::new();
    for scenario in all() {
        if scenario.name() == name {
            return Ok(scenario);
        }
        known.push(scenario.name());
    }
    Err(format!(
        "unknown scenario {name:?}; known scenarios: {}",
        known.join(", ")
    ))
}
