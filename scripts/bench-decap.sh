#!/usr/bin/env bash
# Whole-process decapsulation benchmark: tapwire decap against editcap (blind fixed-offset strip)
# and tshark (full dissection), on the same synthetic ERSPAN Type II inputs.
#
#   scripts/bench-decap.sh                      # 2,000,000 packets, 8 sessions, inner 60 and 1414 B
#   BENCH_DIR=/dev/shm scripts/bench-decap.sh   # files in memory: no disk writeback in the times
#   PACKETS=200000 RUNS=3 scripts/bench-decap.sh
#   TAPWIRE=/path/to/other/tapwire scripts/bench-decap.sh   # measure another build on the same inputs
#   PACKETS=1000000 SIZES=60 DECAP_ARGS="--format pcap" scripts/bench-decap.sh   # the issue's point
#
# The large-frame input is ~3 GB and each output about as much: BENCH_DIR needs ~6.5 GB free.
#
# Environment: BENCH_DIR (parent of the temporary work directory, default /tmp), PACKETS,
# SESSIONS, RUNS (hyperfine runs per command), TSHARK_PACKETS (tshark runs on this prefix only,
# and its time is scaled to the whole input), TAPWIRE (the binary measured, default this tree's
# release build), SIZES (inner frame bytes, "60 1414"), DECAP_ARGS (extra flags for tapwire
# decap). Besides hyperfine's medians of each tool alone, RUNS pairs of runs (tapwire, then
# editcap) give the ratio of their wall times pair by pair, which load on a shared machine
# skews less. Installs missing Debian tools when run as root.
set -euo pipefail

PACKETS=${PACKETS:-2000000}
SESSIONS=${SESSIONS:-8}
SIZES=${SIZES:-60 1414}
RUNS=${RUNS:-5}
# Extra flags for tapwire decap, e.g. "--format pcap".
DECAP_ARGS=${DECAP_ARGS:-}
TSHARK_PACKETS=${TSHARK_PACKETS:-200000}
((TSHARK_PACKETS > PACKETS)) && TSHARK_PACKETS=$PACKETS
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# --- tools -------------------------------------------------------------------------------------
missing=()
command -v editcap >/dev/null || missing+=(wireshark-common)
command -v capinfos >/dev/null || missing+=(wireshark-common)
command -v tshark >/dev/null || missing+=(tshark)
command -v hyperfine >/dev/null || missing+=(hyperfine)
[[ -x /usr/bin/time ]] || missing+=(time)
command -v jq >/dev/null || missing+=(jq)
command -v bc >/dev/null || missing+=(bc)
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]]; then
        echo "installing: ${missing[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "missing Debian packages (run as root to install): ${missing[*]}" >&2
    fi
fi
for t in editcap capinfos tshark /usr/bin/time jq bc; do
    command -v "$t" >/dev/null || { echo "bench-decap: $t is required" >&2; exit 2; }
done

# --- build -------------------------------------------------------------------------------------
(
    cd "$ROOT"
    cargo build --release --quiet -p tapwire --bin tapwire
    cargo build --release --quiet -p tapwire-formats --example gen_erspan
)
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
TAPWIRE=${TAPWIRE:-$TARGET_DIR/release/tapwire}
GEN=$TARGET_DIR/release/examples/gen_erspan

WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/tapwire-bench.XXXXXX")
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
trap 'rm -rf "$WORK"' EXIT

# --- measuring ---------------------------------------------------------------------------------
# seconds NAME PREPARE COMMAND [RUNS]: wall-clock median of RUNS runs (hyperfine), or mean
# (bash time). The median resists the odd run slowed down by something else on the machine.
seconds() {
    local name=$1 prepare=$2 cmd=$3 runs=${4:-$RUNS}
    if command -v hyperfine >/dev/null; then
        hyperfine --style none --warmup 1 --runs "$runs" --prepare "$prepare" \
            --export-json "$WORK/$name.json" "$cmd" >&2
        jq -r '.results[0].median' "$WORK/$name.json"
    else
        local total=0 t
        for ((i = 0; i < runs; i++)); do
            bash -c "$prepare"
            TIMEFORMAT=%R
            t=$({ time bash -c "$cmd" >/dev/null 2>&1; } 2>&1)
            total=$(echo "$total + $t" | bc -l)
        done
        echo "$total / $runs" | bc -l
    fi
}

# usage NAME PREPARE COMMAND: "peak_rss_kib cpu_seconds" over 3 runs under /usr/bin/time -v:
# the largest peak RSS and the smallest user + sys time (one run alone can be slowed down by
# page-cache work left over from the previous one).
usage() {
    local name=$1 prepare=$2 cmd=$3
    for i in 1 2 3; do
        bash -c "$prepare"
        /usr/bin/time -v -o "$WORK/$name.time.$i" bash -c "exec $cmd" >"$WORK/$name.stdout"
    done
    awk -F': ' '/Maximum resident set size/ {if ($2 > rss) rss = $2}
                /User time/ {u = $2} /System time/ {c = u + $2; if (min == "" || c < min) min = c}
                END {printf "%d %.3f\n", rss, min}' "$WORK/$name.time".{1,2,3}
}

# paired NAME PREP_A CMD_A PREP_B CMD_B: RUNS pairs of runs, A then B, each timed alone
# (nanosecond clock); prints "median min max" of the ratios time(A) / time(B). Load on a shared
# machine slows both runs of a pair alike, so the ratio holds up better than either time.
paired() {
    local name=$1 prep_a=$2 cmd_a=$3 prep_b=$4 cmd_b=$5 i t0 t1 t2
    : >"$WORK/$name.pairs"
    for ((i = 0; i < RUNS; i++)); do
        bash -c "$prep_a"
        t0=$(date +%s%N)
        bash -c "$cmd_a" >/dev/null 2>&1
        t1=$(date +%s%N)
        bash -c "$prep_b"
        t2=$(date +%s%N)
        bash -c "$cmd_b" >/dev/null 2>&1
        echo "$(((t1 - t0) / 1000)) $((($(date +%s%N) - t2) / 1000))" >>"$WORK/$name.pairs"
    done
    echo "paired $name (microseconds, A B): $(tr '\n' ';' <"$WORK/$name.pairs")" >&2
    awk '{r[NR] = $1 / $2}
        END {
            for (i = 1; i <= NR; i++) for (j = i + 1; j <= NR; j++) if (r[j] < r[i]) { t = r[i]; r[i] = r[j]; r[j] = t }
            m = NR % 2 ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2
            printf "%.3f %.3f %.3f\n", m, r[1], r[NR]
        }' "$WORK/$name.pairs"
}

ROWS=()
PAIRS=()
# row TOOL INPUT SECONDS MPPS RATIO CPU_S RSS_MIB: CPU_S also gives Mpps per CPU-second, which
# holds up better than wall time when other work shares the machine.
row() {
    local mpps_cpu
    mpps_cpu=$(echo "$PACKETS / $6 / 1000000" | bc -l)
    ROWS+=("$(printf '| %s | %s | %.3f | %.2f | %s | %.3f | %.2f | %.1f |' "$1" "$2" "$3" "$4" "$5" "$6" "$mpps_cpu" "$7")")
}

check_tapwire() {
    local out=$1 json=$2
    local total=0 n
    for f in "$out"/*; do
        n=$(capinfos -c -M -T -r "$f" | awk -F'\t' '{print $2}')
        total=$((total + n))
    done
    [[ $total == "$PACKETS" ]] || { echo "FAIL: tapwire wrote $total packets, want $PACKETS" >&2; exit 1; }
    local sources lost
    sources=$(jq '.sources | length' "$json")
    lost=$(jq '[.sources[].lost] | add' "$json")
    [[ $sources == "$SESSIONS" && $lost == 0 ]] ||
        { echo "FAIL: tapwire found $sources sources with $lost lost, want $SESSIONS and 0" >&2; exit 1; }
    echo "ok: tapwire wrote $total packets in $(ls "$out" | wc -l) files, $sources sources, lost $lost" >&2
}

for inner in $SIZES; do
    in=$WORK/erspan-$inner.pcap
    small=$WORK/erspan-$inner-head.pcap
    "$GEN" --packets "$PACKETS" --sessions "$SESSIONS" --inner-bytes "$inner" --out "$in"
    editcap -r "$in" "$small" "1-$TSHARK_PACKETS"
    label="${PACKETS} x ERSPAN II, inner $inner B"
    echo "== $label ($(du -h "$in" | cut -f1))" >&2

    out=$WORK/out-$inner
    prep_tw="rm -rf $out"
    cmd_tw="$TAPWIRE decap $in --out $out $DECAP_ARGS"
    t_tw=$(seconds "tapwire-$inner" "$prep_tw" "$cmd_tw")
    read -r rss_tw cpu_tw < <(usage "tapwire-$inner" "$prep_tw" "$cmd_tw --json")
    check_tapwire "$out" "$WORK/tapwire-$inner.stdout"
    rm -rf "$out"

    strip=$WORK/stripped-$inner.pcap
    prep_ec="rm -f $strip"
    cmd_ec="editcap -C 50 $in $strip"
    t_ec=$(seconds "editcap-$inner" "$prep_ec" "$cmd_ec")
    read -r rss_ec cpu_ec < <(usage "editcap-$inner" "$prep_ec" "$cmd_ec")
    n=$(capinfos -c -M -T -r "$strip" | awk -F'\t' '{print $2}')
    [[ $n == "$PACKETS" ]] || { echo "FAIL: editcap wrote $n packets" >&2; exit 1; }
    rm -f "$strip"

    read -r r_med r_min r_max < <(paired "pair-$inner" "$prep_tw" "$cmd_tw" "$prep_ec" "$cmd_ec")
    rm -rf "$out" "$strip"
    PAIRS+=("$(printf '| %s | %.2fx | %.2f-%.2fx |' "$label" "$r_med" "$r_min" "$r_max")")

    cmd_ts="tshark -r $small -T fields -e erspan.spanid > /dev/null"
    t_ts_head=$(seconds "tshark-$inner" "true" "$cmd_ts" 2)
    read -r rss_ts cpu_ts_head < <(usage "tshark-$inner" "true" "$cmd_ts")
    scale=$(echo "$PACKETS / $TSHARK_PACKETS" | bc -l)
    t_ts=$(echo "$t_ts_head * $scale" | bc -l)
    cpu_ts=$(echo "$cpu_ts_head * $scale" | bc -l)

    mpps() { echo "$PACKETS / $1 / 1000000" | bc -l; }
    ratio() { printf '%.2fx' "$(echo "$t_ec / $1" | bc -l)"; }
    row "tapwire decap (demux into $SESSIONS files)" "$label" "$t_tw" "$(mpps "$t_tw")" "$(ratio "$t_tw")" "$cpu_tw" "$(echo "$rss_tw / 1024" | bc -l)"
    row "editcap -C 50 (blind strip)" "$label" "$t_ec" "$(mpps "$t_ec")" "1.00x" "$cpu_ec" "$(echo "$rss_ec / 1024" | bc -l)"
    row "tshark -T fields -e erspan.spanid (first $TSHARK_PACKETS, scaled)" "$label" "$t_ts" "$(mpps "$t_ts")" "$(ratio "$t_ts")" "$cpu_ts" "$(echo "$rss_ts / 1024" | bc -l)"
    rm -f "$in" "$small"
done

echo
echo "Wall-clock medians over $RUNS runs (hyperfine, 1 warm-up; tshark 2 runs on $TSHARK_PACKETS packets,"
echo "times scaled x$((PACKETS / TSHARK_PACKETS))). All single-threaded: Mpps is per core. Ratio = editcap time / tool time."
echo "CPU s (best) and peak RSS (worst) of 3 runs under /usr/bin/time -v (tapwire with --json). Work files in"
echo "$(dirname "$WORK") ($(df --output=fstype "$(dirname "$WORK")" | tail -1)); load average at the start $LOAD_START, at the end $(cut -d' ' -f1-3 /proc/loadavg)."
echo
echo "| tool | input | seconds | Mpps | ratio vs editcap | CPU s | Mpps per CPU-s | peak RSS MiB |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
echo
echo "tapwire decap's wall time as a fraction of editcap -C 50's, $RUNS pairs of runs (tapwire, then"
echo "editcap, each alone; the ratio of each pair), median and range:"
echo
echo "| input | tapwire / editcap | range |"
echo "|---|---:|---:|"
printf '%s\n' "${PAIRS[@]}"
