//! ERSPAN Type III with the platform sub-header: `new_checked`, every accessor,
//! `ReprIII::parse`, `parse(emit(x)) == x`, and `Platform` decode/encode on any 8 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire_formats::wire::erspan::{PLATFORM_HEADER_LEN, PacketIII, Platform, ReprIII};

fuzz_target!(|data: &[u8]| {
    if let Some(raw) = data.get(..PLATFORM_HEADER_LEN) {
        let mut b = [0u8; PLATFORM_HEADER_LEN];
        b.copy_from_slice(raw);
        let platform = Platform::decode(b);
        let _ = platform.id();
        assert_eq!(Platform::decode(platform.encode()), platform);
    }
    let Ok(p) = PacketIII::new_checked(data) else {
        return;
    };
    let _ = (
        p.version(),
        p.vlan(),
        p.cos(),
        p.bso(),
        p.truncated(),
        p.session_id(),
        p.timestamp(),
        p.sgt(),
        p.pdu(),
        p.frame_type(),
        p.hardware_id(),
        p.direction(),
        p.granularity(),
        p.has_platform(),
        p.platform(),
    );
    let header_len = p.header_len();
    assert_eq!(p.payload().len(), data.len() - header_len);
    assert_eq!(p.platform().is_some(), p.has_platform());
    let Ok(repr) = ReprIII::parse(&p) else {
        return;
    };
    let _ = (repr.to_string(), repr.absolute_time_ns());
    assert_eq!(repr.buffer_len(), header_len);
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut PacketIII::new_unchecked(&mut buf[..]));
    let again = PacketIII::new_checked(&buf[..]).expect("emitted Type III header does not check");
    assert_eq!(ReprIII::parse(&again), Ok(repr));
    assert_eq!(
        buf[..12],
        data[..12],
        "every Type III header bit is in the Repr"
    );
});
