//! The compact sets of an index record: sorted, distinct values stored as a count and LEB128
//! deltas (small when values cluster, as a block's hosts and ports do), ports as a bitmap when
//! that is smaller. Reading never panics: a set that does not decode answers "maybe".

/// Appends `v` as an unsigned LEB128 varint.
#[inline]
pub fn put_varint(out: &mut Vec<u8>, mut v: u128) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a LEB128 varint of at most `max_bits` bits from the start of `b`; the value and the
/// bytes it took.
#[inline]
pub fn get_varint(b: &[u8], max_bits: u32) -> Option<(u128, usize)> {
    if max_bits <= 64 {
        return get_varint64(b, max_bits).map(|(v, n)| (u128::from(v), n));
    }
    let mut v: u128 = 0;
    for (i, &byte) in b.iter().enumerate() {
        let shift = 7 * i as u32;
        if shift >= max_bits {
            return None;
        }
        let part = u128::from(byte & 0x7f);
        // Bits that would land at or past `max_bits`.
        let room = max_bits - shift;
        if room < 7 && part >> room != 0 {
            return None;
        }
        v |= part << shift;
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// [`get_varint`] in 64-bit arithmetic (every set but IPv6 addresses): the index's hot loop.
#[inline]
fn get_varint64(b: &[u8], max_bits: u32) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, &byte) in b.iter().enumerate() {
        let shift = 7 * i as u32;
        if shift >= max_bits {
            return None;
        }
        let part = u64::from(byte & 0x7f);
        let room = max_bits - shift;
        if room < 7 && part >> room != 0 {
            return None;
        }
        v |= part << shift;
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// A reader over a byte slice: varints and fixed little-endian words, `None` at the end.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// Reads from the start of `b`.
    pub fn new(b: &'a [u8]) -> Cursor<'a> {
        Cursor { b }
    }

    /// What is left.
    pub fn rest(&self) -> &'a [u8] {
        self.b
    }

    /// A varint of at most `max_bits` bits.
    #[inline]
    pub fn varint(&mut self, max_bits: u32) -> Option<u128> {
        let (v, n) = get_varint(self.b, max_bits)?;
        self.b = &self.b[n..];
        Some(v)
    }

    /// A varint that fits a `usize` no larger than `max`.
    pub fn len(&mut self, max: usize) -> Option<usize> {
        let v = self.varint(64)?;
        usize::try_from(v).ok().filter(|&n| n <= max)
    }

    /// `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Some(head)
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(*self.bytes(8)?.first_chunk::<8>()?))
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(*self.bytes(4)?.first_chunk::<4>()?))
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(*self.bytes(2)?.first_chunk::<2>()?))
    }
}

/// Encodes `sorted` (strictly increasing) as a count, the first value and the deltas.
pub fn put_set(out: &mut Vec<u8>, sorted: impl ExactSizeIterator<Item = u128>) {
    put_varint(out, sorted.len() as u128);
    let mut prev = None;
    for v in sorted {
        put_varint(out, prev.map_or(v, |p| v - p));
        prev = Some(v);
    }
}

/// Port sets: a list (tag 0) or, when it would be larger, a 65536-bit bitmap (tag 1).
const PORTS_LIST: u8 = 0;
const PORTS_BITMAP: u8 = 1;
const PORTS_BITMAP_BYTES: usize = 8192;

/// Encodes a sorted, distinct port list.
pub fn put_ports(out: &mut Vec<u8>, sorted: &[u16]) {
    // A delta costs one to three bytes; past this many ports the bitmap is smaller.
    if sorted.len() > PORTS_BITMAP_BYTES / 2 {
        out.push(PORTS_BITMAP);
        let start = out.len();
        out.resize(start + PORTS_BITMAP_BYTES, 0);
        for &p in sorted {
            out[start + usize::from(p >> 3)] |= 1 << (p & 7);
        }
    } else {
        out.push(PORTS_LIST);
        put_set(out, sorted.iter().map(|&p| u128::from(p)));
    }
}

/// A stored set of values of at most `bits` bits.
#[derive(Debug, Clone, Copy)]
pub struct Set<'a> {
    bytes: &'a [u8],
    bits: u32,
}

impl<'a> Set<'a> {
    /// Splits a set off the front of `c` (its length is read and checked; its values are
    /// decoded only when asked).
    pub fn take(c: &mut Cursor<'a>, bits: u32) -> Option<Set<'a>> {
        let start = c.rest();
        let n = c.len(usize::MAX)?;
        // The values end where `n` bytes with the top bit clear have been seen, counted eight
        // bytes at a time while eight or more values remain (a word holds at most eight ends);
        // a query parses every record of its range, so this is its hot loop. Each value is
        // checked against `bits` when it is read.
        let b = c.rest();
        let (mut seen, mut i) = (0usize, 0usize);
        while n - seen >= 8 {
            let Some(w) = b.get(i..i + 8) else { break };
            let w = u64::from_le_bytes(w.try_into().ok()?);
            seen += (!w & 0x8080_8080_8080_8080).count_ones() as usize;
            i += 8;
        }
        while seen < n {
            if *b.get(i)? & 0x80 == 0 {
                seen += 1;
            }
            i += 1;
        }
        c.bytes(i)?;
        let used = start.len() - c.rest().len();
        Some(Set {
            bytes: &start[..used],
            bits,
        })
    }

    /// A set [`Set::take`] split off before (its bytes exactly): not checked again.
    pub(crate) fn taken(bytes: &'a [u8], bits: u32) -> Set<'a> {
        Set { bytes, bits }
    }

    /// An empty set.
    pub const fn empty(bits: u32) -> Set<'static> {
        Set { bytes: &[0], bits }
    }

    /// The values, in order; decoding stops at the first bad one.
    pub fn iter(&self) -> impl Iterator<Item = u128> + 'a {
        let mut c = Cursor::new(self.bytes);
        let n = c.len(usize::MAX).unwrap_or(0);
        let mut prev: Option<u128> = None;
        let bits = self.bits;
        (0..n).map_while(move |_| {
            let d = c.varint(bits)?;
            let v = match prev {
                None => d,
                Some(p) => p.checked_add(d)?,
            };
            if bits < 128 && v >> bits != 0 {
                return None;
            }
            prev = Some(v);
            Some(v)
        })
    }

    /// How many values it holds.
    pub fn len(&self) -> usize {
        Cursor::new(self.bytes).len(usize::MAX).unwrap_or(0)
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any value lies in `lo..=hi`.
    pub fn any_in(&self, lo: u128, hi: u128) -> bool {
        self.iter().take_while(|&v| v <= hi).any(|v| v >= lo)
    }

    /// Its encoded bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// A stored port set.
#[derive(Debug, Clone, Copy)]
pub enum Ports<'a> {
    /// Sorted values.
    List(Set<'a>),
    /// One bit per port.
    Bitmap(&'a [u8]),
}

impl<'a> Ports<'a> {
    /// Splits a port set off the front of `c`.
    pub fn take(c: &mut Cursor<'a>) -> Option<Ports<'a>> {
        match c.bytes(1)?[0] {
            PORTS_LIST => Set::take(c, 16).map(Ports::List),
            PORTS_BITMAP => c.bytes(PORTS_BITMAP_BYTES).map(Ports::Bitmap),
            _ => None,
        }
    }

    /// A port set [`Ports::take`] split off before (its bytes exactly).
    pub(crate) fn taken(b: &'a [u8]) -> Option<Ports<'a>> {
        match b.split_first()? {
            (&PORTS_LIST, rest) => Some(Ports::List(Set::taken(rest, 16))),
            (&PORTS_BITMAP, rest) if rest.len() == PORTS_BITMAP_BYTES => Some(Ports::Bitmap(rest)),
            _ => None,
        }
    }

    /// Whether any port lies in `lo..=hi`.
    pub fn any_in(&self, lo: u16, hi: u16) -> bool {
        match self {
            Ports::List(s) => s.any_in(u128::from(lo), u128::from(hi)),
            Ports::Bitmap(b) => (lo..=hi).any(|p| b[usize::from(p >> 3)] & (1 << (p & 7)) != 0),
        }
    }

    /// The ports, in order.
    pub fn to_vec(&self) -> Vec<u16> {
        match self {
            Ports::List(s) => s.iter().map(|v| v as u16).collect(),
            Ports::Bitmap(b) => (0..=u16::MAX)
                .filter(|&p| b[usize::from(p >> 3)] & (1 << (p & 7)) != 0)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn varints() {
        for v in [
            0u128,
            1,
            127,
            128,
            300,
            u32::MAX.into(),
            u64::MAX.into(),
            u128::MAX,
        ] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(get_varint(&b, 128), Some((v, b.len())), "{v}");
        }
        let mut b = Vec::new();
        put_varint(&mut b, 1 << 16);
        assert_eq!(get_varint(&b, 16), None, "too wide for 16 bits");
        assert_eq!(get_varint(&[0x80, 0x80], 64), None, "unterminated");
        assert_eq!(get_varint(&[0xff; 40], 128), None);
    }

    proptest! {
        #[test]
        fn sets_round_trip(mut v in proptest::collection::vec(any::<u32>(), 0..300), lo: u32, span in 0u32..1000) {
            v.sort_unstable();
            v.dedup();
            let mut b = Vec::new();
            put_set(&mut b, v.iter().map(|&x| u128::from(x)));
            b.extend_from_slice(b"tail");
            let mut c = Cursor::new(&b);
            let s = Set::take(&mut c, 32).unwrap();
            prop_assert_eq!(c.rest(), b"tail");
            prop_assert_eq!(s.iter().map(|x| x as u32).collect::<Vec<_>>(), v.clone());
            let hi = lo.saturating_add(span);
            prop_assert_eq!(s.any_in(lo.into(), hi.into()), v.iter().any(|&x| x >= lo && x <= hi));
        }

        #[test]
        fn ports_round_trip(mut v in proptest::collection::vec(any::<u16>(), 0..6000), lo: u16, span in 0u16..100) {
            v.sort_unstable();
            v.dedup();
            let mut b = Vec::new();
            put_ports(&mut b, &v);
            let mut c = Cursor::new(&b);
            let p = Ports::take(&mut c).unwrap();
            prop_assert!(c.rest().is_empty());
            prop_assert_eq!(p.to_vec(), v.clone());
            let hi = lo.saturating_add(span);
            prop_assert_eq!(p.any_in(lo, hi), v.iter().any(|&x| x >= lo && x <= hi));
        }

        #[test]
        fn reading_garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut c = Cursor::new(&b);
            if let Some(s) = Set::take(&mut c, 128) {
                let _ = s.iter().count();
                let _ = s.any_in(5, 10);
            }
            let mut c = Cursor::new(&b);
            if let Some(p) = Ports::take(&mut c) {
                let _ = p.any_in(0, 65535);
            }
        }
    }
}
