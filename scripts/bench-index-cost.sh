#!/usr/bin/env bash
# What writing the packet index (`<file>.twidx`) costs the collector: scripts/bench-collect.sh's
# tapwire column (raw GRE socket input, release build) with and without `--no-index`, on the
# same replayed file (GENERATOR=tcpreplay: COUNT ERSPAN II packets of 8 sessions sent at
# tcpreplay's top speed), the two modes taking turns run by run so that load from elsewhere
# falls on both. Per mode: packets written of those sent (the throughput at the top speed the
# veth delivers), loss, and the collector's CPU per packet written (utime + stime of the whole
# process over the run); median and range over RUNS pairs, `uptime` beside each run.
#
#   scripts/bench-index-cost.sh                      # 5 pairs, 60- and 1414-byte frames
#   RUNS=3 SIZES=60 COUNT=300000 scripts/bench-index-cost.sh
#
# Environment: RUNS (5), SIZES ("60 1414"), COUNT (1000000), BENCH_DIR (/var/tmp). Needs root
# and what bench-collect.sh needs.
set -euo pipefail

RUNS=${RUNS:-5}
SIZES=${SIZES:-60 1414}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ $(id -u) == 0 ]] || { echo "bench-index-cost: run as root (network namespaces)" >&2; exit 2; }
WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/tapwire-bench-index.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# one MODE LEN: one bench-collect run; appends "mode len sent written loss cpu_ns" to RESULTS.
one() {
    local mode=$1 len=$2 extra=""
    [[ $mode == no-index ]] && extra=--no-index
    local line
    line=$(CAPTURERS=tapwire GENERATOR=tcpreplay RUNS=1 RSS_SESSIONS= PROFILE=0 SIZES=$len \
        COUNT=${COUNT:-1000000} TAPWIRE_EXTRA_ARGS=$extra "$ROOT/scripts/bench-collect.sh" 2>&1 |
        grep -E '^tapwire +[0-9]+ B' | tail -1)
    [[ -n $line ]] || { echo "bench-index-cost: no result from bench-collect.sh ($mode, $len)" >&2; exit 1; }
    # "tapwire 60 B sent N in S s (P pps) written W kernel drops K lost L loss X % CPU C ns/pkt ..."
    awk -v m="$mode" -v up="$(uptime | sed 's/.*load average: //')" '{
        for (i = 1; i <= NF; i++) {
            if ($i == "sent") sent = $(i + 1)
            if ($i == "written") written = $(i + 1)
            if ($i == "loss") loss = $(i + 1)
            if ($i == "CPU" && cpu == "") cpu = $(i + 1)
        }
        printf "%s %s %s %s %s %s %s\n", m, $2, sent, written, loss, cpu, up
    }' <<<"$line" | tee -a "$WORK/results" >&2
}

for len in $SIZES; do
    for ((run = 1; run <= RUNS; run++)); do
        if ((run % 2)); then one index "$len"; one no-index "$len"; else one no-index "$len"; one index "$len"; fi
    done
done

python3 - "$WORK/results" <<'PY'
import statistics, sys
rows = [l.split(None, 6) for l in open(sys.argv[1])]
def med(v):
    return "%.2f [%.2f-%.2f]" % (statistics.median(v), min(v), max(v))
for size in sorted({r[1] for r in rows}, key=int):
    out = {}
    for mode in ("index", "no-index"):
        rs = [r for r in rows if r[0] == mode and r[1] == size]
        kept = [100 * int(r[3]) / int(r[2]) for r in rs]
        cpu = [float(r[5]) for r in rs]
        out[mode] = (statistics.median(kept), statistics.median(cpu))
        print("%5s B %-8s written %% of sent %s   CPU ns/pkt %s   (%d runs)" % (size, mode, med(kept), med(cpu), len(rs)))
    (ki, ci), (kn, cn) = out["index"], out["no-index"]
    print("%5s B index vs none: throughput %+.2f %%, CPU per packet %+.2f %%" % (size, 100 * (ki - kn) / kn, 100 * (ci - cn) / cn))
print("machine: %s CPUs, shared with other work; load averages per run are in the lines above" % __import__("os").cpu_count())
PY
