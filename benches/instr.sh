#!/bin/sh
# Instructions per iteration of each combinators_instr scenario, by callgrind, with the
# difference method: (Ir at B iterations - Ir at A iterations) / (B - A).
# Usage: benches/instr.sh [SCENARIO...]   (needs valgrind; builds the bench in release)
set -eu
A=${A:-2}
B=${B:-12}
. "$(dirname "$0")/callgrind.sh"
instr_bin combinators_instr
if [ $# -eq 0 ]; then
    set -- $(sed -n 's/^ *"\([a-z0-9_]*\)" =>.*/\1/p' benches/benches/combinators_instr.rs)
fi
for s in "$@"; do
    a=$(ir "$s" "$A")
    b=$(ir "$s" "$B")
    echo "$s $(( (b - a) / (B - A) ))"
done
