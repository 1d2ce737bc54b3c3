#!/usr/bin/env bash
# Whole-process capture benchmark: tapwire-probe (mirroring to a collector namespace, on its
# fast path and forced onto the raw socket) against `tcpdump -w /dev/null`, on a veth that
# trafgen fills as fast as it can.
#
#   scripts/bench-probe.sh                       # 60- and 1514-byte frames, 5 runs each
#   RUNS=3 PACKETS_SMALL=2000000 PACKETS_LARGE=500000 scripts/bench-probe.sh
#   CAPTURERS="probe-fast probe-raw" scripts/bench-probe.sh
#   PERF_DIR=/tmp/prof RUNS=1 scripts/bench-probe.sh   # also `perf record -e cpu-clock -g` of
#                                                     # each max-rate run (software clock
#                                                     # sampling: works without PMU access)
#
# Lab (namespaces made here, removed on exit): `gen` --veth--> `host` (tap1: the mirrored NIC)
# and `host` --veth (MTU 9000)--> `sink` (the collector's address: a raw GRE socket with a
# drop-all filter takes the datagrams, so the sink's kernel neither answers with ICMP nor
# queues anything). trafgen runs on CPU 0; the capturer is pinned to CPU 1. Capturers:
#
#   probe-fast     tapwire-probe mirroring tap1 (ERSPAN II) to the sink, default send path
#                  (auto: complete frames through a TPACKET_V2 transmit ring on up0, qdisc
#                  bypassed; the host knows the sink's MAC before the run)
#   probe-raw      the same with --send-path raw: sendmmsg on the raw GRE socket, the kernel's
#                  IP output per datagram
#   probe-capture  the same with --sample 1000000000: capture and select only, nothing sent
#   tcpdump        tcpdump -w /dev/null with a buffer as large as the probe's ring (64 MiB)
#
# For each frame size, run (RUNS, default 5) and capturer:
#
#   - one run at trafgen's maximum rate; if the capturer dropped packets (PACKET_STATISTICS:
#     the probe's `kernel_drops`, tcpdump's "dropped by kernel"), runs at lower rates (trafgen
#     -b: 80, 60, 40, 20, 10 % of the maximum) until one has none; "no-drop" is that rate.
#     trafgen -b sends in bursts (the average is right, the instantaneous rate is not), so the
#     no-drop figure is a lower bound;
#   - CPU per packet = (utime + stime of the whole process, from /proc/PID/stat, over the run)
#     / packets captured; kernel drops and the probe's send errors of the maximum-rate run;
#   - the probe's share of datagrams that took the transmit ring (`sent_fast` / `sent`).
#
# The table gives the median of the runs and [min-max]; `uptime` is printed before each size
# and in the summary: the machine may be shared, so read the ranges. The probe's CPU includes
# sending (the transmit ring's send() or sendmmsg through the IP output, onto the uplink veth).
# The sink namespace's receive processing, which a veth would otherwise run in the sender's
# softirq, is the collector's work on a real network: RPS on sink0 sends it to CPU 0
# (RPS_SINK=0 keeps it with the sender, as before). tcpdump only reads; probe-capture is the
# like-for-like comparison of the capture path.
# Needs root. Installs netsniff-ng (trafgen), tcpdump and jq when missing.
set -euo pipefail

PACKETS_SMALL=${PACKETS_SMALL:-2000000}
PACKETS_LARGE=${PACKETS_LARGE:-600000}
RUNS=${RUNS:-5}
CAPTURERS=${CAPTURERS:-probe-fast probe-raw probe-capture tcpdump}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

[[ $(id -u) == 0 ]] || { echo "bench-probe: run as root (network namespaces)" >&2; exit 2; }
source "$ROOT/scripts/bench-lib.sh"
install_missing trafgen:netsniff-ng tcpdump:tcpdump jq:jq curl:curl bc:bc

(cd "$ROOT" && cargo build --release --quiet -p tapwire-probe --bin tapwire-probe)
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
PROBE=$TARGET_DIR/release/tapwire-probe

ID=twbench-$$
GEN=$ID-gen HOST=$ID-host SINK=$ID-sink
WORK=$(mktemp -d /tmp/tapwire-bench-probe.XXXXXX)
cleanup() {
    for ns in "$GEN" "$HOST" "$SINK"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

for ns in "$GEN" "$HOST" "$SINK"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
done
ip link add name gen0 netns "$GEN" type veth peer name tap1 netns "$HOST"
ip link add name up0 netns "$HOST" type veth peer name sink0 netns "$SINK"
for x in "$GEN gen0" "$HOST tap1" "$HOST up0" "$SINK sink0"; do
    set -- $x
    ip -n "$1" link set "$2" up
done
ip -n "$HOST" link set up0 mtu 9000
ip -n "$SINK" link set sink0 mtu 9000
ip -n "$HOST" addr add 10.97.1.1/24 dev tap1
ip -n "$HOST" addr add 10.97.2.1/24 dev up0
ip -n "$SINK" addr add 10.97.2.2/24 dev sink0
if [[ ${RPS_SINK:-1} == 1 ]]; then
    ip netns exec "$SINK" sh -c 'echo 1 > /sys/class/net/sink0/queues/rx-0/rps_cpus'
fi
# The frames are for another station: the host drops them after the taps saw them.
GEN_MAC=$(ip netns exec "$GEN" cat /sys/class/net/gen0/address)
HOST_MAC=$(ip netns exec "$HOST" cat /sys/class/net/tap1/address)
# The host has talked to the sink: the probe's fast path finds its MAC at once.
ip netns exec "$HOST" ping -c 1 -W 1 10.97.2.2 >/dev/null
start_sink "$SINK"

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Packets the kernel dropped because a CPU's input backlog was full (netdev_max_backlog), all
# CPUs and namespaces: on this lab, the sink's receive queue behind a veth.
backlog_drops() {
    local n=0 cpu dropped rest
    while read -r cpu dropped rest; do n=$((n + 16#$dropped)); done </proc/net/softnet_stat
    echo "$n"
}

# trafgen_run FRAME_LEN COUNT [RATE]: sends, prints "packets seconds".
trafgen_run() {
    local len=$1 count=$2 rate=${3:-} fill=$(( $1 - 42 ))
    cat >"$WORK/t.cfg" <<EOF
{ eth(da=$HOST_MAC, sa=$GEN_MAC), ipv4(saddr=10.97.1.2, daddr=10.97.1.9), udp(sp=4000, dp=9), fill(0x41, $fill) }
EOF
    local args=(-o gen0 -i "$WORK/t.cfg" -n "$count" -P 1 -C)
    [[ -n $rate ]] && args+=(-b "${rate}pps")
    local t0 t1
    t0=$(date +%s.%N)
    rm -f "$WORK/trafgen.failed"
    if ! ip netns exec "$GEN" taskset -c 0 trafgen "${args[@]}" >"$WORK/trafgen.out" 2>&1; then
        # It gives up on EAGAIN from its own ring now and then ("Flushing TX_RING failed").
        echo "bench-probe: trafgen failed: $(grep -v 'Cannot set system socket memory' "$WORK/trafgen.out" | tail -1)" >&2
        touch "$WORK/trafgen.failed"
    fi
    t1=$(date +%s.%N)
    echo "$count $(echo "$t1 - $t0" | bc -l)"
}

# measure CAPTURER FRAME_LEN COUNT [RATE]: prints "captured drops cpu_ns_per_packet pps
# send_errors sent sent_fast backlog_drops" (send_errors, sent and sent_fast 0 for tcpdump).
measure() {
    local who=$1 len=$2 count=$3 rate=${4:-} pid extra=()
    case $who in
        probe-capture) extra=(--sample 1000000000) ;;
        probe-raw) extra=(--send-path raw) ;;
    esac
    if [[ $who == probe* ]]; then
        ip netns exec "$HOST" taskset -c 1 "$PROBE" --iface tap1 --direction in \
            --collector 10.97.2.2 --session 1 --stats 127.0.0.1:9751 --stats-interval off \
            --block-size 1MiB --block-count 64 "${extra[@]}" 2>"$WORK/probe.err" &
        pid=$!
        for _ in $(seq 100); do
            ip netns exec "$HOST" curl -sf http://127.0.0.1:9751/api/v1/flows 2>/dev/null \
                | jq -e '.flows[0].state == "running"' >/dev/null 2>&1 && break
            sleep 0.05
        done
    else
        # tcpdump's default buffer with -B 65536 KiB: the same 64 MiB as the probe's ring.
        ip netns exec "$HOST" taskset -c 1 tcpdump -i tap1 -n -B 65536 -w /dev/null \
            2>"$WORK/tcpdump.err" &
        pid=$!
        for _ in $(seq 100); do grep -q "listening on" "$WORK/tcpdump.err" && break; sleep 0.05; done
    fi
    sleep 0.3
    local before after run sent secs captured drops send_errors=0 psent=0 fast=0 backlog0
    backlog0=$(backlog_drops)
    before=$(cpu_ticks "$pid")
    local perf_pid=""
    if [[ -n ${PERF_DIR:-} && -z $rate ]]; then
        mkdir -p "$PERF_DIR"
        perf record -q -e cpu-clock -F 4999 -g -p "$pid" -o "$PERF_DIR/$who-$len.data" \
            >/dev/null 2>&1 &
        perf_pid=$!
        sleep 0.5
    fi
    run=$(trafgen_run "$len" "$count" "$rate")
    sent=${run% *} secs=${run#* }
    sleep 1.5
    after=$(cpu_ticks "$pid")
    if [[ -n $perf_pid ]]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
    if [[ $who == probe* ]]; then
        local j
        j=$(ip netns exec "$HOST" curl -sf http://127.0.0.1:9751/api/v1/flows)
        captured=$(jq '.flows[0].counters.captured' <<<"$j")
        drops=$(jq '.flows[0].counters.kernel_drops' <<<"$j")
        send_errors=$(jq '.flows[0].counters.send_errors' <<<"$j")
        psent=$(jq '.flows[0].counters.sent' <<<"$j")
        fast=$(jq '.flows[0].counters.sent_fast' <<<"$j")
        kill -TERM "$pid"; wait "$pid" || true
    else
        kill -INT "$pid"; wait "$pid" || true
        captured=$(awk '/packets captured/ {print $1}' "$WORK/tcpdump.err")
        drops=$(awk '/dropped by kernel/ {print $1}' "$WORK/tcpdump.err")
    fi
    local seen=$((captured + drops))
    local cpu_ns=$(echo "($after - $before) * 1000000000 / $CLK_TCK / ($captured + 0.000001)" | bc -l)
    printf "%s %s %.0f %.0f %s %s %s %s\n" "$captured" "$drops" "$cpu_ns" "$(echo "$sent / $secs" | bc -l)" \
        "$send_errors" "$psent" "$fast" "$(($(backlog_drops) - backlog0))"
    [[ -e $WORK/trafgen.failed ]] && return 1
    [[ $seen -ge $sent ]] || echo "bench-probe: $who saw $seen of $sent frames" >&2
}

# measure_again ARGS...: `measure`, run again (up to 3 times) when trafgen failed.
measure_again() {
    local r try
    for try in 1 2 3; do
        if r=$(measure "$@"); then
            echo "$r"
            return
        fi
        echo "bench-probe: run again ($try)" >&2
    done
    echo "$r"
}

# sustain WHO LEN COUNT: the max-rate run, then lower rates until no drops. Prints "captured
# drops cpu pps send_errors sent sent_fast backlog_drops no_drop_pps" (no_drop_pps "none" if
# even 10 % drops).
sustain() {
    local who=$1 len=$2 count=$3
    local first best="" captured drops cpu pps errors psent fast backlog
    first=$(measure_again "$who" "$len" "$count")
    read -r captured drops cpu pps errors psent fast backlog <<<"$first"
    if [[ $drops == 0 ]]; then
        best=$pps
    else
        local rate max=$pps
        for pct in 80 60 40 20 10; do
            rate=$(printf "%.0f" "$(echo "$max * $pct / 100" | bc -l)")
            read -r captured drops cpu pps errors psent fast backlog <<<"$(measure_again "$who" "$len" "$count" "$rate")"
            if [[ $drops == 0 ]]; then best=$pps; break; fi
        done
    fi
    echo "$first ${best:-none}"
}

# stat FILE COLUMN: "median [min-max]" of a column of numbers ("none" counts as 0 in order
# and is shown as none when it is the median).
stat() {
    awk -v c="$2" '{print $c}' "$1" | sed 's/^none$/0/' | sort -g | awk '
        { v[NR] = $1 }
        END {
            if (NR == 0) { print "-"; exit }
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%.0f [%.0f-%.0f]", m, v[1], v[NR]
        }'
}

RESULTS=$WORK/results
mkdir -p "$RESULTS"
echo "bench-probe: $RUNS runs; capturers: $CAPTURERS"
for spec in "60 $PACKETS_SMALL" "1514 $PACKETS_LARGE"; do
    set -- $spec
    echo "frame $1: $(uptime)"
    for run in $(seq "$RUNS"); do
        for who in $CAPTURERS; do
            r=$(sustain "$who" "$1" "$2")
            echo "$r" >>"$RESULTS/$1-$who"
            echo "  run $run $who: $r ($(uptime | sed 's/.*load/load/'))" >&2
        done
    done
done

echo
echo "bench-probe summary, median [min-max] of $RUNS runs; $(uptime)"
printf "%-6s %-14s %18s %24s %20s %22s %16s %22s %10s\n" "frame" "capturer" "offered (pps)" \
    "no-drop (pps)" "CPU ns/packet" "kernel drops at max" "send errors" "backlog drops at max" \
    "fast (%)"
for spec in "60 $PACKETS_SMALL" "1514 $PACKETS_LARGE"; do
    set -- $spec
    for who in $CAPTURERS; do
        f=$RESULTS/$1-$who
        [[ -s $f ]] || continue
        share=$(awk '{ if ($6 > 0) print 100 * $7 / $6; else print 0 }' "$f" >"$f.share"; stat "$f.share" 1)
        [[ $who == probe-fast || $who == probe-raw ]] || share="-"
        printf "%-6s %-14s %18s %24s %20s %22s %16s %22s %10s\n" "$1" "$who" "$(stat "$f" 4)" \
            "$(stat "$f" 9)" "$(stat "$f" 3)" "$(stat "$f" 2)" "$(stat "$f" 5)" "$(stat "$f" 8)" \
            "$share"
    done
done
