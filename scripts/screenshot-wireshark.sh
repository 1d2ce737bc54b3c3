#!/usr/bin/env bash
# Wireshark's GUI capturing a live tapwire session through the installed extcap, and a
# screenshot of it: docs/img/wireshark-live.png (or OUT).
#
#   scripts/screenshot-wireshark.sh
#   OUT=/tmp/shot.png SECONDS_LIVE=15 scripts/screenshot-wireshark.sh
#
# Lab (bench-lib.sh; namespaces made here, removed on exit, also on failure): a sender `gen`
# --veth--> a collector `col`. `tapwire collect` in col has one session, `web`, taking ERSPAN
# II from the sender's address. The sender (scapy) mirrors a small conversation as a switch
# would, 20 frames a second with a contiguous GRE sequence: ARP, ping, a DNS lookup, a TCP
# handshake, an HTTP request and its answer, the close. Wireshark (Debian's wireshark-qt, in
# col, as root, under Xvfb, with a HOME of its own into which `tapwire extcap install` linked
# the extcap) starts capturing `tapwire-web` at once (`-k -i tapwire-web`); after
# SECONDS_LIVE (8) s the screen is taken (xwd), cut to Wireshark's window and written as a
# PNG of at most 64 colours. The interface list and the capture's statistics are checked with
# tshark through the same extcap first, so a broken extcap fails here rather than in a picture
# of an error dialog; look at the picture anyway.
#
# Needs root. Installs wireshark-qt, xvfb, x11-apps (xwd), xdotool, imagemagick, python3-scapy
# and tshark when missing (CI does not need them: no test runs this).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$ROOT/docs/img/wireshark-live.png}
SECONDS_LIVE=${SECONDS_LIVE:-8}
GEN_CPU=0 RX_CPU=1

[[ $(id -u) == 0 ]] || { echo "screenshot-wireshark: run as root" >&2; exit 2; }
source "$ROOT/scripts/bench-lib.sh"
install_missing wireshark:wireshark-qt Xvfb:xvfb xwd:x11-apps xdpyinfo:x11-utils xdotool:xdotool \
    /usr/bin/convert:imagemagick tshark:tshark jq:jq curl:curl ethtool:ethtool
/usr/bin/python3 -c 'import scapy' 2>/dev/null || install_missing no-such-command:python3-scapy
build_tapwire

ID=twws-$$
GEN=$ID-gen COL=$ID-col
WORK=$(mktemp -d /tmp/tapwire-screenshot.XXXXXX)
DISPLAY_NO=$((90 + $$ % 9))
PIDS=()
cleanup() {
    # TERM first, a chance to end cleanly (Wireshark 4.0 still leaves its extcap fifo,
    # /tmp/wireshark_extcap_tapwire-web*, behind: not removed here, it may be another's).
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 1
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for ns in "$GEN" "$COL"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

gen_col_lab
cat >"$WORK/collector.toml" <<'EOF'
[[session]]
name = "web"
sources = [{ src = "10.98.0.1", kind = "erspan-ii" }]
EOF
ip netns exec "$COL" "$TAPWIRE" collect --no-tui --config "$WORK/collector.toml" \
    --out "$WORK/out" --gre-v6 off --api 127.0.0.1:9750 2>"$WORK/collector.err" &
PIDS+=($!)
for _ in $(seq 100); do api >/dev/null 2>&1 && break; sleep 0.1; done

# The sender: a conversation between two VMs, mirrored as ERSPAN II (session 7), looped.
cat >"$WORK/send.py" <<'EOF'
import logging, sys, time
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
from scapy.all import ARP, DNS, DNSQR, DNSRR, GRE, ICMP, IP, TCP, UDP, Ether, Raw, conf, sendp
from scapy.contrib.erspan import ERSPAN_II
iface, dst_mac, src_mac = sys.argv[1:4]
conf.verb = 0
a_mac, b_mac, dns_mac = "52:54:00:0a:00:05", "52:54:00:0a:00:09", "52:54:00:0a:00:35"
a, b, dns = "10.0.0.5", "10.0.0.9", "10.0.0.53"
def conversation(port, isn):
    ab = Ether(src=a_mac, dst=b_mac) / IP(src=a, dst=b)
    ba = Ether(src=b_mac, dst=a_mac) / IP(src=b, dst=a)
    req = b"GET /index.html HTTP/1.1\r\nHost: intranet.example\r\nUser-Agent: curl/7.88.1\r\n\r\n"
    body = b"<html><body>hello from vm9</body></html>\n"
    resp = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    return [
        Ether(src=a_mac, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=a, pdst=b, hwsrc=a_mac),
        Ether(src=b_mac, dst=a_mac) / ARP(op=2, psrc=b, pdst=a, hwsrc=b_mac, hwdst=a_mac),
        Ether(src=a_mac, dst=dns_mac) / IP(src=a, dst=dns) / UDP(sport=port, dport=53)
        / DNS(rd=1, qd=DNSQR(qname="intranet.example")),
        Ether(src=dns_mac, dst=a_mac) / IP(src=dns, dst=a) / UDP(sport=53, dport=port)
        / DNS(id=0, qr=1, ra=1, qd=DNSQR(qname="intranet.example"),
              an=DNSRR(rrname="intranet.example", rdata=b)),
        ab / ICMP(type=8, id=port, seq=1) / Raw(b"tapwire-ping"),
        ba / ICMP(type=0, id=port, seq=1) / Raw(b"tapwire-ping"),
        ab / TCP(sport=port, dport=80, flags="S", seq=isn),
        ba / TCP(sport=80, dport=port, flags="SA", seq=7000, ack=isn + 1),
        ab / TCP(sport=port, dport=80, flags="A", seq=isn + 1, ack=7001),
        ab / TCP(sport=port, dport=80, flags="PA", seq=isn + 1, ack=7001) / Raw(req),
        ba / TCP(sport=80, dport=port, flags="PA", seq=7001, ack=isn + 1 + len(req)) / Raw(resp),
        ab / TCP(sport=port, dport=80, flags="FA", seq=isn + 1 + len(req), ack=7001 + len(resp)),
        ba / TCP(sport=80, dport=port, flags="FA", seq=7001 + len(resp), ack=isn + 2 + len(req)),
        ab / TCP(sport=port, dport=80, flags="A", seq=isn + 2 + len(req), ack=7002 + len(resp)),
    ]
outer = Ether(src=src_mac, dst=dst_mac) / IP(src="10.98.0.1", dst="10.98.0.2")
seq, port = 0, 40000
while True:
    for f in conversation(port, 1000 * port):
        sendp(outer / GRE(proto=0x88BE, seqnum_present=1, sequence_number=seq)
              / ERSPAN_II(ver=1, session_id=7, index=seq) / f, iface=iface)
        seq += 1
        time.sleep(0.05)
    port += 1
EOF
ip netns exec "$GEN" /usr/bin/python3 "$WORK/send.py" gen0 "$COL_MAC" "$GEN_MAC" &
PIDS+=($!)

# Wireshark's HOME: the extcap installed into it, as a user would.
HOME_WS=$WORK/home
mkdir -p "$HOME_WS"
folder=$(ip netns exec "$COL" env HOME="$HOME_WS" "$TAPWIRE" extcap install)
echo "extcap installed in $folder" >&2
in_col() { ip netns exec "$COL" env HOME="$HOME_WS" XDG_RUNTIME_DIR="$WORK" "$@"; }
in_col tshark -D | grep -q 'tapwire-web (tapwire session web' || {
    echo "screenshot-wireshark: tshark -D does not list tapwire-web" >&2
    in_col tshark -D >&2
    exit 1
}
n=$(in_col tshark -i tapwire-web -a packets:20 -w "$WORK/check.pcapng" 2>/dev/null; capinfos -c -M -T -r "$WORK/check.pcapng" | cut -f2)
((n == 20)) || { echo "screenshot-wireshark: tshark captured $n of 20 packets" >&2; exit 1; }

# Wireshark under Xvfb, capturing at once.
Xvfb ":$DISPLAY_NO" -screen 0 1280x760x24 -nolisten tcp >"$WORK/xvfb.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do xdpyinfo -display ":$DISPLAY_NO" >/dev/null 2>&1 && break; sleep 0.1; done
in_col env DISPLAY=":$DISPLAY_NO" QT_QPA_PLATFORM=xcb wireshark -k -i tapwire-web \
    -o gui.geometry_main_maximized:TRUE -o gui.ask_unsaved:FALSE >"$WORK/wireshark.log" 2>&1 &
PIDS+=($!)
win=
for _ in $(seq 100); do
    win=$(DISPLAY=":$DISPLAY_NO" xdotool search --onlyvisible --name 'tapwire-web' 2>/dev/null | head -1) && [[ -n $win ]] && break
    sleep 0.2
done
[[ -n $win ]] || { echo "screenshot-wireshark: no Wireshark window capturing tapwire-web" >&2; cat "$WORK/wireshark.log" >&2; exit 1; }
DISPLAY=":$DISPLAY_NO" xdotool windowmove "$win" 0 0 windowsize "$win" 1280 760
sleep "$SECONDS_LIVE"
# The first packet of the list selected: its detail pane shows the interface and the comment.
DISPLAY=":$DISPLAY_NO" xdotool windowactivate --sync "$win" key --clearmodifiers ctrl+Home 2>/dev/null || true
sleep 1
DISPLAY=":$DISPLAY_NO" xwd -root -silent >"$WORK/screen.xwd"
# Xvfb has no window manager to draw the title bar: the window's title goes above it.
title=$(DISPLAY=":$DISPLAY_NO" xdotool getwindowname "$win")
version=$(wireshark --version 2>/dev/null | awk 'NR == 1 {print $2}')
mkdir -p "$(dirname "$OUT")"
/usr/bin/convert "xwd:$WORK/screen.xwd" -background '#3c3c3c' -gravity north -splice 0x26 \
    -font DejaVu-Sans -pointsize 14 -fill white -annotate +0+5 "Wireshark $version: $title" \
    -colors 64 -strip "png:$OUT"
echo "screenshot-wireshark: $OUT ($(stat -c %s "$OUT") bytes), window: $title" >&2
