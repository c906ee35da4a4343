#!/bin/sh
# Instructions per child of each group_instr scenario, by callgrind, with the difference
# method: (Ir at B iterations - Ir at A iterations) / ((B - A) * 10,000 children).
# Usage: benches/group_instr.sh [SCENARIO...]   (needs valgrind; builds the bench in release)
set -eu
A=${A:-1}
B=${B:-3}
. "$(dirname "$0")/callgrind.sh"
instr_bin group_instr
if [ $# -eq 0 ]; then
    set -- tokio_raw tokio_sheepdog tokio_group tokio_joinset in_task_group futures_unordered futures_buffered
fi
for s in "$@"; do
    a=$(ir "$s" "$A")
    b=$(ir "$s" "$B")
    echo "$s $(( (b - a) / ((B - A) * 10000) ))"
done
