#!/usr/bin/env bash
# Boots the bare-metal kernel under QEMU and shows its tests and
# measurements (`lazymmu boot`), installing what it needs on a fresh
# Debian/Ubuntu machine first: QEMU (qemu-system-x86) and the
# x86_64-unknown-none Rust target.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    echo "boot.sh: installing QEMU (qemu-system-x86)" >&2
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq qemu-system-x86 >/dev/null
fi

if command -v rustup >/dev/null 2>&1 &&
    ! rustup target list --installed | grep -qx x86_64-unknown-none; then
    echo "boot.sh: adding the x86_64-unknown-none target" >&2
    rustup target add x86_64-unknown-none
fi

exec cargo run --quiet -p lazymmu-cli -- boot "$@"
