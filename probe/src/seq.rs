//! GRE sequence numbers, one counter per (collector, encapsulation, session id).
//!
//! The collector keys a stream by (outer source, encapsulation, session id), so two flows of
//! this probe with the same session towards the same collector are one stream to it: they share
//! one counter, and the stream stays contiguous. A counter outlives the flows that use it, so a
//! flow that is stopped and started again continues its stream instead of restarting it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tapwire_api_types::probe::Encapsulation;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqKey {
    pub collector: IpAddr,
    pub encap: Encapsulation,
    pub session: u16,
}

/// A shared counter; [`Sequence::reserve`] hands out consecutive numbers.
#[derive(Debug, Clone, Default)]
pub struct Sequence(Arc<AtomicU32>);

impl Sequence {
    /// Reserves `n` consecutive numbers and returns the first (wrapping at 2^32). Threads that
    /// reserve concurrently get disjoint ranges.
    #[inline]
    pub fn reserve(&self, n: u32) -> u32 {
        self.0.fetch_add(n, Ordering::Relaxed)
    }

    /// The next number that will be handed out.
    pub fn peek(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The probe's counters.
#[derive(Debug, Default)]
pub struct SeqCounters {
    map: Mutex<HashMap<SeqKey, Sequence>>,
}

impl SeqCounters {
    pub fn new() -> SeqCounters {
        SeqCounters::default()
    }

    /// The counter of `key`, made (at 0) on first use.
    pub fn get(&self, key: SeqKey) -> Sequence {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(session: u16, encap: Encapsulation) -> SeqKey {
        SeqKey {
            collector: "192.0.2.1".parse().expect("addr"),
            encap,
            session,
        }
    }

    #[test]
    fn same_key_shares_one_counter() {
        let c = SeqCounters::new();
        let a = c.get(key(7, Encapsulation::ErspanIi));
        let b = c.get(key(7, Encapsulation::ErspanIi));
        assert_eq!(a.reserve(3), 0);
        assert_eq!(b.reserve(1), 3);
        assert_eq!(a.reserve(1), 4);
        // Another session, another encapsulation or another collector: another stream.
        assert_eq!(c.get(key(8, Encapsulation::ErspanIi)).reserve(1), 0);
        assert_eq!(c.get(key(7, Encapsulation::Gre)).reserve(1), 0);
        let other = SeqKey {
            collector: "2001:db8::1".parse().expect("addr"),
            ..key(7, Encapsulation::ErspanIi)
        };
        assert_eq!(c.get(other).reserve(1), 0);
        assert_eq!(a.peek(), 5);
    }

    #[test]
    fn wraps_at_32_bits() {
        let s = Sequence::default();
        s.0.store(u32::MAX - 1, Ordering::Relaxed);
        assert_eq!(s.reserve(3), u32::MAX - 1);
        assert_eq!(s.peek(), 1);
    }

    #[test]
    fn concurrent_reservations_are_disjoint() {
        let s = Sequence::default();
        let mut firsts: Vec<u32> = std::thread::scope(|scope| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let s = s.clone();
                    scope.spawn(move || (0..1000).map(|_| s.reserve(10)).collect::<Vec<_>>())
                })
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().expect("thread"))
                .collect()
        });
        firsts.sort_unstable();
        assert!(firsts.windows(2).all(|w| w[1] - w[0] == 10));
        assert_eq!(s.peek(), 40_000);
    }
}
