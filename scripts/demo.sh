#!/usr/bin/env bash
# tapwire's main job on a machine with no mirrored traffic yet: decapsulate the public
# captures of real mirror senders (../shared/captures) into per-source capture files under
# ./captures/demo, and check every file with captype/capinfos.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked --bin tapwire

captures=${TAPWIRE_CAPTURES:-../shared/captures}
[ -d "$captures" ] || { echo "demo: no captures at $captures (set TAPWIRE_CAPTURES)" >&2; exit 1; }
out=captures/demo
rm -rf "$out"
mapfile -t inputs < <(find "$captures" -name '*.pcap' -o -name '*.pcapng' | sort)
target/release/tapwire decap "${inputs[@]}" --out "$out"
echo
for f in "$out"/*; do
  printf '%-60s %s, %s packets\n' "$f" "$(captype "$f" | sed 's/.*: //')" "$(capinfos -M -c -T -r "$f" | awk '{print $NF}')"
done
echo
echo "demo: open any file above in Wireshark; each holds one mirrored source's inner frames."
