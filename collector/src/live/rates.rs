//! Packet and bit rates over the last 1 and 10 seconds, from counters sampled once a second.

use tapwire_api_types::Rates;

const SAMPLES: usize = 11;

/// The last eleven (time, packets, bytes) samples of one counter pair.
#[derive(Debug, Clone, Default)]
pub struct History {
    samples: [(u64, u64, u64); SAMPLES],
    next: usize,
    n: usize,
}

impl History {
    /// Records the counters at `now_ns` and returns the rates they imply.
    pub fn push(&mut self, now_ns: u64, packets: u64, bytes: u64) -> Rates {
        self.samples[self.next] = (now_ns, packets, bytes);
        self.next = (self.next + 1) % SAMPLES;
        self.n = (self.n + 1).min(SAMPLES);
        Rates {
            pps_1s: self.rate(1).0,
            bps_1s: self.rate(1).1,
            pps_10s: self.rate(10).0,
            bps_10s: self.rate(10).1,
        }
    }

    /// (packets/s, bits/s) between the newest sample and the one `back` samples before it
    /// (or the oldest there is).
    fn rate(&self, back: usize) -> (f64, f64) {
        if self.n < 2 {
            return (0.0, 0.0);
        }
        let back = back.min(self.n - 1);
        let newest = self.samples[(self.next + SAMPLES - 1) % SAMPLES];
        let older = self.samples[(self.next + SAMPLES - 1 - back) % SAMPLES];
        let dt = newest.0.saturating_sub(older.0) as f64 / 1e9;
        if dt <= 0.0 {
            return (0.0, 0.0);
        }
        let dp = newest.1.saturating_sub(older.1) as f64;
        let db = newest.2.saturating_sub(older.2) as f64;
        (dp / dt, db * 8.0 / dt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_and_ten_seconds() {
        let mut h = History::default();
        let s = 1_000_000_000;
        assert_eq!(h.push(0, 0, 0), Rates::default());
        // 100 pps for 10 s, then 1000 pps for 1 s.
        for i in 1..=10 {
            h.push(i * s, i * 100, i * 100 * 64);
        }
        let r = h.push(11 * s, 1000 + 1000, (1000 + 1000) * 64);
        assert_eq!(r.pps_1s, 1000.0);
        assert_eq!(r.bps_1s, 1000.0 * 64.0 * 8.0);
        assert_eq!(r.pps_10s, (2000.0 - 100.0) / 10.0);
    }

    #[test]
    fn early_samples_use_what_there_is() {
        let mut h = History::default();
        h.push(0, 0, 0);
        let r = h.push(2_000_000_000, 50, 500);
        assert_eq!(r.pps_1s, 25.0);
        assert_eq!(r.pps_10s, 25.0);
    }
}
