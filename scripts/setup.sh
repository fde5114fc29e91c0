#!/usr/bin/env bash
# Installs what lazymmu needs beyond a Rust toolchain, when it is missing:
# QEMU for the bare-metal kernels (Debian's qemu-system-x86 and
# qemu-system-arm), the x86_64-unknown-none and aarch64-unknown-none Rust
# targets they build for, and strace and perf (Debian's strace and
# linux-perf) for `lazymmu record`. Run by test.sh and boot.sh; safe to run
# again. `setup.sh fuzz` installs what fuzzing needs instead: the nightly
# toolchain, cargo-fuzz and a C++ compiler for libFuzzer (Debian's g++).
# `setup.sh miri` installs nightly's miri and rust-src components.
set -euo pipefail

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "setup.sh: need root to run: $*" >&2
        return 1
    fi
}

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup.sh: cargo not found; install Rust from https://rustup.rs" >&2
    exit 1
fi

case "${1:-}" in
fuzz)
    if ! command -v c++ >/dev/null 2>&1; then
        echo "setup.sh: installing g++ for libFuzzer" >&2
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
    fi
    if ! rustup toolchain list | grep -q '^nightly'; then
        rustup toolchain install nightly --profile minimal
    fi
    if ! cargo fuzz --version >/dev/null 2>&1; then
        cargo install cargo-fuzz --locked
    fi
    exit 0
    ;;
miri)
    if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^miri'; then
        rustup toolchain install nightly --profile minimal --component miri,rust-src
    fi
    exit 0
    ;;
esac

qemu_packages=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || qemu_packages+=(qemu-system-x86)
command -v qemu-system-aarch64 >/dev/null 2>&1 || qemu_packages+=(qemu-system-arm)
if [ "${#qemu_packages[@]}" -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "setup.sh: installing QEMU (${qemu_packages[*]})" >&2
        as_root apt-get update -qq
        if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${qemu_packages[@]}" >/dev/null; then
            # A QEMU package already installed from the release's backports
            # (qemu-utils, say) breaks the release's own qemu-system-*:
            # take them from the same backports suite.
            codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
            [ -n "$codename" ] || exit 1
            echo "setup.sh: installing QEMU from ${codename}-backports instead" >&2
            echo "deb http://deb.debian.org/debian ${codename}-backports main" |
                as_root tee /etc/apt/sources.list.d/lazymmu-backports.list >/dev/null
            as_root apt-get update -qq
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                -t "${codename}-backports" "${qemu_packages[@]}" >/dev/null
        fi
    else
        echo "setup.sh: ${qemu_packages[*]} missing and no apt-get; install QEMU" >&2
        exit 1
    fi
fi

if command -v rustup >/dev/null 2>&1; then
    for target in x86_64-unknown-none aarch64-unknown-none; do
        if ! rustup target list --installed | grep -qx "$target"; then
            echo "setup.sh: adding the $target target" >&2
            rustup target add "$target"
        fi
    done
fi

record_tools=()
command -v strace >/dev/null 2>&1 || record_tools+=(strace)
command -v perf >/dev/null 2>&1 || record_tools+=(linux-perf)
if [ "${#record_tools[@]}" -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "setup.sh: installing ${record_tools[*]} for lazymmu record" >&2
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${record_tools[@]}" >/dev/null
    else
        echo "setup.sh: lazymmu record needs ${record_tools[*]}; install them" >&2
    fi
fi
