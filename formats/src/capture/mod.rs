//! Capture files: reading pcap and pcapng of any link type from a stream, or classic pcap in
//! place from a byte slice, and encoding pcap (micro- or nanosecond) and pcapng into
//! caller-owned buffers. Both sit on `pcap-file`; this module adds
//! the link-type handling, lenient record decoding and the tapwire-specific metadata (one
//! interface per source, direction flags, comments on gaps and truncation).

pub mod pcapng;
mod reader;
pub mod walk;
mod writer;

pub use reader::{
    CaptureReader, PcapFraming, PcapParse, PcapSlice, ReadError, Record, RecordHeader, SkipReason,
    is_pcap,
};
pub use writer::{
    EncodeError, Encoder, Format, InterfaceInfo, InterfaceStats, PacketInfo, SNAPLEN,
};

use core::fmt;

/// A link-layer header type (tcpdump.org's LINKTYPE_ registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LinkType {
    /// BSD loopback: a 4-byte address family in host byte order.
    Null,
    /// Ethernet II (1).
    Ethernet,
    /// Raw IPv4 or IPv6, told apart by the version nibble.
    Raw,
    /// OpenBSD loopback: a 4-byte address family in network byte order.
    Loop,
    /// Linux cooked capture v1 (113).
    LinuxSll,
    /// Raw IPv4 (228).
    Ipv4,
    /// Raw IPv6 (229).
    Ipv6,
    /// Linux cooked capture v2 (276).
    LinuxSll2,
    /// Any other link type, kept.
    Other(u32),
}

impl From<u32> for LinkType {
    fn from(v: u32) -> Self {
        match v {
            0 => LinkType::Null,
            1 => LinkType::Ethernet,
            101 => LinkType::Raw,
            108 => LinkType::Loop,
            113 => LinkType::LinuxSll,
            228 => LinkType::Ipv4,
            229 => LinkType::Ipv6,
            276 => LinkType::LinuxSll2,
            other => LinkType::Other(other),
        }
    }
}

impl From<LinkType> for u32 {
    fn from(l: LinkType) -> u32 {
        match l {
            LinkType::Null => 0,
            LinkType::Ethernet => 1,
            LinkType::Raw => 101,
            LinkType::Loop => 108,
            LinkType::LinuxSll => 113,
            LinkType::Ipv4 => 228,
            LinkType::Ipv6 => 229,
            LinkType::LinuxSll2 => 276,
            LinkType::Other(v) => v,
        }
    }
}

impl fmt::Display for LinkType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkType::Other(v) => write!(f, "linktype {v}"),
            other => write!(f, "{other:?}"),
        }
    }
}
