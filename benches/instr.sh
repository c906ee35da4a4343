#!/bin/sh
# Instructions per iteration of each combinators_instr scenario, by callgrind, with the
# difference method: (Ir at B iterations - Ir at A iterations) / (B - A).
# Usage: benches/instr.sh [SCENARIO...]   (needs valgrind; builds the bench in release)
set -eu
A=${A:-2}
B=${B:-12}
cargo bench -p sheepdog-benches --bench combinators_instr --no-run >/dev/null 2>&1
BIN=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/combinators_instr-* | grep -v '\.d$' | head -1)
ir() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BIN" "$1" "$2" 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
if [ $# -eq 0 ]; then
    set -- $(sed -n 's/^ *"\([a-z0-9_]*\)" =>.*/\1/p' benches/benches/combinators_instr.rs)
fi
for s in "$@"; do
    a=$(ir "$s" "$A")
    b=$(ir "$s" "$B")
    echo "$s $(( (b - a) / (B - A) ))"
done
