//! The index arithmetic of AF_XDP rings and the checks on what the kernel writes into them, as
//! safe code over plain integers (tested without a kernel).
//!
//! An AF_XDP ring is a power-of-two array shared with the kernel plus two free-running 32-bit
//! counters: the producer writes entries at `producer & mask` and then advances `producer`; the
//! consumer reads at `consumer & mask` and then advances `consumer`. Both wrap at 2^32. Each
//! side keeps a cached copy of the other's counter and reloads it only when the cache says
//! there is nothing (more) to do.

/// A ring's size and the two cached counters of one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    size: u32,
    /// Our side's counter: the next entry we produce or consume.
    pub(crate) ours: u32,
    /// The other side's counter as last loaded.
    pub(crate) theirs: u32,
}

impl Cursor {
    /// `size` must be a power of two (checked by the caller's configuration).
    pub(crate) fn new(size: u32, ours: u32, theirs: u32) -> Cursor {
        debug_assert!(size.is_power_of_two());
        Cursor { size, ours, theirs }
    }

    pub(crate) fn mask(&self) -> u32 {
        self.size - 1
    }

    /// Consumer side: entries the producer has made and we have not read, given the
    /// producer's counter `producer`. A counter more than a ring ahead of ours is not
    /// something a correct kernel writes; it is clamped to one ring (`None` says so).
    pub(crate) fn filled(&mut self, producer: u32) -> Option<u32> {
        self.theirs = producer;
        let n = producer.wrapping_sub(self.ours);
        (n <= self.size).then_some(n)
    }

    /// Producer side: free slots, given the consumer's counter `consumer` (the kernel has
    /// consumed up to it). `None` when the counters are inconsistent (the consumer ahead of
    /// us, or more than a ring behind).
    pub(crate) fn free(&mut self, consumer: u32) -> Option<u32> {
        self.theirs = consumer;
        let used = self.ours.wrapping_sub(consumer);
        (used <= self.size).then(|| self.size - used)
    }

    /// Slot indices of the next `n` entries from our counter.
    pub(crate) fn slots(&self, n: u32) -> impl Iterator<Item = usize> + use<> {
        let (start, mask) = (self.ours, self.mask());
        (0..n).map(move |i| (start.wrapping_add(i) & mask) as usize)
    }

    /// Moves our counter past `n` entries; returns the value to publish.
    pub(crate) fn advance(&mut self, n: u32) -> u32 {
        self.ours = self.ours.wrapping_add(n);
        self.ours
    }
}

/// Bytes of XDP metadata tapwire's program puts in front of a steered frame: the receive time
/// (CLOCK_MONOTONIC ns) and a magic word, both native-endian u64.
pub(crate) const META_BYTES: u64 = 16;
/// "tapwire!": the program wrote this frame's metadata (the word is cleared after reading, so
/// a stale one from an earlier frame in the same chunk is never taken for it).
pub(crate) const META_MAGIC: u64 = 0x7461_7077_6972_6521;

/// Where a received descriptor's frame lies in the UMEM, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameAt {
    /// Offset of the first byte of the frame.
    pub(crate) offset: usize,
    pub(crate) len: usize,
    /// The chunk the frame is in (to give back to the fill ring).
    pub(crate) chunk: u64,
    /// Offset of the metadata, when the chunk has room for it before the frame.
    pub(crate) meta: Option<usize>,
}

/// Checks a received descriptor (`addr`, `len`) against a UMEM of `umem_len` bytes cut into
/// `chunk_size`-byte chunks (aligned mode: a frame never crosses a chunk). `None` for a
/// descriptor no correct kernel writes.
pub(crate) fn frame_at(addr: u64, len: u32, chunk_size: u32, umem_len: u64) -> Option<FrameAt> {
    let chunk_size = u64::from(chunk_size);
    let chunk = addr - addr % chunk_size;
    let end = addr.checked_add(u64::from(len))?;
    if len == 0 || end > umem_len || end > chunk + chunk_size {
        return None;
    }
    let meta = (addr - chunk >= META_BYTES).then(|| (addr - META_BYTES) as usize);
    Some(FrameAt {
        offset: addr as usize,
        len: len as usize,
        chunk,
        meta,
    })
}

/// The receive time in the metadata `meta` (16 bytes), if tapwire's program wrote it.
pub(crate) fn meta_time_ns(meta: &[u8]) -> Option<u64> {
    let ts = u64::from_ne_bytes(meta.get(..8)?.try_into().ok()?);
    let magic = u64::from_ne_bytes(meta.get(8..16)?.try_into().ok()?);
    (magic == META_MAGIC).then_some(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_sees_what_was_produced_across_the_wrap() {
        let mut c = Cursor::new(8, u32::MAX - 2, u32::MAX - 2);
        assert_eq!(c.filled(u32::MAX - 2), Some(0));
        // The producer wrapped: 5 entries, indices 5, 6, 7, 0, 1 of an 8-slot ring.
        assert_eq!(c.filled(2), Some(5));
        assert_eq!(c.slots(5).collect::<Vec<_>>(), vec![5, 6, 7, 0, 1]);
        assert_eq!(c.advance(5), 2);
        assert_eq!(c.filled(2), Some(0));
    }

    #[test]
    fn a_producer_more_than_a_ring_ahead_is_refused() {
        let mut c = Cursor::new(8, 100, 100);
        assert_eq!(c.filled(108), Some(8));
        assert_eq!(c.filled(109), None);
        // Behind us (a counter going backwards) is "more than a ring ahead" after wrapping.
        assert_eq!(c.filled(99), None);
    }

    #[test]
    fn producer_free_slots_follow_the_consumer() {
        let mut c = Cursor::new(4, 0, 0);
        assert_eq!(c.free(0), Some(4));
        c.advance(4);
        assert_eq!(c.free(0), Some(0));
        assert_eq!(c.free(3), Some(3));
        assert_eq!(c.slots(3).collect::<Vec<_>>(), vec![0, 1, 2]);
        c.advance(3);
        assert_eq!(c.free(3), Some(0));
        // Across the 32-bit wrap.
        let mut w = Cursor::new(4, 1, u32::MAX);
        assert_eq!(w.free(u32::MAX), Some(2));
        // The consumer ahead of the producer is impossible.
        assert_eq!(w.free(2), None);
    }

    #[test]
    fn descriptors_stay_inside_their_chunk_and_the_umem() {
        let (chunk, umem) = (4096, 4 * 4096);
        // A frame after 256 bytes of headroom in chunk 1, room for metadata before it.
        assert_eq!(
            frame_at(4096 + 256, 100, chunk, umem),
            Some(FrameAt {
                offset: 4096 + 256,
                len: 100,
                chunk: 4096,
                meta: Some(4096 + 256 - 16),
            })
        );
        // No room for metadata at the very start of a chunk.
        assert_eq!(frame_at(8192, 60, chunk, umem).unwrap().meta, None);
        // Exactly to the end of the last chunk: fine; one byte more: refused.
        assert!(frame_at(3 * 4096 + 96, 4000, chunk, umem).is_some());
        assert_eq!(frame_at(3 * 4096 + 96, 4001, chunk, umem), None);
        // Crossing into the next chunk, empty, outside the UMEM, overflowing.
        assert_eq!(frame_at(4096 + 4000, 200, chunk, umem), None);
        assert_eq!(frame_at(4096, 0, chunk, umem), None);
        assert_eq!(frame_at(umem, 10, chunk, umem), None);
        assert_eq!(frame_at(u64::MAX - 5, 10, chunk, umem), None);
    }

    #[test]
    fn metadata_counts_only_with_the_magic_word() {
        let mut m = [0u8; 16];
        m[..8].copy_from_slice(&123_456_789u64.to_ne_bytes());
        assert_eq!(meta_time_ns(&m), None);
        m[8..].copy_from_slice(&META_MAGIC.to_ne_bytes());
        assert_eq!(meta_time_ns(&m), Some(123_456_789));
        assert_eq!(meta_time_ns(&m[..12]), None);
    }
}
