//! The stateful design: `enter` returns an arch-defined state value that the
//! caller keeps on its stack and hands back to `leave`.
