//! `CaptureReader` on arbitrary bytes: reading every record must end, without panicking, in
//! fewer records than the input could hold; on classic pcap, `PcapSlice` (the in-place reader
//! of mapped inputs) must give the same records and stop for the same reason. Then a few
//! packets derived from the input are encoded with `Encoder` in each format and must read back
//! equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire_formats::capture::{
    CaptureReader, Encoder, Format, InterfaceInfo, LinkType, PacketInfo, PcapSlice, is_pcap,
};
use tapwire_formats::wire::erspan::Direction;

/// The smallest record either format can hold: a pcapng block is at least 12 bytes, a pcap
/// record header 16.
const MIN_RECORD: usize = 12;

fuzz_target!(|data: &[u8]| {
    read_all(data);
    round_trip(data);
});

fn read_all(data: &[u8]) {
    let Ok(mut r) = CaptureReader::new(data) else {
        return;
    };
    let mut n = 0usize;
    while let Ok(Some(rec)) = r.next_record() {
        assert!(rec.orig_len as usize >= rec.data.len() || rec.data.len() > u32::MAX as usize);
        let _ = rec.link.to_string();
        n += 1 + r.take_skipped().len();
        assert!(
            n <= data.len() / MIN_RECORD + 1,
            "{n} records out of {} bytes",
            data.len()
        );
    }
    let _ = r.stopped();
    // Reading past the end stays at the end.
    assert!(matches!(r.next_record(), Ok(None) | Err(_)));
    same_in_place(data);
}

/// Classic pcap read in place gives what the stream reader gives.
fn same_in_place(data: &[u8]) {
    if !is_pcap(data) {
        return;
    }
    let (Ok(mut stream), Ok(mut in_place)) = (CaptureReader::new(data), PcapSlice::new(data))
    else {
        assert!(CaptureReader::new(data).is_err() && PcapSlice::new(data).is_err());
        return;
    };
    loop {
        let a = stream.next_record().expect("no I/O errors from a slice");
        let b = in_place.next_record();
        match (a, b) {
            (None, None) => break,
            (Some(a), Some(b)) => {
                assert_eq!((a.link, a.ts_ns, a.orig_len, a.data), (b.link, b.ts_ns, b.orig_len, b.data));
                assert!(in_place.offset() <= data.len());
            }
            (a, b) => panic!("stream {:?}, in place {:?}", a.map(|r| r.ts_ns), b.map(|r| r.ts_ns)),
        }
    }
    assert_eq!(stream.stopped(), in_place.stopped());
}

fn round_trip(data: &[u8]) {
    let Some((&head, body)) = data.split_first() else {
        return;
    };
    let link = [
        LinkType::Ethernet,
        LinkType::Raw,
        LinkType::LinuxSll2,
        LinkType::Other(147),
    ][usize::from(head & 3)];
    // Packets: the input cut into up to 8 pieces at bytes that name a length.
    let mut packets = Vec::new();
    let mut rest = body;
    let mut ts_ns = u64::from(head) * 1_000_000_007;
    while packets.len() < 8
        && let Some((&len, tail)) = rest.split_first()
    {
        let (d, tail) = tail.split_at(usize::from(len).min(tail.len()));
        rest = tail;
        ts_ns = ts_ns
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(u64::from(len));
        packets.push((ts_ns, d));
    }
    for format in [
        Format::Pcap { nanos: false },
        Format::Pcap { nanos: true },
        Format::Pcapng,
    ] {
        let mut enc = Encoder::new(format);
        let id = enc
            .add_interface(&InterfaceInfo {
                link,
                name: "fuzz".into(),
                // pcapng options hold at most 65535 bytes; a longer description is an error.
                description: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
                snaplen: 65_535,
            })
            .unwrap();
        let mut want = Vec::new();
        for (i, &(ts, d)) in packets.iter().enumerate() {
            // Classic pcap holds 32-bit seconds; keep within it there.
            let ts = match format {
                Format::Pcap { .. } => ts % (u64::from(u32::MAX) * 1_000_000_000),
                Format::Pcapng => ts,
            };
            let comment = String::from_utf8_lossy(d);
            enc.packet(
                id,
                &PacketInfo {
                    ts_ns: ts,
                    orig_len: d.len() as u32 + i as u32,
                    data: d,
                    direction: (i % 2 == 0).then_some(Direction::Egress),
                    comment: (i % 3 == 0).then_some(&*comment),
                },
            )
            .unwrap();
            let ts = match format {
                Format::Pcap { nanos: false } => ts / 1000 * 1000,
                _ => ts,
            };
            want.push((ts, d.len() as u32 + i as u32, d));
        }
        let bytes = enc.take_bytes();
        let mut r = CaptureReader::new(&bytes[..]).expect("own file does not open");
        for (i, &(ts, orig_len, d)) in want.iter().enumerate() {
            let rec = r
                .next_record()
                .expect("own file does not read")
                .unwrap_or_else(|| panic!("{format:?}: record {i} of {} missing", want.len()));
            assert_eq!(rec.link, link, "{format:?}");
            assert_eq!(rec.ts_ns, ts, "{format:?} record {i}");
            assert_eq!(rec.orig_len, orig_len, "{format:?} record {i}");
            assert_eq!(rec.data, d, "{format:?} record {i}");
        }
        assert!(r.next_record().unwrap().is_none());
        assert_eq!(r.stopped(), None);
        assert!(r.take_skipped().is_empty());
    }
}
