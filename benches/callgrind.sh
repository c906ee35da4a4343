# Shared by the instruction-counting scripts (instr.sh, rate_instr.sh, group_instr.sh); source
# it. `instr_bin BENCH` builds the bench target BENCH in release and sets BIN to its binary;
# `ir SCENARIO N` prints the instructions callgrind collects for one run of `BIN SCENARIO N`.
instr_bin() {
    cargo bench -p sheepdog-benches --bench "$1" --no-run >/dev/null 2>&1
    BIN=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/"$1"-* | grep -v '\.d$' | head -1)
}
ir() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BIN" "$1" "$2" 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
