//! Deterministic simulator: seeded executor, virtual time, fault injection, replay by seed
