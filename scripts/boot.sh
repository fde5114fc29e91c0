#!/usr/bin/env bash
# Boots the bare-metal kernel under QEMU and shows its tests and
# measurements (`lazymmu boot`), installing QEMU and the target first when
# they are missing (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
exec cargo run --release --quiet -p lazymmu-cli -- boot "$@"
