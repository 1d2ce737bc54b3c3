//! GRE: `new_checked`, every accessor, `Repr::parse`, and `parse(emit(x)) == x`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire_formats::wire::gre::{Packet, Repr};

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Packet::new_checked(data) else {
        return;
    };
    let _ = (
        p.checksum_present(),
        p.routing_present(),
        p.key_present(),
        p.sequence_present(),
        p.version(),
        p.protocol().to_string(),
        p.checksum(),
        p.key(),
        p.sequence(),
        p.verify_checksum(),
    );
    let header_len = p.header_len();
    assert!(header_len <= data.len());
    assert_eq!(p.payload().len(), data.len() - header_len);

    // A filled checksum always verifies.
    let mut copy = data.to_vec();
    let mut m = Packet::new_unchecked(&mut copy[..]);
    m.fill_checksum();
    if let Some(seq) = p.sequence() {
        m.set_sequence(seq.wrapping_add(1));
        m.fill_checksum();
    }
    assert!(Packet::new_checked(&copy[..]).unwrap().verify_checksum());

    let Ok(repr) = Repr::parse(&p) else {
        return;
    };
    let _ = repr.to_string();
    assert_eq!(repr.buffer_len(), header_len);
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
    let again = Packet::new_checked(&buf[..]).expect("emitted GRE header does not check");
    assert_eq!(Repr::parse(&again), Ok(repr));
    // Protocol, key and sequence come back byte for byte (the checksum value is not in the
    // Repr: emit leaves it zero for `fill_checksum`).
    let opts = if repr.checksum { 8 } else { 4 };
    assert_eq!(buf[2..4], data[2..4]);
    assert_eq!(buf[opts..], data[opts..header_len]);
});
