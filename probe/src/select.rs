//! What user space decides for each captured packet, in order: direction and VLAN (the
//! selection the kernel filter does not make), then 1-in-N sampling, then the rate limit. Each
//! refusal has its own counter; a refused packet never reaches the next stage.

use tapwire_api_types::probe::Direction;

use crate::bucket::RateLimiter;
use crate::sample::Sampler;

/// The fate of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    FilteredOut,
    SampledOut,
    RateLimited,
}

/// Which VLANs a flow takes: a bitmap of the 4096 ids, plus untagged frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlanSet {
    /// `None`: every frame, tagged or not.
    ids: Option<Box<[u64; 64]>>,
    untagged: bool,
}

impl VlanSet {
    pub fn all() -> VlanSet {
        VlanSet {
            ids: None,
            untagged: true,
        }
    }

    /// Frames tagged with one of `ids` (ids above 4095 are ignored), and untagged frames when
    /// `untagged`. An empty list takes every frame.
    pub fn new(ids: &[u16], untagged: bool) -> VlanSet {
        if ids.is_empty() {
            return VlanSet::all();
        }
        let mut bits = Box::new([0u64; 64]);
        for &id in ids.iter().filter(|id| **id < 4096) {
            bits[usize::from(id / 64)] |= 1 << (id % 64);
        }
        VlanSet {
            ids: Some(bits),
            untagged,
        }
    }

    #[inline]
    pub fn contains(&self, vlan: Option<u16>) -> bool {
        match (&self.ids, vlan) {
            (None, _) => true,
            (Some(_), None) => self.untagged,
            (Some(bits), Some(id)) => {
                let id = id & 0x0fff;
                bits[usize::from(id / 64)] & (1 << (id % 64)) != 0
            }
        }
    }
}

/// One capture thread's selection state.
#[derive(Debug, Clone)]
pub struct Selector {
    direction: Direction,
    vlans: VlanSet,
    sampler: Sampler,
    limiter: RateLimiter,
}

impl Selector {
    pub fn new(
        direction: Direction,
        vlans: VlanSet,
        sampler: Sampler,
        limiter: RateLimiter,
    ) -> Selector {
        Selector {
            direction,
            vlans,
            sampler,
            limiter,
        }
    }

    /// `outgoing`: the host sent the packet on the interface. `vlan`: the frame's outermost
    /// VLAN id. `bits`: the size of the datagram it would become (for the bit-rate limit).
    #[inline]
    pub fn decide(&mut self, outgoing: bool, vlan: Option<u16>, ts_ns: u64, bits: u64) -> Verdict {
        let direction_ok = match self.direction {
            Direction::Both => true,
            Direction::In => !outgoing,
            Direction::Out => outgoing,
        };
        if !direction_ok || !self.vlans.contains(vlan) {
            return Verdict::FilteredOut;
        }
        if !self.sampler.take() {
            return Verdict::SampledOut;
        }
        if !self.limiter.admit(ts_ns, bits) {
            return Verdict::RateLimited;
        }
        Verdict::Send
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlan_sets() {
        let all = VlanSet::all();
        assert!(all.contains(None) && all.contains(Some(5)));
        let some = VlanSet::new(&[100, 4095, 0], false);
        assert!(some.contains(Some(100)) && some.contains(Some(4095)) && some.contains(Some(0)));
        assert!(!some.contains(Some(101)) && !some.contains(None));
        // The PCP/DEI bits never leak into the id.
        assert!(some.contains(Some(0xf000 | 100)));
        assert!(VlanSet::new(&[7], true).contains(None));
        assert_eq!(VlanSet::new(&[], false), VlanSet::all());
    }

    #[test]
    fn stages_in_order_each_counted_once() {
        let mut s = Selector::new(
            Direction::In,
            VlanSet::new(&[10], true),
            Sampler::new(2),
            RateLimiter::new(Some(1), None, 1000, 0),
        );
        let t = 1_000_000_000;
        assert_eq!(s.decide(true, None, t, 0), Verdict::FilteredOut);
        assert_eq!(s.decide(false, Some(11), t, 0), Verdict::FilteredOut);
        // Filtered packets do not advance the sampler: the next one is the first sampled.
        assert_eq!(s.decide(false, Some(10), t, 0), Verdict::Send);
        assert_eq!(s.decide(false, None, t, 0), Verdict::SampledOut);
        // Sampled in, but the 1 pps bucket is empty.
        assert_eq!(s.decide(false, None, t, 0), Verdict::RateLimited);
        assert_eq!(s.decide(false, None, t, 0), Verdict::SampledOut);
        assert_eq!(s.decide(false, None, 2 * t, 0), Verdict::Send);

        let mut out = Selector::new(
            Direction::Out,
            VlanSet::all(),
            Sampler::new(1),
            RateLimiter::unlimited(),
        );
        assert_eq!(out.decide(false, None, 0, 0), Verdict::FilteredOut);
        assert_eq!(out.decide(true, Some(3), 0, 0), Verdict::Send);
    }
}
