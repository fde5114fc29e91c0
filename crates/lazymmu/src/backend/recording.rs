//! Recording primitives for host tests (in progress).
