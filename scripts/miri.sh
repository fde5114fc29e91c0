#!/usr/bin/env bash
# The library's tests under Miri (nightly), which checks every unsafe
# block and every access for undefined behaviour: aliasing (Stacked
# Borrows), alignment, uninitialised and out-of-bounds reads, leaks. The
# slow tests take Miri-sized inputs under cfg(miri). proptest reads the
# working directory and the clock, so isolation is off. Installs the
# nightly toolchain's miri and rust-src components when missing
# (`setup.sh miri`).
# Usage: scripts/miri.sh [extra `cargo test` arguments, e.g. --test NAME]
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh miri
cargo +nightly miri setup

export MIRIFLAGS="${MIRIFLAGS:--Zmiri-disable-isolation}"
# A panic a test expects would otherwise have Miri interpret the symboliser
# of its backtrace (minutes per panic) when the caller's shell asks for them.
export RUST_BACKTRACE=0
start=$(date +%s)
cargo +nightly miri test -p lazymmu "$@"
echo "miri.sh: the library's tests passed under Miri in $(($(date +%s) - start)) s" >&2
