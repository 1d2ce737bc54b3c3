#!/usr/bin/env bash
# TAP output benchmark: the highest rate at which a session's monitor TAP loses nothing, beside
# the highest at which its files lose nothing, on the same generator.
#
#   scripts/bench-tap.sh                                  # 60- and 1414-byte inner frames
#   RATES="50000 100000" RUNS=1 SIZES=60 scripts/bench-tap.sh
#   READER=none scripts/bench-tap.sh                      # nobody reads the TAP
#
# Lab (namespaces made here, removed on exit, also on failure): `gen` --veth--> `col`, and
# `mon`, the monitoring VM, where the collector creates the TAP. trafgen (netsniff-ng) in `gen`
# on CPU 0 sends ERSPAN II, SESSIONS sessions (outer sources 10.98.1.N, session id N, each
# with contiguous GRE sequence numbers from trafgen's `dinc()`: see scripts/bench-collect.sh);
# RPS sends col's softirq work to CPU 1, where the collector and the TAP's reader are pinned.
# One session gathers every source, with files and `tap = { name = "twtap0", netns = MON }`;
# `tcpdump -i twtap0 -w /dev/null` reads the TAP in `mon` (READER=tcpdump, default) or nothing
# does (READER=none: frames written to a TAP nobody reads are dropped by the kernel after the
# write, so the writer's cost is the same).
#
# For each inner frame size and each rate in RATES (trafgen -b, packets per second; "max" is
# trafgen -t 0, as fast as it can), RUNS runs of SECONDS_RUN seconds, each with a fresh
# collector. Per run, from /api/v1/sessions: packets sent (trafgen), written to the files and
# lost before them (input kernel drops, backlog drops), written to the TAP, `tap_dropped`
# (the TAP's queue was full: the writer could not keep up), TAP write errors; the reader's own
# drops (tcpdump's "dropped by kernel", after the TAP: not tapwire's loss); CPU per frame of
# the TAP writer thread and of the engine (utime + stime from /proc/PID/task/TID/stat).
# "Highest rate" is the highest rate at which every run lost nothing: tap_dropped = 0 for the
# TAP, written = sent for the files.
#
# Environment: SIZES ("60 1414"), RATES ("20000 50000 100000 150000 200000 300000 max"),
# SESSIONS (8), SECONDS_RUN (10), RUNS (3), READER (tcpdump|none), INPUT (gre: the raw GRE
# socket, default; ring: --interface col0, the AF_PACKET ring), TAP_QUEUE (frames, default the
# collector's 4096), BENCH_DIR (files, default /var/tmp). Needs root. Installs netsniff-ng,
# tcpdump, jq, curl and bc when missing.
set -euo pipefail

SIZES=${SIZES:-60 1414}
RATES=${RATES:-20000 50000 100000 150000 200000 300000 max}
SESSIONS=${SESSIONS:-8}
SECONDS_RUN=${SECONDS_RUN:-10}
RUNS=${RUNS:-3}
READER=${READER:-tcpdump}
INPUT=${INPUT:-gre}
TAP_QUEUE=${TAP_QUEUE:-}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
GEN_CPU=0 RX_CPU=1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

[[ $(id -u) == 0 ]] || { echo "bench-tap: run as root (network namespaces)" >&2; exit 2; }
source "$ROOT/scripts/bench-lib.sh"
install_missing trafgen:netsniff-ng tcpdump:tcpdump jq:jq curl:curl bc:bc ethtool:ethtool
build_tapwire

ID=twbt-$$
GEN=$ID-gen COL=$ID-col MON=$ID-mon
TAP=twtap0
WORK=$(mktemp -d "$BENCH_DIR/tapwire-bench-tap.XXXXXX")
cleanup() {
    for ns in "$GEN" "$COL" "$MON"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    done
    # The collector is in `col`; its TAP lives in `mon` and goes with it or with the namespace.
    for ns in "$GEN" "$COL" "$MON"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- lab ---------------------------------------------------------------------------------------
gen_col_lab
netns_add "$MON"

queue=""
[[ -n $TAP_QUEUE ]] && queue=", queue = $TAP_QUEUE"
cat >"$WORK/collector.toml" <<EOF
[[session]]
name = "bench"
sources = [{ src = "10.98.1.0/24", kind = "erspan-ii" }]
tap = { name = "$TAP", netns = "$MON"$queue }
EOF

CLK_TCK=$(getconf CLK_TCK)

RESULTS=$WORK/results.tsv
: >"$RESULTS"
# measure LEN RATE: one run with a fresh collector and reader.
measure() {
    local len=$1 rate=$2 out=$WORK/out sink_pid="" reader_pid="" load
    load=$(cut -d' ' -f1 /proc/loadavg)
    rm -rf "$out"
    mkdir -p "$out"
    local inputs=(--gre-v4 0.0.0.0)
    if [[ $INPUT == ring ]]; then
        inputs=(--gre-v4 off --interface col0)
        start_sink "$COL"
        sink_pid=$SINK_PID
    fi
    ip netns exec "$COL" taskset -c "$RX_CPU" "$TAPWIRE" collect --no-tui --config "$WORK/collector.toml" \
        --out "$out" --no-auto "${inputs[@]}" --gre-v6 off --vxlan off --geneve off --tzsp off \
        --api 127.0.0.1:9750 2>"$WORK/collector.err" &
    local pid=$!
    for _ in $(seq 100); do api >/dev/null 2>&1 && break; sleep 0.1; done
    if [[ $READER == tcpdump ]]; then
        ip netns exec "$MON" taskset -c "$RX_CPU" tcpdump -i "$TAP" -n -w /dev/null 2>"$WORK/reader.err" &
        reader_pid=$!
        for _ in $(seq 100); do grep -q "listening on" "$WORK/reader.err" && break; sleep 0.05; done
    fi
    sleep 0.5
    local t0 t1
    t0=$(thread_ticks "$pid")
    local sent secs
    read -r sent secs <<<"$(trafgen_run "$WORK/t-$len.cfg" "$rate" "$SECONDS_RUN")"
    # Until the counters stop moving: the snapshot is published every second.
    local a b snap
    a=$(api | jq -c '[.totals.packets, .sessions[0].written, .sessions[0].tap.written]')
    for _ in $(seq 30); do
        sleep 1.2
        b=$(api | jq -c '[.totals.packets, .sessions[0].written, .sessions[0].tap.written]')
        [[ $a == "$b" ]] && break
        a=$b
    done
    snap=$(api)
    t1=$(thread_ticks "$pid")
    kill -TERM "$pid"
    wait "$pid" || true
    local reader_drops=-
    if [[ -n $reader_pid ]]; then
        kill -INT "$reader_pid" 2>/dev/null || true
        wait "$reader_pid" || true
        reader_drops=$(awk '/dropped by kernel/ {print $1}' "$WORK/reader.err")
    fi
    [[ -n $sink_pid ]] && { kill -TERM "$sink_pid"; wait "$sink_pid" 2>/dev/null || true; }
    rm -rf "$out"
    local s written tap_written tap_dropped tap_errors kdrops backlog lost
    s=$(jq '.sessions[] | select(.name == "bench")' <<<"$snap")
    written=$(jq '.written' <<<"$s")
    tap_written=$(jq '.tap.written' <<<"$s")
    tap_dropped=$(jq '.tap.tap_dropped' <<<"$s")
    tap_errors=$(jq '.tap.errors' <<<"$s")
    backlog=$(jq '.drops.backlog' <<<"$s")
    lost=$(jq '.lost' <<<"$s")
    kdrops=$(jq '[.inputs[].kernel_drops] | add' <<<"$snap")
    # CPU per frame of the TAP writer (its thread is named after the TAP, cut to 15 bytes) and
    # of the engine (the main thread).
    local cpu
    cpu=$(join <(sort <<<"$t0") <(sort <<<"$t1") | awk -v hz="$CLK_TCK" -v n="$tap_written" -v w="$written" '
        $1 ~ /^tapwire-tap/ { tap = ($3 - $2) * 1e9 / hz / (n + 1e-9) }
        $1 == "tapwire" { eng = ($3 - $2) * 1e9 / hz / (w + 1e-9) }
        END { printf "%.0f %.0f", tap, eng }')
    local tap_cpu eng_cpu
    read -r tap_cpu eng_cpu <<<"$cpu"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$len" "$rate" "$sent" "$secs" \
        "$written" "$kdrops" "$backlog" "$lost" "$tap_written" "$tap_dropped" "$tap_errors" \
        "$reader_drops" "$tap_cpu" "$eng_cpu" "$load" >>"$RESULTS"
    printf '%5s B rate %-7s sent %9s in %5.2f s (%7.0f pps)  files %9s (kernel drops %s, backlog %s, seq. lost %s)  TAP %9s, dropped %8s, errors %s  reader drops %s  CPU TAP writer %s ns/frame, engine %s ns/pkt  load %s\n' \
        "$len" "$rate" "$sent" "$secs" "$(echo "$sent / $secs" | bc -l)" "$written" "$kdrops" "$backlog" \
        "$lost" "$tap_written" "$tap_dropped" "$tap_errors" "$reader_drops" "$tap_cpu" "$eng_cpu" "$load" >&2
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for len in $SIZES; do
    trafgen_config "$len" "$SESSIONS" 1 >"$WORK/t-$len.cfg"
    for rate in $RATES; do
        for ((run = 1; run <= RUNS; run++)); do
            measure "$len" "$rate"
        done
    done
done

# --- report ------------------------------------------------------------------------------------
echo
echo "Load average at the start $LOAD_START, at the end $(cut -d' ' -f1-3 /proc/loadavg); $RUNS run(s) of"
echo "${SECONDS_RUN} s per rate; input: $INPUT; TAP reader: $READER. Medians, with the range over the runs in brackets."
echo
echo "| inner frame | trafgen rate | sent (pps) | file loss % | TAP dropped % | TAP writer ns/frame | engine ns/packet | reader drops | load |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
awk -F'\t' '
    function med(a, n,   i, j, t) {
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function cell(a, n, fmt,   lo, hi, i) {
        lo = hi = a[1]
        for (i = 2; i <= n; i++) { if (a[i] < lo) lo = a[i]; if (a[i] > hi) hi = a[i] }
        if (n == 1 || lo == hi) return sprintf(fmt, a[1])
        return sprintf(fmt " [" fmt "-" fmt "]", med(a, n), lo, hi)
    }
    { k = $1 SUBSEP $2; if (!(k in n)) order[++nk] = k; i = ++n[k]
      pps[k, i] = $3 / $4; floss[k, i] = 100 * ($3 - $5) / $3; tdrop[k, i] = 100 * $10 / ($9 + $10 + 1e-9)
      tcpu[k, i] = $13; ecpu[k, i] = $14; rd[k, i] = $12; ld[k, i] = $15
      if ($5 != $3) fbad[k] = 1
      if ($10 != 0) tbad[k] = 1
      len[k] = $1; rate[k] = $2; sent_pps[k] = sent_pps[k] + $3 / $4 }
    END {
        for (o = 1; o <= nk; o++) {
            k = order[o]; m = n[k]
            for (i = 1; i <= m; i++) { a1[i] = pps[k, i]; a2[i] = floss[k, i]; a3[i] = tdrop[k, i]; a4[i] = tcpu[k, i]; a5[i] = ecpu[k, i]; a6[i] = rd[k, i]; a7[i] = ld[k, i] }
            printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", len[k], rate[k], cell(a1, m, "%.0f"),
                cell(a2, m, "%.2f"), cell(a3, m, "%.2f"), cell(a4, m, "%.0f"), cell(a5, m, "%.0f"), cell(a6, m, "%s"), cell(a7, m, "%.1f")
            avg = sent_pps[k] / m
            if (!tbad[k] && avg > tapbest[len[k]]) tapbest[len[k]] = avg
            if (!fbad[k] && avg > filebest[len[k]]) filebest[len[k]] = avg
            sizes[len[k]] = 1
        }
        print ""
        for (l in sizes)
            printf "%s-byte inner frames: highest rate with tap_dropped = 0 in every run: %s pps; with no file loss in every run: %s pps.\n",
                l, (l in tapbest) ? sprintf("%.0f", tapbest[l]) : "none", (l in filebest) ? sprintf("%.0f", filebest[l]) : "none"
    }' "$RESULTS"
