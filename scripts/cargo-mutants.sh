#!/usr/bin/env bash
# cargo-mutants over the lazy-MMU mode, the backends and the page-table
# code, with the default `lazymmu check` as the only test: how much of what
# a one-token change to the library breaks does the checker alone see?
# The library's own tests are deliberately not run. The test doubles
# (`mode/testing.rs`, the recording machine `backend/recording.rs`) serve
# only the library's tests: the checker never runs them, so they are left
# out.
#
#   bash scripts/cargo-mutants.sh                  # every mutant (days)
#   bash scripts/cargo-mutants.sh --shard 0/50     # every 50th mutant
#
# Extra arguments go to `cargo mutants` (`--shard`, `--list`, `-f`, ...).
# Results land in target/cargo-mutants/mutants.out (caught.txt,
# missed.txt, timeout.txt, unviable.txt, outcomes.json). Each mutant is an
# incremental build of the `mutants` profile (about 25 s on 2 cores) and
# one default check (about 40 s on 2 cores). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."

mkdir -p target/cargo-mutants
command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants

# A shard is every k-th mutant (round-robin), so that a shard samples
# every file rather than a slice of a few.
sharding=()
listing=false
for arg in "$@"; do
    case "$arg" in
        --shard | --shard=*) sharding=(--sharding round-robin) ;;
        --list | --list-files) listing=true ;;
    esac
done

# The unmutated tree must pass first. cargo-mutants' own baseline runs the
# tests of the mutated package (the library's), not `--test-package`'s, so
# the script runs it here and cargo-mutants skips its own.
test_args=(--test check -- --ignored --exact default_check_holds)
$listing || cargo test --profile mutants -q -p lazymmu-cli "${test_args[@]}"

exec cargo mutants \
    --baseline skip \
    --profile mutants \
    --test-package lazymmu-cli \
    --output target/cargo-mutants \
    --timeout 300 \
    --build-timeout 600 \
    -f 'crates/lazymmu/src/mode/*.rs' \
    -f 'crates/lazymmu/src/backend/*.rs' \
    -f 'crates/lazymmu/src/pgtable/**/*.rs' \
    -e 'crates/lazymmu/src/mode/testing.rs' \
    -e 'crates/lazymmu/src/backend/recording.rs' \
    "${sharding[@]}" \
    "$@" \
    -- "${test_args[@]}"
