//! Batched datagram IO for the hot paths: many datagrams per `recvmmsg`/`sendmmsg` call, into
//! preallocated buffers and out of caller-owned slices.
//!
//! Works on any datagram or raw socket: UDP (VXLAN, GENEVE, TZSP inputs) and raw `IPPROTO_GRE`
//! ([`gre_socket_v4`], [`gre_socket_v6`]) for ERSPAN and GRE-TEB.
#![allow(unsafe_code)]

mod wire;

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::ptr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::context;
use crate::sys;
use wire::{AddrBuf, ControlBuf, decode_addr, encode_addr, parse_control};

/// One datagram of a [`RecvBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// The received bytes: at most the batch's buffer size.
    pub data: &'a [u8],
    /// The datagram's full length; larger than `data.len()` when truncated.
    pub len_bytes: usize,
    /// The buffer was too small for the datagram (`MSG_TRUNC`).
    pub truncated: bool,
    /// The sender, for IPv4 and IPv6 sockets. Raw IP sockets report port 0.
    pub source: Option<SocketAddr>,
    /// The socket's cumulative count of datagrams dropped for lack of buffer space, when
    /// [`enable_rxq_ovfl`] is on and the count is non-zero (the kernel sends no control message
    /// while it is zero).
    pub rxq_drops: Option<u32>,
    /// The kernel's receive time in nanoseconds since the Unix epoch, when
    /// [`enable_timestamps`] is on.
    pub ts_ns: Option<u64>,
}

/// Preallocated buffers for `recvmmsg`: `count` datagrams of up to `buf_size_bytes` each.
pub struct RecvBatch {
    buf_size: usize,
    data: Vec<u8>,
    names: Vec<AddrBuf>,
    controls: Vec<ControlBuf>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    n_filled: usize,
}

// SAFETY: the raw pointers in `iovs` and `hdrs` point only into this value's own heap buffers
// and are rewritten before every use in `recv`; nothing ties them to a thread.
unsafe impl Send for RecvBatch {}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("count", &self.hdrs.len())
            .field("buf_size", &self.buf_size)
            .field("n_filled", &self.n_filled)
            .finish()
    }
}

impl RecvBatch {
    /// `count` buffers of `buf_size_bytes` each (for example 64 x 65536). Both at least 1;
    /// `count` is capped at the kernel's per-call limit, 1024.
    pub fn new(count: usize, buf_size_bytes: usize) -> RecvBatch {
        let count = count.clamp(1, libc::UIO_MAXIOV as usize);
        let buf_size = buf_size_bytes.max(1);
        RecvBatch {
            buf_size,
            data: vec![0; count * buf_size],
            names: vec![AddrBuf::EMPTY; count],
            controls: vec![ControlBuf::EMPTY; count],
            iovs: vec![
                libc::iovec {
                    iov_base: ptr::null_mut(),
                    iov_len: 0
                };
                count
            ],
            // SAFETY: mmsghdr is plain data (integers and pointers); all-zero is valid.
            hdrs: vec![unsafe { std::mem::zeroed() }; count],
            n_filled: 0,
        }
    }

    /// How many datagrams one receive takes at most.
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Receives up to [`RecvBatch::capacity`] datagrams in one `recvmmsg`. On a blocking socket
    /// it waits for the first datagram, then takes what is already queued (`MSG_WAITFORONE`);
    /// bound the wait with a read timeout on the socket. A non-blocking socket with nothing
    /// queued gives [`io::ErrorKind::WouldBlock`]. Returns the number received; the previous
    /// batch's messages are gone.
    pub fn recv(&mut self, socket: &impl AsFd) -> io::Result<usize> {
        self.n_filled = 0;
        let base = self.data.as_mut_ptr();
        for (i, (iov, hdr)) in self.iovs.iter_mut().zip(self.hdrs.iter_mut()).enumerate() {
            // SAFETY: `i * buf_size` is inside `data`, which holds `count * buf_size` bytes.
            iov.iov_base = unsafe { base.add(i * self.buf_size) }.cast();
            iov.iov_len = self.buf_size;
            hdr.msg_hdr.msg_name = ptr::from_mut(&mut self.names[i]).cast();
            hdr.msg_hdr.msg_namelen = size_of::<AddrBuf>() as libc::socklen_t;
            hdr.msg_hdr.msg_iov = ptr::from_mut(iov);
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = ptr::from_mut(&mut self.controls[i]).cast();
            hdr.msg_hdr.msg_controllen = size_of::<ControlBuf>() as _;
            hdr.msg_hdr.msg_flags = 0;
            hdr.msg_len = 0;
        }
        let fd = socket.as_fd().as_raw_fd();
        loop {
            // SAFETY: every header points at buffers owned by `self` with the lengths given;
            // they stay alive and unaliased for the call. MSG_TRUNC makes the kernel report
            // the full length of a datagram that did not fit.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
                    self.hdrs.len() as libc::c_uint,
                    libc::MSG_WAITFORONE | libc::MSG_TRUNC,
                    ptr::null_mut(),
                )
            };
            if n >= 0 {
                self.n_filled = n as usize;
                return Ok(self.n_filled);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                // Not worth context: the caller expects it on a non-blocking socket.
                io::ErrorKind::WouldBlock => return Err(e),
                _ => return Err(context(e, "recvmmsg")),
            }
        }
    }

    /// How many datagrams the last receive filled.
    pub fn len(&self) -> usize {
        self.n_filled
    }

    /// Whether the last receive filled none.
    pub fn is_empty(&self) -> bool {
        self.n_filled == 0
    }

    /// The `i`-th datagram of the last [`RecvBatch::recv`].
    pub fn message(&self, i: usize) -> Option<Message<'_>> {
        (i < self.n_filled).then(|| self.filled(i))
    }

    /// The datagrams of the last [`RecvBatch::recv`], in order.
    pub fn messages(&self) -> impl ExactSizeIterator<Item = Message<'_>> + '_ {
        (0..self.n_filled).map(|i| self.filled(i))
    }

    /// Message `i`, which must be below `n_filled`.
    fn filled(&self, i: usize) -> Message<'_> {
        let hdr = &self.hdrs[i].msg_hdr;
        let len_bytes = self.hdrs[i].msg_len as usize;
        let start = i * self.buf_size;
        let data = &self.data[start..start + len_bytes.min(self.buf_size)];
        // msg_controllen is size_t on glibc but socklen_t on musl.
        #[allow(clippy::unnecessary_cast)]
        let control_len = (hdr.msg_controllen as usize).min(size_of::<ControlBuf>());
        let control = parse_control(&self.controls[i].0[..control_len]);
        Message {
            data,
            len_bytes,
            truncated: hdr.msg_flags & libc::MSG_TRUNC != 0 || len_bytes > self.buf_size,
            source: decode_addr(&self.names[i], hdr.msg_namelen as usize),
            rxq_drops: control.rxq_drops,
            ts_ns: control.ts_ns,
        }
    }
}

/// One outgoing datagram: the concatenation of `parts` (for example an encapsulation header
/// and a captured frame, sent without copying either) to `destination`, or to the connected
/// peer when `None`. Raw IP sockets ignore the port; give 0.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    /// Where to send it; `None`: the connected peer.
    pub destination: Option<SocketAddr>,
    /// The pieces sent one after the other as one datagram.
    pub parts: &'a [IoSlice<'a>],
}

/// What [`SendBatch::send`] did.
#[derive(Debug)]
pub struct SendOutcome {
    /// Datagrams the kernel accepted, from the start of the slice.
    pub n_sent: usize,
    /// Why datagram `n_sent` was not sent; `None` when all were.
    pub error: Option<io::Error>,
}

/// Scratch space for `sendmmsg`, reused across calls so sending does not allocate.
pub struct SendBatch {
    names: Vec<AddrBuf>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `hdrs` are written and used only within `send`, which borrows the
// datagrams for its whole duration; between calls they are never read.
unsafe impl Send for SendBatch {}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("capacity", &self.hdrs.capacity())
            .finish()
    }
}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch::new()
    }
}

impl SendBatch {
    /// An empty batch; it grows to the largest one sent and stays so.
    pub fn new() -> SendBatch {
        SendBatch {
            names: Vec::new(),
            hdrs: Vec::new(),
        }
    }

    /// Sends `datagrams` with as few `sendmmsg` calls as the kernel allows (it takes up to
    /// 1024 per call and may accept fewer). Stops at the first datagram the kernel refuses:
    /// the outcome says how many went and why the next did not (`WouldBlock` on a full
    /// non-blocking socket, `EMSGSIZE`, an unreachable destination). Skip or retry from there.
    pub fn send(&mut self, socket: &impl AsFd, datagrams: &[Datagram<'_>]) -> SendOutcome {
        self.names.clear();
        self.names.resize(datagrams.len(), AddrBuf::EMPTY);
        self.hdrs.clear();
        for (d, name) in datagrams.iter().zip(self.names.iter_mut()) {
            // SAFETY: mmsghdr is plain data; all-zero is valid.
            let mut hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
            if let Some(dest) = &d.destination {
                hdr.msg_hdr.msg_namelen = encode_addr(dest, name) as libc::socklen_t;
                hdr.msg_hdr.msg_name = ptr::from_mut(name).cast();
            }
            // IoSlice is guaranteed ABI-compatible with iovec on Unix; the kernel only reads.
            hdr.msg_hdr.msg_iov = d.parts.as_ptr().cast::<libc::iovec>().cast_mut();
            hdr.msg_hdr.msg_iovlen = d.parts.len() as _;
            self.hdrs.push(hdr);
        }

        let fd = socket.as_fd().as_raw_fd();
        let mut n_sent = 0;
        while n_sent < self.hdrs.len() {
            let rest = &mut self.hdrs[n_sent..];
            let vlen = rest.len().min(libc::UIO_MAXIOV as usize) as libc::c_uint;
            // SAFETY: the headers point at `self.names` and at the caller's `datagrams`, both
            // borrowed for the whole call; the kernel reads them and writes only `msg_len`.
            let n = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), vlen, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                let e = if e.kind() == io::ErrorKind::WouldBlock {
                    e
                } else {
                    context(e, format!("sendmmsg (datagram {n_sent})"))
                };
                return SendOutcome {
                    n_sent,
                    error: Some(e),
                };
            }
            n_sent += n as usize;
        }
        SendOutcome {
            n_sent,
            error: None,
        }
    }
}

/// Asks the kernel to attach its drop counter to every received datagram (`SO_RXQ_OVFL`),
/// read back as [`Message::rxq_drops`].
pub fn enable_rxq_ovfl(socket: &impl AsFd) -> io::Result<()> {
    sys::setsockopt(socket.as_fd(), libc::SOL_SOCKET, libc::SO_RXQ_OVFL, &1)
        .map_err(|e| context(e, "setsockopt(SO_RXQ_OVFL)"))
}

/// Asks the kernel to attach each datagram's receive time (`SO_TIMESTAMPNS`), read back as
/// [`Message::ts_ns`].
pub fn enable_timestamps(socket: &impl AsFd) -> io::Result<()> {
    sys::setsockopt(socket.as_fd(), libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &1)
        .map_err(|e| context(e, "setsockopt(SO_TIMESTAMPNS)"))
}

/// Accepts UDP over IPv6 with a zero checksum (`UDP_NO_CHECK6_RX`). RFC 6935/6936 allow it for
/// tunnels, and VXLAN/GENEVE senders use it (Linux `udp6zerocsumtx`); without this the kernel
/// discards such datagrams as checksum errors before the socket sees them.
pub fn accept_zero_udp6_checksum(socket: &impl AsFd) -> io::Result<()> {
    // From linux/udp.h; not in the libc crate.
    const UDP_NO_CHECK6_RX: libc::c_int = 102;
    sys::setsockopt(socket.as_fd(), libc::IPPROTO_UDP, UDP_NO_CHECK6_RX, &1)
        .map_err(|e| context(e, "setsockopt(UDP_NO_CHECK6_RX)"))
}

/// What [`set_recv_buffer`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvBuffer {
    /// The size asked for.
    pub requested_bytes: usize,
    /// `SO_RCVBUF` as read back. The kernel doubles what it grants to cover its bookkeeping,
    /// so an honoured request reads back as twice `requested_bytes`.
    pub granted_bytes: usize,
    /// `SO_RCVBUFFORCE` worked (needs `CAP_NET_ADMIN`), so `net.core.rmem_max` did not cap it.
    pub forced: bool,
}

/// Sets a large receive buffer: `SO_RCVBUFFORCE` first, and `SO_RCVBUF` (capped by
/// `net.core.rmem_max`) when that is not permitted. Returns what the kernel granted.
pub fn set_recv_buffer(socket: &impl AsFd, bytes: usize) -> io::Result<RecvBuffer> {
    let fd = socket.as_fd();
    // The kernel doubles the value into an int.
    let value = libc::c_int::try_from(bytes)
        .ok()
        .filter(|v| *v <= libc::c_int::MAX / 2)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("receive buffer of {bytes} bytes is over the kernel's limit"),
            )
        })?;
    let forced = match sys::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &value) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            sys::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &value)
                .map_err(|e| context(e, format!("setsockopt(SO_RCVBUF, {bytes})")))?;
            false
        }
        Err(e) => return Err(context(e, format!("setsockopt(SO_RCVBUFFORCE, {bytes})"))),
    };
    let granted: libc::c_int = sys::getsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)
        .map_err(|e| context(e, "getsockopt(SO_RCVBUF)"))?;
    Ok(RecvBuffer {
        requested_bytes: bytes,
        granted_bytes: usize::try_from(granted).unwrap_or(0),
        forced,
    })
}

/// A raw `IPPROTO_GRE` socket over IPv4. Received datagrams start with the **IPv4 header**
/// (the GRE header follows it, at `4 * IHL`); fragments arrive reassembled. Sent datagrams
/// start at the GRE header: the kernel writes the IPv4 header. Needs `CAP_NET_RAW`.
pub fn gre_socket_v4() -> io::Result<Socket> {
    Socket::new(
        Domain::IPV4,
        Type::from(libc::SOCK_RAW),
        Some(Protocol::from(libc::IPPROTO_GRE)),
    )
    .map_err(|e| context(e, "socket(AF_INET, SOCK_RAW, IPPROTO_GRE)"))
}

/// A raw `IPPROTO_GRE` socket over IPv6. Received datagrams start at the **GRE header** (IPv6
/// raw sockets never include the IPv6 header). Needs `CAP_NET_RAW`.
pub fn gre_socket_v6() -> io::Result<Socket> {
    Socket::new(
        Domain::IPV6,
        Type::from(libc::SOCK_RAW),
        Some(Protocol::from(libc::IPPROTO_GRE)),
    )
    .map_err(|e| context(e, "socket(AF_INET6, SOCK_RAW, IPPROTO_GRE)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recv_batch_clamps_its_sizes() {
        let b = RecvBatch::new(0, 0);
        assert_eq!(b.capacity(), 1);
        assert!(b.is_empty());
        assert!(b.message(0).is_none());
        assert_eq!(RecvBatch::new(5000, 16).capacity(), 1024);
    }

    #[test]
    fn oversized_recv_buffer_is_refused() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let e = set_recv_buffer(&sock, usize::MAX).expect_err("too big");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn send_of_nothing_sends_nothing() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let out = SendBatch::new().send(&sock, &[]);
        assert_eq!(out.n_sent, 0);
        assert!(out.error.is_none());
    }
}
