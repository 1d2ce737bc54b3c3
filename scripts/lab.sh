#!/usr/bin/env bash
# tapwire's main job on one machine, with no switch and no mirrored traffic: the lab. Installs
# what is missing, builds the release binaries and runs `tapwire lab up`: two hypervisor hosts
# with VMs, a tapwire-probe on each, an Open vSwitch host, a monitoring VM and a collector, in
# network namespaces, with steady traffic; then the collector's UI. Run it as root.
#
# Arguments go to `tapwire lab up` (--detach, --name, --out, --no-ovs, --fleet: three collectors
# on a throw-away PostgreSQL; `tapwire lab fail col2` shows a failover). Quitting the UI leaves
# the lab running: `target/release/tapwire lab status` counts, `... lab top` shows it again,
# `... lab down` removes it. Session files stay in ./captures/lab.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked --bin tapwire --bin tapwire-probe
exec target/release/tapwire lab up "$@"
