//! Token buckets for the per-flow rate limit, with time passed in.
//!
//! A bucket holds at most `depth` tokens and gains `rate` tokens per second. A packet that
//! finds enough tokens takes them and is sent; one that does not is counted as rate-limited and
//! dropped at once, so nothing ever waits in a queue. Arithmetic is exact: the level is kept in
//! billionths of a token, so a rate of 1 pps over 10 s admits exactly 10 packets.
//!
//! The clock is the packets' capture time (the kernel's timestamp), not the time the probe
//! gets to them: a block of packets handed over together is still judged packet by packet, and
//! the outcome is a function of the traffic alone. A clock that steps back refills nothing.

const NANOS_PER_SECOND: u128 = 1_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    rate_per_s: u64,
    /// In billionths of a token.
    depth: u128,
    level: u128,
    last_ns: Option<u64>,
}

impl TokenBucket {
    /// A full bucket of `depth_tokens` (at least 1) filling at `rate_per_s` (at least 1).
    pub fn new(rate_per_s: u64, depth_tokens: u64) -> TokenBucket {
        let depth = u128::from(depth_tokens.max(1)) * NANOS_PER_SECOND;
        TokenBucket {
            rate_per_s: rate_per_s.max(1),
            depth,
            level: depth,
            last_ns: None,
        }
    }

    pub fn rate_per_s(&self) -> u64 {
        self.rate_per_s
    }

    /// Whole tokens in the bucket now.
    pub fn tokens(&self) -> u64 {
        (self.level / NANOS_PER_SECOND) as u64
    }

    fn refill(&mut self, now_ns: u64) {
        let last = self.last_ns.get_or_insert(now_ns);
        if now_ns > *last {
            let elapsed = u128::from(now_ns - *last);
            // elapsed ns × tokens/s = billionths of a token; saturating, then capped.
            let gained = elapsed.saturating_mul(u128::from(self.rate_per_s));
            self.level = self.level.saturating_add(gained).min(self.depth);
            *last = now_ns;
        }
    }

    /// Whether `cost` tokens are there at `now_ns` (after refilling), without taking them.
    pub fn has(&mut self, now_ns: u64, cost: u64) -> bool {
        self.refill(now_ns);
        self.level >= u128::from(cost) * NANOS_PER_SECOND
    }

    /// Takes `cost` tokens; call only after [`TokenBucket::has`] said yes at the same time.
    pub fn take(&mut self, cost: u64) {
        self.level = self
            .level
            .saturating_sub(u128::from(cost) * NANOS_PER_SECOND);
    }

    /// Takes `cost` tokens if they are there.
    pub fn try_take(&mut self, now_ns: u64, cost: u64) -> bool {
        let ok = self.has(now_ns, cost);
        if ok {
            self.take(cost);
        }
        ok
    }
}

/// A packet-rate and a bit-rate bucket; a packet passes only when both have room for it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RateLimiter {
    pps: Option<TokenBucket>,
    bps: Option<TokenBucket>,
}

impl RateLimiter {
    /// No limit.
    pub fn unlimited() -> RateLimiter {
        RateLimiter::default()
    }

    /// Buckets as deep as `burst_ms` of their rate; the bit bucket holds at least one
    /// `max_packet_bits` packet, so the largest datagram can always pass eventually.
    pub fn new(
        rate_pps: Option<u64>,
        rate_bps: Option<u64>,
        burst_ms: u32,
        max_packet_bits: u64,
    ) -> RateLimiter {
        let depth = |rate: u64| (u128::from(rate) * u128::from(burst_ms) / 1000) as u64;
        RateLimiter {
            pps: rate_pps.map(|r| TokenBucket::new(r, depth(r).max(1))),
            bps: rate_bps.map(|r| TokenBucket::new(r, depth(r).max(max_packet_bits))),
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.pps.is_none() && self.bps.is_none()
    }

    /// Admits one packet of `bits` at `now_ns`, or refuses it (and takes nothing).
    pub fn admit(&mut self, now_ns: u64, bits: u64) -> bool {
        let pps_ok = self.pps.as_mut().is_none_or(|b| b.has(now_ns, 1));
        let bps_ok = self.bps.as_mut().is_none_or(|b| b.has(now_ns, bits));
        if !(pps_ok && bps_ok) {
            return false;
        }
        if let Some(b) = &mut self.pps {
            b.take(1);
        }
        if let Some(b) = &mut self.bps {
            b.take(bits);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    #[test]
    fn starts_full_and_refuses_beyond_the_depth() {
        let mut b = TokenBucket::new(100, 5);
        let t = 1_700_000_000 * S;
        let taken = (0..10).filter(|_| b.try_take(t, 1)).count();
        assert_eq!(taken, 5);
        assert_eq!(b.tokens(), 0);
    }

    #[test]
    fn refills_exactly_at_the_rate() {
        let mut b = TokenBucket::new(1000, 1);
        let mut t = 0;
        assert!(b.try_take(t, 1));
        // 1 token per ms: 999 µs is not enough, 1 ms is.
        t += 999_000;
        assert!(!b.try_take(t, 1));
        t += 1_000;
        assert!(b.try_take(t, 1));
        // Offered at 2000 pps for 10 s: 1 (the full bucket) + 10,000 pass.
        let mut b = TokenBucket::new(1000, 1);
        let passed = (0..20_001u64)
            .filter(|i| b.try_take(i * S / 2000, 1))
            .count();
        assert_eq!(passed, 1 + 10_000);
    }

    #[test]
    fn slow_rates_do_not_round_to_zero() {
        let mut b = TokenBucket::new(1, 1);
        assert!(b.try_take(0, 1));
        let passed = (1..=100u64).filter(|i| b.try_take(i * 100 * MS, 1)).count();
        assert_eq!(passed, 10, "1 pps over 10 s");
    }

    #[test]
    fn clock_going_back_refills_nothing() {
        let mut b = TokenBucket::new(1000, 1);
        assert!(b.try_take(10 * S, 1));
        assert!(!b.try_take(5 * S, 1), "earlier time gives no tokens");
        assert!(!b.try_take(10 * S, 1), "back at the last time: still none");
        assert!(b.try_take(10 * S + MS, 1));
    }

    #[test]
    fn idle_time_never_overfills() {
        let mut b = TokenBucket::new(1_000_000, 10);
        assert!(b.try_take(0, 10));
        // A day idle at a high rate: capped at the depth, no overflow.
        let t = 86_400 * S;
        assert_eq!((0..100).filter(|_| b.try_take(t, 1)).count(), 10);
        let mut huge = TokenBucket::new(u64::MAX, u64::MAX);
        assert!(huge.try_take(u64::MAX, u64::MAX));
        assert!(huge.try_take(u64::MAX, 0));
    }

    #[test]
    fn limiter_needs_both_buckets_and_takes_from_neither_on_refusal() {
        // 1000 pps, 80 kbit/s = 10 packets of 1000 B per second: the bit rate binds.
        let mut l = RateLimiter::new(Some(1000), Some(80_000), 1000, 8_000);
        let passed = (0..=10_000u64).filter(|i| l.admit(i * MS, 8_000)).count();
        // 10 s at 10 packets/s plus the full bit bucket (10 packets).
        assert_eq!(passed, 100 + 10);
        // Small packets: the packet rate binds.
        let mut l = RateLimiter::new(Some(100), Some(1_000_000_000), 100, 8_000);
        let passed = (0..=10_000u64).filter(|i| l.admit(i * MS, 480)).count();
        assert_eq!(passed, 1000 + 10);
        assert!(RateLimiter::unlimited().admit(0, u64::MAX));
    }

    #[test]
    fn bit_bucket_always_holds_one_largest_packet() {
        // 1 kbit/s with a 1 ms burst would hold 1 bit; it is raised to one 12,000-bit packet.
        let mut l = RateLimiter::new(None, Some(1000), 1, 12_000);
        assert!(l.admit(0, 12_000));
        assert!(!l.admit(S, 12_000));
        assert!(l.admit(12 * S, 12_000));
    }
}
