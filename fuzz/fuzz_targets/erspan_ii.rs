//! ERSPAN Type II: `new_checked`, every accessor, `ReprII::parse`, `parse(emit(x)) == x`, and
//! emit reproducing every bit but the reserved ones.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire_formats::wire::erspan::{self, PacketII, ReprII, TYPE_II_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let _ = erspan::version(data);
    let Ok(p) = PacketII::new_checked(data) else {
        return;
    };
    let _ = (
        p.version(),
        p.vlan(),
        p.cos(),
        p.encap(),
        p.truncated(),
        p.session_id(),
        p.index(),
    );
    assert_eq!(p.payload().len(), data.len() - TYPE_II_HEADER_LEN);
    let Ok(repr) = ReprII::parse(&p) else {
        return;
    };
    let _ = repr.to_string();
    let mut buf = [0u8; TYPE_II_HEADER_LEN];
    repr.emit(&mut PacketII::new_unchecked(&mut buf[..]));
    assert_eq!(
        ReprII::parse(&PacketII::new_checked(&buf[..]).unwrap()),
        Ok(repr)
    );
    // Everything but the 12 reserved bits (byte 4 and the high nibble of byte 5).
    assert_eq!(buf[..4], data[..4]);
    assert_eq!(buf[5] & 0x0f, data[5] & 0x0f);
    assert_eq!(buf[6..8], data[6..8]);
});
