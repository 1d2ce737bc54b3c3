//! The TPACKET_V2 transmit ring as plain bytes and indices: where each frame lies, what its
//! status word says, where the caller's bytes go, and which frames the kernel has taken. Safe
//! code, tested without a kernel; `tx/mod.rs` supplies the mapping and the atomics.
//!
//! ```text
//! ring:  block | block | ...          (block_size bytes each, a multiple of the page size)
//! block: frame | frame | ... | slack  (frames_per_block frames of frame_size bytes)
//! frame: tpacket2_hdr (32 B, tp_status first) | the Ethernet frame to send (tp_len bytes)
//! ```
//!
//! The kernel walks the frames in order from its own head, sending each one whose status is
//! `TP_STATUS_SEND_REQUEST` and stopping at the first that is not. So the frames between its
//! head and the caller's fill position are exactly the queued ones, and the [`Cursor`] keeps
//! both positions in step with it.

use std::mem::{offset_of, size_of};

/// Byte offsets in `tpacket2_hdr`, checked against `libc`'s layout.
mod field {
    pub const STATUS: usize = 0;
    pub const LEN: usize = 4;
    /// `TPACKET_ALIGN(sizeof(struct tpacket2_hdr))`: without `PACKET_TX_HAS_OFF` the kernel
    /// takes the frame from `tp_hdrlen - sizeof(struct sockaddr_ll)`, which is this.
    pub const DATA: usize = 32;
}

const _: () = {
    use libc::tpacket2_hdr;
    assert!(offset_of!(tpacket2_hdr, tp_status) == field::STATUS);
    assert!(offset_of!(tpacket2_hdr, tp_len) == field::LEN);
    assert!(size_of::<tpacket2_hdr>().next_multiple_of(libc::TPACKET_ALIGNMENT) == field::DATA);
    assert!(libc::TPACKET2_HDRLEN - size_of::<libc::sockaddr_ll>() == field::DATA);
};

/// Where the status word lies in a frame.
pub(crate) const STATUS_OFFSET: usize = field::STATUS;
/// Bytes of a frame after its 4-byte status word: what [`frame_len_mut`] and [`data_mut`] cut.
pub(crate) const AFTER_STATUS: usize = field::STATUS + 4;

/// `struct virtio_net_hdr`: in front of each frame when the socket has `PACKET_VNET_HDR`.
pub(crate) const VNET_HDR_LEN: usize = 10;

/// The largest ring [`Layout::new`] accepts, as [`crate::ring::MAX_RING_BYTES`].
const MAX_RING_BYTES: u64 = 1 << 32;
/// A block holds about this much (at least one frame): large enough that the slack at a
/// block's end is small, small enough that the kernel finds contiguous pages.
const TARGET_BLOCK_BYTES: usize = 64 << 10;

/// What a frame's status word says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The caller's: free, or sent and released (`TP_STATUS_AVAILABLE`, possibly with
    /// timestamp bits).
    Available,
    /// Queued by the caller, not yet taken by the kernel.
    SendRequest,
    /// Taken by the kernel; its bytes may still be read (zero copy) until it is released.
    Sending,
    /// The kernel refused it as malformed and stopped there.
    WrongFormat,
}

impl Status {
    /// The state a slot's `tp_status` word says.
    pub fn from_word(word: u32) -> Status {
        if word & libc::TP_STATUS_WRONG_FORMAT != 0 {
            Status::WrongFormat
        } else if word & libc::TP_STATUS_SENDING != 0 {
            Status::Sending
        } else if word & libc::TP_STATUS_SEND_REQUEST != 0 {
            Status::SendRequest
        } else {
            Status::Available
        }
    }
}

/// Why a transmit ring's shape was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// The frame length is 0 or above 65535.
    #[error("a frame of {0} bytes cannot be sent (1 to 65535 bytes)")]
    BadFrameLen(u32),
    /// Fewer than two frames were asked for.
    #[error("a transmit ring needs at least 2 frames, not {0}")]
    TooFewFrames(u32),
    /// The ring would be larger than the kernel allows.
    #[error("a transmit ring of {0} bytes exceeds {MAX_RING_BYTES} bytes")]
    TooLarge(u64),
}

/// The shape of a ring: what `PACKET_TX_RING` is given and where frame `i` lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub block_size: usize,
    pub block_count: usize,
    pub frame_size: usize,
    pub frames_per_block: usize,
}

impl Layout {
    /// Frames that hold Ethernet frames of up to `max_frame_bytes`, at least `min_frames` of
    /// them (rounded up to whole blocks), in blocks of whole pages of `page_bytes`.
    pub fn new(
        max_frame_bytes: u32,
        min_frames: u32,
        page_bytes: usize,
    ) -> Result<Layout, LayoutError> {
        if max_frame_bytes == 0 || max_frame_bytes > 65_535 {
            return Err(LayoutError::BadFrameLen(max_frame_bytes));
        }
        if min_frames < 2 {
            return Err(LayoutError::TooFewFrames(min_frames));
        }
        let frame_size =
            (field::DATA + max_frame_bytes as usize).next_multiple_of(libc::TPACKET_ALIGNMENT);
        let wanted = (TARGET_BLOCK_BYTES / frame_size).max(1) * frame_size;
        let block_size = wanted.next_multiple_of(page_bytes.max(1));
        let frames_per_block = block_size / frame_size;
        let block_count = (min_frames as usize).div_ceil(frames_per_block);
        let total = block_size as u64 * block_count as u64;
        if total > MAX_RING_BYTES {
            return Err(LayoutError::TooLarge(total));
        }
        Ok(Layout {
            block_size,
            block_count,
            frame_size,
            frames_per_block,
        })
    }

    pub fn frame_count(&self) -> usize {
        self.frames_per_block * self.block_count
    }

    pub fn ring_bytes(&self) -> usize {
        self.block_size * self.block_count
    }

    /// Where frame `i` starts in the mapping.
    pub fn frame_offset(&self, i: usize) -> usize {
        (i / self.frames_per_block) * self.block_size
            + (i % self.frames_per_block) * self.frame_size
    }

    /// The longest Ethernet frame a frame holds.
    pub fn capacity(&self) -> usize {
        self.frame_size - field::DATA
    }
}

/// `tp_len` in the bytes of a frame after its status word.
pub(crate) fn set_len(after_status: &mut [u8], len: u32) {
    let at = field::LEN - AFTER_STATUS;
    after_status[at..at + 4].copy_from_slice(&len.to_ne_bytes());
}

/// The Ethernet frame's room in the bytes of a frame after its status word.
pub(crate) fn data_mut(after_status: &mut [u8]) -> &mut [u8] {
    &mut after_status[field::DATA - AFTER_STATUS..]
}

/// A `virtio_net_hdr` that asks for nothing (no checksum offload, no segmentation) but says the
/// first `hdr_len` bytes of the frame are its header: the kernel copies that many bytes into
/// the skb's own buffer instead of pointing at the ring. Little-endian, as virtio's legacy
/// layout is on every little-endian host and the kernel reads it (`vio_le()`).
pub(crate) fn write_vnet_hdr(out: &mut [u8], hdr_len: u16) {
    out[..VNET_HDR_LEN].fill(0);
    // flags (1), gso_type (1), hdr_len (2), gso_size (2), csum_start (2), csum_offset (2).
    out[2..4].copy_from_slice(&hdr_len.to_le_bytes());
}

/// The caller's position in the ring and the kernel's, as the kernel's own walk implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    n: usize,
    /// The next frame the kernel will look at (its `tx_ring.head`).
    head: usize,
    /// The next frame the caller fills.
    fill: usize,
    /// Frames from `head` on that the caller queued and the kernel has not taken.
    queued: usize,
}

/// What the kernel did with the queued frames during one `send()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    pub n_taken: usize,
    /// The kernel refused the frame at its head as malformed: nothing after it will go.
    pub stuck: bool,
}

impl Cursor {
    pub fn new(n: usize) -> Cursor {
        Cursor {
            n,
            head: 0,
            fill: 0,
            queued: 0,
        }
    }

    pub fn queued(&self) -> usize {
        self.queued
    }

    /// The frame to fill next, if the caller owns it (never a queued one, nor one the kernel
    /// still reads).
    pub fn next_free(&self, status: impl Fn(usize) -> Status) -> Option<usize> {
        (self.queued < self.n && status(self.fill) == Status::Available).then_some(self.fill)
    }

    /// The frame from [`Cursor::next_free`] was filled and marked `SEND_REQUEST`.
    pub fn queue(&mut self) {
        debug_assert!(self.queued < self.n);
        self.fill = (self.fill + 1) % self.n;
        self.queued += 1;
    }

    /// After a `send()`: the kernel took every queued frame up to the first still marked
    /// `SEND_REQUEST` (one it failed to hand to the device is marked so again) or refused.
    pub fn after_send(&mut self, status: impl Fn(usize) -> Status) -> Taken {
        let mut n_taken = 0;
        while self.queued > 0 {
            match status(self.head) {
                Status::SendRequest => break,
                Status::WrongFormat => {
                    return Taken {
                        n_taken,
                        stuck: true,
                    };
                }
                Status::Available | Status::Sending => {
                    self.head = (self.head + 1) % self.n;
                    self.queued -= 1;
                    n_taken += 1;
                }
            }
        }
        Taken {
            n_taken,
            stuck: false,
        }
    }

    /// Takes back every queued frame (`release` marks each available again) and returns how
    /// many. Only valid while no `send()` runs: the kernel then looks at `head` next and finds
    /// nothing to send.
    pub fn discard(&mut self, mut release: impl FnMut(usize)) -> usize {
        let n = self.queued;
        for k in 0..n {
            release((self.head + k) % self.n);
        }
        self.fill = self.head;
        self.queued = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn layout_fits_frames_in_whole_pages() {
        // A 1514-byte frame: 32 + 1514 rounded up to 1552; a block of whole pages holds as
        // many whole frames as fit.
        let l = Layout::new(1514, 1000, 4096).expect("valid");
        assert_eq!(l.frame_size, 1552);
        assert_eq!(l.block_size % 4096, 0);
        assert_eq!(l.frames_per_block, l.block_size / l.frame_size);
        assert!(l.frame_count() >= 1000 && l.frame_count() < 1000 + l.frames_per_block);
        assert_eq!(l.capacity(), 1552 - 32);
        // Frames never cross a block.
        for i in 0..l.frame_count() {
            let off = l.frame_offset(i);
            assert_eq!(
                off / l.block_size,
                (off + l.frame_size - 1) / l.block_size,
                "{i}"
            );
            assert_eq!(off % libc::TPACKET_ALIGNMENT, 0);
        }
        assert_eq!(l.frame_offset(l.frames_per_block), l.block_size);
        // A jumbo frame larger than the target block: one per block.
        let j = Layout::new(65_535, 2, 4096).expect("valid");
        assert_eq!(j.frames_per_block, 1);
        assert!(j.block_size >= j.frame_size);
    }

    #[test]
    fn layout_errors_name_the_problem() {
        for (e, needle) in [
            (Layout::new(0, 8, 4096), "0 bytes"),
            (Layout::new(70_000, 8, 4096), "70000"),
            (Layout::new(1514, 1, 4096), "at least 2"),
            (Layout::new(65_535, 1 << 20, 4096), "exceeds"),
        ] {
            let msg = e.expect_err(needle).to_string();
            assert!(msg.contains(needle), "{msg}");
        }
    }

    #[test]
    fn vnet_header_asks_for_a_copy_of_the_whole_frame() {
        let mut b = [0xffu8; 12];
        write_vnet_hdr(&mut b, 1514);
        assert_eq!(b, [0, 0, 0xea, 0x05, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
    }

    #[test]
    fn status_words() {
        assert_eq!(Status::from_word(0), Status::Available);
        // The kernel adds timestamp bits to a released frame when timestamping is on.
        assert_eq!(
            Status::from_word(libc::TP_STATUS_TS_SOFTWARE),
            Status::Available
        );
        assert_eq!(Status::from_word(1), Status::SendRequest);
        assert_eq!(Status::from_word(2), Status::Sending);
        assert_eq!(Status::from_word(4), Status::WrongFormat);
    }

    #[test]
    fn header_fields_land_where_the_kernel_reads_them() {
        let mut frame = [0u8; 64];
        set_len(&mut frame[AFTER_STATUS..], 0x0102_0304);
        assert_eq!(
            &frame[field::LEN..field::LEN + 4],
            &0x0102_0304u32.to_ne_bytes()
        );
        data_mut(&mut frame[AFTER_STATUS..])[0] = 0xaa;
        assert_eq!(frame[field::DATA], 0xaa);
    }

    /// A stand-in for the kernel's walk: takes queued frames from its head in order until it
    /// meets one not marked `SEND_REQUEST`; `fail_at` is put back (a refused hand-over) and
    /// stops the walk, as `tpacket_snd` does; `bad_at` is refused as malformed.
    struct FakeKernel {
        status: RefCell<Vec<Status>>,
        head: usize,
    }

    impl FakeKernel {
        fn new(n: usize) -> FakeKernel {
            FakeKernel {
                status: RefCell::new(vec![Status::Available; n]),
                head: 0,
            }
        }

        fn get(&self, i: usize) -> Status {
            self.status.borrow()[i]
        }

        fn set(&self, i: usize, s: Status) {
            self.status.borrow_mut()[i] = s;
        }

        /// `released`: whether taken frames are released at once (veth) or stay in flight.
        fn send(&mut self, fail_at: Option<usize>, bad_at: Option<usize>, released: bool) {
            let n = self.status.borrow().len();
            loop {
                let h = self.head;
                if self.get(h) != Status::SendRequest {
                    return;
                }
                if bad_at == Some(h) {
                    self.set(h, Status::WrongFormat);
                    return;
                }
                if fail_at == Some(h) {
                    return;
                }
                self.set(
                    h,
                    if released {
                        Status::Available
                    } else {
                        Status::Sending
                    },
                );
                self.head = (h + 1) % n;
            }
        }
    }

    fn fill(c: &mut Cursor, k: &FakeKernel, n: usize) -> usize {
        let mut done = 0;
        while done < n {
            let Some(i) = c.next_free(|i| k.get(i)) else {
                break;
            };
            k.set(i, Status::SendRequest);
            c.queue();
            done += 1;
        }
        done
    }

    #[test]
    fn cursor_follows_the_kernel_round_the_ring() {
        let mut k = FakeKernel::new(8);
        let mut c = Cursor::new(8);
        for round in 0..5 {
            assert_eq!(fill(&mut c, &k, 5), 5, "round {round}");
            k.send(None, None, true);
            assert_eq!(
                c.after_send(|i| k.get(i)),
                Taken {
                    n_taken: 5,
                    stuck: false
                }
            );
            assert_eq!(c.queued(), 0);
            assert_eq!(c.head, k.head, "round {round}");
        }
    }

    #[test]
    fn a_full_ring_and_frames_in_flight_are_not_refilled() {
        let mut k = FakeKernel::new(4);
        let mut c = Cursor::new(4);
        assert_eq!(fill(&mut c, &k, 10), 4, "every frame queued");
        assert_eq!(c.next_free(|i| k.get(i)), None, "full");
        // Sent but still read by the device: not free until released.
        k.send(None, None, false);
        assert_eq!(c.after_send(|i| k.get(i)).n_taken, 4);
        assert_eq!(c.next_free(|i| k.get(i)), None, "in flight");
        k.set(0, Status::Available);
        assert_eq!(c.next_free(|i| k.get(i)), Some(0));
    }

    #[test]
    fn a_refused_hand_over_stays_queued_and_goes_next_time() {
        let mut k = FakeKernel::new(8);
        let mut c = Cursor::new(8);
        fill(&mut c, &k, 6);
        k.send(Some(3), None, true);
        assert_eq!(
            c.after_send(|i| k.get(i)),
            Taken {
                n_taken: 3,
                stuck: false
            }
        );
        assert_eq!(c.queued(), 3);
        k.send(None, None, true);
        assert_eq!(c.after_send(|i| k.get(i)).n_taken, 3);
        assert_eq!(c.queued(), 0);
    }

    #[test]
    fn discard_gives_back_the_queued_frames_and_refills_from_the_kernels_head() {
        let mut k = FakeKernel::new(8);
        let mut c = Cursor::new(8);
        fill(&mut c, &k, 6);
        k.send(None, Some(2), true);
        assert_eq!(
            c.after_send(|i| k.get(i)),
            Taken {
                n_taken: 2,
                stuck: true
            }
        );
        let n = c.discard(|i| k.set(i, Status::Available));
        assert_eq!(n, 4);
        assert!((0..8).all(|i| k.get(i) == Status::Available));
        // The kernel looks at frame 2 next; so does the caller.
        assert_eq!(c.next_free(|i| k.get(i)), Some(2));
        fill(&mut c, &k, 3);
        k.send(None, None, true);
        assert_eq!(c.after_send(|i| k.get(i)).n_taken, 3);
        assert_eq!(c.head, k.head);
    }
}
