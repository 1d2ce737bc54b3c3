//! Bearer tokens and what each role may do.
//!
//! A token is `tw_` and 64 hex digits (32 random bytes from the operating system). Only its
//! SHA-256 is stored: a high-entropy secret needs no salt or slow hash. A presented token is
//! hashed and compared with every active token's hash in constant time.

use sha2::{Digest, Sha256};
use tapwire_api_types::control::Role;

use crate::store::ActiveToken;

/// Who is asking: a token's name and role, or `localhost` (a viewer) without a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    /// A probe token's probe: the only one it may act as.
    pub probe: Option<String>,
    /// Another collector of the fleet, by a peer token ([`crate::peer`]): a viewer that may
    /// only read query parts and live streams.
    pub peer: Option<String>,
}

impl Caller {
    pub fn localhost() -> Caller {
        Caller {
            name: "localhost".into(),
            role: Role::Viewer,
            probe: None,
            peer: None,
        }
    }

    /// Another collector of the fleet (by a verified peer token).
    pub fn peer(issuer: &str) -> Caller {
        Caller {
            name: format!("peer:{issuer}"),
            role: Role::Viewer,
            probe: None,
            peer: Some(issuer.into()),
        }
    }

    /// Changes made by the collector itself (the bootstrap token) or offline (`--db`).
    pub fn system(name: &str) -> Caller {
        Caller {
            name: name.into(),
            role: Role::Admin,
            probe: None,
            peer: None,
        }
    }
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Read sessions, flows, probes, stats, the audit log.
    Read,
    /// Create, change, enable, disable, delete sessions and flows; probe limits.
    Change,
    /// Register, fetch flows, report stats.
    Probe,
    /// Tokens.
    Admin,
}

impl Need {
    pub fn allows(self, role: Role) -> bool {
        match self {
            Need::Read => matches!(role, Role::Viewer | Role::Operator | Role::Admin),
            Need::Change => matches!(role, Role::Operator | Role::Admin),
            Need::Probe => matches!(role, Role::Probe | Role::Operator | Role::Admin),
            Need::Admin => role == Role::Admin,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Need::Read => "a viewer, operator or admin token",
            Need::Change => "an operator or admin token",
            Need::Probe => "a probe, operator or admin token",
            Need::Admin => "an admin token",
        }
    }
}

/// A new random token.
pub fn generate() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("random token: {e}"))?;
    Ok(format!("tw_{}", hex::encode(bytes)))
}

pub fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The active token whose hash matches `token`'s: every entry is compared, whichever matches.
pub fn find(token: &str, active: &[ActiveToken]) -> Option<Caller> {
    let h = hash(token);
    let mut found = None;
    for t in active {
        if constant_time_eq(&h, &t.hash) && found.is_none() {
            found = Some(Caller {
                name: t.name.clone(),
                role: t.role,
                probe: t.probe.clone(),
                peer: None,
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_found_by_hash_only() {
        let a = generate().expect("token");
        let b = generate().expect("token");
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 64);
        let token = |name: &str, role, secret: &str| ActiveToken {
            name: name.into(),
            role,
            probe: None,
            hash: hash(secret),
        };
        let active = vec![
            token("ops", Role::Operator, &a),
            token("ro", Role::Viewer, &b),
        ];
        assert_eq!(find(&b, &active).map(|c| c.name), Some("ro".into()));
        assert_eq!(find(&a, &active).map(|c| c.role), Some(Role::Operator));
        assert_eq!(find("tw_00", &active), None);
        // One character off is another token.
        let mut c = a.clone();
        c.pop();
        c.push(if a.ends_with('0') { '1' } else { '0' });
        assert_eq!(find(&c, &active), None);
    }

    #[test]
    fn roles_allow_what_they_should() {
        use Role::*;
        let table = [
            (Need::Read, [false, true, true, true]),
            (Need::Change, [false, false, true, true]),
            (Need::Probe, [true, false, true, true]),
            (Need::Admin, [false, false, false, true]),
        ];
        for (need, allowed) in table {
            for (role, ok) in [Probe, Viewer, Operator, Admin].into_iter().zip(allowed) {
                assert_eq!(need.allows(role), ok, "{need:?} {role:?}");
            }
        }
    }
}
