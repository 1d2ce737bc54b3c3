//! 1-in-N packet sampling.
//!
//! Deterministic: the first packet is taken, then every Nth. Counting rather than drawing
//! random numbers makes the outcome exact and testable (N × taken ≥ seen > N × (taken − 1));
//! with several capture threads each samples its own share, so the total stays within one
//! packet per thread of seen / N.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sampler {
    every: u32,
    /// Packets to skip before the next one is taken.
    skip: u32,
}

impl Sampler {
    /// Takes one packet in `every` (0 and 1 take every packet).
    pub fn new(every: u32) -> Sampler {
        Sampler {
            every: every.max(1),
            skip: 0,
        }
    }

    pub fn every(&self) -> u32 {
        self.every
    }

    /// Whether this packet is taken.
    #[inline]
    pub fn take(&mut self) -> bool {
        if self.skip == 0 {
            self.skip = self.every - 1;
            true
        } else {
            self.skip -= 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_in_n_exactly() {
        for n in [1, 2, 3, 10, 1000] {
            let mut s = Sampler::new(n);
            let taken: Vec<usize> = (0..10_000).filter(|_| s.take()).collect();
            assert_eq!(taken.len(), 10_000_usize.div_ceil(n as usize), "n = {n}");
            assert_eq!(taken[0], 0);
            assert!(taken.windows(2).all(|w| w[1] - w[0] == n as usize));
        }
        let mut zero = Sampler::new(0);
        assert!(zero.take() && zero.take());
    }
}
