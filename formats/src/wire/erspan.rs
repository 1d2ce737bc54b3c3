//! ERSPAN (draft-foschiano-erspan-03) Type II and Type III headers. Type I has no header: the
//! mirrored frame follows the 4-byte GRE header directly.
//!
//! ```text
//! Type II (8 bytes, GRE 0x88BE with S set):
//! | Ver=1 (4) | VLAN (12) | COS (3) | En (2) | T (1) | Session ID (10) |
//! | Reserved (12)         | Index (20)                                |
//!
//! Type III (12 bytes, GRE 0x22EB; 8 more when O is set):
//! | Ver=2 (4) | VLAN (12) | COS (3) | BSO (2) | T (1) | Session ID (10) |
//! | Timestamp (32)                                                      |
//! | SGT (16) | P (1) | FT (5) | HW ID (6) | D (1) | Gra (2) | O (1)       |
//! [ Platf ID (6) | platform info (26) | platform info (32) ]
//! ```

use core::fmt;

use super::{Error, Layer, Result, be16, be32, bounded_field, need, set_be16, set_be32};

bounded_field!(
    /// The 10-bit ERSPAN session id.
    SessionId,
    u16,
    10
);
bounded_field!(
    /// A 12-bit VLAN id.
    VlanId,
    u16,
    12
);
bounded_field!(
    /// The 3-bit class of service.
    Cos,
    u8,
    3
);
bounded_field!(
    /// The 20-bit Type II port index.
    Index,
    u32,
    20
);
bounded_field!(
    /// The 6-bit Type III hardware id.
    HardwareId,
    u8,
    6
);

/// The length of a Type II header.
pub const TYPE_II_HEADER_LEN: usize = 8;
/// The length of a Type III header without its platform sub-header.
pub const TYPE_III_HEADER_LEN: usize = 12;
/// The length of the Type III platform sub-header.
pub const PLATFORM_HEADER_LEN: usize = 8;

/// The ERSPAN version nibble, shared by Types II and III.
#[inline]
pub fn version(data: &[u8]) -> Option<u8> {
    data.first().map(|b| b >> 4)
}

/// How the original frame carried its VLAN (Type II `En`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encap {
    /// No VLAN tag.
    Untagged,
    /// Cisco ISL encapsulation.
    Isl,
    /// An 802.1Q tag, removed from the frame (its VLAN is the header's).
    Dot1q,
    /// The tag is still inside the mirrored frame.
    InFrame,
}

impl Encap {
    #[inline]
    const fn from_bits(v: u16) -> Self {
        match v & 3 {
            0 => Encap::Untagged,
            1 => Encap::Isl,
            2 => Encap::Dot1q,
            _ => Encap::InFrame,
        }
    }

    const fn bits(self) -> u16 {
        match self {
            Encap::Untagged => 0,
            Encap::Isl => 1,
            Encap::Dot1q => 2,
            Encap::InFrame => 3,
        }
    }
}

/// Type III frame integrity (`BSO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bso {
    /// Good frame with a good CRC.
    Good,
    /// A short (runt) frame.
    Short,
    /// An oversized (giant) frame.
    Oversized,
    /// A frame with a bad CRC.
    Bad,
}

impl Bso {
    #[inline]
    const fn from_bits(v: u16) -> Self {
        match v & 3 {
            0 => Bso::Good,
            1 => Bso::Short,
            2 => Bso::Oversized,
            _ => Bso::Bad,
        }
    }

    const fn bits(self) -> u16 {
        match self {
            Bso::Good => 0,
            Bso::Short => 1,
            Bso::Oversized => 2,
            Bso::Bad => 3,
        }
    }
}

/// Which way the mirrored frame crossed the monitored port (Type III `D`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Received on the port.
    Ingress,
    /// Sent on the port.
    Egress,
}

/// Type III timestamp granularity (`Gra`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// 100 microsecond ticks.
    Micros100,
    /// 100 nanosecond ticks.
    Nanos100,
    /// IEEE 1588: nanoseconds, the seconds in a platform sub-header.
    Ieee1588,
    /// A granularity of the platform's own.
    Custom,
}

impl Granularity {
    #[inline]
    const fn from_bits(v: u16) -> Self {
        match v & 3 {
            0 => Granularity::Micros100,
            1 => Granularity::Nanos100,
            2 => Granularity::Ieee1588,
            _ => Granularity::Custom,
        }
    }

    const fn bits(self) -> u16 {
        match self {
            Granularity::Micros100 => 0,
            Granularity::Nanos100 => 1,
            Granularity::Ieee1588 => 2,
            Granularity::Custom => 3,
        }
    }
}

/// Type III frame type (`FT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// An Ethernet frame (`FT` 0).
    Ethernet,
    /// An IP packet (`FT` 2).
    Ip,
    /// Any other `FT` value, kept.
    Unknown(u8),
}

impl FrameType {
    #[inline]
    const fn from_bits(v: u8) -> Self {
        match v & 0x1f {
            0 => FrameType::Ethernet,
            2 => FrameType::Ip,
            other => FrameType::Unknown(other),
        }
    }

    const fn bits(self) -> u8 {
        match self {
            FrameType::Ethernet => 0,
            FrameType::Ip => 2,
            FrameType::Unknown(v) => v & 0x1f,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Type II

mod field2 {
    pub const VER_VLAN: usize = 0;
    pub const COS_EN_T_SID: usize = 2;
    pub const INDEX: usize = 4;
}

/// A view of an ERSPAN Type II header and the mirrored frame after it.
#[derive(Debug, Clone)]
pub struct PacketII<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> PacketII<T> {
    /// A view of `buffer` without checking its length (for emitting into a buffer of the right size).
    pub const fn new_unchecked(buffer: T) -> Self {
        PacketII { buffer }
    }

    /// A view of `buffer`, checked once to hold the whole header: no accessor can panic after it.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        need(Layer::ErspanII, buffer.as_ref(), TYPE_II_HEADER_LEN)?;
        Ok(Self::new_unchecked(buffer))
    }

    #[inline]
    fn w0(&self) -> u16 {
        be16(self.buffer.as_ref(), field2::VER_VLAN)
    }

    #[inline]
    fn w1(&self) -> u16 {
        be16(self.buffer.as_ref(), field2::COS_EN_T_SID)
    }

    /// The version nibble (1 for Type II).
    #[inline]
    pub fn version(&self) -> u8 {
        (self.w0() >> 12) as u8
    }

    /// The VLAN of the mirrored frame.
    #[inline]
    pub fn vlan(&self) -> VlanId {
        VlanId::from_bits(self.w0())
    }

    /// The class of service.
    #[inline]
    pub fn cos(&self) -> Cos {
        Cos::from_bits((self.w1() >> 13) as u8)
    }

    /// How the frame carried its VLAN (`En`).
    #[inline]
    pub fn encap(&self) -> Encap {
        Encap::from_bits(self.w1() >> 11)
    }

    /// `T`: the sender cut the frame.
    #[inline]
    pub fn truncated(&self) -> bool {
        self.w1() & 0x0400 != 0
    }

    /// The ERSPAN session id.
    #[inline]
    pub fn session_id(&self) -> SessionId {
        SessionId::from_bits(self.w1())
    }

    /// The port index (Linux and tapwire send `ifindex << 1 | egress`).
    #[inline]
    pub fn index(&self) -> Index {
        Index::from_bits(be32(self.buffer.as_ref(), field2::INDEX))
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> PacketII<&'a T> {
    /// The mirrored frame after the header.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[TYPE_II_HEADER_LEN..]
    }
}

/// An owned ERSPAN Type II header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReprII {
    /// The VLAN of the mirrored frame.
    pub vlan: VlanId,
    /// The class of service.
    pub cos: Cos,
    /// How the frame carried its VLAN.
    pub encap: Encap,
    /// The sender cut the frame.
    pub truncated: bool,
    /// The ERSPAN session id.
    pub session_id: SessionId,
    /// The port index.
    pub index: Index,
}

impl ReprII {
    /// The header's fields; an ERSPAN version other than 1 is an error.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(p: &PacketII<T>) -> Result<ReprII> {
        if p.version() != 1 {
            return Err(Error::Version {
                layer: Layer::ErspanII,
                version: p.version(),
            });
        }
        Ok(ReprII {
            vlan: p.vlan(),
            cos: p.cos(),
            encap: p.encap(),
            truncated: p.truncated(),
            session_id: p.session_id(),
            index: p.index(),
        })
    }

    /// The header's length in bytes.
    pub const fn buffer_len(&self) -> usize {
        TYPE_II_HEADER_LEN
    }

    /// Writes the header at the start of `p`'s buffer, which holds [`Self::buffer_len`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut PacketII<T>) {
        let buf = p.buffer.as_mut();
        set_be16(buf, field2::VER_VLAN, (1 << 12) | self.vlan.value());
        let w1 = (u16::from(self.cos.value()) << 13)
            | (self.encap.bits() << 11)
            | (u16::from(self.truncated) << 10)
            | self.session_id.value();
        set_be16(buf, field2::COS_EN_T_SID, w1);
        set_be32(buf, field2::INDEX, self.index.value());
    }
}

impl fmt::Display for ReprII {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ERSPAN-II session={} vlan={} cos={} en={:?} index={}{}",
            self.session_id,
            self.vlan,
            self.cos,
            self.encap,
            self.index,
            if self.truncated { " truncated" } else { "" }
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Type III

mod field3 {
    pub const VER_VLAN: usize = 0;
    pub const COS_BSO_T_SID: usize = 2;
    pub const TIMESTAMP: usize = 4;
    pub const SGT: usize = 8;
    pub const FLAGS: usize = 10;
    pub const PLATFORM: usize = 12;
}

/// A view of an ERSPAN Type III header, its optional platform sub-header and the frame after.
#[derive(Debug, Clone)]
pub struct PacketIII<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> PacketIII<T> {
    /// A view of `buffer` without checking its length (for emitting into a buffer of the right size).
    pub const fn new_unchecked(buffer: T) -> Self {
        PacketIII { buffer }
    }

    /// A view of `buffer`, checked once to hold the header and its platform sub-header: no
    /// accessor can panic after it.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        let data = p.buffer.as_ref();
        need(Layer::ErspanIII, data, TYPE_III_HEADER_LEN)?;
        if p.has_platform() {
            need(
                Layer::ErspanPlatform,
                data,
                TYPE_III_HEADER_LEN + PLATFORM_HEADER_LEN,
            )?;
        }
        Ok(p)
    }

    #[inline]
    fn w0(&self) -> u16 {
        be16(self.buffer.as_ref(), field3::VER_VLAN)
    }

    #[inline]
    fn w1(&self) -> u16 {
        be16(self.buffer.as_ref(), field3::COS_BSO_T_SID)
    }

    #[inline]
    fn flags(&self) -> u16 {
        be16(self.buffer.as_ref(), field3::FLAGS)
    }

    /// The version nibble (2 for Type III).
    #[inline]
    pub fn version(&self) -> u8 {
        (self.w0() >> 12) as u8
    }

    /// The VLAN of the mirrored frame.
    #[inline]
    pub fn vlan(&self) -> VlanId {
        VlanId::from_bits(self.w0())
    }

    /// The class of service.
    #[inline]
    pub fn cos(&self) -> Cos {
        Cos::from_bits((self.w1() >> 13) as u8)
    }

    /// The frame's integrity (`BSO`).
    pub fn bso(&self) -> Bso {
        Bso::from_bits(self.w1() >> 11)
    }

    /// `T`: the sender cut the frame.
    #[inline]
    pub fn truncated(&self) -> bool {
        self.w1() & 0x0400 != 0
    }

    /// The ERSPAN session id.
    #[inline]
    pub fn session_id(&self) -> SessionId {
        SessionId::from_bits(self.w1())
    }

    /// The capture time's low 32 bits, in [`Self::granularity`] units.
    pub fn timestamp(&self) -> u32 {
        be32(self.buffer.as_ref(), field3::TIMESTAMP)
    }

    /// The security group tag.
    pub fn sgt(&self) -> u16 {
        be16(self.buffer.as_ref(), field3::SGT)
    }

    /// `P`: the payload is an Ethernet PDU (as opposed to a frame with FCS).
    pub fn pdu(&self) -> bool {
        self.flags() & 0x8000 != 0
    }

    /// What the payload is (`FT`).
    pub fn frame_type(&self) -> FrameType {
        FrameType::from_bits((self.flags() >> 10) as u8)
    }

    /// The hardware (line card) id.
    pub fn hardware_id(&self) -> HardwareId {
        HardwareId::from_bits((self.flags() >> 4) as u8)
    }

    /// Which way the frame crossed the monitored port (`D`).
    pub fn direction(&self) -> Direction {
        if self.flags() & 0x0008 != 0 {
            Direction::Egress
        } else {
            Direction::Ingress
        }
    }

    /// The timestamp's units (`Gra`).
    pub fn granularity(&self) -> Granularity {
        Granularity::from_bits(self.flags() >> 1)
    }

    /// `O`: a platform sub-header follows.
    #[inline]
    pub fn has_platform(&self) -> bool {
        self.flags() & 0x0001 != 0
    }

    /// The platform sub-header, when `O` is set.
    pub fn platform(&self) -> Option<Platform> {
        if !self.has_platform() {
            return None;
        }
        let data = self.buffer.as_ref();
        let mut raw = [0u8; PLATFORM_HEADER_LEN];
        raw.copy_from_slice(&data[field3::PLATFORM..field3::PLATFORM + PLATFORM_HEADER_LEN]);
        Some(Platform::decode(raw))
    }

    /// The length of the header with its platform sub-header.
    #[inline]
    pub fn header_len(&self) -> usize {
        TYPE_III_HEADER_LEN
            + if self.has_platform() {
                PLATFORM_HEADER_LEN
            } else {
                0
            }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> PacketIII<&'a T> {
    /// The mirrored frame after the header (and its platform sub-header).
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

/// The Type III platform-specific sub-header. Platform ids 1, 3, 5, 6 and 7 are decoded; any
/// other id is kept as raw bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// Id 1: VSM domain and port index.
    Vsm {
        /// The VSM domain.
        domain_id: u16,
        /// The port index.
        port_index: u32,
    },
    /// Id 3: port index and the upper 32 bits of the timestamp.
    UpperTimestamp {
        /// The port index.
        port_index: u16,
        /// The timestamp's upper 32 bits.
        timestamp_upper: u32,
    },
    /// Ids 5 and 6: switch id, port index and the timestamp's seconds.
    Seconds {
        /// The platform id, 5 or 6.
        id: u8,
        /// The switch id.
        switch_id: u16,
        /// The port index.
        port_index: u16,
        /// The timestamp's seconds.
        seconds: u32,
    },
    /// Id 7: source index and the upper 32 bits of the timestamp.
    SourceIndex {
        /// The source index.
        source_index: u32,
        /// The timestamp's upper 32 bits.
        timestamp_upper: u32,
    },
    /// Any other platform id: the sub-header as it came.
    Raw([u8; PLATFORM_HEADER_LEN]),
}

impl Platform {
    /// Reads a sub-header (its platform id is the first six bits).
    pub fn decode(raw: [u8; PLATFORM_HEADER_LEN]) -> Platform {
        let w0 = be32(&raw, 0);
        let w1 = be32(&raw, 4);
        match w0 >> 26 {
            1 => Platform::Vsm {
                domain_id: (w0 & 0x0fff) as u16,
                port_index: w1,
            },
            3 => Platform::UpperTimestamp {
                port_index: (w0 & 0x3fff) as u16,
                timestamp_upper: w1,
            },
            id @ (5 | 6) => Platform::Seconds {
                id: id as u8,
                switch_id: ((w0 >> 16) & 0x03ff) as u16,
                port_index: (w0 & 0xffff) as u16,
                seconds: w1,
            },
            7 => Platform::SourceIndex {
                source_index: w0 & 0x000f_ffff,
                timestamp_upper: w1,
            },
            _ => Platform::Raw(raw),
        }
    }

    /// The sub-header's bytes.
    pub fn encode(&self) -> [u8; PLATFORM_HEADER_LEN] {
        let (w0, w1) = match *self {
            Platform::Vsm {
                domain_id,
                port_index,
            } => ((1 << 26) | u32::from(domain_id & 0x0fff), port_index),
            Platform::UpperTimestamp {
                port_index,
                timestamp_upper,
            } => ((3 << 26) | u32::from(port_index & 0x3fff), timestamp_upper),
            Platform::Seconds {
                id,
                switch_id,
                port_index,
                seconds,
            } => (
                (u32::from(id & 0x3f) << 26)
                    | (u32::from(switch_id & 0x03ff) << 16)
                    | u32::from(port_index),
                seconds,
            ),
            Platform::SourceIndex {
                source_index,
                timestamp_upper,
            } => ((7 << 26) | (source_index & 0x000f_ffff), timestamp_upper),
            Platform::Raw(raw) => return raw,
        };
        let mut out = [0u8; PLATFORM_HEADER_LEN];
        set_be32(&mut out, 0, w0);
        set_be32(&mut out, 4, w1);
        out
    }

    /// The platform id.
    pub fn id(&self) -> u8 {
        match *self {
            Platform::Vsm { .. } => 1,
            Platform::UpperTimestamp { .. } => 3,
            Platform::Seconds { id, .. } => id,
            Platform::SourceIndex { .. } => 7,
            Platform::Raw(raw) => raw[0] >> 2,
        }
    }
}

/// An owned ERSPAN Type III header with its optional platform sub-header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReprIII {
    /// The VLAN of the mirrored frame.
    pub vlan: VlanId,
    /// The class of service.
    pub cos: Cos,
    /// The frame's integrity.
    pub bso: Bso,
    /// The sender cut the frame.
    pub truncated: bool,
    /// The ERSPAN session id.
    pub session_id: SessionId,
    /// The capture time's low 32 bits.
    pub timestamp: u32,
    /// The security group tag.
    pub sgt: u16,
    /// `P`: the payload is an Ethernet PDU.
    pub pdu: bool,
    /// What the payload is.
    pub frame_type: FrameType,
    /// The hardware id.
    pub hardware_id: HardwareId,
    /// Which way the frame crossed the port.
    pub direction: Direction,
    /// The timestamp's units.
    pub granularity: Granularity,
    /// The platform sub-header, if any.
    pub platform: Option<Platform>,
}

impl ReprIII {
    /// The header's fields; an ERSPAN version other than 2 is an error.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(p: &PacketIII<T>) -> Result<ReprIII> {
        if p.version() != 2 {
            return Err(Error::Version {
                layer: Layer::ErspanIII,
                version: p.version(),
            });
        }
        Ok(ReprIII {
            vlan: p.vlan(),
            cos: p.cos(),
            bso: p.bso(),
            truncated: p.truncated(),
            session_id: p.session_id(),
            timestamp: p.timestamp(),
            sgt: p.sgt(),
            pdu: p.pdu(),
            frame_type: p.frame_type(),
            hardware_id: p.hardware_id(),
            direction: p.direction(),
            granularity: p.granularity(),
            platform: p.platform(),
        })
    }

    /// The header's length in bytes, with its platform sub-header.
    pub const fn buffer_len(&self) -> usize {
        TYPE_III_HEADER_LEN
            + if self.platform.is_some() {
                PLATFORM_HEADER_LEN
            } else {
                0
            }
    }

    /// Writes the header at the start of `p`'s buffer, which holds [`Self::buffer_len`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut PacketIII<T>) {
        let buf = p.buffer.as_mut();
        set_be16(buf, field3::VER_VLAN, (2 << 12) | self.vlan.value());
        let w1 = (u16::from(self.cos.value()) << 13)
            | (self.bso.bits() << 11)
            | (u16::from(self.truncated) << 10)
            | self.session_id.value();
        set_be16(buf, field3::COS_BSO_T_SID, w1);
        set_be32(buf, field3::TIMESTAMP, self.timestamp);
        set_be16(buf, field3::SGT, self.sgt);
        let flags = (u16::from(self.pdu) << 15)
            | (u16::from(self.frame_type.bits()) << 10)
            | (u16::from(self.hardware_id.value()) << 4)
            | (u16::from(self.direction == Direction::Egress) << 3)
            | (self.granularity.bits() << 1)
            | u16::from(self.platform.is_some());
        set_be16(buf, field3::FLAGS, flags);
        if let Some(platform) = self.platform {
            buf[field3::PLATFORM..field3::PLATFORM + PLATFORM_HEADER_LEN]
                .copy_from_slice(&platform.encode());
        }
    }

    /// The capture time in nanoseconds since the Unix epoch, when the header carries an absolute
    /// one: 100 ns or IEEE 1588 granularity with the upper bits (platform 3 or 7) or the seconds
    /// (platform 5 or 6) in the sub-header. The 32-bit field alone wraps too fast to be absolute.
    pub fn absolute_time_ns(&self) -> Option<u64> {
        let low = u64::from(self.timestamp);
        match (self.granularity, self.platform?) {
            (
                Granularity::Nanos100,
                Platform::UpperTimestamp {
                    timestamp_upper, ..
                }
                | Platform::SourceIndex {
                    timestamp_upper, ..
                },
            ) => ((u64::from(timestamp_upper) << 32) | low).checked_mul(100),
            (
                Granularity::Ieee1588,
                Platform::UpperTimestamp {
                    timestamp_upper: seconds,
                    ..
                }
                | Platform::SourceIndex {
                    timestamp_upper: seconds,
                    ..
                }
                | Platform::Seconds { seconds, .. },
            ) if low < 1_000_000_000 => Some(u64::from(seconds) * 1_000_000_000 + low),
            _ => None,
        }
    }
}

impl fmt::Display for ReprIII {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ERSPAN-III session={} vlan={} hw={} dir={:?} gra={:?} ts={}{}",
            self.session_id,
            self.vlan,
            self.hardware_id,
            self.direction,
            self.granularity,
            self.timestamp,
            if self.truncated { " truncated" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // tcpdump's erspan-type-ii-1.pcap: the ERSPAN header and the first inner bytes.
    const TYPE_II_1: [u8; 12] = [
        0x11, 0x56, 0xc2, 0x9a, 0x00, 0x00, 0x7f, 0xf8, 0x01, 0x00, 0x5e, 0x00,
    ];

    #[test]
    fn type_ii_fields() {
        let p = PacketII::new_checked(&TYPE_II_1[..]).unwrap();
        let r = ReprII::parse(&p).unwrap();
        assert_eq!(r.session_id.value(), 666);
        assert_eq!(r.vlan.value(), 342);
        assert_eq!(r.cos.value(), 6);
        assert_eq!(r.encap, Encap::Untagged);
        assert_eq!(r.index.value(), 32760);
        assert!(!r.truncated);
        assert_eq!(p.payload(), &[0x01, 0x00, 0x5e, 0x00]);
    }

    #[test]
    fn type_ii_wrong_version() {
        let b = [0x20, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(
            ReprII::parse(&PacketII::new_checked(&b[..]).unwrap()).unwrap_err(),
            Error::Version {
                layer: Layer::ErspanII,
                version: 2
            }
        );
    }

    // zeek's gre-erspan3-dot1q.pcap, first packet: the 20 bytes after GRE (O=1, platform 3).
    const DOT1Q_III: [u8; 20] = [
        0x20, 0x0a, 0x00, 0x00, 0x70, 0x50, 0x7e, 0x55, 0x00, 0x00, 0x00, 0x07, 0x0c, 0x00, 0x00,
        0x03, 0x15, 0xf7, 0x42, 0xe8,
    ];

    #[test]
    fn type_iii_with_platform_3() {
        let p = PacketIII::new_checked(&DOT1Q_III[..]).unwrap();
        let r = ReprIII::parse(&p).unwrap();
        assert_eq!(r.vlan.value(), 10);
        assert_eq!(r.timestamp, 0x7050_7e55);
        assert_eq!(r.granularity, Granularity::Custom);
        assert_eq!(r.direction, Direction::Ingress);
        assert_eq!(
            r.platform,
            Some(Platform::UpperTimestamp {
                port_index: 3,
                timestamp_upper: 0x15f7_42e8
            })
        );
        assert_eq!(p.header_len(), 20);
        assert_eq!(r.frame_type, FrameType::Ethernet);
    }

    #[test]
    fn type_iii_platform_truncated() {
        assert_eq!(
            PacketIII::new_checked(&DOT1Q_III[..15]).unwrap_err(),
            Error::Truncated {
                layer: Layer::ErspanPlatform,
                needed: 20,
                got: 15
            }
        );
        assert_eq!(
            PacketIII::new_checked(&DOT1Q_III[..11]).unwrap_err(),
            Error::Truncated {
                layer: Layer::ErspanIII,
                needed: 12,
                got: 11
            }
        );
    }

    #[test]
    fn absolute_time() {
        let mut r = ReprIII {
            vlan: VlanId::default(),
            cos: Cos::default(),
            bso: Bso::Good,
            truncated: false,
            session_id: SessionId::default(),
            timestamp: 500,
            sgt: 0,
            pdu: false,
            frame_type: FrameType::Ethernet,
            hardware_id: HardwareId::default(),
            direction: Direction::Ingress,
            granularity: Granularity::Ieee1588,
            platform: Some(Platform::Seconds {
                id: 5,
                switch_id: 1,
                port_index: 2,
                seconds: 1_700_000_000,
            }),
        };
        assert_eq!(r.absolute_time_ns(), Some(1_700_000_000_000_000_500));
        r.granularity = Granularity::Nanos100;
        r.platform = Some(Platform::UpperTimestamp {
            port_index: 0,
            timestamp_upper: 1,
        });
        assert_eq!(r.absolute_time_ns(), Some(((1u64 << 32) + 500) * 100));
        r.granularity = Granularity::Micros100;
        assert_eq!(r.absolute_time_ns(), None);
        r.granularity = Granularity::Nanos100;
        r.platform = None;
        assert_eq!(r.absolute_time_ns(), None);
    }

    fn arb_platform() -> impl Strategy<Value = Platform> {
        prop_oneof![
            (0..=0x0fffu16, any::<u32>()).prop_map(|(domain_id, port_index)| Platform::Vsm {
                domain_id,
                port_index
            }),
            (0..=0x3fffu16, any::<u32>()).prop_map(|(port_index, timestamp_upper)| {
                Platform::UpperTimestamp {
                    port_index,
                    timestamp_upper,
                }
            }),
            (5..=6u8, 0..=0x3ffu16, any::<u16>(), any::<u32>()).prop_map(
                |(id, switch_id, port_index, seconds)| {
                    Platform::Seconds {
                        id,
                        switch_id,
                        port_index,
                        seconds,
                    }
                }
            ),
            (0..=0xfffffu32, any::<u32>()).prop_map(|(source_index, timestamp_upper)| {
                Platform::SourceIndex {
                    source_index,
                    timestamp_upper,
                }
            }),
            (
                prop_oneof![Just(0u8), Just(2), Just(4), 8..=63u8],
                any::<[u8; 7]>()
            )
                .prop_map(|(id, rest)| {
                    let mut raw = [0u8; 8];
                    raw[0] = id << 2;
                    raw[1..].copy_from_slice(&rest);
                    Platform::Raw(raw)
                }),
        ]
    }

    fn arb_iii() -> impl Strategy<Value = ReprIII> {
        (
            (0..=0xfffu16, 0..=7u8, 0..=3u16, any::<bool>(), 0..=0x3ffu16),
            (
                any::<u32>(),
                any::<u16>(),
                any::<bool>(),
                prop_oneof![Just(0u8), Just(2), 0..=31u8],
            ),
            (
                0..=63u8,
                any::<bool>(),
                0..=3u16,
                proptest::option::of(arb_platform()),
            ),
        )
            .prop_map(
                |((vlan, cos, bso, t, sid), (ts, sgt, pdu, ft), (hw, egress, gra, platform))| {
                    ReprIII {
                        vlan: VlanId::from_bits(vlan),
                        cos: Cos::from_bits(cos),
                        bso: Bso::from_bits(bso),
                        truncated: t,
                        session_id: SessionId::from_bits(sid),
                        timestamp: ts,
                        sgt,
                        pdu,
                        frame_type: FrameType::from_bits(ft),
                        hardware_id: HardwareId::from_bits(hw),
                        direction: if egress {
                            Direction::Egress
                        } else {
                            Direction::Ingress
                        },
                        granularity: Granularity::from_bits(gra),
                        platform,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn ii_emit_then_parse(vlan in 0..=0xfffu16, cos in 0..=7u8, en in 0..=3u16, t: bool,
                              sid in 0..=0x3ffu16, index in 0..=0xfffffu32) {
            let repr = ReprII {
                vlan: VlanId::try_new(vlan).unwrap(),
                cos: Cos::try_new(cos).unwrap(),
                encap: Encap::from_bits(en),
                truncated: t,
                session_id: SessionId::try_new(sid).unwrap(),
                index: Index::try_new(index).unwrap(),
            };
            let mut buf = [0u8; TYPE_II_HEADER_LEN];
            repr.emit(&mut PacketII::new_unchecked(&mut buf[..]));
            prop_assert_eq!(ReprII::parse(&PacketII::new_checked(&buf[..]).unwrap()).unwrap(), repr);
        }

        #[test]
        fn iii_emit_then_parse(repr in arb_iii()) {
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(&mut PacketIII::new_unchecked(&mut buf[..]));
            prop_assert_eq!(ReprIII::parse(&PacketIII::new_checked(&buf[..]).unwrap()).unwrap(), repr);
        }

        #[test]
        fn never_panics(data: Vec<u8>) {
            if let Ok(p) = PacketIII::new_checked(&data[..]) {
                let _ = ReprIII::parse(&p);
                let _ = p.payload();
            }
            if let Ok(p) = PacketII::new_checked(&data[..]) {
                let _ = ReprII::parse(&p);
                let _ = p.payload();
            }
        }
    }

    #[test]
    fn bounded_fields_reject_overflow() {
        assert!(SessionId::try_new(1023).is_some());
        assert!(SessionId::try_new(1024).is_none());
        assert!(VlanId::try_new(4096).is_none());
        assert!(Cos::try_new(8).is_none());
        assert!(HardwareId::try_new(64).is_none());
        assert!(Index::try_new(1 << 20).is_none());
    }
}
