//! Deterministic machine model for lazymmu.

pub mod explore;
pub mod scenarios;
