//! Routing, pure: whether a source may send at all (the allow-list), which session a source
//! belongs to, and whether a delivered frame is written or why not. The engine asks
//! [`Router::deliver`] once per frame and does what the [`Verdict`] says (and counts it); the
//! routing table it answers from (sources to sessions, each session's switch and inner
//! filter) lives here, and the engine keeps it in step with its sessions: session `i` here is
//! the engine's session `i`.

use std::net::IpAddr;

use ipnet::IpNet;
use rustc_hash::FxHashMap;
use tapwire_formats::decap::SourceKey;

use crate::config::{Config, SessionConfig};
use crate::demux::SourceId;
use crate::filter::Filter;
use crate::pipeline::Delivery;

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
    sessions: Vec<Gate>,
    by_name: FxHashMap<String, usize>,
    /// Session of each source, by source id.
    routes: Vec<Option<usize>>,
}

impl Router {
    pub fn new(allow: Vec<IpNet>, auto_discover: bool) -> Router {
        Router {
            allow,
            auto_discover,
            sessions: Vec::new(),
            by_name: FxHashMap::default(),
            routes: Vec::new(),
        }
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
        self.by_name.insert(gate.name.clone(), i);
        self.sessions.push(gate);
        i
    }

    /// Takes every session out, by name (for a reload to pick from).
    pub fn take_sessions(&mut self) -> FxHashMap<String, Gate> {
        self.by_name.clear();
        std::mem::take(&mut self.sessions)
            .into_iter()
            .map(|g| (g.name.clone(), g))
            .collect()
    }

    /// After a reload: `gates` are the sessions, in the engine's order, and every source known
    /// is routed again under `config` (`key` gives a source id's key). Returns the sessions
    /// auto-discovery made for sources no session takes any more, in order.
    pub fn reset(
        &mut self,
        gates: Vec<Gate>,
        config: &Config,
        key: impl Fn(SourceId) -> SourceKey,
    ) -> Vec<usize> {
        self.by_name.clear();
        self.sessions.clear();
        for mut g in gates {
            g.sources.clear();
            self.push(g);
        }
        let mut discovered = Vec::new();
        for id in 0..self.routes.len() {
            let (route, made) = self.route(&key(id as SourceId), config);
            self.routes[id] = route;
            if let Some(i) = route {
                self.sessions[i].sources.push(id as SourceId);
            }
            discovered.extend(made);
        }
        discovered
    }

    /// Where a delivered frame goes. A source seen for the first time is routed first: to the
    /// first configured session whose rules match, else (auto-discovery) to a session of its
    /// own, made here, else nowhere.
    pub fn deliver(&mut self, d: &Delivery<'_>, config: &Config) -> Routed {
        let id = d.source as usize;
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

    fn delivery(source: SourceId, key: SourceKey, new_source: bool, frame: &[u8]) -> Delivery<'_> {
        Delivery {
            source,
            key,
            new_source,
            frame,
            link: LinkType::Ethernet,
            meta: Meta::default(),
            seq_event: None,
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
            },
            sessions,
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
        assert_eq!(r.session(0).sources, vec![0]);
        assert_eq!(r.session(1).sources, vec![1]);
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
        for (id, k) in keys.iter().enumerate() {
            r.deliver(&delivery(id as SourceId, *k, true, &frame), &old);
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
        let discovered = r.reset(gates, &new, |id| keys[id as usize]);
        assert_eq!(discovered, vec![2]);
        assert_eq!(r.session(2).name, "10.0.0.5_erspan-ii_10");
        assert_eq!(r.routes(), &[Some(2), Some(0)]);
        assert_eq!(r.session(0).sources, vec![1]);
        assert!(r.session(1).sources.is_empty());
        assert_eq!(r.index("gre"), Some(0));
        assert_eq!(r.index("web"), None);
    }
}
