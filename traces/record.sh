#!/usr/bin/env bash
# Records the shipped traces with `lazymmu record`: real programs nobody
# here wrote, on inputs kept in traces/inputs. Needs root, strace and perf
# (`bash scripts/setup.sh` installs them). Each command is also listed in
# traces/README.md.
set -euo pipefail

cd "$(dirname "$0")/.."
cargo build --release -q -p lazymmu-cli
lazymmu="$PWD/target/release/lazymmu"
out="$PWD/traces"
repo="$PWD"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r traces/inputs/. "$work"
cd "$work"

record() {
    local name="$1"
    shift
    "$lazymmu" record -o "$out/$name.trace" -- "$@"
}

record python-import-json /usr/bin/python3 -c "import json"
record python-import-modules /usr/bin/python3 -c \
    "import json, decimal, asyncio, email.parser, sqlite3, xml.etree.ElementTree"
record python-bytearray-grow /usr/bin/python3 -c \
    "b = bytearray(); [b.extend(bytes(1 << 20)) for _ in range(64)]"
record gcc-compile gcc -O2 -c list.c -o list.o
git clone -q "$repo" repository
record git-log git -C repository log --stat -n 20 --no-color > /dev/null
seq 1 300000 | shuf --random-source=<(yes) > numbers.txt
record sort-numbers sort -n numbers.txt -o sorted.txt
record xz-threads xz -T2 --block-size=524288 -6 -k -c numbers.txt > /dev/null
(cd make-project && record make-j2 make -j2)
record bash-forks bash -c 'for i in $(seq 20); do /bin/true & done; wait'
