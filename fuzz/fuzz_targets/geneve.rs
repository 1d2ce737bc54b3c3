//! GENEVE: `new_checked` (option walk), every accessor, `Repr::parse`, `parse(emit(x)) == x`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire_formats::wire::geneve::{MIN_HEADER_LEN, Packet, Repr};

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Packet::new_checked(data) else {
        return;
    };
    let _ = (p.version(), p.oam(), p.critical(), p.protocol(), p.vni());
    let header_len = p.header_len();
    assert_eq!(header_len, MIN_HEADER_LEN + p.options_len());
    assert_eq!(p.options().len(), p.options_len());
    assert_eq!(p.payload().len(), data.len() - header_len);
    let Ok(repr) = Repr::parse(&p) else {
        return;
    };
    let _ = repr.to_string();
    assert_eq!(repr.buffer_len(), header_len);
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
    let again = Packet::new_checked(&buf[..]).expect("emitted GENEVE header does not check");
    assert_eq!(Repr::parse(&again).as_ref(), Ok(&repr));
});
