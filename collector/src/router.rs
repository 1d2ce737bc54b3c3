//! Routing, pure: whether a source may send at all (the allow-list), which session a source
//! belongs to, and whether a delivered frame is written or why not. The engine asks
//! [`Router::deliver`] once per frame and does what the [`Verdict`] says (and counts it); the
//! routing table it answers from (sources to sessions, each session's switch and inner
//! filter) lives here, and the engine keeps it in step with its sessions: session `i` here is
//! the engine's session `i`.

use std::net::IpAddr;

use ipnet::IpNet;
use rustc_hash::{FxHashMap, FxHashSet};
use tapwire_formats::decap::SourceKey;

use crate::config::{Config, SessionConfig};
use crate::demux::SourceId;
use crate::filter::Filter;
use crate::pipeline::{Delivery, Refusal};

/// Default bound on auto-discovered sessions: far beyond what a real fleet sends unannounced,
/// small enough that spoofed sources cannot make a file each without end.
pub const MAX_AUTO_SESSIONS: usize = 256;

/// What decides a session's frames: its switch and its inner filter.
#[derive(Debug)]
pub struct Gate {
    pub name: String,
    /// Made for a source no configured session took.
    pub auto: bool,
    pub enabled: bool,
    pub filter: Option<Filter>,
    /// Its sources, in the order they were routed to it.
    pub sources: Vec<SourceId>,
}

impl Gate {
    /// A configured session's, as its definition says.
    pub fn configured(c: &SessionConfig) -> Gate {
        Gate {
            name: c.name.clone(),
            auto: false,
            enabled: c.enabled,
            // Compiled when the definition was checked: shared, not compiled again.
            filter: c.filter.clone(),
            sources: Vec::new(),
        }
    }

    /// An auto-discovered session's: on, no filter.
    pub fn auto(name: String) -> Gate {
        Gate {
            name,
            auto: true,
            enabled: true,
            filter: None,
            sources: Vec::new(),
        }
    }
}

/// Why a session did not write a frame of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The session is disabled.
    Disabled,
    /// Its inner filter did not match.
    Filter,
}

/// Where a delivered frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Session `i` writes it (to its files and its TAP).
    Write(usize),
    /// Session `i` takes the source but not this frame.
    Skip(usize, Skip),
    /// No session takes the source (auto-discovery is off).
    NoSession,
}

/// A frame's verdict, and the session made for its source when it was the first frame of a
/// source no session took: the engine creates that session's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    pub verdict: Verdict,
    pub discovered: Option<usize>,
}

#[derive(Debug)]
pub struct Router {
    /// Outer source CIDRs allowed to send; empty: every address.
    allow: Vec<IpNet>,
    auto_discover: bool,
    max_auto_sessions: usize,
    /// Auto-discovered sessions now.
    n_auto: usize,
    sessions: Vec<Gate>,
    by_name: FxHashMap<String, usize>,
    /// Session of each source, by the slot of its id.
    routes: Vec<Option<usize>>,
}

impl Router {
    pub fn new(allow: Vec<IpNet>, auto_discover: bool) -> Router {
        Router {
            allow,
            auto_discover,
            max_auto_sessions: MAX_AUTO_SESSIONS,
            n_auto: 0,
            sessions: Vec::new(),
            by_name: FxHashMap::default(),
            routes: Vec::new(),
        }
    }

    /// At most `n` auto-discovered sessions at a time.
    pub fn with_max_auto_sessions(mut self, n: usize) -> Router {
        self.max_auto_sessions = n;
        self
    }

    /// Whether a source may be made for `key` (not known yet), and whether it is pinned (a
    /// configured session takes it): asked by the pipeline before the source exists, so that
    /// what would only be refused later takes no room. The allow-list is [`Router::allows`].
    pub fn admit(&self, key: &SourceKey, config: &Config) -> Result<bool, Refusal> {
        if config.session_for(key).is_some() {
            return Ok(true);
        }
        if !self.auto_discover {
            return Err(Refusal::NoSession);
        }
        if self.n_auto >= self.max_auto_sessions && self.index(&key.file_stem()).is_none() {
            return Err(Refusal::AutoSessionCap);
        }
        Ok(false)
    }

    /// Auto-discovered sessions now.
    pub fn n_auto(&self) -> usize {
        self.n_auto
    }

    /// Whether `src` (an outer source address, normalised) may send at all.
    pub fn allows(&self, src: IpAddr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&src))
    }

    pub fn set_allow(&mut self, allow: Vec<IpNet>) {
        self.allow = allow;
    }

    pub fn sessions(&self) -> &[Gate] {
        &self.sessions
    }

    pub fn session(&self, i: usize) -> &Gate {
        &self.sessions[i]
    }

    /// The index of the session named `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub fn set_enabled(&mut self, i: usize, enabled: bool) {
        self.sessions[i].enabled = enabled;
    }

    /// The session of each source known, by source id.
    pub fn routes(&self) -> &[Option<usize>] {
        &self.routes
    }

    /// Adds a session at the end; returns its index.
    pub fn push(&mut self, gate: Gate) -> usize {
        let i = self.sessions.len();
        self.n_auto += usize::from(gate.auto);
        self.by_name.insert(gate.name.clone(), i);
        self.sessions.push(gate);
        i
    }

    /// Sources that left the table: they no longer route anywhere, nor count in their
    /// session's list.
    pub fn forget(&mut self, ids: &[SourceId]) {
        let gone: FxHashSet<SourceId> = ids.iter().copied().collect();
        let mut sessions = FxHashSet::default();
        for id in ids {
            if let Some(route) = self.routes.get_mut(id.slot()) {
                sessions.extend(route.take());
            }
        }
        for i in sessions {
            self.sessions[i].sources.retain(|id| !gone.contains(id));
        }
    }

    /// Keeps the sessions for which `keep(i)` holds (in order) and removes the others, which
    /// must have no sources left. The engine removes the same ones from its list.
    pub fn retain_sessions(&mut self, keep: impl Fn(usize) -> bool) {
        let mut new_index = Vec::with_capacity(self.sessions.len());
        let mut kept = Vec::with_capacity(self.sessions.len());
        for (i, g) in std::mem::take(&mut self.sessions).into_iter().enumerate() {
            if keep(i) {
                new_index.push(Some(kept.len()));
                kept.push(g);
            } else {
                debug_assert!(g.sources.is_empty(), "session {} has sources", g.name);
                new_index.push(None);
            }
        }
        self.by_name.clear();
        self.n_auto = 0;
        for g in kept {
            self.push(g);
        }
        for r in &mut self.routes {
            *r = r.and_then(|i| new_index[i]);
        }
    }

    /// Takes every session out, by name (for a reload to pick from).
    pub fn take_sessions(&mut self) -> FxHashMap<String, Gate> {
        self.by_name.clear();
        self.n_auto = 0;
        std::mem::take(&mut self.sessions)
            .into_iter()
            .map(|g| (g.name.clone(), g))
            .collect()
    }

    /// After a reload: `gates` are the sessions, in the engine's order, and every source in
    /// the table (`sources`, with their keys) is routed again under `config`. Returns the
    /// sessions auto-discovery made for sources no session takes any more, in order, and the
    /// sources that are pinned now (a configured session takes them).
    pub fn reset(
        &mut self,
        gates: Vec<Gate>,
        config: &Config,
        sources: impl IntoIterator<Item = (SourceId, SourceKey)>,
    ) -> (Vec<usize>, Vec<(SourceId, bool)>) {
        self.by_name.clear();
        self.sessions.clear();
        self.n_auto = 0;
        for mut g in gates {
            g.sources.clear();
            self.push(g);
        }
        self.routes.iter_mut().for_each(|r| *r = None);
        let mut discovered = Vec::new();
        let mut pins = Vec::new();
        for (id, key) in sources {
            let (route, made) = self.route(&key, config);
            if self.routes.len() <= id.slot() {
                self.routes.resize(id.slot() + 1, None);
            }
            self.routes[id.slot()] = route;
            if let Some(i) = route {
                self.sessions[i].sources.push(id);
            }
            pins.push((id, config.session_for(&key).is_some()));
            discovered.extend(made);
        }
        (discovered, pins)
    }

    /// Where a delivered frame goes. A source seen for the first time is routed first: to the
    /// first configured session whose rules match, else (auto-discovery) to a session of its
    /// own, made here, else nowhere.
    pub fn deliver(&mut self, d: &Delivery<'_>, config: &Config) -> Routed {
        let id = d.source.slot();
        if self.routes.len() <= id {
            self.routes.resize(id + 1, None);
        }
        let mut discovered = None;
        if d.new_source {
            let (route, made) = self.route(&d.key, config);
            self.routes[id] = route;
            if let Some(i) = route {
                self.sessions[i].sources.push(d.source);
            }
            discovered = made;
        }
        let verdict = match self.routes[id] {
            None => Verdict::NoSession,
            Some(i) => {
                let g = &self.sessions[i];
                if !g.enabled {
                    Verdict::Skip(i, Skip::Disabled)
                } else if g
                    .filter
                    .as_ref()
                    .is_some_and(|f| !f.matches(d.link, d.frame))
                {
                    Verdict::Skip(i, Skip::Filter)
                } else {
                    Verdict::Write(i)
                }
            }
        };
        Routed {
            verdict,
            discovered,
        }
    }

    /// The session a source belongs to, and the one made for it if it is new.
    fn route(&mut self, key: &SourceKey, config: &Config) -> (Option<usize>, Option<usize>) {
        if let Some(c) = config.session_for(key) {
            return (self.index(&config.sessions[c].name), None);
        }
        if !self.auto_discover {
            return (None, None);
        }
        let name = key.file_stem();
        if let Some(i) = self.index(&name) {
            return (Some(i), None);
        }
        if self.n_auto >= self.max_auto_sessions {
            return (None, None);
        }
        let i = self.push(Gate::auto(name));
        (Some(i), Some(i))
    }
}

#[cfg(test)]
mod tests {
    use tapwire_formats::capture::LinkType;
    use tapwire_formats::decap::{Kind, Meta};

    use super::*;
    use crate::config::{CollectorConfig, FilesConfig, SourceMatch};

    /// An Ethernet frame carrying TCP from 10.1.0.1:1000 to 10.1.0.2:443.
    fn tcp_443() -> Vec<u8> {
        let mut f = vec![0u8; 54];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&40u16.to_be_bytes());
        f[22] = 64;
        f[23] = 6;
        f[26..30].copy_from_slice(&[10, 1, 0, 1]);
        f[30..34].copy_from_slice(&[10, 1, 0, 2]);
        f[34..36].copy_from_slice(&1000u16.to_be_bytes());
        f[36..38].copy_from_slice(&443u16.to_be_bytes());
        f[46] = 0x50;
        f
    }

    fn key(src: &str, kind: Kind, id: u32) -> SourceKey {
        SourceKey {
            src: src.parse().expect("addr"),
            kind,
            id,
        }
    }

    fn id(slot: u32) -> SourceId {
        SourceId::new(slot, 0)
    }

    fn delivery(slot: u32, key: SourceKey, new_source: bool, frame: &[u8]) -> Delivery<'_> {
        Delivery {
            source: id(slot),
            key,
            new_source,
            frame,
            link: LinkType::Ethernet,
            meta: Meta::default(),
            seq_event: None,
            evicted: None,
        }
    }

    fn session(name: &str, kind: Kind, ids: std::ops::RangeInclusive<u32>) -> SessionConfig {
        SessionConfig {
            name: name.into(),
            enabled: true,
            sources: vec![SourceMatch {
                src: None,
                kind: Some(kind),
                ids: Some(ids),
            }],
            filter: None,
            files: None,
            tap: None,
        }
    }

    fn config(sessions: Vec<SessionConfig>) -> Config {
        Config {
            collector: CollectorConfig {
                out: None,
                auto_discover: None,
                allow: Vec::new(),
                min_free_disk_bytes: None,
                default_files: FilesConfig::default(),
                tap_prefix: None,
                limits: Default::default(),
            },
            sessions,
            hooks: Default::default(),
        }
    }

    fn router(config: &Config, auto: bool) -> Router {
        let mut r = Router::new(Vec::new(), auto);
        for c in &config.sessions {
            r.push(Gate::configured(c));
        }
        r
    }

    #[test]
    fn the_allow_list_admits_its_networks_only() {
        let mut r = Router::new(Vec::new(), true);
        assert!(r.allows("192.0.2.1".parse().expect("addr")));
        r.set_allow(vec![
            "10.0.0.0/8".parse().expect("net"),
            "2001:db8::1/128".parse().expect("net"),
        ]);
        assert!(r.allows("10.200.0.1".parse().expect("addr")));
        assert!(r.allows("2001:db8::1".parse().expect("addr")));
        assert!(!r.allows("2001:db8::2".parse().expect("addr")));
        assert!(!r.allows("192.0.2.1".parse().expect("addr")));
    }

    #[test]
    fn a_new_source_goes_to_the_first_matching_session_and_stays_there() {
        let cfg = config(vec![
            session("web", Kind::ErspanII, 10..=19),
            session("all", Kind::ErspanII, 0..=1023),
        ]);
        let mut r = router(&cfg, true);
        let frame = tcp_443();
        let k = key("10.0.0.5", Kind::ErspanII, 12);
        let first = r.deliver(&delivery(0, k, true, &frame), &cfg);
        assert_eq!(first.verdict, Verdict::Write(0));
        assert_eq!(first.discovered, None);
        // Its later frames are not routed again.
        let next = r.deliver(&delivery(0, k, false, &frame), &cfg);
        assert_eq!(next.verdict, Verdict::Write(0));
        let k2 = key("10.0.0.5", Kind::ErspanII, 500);
        assert_eq!(
            r.deliver(&delivery(1, k2, true, &frame), &cfg).verdict,
            Verdict::Write(1)
        );
        assert_eq!(r.session(0).sources, vec![id(0)]);
        assert_eq!(r.session(1).sources, vec![id(1)]);
        assert_eq!(r.routes(), &[Some(0), Some(1)]);
    }

    #[test]
    fn a_source_no_session_takes_gets_its_own_or_none() {
        let cfg = config(vec![session("web", Kind::ErspanII, 10..=19)]);
        let frame = tcp_443();
        let k = key("10.0.0.7", Kind::Vxlan, 100);

        let mut auto = router(&cfg, true);
        let r = auto.deliver(&delivery(0, k, true, &frame), &cfg);
        assert_eq!(r.verdict, Verdict::Write(1));
        assert_eq!(r.discovered, Some(1));
        assert_eq!(auto.session(1).name, "10.0.0.7_vxlan_100");
        assert!(auto.session(1).auto);
        // A second source with the same stem (another id for it) joins it, made once.
        let again = auto.deliver(&delivery(1, k, true, &frame), &cfg);
        assert_eq!((again.verdict, again.discovered), (Verdict::Write(1), None));

        let mut off = router(&cfg, false);
        let r = off.deliver(&delivery(0, k, true, &frame), &cfg);
        assert_eq!((r.verdict, r.discovered), (Verdict::NoSession, None));
        assert_eq!(
            off.deliver(&delivery(0, k, false, &frame), &cfg).verdict,
            Verdict::NoSession
        );
        assert_eq!(off.sessions().len(), 1);
    }

    #[test]
    fn a_disabled_session_or_its_filter_skips_the_frame_with_the_reason() {
        let mut web = session("web", Kind::ErspanII, 10..=19);
        web.filter = Some(Filter::new("tcp port 443").unwrap());
        let cfg = config(vec![web]);
        let mut r = router(&cfg, true);
        let k = key("10.0.0.5", Kind::ErspanII, 10);
        let https = tcp_443();
        let mut other = tcp_443();
        other[36..38].copy_from_slice(&80u16.to_be_bytes());
        assert_eq!(
            r.deliver(&delivery(0, k, true, &https), &cfg).verdict,
            Verdict::Write(0)
        );
        assert_eq!(
            r.deliver(&delivery(0, k, false, &other), &cfg).verdict,
            Verdict::Skip(0, Skip::Filter)
        );
        r.set_enabled(0, false);
        // Disabled wins over the filter: nothing is matched for a session that is off.
        assert_eq!(
            r.deliver(&delivery(0, k, false, &https), &cfg).verdict,
            Verdict::Skip(0, Skip::Disabled)
        );
        let mut off = session("off", Kind::Gre, 1..=1);
        off.enabled = false;
        assert!(!Gate::configured(&off).enabled);
    }

    #[test]
    fn a_reload_routes_every_known_source_again() {
        let frame = tcp_443();
        let old = config(vec![session("web", Kind::ErspanII, 10..=19)]);
        let mut r = router(&old, true);
        let keys = [
            key("10.0.0.5", Kind::ErspanII, 10),
            key("10.0.0.6", Kind::Gre, 7),
        ];
        for (slot, k) in keys.iter().enumerate() {
            r.deliver(&delivery(slot as u32, *k, true, &frame), &old);
        }
        assert_eq!(r.routes(), &[Some(0), Some(1)]);
        r.set_enabled(0, false);

        // "web" goes; a new session takes the GRE source, whose auto session stays (the
        // engine keeps it) but loses its source; the ERSPAN source is discovered anew.
        let new = config(vec![session("gre", Kind::Gre, 0..=1023)]);
        let mut kept = r.take_sessions();
        assert!(!kept["web"].enabled);
        let gates = vec![
            Gate::configured(&new.sessions[0]),
            kept.remove("10.0.0.6_gre_7").expect("auto session"),
        ];
        let known = keys.iter().enumerate().map(|(i, k)| (id(i as u32), *k));
        let (discovered, pins) = r.reset(gates, &new, known);
        assert_eq!(discovered, vec![2]);
        assert_eq!(pins, vec![(id(0), false), (id(1), true)]);
        assert_eq!(r.session(2).name, "10.0.0.5_erspan-ii_10");
        assert_eq!(r.routes(), &[Some(2), Some(0)]);
        assert_eq!(r.session(0).sources, vec![id(1)]);
        assert!(r.session(1).sources.is_empty());
        assert_eq!(r.index("gre"), Some(0));
        assert_eq!(r.index("web"), None);
    }

    #[test]
    fn admission_asks_before_a_source_exists() {
        let cfg = config(vec![session("web", Kind::ErspanII, 10..=19)]);
        let mut r = router(&cfg, true).with_max_auto_sessions(1);
        let configured = key("10.0.0.5", Kind::ErspanII, 12);
        let stranger = key("10.0.0.6", Kind::Vxlan, 1);
        let another = key("10.0.0.7", Kind::Vxlan, 1);
        // A configured session's source is pinned; an auto-discovered one is not.
        assert_eq!(r.admit(&configured, &cfg), Ok(true));
        assert_eq!(r.admit(&stranger, &cfg), Ok(false));
        let frame = tcp_443();
        r.deliver(&delivery(0, stranger, true, &frame), &cfg);
        assert_eq!(r.n_auto(), 1);
        // The cap reached: a new stem is refused, the existing session's stem is not, and a
        // configured session's source never is.
        assert_eq!(r.admit(&another, &cfg), Err(Refusal::AutoSessionCap));
        assert_eq!(r.admit(&stranger, &cfg), Ok(false));
        assert_eq!(r.admit(&configured, &cfg), Ok(true));
        // Without auto-discovery, a source no session takes is refused outright.
        let off = router(&cfg, false);
        assert_eq!(off.admit(&stranger, &cfg), Err(Refusal::NoSession));
        assert_eq!(off.admit(&configured, &cfg), Ok(true));
    }

    #[test]
    fn forgotten_sources_and_removed_sessions_leave_the_routes_consistent() {
        let cfg = config(vec![session("web", Kind::ErspanII, 10..=19)]);
        let mut r = router(&cfg, true);
        let frame = tcp_443();
        let keys = [
            key("10.0.0.5", Kind::ErspanII, 10),
            key("10.0.0.6", Kind::Vxlan, 1),
            key("10.0.0.7", Kind::Vxlan, 1),
            key("10.0.0.5", Kind::ErspanII, 11),
        ];
        for (slot, k) in keys.iter().enumerate() {
            r.deliver(&delivery(slot as u32, *k, true, &frame), &cfg);
        }
        assert_eq!(r.routes(), &[Some(0), Some(1), Some(2), Some(0)]);
        assert_eq!(r.n_auto(), 2);
        // The first auto session's source goes, then the session.
        r.forget(&[id(1), id(3)]);
        assert_eq!(r.session(0).sources, vec![id(0)]);
        assert!(r.session(1).sources.is_empty());
        r.retain_sessions(|i| i != 1);
        assert_eq!(r.sessions().len(), 2);
        assert_eq!(r.n_auto(), 1);
        assert_eq!(r.index("10.0.0.7_vxlan_1"), Some(1));
        assert_eq!(r.index("10.0.0.6_vxlan_1"), None);
        assert_eq!(r.routes(), &[Some(0), None, Some(1), None]);
        // The slot of a forgotten source routes anew when a new source takes it.
        let back = r.deliver(&delivery(1, keys[1], true, &frame), &cfg);
        assert_eq!(
            (back.verdict, back.discovered),
            (Verdict::Write(2), Some(2))
        );
    }
}
