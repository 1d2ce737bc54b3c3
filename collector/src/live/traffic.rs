//! Cheap per-session traffic summaries for the stats API: the inner protocol mix and the top
//! talkers (inner source addresses by bytes), in constant memory.

use std::net::IpAddr;

use tapwire_api_types::{ProtocolMix, Talker};
use tapwire_formats::index::keys::{Class, L3};

/// Counts one inner frame, as [`tapwire_formats::index::Inner::parse`] classified it, in
/// `mix`; returns its source address when it is IP.
pub fn classify(mix: &mut ProtocolMix, class: &Class) -> Option<IpAddr> {
    match class.l3 {
        L3::Ipv4 => mix.ipv4 += 1,
        L3::Ipv6 => mix.ipv6 += 1,
        L3::Arp => {
            mix.arp += 1;
            return None;
        }
        L3::Other => {
            mix.other += 1;
            return None;
        }
        L3::Uncounted => return None,
    }
    match class.proto {
        Some(6) => mix.tcp += 1,
        Some(17) => mix.udp += 1,
        Some(1 | 58) => mix.icmp += 1,
        _ => {}
    }
    class.src
}

/// The heaviest inner sources by bytes, kept with the space-saving algorithm: a bounded table
/// where a newcomer replaces the lightest entry and inherits its count, so heavy hitters are
/// never missed and counts are upper bounds.
#[derive(Debug, Clone, Default)]
pub struct Talkers {
    entries: Vec<(IpAddr, u64, u64)>,
}

/// Entries tracked; the API shows the top ten.
const TRACKED: usize = 32;
const SHOWN: usize = 10;

impl Talkers {
    pub fn add(&mut self, addr: IpAddr, bytes: u64) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.0 == addr) {
            e.1 += bytes;
            e.2 += 1;
            return;
        }
        if self.entries.len() < TRACKED {
            self.entries.push((addr, bytes, 1));
            return;
        }
        if let Some(min) = self.entries.iter_mut().min_by_key(|e| e.1) {
            *min = (addr, min.1 + bytes, min.2 + 1);
        }
    }

    pub fn top(&self) -> Vec<Talker> {
        let mut v = self.entries.clone();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.into_iter()
            .take(SHOWN)
            .map(|(a, bytes, packets)| Talker {
                addr: a.to_string(),
                bytes,
                packets,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapwire_formats::capture::LinkType;
    use tapwire_formats::index::Inner;

    fn count(m: &mut ProtocolMix, link: LinkType, frame: &[u8]) -> Option<IpAddr> {
        classify(m, &Inner::parse(link, frame).class)
    }

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn protocol_mix() {
        let mut m = ProtocolMix::default();
        let mut v4 = vec![
            0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        assert_eq!(
            count(&mut m, LinkType::Ethernet, &eth(0x0800, &v4)),
            Some(IpAddr::from([10, 0, 0, 1]))
        );
        v4[9] = 17;
        count(&mut m, LinkType::Raw, &v4);
        let mut tagged = vec![0x00, 0x64, 0x08, 0x00];
        tagged.extend_from_slice(&v4);
        count(&mut m, LinkType::Ethernet, &eth(0x8100, &tagged));
        count(&mut m, LinkType::Ethernet, &eth(0x0806, &[0; 28]));
        count(&mut m, LinkType::Ethernet, &eth(0x88cc, &[0; 28]));
        let mut v6 = vec![0x60, 0, 0, 0, 0, 8, 58, 64];
        v6.extend_from_slice(&[0; 32]);
        count(&mut m, LinkType::Ethernet, &eth(0x86dd, &v6));
        assert_eq!(
            m,
            ProtocolMix {
                ipv4: 3,
                ipv6: 1,
                arp: 1,
                tcp: 1,
                udp: 2,
                icmp: 1,
                other: 1
            }
        );
    }

    #[test]
    fn heavy_hitters_survive_many_light_ones() {
        let mut t = Talkers::default();
        for i in 0..1000u32 {
            t.add(IpAddr::from([10, 0, 0, 1]), 1500);
            t.add(IpAddr::from((0x0a01_0000 + i).to_be_bytes()), 60);
        }
        let top = t.top();
        assert_eq!(top.len(), SHOWN);
        assert_eq!(top[0].addr, "10.0.0.1");
        assert_eq!(top[0].bytes, 1_500_000);
        assert_eq!(top[0].packets, 1000);
    }
}
