//! `defrag::Reassembler` driven by a sequence of fragment pushes decoded from the input.
//!
//! Input: 4 bytes of bounds (max datagrams, max bytes, timeout), then pushes of 5 bytes each:
//! `ident (1) | offset in 8-byte units (2, big-endian, masked to 13 bits) | more:1 len:7 (1) |
//! dt (1)`; a push's payload is `len * 8 + (0..8 if last)` bytes derived from ident and offset,
//! so that retransmissions carry the same bytes.
//!
//! Asserts: buffered bytes never exceed `max_bytes` plus one datagram; never more than
//! `max_datagrams` pending; a `Complete` datagram has the length its last fragment implied and
//! the bytes every fragment put in it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire_formats::defrag::{Config, Key, MAX_DATAGRAM, Push, Reassembler};

fn byte_at(ident: u8, at: usize) -> u8 {
    (at as u8).wrapping_mul(31) ^ ident
}

fuzz_target!(|data: &[u8]| {
    let Some((b, mut rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let config = Config {
        max_datagrams: 1 + usize::from(b[0] & 0x0f),
        max_bytes: usize::from(u16::from_be_bytes([b[1], b[2]])) * 4,
        timeout_ns: 1 + u64::from(b[3]) * 1000,
    };
    let mut r = Reassembler::new(config);
    let mut now_ns = 0u64;
    // The total length each datagram's last fragment announced, while it is pending.
    let mut last_end: [Option<usize>; 256] = [None; 256];
    while let Some((p, tail)) = rest.split_first_chunk::<5>() {
        rest = tail;
        let ident = p[0] & 0x07;
        let offset = usize::from(u16::from_be_bytes([p[1], p[2]]) & 0x1fff) * 8;
        let more = p[3] & 0x80 != 0;
        let mut len = usize::from(p[3] & 0x7f) * 8;
        if !more {
            len += usize::from(p[4] & 0x07);
        }
        now_ns += u64::from(p[4]) * 50;
        let payload: Vec<u8> = (offset..offset + len)
            .map(|at| byte_at(ident, at))
            .collect();
        let key = Key {
            src: [10, 0, 0, 1].into(),
            dst: [10, 0, 0, 2].into(),
            ident: u32::from(ident),
            protocol: 47,
        };
        match r.push(key, offset, more, &payload, now_ns) {
            Push::Complete(d) => {
                let end = if more {
                    last_end[usize::from(ident)]
                } else {
                    Some(offset + len)
                };
                assert_eq!(Some(d.len()), end, "push {offset}+{len} more={more}");
                for (at, &byte) in d.iter().enumerate() {
                    assert_eq!(byte, byte_at(ident, at), "byte {at} of {}", d.len());
                }
                last_end[usize::from(ident)] = None;
            }
            Push::Held => {
                if !more {
                    last_end[usize::from(ident)] = Some(offset + len);
                }
            }
            Push::Invalid => last_end[usize::from(ident)] = None,
        }
        assert!(
            r.buffered_bytes() <= config.max_bytes + MAX_DATAGRAM,
            "{} bytes buffered, bound {}",
            r.buffered_bytes(),
            config.max_bytes
        );
        assert!(r.pending() <= config.max_datagrams);
    }
});
