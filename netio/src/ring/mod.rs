//! AF_PACKET TPACKET_V3 receive ring.
//!
//! The kernel fills fixed-size blocks of a shared memory ring with variable-size packets and
//! hands a block to user space when it is full or `block_timeout_ms` has passed since its first
//! packet. [`Ring::next_block`] waits for the next block; the [`Block`] it returns borrows the
//! ring, iterates [`Packet`]s without copying, and gives the block back to the kernel when
//! dropped. One block is held at a time; while it is held the kernel fills the others, and when
//! all are held it drops packets and counts them ([`Ring::stats`]).
//!
//! VLAN tags: on receive the kernel always moves the outermost 802.1Q/802.1ad tag out of the
//! frame into `tp_vlan_tci`/`tp_vlan_tpid` before packet sockets see it (checked on veth,
//! kernel 6.18, QinQ included); frames this host sends through a packet socket keep their tag
//! inline. [`Packet::write_with_vlan`] gives the wire bytes in both cases.
#![allow(unsafe_code)]

mod parse;

use std::cell::Cell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use parse::{BLOCK_DESC_LEN, BLOCK_STATUS_OFFSET, BlockHeader, PACKET_HEADER_LEN};
pub use parse::{Direction, Packet, Packets, VlanTag};

use crate::error::context;
use crate::sys::{self, Mmap};
use crate::{bpf, ifindex};

/// The largest ring [`RingConfig::validate`] accepts: 4 GiB keeps every kernel count in 32 bits.
pub const MAX_RING_BYTES: u64 = 1 << 32;

/// How the kernel spreads packets over the sockets of a fanout group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FanoutMode {
    /// By flow hash: one flow stays on one socket (`PACKET_FANOUT_HASH`).
    Hash,
    /// Round robin (`PACKET_FANOUT_LB`).
    Lb,
    /// By the receiving CPU (`PACKET_FANOUT_CPU`).
    Cpu,
    /// Fill one socket, move on when its ring is full (`PACKET_FANOUT_ROLLOVER`).
    Rollover,
    /// At random (`PACKET_FANOUT_RND`).
    Random,
    /// By the NIC's receive queue (`PACKET_FANOUT_QM`).
    QueueMapping,
    /// By the outer IP source address only (`PACKET_FANOUT_CBPF` with
    /// [`bpf::outer_source_fanout`]): every packet of one mirror sender, fragments included,
    /// reaches the same socket in order.
    OuterSource,
}

impl FanoutMode {
    fn kernel_value(self) -> u32 {
        match self {
            FanoutMode::Hash => libc::PACKET_FANOUT_HASH,
            FanoutMode::Lb => libc::PACKET_FANOUT_LB,
            FanoutMode::Cpu => libc::PACKET_FANOUT_CPU,
            FanoutMode::Rollover => libc::PACKET_FANOUT_ROLLOVER,
            FanoutMode::Random => libc::PACKET_FANOUT_RND,
            FanoutMode::QueueMapping => libc::PACKET_FANOUT_QM,
            // PACKET_FANOUT_CBPF, not in the libc crate.
            FanoutMode::OuterSource => 6,
        }
    }
}

/// Join a fanout group: rings with the same `group_id` share the interface's packets, each
/// packet going to one of them. All members must use the same mode and interface.
///
/// `PACKET_FANOUT_FLAG_DEFRAG` is never set: the kernel would reassemble IP fragments before
/// hashing, and tapwire must see fragments as they were on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fanout {
    /// The fanout group: rings that give the same id share the traffic.
    pub group_id: u16,
    /// How packets are spread over the group.
    pub mode: FanoutMode,
}

/// How a [`Ring`] is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingConfig {
    /// Size of one block: a power of two and a multiple of the page size. Default 1 MiB.
    pub block_size_bytes: u32,
    /// Number of blocks, at least 2. Default 32 (a 32 MiB ring).
    pub block_count: u32,
    /// `tp_frame_size`. TPACKET_V3 packs packets of any size into blocks, so the kernel only
    /// checks this (a multiple of 16, from 80 bytes to the block size). Default 2048.
    pub frame_size_hint: u32,
    /// A block with at least one packet is handed over at the latest this long after it was
    /// opened: the bound on capture latency at low rates. 0 lets the kernel pick from the link
    /// speed. Default 10.
    pub block_timeout_ms: u32,
    /// Share the interface's packets with other rings (capture threads).
    pub fanout: Option<Fanout>,
    /// Put the interface in promiscuous mode for as long as the ring is open. Default off.
    pub promiscuous: bool,
    /// Do not capture packets this host sends (`PACKET_IGNORE_OUTGOING`). Default off.
    pub ignore_outgoing: bool,
    /// Keep at most this many bytes of each packet (applied through the BPF return value).
    pub snaplen: Option<u32>,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            block_size_bytes: 1 << 20,
            block_count: 32,
            frame_size_hint: 2048,
            block_timeout_ms: 10,
            fanout: None,
            promiscuous: false,
            ignore_outgoing: false,
            snaplen: None,
        }
    }
}

/// Why a [`RingConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The kernel maps blocks page by page.
    #[error(
        "block size {block_size_bytes} bytes is not a multiple of the page size ({page_size_bytes} bytes)"
    )]
    BlockSizeNotPageMultiple {
        /// The size given.
        block_size_bytes: u32,
        /// This machine's page.
        page_size_bytes: u32,
    },
    /// The kernel wants a power of two.
    #[error("block size {0} bytes is not a power of two")]
    BlockSizeNotPowerOfTwo(u32),
    /// One block fills while another is read.
    #[error(
        "block count {0} is below 2: the kernel could not fill one block while another is read"
    )]
    TooFewBlocks(u32),
    /// More memory than a ring may take.
    #[error(
        "ring of {block_count} blocks of {block_size_bytes} bytes exceeds {MAX_RING_BYTES} bytes"
    )]
    RingTooLarge {
        /// The size given.
        block_size_bytes: u32,
        /// The count given.
        block_count: u32,
    },
    /// `tp_frame_size` out of the kernel's range.
    #[error(
        "frame size hint {frame_size} bytes must be a multiple of 16 from {min} bytes to the block size ({block_size_bytes} bytes)"
    )]
    BadFrameSize {
        /// The hint given.
        frame_size: u32,
        /// The smallest the kernel takes.
        min: u32,
        /// The block size given.
        block_size_bytes: u32,
    },
    /// A snaplen of 0 would keep nothing.
    #[error("snaplen must be at least 1 byte")]
    ZeroSnaplen,
}

/// The system's page size (4096 if sysconf cannot tell).
pub fn page_size_bytes() -> u32 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(page).unwrap_or(4096)
}

/// The smallest legal `tp_frame_size`: the V3 header rounded up to the 16-byte alignment.
const MIN_FRAME_SIZE: u32 = PACKET_HEADER_LEN.next_multiple_of(libc::TPACKET_ALIGNMENT) as u32;

impl RingConfig {
    /// Checks the geometry against the kernel's rules and this machine's page size.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let block = self.block_size_bytes;
        let page = page_size_bytes();
        if block == 0 || !block.is_multiple_of(page) {
            return Err(ConfigError::BlockSizeNotPageMultiple {
                block_size_bytes: block,
                page_size_bytes: page,
            });
        }
        if !block.is_power_of_two() {
            return Err(ConfigError::BlockSizeNotPowerOfTwo(block));
        }
        if self.block_count < 2 {
            return Err(ConfigError::TooFewBlocks(self.block_count));
        }
        if u64::from(block) * u64::from(self.block_count) > MAX_RING_BYTES {
            return Err(ConfigError::RingTooLarge {
                block_size_bytes: block,
                block_count: self.block_count,
            });
        }
        let frame = self.frame_size_hint;
        if frame < MIN_FRAME_SIZE
            || !frame.is_multiple_of(16)
            || frame > block - BLOCK_DESC_LEN as u32
        {
            return Err(ConfigError::BadFrameSize {
                frame_size: frame,
                min: MIN_FRAME_SIZE,
                block_size_bytes: block,
            });
        }
        if self.snaplen == Some(0) {
            return Err(ConfigError::ZeroSnaplen);
        }
        Ok(())
    }
}

/// Packet counters since the ring was opened. Monotonic: the kernel's counters, which reset on
/// each read, are added up here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Packets that passed the filter, including those then dropped (`tp_packets`).
    pub n_packets: u64,
    /// Packets dropped because every block was held by user space (`tp_drops`).
    pub n_drops: u64,
    /// Times the kernel found the ring full and froze it (`tp_freeze_q_cnt`).
    pub n_queue_freezes: u64,
    /// Blocks whose headers did not fit in the block; their remaining packets were skipped.
    pub n_corrupt_blocks: u64,
}

/// A TPACKET_V3 receive ring bound to one interface.
#[derive(Debug)]
pub struct Ring {
    // Declared before `fd`: fields drop in order, so the ring is unmapped before the socket is
    // closed, whatever state the interface is in.
    map: Mmap,
    fd: OwnedFd,
    interface: String,
    ifindex: u32,
    block_size: usize,
    block_count: usize,
    /// The block the kernel will hand over next.
    current: usize,
    snaplen: Option<u32>,
    totals: RingStats,
}

impl Ring {
    /// Opens a ring on `interface` that captures every packet.
    pub fn open(interface: &str, config: &RingConfig) -> io::Result<Ring> {
        Ring::open_inner(interface, config, None)
    }

    /// Opens a ring on `interface` whose first packet already passed `filter` (classic BPF, as
    /// compiled by libpcap for an Ethernet link).
    pub fn open_with_filter(
        interface: &str,
        config: &RingConfig,
        filter: &[libc::sock_filter],
    ) -> io::Result<Ring> {
        Ring::open_inner(interface, config, Some(filter))
    }

    fn open_inner(
        interface: &str,
        config: &RingConfig,
        filter: Option<&[libc::sock_filter]>,
    ) -> io::Result<Ring> {
        config.validate().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("capture ring on {interface}: {e}"),
            )
        })?;
        let ifindex = ifindex(interface)?;
        let on = |what: &str| {
            let what = format!("{what} on {interface}");
            move |e: io::Error| context(e, what)
        };
        // Resolve the caller's filter before creating anything, so a bad one fails early.
        let final_filter: Option<Vec<libc::sock_filter>> =
            match (filter, config.snaplen) {
                (Some(f), Some(snap)) => Some(bpf::with_snaplen(f, snap).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("capture ring on {interface}: snaplen cannot be applied to a BPF program that returns a register"),
                    )
                })?),
                (Some(f), None) => Some(f.to_vec()),
                (None, Some(snap)) => Some(vec![bpf::ret(snap)]),
                (None, None) => None,
            };

        // Protocol 0: nothing is queued to the socket while it is being set up.
        let fd = sys::packet_socket().map_err(on("socket(AF_PACKET, SOCK_RAW)"))?;
        let sock = fd.as_fd();

        let version = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
        sys::setsockopt(sock, libc::SOL_PACKET, libc::PACKET_VERSION, &version)
            .map_err(on("setsockopt(PACKET_VERSION, TPACKET_V3)"))?;
        // Drop everything until the socket is bound and in its fanout group; the caller's
        // filter replaces this one atomically at the end.
        bpf::attach_filter(&sock, &[bpf::ret(0)]).map_err(on("drop-all filter"))?;

        let block_size = config.block_size_bytes;
        let req = libc::tpacket_req3 {
            tp_block_size: block_size,
            tp_block_nr: config.block_count,
            tp_frame_size: config.frame_size_hint,
            tp_frame_nr: (block_size / config.frame_size_hint) * config.block_count,
            tp_retire_blk_tov: config.block_timeout_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        sys::setsockopt(sock, libc::SOL_PACKET, libc::PACKET_RX_RING, &req).map_err(on(
            &format!(
                "setsockopt(PACKET_RX_RING, {} blocks of {block_size} bytes)",
                config.block_count
            ),
        ))?;
        let len = block_size as usize * config.block_count as usize;
        let map = Mmap::new(sock, len).map_err(on(&format!("mmap of the {len}-byte ring")))?;

        if config.ignore_outgoing {
            sys::setsockopt(sock, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &1)
                .map_err(on("setsockopt(PACKET_IGNORE_OUTGOING)"))?;
        }

        sys::bind_packet(sock, ifindex, libc::ETH_P_ALL as u16)
            .map_err(on(&format!("bind(AF_PACKET, ifindex {ifindex})")))?;

        if let Some(fanout) = config.fanout {
            // The kernel only lets a bound socket join a group.
            let arg = u32::from(fanout.group_id) | (fanout.mode.kernel_value() << 16);
            sys::setsockopt(
                sock,
                libc::SOL_PACKET,
                libc::PACKET_FANOUT,
                &(arg as libc::c_int),
            )
            .map_err(on(&format!(
                "setsockopt(PACKET_FANOUT, group {}, {:?})",
                fanout.group_id, fanout.mode
            )))?;
            if fanout.mode == FanoutMode::OuterSource {
                bpf::set_fanout_program(&sock, &bpf::outer_source_fanout())
                    .map_err(on("set the fanout program"))?;
            }
        }

        if config.promiscuous {
            let mreq = libc::packet_mreq {
                mr_ifindex: ifindex as libc::c_int,
                mr_type: libc::PACKET_MR_PROMISC as u16,
                mr_alen: 0,
                mr_address: [0; 8],
            };
            sys::setsockopt(sock, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq)
                .map_err(on("setsockopt(PACKET_ADD_MEMBERSHIP, PACKET_MR_PROMISC)"))?;
        }

        match &final_filter {
            Some(program) => bpf::attach_filter(&sock, program),
            None => bpf::detach_filter(&sock),
        }
        .map_err(on("filter"))?;

        Ok(Ring {
            map,
            fd,
            interface: interface.to_owned(),
            ifindex,
            block_size: block_size as usize,
            block_count: config.block_count as usize,
            current: 0,
            snaplen: config.snaplen,
            totals: RingStats::default(),
        })
    }

    /// The interface's name.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The interface's index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Replaces the filter. Blocks already filled were filtered by the previous program; to
    /// see no packet from before the filter, pass it to [`Ring::open_with_filter`] instead.
    /// The configured snaplen still applies.
    pub fn attach_filter(&mut self, filter: &[libc::sock_filter]) -> io::Result<()> {
        let program = match self.snaplen {
            Some(snap) => bpf::with_snaplen(filter, snap).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "filter on {}: snaplen cannot be applied to a BPF program that returns a register",
                        self.interface
                    ),
                )
            })?,
            None => filter.to_vec(),
        };
        bpf::attach_filter(&self.fd, &program)
            .map_err(|e| context(e, format!("filter on {}", self.interface)))
    }

    /// Removes the filter (keeping the configured snaplen).
    pub fn detach_filter(&mut self) -> io::Result<()> {
        match self.snaplen {
            Some(snap) => bpf::attach_filter(&self.fd, &[bpf::ret(snap)]),
            None => bpf::detach_filter(&self.fd),
        }
        .map_err(|e| context(e, format!("filter on {}", self.interface)))
    }

    fn status_word(&self, block: usize) -> &AtomicU32 {
        debug_assert!(block < self.block_count);
        // SAFETY: `block < block_count`, so the word lies inside the mapping; blocks start at
        // page-aligned offsets, so it is 4-byte aligned. The kernel and this process only touch
        // it with atomic (or barrier-ordered) accesses.
        unsafe {
            AtomicU32::from_ptr(
                self.map
                    .ptr
                    .as_ptr()
                    .add(block * self.block_size + BLOCK_STATUS_OFFSET)
                    .cast::<u32>(),
            )
        }
    }

    /// Waits up to `timeout` for the kernel to hand over the next block. `Ok(None)` on timeout;
    /// a zero timeout only checks.
    ///
    /// An error from the socket is returned once: `ENETDOWN` when the interface goes down or is
    /// deleted (see [`crate::is_interface_gone`]). After a down, the ring resumes by itself when
    /// the interface comes back up. After a delete it will never see another packet: drop it
    /// and open a new ring once an interface of that name exists again (it has a new index).
    pub fn next_block(&mut self, timeout: Duration) -> io::Result<Option<Block<'_>>> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            // Acquire pairs with the kernel's barrier before it sets TP_STATUS_USER: the
            // block's contents are visible once the status is.
            if self.status_word(self.current).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0 {
                return Ok(Some(Block::new(self)));
            }
            let remaining = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if remaining.is_zero() {
                return Ok(None);
            }
            self.wait(remaining)?;
        }
    }

    fn wait(&self, timeout: Duration) -> io::Result<()> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN | libc::POLLERR,
            revents: 0,
        };
        // Round up so a sub-millisecond remainder still sleeps instead of spinning.
        let timeout_ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd for the duration of the call.
        let ret = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(context(e, format!("poll on {}", self.interface)));
        }
        if pfd.revents & libc::POLLERR != 0 {
            let pending = sys::take_error(self.fd.as_fd())
                .map_err(|e| context(e, format!("getsockopt(SO_ERROR) on {}", self.interface)))?;
            if let Some(e) = pending {
                return Err(context(e, format!("capture on {}", self.interface)));
            }
        }
        if pfd.revents & libc::POLLNVAL != 0 {
            return Err(io::Error::other(format!(
                "poll on {}: descriptor not open",
                self.interface
            )));
        }
        Ok(())
    }

    /// Reads the kernel's counters (which it then resets) and returns the running totals.
    pub fn stats(&mut self) -> io::Result<RingStats> {
        let s: libc::tpacket_stats_v3 =
            sys::getsockopt(self.fd.as_fd(), libc::SOL_PACKET, libc::PACKET_STATISTICS).map_err(
                |e| {
                    context(
                        e,
                        format!("getsockopt(PACKET_STATISTICS) on {}", self.interface),
                    )
                },
            )?;
        self.totals.n_packets += u64::from(s.tp_packets);
        self.totals.n_drops += u64::from(s.tp_drops);
        self.totals.n_queue_freezes += u64::from(s.tp_freeze_q_cnt);
        Ok(self.totals)
    }
}

impl AsFd for Ring {
    /// For polling from an event loop; reading must go through [`Ring::next_block`].
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A block handed over by the kernel. Iterate it for its packets; dropping it gives it back.
#[derive(Debug)]
pub struct Block<'r> {
    ring: &'r mut Ring,
    header: Option<BlockHeader>,
    corrupt: Cell<bool>,
}

impl<'r> Block<'r> {
    fn new(ring: &'r mut Ring) -> Block<'r> {
        let mut block = Block {
            ring,
            header: None,
            corrupt: Cell::new(false),
        };
        block.header = BlockHeader::parse(block.bytes());
        block.corrupt.set(block.header.is_none());
        block
    }

    fn bytes(&self) -> &[u8] {
        let ring = &*self.ring;
        // SAFETY: the block lies inside the mapping (`current < block_count`). The kernel set
        // TP_STATUS_USER on it (observed with Acquire in `next_block`) and does not write to a
        // user-owned block until `Drop` below gives it back, which cannot happen while this
        // borrow of `self` is alive.
        unsafe {
            std::slice::from_raw_parts(
                ring.map.ptr.as_ptr().add(ring.current * ring.block_size),
                ring.block_size,
            )
        }
    }

    /// The block's packets, in order.
    pub fn packets(&self) -> Packets<'_> {
        Packets::new(self.bytes(), self.header, &self.corrupt)
    }

    /// The packet count the kernel wrote in the block header.
    pub fn n_packets(&self) -> u32 {
        self.header.map_or(0, |h| h.num_pkts)
    }

    /// The kernel's block sequence number, +1 per block handed over.
    pub fn seq_num(&self) -> u64 {
        self.header.map_or(0, |h| h.seq_num)
    }

    /// Handed over by the timeout rather than because it was full.
    pub fn timed_out(&self) -> bool {
        self.header
            .is_some_and(|h| h.status & libc::TP_STATUS_BLK_TMO != 0)
    }

    /// The kernel had dropped packets when it closed this block.
    pub fn losing(&self) -> bool {
        self.header
            .is_some_and(|h| h.status & libc::TP_STATUS_LOSING != 0)
    }
}

impl<'b> IntoIterator for &'b Block<'_> {
    type Item = Packet<'b>;
    type IntoIter = Packets<'b>;

    fn into_iter(self) -> Packets<'b> {
        self.packets()
    }
}

impl Drop for Block<'_> {
    fn drop(&mut self) {
        if self.corrupt.get() {
            self.ring.totals.n_corrupt_blocks += 1;
        }
        let ring = &mut *self.ring;
        // Release: all reads of the block happen before the kernel may overwrite it.
        ring.status_word(ring.current)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
        ring.current = (ring.current + 1) % ring.block_count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        RingConfig::default().validate().expect("default");
    }

    #[test]
    fn config_errors_name_the_problem() {
        let base = RingConfig::default();
        let cases = [
            (
                RingConfig {
                    block_size_bytes: 4096 * 3,
                    ..base.clone()
                },
                "power of two",
            ),
            (
                RingConfig {
                    block_size_bytes: 1000,
                    ..base.clone()
                },
                "page size",
            ),
            (
                RingConfig {
                    block_count: 1,
                    ..base.clone()
                },
                "below 2",
            ),
            (
                RingConfig {
                    block_size_bytes: 1 << 30,
                    block_count: 8,
                    ..base.clone()
                },
                "exceeds",
            ),
            (
                RingConfig {
                    frame_size_hint: 2000 + 1,
                    ..base.clone()
                },
                "multiple of 16",
            ),
            (
                RingConfig {
                    frame_size_hint: 64,
                    ..base.clone()
                },
                "frame size hint 64",
            ),
            (
                RingConfig {
                    block_size_bytes: 4096,
                    frame_size_hint: 4096,
                    ..base.clone()
                },
                "to the block size",
            ),
            (
                RingConfig {
                    snaplen: Some(0),
                    ..base.clone()
                },
                "snaplen",
            ),
        ];
        for (config, needle) in cases {
            let msg = config.validate().expect_err(needle).to_string();
            assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
        }
    }

    #[test]
    fn min_frame_size_matches_the_kernel() {
        // TPACKET3_HDRLEN (tpacket3_hdr aligned + sockaddr_ll) rounded up to 16.
        assert_eq!(
            MIN_FRAME_SIZE as usize,
            libc::TPACKET3_HDRLEN.next_multiple_of(16)
        );
    }
}
