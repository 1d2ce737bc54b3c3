//! Test support: private network namespaces with veth pairs, a raw frame sender, frame
//! builders.
//!
//! Code runs inside a namespace through [`Netns::enter`]: a scoped thread calls
//! `setns(CLONE_NEWNET)` (which only moves that thread) and runs the closure there. Sockets keep
//! the namespace they were created in, so a ring or socket made inside can be returned and used
//! from the test thread. The namespace (and every link in it) is deleted in `Drop`, so also when
//! a test panics; declare it first so it drops last.
#![allow(unsafe_code, dead_code)]

use std::fs::File;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tapwire_netio::ring::{Direction, Ring, VlanTag};

pub const MAC_A: [u8; 6] = [0x02, 0x74, 0x77, 0, 0, 0x0a];
pub const MAC_B: [u8; 6] = [0x02, 0x74, 0x77, 0, 0, 0x0b];
pub const BROADCAST: [u8; 6] = [0xff; 6];
pub const MARKER: &[u8; 8] = b"TWNETIO!";

/// True when running as root; otherwise prints why the test is skipped.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipping {test}: needs root (network namespaces, AF_PACKET)");
    }
    root
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace of our own, deleted on drop.
pub struct Netns {
    pub name: String,
}

static NEXT_NS: AtomicUsize = AtomicUsize::new(0);

impl Netns {
    /// A fresh namespace with `lo` up. IPv6 is off unless `ipv6`, so that router solicitations
    /// and DAD do not put stray frames on the links.
    pub fn new(ipv6: bool) -> Netns {
        remove_stale();
        let name = format!(
            "tw-netio-{}-{}",
            std::process::id(),
            NEXT_NS.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        if !ipv6 {
            ns.enter(|| {
                for conf in ["all", "default"] {
                    std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1")
                        .expect("disable IPv6");
                }
            });
        }
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ip -n <ns> args...`, returning its output.
    pub fn ip(&self, args: &[&str]) -> String {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A veth pair `a`/`b` with fixed MAC addresses, both up.
    pub fn veth(&self, a: &str, mac_a: [u8; 6], b: &str, mac_b: [u8; 6]) {
        let (ma, mb) = (mac_str(mac_a), mac_str(mac_b));
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        self.ip(&["link", "set", a, "address", &ma, "up"]);
        self.ip(&["link", "set", b, "address", &mb, "up"]);
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: `ns` is an open namespace file; setns only changes this thread.
                let ret = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(ret, 0, "setns {path}: {}", io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys the veths in it once its last socket is closed.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Deletes namespaces left by test processes that were killed before their `Drop` ran.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("tw-netio-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

pub fn mac_str(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Sends raw Ethernet frames out of one interface (AF_PACKET, SOCK_RAW). Create it inside the
/// interface's namespace. Protocol 0: it receives nothing.
pub struct PacketSender {
    fd: OwnedFd,
}

impl PacketSender {
    pub fn new(interface: &str) -> PacketSender {
        let ifindex = tapwire_netio::ifindex(interface).expect("sender interface");
        // SAFETY: plain socket(2); checked below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        assert!(raw >= 0, "socket: {}", io::Error::last_os_error());
        // SAFETY: fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: all-zero sockaddr_ll is valid.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: valid sockaddr_ll and its size.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(ret, 0, "bind sender: {}", io::Error::last_os_error());
        PacketSender { fd }
    }

    pub fn send(&self, frame: &[u8]) {
        loop {
            // SAFETY: `frame` is valid for reads of its length.
            let n =
                unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if n >= 0 {
                assert_eq!(n as usize, frame.len());
                return;
            }
            let e = io::Error::last_os_error();
            // A full qdisc or socket buffer: wait a little and retry.
            if e.raw_os_error() == Some(libc::ENOBUFS) || e.kind() == io::ErrorKind::WouldBlock {
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
            panic!("send frame: {e}");
        }
    }
}

pub fn ip_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet (with `tags` as (TPID, TCI) from the outside in) / IPv4 10.9.0.1 -> 10.9.0.2 / UDP
/// 40000 -> `dst_port`, carrying `payload`.
pub fn udp_frame(
    dst: [u8; 6],
    src: [u8; 6],
    tags: &[(u16, u16)],
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    for (tpid, tci) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 9, 0, 1, 10, 9, 0, 2,
    ];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let sum = ip_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&dst_port.to_be_bytes());
    f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// A payload that [`is_ours`] recognises, with a tag and a sequence number.
pub fn payload(tag: u8, seq: u32, len: usize) -> Vec<u8> {
    let mut p = MARKER.to_vec();
    p.push(tag);
    p.extend_from_slice(&seq.to_be_bytes());
    p.resize(len.max(p.len()), 0xa5);
    p
}

/// (tag, seq) of a frame built with [`payload`], found anywhere in the frame.
pub fn ours(frame: &[u8]) -> Option<(u8, u32)> {
    let at = frame.windows(MARKER.len()).position(|w| w == MARKER)?;
    let rest = frame.get(at + MARKER.len()..at + MARKER.len() + 5)?;
    Some((
        rest[0],
        u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]),
    ))
}

/// The UDP destination port of an untagged IPv4 frame.
pub fn udp_dst_port(frame: &[u8]) -> Option<u16> {
    if frame.get(12..14)? != [0x08, 0x00] || *frame.get(23)? != 17 {
        return None;
    }
    let ihl = usize::from(frame.get(14)? & 0x0f) * 4;
    let at = 14 + ihl + 2;
    Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
}

/// A captured packet, copied out of the ring.
#[derive(Debug, Clone)]
pub struct Seen {
    pub data: Vec<u8>,
    /// `write_with_vlan` output.
    pub wire: Vec<u8>,
    pub wire_len: u32,
    pub ts_ns: u64,
    pub direction: Direction,
    pub vlan: Option<VlanTag>,
    pub truncated: bool,
    pub ifindex: u32,
}

/// Reads blocks until `done(&seen)` or `timeout`.
pub fn capture(
    ring: &mut Ring,
    timeout: Duration,
    mut done: impl FnMut(&[Seen]) -> bool,
) -> Vec<Seen> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let Some(block) = ring
            .next_block(left.min(Duration::from_millis(50)))
            .expect("next_block")
        else {
            continue;
        };
        for p in &block {
            let mut wire = Vec::new();
            p.write_with_vlan(&mut wire);
            seen.push(Seen {
                data: p.data.to_vec(),
                wire,
                wire_len: p.wire_len,
                ts_ns: p.ts_ns,
                direction: p.direction,
                vlan: p.vlan,
                truncated: p.truncated,
                ifindex: p.ifindex,
            });
        }
    }
    seen
}

/// Captures for `timeout` and keeps the frames with our marker and `tag`.
pub fn capture_tagged(ring: &mut Ring, tag: u8, want: usize, timeout: Duration) -> Vec<Seen> {
    let count = |s: &[Seen]| {
        s.iter()
            .filter(|p| matches!(ours(&p.wire), Some((t, _)) if t == tag))
            .count()
    };
    capture(ring, timeout, |s| count(s) >= want)
        .into_iter()
        .filter(|p| matches!(ours(&p.wire), Some((t, _)) if t == tag))
        .collect()
}

/// Parses `tcpdump -dd` output into instructions (the same program libpcap's compile gives).
pub fn tcpdump_filter(expr: &str) -> Vec<libc::sock_filter> {
    let out = run(Command::new("tcpdump").args(["-y", "EN10MB", "-dd", expr]));
    out.lines()
        .filter_map(|line| {
            let inner = line
                .trim()
                .strip_prefix('{')?
                .trim_end_matches(',')
                .strip_suffix('}')?;
            let parts: Vec<u32> = inner
                .split(',')
                .map(|p| {
                    let p = p.trim();
                    match p.strip_prefix("0x") {
                        Some(hex) => u32::from_str_radix(hex, 16),
                        None => p.parse(),
                    }
                    .expect("tcpdump -dd number")
                })
                .collect();
            Some(libc::sock_filter {
                code: parts[0] as u16,
                jt: parts[1] as u8,
                jf: parts[2] as u8,
                k: parts[3],
            })
        })
        .collect()
}
