//! Peer tokens: how one collector of a fleet proves itself to another when it asks for its
//! part of a packet query or relays a live stream.
//!
//! The fleet's secret (32 random bytes, made once by the first collector that opens the
//! shared database, [`crate::store::Transaction::fleet_secret`]) never leaves the database
//! and the collectors' memory. Each collector signs short-lived tokens with a key derived
//! from it: `twp1_<issuer, hex>_<expiry, ns since the epoch>_read_<HMAC-SHA256, hex>`, the
//! MAC over the version, scope, issuer and expiry. A token is good for [`TTL`] (a little
//! more for clocks that differ: [`SKEW`]) and only for the routes that take peers (the packet
//! query's parts and live streams), always as a viewer. Without the secret nobody outside
//! the fleet can make one; a token seen in transit is useless after its seconds.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The prefix that tells a peer token from an API token (`tw_...`).
pub const PREFIX: &str = "twp1_";
/// The one scope: read query parts and live streams.
pub const SCOPE: &str = "read";
/// How long a token is good for.
pub const TTL: Duration = Duration::from_secs(30);
/// Clocks of the fleet may differ by this much.
pub const SKEW: Duration = Duration::from_secs(30);
/// Bytes of the fleet's secret.
pub const SECRET_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Why a peer token is refused (the message names no secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("a malformed peer token")]
    Malformed,
    #[error("a peer token of another scope")]
    Scope,
    #[error("an expired peer token")]
    Expired,
    #[error("a peer token valid for longer than a peer token can be")]
    TooLong,
    #[error("a peer token not signed with this fleet's secret")]
    Signature,
}

/// The key peer tokens are signed with, derived from the fleet's secret. Never printed.
#[derive(Clone)]
pub struct PeerKey(Vec<u8>);

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerKey(..)")
    }
}

/// A new random fleet secret.
pub fn new_secret() -> Result<[u8; SECRET_BYTES], String> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| format!("random fleet secret: {e}"))?;
    Ok(bytes)
}

impl PeerKey {
    /// The signing key of `secret`: its own HMAC of a label, so that the stored secret is
    /// never itself a MAC key of anything that is sent.
    pub fn derive(secret: &[u8]) -> PeerKey {
        PeerKey(Self::mac_of(secret, b"tapwire peer token key v1"))
    }

    fn mac_of(key: &[u8], msg: &[u8]) -> Vec<u8> {
        // HMAC takes a key of any length.
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        m.update(msg);
        m.finalize().into_bytes().to_vec()
    }

    /// A token of `issuer`'s, good for [`TTL`] from `now_ns`.
    pub fn sign(&self, issuer: &str, now_ns: u64) -> String {
        let expiry_ns = now_ns.saturating_add(TTL.as_nanos() as u64);
        let body = format!("{PREFIX}{}_{expiry_ns}_{SCOPE}", hex::encode(issuer));
        let mac = Self::mac_of(&self.0, body.as_bytes());
        format!("{body}_{}", hex::encode(mac))
    }

    /// The issuing collector of `token`, if this fleet's key signed it and it is good now.
    pub fn verify(&self, token: &str, now_ns: u64) -> Result<String, PeerError> {
        let rest = token.strip_prefix(PREFIX).ok_or(PeerError::Malformed)?;
        let parts: Vec<&str> = rest.split('_').collect();
        let [issuer_hex, expiry, scope, mac_hex] = parts[..] else {
            return Err(PeerError::Malformed);
        };
        let issuer = hex::decode(issuer_hex)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|s| !s.is_empty())
            .ok_or(PeerError::Malformed)?;
        let expiry_ns: u64 = expiry.parse().map_err(|_| PeerError::Malformed)?;
        let mac = hex::decode(mac_hex).map_err(|_| PeerError::Malformed)?;
        // The signature first (over the text as sent, in constant time): nothing else about
        // an unsigned token is told apart.
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        m.update(format!("{PREFIX}{issuer_hex}_{expiry}_{scope}").as_bytes());
        m.verify_slice(&mac).map_err(|_| PeerError::Signature)?;
        if scope != SCOPE {
            return Err(PeerError::Scope);
        }
        if expiry_ns < now_ns {
            return Err(PeerError::Expired);
        }
        if expiry_ns > now_ns.saturating_add((TTL + SKEW).as_nanos() as u64) {
            return Err(PeerError::TooLong);
        }
        Ok(issuer)
    }
}

/// Whether a bearer token is a peer token (else it is an API token).
pub fn is_peer_token(token: &str) -> bool {
    token.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_765_029_720_000_000_000;

    #[test]
    fn a_token_names_its_issuer_for_its_seconds_only() {
        let key = PeerKey::derive(b"fleet secret of thirty-two bytes");
        let t = key.sign("col-a.1:x", NOW);
        assert!(is_peer_token(&t));
        assert!(!t.contains("fleet secret"));
        assert_eq!(key.verify(&t, NOW), Ok("col-a.1:x".to_string()));
        assert_eq!(
            key.verify(&t, NOW + TTL.as_nanos() as u64),
            Ok("col-a.1:x".into())
        );
        assert_eq!(
            key.verify(&t, NOW + TTL.as_nanos() as u64 + 1),
            Err(PeerError::Expired)
        );
        // Issued by a clock ahead of ours, within the skew: taken; beyond it: refused.
        let ahead = key.sign("b", NOW + SKEW.as_nanos() as u64);
        assert!(key.verify(&ahead, NOW).is_ok());
        let far = key.sign("b", NOW + SKEW.as_nanos() as u64 + 1);
        assert_eq!(key.verify(&far, NOW), Err(PeerError::TooLong));
    }

    #[test]
    fn nobody_without_the_secret_makes_or_changes_one() {
        let key = PeerKey::derive(b"fleet secret of thirty-two bytes");
        let other = PeerKey::derive(b"another fleet's secret, 32 bytes");
        let t = key.sign("a", NOW);
        assert_eq!(other.verify(&t, NOW), Err(PeerError::Signature));
        assert_eq!(
            key.verify(&other.sign("a", NOW), NOW),
            Err(PeerError::Signature)
        );
        let parts: Vec<&str> = t.split('_').collect();
        // Another issuer, a later expiry, another scope, a flipped MAC digit: all refused.
        let forged = [
            t.replacen(parts[1], &hex::encode("b"), 1),
            t.replacen(parts[2], &(NOW + 1).to_string(), 1),
            t.replacen("_read_", "_admin_", 1),
            {
                let mut s = t.clone();
                let last = s.pop().unwrap_or('0');
                s.push(if last == '0' { '1' } else { '0' });
                s
            },
        ];
        for f in &forged {
            assert_eq!(key.verify(f, NOW), Err(PeerError::Signature), "{f}");
        }
        for bad in ["twp1_", "twp1_61_1_read", "tw_abc", "twp1_zz_1_read_00", ""] {
            assert!(key.verify(bad, NOW).is_err(), "{bad}");
        }
        assert_eq!(format!("{key:?}"), "PeerKey(..)");
    }
}
