#!/bin/sh
# Instructions per operation of each rate_instr scenario (target T8), by callgrind, with the
# difference method: (Ir at B iterations - Ir at A iterations) / (B - A); the jobs_* scenarios
# count 1,000 jobs an iteration, so their figure is divided by 1,000 more.
# Usage: benches/rate_instr.sh [SCENARIO...]   (needs valgrind; builds the bench in release)
# (`rate_instr sizes 1` prints the size of a `submit` future instead.)
set -eu
. "$(dirname "$0")/callgrind.sh"
instr_bin rate_instr
if [ $# -eq 0 ]; then
    set -- $(sed -n 's/^ *"\([a-z0-9_]*\)" =>.*/\1/p' benches/benches/rate_instr.rs | grep -v '^sizes$')
fi
for s in "$@"; do
    case $s in
    jobs_*) A=2 B=12 D=10000 ;;
    *) A=10000 B=20000 D=10000 ;;
    esac
    a=$(ir "$s" "$A")
    b=$(ir "$s" "$B")
    echo "$s $(( (b - a) / D ))"
done
