//! The whole `Decapsulator::decap_link` over a stream of packets, so that outer-fragment
//! reassembly keeps state from one packet to the next.
//!
//! Input: byte 0 picks the link type (low nibble) and the reassembly bounds (high nibble); then
//! packets, each `len (2 bytes, big-endian) | dt (1 byte) | len bytes`. The fake clock advances
//! by `dt << 26` ns (up to ~17 s) before each packet, so the 30 s timeout is crossed too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire_formats::capture::LinkType;
use tapwire_formats::decap::{Config, Decapsulator, Kind, Outcome};
use tapwire_formats::defrag;

const LINKS: [LinkType; 9] = [
    LinkType::Ethernet,
    LinkType::Raw,
    LinkType::Null,
    LinkType::Loop,
    LinkType::LinuxSll,
    LinkType::LinuxSll2,
    LinkType::Ipv4,
    LinkType::Ipv6,
    LinkType::Other(147),
];

fuzz_target!(|data: &[u8]| {
    let Some((&head, mut rest)) = data.split_first() else {
        return;
    };
    let link = LINKS[usize::from(head & 0x0f) % LINKS.len()];
    let bounds = if head & 0x10 != 0 {
        defrag::Config {
            max_datagrams: 1 + usize::from(head >> 5),
            max_bytes: 1 << (6 + (head >> 5)),
            timeout_ns: 30_000_000_000,
        }
    } else {
        defrag::Config::default()
    };
    let mut d = Decapsulator::new(Config {
        defrag: bounds,
        ..Config::default()
    });
    let mut now_ns = 1_700_000_000_000_000_000u64;
    while rest.len() >= 3 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        now_ns += u64::from(rest[2]) << 26;
        rest = &rest[3..];
        let (packet, tail) = rest.split_at(len.min(rest.len()));
        rest = tail;
        match d.decap_link(link, packet, now_ns) {
            Outcome::Mirrored(m) => {
                assert!(!m.frame.is_empty());
                assert!(m.frame.len() <= defrag::MAX_DATAGRAM);
                let id_bits = match m.key.kind {
                    Kind::ErspanII | Kind::ErspanIII => 10,
                    Kind::Vxlan | Kind::Geneve => 24,
                    Kind::Gre => 32,
                    Kind::ErspanI | Kind::Tzsp => 0,
                };
                assert!(u64::from(m.key.id) < 1u64 << id_bits, "{:?}", m.key);
                if let Some(v) = m.meta.vlan {
                    assert!(v != 0 && v < 4096);
                }
                let _ = (m.key.to_string(), m.key.file_stem());
            }
            Outcome::NotMirror(n) => {
                let _ = n.as_str();
            }
            Outcome::Malformed(r) => {
                let _ = r.to_string();
            }
            Outcome::Held => {}
        }
        assert!(d.pending_datagrams() <= bounds.max_datagrams);
        let s = d.defrag_stats();
        assert!(s.reassembled + s.invalid <= s.fragments);
    }
    d.expire(now_ns + 31_000_000_000);
    assert_eq!(d.pending_datagrams(), 0);
});
