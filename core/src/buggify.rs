//! BUGGIFY-style fault points (after FoundationDB): places in framework code that
//! misbehave on purpose — but only under the simulator, which installs a [`FaultOracle`]
//! for the thread it runs on. Everywhere else [`buggify`] is a thread-local read that
//! returns `false`.
//!
//! A thread-local (not a global) keeps parallel simulations in one process (`--jobs`,
//! `cargo test`) from seeing each other's oracle.

use std::cell::RefCell;
use std::rc::Rc;

/// Decides whether a named fault point fires. The simulator's oracle draws from the run's
/// seeded RNG and records every firing in the trace.
pub trait FaultOracle {
    fn should_fire(&self, point: &'static str) -> bool;
}

thread_local! {
    static ORACLE: RefCell<Option<Rc<dyn FaultOracle>>> = const { RefCell::new(None) };
}

/// Whether the fault point `point` fires now. Always `false` outside the simulator.
#[must_use]
pub fn buggify(point: &'static str) -> bool {
    ORACLE.with(|o| {
        o.borrow()
            .as_ref()
            .is_some_and(|oracle| oracle.should_fire(point))
    })
}

/// Installs `oracle` on this thread until the guard drops.
#[must_use = "the oracle is removed when the guard drops"]
pub fn install(oracle: Rc<dyn FaultOracle>) -> OracleGuard {
    let previous = ORACLE.with(|o| o.borrow_mut().replace(oracle));
    OracleGuard { previous }
}

/// Restores the previous oracle on drop.
pub struct OracleGuard {
    previous: Option<Rc<dyn FaultOracle>>,
}

impl std::fmt::Debug for OracleGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OracleGuard")
    }
}

impl Drop for OracleGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        ORACLE.with(|o| *o.borrow_mut() = previous);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Always;
    impl FaultOracle for Always {
        fn should_fire(&self, _: &'static str) -> bool {
            true
        }
    }

    #[test]
    fn inert_without_an_oracle_and_scoped_with_one() {
        assert!(!buggify("x"));
        {
            let _guard = install(Rc::new(Always));
            assert!(buggify("x"));
        }
        assert!(!buggify("x"));
    }
}
