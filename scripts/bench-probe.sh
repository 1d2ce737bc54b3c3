#!/usr/bin/env bash
# Whole-process capture benchmark: tapwire-probe (mirroring to a collector namespace) against
# `tcpdump -w /dev/null`, on a veth that trafgen fills as fast as it can.
#
#   scripts/bench-probe.sh                       # 60- and 1514-byte frames
#   PACKETS_SMALL=2000000 PACKETS_LARGE=500000 scripts/bench-probe.sh
#
# Lab (namespaces made here, removed on exit): `gen` --veth--> `host` (tap1: the mirrored NIC)
# and `host` --veth (MTU 9000)--> `sink` (the collector's address: a raw GRE socket with a
# drop-all filter takes the datagrams, so the sink's kernel neither answers with ICMP nor
# queues anything). trafgen runs on CPU 0; the capturer is pinned to CPU 1. Capturers:
#
#   probe          tapwire-probe mirroring tap1 (ERSPAN II) to the sink
#   probe-capture  the same with --sample 1000000000: capture and select only, nothing sent
#   tcpdump        tcpdump -w /dev/null with a buffer as large as the probe's ring (64 MiB)
#
# For each frame size and capturer:
#
#   - one run at trafgen's maximum rate; if the capturer dropped packets (PACKET_STATISTICS:
#     the probe's `kernel_drops`, tcpdump's "dropped by kernel"), runs at lower rates (trafgen
#     -b: 80, 60, 40, 20, 10 % of the maximum) until one has none; "no-drop" is that rate.
#     trafgen -b sends in bursts (the average is right, the instantaneous rate is not), so the
#     no-drop figure is a lower bound;
#   - CPU per packet = (utime + stime of the whole process, from /proc/PID/stat, over the run)
#     / packets captured.
#
# The probe's CPU includes sending: its sendmmsg through the kernel's IP output onto the
# uplink veth. The sink namespace's receive processing, which a veth would otherwise run in the
# sender's softirq (a third of the probe's CPU, by perf), is the collector's work on a real
# network: RPS on sink0 sends it to CPU 0 (RPS_SINK=0 keeps it with the sender, as before).
# tcpdump only reads; probe-capture is the like-for-like comparison of the capture path.
# Needs root. Installs netsniff-ng (trafgen), tcpdump and jq when missing.
set -euo pipefail

PACKETS_SMALL=${PACKETS_SMALL:-2000000}
PACKETS_LARGE=${PACKETS_LARGE:-600000}
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
ip netns exec "$HOST" ping -c 1 -W 1 10.97.2.2 >/dev/null
start_sink "$SINK"

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

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
    ip netns exec "$GEN" taskset -c 0 trafgen "${args[@]}" >/dev/null 2>&1
    t1=$(date +%s.%N)
    echo "$count $(echo "$t1 - $t0" | bc -l)"
}

# measure probe|tcpdump FRAME_LEN COUNT [RATE]: prints "captured drops cpu_ns_per_packet pps".
measure() {
    local who=$1 len=$2 count=$3 rate=${4:-} pid extra=()
    [[ $who == probe-capture ]] && extra=(--sample 1000000000)
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
    local before after run sent secs captured drops
    before=$(cpu_ticks "$pid")
    run=$(trafgen_run "$len" "$count" "$rate")
    sent=${run% *} secs=${run#* }
    sleep 1.5
    after=$(cpu_ticks "$pid")
    if [[ $who == probe* ]]; then
        local j
        j=$(ip netns exec "$HOST" curl -sf http://127.0.0.1:9751/api/v1/flows)
        captured=$(jq '.flows[0].counters.captured' <<<"$j")
        drops=$(jq '.flows[0].counters.kernel_drops' <<<"$j")
        kill -TERM "$pid"; wait "$pid" || true
    else
        kill -INT "$pid"; wait "$pid" || true
        captured=$(awk '/packets captured/ {print $1}' "$WORK/tcpdump.err")
        drops=$(awk '/dropped by kernel/ {print $1}' "$WORK/tcpdump.err")
    fi
    local seen=$((captured + drops))
    local cpu_ns=$(echo "($after - $before) * 1000000000 / $CLK_TCK / ($captured + 0.000001)" | bc -l)
    printf "%s %s %.0f %.0f\n" "$captured" "$drops" "$cpu_ns" "$(echo "$sent / $secs" | bc -l)"
    [[ $seen -ge $sent ]] || echo "bench-probe: $who saw $seen of $sent frames" >&2
}

# sustain WHO LEN COUNT: the max-rate run, then lower rates until no drops.
sustain() {
    local who=$1 len=$2 count=$3
    local r captured drops cpu pps best="" first
    r=$(measure "$who" "$len" "$count")
    read -r captured drops cpu pps <<<"$r"
    first="$captured $drops $cpu $pps"
    if [[ $drops == 0 ]]; then
        best=$pps
    else
        local rate
        for pct in 80 60 40 20 10; do
            rate=$(printf "%.0f" "$(echo "$pps * $pct / 100" | bc -l)")
            read -r captured drops cpu pps <<<"$(measure "$who" "$len" "$count" "$rate")"
            if [[ $drops == 0 ]]; then best=$pps; break; fi
        done
    fi
    echo "$first ${best:-none}"
}

printf "%-6s %-14s %14s %10s %10s %14s %14s\n" "frame" "capturer" "offered (pps)" "captured" "drops" "no-drop (pps)" "CPU ns/packet"
for spec in "60 $PACKETS_SMALL" "1514 $PACKETS_LARGE"; do
    set -- $spec
    for who in probe probe-capture tcpdump; do
        read -r captured drops cpu pps best <<<"$(sustain "$who" "$1" "$2")"
        printf "%-6s %-14s %14.0f %10s %10s %14s %14s\n" "$1" "$who" "$pps" "$captured" "$drops" \
            "$( [[ $best == none ]] && echo none || printf "%.0f" "$best")" "$cpu"
    done
done
