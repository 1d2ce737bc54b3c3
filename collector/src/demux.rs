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

/// A source's handle: its slot in the table and the slot's generation. A slot is reused after
/// its source was removed (idle, or evicted from a full table); the generation tells a handle
/// kept somewhere (a file's interface list, a buffer's tally) from the source that took the
/// slot since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId {
    slot: u32,
    generation: u32,
}

impl SourceId {
    pub const fn new(slot: u32, generation: u32) -> SourceId {
        SourceId { slot, generation }
    }

    /// The slot: an index for tables kept beside the source table.
    #[inline]
    pub fn slot(self) -> usize {
        self.slot as usize
    }
}

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

#[derive(Debug)]
struct Sender {
    key: SenderKey,
    /// The merged model. While a single source of the sender has sent sequence numbers it would
    /// see exactly what that source's own tracker sees, so it is not fed then (one tracker per
    /// packet instead of two, the common case of one session per sender): it is cloned from
    /// that source's tracker when a second source sends numbers.
    union: SeqTracker,
    solo: Solo,
    own_anomalies: u64,
    n_numbered: u32,
    /// Sources in the table that belong to it: the sender goes when the last one does.
    n_sources: u32,
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
    /// Kept when the table is full: its session is a configured one (see [`Demux::insert`]).
    pub pinned: bool,
    own: SeqTracker,
    sender: Option<u32>,
    shared_lost: i64,
    shared_duplicates: u64,
    shared_reordered: u64,
}

impl Source {
    fn new(key: SourceKey, sender: Option<u32>, pinned: bool, now_ns: u64) -> Self {
        Source {
            key,
            packets: 0,
            bytes: 0,
            truncated: 0,
            gre_checksum_bad: 0,
            first_ts_ns: None,
            last_ts_ns: now_ns,
            pinned,
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

/// The table full, and no entry may give way: the new source is refused (and counted by the
/// caller); known ones go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull;

/// A source taken out of the table, with its final counters, so that whoever kept state for it
/// (its session's totals) can fold them in and forget its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retired {
    pub id: SourceId,
    pub key: SourceKey,
    pub packets: u64,
    pub bytes: u64,
    pub truncated: u64,
    pub gre_checksum_bad: u64,
    pub sequence: SeqReport,
}

/// A source with no packet for this long may give way to a new one when the table is full;
/// a sender of one packet a second keeps its place.
pub const EVICT_IDLE_NS: u64 = 5_000_000_000;
/// Entries looked at, at most, for one that may give way (a clock hand goes round the table),
/// so that a full table costs a bounded amount per refused packet whatever its size.
const EVICT_PROBES: usize = 256;

#[derive(Debug)]
struct Slot {
    generation: u32,
    source: Option<Source>,
}

#[derive(Debug)]
pub struct Demux {
    index: FxHashMap<SourceKey, SourceId>,
    slots: Vec<Slot>,
    /// Slots whose source was removed, to be reused.
    free: Vec<u32>,
    n_live: usize,
    sender_index: FxHashMap<SenderKey, u32>,
    senders: Vec<Option<Sender>>,
    free_senders: Vec<u32>,
    /// Sources seen recently, direct-mapped by id and outer address ([`recent_slot`]): a run of
    /// one source and sessions interleaved round-robin both hit here and skip the hash lookup.
    recent: [Option<(SourceKey, SourceId)>; RECENT],
    max_sources: usize,
    /// Where the search for an entry that may give way goes on from.
    hand: usize,
}

impl Demux {
    pub fn new(max_sources: usize) -> Self {
        Demux {
            index: FxHashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            n_live: 0,
            sender_index: FxHashMap::default(),
            senders: Vec::new(),
            free_senders: Vec::new(),
            recent: [None; RECENT],
            max_sources,
            hand: 0,
        }
    }

    pub fn max_sources(&self) -> usize {
        self.max_sources
    }

    /// The id of `key`'s source if it is in the table.
    #[inline]
    pub fn lookup(&mut self, key: &SourceKey) -> Option<SourceId> {
        let slot = recent_slot(key);
        if let Some((k, id)) = self.recent[slot]
            && k == *key
        {
            return Some(id);
        }
        let id = *self.index.get(key)?;
        self.recent[slot] = Some((*key, id));
        Some(id)
    }

    /// Makes a source for `key` (not in the table). When the table is full, the least recently
    /// seen source that is not pinned and has been idle for [`EVICT_IDLE_NS`] gives way and
    /// is returned; with none, the new source is refused.
    pub fn insert(
        &mut self,
        key: &SourceKey,
        pinned: bool,
        now_ns: u64,
    ) -> Result<(SourceId, Option<Retired>), TableFull> {
        debug_assert!(!self.index.contains_key(key));
        let evicted = if self.n_live >= self.max_sources {
            let victim = self.victim(now_ns).ok_or(TableFull)?;
            self.remove(victim)
        } else {
            None
        };
        let sender = self.sender_for(key);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    source: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let entry = &mut self.slots[slot as usize];
        entry.source = Some(Source::new(*key, sender, pinned, now_ns));
        let id = SourceId::new(slot, entry.generation);
        self.n_live += 1;
        self.index.insert(*key, id);
        self.recent[recent_slot(key)] = Some((*key, id));
        Ok((id, evicted))
    }

    /// The id of `key`'s source, made if it is new (unpinned), and whether it was just made.
    pub fn source_id(&mut self, key: &SourceKey) -> Result<(SourceId, bool), TableFull> {
        match self.lookup(key) {
            Some(id) => Ok((id, false)),
            None => self.insert(key, false, 0).map(|(id, _)| (id, true)),
        }
    }

    /// An unpinned source idle for [`EVICT_IDLE_NS`], the least recently seen of those the
    /// clock hand passes in [`EVICT_PROBES`] steps.
    fn victim(&mut self, now_ns: u64) -> Option<SourceId> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let mut best: Option<(u64, SourceId)> = None;
        for _ in 0..EVICT_PROBES.min(n) {
            self.hand = (self.hand + 1) % n;
            let entry = &self.slots[self.hand];
            let Some(src) = &entry.source else { continue };
            if src.pinned || now_ns.saturating_sub(src.last_ts_ns) < EVICT_IDLE_NS {
                continue;
            }
            if best.is_none_or(|(seen, _)| src.last_ts_ns < seen) {
                best = Some((
                    src.last_ts_ns,
                    SourceId::new(self.hand as u32, entry.generation),
                ));
            }
        }
        best.map(|(_, id)| id)
    }

    /// Takes source `id` out of the table; its slot is reused under a new generation.
    pub fn remove(&mut self, id: SourceId) -> Option<Retired> {
        let sequence = self.sequence(id);
        let entry = self.slots.get_mut(id.slot())?;
        if entry.generation != id.generation {
            return None;
        }
        let src = entry.source.take()?;
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(id.slot);
        self.n_live -= 1;
        self.index.remove(&src.key);
        let r = recent_slot(&src.key);
        if self.recent[r].is_some_and(|(_, rid)| rid == id) {
            self.recent[r] = None;
        }
        if let Some(si) = src.sender {
            self.leave_sender(si, id, src.own.numbered());
        }
        Some(Retired {
            id,
            key: src.key,
            packets: src.packets,
            bytes: src.bytes,
            truncated: src.truncated,
            gre_checksum_bad: src.gre_checksum_bad,
            sequence,
        })
    }

    /// Removes every source with no packet since `now_ns - idle_ns`.
    pub fn expire(&mut self, now_ns: u64, idle_ns: u64) -> Vec<Retired> {
        let idle: Vec<SourceId> = self
            .iter()
            .filter(|(_, s)| now_ns.saturating_sub(s.last_ts_ns) >= idle_ns)
            .map(|(id, _)| id)
            .collect();
        idle.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Whether source `id` is kept when the table is full.
    pub fn set_pinned(&mut self, id: SourceId, pinned: bool) {
        if let Some(src) = self.get_mut(id) {
            src.pinned = pinned;
        }
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
        if let Some(&i) = self.sender_index.get(&sk) {
            if let Some(s) = self.senders[i as usize].as_mut() {
                s.n_sources += 1;
            }
            return Some(i);
        }
        let sender = Sender {
            key: sk,
            union: SeqTracker::default(),
            solo: Solo::None,
            own_anomalies: 0,
            n_numbered: 0,
            n_sources: 1,
        };
        let i = match self.free_senders.pop() {
            Some(i) => {
                self.senders[i as usize] = Some(sender);
                i
            }
            None => {
                self.senders.push(Some(sender));
                (self.senders.len() - 1) as u32
            }
        };
        self.sender_index.insert(sk, i);
        Some(i)
    }

    /// Source `id` of sender `si` is gone: the sender goes with its last source; a merged
    /// model that stood for `id` alone starts again with the next numbered source.
    fn leave_sender(&mut self, si: u32, id: SourceId, numbered: bool) {
        let Some(s) = self.senders.get_mut(si as usize).and_then(Option::as_mut) else {
            return;
        };
        s.n_sources -= 1;
        if numbered {
            s.n_numbered = s.n_numbered.saturating_sub(1);
        }
        if s.solo == Solo::One(id) {
            s.solo = Solo::None;
            s.union = SeqTracker::default();
        }
        if s.n_sources == 0 {
            let key = s.key;
            self.senders[si as usize] = None;
            self.sender_index.remove(&key);
            self.free_senders.push(si);
        }
    }

    #[inline]
    fn get_mut(&mut self, id: SourceId) -> Option<&mut Source> {
        let entry = self.slots.get_mut(id.slot())?;
        if entry.generation != id.generation {
            return None;
        }
        entry.source.as_mut()
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
        let src = self.get_mut(id)?;
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
        let now_numbered = src.own.numbered();
        let s = self.senders.get_mut(sender as usize)?.as_mut()?;
        let union = match s.solo {
            Solo::One(only) if only == id => own,
            Solo::None => {
                s.solo = Solo::One(id);
                own
            }
            Solo::One(only) => {
                // A second source: the merged model so far is the first one's own tracker.
                let first = self.slots[only.slot()].source.as_ref();
                s.union = first.map(|f| f.own.clone()).unwrap_or_default();
                s.solo = Solo::Many;
                s.union.observe(seq)
            }
            Solo::Many => s.union.observe(seq),
        };
        s.own_anomalies += u64::from(own.is_anomaly());
        if !was_numbered && now_numbered {
            s.n_numbered += 1;
        }
        let shared = s.shared();
        let src = self.slots[id.slot()].source.as_mut()?;
        match union {
            Observation::Gap { lost, .. } => src.shared_lost += i64::from(lost),
            Observation::Late => {
                src.shared_lost -= 1;
                src.shared_reordered += 1;
            }
            Observation::Duplicate => src.shared_duplicates += 1,
            _ => {}
        }
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

    /// Source `id`, if it is still in the table.
    #[inline]
    pub fn source(&self, id: SourceId) -> Option<&Source> {
        let entry = self.slots.get(id.slot())?;
        if entry.generation != id.generation {
            return None;
        }
        entry.source.as_ref()
    }

    /// The sources in the table, by slot.
    pub fn iter(&self) -> impl Iterator<Item = (SourceId, &Source)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, e)| {
            e.source
                .as_ref()
                .map(|s| (SourceId::new(i as u32, e.generation), s))
        })
    }

    pub fn len(&self) -> usize {
        self.n_live
    }

    pub fn is_empty(&self) -> bool {
        self.n_live == 0
    }

    pub fn sequence(&self, id: SourceId) -> SeqReport {
        let none = SeqReport {
            mode: SequenceMode::None,
            lost: 0,
            duplicates: 0,
            reordered: 0,
            resets: 0,
        };
        let Some(src) = self.source(id) else {
            return none;
        };
        let own = src.own.stats();
        if !src.own.numbered() {
            return none;
        }
        let sender = src
            .sender
            .and_then(|s| self.senders.get(s as usize)?.as_ref());
        match sender {
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

    #[test]
    fn a_full_table_gives_way_to_idle_unpinned_sources_only() {
        const S: u64 = 1_000_000_000;
        let mut d = Demux::new(3);
        let pinned = d
            .insert(&key([10, 0, 0, 1], Kind::ErspanII, 1), true, 0)
            .unwrap()
            .0;
        let quiet = d
            .insert(&key([10, 0, 0, 2], Kind::ErspanII, 1), false, 0)
            .unwrap()
            .0;
        let busy = d
            .insert(&key([10, 0, 0, 3], Kind::ErspanII, 1), false, 0)
            .unwrap()
            .0;
        d.account(busy, 60, &meta(1), 9 * S);
        // At 4 s nobody has been idle long enough: refused.
        let new = key([10, 0, 0, 4], Kind::ErspanII, 1);
        assert_eq!(d.insert(&new, false, 4 * S), Err(TableFull));
        // At 10 s the quiet one (idle 10 s) gives way; the pinned one, idle as long, stays,
        // and so does the one seen at 9 s.
        let (id, evicted) = d.insert(&new, false, 10 * S).unwrap();
        let evicted = evicted.expect("one gave way");
        assert_eq!(
            (evicted.id, evicted.key.src),
            (quiet, "10.0.0.2".parse().unwrap())
        );
        // Its slot is reused under a new generation: the old handle names nothing.
        assert_eq!(id.slot(), quiet.slot());
        assert_ne!(id, quiet);
        assert!(d.source(quiet).is_none());
        assert_eq!(d.account(quiet, 60, &meta(2), 10 * S), None);
        assert_eq!(d.source(id).unwrap().packets, 0);
        assert!(d.source(pinned).is_some() && d.source(busy).is_some());
        assert_eq!(d.len(), 3);
        // Nothing else may give way now.
        let last = key([10, 0, 0, 5], Kind::ErspanII, 1);
        assert_eq!(d.insert(&last, false, 10 * S), Err(TableFull));
    }

    #[test]
    fn idle_sources_expire_with_their_counters() {
        const S: u64 = 1_000_000_000;
        let mut d = Demux::new(16);
        let a = d
            .insert(&key([10, 0, 0, 1], Kind::ErspanII, 1), true, 0)
            .unwrap()
            .0;
        let b = d
            .insert(&key([10, 0, 0, 2], Kind::Vxlan, 1), false, 0)
            .unwrap()
            .0;
        for (i, seq) in [1u32, 2, 5].into_iter().enumerate() {
            d.account(a, 60, &meta(seq), i as u64 * S);
        }
        d.account(b, 100, &Meta::default(), 20 * S);
        let gone = d.expire(25 * S, 10 * S);
        assert_eq!(gone.len(), 1);
        let r = gone[0];
        assert_eq!((r.id, r.packets, r.bytes, r.sequence.lost), (a, 3, 180, 2));
        assert_eq!(d.len(), 1);
        assert!(d.lookup(&key([10, 0, 0, 1], Kind::ErspanII, 1)).is_none());
        // The same key comes back as a new source with fresh counters.
        let (again, _) = d
            .insert(&key([10, 0, 0, 1], Kind::ErspanII, 1), false, 26 * S)
            .unwrap();
        assert_ne!(again, a);
        assert_eq!(d.source(again).unwrap().packets, 0);
        assert_eq!(d.sequence(again).mode, SequenceMode::None);
    }

    #[test]
    fn churn_leaves_no_senders_or_slots_behind() {
        const S: u64 = 1_000_000_000;
        let mut d = Demux::new(8);
        // 10,000 spoofed numbered sources, each removed when idle: the table and the sender
        // models stay at the table's size.
        for i in 0..10_000u32 {
            let now = u64::from(i) * 10 * S;
            d.expire(now, 10 * S);
            let k = key(i.to_be_bytes(), Kind::ErspanII, 7);
            let (id, _) = d.insert(&k, false, now).unwrap();
            d.account(id, 60, &meta(i), now);
        }
        assert!(d.len() <= 8);
        assert!(d.slots.len() <= 8, "{} slots", d.slots.len());
        assert!(d.senders.len() <= 8, "{} sender models", d.senders.len());
        assert!(d.sender_index.len() <= 8);
        assert_eq!(d.index.len(), d.len());
    }

    #[test]
    fn a_sender_whose_first_source_went_starts_its_merged_model_again() {
        let mut d = Demux::new(16);
        let a = d
            .source_id(&key([10, 0, 0, 1], Kind::ErspanII, 1))
            .unwrap()
            .0;
        for seq in 0..5 {
            d.account(a, 60, &meta(seq), 0);
        }
        d.remove(a).expect("removed");
        let b = d
            .source_id(&key([10, 0, 0, 1], Kind::ErspanII, 2))
            .unwrap()
            .0;
        // b numbers from 100: not a gap after a's 4, and nothing read from a's old slot.
        for seq in 100..105 {
            assert_eq!(d.account(b, 60, &meta(seq), 0), None);
        }
        assert_eq!(d.sequence(b).mode, SequenceMode::PerSource);
        assert_eq!(d.sequence(b).lost, 0);
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
