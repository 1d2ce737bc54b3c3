//! The source table: one entry per mirrored stream, keyed by (outer source, kind, id), with its
//! counters and sequence tracking. Pure: no IO, time passed in.
//!
//! Phantom loss. Some senders (Open vSwitch) number all their ERSPAN sessions from one counter,
//! so each session alone sees gaps that are the other sessions' packets. tapwire tracks every
//! numbered source twice: on its own, and merged with the other sources of the same sender
//! (outer address and GRE family). Whichever model shows fewer anomalies for that sender is the
//! one reported; with a shared counter, a gap is charged to the source whose packet revealed it.

use std::net::IpAddr;

use rustc_hash::FxHashMap;
use tapwire_formats::decap::{Kind, Meta, SourceKey};

use crate::seq::{Observation, SeqTracker};

pub type SourceId = u32;

/// Sources whose sequence numbers may come from one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Family {
    Erspan,
    GreTeb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SenderKey {
    src: IpAddr,
    family: Family,
}

#[derive(Debug, Default)]
struct Sender {
    /// The merged model. While a single source of the sender has sent sequence numbers it would
    /// see exactly what that source's own tracker sees, so it is not fed then (one tracker per
    /// packet instead of two, the common case of one session per sender): it is cloned from
    /// that source's tracker when a second source sends numbers.
    union: SeqTracker,
    solo: Solo,
    own_anomalies: u64,
    n_numbered: u32,
}

/// Which sources of a sender have fed it sequence numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Solo {
    #[default]
    None,
    /// Only this one: `Sender::union` is stale, this source's own tracker stands for it.
    One(SourceId),
    /// Two or more: `Sender::union` is fed every number.
    Many,
}

impl Sender {
    fn shared(&self) -> bool {
        self.n_numbered >= 2 && self.union.stats().anomalies < self.own_anomalies
    }
}

/// How a source's sequence numbers are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SequenceMode {
    /// No sequence numbers, or always zero: loss cannot be measured.
    None,
    PerSource,
    /// One counter across the sender's sessions.
    SharedBySender,
}

/// The sequence counters reported for one source under the model in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqReport {
    pub mode: SequenceMode,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub resets: u64,
}

/// What the sequence number of one packet means, for a capture-file comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqEvent {
    Gap {
        lost: u32,
        from: u32,
        to: u32,
        shared: bool,
    },
    Reset {
        from: u32,
        to: u32,
    },
}

impl SeqEvent {
    pub fn comment(&self) -> String {
        match *self {
            SeqEvent::Gap {
                lost,
                from,
                to,
                shared,
            } => {
                let range = if from == to {
                    format!("seq {from}")
                } else {
                    format!("seq {from}-{to}")
                };
                let whose = if shared {
                    ", counter shared by the sender's sessions"
                } else {
                    ""
                };
                format!("tapwire: sequence gap, {lost} lost before this packet ({range}{whose})")
            }
            SeqEvent::Reset { from, to } => {
                format!("tapwire: sequence restarted at {to} after {from}; not counted as loss")
            }
        }
    }
}

/// One mirrored stream and its counters.
#[derive(Debug, Clone)]
pub struct Source {
    pub key: SourceKey,
    pub packets: u64,
    pub bytes: u64,
    /// Frames the sender cut (ERSPAN T bit).
    pub truncated: u64,
    /// Frames kept although their GRE checksum did not verify.
    pub gre_checksum_bad: u64,
    pub first_ts_ns: Option<u64>,
    pub last_ts_ns: u64,
    own: SeqTracker,
    sender: Option<u32>,
    shared_lost: i64,
    shared_duplicates: u64,
    shared_reordered: u64,
}

impl Source {
    fn new(key: SourceKey, sender: Option<u32>) -> Self {
        Source {
            key,
            packets: 0,
            bytes: 0,
            truncated: 0,
            gre_checksum_bad: 0,
            first_ts_ns: None,
            last_ts_ns: 0,
            own: SeqTracker::default(),
            sender,
            shared_lost: 0,
            shared_duplicates: 0,
            shared_reordered: 0,
        }
    }
}

/// Slots in the recent-sources cache; a power of two.
const RECENT: usize = 64;

/// Mixes the id with the last byte of the outer address: sessions of one sender differ in the
/// id, senders of one session id in the address.
#[inline]
fn recent_slot(key: &SourceKey) -> usize {
    let last_byte = match key.src {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(a) => a.octets()[15],
    };
    (key.id as usize ^ usize::from(last_byte).rotate_left(3)) & (RECENT - 1)
}

/// The table full: new sources are refused (and counted by the caller), known ones go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull;

#[derive(Debug)]
pub struct Demux {
    index: FxHashMap<SourceKey, SourceId>,
    sources: Vec<Source>,
    sender_index: FxHashMap<SenderKey, u32>,
    senders: Vec<Sender>,
    /// Sources seen recently, direct-mapped by id and outer address ([`recent_slot`]): a run of
    /// one source and sessions interleaved round-robin both hit here and skip the hash lookup.
    recent: [Option<(SourceKey, SourceId)>; RECENT],
    max_sources: usize,
}

impl Demux {
    pub fn new(max_sources: usize) -> Self {
        Demux {
            index: FxHashMap::default(),
            sources: Vec::new(),
            sender_index: FxHashMap::default(),
            senders: Vec::new(),
            recent: [None; RECENT],
            max_sources,
        }
    }

    /// The id of `key`'s source, and whether it was just created.
    #[inline]
    pub fn source_id(&mut self, key: &SourceKey) -> Result<(SourceId, bool), TableFull> {
        let slot = recent_slot(key);
        if let Some((k, id)) = self.recent[slot]
            && k == *key
        {
            return Ok((id, false));
        }
        let (id, new) = match self.index.get(key) {
            Some(&id) => (id, false),
            None => {
                if self.sources.len() >= self.max_sources {
                    return Err(TableFull);
                }
                let id = self.sources.len() as SourceId;
                let sender = self.sender_for(key);
                self.sources.push(Source::new(*key, sender));
                self.index.insert(*key, id);
                (id, true)
            }
        };
        self.recent[slot] = Some((*key, id));
        Ok((id, new))
    }

    fn sender_for(&mut self, key: &SourceKey) -> Option<u32> {
        let family = match key.kind {
            Kind::ErspanI | Kind::ErspanII | Kind::ErspanIII => Family::Erspan,
            Kind::Gre => Family::GreTeb,
            Kind::Vxlan | Kind::Geneve | Kind::Tzsp => return None,
        };
        let sk = SenderKey {
            src: key.src,
            family,
        };
        let n = self.senders.len() as u32;
        let idx = *self.sender_index.entry(sk).or_insert(n);
        if idx == n {
            self.senders.push(Sender::default());
        }
        Some(idx)
    }

    /// Counts one packet of `frame_len` bytes for source `id`; returns what its sequence number
    /// says when that deserves a note in the capture file.
    pub fn account(
        &mut self,
        id: SourceId,
        frame_len: usize,
        meta: &Meta,
        ts_ns: u64,
    ) -> Option<SeqEvent> {
        let src = &mut self.sources[id as usize];
        src.packets += 1;
        src.bytes += frame_len as u64;
        src.truncated += u64::from(meta.truncated);
        src.gre_checksum_bad += u64::from(meta.gre_checksum_bad);
        if src.first_ts_ns.is_none() {
            src.first_ts_ns = Some(ts_ns);
        }
        src.last_ts_ns = src.last_ts_ns.max(ts_ns);

        let (seq, sender) = (meta.seq?, src.sender?);
        let was_numbered = src.own.numbered();
        let own = src.own.observe(seq);
        let s = &mut self.senders[sender as usize];
        let union = match s.solo {
            Solo::One(only) if only == id => own,
            Solo::None => {
                s.solo = Solo::One(id);
                own
            }
            Solo::One(only) => {
                // A second source: the merged model so far is the first one's own tracker.
                s.union = self.sources[only as usize].own.clone();
                s.solo = Solo::Many;
                s.union.observe(seq)
            }
            Solo::Many => s.union.observe(seq),
        };
        let src = &mut self.sources[id as usize];
        s.own_anomalies += u64::from(own.is_anomaly());
        if !was_numbered && src.own.numbered() {
            s.n_numbered += 1;
        }
        match union {
            Observation::Gap { lost, .. } => src.shared_lost += i64::from(lost),
            Observation::Late => {
                src.shared_lost -= 1;
                src.shared_reordered += 1;
            }
            Observation::Duplicate => src.shared_duplicates += 1,
            _ => {}
        }
        let shared = s.shared();
        match if shared { union } else { own } {
            Observation::Gap { lost, from, to } => Some(SeqEvent::Gap {
                lost,
                from,
                to,
                shared,
            }),
            Observation::Reset { from, to } => Some(SeqEvent::Reset { from, to }),
            _ => None,
        }
    }

    pub fn source(&self, id: SourceId) -> &Source {
        &self.sources[id as usize]
    }

    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    pub fn sequence(&self, id: SourceId) -> SeqReport {
        let src = &self.sources[id as usize];
        let own = src.own.stats();
        if !src.own.numbered() {
            return SeqReport {
                mode: SequenceMode::None,
                lost: 0,
                duplicates: 0,
                reordered: 0,
                resets: 0,
            };
        }
        match src.sender.map(|s| &self.senders[s as usize]) {
            Some(s) if s.shared() => SeqReport {
                mode: SequenceMode::SharedBySender,
                lost: src.shared_lost.max(0) as u64,
                duplicates: src.shared_duplicates,
                reordered: src.shared_reordered,
                resets: s.union.stats().resets,
            },
            _ => SeqReport {
                mode: SequenceMode::PerSource,
                lost: own.lost,
                duplicates: own.duplicates,
                reordered: own.reordered,
                resets: own.resets,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src: [u8; 4], kind: Kind, id: u32) -> SourceKey {
        SourceKey {
            src: IpAddr::from(src),
            kind,
            id,
        }
    }

    fn meta(seq: u32) -> Meta {
        Meta {
            seq: Some(seq),
            ..Meta::default()
        }
    }

    #[test]
    fn same_session_id_from_two_senders_stays_apart() {
        let mut d = Demux::new(16);
        let a = d
            .source_id(&key([192, 168, 195, 67], Kind::ErspanII, 1))
            .unwrap();
        let b = d
            .source_id(&key([192, 168, 195, 73], Kind::ErspanII, 1))
            .unwrap();
        assert_ne!(a.0, b.0);
        assert!(a.1 && b.1);
        // Interleaved, each with its own contiguous counter: no loss on either.
        for i in 0..8 {
            assert_eq!(d.account(a.0, 60, &meta(1_086_760 + i), 0), None);
            assert_eq!(d.account(b.0, 60, &meta(1_306_277 + i), 0), None);
        }
        assert_eq!(d.sequence(a.0).lost, 0);
        assert_eq!(d.sequence(b.0).mode, SequenceMode::PerSource);
    }

    #[test]
    fn shared_counter_is_not_phantom_loss() {
        // Open vSwitch: one counter across two sessions, irregularly interleaved.
        let mut d = Demux::new(16);
        let a = d
            .source_id(&key([10, 0, 0, 1], Kind::ErspanII, 1))
            .unwrap()
            .0;
        let b = d
            .source_id(&key([10, 0, 0, 1], Kind::ErspanIII, 2))
            .unwrap()
            .0;
        let pattern = [a, a, b, a, b, b, b, a, b, a, a, a, b];
        let mut events = Vec::new();
        for (seq, &id) in pattern.iter().cycle().take(200).enumerate() {
            events.push(d.account(id, 60, &meta(seq as u32), 0));
        }
        assert_eq!(d.sequence(a).mode, SequenceMode::SharedBySender);
        assert_eq!(d.sequence(a).lost + d.sequence(b).lost, 0);
        // A real loss on the shared counter is still seen, once.
        d.account(a, 60, &meta(205), 0);
        assert_eq!(d.sequence(a).lost + d.sequence(b).lost, 5);
        // Past the first few packets no phantom gap was noted.
        assert!(events[4..].iter().all(Option::is_none), "{events:?}");
    }

    #[test]
    fn per_session_counters_on_one_sender_still_show_real_loss() {
        let mut d = Demux::new(16);
        let a = d
            .source_id(&key([10, 0, 0, 1], Kind::ErspanII, 1))
            .unwrap()
            .0;
        let b = d
            .source_id(&key([10, 0, 0, 1], Kind::ErspanII, 2))
            .unwrap()
            .0;
        for i in 0..100u32 {
            if i != 50 {
                d.account(a, 60, &meta(1000 + i), 0);
            }
            d.account(b, 60, &meta(900_000 + i), 0);
        }
        assert_eq!(d.sequence(a).mode, SequenceMode::PerSource);
        assert_eq!(d.sequence(a).lost, 1);
        assert_eq!(d.sequence(b).lost, 0);
    }

    #[test]
    fn unnumbered_sources() {
        let mut d = Demux::new(16);
        let a = d
            .source_id(&key([100, 20, 9, 2], Kind::ErspanII, 20))
            .unwrap()
            .0;
        for _ in 0..7 {
            assert_eq!(d.account(a, 60, &meta(0), 0), None);
        }
        assert_eq!(d.sequence(a).mode, SequenceMode::None);
        let v = d.source_id(&key([1, 1, 1, 1], Kind::Vxlan, 5)).unwrap().0;
        d.account(v, 60, &Meta::default(), 0);
        assert_eq!(d.sequence(v).mode, SequenceMode::None);
    }

    #[test]
    fn table_is_bounded() {
        let mut d = Demux::new(2);
        d.source_id(&key([1, 1, 1, 1], Kind::Vxlan, 1)).unwrap();
        d.source_id(&key([1, 1, 1, 1], Kind::Vxlan, 2)).unwrap();
        assert_eq!(
            d.source_id(&key([1, 1, 1, 1], Kind::Vxlan, 3)),
            Err(TableFull)
        );
        assert!(d.source_id(&key([1, 1, 1, 1], Kind::Vxlan, 1)).is_ok());
    }

    /// The two-model rule restated plainly: the merged tracker fed every number from the first.
    struct Reference {
        own: Vec<SeqTracker>,
        union: SeqTracker,
        own_anomalies: u64,
    }

    impl Reference {
        fn observe(&mut self, src: usize, seq: u32) -> Option<SeqEvent> {
            let own = self.own[src].observe(seq);
            let union = self.union.observe(seq);
            self.own_anomalies += u64::from(own.is_anomaly());
            let n_numbered = self.own.iter().filter(|t| t.numbered()).count();
            let shared = n_numbered >= 2 && self.union.stats().anomalies < self.own_anomalies;
            match if shared { union } else { own } {
                Observation::Gap { lost, from, to } => Some(SeqEvent::Gap {
                    lost,
                    from,
                    to,
                    shared,
                }),
                Observation::Reset { from, to } => Some(SeqEvent::Reset { from, to }),
                _ => None,
            }
        }
    }

    proptest::proptest! {
        /// The merged model is fed lazily (not while one source alone numbers its packets) and
        /// still notes the same events as one fed every number from the start.
        #[test]
        fn lazy_merged_model_matches_eager_one(
            packets in proptest::collection::vec((0usize..3, 0u32..3, proptest::bool::ANY), 1..300),
            bases in proptest::array::uniform3(proptest::num::u32::ANY),
        ) {
            let mut d = Demux::new(16);
            let ids: Vec<SourceId> = (0..3)
                .map(|i| d.source_id(&key([10, 0, 0, 1], Kind::ErspanII, i)).unwrap().0)
                .collect();
            let mut r = Reference {
                own: vec![SeqTracker::default(); 3],
                union: SeqTracker::default(),
                own_anomalies: 0,
            };
            let mut next = bases;
            for (src, step, zero) in packets {
                // Mostly in order, some gaps and repeats, some zeros (unnumbered senders).
                let seq = if zero { 0 } else { next[src].wrapping_add(step).wrapping_sub(1) };
                next[src] = seq.wrapping_add(1);
                let got = d.account(ids[src], 60, &meta(seq), 0);
                proptest::prop_assert_eq!(got, r.observe(src, seq));
            }
        }
    }

    #[test]
    fn gap_comment_text() {
        let c = SeqEvent::Gap {
            lost: 3,
            from: 101,
            to: 103,
            shared: false,
        }
        .comment();
        assert_eq!(
            c,
            "tapwire: sequence gap, 3 lost before this packet (seq 101-103)"
        );
    }
}
