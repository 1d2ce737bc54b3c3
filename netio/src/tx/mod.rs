//! AF_PACKET transmit ring: complete Ethernet frames written into shared memory and handed to
//! the kernel many at a time with one `send()`.
//!
//! The caller fills frames with [`TxRing::push`] and hands everything queued to the kernel
//! with [`TxRing::kick`], which returns how many frames the kernel took. The kernel builds one
//! skb per frame, points it at the ring's pages (zero copy; a device that keeps the skb past
//! the hand-over, such as veth, gets a private copy first) and gives the frame back when the
//! skb is freed. With `PACKET_QDISC_BYPASS` it hands each skb straight to the driver: no
//! qdisc, and no copy to the interface's other packet sockets (tcpdump on the sending interface
//! does not see these frames; capture on the peer or the wire instead).
//!
//! Why TPACKET_V2 and not V3: the kernel's transmit path is the same (`tpacket_snd`) for both.
//! V3's block machinery exists only for receiving; on transmit it is V2 with a 48-byte header,
//! fixed-size frames (`tp_next_offset` must be 0) and every block option refused. V2 is the
//! long-established transmit format with the smaller header.
//!
//! A frame the device refuses (a full peer backlog on veth, a busy queue, no carrier) is put
//! back as queued by the kernel and `send()` fails with `ENOBUFS`: it goes with the next
//! kick, or [`TxRing::discard`] takes it back. A frame the kernel finds malformed stops the
//! ring at that frame ([`Kick::stuck`]); discard to go on.
#![allow(unsafe_code)]

mod slot;

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use slot::{AFTER_STATUS, Cursor, Layout, STATUS_OFFSET, VNET_HDR_LEN};
pub use slot::{LayoutError, Status};

use crate::error::context;
use crate::ifindex;
use crate::ring::page_size_bytes;
use crate::sys;
use crate::sys::Mmap;

/// The shape and options of a transmit ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxConfig {
    /// The longest Ethernet frame (header included, no FCS) that will be sent: the interface's
    /// MTU plus 14. The kernel refuses longer ones anyway.
    pub max_frame_bytes: u32,
    /// At least this many frames (rounded up to whole blocks). Default 1024.
    pub min_frames: u32,
    /// Hand frames straight to the driver (`PACKET_QDISC_BYPASS`). Default on.
    pub qdisc_bypass: bool,
    /// The kernel copies each frame into an skb of its own (through a `virtio_net_hdr` whose
    /// header length is the whole frame) instead of pointing the skb at the ring's pages.
    /// Cheaper where the device would copy anyway: veth and every local delivery copy frames
    /// that point into the ring into freshly allocated pages. Default on. The socket then no
    /// longer checks frames against the interface's MTU: the caller must (a device drops a
    /// frame that is too long, which looks like a full device: `ENOBUFS`).
    pub linear: bool,
}

impl Default for TxConfig {
    fn default() -> Self {
        TxConfig {
            max_frame_bytes: 1514,
            min_frames: 1024,
            qdisc_bypass: true,
            linear: true,
        }
    }
}

/// What one [`TxRing::kick`] did.
#[derive(Debug)]
pub struct Kick {
    /// Queued frames the kernel took, in order (handed to the device).
    pub n_taken: usize,
    /// What `send()` reported, if it failed: `ENOBUFS` (the device refused a frame: it stays
    /// queued), `EAGAIN` (the socket's send buffer is full), `ENETDOWN`/`ENXIO` (the interface
    /// is down or gone), `EMSGSIZE`/`EINVAL` (a malformed frame, see `stuck`).
    pub error: Option<io::Error>,
    /// The kernel refused the frame at its head as malformed; nothing queued goes until
    /// [`TxRing::discard`].
    pub stuck: bool,
}

/// A TPACKET_V2 transmit ring bound to one interface. It receives nothing.
#[derive(Debug)]
pub struct TxRing {
    // Before `fd`: the ring is unmapped before the socket is closed.
    map: Mmap,
    fd: OwnedFd,
    interface: String,
    ifindex: u32,
    layout: Layout,
    cursor: Cursor,
    /// Bytes before each frame: the virtio-net header with [`TxConfig::linear`], else none.
    lead: usize,
}

impl TxRing {
    /// Opens a transmit ring on `interface`. Needs CAP_NET_RAW.
    pub fn open(interface: &str, config: &TxConfig) -> io::Result<TxRing> {
        let lead = if config.linear { VNET_HDR_LEN } else { 0 };
        let layout = Layout::new(
            config.max_frame_bytes.saturating_add(lead as u32),
            config.min_frames,
            page_size_bytes() as usize,
        )
        .map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("transmit ring on {interface}: {e}"),
            )
        })?;
        let ifindex = ifindex(interface)?;
        let on = |what: &str| {
            let what = format!("{what} on {interface}");
            move |e: io::Error| context(e, what)
        };
        // Protocol 0, also when bound: no receive hook, so nothing is ever queued to it.
        let fd = sys::packet_socket().map_err(on("socket(AF_PACKET, SOCK_RAW)"))?;
        let sock = fd.as_fd();

        let version = libc::tpacket_versions::TPACKET_V2 as libc::c_int;
        sys::setsockopt(sock, libc::SOL_PACKET, libc::PACKET_VERSION, &version)
            .map_err(on("setsockopt(PACKET_VERSION, TPACKET_V2)"))?;
        if config.qdisc_bypass {
            sys::setsockopt(sock, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &1)
                .map_err(on("setsockopt(PACKET_QDISC_BYPASS)"))?;
        }
        if config.linear {
            // Before the ring: the kernel refuses it once a ring exists.
            sys::setsockopt(sock, libc::SOL_PACKET, libc::PACKET_VNET_HDR, &1)
                .map_err(on("setsockopt(PACKET_VNET_HDR)"))?;
        }
        let req = libc::tpacket_req {
            tp_block_size: layout.block_size as u32,
            tp_block_nr: layout.block_count as u32,
            tp_frame_size: layout.frame_size as u32,
            tp_frame_nr: layout.frame_count() as u32,
        };
        sys::setsockopt(sock, libc::SOL_PACKET, libc::PACKET_TX_RING, &req).map_err(on(
            &format!(
                "setsockopt(PACKET_TX_RING, {} frames of {} bytes)",
                layout.frame_count(),
                layout.frame_size
            ),
        ))?;
        let len = layout.ring_bytes();
        let map =
            Mmap::new(sock, len).map_err(on(&format!("mmap of the {len}-byte transmit ring")))?;
        // Frames in flight count against the send buffer until the device releases them; let
        // the whole ring be in flight where the system allows (capped at wmem_max, silently).
        let _ = socket2::SockRef::from(&sock).set_send_buffer_size(len);

        sys::bind_packet(sock, ifindex, 0)
            .map_err(on(&format!("bind(AF_PACKET, ifindex {ifindex})")))?;

        Ok(TxRing {
            map,
            fd,
            interface: interface.to_owned(),
            ifindex,
            cursor: Cursor::new(layout.frame_count()),
            layout,
            lead,
        })
    }

    /// The interface the ring sends on, by name.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The interface's index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The longest frame [`TxRing::push`] takes.
    pub fn frame_capacity(&self) -> usize {
        self.layout.capacity() - self.lead
    }

    /// How many frames the ring holds.
    pub fn frame_count(&self) -> usize {
        self.layout.frame_count()
    }

    /// Frames pushed and not yet taken by the kernel.
    pub fn queued(&self) -> usize {
        self.cursor.queued()
    }

    fn status_word(&self, i: usize) -> &AtomicU32 {
        debug_assert!(i < self.layout.frame_count());
        // SAFETY: frame `i` lies inside the mapping and starts 16-byte aligned (frame sizes
        // are multiples of 16, blocks start on pages), so its first word is a valid, aligned
        // u32. The kernel and this process only touch it atomically (or with barriers).
        unsafe {
            AtomicU32::from_ptr(
                self.map
                    .ptr
                    .as_ptr()
                    .add(self.layout.frame_offset(i) + STATUS_OFFSET)
                    .cast::<u32>(),
            )
        }
    }

    fn status(&self, i: usize) -> Status {
        // Acquire pairs with the kernel's barrier after it releases a frame: once the status
        // says available, the kernel no longer reads the frame.
        Status::from_word(self.status_word(i).load(Ordering::Acquire))
    }

    /// Fills the next free frame: `fill` gets the frame's room ([`TxRing::frame_capacity`]
    /// bytes) and returns the frame's length, which is then queued. Returns false, without
    /// calling `fill`, when no frame is free (all queued, or still being sent); `fill`
    /// returning 0 queues nothing.
    pub fn push(&mut self, fill: impl FnOnce(&mut [u8]) -> usize) -> bool {
        let Some(i) = self.cursor.next_free(|i| self.status(i)) else {
            return false;
        };
        let start = self.layout.frame_offset(i) + AFTER_STATUS;
        let len = self.layout.frame_size - AFTER_STATUS;
        // SAFETY: the frame's bytes after its status word lie inside the mapping. The frame
        // is available: the kernel neither reads nor writes it until its status says
        // SEND_REQUEST, which is stored below, after this borrow ends. `&mut self` keeps any
        // other slice into the mapping from existing meanwhile.
        let after_status =
            unsafe { std::slice::from_raw_parts_mut(self.map.ptr.as_ptr().add(start), len) };
        let (head, room) = slot::data_mut(after_status).split_at_mut(self.lead);
        let n = fill(room).min(room.len());
        if n == 0 {
            return true;
        }
        if self.lead > 0 {
            slot::write_vnet_hdr(head, n as u16);
        }
        slot::set_len(after_status, (self.lead + n) as u32);
        // Release: the frame's bytes are visible to the kernel before the status is.
        self.status_word(i)
            .store(libc::TP_STATUS_SEND_REQUEST, Ordering::Release);
        self.cursor.queue();
        true
    }

    /// One `send()` that hands every queued frame to the kernel without waiting.
    pub fn kick(&mut self) -> Kick {
        if self.cursor.queued() == 0 {
            return Kick {
                n_taken: 0,
                error: None,
                stuck: false,
            };
        }
        // SAFETY: no buffer is passed (the kernel reads the ring); MSG_DONTWAIT: it sends what
        // it can and returns.
        let ret =
            unsafe { libc::send(self.fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT) };
        let error = (ret < 0).then(|| {
            context(
                io::Error::last_os_error(),
                format!("send on the transmit ring of {}", self.interface),
            )
        });
        let mut cursor = self.cursor;
        let taken = cursor.after_send(|i| self.status(i));
        self.cursor = cursor;
        Kick {
            n_taken: taken.n_taken,
            error,
            stuck: taken.stuck,
        }
    }

    /// Takes back every queued frame (never sent); returns how many.
    pub fn discard(&mut self) -> usize {
        let mut cursor = self.cursor;
        let n = cursor.discard(|i| {
            self.status_word(i)
                .store(libc::TP_STATUS_AVAILABLE, Ordering::Release)
        });
        self.cursor = cursor;
        n
    }
}

impl AsFd for TxRing {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
