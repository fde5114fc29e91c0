#!/usr/bin/env bash
# Mutation test of `lazymmu check` on its own: applies each patch of
# mutants/ (one injected bug each, written as a patch so the library itself
# carries none of them) to a scratch checkout of the committed tree, builds
# the CLI, runs the default `lazymmu check`, and asserts that it fails with
# the invariant the patch names (its `Invariant:` line) in the scenario it
# names (its `Scenario:` line). Prints one line per mutant and exits 1 if
# any mutant was missed or caught by the wrong invariant.
#
#   bash scripts/mutants.sh                       # every mutant
#   bash scripts/mutants.sh mutants/01-*.patch    # some
#
# The named scenario is checked first, on the default bounds: the default
# check explores every scenario on its own, so a violation there is one the
# default check reports. Only a mutant it misses runs the whole default
# check. Not part of CI: each mutant is a release build (about a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
scratch="$root/target/mutants-tree"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/mutants}"

git worktree remove --force "$scratch" 2>/dev/null || rm -rf "$scratch"
git worktree prune
git worktree add --detach -f "$scratch" HEAD >/dev/null
trap 'git -C "$root" worktree remove --force "$scratch"' EXIT

if [ $# -gt 0 ]; then patches=("$@"); else patches=(mutants/*.patch); fi

failed=0
printf '%-48s %-8s %s\n' mutant verdict "what check found"
for patch in "${patches[@]}"; do
    name=$(basename "$patch" .patch)
    invariant=$(sed -n 's/^Invariant: //p' "$patch")
    scenario=$(sed -n 's/^Scenario: //p' "$patch")
    if ! git -C "$scratch" apply "$root/$patch"; then
        printf '%-48s %-8s %s\n' "$name" STALE "the patch no longer applies"
        failed=1
        continue
    fi
    if ! (cd "$scratch" && cargo build --release -q -p lazymmu-cli 2>/dev/null); then
        printf '%-48s %-8s %s\n' "$name" BROKEN "the mutant does not build"
        failed=1
        git -C "$scratch" checkout -q -- .
        continue
    fi
    set +e
    "$CARGO_TARGET_DIR/release/lazymmu" check --json --scenario "$scenario" > "$CARGO_TARGET_DIR/$name.json"
    status=$?
    if [ $status -ne 1 ]; then
        "$CARGO_TARGET_DIR/release/lazymmu" check --json > "$CARGO_TARGET_DIR/$name.json"
        status=$?
    fi
    set -e
    git -C "$scratch" checkout -q -- .
    verdict=$(python3 - "$CARGO_TARGET_DIR/$name.json" "$invariant" "$scenario" "$status" <<'PY'
import json, sys
path, invariant, scenario, status = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
found = json.load(open(path))["violations"]
pairs = sorted({(v["invariant_name"], v["scenario"]) for v in found})
summary = "; ".join(f"{i} in {s}" for i, s in pairs) or "nothing"
if status == 1 and (invariant, scenario) in pairs:
    print("caught", summary)
elif status == 1 and any(i == invariant for i, _ in pairs):
    print("caught-elsewhere", summary)
elif status == 1:
    print("wrong-invariant", summary)
else:
    print("MISSED", summary)
PY
)
    word=${verdict%% *}
    rest=${verdict#* }
    case "$word" in
        caught|caught-elsewhere) ;;
        *) failed=1 ;;
    esac
    printf '%-48s %-8s %s\n' "$name" "$word" "$rest"
done
exit $failed
