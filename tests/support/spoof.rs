//! Many mirror packets quickly: ERSPAN II over GRE and VXLAN frames built byte by byte (no
//! tapwire code), written to a classic pcap for tcpreplay. scapy takes minutes for the
//! hundred thousand spoofed sources a flood test needs; this takes milliseconds.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

/// The mirrored frame every packet carries: 60 bytes of Ethernet + IPv4 + UDP, with `n` in
/// the UDP payload so that frames differ.
pub fn inner_frame(n: u32) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x0b]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x0a]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = ipv4_header([192, 168, 1, 1], [192, 168, 1, 2], 17, 46);
    f[14..34].copy_from_slice(&ip);
    f[34..36].copy_from_slice(&4000u16.to_be_bytes());
    f[36..38].copy_from_slice(&5000u16.to_be_bytes());
    f[38..40].copy_from_slice(&26u16.to_be_bytes());
    f[42..46].copy_from_slice(&n.to_be_bytes());
    f
}

/// A 20-byte IPv4 header with its checksum, DF set.
fn ipv4_header(src: [u8; 4], dst: [u8; 4], protocol: u8, payload_len: usize) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    h[6] = 0x40;
    h[8] = 64;
    h[9] = protocol;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let mut sum: u32 = h
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    h
}

/// Ethernet (`src_mac` to `dst_mac`) + IPv4 (`src` to `dst`) + `payload` as `protocol`.
fn outer(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(34 + payload.len());
    f.extend(dst_mac);
    f.extend(src_mac);
    f.extend([0x08, 0x00]);
    f.extend(ipv4_header(
        src.octets(),
        dst.octets(),
        protocol,
        payload.len(),
    ));
    f.extend(payload);
    f
}

/// Where the packets go: the link's MAC addresses and the collector's address.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub dst: Ipv4Addr,
}

impl Link {
    /// A GRE (with sequence `seq`) + ERSPAN II (session `session`, index 1) packet from `src`
    /// carrying `inner`.
    pub fn erspan_ii(&self, src: Ipv4Addr, session: u16, seq: u32, inner: &[u8]) -> Vec<u8> {
        let mut p = vec![0x10, 0x00, 0x88, 0xbe];
        p.extend(seq.to_be_bytes());
        // Ver 1, VLAN 0 | COS 0, En 0, T 0, session id.
        p.extend([0x10, 0x00]);
        p.extend((session & 0x3ff).to_be_bytes());
        p.extend([0, 0, 0, 1]);
        p.extend(inner);
        outer(self.src_mac, self.dst_mac, src, self.dst, 47, &p)
    }

    /// A UDP (port 4789, checksum 0) + VXLAN (VNI `vni`) packet from `src` carrying `inner`.
    pub fn vxlan(&self, src: Ipv4Addr, vni: u32, inner: &[u8]) -> Vec<u8> {
        let mut p = Vec::with_capacity(16 + inner.len());
        p.extend(49152u16.to_be_bytes());
        p.extend(4789u16.to_be_bytes());
        p.extend(((16 + inner.len()) as u16).to_be_bytes());
        p.extend([0, 0]);
        p.extend([0x08, 0, 0, 0]);
        p.extend((vni << 8).to_be_bytes());
        p.extend(inner);
        outer(self.src_mac, self.dst_mac, src, self.dst, 17, &p)
    }
}

/// The `i`th of many spoofed outer sources, all in 100.64.0.0/10 (shared address space: never
/// a real peer of the lab).
pub fn spoofed(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x6440_0000 | (i & 0x003f_ffff))
}

/// `"02:77:00:00:00:01"` as bytes.
pub fn mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (b, h) in m.iter_mut().zip(s.split(':')) {
        *b = u8::from_str_radix(h, 16).expect("hex MAC");
    }
    m
}

/// Writes `frames` as a classic microsecond pcap of Ethernet frames, 1 µs apart.
pub fn write_pcap(path: &Path, frames: impl IntoIterator<Item = Vec<u8>>) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("create pcap"));
    let mut header = Vec::with_capacity(24);
    header.extend(0xa1b2_c3d4u32.to_le_bytes());
    header.extend(2u16.to_le_bytes());
    header.extend(4u16.to_le_bytes());
    header.extend([0u8; 8]);
    header.extend(65_535u32.to_le_bytes());
    header.extend(1u32.to_le_bytes());
    out.write_all(&header).expect("write pcap");
    for (i, f) in frames.into_iter().enumerate() {
        let us = i as u32;
        let mut rec = Vec::with_capacity(16 + f.len());
        rec.extend((1_700_000_000 + us / 1_000_000).to_le_bytes());
        rec.extend((us % 1_000_000).to_le_bytes());
        rec.extend((f.len() as u32).to_le_bytes());
        rec.extend((f.len() as u32).to_le_bytes());
        rec.extend(f);
        out.write_all(&rec).expect("write pcap");
    }
    out.flush().expect("write pcap");
}
