//! Receive threads: one per socket input (raw GRE over IPv4 and IPv6, UDP for VXLAN, GENEVE and
//! TZSP), one per AF_PACKET ring, and one per AF_XDP interface (all its queues' sockets). Each
//! fills batches from a small pool and hands them whole to the engine, which hands them back.
//! When the engine falls behind the pool runs dry, the thread stops reading, and the kernel's
//! queue overflows: those drops are counted by the kernel (SO_RXQ_OVFL, PACKET_STATISTICS,
//! XDP_STATISTICS) and reported per input.
//!
//! The AF_XDP input (`--xdp IF`) takes, before the IP stack, exactly what the socket inputs
//! would have received through IF: GRE to the raw GRE inputs' addresses, UDP to the UDP inputs'
//! addresses and ports (an unspecified address stands for every local address, looked up again
//! each second). Those packets never reach the stack, so the sockets, which stay open, cannot
//! read them a second time, and the kernel answers no sender with ICMP for them. Outer
//! fragments are steered too and reassembled by the pipeline (`formats::defrag`), so a
//! sender's packets stay on one input, in order: all GRE fragments to a steered address, and
//! each UDP datagram's fragments as its first fragment to arrive decides (steered when that is
//! the one with the port and the port is a mirror port; otherwise the whole datagram is passed,
//! and the kernel reassembles it for the UDP socket). What the XDP program passes (those
//! datagrams, frames longer than a UMEM chunk, traffic on other interfaces) the sockets read as
//! before.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use tapwire_netio::batch::{self, RecvBatch};
use tapwire_netio::ring::{Fanout, FanoutMode, Ring, RingConfig};
use tapwire_netio::socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tapwire_netio::xdp::{self, Dest, XdpProgram};
use tapwire_netio::xsk::{self, Xsk, XskConfig};

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
/// How long an input rests after a read that took less than half a batch: the kernel's queue
/// (socket buffer, ring, AF_XDP rx ring) gathers the next batch meanwhile, instead of waking
/// this thread, and through it the engine on the same core, every few packets. Every input
/// keeps the kernel's receive time of each packet, and each queue holds far more than arrives
/// in this time at any rate the core can take.
const COALESCE: Duration = Duration::from_micros(200);
/// Frames per AF_XDP batch, over all of an interface's sockets.
const XDP_BATCH: u32 = 4096;
/// Bytes of frames per batch of the AF_XDP and ring inputs, at most (a ring block, 1 MiB, may
/// exceed it by its VLAN tags). Every batch of the pool is allocated and touched at start:
/// a burst then copies into memory that is resident, not into fresh pages (a page fault each,
/// on a VM a host fault too), which is what a fresh collector lost large frames to.
const FRAME_BATCH_BYTES: usize = 2 << 20;
/// UMEM per AF_XDP interface unless `--xdp-umem` says otherwise: what holds a burst while the
/// input thread waits for the CPU (tcpdump -B 65536 holds 64 MiB too). With 2 KiB chunks (MTU
/// up to 1774) 32,768 frames of any size, a 46 MiB burst of 1.4 KB frames.
pub const DEFAULT_XDP_UMEM_BYTES: u64 = 64 << 20;
/// How often the AF_XDP input reads its counters, looks up the local addresses again and
/// checks that its interface is still the one it attached to.
const XDP_TICK: Duration = Duration::from_secs(1);
/// At most one warning about kernel drops on an AF_XDP input this often.
const XDP_DROP_WARNING: Duration = Duration::from_secs(10);

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
    /// AF_XDP on an interface, one socket per receive queue, steering `dests` (an unspecified
    /// address stands for every local address; see [`xdp_dests`]), with `umem_bytes` of UMEM
    /// shared by its sockets.
    Xdp {
        name: String,
        dests: Vec<Dest>,
        umem_bytes: u64,
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
            InputKind::Xdp { name, .. } => format!("xdp {name}"),
        }
    }

    /// The kind alone, as the API names it.
    pub fn kind(&self) -> &'static str {
        match self {
            InputKind::GreV4(_) => "gre-v4",
            InputKind::GreV6(_) => "gre-v6",
            InputKind::Udp(_) => "udp",
            InputKind::Interface { .. } => "af_packet",
            InputKind::Xdp { .. } => "xdp",
        }
    }

    /// The interface it reads, for the inputs that read one.
    pub fn interface(&self) -> Option<&str> {
        match self {
            InputKind::Interface { name, .. } | InputKind::Xdp { name, .. } => Some(name),
            InputKind::GreV4(_) | InputKind::GreV6(_) | InputKind::Udp(_) => None,
        }
    }
}

/// What an AF_XDP input steers: what the socket inputs among `inputs` receive.
pub fn xdp_dests(inputs: &[InputKind]) -> Vec<Dest> {
    inputs
        .iter()
        .filter_map(|k| match k {
            InputKind::GreV4(a) => Some(Dest::Gre(IpAddr::V4(*a))),
            InputKind::GreV6(a) => Some(Dest::Gre(IpAddr::V6(*a))),
            InputKind::Udp(sa) => Some(Dest::Udp(sa.ip(), sa.port())),
            InputKind::Interface { .. } | InputKind::Xdp { .. } => None,
        })
        .collect()
}

/// `dests` with each unspecified address replaced by the `local` addresses a socket bound to it
/// receives for: 0.0.0.0 the IPv4 ones; `::` the IPv6 ones, and for UDP the IPv4 ones too (the
/// UDP inputs bind `[::]` dual-stack).
pub fn expand_dests(dests: &[Dest], local: &[IpAddr]) -> Vec<Dest> {
    let mut out = Vec::new();
    for d in dests {
        let (addr, make): (IpAddr, &dyn Fn(IpAddr) -> Dest) = match d {
            Dest::Gre(a) => (*a, &Dest::Gre),
            Dest::Udp(a, p) => (*a, &move |x| Dest::Udp(x, *p)),
        };
        if !addr.is_unspecified() {
            out.push(*d);
            continue;
        }
        let takes = |l: &IpAddr| {
            matches!(
                (addr, l, d),
                (IpAddr::V4(_), IpAddr::V4(_), _)
                    | (IpAddr::V6(_), IpAddr::V6(_), _)
                    | (IpAddr::V6(_), IpAddr::V4(_), Dest::Udp(..))
            )
        };
        out.extend(local.iter().filter(|l| takes(l)).map(|l| make(*l)));
    }
    out.sort();
    out.dedup();
    out
}

/// Counters one input thread updates and the engine reads.
#[derive(Debug, Default)]
pub struct InputCounters {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub kernel_drops: AtomicU64,
    pub error: Mutex<Option<String>>,
    /// Frames an AF_XDP input's program left to the kernel (not mirror traffic for this host,
    /// or too long for a chunk), read once a second.
    pub passed: AtomicU64,
    /// How the input runs (`native, copy` for AF_XDP), as the API shows it.
    pub mode: Mutex<Option<String>>,
    /// Why this input reads what it reads (`--input`'s choice), as the API shows it.
    pub reason: Mutex<Option<String>>,
}

fn get(m: &Mutex<Option<String>>) -> Option<String> {
    m.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn set(m: &Mutex<Option<String>>, v: Option<String>) {
    *m.lock().unwrap_or_else(|p| p.into_inner()) = v;
}

impl InputCounters {
    fn set_error(&self, e: Option<String>) {
        set(&self.error, e);
    }

    pub fn error(&self) -> Option<String> {
        get(&self.error)
    }

    pub fn mode(&self) -> Option<String> {
        get(&self.mode)
    }

    pub fn reason(&self) -> Option<String> {
        get(&self.reason)
    }

    pub fn set_reason(&self, why: String) {
        set(&self.reason, Some(why));
    }
}

/// Frames copied out of an AF_PACKET ring block or AF_XDP rx rings.
#[derive(Debug, Default)]
pub struct Frames {
    pub data: Vec<u8>,
    /// (offset, captured length, wire length, time)
    pub frames: Vec<(u32, u32, u32, u64)>,
}

impl Frames {
    /// Room for `data_bytes` of frames and `frames` records, its pages touched now so that
    /// filling it never faults.
    pub fn prefaulted(data_bytes: usize, frames: usize) -> Frames {
        let mut data = vec![0u8; data_bytes];
        data.clear();
        let mut f = Frames {
            data,
            frames: vec![(0, 0, 0, 0); frames],
        };
        f.frames.clear();
        f
    }
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
    /// A ring, with the kernel filter it was opened with (kept for reopening).
    Ring(Box<Ring>, RingConfig, Option<Vec<libc::sock_filter>>),
    Xdp(Box<XdpInput>),
}

impl Input {
    /// Opens the socket or ring now, so that a bad address or a missing interface is refused
    /// at start with a clear error. A socket gets the filter that leaves to the other inputs
    /// what `covered` says they read, before it is bound.
    pub fn open(kind: InputKind, covered: Arc<Covered>) -> std::io::Result<Input> {
        Input::open_filtered(kind, None, covered)
    }

    /// [`Input::open`]; a ring gets kernel filter `filter` from its first packet on.
    pub fn open_filtered(
        kind: InputKind,
        filter: Option<Vec<libc::sock_filter>>,
        covered: Arc<Covered>,
    ) -> std::io::Result<Input> {
        let mut opened = match &kind {
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
                    // What this host sends is never mirror traffic for it (and on loopback
                    // every packet would be read twice).
                    ignore_outgoing: true,
                    ..RingConfig::default()
                };
                let ring = open_ring(name, &config, filter.as_deref()).map_err(|e| ctx(e, name))?;
                Opened::Ring(Box::new(ring), config, filter)
            }
            InputKind::Xdp {
                name,
                dests,
                umem_bytes,
            } => {
                // A missing interface is a bad flag (exit 2), as for --interface; a driver
                // that refuses XDP is not: its traffic still reaches the sockets. An MTU past
                // what the program steers is: one source would arrive by two inputs.
                tapwire_netio::ifindex(name).map_err(|e| ctx(e, name))?;
                let mtu = tapwire_netio::mtu(name).map_err(|e| ctx(e, name))?;
                if let Some(why) = xdp::mtu_refusal(name, mtu) {
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
                }
                Opened::Xdp(Box::new(XdpInput::new(name, dests, *umem_bytes)))
            }
        };
        let counters = Arc::new(InputCounters::default());
        if let Opened::Xdp(x) = &mut opened {
            let _ = x.attach(&counters, true);
        }
        Ok(Input {
            kind,
            counters,
            opened,
            covered,
        })
    }

    /// The AF_XDP input of interface `name` if its program attaches now, else why not (not
    /// logged: the caller tries the next input).
    pub fn try_xdp(
        name: &str,
        dests: &[Dest],
        umem_bytes: u64,
        covered: Arc<Covered>,
    ) -> Result<Input, String> {
        let mut x = XdpInput::new(name, dests, umem_bytes);
        let counters = Arc::new(InputCounters::default());
        x.attach(&counters, false)?;
        Ok(Input {
            kind: InputKind::Xdp {
                name: name.to_string(),
                dests: dests.to_vec(),
                umem_bytes,
            },
            counters,
            opened: Opened::Xdp(Box::new(x)),
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
            Opened::Ring(ring, config, filter) => {
                for _ in 0..POOL {
                    let _ = back_tx.send(Payload::Frames(Frames::prefaulted(
                        config.block_size_bytes as usize + (64 << 10),
                        XDP_BATCH as usize,
                    )));
                }
                ring_loop(
                    index,
                    *ring,
                    (&config, filter.as_deref()),
                    &self.covered,
                    &self.counters,
                    &to_engine,
                    &back_tx,
                    &back_rx,
                    &stop,
                );
            }
            Opened::Xdp(x) => {
                for _ in 0..POOL {
                    let _ = back_tx.send(Payload::Frames(Frames::prefaulted(
                        FRAME_BATCH_BYTES,
                        XDP_BATCH as usize,
                    )));
                }
                x.run(index, &self.counters, &to_engine, &back_tx, &back_rx, &stop);
            }
        }
    }
}

fn open_ring(
    name: &str,
    config: &RingConfig,
    filter: Option<&[libc::sock_filter]>,
) -> std::io::Result<Ring> {
    match filter {
        Some(f) => Ring::open_with_filter(name, config, f),
        None => Ring::open(name, config),
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
                let capacity = b.capacity();
                if !hand_over(index, Payload::Socket(b), to_engine, back_tx) {
                    return;
                }
                rest_after(n, capacity);
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
    (config, filter): (&RingConfig, Option<&[libc::sock_filter]>),
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
        let mut frames = match empty_frames(back_rx) {
            Ok(Some(f)) => f,
            Ok(None) => continue,
            Err(EngineGone) => return,
        };
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
                match open_ring(&name, config, filter) {
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
            if !hand_over(index, Payload::Frames(frames), to_engine, back_tx) {
                return;
            }
        } else {
            let _ = back_tx.send(Payload::Frames(frames));
        }
    }
}

/// How long to rest after a read that filled `n` of a batch's `capacity`: [`COALESCE`] below
/// half a batch, nothing otherwise (the queue is filling faster than batches are read).
fn rest(n: usize, capacity: usize) -> Option<Duration> {
    (n < capacity / 2).then_some(COALESCE)
}

/// How full an AF_XDP batch of `n` frames and `bytes` is, in frames of [`XDP_BATCH`]: full by
/// bytes counts as full, since large frames fill a batch's bytes first.
fn xdp_filled(n: usize, bytes: usize) -> usize {
    n.max(bytes * XDP_BATCH as usize / FRAME_BATCH_BYTES)
}

fn rest_after(n: usize, capacity: usize) {
    if let Some(d) = rest(n, capacity) {
        std::thread::sleep(d);
    }
}

/// The engine dropped its end of the batch channels: the input thread ends.
struct EngineGone;

/// A frame batch back from the engine, emptied; `None` when none came within `POLL`.
fn empty_frames(back_rx: &Receiver<Payload>) -> Result<Option<Frames>, EngineGone> {
    match back_rx.recv_timeout(POLL) {
        Ok(Payload::Frames(mut f)) => {
            f.data.clear();
            f.frames.clear();
            Ok(Some(f))
        }
        Ok(Payload::Socket(_)) | Err(RecvTimeoutError::Timeout) => Ok(None),
        Err(RecvTimeoutError::Disconnected) => Err(EngineGone),
    }
}

/// Sends a filled batch of input `index` to the engine, which returns it through `back_tx`;
/// `false` when the engine has gone.
fn hand_over(
    index: usize,
    payload: Payload,
    to_engine: &Sender<Batch>,
    back_tx: &Sender<Payload>,
) -> bool {
    to_engine
        .send(Batch {
            input: index,
            payload,
            back: back_tx.clone(),
        })
        .is_ok()
}

/// The AF_XDP input of one interface: while attached, the XDP program and one socket per
/// receive queue; when the driver refused or the interface vanished, nothing (the socket inputs
/// then get its traffic), until an interface of that name appears again.
struct XdpInput {
    name: String,
    dests: Vec<Dest>,
    umem_bytes: u64,
    attached: Option<Attached>,
    /// The interface index and MTU of the last attach attempt: another is made only for a new
    /// interface or a changed MTU.
    tried: Option<(u32, u32)>,
    /// Kernel drops of sockets closed since, so that the counter stays monotonic.
    drops_before: u64,
    /// Drops when the last warning was logged, and when.
    warned: (u64, Option<Instant>),
    /// Frames passed to the kernel by programs detached since.
    passed_before: u64,
}

/// The index and MTU of interface `name` now, if it exists.
fn interface_now(name: &str) -> Option<(u32, u32)> {
    Some((
        tapwire_netio::ifindex(name).ok()?,
        tapwire_netio::mtu(name).ok()?,
    ))
}

/// What the program left to the kernel.
fn passed(c: &xdp::XdpCounters) -> u64 {
    c.passed + c.no_socket + c.too_big
}

struct Attached {
    prog: XdpProgram,
    xsks: Vec<Xsk>,
    /// The local addresses the destinations were expanded with.
    local: Vec<IpAddr>,
    /// The MTU the UMEM's chunks were sized for.
    mtu: u32,
    config: XskConfig,
}

impl Attached {
    fn stats(&self) -> xsk::XskStats {
        let mut t = xsk::XskStats::default();
        for x in &self.xsks {
            if let Ok(s) = x.stats() {
                t.rx_dropped += s.rx_dropped;
                t.rx_ring_full += s.rx_ring_full;
                t.rx_fill_ring_empty_descs += s.rx_fill_ring_empty_descs;
                t.n_bad_descs += s.n_bad_descs;
            }
        }
        t
    }
}

/// Attaches the program and opens a socket per queue, with a UMEM of `umem_bytes` for the
/// interface's current MTU (refused past [`xdp::MAX_MTU`]). Where the locked-memory limit
/// (RLIMIT_MEMLOCK, without CAP_IPC_LOCK) refuses that, the soft limit is raised to the hard
/// one and then the UMEM halved until it fits, down to [`xsk::MIN_CHUNKS`] chunks.
fn open_xdp(name: &str, dests: &[Dest], umem_bytes: u64) -> std::io::Result<Attached> {
    let mtu = tapwire_netio::mtu(name)?;
    if let Some(why) = xdp::mtu_refusal(name, mtu) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
    }
    let mut prog = XdpProgram::attach(name)?;
    let queues = xsk::rx_queues(name)?.min(xdp::MAX_QUEUES);
    let mut budget = umem_bytes;
    let (mut raised, mut cut) = (false, false);
    let (xsks, config) = loop {
        let config = XskConfig::for_budget(budget, queues, mtu);
        match (0..queues)
            .map(|q| Xsk::open(name, q, &config))
            .collect::<std::io::Result<Vec<Xsk>>>()
        {
            Ok(xsks) => break (xsks, config),
            Err(e) if xsk::is_memlock_refusal(&e) && !raised => {
                raised = true;
                let _ = xsk::raise_memlock_limit();
            }
            Err(e) if xsk::is_memlock_refusal(&e) && config.chunk_count > xsk::MIN_CHUNKS => {
                budget = config.umem_bytes() * u64::from(queues) / 2;
                cut = true;
            }
            Err(e) => return Err(e),
        }
    };
    let total = config.umem_bytes() * u64::from(queues);
    if cut {
        tracing::warn!(
            interface = name,
            umem_bytes = total,
            asked_bytes = umem_bytes,
            memlock_bytes = ?xsk::raise_memlock_limit().ok().flatten(),
            "XDP UMEM on {name} cut to {} MiB by the locked-memory limit (RLIMIT_MEMLOCK; CAP_IPC_LOCK lifts it): bursts overflow sooner",
            total >> 20
        );
    }
    for x in &xsks {
        prog.register(x)?;
    }
    let local = xdp::local_addrs()?;
    prog.set_dests(&expand_dests(dests, &local))?;
    Ok(Attached {
        prog,
        xsks,
        local,
        mtu,
        config,
    })
}

impl XdpInput {
    fn new(name: &str, dests: &[Dest], umem_bytes: u64) -> XdpInput {
        XdpInput {
            name: name.to_string(),
            dests: dests.to_vec(),
            umem_bytes,
            attached: None,
            tried: None,
            drops_before: 0,
            warned: (0, None),
            passed_before: 0,
        }
    }

    /// Attaches the program and opens the sockets; on refusal, logs it (`log_refusal`) and
    /// says why.
    fn attach(&mut self, counters: &InputCounters, log_refusal: bool) -> Result<(), String> {
        let name = &self.name;
        self.tried = interface_now(name);
        match open_xdp(name, &self.dests, self.umem_bytes) {
            Ok(a) => {
                let zero_copy = a.xsks.iter().all(Xsk::zero_copy);
                let steering: Vec<String> = expand_dests(&self.dests, &a.local)
                    .iter()
                    .map(|d| match d {
                        Dest::Gre(a) => format!("gre {a}"),
                        Dest::Udp(a, p) => format!("udp {}", SocketAddr::new(*a, *p)),
                    })
                    .collect();
                tracing::info!(
                    interface = name,
                    mode = %a.prog.mode(),
                    sockets = if zero_copy { "zero-copy" } else { "copy" },
                    queues = a.xsks.len(),
                    steering = steering.join(", "),
                    umem_bytes = a.config.umem_bytes() * a.xsks.len() as u64,
                    chunk_bytes = a.config.chunk_size_bytes,
                    "XDP input: mirror traffic on {name} is read before the IP stack ({} mode, {} sockets, {} MiB of UMEM in {}-byte chunks for MTU {})",
                    a.prog.mode(),
                    if zero_copy { "zero-copy" } else { "copy" },
                    (a.config.umem_bytes() * a.xsks.len() as u64) >> 20,
                    a.config.chunk_size_bytes,
                    a.mtu,
                );
                let sockets = if zero_copy { "zero-copy" } else { "copy" };
                set(
                    &counters.mode,
                    Some(format!("{}, {sockets}", a.prog.mode())),
                );
                counters.set_error(None);
                self.attached = Some(a);
                Ok(())
            }
            Err(e) => {
                if log_refusal {
                    tracing::warn!(
                        interface = name,
                        error = %e,
                        "XDP refused on {name}: the raw GRE and UDP sockets receive its mirror traffic instead"
                    );
                }
                counters.set_error(Some(format!(
                    "XDP refused ({e}); the socket inputs receive instead"
                )));
                Err(e.to_string())
            }
        }
    }

    fn detach(&mut self, why: &str, counters: &InputCounters) {
        if let Some(a) = self.attached.take() {
            self.drops_before += a.stats().drops();
            if let Ok(c) = a.prog.counters() {
                tracing::info!(interface = self.name, ?c, "XDP program counters");
                self.passed_before += passed(&c);
            }
        }
        set(&counters.mode, None);
        tracing::warn!(
            interface = self.name,
            "XDP input stopped ({why}); the socket inputs receive instead until it is back"
        );
        counters.set_error(Some(format!("{why}; the socket inputs receive instead")));
    }

    /// Once a second: counters, local addresses, the interface still being the same one; or,
    /// detached, whether an interface of that name came (back).
    fn tick(&mut self, counters: &InputCounters) {
        let now = interface_now(&self.name);
        let Some(a) = &mut self.attached else {
            if now.is_some() && now != self.tried {
                let _ = self.attach(counters, true);
            }
            return;
        };
        match now {
            Some((i, _)) if i != a.prog.ifindex() => {
                return self.detach(&format!("interface {} is gone", self.name), counters);
            }
            None => return self.detach(&format!("interface {} is gone", self.name), counters),
            Some((_, mtu)) if mtu != a.mtu => {
                // The chunks were sized for the old MTU, and past MAX_MTU the program would
                // leave the longer frames to the sockets: start again (or leave it to them).
                let why = format!("MTU of {} changed from {} to {mtu}", self.name, a.mtu);
                self.detach(&why, counters);
                let _ = self.attach(counters, true);
                return;
            }
            Some(_) => {}
        }
        if let Ok(local) = xdp::local_addrs()
            && local != a.local
        {
            match a.prog.set_dests(&expand_dests(&self.dests, &local)) {
                Ok(()) => a.local = local,
                Err(e) => tracing::warn!(interface = self.name, error = %e, "XDP destinations"),
            }
        }
        if let Ok(c) = a.prog.counters() {
            counters
                .passed
                .store(self.passed_before + passed(&c), Ordering::Relaxed);
        }
        let s = a.stats();
        let drops = self.drops_before + s.drops();
        counters.kernel_drops.store(drops, Ordering::Relaxed);
        if drops > self.warned.0
            && self
                .warned
                .1
                .is_none_or(|t| t.elapsed() >= XDP_DROP_WARNING)
        {
            tracing::warn!(
                interface = self.name,
                dropped = drops - self.warned.0,
                rx_ring_full = s.rx_ring_full,
                rx_dropped = s.rx_dropped,
                rx_fill_ring_empty_descs = s.rx_fill_ring_empty_descs,
                "the kernel dropped frames for the XDP input (tapwire reads too slowly)"
            );
            self.warned = (drops, Some(Instant::now()));
        }
    }

    fn run(
        mut self,
        index: usize,
        counters: &InputCounters,
        to_engine: &Sender<Batch>,
        back_tx: &Sender<Payload>,
        back_rx: &Receiver<Payload>,
        stop: &AtomicBool,
    ) {
        let mut last_tick = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if last_tick.elapsed() >= XDP_TICK {
                last_tick = Instant::now();
                self.tick(counters);
            }
            let Some(a) = &mut self.attached else {
                std::thread::sleep(POLL);
                continue;
            };
            let mut frames = match empty_frames(back_rx) {
                Ok(Some(f)) => f,
                Ok(None) => continue,
                Err(EngineGone) => return,
            };
            let mut failure = xsk::wait_any(&mut a.xsks, POLL).err();
            let mut bytes = 0u64;
            // No frame is longer than a chunk: whatever `room` lets in fits the batch's
            // prefaulted bytes.
            let longest = a.config.chunk_size_bytes as usize;
            for x in &mut a.xsks {
                while failure.is_none() {
                    let room = XDP_BATCH.saturating_sub(frames.frames.len() as u32).min(
                        (FRAME_BATCH_BYTES.saturating_sub(frames.data.len()) / longest) as u32,
                    );
                    if room == 0 {
                        break;
                    }
                    match x.receive(room, |f| {
                        let off = frames.data.len() as u32;
                        frames.data.extend_from_slice(f.data);
                        let len = f.data.len() as u32;
                        frames.frames.push((off, len, len, f.ts_ns));
                        bytes += u64::from(len);
                    }) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) => failure = Some(e),
                    }
                }
            }
            if let Some(e) = failure {
                let _ = back_tx.send(Payload::Frames(frames));
                let why = if tapwire_netio::is_interface_gone(&e) {
                    format!("interface {} is gone ({e})", self.name)
                } else {
                    e.to_string()
                };
                self.detach(&why, counters);
                continue;
            }
            if frames.frames.is_empty() {
                let _ = back_tx.send(Payload::Frames(frames));
                continue;
            }
            let n = frames.frames.len();
            let filled = xdp_filled(n, frames.data.len());
            counters.packets.fetch_add(n as u64, Ordering::Relaxed);
            counters.bytes.fetch_add(bytes, Ordering::Relaxed);
            if !hand_over(index, Payload::Frames(frames), to_engine, back_tx) {
                return;
            }
            rest_after(filled, XDP_BATCH as usize);
        }
        if let Some(a) = &self.attached
            && let Ok(c) = a.prog.counters()
        {
            tracing::info!(interface = self.name, ?c, "XDP program counters at exit");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_steers_what_the_socket_inputs_receive() {
        let inputs = [
            InputKind::GreV4(Ipv4Addr::UNSPECIFIED),
            InputKind::GreV6("fd77::2".parse().unwrap()),
            InputKind::Udp("[::]:4789".parse().unwrap()),
            InputKind::Udp("10.77.0.2:6081".parse().unwrap()),
            InputKind::Interface {
                name: "eth1".into(),
                worker: 0,
                workers: 1,
            },
        ];
        let dests = xdp_dests(&inputs);
        assert_eq!(dests.len(), 4);
        let local: Vec<IpAddr> = ["10.77.0.2", "192.0.2.7", "fd77::2", "fe80::1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let got = expand_dests(&dests, &local);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let want = vec![
            // 0.0.0.0: every IPv4 address.
            Dest::Gre(ip("10.77.0.2")),
            Dest::Gre(ip("192.0.2.7")),
            // A specific IPv6 address: just it.
            Dest::Gre(ip("fd77::2")),
            // [::]:4789 is dual-stack: every address.
            Dest::Udp(ip("10.77.0.2"), 4789),
            Dest::Udp(ip("10.77.0.2"), 6081),
            Dest::Udp(ip("192.0.2.7"), 4789),
            Dest::Udp(ip("fd77::2"), 4789),
            Dest::Udp(ip("fe80::1"), 4789),
        ];
        let mut want = want;
        want.sort();
        assert_eq!(got, want);
        // GRE over IPv6 on :: takes only IPv6 addresses.
        assert_eq!(
            expand_dests(&[Dest::Gre(ip("::"))], &local),
            vec![Dest::Gre(ip("fd77::2")), Dest::Gre(ip("fe80::1"))]
        );
    }

    #[test]
    fn small_batches_rest_full_ones_read_on() {
        // A few packets per read: rest so that the next read takes a batch.
        assert_eq!(rest(1, BATCH), Some(COALESCE));
        assert_eq!(rest(BATCH / 2 - 1, BATCH), Some(COALESCE));
        assert_eq!(rest(100, XDP_BATCH as usize), Some(COALESCE));
        // Half a batch or more: the kernel's queue is filling, read on at once.
        assert_eq!(rest(BATCH / 2, BATCH), None);
        assert_eq!(rest(BATCH, BATCH), None);
        assert_eq!(rest(XDP_BATCH as usize, XDP_BATCH as usize), None);
    }

    #[test]
    fn a_batch_full_of_bytes_reads_on() {
        // 1024 large frames fill the batch's bytes: no rest, however few frames that is.
        assert_eq!(
            rest(xdp_filled(1024, FRAME_BATCH_BYTES), XDP_BATCH as usize),
            None
        );
        assert_eq!(
            rest(xdp_filled(700, FRAME_BATCH_BYTES / 2), XDP_BATCH as usize),
            None
        );
        // Few frames and few bytes: rest.
        assert_eq!(
            rest(xdp_filled(100, 100 * 1500), XDP_BATCH as usize),
            Some(COALESCE)
        );
        // Many small frames: by their count, as before.
        assert_eq!(rest(xdp_filled(4096, 4096 * 110), XDP_BATCH as usize), None);
    }

    #[test]
    fn prefaulted_frames_hold_a_batch_without_growing() {
        let f = Frames::prefaulted(FRAME_BATCH_BYTES, XDP_BATCH as usize);
        assert!(f.data.is_empty() && f.frames.is_empty());
        assert!(f.data.capacity() >= FRAME_BATCH_BYTES);
        assert!(f.frames.capacity() >= XDP_BATCH as usize);
    }
}
