//! IPv4: `new_checked`, every accessor, `Repr::parse`, `parse(emit(x)) == x` with a valid
//! checksum, and `fill_checksum` always verifying.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire_formats::wire::ipv4::{MIN_HEADER_LEN, Packet, Repr};

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Packet::new_checked(data) else {
        return;
    };
    let _ = (
        p.version(),
        p.dscp_ecn(),
        p.ident(),
        p.dont_frag(),
        p.more_frags(),
        p.frag_offset(),
        p.is_fragment(),
        p.ttl(),
        p.protocol().to_string(),
        p.checksum(),
        p.src_addr(),
        p.dst_addr(),
        p.verify_checksum(),
    );
    let header_len = p.header_len();
    let total_len = usize::from(p.total_len());
    assert!(MIN_HEADER_LEN <= header_len && header_len <= total_len && total_len <= data.len());
    assert_eq!(p.payload().len(), total_len - header_len);

    let mut copy = data.to_vec();
    Packet::new_unchecked(&mut copy[..]).fill_checksum();
    assert!(Packet::new_checked(&copy[..]).unwrap().verify_checksum());

    let Ok(repr) = Repr::parse(&p) else {
        assert!(p.is_fragment());
        return;
    };
    let _ = repr.to_string();
    let mut buf = vec![0u8; repr.buffer_len() + repr.payload_len];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
    let again = Packet::new_checked(&buf[..]).expect("emitted IPv4 header does not check");
    assert!(again.verify_checksum());
    assert_eq!(Repr::parse(&again), Ok(repr));
});
