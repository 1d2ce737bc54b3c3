# Shared by the live benchmarks (bench-collect.sh, bench-tap.sh, bench-probe.sh); sourced, not
# run. Callers set GEN_CPU, RX_CPU, ROOT and WORK, and GEN/COL before `gen_col_lab`.

# install_missing CMD:PACKAGE...: installs the packages whose command is missing.
install_missing() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
    done
    if ((${#missing[@]})); then
        echo "installing: ${missing[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# build_tapwire: the release collector; sets TAPWIRE.
build_tapwire() {
    (cd "$ROOT" && cargo build --release --quiet -p tapwire --bin tapwire)
    local target
    target=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
    TAPWIRE=$target/release/tapwire
}

# netns_add NS...: namespaces with loopback up, no IPv6, no reverse-path filter.
netns_add() {
    local ns
    for ns in "$@"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 \
            net.ipv6.conf.default.disable_ipv6=1 net.ipv4.conf.all.rp_filter=0 \
            net.ipv4.conf.default.rp_filter=0
    done
}

# gen_col_lab: `GEN` (gen0, 10.98.0.1) --veth--> `COL` (col0, 10.98.0.2), offloads off, the
# receive side's softirq work on RX_CPU (RPS); sets GEN_MAC and COL_MAC.
gen_col_lab() {
    netns_add "$GEN" "$COL"
    ip link add name gen0 netns "$GEN" type veth peer name col0 netns "$COL"
    ip netns exec "$GEN" ethtool -K gen0 tx off tso off gso off >/dev/null 2>&1 || true
    ip netns exec "$COL" ethtool -K col0 rx off gro off >/dev/null 2>&1 || true
    ip -n "$GEN" link set gen0 up
    ip -n "$COL" link set col0 up
    ip -n "$GEN" addr add 10.98.0.1/16 dev gen0
    ip -n "$COL" addr add 10.98.0.2/16 dev col0
    ip netns exec "$COL" sh -c "echo $((1 << RX_CPU)) > /sys/class/net/col0/queues/rx-0/rps_cpus"
    GEN_MAC=$(ip netns exec "$GEN" cat /sys/class/net/gen0/address)
    COL_MAC=$(ip netns exec "$COL" cat /sys/class/net/col0/address)
}

# start_sink NS: a GRE receiver in NS that discards in the kernel (a raw IPPROTO_GRE socket
# with `ret #0`), so the namespace neither answers with ICMP nor queues anything; waits until
# it is ready and sets SINK_PID.
start_sink() {
    [[ -f $WORK/sink.py ]] || cat >"$WORK/sink.py" <<'EOF'
import ctypes, signal, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
ins = (ctypes.c_ubyte * 8)(*struct.pack("HBBI", 6, 0, 0, 0))
s.setsockopt(socket.SOL_SOCKET, 26, struct.pack("HL", 1, ctypes.addressof(ins)))
print("ready", flush=True)
signal.pause()
EOF
    rm -f "$WORK/sink.out"
    ip netns exec "$1" /usr/bin/python3 "$WORK/sink.py" >"$WORK/sink.out" &
    SINK_PID=$!
    for _ in $(seq 100); do grep -q ready "$WORK/sink.out" 2>/dev/null && break; sleep 0.05; done
}

# trafgen_config INNER_BYTES SOURCES IDS: SOURCES x IDS ERSPAN II sessions from GEN to COL, one
# packet each per round (IDS 1: session id = source number). The GRE sequence number is a
# 4-byte `dinc()` field: trafgen has no GRE header, so a tcp() header stands in for the 16
# bytes of GRE + ERSPAN II (sp/dp = GRE flags with S and protocol 0x88BE, seq = the GRE
# sequence, ack seq = ERSPAN word 1: version 1 and the session id, doff/flags/window = word 2:
# index 0) and its checksum and urgent pointer, given, are the first 4 bytes of the inner
# frame. The inner frame: Ethernet, IPv4, UDP, 'A's.
trafgen_config() {
    local len=$1 sources=$2 ids=$3 src id
    for ((src = 1; src <= sources; src++)); do
        for ((id = 0; id < ids; id++)); do
            local sid=$(( ids == 1 ? src : id ))
            printf '{ eth(da=%s, sa=%s), ipv4(saddr=10.98.1.%d, daddr=10.98.0.2, proto=47, ttl=64, df),\n' \
                "$COL_MAC" "$GEN_MAC" "$src"
            printf '  tcp(sp=0x1000, dp=0x88be, seq=dinc(), aseq=%d, doff=0, win=0, csum=0x0200, urgptr=0),\n' \
                $(((1 << 28) | sid))
            printf '  c16(0x0001), c32(0x02000000), c16(0x0002), c16(0x0800),\n'
            printf '  c16(0x4500), c16(%d), c32(0x00004000), c32(0x40110000), c32(%d), c32(0x0a020001),\n' \
                $((len - 14)) $(((10 << 24) | (src << 16) | id))
            printf '  c16(%d), c16(9), c16(%d), c16(0), fill(0x41, %d) }\n' \
                $((1000 + sid)) $((len - 34)) $((len - 42))
        done
    done
}

# trafgen_run CONFIG RATE SECONDS: trafgen in GEN on GEN_CPU (RATE: packets per second, or max
# for its slow path as fast as it goes); prints "packets seconds" (its own count and time).
trafgen_run() {
    local cfg=$1 rate=$2 secs=$3 args=(-o gen0 -i "$1" -P 1)
    if [[ $rate == max ]]; then args+=(-t 0); else args+=(-b "${rate}pps"); fi
    ip netns exec "$GEN" timeout -s INT "$secs" taskset -c "$GEN_CPU" trafgen "${args[@]}" \
        >"$WORK/trafgen.out" 2>&1 || true
    tr '\r' '\n' <"$WORK/trafgen.out" |
        awk '/packets outgoing/ {p = $1} / sec, .* usec on CPU/ {s = $1 + $3 / 1e6} END {print p + 0, s + 0}'
}

# thread_ticks PID: "comm ticks" (utime + stime) per thread.
thread_ticks() {
    local t
    for t in /proc/"$1"/task/*; do awk '{print substr($2, 2, length($2) - 2), $14 + $15}' "$t/stat"; done
}

# api: the collector's sessions as JSON, from inside COL: every page of them in one snapshot.
api() {
    local url=http://127.0.0.1:9750/api/v1/sessions?limit=1000\&sources=1000 page all after
    page=$(ip netns exec "$COL" curl -sf --max-time 2 "$url") || return 1
    all=$page
    while after=$(jq -r '.page.next // empty' <<<"$page") && [[ -n $after ]]; do
        page=$(ip netns exec "$COL" curl -sf --max-time 2 "$url&after=$after") || return 1
        all=$(jq -s '.[0].sessions += .[1].sessions | .[0]' <(echo "$all") <(echo "$page"))
    done
    echo "$all"
}
