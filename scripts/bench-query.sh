#!/usr/bin/env bash
# Retrieval benchmark: `tapwire query --dir` against the anchor an analyst would otherwise use,
# `tcpdump -r FILE -w PART FILTER` over every capture file and then `mergecap`, on the same
# rotated captures of one session.
#
#   scripts/bench-query.sh                               # 2 GiB in 100 MiB files (issue 17)
#   TOTAL_MIB=200 FILE_MIB=20 RUNS=5 scripts/bench-query.sh    # a quick point
#
# Captures: written here by a small generator (python, no scapy) as one session's files
# `bench_<start>Z.pcapng` (pcapng, nanosecond timestamps, one interface), FILE_MIB each,
# TOTAL_MIB in all; inner frames IPv4 UDP/TCP between HOSTS (10,000) client addresses
# (10.0.x.y) and 50 servers (172.16.0.z, ports 22 53 80 443 8080), frame sizes 64 to 1514,
# timestamps spread evenly over SPAN_S seconds (1800). The generator writes no index, as for a
# capture older than indexes: the first query scans every file and writes its index after the
# fact (timed once, "index build"); the session's newest file counts as still being written and
# is scanned by every query.
#
# Cases (RUNS runs each, default 5, after one warm-up run: the page cache is warm; wall-clock
# seconds, median and range):
#   host-all   host H, the whole range            anchor: tcpdump + mergecap over every file
#   host-5m    host H, 5 minutes in the middle    anchor: over the files those 5 minutes touch
#   port-all   host H and port P, the whole range anchor: over every file
#   none       no filter, the whole range         reference: cat of every file to /dev/null
# Output goes to files in WORK (on the same disk as the captures). Also reported: the packets each side
# returned (they must agree), the index's size against the captures', and `uptime` beside each
# case (the machine may be shared: say so with the figures).
#
# Environment: TOTAL_MIB (2048), FILE_MIB (100), HOSTS (10000), SPAN_S (1800), RUNS (5),
# BENCH_DIR (/var/tmp). Needs tcpdump, mergecap and capinfos (tshark's tools), python3.
set -euo pipefail

TOTAL_MIB=${TOTAL_MIB:-2048}
FILE_MIB=${FILE_MIB:-100}
HOSTS=${HOSTS:-10000}
SPAN_S=${SPAN_S:-1800}
RUNS=${RUNS:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/tapwire-bench-query.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
CAP=$WORK/captures
mkdir -p "$CAP"

for tool in tcpdump mergecap capinfos python3; do
    command -v "$tool" >/dev/null || { echo "bench-query: $tool is needed" >&2; exit 1; }
done
(cd "$ROOT" && cargo build --release --quiet -p tapwire --bin tapwire)
TAPWIRE=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/tapwire

# The generator prints one line per file: path, first and last timestamp (ns).
cat >"$WORK/gen.py" <<'EOF'
import os, random, struct, sys, time

total, per_file, hosts, span_s, out = (int(sys.argv[1]) << 20, int(sys.argv[2]) << 20,
                                       int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
T0 = 1_796_000_000_000_000_000  # 2026-11-30T00:53:20Z
SIZES = [64, 64, 128, 256, 576, 1024, 1400, 1514]
PORTS = [22, 53, 80, 443, 8080]
avg = 32 + sum(SIZES) / len(SIZES)
step = span_s * 1_000_000_000 / (total / avg)
rnd = random.Random(1)
payload = bytes(range(256)) * 6

def shb_idb():
    shb = struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28)
    opt = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)  # if_tsresol 9
    ln = 20 + len(opt)
    return shb + struct.pack("<IIHHI", 1, ln, 1, 0, 0) + opt + struct.pack("<I", ln)

def frame(n):
    size = SIZES[n % len(SIZES)]
    h = rnd.randrange(hosts)
    client = bytes([10, 0, h >> 8, h & 0xFF])
    server = bytes([172, 16, 0, 1 + rnd.randrange(50)])
    port = PORTS[rnd.randrange(len(PORTS))]
    sport = 1024 + rnd.randrange(60000)
    up = rnd.random() < 0.5
    src, dst = (client, server) if up else (server, client)
    sp, dp = (sport, port) if up else (port, sport)
    tcp = port != 53
    l4 = (struct.pack(">HHIIBBHHH", sp, dp, n, 0, 0x50, 0x18, 65535, 0, 0) if tcp
          else struct.pack(">HHHH", sp, dp, size - 34, 0))
    ip_len = size - 14
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, ip_len, n & 0xFFFF, 0, 64, 6 if tcp else 17, 0,
                     src, dst)
    body = ip + l4
    pay = payload[: ip_len - len(body)]
    return b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00" + body + pay

n, written = 0, 0
t = T0
while written < total:
    first = t
    stamp = t // 1_000_000_000
    name = os.path.join(out, "bench_%sZ.pcapng" % time.strftime("%Y%m%dT%H%M%S",
                                                                 time.gmtime(stamp)))
    parts, size = [shb_idb()], 0
    while size < per_file and written + size < total:
        f = frame(n)
        pad = (-len(f)) % 4
        ts = t
        blk = struct.pack("<IIIIIII", 6, 32 + len(f) + pad, 0, ts >> 32, ts & 0xFFFFFFFF,
                          len(f), len(f)) + f + b"\0" * pad + struct.pack("<I", 32 + len(f) + pad)
        parts.append(blk)
        size += len(blk)
        last = ts
        n += 1
        t = T0 + int(n * step)
    with open(name, "wb") as fh:
        fh.write(b"".join(parts))
    written += size
    print(name, first, last)
EOF

echo "generating $TOTAL_MIB MiB in $FILE_MIB MiB files ($HOSTS hosts, $SPAN_S s)..." >&2
python3 "$WORK/gen.py" "$TOTAL_MIB" "$FILE_MIB" "$HOSTS" "$SPAN_S" "$CAP" >"$WORK/files.txt"
FIRST_NS=$(head -1 "$WORK/files.txt" | cut -d' ' -f2)
LAST_NS=$(tail -1 "$WORK/files.txt" | cut -d' ' -f3)
MID_NS=$(((FIRST_NS + LAST_NS) / 2))
FIVE_FROM=$((MID_NS - 150000000000))
FIVE_TO=$((MID_NS + 150000000000))
secs() { printf '%d.%09d' $(($1 / 1000000000)) $(($1 % 1000000000)); }
HOST=10.0.4.210
PORT=443

# The files whose packets touch [from, to].
files_in() {
    awk -v f="$1" -v t="$2" '$3 >= f && $2 <= t { print $1 }' "$WORK/files.txt"
}

# anchor OUT FROM TO FILTER: tcpdump over each file the range touches, then mergecap.
anchor() {
    local out=$1 from=$2 to=$3 filter=$4 i=0 parts=()
    rm -rf "$WORK/parts" && mkdir "$WORK/parts"
    for f in $(files_in "$from" "$to"); do
        tcpdump -Z root --time-stamp-precision=nano -r "$f" -w "$WORK/parts/$i.pcap" "$filter" 2>/dev/null
        parts+=("$WORK/parts/$i.pcap")
        i=$((i + 1))
    done
    mergecap -F pcapng -w "$out" "${parts[@]}"
}

tq() { # tq OUT FROM TO [FILTER]
    "$TAPWIRE" query --quiet --dir "$CAP" --from "$(secs "$2")" --to "$(secs "$3")" -w "$1" ${4:+"$4"}
}

# time_runs NAME CMD...: RUNS timed runs after one warm-up; prints median, min, max seconds.
time_runs() {
    local name=$1 i s e
    shift
    "$@" >/dev/null
    : >"$WORK/$name.times"
    for ((i = 0; i < RUNS; i++)); do
        s=$(date +%s%N)
        "$@" >/dev/null
        e=$(date +%s%N)
        echo $(((e - s) / 1000)) >>"$WORK/$name.times"
    done
    python3 - "$WORK/$name.times" <<'EOF'
import statistics, sys
v = [int(x) / 1e6 for x in open(sys.argv[1])]
print("%.3f %.3f %.3f" % (statistics.median(v), min(v), max(v)))
EOF
}

count() { capinfos -M -c -T -r "$1" | awk -F'\t' '{ print $NF }'; }

CAP_BYTES=$(cat "$CAP"/*.pcapng | wc -c)
echo "captures: $(wc -l <"$WORK/files.txt") files, $CAP_BYTES bytes" >&2
s=$(date +%s%N)
tq /dev/null "$FIRST_NS" "$LAST_NS" "host $HOST"
e=$(date +%s%N)
IX_BYTES=$(cat "$CAP"/*.twidx 2>/dev/null | wc -c)
printf 'index build (first query, scans every file): %.3f s; index %d bytes = %.2f %% of %d capture bytes (the newest file has none: it counts as still written)\n' \
    "$(echo "($e - $s) / 1000000000" | bc -l)" "$IX_BYTES" "$(echo "100 * $IX_BYTES / $CAP_BYTES" | bc -l)" "$CAP_BYTES"

printf '%-9s %-28s %-28s %s\n' case "tapwire query (med min max)" "anchor (med min max)" "packets tapwire/anchor · uptime"
run_case() { # NAME FROM TO FILTER
    local name=$1 from=$2 to=$3 filter=$4 q a up
    up=$(uptime | sed 's/.*load average/load average/')
    q=$(time_runs "$name-q" tq "$WORK/$name-q.pcapng" "$from" "$to" "$filter")
    if [[ -n $filter ]]; then
        a=$(time_runs "$name-a" anchor "$WORK/$name-a.pcapng" "$from" "$to" "$filter")
        local ac
        # The anchor has no time filter: its packets outside the range are counted apart.
        ac=$(count "$WORK/$name-a.pcapng")
        printf '%-9s %-28s %-28s %s/%s (anchor before the time cut) · %s\n' "$name" "$q" "$a" \
            "$(count "$WORK/$name-q.pcapng")" "$ac" "$up"
    else
        a=$(time_runs "$name-cat" sh -c "cat '$CAP'/*.pcapng >/dev/null")
        printf '%-9s %-28s %-28s %s packets; reference: cat of the files · %s\n' "$name" "$q" "$a" \
            "$(count "$WORK/$name-q.pcapng")" "$up"
    fi
}
run_case host-all "$FIRST_NS" "$LAST_NS" "host $HOST"
run_case host-5m "$FIVE_FROM" "$FIVE_TO" "host $HOST"
run_case port-all "$FIRST_NS" "$LAST_NS" "host $HOST and port $PORT"
run_case none "$FIRST_NS" "$LAST_NS" ""
echo "seconds, wall clock, $RUNS runs after one warm-up; $(nproc) CPUs; $(uptime)"
