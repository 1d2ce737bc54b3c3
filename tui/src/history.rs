//! Rate history from the snapshots the TUI has polled: packets/s and bits/s between consecutive
//! snapshots, timed by the collector's own uptime (so that the UI's scheduling jitter does not
//! show as rate noise), for the detail pane's charts.

use std::collections::VecDeque;

/// Samples kept per series: ten minutes at one poll a second.
pub const MAX_SAMPLES: usize = 600;

/// One point of a rate chart: the average rate between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Collector uptime at the newer snapshot, seconds.
    pub at_s: f64,
    pub pps: f64,
    pub bps: f64,
}

/// The rate history of one counter pair (a session, or the collector's totals).
#[derive(Debug, Clone, Default)]
pub struct RateHistory {
    /// The previous reading: (uptime s, packets, bytes).
    last: Option<(f64, u64, u64)>,
    samples: VecDeque<Sample>,
}

impl RateHistory {
    /// Records the counters read at collector uptime `at_s`. The same snapshot read twice adds
    /// nothing; a collector restart (uptime going back) starts the history again; counters
    /// going back (a session re-created) start a new baseline without a sample.
    pub fn push(&mut self, at_s: f64, packets: u64, bytes: u64) {
        match self.last {
            Some((t, _, _)) if at_s < t => self.samples.clear(),
            Some((t, _, _)) if at_s == t => return,
            Some((t, p, b)) if packets >= p && bytes >= b => {
                let dt = at_s - t;
                self.samples.push_back(Sample {
                    at_s,
                    pps: (packets - p) as f64 / dt,
                    bps: (bytes - b) as f64 * 8.0 / dt,
                });
                if self.samples.len() > MAX_SAMPLES {
                    self.samples.pop_front();
                }
            }
            _ => {}
        }
        self.last = Some((at_s, packets, bytes));
    }

    pub fn samples(&self) -> &VecDeque<Sample> {
        &self.samples
    }

    /// The newest `n` samples, oldest first.
    pub fn last_n(&self, n: usize) -> impl DoubleEndedIterator<Item = &Sample> {
        self.samples
            .iter()
            .skip(self.samples.len().saturating_sub(n))
    }

    /// Seconds covered by the newest `n` samples.
    pub fn span_s(&self, n: usize) -> f64 {
        let newest = self.samples.back().map_or(0.0, |s| s.at_s);
        let n = n.min(self.samples.len());
        if n == 0 {
            return 0.0;
        }
        // The first of the n samples covers the interval since the reading before it.
        let first = self.samples.len() - n;
        let start = if first == 0 {
            // Unknown start of the very first interval: assume the typical one-poll spacing.
            self.samples[0].at_s
                - self
                    .samples
                    .get(1)
                    .map_or(1.0, |s| s.at_s - self.samples[0].at_s)
        } else {
            self.samples[first - 1].at_s
        };
        newest - start
    }

    /// The largest packet rate among the newest `n` samples.
    pub fn max_pps(&self, n: usize) -> f64 {
        self.last_n(n).map(|s| s.pps).fold(0.0, f64::max)
    }

    pub fn max_bps(&self, n: usize) -> f64 {
        self.last_n(n).map(|s| s.bps).fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_the_counter_delta_over_the_uptime_delta() {
        let mut h = RateHistory::default();
        h.push(10.0, 1000, 100_000);
        assert!(h.samples().is_empty(), "one reading is no rate yet");
        h.push(12.0, 1400, 150_000);
        let s = h.samples()[0];
        assert_eq!(s.at_s, 12.0);
        assert_eq!(s.pps, 200.0);
        assert_eq!(s.bps, 200_000.0, "50 000 bytes in 2 s is 200 kb/s");
    }

    #[test]
    fn the_same_snapshot_twice_adds_nothing() {
        let mut h = RateHistory::default();
        h.push(1.0, 10, 10);
        h.push(2.0, 20, 20);
        h.push(2.0, 20, 20);
        assert_eq!(h.samples().len(), 1);
    }

    #[test]
    fn a_restarted_collector_starts_the_history_again() {
        let mut h = RateHistory::default();
        h.push(100.0, 5000, 5000);
        h.push(101.0, 5100, 5100);
        h.push(1.0, 7, 70);
        assert!(h.samples().is_empty());
        h.push(2.0, 17, 170);
        assert_eq!(h.samples().len(), 1);
        assert_eq!(h.samples()[0].pps, 10.0);
    }

    #[test]
    fn counters_going_back_make_a_new_baseline_not_a_huge_rate() {
        let mut h = RateHistory::default();
        h.push(1.0, 500, 500);
        h.push(2.0, 3, 30);
        assert!(h.samples().is_empty());
        h.push(3.0, 13, 130);
        assert_eq!(h.samples()[0].pps, 10.0);
    }

    #[test]
    fn a_gap_in_polling_gives_the_average_over_the_gap() {
        let mut h = RateHistory::default();
        h.push(1.0, 0, 0);
        h.push(31.0, 300, 0);
        assert_eq!(h.samples()[0].pps, 10.0);
    }

    #[test]
    fn history_is_bounded_and_spans_are_measured() {
        let mut h = RateHistory::default();
        for i in 0..=(MAX_SAMPLES as u64 + 50) {
            h.push(i as f64, i * 10, i * 1000);
        }
        assert_eq!(h.samples().len(), MAX_SAMPLES);
        assert_eq!(h.last_n(5).count(), 5);
        assert_eq!(h.span_s(60), 60.0);
        assert_eq!(h.max_pps(60), 10.0);
        assert_eq!(h.max_bps(60), 8000.0);
        assert_eq!(RateHistory::default().span_s(10), 0.0);
    }
}
