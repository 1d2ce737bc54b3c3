//! The few raw syscalls shared by the modules, behind safe signatures.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::mem::{self, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use crate::error::{context, context_kind};

/// Plain data that any byte pattern of its size is a valid value of, so the kernel can fill it.
///
/// # Safety
/// Implement only for `repr(C)` types without padding-sensitive invariants, pointers or enums.
pub(crate) unsafe trait Pod: Copy {}

// SAFETY: integers and these kernel structs of integers accept every bit pattern.
unsafe impl Pod for libc::c_int {}
// SAFETY: as above.
unsafe impl Pod for libc::tpacket_stats_v3 {}
// SAFETY: as above.
unsafe impl Pod for libc::tpacket_req3 {}
// SAFETY: as above.
unsafe impl Pod for libc::packet_mreq {}
// SAFETY: as above.
unsafe impl Pod for libc::xdp_umem_reg {}
// SAFETY: as above.
unsafe impl Pod for libc::xdp_mmap_offsets {}
// SAFETY: as above.
unsafe impl Pod for libc::xdp_statistics {}
// SAFETY: as above.
unsafe impl Pod for libc::xdp_options {}
// SAFETY: as above.
unsafe impl Pod for libc::tpacket_req {}

pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub(crate) fn setsockopt<T: Pod>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points to `size_of::<T>()` initialised bytes that live for the call; the
    // kernel only reads them.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    cvt(ret).map(drop)
}

/// Reads a socket option; also returns the length the kernel wrote.
pub(crate) fn getsockopt<T: Pod>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<T> {
    let mut value = MaybeUninit::<T>::zeroed();
    let mut len = mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` has room for `len` bytes; the kernel writes at most `len` bytes and
    // updates `len`.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_mut_ptr().cast(),
            &mut len,
        )
    };
    cvt(ret)?;
    // SAFETY: zero-initialised and `T: Pod`, so it is valid whether the kernel wrote all of it
    // or a prefix.
    Ok(unsafe { value.assume_init() })
}

/// A memory mapping, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mmap {
    pub(crate) ptr: NonNull<u8>,
    pub(crate) len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; nothing about it is tied to a thread.
unsafe impl Send for Mmap {}

impl Mmap {
    /// Maps `len` bytes of what `fd` shares with the kernel (a packet or XDP socket's ring),
    /// from its offset 0.
    pub(crate) fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mmap> {
        Mmap::shared(fd, len, 0)
    }

    /// Maps `len` bytes of what `fd` shares with the kernel at `offset` (AF_XDP selects the
    /// ring by the offset).
    pub(crate) fn shared(fd: BorrowedFd<'_>, len: usize, offset: u64) -> io::Result<Mmap> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mmap offset"))?;
        Mmap::map(len, libc::MAP_SHARED, fd.as_raw_fd(), offset)
    }

    /// `len` bytes of zeroed private memory (an AF_XDP UMEM).
    pub(crate) fn anonymous(len: usize) -> io::Result<Mmap> {
        Mmap::map(len, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
    }

    fn map(
        len: usize,
        flags: libc::c_int,
        fd: libc::c_int,
        offset: libc::off_t,
    ) -> io::Result<Mmap> {
        // SAFETY: a fresh mapping chosen by the kernel; no existing memory is affected.
        // MAP_POPULATE faults the pages in now rather than on the first packets.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags | libc::MAP_POPULATE,
                fd,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Mmap { ptr, len })
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `map`, and its owners never let a
        // slice into it outlive them.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// A new `AF_PACKET`, `SOCK_RAW` socket with protocol 0: the kernel hooks it into nothing, so
/// nothing is queued to it, until [`bind_packet`] names a protocol.
pub(crate) fn packet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    let raw = cvt(raw)?;
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Binds a packet socket to interface `ifindex` and `protocol` (an `ETH_P_*` in host order; 0:
/// send only, receive nothing).
pub(crate) fn bind_packet(fd: BorrowedFd<'_>, ifindex: u32, protocol: u16) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol.to_be();
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: `addr` is a valid sockaddr_ll and the length passed is its size.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    cvt(ret).map(drop)
}

/// Takes and clears the socket's pending error (`SO_ERROR`).
pub(crate) fn take_error(fd: BorrowedFd<'_>) -> io::Result<Option<io::Error>> {
    let errno: libc::c_int = getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR)?;
    Ok((errno != 0).then(|| io::Error::from_raw_os_error(errno)))
}

/// The index of the interface called `name` (`if_nametoindex`).
///
/// A missing interface is [`io::ErrorKind::NotFound`] with the name in the message; the errno
/// (`ENODEV`) stays reachable through [`crate::raw_os_error`].
pub fn ifindex(name: &str) -> io::Result<u32> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "interface name {name:?} must be 1 to {} bytes",
                libc::IFNAMSIZ - 1
            ),
        ));
    }
    let c_name = CString::new(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} contains a NUL byte"),
        )
    })?;
    // SAFETY: `c_name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        let cause = io::Error::last_os_error();
        let what = format!("no interface named {name:?} (if_nametoindex)");
        return Err(if cause.raw_os_error() == Some(libc::ENODEV) {
            context_kind(io::ErrorKind::NotFound, cause, what)
        } else {
            context(cause, what)
        });
    }
    Ok(index)
}

/// (CLOCK_REALTIME now, CLOCK_REALTIME - CLOCK_MONOTONIC), both in ns: the second turns a
/// monotonic kernel time (`bpf_ktime_get_ns`) into wall-clock time.
pub(crate) fn clocks_ns() -> (u64, u64) {
    let read = |clock| {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a valid timespec for the kernel (vDSO) to fill.
        unsafe { libc::clock_gettime(clock, &mut t) };
        (t.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(t.tv_nsec as u64)
    };
    let mono = read(libc::CLOCK_MONOTONIC);
    let real = read(libc::CLOCK_REALTIME);
    (real, real.wrapping_sub(mono))
}

/// `struct ethtool_channels` (linux/ethtool.h).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// A datagram socket for interface ioctls and an `ifreq` naming `interface`.
fn ifreq_for(interface: &str, what: &str) -> io::Result<(std::os::fd::OwnedFd, libc::ifreq)> {
    let name = CString::new(interface)
        .ok()
        .filter(|n| n.as_bytes().len() < libc::IFNAMSIZ)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("interface name {interface:?}"),
            )
        })?;
    // SAFETY: plain socket(2); closed when the OwnedFd drops.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })
        .map_err(|e| context(e, format!("socket for {what}")))?;
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    Ok((fd, ifr))
}

/// (rx-only, combined) channel counts of `interface` (ETHTOOL_GCHANNELS), `None` when the
/// driver does not report channels.
pub(crate) fn ethtool_channels(interface: &str) -> io::Result<Option<(u32, u32)>> {
    let (fd, mut ifr) = ifreq_for(interface, "SIOCETHTOOL")?;
    let mut channels = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..EthtoolChannels::default()
    };
    ifr.ifr_ifru.ifru_data = (&mut channels as *mut EthtoolChannels).cast();
    // SAFETY: `ifr` names the interface and points at `channels`, which the kernel fills and
    // which lives for the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCETHTOOL as _, &mut ifr) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) => Ok(None),
            _ => Err(context(e, format!("ETHTOOL_GCHANNELS on {interface}"))),
        };
    }
    Ok(Some((channels.rx_count, channels.combined_count)))
}

/// The MTU of `interface` in this network namespace (SIOCGIFMTU: unlike `/sys/class/net`, it
/// does not depend on which namespace sysfs was mounted in).
pub fn mtu(interface: &str) -> io::Result<u32> {
    let (fd, mut ifr) = ifreq_for(interface, "SIOCGIFMTU")?;
    // SAFETY: `ifr` names the interface; the kernel writes the MTU into it.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFMTU as _, &mut ifr) };
    if ret < 0 {
        return Err(context(
            io::Error::last_os_error(),
            format!("SIOCGIFMTU on {interface}"),
        ));
    }
    // SAFETY: SIOCGIFMTU filled the `ifru_mtu` member.
    Ok(unsafe { ifr.ifr_ifru.ifru_mtu }.max(0) as u32)
}

/// Writes `buf` at the file's current offset (appending on an `O_APPEND` file) as one
/// `pwritev2(..., RWF_DONTCACHE)`: an ordinary buffered write whose page-cache pages are
/// written back at once and dropped afterwards, so a file written once and not read again
/// neither fills the page cache nor needs fresh pages for every byte. Returns the bytes
/// written, which may be fewer than `buf.len()`, as `write` does.
///
/// Kernels before 6.14 and file systems without support refuse the flag with `EOPNOTSUPP`
/// (checked with [`crate::raw_os_error`]); the caller then writes as usual.
pub fn write_dontcache(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_ptr().cast_mut().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf`, which lives and is not written to for the call; the kernel
    // only reads it. Offset -1 means the file's current offset, updated as by `write`.
    let n = unsafe { libc::pwritev2(fd.as_raw_fd(), &iov, 1, -1, libc::RWF_DONTCACHE) };
    if n < 0 {
        return Err(context(
            io::Error::last_os_error(),
            "pwritev2 RWF_DONTCACHE",
        ));
    }
    Ok(n as usize)
}

/// Gives the allocator's free heap pages back to the kernel (glibc's `malloc_trim`). A
/// collector frees and reallocates output buffers all the time; glibc keeps what was freed
/// resident unless it lies at the top of the heap (measured with bench-collect.sh: 1024
/// sessions held ~305 MiB, trimmed once a second 100-175 MiB). A no-op where the C library
/// has no such call.
pub fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; it only returns free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Closes every descriptor above stderr that this process inherited. For a daemon started by
/// a command that may hold files, sockets or locks (`flock`, a test harness, a shell script):
/// kept open, they would live as long as the daemon and everything it starts. Call it first,
/// before anything of this process is opened.
pub fn close_inherited_fds() -> io::Result<()> {
    // SAFETY: close_range takes plain integers and only closes descriptors; the caller owns
    // none above 2 yet (it is called before the process opens anything).
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherited_descriptors_are_closed() {
        // In a child process: the test harness's own descriptors must stay open.
        let me = std::env::current_exe().unwrap();
        if std::env::var_os("TAPWIRE_CLOSE_FDS_CHILD").is_some() {
            close_inherited_fds().unwrap();
            let open: Vec<_> = std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .collect();
            // 0, 1, 2 and read_dir's own descriptor.
            assert_eq!(open.len(), 4, "{open:?}");
            return;
        }
        let _kept = std::fs::File::open("/proc/self/status").unwrap();
        let held = std::fs::File::open("/dev/null").unwrap();
        // Not close-on-exec, as a lock from `flock` would be.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&held);
        // SAFETY: fcntl on a descriptor this test owns.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        let out = std::process::Command::new(me)
            .args([
                "--exact",
                "sys::tests::inherited_descriptors_are_closed",
                "--nocapture",
            ])
            .env("TAPWIRE_CLOSE_FDS_CHILD", "1")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains("1 passed"), "the child ran no test: {said}");
    }

    #[test]
    fn ifindex_rejects_bad_names_before_the_syscall() {
        for name in ["", "a-name-of-16-chr", "nul\0inside"] {
            let e = ifindex(name).expect_err(name);
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{name:?}: {e}");
        }
    }

    #[test]
    fn dontcache_writes_or_says_it_cannot() {
        use std::io::Read;
        use std::os::fd::AsFd;
        let path = std::env::temp_dir().join(format!("tapwire-dontcache-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .append(true)
            .open(&path)
            .expect("temp file");
        for part in [&b"whole "[..], b"records"] {
            match write_dontcache(f.as_fd(), part) {
                Ok(n) => assert_eq!(n, part.len()),
                Err(e) => {
                    assert_eq!(crate::raw_os_error(&e), Some(libc::EOPNOTSUPP), "{e}");
                    std::fs::remove_file(&path).expect("remove");
                    return;
                }
            }
        }
        let mut back = String::new();
        std::fs::File::open(&path)
            .expect("reopen")
            .read_to_string(&mut back)
            .expect("read");
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(back, "whole records");
    }

    #[test]
    fn loopback_has_an_index() {
        // `lo` exists in every network namespace.
        assert!(ifindex("lo").expect("lo") > 0);
    }
}
