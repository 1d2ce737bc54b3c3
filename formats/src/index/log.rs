//! [`KeyLog`]: the keys of the packets written into one buffer (or one scanned stretch of a
//! capture), cut into ranges of about [`RANGE_BYTES`], then encoded as index records. The
//! per-packet work is a few appends to flat vectors; sorting, removing duplicates and encoding
//! happen once per range, in [`KeyLog::encode`] (the collector's disk thread).

use super::codec::{put_ports, put_set};
use super::file::{BlockHead, put_block};
use super::keys::FrameKeys;

/// A range is closed once it holds this many bytes of capture records: small enough that a
/// query for one host among thousands reads few of them, large enough that the index stays a
/// small fraction of the capture.
pub const RANGE_BYTES: usize = 64 << 10;
/// Or this many packets (small frames).
pub const RANGE_PACKETS: u32 = 1024;
/// Gap comments kept per range; the rest are counted.
pub const MAX_COMMENTS: u32 = 16;
/// Bytes of a gap comment kept.
pub const MAX_COMMENT_BYTES: usize = 512;

/// Whether a packet comment is one of tapwire's sequence notes (a gap or a restart), the
/// comments the index keeps.
pub fn is_gap_comment(comment: &str) -> bool {
    comment.starts_with("tapwire: sequence")
}

/// Recently recorded values: a value seen since the range started is not appended again.
/// Direct-mapped, so a miss only costs a duplicate that sorting removes.
const RECENT: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Range {
    start: usize,
    end: usize,
    n_packets: u32,
    ts_min_ns: u64,
    ts_max_ns: u64,
    kinds: u16,
    protos: [u64; 4],
    v4: (usize, usize),
    v6: (usize, usize),
    ports: (usize, usize),
    ifaces: (usize, usize),
    comments: (usize, usize),
    comments_dropped: u32,
}

impl Range {
    fn new(start: usize, log: &KeyLog) -> Range {
        Range {
            start,
            end: start,
            n_packets: 0,
            ts_min_ns: 0,
            ts_max_ns: 0,
            kinds: 0,
            protos: [0; 4],
            v4: (log.v4.len(), log.v4.len()),
            v6: (log.v6.len(), log.v6.len()),
            ports: (log.ports.len(), log.ports.len()),
            ifaces: (log.ifaces.len(), log.ifaces.len()),
            comments: (log.comments.len(), log.comments.len()),
            comments_dropped: 0,
        }
    }
}

/// The keys of the packets of a stretch of capture, by range.
#[derive(Debug, Clone)]
pub struct KeyLog {
    v4: Vec<u32>,
    v6: Vec<u128>,
    ports: Vec<u16>,
    ifaces: Vec<u32>,
    /// (time, interface, text range in `text`).
    comments: Vec<(u64, u32, usize, usize)>,
    text: String,
    done: Vec<Range>,
    cur: Range,
    recent_v4: [u64; RECENT],
    recent_ports: [u32; RECENT],
    last_iface: Option<u32>,
    scratch: Vec<u8>,
}

impl Default for KeyLog {
    fn default() -> Self {
        KeyLog::new(0)
    }
}

impl KeyLog {
    /// An empty log whose first range starts at `start`.
    pub fn new(start: usize) -> KeyLog {
        let mut log = KeyLog {
            v4: Vec::new(),
            v6: Vec::new(),
            ports: Vec::new(),
            ifaces: Vec::new(),
            comments: Vec::new(),
            text: String::new(),
            done: Vec::new(),
            cur: Range {
                start,
                end: start,
                n_packets: 0,
                ts_min_ns: 0,
                ts_max_ns: 0,
                kinds: 0,
                protos: [0; 4],
                v4: (0, 0),
                v6: (0, 0),
                ports: (0, 0),
                ifaces: (0, 0),
                comments: (0, 0),
                comments_dropped: 0,
            },
            recent_v4: [0; RECENT],
            recent_ports: [0; RECENT],
            last_iface: None,
            scratch: Vec::new(),
        };
        log.reset(start);
        log
    }

    /// Empties the log (keeping its memory); the first range starts at `start`.
    pub fn reset(&mut self, start: usize) {
        self.v4.clear();
        self.v6.clear();
        self.ports.clear();
        self.ifaces.clear();
        self.comments.clear();
        self.text.clear();
        self.done.clear();
        self.cur = Range::new(start, self);
        self.forget_recent();
    }

    fn forget_recent(&mut self) {
        self.recent_v4 = [0; RECENT];
        self.recent_ports = [0; RECENT];
        self.last_iface = None;
    }

    /// Packets logged.
    pub fn n_packets(&self) -> u64 {
        self.done
            .iter()
            .map(|r| u64::from(r.n_packets))
            .sum::<u64>()
            + u64::from(self.cur.n_packets)
    }

    /// Records one packet whose capture record ends at `end`; `gap` is its gap comment.
    #[inline]
    pub fn packet(
        &mut self,
        end: usize,
        ts_ns: u64,
        iface: u32,
        keys: &FrameKeys,
        gap: Option<&str>,
    ) {
        let c = &mut self.cur;
        if c.n_packets == 0 {
            c.ts_min_ns = ts_ns;
            c.ts_max_ns = ts_ns;
        } else {
            c.ts_min_ns = c.ts_min_ns.min(ts_ns);
            c.ts_max_ns = c.ts_max_ns.max(ts_ns);
        }
        c.n_packets += 1;
        c.kinds |= keys.kind;
        for p in keys.protos.into_iter().flatten() {
            c.protos[usize::from(p >> 6)] |= 1 << (p & 63);
        }
        if self.last_iface != Some(iface) {
            self.last_iface = Some(iface);
            self.ifaces.push(iface);
        }
        for a in keys.v4.into_iter().flatten() {
            let slot = (a.wrapping_mul(0x9e37_79b1) >> 26) as usize;
            let tagged = u64::from(a) | 1 << 32;
            if self.recent_v4[slot] != tagged {
                self.recent_v4[slot] = tagged;
                self.v4.push(a);
            }
        }
        for p in keys.ports.into_iter().flatten() {
            let slot = (u32::from(p).wrapping_mul(0x9e37_79b1) >> 26) as usize;
            let tagged = u32::from(p) | 1 << 16;
            if self.recent_ports[slot] != tagged {
                self.recent_ports[slot] = tagged;
                self.ports.push(p);
            }
        }
        for a in keys.v6.into_iter().flatten() {
            // Only a repeat within this range may be skipped.
            if self.v6.len() == self.cur.v6.0 || self.v6.last() != Some(&a) {
                self.v6.push(a);
            }
        }
        if let Some(text) = gap {
            if self.comments.len() - self.cur.comments.0 < MAX_COMMENTS as usize {
                let mut cut = text.len().min(MAX_COMMENT_BYTES);
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                let from = self.text.len();
                self.text.push_str(&text[..cut]);
                self.comments.push((ts_ns, iface, from, self.text.len()));
            } else {
                self.cur.comments_dropped += 1;
            }
        }
        if end - self.cur.start >= RANGE_BYTES || self.cur.n_packets >= RANGE_PACKETS {
            self.cut(end);
        }
    }

    /// Closes the current range at `end`; the next starts there.
    pub fn cut(&mut self, end: usize) {
        self.close(end);
        let next = Range::new(end, self);
        self.done.push(std::mem::replace(&mut self.cur, next));
        self.forget_recent();
    }

    fn close(&mut self, end: usize) {
        let (v4, v6, ports, ifaces, comments) = (
            self.v4.len(),
            self.v6.len(),
            self.ports.len(),
            self.ifaces.len(),
            self.comments.len(),
        );
        let c = &mut self.cur;
        c.end = end.max(c.start);
        c.v4.1 = v4;
        c.v6.1 = v6;
        c.ports.1 = ports;
        c.ifaces.1 = ifaces;
        c.comments.1 = comments;
    }

    /// Ends the log at `end`: what was logged since the last cut becomes the last range (also
    /// without packets, so that the records cover every byte up to `end`).
    pub fn finish(&mut self, end: usize) {
        if end > self.cur.start || self.cur.n_packets > 0 {
            self.cut(end);
        }
    }

    /// Where the next range starts.
    pub fn open_start(&self) -> usize {
        self.cur.start
    }

    /// Appends one [`super::file::BLOCK`] record per closed range to `out`, at `base` plus
    /// its offsets; the first range is made to start at `first_start` when given (header and
    /// interface blocks written before it). Returns the records written.
    pub fn encode(&mut self, base: u64, first_start: Option<u64>, out: &mut Vec<u8>) -> usize {
        let mut sets = std::mem::take(&mut self.scratch);
        for (i, r) in self.done.iter().enumerate() {
            sets.clear();
            let n = sorted_distinct(&mut self.ifaces[r.ifaces.0..r.ifaces.1]);
            put_set(
                &mut sets,
                self.ifaces[r.ifaces.0..r.ifaces.0 + n]
                    .iter()
                    .map(|&v| v.into()),
            );
            let protos: Vec<u128> = (0..=255u8)
                .filter(|&p| r.protos[usize::from(p >> 6)] & (1 << (p & 63)) != 0)
                .map(u128::from)
                .collect();
            put_set(&mut sets, protos.into_iter());
            let n = sorted_distinct(&mut self.ports[r.ports.0..r.ports.1]);
            put_ports(&mut sets, &self.ports[r.ports.0..r.ports.0 + n]);
            let n = sorted_distinct(&mut self.v4[r.v4.0..r.v4.1]);
            put_set(
                &mut sets,
                self.v4[r.v4.0..r.v4.0 + n].iter().map(|&v| v.into()),
            );
            let n = sorted_distinct(&mut self.v6[r.v6.0..r.v6.1]);
            put_set(&mut sets, self.v6[r.v6.0..r.v6.0 + n].iter().copied());
            let start = match (i, first_start) {
                (0, Some(s)) => s,
                _ => base + r.start as u64,
            };
            let end = base + r.end as u64;
            let head = BlockHead {
                offset: start,
                len: end.saturating_sub(start),
                ts_min_ns: r.ts_min_ns,
                ts_max_ns: r.ts_max_ns,
                n_packets: r.n_packets,
                kinds: r.kinds,
            };
            let text = &self.text;
            let mut comments = self.comments[r.comments.0..r.comments.1]
                .iter()
                .map(|&(ts, iface, a, b)| (ts, iface, &text[a..b]));
            put_block(out, &head, &sets, &mut comments, r.comments_dropped);
        }
        self.scratch = sets;
        self.done.len()
    }
}

/// Sorts `s` and moves its distinct values to the front; returns how many there are.
fn sorted_distinct<T: Ord + Copy>(s: &mut [T]) -> usize {
    s.sort_unstable();
    let mut n = 0;
    for i in 0..s.len() {
        if n == 0 || s[i] != s[n - 1] {
            s[n] = s[i];
            n += 1;
        }
    }
    n
}
