//! A fleet of collectors on one database: membership by lease, and where each session runs.
//!
//! Each collector registers under its name with a random incarnation and renews a lease by
//! heartbeat ([`LEASE`], [`HEARTBEAT`]); one whose lease ran out is dead for the fleet. A
//! session is pinned to a collector or placed (`auto`) on the least loaded live one
//! ([`plan`]): fewest sessions, then lowest reported packet rate, then name. A placed session
//! moves only when its collector is dead (never back by itself when that one returns: no
//! flapping), and only a collector that has itself been connected for a whole lease moves
//! anything: after an outage of the database every lease looks expired until the collectors
//! have renewed theirs. One placer at a time: the fleet's lock row, taken with `SKIP LOCKED`.
//!
//! Everything here is pure; the controller runs it ([`crate::Controller::tick`]).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::store::{StoredCollector, StoredSession};

/// How long a collector stays live without renewing its lease.
pub const LEASE: Duration = Duration::from_secs(6);
/// How often a collector renews its lease, looks for dead ones and for changes it missed.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long a collector trusts the tokens it read: a token revoked anywhere in the fleet is
/// refused by every connected collector at most this long after the revocation's commit
/// (usually at once: the change's notification makes each collector read them again, and each
/// heartbeat that finds the fleet's change counter moved does too). Older than this, tokens
/// are looked up in the database. Two heartbeats, so that a late one does not send every
/// request to the database.
pub const TOKEN_CACHE: Duration = Duration::from_secs(2);

/// Why a session moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// New, or no collector was live when it was made.
    Unplaced,
    /// Its collector's lease ran out.
    Dead(String),
    /// It was pinned to a collector (or its pin changed).
    Pinned,
    /// It was pinned and is now `auto`: it stays where it runs while that collector lives.
    Unpinned,
}

impl Reason {
    pub fn describe(&self) -> String {
        match self {
            Reason::Unplaced => "placed".into(),
            Reason::Dead(c) => format!("collector {c} is dead"),
            Reason::Pinned => "pinned".into(),
            Reason::Unpinned => "auto".into(),
        }
    }
}

/// One placement change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub session: String,
    pub from: Option<String>,
    pub to: String,
    pub reason: Reason,
}

pub fn is_live(c: &StoredCollector, now_ns: i64) -> bool {
    c.lease_until_ns > now_ns
}

/// Where sessions must go now. Pinned sessions go to their collector (live or not: pinned
/// means there). An `auto` session stays on a live collector; one with none, or (with
/// `move_from_dead`) on a dead one, goes to the least loaded live collector, counting the
/// sessions placed by this plan. Nothing moves when no collector is live.
pub fn plan(
    sessions: &[StoredSession],
    collectors: &[StoredCollector],
    now_ns: i64,
    move_from_dead: bool,
) -> Vec<Move> {
    let live: BTreeMap<&str, &StoredCollector> = collectors
        .iter()
        .filter(|c| is_live(c, now_ns))
        .map(|c| (c.name.as_str(), c))
        .collect();
    let mut count: BTreeMap<&str, usize> = live.keys().map(|n| (*n, 0)).collect();
    for s in sessions {
        if let Some(n) = s.owner.as_deref().and_then(|o| count.get_mut(o)) {
            *n += 1;
        }
    }
    let mut moves = Vec::new();
    for s in sessions {
        if let Some(pin) = &s.pin {
            if s.owner.as_ref() != Some(pin) {
                moves.push(Move {
                    session: s.name.clone(),
                    from: s.owner.clone(),
                    to: pin.clone(),
                    reason: Reason::Pinned,
                });
            }
            continue;
        }
        let reason = match s.owner.as_deref() {
            Some(o) if live.contains_key(o) => continue,
            Some(o) if move_from_dead => Reason::Dead(o.to_string()),
            Some(_) => continue,
            None => Reason::Unplaced,
        };
        let least = live.values().min_by(|a, b| {
            let (na, nb) = (count[a.name.as_str()], count[b.name.as_str()]);
            na.cmp(&nb)
                .then(a.load.pps.total_cmp(&b.load.pps))
                .then(a.name.cmp(&b.name))
        });
        let Some(to) = least else {
            continue;
        };
        if let Some(n) = count.get_mut(to.name.as_str()) {
            *n += 1;
        }
        moves.push(Move {
            session: s.name.clone(),
            from: s.owner.clone(),
            to: to.name.clone(),
            reason,
        });
    }
    moves
}

/// A new random incarnation: tells this process's registration from an earlier one's.
pub fn incarnation() -> Result<String, String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| format!("random incarnation: {e}"))?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Load;
    use tapwire_api_types::probe::Encapsulation;

    fn s(name: &str, pin: Option<&str>, owner: Option<&str>) -> StoredSession {
        StoredSession {
            name: name.into(),
            encap: Encapsulation::ErspanIi,
            mirror_id: 1,
            enabled: true,
            filter: None,
            files: None,
            tap: None,
            created: String::new(),
            updated: String::new(),
            pin: pin.map(Into::into),
            owner: owner.map(Into::into),
        }
    }

    fn c(name: &str, until: i64, pps: f64) -> StoredCollector {
        StoredCollector {
            name: name.into(),
            incarnation: "x".into(),
            advertise: None,
            api_url: None,
            version: String::new(),
            started_ns: 0,
            heartbeat_ns: 0,
            lease_until_ns: until,
            load: Load {
                pps,
                ..Load::default()
            },
        }
    }

    fn targets(m: &[Move]) -> Vec<(&str, &str)> {
        m.iter()
            .map(|m| (m.session.as_str(), m.to.as_str()))
            .collect()
    }

    #[test]
    fn new_sessions_spread_over_live_collectors_by_count_then_rate() {
        let fleet = [c("a", 100, 50.0), c("b", 100, 10.0), c("dead", 5, 0.0)];
        let m = plan(
            &[s("x", None, None), s("y", None, None), s("z", None, None)],
            &fleet,
            10,
            true,
        );
        // b has the lower rate; then a has fewer sessions; then b again (tie on count).
        assert_eq!(targets(&m), [("x", "b"), ("y", "a"), ("z", "b")]);
        assert!(m.iter().all(|m| m.reason == Reason::Unplaced));
        // Sessions already running count.
        let m = plan(
            &[s("w", None, Some("b")), s("x", None, None)],
            &fleet,
            10,
            true,
        );
        assert_eq!(targets(&m), [("x", "a")]);
    }

    #[test]
    fn a_dead_collectors_sessions_move_and_never_come_back() {
        let mut fleet = vec![c("a", 5, 0.0), c("b", 100, 0.0)];
        let sessions = [s("x", None, Some("a")), s("y", None, Some("b"))];
        let m = plan(&sessions, &fleet, 10, true);
        assert_eq!(
            m,
            [Move {
                session: "x".into(),
                from: Some("a".into()),
                to: "b".into(),
                reason: Reason::Dead("a".into()),
            }]
        );
        // Not while the caller may not move from the dead (within its grace).
        assert!(plan(&sessions, &fleet, 10, false).is_empty());
        // a comes back with nothing: x stays on b.
        fleet[0].lease_until_ns = 100;
        let after = [s("x", None, Some("b")), s("y", None, Some("b"))];
        assert!(plan(&after, &fleet, 10, true).is_empty());
        // With no collector live, nothing moves.
        assert!(plan(&sessions, &[c("a", 5, 0.0)], 10, true).is_empty());
    }

    #[test]
    fn pinned_sessions_go_to_their_collector_dead_or_alive() {
        let fleet = [c("a", 5, 0.0), c("b", 100, 0.0)];
        let m = plan(
            &[s("x", Some("a"), Some("b")), s("y", Some("b"), Some("b"))],
            &fleet,
            10,
            true,
        );
        assert_eq!(targets(&m), [("x", "a")]);
        assert_eq!(m[0].reason, Reason::Pinned);
    }
}
