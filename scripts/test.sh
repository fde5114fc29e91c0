#!/usr/bin/env bash
# The tests: installs what is missing (scripts/setup.sh), then runs every
# test of the workspace, the QEMU boots of both kernels included.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo test --workspace
# The largest shipped trace on every backend takes minutes unoptimised.
cargo test --release -p lazymmu-sim --test trace_replay -- --ignored
