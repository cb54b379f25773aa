//! The reprise command: list, run, sweep and check-determinism scenarios
