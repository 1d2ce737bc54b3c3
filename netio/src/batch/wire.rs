//! Socket addresses and control messages as bytes: the parts of `recvmmsg`/`sendmmsg` that need
//! no kernel to test.

use std::mem::{offset_of, size_of};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Room for any socket address (`sockaddr_storage`), aligned like one.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(crate) struct AddrBuf(pub [u8; size_of::<libc::sockaddr_storage>()]);

impl AddrBuf {
    pub const EMPTY: AddrBuf = AddrBuf([0; size_of::<libc::sockaddr_storage>()]);
}

const _: () = {
    assert!(size_of::<libc::sockaddr_in>() == 16);
    assert!(size_of::<libc::sockaddr_in6>() == 28);
    assert!(offset_of!(libc::sockaddr_in, sin_port) == 2);
    assert!(offset_of!(libc::sockaddr_in, sin_addr) == 4);
    assert!(offset_of!(libc::sockaddr_in6, sin6_port) == 2);
    assert!(offset_of!(libc::sockaddr_in6, sin6_flowinfo) == 4);
    assert!(offset_of!(libc::sockaddr_in6, sin6_addr) == 8);
    assert!(offset_of!(libc::sockaddr_in6, sin6_scope_id) == 24);
};

/// Reads a `sockaddr_in`/`sockaddr_in6` of `len` bytes. `None` for other families (a packet
/// socket's `sockaddr_ll`) and for lengths too short to hold the family's address.
pub(crate) fn decode_addr(buf: &AddrBuf, len: usize) -> Option<SocketAddr> {
    let b = buf.0.get(..len)?;
    if b.len() < 2 {
        return None;
    }
    let family = libc::c_int::from(u16::from_ne_bytes([b[0], b[1]]));
    match family {
        libc::AF_INET if b.len() >= 8 => {
            let port = u16::from_be_bytes([b[2], b[3]]);
            let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        libc::AF_INET6 if b.len() >= 24 => {
            let port = u16::from_be_bytes([b[2], b[3]]);
            let flowinfo = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&b[8..24]);
            let scope_id = match b.get(24..28) {
                Some(s) => u32::from_ne_bytes([s[0], s[1], s[2], s[3]]),
                None => 0,
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flowinfo,
                scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes `addr` as a `sockaddr_in`/`sockaddr_in6` and returns its length.
pub(crate) fn encode_addr(addr: &SocketAddr, buf: &mut AddrBuf) -> usize {
    let b = &mut buf.0;
    b.fill(0);
    match addr {
        SocketAddr::V4(a) => {
            b[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&a.port().to_be_bytes());
            b[4..8].copy_from_slice(&a.ip().octets());
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            b[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&a.port().to_be_bytes());
            b[4..8].copy_from_slice(&a.flowinfo().to_be_bytes());
            b[8..24].copy_from_slice(&a.ip().octets());
            b[24..28].copy_from_slice(&a.scope_id().to_ne_bytes());
            size_of::<libc::sockaddr_in6>()
        }
    }
}

/// Room for the control messages of one datagram: `SO_RXQ_OVFL` (24 bytes) with space to spare
/// for a timestamp the caller may have enabled.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(crate) struct ControlBuf(pub [u8; 128]);

impl ControlBuf {
    pub const EMPTY: ControlBuf = ControlBuf([0; 128]);
}

const CMSG_HDR_LEN: usize = size_of::<libc::cmsghdr>();
const CMSG_ALIGN: usize = size_of::<usize>();
const _: () = {
    assert!(offset_of!(libc::cmsghdr, cmsg_len) == 0);
    assert!(size_of::<libc::size_t>() == CMSG_ALIGN);
    assert!(offset_of!(libc::cmsghdr, cmsg_level) == CMSG_ALIGN);
    assert!(offset_of!(libc::cmsghdr, cmsg_type) == CMSG_ALIGN + 4);
    assert!(CMSG_HDR_LEN.is_multiple_of(CMSG_ALIGN));
};

/// What the control messages of one datagram carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Control {
    pub rxq_drops: Option<u32>,
    /// `SO_TIMESTAMPNS`: receive time in nanoseconds since the Unix epoch.
    pub ts_ns: Option<u64>,
}

/// Reads `SO_RXQ_OVFL` and `SO_TIMESTAMPNS` from `control` (the first `msg_controllen`
/// bytes), walking the messages the way `CMSG_NXTHDR` does but with bounds checks.
pub(crate) fn parse_control(control: &[u8]) -> Control {
    let mut out = Control::default();
    let mut at = 0usize;
    while let Some(hdr) = at
        .checked_add(CMSG_HDR_LEN)
        .and_then(|end| control.get(at..end))
    {
        let mut len_bytes = [0u8; CMSG_ALIGN];
        len_bytes.copy_from_slice(&hdr[..CMSG_ALIGN]);
        let len = usize::from_ne_bytes(len_bytes);
        let level = i32::from_ne_bytes([
            hdr[CMSG_ALIGN],
            hdr[CMSG_ALIGN + 1],
            hdr[CMSG_ALIGN + 2],
            hdr[CMSG_ALIGN + 3],
        ]);
        let kind = i32::from_ne_bytes([
            hdr[CMSG_ALIGN + 4],
            hdr[CMSG_ALIGN + 5],
            hdr[CMSG_ALIGN + 6],
            hdr[CMSG_ALIGN + 7],
        ]);
        if len < CMSG_HDR_LEN {
            break;
        }
        let Some(data) = at
            .checked_add(len)
            .and_then(|end| control.get(at + CMSG_HDR_LEN..end))
        else {
            break;
        };
        if level == libc::SOL_SOCKET {
            if kind == libc::SO_RXQ_OVFL && data.len() >= 4 {
                out.rxq_drops = Some(u32::from_ne_bytes([data[0], data[1], data[2], data[3]]));
            } else if kind == libc::SO_TIMESTAMPNS && data.len() >= 16 {
                // struct timespec { time_t tv_sec; long tv_nsec; } on 64-bit Linux.
                let mut sec = [0u8; 8];
                let mut nsec = [0u8; 8];
                sec.copy_from_slice(&data[..8]);
                nsec.copy_from_slice(&data[8..16]);
                let (sec, nsec) = (i64::from_ne_bytes(sec), i64::from_ne_bytes(nsec));
                if sec >= 0 && (0..1_000_000_000).contains(&nsec) {
                    out.ts_ns = Some(sec as u64 * 1_000_000_000 + nsec as u64);
                }
            }
        }
        let Some(next) = at.checked_add(len.next_multiple_of(CMSG_ALIGN)) else {
            break;
        };
        at = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        let addrs: [SocketAddr; 3] = [
            "127.0.0.1:4789".parse().expect("v4"),
            "[::1]:6081".parse().expect("v6"),
            SocketAddr::V6(SocketAddrV6::new(
                "fe80::1".parse().expect("ll"),
                9,
                0x000a_bcde,
                3,
            )),
        ];
        for a in addrs {
            let mut buf = AddrBuf::EMPTY;
            let len = encode_addr(&a, &mut buf);
            assert_eq!(decode_addr(&buf, len), Some(a));
        }
    }

    #[test]
    fn v4_bytes_are_network_order() {
        let mut buf = AddrBuf::EMPTY;
        encode_addr(&"10.1.2.3:258".parse().expect("v4"), &mut buf);
        assert_eq!(&buf.0[2..8], &[1, 2, 10, 1, 2, 3]);
    }

    #[test]
    fn short_or_foreign_addresses_are_none() {
        let mut buf = AddrBuf::EMPTY;
        let len = encode_addr(&"[::1]:1".parse().expect("v6"), &mut buf);
        assert_eq!(decode_addr(&buf, 10), None);
        assert_eq!(decode_addr(&buf, 0), None);
        assert!(decode_addr(&buf, len).is_some());
        buf.0[0..2].copy_from_slice(&(libc::AF_PACKET as u16).to_ne_bytes());
        assert_eq!(decode_addr(&buf, 20), None);
        assert_eq!(decode_addr(&buf, 4096), None, "length past the buffer");
    }

    fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let len = CMSG_HDR_LEN + data.len();
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&level.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(data);
        m.resize(len.next_multiple_of(CMSG_ALIGN), 0);
        m
    }

    #[test]
    fn finds_rxq_ovfl_after_other_messages() {
        let mut control = cmsg(libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &[7; 16]);
        control.extend(cmsg(
            libc::SOL_SOCKET,
            libc::SO_RXQ_OVFL,
            &42u32.to_ne_bytes(),
        ));
        assert_eq!(parse_control(&control).rxq_drops, Some(42));
        assert_eq!(parse_control(&control[..16]).rxq_drops, None);
    }

    #[test]
    fn finds_timestamp() {
        let mut ts = Vec::new();
        ts.extend_from_slice(&1_700_000_000i64.to_ne_bytes());
        ts.extend_from_slice(&123_456_789i64.to_ne_bytes());
        let mut control = cmsg(libc::SOL_SOCKET, libc::SO_RXQ_OVFL, &7u32.to_ne_bytes());
        control.extend(cmsg(libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &ts));
        assert_eq!(
            parse_control(&control),
            Control {
                rxq_drops: Some(7),
                ts_ns: Some(1_700_000_000_123_456_789)
            }
        );
        let mut bad = ts.clone();
        bad[8..16].copy_from_slice(&2_000_000_000i64.to_ne_bytes());
        assert_eq!(
            parse_control(&cmsg(libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &bad)).ts_ns,
            None
        );
        assert_eq!(parse_control(&[]).rxq_drops, None);
    }

    #[test]
    fn corrupt_lengths_stop_the_walk() {
        let mut control = cmsg(libc::SOL_SOCKET, libc::SO_RXQ_OVFL, &1u32.to_ne_bytes());
        control[..CMSG_ALIGN].copy_from_slice(&usize::MAX.to_ne_bytes());
        assert_eq!(parse_control(&control).rxq_drops, None);
        control[..CMSG_ALIGN].copy_from_slice(&3usize.to_ne_bytes());
        assert_eq!(parse_control(&control).rxq_drops, None);
        control[..CMSG_ALIGN].copy_from_slice(&1000usize.to_ne_bytes());
        assert_eq!(parse_control(&control).rxq_drops, None);
    }
}
