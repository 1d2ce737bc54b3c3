//! AF_XDP receive sockets: one per NIC receive queue, each with its own UMEM.
//!
//! The UMEM is an anonymous mapping cut into equal chunks. All chunks start out in the fill
//! ring, where the kernel takes one for each frame it steers to the socket (copying the frame
//! into it, or DMA-ing straight into it in zero-copy mode) and hands it back through the rx
//! ring. [`Xsk::receive`] lends the frames of the rx ring to a closure and then puts their
//! chunks straight back into the fill ring, so the fill ring stays full and the kernel never
//! runs out of chunks unless user space stops reading. The completion ring is set up (the
//! kernel requires it) at its smallest: tapwire never transmits.
//!
//! Binding asks for neither copy nor zero-copy, which makes the kernel use zero-copy where the
//! driver has it and copy otherwise ([`Xsk::zero_copy`] says which).
//!
//! What the kernel writes is checked before use (`ring.rs`, safe code): a producer counter more
//! than a ring ahead is an error (the caller reopens), a descriptor outside the UMEM or crossing
//! a chunk is skipped and counted ([`XskStats::n_bad_descs`]).
#![allow(unsafe_code)]

mod ring;

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

#[cfg(test)]
pub(crate) use ring::META_MAGIC;
use ring::{Cursor, frame_at, meta_time_ns};

use crate::error::context;
use crate::sys::{self, Mmap, cvt};
use crate::{ifindex, page_size_bytes};

/// How an [`Xsk`] is configured. Ring sizes are powers of two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XskConfig {
    /// UMEM chunk size: 2048 or 4096 (at most the page size). A frame must fit in one chunk
    /// after the kernel's 256-byte headroom; tapwire's XDP program passes larger frames to the
    /// kernel instead of steering them. Default 4096.
    pub chunk_size_bytes: u32,
    /// UMEM chunks; at most `fill_ring_size`, so that every chunk fits in the fill ring at
    /// once. Default 8192 (32 MiB with 4 KiB chunks, the AF_PACKET ring's size).
    pub chunk_count: u32,
    /// Received frames the kernel can queue before user space reads them. Default 4096.
    pub rx_ring_size: u32,
    /// Default 8192.
    pub fill_ring_size: u32,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            chunk_size_bytes: 4096,
            chunk_count: 8192,
            rx_ring_size: 4096,
            fill_ring_size: 8192,
        }
    }
}

/// Bytes the kernel keeps free in front of each frame in a chunk (`XDP_PACKET_HEADROOM`); the
/// program's 16 bytes of metadata sit in it.
const KERNEL_HEADROOM_BYTES: u32 = 256;
/// Ethernet header with one VLAN tag: what a frame adds to the interface's MTU.
const ETHERNET_VLAN_BYTES: u32 = 18;
/// Never fewer chunks per socket than this, whatever the budget: a smaller UMEM overflows on
/// the first burst.
pub const MIN_CHUNKS: u32 = 1024;
/// Never more (the rings are sized to hold every chunk; 4 GiB of 4 KiB chunks).
const MAX_CHUNKS: u32 = 1 << 20;

impl XskConfig {
    /// The configuration for a UMEM budget of `umem_bytes` shared by `queues` sockets on an
    /// interface of MTU `mtu`: 2048-byte chunks where the MTU's longest frame fits one (after
    /// the kernel's headroom), which holds twice the frames in the same memory, else 4096;
    /// as many chunks as the budget pays for (a power of two, at least [`MIN_CHUNKS`]); rx and
    /// fill rings with a slot for every chunk, since the reader copies frames out and returns
    /// their chunks at once, so a burst waits only in the rx ring.
    pub fn for_budget(umem_bytes: u64, queues: u32, mtu: u32) -> XskConfig {
        let chunk = if u64::from(mtu) + u64::from(ETHERNET_VLAN_BYTES + KERNEL_HEADROOM_BYTES)
            <= 2048
            && page_size_bytes() >= 2048
        {
            2048
        } else {
            4096
        };
        let per_socket = umem_bytes / u64::from(queues.max(1)) / u64::from(chunk);
        let chunks = per_socket.clamp(u64::from(MIN_CHUNKS), u64::from(MAX_CHUNKS)) as u32;
        let chunks = 1 << (31 - chunks.leading_zeros());
        XskConfig {
            chunk_size_bytes: chunk,
            chunk_count: chunks,
            rx_ring_size: chunks,
            fill_ring_size: chunks,
        }
    }

    /// Bytes of UMEM this configuration maps (and the kernel pins) per socket.
    pub fn umem_bytes(&self) -> u64 {
        u64::from(self.chunk_size_bytes) * u64::from(self.chunk_count)
    }
}

/// Whether `e` is the kernel refusing a UMEM for the locked-memory limit (`RLIMIT_MEMLOCK`,
/// which a UMEM is charged against unless the process has CAP_IPC_LOCK).
pub fn is_memlock_refusal(e: &io::Error) -> bool {
    crate::raw_os_error(e) == Some(libc::ENOBUFS)
}

/// Raises the soft `RLIMIT_MEMLOCK` to the hard one (a UMEM is charged against it unless the
/// process has CAP_IPC_LOCK); returns the soft limit in bytes now, `None` for unlimited.
pub fn raise_memlock_limit() -> io::Result<Option<u64>> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) })?;
    if lim.rlim_cur != lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) })?;
    }
    Ok((lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur))
}

/// The smallest ring the kernel accepts for the unused completion ring.
const COMPLETION_RING_SIZE: u32 = 64;

/// Why an [`XskConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum XskConfigError {
    /// The chunk size is neither 2048 nor 4096, or above the page size.
    #[error("chunk size {0} bytes must be 2048 or 4096 and at most the page size")]
    ChunkSize(u32),
    /// A ring size is not a power of two.
    #[error("{ring} ring size {size} is not a power of two")]
    RingSize {
        /// Which ring (`rx` or `fill`).
        ring: &'static str,
        /// The size asked for.
        size: u32,
    },
    /// More chunks than the fill ring holds: some could never be handed to the kernel.
    #[error("{chunks} chunks do not fit in a fill ring of {fill}")]
    TooManyChunks {
        /// The chunk count asked for.
        chunks: u32,
        /// The fill ring's size.
        fill: u32,
    },
    /// A UMEM of no chunks.
    #[error("no chunks")]
    NoChunks,
}

impl XskConfig {
    /// Checks the sizes before anything is allocated.
    pub fn validate(&self) -> Result<(), XskConfigError> {
        let chunk = self.chunk_size_bytes;
        if !matches!(chunk, 2048 | 4096) || chunk > page_size_bytes() {
            return Err(XskConfigError::ChunkSize(chunk));
        }
        for (ring, size) in [("rx", self.rx_ring_size), ("fill", self.fill_ring_size)] {
            if !size.is_power_of_two() {
                return Err(XskConfigError::RingSize { ring, size });
            }
        }
        if self.chunk_count == 0 {
            return Err(XskConfigError::NoChunks);
        }
        if self.chunk_count > self.fill_ring_size {
            return Err(XskConfigError::TooManyChunks {
                chunks: self.chunk_count,
                fill: self.fill_ring_size,
            });
        }
        Ok(())
    }
}

/// The kernel's counters for one socket (XDP_STATISTICS, cumulative) and this side's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskStats {
    /// Frames the kernel dropped for want of a chunk (fill ring empty) or another reason.
    pub rx_dropped: u64,
    /// Frames the kernel dropped because the rx ring was full.
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty (in copy mode each also counts in
    /// `rx_dropped`).
    pub rx_fill_ring_empty_descs: u64,
    /// Descriptors of the rx ring that pointed outside the UMEM or across a chunk; skipped.
    pub n_bad_descs: u64,
}

impl XskStats {
    /// Frames lost before tapwire read them.
    pub fn drops(&self) -> u64 {
        self.rx_dropped + self.rx_ring_full
    }
}

/// A frame lent by [`Xsk::receive`].
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// The whole Ethernet frame as received.
    pub data: &'a [u8],
    /// Receive time, ns since the Unix epoch: taken by the XDP program when it wrote it into
    /// the frame's metadata, else the time `receive` was called.
    pub ts_ns: u64,
    /// Whether `ts_ns` came from the XDP program.
    pub kernel_time: bool,
}

/// One mapped ring: the counters and the entries, at the offsets the kernel gave.
#[derive(Debug)]
struct RingMap {
    map: Mmap,
    producer: usize,
    consumer: usize,
    flags: usize,
    desc: usize,
    entry_bytes: usize,
    cursor: Cursor,
}

impl RingMap {
    fn open(
        fd: BorrowedFd<'_>,
        off: &libc::xdp_ring_offset,
        size: u32,
        entry_bytes: usize,
        pgoff: u64,
        producer_side: bool,
    ) -> io::Result<RingMap> {
        let len = usize::try_from(off.desc)
            .ok()
            .and_then(|d| d.checked_add(size as usize * entry_bytes))
            .ok_or_else(|| io::Error::other("ring offsets out of range"))?;
        let fits = |o: u64, bytes: usize, align: usize| {
            usize::try_from(o)
                .ok()
                .filter(|o| o.is_multiple_of(align))
                .filter(|o| o.checked_add(bytes).is_some_and(|e| e <= len))
        };
        let (Some(producer), Some(consumer), Some(flags), Some(desc)) = (
            fits(off.producer, 4, 4),
            fits(off.consumer, 4, 4),
            fits(off.flags, 4, 4),
            fits(off.desc, size as usize * entry_bytes, 8),
        ) else {
            return Err(io::Error::other(format!(
                "ring offsets do not fit the ring: {off:?}"
            )));
        };
        let map = Mmap::shared(fd, len, pgoff)?;
        let mut ring = RingMap {
            map,
            producer,
            consumer,
            flags,
            desc,
            entry_bytes,
            cursor: Cursor::new(size, 0, 0),
        };
        let (p, c) = (
            ring.counter(producer).load(Ordering::Acquire),
            ring.counter(consumer).load(Ordering::Acquire),
        );
        ring.cursor = if producer_side {
            Cursor::new(size, p, c)
        } else {
            Cursor::new(size, c, p)
        };
        Ok(ring)
    }

    fn counter(&self, at: usize) -> &AtomicU32 {
        // SAFETY: `at` was checked in `open` to be 4-byte aligned and inside the mapping, which
        // lives as long as `self`. The kernel and this process only access it atomically.
        unsafe { AtomicU32::from_ptr(self.map.ptr.as_ptr().add(at).cast::<u32>()) }
    }

    /// Reads entry `slot` (< ring size) as `N` bytes.
    fn read<const N: usize>(&self, slot: usize) -> [u8; N] {
        debug_assert!(N == self.entry_bytes && slot <= self.cursor.mask() as usize);
        let mut out = [0u8; N];
        // SAFETY: `slot` is masked by the ring size and the entries were checked in `open` to
        // lie inside the mapping. The producer filled this entry before publishing its counter
        // (observed with Acquire), and does not touch it again until we publish ours.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.ptr.as_ptr().add(self.desc + slot * N),
                out.as_mut_ptr(),
                N,
            );
        }
        out
    }

    /// Writes entry `slot` (< ring size).
    fn write<const N: usize>(&mut self, slot: usize, value: [u8; N]) {
        debug_assert!(N == self.entry_bytes && slot <= self.cursor.mask() as usize);
        // SAFETY: as in `read`; the kernel consumed this slot before its counter showed it
        // free, and does not read it until we publish our producer counter.
        unsafe {
            std::ptr::copy_nonoverlapping(
                value.as_ptr(),
                self.map.ptr.as_ptr().add(self.desc + slot * N),
                N,
            );
        }
    }

    fn needs_wakeup(&self) -> bool {
        self.counter(self.flags).load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }
}

/// An AF_XDP socket bound to one receive queue of one interface.
#[derive(Debug)]
pub struct Xsk {
    // Rings and UMEM are unmapped before the socket closes (fields drop in order).
    rx: RingMap,
    fill: RingMap,
    _completion: RingMap,
    umem: Mmap,
    fd: OwnedFd,
    interface: String,
    ifindex: u32,
    queue: u32,
    chunk_size: u32,
    zero_copy: bool,
    /// Chunks read and not yet back in the fill ring.
    recycle: Vec<u64>,
    n_bad_descs: u64,
}

impl Xsk {
    /// Opens a socket on `queue` of `interface`, with every chunk in the fill ring.
    pub fn open(interface: &str, queue: u32, config: &XskConfig) -> io::Result<Xsk> {
        config.validate().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("AF_XDP socket on {interface}: {e}"),
            )
        })?;
        let ifindex = ifindex(interface)?;
        let on = |what: &str| {
            let what = format!("{what} on {interface} queue {queue}");
            move |e: io::Error| context(e, what)
        };
        let umem_len = config.chunk_size_bytes as usize * config.chunk_count as usize;
        let umem =
            Mmap::anonymous(umem_len).map_err(on(&format!("mmap of a {umem_len}-byte UMEM")))?;

        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        let raw = cvt(raw).map_err(on("socket(AF_XDP)"))?;
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sock = fd.as_fd();

        let reg = libc::xdp_umem_reg {
            addr: umem.ptr.as_ptr() as u64,
            len: umem_len as u64,
            chunk_size: config.chunk_size_bytes,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        sys::setsockopt(sock, libc::SOL_XDP, libc::XDP_UMEM_REG, &reg)
            .map_err(on("setsockopt(XDP_UMEM_REG)"))?;
        for (name, opt, size) in [
            (
                "XDP_UMEM_FILL_RING",
                libc::XDP_UMEM_FILL_RING,
                config.fill_ring_size,
            ),
            (
                "XDP_UMEM_COMPLETION_RING",
                libc::XDP_UMEM_COMPLETION_RING,
                COMPLETION_RING_SIZE,
            ),
            ("XDP_RX_RING", libc::XDP_RX_RING, config.rx_ring_size),
        ] {
            sys::setsockopt(sock, libc::SOL_XDP, opt, &(size as libc::c_int))
                .map_err(on(&format!("setsockopt({name}, {size})")))?;
        }
        let off: libc::xdp_mmap_offsets =
            sys::getsockopt(sock, libc::SOL_XDP, libc::XDP_MMAP_OFFSETS)
                .map_err(on("getsockopt(XDP_MMAP_OFFSETS)"))?;
        let desc_bytes = mem::size_of::<libc::xdp_desc>();
        let rx = RingMap::open(
            sock,
            &off.rx,
            config.rx_ring_size,
            desc_bytes,
            libc::XDP_PGOFF_RX_RING as u64,
            false,
        )
        .map_err(on("mmap of the rx ring"))?;
        let fill = RingMap::open(
            sock,
            &off.fr,
            config.fill_ring_size,
            8,
            libc::XDP_UMEM_PGOFF_FILL_RING,
            true,
        )
        .map_err(on("mmap of the fill ring"))?;
        let completion = RingMap::open(
            sock,
            &off.cr,
            COMPLETION_RING_SIZE,
            8,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
            false,
        )
        .map_err(on("mmap of the completion ring"))?;

        let mut xsk = Xsk {
            rx,
            fill,
            _completion: completion,
            umem,
            fd,
            interface: interface.to_owned(),
            ifindex,
            queue,
            chunk_size: config.chunk_size_bytes,
            zero_copy: false,
            recycle: (0..u64::from(config.chunk_count))
                .map(|i| i * u64::from(config.chunk_size_bytes))
                .collect(),
            n_bad_descs: 0,
        };
        // Every chunk into the fill ring before the socket is bound.
        xsk.refill()?;

        let addr = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            // Neither XDP_COPY nor XDP_ZEROCOPY: zero-copy where the driver has it, else copy.
            sxdp_flags: libc::XDP_USE_NEED_WAKEUP,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `addr` is a valid sockaddr_xdp and the length passed is its size.
        let ret = unsafe {
            libc::bind(
                xsk.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_xdp).cast(),
                mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        cvt(ret).map_err(on("bind(AF_XDP)"))?;
        let opts: libc::xdp_options =
            sys::getsockopt(xsk.fd.as_fd(), libc::SOL_XDP, libc::XDP_OPTIONS)
                .map_err(on("getsockopt(XDP_OPTIONS)"))?;
        xsk.zero_copy = opts.flags & libc::XDP_OPTIONS_ZEROCOPY != 0;
        Ok(xsk)
    }

    /// The interface the socket is bound to.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The interface's index when the socket was bound.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The receive queue the socket is bound to.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// The kernel places frames straight into the UMEM (the driver's zero-copy mode).
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// Lends each frame waiting in the rx ring (at most `max`) to `f`, then gives their chunks
    /// back to the kernel. Returns how many were lent. Never blocks: see [`Xsk::wait`].
    ///
    /// An error means the rx ring's counters are inconsistent: drop the socket and open another.
    pub fn receive(&mut self, max: u32, mut f: impl FnMut(Frame<'_>)) -> io::Result<u32> {
        let producer = self.rx.counter(self.rx.producer).load(Ordering::Acquire);
        let Some(filled) = self.rx.cursor.filled(producer) else {
            return Err(io::Error::other(format!(
                "AF_XDP rx ring on {} queue {}: producer {producer} is more than a ring ahead of {}",
                self.interface, self.queue, self.rx.cursor.ours
            )));
        };
        let n = filled.min(max);
        if n == 0 {
            return Ok(0);
        }
        let (now_ns, offset_ns) = sys::clocks_ns();
        let umem_len = self.umem.len as u64;
        for slot in self.rx.cursor.slots(n) {
            let desc: [u8; 16] = self.rx.read(slot);
            let addr = u64::from_ne_bytes(desc[..8].try_into().unwrap_or_default());
            let len = u32::from_ne_bytes(desc[8..12].try_into().unwrap_or_default());
            let Some(at) = frame_at(addr, len, self.chunk_size, umem_len) else {
                // Not given back: a chunk named by a bad descriptor may be in the fill ring
                // already. Each one lost is counted; the kernel's drop counters show starvation.
                self.n_bad_descs += 1;
                continue;
            };
            let base = self.umem.ptr.as_ptr();
            let mut ts = None;
            if let Some(m) = at.meta {
                // SAFETY: `frame_at` checked that these 16 bytes lie inside the UMEM, in the
                // chunk the kernel handed us through the rx ring; it does not touch the chunk
                // again until it is back in the fill ring (below, after this loop).
                let meta = unsafe { std::slice::from_raw_parts_mut(base.add(m), 16) };
                ts = meta_time_ns(meta);
                // Clear the magic so that a later frame in this chunk without metadata is not
                // given this one's time.
                meta[8..16].fill(0);
            }
            // SAFETY: as above for the frame's bytes, which do not overlap the metadata; the
            // slice lives only for the call to `f`.
            let data = unsafe { std::slice::from_raw_parts(base.add(at.offset), at.len) };
            f(Frame {
                data,
                ts_ns: ts.map_or(now_ns, |t| t.wrapping_add(offset_ns)),
                kernel_time: ts.is_some(),
            });
            self.recycle.push(at.chunk);
        }
        let consumed = self.rx.cursor.advance(n);
        // Release: our reads of the entries happen before the kernel may reuse them.
        self.rx
            .counter(self.rx.consumer)
            .store(consumed, Ordering::Release);
        self.refill()?;
        Ok(n)
    }

    /// Puts the chunks read so far back into the fill ring.
    fn refill(&mut self) -> io::Result<()> {
        if self.recycle.is_empty() {
            return Ok(());
        }
        let consumer = self
            .fill
            .counter(self.fill.consumer)
            .load(Ordering::Acquire);
        let Some(free) = self.fill.cursor.free(consumer) else {
            return Err(io::Error::other(format!(
                "AF_XDP fill ring on {} queue {}: consumer {consumer} is not behind producer {}",
                self.interface, self.queue, self.fill.cursor.ours
            )));
        };
        // Every chunk fits (chunk_count <= fill ring size), so `free` covers what we hold.
        let n = free.min(self.recycle.len() as u32);
        let slots = self.fill.cursor.slots(n);
        for (slot, addr) in slots.zip(self.recycle.drain(..n as usize)) {
            self.fill.write(slot, addr.to_ne_bytes());
        }
        let produced = self.fill.cursor.advance(n);
        // Release: the entries are written before the kernel sees the new counter.
        self.fill
            .counter(self.fill.producer)
            .store(produced, Ordering::Release);
        if self.fill.needs_wakeup() {
            self.wake();
        }
        Ok(())
    }

    /// Asks the driver to look at the fill ring again (zero-copy drivers with need-wakeup).
    fn wake(&self) {
        // SAFETY: a zero-length, non-blocking recvfrom with no buffer or address.
        unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
        }
    }

    /// Waits up to `timeout` for frames. `Ok(true)` when there are some.
    ///
    /// The kernel does not wake a poller when the interface is deleted (the socket is then
    /// unbound and only its pending error says so): after each timeout the pending error is
    /// read and returned (`ENETDOWN`, see [`crate::is_interface_gone`]).
    pub fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        let producer = self.rx.counter(self.rx.producer).load(Ordering::Acquire);
        if producer != self.rx.cursor.ours {
            return Ok(true);
        }
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout_ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd for the duration of the call.
        let ret = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(context(
                e,
                format!("poll on {} queue {}", self.interface, self.queue),
            ));
        }
        if ret > 0 && pfd.revents & libc::POLLIN != 0 {
            return Ok(true);
        }
        if let Some(e) = sys::take_error(self.fd.as_fd())
            .map_err(|e| context(e, format!("getsockopt(SO_ERROR) on {}", self.interface)))?
        {
            return Err(context(
                e,
                format!("AF_XDP socket on {} queue {}", self.interface, self.queue),
            ));
        }
        Ok(false)
    }

    /// The kernel's counters for this socket and this side's own.
    pub fn stats(&self) -> io::Result<XskStats> {
        let s: libc::xdp_statistics =
            sys::getsockopt(self.fd.as_fd(), libc::SOL_XDP, libc::XDP_STATISTICS).map_err(|e| {
                context(
                    e,
                    format!(
                        "getsockopt(XDP_STATISTICS) on {} queue {}",
                        self.interface, self.queue
                    ),
                )
            })?;
        Ok(XskStats {
            rx_dropped: s.rx_dropped,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            n_bad_descs: self.n_bad_descs,
        })
    }
}

impl AsFd for Xsk {
    /// For an XSKMAP entry or an event loop; reading must go through [`Xsk::receive`].
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Waits up to `timeout` for frames on any of `xsks` (as [`Xsk::wait`] does for one).
/// `Ok(true)` when some socket has frames; the first socket error otherwise.
pub fn wait_any(xsks: &mut [Xsk], timeout: Duration) -> io::Result<bool> {
    match xsks {
        [] => {
            std::thread::sleep(timeout);
            return Ok(false);
        }
        [one] => return one.wait(timeout),
        _ => {}
    }
    if xsks
        .iter()
        .any(|x| x.rx.counter(x.rx.producer).load(Ordering::Acquire) != x.rx.cursor.ours)
    {
        return Ok(true);
    }
    let mut pfds: Vec<libc::pollfd> = xsks
        .iter()
        .map(|x| libc::pollfd {
            fd: x.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let timeout_ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `pfds` is a valid array of pollfds for the duration of the call.
    let ret = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    if ret > 0 {
        return Ok(true);
    }
    for x in xsks.iter_mut() {
        // A zero timeout: only the pending error.
        x.wait(Duration::ZERO)?;
    }
    Ok(false)
}

/// The number of receive queues of `interface` (ETHTOOL_GCHANNELS: combined plus rx-only
/// channels), or 1 when the driver does not say.
pub fn rx_queues(interface: &str) -> io::Result<u32> {
    Ok(sys::ethtool_channels(interface)?
        .map(|(rx, combined)| (rx + combined).max(1))
        .unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        XskConfig::default().validate().expect("default");
    }

    #[test]
    fn config_errors_name_the_problem() {
        let base = XskConfig::default();
        let cases = [
            (
                XskConfig {
                    chunk_size_bytes: 3000,
                    ..base.clone()
                },
                "chunk size 3000",
            ),
            (
                XskConfig {
                    rx_ring_size: 1000,
                    ..base.clone()
                },
                "rx ring size 1000",
            ),
            (
                XskConfig {
                    chunk_count: 9000,
                    ..base.clone()
                },
                "9000 chunks",
            ),
            (
                XskConfig {
                    chunk_count: 0,
                    ..base.clone()
                },
                "no chunks",
            ),
        ];
        for (config, needle) in cases {
            let msg = config.validate().expect_err(needle).to_string();
            assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
        }
    }

    #[test]
    fn the_budget_buys_chunks_of_the_size_the_mtu_needs() {
        let c = XskConfig::for_budget(64 << 20, 1, 1500);
        assert_eq!((c.chunk_size_bytes, c.chunk_count), (2048, 32768));
        assert_eq!((c.rx_ring_size, c.fill_ring_size), (32768, 32768));
        assert_eq!(c.umem_bytes(), 64 << 20);
        c.validate().expect("valid");
        // 1774 + 18 + 256 = 2048: the longest MTU whose frames fit a 2 KiB chunk.
        assert_eq!(
            XskConfig::for_budget(64 << 20, 1, 1774).chunk_size_bytes,
            2048
        );
        let c = XskConfig::for_budget(64 << 20, 1, 1775);
        assert_eq!((c.chunk_size_bytes, c.chunk_count), (4096, 16384));
        // Shared by the queues, rounded down to a power of two, never below the minimum.
        assert_eq!(XskConfig::for_budget(64 << 20, 3, 9000).chunk_count, 4096);
        assert_eq!(
            XskConfig::for_budget(1 << 20, 64, 1500).chunk_count,
            MIN_CHUNKS
        );
        for (bytes, queues, mtu) in [(0, 0, 0), (u64::MAX, 1, 9000), (96 << 20, 7, 1500)] {
            XskConfig::for_budget(bytes, queues, mtu)
                .validate()
                .expect("every budget gives a valid configuration");
        }
    }

    #[test]
    fn drops_add_the_two_loss_counters() {
        let s = XskStats {
            rx_dropped: 3,
            rx_ring_full: 4,
            rx_fill_ring_empty_descs: 3,
            n_bad_descs: 0,
        };
        assert_eq!(s.drops(), 7);
    }
}
