//! Tokens kept in a store, and the audit rows every change writes: the rules the controller
//! and `tapwire token --db` (the same operations on the database, without a collector) share.

use serde_json::Value;
use tapwire_api_types::control::{Role, TokenCreate, TokenInfo, validate_name};
use tapwire_api_types::time::rfc3339_ns;

use crate::Refused;
use crate::auth::{self, Caller};
use crate::controller::check_probe_name;
use crate::store::{AuditRow, NewToken, Store, Transaction};

/// Writes one audit row (in the caller's transaction); `collector`: the one that served it
/// (`None` offline).
pub fn audit(
    tx: &mut dyn Transaction,
    caller: &Caller,
    collector: Option<&str>,
    at: &str,
    action: &str,
    target: &str,
    detail: &Value,
) -> Result<(), Refused> {
    tx.audit(&AuditRow {
        at,
        token: &caller.name,
        role: caller.role,
        action,
        target,
        detail,
        collector,
    })?;
    Ok(())
}

/// Stores a new token's hash; the secret is returned once by the caller and never stored. A
/// probe token is bound to `probe`, or to the probe of its own name.
pub fn insert(
    tx: &mut dyn Transaction,
    caller: &Caller,
    collector: Option<&str>,
    req: &TokenCreate,
    hash: &[u8],
    at: &str,
) -> Result<TokenInfo, Refused> {
    let (name, role) = (req.name.as_str(), req.role);
    validate_name(name).map_err(|e| Refused::BadRequest(format!("name: {e}")))?;
    let probe = match (role, &req.probe) {
        (Role::Probe, p) => {
            let p = p.as_deref().unwrap_or(name);
            check_probe_name(p)?;
            Some(p)
        }
        (_, None) => None,
        (_, Some(_)) => {
            return Err(Refused::BadRequest(format!(
                "probe: only probe tokens are bound to a probe, not {} tokens",
                role.name()
            )));
        }
    };
    if tx.token_exists(name)? {
        return Err(Refused::Conflict(format!(
            "a token named {name:?} exists (names are never reused, also after revocation)"
        )));
    }
    tx.insert_token(&NewToken {
        name,
        role,
        probe,
        hash,
        created: at,
        created_by: &caller.name,
    })?;
    let detail = match probe {
        Some(p) => serde_json::json!({ "role": role.name(), "probe": p }),
        None => serde_json::json!({ "role": role.name() }),
    };
    audit(tx, caller, collector, at, "token.create", name, &detail)?;
    Ok(TokenInfo {
        name: name.to_string(),
        role,
        probe: probe.map(str::to_string),
        created: at.to_string(),
        created_by: caller.name.clone(),
        revoked: None,
        token: None,
    })
}

pub fn revoke(
    tx: &mut dyn Transaction,
    caller: &Caller,
    collector: Option<&str>,
    name: &str,
    at: &str,
) -> Result<(), Refused> {
    if !tx.revoke_token(name, at)? {
        return Err(Refused::NotFound(format!("no active token named {name:?}")));
    }
    audit(
        tx,
        caller,
        collector,
        at,
        "token.revoke",
        name,
        &Value::Null,
    )
}

/// `tapwire token create --db`: a new token, its secret in the answer (shown once).
pub fn create_offline(
    store: &mut dyn Store,
    caller: &Caller,
    req: &TokenCreate,
    now_ns: u64,
) -> Result<TokenInfo, Refused> {
    let secret = auth::generate().map_err(Refused::Internal)?;
    let mut tx = store.begin()?;
    let mut info = insert(
        &mut *tx,
        caller,
        None,
        req,
        &auth::hash(&secret),
        &rfc3339_ns(now_ns),
    )?;
    // Collectors that run take the new token at their next look (the fleet's counter).
    tx.bump_fleet_version()?;
    tx.commit()?;
    info.token = Some(secret);
    Ok(info)
}

/// `tapwire token list --db`.
pub fn list_offline(store: &mut dyn Store) -> Result<Vec<TokenInfo>, Refused> {
    Ok(store.begin()?.list_tokens()?)
}

/// `tapwire token revoke --db`.
pub fn revoke_offline(
    store: &mut dyn Store,
    caller: &Caller,
    name: &str,
    now_ns: u64,
) -> Result<(), Refused> {
    let mut tx = store.begin()?;
    revoke(&mut *tx, caller, None, name, &rfc3339_ns(now_ns))?;
    tx.bump_fleet_version()?;
    Ok(tx.commit()?)
}
