#!/usr/bin/env bash
# Installs what the tests need on a fresh machine, then runs them.
#
# Needs a Rust toolchain (https://rustup.rs). Everything else is installed
# here when missing, one block per tool.
set -euo pipefail

cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "scripts/test.sh: need root to run: $*" >&2
        return 1
    fi
}

if ! command -v cargo >/dev/null 2>&1; then
    echo "scripts/test.sh: cargo not found; install Rust from https://rustup.rs" >&2
    exit 1
fi

# QEMU, for the bare-metal kernel's boot tests.
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        as_root apt-get update &&
            as_root apt-get install -y qemu-system-x86 ||
            echo "scripts/test.sh: could not install QEMU; boot tests will fail" >&2
    else
        echo "scripts/test.sh: qemu-system-x86_64 not found and no apt-get; install QEMU" >&2
    fi
fi

# The bare-metal target the kernel builds for.
if command -v rustup >/dev/null 2>&1; then
    rustup target add x86_64-unknown-none ||
        echo "scripts/test.sh: could not add x86_64-unknown-none; kernel builds will fail" >&2
fi

cargo test --workspace
