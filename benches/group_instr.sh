#!/bin/sh
# Instructions per child of each group_instr scenario, by callgrind, with the difference
# method: (Ir at B iterations - Ir at A iterations) / ((B - A) * 10,000 children).
# Usage: benches/group_instr.sh [SCENARIO...]   (needs valgrind; builds the bench in release)
set -eu
A=${A:-1}
B=${B:-3}
cargo bench -p sheepdog-benches --bench group_instr --no-run >/dev/null 2>&1
BIN=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/group_instr-* | grep -v '\.d$' | head -1)
ir() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BIN" "$1" "$2" 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
if [ $# -eq 0 ]; then
    set -- tokio_raw tokio_sheepdog tokio_group tokio_joinset in_task_group futures_unordered futures_buffered
fi
for s in "$@"; do
    a=$(ir "$s" "$A")
    b=$(ir "$s" "$B")
    echo "$s $(( (b - a) / ((B - A) * 10000) ))"
done
