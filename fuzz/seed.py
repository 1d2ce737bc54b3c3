#!/usr/bin/env python3
"""Seeds the fuzz corpora from real captures (default ../../shared/captures): whole files for
capture_reader, each packet's layers for the parser targets, and per-file packet streams in
decap_link's input format. Standard library only; classic pcap files only for the layers."""

import os
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CAPTURES = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent.parent / "shared" / "captures"
CORPUS = HERE / "corpus"
LINKS = {1: 0, 101: 1, 0: 2, 108: 3, 113: 4, 276: 5, 228: 6, 229: 7}  # decap_link selector


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def pcap_packets(raw):
    magic = raw[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        e = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = ">"
    else:
        return None, []
    link = struct.unpack(e + "I", raw[20:24])[0] & 0x0FFFFFFF
    at, out = 24, []
    while at + 16 <= len(raw):
        incl = struct.unpack(e + "I", raw[at + 8 : at + 12])[0]
        out.append(raw[at + 16 : at + 16 + incl])
        at += 16 + incl
    return link, out


def layers(name, frame):
    """Splits an Ethernet frame into the parser targets' inputs."""
    put("ethernet", name, frame)
    at, et = 12, None
    while at + 2 <= len(frame):
        et = struct.unpack(">H", frame[at : at + 2])[0]
        if et in (0x8100, 0x88A8, 0x9100):
            at += 4
            continue
        at += 2
        break
    ip = frame[at:]
    if et == 0x0800 and len(ip) >= 20:
        put("ipv4", name, ip)
        proto, payload = ip[9], ip[(ip[0] & 0x0F) * 4 :]
    elif et == 0x86DD and len(ip) >= 40:
        put("ipv6", name, ip)
        proto, payload = ip[6], ip[40:]
    else:
        return
    if proto == 47 and len(payload) >= 4:
        put("gre", name, payload)
        flags, gproto = payload[0], struct.unpack(">H", payload[2:4])[0]
        hlen = 4 + 4 * sum(bool(flags & b) for b in (0x80, 0x20, 0x10))
        body = payload[hlen:]
        if gproto == 0x88BE and flags & 0x10:
            put("erspan_ii", name, body)
        elif gproto == 0x22EB:
            put("erspan_iii", name, body)
    elif proto == 17 and len(payload) >= 8:
        port = struct.unpack(">H", payload[2:4])[0]
        target = {4789: "vxlan", 6081: "geneve", 37008: "tzsp"}.get(port)
        if target:
            put(target, name, payload[8:])


def main():
    n = 0
    for path in sorted(CAPTURES.rglob("*.pcap*")):
        raw = path.read_bytes()
        stem = f"{path.parent.name}-{path.stem}"
        put("capture_reader", stem, raw)
        link, packets = pcap_packets(raw)
        if link is None or link not in LINKS:
            continue
        stream = bytes([LINKS[link]])
        for i, p in enumerate(packets):
            stream += struct.pack(">HB", len(p), 1) + p
            if link == 1:
                layers(f"{stem}-{i}", p)
            n += 1
        put("decap_link", stem, stream[: 1 << 16])
    print(f"seeded {n} packets from {CAPTURES} into {CORPUS}")


if __name__ == "__main__":
    main()
