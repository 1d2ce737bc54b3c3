//! Ethernet: `new_checked`, every accessor, the VLAN walk (`untag`), `Repr::parse`,
//! `parse(emit(x)) == x`, and `insert_vlan_tag` followed by `untag` finding the new tag.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire_formats::wire::ethernet::{
    EtherType, Frame, HEADER_LEN, Repr, VLAN_TAG_LEN, insert_vlan_tag,
};

fuzz_target!(|data: &[u8]| {
    let Ok(f) = Frame::new_checked(data) else {
        assert!(insert_vlan_tag(data, 1, &mut Vec::new()).is_err());
        return;
    };
    let _ = (f.dst_addr(), f.src_addr(), f.ethertype().to_string());
    let untagged = f.untag();
    if let Ok(u) = untagged {
        assert!(u.offset >= HEADER_LEN && u.offset <= data.len());
        assert!(!u.ethertype.is_vlan_tag());
        assert_eq!((u.offset - HEADER_LEN) % VLAN_TAG_LEN, 0);
        assert_eq!(u.vlans[0].is_some(), u.offset > HEADER_LEN);
    }

    let repr = Repr::parse(&f).unwrap();
    let mut buf = [0u8; HEADER_LEN];
    repr.emit(&mut Frame::new_unchecked(&mut buf[..]));
    assert_eq!(
        Repr::parse(&Frame::new_checked(&buf[..]).unwrap()),
        Ok(repr)
    );
    assert_eq!(buf[..], data[..HEADER_LEN]);
    assert_eq!(EtherType::from(u16::from(repr.ethertype)), repr.ethertype);

    let tci = u16::from_be_bytes([data[0], data[1]]);
    let mut tagged = Vec::new();
    insert_vlan_tag(data, tci, &mut tagged).expect("a checked frame takes a tag");
    assert_eq!(tagged.len(), data.len() + VLAN_TAG_LEN);
    let t = Frame::new_checked(&tagged[..]).unwrap().untag();
    match (untagged, t) {
        (Ok(u), Ok(t)) => {
            assert_eq!(t.ethertype, u.ethertype);
            assert_eq!(t.offset, u.offset + VLAN_TAG_LEN);
            assert_eq!(t.vlans[0], Some(tci & 0x0fff));
            assert_eq!(t.vlans[1], u.vlans[0]);
        }
        // One more tag may exceed the walk's bound, never the other way round.
        (Ok(_), Err(_)) | (Err(_), Err(_)) => {}
        (Err(e), Ok(t)) => panic!("untagged frame failed ({e}) but tagged one parsed: {t:?}"),
    }
});
