#!/usr/bin/env bash
# The tests: installs what is missing (scripts/setup.sh), then runs every
# test of the workspace, the QEMU boots of both kernels included.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo test --workspace
# The library's examples, one per page-table format, on host memory.
for example in x86_64_4level x86_64_5level aarch64; do
    cargo run -q -p lazymmu --example "$example" > /dev/null
done
# The largest shipped trace on every backend takes minutes unoptimised.
cargo test --release -p lazymmu-sim --test trace_replay -- --ignored
