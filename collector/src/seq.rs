//! GRE sequence tracking: gaps, duplicates, reordering within a window, 32- and 30-bit wrap,
//! sender restarts, and senders that never number their packets (always 0).
//!
//! A gap is counted as loss when it is seen and given back if the missing numbers arrive late
//! within the window, so `lost` is net of reordering.

/// Sequence numbers remembered behind the highest one, for reordering and duplicates.
pub const WINDOW: u32 = 256;
/// A forward jump larger than this is a sender restart, not loss.
pub const MAX_JUMP: u32 = 1 << 20;

const BITS_30: u64 = 1 << 30;
const BITS_32: u64 = 1 << 32;

/// What one sequence number told the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    First,
    InOrder,
    /// `lost` numbers, `from..=to`, were skipped.
    Gap {
        lost: u32,
        from: u32,
        to: u32,
    },
    /// Filled an earlier gap.
    Late,
    Duplicate,
    /// A jump too far to be loss: the sender restarted or its counter was reset.
    Reset {
        from: u32,
        to: u32,
    },
    /// Zero from a sender that has sent only zeros: it does not number its packets.
    Unnumbered,
}

impl Observation {
    /// True for anything but the next number in order; used to tell which counter model fits.
    pub const fn is_anomaly(self) -> bool {
        !matches!(
            self,
            Observation::First | Observation::InOrder | Observation::Unnumbered
        )
    }
}

/// Counters of one sequence stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqStats {
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub resets: u64,
    pub anomalies: u64,
}

#[derive(Debug, Clone)]
pub struct SeqTracker {
    /// Highest number seen, and a bitmap of which of the `WINDOW` numbers below it arrived
    /// (bit i set: `highest - i` arrived).
    highest: Option<u32>,
    window: [u64; (WINDOW / 64) as usize],
    modulus: u64,
    all_zero: bool,
    n_zero: u64,
    stats: SeqStats,
}

impl Default for SeqTracker {
    fn default() -> Self {
        SeqTracker {
            highest: None,
            window: [0; (WINDOW / 64) as usize],
            modulus: BITS_32,
            all_zero: true,
            n_zero: 0,
            stats: SeqStats::default(),
        }
    }
}

impl SeqTracker {
    pub fn stats(&self) -> SeqStats {
        self.stats
    }

    /// True once a non-zero number was seen: the sender really numbers its packets.
    pub fn numbered(&self) -> bool {
        !self.all_zero
    }

    /// True when the counter was seen wrapping at 30 bits (some Cisco platforms).
    pub fn wraps_at_30_bits(&self) -> bool {
        self.modulus == BITS_30
    }

    #[inline]
    pub fn observe(&mut self, seq: u32) -> Observation {
        // The next number in order, the common case by far: one comparison and a window shift.
        // (`highest` is set only once a non-zero number was seen.)
        if let Some(highest) = self.highest
            && u64::from(seq) == (u64::from(highest) + 1) & (self.modulus - 1)
        {
            self.shift_one();
            self.set_bit(0);
            self.highest = Some(seq);
            return Observation::InOrder;
        }
        self.observe_other(seq)
    }

    fn observe_other(&mut self, seq: u32) -> Observation {
        if self.all_zero {
            if seq == 0 {
                self.n_zero += 1;
                return Observation::Unnumbered;
            }
            self.all_zero = false;
            // A single zero followed by a small number was a counter starting at zero.
            if self.n_zero == 1 && seq < WINDOW {
                self.rebase(0);
            }
        }
        let Some(highest) = self.highest else {
            self.rebase(seq);
            return Observation::First;
        };
        let obs = self.classify(highest, seq);
        if obs.is_anomaly() {
            self.stats.anomalies += 1;
        }
        obs
    }

    fn classify(&mut self, highest: u32, seq: u32) -> Observation {
        let m = self.modulus;
        // The modulus is a power of two: masking, not a division, on every packet.
        let fwd = (u64::from(seq) + m - u64::from(highest)) & (m - 1);
        if fwd == 0 {
            self.stats.duplicates += 1;
            return Observation::Duplicate;
        }
        if fwd < m / 2 {
            return self.forward(highest, seq, fwd as u32);
        }
        // Backwards. A 30-bit counter wrapping looks like a backward jump of about 2^30 in
        // 32-bit arithmetic; it is recognised by the highest number being just below 2^30.
        if m == BITS_32 && u64::from(highest) < BITS_30 && u64::from(seq) < BITS_30 {
            let fwd30 = (u64::from(seq) + BITS_30 - u64::from(highest)) % BITS_30;
            if fwd30 != 0
                && fwd30 < u64::from(WINDOW)
                && u64::from(highest) >= BITS_30 - u64::from(WINDOW)
            {
                self.modulus = BITS_30;
                return self.forward(highest, seq, fwd30 as u32);
            }
        }
        let back = (m - fwd) as u32;
        if back < WINDOW {
            if self.bit(back) {
                self.stats.duplicates += 1;
                return Observation::Duplicate;
            }
            self.set_bit(back);
            self.stats.lost = self.stats.lost.saturating_sub(1);
            self.stats.reordered += 1;
            return Observation::Late;
        }
        self.stats.resets += 1;
        self.rebase(seq);
        Observation::Reset {
            from: highest,
            to: seq,
        }
    }

    fn forward(&mut self, highest: u32, seq: u32, d: u32) -> Observation {
        if d > MAX_JUMP {
            self.stats.resets += 1;
            self.rebase(seq);
            return Observation::Reset {
                from: highest,
                to: seq,
            };
        }
        self.shift(d);
        self.set_bit(0);
        self.highest = Some(seq);
        if d == 1 {
            return Observation::InOrder;
        }
        let lost = d - 1;
        self.stats.lost += u64::from(lost);
        let m = self.modulus;
        let from = ((u64::from(highest) + 1) & (m - 1)) as u32;
        let to = ((u64::from(seq) + m - 1) & (m - 1)) as u32;
        Observation::Gap { lost, from, to }
    }

    #[inline]
    fn shift_one(&mut self) {
        let mut carry = 0;
        for w in &mut self.window {
            let out = *w >> 63;
            *w = (*w << 1) | carry;
            carry = out;
        }
    }

    fn rebase(&mut self, seq: u32) {
        self.highest = Some(seq);
        self.window = [0; (WINDOW / 64) as usize];
        self.set_bit(0);
    }

    fn bit(&self, i: u32) -> bool {
        self.window[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    #[inline]
    fn set_bit(&mut self, i: u32) {
        self.window[(i / 64) as usize] |= 1 << (i % 64);
    }

    /// Moves the window `d` numbers forward: bit i becomes bit i + d.
    fn shift(&mut self, d: u32) {
        if d == 1 {
            self.shift_one();
            return;
        }
        if d >= WINDOW {
            self.window = [0; (WINDOW / 64) as usize];
            return;
        }
        let words = (d / 64) as usize;
        let bits = d % 64;
        let n = self.window.len();
        for i in (0..n).rev() {
            let lo = i.checked_sub(words).map_or(0, |j| self.window[j]);
            let carry = if bits == 0 {
                0
            } else {
                i.checked_sub(words + 1).map_or(0, |j| self.window[j]) >> (64 - bits)
            };
            self.window[i] = if bits == 0 { lo } else { (lo << bits) | carry };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(seqs: &[u32]) -> (SeqTracker, Vec<Observation>) {
        let mut t = SeqTracker::default();
        let obs = seqs.iter().map(|&s| t.observe(s)).collect();
        (t, obs)
    }

    #[test]
    fn contiguous() {
        let (t, _) = run(&[106954, 106955, 106956, 106957]);
        assert_eq!(t.stats(), SeqStats::default());
    }

    #[test]
    fn gap_is_reported_with_the_missing_numbers() {
        let (t, obs) = run(&[10, 11, 14, 15]);
        assert_eq!(
            obs[2],
            Observation::Gap {
                lost: 2,
                from: 12,
                to: 13
            }
        );
        assert_eq!(t.stats().lost, 2);
    }

    #[test]
    fn late_arrival_gives_loss_back() {
        let (t, obs) = run(&[1, 2, 4, 3, 5]);
        assert_eq!(obs[3], Observation::Late);
        assert_eq!(t.stats().lost, 0);
        assert_eq!(t.stats().reordered, 1);
    }

    #[test]
    fn duplicates() {
        let (t, _) = run(&[1, 2, 2, 3, 1]);
        assert_eq!(t.stats().duplicates, 2);
        assert_eq!(t.stats().lost, 0);
    }

    #[test]
    fn wraps_at_32_bits() {
        let (t, obs) = run(&[u32::MAX - 1, u32::MAX, 0, 1, 3]);
        assert_eq!(obs[2], Observation::InOrder);
        assert_eq!(
            obs[4],
            Observation::Gap {
                lost: 1,
                from: 2,
                to: 2
            }
        );
        assert_eq!(t.stats().lost, 1);
    }

    #[test]
    fn wraps_at_30_bits() {
        let top = (1u32 << 30) - 1;
        let (t, obs) = run(&[top - 1, top, 0, 1, 2]);
        assert_eq!(obs[2], Observation::InOrder);
        assert!(t.wraps_at_30_bits());
        assert_eq!(t.stats(), SeqStats::default());
        let (t, obs) = run(&[top - 1, top, 1]);
        assert_eq!(
            obs[2],
            Observation::Gap {
                lost: 1,
                from: 0,
                to: 0
            }
        );
        assert_eq!(t.stats().lost, 1);
    }

    #[test]
    fn restart_is_not_loss() {
        let (t, obs) = run(&[500_000_000, 500_000_001, 0, 1]);
        assert_eq!(
            obs[2],
            Observation::Reset {
                from: 500_000_001,
                to: 0
            }
        );
        assert_eq!(t.stats().lost, 0);
        assert_eq!(t.stats().resets, 1);
        let (t, _) = run(&[5, 6, 5_000_000, 5_000_001]);
        assert_eq!((t.stats().lost, t.stats().resets), (0, 1));
    }

    #[test]
    fn counter_starting_at_zero() {
        let (t, obs) = run(&[0, 2, 3]);
        assert_eq!(
            obs[1],
            Observation::Gap {
                lost: 1,
                from: 1,
                to: 1
            }
        );
        assert_eq!(t.stats().lost, 1);
    }

    #[test]
    fn always_zero_is_unnumbered() {
        let (t, obs) = run(&[0, 0, 0, 0]);
        assert!(obs.iter().all(|o| *o == Observation::Unnumbered));
        assert!(!t.numbered());
        assert_eq!(t.stats(), SeqStats::default());
    }

    #[test]
    fn window_shift_keeps_bits() {
        let mut t = SeqTracker::default();
        t.observe(1000);
        t.observe(1002); // 1001 missing
        t.observe(1002 + 70); // shifts across a word boundary
        assert_eq!(t.observe(1001), Observation::Late);
        assert_eq!(t.observe(1000), Observation::Duplicate);
        assert_eq!(t.stats().lost, 69);
    }

    proptest! {
        /// Any permutation within the window of a contiguous run, minus a dropped set, reports
        /// exactly the dropped count as lost (drops not at the end).
        #[test]
        fn lost_equals_dropped(start: u32, n in 10usize..400, drops in proptest::collection::btree_set(1usize..9, 0..4),
                               swaps in proptest::collection::vec((0usize..400, 0usize..8), 0..20)) {
            let mut seqs: Vec<u32> = (0..n).filter(|i| !drops.contains(i)).map(|i| start.wrapping_add(i as u32)).collect();
            for (i, d) in swaps {
                let i = i % (seqs.len() - 1);
                let j = (i + d).min(seqs.len() - 2); // keep the last in place
                seqs.swap(i.max(1), j.max(1)); // keep the first in place
            }
            let (t, _) = run(&seqs);
            prop_assert_eq!(t.stats().lost, drops.len() as u64);
            prop_assert_eq!(t.stats().duplicates, 0);
        }
    }
}
