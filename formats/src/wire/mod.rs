//! Wire formats, one module per protocol, each laid out the same way:
//!
//! - a zero-copy `Packet<T: AsRef<[u8]>>` view whose `new_checked` validates every length once,
//!   so that no accessor can panic afterwards; setters exist when `T: AsMut<[u8]>`;
//! - a private `field` module of byte ranges;
//! - an owned `Repr` with `parse`, `buffer_len` and `emit`;
//! - tests with real captured bytes at the bottom.
//!
//! A malformed header is an [`Error`] naming the layer and, for short input, how many bytes were
//! needed. Errors are data here: callers count them by [`Error::reason`] and move on.

pub mod erspan;
pub mod ethernet;
pub mod geneve;
pub mod gre;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
pub mod sll;
pub mod tzsp;
pub mod udp;
pub mod vxlan;

use core::fmt;

/// The protocol layer an [`Error`] was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Layer {
    /// The link layer as a whole (an unknown link type).
    Link,
    /// An Ethernet II header.
    Ethernet,
    /// An 802.1Q or 802.1ad tag.
    Vlan,
    /// Linux cooked capture v1.
    Sll,
    /// Linux cooked capture v2.
    Sll2,
    /// An IPv4 header.
    Ipv4,
    /// An IPv6 header or one of its extension headers.
    Ipv6,
    /// A UDP header.
    Udp,
    /// A GRE header.
    Gre,
    /// An ERSPAN Type II header.
    ErspanII,
    /// An ERSPAN Type III header.
    ErspanIII,
    /// The ERSPAN Type III platform sub-header.
    ErspanPlatform,
    /// A VXLAN header.
    Vxlan,
    /// A GENEVE header and its options.
    Geneve,
    /// A TZSP header and its tagged fields.
    Tzsp,
}

impl Layer {
    /// The layer's name in counting keys (`gre`, `erspan_ii`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Layer::Link => "link",
            Layer::Ethernet => "ethernet",
            Layer::Vlan => "vlan",
            Layer::Sll => "sll",
            Layer::Sll2 => "sll2",
            Layer::Ipv4 => "ipv4",
            Layer::Ipv6 => "ipv6",
            Layer::Udp => "udp",
            Layer::Gre => "gre",
            Layer::ErspanII => "erspan_ii",
            Layer::ErspanIII => "erspan_iii",
            Layer::ErspanPlatform => "erspan_platform",
            Layer::Vxlan => "vxlan",
            Layer::Geneve => "geneve",
            Layer::Tzsp => "tzsp",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is wrong with a header. `Truncated` says how much was needed and how much there was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The header does not fit in what is left of the packet.
    #[error("{layer}: truncated, needed {needed} bytes, got {got}")]
    Truncated {
        /// Where.
        layer: Layer,
        /// Bytes the header needs.
        needed: usize,
        /// Bytes there were.
        got: usize,
    },
    /// A version this layer does not know.
    #[error("{layer}: unsupported version {version}")]
    Version {
        /// Where.
        layer: Layer,
        /// The version found.
        version: u8,
    },
    /// A feature this layer does not decode (GRE routing, an unknown frame type...).
    #[error("{layer}: unsupported {what}")]
    Unsupported {
        /// Where.
        layer: Layer,
        /// What, as a short stable word.
        what: &'static str,
    },
    /// A field contradicts the format (a length shorter than the header...).
    #[error("{layer}: malformed {what}")]
    Malformed {
        /// Where.
        layer: Layer,
        /// What, as a short stable word.
        what: &'static str,
    },
}

impl Error {
    /// The layer the error was found in.
    pub const fn layer(&self) -> Layer {
        match *self {
            Error::Truncated { layer, .. }
            | Error::Version { layer, .. }
            | Error::Unsupported { layer, .. }
            | Error::Malformed { layer, .. } => layer,
        }
    }

    /// A short stable name to count errors by, such as `gre_truncated` or `gre_routing`.
    pub fn reason(&self) -> Reason {
        let what = match *self {
            Error::Truncated { .. } => "truncated",
            Error::Version { .. } => "version",
            Error::Unsupported { what, .. } | Error::Malformed { what, .. } => what,
        };
        Reason {
            layer: self.layer(),
            what,
        }
    }

    pub(crate) const fn truncated(layer: Layer, needed: usize, got: usize) -> Error {
        Error::Truncated { layer, needed, got }
    }
}

/// A counting key for [`Error`]s: the layer and a short word, printed as `layer_word`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reason {
    /// Where.
    pub layer: Layer,
    /// What, as a short stable word (`truncated`, `routing`).
    pub what: &'static str,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.layer, self.what)
    }
}

/// The result of parsing a header.
pub type Result<T> = core::result::Result<T, Error>;

/// Returns `Err(Truncated)` unless `data` holds at least `needed` bytes.
#[inline]
pub(crate) fn need(layer: Layer, data: &[u8], needed: usize) -> Result<()> {
    if data.len() < needed {
        Err(Error::truncated(layer, needed, data.len()))
    } else {
        Ok(())
    }
}

// Big-endian field access on ranges that `new_checked` has already validated.
#[inline]
pub(crate) fn be16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

#[inline]
pub(crate) fn be32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

#[inline]
pub(crate) fn set_be16(data: &mut [u8], at: usize, v: u16) {
    data[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
pub(crate) fn set_be32(data: &mut [u8], at: usize, v: u32) {
    data[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Declares a newtype for a bit-limited header field with `try_new` and a checked `new`.
macro_rules! bounded_field {
    ($(#[$m:meta])* $name:ident, $int:ty, $bits:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name($int);

        impl $name {
            /// The field's width in bits.
            pub const BITS: u32 = $bits;
            /// The largest value the field holds.
            pub const MAX: $int = ((1u64 << $bits) - 1) as $int;

            /// `None` when `v` does not fit in the field.
            pub const fn try_new(v: $int) -> Option<Self> {
                if v <= Self::MAX { Some(Self(v)) } else { None }
            }

            /// Keeps the low bits, as a header field read off the wire does.
            pub const fn from_bits(v: $int) -> Self {
                Self(v & Self::MAX)
            }

            /// The value.
            pub const fn value(self) -> $int {
                self.0
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                core::fmt::Display::fmt(&self.0, f)
            }
        }
    };
}
pub(crate) use bounded_field;

/// The Internet checksum (RFC 1071) over `data`, folded and complemented.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
