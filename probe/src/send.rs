//! The raw GRE socket towards one collector.
//!
//! Connected to the collector, so the kernel picks the route once and `IP_MTU`/`IPV6_MTU`
//! report the path MTU; set never to fragment, so a datagram over the path MTU is refused
//! (`EMSGSIZE`) rather than split; given a drop-all receive filter, because a raw GRE socket
//! would otherwise get a copy of every GRE packet the host receives and queue it unread.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tapwire_netio::batch::{self, Datagram, SendBatch};
use tapwire_netio::bpf;
use tapwire_netio::socket2::{SockAddr, Socket};

use crate::sys;

const SEND_BUFFER_BYTES: usize = 4 << 20;

pub const IPV4_HEADER_LEN: usize = 20;
pub const IPV6_HEADER_LEN: usize = 40;

#[derive(Debug)]
pub struct Sender {
    sock: Socket,
    collector: IpAddr,
    mtu_override: Option<u32>,
    mtu: u32,
    batch: SendBatch,
}

impl Sender {
    /// Opens and connects the socket. Needs CAP_NET_RAW. `mtu_override` replaces the path MTU
    /// the route gives.
    pub fn open(collector: IpAddr, mtu_override: Option<u32>) -> io::Result<Sender> {
        let v6 = collector.is_ipv6();
        let sock = if v6 {
            batch::gre_socket_v6()
        } else {
            batch::gre_socket_v4()
        }?;
        let ctx = |what: &str| {
            let what = format!("{what} (GRE socket to {collector})");
            move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"))
        };
        bpf::attach_filter(&sock, &[bpf::ret(0)]).map_err(ctx("drop-all receive filter"))?;
        sys::never_fragment(&sock, v6).map_err(ctx("IP_MTU_DISCOVER"))?;
        // The default is plenty for a probe that is not far behind; a larger one only absorbs
        // bursts. Not forced: that would need CAP_NET_ADMIN.
        let _ = sock.set_send_buffer_size(SEND_BUFFER_BYTES);
        // A send never blocks the capture thread for long (a stop is noticed).
        sock.set_write_timeout(Some(Duration::from_secs(1)))
            .map_err(ctx("SO_SNDTIMEO"))?;
        sock.connect(&SockAddr::from(SocketAddr::new(collector, 0)))
            .map_err(ctx("connect"))?;
        let mut s = Sender {
            sock,
            collector,
            mtu_override,
            mtu: 0,
            batch: SendBatch::new(),
        };
        s.mtu = s.current_mtu()?;
        Ok(s)
    }

    fn current_mtu(&self) -> io::Result<u32> {
        match self.mtu_override {
            Some(m) => Ok(m),
            None => sys::path_mtu(&self.sock, self.collector.is_ipv6()).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("path MTU to {} (IP_MTU): {e}", self.collector),
                )
            }),
        }
    }

    /// Reads the path MTU again (after `EMSGSIZE`, or now and then); true when it changed.
    pub fn refresh_mtu(&mut self) -> bool {
        match self.current_mtu() {
            Ok(m) if m != self.mtu => {
                self.mtu = m;
                true
            }
            _ => false,
        }
    }

    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    pub fn collector(&self) -> IpAddr {
        self.collector
    }

    /// The source address the kernel chose when the socket was connected: every datagram of
    /// this socket carries it.
    pub fn source(&self) -> Option<IpAddr> {
        self.sock
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.ip())
    }

    pub fn ip_header_len(&self) -> usize {
        if self.collector.is_ipv6() {
            IPV6_HEADER_LEN
        } else {
            IPV4_HEADER_LEN
        }
    }

    /// The largest GRE datagram that fits the path.
    pub fn max_payload(&self) -> usize {
        (self.mtu as usize).saturating_sub(self.ip_header_len())
    }

    /// Sends what it can of `datagrams`, skipping each one the kernel refuses, and tells
    /// `event` about each run of accepted datagrams and each refused one.
    pub fn send(&mut self, datagrams: &[Datagram<'_>], mut event: impl FnMut(SendEvent)) {
        let mut from = 0;
        while from < datagrams.len() {
            let out = self.batch.send(&self.sock, &datagrams[from..]);
            if out.n_sent > 0 {
                event(SendEvent::Sent(from..from + out.n_sent));
            }
            from += out.n_sent;
            if let Some(e) = out.error {
                event(SendEvent::Refused(from, e));
                from += 1;
            }
        }
    }
}

/// What happened to datagrams given to [`Sender::send`].
#[derive(Debug)]
pub enum SendEvent {
    /// These were accepted.
    Sent(std::ops::Range<usize>),
    /// This one was refused, for this reason.
    Refused(usize, io::Error),
}
