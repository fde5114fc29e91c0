//! Deterministic machine model for lazymmu.

pub mod neighbours;
