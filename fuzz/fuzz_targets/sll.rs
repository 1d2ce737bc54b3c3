//! Linux cooked capture headers SLL and SLL2: never panic, lengths inside the buffer, and the
//! link payload found through `decap::link_payload` consistent with the parsed header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire_formats::capture::LinkType;
use tapwire_formats::decap::link_payload;
use tapwire_formats::wire::ethernet::EtherType;
use tapwire_formats::wire::sll::{parse_sll, parse_sll2};

fuzz_target!(|data: &[u8]| {
    for (link, parsed) in [
        (LinkType::LinuxSll, parse_sll(data)),
        (LinkType::LinuxSll2, parse_sll2(data)),
    ] {
        let payload = link_payload(link, data);
        match parsed {
            Ok(c) => {
                assert!(c.header_len <= data.len());
                let ip = matches!(c.ethertype, EtherType::Ipv4 | EtherType::Ipv6);
                let payload = payload.expect("parsed header but link_payload failed");
                assert_eq!(payload.is_some(), ip);
                if let Some(p) = payload {
                    assert_eq!(p.len(), data.len() - c.header_len);
                }
            }
            Err(e) => assert_eq!(payload, Err(e)),
        }
    }
});
