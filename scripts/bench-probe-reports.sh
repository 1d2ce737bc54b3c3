#!/usr/bin/env bash
# What probe reports cost the collector (issue 12, item 4): a `tapwire collect --db` is sent
# the stats reports of NAMES invented probe names, registered with the admin token, each
# report about REPORT_BYTES of JSON (the attack: 40 names, 2 MB each), and its resident memory
# (VmRSS, /proc/PID/status) is read before the reports and after them.
#
#   scripts/bench-probe-reports.sh                        # the attack, with target/debug/tapwire
#   TAPWIRE=/path/to/old/tapwire scripts/bench-probe-reports.sh    # the same against another build
#   KIND=largest scripts/bench-probe-reports.sh           # the largest reports a probe may send
#
# KIND=attack (default): each report has as many flows as it takes to reach REPORT_BYTES
# (about 330 bytes each). KIND=largest: each report has MAX_FLOWS flows (the probe's default
# limit, 64) whose error strings fill it up to just under the collector's body limit
# (LARGEST_BYTES, 128 KiB): the most the controller keeps per probe. The answers' HTTP
# statuses are counted and printed with the figures.
#
# Lab: one namespace of its own (removed on exit, also on failure); the collector listens on
# its loopback only. Needs root and python3. Environment: TAPWIRE, NAMES (40), REPORT_BYTES
# (2000000), KIND, MAX_FLOWS (64), LARGEST_BYTES (130000), SETTLE_S (2).
set -euo pipefail

cd "$(dirname "$0")/.."
TAPWIRE=${TAPWIRE:-target/debug/tapwire}
NAMES=${NAMES:-40}
REPORT_BYTES=${REPORT_BYTES:-2000000}
KIND=${KIND:-attack}
MAX_FLOWS=${MAX_FLOWS:-64}
LARGEST_BYTES=${LARGEST_BYTES:-130000}
SETTLE_S=${SETTLE_S:-2}
[ -x "$TAPWIRE" ] || { echo "no $TAPWIRE: cargo build --bins first" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "needs root (a network namespace)" >&2; exit 2; }

NS=twbench-reports-$$
DIR=$(mktemp -d /tmp/tapwire-bench-reports.XXXXXX)
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up

ip netns exec "$NS" "$TAPWIRE" collect --no-tui --db "$DIR/c.db" --out "$DIR/out" \
    --api 127.0.0.1:9750 --gre-v4 off --gre-v6 off --vxlan 127.0.0.1:4789 --geneve off \
    --tzsp off 2>"$DIR/collect.log" &
PID=$!
for _ in $(seq 100); do
    [ -s "$DIR/c.db.admin-token" ] && ip netns exec "$NS" python3 -c \
        'import urllib.request; urllib.request.urlopen("http://127.0.0.1:9750/api/v1/health", timeout=1)' \
        2>/dev/null && break
    sleep 0.1
done
# Python does the requests and reads the collector's VmRSS itself: after the registrations, and
# SETTLE_S after the reports.
ip netns exec "$NS" env TOKEN="$(cat "$DIR/c.db.admin-token")" PID="$PID" NAMES="$NAMES" \
    REPORT_BYTES="$REPORT_BYTES" KIND="$KIND" MAX_FLOWS="$MAX_FLOWS" \
    LARGEST_BYTES="$LARGEST_BYTES" SETTLE_S="$SETTLE_S" python3 - >"$DIR/result.txt" <<'EOF'
import json, os, time, urllib.request, urllib.error
env = os.environ
def post(path, body):
    req = urllib.request.Request("http://127.0.0.1:9750" + path, data=body, method="POST",
        headers={"Authorization": "Bearer " + env["TOKEN"], "Content-Type": "application/json"})
    try:
        return urllib.request.urlopen(req, timeout=30).status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, ConnectionError):
        return 0   # the server closed the connection before reading the whole body
def rss_kib():
    time.sleep(float(env["SETTLE_S"]))
    for line in open(f"/proc/{env['PID']}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def codes(results):
    seen = {}
    for c in results:
        seen[c] = seen.get(c, 0) + 1
    return ",".join(f"{k}x{v}" for k, v in sorted(seen.items()))
def flow(i, error):
    return {"name": f"vm{i}", "interface": f"tap{i}", "collector": "10.0.0.1",
            "encap": "erspan-ii", "session": 1, "state": "running", "error": error,
            "max_payload_bytes": 1450, "counters": {k: 123456789 for k in [
                "captured", "captured_bytes", "filtered_out", "sampled_out", "rate_limited",
                "kernel_drops", "sent", "sent_bytes", "send_errors", "truncated", "reopened"]}}
def report(flows):
    return json.dumps({"applied_version": 0, "stats": {"version": "1", "started": "",
        "uptime_s": 1.0, "flows": flows}, "refused": []}).encode()
names = [f"invented-{i}" for i in range(int(env["NAMES"]))]
registered = codes(post("/api/v1/probes/register", json.dumps(
    {"name": n, "version": "1", "interfaces": ["eth0"]}).encode()) for n in names)
if env["KIND"] == "largest":
    n = int(env["MAX_FLOWS"])
    pad = (int(env["LARGEST_BYTES"]) - len(report([flow(i, "") for i in range(n)]))) // n
    body = report([flow(i, "x" * pad) for i in range(n)])
else:
    one = len(json.dumps(flow(0, None))) + 2
    body = report([flow(i, None) for i in range(int(env["REPORT_BYTES"]) // one)])
before = rss_kib()
reported = codes(post(f"/api/v1/probes/{n}/stats", body) for n in names)
print(registered, len(body), reported, before, rss_kib())
EOF
read -r REGISTERED BODY REPORTED BEFORE AFTER <"$DIR/result.txt"
echo "tapwire $("$TAPWIRE" --version | cut -d' ' -f2) ($TAPWIRE), $KIND: $NAMES names registered (HTTP $REGISTERED), a report of $BODY bytes for each (HTTP $REPORTED)"
echo "VmRSS before the reports $((BEFORE / 1024)) MiB, after $((AFTER / 1024)) MiB: +$(((AFTER - BEFORE) / 1024)) MiB"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
