//! Receive threads: one per socket input (raw GRE over IPv4 and IPv6, UDP for VXLAN, GENEVE and
//! TZSP) and one per AF_PACKET ring. Each fills batches from a small pool and hands them whole
//! to the engine, which hands them back. When the engine falls behind the pool runs dry, the
//! thread stops reading, and the kernel's queue overflows: those drops are counted by the
//! kernel (SO_RXQ_OVFL, PACKET_STATISTICS) and reported per input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use tapwire_netio::batch::{self, RecvBatch};
use tapwire_netio::ring::{Fanout, FanoutMode, Ring, RingConfig};
use tapwire_netio::socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::coverage::{Covered, socket_program};

/// Batches in flight per input: enough to absorb a burst while the engine works on one.
const POOL: usize = 8;
/// Datagrams per recvmmsg call.
const BATCH: usize = 64;
/// Large enough for any datagram: the kernel reassembles fragmented GRE up to 64 KiB.
const SLOT_BYTES: usize = 65_536;
const SOCKET_BUFFER_BYTES: usize = 32 << 20;
/// How often a thread wakes up to notice shutdown.
const POLL: Duration = Duration::from_millis(100);

/// What an input is, and so how the engine decapsulates what it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputKind {
    /// Raw IPPROTO_GRE over IPv4: datagrams start with the IPv4 header.
    GreV4(Ipv4Addr),
    /// Raw IPPROTO_GRE over IPv6: datagrams start at the GRE header.
    GreV6(Ipv6Addr),
    /// UDP bound to this address; the port says which encapsulation.
    Udp(SocketAddr),
    /// AF_PACKET on a monitor interface; `worker` of `workers` in one fanout group.
    Interface {
        name: String,
        worker: u16,
        workers: u16,
    },
}

impl InputKind {
    pub fn name(&self) -> String {
        match self {
            InputKind::GreV4(a) => format!("gre-v4 {a}"),
            InputKind::GreV6(a) => format!("gre-v6 {a}"),
            InputKind::Udp(a) => format!("udp {a}"),
            InputKind::Interface {
                name,
                worker,
                workers,
            } if *workers > 1 => format!("af_packet {name} #{worker}"),
            InputKind::Interface { name, .. } => format!("af_packet {name}"),
        }
    }
}

/// Counters one input thread updates and the engine reads.
#[derive(Debug, Default)]
pub struct InputCounters {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub kernel_drops: AtomicU64,
    pub error: Mutex<Option<String>>,
}

impl InputCounters {
    fn set_error(&self, e: Option<String>) {
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Frames copied out of an AF_PACKET ring block.
#[derive(Debug, Default)]
pub struct Frames {
    pub data: Vec<u8>,
    /// (offset, captured length, wire length, time)
    pub frames: Vec<(u32, u32, u32, u64)>,
}

#[derive(Debug)]
pub enum Payload {
    Socket(RecvBatch),
    Frames(Frames),
}

/// A filled batch on its way to the engine; `back` returns it to its thread's pool.
#[derive(Debug)]
pub struct Batch {
    pub input: usize,
    pub payload: Payload,
    pub back: Sender<Payload>,
}

/// An input ready to run: its socket or ring is already open, so errors surface at start.
pub struct Input {
    pub kind: InputKind,
    pub counters: Arc<InputCounters>,
    opened: Opened,
    /// What the other inputs read below the IP stack (see [`super::coverage`]).
    covered: Arc<Covered>,
}

enum Opened {
    Socket(Socket),
    Ring(Box<Ring>, RingConfig),
}

impl Input {
    /// Opens the socket or ring now, so that a bad address or a missing interface is refused
    /// at start with a clear error. A socket gets the filter that leaves to the other inputs
    /// what `covered` says they read, before it is bound.
    pub fn open(kind: InputKind, covered: Arc<Covered>) -> std::io::Result<Input> {
        let opened = match &kind {
            InputKind::GreV4(a) => Opened::Socket(gre_socket(&kind, IpAddr::V4(*a), &covered)?),
            InputKind::GreV6(a) => Opened::Socket(gre_socket(&kind, IpAddr::V6(*a), &covered)?),
            InputKind::Udp(a) => Opened::Socket(udp_socket(&kind, *a, &covered)?),
            InputKind::Interface { name, workers, .. } => {
                let config = RingConfig {
                    // By outer source, so that each sender's packets stay on one worker, in order.
                    fanout: (*workers > 1).then(|| Fanout {
                        group_id: fanout_group(name),
                        mode: FanoutMode::OuterSource,
                    }),
                    ..RingConfig::default()
                };
                let ring = Ring::open(name, &config).map_err(|e| ctx(e, name))?;
                Opened::Ring(Box::new(ring), config)
            }
        };
        Ok(Input {
            kind,
            counters: Arc::new(InputCounters::default()),
            opened,
            covered,
        })
    }

    /// Runs until `stop`, sending filled batches on `to_engine`.
    pub fn run(self, index: usize, to_engine: Sender<Batch>, stop: Arc<AtomicBool>) {
        let (back_tx, back_rx) = bounded(POOL);
        match self.opened {
            Opened::Socket(sock) => {
                for _ in 0..POOL {
                    let _ = back_tx.send(Payload::Socket(RecvBatch::new(BATCH, SLOT_BYTES)));
                }
                socket_loop(
                    index,
                    &self.kind,
                    &sock,
                    &self.covered,
                    &self.counters,
                    &to_engine,
                    &back_tx,
                    &back_rx,
                    &stop,
                );
            }
            Opened::Ring(ring, config) => {
                for _ in 0..POOL {
                    let _ = back_tx.send(Payload::Frames(Frames::default()));
                }
                ring_loop(
                    index,
                    *ring,
                    &config,
                    &self.covered,
                    &self.counters,
                    &to_engine,
                    &back_tx,
                    &back_rx,
                    &stop,
                );
            }
        }
    }
}

fn ctx(e: std::io::Error, what: &str) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn fanout_group(name: &str) -> u16 {
    // Stable per interface and per process, so two collectors do not join each other's group.
    let h = name.bytes().fold(std::process::id(), |h, b| {
        h.wrapping_mul(31).wrapping_add(u32::from(b))
    });
    (h & 0xffff) as u16
}

fn tune(sock: &Socket) {
    if let Err(e) = batch::set_recv_buffer(sock, SOCKET_BUFFER_BYTES) {
        tracing::warn!(error = %e, "cannot enlarge the receive buffer");
    }
    if let Err(e) = batch::enable_rxq_ovfl(sock) {
        tracing::warn!(error = %e, "kernel drop counter (SO_RXQ_OVFL) unavailable");
    }
    if let Err(e) = batch::enable_timestamps(sock) {
        tracing::warn!(error = %e, "kernel timestamps unavailable; using the receive time");
    }
    let _ = sock.set_read_timeout(Some(POLL));
}

/// Attaches to socket input `kind` the filter `covered` calls for, or takes its filter off when
/// it calls for none.
fn leave_covered(sock: &Socket, kind: &InputKind, covered: &Covered) -> std::io::Result<()> {
    match socket_program(kind, &covered.list()) {
        Some(p) => tapwire_netio::bpf::attach_filter(sock, &p),
        None => tapwire_netio::bpf::detach_filter(sock),
    }
}

fn gre_socket(kind: &InputKind, addr: IpAddr, covered: &Covered) -> std::io::Result<Socket> {
    let sock = match addr {
        IpAddr::V4(_) => batch::gre_socket_v4()?,
        IpAddr::V6(_) => batch::gre_socket_v6()?,
    };
    leave_covered(&sock, kind, covered)?;
    if !addr.is_unspecified() {
        sock.bind(&SockAddr::from(SocketAddr::new(addr, 0)))
            .map_err(|e| ctx(e, &format!("bind GRE to {addr}")))?;
    }
    tune(&sock);
    Ok(sock)
}

fn udp_socket(kind: &InputKind, addr: SocketAddr, covered: &Covered) -> std::io::Result<Socket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    leave_covered(&sock, kind, covered)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // [::]:port also takes IPv4, as IPv4-mapped addresses.
        sock.set_only_v6(false)?;
    }
    if addr.is_ipv6() {
        batch::accept_zero_udp6_checksum(&sock).map_err(|e| ctx(e, &format!("UDP {addr}")))?;
    }
    sock.set_reuse_address(true)?;
    sock.bind(&SockAddr::from(addr))
        .map_err(|e| ctx(e, &format!("bind UDP {addr}")))?;
    tune(&sock);
    Ok(sock)
}

/// Reads `sock` (input `kind`); its filter follows `covered` when a ring reopens its interface
/// under a new index.
#[allow(clippy::too_many_arguments)]
fn socket_loop(
    index: usize,
    kind: &InputKind,
    sock: &Socket,
    covered: &Covered,
    counters: &InputCounters,
    to_engine: &Sender<Batch>,
    back_tx: &Sender<Payload>,
    back_rx: &Receiver<Payload>,
    stop: &AtomicBool,
) {
    let mut generation = covered.generation();
    while !stop.load(Ordering::Relaxed) {
        if covered.generation() != generation {
            generation = covered.generation();
            if let Err(e) = leave_covered(sock, kind, covered) {
                tracing::warn!(input = kind.name(), error = %e, "cannot update the socket filter");
            }
        }
        let mut b = match back_rx.recv_timeout(POLL) {
            Ok(Payload::Socket(b)) => b,
            Ok(Payload::Frames(_)) => continue,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        match b.recv(sock) {
            Ok(n) if n > 0 => {
                let mut bytes = 0;
                let mut drops = None;
                for m in b.messages() {
                    bytes += m.len_bytes as u64;
                    drops = m.rxq_drops.or(drops);
                }
                counters.packets.fetch_add(n as u64, Ordering::Relaxed);
                counters.bytes.fetch_add(bytes, Ordering::Relaxed);
                if let Some(d) = drops {
                    // Cumulative per socket: keep the largest seen.
                    counters
                        .kernel_drops
                        .fetch_max(u64::from(d), Ordering::Relaxed);
                }
                if to_engine
                    .send(Batch {
                        input: index,
                        payload: Payload::Socket(b),
                        back: back_tx.clone(),
                    })
                    .is_err()
                {
                    return;
                }
            }
            Ok(_) => {
                let _ = back_tx.send(Payload::Socket(b));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                let _ = back_tx.send(Payload::Socket(b));
            }
            Err(e) => {
                tracing::warn!(error = %e, "receive failed");
                counters.set_error(Some(e.to_string()));
                let _ = back_tx.send(Payload::Socket(b));
                std::thread::sleep(POLL);
            }
        }
    }
}

/// Reads `ring`; tells `covered` the interface's new index when it reopens it.
#[allow(clippy::too_many_arguments)]
fn ring_loop(
    index: usize,
    mut ring: Ring,
    config: &RingConfig,
    covered: &Covered,
    counters: &InputCounters,
    to_engine: &Sender<Batch>,
    back_tx: &Sender<Payload>,
    back_rx: &Receiver<Payload>,
    stop: &AtomicBool,
) {
    let name = ring.interface().to_string();
    let mut last_stats = Instant::now();
    // Drops of rings closed after an error, so the counter stays monotonic across reopens.
    let mut drops_before = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut frames = match back_rx.recv_timeout(POLL) {
            Ok(Payload::Frames(f)) => f,
            Ok(Payload::Socket(_)) => continue,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        frames.data.clear();
        frames.frames.clear();
        let failure = match ring.next_block(POLL) {
            Ok(Some(block)) => {
                let mut bytes = 0u64;
                for p in &block {
                    let off = frames.data.len() as u32;
                    p.write_with_vlan(&mut frames.data);
                    let len = frames.data.len() as u32 - off;
                    frames.frames.push((off, len, p.wire_len, p.ts_ns));
                    bytes += u64::from(p.wire_len);
                }
                counters
                    .packets
                    .fetch_add(frames.frames.len() as u64, Ordering::Relaxed);
                counters.bytes.fetch_add(bytes, Ordering::Relaxed);
                None
            }
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if let Some(e) = failure {
            tracing::warn!(interface = name, error = %e, "capture failed; reopening");
            counters.set_error(Some(e.to_string()));
            let _ = back_tx.send(Payload::Frames(frames));
            drops_before += ring.stats().map_or(0, |s| s.n_drops);
            ring = loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
                match Ring::open(&name, config) {
                    Ok(r) => break r,
                    Err(e) => counters.set_error(Some(e.to_string())),
                }
            };
            counters.set_error(None);
            covered.set_ifindex(&name, ring.ifindex());
            tracing::info!(interface = name, "capture resumed");
            continue;
        }
        if last_stats.elapsed() >= Duration::from_secs(1) {
            last_stats = Instant::now();
            if let Ok(s) = ring.stats() {
                counters
                    .kernel_drops
                    .store(drops_before + s.n_drops, Ordering::Relaxed);
            }
        }
        if !frames.frames.is_empty() {
            if to_engine
                .send(Batch {
                    input: index,
                    payload: Payload::Frames(frames),
                    back: back_tx.clone(),
                })
                .is_err()
            {
                return;
            }
        } else {
            let _ = back_tx.send(Payload::Frames(frames));
        }
    }
}
