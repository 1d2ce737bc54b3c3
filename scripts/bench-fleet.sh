#!/usr/bin/env bash
# The fleet's control plane at scale: COLLECTORS `tapwire collect --db` processes on one
# PostgreSQL of this script's, PROBES simulated probes (long-polls only, no capture) spread
# over them, CHANGES flow changes that reach every probe. Reports the time from a change
# (made on the first collector) to each probe's long-poll answering with it (median, p99,
# max), the database's connections, the CPU of PostgreSQL and of the collectors while idle
# (heartbeats only) and over the changes, and the queries (pg_stat_statements): per second
# while idle, per change during the changes, the costliest statements.
#
#   sudo scripts/bench-fleet.sh                      # 20 collectors, 1000 probes, 10 changes
#   COLLECTORS=5 PROBES=200 CHANGES=5 scripts/bench-fleet.sh
#   TAPWIRE=target/debug/tapwire scripts/bench-fleet.sh
#
# Setup shortcut (not measured): one probe and its flow are made through the API, the other
# probes, their tokens and flows are copied from them in SQL, then one change through the API
# renders every probe's flow set. Each change measured pins the one session to another
# collector: every probe's flow set changes (its collector's --advertise address).
# Runs on loopback only (collectors advertise 127.0.0.x; nothing is sent).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
TAPWIRE=${TAPWIRE:-$root/target/release/tapwire}
COLLECTORS=${COLLECTORS:-20}
PROBES=${PROBES:-1000}
CHANGES=${CHANGES:-10}
IDLE_S=${IDLE_S:-10}
[ -x "$TAPWIRE" ] || { echo "bench-fleet: $TAPWIRE: build it (cargo build --release -p tapwire)" >&2; exit 2; }
pgbin=$(compgen -G '/usr/lib/postgresql/*/bin' | sort -V | tail -1 || true)
[ -n "$pgbin" ] || { echo "bench-fleet: no PostgreSQL (scripts/setup.sh installs it)" >&2; exit 2; }

work=$(mktemp -d /tmp/tapwire-bench-fleet.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  as_pg "$pgbin/pg_ctl" -D "$work/pg/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
# PostgreSQL refuses to run as root: as root, its commands run as the package's user.
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir -p "$work/pg"
[ "$(id -u)" -eq 0 ] && chown postgres "$work/pg"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg "$pgbin/initdb" -D "$work/pg/data" -U postgres --auth=trust --no-sync >/dev/null
as_pg "$pgbin/pg_ctl" -D "$work/pg/data" -l "$work/pg/log" -w -o \
  "-k $work/pg -p $port -c listen_addresses='' -c max_connections=300 -c fsync=off -c synchronous_commit=off -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all" \
  start >/dev/null
psql() { as_pg "$pgbin/psql" -h "$work/pg" -p "$port" -U postgres -qAt -v ON_ERROR_STOP=1 "$@"; }
psql -d postgres -c "CREATE DATABASE fleet"
# Queries counted by statement (heartbeats while idle, per change during the changes).
psql -d fleet -c "CREATE EXTENSION pg_stat_statements"
db="host=$work/pg port=$port user=postgres dbname=fleet"
admin=$("$TAPWIRE" token create --db "$db" --name root --role admin --json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

for i in $(seq 1 "$COLLECTORS"); do
  mkdir -p "$work/out/c$i"
  "$TAPWIRE" collect --no-tui --out "$work/out/c$i" --db "$db" --name "c$i" \
    --api "127.0.0.1:$((9800 + i))" --advertise "127.0.0.$((i + 1))" \
    --gre-v4 off --gre-v6 off --geneve off --tzsp off --vxlan "127.0.0.1:$((24000 + i))" \
    2>"$work/c$i.log" &
  pids+=($!)
done
for i in $(seq 1 "$COLLECTORS"); do
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$((9800 + i))/api/v1/health" >/dev/null && break
    sleep 0.1
  done
done

uptime_before=$(uptime)
COLLECTOR_PIDS="${pids[*]}" PG_PID=$(head -1 "$work/pg/data/postmaster.pid") \
  COLLECTORS=$COLLECTORS PROBES=$PROBES CHANGES=$CHANGES IDLE_S=$IDLE_S ADMIN=$admin \
  PSQL="$pgbin/psql -h $work/pg -p $port -U postgres -d fleet -qAt" AS_PG="$([ "$(id -u)" -eq 0 ] && echo 'runuser -u postgres --')" \
  python3 "$root/scripts/bench_fleet.py"
echo "uptime before: $uptime_before"
echo "uptime after:  $(uptime)"
echo "(the machine may be shared: see the load averages)"
