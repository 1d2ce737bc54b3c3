//! Rate history from the snapshots the TUI has polled, for the detail pane's charts: one
//! sample per second of the collector's uptime, so that a chart column is always one second.
//!
//! The collector publishes a snapshot about once a second (1.0 to 1.1 s apart: its loop wakes
//! every 100 ms) and the UI polls about once a second too, so a poll now and then reads the
//! same snapshot twice and the next one spans two. A sample per polled snapshot made such a
//! sample cover two seconds and left a second without a column (the chart's time axis
//! shrank). Here the counter increase between two snapshots is spread evenly over the time
//! between them, timed by the collector's own uptime (so the UI's scheduling jitter is no
//! rate noise), and each whole second of uptime gets the packets and bits that fell in it.

use std::collections::VecDeque;

/// Samples kept per series: ten minutes.
pub const MAX_SAMPLES: usize = 600;

/// One point of a rate chart: the average rate over one second of collector uptime.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Collector uptime at the end of the second, seconds.
    pub at_s: f64,
    pub pps: f64,
    pub bps: f64,
}

/// The rate history of one counter pair (a session, or the collector's totals).
#[derive(Debug, Clone, Default)]
pub struct RateHistory {
    /// The previous reading: (uptime s, packets, bytes).
    last: Option<(f64, u64, u64)>,
    /// The second being filled.
    open: Option<Second>,
    samples: VecDeque<Sample>,
}

/// A second of uptime that readings have reached into but not yet past.
#[derive(Debug, Clone, Copy)]
struct Second {
    start_s: f64,
    packets: f64,
    bits: f64,
    /// How much of the second the readings covered (less than 1 for the very first one).
    covered_s: f64,
}

impl RateHistory {
    /// Records the counters read at collector uptime `at_s`. The same snapshot read twice adds
    /// nothing; a collector restart (uptime going back) starts the history again; counters
    /// going back (a session re-created) start a new baseline without a sample.
    pub fn push(&mut self, at_s: f64, packets: u64, bytes: u64) {
        match self.last {
            Some((t, _, _)) if at_s < t => {
                self.samples.clear();
                self.open = None;
            }
            Some((t, _, _)) if at_s == t => return,
            Some((t, p, b)) if packets >= p && bytes >= b => {
                self.spread(t, at_s, (packets - p) as f64, (bytes - b) as f64 * 8.0);
            }
            Some(_) => self.open = None,
            None => {}
        }
        self.last = Some((at_s, packets, bytes));
    }

    /// Spreads `packets` and `bits` counted between uptimes `from_s` and `to_s` evenly over
    /// that time, closing each second it reaches the end of.
    fn spread(&mut self, from_s: f64, to_s: f64, packets: f64, bits: f64) {
        let dt = to_s - from_s;
        let (pps, bps) = (packets / dt, bits / dt);
        let mut at = from_s;
        // Only the last MAX_SAMPLES seconds of a long gap can be kept.
        let skip_to = to_s.floor() - MAX_SAMPLES as f64;
        if at < skip_to {
            self.samples.clear();
            self.open = None;
            at = skip_to;
        }
        while at < to_s {
            let start_s = at.floor();
            let end = (start_s + 1.0).min(to_s);
            let part = end - at;
            let sec = self.open.get_or_insert(Second {
                start_s,
                packets: 0.0,
                bits: 0.0,
                covered_s: 0.0,
            });
            sec.packets += pps * part;
            sec.bits += bps * part;
            sec.covered_s += part;
            if end == start_s + 1.0 {
                self.close();
            }
            at = end;
        }
    }

    fn close(&mut self) {
        let Some(sec) = self.open.take() else {
            return;
        };
        self.samples.push_back(Sample {
            at_s: sec.start_s + 1.0,
            pps: sec.packets / sec.covered_s,
            bps: sec.bits / sec.covered_s,
        });
        if self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
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
        n.min(self.samples.len()) as f64
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
    fn rate_is_the_counter_delta_over_the_uptime_delta_one_sample_per_second() {
        let mut h = RateHistory::default();
        h.push(10.0, 1000, 100_000);
        assert!(h.samples().is_empty(), "one reading is no rate yet");
        h.push(12.0, 1400, 150_000);
        assert_eq!(h.samples().len(), 2, "two seconds, two samples");
        for (s, at) in h.samples().iter().zip([11.0, 12.0]) {
            assert_eq!(s.at_s, at);
            assert_eq!(s.pps, 200.0);
            assert_eq!(s.bps, 200_000.0, "50 000 bytes in 2 s is 200 kb/s");
        }
    }

    #[test]
    fn a_second_is_closed_only_once_a_reading_reaches_its_end() {
        let mut h = RateHistory::default();
        h.push(10.5, 0, 0);
        h.push(10.9, 40, 400);
        assert!(h.samples().is_empty());
        h.push(11.5, 100, 1000);
        // 10.5 to 11: 0.5 s at 100/s, all of it within the second the readings covered.
        assert_eq!(h.samples().len(), 1);
        assert_eq!(h.samples()[0].at_s, 11.0);
        assert!((h.samples()[0].pps - 100.0).abs() < 1e-9);
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
        assert_eq!(h.samples().len(), 30);
        assert!(h.samples().iter().all(|s| s.pps == 10.0));
        // Longer than the history: only its end is kept, still one sample a second.
        h.push(
            31.0 + 2.0 * MAX_SAMPLES as f64,
            300 + 2 * MAX_SAMPLES as u64,
            0,
        );
        assert_eq!(h.samples().len(), MAX_SAMPLES);
        assert!(h.samples().iter().all(|s| s.pps == 1.0));
        assert_eq!(
            h.samples().back().map(|s| s.at_s),
            Some(31.0 + 2.0 * MAX_SAMPLES as f64)
        );
    }

    /// A tiny deterministic generator for the timing jitter (the tests need no crate for it).
    fn jitter(state: &mut u64) -> f64 {
        *state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (*state >> 11) as f64 / (1u64 << 53) as f64
    }

    #[test]
    fn a_steady_rate_is_a_steady_line_whatever_the_poll_and_publication_timing() {
        // The collector publishes its counters 1.0 to 1.1 s apart (its loop wakes every
        // 100 ms, and each next snapshot is due 1 s after the last one); the UI's clock polls
        // every 0.9 to 1.1 s and reads the newest snapshot published by then, so it reads some
        // twice and misses others. The traffic is a steady 1000 packets/s of 100 bytes.
        const PPS: f64 = 1000.0;
        let mut rng = 7;
        let mut published = Vec::new();
        let mut t = 0.3;
        while t < 300.0 {
            published.push(t);
            t += 1.0 + 0.1 * jitter(&mut rng);
        }
        let counters = |t: f64| {
            let packets = (PPS * t).floor() as u64;
            (packets, packets * 100)
        };
        let mut h = RateHistory::default();
        let (mut clock_s, mut n_repeats) = (0.0, 0);
        let mut seen = None;
        while clock_s < 295.0 {
            if let Some(&at) = published.iter().rev().find(|&&p| p <= clock_s) {
                n_repeats += usize::from(seen == Some(at));
                seen = Some(at);
                let (packets, bytes) = counters(at);
                h.push(at, packets, bytes);
            }
            clock_s += 0.9 + 0.2 * jitter(&mut rng);
        }
        assert!(n_repeats > 0, "the scenario must read some snapshot twice");
        let s = h.samples();
        // A column for every second, none missing, each at the steady rate (a packet more or
        // less at the ends of each interval: 0.2 %).
        assert!(s.len() >= 285, "{} samples", s.len());
        for (i, x) in s.iter().enumerate() {
            assert_eq!(x.at_s, s[0].at_s + i as f64, "sample {i}: {x:?}");
            if i > 0 {
                assert!((x.pps - PPS).abs() <= 2.0, "sample {i}: {x:?}");
                assert!((x.bps - PPS * 800.0).abs() <= 1600.0, "sample {i}: {x:?}");
            }
        }
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
