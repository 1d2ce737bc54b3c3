//! The packet index written beside each capture file (`<file>.twidx`), sans-IO.
//!
//! For each range of about [`log::RANGE_BYTES`] of whole capture records it keeps the range's
//! offset and length, its earliest and latest packet time, and what its inner frames hold —
//! interfaces, IP protocols, ports, IPv4 and IPv6 addresses ([`keys`], read at the offsets
//! libpcap reads them) — as compact sorted sets ([`codec`]), plus the sequence-gap comments of
//! its packets. A query reads the index first and then only the ranges that can hold a match
//! (the filter, run by libpcap, is always the final judge: the index only prunes).
//!
//! - [`keys`]: what one frame contributes, parsed once for the index and the traffic mix.
//! - [`log`]: [`KeyLog`], the keys of the packets of a buffer by range; encodes the records.
//! - [`mod@file`]: the file format: header, records framed with a CRC-32, [`file::parse`].
//! - [`codec`]: varints and sets.

pub mod codec;
pub mod file;
pub mod keys;
pub mod log;

pub use file::{BlockRecord, Comment, Parsed, Record, Stop, parse};
pub use keys::{FrameKeys, Inner};
pub use log::{KeyLog, is_gap_comment};

/// The index file beside a capture: `web_20261206T140200Z.pcapng.twidx`; a compressed capture
/// (`.gz`) keeps the index of its uncompressed bytes under the uncompressed name.
pub fn sidecar_name(capture: &str) -> String {
    format!("{}.twidx", capture.strip_suffix(".gz").unwrap_or(capture))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys_strategy() -> impl Strategy<Value = FrameKeys> {
        (
            0u16..256,
            proptest::array::uniform2(proptest::option::of(0u32..64)),
            proptest::array::uniform2(proptest::option::of(any::<u128>())),
            proptest::array::uniform2(proptest::option::of(any::<u8>())),
            proptest::array::uniform2(proptest::option::of(0u16..40)),
        )
            .prop_map(|(kind, v4, v6, protos, ports)| FrameKeys {
                kind,
                v4,
                v6,
                protos,
                ports,
            })
    }

    proptest! {
        /// Whatever is logged comes back: every range's records hold every key of every packet
        /// in it, the ranges cover the bytes without gaps, and the file parses whole.
        #[test]
        fn logged_keys_round_trip(
            packets in proptest::collection::vec((1usize..40_000, any::<u32>(), 0u32..5, keys_strategy(), proptest::option::of("[a-z ]{0,20}")), 0..200),
            base in 0u64..1_000_000,
        ) {
            let mut log = KeyLog::new(0);
            let mut end = 24;
            let mut want = Vec::new();
            for (len, ts, iface, keys, comment) in &packets {
                end += len;
                log.packet(end, u64::from(*ts), *iface, keys, comment.as_deref());
                want.push((end, u64::from(*ts), *iface, *keys, comment.clone()));
            }
            log.finish(end + 7);
            let mut out = file::header().to_vec();
            file::put_meta(&mut out, base, b"header");
            let n = log.encode(base, Some(base), &mut out);
            file::put_end(&mut out, base + end as u64 + 7);
            let parsed = parse(&out);
            prop_assert_eq!(parsed.stop, None);
            prop_assert_eq!(parsed.valid_len, out.len());
            prop_assert_eq!(parsed.records.len(), n + 2);
            let blocks: Vec<&BlockRecord> = parsed.records.iter().filter_map(|r| match r { Record::Block(b) => Some(b), _ => None }).collect();
            prop_assert_eq!(blocks[0].offset, base);
            for w in blocks.windows(2) {
                prop_assert_eq!(w[0].end(), w[1].offset);
            }
            prop_assert_eq!(blocks.last().unwrap().end(), base + end as u64 + 7);
            let mut i = 0;
            for b in &blocks {
                let mut n_packets = 0;
                while i < want.len() && base + want[i].0 as u64 <= b.end() && (n_packets < b.n_packets) {
                    let (_, ts, iface, keys, comment) = &want[i];
                    prop_assert!(b.ts_min_ns <= *ts && *ts <= b.ts_max_ns);
                    prop_assert!(b.ifaces().any_in((*iface).into(), (*iface).into()));
                    prop_assert_eq!(b.kinds & keys.kind, keys.kind);
                    for a in keys.v4.into_iter().flatten() {
                        prop_assert!(b.v4().any_in(a.into(), a.into()), "v4 {}", a);
                    }
                    for a in keys.v6.into_iter().flatten() {
                        prop_assert!(b.v6().any_in(a, a));
                    }
                    for p in keys.protos.into_iter().flatten() {
                        prop_assert!(b.protos().any_in(p.into(), p.into()));
                    }
                    for p in keys.ports.into_iter().flatten() {
                        prop_assert!(b.ports().any_in(p, p));
                    }
                    if let Some(c) = comment {
                        prop_assert!(b.comments.iter().any(|k| &k.text == c && k.ts_ns == *ts) || b.comments_dropped > 0);
                    }
                    n_packets += 1;
                    i += 1;
                }
                prop_assert_eq!(n_packets, b.n_packets);
            }
            prop_assert_eq!(i, want.len());
        }

        /// A cut or damaged index never panics and keeps the records before the damage.
        #[test]
        fn damaged_index_keeps_its_whole_records(cut in 0usize..2000, flip in proptest::option::of((0usize..2000, 1u8..=255))) {
            let mut log = KeyLog::new(0);
            for i in 0..300u32 {
                let keys = FrameKeys { kind: 1, v4: [Some(i), Some(i * 7)], ports: [Some(80), None], ..FrameKeys::default() };
                log.packet(24 + 1000 * i as usize, u64::from(i), 0, &keys, None);
            }
            log.finish(24 + 300_000);
            let mut out = file::header().to_vec();
            log.encode(0, None, &mut out);
            let whole = parse(&out).records;
            let mut bad = out.clone();
            if let Some((at, x)) = flip {
                let at = at % bad.len();
                bad[at] ^= x;
            }
            bad.truncate(cut.min(bad.len()));
            let p = parse(&bad);
            prop_assert!(p.valid_len <= bad.len());
            prop_assert!(p.records.len() <= whole.len());
            prop_assert_eq!(&p.records[..], &whole[..p.records.len()]);
            if p.valid_len < bad.len() {
                prop_assert!(p.stop.is_some());
            }
        }
    }

    #[test]
    fn a_value_seen_in_one_range_is_recorded_again_in_the_next() {
        let mut log = KeyLog::new(0);
        let keys = FrameKeys {
            kind: keys::kind::ETH_IPV4,
            v4: [Some(1), Some(2)],
            v6: [Some(9), None],
            ports: [Some(53), None],
            protos: [Some(17), None],
        };
        log.packet(100, 5, 3, &keys, None);
        log.cut(100);
        log.packet(200, 6, 3, &keys, Some("tapwire: sequence gap, 1 lost"));
        log.finish(200);
        let mut out = file::header().to_vec();
        assert_eq!(log.encode(1000, None, &mut out), 2);
        let p = parse(&out);
        for r in &p.records {
            let Record::Block(b) = r else { panic!() };
            assert_eq!(b.v4().iter().collect::<Vec<_>>(), [1, 2]);
            assert_eq!(b.v6().iter().collect::<Vec<_>>(), [9]);
            assert_eq!(b.ports().to_vec(), [53]);
            assert_eq!(b.ifaces().iter().collect::<Vec<_>>(), [3]);
        }
        let Record::Block(second) = &p.records[1] else {
            panic!()
        };
        assert_eq!((second.offset, second.len), (1100, 100));
        assert_eq!(second.comments[0].text, "tapwire: sequence gap, 1 lost");
        assert!(is_gap_comment(&second.comments[0].text));
        assert!(!is_gap_comment("tapwire: truncated by the sender"));
    }

    #[test]
    fn not_an_index() {
        assert_eq!(parse(b"hello").stop, Some(Stop::NotIndex));
        let mut h = file::header();
        h[8] = 9;
        assert_eq!(parse(&h).stop, Some(Stop::Version(9)));
        assert_eq!(
            parse(&file::header()),
            Parsed {
                valid_len: 16,
                ..Parsed::default()
            }
        );
        assert_eq!(sidecar_name("a.pcapng.gz"), "a.pcapng.twidx");
        assert_eq!(sidecar_name("a.pcap"), "a.pcap.twidx");
    }
}
