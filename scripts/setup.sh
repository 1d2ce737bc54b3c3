#!/usr/bin/env bash
# Installs what tapwire's build, tests, benchmarks and lab need on Debian, when missing.
# Safe to run again: it only installs what is absent. Needs root for apt-get.
set -euo pipefail

# command name -> Debian package
declare -A need=(
  [pcap-config]=libpcap-dev
  [tshark]=tshark
  [capinfos]=wireshark-common
  [tcpdump]=tcpdump
  [tcpreplay]=tcpreplay
  [trafgen]=netsniff-ng
  [iperf3]=iperf3
  [ovs-vswitchd]=openvswitch-switch
  [hyperfine]=hyperfine
  [tmux]=tmux
  [ip]=iproute2
  [ping]=iputils-ping
  [curl]=curl
  [python3]=python3
  [setsid]=util-linux
  [sysctl]=procps
  [ethtool]=ethtool
  [pkg-config]=pkg-config
  # netio/build.rs compiles the XDP steering program; bpftool inspects it.
  [clang]=clang
  [bpftool]=bpftool
  # libfuzzer-sys compiles libFuzzer (C++) when test.sh checks the fuzz targets.
  [g++]=g++
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
[ -x /usr/bin/time ] || missing+=(time)
/usr/bin/python3 -c 'import scapy' 2>/dev/null || missing+=(python3-scapy)
# The fleet's tests start throw-away PostgreSQL servers (tests/support/pg.rs) from these
# binaries, run as the package's `postgres` user when the tests run as root.
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing packages: ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found: install Rust 1.95+ (rustup)" >&2; exit 1; }
