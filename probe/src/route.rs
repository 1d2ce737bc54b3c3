//! Route and neighbour tracking over rtnetlink: for each collector, the way its frames go
//! ([`crate::path::Path`]), kept current for the capture threads.
//!
//! One thread listens to the kernel's link, address, route and neighbour notifications; after
//! any of them (and at least once a second: path MTUs learnt from ICMP come without one) it
//! asks the kernel again, for each collector, which route it takes (`RTM_GETROUTE`), what the
//! egress interface is (`RTM_GETLINK`) and what the next hop's neighbour entry says
//! (`RTM_GETNEIGH`), and publishes every path that changed in its [`PathWatch`] with a new
//! generation. A capture thread compares the generation before each batch, so no batch is
//! built from a path the tracker has replaced. Messages are built and parsed by
//! `netlink-packet-route`; nothing here reads netlink bytes itself.

use std::collections::HashSet;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::path::{self, Fallback, LinkFacts, NeighFacts, NeighState, Path, RouteFacts, RouteKind};

/// Paths are asked again at least this often.
const REFRESH: Duration = Duration::from_secs(1);
/// How long the thread waits for a notification before it looks at its stop flag.
const POLL_MS: u16 = 200;
const RECV_BUFFER_BYTES: usize = 64 << 10;
/// The longest wait for the kernel's answer to one question.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// The current path to one collector. Readers compare [`PathWatch::generation`] with the one
/// they last saw and [`PathWatch::load`] only when it moved.
#[derive(Debug)]
pub struct PathWatch {
    dst: IpAddr,
    generation: AtomicU64,
    path: ArcSwap<Path>,
}

impl PathWatch {
    fn new(dst: IpAddr, path: Path) -> PathWatch {
        PathWatch {
            dst,
            generation: AtomicU64::new(1),
            path: ArcSwap::from_pointee(path),
        }
    }

    /// Bumped after every change of the path (Acquire: the path stored before it is seen).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn load(&self) -> Arc<Path> {
        self.path.load_full()
    }

    /// Stores `path` if it differs; true when it did.
    fn publish(&self, path: Path) -> bool {
        if *self.path.load_full() == path {
            return false;
        }
        self.path.store(Arc::new(path));
        self.generation.fetch_add(1, Ordering::Release);
        true
    }
}

#[derive(Debug, Default)]
struct Shared {
    watches: Mutex<Vec<Arc<PathWatch>>>,
    /// A watch was added: the thread must learn its next hop before it judges notifications,
    /// or the one that resolves it is thrown away as irrelevant until the next refresh.
    added: AtomicBool,
    stop: AtomicBool,
}

/// The tracking thread and the collectors it watches; stops with the last owner.
#[derive(Debug)]
pub struct Tracker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Tracker {
    pub fn start() -> io::Result<Tracker> {
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("probe-routes".into())
            .spawn(move || run(&s))?;
        Ok(Tracker {
            shared,
            thread: Some(thread),
        })
    }

    /// The watch of `dst`, made and resolved once now (in the caller's thread) if new.
    pub fn watch(&self, dst: IpAddr) -> Arc<PathWatch> {
        let mut watches = self
            .shared
            .watches
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(w) = watches.iter().find(|w| w.dst == dst) {
            return Arc::clone(w);
        }
        let path = match Rtnl::open() {
            Ok(mut r) => r.resolve(dst),
            Err(e) => Path::Raw(Fallback::Netlink(e.to_string())),
        };
        let w = Arc::new(PathWatch::new(dst, path));
        watches.push(Arc::clone(&w));
        self.shared.added.store(true, Ordering::Release);
        w
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The tracking thread: notifications in, paths out, until told to stop.
fn run(shared: &Shared) {
    let mut events: Option<Socket> = None;
    let mut rtnl: Option<Rtnl> = None;
    let mut last = Instant::now();
    let mut dirty = true;
    let mut next_hops: HashSet<IpAddr> = HashSet::new();
    let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUFFER_BYTES);
    while !shared.stop.load(Ordering::Relaxed) {
        if events.is_none() {
            match subscribe() {
                Ok(s) => {
                    events = Some(s);
                    // Changes while unsubscribed went unheard.
                    dirty = true;
                }
                Err(e) => publish_all(shared, &Path::Raw(Fallback::Netlink(e.to_string()))),
            }
        }
        if rtnl.is_none() {
            rtnl = Rtnl::open().ok();
        }
        dirty |= shared.added.swap(false, Ordering::AcqRel);
        if dirty || last.elapsed() >= REFRESH {
            let watches: Vec<Arc<PathWatch>> = {
                let mut w = shared.watches.lock().unwrap_or_else(|p| p.into_inner());
                // A collector no capture thread sends to any more is forgotten.
                w.retain(|w| Arc::strong_count(w) > 1);
                w.clone()
            };
            next_hops.clear();
            for w in watches {
                let path = match &mut rtnl {
                    Some(r) => r.resolve(w.dst),
                    None => Path::Raw(Fallback::Netlink("cannot open a netlink socket".into())),
                };
                match &path {
                    Path::Fast(f) => next_hops.insert(f.next_hop),
                    Path::Raw(Fallback::Unresolved { next_hop, .. }) => next_hops.insert(*next_hop),
                    Path::Raw(_) => false,
                };
                if w.publish(path) {
                    let p = w.load();
                    tracing::info!(collector = %w.dst, path = %describe(&p), "path to the collector changed");
                }
            }
            last = Instant::now();
            dirty = false;
        }
        let Some(sock) = &events else {
            std::thread::sleep(Duration::from_millis(u64::from(POLL_MS)));
            continue;
        };
        match wait_readable(sock, POLL_MS) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(_) => {
                events = None;
                continue;
            }
        }
        // Everything queued now, then one resolution for all of it.
        loop {
            buf.clear();
            match sock.recv(&mut buf, libc::MSG_DONTWAIT) {
                Ok(0) => break,
                Ok(_) => dirty |= relevant(&buf, &next_hops),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ENOBUFS: notifications were lost; resolve everything.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => dirty = true,
                Err(_) => {
                    events = None;
                    break;
                }
            }
        }
    }
}

fn publish_all(shared: &Shared, path: &Path) {
    for w in shared
        .watches
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        w.publish(path.clone());
    }
}

/// A path in one line, for logs and stats.
pub fn describe(p: &Path) -> String {
    match p {
        Path::Fast(f) => format!(
            "fast via {} to {} ({}), source {}, MTU {}{}",
            f.interface,
            f.next_hop,
            path::mac_text(&f.dst_mac),
            f.src,
            f.mtu,
            if f.confirm { ", neighbour stale" } else { "" }
        ),
        Path::Raw(why) => format!("raw socket: {why}"),
    }
}

/// Whether a notification can change a path: neighbour news only about next hops in use (or
/// waited for); any link, address or route news.
fn relevant(datagram: &[u8], next_hops: &HashSet<IpAddr>) -> bool {
    let mut at = 0;
    let mut any = false;
    while at < datagram.len() {
        let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[at..]) else {
            // Not understood: look again to be safe.
            return true;
        };
        let len = msg.header.length as usize;
        any |= match msg.payload {
            NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n),
            ) => neighbour_addr(&n).is_none_or(|a| next_hops.contains(&a)),
            NetlinkPayload::InnerMessage(_) => true,
            _ => false,
        };
        if len == 0 {
            break;
        }
        at += len.next_multiple_of(4);
    }
    any
}

fn subscribe() -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind_auto()?;
    for group in [
        libc::RTNLGRP_LINK,
        libc::RTNLGRP_NEIGH,
        libc::RTNLGRP_IPV4_IFADDR,
        libc::RTNLGRP_IPV6_IFADDR,
        libc::RTNLGRP_IPV4_ROUTE,
        libc::RTNLGRP_IPV6_ROUTE,
    ] {
        s.add_membership(group)?;
    }
    // A burst of neighbour news must not overflow the queue before the thread reads it.
    let _ = s.set_rx_buf_sz(4 << 20);
    Ok(s)
}

fn wait_readable(sock: &Socket, timeout_ms: u16) -> io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(timeout_ms)) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// A request socket: one question, one answer.
struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    fn open() -> io::Result<Rtnl> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // The kernel always answers; should it not, the thread must not hang.
        tapwire_netio::socket2::SockRef::from(&sock).set_read_timeout(Some(ASK_TIMEOUT))?;
        Ok(Rtnl {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUFFER_BYTES),
        })
    }

    /// Sends `msg` (not a dump) and returns the kernel's answer, or its error as an errno.
    fn ask(&mut self, msg: RouteNetlinkMessage) -> Result<RouteNetlinkMessage, io::Error> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.sock.send(&out, 0)?;
        loop {
            self.buf.clear();
            let n = self.sock.recv(&mut self.buf, 0)?;
            let Ok(reply) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[..n])
            else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "an answer netlink-packet-route cannot parse",
                ));
            };
            // An answer to an earlier question that timed out: skip it.
            if reply.header.sequence_number != self.seq {
                continue;
            }
            return match reply.payload {
                NetlinkPayload::InnerMessage(m) => Ok(m),
                NetlinkPayload::Error(e) => Err(match e.code {
                    Some(code) => io::Error::from_raw_os_error(-code.get()),
                    None => io::Error::other("an acknowledgement instead of an answer"),
                }),
                _ => Err(io::Error::other("an unexpected netlink answer")),
            };
        }
    }

    /// The whole decision for `dst`.
    fn resolve(&mut self, dst: IpAddr) -> Path {
        let route = match self.route(dst) {
            Ok(r) => r,
            Err(e) => return Path::Raw(Fallback::NoRoute(e)),
        };
        let Some(oif) = route.oif else {
            return path::decide(dst, &route, &no_link(), None);
        };
        let link = match self.link(oif) {
            Ok(l) => l,
            Err(e) => return Path::Raw(Fallback::Netlink(format!("interface {oif}: {e}"))),
        };
        let next_hop = route.gateway.unwrap_or(dst);
        let neigh = match self.neighbour(oif, next_hop) {
            Ok(n) => n,
            Err(e) => return Path::Raw(Fallback::Netlink(format!("neighbour {next_hop}: {e}"))),
        };
        path::decide(dst, &route, &link, neigh.as_ref())
    }

    fn route(&mut self, dst: IpAddr) -> Result<RouteFacts, String> {
        let mut m = RouteMessage::default();
        m.header.address_family = family(dst);
        m.header.destination_prefix_length = if dst.is_ipv6() { 128 } else { 32 };
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        let reply = self
            .ask(RouteNetlinkMessage::GetRoute(m))
            .map_err(|e| e.to_string())?;
        let RouteNetlinkMessage::NewRoute(r) = reply else {
            return Err("the kernel answered something else than a route".into());
        };
        let mut facts = RouteFacts {
            kind: match r.header.kind {
                RouteType::Unicast => RouteKind::Unicast,
                RouteType::Local => RouteKind::Local,
                RouteType::BlackHole
                | RouteType::Unreachable
                | RouteType::Prohibit
                | RouteType::Throw => RouteKind::Refused,
                _ => RouteKind::Other,
            },
            oif: None,
            gateway: None,
            pref_src: None,
            mtu: None,
        };
        for a in r.attributes {
            match a {
                RouteAttribute::Oif(i) => facts.oif = Some(i),
                RouteAttribute::Gateway(g) => facts.gateway = ip_of(&g),
                RouteAttribute::PrefSource(s) => facts.pref_src = ip_of(&s),
                RouteAttribute::Metrics(ms) => {
                    for m in ms {
                        if let RouteMetric::Mtu(v) = m {
                            facts.mtu = Some(v);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(facts)
    }

    fn link(&mut self, index: u32) -> Result<LinkFacts, String> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        let reply = self
            .ask(RouteNetlinkMessage::GetLink(m))
            .map_err(|e| e.to_string())?;
        let RouteNetlinkMessage::NewLink(l) = reply else {
            return Err("the kernel answered something else than a link".into());
        };
        let flags = l.header.flags;
        let mut facts = LinkFacts {
            index,
            name: format!("ifindex {index}"),
            kind: None,
            link_type: u16::from(l.header.link_layer_type),
            mac: None,
            mtu: 0,
            up: flags.contains(LinkFlags::Up),
            lower_up: flags.contains(LinkFlags::LowerUp),
            loopback: flags.contains(LinkFlags::Loopback),
        };
        for a in l.attributes {
            match a {
                LinkAttribute::IfName(n) => facts.name = n,
                LinkAttribute::Mtu(m) => facts.mtu = m,
                LinkAttribute::Address(a) => facts.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            facts.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(facts)
    }

    /// The neighbour entry of `addr` on `ifindex`; `None` when there is none.
    fn neighbour(&mut self, ifindex: u32, addr: IpAddr) -> Result<Option<NeighFacts>, String> {
        let mut m = NeighbourMessage::default();
        m.header.family = family(addr);
        m.header.ifindex = ifindex;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(
                addr,
            )));
        let reply = match self.ask(RouteNetlinkMessage::GetNeighbour(m)) {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let RouteNetlinkMessage::NewNeighbour(n) = reply else {
            return Err("the kernel answered something else than a neighbour".into());
        };
        let mac = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(a) => <[u8; 6]>::try_from(a.as_slice()).ok(),
            _ => None,
        });
        Ok(Some(NeighFacts {
            state: neigh_state(n.header.state),
            mac,
        }))
    }
}

fn neigh_state(s: NeighbourState) -> NeighState {
    match s {
        NeighbourState::Incomplete => NeighState::Incomplete,
        NeighbourState::Reachable => NeighState::Reachable,
        NeighbourState::Stale => NeighState::Stale,
        NeighbourState::Delay => NeighState::Delay,
        NeighbourState::Probe => NeighState::Probe,
        NeighbourState::Failed => NeighState::Failed,
        NeighbourState::Noarp => NeighState::NoArp,
        NeighbourState::Permanent => NeighState::Permanent,
        _ => NeighState::None,
    }
}

fn neighbour_addr(n: &NeighbourMessage) -> Option<IpAddr> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    })
}

fn family(a: IpAddr) -> AddressFamily {
    if a.is_ipv6() {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// A route without an output interface has none to look at.
fn no_link() -> LinkFacts {
    LinkFacts {
        index: 0,
        name: "no interface".into(),
        kind: None,
        link_type: 0,
        mac: None,
        mtu: 0,
        up: false,
        lower_up: false,
        loopback: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_collectors_are_local() {
        // Every namespace has lo and 127.0.0.1: the route is local, so the raw path serves it.
        let mut r = Rtnl::open().expect("netlink");
        match r.resolve("127.0.0.1".parse().expect("addr")) {
            Path::Raw(Fallback::Local) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn watches_publish_only_changes() {
        let w = PathWatch::new(
            "192.0.2.1".parse().expect("addr"),
            Path::Raw(Fallback::Pending),
        );
        let g = w.generation();
        assert!(!w.publish(Path::Raw(Fallback::Pending)));
        assert_eq!(w.generation(), g);
        assert!(w.publish(Path::Raw(Fallback::Local)));
        assert_eq!(w.generation(), g + 1);
        assert_eq!(*w.load(), Path::Raw(Fallback::Local));
    }
}
