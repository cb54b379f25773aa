//! Criterion benchmarks for Reprise
