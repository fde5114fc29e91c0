#!/usr/bin/env bash
# The tests: installs what is missing (scripts/setup.sh), then runs every
# test of the workspace, the QEMU boots of both kernels included.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo test --workspace
