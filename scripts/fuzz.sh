#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for a short while (SECONDS_EACH, 8 by
# default) from the corpus kept in fuzz/corpus/TARGET, with libFuzzer under
# AddressSanitizer (`cargo fuzz`, nightly). The seed is fixed (FUZZ_SEED, 1
# by default), so the gate mutates the same inputs in the same order on every
# machine: a faster machine only goes further along the same sequence, and
# a failure in CI is one anybody can reproduce. `FUZZ_SEED=0` lets libFuzzer
# pick a seed, for runs that look for new inputs. New inputs go to a scratch
# directory, so the repository's corpus only changes when someone merges
# them in (see fuzz/README.md). A crash, a panic, an out-of-memory (over
# 2 GiB) or one input running over 30 s fails the script, leaving the input in
# fuzz/artifacts/TARGET. Installs what is missing first (`setup.sh fuzz`:
# the nightly toolchain, cargo-fuzz, a C++ compiler for libFuzzer).
# Usage: scripts/fuzz.sh [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh fuzz

seconds="${SECONDS_EACH:-8}"
seed="${FUZZ_SEED:-1}"
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target" "fuzz/corpus/$target"
    echo "fuzz.sh: $target for $seconds s, seed $seed" >&2
    log="$scratch/$target.log"
    if ! cargo +nightly fuzz run "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -seed="$seed" -rss_limit_mb=2048 -timeout=30 -len_control=0 \
        >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "fuzz.sh: $target failed; the input is in fuzz/artifacts/$target" >&2
        exit 1
    fi
    grep -E '^Done' "$log" >&2
done
echo "fuzz.sh: ${targets[*]}: no crash in $seconds s each" >&2
