#!/usr/bin/env bash
# Filter compilation cost: how long libpcap takes to compile (and optimise) an inner filter of
# N primitives, for the shapes an operator writes, as the collector compiles it: once for
# Ethernet and once for raw IP (`tcpdump -d -y EN10MB` plus `-y RAW`: the same libpcap, the
# same optimiser). This is what sets `filter::MAX_FILTER_TERMS` and `COMPILE_DEADLINE`.
#
#   scripts/bench-filter-compile.sh
#   TERMS="32 64" SHAPES="portrange host" RUNS=7 scripts/bench-filter-compile.sh
#
# Prints, per shape and term count, the median and range over RUNS runs of the two
# compilations together, in milliseconds, and `uptime` (the machine may be shared).
# tcpdump's own start-up (~2 ms) is included. Needs tcpdump and python3.
set -euo pipefail

TERMS=${TERMS:-8 16 32 48 64 96 128}
SHAPES=${SHAPES:-host port portrange net mixed}
RUNS=${RUNS:-5}

command -v tcpdump >/dev/null || { echo "bench-filter-compile: needs tcpdump" >&2; exit 2; }

# expr SHAPE N: N primitives of SHAPE joined by `or` (mixed: `(port P or host H)` pairs
# joined by `and`).
expr() {
    python3 - "$1" "$2" <<'EOF'
import sys
shape, n = sys.argv[1], int(sys.argv[2])
one = {
    "host": lambda i: f"host 10.0.{i // 256}.{i % 256}",
    "port": lambda i: f"port {i + 1}",
    "portrange": lambda i: f"portrange {i + 1}-{i + 5}",
    "net": lambda i: f"net 10.{i}.0.0/16",
}
if shape == "mixed":
    print(" and ".join(f"(port {i + 1} or host 10.0.0.{i % 250})" for i in range(n // 2)))
else:
    print(" or ".join(one[shape](i) for i in range(n)))
EOF
}

# ms CMD...: wall time of CMD in milliseconds.
ms() {
    local t0 t1
    t0=$(date +%s%N)
    "$@" >/dev/null 2>&1
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 1000000))
}

echo "uptime: $(uptime)"
printf "%-10s %6s %6s %10s %16s\n" shape terms bytes median_ms range_ms
for shape in $SHAPES; do
    for n in $TERMS; do
        e=$(expr "$shape" "$n")
        times=()
        for _ in $(seq "$RUNS"); do
            a=$(ms tcpdump -d -y EN10MB "$e")
            b=$(ms tcpdump -d -y RAW "$e")
            times+=($((a + b)))
        done
        sorted=$(printf "%s\n" "${times[@]}" | sort -n)
        median=$(echo "$sorted" | sed -n "$(((RUNS + 1) / 2))p")
        printf "%-10s %6d %6d %10d %16s\n" "$shape" "$n" "${#e}" "$median" \
            "$(echo "$sorted" | head -1)-$(echo "$sorted" | tail -1)"
    done
done
echo "uptime: $(uptime)"
