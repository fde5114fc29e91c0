//! Deterministic machine model for lazymmu.
