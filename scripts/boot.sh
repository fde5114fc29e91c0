#!/usr/bin/env bash
# Boots a bare-metal kernel under QEMU and shows its tests and
# measurements (`lazymmu boot`; `--arch aarch64` or `--arch all` for the
# arm64 one), installing QEMU and the targets first when they are missing
# (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
exec cargo run --release --quiet -p lazymmu-cli -- boot "$@"
