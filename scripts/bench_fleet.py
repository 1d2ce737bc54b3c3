#!/usr/bin/env python3
"""Simulated probes for scripts/bench-fleet.sh (run by it, with its environment).

Each probe is a thread that long-polls GET /api/v1/probes/NAME/flows?after=V&wait=30 on one
collector (probe i on collector i mod COLLECTORS) and notes when each new flow-set version
arrives. The main thread makes CHANGES changes on the first collector and measures, per
change, the delay until every probe holds it.
"""

import hashlib
import json
import os
import secrets
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request

C = int(os.environ["COLLECTORS"])
P = int(os.environ["PROBES"])
CHANGES = int(os.environ["CHANGES"])
IDLE_S = float(os.environ["IDLE_S"])
ADMIN = os.environ["ADMIN"]
PSQL = os.environ["PSQL"].split()
AS_PG = os.environ.get("AS_PG", "").split()
COLLECTOR_PIDS = [int(p) for p in os.environ["COLLECTOR_PIDS"].split()]
PG_PID = int(os.environ["PG_PID"])


def api(i, method, path, token, body=None, timeout=60):
    req = urllib.request.Request(
        f"http://127.0.0.1:{9801 + i}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def sql(text):
    out = subprocess.run(AS_PG + PSQL + ["-c", text], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def cpu_s(pids):
    """User + system CPU seconds of `pids` and, for PostgreSQL, of its children."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in pids:
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except OSError:
            pass
    return total / tick


def pg_pids():
    out = subprocess.run(["pgrep", "-P", str(PG_PID)], capture_output=True, text=True).stdout
    return [PG_PID] + [int(x) for x in out.split()]


def statements():
    """(calls, total ms) per statement since the last reset, excluding this script's own."""
    out = sql(
        "SELECT calls, round(total_exec_time::numeric, 1), regexp_replace(left(query, 90), '\\s+', ' ', 'g')"
        " FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat%' ORDER BY total_exec_time DESC"
    )
    rows = []
    for line in out.splitlines():
        calls, ms, q = line.split("|", 2)
        rows.append((int(calls), float(ms), q))
    return rows


def connections():
    return int(sql("SELECT count(*) FROM pg_stat_activity WHERE datname = 'fleet'"))


def main():
    # One session, auto; probe p0 registered and given one flow through the API.
    api(0, "POST", "/api/v1/sessions", ADMIN, {"name": "s"})
    t = api(0, "POST", "/api/v1/tokens", ADMIN, {"name": "p0", "role": "probe"})
    api(0, "POST", "/api/v1/probes/register", t["token"],
        {"name": "p0", "version": "bench", "interfaces": ["eth0"]})
    api(0, "POST", "/api/v1/flows", ADMIN,
        {"probe": "p0", "name": "f", "interface": "eth0", "session": "s"})
    # The other probes, their tokens and flows, copied in SQL (setup, not measured).
    tokens = {"p0": t["token"]}
    rows = []
    for i in range(1, P):
        s = "tw_" + secrets.token_hex(32)
        tokens[f"p{i}"] = s
        rows.append(f"('p{i}', '\\x{hashlib.sha256(s.encode()).hexdigest()}'::bytea)")
    sql(
        "BEGIN;"
        "CREATE TEMP TABLE t (name TEXT, hash BYTEA);"
        f"INSERT INTO t VALUES {','.join(rows)};"
        "INSERT INTO tokens (name, role, hash, created_at, created_by, probe)"
        "  SELECT name, 'probe', hash, now()::text, 'bench', name FROM t;"
        "INSERT INTO probes (name, version, interfaces, registered_at, last_seen, max_flows, max_pps)"
        "  SELECT t.name, p.version, p.interfaces, p.registered_at, p.last_seen, p.max_flows, p.max_pps"
        "  FROM t, probes p WHERE p.name = 'p0';"
        "INSERT INTO flows (probe, name, session, enabled, spec, created_at, updated_at)"
        "  SELECT t.name, f.name, f.session, f.enabled, f.spec, f.created_at, f.updated_at"
        "  FROM t, flows f WHERE f.probe = 'p0';"
        "COMMIT;"
    )
    # One change through the API renders every probe's flow set.
    t0 = time.time()
    api(0, "PATCH", "/api/v1/sessions/s", ADMIN, {"collector": "c1"})
    print(f"setup: {P} probes' flow sets rendered by one change in {time.time() - t0:.2f} s")

    arrivals = {f"p{i}": [] for i in range(P)}
    errors = []
    stop = threading.Event()

    def probe(i):
        name = f"p{i}"
        after = None
        while not stop.is_set():
            q = "wait=30" if after is None else f"after={after}&wait=30"
            try:
                fs = api(i % C, "GET", f"/api/v1/probes/{name}/flows?{q}", tokens[name], timeout=45)
            except (urllib.error.URLError, OSError) as e:
                errors.append(f"{name}: {e}")
                time.sleep(1)
                continue
            if after is not None and fs["version"] != after:
                arrivals[name].append(time.time())
            after = fs["version"]

    threads = [threading.Thread(target=probe, args=(i,), daemon=True) for i in range(P)]
    for th in threads:
        th.start()
    time.sleep(5)  # every probe in its long-poll
    conns = connections()

    sql("SELECT pg_stat_statements_reset()")
    cpu0 = (cpu_s(pg_pids()), cpu_s(COLLECTOR_PIDS))
    time.sleep(IDLE_S)
    cpu1 = (cpu_s(pg_pids()), cpu_s(COLLECTOR_PIDS))
    idle_calls = sum(c for c, _, _ in statements())
    print(f"idle (heartbeats of {C} collectors, {P} probes waiting) over {IDLE_S:.0f} s: "
          f"PostgreSQL {100 * (cpu1[0] - cpu0[0]) / IDLE_S:.1f}% of a CPU, "
          f"collectors {100 * (cpu1[1] - cpu0[1]) / IDLE_S:.1f}%, "
          f"{idle_calls / IDLE_S:.0f} queries/s")
    print(f"database connections: {conns} ({C} collectors, {P} probes)")
    sql("SELECT pg_stat_statements_reset()")
    cpu1 = (cpu_s(pg_pids()), cpu_s(COLLECTOR_PIDS))

    delays = []
    worst = []
    peak_conns = 0
    t_changes = time.time()
    me0 = os.times()
    for k in range(CHANGES):
        for a in arrivals.values():
            a.clear()
        target = f"c{2 + k % max(1, C - 1)}" if C > 1 else "c1"
        t0 = time.time()
        api(0, "PATCH", "/api/v1/sessions/s", ADMIN, {"collector": target})
        deadline = t0 + 30
        while time.time() < deadline and any(not a for a in arrivals.values()):
            time.sleep(0.05)
        got = [a[0] - t0 for a in arrivals.values() if a]
        missing = P - len(got)
        delays += got
        worst.append(max(got) if got else float("nan"))
        print(f"change {k + 1}: {len(got)}/{P} probes in {max(got) if got else 0:.3f} s"
              + (f", {missing} missing after 30 s" if missing else ""))
        peak_conns = max(peak_conns, connections())
        time.sleep(1)
    span = time.time() - t_changes
    me1 = os.times()
    me_s = (me1.user - me0.user) + (me1.system - me0.system)
    cpu2 = (cpu_s(pg_pids()), cpu_s(COLLECTOR_PIDS))
    stop.set()
    delays.sort()
    p = lambda q: delays[min(len(delays) - 1, int(q * len(delays)))]
    print(f"change to probe, {len(delays)} deliveries: median {statistics.median(delays):.3f} s, "
          f"p99 {p(0.99):.3f} s, max {delays[-1]:.3f} s; slowest probe per change: "
          + ", ".join(f"{w:.2f}" for w in worst))
    print(f"over the changes ({span:.1f} s): PostgreSQL {100 * (cpu2[0] - cpu1[0]) / span:.1f}% "
          f"of a CPU, collectors {100 * (cpu2[1] - cpu1[1]) / span:.1f}%, "
          f"this simulator {100 * me_s / span:.1f}%")
    stmts = statements()
    print(f"database connections during the changes: up to {peak_conns}")
    print(f"queries over the changes: {sum(c for c, _, _ in stmts) / CHANGES:.0f} per change "
          f"(heartbeats included); costliest statements (calls per change, ms per change):")
    for calls, ms, q in stmts[:8]:
        print(f"  {calls / CHANGES:8.1f} {ms / CHANGES:8.1f}  {q}")
    print(f"long-poll errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))


if __name__ == "__main__":
    main()
