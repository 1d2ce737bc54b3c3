//! IPv6: `new_checked`, every accessor, the extension-header walk (`upper_layer`), `Repr::parse`
//! and `parse(emit(x)) == x`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire_formats::wire::ipv6::{HEADER_LEN, Packet, Repr};

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Packet::new_checked(data) else {
        return;
    };
    let _ = (
        p.version(),
        p.flow_label(),
        p.next_header().to_string(),
        p.hop_limit(),
        p.src_addr(),
        p.dst_addr(),
    );
    let end = HEADER_LEN + usize::from(p.payload_len());
    assert!(end <= data.len());
    assert_eq!(p.payload().len(), end - HEADER_LEN);
    if let Ok(ul) = p.upper_layer() {
        assert!(
            HEADER_LEN <= ul.offset && ul.offset <= end,
            "{ul:?} past {end}"
        );
        assert_eq!(p.from_offset(ul.offset).len(), end - ul.offset);
        if let Some(f) = ul.fragment {
            assert_eq!(f.offset % 8, 0);
        }
    }
    let _ = p.from_offset(usize::MAX);

    let Ok(repr) = Repr::parse(&p) else {
        return;
    };
    let _ = repr.to_string();
    let mut buf = vec![0u8; repr.buffer_len() + repr.payload_len];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
    let again = Packet::new_checked(&buf[..]).expect("emitted IPv6 header does not check");
    assert_eq!(Repr::parse(&again), Ok(repr));
    assert_eq!(buf[4..HEADER_LEN], data[4..HEADER_LEN]);
});
