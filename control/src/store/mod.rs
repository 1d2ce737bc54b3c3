//! The control plane's state: tokens, API-managed sessions, probes, flows and the audit log,
//! behind a [`Store`] that a back-end implements ([`sqlite`] today).
//!
//! Every read and write goes through a [`Transaction`]: the controller makes a change, its audit
//! row and the probes' re-rendered flow sets in one, checks the whole and commits it, so a
//! change and its audit entry are stored together or not at all. A transaction dropped without
//! [`Transaction::commit`] is rolled back. The back-end stores and finds rows; every rule (names,
//! limits, who may do what, timestamps) is the controller's, so a second back-end needs none
//! of it.

pub mod sqlite;

use serde_json::Value;
use tapwire_api_types::control::{AuditEntry, Role, TokenInfo};
use tapwire_api_types::probe::Encapsulation;

/// An error of the back-end, boxed so that each back-end keeps its own.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the database cannot be used, or a query failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open { path: String, source: BoxError },
    #[error(
        "database schema version {found} is newer than this tapwire knows ({known}): use a newer tapwire"
    )]
    TooNew { found: u32, known: u32 },
    #[error("database migration {step}: {source}")]
    Migration { step: u32, source: BoxError },
    #[error("{0}")]
    Query(BoxError),
}

/// A database of the control plane's state.
pub trait Store: Send {
    /// Starts a transaction.
    fn begin(&mut self) -> Result<Box<dyn Transaction + '_>, StoreError>;
}

/// One transaction: reads see what it wrote; nothing is kept unless it is committed.
pub trait Transaction {
    fn commit(self: Box<Self>) -> Result<(), StoreError>;

    /// Appends one audit row.
    fn audit(&mut self, row: &AuditRow<'_>) -> Result<(), StoreError>;
    /// Audit rows with an id above `after`, oldest first.
    fn list_audit(&mut self, after: i64, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;

    /// Every token not revoked.
    fn active_tokens(&mut self) -> Result<Vec<ActiveToken>, StoreError>;
    fn list_tokens(&mut self) -> Result<Vec<TokenInfo>, StoreError>;
    fn has_admin(&mut self) -> Result<bool, StoreError>;
    /// Whether a token of this name exists, revoked or not (names are never reused).
    fn token_exists(&mut self, name: &str) -> Result<bool, StoreError>;
    fn insert_token(&mut self, token: &NewToken<'_>) -> Result<(), StoreError>;
    /// Marks the active token `name` revoked at `at`; false when there is none.
    fn revoke_token(&mut self, name: &str, at: &str) -> Result<bool, StoreError>;

    /// Sessions by name.
    fn sessions(&mut self) -> Result<Vec<StoredSession>, StoreError>;
    fn session(&mut self, name: &str) -> Result<Option<StoredSession>, StoreError>;
    /// Inserts or replaces (by name; `created` is kept on replace).
    fn put_session(&mut self, s: &StoredSession) -> Result<(), StoreError>;
    fn delete_session(&mut self, name: &str) -> Result<(), StoreError>;
    fn used_mirror_ids(&mut self) -> Result<Vec<u32>, StoreError>;

    /// Flows by probe, then name.
    fn flows(&mut self) -> Result<Vec<StoredFlow>, StoreError>;
    fn flow(&mut self, id: i64) -> Result<Option<StoredFlow>, StoreError>;
    /// Stores a new flow (its `id` is ignored); returns its id.
    fn insert_flow(&mut self, f: &StoredFlow) -> Result<i64, StoreError>;
    fn set_flow_enabled(&mut self, id: i64, enabled: bool, at: &str) -> Result<(), StoreError>;
    fn delete_flow(&mut self, id: i64) -> Result<(), StoreError>;

    /// Probes by name.
    fn probes(&mut self) -> Result<Vec<StoredProbe>, StoreError>;
    fn probe(&mut self, name: &str) -> Result<Option<StoredProbe>, StoreError>;
    /// Makes sure a row exists for `name` (flows may be defined before their probe first
    /// registers).
    fn ensure_probe(
        &mut self,
        name: &str,
        max_flows: u32,
        max_pps: Option<u64>,
    ) -> Result<(), StoreError>;
    fn register_probe(
        &mut self,
        name: &str,
        version: &str,
        interfaces: &[String],
        at: &str,
    ) -> Result<(), StoreError>;
    fn touch_probe(&mut self, name: &str, at: &str) -> Result<(), StoreError>;
    fn set_probe_limits(
        &mut self,
        name: &str,
        max_flows: u32,
        max_pps: Option<u64>,
    ) -> Result<(), StoreError>;
    /// Stores a probe's rendered flow set; the version goes up only when the set changed.
    /// Returns whether it changed.
    fn set_flowset(&mut self, name: &str, flowset: &Value) -> Result<bool, StoreError>;
    fn delete_probe(&mut self, name: &str) -> Result<(), StoreError>;
}

/// One audit row: who (a token's name and role) did what to what, when.
#[derive(Debug, Clone, Copy)]
pub struct AuditRow<'a> {
    pub at: &'a str,
    pub token: &'a str,
    pub role: Role,
    pub action: &'a str,
    pub target: &'a str,
    pub detail: &'a Value,
}

/// A token that is not revoked, as authentication needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveToken {
    pub name: String,
    pub role: Role,
    /// The probe a probe token is bound to.
    pub probe: Option<String>,
    /// SHA-256 of the secret.
    pub hash: Vec<u8>,
}

/// A token to store: only the hash of its secret.
#[derive(Debug, Clone, Copy)]
pub struct NewToken<'a> {
    pub name: &'a str,
    pub role: Role,
    /// The probe a probe token is bound to (it may act as no other).
    pub probe: Option<&'a str>,
    pub hash: &'a [u8],
    pub created: &'a str,
    pub created_by: &'a str,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredSession {
    pub name: String,
    pub encap: Encapsulation,
    pub mirror_id: u32,
    pub enabled: bool,
    pub filter: Option<String>,
    pub files: Option<Value>,
    pub tap: Option<Value>,
    pub created: String,
    pub updated: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredFlow {
    pub id: i64,
    pub probe: String,
    pub name: String,
    pub session: String,
    pub enabled: bool,
    pub spec: Value,
    pub created: String,
    pub updated: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredProbe {
    pub name: String,
    pub version: Option<String>,
    pub interfaces: Vec<String>,
    pub registered: Option<String>,
    pub last_seen: Option<String>,
    pub max_flows: u32,
    pub max_pps: Option<u64>,
    pub flowset: Value,
    pub flowset_version: u64,
}
