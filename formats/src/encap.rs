//! Encapsulation, the probe's half of the pipeline: the GRE (and ERSPAN) header that carries one
//! captured frame to a collector. The caller owns the buffers and sends the header and the frame
//! as two parts of one datagram, so the frame is never copied; the kernel adds the IP header.
//!
//! - ERSPAN Type II: session id, VLAN (tag kept in the frame: `En` = 3), the sender's index
//!   (`ifindex << 1 | egress`), T when the frame was cut.
//! - ERSPAN Type III: the D bit, a hardware id, and the capture time with enough bits for the
//!   collector to restore absolute time: 100 ns granularity with the upper 32 bits in platform
//!   sub-header 3, or IEEE 1588 (nanoseconds in the header, seconds in sub-header 5).
//! - GRE-TEB: key = session id, and a sequence number.
//!
//! Any of them may carry a GRE checksum ([`Encapsulator::with_gre_checksum`]): the header then
//! has the C bit and 4 more bytes, and [`fill_gre_checksum`] computes the sum once the frame's
//! bytes are known (over the header and the frame's parts, wherever they lie).

use crate::wire::erspan::{
    Bso, Cos, Direction, Encap as En, FrameType, Granularity, HardwareId, Index, PacketII,
    PacketIII, Platform, ReprII, ReprIII, SessionId, VlanId,
};
use crate::wire::gre;

/// The longest header [`Encapsulator::header`] writes: GRE with checksum and sequence (12)
/// plus ERSPAN III with its platform sub-header (20).
pub const MAX_HEADER_LEN: usize = 32;
/// Where the GRE checksum lies in a header with the C bit.
const GRE_CHECKSUM_AT: usize = 4;

/// Which time format ERSPAN Type III carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeFormat {
    /// 100 ns ticks since the epoch: low 32 bits in the header, high 32 in platform id 3.
    Nanos100,
    /// IEEE 1588: nanoseconds in the header, seconds in platform id 5.
    Ieee1588,
}

/// The encapsulation a probe sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    /// ERSPAN Type II.
    ErspanII,
    /// ERSPAN Type III with an absolute capture time.
    ErspanIII {
        /// The hardware id sent.
        hardware_id: HardwareId,
        /// How the capture time is carried.
        time: TimeFormat,
    },
    /// GRE transparent Ethernet bridging with key = session id.
    Gre,
}

impl Encap {
    /// The length of the headers written before each frame (GRE and ERSPAN), without a GRE
    /// checksum.
    pub const fn header_len(self) -> usize {
        match self {
            Encap::ErspanII => 8 + 8,
            Encap::ErspanIII { .. } => 8 + 20,
            Encap::Gre => 12,
        }
    }
}

/// What the probe knows about one captured frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    /// The capture time, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Which way the frame crossed the interface.
    pub direction: Direction,
    /// The interface the frame was captured on.
    pub ifindex: u32,
    /// The frame's 802.1Q priority, when it carries a tag.
    pub cos: Option<u8>,
    /// The frame's VLAN id, when it carries a tag (it stays in the frame).
    pub vlan: Option<u16>,
    /// The frame was already cut before encapsulation (snaplen).
    pub cut: bool,
}

/// One encapsulated frame: send `header[..header_len]` then `frame[..frame_len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encapsulated {
    /// Bytes of header to send.
    pub header_len: usize,
    /// Bytes of the frame to send after it.
    pub frame_len: usize,
    /// The frame was cut to fit the path MTU or the snaplen (the ERSPAN T bit is set).
    pub truncated: bool,
}

/// Builds headers for one session towards one collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encapsulator {
    encap: Encap,
    session: SessionId,
    /// The largest GRE payload the path carries: path MTU minus the outer IP header.
    max_payload_bytes: usize,
    gre_checksum: bool,
}

impl Encapsulator {
    /// `max_payload_bytes`: the path MTU less the outer IP header (20 for IPv4, 40 for IPv6).
    pub fn new(encap: Encap, session: SessionId, max_payload_bytes: usize) -> Self {
        Encapsulator {
            encap,
            session,
            max_payload_bytes: max_payload_bytes.max(encap.header_len() + 14),
            gre_checksum: false,
        }
    }

    /// With `on`, every header carries a GRE checksum (C bit): fill it with
    /// [`fill_gre_checksum`] once the frame is known.
    pub fn with_gre_checksum(mut self, on: bool) -> Self {
        self.gre_checksum = on;
        self.max_payload_bytes = self.max_payload_bytes.max(self.header_len() + 14);
        self
    }

    /// The encapsulation it writes.
    pub fn encap(&self) -> Encap {
        self.encap
    }

    /// Whether every header carries a GRE checksum.
    pub fn gre_checksum(&self) -> bool {
        self.gre_checksum
    }

    /// The length of every header this writes.
    pub fn header_len(&self) -> usize {
        self.encap.header_len() + if self.gre_checksum { 4 } else { 0 }
    }

    /// Writes the header for a frame of `frame_len` bytes with sequence number `seq`.
    pub fn header(
        &self,
        seq: u32,
        frame_len: usize,
        meta: &FrameMeta,
        out: &mut [u8; MAX_HEADER_LEN],
    ) -> Encapsulated {
        let header_len = self.header_len();
        let room = self.max_payload_bytes - header_len;
        let cut_here = frame_len > room;
        let truncated = cut_here || meta.cut;
        let frame_len = frame_len.min(room);
        match self.encap {
            Encap::ErspanII => {
                let at = self.gre(gre::Protocol::Erspan, None, seq, out);
                let index = ((meta.ifindex & 0x7_ffff) << 1)
                    | u32::from(meta.direction == Direction::Egress);
                ReprII {
                    vlan: VlanId::from_bits(meta.vlan.unwrap_or(0)),
                    cos: Cos::from_bits(meta.cos.unwrap_or(0)),
                    encap: if meta.vlan.is_some() {
                        En::InFrame
                    } else {
                        En::Untagged
                    },
                    truncated,
                    session_id: self.session,
                    index: Index::from_bits(index),
                }
                .emit(&mut PacketII::new_unchecked(&mut out[at..at + 8]));
            }
            Encap::ErspanIII { hardware_id, time } => {
                let at = self.gre(gre::Protocol::ErspanIII, None, seq, out);
                let port = meta.ifindex;
                let (granularity, timestamp, platform) = match time {
                    TimeFormat::Nanos100 => {
                        let ticks = meta.ts_ns / 100;
                        (
                            Granularity::Nanos100,
                            ticks as u32,
                            Platform::UpperTimestamp {
                                port_index: (port & 0x3fff) as u16,
                                timestamp_upper: (ticks >> 32) as u32,
                            },
                        )
                    }
                    TimeFormat::Ieee1588 => (
                        Granularity::Ieee1588,
                        (meta.ts_ns % 1_000_000_000) as u32,
                        Platform::Seconds {
                            id: 5,
                            switch_id: u16::from(hardware_id.value()),
                            port_index: port as u16,
                            seconds: (meta.ts_ns / 1_000_000_000) as u32,
                        },
                    ),
                };
                ReprIII {
                    vlan: VlanId::from_bits(meta.vlan.unwrap_or(0)),
                    cos: Cos::from_bits(meta.cos.unwrap_or(0)),
                    bso: Bso::Good,
                    truncated,
                    session_id: self.session,
                    timestamp,
                    sgt: 0,
                    pdu: true,
                    frame_type: FrameType::Ethernet,
                    hardware_id,
                    direction: meta.direction,
                    granularity,
                    platform: Some(platform),
                }
                .emit(&mut PacketIII::new_unchecked(&mut out[at..at + 20]));
            }
            Encap::Gre => {
                let key = Some(u32::from(self.session.value()));
                self.gre(gre::Protocol::TransparentEthernet, key, seq, out);
            }
        }
        Encapsulated {
            header_len,
            frame_len,
            truncated,
        }
    }

    /// Writes the GRE header (checksum left 0); returns its length.
    fn gre(&self, protocol: gre::Protocol, key: Option<u32>, seq: u32, out: &mut [u8]) -> usize {
        let g = gre::Repr {
            protocol,
            checksum: self.gre_checksum,
            key,
            sequence: Some(seq),
        };
        let len = g.buffer_len();
        g.emit(&mut gre::Packet::new_unchecked(&mut out[..len]));
        len
    }
}

/// Fills the GRE checksum of `header` (written with the C bit, checksum 0) over the header and
/// the frame that follows it, given as consecutive `parts` of any lengths.
pub fn fill_gre_checksum<'a>(header: &mut [u8], parts: impl IntoIterator<Item = &'a [u8]>) {
    let mut sum = Sum::default();
    sum.add(header);
    for p in parts {
        sum.add(p);
    }
    let c = sum.finish();
    header[GRE_CHECKSUM_AT..GRE_CHECKSUM_AT + 2].copy_from_slice(&c.to_be_bytes());
}

/// The internet checksum of data given in pieces: a piece may end in the middle of a 16-bit
/// word.
#[derive(Debug, Default)]
struct Sum {
    sum: u64,
    /// The odd byte a previous piece ended with, waiting for its partner.
    odd: Option<u8>,
}

impl Sum {
    fn add(&mut self, mut data: &[u8]) {
        if let (Some(hi), Some((&lo, rest))) = (self.odd, data.split_first()) {
            self.sum += u64::from(u16::from_be_bytes([hi, lo]));
            self.odd = None;
            data = rest;
        }
        let mut words = data.chunks_exact(2);
        for w in &mut words {
            self.sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            self.odd = Some(*last);
        }
    }

    fn finish(self) -> u16 {
        let mut sum = self.sum + self.odd.map_or(0, |b| u64::from(b) << 8);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decap::{Kind, Outcome, decap_gre};

    const FRAME: [u8; 64] = {
        let mut f = [0xabu8; 64];
        f[12] = 0x08;
        f[13] = 0x00;
        f
    };

    fn meta(direction: Direction) -> FrameMeta {
        FrameMeta {
            ts_ns: 1_700_000_000_123_456_700,
            direction,
            ifindex: 7,
            cos: None,
            vlan: None,
            cut: false,
        }
    }

    fn round_trip(
        e: &Encapsulator,
        seq: u32,
        m: &FrameMeta,
        frame: &[u8],
    ) -> (Vec<u8>, Encapsulated) {
        let mut h = [0u8; MAX_HEADER_LEN];
        let r = e.header(seq, frame.len(), m, &mut h);
        let mut pkt = h[..r.header_len].to_vec();
        pkt.extend_from_slice(&frame[..r.frame_len]);
        (pkt, r)
    }

    #[test]
    fn erspan_iii_carries_direction_and_absolute_time() {
        for time in [TimeFormat::Nanos100, TimeFormat::Ieee1588] {
            let e = Encapsulator::new(
                Encap::ErspanIII {
                    hardware_id: HardwareId::try_new(5).unwrap(),
                    time,
                },
                SessionId::try_new(300).unwrap(),
                1480,
            );
            let (pkt, r) = round_trip(&e, 41, &meta(Direction::Egress), &FRAME);
            assert!(!r.truncated);
            let Outcome::Mirrored(m) = decap_gre([10, 0, 0, 1].into(), &pkt) else {
                panic!("{time:?}")
            };
            assert_eq!((m.key.kind, m.key.id), (Kind::ErspanIII, 300));
            assert_eq!(m.frame, FRAME);
            assert_eq!(m.meta.seq, Some(41));
            assert_eq!(m.meta.direction, Some(Direction::Egress));
            assert_eq!(m.meta.hardware_id, Some(5));
            assert_eq!(
                m.meta.erspan_time_ns,
                Some(1_700_000_000_123_456_700),
                "{time:?}"
            );
        }
    }

    #[test]
    fn erspan_ii_index_and_vlan() {
        let e = Encapsulator::new(Encap::ErspanII, SessionId::try_new(42).unwrap(), 1480);
        let m = FrameMeta {
            vlan: Some(100),
            cos: Some(5),
            ..meta(Direction::Egress)
        };
        let (pkt, _) = round_trip(&e, 9, &m, &FRAME);
        let Outcome::Mirrored(d) = decap_gre([10, 0, 0, 1].into(), &pkt) else {
            panic!()
        };
        assert_eq!((d.key.kind, d.key.id), (Kind::ErspanII, 42));
        assert_eq!(d.meta.index, Some(7 << 1 | 1));
        // The tag stays in the frame (En = 3), so the collector does not re-insert it.
        assert_eq!(d.meta.vlan, None);
        assert_eq!(d.meta.cos, Some(5));
    }

    #[test]
    fn gre_teb_key_and_sequence() {
        let e = Encapsulator::new(Encap::Gre, SessionId::try_new(77).unwrap(), 1480);
        let (pkt, _) = round_trip(&e, u32::MAX, &meta(Direction::Ingress), &FRAME);
        let Outcome::Mirrored(d) = decap_gre([10, 0, 0, 1].into(), &pkt) else {
            panic!()
        };
        assert_eq!(
            (d.key.kind, d.key.id, d.meta.seq),
            (Kind::Gre, 77, Some(u32::MAX))
        );
    }

    #[test]
    fn cut_to_the_path_mtu_with_t_bit() {
        let big = [0u8; 1514];
        let e = Encapsulator::new(Encap::ErspanII, SessionId::try_new(1).unwrap(), 1500 - 20);
        let (pkt, r) = round_trip(&e, 1, &meta(Direction::Ingress), &big);
        assert!(r.truncated);
        assert_eq!(pkt.len(), 1480);
        let Outcome::Mirrored(d) = decap_gre([10, 0, 0, 1].into(), &pkt) else {
            panic!()
        };
        assert!(d.meta.truncated);
        assert_eq!(d.frame.len(), 1480 - 16);
        // Snaplen cut upstream also sets T.
        let m = FrameMeta {
            cut: true,
            ..meta(Direction::Ingress)
        };
        let (pkt, r) = round_trip(&e, 2, &m, &FRAME);
        assert!(r.truncated && r.frame_len == 64);
        let Outcome::Mirrored(d) = decap_gre([10, 0, 0, 1].into(), &pkt) else {
            panic!()
        };
        assert!(d.meta.truncated);
    }

    #[test]
    fn gre_checksum_over_a_frame_in_odd_pieces() {
        let odd_frame: Vec<u8> = (0..61u8).collect();
        for encap in [
            Encap::ErspanII,
            Encap::ErspanIII {
                hardware_id: HardwareId::try_new(1).unwrap(),
                time: TimeFormat::Nanos100,
            },
            Encap::Gre,
        ] {
            let e = Encapsulator::new(encap, SessionId::try_new(9).unwrap(), 1480)
                .with_gre_checksum(true);
            assert_eq!(e.header_len(), encap.header_len() + 4);
            let mut h = [0u8; MAX_HEADER_LEN];
            let r = e.header(5, odd_frame.len(), &meta(Direction::Ingress), &mut h);
            assert_eq!(r.header_len, e.header_len());
            // The frame in pieces that split 16-bit words.
            let (a, rest) = odd_frame.split_at(13);
            let (b, c) = rest.split_at(1);
            fill_gre_checksum(&mut h[..r.header_len], [a, b, c]);
            let mut pkt = h[..r.header_len].to_vec();
            pkt.extend_from_slice(&odd_frame);
            let p = gre::Packet::new_checked(&pkt[..]).unwrap();
            assert!(p.checksum_present() && p.verify_checksum(), "{encap:?}");
            let Outcome::Mirrored(m) = decap_gre([10, 0, 0, 1].into(), &pkt) else {
                panic!("{encap:?}")
            };
            assert_eq!((m.key.id, m.meta.seq), (9, Some(5)));
            assert_eq!(m.frame, &odd_frame[..]);
            assert!(!m.meta.gre_checksum_bad, "{encap:?}");
            // One bit off: the collector keeps the frame and flags the checksum bad.
            pkt[r.header_len + 7] ^= 1;
            let Outcome::Mirrored(m) = decap_gre([10, 0, 0, 1].into(), &pkt) else {
                panic!("{encap:?}")
            };
            assert!(m.meta.gre_checksum_bad, "{encap:?}");
        }
    }
}
