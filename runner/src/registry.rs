//! What a runner knows: the scenarios it can run and the fault plans it can name.

use std::fmt;

use reprise_chaos::NamedPlan;
use reprise_sim::{FaultPlan, Scenario};

/// The scenarios and named plans of one program. See the crate docs.
pub struct Registry {
    program: String,
    scenarios: Vec<Box<dyn Scenario>>,
    plans: Vec<NamedPlan>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("program", &self.program)
            .field(
                "scenarios",
                &self.scenarios.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .field(
                "plans",
                &self.plans.iter().map(|p| p.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Registry {
    /// A registry for the program `program` — the name its commands are printed with
    /// (`<program> run <scenario> --seed …`), so use the binary's name — holding every
    /// named plan of `reprise-chaos` and no scenario yet.
    ///
    /// # Panics
    /// If `program` is empty.
    #[must_use]
    pub fn new(program: &str) -> Self {
        assert!(!program.is_empty(), "a program needs a name");
        Registry {
            program: program.to_owned(),
            scenarios: Vec::new(),
            plans: reprise_chaos::all(),
        }
    }

    /// Adds a scenario.
    ///
    /// # Panics
    /// If a scenario of that name is registered already.
    #[must_use]
    pub fn scenario(mut self, scenario: impl Scenario + 'static) -> Self {
        self.add(Box::new(scenario));
        self
    }

    /// Adds scenarios.
    ///
    /// # Panics
    /// If a name is registered twice.
    #[must_use]
    pub fn scenarios(mut self, scenarios: Vec<Box<dyn Scenario>>) -> Self {
        for scenario in scenarios {
            self.add(scenario);
        }
        self
    }

    fn add(&mut self, scenario: Box<dyn Scenario>) {
        assert!(
            self.scenarios.iter().all(|s| s.name() != scenario.name()),
            "scenario {} registered twice",
            scenario.name()
        );
        self.scenarios.push(scenario);
    }

    /// Adds a named plan (or replaces the one of that name).
    #[must_use]
    pub fn plan(mut self, name: &'static str, description: &'static str, plan: FaultPlan) -> Self {
        self.plans.retain(|p| p.name != name);
        self.plans.push(NamedPlan {
            name,
            description,
            plan,
        });
        self
    }

    /// The program name commands are printed with.
    #[must_use]
    pub fn program(&self) -> &str {
        &self.program
    }

    /// Every scenario, in registration order.
    #[must_use]
    pub fn all_scenarios(&self) -> &[Box<dyn Scenario>] {
        &self.scenarios
    }

    /// Every named plan.
    #[must_use]
    pub fn all_plans(&self) -> &[NamedPlan] {
        &self.plans
    }

    /// The scenario called `name`.
    ///
    /// # Errors
    /// An unknown name, with the list of known ones.
    pub fn scenario_named(&self, name: &str) -> Result<&dyn Scenario, String> {
        self.scenarios
            .iter()
            .find(|s| s.name() == name)
            .map(AsRef::as_ref)
            .ok_or_else(|| {
                let known: Vec<&str> = self.scenarios.iter().map(|s| s.name()).collect();
                format!(
                    "unknown scenario {name:?}; known scenarios: {}",
                    known.join(", ")
                )
            })
    }

    /// The plan called `name`, or read from a JSON file when `name` ends in `.json`.
    ///
    /// # Errors
    /// An unknown name (listing the known ones), an unreadable file or an invalid plan.
    pub fn plan_named(&self, name: &str) -> Result<FaultPlan, String> {
        if std::path::Path::new(name)
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            let text =
                std::fs::read_to_string(name).map_err(|e| format!("plan file {name}: {e}"))?;
            return FaultPlan::from_json(&text).map_err(|e| format!("plan file {name}: {e}"));
        }
        self.plans
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.plan.clone())
            .ok_or_else(|| {
                let known: Vec<&str> = self.plans.iter().map(|p| p.name).collect();
                format!("unknown plan {name:?}; known plans: {}", known.join(", "))
            })
    }
}
