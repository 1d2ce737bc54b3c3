#!/usr/bin/env bash
# Live collection benchmark: `tapwire collect` against `tcpdump -w` on the same ERSPAN II
# traffic, and tapwire's memory with many sessions.
#
#   scripts/bench-collect.sh                              # everything, as the README reports it
#   RUNS=1 SIZES=60 RSS_SESSIONS= scripts/bench-collect.sh    # one quick point
#   RATE=200000 CAPTURERS="tapwire tcpdump" scripts/bench-collect.sh
#   GENERATOR=tcpreplay RUNS=5 CAPTURERS="tapwire tapwire-xdp tcpdump" RSS_SESSIONS= \
#       scripts/bench-collect.sh                          # the same file replayed to each
#   GENERATOR=tcpreplay SEARCH=1 RUNS=5 SIZES=60 PROFILE=0 CAPTURERS="tapwire-xdp tcpdump-B" \
#       RSS_SESSIONS= scripts/bench-collect.sh            # the highest rate with no loss
#   TAPWIRE=/path/new TAPWIRE_B=/path/old CAPTURERS="tapwire-xdp@b tapwire-xdp" ...
#                                                         # two builds, interleaved run by run
#
# GENERATOR=tcpreplay: instead of trafgen running for SECONDS_RUN, every run replays the same
# file of COUNT (1,000,000) packets, made once per frame size from the same sessions as the
# trafgen configuration (8 sessions, contiguous GRE sequences), with `tcpreplay --topspeed`
# pinned to CPU 0, or `--pps=RATE` when RATE is a number. Frames the receiving side cannot
# take are lost: "loss" is then what the whole path, kernel included, failed to keep of an
# identical input.
#
# SEARCH=1: for each size and capturer, the highest RATE at which none of RUNS runs lost a
# packet (written < sent), by bisection: SEARCH_LO (50,000) is tried first,
# then the middle of what is known, down to SEARCH_STEP pps, below SEARCH_HI_60 (small frames)
# or SEARCH_HI_LARGE. A rate fails at its first run with loss, so a failing step costs one run.
# The table gives the rate the generator achieved at the rate found (tcpreplay may fall short).
#
# Lab (namespaces made here, removed on exit, also on failure): `gen` --veth--> `col`. trafgen
# (netsniff-ng) runs in `gen` on CPU 0 and sends ERSPAN II to col's address: GRE with the S bit
# and a sequence number counted by trafgen's `dinc()`, one counter per session, so each
# session's numbers are contiguous; SESSIONS sessions from as many outer source addresses
# (10.98.1.N, session id N). trafgen's slow path (`-t 0`, one sendto per frame; or `-b RATE`)
# is used: its TX-ring fast path gives up with EAGAIN when the receiving CPU falls behind (the
# socket's send buffer cannot be raised inside a namespace). RPS on col's veth sends the
# receive side's softirq work to CPU 1, where the capturer is pinned: each side pays its own.
# A full backlog on CPU 1 makes sendto fail with ENOBUFS, and trafgen sends that frame again:
# the generator then runs at the rate the receiving CPU absorbs (counted as `backpressure`,
# the veth's tx drops, which are retried, never lost).
#
# Capturers, each started before and stopped after the traffic, pinned to CPU 1:
#
#   tapwire        tapwire collect --no-tui --out DIR (release build) with no input flag: the
#                  default, --input auto, which picks AF_XDP on col0 where it can
#   tapwire-raw    the same with --input sockets: the raw GRE socket input alone
#   tapwire-ring   the same with --gre-v4 off --interface col0 (AF_PACKET TPACKET_V3 ring)
#   tapwire-xdp    the same with --xdp col0 (AF_XDP; the raw GRE socket stays open for what the
#                  XDP program passes). INPUT=xdp (or ring, raw) runs that tapwire column alone.
#   tcpdump        tcpdump -i col0 -w FILE (libpcap's default 2 MiB buffer)
#   tcpdump-B      tcpdump -i col0 -B 65536 -w FILE (a 64 MiB buffer)
#
# Beside the capturers other than `tapwire`, a raw GRE socket with a drop-all filter takes the
# datagrams (so col's kernel does not answer each with ICMP). Per run: packets sent (trafgen's
# count, checked against the veth's), packets the capturer got (tapwire: written, and the
# input's kernel drops from /api/v1/sessions; tcpdump: its "captured" and "dropped by kernel"
# lines), the packets in the files (captype, then capinfos), loss, and CPU per packet written:
# utime + stime of the whole process over the run (/proc/PID/stat), and per thread for tapwire.
#
# Softirq: the kernel's receive work runs on CPU 1 and, with tick-based accounting, is charged
# to whichever task it interrupts: to the capturer when it is running, to other work or to no
# one when it sleeps. With PROFILE=1 (default, needs perf) `perf record -e cpu-clock -C 0,1`
# samples both CPUs during the run and the samples whose stack holds the softirq handler tell
# how much of the capturer's time was softirq: "own" is the rest, the capturer's own work.
# Veth runs an XDP program in its NAPI poll on the CPU that sent the frame (CPU 0 here, in
# trafgen's sendto), ahead of RPS; so for tapwire-xdp the kernel's receive work is softirq on
# CPU 0, not CPU 1 (on a NIC it runs on the CPU of the queue's interrupt). The fair figure for
# every column is therefore "receive": the capturer's samples plus every softirq sample on
# either CPU outside it, per packet sent. "CPU-1 busy" is CPU 1's non-idle time from
# /proc/stat, from just before the traffic to 0.2 s after it, per packet sent (it includes
# whatever else ran on CPU 1 on a shared machine: "CPU-1 other" is that, from the samples of
# other tasks outside softirq). perf itself runs on CPU 0 and starts and stops outside that
# window. PERF_DIR=DIR keeps each run's perf.data there (`perf report -i FILE --comm ...`).
#
# Per run, also: the capturer's context switches (all threads, voluntary or not) and minor
# page faults per 1000 packets written (wake-ups per small batch, fresh memory), and a
# "where:" line (printed before the run's summary line) of the counters that say where frames
# that were not written went: softnet backlog drops and squeezes of both CPUs
# (/proc/net/softnet_stat: netdev_max_backlog full), col0's rx_dropped (an AF_XDP rx ring full),
# the generator's ENOBUFS retries and failures, and col's nstat counters that moved
# (IpInUnknownProtos: a raw socket's queue full, or no raw socket).
#
# Memory: RSS_SESSIONS (default "1024 4096") sessions (session ids 0-1023 from one or more
# outer sources) of 1414-byte frames at trafgen's maximum rate for RSS_SECONDS (60); VmRSS and
# VmHWM from /proc/PID/status every second.
#
# Environment: SIZES (inner frame bytes, "60 1414"), SESSIONS (8), SECONDS_RUN (10), RUNS (3),
# RATE (max, or packets per second), GENERATOR, COUNT, SEARCH and SEARCH_*, CAPTURERS,
# RSS_SESSIONS, RSS_SECONDS, PROFILE, PERF_DIR, TAPWIRE (a built binary instead of this tree's
# release build) and TAPWIRE_B (the binary of capturers named NAME@b), BENCH_DIR (where the
# capture files go, default /var/tmp: a disk, as in production). Needs root.
# Installs netsniff-ng, tcpdump, tshark (captype, capinfos), jq, curl, bc and linux-perf when
# missing.
set -euo pipefail

SIZES=${SIZES:-60 1414}
SESSIONS=${SESSIONS:-8}
SECONDS_RUN=${SECONDS_RUN:-10}
RUNS=${RUNS:-3}
RATE=${RATE:-max}
# SEARCH=1: instead of runs at one RATE, the highest rate with no loss in any of RUNS runs.
SEARCH=${SEARCH:-0}
SEARCH_LO=${SEARCH_LO:-50000}
SEARCH_HI_60=${SEARCH_HI_60:-800000}
SEARCH_HI_LARGE=${SEARCH_HI_LARGE:-400000}
SEARCH_STEP=${SEARCH_STEP:-20000}
GENERATOR=${GENERATOR:-trafgen}
COUNT=${COUNT:-1000000}
case ${INPUT:-} in
xdp) CAPTURERS=${CAPTURERS:-tapwire-xdp} ;;
ring) CAPTURERS=${CAPTURERS:-tapwire-ring} ;;
raw) CAPTURERS=${CAPTURERS:-tapwire-raw} ;;
esac
CAPTURERS=${CAPTURERS:-tapwire tapwire-ring tapwire-xdp tcpdump tcpdump-B}
RSS_SESSIONS=${RSS_SESSIONS-1024 4096}
RSS_SECONDS=${RSS_SECONDS:-60}
PROFILE=${PROFILE:-1}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
GEN_CPU=0 RX_CPU=1
# Extra flags for tapwire collect (the memory runs lift the session and source caps;
# TAPWIRE_EXTRA_ARGS adds some to every tapwire run, e.g. --no-index for bench-index-cost.sh).
read -r -a TAPWIRE_ARGS <<<"${TAPWIRE_EXTRA_ARGS:-}"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

[[ $(id -u) == 0 ]] || { echo "bench-collect: run as root (network namespaces)" >&2; exit 2; }
source "$ROOT/scripts/bench-lib.sh"
profiler=()
[[ $PROFILE == 1 ]] && profiler=(perf:linux-perf)
install_missing trafgen:netsniff-ng tcpdump:tcpdump capinfos:tshark jq:jq curl:curl bc:bc \
    ethtool:ethtool tcpreplay:tcpreplay "${profiler[@]}"
case $GENERATOR in
trafgen | tcpreplay) ;;
*) echo "bench-collect: GENERATOR is trafgen or tcpreplay, not $GENERATOR" >&2; exit 2 ;;
esac
if [[ -n ${TAPWIRE:-} ]]; then echo "bench-collect: measuring $TAPWIRE" >&2; else build_tapwire; fi

ID=twbc-$$
GEN=$ID-gen COL=$ID-col
WORK=$(mktemp -d "$BENCH_DIR/tapwire-bench-collect.XXXXXX")
cleanup() {
    for ns in "$GEN" "$COL"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    [[ -n ${PERF_PID:-} ]] && kill -KILL "$PERF_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- lab ---------------------------------------------------------------------------------------
gen_col_lab

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# softnet CPU: "processed dropped squeezed" of CPU's backlog (/proc/net/softnet_stat, hex):
# dropped is a frame refused because netdev_max_backlog frames were already queued.
softnet() {
    local f
    read -r -a f < <(sed -n "$(($1 + 1))p" /proc/net/softnet_stat)
    echo "$((16#${f[0]})) $((16#${f[1]})) $((16#${f[2]}))"
}
# where_lost: one line of the counters that say where frames went during the last run: the
# softnet backlog of both CPUs, col0's drops, the sender's ENOBUFS retries and failures, and
# the collector namespace's IP/ICMP counters that moved (nstat since the run's start).
where_lost() {
    local s0 s1
    read -r -a s0 <<<"$SOFTNET0_0"
    read -r -a s1 <<<"$(softnet "$GEN_CPU")"
    local t0 t1
    read -r -a t0 <<<"$SOFTNET1_0"
    read -r -a t1 <<<"$(softnet "$RX_CPU")"
    local replay=""
    [[ $GENERATOR == tcpreplay ]] && replay=$(awk '/Retried packets \(ENOBUFS\)|Failed packets:/ {printf "%s%s ", $1 == "Failed" ? "failed=" : "enobufs_retried=", $NF}' "$WORK/replay.out")
    echo "  where: CPU$GEN_CPU backlog dropped=$((s1[1] - s0[1])) squeezed=$((s1[2] - s0[2]));" \
        "CPU$RX_CPU backlog dropped=$((t1[1] - t0[1])) squeezed=$((t1[2] - t0[2]));" \
        "col0 rx_dropped=$(($(link_stat "$COL" col0 rx_dropped) - COL_RXDROP0)); $replay" \
        "nstat: $(ip netns exec "$COL" nstat 2>/dev/null | awk 'NR > 1 && $1 ~ /^(Ip|Icmp|Udp|TcpExt)/ && $1 !~ /Octets|Bcast|Mcast|ECT/ {printf "%s=%s ", $1, $2}')" >&2
}
# sched_counts PID: "context_switches minor_faults" of the whole process so far (switches
# summed over its threads, voluntary and not; faults as the kernel sums them for the process).
sched_counts() {
    local cs
    cs=$(cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^(non)?voluntary_ctxt_switches:/ {n += $2} END {print n + 0}')
    echo "$cs $(awk '{print $10}' "/proc/$1/stat")"
}
link_stat() { ip netns exec "$1" cat "/sys/class/net/$2/statistics/$3"; }

# replay_file LEN: COUNT ERSPAN II packets with LEN-byte inner frames, the sessions of
# trafgen_config LEN SESSIONS 1 taking turns (session N from 10.98.1.N, id N, its own
# contiguous GRE sequence from 0), as a pcap file; prints its path.
replay_file() {
    local len=$1 f=$WORK/r-$1.pcap
    [[ -f $f ]] || /usr/bin/python3 - "$f" "$len" "$SESSIONS" "$COUNT" "$GEN_MAC" "$COL_MAC" <<'EOF'
import struct, sys
path, inner, sessions, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
mac = lambda m: bytes.fromhex(m.replace(":", ""))
eth = mac(sys.argv[6]) + mac(sys.argv[5]) + b"\x08\x00"
def csum(h):
    s = sum(struct.unpack("!10H", h))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
heads, tails = [], []
for src in range(1, sessions + 1):
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 16 + inner, 0, 0x4000, 64, 47, 0,
                     bytes([10, 98, 1, src]), bytes([10, 98, 0, 2]))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    heads.append(eth + ip + struct.pack("!HH", 0x1000, 0x88BE))
    erspan = struct.pack("!II", (1 << 28) | src, 0)
    iip = struct.pack("!HHHHBBH4s4s", 0x4500, inner - 14, 0, 0x4000, 64, 17, 0,
                      bytes([10, src, 0, 0]), bytes([10, 2, 0, 1]))
    frame = (bytes.fromhex("020000000001" "020000000002" "0800") + iip
             + struct.pack("!HHHH", 1000 + src, 9, inner - 34, 0) + b"A" * (inner - 42))
    tails.append(erspan + frame)
size = len(heads[0]) + 4 + len(tails[0])
rec = struct.pack("<IIII", 0, 0, size, size)
with open(path, "wb") as out:
    out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    buf = []
    for i in range(count):
        s = i % sessions
        buf.append(rec + heads[s] + struct.pack("!I", i // sessions) + tails[s])
        if len(buf) == 65536:
            out.write(b"".join(buf))
            buf = []
    out.write(b"".join(buf))
EOF
    echo "$f"
}

# replay_run FILE: tcpreplay of FILE from GEN on GEN_CPU, --topspeed (RATE=max) or --pps=RATE;
# prints "packets seconds" (its own count of frames sent, and time).
replay_run() {
    local speed=(--topspeed)
    [[ $RATE != max ]] && speed=(--pps="$RATE")
    ip netns exec "$GEN" taskset -c "$GEN_CPU" tcpreplay "${speed[@]}" -i gen0 "$1" \
        >"$WORK/replay.out" 2>&1 || true
    awk '/Successful packets:/ {p = $3}
        /^Actual:/ {for (i = 1; i <= NF; i++) if ($i == "seconds") s = $(i - 1)}
        END {print p + 0, s + 0}' "$WORK/replay.out"
}

# perf_start: `perf record` of both CPUs (on GEN_CPU itself) until perf_stop, so that perf's own
# start and exit (about 0.2 s of CPU) fall outside the measured window; sets PERF_PID.
perf_start() {
    rm -f "$WORK/perf.data"
    taskset -c "$GEN_CPU" perf record -q -e cpu-clock -F 999 -C "$GEN_CPU,$RX_CPU" -g \
        -o "$WORK/perf.data" -- sleep 3600 >/dev/null 2>&1 &
    PERF_PID=$!
    for _ in $(seq 50); do [[ -s $WORK/perf.data ]] && break; sleep 0.1; done
    sleep 0.3
}

perf_stop() {
    kill -INT "$PERF_PID" 2>/dev/null || true
    wait "$PERF_PID" 2>/dev/null || true
    PERF_PID=
}

# profile_split PERF_DATA COMM_REGEX: "n s soft_rx soft_gen other_rx": samples of the matching
# threads, those of them in softirq context, softirq samples on RX_CPU and on GEN_CPU, and
# samples on RX_CPU of other tasks (not idle, not perf) outside softirq.
profile_split() {
    perf script -i "$1" -F comm,cpu,ip,sym 2>/dev/null | awk -v re="$2" -v rx="$RX_CPU" -v gen="$GEN_CPU" '
        function flush() {
            if (comm == "") return
            if (comm ~ re) { n++; if (soft) s++ }
            if (soft && cpu == rx) srx++
            if (soft && cpu == gen) sgen++
            if (!soft && cpu == rx && comm !~ re && comm != "swapper" && comm != "perf") other++
            comm = ""; soft = 0
        }
        /^[^ \t]/ { flush(); comm = $1; cpu = $2; gsub(/[^0-9]/, "", cpu); cpu += 0; next }
        /handle_softirqs|__do_softirq|net_rx_action/ { soft = 1 }
        END { flush(); print n + 0, s + 0, srx + 0, sgen + 0, other + 0 }'
}

# cpu_busy CPU: ticks (USER_HZ) CPU has not been idle: user nice system irq softirq steal.
cpu_busy() { awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }

start_capturer() {
    local who=$1 out=$2 bin=$TAPWIRE
    # NAME@b: the same capturer, run from the binary TAPWIRE_B (a before/after comparison).
    [[ $who == *@b ]] && { who=${who%@b}; bin=$TAPWIRE_B; }
    rm -rf "$out"
    mkdir -p "$out"
    SINK_PID=
    [[ $who != tapwire && $who != tapwire-raw && $who != tapwire-xdp ]] && start_sink "$COL"
    case $who in
    tapwire | tapwire-raw | tapwire-ring | tapwire-xdp)
        local inputs=(--gre-v4 0.0.0.0)
        [[ $who == tapwire-raw ]] && inputs=(--gre-v4 0.0.0.0 --input sockets)
        [[ $who == tapwire-ring ]] && inputs=(--gre-v4 off --interface col0)
        [[ $who == tapwire-xdp ]] && inputs=(--gre-v4 0.0.0.0 --xdp col0)
        ip netns exec "$COL" taskset -c "$RX_CPU" "$bin" collect --no-tui --out "$out" \
            "${inputs[@]}" --gre-v6 off --vxlan off --geneve off --tzsp off \
            --api 127.0.0.1:9750 "${TAPWIRE_ARGS[@]}" 2>"$WORK/capturer.err" &
        CAP_PID=$!
        for _ in $(seq 100); do api >/dev/null 2>&1 && break; sleep 0.1; done
        ;;
    tcpdump | tcpdump-B)
        local b=()
        [[ $who == tcpdump-B ]] && b=(-B 65536)
        ip netns exec "$COL" taskset -c "$RX_CPU" tcpdump -i col0 -n "${b[@]}" -w "$out/tcpdump.pcap" \
            2>"$WORK/capturer.err" &
        CAP_PID=$!
        for _ in $(seq 100); do grep -q "listening on" "$WORK/capturer.err" && break; sleep 0.05; done
        ;;
    esac
    sleep 0.5
}

stop_capturer() {
    local who=$1
    if [[ $who == tapwire* ]]; then kill -TERM "$CAP_PID"; else kill -INT "$CAP_PID"; fi
    wait "$CAP_PID" || true
    [[ -n $SINK_PID ]] && { kill -TERM "$SINK_PID" 2>/dev/null; wait "$SINK_PID" 2>/dev/null || true; }
    SINK_PID=
}

# tapwire_settled: waits until the API's totals stop moving (the snapshot is published each
# second), prints the snapshot.
tapwire_settled() {
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

# files_packets DIR: packets in every capture file of DIR (captype must know each file).
files_packets() {
    local dir=$1 f
    shopt -s nullglob
    local files=("$dir"/*.pcapng "$dir"/*.pcap)
    shopt -u nullglob
    ((${#files[@]})) || { echo 0; return; }
    if captype "${files[@]}" | grep -v -E ': (pcapng|pcap)$' | grep -q .; then
        echo "bench-collect: captype does not recognise a file in $dir" >&2
        echo -1
        return
    fi
    capinfos -c -M -T -r "${files[@]}" | awk -F'\t' '{n += $2} END {print n + 0}'
}

RESULTS=$WORK/results.tsv
: >"$RESULTS"
# measure WHO LEN: one run; appends a result line, prints a summary line on stderr.
measure() {
    local who=$1 len=$2 cfg=$WORK/t-$2.cfg out=$WORK/out
    local load
    load=$(cut -d' ' -f1 /proc/loadavg)
    start_capturer "$who" "$out"
    local rx0 bp0 cpu0 threads0 busy0
    rx0=$(link_stat "$COL" col0 rx_packets)
    bp0=$(link_stat "$GEN" gen0 tx_dropped)
    cpu0=$(cpu_ticks "$CAP_PID")
    threads0=$(thread_ticks "$CAP_PID")
    local cs0 mf0
    read -r cs0 mf0 <<<"$(sched_counts "$CAP_PID")"
    PERF_PID=
    [[ $PROFILE == 1 ]] && perf_start
    busy0=$(cpu_busy "$RX_CPU")
    SOFTNET0_0=$(softnet "$GEN_CPU") SOFTNET1_0=$(softnet "$RX_CPU")
    COL_RXDROP0=$(link_stat "$COL" col0 rx_dropped)
    ip netns exec "$COL" nstat -n >/dev/null 2>&1 || true
    local sent secs
    if [[ $GENERATOR == tcpreplay ]]; then
        read -r sent secs <<<"$(replay_run "$(replay_file "$len")")"
    else
        read -r sent secs <<<"$(trafgen_run "$cfg" "$RATE" "$SECONDS_RUN")"
    fi
    # CPU 1's busy time over the traffic and a short drain only: the settling below is idle
    # time that other work on a shared machine would fill.
    sleep 0.2
    local busy1
    busy1=$(cpu_busy "$RX_CPU")
    [[ -n $PERF_PID ]] && perf_stop
    where_lost
    local got kdrops written lost snap=""
    if [[ $who == tapwire* ]]; then
        snap=$(tapwire_settled)
        written=$(jq '.totals.written' <<<"$snap")
        kdrops=$(jq '[.inputs[].kernel_drops] | add' <<<"$snap")
        lost=$(jq '[.sessions[].sources[].lost] | add // 0' <<<"$snap")
        local n_sessions
        n_sessions=$(jq '.sessions | length' <<<"$snap")
        [[ $n_sessions == "$SESSIONS" ]] ||
            echo "bench-collect: $who made $n_sessions sessions, want $SESSIONS" >&2
    else
        sleep 1
    fi
    local cpu1 threads1 rx1 bp1
    cpu1=$(cpu_ticks "$CAP_PID")
    threads1=$(thread_ticks "$CAP_PID")
    local cs1 mf1
    read -r cs1 mf1 <<<"$(sched_counts "$CAP_PID")"
    rx1=$(link_stat "$COL" col0 rx_packets)
    bp1=$(link_stat "$GEN" gen0 tx_dropped)
    stop_capturer "$who"
    local in_files
    in_files=$(files_packets "$out")
    if [[ $who == tcpdump* ]]; then
        written=$(awk '/packets captured/ {print $1}' "$WORK/capturer.err")
        kdrops=$(awk '/dropped by kernel/ {print $1}' "$WORK/capturer.err")
        lost=-
    fi
    rm -rf "$out"
    local delivered=$((rx1 - rx0))
    # The veth counts every frame it delivered; trafgen counts frames sendto accepted. They
    # differ by the odd frame from col itself (none here) or a retry counted twice.
    ((delivered >= sent * 999 / 1000)) ||
        echo "bench-collect: col0 received $delivered of the $sent frames trafgen counted" >&2
    ((in_files == written)) ||
        echo "bench-collect: $who: the files hold $in_files packets, it reported $written" >&2
    local cpu_ns own_ns="-" softirq_ns="-" gen_softirq_ns="-" receive_ns="-" other_ns="-" n s srx sgen other
    cpu_ns=$(echo "($cpu1 - $cpu0) * 1000000000 / $CLK_TCK / ($written + 0.000001)" | bc -l)
    local busy_ns
    busy_ns=$(echo "($busy1 - $busy0) * 1000000000 / $CLK_TCK / $sent" | bc -l)
    if [[ $PROFILE == 1 && -f $WORK/perf.data ]]; then
        local re='^tcpdump$'
        [[ $who == tapwire* ]] && re='^tapwire'
        read -r n s srx sgen other <<<"$(profile_split "$WORK/perf.data" "$re")"
        ((n > 0)) && own_ns=$(echo "$cpu_ns * ($n - $s) / $n" | bc -l)
        # perf samples each CPU at 999 Hz for SECONDS_RUN: each sample stands for ~1 ms.
        local per='1000000000 / 999 / '"$sent"
        softirq_ns=$(echo "$srx * $per" | bc -l)
        gen_softirq_ns=$(echo "$sgen * $per" | bc -l)
        receive_ns=$(echo "($n - $s + $srx + $sgen) * $per" | bc -l)
        other_ns=$(echo "$other * $per" | bc -l)
        if [[ -n ${PERF_DIR:-} ]]; then
            mkdir -p "$PERF_DIR"
            mv "$WORK/perf.data" "$PERF_DIR/$who-$len-$(date +%H%M%S).data"
        else
            rm -f "$WORK/perf.data"
        fi
    fi
    local per_thread="-"
    if [[ $who == tapwire* ]]; then
        per_thread=$(join <(sort <<<"$threads0") <(sort <<<"$threads1") | awk -v w="$written" -v hz="$CLK_TCK" '
            { d = $3 - $2; if (d > 0) { printf "%s%s=%.0f", sep, $1, d * 1e9 / hz / w; sep = "," } }')
    fi
    local loss
    loss=$(echo "100 * ($sent - $written) / $sent" | bc -l)
    # Context switches and minor page faults of the capturer per 1000 packets written.
    local cs_k mf_k
    cs_k=$(echo "($cs1 - $cs0) * 1000 / ($written + 0.000001)" | bc -l)
    mf_k=$(echo "($mf1 - $mf0) * 1000 / ($written + 0.000001)" | bc -l)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$who" "$len" "$sent" "$secs" \
        "$written" "$kdrops" "$lost" "$loss" "$cpu_ns" "$own_ns" "$softirq_ns" "$((bp1 - bp0))" \
        "$load" "$per_thread" "$gen_softirq_ns" "$receive_ns" "$busy_ns" "$other_ns" "$cs_k" "$mf_k" "$RATE" >>"$RESULTS"
    fmt_ns() { [[ $1 == - ]] && echo - || printf "%.0f" "$1"; }
    printf '%-12s %5s B  sent %9s in %5.2f s (%7.0f pps)  written %9s  kernel drops %8s  lost %s  loss %6.2f %%  CPU %5.0f ns/pkt (own %s, CPU-1 softirq %s, CPU-0 softirq %s; receive %s)  CPU-1 busy %s (other %s)  switches %.1f and faults %.1f per 1000  backpressure %s  load %s  %s\n' \
        "$who" "$len" "$sent" "$secs" "$(echo "$sent / $secs" | bc -l)" "$written" "$kdrops" "$lost" \
        "$loss" "$cpu_ns" "$(fmt_ns "$own_ns")" "$(fmt_ns "$softirq_ns")" "$(fmt_ns "$gen_softirq_ns")" \
        "$(fmt_ns "$receive_ns")" "$(fmt_ns "$busy_ns")" "$(fmt_ns "$other_ns")" \
        "$cs_k" "$mf_k" "$((bp1 - bp0))" "$load" "$per_thread" >&2
}

# passes WHO LEN: RUNS runs at RATE, stopping at the first that lost a packet (fewer written
# than sent); true when none did.
passes() {
    local run
    for ((run = 1; run <= RUNS; run++)); do
        measure "$1" "$2"
        tail -1 "$RESULTS" | awk -F'\t' '{exit !($5 >= $3)}' || return 1
    done
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
SEARCH_ROWS=()
for len in $SIZES; do
    trafgen_config "$len" "$SESSIONS" 1 >"$WORK/t-$len.cfg"
    if [[ $SEARCH == 1 ]]; then
        # The highest rate at which no packet was lost in any of RUNS runs, by bisection
        # between SEARCH_LO (checked first) and SEARCH_HI, down to SEARCH_STEP pps.
        hi_default=$SEARCH_HI_60
        ((len > 500)) && hi_default=$SEARCH_HI_LARGE
        for who in $CAPTURERS; do
            lo=0 hi=${SEARCH_HI:-$hi_default}
            RATE=$SEARCH_LO
            if passes "$who" "$len"; then lo=$SEARCH_LO; else hi=$SEARCH_LO; fi
            while ((lo > 0 && hi - lo > SEARCH_STEP)); do
                RATE=$(((lo + hi) / 2 / 1000 * 1000))
                if passes "$who" "$len"; then lo=$RATE; else hi=$RATE; fi
            done
            echo "search $who ${len} B: no loss in $RUNS runs at $lo pps, loss at $hi pps" >&2
            SEARCH_ROWS+=("$len	$who	$lo	$hi")
        done
        RATE=max
        continue
    fi
    for ((run = 1; run <= RUNS; run++)); do
        for who in $CAPTURERS; do
            measure "$who" "$len"
        done
    done
done

# --- memory with many sessions -----------------------------------------------------------------
RSS_ROWS=()
for n in $RSS_SESSIONS; do
    # Every session auto-discovered: lift the defaults' caps to the point measured.
    TAPWIRE_ARGS=(--max-auto-sessions "$n" --max-sources "$n")
    ids=$((n < 1024 ? n : 1024))
    sources=$(((n + 1023) / 1024))
    trafgen_config 1414 "$sources" "$ids" >"$WORK/rss.cfg"
    out=$WORK/out
    start_capturer tapwire "$out"
    status() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$CAP_PID/status"; }
    rss_idle=$(status VmRSS)
    trafgen_run "$WORK/rss.cfg" max "$RSS_SECONDS" >"$WORK/rss.sent" &
    gen_pid=$!
    samples=()
    for ((t = 1; t <= RSS_SECONDS; t++)); do
        sleep 1
        samples+=("$(status VmRSS)")
    done
    wait "$gen_pid" || true
    read -r sent secs <"$WORK/rss.sent"
    snap=$(tapwire_settled)
    hwm=$(status VmHWM)
    stop_capturer tapwire
    files=$(find "$out" -name '*.pcapng' | wc -l)
    in_files=$(files_packets "$out")
    rm -rf "$out"
    written=$(jq '.totals.written' <<<"$snap")
    kdrops=$(jq '[.inputs[].kernel_drops] | add' <<<"$snap")
    lost=$(jq '[.sessions[].sources[].lost] | add // 0' <<<"$snap")
    n_sessions=$(jq '.sessions | length' <<<"$snap")
    mib() { echo "scale=1; $1 / 1024" | bc -l; }
    pick() { local i=$(($1 - 1)); ((i < ${#samples[@]})) || i=$((${#samples[@]} - 1)); echo "${samples[$i]}"; }
    echo "rss $n sessions: sent $sent in $secs s, written $written (files $in_files in $files files), kernel drops $kdrops, lost $lost; VmRSS each second (KiB): ${samples[*]}" >&2
    RSS_ROWS+=("$(printf '| %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s |' "$n_sessions" "$files" \
        "$(echo "$sent / $secs" | bc -l)" "$(mib "$rss_idle")" "$(mib "$(pick 10)")" \
        "$(mib "$(pick $((RSS_SECONDS / 2)))")" "$(mib "$(pick "$RSS_SECONDS")")" "$(mib "$hwm")" \
        "$written" "$kdrops" "$lost")")
done

# --- report ------------------------------------------------------------------------------------
per_run="${SECONDS_RUN} s"
[[ $GENERATOR == tcpreplay ]] && per_run="$COUNT packets"
echo
echo "Load average at the start $LOAD_START, at the end $(cut -d' ' -f1-3 /proc/loadavg); $RUNS run(s) of"
echo "$per_run per point, $GENERATOR, rate: $RATE. Medians, with the range over the runs in brackets."
if [[ $SEARCH == 1 ]]; then
    echo
    echo "Highest rate with no loss in any of $RUNS runs (bisection from $SEARCH_LO pps, step $SEARCH_STEP);"
    echo "offered: the generator's achieved rate in those runs (median [range])."
    echo
    echo "| inner frame | capturer | no-loss rate (pps) | offered at it (pps) | CPU-1 busy ns/packet at it | lost at (pps) |"
    echo "| ---: | --- | ---: | ---: | ---: | ---: |"
    for row in "${SEARCH_ROWS[@]}"; do
        IFS=$'\t' read -r len who lo hi <<<"$row"
        awk -F'\t' -v who="$who" -v len="$len" -v lo="$lo" -v hi="$hi" '
            function med(a, n,   i, j, t) {
                for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
                return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
            }
            $1 == who && $2 == len && $21 == lo { n++; pps[n] = $3 / $4; busy[n] = $17 }
            END {
                if (n == 0) { printf "| %s | %s | %s | - | - | %s |\n", len, who, lo, hi; exit }
                b = med(busy, n); p = med(pps, n)
                lo_p = hi_p = pps[1]
                for (i = 2; i <= n; i++) { if (pps[i] < lo_p) lo_p = pps[i]; if (pps[i] > hi_p) hi_p = pps[i] }
                printf "| %s | %s | %s | %.0f [%.0f-%.0f] | %.0f | %s |\n", len, who, lo, p, lo_p, hi_p, b, hi
            }' "$RESULTS"
    done
    SIZES=""
else
    echo
    echo "| inner frame | capturer | sent (pps) | loss % | kernel drops | seq. lost, all runs | CPU ns/packet | own ns/packet | CPU-1 softirq ns/packet | CPU-0 softirq ns/packet | receive ns/packet | CPU-1 busy ns/packet | CPU-1 other ns/packet | switches per 1000 | minor faults per 1000 | backpressure | load |"
    echo "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
fi
for len in $SIZES; do
    for who in $CAPTURERS; do
        awk -F'\t' -v who="$who" -v len="$len" '
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
            $1 == who && $2 == len {
                n++; pps[n] = $3 / $4; loss[n] = $8; kd[n] = $6; cpu[n] = $9; bp[n] = $12; ld[n] = $13
                busy[n] = $17; cs[n] = $19; mf[n] = $20
                if ($7 != "-") { haslost = 1; lostsum += $7 }
                if ($10 != "-") { m++; own[m] = $10; sirq[m] = $11; gsirq[m] = $15; recv[m] = $16; oth[m] = $18 }
            }
            END {
                if (n == 0) exit
                printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", len, who,
                    cell(pps, n, "%.0f"), cell(loss, n, "%.2f"), cell(kd, n, "%.0f"), haslost ? lostsum : "-",
                    cell(cpu, n, "%.0f"), cell(own, m, "%.0f"), cell(sirq, m, "%.0f"), cell(gsirq, m, "%.0f"),
                    cell(recv, m, "%.0f"), cell(busy, n, "%.0f"), cell(oth, m, "%.0f"), cell(cs, n, "%.1f"),
                    cell(mf, n, "%.1f"), cell(bp, n, "%.0f"),
                    cell(ld, n, "%.1f")
            }' "$RESULTS"
    done
done
echo
echo "Per thread, tapwire (CPU ns per packet written, utime + stime; each run):"
awk -F'\t' '$1 ~ /^tapwire/ {printf "  %s %s B: %s\n", $1, $2, $14}' "$RESULTS"
if ((${#RSS_ROWS[@]})); then
    echo
    echo "Memory: 1414-byte inner frames at trafgen's maximum rate for $RSS_SECONDS s; RSS in MiB."
    echo
    echo "| sessions | files | sent (pps) | RSS idle | RSS at 10 s | RSS at $((RSS_SECONDS / 2)) s | RSS at $RSS_SECONDS s | VmHWM | written | kernel drops | seq. lost |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    printf '%s\n' "${RSS_ROWS[@]}"
fi
