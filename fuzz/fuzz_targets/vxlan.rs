//! VXLAN: `new_checked`, every accessor, `Repr::parse`, `parse(emit(x)) == x`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire_formats::wire::vxlan::{HEADER_LEN, Packet, Repr};

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Packet::new_checked(data) else {
        return;
    };
    let _ = (p.flags(), p.vni_valid(), p.vni());
    assert_eq!(p.payload().len(), data.len() - HEADER_LEN);
    let Ok(repr) = Repr::parse(&p) else {
        assert!(!p.vni_valid());
        return;
    };
    let _ = repr.to_string();
    let mut buf = [0u8; HEADER_LEN];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
    assert_eq!(
        Repr::parse(&Packet::new_checked(&buf[..]).unwrap()),
        Ok(repr)
    );
    assert_eq!(buf[4..7], data[4..7]);
});
