//! "Sometimes" assertions (after FoundationDB and Antithesis): situations a test exists to
//! reach, which must happen in *at least one* run of a sweep rather than in every run.
//!
//! A sweep that passes a thousand seeds proves little if none of them ever timed out a
//! payment after its capture, or ran two relay leaders at once: the invariants were never
//! put to the test they were written for. [`sometimes!`](crate::sometimes) marks the spot
//! where such a situation happens; the simulator counts the hits of each run and the
//! runner reports, over a sweep, which situations were reached and which never were.
//!
//! A situation that is never hit leaves no trace of its own, so scenarios also *declare*
//! what they expect to reach ([`Situation`] lists, one per crate or scenario): a declared
//! situation no run reached is what a coverage report is for.
//!
//! The hook is as inert as [`crate::buggify()`]: outside a collection (production, unit
//! tests) `sometimes!` is one thread-local read and its condition is not even evaluated.
//! Inside one, a hit increments a counter kept apart from everything a run feeds into its
//! trace or its random streams, so collecting coverage never changes a run's hash.
//! Conditions must therefore be free of side effects.

use std::cell::{Cell, RefCell};

/// A situation a scenario exists to reach: the name its [`sometimes!`](crate::sometimes)
/// calls use, and one line for people reading a coverage report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Situation {
    pub name: &'static str,
    pub description: &'static str,
}

impl Situation {
    #[must_use]
    pub const fn new(name: &'static str, description: &'static str) -> Self {
        Situation { name, description }
    }
}

thread_local! {
    // A plain flag read first keeps the inert path to one load, with no RefCell borrow.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    static HITS: RefCell<Vec<(&'static str, u64)>> = const { RefCell::new(Vec::new()) };
}

/// Whether a collection is running on this thread (`sometimes!` evaluates its condition
/// only then).
#[must_use]
#[inline]
pub fn collecting() -> bool {
    ACTIVE.with(Cell::get)
}

/// Counts one hit of `name` in the collection running on this thread, if any.
pub fn hit(name: &'static str) {
    if !collecting() {
        return;
    }
    HITS.with(|hits| {
        let mut hits = hits.borrow_mut();
        // Names are `'static` constants, so the pointer nearly always decides; the text
        // comparison covers one name spelled in two places.
        if let Some(entry) = hits
            .iter_mut()
            .find(|(n, _)| std::ptr::eq(*n, name) || *n == name)
        {
            entry.1 += 1;
        } else {
            hits.push((name, 1));
        }
    });
}

/// Starts collecting on this thread until the guard is finished or dropped. `declared`
/// only pre-sizes the table, so that hits of declared situations never allocate.
#[must_use = "collection stops when the guard drops"]
pub fn collect(declared: &[Situation]) -> Collection {
    let table: Vec<(&'static str, u64)> = declared.iter().map(|s| (s.name, 0)).collect();
    let previous = HITS.with(|hits| std::mem::replace(&mut *hits.borrow_mut(), table));
    let was_active = ACTIVE.with(|a| a.replace(true));
    Collection {
        previous: Some((previous, was_active)),
    }
}

/// A running collection; see [`collect`].
#[derive(Debug)]
pub struct Collection {
    previous: Option<(Vec<(&'static str, u64)>, bool)>,
}

impl Collection {
    /// Stops collecting and returns the situations hit at least once, with their counts,
    /// sorted by name.
    #[must_use]
    pub fn finish(mut self) -> Vec<(&'static str, u64)> {
        let mut hits = self.restore();
        hits.retain(|&(_, n)| n > 0);
        hits.sort_unstable();
        hits
    }

    fn restore(&mut self) -> Vec<(&'static str, u64)> {
        let Some((previous, was_active)) = self.previous.take() else {
            return Vec::new();
        };
        ACTIVE.with(|a| a.set(was_active));
        HITS.with(|hits| std::mem::replace(&mut *hits.borrow_mut(), previous))
    }
}

impl Drop for Collection {
    fn drop(&mut self) {
        let _ = self.restore();
    }
}

/// `sometimes!(name, condition)`: counts a hit of the situation `name` (a `&'static str`,
/// usually a declared [`Situation`]'s name) when `condition` holds — under a coverage
/// collection only; elsewhere the condition is not evaluated. See [the module
/// docs](crate::coverage).
///
/// ```
/// use reprise_core::sometimes;
/// const LATE_ANSWER: &str = "example.late-answer";
/// let (answered_at, deadline) = (12, 10);
/// sometimes!(LATE_ANSWER, answered_at > deadline);
/// let collection = reprise_core::coverage::collect(&[]);
/// sometimes!(LATE_ANSWER, answered_at > deadline);
/// assert_eq!(collection.finish(), [(LATE_ANSWER, 1)]);
/// ```
#[macro_export]
macro_rules! sometimes {
    ($name:expr, $condition:expr $(,)?) => {
        if $crate::coverage::collecting() && ($condition) {
            $crate::coverage::hit($name);
        }
    };
    ($name:expr) => {
        $crate::coverage::hit($name)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inert_outside_a_collection_and_lazy_about_its_condition() {
        let mut evaluated = false;
        sometimes!("x", {
            evaluated = true;
            true
        });
        assert!(!evaluated, "no collection, no evaluation");
        let collection = collect(&[Situation::new("declared", "")]);
        sometimes!("x", true);
        sometimes!("x", true);
        sometimes!("y", false);
        sometimes!("declared", 1 > 2);
        assert_eq!(collection.finish(), [("x", 2)]);
        sometimes!("x", true);
        assert!(!collecting());
    }

    #[test]
    fn nested_collections_restore_the_outer_one() {
        let outer = collect(&[]);
        sometimes!("outer", true);
        {
            let inner = collect(&[]);
            sometimes!("inner", true);
            assert_eq!(inner.finish(), [("inner", 1)]);
        }
        sometimes!("outer", true);
        assert_eq!(outer.finish(), [("outer", 2)]);
    }
}
