//! tapwire's XDP program on a receiving interface: it steers mirror traffic addressed to this
//! host into AF_XDP sockets ([`crate::xsk`]) and passes everything else to the kernel (see
//! `bpf/steer.c`, compiled by `build.rs` with clang).
//!
//! aya loads the object (maps, relocations, the verifier) and gives typed access to the maps.
//! Attachment is a BPF link made here with `BPF_LINK_CREATE` and held as a file descriptor: the
//! kernel detaches the program when the last descriptor closes, so also when the process is
//! killed (-9 included). aya's own attach would fall back to a netlink attachment, which
//! outlives the process; tapwire never makes one. An interface that already has an XDP
//! program is refused (`EBUSY`/`EEXIST`), never taken over.
#![allow(unsafe_code)]

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use aya::Ebpf;
use aya::maps::{HashMap, MapData, PerCpuArray, XskMap};
use aya::programs::Xdp;

use crate::error::context;
use crate::ifindex;
use crate::xsk::Xsk;

/// The compiled program; empty when clang was missing at build time (see `build.rs`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer.o"));

/// Why XDP is unavailable in a build without the program.
pub const UNAVAILABLE: &str = "this tapwire was built without its XDP program (clang was not \
    found at build time; install clang, e.g. with scripts/setup.sh, and rebuild)";

/// Whether this build holds the XDP program: `build.rs` leaves it out, with a warning, when
/// clang is missing.
pub fn available() -> bool {
    !OBJECT.is_empty()
}

/// Loads `object` (maps, relocations; the program itself is loaded by the verifier later).
fn load(object: &[u8]) -> io::Result<Ebpf> {
    if object.is_empty() {
        return Err(io::Error::new(io::ErrorKind::Unsupported, UNAVAILABLE));
    }
    Ebpf::load(object).map_err(|e| aya_err("load the XDP program", e))
}

/// The program's name in the object, and its maps'.
const PROGRAM: &str = "tapwire_steer";
const XSKS: &str = "tw_xsks";
const DESTS: &str = "tw_dests";
const COUNTERS: &str = "tw_counters";

/// Entries of the queue → socket map (`MAX_QUEUES` in steer.c).
pub const MAX_QUEUES: u32 = 256;
/// Entries of the destination map (`MAX_DESTS` in steer.c).
pub const MAX_DESTS: usize = 4096;
/// Longest frame the program steers (`MAX_FRAME_BYTES` in steer.c): a 4096-byte chunk less
/// the kernel's headroom. [`crate::xsk::XskConfig::for_budget`] picks 2048-byte chunks only
/// where the interface's MTU keeps every frame shorter than one.
pub const MAX_STEERED_FRAME_BYTES: usize = 3840;

/// The largest MTU whose frames (with an Ethernet header and one VLAN tag) the program steers.
pub const MAX_MTU: u32 = MAX_STEERED_FRAME_BYTES as u32 - 18;

/// Why AF_XDP must not read an interface of MTU `mtu`, if it must not: its longer frames would
/// pass to the kernel's sockets while the rest of their source is steered, and arrive out of
/// order with it.
pub fn mtu_refusal(interface: &str, mtu: u32) -> Option<String> {
    (mtu > MAX_MTU).then(|| {
        format!(
            "{interface} has MTU {mtu}: frames over {MAX_STEERED_FRAME_BYTES} bytes would bypass \
             the XDP program and reach the sockets, out of order with the rest of their source \
             (AF_XDP reads MTUs up to {MAX_MTU}; lower it with `ip link set {interface} mtu \
             {MAX_MTU}`, or read {interface} with --interface)"
        )
    })
}

/// How the program runs on the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver, before any socket buffer is made (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// In the kernel's receive path after the socket buffer is made, for drivers without XDP
    /// (`XDP_FLAGS_SKB_MODE`): still ahead of the IP stack.
    Generic,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        })
    }
}

/// What the program steers: a local address and protocol, and for UDP the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dest {
    /// GRE (IP protocol 47) to this address.
    Gre(IpAddr),
    /// UDP to this address and port.
    Udp(IpAddr, u16),
}

/// The program's key for `dest` (`struct dest_key` in steer.c): the address as 16 bytes
/// (IPv4-mapped for IPv4), the port in network order (0 for GRE, and for "some UDP port here",
/// which UDP fragments are looked up by), the protocol, a pad byte.
pub fn dest_key(dest: &Dest) -> [u8; 20] {
    let (addr, proto, port) = match *dest {
        Dest::Gre(a) => (a, 47u8, 0u16),
        Dest::Udp(a, p) => (a, 17, p),
    };
    let v6 = match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let mut key = [0u8; 20];
    key[..16].copy_from_slice(&v6.octets());
    key[16..18].copy_from_slice(&port.to_be_bytes());
    key[18] = proto;
    key
}

/// The program's counters, summed over CPUs. Every frame counts in exactly one of `steered`,
/// `no_socket`, `too_big` and `passed`; `fragments` counts some of them a second time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpCounters {
    /// Redirected to an AF_XDP socket.
    pub steered: u64,
    /// Mirror traffic on a queue with no socket: passed to the kernel.
    pub no_socket: u64,
    /// Outer fragments (GRE or UDP) to a steered address, whatever their fate: a datagram's
    /// fragments follow the first of them to arrive (steered, or all passed for the kernel to
    /// reassemble; see `bpf/steer.c`).
    pub fragments: u64,
    /// Mirror frames longer than [`MAX_STEERED_FRAME_BYTES`]: passed.
    pub too_big: u64,
    /// Everything else: passed untouched.
    pub passed: u64,
}

/// The program, loaded and attached to one interface; detached on drop.
pub struct XdpProgram {
    // Fields drop in order: the link first (the program leaves the interface), then the
    // program and its maps.
    link: OwnedFd,
    ebpf: Ebpf,
    interface: String,
    ifindex: u32,
    mode: XdpMode,
    dests: BTreeSet<[u8; 20]>,
}

impl fmt::Debug for XdpProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdpProgram")
            .field("interface", &self.interface)
            .field("ifindex", &self.ifindex)
            .field("mode", &self.mode)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

fn aya_err(what: &str, e: impl std::error::Error) -> io::Error {
    // aya's errors keep the errno in their source chain; say it all in one line.
    let mut msg = format!("{what}: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    io::Error::other(msg)
}

const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_XDP: u32 = 37;

/// The `link_create` member of `union bpf_attr`, zero-padded (the kernel requires the bytes it
/// does not know to be zero).
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    rest: [u64; 6],
}

fn link_create(prog: BorrowedFd<'_>, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags,
        rest: [0; 6],
    };
    // SAFETY: bpf(BPF_LINK_CREATE) reads `size_of::<LinkCreateAttr>()` bytes from `attr`,
    // which lives for the call; it returns a new descriptor (close-on-exec) or -1.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &attr as *const LinkCreateAttr,
            std::mem::size_of::<LinkCreateAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as libc::c_int) })
}

impl XdpProgram {
    /// Loads the program and attaches it to `interface` with a BPF link: in native mode where
    /// the driver has it, else in generic mode. Steers nothing until [`XdpProgram::set_dests`]
    /// and [`XdpProgram::register`].
    pub fn attach(interface: &str) -> io::Result<XdpProgram> {
        let ifindex = ifindex(interface)?;
        let mut ebpf = load(OBJECT)?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| io::Error::other(format!("no program {PROGRAM} in the XDP object")))?
            .try_into()
            .map_err(|e| aya_err("the XDP object's program", e))?;
        prog.load()
            .map_err(|e| aya_err("load the XDP program (verifier)", e))?;
        let fd = prog
            .fd()
            .map_err(|e| aya_err("the loaded XDP program", e))?
            .as_fd();
        let (link, mode) = match link_create(fd, ifindex, XDP_FLAGS_DRV_MODE) {
            Ok(link) => (link, XdpMode::Native),
            Err(native) => match link_create(fd, ifindex, XDP_FLAGS_SKB_MODE) {
                Ok(link) => (link, XdpMode::Generic),
                Err(generic) => {
                    let busy = matches!(generic.raw_os_error(), Some(libc::EBUSY | libc::EEXIST));
                    let why = if busy {
                        " (another XDP program is attached)"
                    } else {
                        ""
                    };
                    return Err(context(
                        generic,
                        format!(
                            "attach XDP to {interface}{why}: native mode refused ({native}); generic mode refused"
                        ),
                    ));
                }
            },
        };
        Ok(XdpProgram {
            link,
            ebpf,
            interface: interface.to_owned(),
            ifindex,
            mode,
            dests: BTreeSet::new(),
        })
    }

    /// The interface the program is attached to.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The index of the interface when the program was attached.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Native or generic, as the kernel accepted it.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// Makes `dests` the set the program steers: new entries are added before old ones are
    /// removed, so a destination in both is never missed. For each UDP address a port-0 entry
    /// is added too: a UDP fragment is looked up by its address alone (only the first fragment
    /// has the port).
    pub fn set_dests(&mut self, dests: &[Dest]) -> io::Result<()> {
        let mut want = BTreeSet::new();
        for d in dests {
            want.insert(dest_key(d));
            if let Dest::Udp(a, _) = d {
                want.insert(dest_key(&Dest::Udp(*a, 0)));
            }
        }
        if want.len() > MAX_DESTS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "XDP on {}: {} destinations, at most {MAX_DESTS}",
                    self.interface,
                    want.len()
                ),
            ));
        }
        let map = self
            .ebpf
            .map_mut(DESTS)
            .ok_or_else(|| io::Error::other(format!("no map {DESTS} in the XDP object")))?;
        let mut map: HashMap<&mut MapData, [u8; 20], u32> =
            HashMap::try_from(map).map_err(|e| aya_err(DESTS, e))?;
        for key in want.difference(&self.dests) {
            map.insert(*key, 1, 0)
                .map_err(|e| aya_err("add an XDP destination", e))?;
        }
        for key in self.dests.difference(&want) {
            map.remove(key)
                .map_err(|e| aya_err("remove an XDP destination", e))?;
        }
        self.dests = want;
        Ok(())
    }

    /// Steers what arrives on `xsk`'s queue to `xsk`.
    pub fn register(&mut self, xsk: &Xsk) -> io::Result<()> {
        if xsk.queue() >= MAX_QUEUES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "queue {} of {}: at most {MAX_QUEUES}",
                    xsk.queue(),
                    self.interface
                ),
            ));
        }
        let map = self
            .ebpf
            .map_mut(XSKS)
            .ok_or_else(|| io::Error::other(format!("no map {XSKS} in the XDP object")))?;
        let mut map = XskMap::try_from(map).map_err(|e| aya_err(XSKS, e))?;
        map.set(xsk.queue(), xsk.as_fd().as_raw_fd(), 0)
            .map_err(|e| aya_err(&format!("register queue {} in the XSKMAP", xsk.queue()), e))
    }

    /// The program's counters so far.
    pub fn counters(&self) -> io::Result<XdpCounters> {
        let map = self
            .ebpf
            .map(COUNTERS)
            .ok_or_else(|| io::Error::other(format!("no map {COUNTERS} in the XDP object")))?;
        let map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|e| aya_err(COUNTERS, e))?;
        let get = |i: u32| -> io::Result<u64> {
            Ok(map
                .get(&i, 0)
                .map_err(|e| aya_err("read the XDP counters", e))?
                .iter()
                .sum())
        };
        Ok(XdpCounters {
            steered: get(0)?,
            no_socket: get(1)?,
            fragments: get(2)?,
            too_big: get(3)?,
            passed: get(4)?,
        })
    }
}

/// The addresses of this network namespace's interfaces (`getifaddrs`), loopback excluded:
/// where a socket bound to the unspecified address receives what arrives on a NIC.
pub fn local_addrs() -> io::Result<Vec<IpAddr>> {
    let mut out: Vec<IpAddr> = interfaces()?
        .into_iter()
        .flat_map(|i| i.addrs)
        .filter(|a| !a.is_loopback())
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// One interface of this network namespace as `getifaddrs` lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalInterface {
    /// Its name.
    pub name: String,
    /// `IFF_LOOPBACK`.
    pub loopback: bool,
    /// Its link type is Ethernet (`ARPHRD_ETHER`), the only one the XDP program and the
    /// collector's AF_PACKET input parse.
    pub ethernet: bool,
    /// Its IPv4 and IPv6 addresses, sorted.
    pub addrs: Vec<IpAddr>,
    /// Its MTU (`/sys/class/net/NAME/mtu`), 0 when unknown.
    pub mtu: u32,
}

/// Every interface of this network namespace with its link type and addresses (`getifaddrs`),
/// sorted by name.
pub fn interfaces() -> io::Result<Vec<LocalInterface>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(context(io::Error::last_os_error(), "getifaddrs"));
    }
    let mut out: Vec<LocalInterface> = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: `ifa_name` is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let i = match out.iter().position(|i| i.name == name) {
            Some(i) => i,
            None => {
                out.push(LocalInterface {
                    name,
                    ..LocalInterface::default()
                });
                out.len() - 1
            }
        };
        let entry = &mut out[i];
        entry.loopback |= ifa.ifa_flags & libc::IFF_LOOPBACK as libc::c_uint != 0;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: `ifa_addr` points to a sockaddr whose family says its real type and size.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        match family {
            // SAFETY: an AF_INET address is a sockaddr_in.
            libc::AF_INET => entry.addrs.push(IpAddr::from(unsafe {
                (*ifa.ifa_addr.cast::<libc::sockaddr_in>())
                    .sin_addr
                    .s_addr
                    .to_ne_bytes()
            })),
            // SAFETY: an AF_INET6 address is a sockaddr_in6.
            libc::AF_INET6 => entry.addrs.push(IpAddr::from(unsafe {
                (*ifa.ifa_addr.cast::<libc::sockaddr_in6>())
                    .sin6_addr
                    .s6_addr
            })),
            libc::AF_PACKET => {
                // SAFETY: an AF_PACKET entry's address is a sockaddr_ll.
                let hatype = unsafe { (*ifa.ifa_addr.cast::<libc::sockaddr_ll>()).sll_hatype };
                entry.ethernet = hatype == libc::ARPHRD_ETHER;
            }
            _ => {}
        }
    }
    // SAFETY: `head` came from getifaddrs and no reference into the list outlives this call.
    unsafe { libc::freeifaddrs(head) };
    for i in &mut out {
        i.addrs.sort();
        i.addrs.dedup();
        i.mtu = crate::mtu(&i.name).unwrap_or(0);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn keys_match_the_programs_layout() {
        let k = dest_key(&Dest::Gre(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2))));
        assert_eq!(
            k,
            [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 77, 0, 2, 0, 0, 47, 0
            ]
        );
        let k = dest_key(&Dest::Udp(
            "fd77::2".parse::<Ipv6Addr>().unwrap().into(),
            4789,
        ));
        assert_eq!(&k[..2], &[0xfd, 0x77]);
        assert_eq!(k[15], 2);
        // Port in network order, as the program reads it from the UDP header.
        assert_eq!(&k[16..], &[0x12, 0xb5, 17, 0]);
    }

    #[test]
    fn a_build_without_the_program_says_so() {
        let e = load(&[]).expect_err("an empty object loads");
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        assert!(e.to_string().contains("clang"), "{e}");
    }

    #[test]
    fn the_object_holds_the_program_and_its_maps() {
        assert!(
            available(),
            "built without the XDP program (clang missing?)"
        );
        for name in [PROGRAM, XSKS, DESTS, COUNTERS] {
            assert!(
                OBJECT.windows(name.len()).any(|w| w == name.as_bytes()),
                "{name} missing from the compiled object"
            );
        }
    }

    #[test]
    fn an_mtu_past_what_the_program_steers_is_refused_with_the_fix() {
        assert_eq!(mtu_refusal("eth0", 1500), None);
        assert_eq!(mtu_refusal("eth0", MAX_MTU), None);
        let why = mtu_refusal("eth0", MAX_MTU + 1).expect("refused");
        assert!(why.contains("MTU 3823"), "{why}");
        assert!(why.contains("ip link set eth0 mtu 3822"), "{why}");
        assert!(mtu_refusal("eth0", 9000).is_some());
    }

    #[test]
    fn constants_match_the_c_source() {
        let c = include_str!("../bpf/steer.c");
        let define = |name: &str| -> String {
            let prefix = format!("#define {name} ");
            c.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no #define {name} in steer.c"))
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(define("MAX_QUEUES"), MAX_QUEUES.to_string());
        assert_eq!(define("MAX_DESTS"), MAX_DESTS.to_string());
        assert_eq!(
            define("MAX_FRAME_BYTES"),
            MAX_STEERED_FRAME_BYTES.to_string()
        );
        assert_eq!(
            define("META_MAGIC"),
            format!("{:#x}ULL", crate::xsk::META_MAGIC)
        );
        assert!(
            c.contains(
                "enum { C_STEERED, C_NO_SOCKET, C_FRAGMENT, C_TOO_BIG, C_PASSED, N_COUNTERS };"
            ),
            "counter order changed: update XdpProgram::counters"
        );
        // 4096-byte chunks less the kernel's 256 bytes of headroom.
        assert_eq!(
            MAX_STEERED_FRAME_BYTES,
            crate::xsk::XskConfig::default().chunk_size_bytes as usize - 256
        );
    }
}
