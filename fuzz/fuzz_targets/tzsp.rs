//! TZSP: `new_checked` (tagged-field walk), every accessor, `Repr::parse`, `parse(emit(x)) == x`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire_formats::wire::tzsp::{Packet, Repr, Type};

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Packet::new_checked(data) else {
        return;
    };
    let t = p.packet_type();
    assert_eq!(Type::from(u8::from(t)), t);
    let _ = (p.version(), p.encapsulation());
    let header_len = p.header_len();
    assert!(header_len <= data.len());
    let n_fields = p.fields().count();
    let field_bytes: usize = p.fields().map(|(_, v)| v.len()).sum();
    assert!(field_bytes <= header_len);
    assert_eq!(p.payload().len(), data.len() - header_len);
    let Ok(repr) = Repr::parse(&p) else {
        return;
    };
    let _ = repr.to_string();
    assert_eq!(repr.fields.len(), n_fields);
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut buf);
    let again = Packet::new_checked(&buf[..]).expect("emitted TZSP header does not check");
    assert_eq!(again.header_len(), buf.len());
    assert_eq!(Repr::parse(&again).as_ref(), Ok(&repr));
});
