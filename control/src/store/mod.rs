//! The control plane's state: tokens, API-managed sessions, probes, flows, the audit log, the
//! fleet's collectors and the catalog of capture files, behind a [`Store`] that a back-end
//! implements: [`sqlite`] (embedded, one collector, the default) or [`postgres`] (shared by a
//! fleet of collectors). [`Location`] is what `--db` names; [`open`] opens either.
//!
//! Every read and write goes through a [`Transaction`]: the controller makes a change, its audit
//! row and the probes' re-rendered flow sets in one, checks the whole and commits it, so a
//! change and its audit entry are stored together or not at all. A transaction dropped without
//! [`Transaction::commit`] is rolled back. The back-end stores and finds rows; every rule (names,
//! limits, who may do what, timestamps) is the controller's, so a second back-end needs none
//! of it.

pub mod postgres;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod tests;

use std::path::PathBuf;

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
    /// The database cannot be reached now (it may come back): the control plane is
    /// disconnected.
    #[error("database unreachable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Query(BoxError),
}

impl StoreError {
    /// Whether the database was away rather than the request wrong.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Where the control plane's state is: what `--db` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An SQLite file: `PATH` or `sqlite:PATH`.
    Sqlite(PathBuf),
    /// A PostgreSQL database: a `postgres://` (or `postgresql://`) URL, or libpq's
    /// `host=... dbname=...` form.
    Postgres(String),
}

impl Location {
    /// Reads `--db`: a URL or `key=value` pairs are PostgreSQL, anything else an SQLite path.
    pub fn parse(s: &str) -> Result<Location, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("--db: empty".into());
        }
        if let Some(path) = t.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(
                    "--db: sqlite: needs a path (sqlite:/var/lib/tapwire/control.db)".into(),
                );
            }
            return Ok(Location::Sqlite(PathBuf::from(path)));
        }
        if t.starts_with("postgres://") || t.starts_with("postgresql://") {
            return Ok(Location::Postgres(t.to_string()));
        }
        if let Some((scheme, _)) = t.split_once("://") {
            return Err(format!(
                "--db: {scheme}:// is not a database tapwire knows: a path, sqlite:PATH or postgres://USER@HOST:PORT/DB"
            ));
        }
        // libpq's keyword form: every word is key=value, and one of them names the server.
        let words: Vec<&str> = t.split_whitespace().collect();
        let keyword_form = words.iter().all(|w| w.contains('='))
            && words.iter().any(|w| {
                let k = w.split('=').next().unwrap_or("");
                matches!(k, "host" | "hostaddr" | "dbname" | "port" | "user")
            });
        if keyword_form {
            return Ok(Location::Postgres(t.to_string()));
        }
        Ok(Location::Sqlite(PathBuf::from(t)))
    }

    /// For messages and logs: a PostgreSQL password is never shown.
    pub fn display(&self) -> String {
        match self {
            Location::Sqlite(p) => p.display().to_string(),
            Location::Postgres(url) => postgres::redact(url),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Location::Postgres(_))
    }
}

/// Opens the database at `at` and brings its schema up to date (or refuses: too new, not
/// reachable, refused credentials).
pub fn open(at: &Location) -> Result<Box<dyn Store>, StoreError> {
    Ok(match at {
        Location::Sqlite(path) => Box::new(sqlite::SqliteStore::open(path)?),
        Location::Postgres(url) => Box::new(postgres::PgStore::open(url)?),
    })
}

/// A database of the control plane's state.
pub trait Store: Send {
    /// Starts a transaction.
    fn begin(&mut self) -> Result<Box<dyn Transaction + '_>, StoreError>;

    /// The changes other processes make, as they are committed: `Some` for a database that
    /// several collectors share and that tells of commits (PostgreSQL's LISTEN/NOTIFY).
    fn listener(&self) -> Option<Box<dyn Listener>> {
        None
    }
}

/// Tells of commits made by any collector of the fleet.
pub trait Listener: Send {
    /// Waits up to `timeout` for a notification; `Ok(true)` when one came (or the
    /// connection was made again: changes may have been missed in between).
    fn wait(&mut self, timeout: std::time::Duration) -> Result<bool, StoreError>;
}

/// One transaction: reads see what it wrote; nothing is kept unless it is committed.
pub trait Transaction {
    fn commit(self: Box<Self>) -> Result<(), StoreError>;

    /// Serialises changes across the fleet: holds the fleet's one lock row until the
    /// transaction ends. With `wait` false, returns false at once when another transaction
    /// holds it (`FOR UPDATE SKIP LOCKED`). A transaction-level lock, so a pooler in
    /// transaction mode keeps it working.
    fn lock_fleet(&mut self, wait: bool) -> Result<bool, StoreError>;
    /// The number of changes committed so far, fleet-wide.
    fn fleet_version(&mut self) -> Result<i64, StoreError>;
    /// Counts a change and tells every collector of it once committed (PostgreSQL: NOTIFY
    /// with the new number, nothing else); returns the new number.
    fn bump_fleet_version(&mut self) -> Result<i64, StoreError>;

    /// Appends one audit row.
    fn audit(&mut self, row: &AuditRow<'_>) -> Result<(), StoreError>;
    /// Audit rows with an id above `after`, oldest first.
    fn list_audit(&mut self, after: i64, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;

    /// Every token not revoked.
    fn active_tokens(&mut self) -> Result<Vec<ActiveToken>, StoreError>;
    fn list_tokens(&mut self) -> Result<Vec<TokenInfo>, StoreError>;
    fn has_admin(&mut self) -> Result<bool, StoreError>;
    /// The fleet's secret for peer tokens: `fresh` is stored if there is none yet (the first
    /// collector to ask makes it), else the stored one is returned.
    fn fleet_secret(&mut self, fresh: &[u8]) -> Result<Vec<u8>, StoreError>;
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

    /// Sets the collector that runs session `name` (`None`: nobody).
    fn set_session_owner(&mut self, name: &str, owner: Option<&str>) -> Result<(), StoreError>;

    /// The fleet's collectors, by name.
    fn collectors(&mut self) -> Result<Vec<StoredCollector>, StoreError>;
    /// Inserts or replaces (by name).
    fn put_collector(&mut self, c: &StoredCollector) -> Result<(), StoreError>;
    /// Renews the lease of `name` and stores its load, if the row is still this process's
    /// (`incarnation`); false when another process took the name over.
    fn heartbeat(&mut self, beat: &Heartbeat<'_>) -> Result<bool, StoreError>;

    /// Adds a capture file to the catalog, or updates it (by collector and path).
    fn catalog_put(&mut self, f: &CatalogFile) -> Result<(), StoreError>;
    /// Sets the state of `collector`'s file `path`, keeping what the row says of its packets;
    /// false when there is no such row.
    fn catalog_mark(
        &mut self,
        collector: &str,
        path: &str,
        state: FileState,
        updated_ns: i64,
    ) -> Result<bool, StoreError>;
    /// Removes `collector`'s row of `path` (the file was renamed, or never held a capture).
    fn catalog_remove(&mut self, collector: &str, path: &str) -> Result<(), StoreError>;
    /// The files of `collector` in the catalog, oldest first.
    fn catalog_of(&mut self, collector: &str) -> Result<Vec<CatalogFile>, StoreError>;
    /// The files of `session` whose packets overlap `[from_ns, to_ns]` (an open file's range
    /// reaches to now), on any collector, deleted ones too; oldest first. One indexed query.
    fn catalog_range(
        &mut self,
        session: &str,
        from_ns: i64,
        to_ns: i64,
    ) -> Result<Vec<CatalogFile>, StoreError>;
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
    /// The collector that served it (`None`: offline).
    pub collector: Option<&'a str>,
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
    /// The collector it is pinned to; `None`: placed by the fleet (`auto`).
    pub pin: Option<String>,
    /// The collector that runs it now.
    pub owner: Option<String>,
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

/// A collector of the fleet: who it is, where probes and clients reach it, its lease.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCollector {
    pub name: String,
    /// Random, new at every start: tells this process's row from another's of the same name.
    pub incarnation: String,
    pub advertise: Option<String>,
    pub api_url: Option<String>,
    pub version: String,
    pub started_ns: i64,
    pub heartbeat_ns: i64,
    /// Live while the clock is before this.
    pub lease_until_ns: i64,
    pub load: Load,
}

/// What a collector reports with each heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    /// Packets per second over the last 10 s.
    pub pps: f64,
    pub packets: u64,
    pub lost: u64,
}

/// One lease renewal.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat<'a> {
    pub name: &'a str,
    pub incarnation: &'a str,
    pub at_ns: i64,
    pub lease_until_ns: i64,
    pub load: Load,
}

/// Where a capture file is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    /// Being written.
    Open,
    /// Finished, on disk.
    Closed,
    /// Removed (ring deletion, `max_files`, or found gone).
    Deleted,
}

impl FileState {
    pub fn name(self) -> &'static str {
        match self {
            FileState::Open => "open",
            FileState::Closed => "closed",
            FileState::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> FileState {
        match s {
            "open" => FileState::Open,
            "deleted" => FileState::Deleted,
            _ => FileState::Closed,
        }
    }
}

/// A capture file in the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogFile {
    pub collector: String,
    pub session: String,
    pub path: String,
    /// Capture time of its first and last packet (nanoseconds since the epoch); `None` while
    /// it holds none.
    pub first_ns: Option<i64>,
    pub last_ns: Option<i64>,
    pub packets: u64,
    pub bytes: u64,
    pub state: FileState,
    /// When the row last changed (the collector's clock).
    pub updated_ns: i64,
}
