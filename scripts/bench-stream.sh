#!/usr/bin/env bash
# Live streams against capture: does serving SUBSCRIBERS (50) live streams at once lower what
# `tapwire collect` captures? The collect benchmark's workload (scripts/bench-collect.sh, its
# `tapwire` column: the raw GRE socket input) with no subscriber and with SUBSCRIBERS, taking
# turns, RUNS (5) times each; medians and ranges.
#
#   scripts/bench-stream.sh                          # 60-byte inner frames at trafgen's maximum
#   SIZES=1414 RUNS=3 scripts/bench-stream.sh
#   RATE=200000 scripts/bench-stream.sh              # a fixed rate: compare the loss
#   API_CPU=0 scripts/bench-stream.sh                # the collector's API thread beside the readers
#
# Lab (bench-lib.sh; namespaces made here, removed on exit, also on failure): trafgen in `gen`
# on CPU 0 sends ERSPAN II to `col`, 8 sessions from 8 outer sources with contiguous GRE
# sequences, SECONDS_RUN (10) s per run; RPS puts col's receive work on CPU 1, where the whole
# collector is pinned. The sessions are named (s1 ... s8, one source each, from a
# configuration file) so that readers can subscribe before the traffic starts; the runs with
# no subscriber use the same file.
#
# Readers, all in `col`, pinned to READER_CPU (default 0, the generator's: a reader is
# normally on another machine, and on CPU 1 it would take the capturer's CPU itself), spread
# round robin over the 8 sessions, each reading its own stream from the API on 127.0.0.1:
#   - SLOW (5): `curl --limit-rate 64k`, falling behind and dropping;
#   - STALLED (5): curl into a pipe nobody reads (`| sleep`): its queue fills and stays full;
#   - of the others, every 5th `tapwire stream S -w /dev/null` (the CLI's block-by-block
#     copy), every 10th of them all with the filter `udp port 1001` (run on the collector,
#     per packet); the rest `curl -sN URL -o /dev/null`. With 50: 32 curl, 8 tapwire stream
#     (4 filtered), 5 slow, 5 stalled.
# The API thread (tapwire-api, which writes every stream, at nice 10 so that the capture
# wins the CPU they share) stays with the collector on CPU 1 unless API_CPU names another CPU:
# it is moved there after the start (taskset -p on its TID). API_NICE=N renices it (0: the
# capture's own priority, to see what the lower one is worth).
#
# Per run: packets trafgen sent, packets the collector wrote (API totals, checked against the
# files with capinfos), their rate, loss, the collector's CPU per packet (utime + stime) and
# per thread, and what the streams were given and dropped (the API's per-session counts).
# CPU 1's other tenants (other helpers' builds on a shared machine) move the figures: the
# load average is recorded beside each run, and both variants take turns so that drift hits
# both. PERF_DIR=DIR: `perf record -g` of the collector during each run, kept in DIR as
# perf-SUBSCRIBERS-LEN-RUN.data. Needs root; installs netsniff-ng, tshark (capinfos), jq, curl
# and bc when missing.
set -euo pipefail

SIZES=${SIZES:-60}
SECONDS_RUN=${SECONDS_RUN:-10}
RUNS=${RUNS:-5}
RATE=${RATE:-max}
SUBSCRIBERS=${SUBSCRIBERS:-50}
SLOW=${SLOW:-5}
STALLED=${STALLED:-5}
READER_CPU=${READER_CPU:-0}
API_CPU=${API_CPU:-}
API_NICE=${API_NICE:-}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
PERF_DIR=${PERF_DIR:-}
SESSIONS=8
GEN_CPU=0 RX_CPU=1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

[[ $(id -u) == 0 ]] || { echo "bench-stream: run as root (network namespaces)" >&2; exit 2; }
((SLOW + STALLED <= SUBSCRIBERS)) || { echo "bench-stream: SLOW + STALLED > SUBSCRIBERS" >&2; exit 2; }
source "$ROOT/scripts/bench-lib.sh"
install_missing trafgen:netsniff-ng capinfos:tshark jq:jq curl:curl bc:bc ethtool:ethtool
build_tapwire

ID=twbs-$$
GEN=$ID-gen COL=$ID-col
WORK=$(mktemp -d "$BENCH_DIR/tapwire-bench-stream.XXXXXX")
READERS=()
cleanup() {
    for pid in "${READERS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for ns in "$GEN" "$COL"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

gen_col_lab
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

CONFIG=$WORK/collector.toml
for ((s = 1; s <= SESSIONS; s++)); do
    printf '[[session]]\nname = "s%d"\nsources = [{ src = "10.98.1.%d", kind = "erspan-ii", id = %d }]\n\n' \
        "$s" "$s" "$s"
done >"$CONFIG"

start_collector() {
    local out=$1
    rm -rf "$out"
    mkdir -p "$out"
    ip netns exec "$COL" taskset -c "$RX_CPU" "$TAPWIRE" collect --no-tui --config "$CONFIG" \
        --out "$out" --gre-v4 0.0.0.0 --gre-v6 off --vxlan off --geneve off --tzsp off \
        --api 127.0.0.1:9750 2>"$WORK/collector.err" &
    CAP_PID=$!
    for _ in $(seq 100); do api >/dev/null 2>&1 && break; sleep 0.1; done
    local t
    for t in /proc/"$CAP_PID"/task/*; do
        [[ $(cat "$t/comm") == tapwire-api ]] || continue
        [[ -n $API_CPU ]] && taskset -pc "$API_CPU" "${t##*/}" >/dev/null
        [[ -n $API_NICE ]] && renice -n "$API_NICE" -p "${t##*/}" >/dev/null
    done
}

# start_readers N: N readers as described above; waits until the API counts them all.
start_readers() {
    local n=$1 i s url
    READERS=()
    for ((i = 0; i < n; i++)); do
        s=s$((i % SESSIONS + 1))
        url=http://127.0.0.1:9750/api/v1/sessions/$s/stream
        local cmd
        if ((i < SLOW)); then
            cmd=(curl -sN --limit-rate 64k "$url" -o /dev/null)
        elif ((i < SLOW + STALLED)); then
            cmd=(sh -c "curl -sN '$url' | sleep 3600")
        elif ((i % 5 == 0)); then
            cmd=("$TAPWIRE" stream "$s" -w /dev/null)
            ((i % 10 == 0)) && cmd=("$TAPWIRE" stream "$s" udp port 1001 -w /dev/null)
        else
            cmd=(curl -sN "$url" -o /dev/null)
        fi
        ip netns exec "$COL" taskset -c "$READER_CPU" "${cmd[@]}" >/dev/null 2>&1 &
        READERS+=($!)
        disown $!
    done
    local got=0
    for _ in $(seq 100); do
        got=$(api | jq '[.sessions[].streams.subscribers | length] | add // 0') || got=0
        ((got == n)) && return 0
        sleep 0.1
    done
    echo "bench-stream: $got of $n readers subscribed" >&2
}

stop_readers() {
    local pid
    for pid in "${READERS[@]}"; do
        pkill -KILL -P "$pid" 2>/dev/null || true
        kill -KILL "$pid" 2>/dev/null || true
    done
    READERS=()
}

settled() {
    local a b
    a=$(api | jq -c '[.totals.packets, .totals.written]')
    for _ in $(seq 30); do
        sleep 1.2
        b=$(api | jq -c '[.totals.packets, .totals.written]')
        [[ $a == "$b" ]] && break
        a=$b
    done
    api
}

RESULTS=$WORK/results.tsv
: >"$RESULTS"
# measure SUBS LEN: one run; appends a result line, prints a summary on stderr.
measure() {
    local subs=$1 len=$2 out=$WORK/out load
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    start_collector "$out"
    ((subs > 0)) && start_readers "$subs"
    sleep 0.5
    local w0 cpu0 threads0
    w0=$(api | jq '.totals.written')
    cpu0=$(cpu_ticks "$CAP_PID")
    threads0=$(thread_ticks "$CAP_PID")
    local perf_pid=
    if [[ -n $PERF_DIR ]]; then
        perf record -q -g -F 999 -p "$CAP_PID" -o "$PERF_DIR/perf-$subs-$len-$run.data" \
            -- sleep "$SECONDS_RUN" >/dev/null 2>&1 &
        perf_pid=$!
    fi
    local sent secs
    read -r sent secs <<<"$(trafgen_run "$WORK/t-$len.cfg" "$RATE" "$SECONDS_RUN")"
    [[ -n $perf_pid ]] && { wait "$perf_pid" || true; }
    local snap
    snap=$(settled)
    local cpu1 threads1
    cpu1=$(cpu_ticks "$CAP_PID")
    threads1=$(thread_ticks "$CAP_PID")
    local written delivered dropped n_subs
    written=$(($(jq '.totals.written' <<<"$snap") - w0))
    delivered=$(jq '[.sessions[].streams.delivered] | add // 0' <<<"$snap")
    dropped=$(jq '[.sessions[].streams.dropped] | add // 0' <<<"$snap")
    n_subs=$(jq '[.sessions[].streams.subscribers | length] | add // 0' <<<"$snap")
    stop_readers
    kill -TERM "$CAP_PID"
    wait "$CAP_PID" || true
    local in_files
    in_files=$(capinfos -c -M -T -r "$out"/*.pcapng | awk -F'\t' '{n += $2} END {print n + 0}')
    ((in_files == written + w0)) ||
        echo "bench-stream: the files hold $in_files packets, the API counted $((written + w0))" >&2
    rm -rf "$out"
    local pps loss cpu_ns per_thread
    pps=$(echo "$written / $secs" | bc -l)
    loss=$(echo "100 * ($sent - $written) / $sent" | bc -l)
    cpu_ns=$(echo "($cpu1 - $cpu0) * 1000000000 / $CLK_TCK / ($written + 0.000001)" | bc -l)
    per_thread=$(join <(sort <<<"$threads0") <(sort <<<"$threads1") | awk -v w="$written" -v hz="$CLK_TCK" '
        { d = $3 - $2; if (d > 0) printf "%s%s=%.0f", sep, $1, d * 1e9 / hz / w; sep = "," }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$subs" "$len" "$sent" "$secs" \
        "$written" "$pps" "$loss" "$cpu_ns" "$delivered" "$dropped" "$load" "$per_thread" >>"$RESULTS"
    printf '%2s subscribers (%s live at the end)  %5s B  sent %9s in %5.2f s  written %9s (%7.0f pps)  loss %6.2f %%  CPU %5.0f ns/pkt  streams: delivered %s dropped %s  load %s  %s\n' \
        "$subs" "$n_subs" "$len" "$sent" "$secs" "$written" "$pps" "$loss" "$cpu_ns" "$delivered" \
        "$dropped" "$load" "$per_thread" >&2
}

UPTIME_START=$(uptime)
for len in $SIZES; do
    trafgen_config "$len" "$SESSIONS" 1 >"$WORK/t-$len.cfg"
    for ((run = 1; run <= RUNS; run++)); do
        measure 0 "$len"
        measure "$SUBSCRIBERS" "$len"
    done
done

echo
echo "uptime at the start: $UPTIME_START"
echo "uptime at the end:   $(uptime)"
echo "$RUNS runs of $SECONDS_RUN s per point, trafgen rate: $RATE; readers on CPU $READER_CPU, the API"
echo "thread on CPU ${API_CPU:-$RX_CPU}, nice ${API_NICE:-as built}. Medians, with the range over the runs in"
echo "brackets. A shared machine."
echo
echo "| inner frame | subscribers | written (pps) | loss % | CPU ns/packet | streams delivered | streams dropped | change in written |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for len in $SIZES; do
    awk -F'\t' -v len="$len" -v subs="$SUBSCRIBERS" '
        function med(a, n,   i, j, t) {
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        function cell(a, n, fmt,   lo, hi, i) {
            if (n == 0) return "-"
            lo = hi = a[1]
            for (i = 2; i <= n; i++) { if (a[i] < lo) lo = a[i]; if (a[i] > hi) hi = a[i] }
            if (n == 1) return sprintf(fmt, a[1])
            return sprintf(fmt " [" fmt "-" fmt "]", med(a, n), lo, hi)
        }
        $2 == len { k = ($1 == 0) ? 0 : 1; n[k]++; i = n[k]
            pps[k, i] = $6; loss[k, i] = $7; cpu[k, i] = $8; del[k, i] = $9; drp[k, i] = $10 }
        END {
            for (k = 0; k <= 1; k++) {
                if (!n[k]) continue
                for (i = 1; i <= n[k]; i++) { p[i] = pps[k, i]; l[i] = loss[k, i]; c[i] = cpu[k, i]; d[i] = del[k, i]; r[i] = drp[k, i] }
                m[k] = med(p, n[k])
                change = (k == 1 && m[0] > 0) ? sprintf("%+.1f %%", 100 * (m[1] - m[0]) / m[0]) : "-"
                printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", len, k ? subs : 0, cell(p, n[k], "%.0f"),
                    cell(l, n[k], "%.2f"), cell(c, n[k], "%.0f"), cell(d, n[k], "%.0f"), cell(r, n[k], "%.0f"), change
                delete p; delete l; delete c; delete d; delete r
            }
        }' "$RESULTS"
done
echo
echo "Per thread (CPU ns per packet written, utime + stime; each run, subscribers first):"
awk -F'\t' '{printf "  %2s subscribers %s B: %s\n", $1, $2, $12}' "$RESULTS"
