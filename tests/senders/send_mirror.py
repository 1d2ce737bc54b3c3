#!/usr/bin/python3
"""Deterministic mirror-traffic sender for tapwire's end-to-end tests.

Sends the same set of inner Ethernet frames wrapped as ERSPAN I, II, III (with and without the
platform sub-header, D bit both ways), GRE-TEB (key and sequence), VXLAN, GENEVE (with options)
and TZSP, over IPv4 and/or IPv6 outer headers, out of one interface (layer 2, so what goes on the
wire is exactly what is written), to one collector address. Every frame sent is also written, in
order, to --pcap: that file is the oracle tshark decodes. A JSON summary of the sources (outer
source, kind, id, packets) goes to stdout.

Sequence numbers are contiguous per source. Big inner frames make outer datagrams larger than
the link MTU; those are sent as outer IPv4 fragments or IPv6 fragments (as real senders do).

Usage: send_mirror.py --iface snd0 --dst-mac MAC --dst4 10.77.0.2 --dst6 fd77::2 \
           --src4 10.77.0.1x --src6 fd77::1x --count 40 --pcap sent.pcap [--families 4,6]
           [--kinds erspan-i,erspan-ii,...] [--session-base 100] [--mtu 1500] [--dry-run]
"""

import argparse
import json
import logging
import struct
import sys

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.all import (  # noqa: E402
    ARP,
    GRE,
    IP,
    UDP,
    TCP,
    VXLAN,
    Dot1Q,
    Ether,
    IPv6,
    IPv6ExtHdrFragment,
    Raw,
    conf,
    fragment,
    fragment6,
    wrpcap,
)
from scapy.contrib.erspan import (  # noqa: E402
    ERSPAN_I,
    ERSPAN_II,
    ERSPAN_III,
    ERSPAN_PlatformSpecific,
)
from scapy.contrib.geneve import GENEVE, GeneveOptions  # noqa: E402
from scapy.contrib.tzsp import TZSP, TZSPTagEnd, TZSPTagPadding  # noqa: E402

KINDS = ["erspan-i", "erspan-ii", "erspan-iii", "gre", "vxlan", "geneve", "tzsp"]
MARKER = b"TWE2E"
BASE_TS_NS = 1_700_000_000_000_000_000
# --gre-stale-csum: the checksum of each GRE-TEB source's first packet, repeated on the rest.
STALE_CSUM = None


def inner(src_no, n, max_len):
    """The n-th inner frame of source src_no: a deterministic mix of sizes and protocols."""
    mac_a = "02:42:00:%02x:00:01" % src_no
    mac_b = "02:42:00:%02x:00:02" % src_no
    tag = MARKER + bytes([src_no]) + struct.pack(">I", n)
    pattern = bytes((src_no * 7 + n + i) & 0xFF for i in range(2000))
    v = n % 6
    if v == 0:
        f = Ether(src=mac_a, dst=mac_b) / IP(src="192.0.2.1", dst="192.0.2.2", id=n) / UDP(
            sport=1000 + src_no, dport=2000
        ) / Raw(tag + pattern[:20])
    elif v == 1:
        f = Ether(src=mac_b, dst=mac_a) / Dot1Q(vlan=100 + src_no, prio=n % 8) / IP(
            src="192.0.2.2", dst="192.0.2.1", id=n
        ) / TCP(sport=80, dport=40000 + n, flags="PA", seq=n * 1000) / Raw(tag + pattern[:100])
    elif v == 2:
        f = Ether(src=mac_a, dst=mac_b) / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(
            sport=3000, dport=4000 + n
        ) / Raw(tag + pattern[:300])
    elif v == 3:
        f = Ether(src=mac_a, dst="ff:ff:ff:ff:ff:ff") / ARP(
            psrc="192.0.2.%d" % (n % 250 + 1), pdst="192.0.2.254", hwsrc=mac_a
        )
    elif v == 4:
        # Large: with the outer headers, bigger than a 1500-byte IPv4 link (fragmented).
        f = Ether(src=mac_a, dst=mac_b) / IP(src="192.0.2.1", dst="192.0.2.2", id=n) / UDP(
            sport=5000, dport=6000
        ) / Raw(tag + pattern[: max_len - 14 - 20 - 8 - len(tag)])
    else:
        f = Ether(src=mac_b, dst=mac_a, type=0x88B5) / Raw(tag + pattern[: 46 + n % 40])
    return f


def sized(src_no, n, size):
    """An IPv4/UDP frame of exactly `size` bytes carrying the marker."""
    tag = MARKER + bytes([src_no]) + struct.pack(">I", n)
    pad = bytes((src_no + n + i) & 0xFF for i in range(max(0, size - 42 - len(tag))))
    return Ether(src="02:42:00:%02x:00:01" % src_no, dst="02:42:00:%02x:00:02" % src_no) / IP(
        src="192.0.2.1", dst="192.0.2.2", id=n & 0xFFFF
    ) / UDP(sport=7000, dport=7001) / Raw(tag + pad)


def write_and_send(args, raw):
    wrpcap(args.pcap, [Ether(b) for b in raw])
    if not args.dry_run:
        sock = conf.L2socket(iface=args.iface)
        try:
            for b in raw:
                sock.send(b)
        finally:
            sock.close()


def flood(args):
    """Malformed mirror traffic from the x1 source and valid ERSPAN II from the x6 source (to
    be refused by --allow), IPv4 only. Prints {"frames": n, "malformed": m, "foreign": f}."""
    src = args.src4.replace("x", "1")
    foreign = args.src4.replace("x", "6")
    dst = args.dst4
    eth = Ether(src=args.src_mac, dst=args.dst_mac)
    frame = inner(99, 0, 200)
    bad = [
        # GRE with the routing bit (RFC 1701 source routing, never mirror traffic).
        IP(src=src, dst=dst, proto=47) / Raw(bytes([0x40, 0x00, 0x88, 0xBE]) + bytes(40)),
        # ERSPAN II header cut short: GRE with S, then 4 of the 8 ERSPAN bytes.
        IP(src=src, dst=dst) / GRE(proto=0x88BE, seqnum_present=1, sequence_number=1)
        / Raw(b"\x10\x00\x00\x64"),
        # ERSPAN with an unknown version nibble (7).
        IP(src=src, dst=dst) / GRE(proto=0x88BE, seqnum_present=1, sequence_number=2)
        / Raw(b"\x70\x00\x00\x64\x00\x00\x00\x00") / frame,
        # ERSPAN III announcing a platform sub-header that is not there.
        IP(src=src, dst=dst) / GRE(proto=0x22EB, seqnum_present=1, sequence_number=3)
        / Raw(b"\x20\x00\x00\xc8" + bytes(7) + b"\x01"),
        # GRE version 1 (PPTP) carrying 0x88be.
        IP(src=src, dst=dst, proto=47) / Raw(bytes([0x30, 0x01, 0x88, 0xBE]) + bytes(12)),
        # GRE header alone, shorter than its flags promise (K and S set, 4 bytes).
        IP(src=src, dst=dst, proto=47) / Raw(bytes([0x30, 0x00, 0x65, 0x58])),
        # VXLAN without the I flag, VXLAN cut short, empty datagrams.
        IP(src=src, dst=dst) / UDP(sport=1, dport=4789) / Raw(bytes(8)) / frame,
        IP(src=src, dst=dst) / UDP(sport=2, dport=4789) / Raw(b"\x08\x00\x00"),
        IP(src=src, dst=dst) / UDP(sport=3, dport=6081),
        # GENEVE whose option length runs past the end.
        IP(src=src, dst=dst) / UDP(sport=4, dport=6081) / Raw(b"\x3f\x00\x65\x58\x00\x00\x01\x00"),
        # TZSP whose tagged fields never end, and one with a bad version.
        IP(src=src, dst=dst) / UDP(sport=5, dport=37008) / Raw(b"\x01\x00\x00\x01" + b"\x00" * 30),
        IP(src=src, dst=dst) / UDP(sport=6, dport=37008) / Raw(b"\x09\x00\x00\x01\x01") / frame,
        # ERSPAN II whose inner frame is shorter than an Ethernet header.
        IP(src=src, dst=dst) / GRE(proto=0x88BE, seqnum_present=1, sequence_number=4)
        / ERSPAN_II(ver=1, session_id=1) / Raw(b"\x02\x00"),
    ]
    good_foreign = [
        IP(src=foreign, dst=dst) / GRE(proto=0x88BE, seqnum_present=1, sequence_number=n)
        / ERSPAN_II(ver=1, session_id=100, index=n) / inner(98, n, 300)
        for n in range(8)
    ]
    raw = [bytes(eth / p) for p in bad] + [bytes(eth / p) for p in good_foreign]
    write_and_send(args, raw)
    json.dump({"frames": len(raw), "malformed": len(bad), "foreign": len(good_foreign)}, sys.stdout)
    print()


def incomplete_fragments(args):
    """The first fragments (MF set, offset 0) of N GRE datagrams from the x7 IPv4 source whose
    other fragments never come. Prints {"frames": N}."""
    src = args.src4.replace("x", "7")
    eth = Ether(src=args.src_mac, dst=args.dst_mac)
    raw = [
        bytes(eth / IP(src=src, dst=args.dst4, id=n, flags="MF", frag=0, proto=47)
              / Raw(bytes([0x20, 0x00, 0x65, 0x58]) + struct.pack(">I", n) + bytes(56)))
        for n in range(args.incomplete_fragments)
    ]
    write_and_send(args, raw)
    json.dump({"frames": len(raw), "sources": []}, sys.stdout)
    print()


def many_sessions(args):
    """ERSPAN II sessions 0..N-1 (N <= 1024) from the x1 IPv4 source, --count packets each,
    round-robin over the sessions."""
    src = args.src4.replace("x", "1")
    eth = Ether(src=args.src_mac, dst=args.dst_mac)
    frames = []
    for n in range(args.start, args.start + args.count):
        for sid in range(args.many_sessions):
            f = inner(sid % 250, n, 200)
            frames.append(eth / IP(src=src, dst=args.dst4) / GRE(
                proto=0x88BE, seqnum_present=1, sequence_number=n)
                / ERSPAN_II(ver=1, session_id=sid, index=n) / f)
    raw = [bytes(f) for f in frames]
    write_and_send(args, raw)
    json.dump({
        "frames": len(raw),
        "sources": [{"src": src, "kind": "erspan-ii", "id": sid, "packets": args.count}
                    for sid in range(args.many_sessions)],
    }, sys.stdout)
    print()


def seq_base(src_no):
    return 1000 * (src_no + 1)


def encapsulate(kind, src_no, n, frame, session_base):
    """The mirror header stack (without the outer IP) for the n-th frame of a source, and the id
    the collector keys it by."""
    seq = seq_base(src_no) + n
    ts = (BASE_TS_NS + n * 1_000_000) // 100
    if kind == "erspan-i":
        return GRE(proto=0x88BE) / ERSPAN_I() / frame, 0
    if kind == "erspan-ii":
        sid = session_base
        tagged = frame.haslayer(Dot1Q)
        hdr = ERSPAN_II(
            ver=1,
            vlan=0 if tagged else 10,
            cos=n % 8,
            en=3 if tagged else 0,
            t=1 if n % 13 == 12 else 0,
            session_id=sid,
            index=n & 0xFFFFF,
        )
        return GRE(proto=0x88BE, seqnum_present=1, sequence_number=seq) / hdr / frame, sid
    if kind in ("erspan-iii", "erspan-iii-o"):
        sid = session_base + (100 if kind == "erspan-iii" else 101)
        hdr = ERSPAN_III(
            ver=2,
            vlan=0,
            cos=n % 8,
            bso=0,
            t=0,
            session_id=sid,
            timestamp=ts & 0xFFFFFFFF,
            sgt_other=0x1234,
            p=0,
            ft=0,
            hw=5,
            d=n % 2,
            gra=1,
            o=1 if kind == "erspan-iii-o" else 0,
        )
        if kind == "erspan-iii-o":
            hdr = hdr / ERSPAN_PlatformSpecific(platf_id=3, info1=7, info2=ts >> 32)
        return GRE(proto=0x22EB, seqnum_present=1, sequence_number=seq) / hdr / frame, sid
    if kind == "gre":
        key = session_base + 7
        gre = GRE(proto=0x6558, key_present=1, key=key, seqnum_present=1, sequence_number=seq)
        if STALE_CSUM is not None:
            # Open vSwitch's userspace datapath with csum=true and seq=true: the first packet's
            # checksum (computed by scapy) on every packet while the sequence grows.
            gre.chksum_present = 1
            if src_no not in STALE_CSUM:
                STALE_CSUM[src_no] = GRE(bytes(gre / frame)).chksum
            gre.chksum = STALE_CSUM[src_no]
        return gre / frame, key
    if kind == "vxlan":
        vni = session_base * 50
        return UDP(sport=49152 + n % 64, dport=4789) / VXLAN(flags=0x08, vni=vni) / frame, vni
    if kind == "geneve":
        vni = session_base * 60
        opts = [
            GeneveOptions(classid=0x0102, type=0x80, data=struct.pack(">I", n)),
            GeneveOptions(classid=0xFFFF, type=0x01, data=b"tapwire!"),
        ]
        return (
            UDP(sport=50000 + n % 64, dport=6081)
            / GENEVE(vni=vni, proto=0x6558, options=opts)
            / frame
        ), vni
    if kind == "tzsp":
        return (
            UDP(sport=37008, dport=37008)
            / TZSP(version=1, type=0, encapsulated_protocol=1)
            / TZSPTagPadding()
            / TZSPTagEnd()
            / frame
        ), 0
    raise ValueError(kind)


def sources(args):
    """(kind-variant, family, outer source, source number) for every source to send."""
    out = []
    kinds = args.kinds.split(",")
    fams = args.families.split(",")
    for fam in fams:
        src = args.src4 if fam == "4" else args.src6
        dst = args.dst4 if fam == "4" else args.dst6
        if not src or not dst:
            sys.exit("family %s needs --src%s and --dst%s" % (fam, fam, fam))
        # Outer sources: ERSPAN II/III (three sessions, one switch) from x1; ERSPAN I from x2;
        # GRE-TEB from x3; the UDP kinds from x4; and a second switch reusing session
        # session_base for ERSPAN II from x5 (two senders, one session id).
        def addr(last):
            return src.replace("x", str(last))

        plan = [
            ("erspan-ii", addr(1)),
            ("erspan-iii", addr(1)),
            ("erspan-iii-o", addr(1)),
            ("erspan-i", addr(2)),
            ("gre", addr(3)),
            ("vxlan", addr(4)),
            ("geneve", addr(4)),
            ("tzsp", addr(4)),
            ("erspan-ii", addr(5)),
        ]
        for variant, s in plan:
            if variant.replace("-o", "") in kinds:
                out.append((variant, fam, s, dst))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iface", required=True)
    ap.add_argument("--dst-mac", required=True)
    ap.add_argument("--src-mac", default="02:77:00:00:00:01")
    ap.add_argument("--src4", help="outer IPv4 source template, 'x' replaced by 1..5")
    ap.add_argument("--dst4")
    ap.add_argument("--src6", help="outer IPv6 source template, 'x' replaced by 1..5")
    ap.add_argument("--dst6")
    ap.add_argument("--families", default="4,6")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--count", type=int, default=40)
    ap.add_argument("--session-base", type=int, default=100)
    ap.add_argument("--mtu", type=int, default=1500)
    ap.add_argument("--pcap", required=True)
    ap.add_argument("--start", type=int, default=0, help="first frame number (and sequence offset)")
    ap.add_argument("--size", type=int, default=0, help="every inner frame this long (bytes)")
    ap.add_argument("--sources", type=int, default=0, help="only the first N sources per family")
    ap.add_argument("--flood", action="store_true",
                    help="instead: malformed packets, and valid ones from the x6 source")
    ap.add_argument("--many-sessions", type=int, default=0,
                    help="instead: ERSPAN II sessions 0..N-1 from the x1 source, --count each")
    ap.add_argument("--udp6-zero-csum", action="store_true",
                    help="UDP checksum 0 over IPv6 (RFC 6935 tunnels; Linux vxlan udp6zerocsumtx)")
    ap.add_argument("--incomplete-fragments", type=int, default=0,
                    help="instead: first fragments of N GRE datagrams that never complete")
    ap.add_argument("--gre-stale-csum", action="store_true",
                    help="GRE-TEB with a checksum: the first packet's, repeated (as Open vSwitch does)")
    ap.add_argument("--dry-run", action="store_true", help="write the pcap, send nothing")
    args = ap.parse_args()
    if args.gre_stale_csum:
        global STALE_CSUM
        STALE_CSUM = {}
    if args.flood:
        return flood(args)
    if args.many_sessions:
        return many_sessions(args)
    if args.incomplete_fragments:
        return incomplete_fragments(args)

    srcs = sources(args)
    if args.sources:
        per_fam = {}
        kept = []
        for s in srcs:
            per_fam[s[1]] = per_fam.get(s[1], 0) + 1
            if per_fam[s[1]] <= args.sources:
                kept.append(s)
        srcs = kept
    per_source = {}
    frames = []
    # Round-robin over the sources so that they interleave on the wire.
    for n in range(args.start, args.start + args.count):
        for src_no, (variant, fam, src, dst) in enumerate(srcs):
            kind = variant.replace("-o", "")
            # Frames n % 6 == 4 are 1514 bytes: their outer datagrams exceed the MTU and are sent
            # as IPv4 fragments or with an IPv6 fragment header, as a real sender must.
            max_len = 1514
            f = inner(src_no + (0 if fam == "4" else 50), n, max_len)
            if args.size:
                f = sized(src_no, n, args.size)
            stack, ident = encapsulate(variant, src_no, n, f, args.session_base)
            proto_is_udp = isinstance(stack, UDP) or stack.haslayer(UDP) and not stack.haslayer(GRE)
            if fam == "4":
                outer = IP(src=src, dst=dst, ttl=64, id=(src_no * 4096 + n) & 0xFFFF,
                           proto=17 if proto_is_udp else 47) / stack
                pkts = [outer]
                if len(outer) > args.mtu:
                    pkts = fragment(outer, fragsize=args.mtu - 20 - (args.mtu - 20) % 8)
            else:
                if args.udp6_zero_csum and isinstance(stack, UDP):
                    stack.chksum = 0
                outer = IPv6(src=src, dst=dst, hlim=64, nh=17 if proto_is_udp else 47) / stack
                pkts = [outer]
                if len(outer) > args.mtu:
                    outer = IPv6(src=src, dst=dst, hlim=64) / IPv6ExtHdrFragment(
                        id=src_no * 65536 + n, nh=17 if proto_is_udp else 47) / stack
                    pkts = fragment6(outer, args.mtu)
            for p in pkts:
                frames.append(Ether(src=args.src_mac, dst=args.dst_mac) / p)
            key = (src, kind, ident)
            per_source[key] = per_source.get(key, 0) + 1

    raw = [bytes(f) for f in frames]
    write_and_send(args, raw)
    json.dump(
        {
            "frames": len(raw),
            "sources": [
                {"src": s, "kind": k, "id": i, "packets": c}
                for (s, k, i), c in sorted(per_source.items())
            ],
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
