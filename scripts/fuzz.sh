#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for a short while (SECONDS_EACH, 8 by
# default) from the corpus kept in fuzz/corpus/TARGET, with libFuzzer under
# AddressSanitizer (`cargo fuzz`, nightly). New inputs go to a scratch
# directory, so the repository's corpus only changes when someone merges
# them in (see fuzz/README.md). A crash, a panic, an out-of-memory (over
# 2 GiB) or a run over 10 s fails the script, leaving the input in
# fuzz/artifacts/TARGET. Installs what is missing: the nightly toolchain,
# cargo-fuzz, and a C++ compiler for libFuzzer (Debian's g++).
# Usage: scripts/fuzz.sh [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "fuzz.sh: need root to run: $*" >&2
        return 1
    fi
}

if ! command -v c++ >/dev/null 2>&1; then
    echo "fuzz.sh: installing g++ for libFuzzer" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
fi
if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

seconds="${SECONDS_EACH:-8}"
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target" "fuzz/corpus/$target"
    echo "fuzz.sh: $target for $seconds s" >&2
    log="$scratch/$target.log"
    if ! cargo +nightly fuzz run "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -len_control=0 \
        >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "fuzz.sh: $target failed; the input is in fuzz/artifacts/$target" >&2
        exit 1
    fi
    grep -E '^Done' "$log" >&2
done
echo "fuzz.sh: ${targets[*]}: no crash in $seconds s each" >&2
