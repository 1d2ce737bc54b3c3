//! The control plane's state in SQLite, with its schema migrations.
//!
//! Migrations are an ordered list; the database's `PRAGMA user_version` is how many of them it
//! has. Opening applies the missing ones, each in its own transaction together with the new
//! `user_version`, and refuses a database newer than this binary.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use tapwire_api_types::control::{AuditEntry, Role, TokenInfo};
use tapwire_api_types::probe::Encapsulation;

use super::{
    ActiveToken, AuditRow, CatalogFile, FileState, Heartbeat, Load, NewToken, Store, StoreError,
    StoredCollector, StoredFlow, StoredProbe, StoredSession, Transaction,
};

/// The schema, one step per entry; never edit a released step, add one.
pub const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE tokens (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL CHECK (role IN ('probe', 'viewer', 'operator', 'admin')),
        hash BLOB NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        created_by TEXT NOT NULL,
        revoked_at TEXT
    );
    CREATE TABLE sessions (
        name TEXT PRIMARY KEY,
        mirror_id INTEGER NOT NULL UNIQUE CHECK (mirror_id BETWEEN 1 AND 1023),
        encap TEXT NOT NULL,
        enabled INTEGER NOT NULL,
        filter TEXT,
        files TEXT,
        tap TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE probes (
        name TEXT PRIMARY KEY,
        version TEXT,
        interfaces TEXT NOT NULL DEFAULT '[]',
        registered_at TEXT,
        last_seen TEXT,
        max_flows INTEGER NOT NULL,
        max_pps INTEGER,
        flowset TEXT NOT NULL DEFAULT '[]',
        flowset_version INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE flows (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        probe TEXT NOT NULL REFERENCES probes(name),
        name TEXT NOT NULL,
        session TEXT NOT NULL REFERENCES sessions(name),
        enabled INTEGER NOT NULL,
        spec TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (probe, name)
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        token TEXT NOT NULL,
        role TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL
    );",
    // 2: a probe token is bound to one probe (those made before were usable only as the probe
    // of their own name, which is what they are bound to); and what the API may no longer
    // define is taken out of the stored sessions, each with an audit row that names the
    // fields and not their values: on-finish commands (they ran as the collector), directories
    // that are absolute or climb with '..', namespace paths.
    "ALTER TABLE tokens ADD COLUMN probe TEXT;
    UPDATE tokens SET probe = name WHERE role = 'probe';
    CREATE TEMP TABLE legacy AS SELECT name,
        coalesce(json_valid(files) AND json_type(files, '$.on_finish') IS NOT NULL, 0) AS command,
        coalesce(json_valid(files) AND json_type(files, '$.dir') = 'text' AND (
            json_extract(files, '$.dir') LIKE '/%'
            OR json_extract(files, '$.dir') = ''
            OR '/' || json_extract(files, '$.dir') || '/' LIKE '%/../%'), 0) AS dir,
        coalesce(json_valid(tap) AND json_type(tap, '$.netns') = 'text'
            AND instr(json_extract(tap, '$.netns'), '/') > 0, 0) AS netns
        FROM sessions;
    DELETE FROM legacy WHERE NOT (command OR dir OR netns);
    INSERT INTO audit (at, token, role, action, target, detail)
        SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 'upgrade', 'admin', 'session.update', name,
            json_object('removed', rtrim(
                CASE WHEN command THEN 'files.on_finish ' ELSE '' END
                || CASE WHEN dir THEN 'files.dir ' ELSE '' END
                || CASE WHEN netns THEN 'tap.netns' ELSE '' END),
              'why', 'the API may no longer run commands or name paths: name a hook of the configuration file, a directory beneath --out, a namespace of ip netns')
        FROM legacy ORDER BY name;
    UPDATE sessions SET files = json_remove(files, '$.on_finish')
        WHERE name IN (SELECT name FROM legacy WHERE command);
    UPDATE sessions SET files = json_remove(files, '$.dir')
        WHERE name IN (SELECT name FROM legacy WHERE dir);
    UPDATE sessions SET tap = json_remove(tap, '$.netns')
        WHERE name IN (SELECT name FROM legacy WHERE netns);
    DROP TABLE legacy;",
    // 3: the fleet: collectors with leases, where each session runs, who served each change,
    // the change counter.
    "ALTER TABLE sessions ADD COLUMN pin TEXT;
    ALTER TABLE sessions ADD COLUMN owner TEXT;
    ALTER TABLE audit ADD COLUMN collector TEXT;
    CREATE TABLE collectors (
        name TEXT PRIMARY KEY,
        incarnation TEXT NOT NULL,
        advertise TEXT,
        api_url TEXT,
        version TEXT NOT NULL,
        started_ns INTEGER NOT NULL,
        heartbeat_ns INTEGER NOT NULL,
        lease_until_ns INTEGER NOT NULL,
        pps REAL NOT NULL DEFAULT 0,
        packets INTEGER NOT NULL DEFAULT 0,
        lost INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE fleet (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL
    );
    INSERT INTO fleet (id, version) VALUES (1, 0);",
    // 4: the catalog of capture files. `files_session_time` answers "the files of session S
    // that overlap [from, to]" from the index.
    "CREATE TABLE files (
        id INTEGER PRIMARY KEY,
        collector TEXT NOT NULL,
        session TEXT NOT NULL,
        path TEXT NOT NULL,
        first_ns INTEGER,
        last_ns INTEGER,
        packets INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL CHECK (state IN ('open', 'closed', 'deleted')),
        updated_ns INTEGER NOT NULL,
        UNIQUE (collector, path)
    );
    CREATE INDEX files_session_time ON files (session, first_ns);",
    // 5: the fleet's secret, from which collectors sign their short-lived peer tokens.
    "CREATE TABLE fleet_secret (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        secret BLOB NOT NULL
    );",
];

/// The database's mode: it holds token hashes, which no other local user may read.
pub const DB_MODE: u32 = 0o600;

/// Creates the database file with [`DB_MODE`] when it does not exist (SQLite gives its -wal
/// and -shm files the database's mode), and takes group and other access away from an
/// existing one and its -wal and -shm files, with a warning: earlier versions made them 0644.
fn restrict_files(path: &Path) -> Result<(), StoreError> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(DB_MODE)
        .open(path)
    {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(StoreError::Open {
                path: path.display().to_string(),
                source: source.into(),
            });
        }
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = PathBuf::from(name);
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 == 0 {
            continue;
        }
        let tight = mode & 0o700;
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(tight)) {
            Ok(()) => tracing::warn!(
                path = %file.display(),
                "the control database was readable by other local users (mode {mode:04o}, token hashes): now {tight:04o}"
            ),
            Err(e) => tracing::warn!(
                path = %file.display(),
                error = %e,
                "the control database is readable by other local users (mode {mode:04o}, token hashes) and could not be restricted: chmod 600 it"
            ),
        }
    }
    Ok(())
}

pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// Opens (creating) the database at `path` and brings its schema up to date. The file and
    /// its -wal and -shm files are its owner's alone (see `restrict_files`).
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let open = |source: rusqlite::Error| StoreError::Open {
            path: path.display().to_string(),
            source: source.into(),
        };
        restrict_files(path)?;
        let mut conn = Connection::open(path).map_err(open)?;
        // WAL: readers (and `tapwire token create --db` while the collector runs) do not block
        // the writer; busy_timeout: a second writer waits instead of failing.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(open)?;
        migrate(&mut conn, MIGRATIONS)?;
        Ok(SqliteStore { conn })
    }

    /// A database in memory, for tests.
    pub fn memory() -> Result<SqliteStore, StoreError> {
        let open = |source: rusqlite::Error| StoreError::Open {
            path: ":memory:".into(),
            source: source.into(),
        };
        let mut conn = Connection::open_in_memory().map_err(open)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open)?;
        migrate(&mut conn, MIGRATIONS)?;
        Ok(SqliteStore { conn })
    }
}

/// Applies the steps of `migrations` the database does not have yet; returns its version.
pub fn migrate(conn: &mut Connection, migrations: &[&str]) -> Result<u32, StoreError> {
    let known = migrations.len() as u32;
    let found: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|source| StoreError::Migration {
            step: 0,
            source: source.into(),
        })?;
    if found > known {
        return Err(StoreError::TooNew { found, known });
    }
    for (i, sql) in migrations.iter().enumerate().skip(found as usize) {
        let step = i as u32 + 1;
        let fail = |source: rusqlite::Error| StoreError::Migration {
            step,
            source: source.into(),
        };
        let tx = conn.transaction().map_err(fail)?;
        tx.execute_batch(sql).map_err(fail)?;
        tx.pragma_update(None, "user_version", step).map_err(fail)?;
        tx.commit().map_err(fail)?;
        tracing::info!(step, "database migrated");
    }
    Ok(known)
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Query(e.into())
    }
}

impl Store for SqliteStore {
    fn begin(&mut self) -> Result<Box<dyn Transaction + '_>, StoreError> {
        Ok(Box::new(SqliteTx(self.conn.transaction()?)))
    }
}

struct SqliteTx<'a>(rusqlite::Transaction<'a>);

pub fn encap_name(e: Encapsulation) -> &'static str {
    e.name()
}

pub fn parse_encap(s: &str) -> Encapsulation {
    match s {
        "erspan-iii" => Encapsulation::ErspanIii,
        "gre" => Encapsulation::Gre,
        _ => Encapsulation::ErspanIi,
    }
}

fn json_col(v: Option<String>) -> Option<Value> {
    v.and_then(|s| serde_json::from_str(&s).ok())
}

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredSession> {
    let encap: String = r.get(1)?;
    Ok(StoredSession {
        name: r.get(0)?,
        encap: parse_encap(&encap),
        mirror_id: r.get(2)?,
        enabled: r.get(3)?,
        filter: r.get(4)?,
        files: json_col(r.get(5)?),
        tap: json_col(r.get(6)?),
        created: r.get(7)?,
        updated: r.get(8)?,
        pin: r.get(9)?,
        owner: r.get(10)?,
    })
}

const SESSION_COLS: &str =
    "name, encap, mirror_id, enabled, filter, files, tap, created_at, updated_at, pin, owner";

fn collector_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredCollector> {
    Ok(StoredCollector {
        name: r.get(0)?,
        incarnation: r.get(1)?,
        advertise: r.get(2)?,
        api_url: r.get(3)?,
        version: r.get(4)?,
        started_ns: r.get(5)?,
        heartbeat_ns: r.get(6)?,
        lease_until_ns: r.get(7)?,
        load: Load {
            pps: r.get(8)?,
            packets: r.get::<_, i64>(9)?.max(0) as u64,
            lost: r.get::<_, i64>(10)?.max(0) as u64,
        },
    })
}

const COLLECTOR_COLS: &str = "name, incarnation, advertise, api_url, version, started_ns, heartbeat_ns, lease_until_ns, pps, packets, lost";

fn file_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CatalogFile> {
    let state: String = r.get(7)?;
    Ok(CatalogFile {
        collector: r.get(0)?,
        session: r.get(1)?,
        path: r.get(2)?,
        first_ns: r.get(3)?,
        last_ns: r.get(4)?,
        packets: r.get::<_, i64>(5)?.max(0) as u64,
        bytes: r.get::<_, i64>(6)?.max(0) as u64,
        state: FileState::parse(&state),
        updated_ns: r.get(8)?,
    })
}

const FILE_COLS: &str =
    "collector, session, path, first_ns, last_ns, packets, bytes, state, updated_ns";

fn flow_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredFlow> {
    let spec: String = r.get(5)?;
    Ok(StoredFlow {
        id: r.get(0)?,
        probe: r.get(1)?,
        name: r.get(2)?,
        session: r.get(3)?,
        enabled: r.get(4)?,
        spec: serde_json::from_str(&spec).unwrap_or(Value::Null),
        created: r.get(6)?,
        updated: r.get(7)?,
    })
}

const FLOW_COLS: &str = "id, probe, name, session, enabled, spec, created_at, updated_at";

fn probe_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredProbe> {
    let interfaces: String = r.get(2)?;
    let flowset: String = r.get(7)?;
    Ok(StoredProbe {
        name: r.get(0)?,
        version: r.get(1)?,
        interfaces: serde_json::from_str(&interfaces).unwrap_or_default(),
        registered: r.get(3)?,
        last_seen: r.get(4)?,
        max_flows: r.get(5)?,
        max_pps: r.get::<_, Option<i64>>(6)?.map(|n| n.max(0) as u64),
        flowset: serde_json::from_str(&flowset).unwrap_or(Value::Null),
        flowset_version: r.get::<_, i64>(8)?.max(0) as u64,
    })
}

const PROBE_COLS: &str = "name, version, interfaces, registered_at, last_seen, max_flows, max_pps, flowset, flowset_version";

fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Transaction for SqliteTx<'_> {
    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        Ok(self.0.commit()?)
    }

    // -----------------------------------------------------------------------------------------
    // The fleet's lock and change counter

    /// One process writes at a time already (SQLite's own lock, waited for up to the busy
    /// timeout).
    fn lock_fleet(&mut self, _wait: bool) -> Result<bool, StoreError> {
        Ok(true)
    }

    fn fleet_version(&mut self) -> Result<i64, StoreError> {
        Ok(self
            .0
            .query_row("SELECT version FROM fleet WHERE id = 1", [], |r| r.get(0))?)
    }

    fn bump_fleet_version(&mut self) -> Result<i64, StoreError> {
        Ok(self.0.query_row(
            "UPDATE fleet SET version = version + 1 WHERE id = 1 RETURNING version",
            [],
            |r| r.get(0),
        )?)
    }

    // -----------------------------------------------------------------------------------------
    // Audit

    fn audit(&mut self, row: &AuditRow<'_>) -> Result<(), StoreError> {
        self.0.execute(
            "INSERT INTO audit (at, token, role, action, target, detail, collector) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![row.at, row.token, row.role.name(), row.action, row.target, row.detail.to_string(), row.collector],
        )?;
        Ok(())
    }

    fn list_audit(&mut self, after: i64, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let mut st = self.0.prepare(
            "SELECT id, at, token, role, action, target, detail, collector FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = st.query_map(params![after, limit], |r| {
            let role: String = r.get(3)?;
            let detail: String = r.get(6)?;
            Ok(AuditEntry {
                id: r.get(0)?,
                at: r.get(1)?,
                token: r.get(2)?,
                role: Role::parse(&role).unwrap_or(Role::Viewer),
                action: r.get(4)?,
                target: r.get(5)?,
                detail: serde_json::from_str(&detail).unwrap_or(Value::Null),
                collector: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // -----------------------------------------------------------------------------------------
    // Tokens

    fn active_tokens(&mut self) -> Result<Vec<ActiveToken>, StoreError> {
        let mut st = self
            .0
            .prepare("SELECT name, role, hash, probe FROM tokens WHERE revoked_at IS NULL")?;
        let rows = st.query_map([], |r| {
            let role: String = r.get(1)?;
            Ok((r.get(0)?, role, r.get(2)?, r.get(3)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, role, hash, probe): (String, String, Vec<u8>, Option<String>) = row?;
            if let Some(role) = Role::parse(&role) {
                out.push(ActiveToken {
                    name,
                    role,
                    probe,
                    hash,
                });
            }
        }
        Ok(out)
    }

    fn list_tokens(&mut self) -> Result<Vec<TokenInfo>, StoreError> {
        let mut st = self.0.prepare(
            "SELECT name, role, created_at, created_by, revoked_at, probe FROM tokens ORDER BY id",
        )?;
        let rows = st.query_map([], |r| {
            let role: String = r.get(1)?;
            Ok(TokenInfo {
                name: r.get(0)?,
                role: Role::parse(&role).unwrap_or(Role::Viewer),
                probe: r.get(5)?,
                created: r.get(2)?,
                created_by: r.get(3)?,
                revoked: r.get(4)?,
                token: None,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn has_admin(&mut self) -> Result<bool, StoreError> {
        Ok(self
            .0
            .query_row(
                "SELECT 1 FROM tokens WHERE role = 'admin' AND revoked_at IS NULL LIMIT 1",
                [],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    fn fleet_secret(&mut self, fresh: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.0.execute(
            "INSERT INTO fleet_secret (id, secret) VALUES (1, ?1) ON CONFLICT (id) DO NOTHING",
            [fresh],
        )?;
        Ok(self
            .0
            .query_row("SELECT secret FROM fleet_secret WHERE id = 1", [], |r| {
                r.get::<_, Vec<u8>>(0)
            })?)
    }

    fn token_exists(&mut self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .0
            .query_row("SELECT 1 FROM tokens WHERE name = ?1", [name], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn insert_token(&mut self, t: &NewToken<'_>) -> Result<(), StoreError> {
        self.0.execute(
            "INSERT INTO tokens (name, role, hash, created_at, created_by, probe) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![t.name, t.role.name(), t.hash, t.created, t.created_by, t.probe],
        )?;
        Ok(())
    }

    fn revoke_token(&mut self, name: &str, at: &str) -> Result<bool, StoreError> {
        let n = self.0.execute(
            "UPDATE tokens SET revoked_at = ?1 WHERE name = ?2 AND revoked_at IS NULL",
            params![at, name],
        )?;
        Ok(n > 0)
    }

    // -----------------------------------------------------------------------------------------
    // Sessions

    fn sessions(&mut self) -> Result<Vec<StoredSession>, StoreError> {
        let mut st = self.0.prepare(&format!(
            "SELECT {SESSION_COLS} FROM sessions ORDER BY name"
        ))?;
        let rows = st.query_map([], session_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn session(&mut self, name: &str) -> Result<Option<StoredSession>, StoreError> {
        Ok(self
            .0
            .query_row(
                &format!("SELECT {SESSION_COLS} FROM sessions WHERE name = ?1"),
                [name],
                session_row,
            )
            .optional()?)
    }

    fn put_session(&mut self, s: &StoredSession) -> Result<(), StoreError> {
        let js = |v: &Option<Value>| v.as_ref().map(Value::to_string);
        self.0.execute(
            "INSERT INTO sessions (name, encap, mirror_id, enabled, filter, files, tap, created_at, updated_at, pin, owner)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (name) DO UPDATE SET encap = ?2, mirror_id = ?3, enabled = ?4, filter = ?5,
                 files = ?6, tap = ?7, updated_at = ?9, pin = ?10, owner = ?11",
            params![
                s.name,
                encap_name(s.encap),
                s.mirror_id,
                s.enabled,
                s.filter,
                js(&s.files),
                js(&s.tap),
                s.created,
                s.updated,
                s.pin,
                s.owner
            ],
        )?;
        Ok(())
    }

    fn delete_session(&mut self, name: &str) -> Result<(), StoreError> {
        self.0
            .execute("DELETE FROM sessions WHERE name = ?1", [name])?;
        Ok(())
    }

    fn used_mirror_ids(&mut self) -> Result<Vec<u32>, StoreError> {
        let mut st = self.0.prepare("SELECT mirror_id FROM sessions")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // -----------------------------------------------------------------------------------------
    // Flows

    fn flows(&mut self) -> Result<Vec<StoredFlow>, StoreError> {
        let mut st = self.0.prepare(&format!(
            "SELECT {FLOW_COLS} FROM flows ORDER BY probe, name"
        ))?;
        let rows = st.query_map([], flow_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn flow(&mut self, id: i64) -> Result<Option<StoredFlow>, StoreError> {
        Ok(self
            .0
            .query_row(
                &format!("SELECT {FLOW_COLS} FROM flows WHERE id = ?1"),
                [id],
                flow_row,
            )
            .optional()?)
    }

    fn insert_flow(&mut self, f: &StoredFlow) -> Result<i64, StoreError> {
        self.0.execute(
            "INSERT INTO flows (probe, name, session, enabled, spec, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                f.probe,
                f.name,
                f.session,
                f.enabled,
                f.spec.to_string(),
                f.created,
                f.updated
            ],
        )?;
        Ok(self.0.last_insert_rowid())
    }

    fn set_flow_enabled(&mut self, id: i64, enabled: bool, at: &str) -> Result<(), StoreError> {
        self.0.execute(
            "UPDATE flows SET enabled = ?1, updated_at = ?2 WHERE id = ?3",
            params![enabled, at, id],
        )?;
        Ok(())
    }

    fn delete_flow(&mut self, id: i64) -> Result<(), StoreError> {
        self.0.execute("DELETE FROM flows WHERE id = ?1", [id])?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Probes

    fn probes(&mut self) -> Result<Vec<StoredProbe>, StoreError> {
        let mut st = self
            .0
            .prepare(&format!("SELECT {PROBE_COLS} FROM probes ORDER BY name"))?;
        let rows = st.query_map([], probe_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn probe(&mut self, name: &str) -> Result<Option<StoredProbe>, StoreError> {
        Ok(self
            .0
            .query_row(
                &format!("SELECT {PROBE_COLS} FROM probes WHERE name = ?1"),
                [name],
                probe_row,
            )
            .optional()?)
    }

    fn ensure_probe(
        &mut self,
        name: &str,
        max_flows: u32,
        max_pps: Option<u64>,
    ) -> Result<(), StoreError> {
        self.0.execute(
            "INSERT INTO probes (name, max_flows, max_pps) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
            params![name, max_flows, max_pps.map(clamp_i64)],
        )?;
        Ok(())
    }

    fn register_probe(
        &mut self,
        name: &str,
        version: &str,
        interfaces: &[String],
        at: &str,
    ) -> Result<(), StoreError> {
        self.0.execute(
            "UPDATE probes SET version = ?2, interfaces = ?3, registered_at = ?4, last_seen = ?4 WHERE name = ?1",
            params![name, version, serde_json::to_string(interfaces).unwrap_or_default(), at],
        )?;
        Ok(())
    }

    fn touch_probe(&mut self, name: &str, at: &str) -> Result<(), StoreError> {
        self.0.execute(
            "UPDATE probes SET last_seen = ?2 WHERE name = ?1",
            params![name, at],
        )?;
        Ok(())
    }

    fn set_probe_limits(
        &mut self,
        name: &str,
        max_flows: u32,
        max_pps: Option<u64>,
    ) -> Result<(), StoreError> {
        self.0.execute(
            "UPDATE probes SET max_flows = ?2, max_pps = ?3 WHERE name = ?1",
            params![name, max_flows, max_pps.map(clamp_i64)],
        )?;
        Ok(())
    }

    fn set_flowset(&mut self, name: &str, flowset: &Value) -> Result<bool, StoreError> {
        let n = self.0.execute(
            "UPDATE probes SET flowset = ?2, flowset_version = flowset_version + 1
             WHERE name = ?1 AND flowset IS NOT ?2",
            params![name, flowset.to_string()],
        )?;
        Ok(n > 0)
    }

    fn delete_probe(&mut self, name: &str) -> Result<(), StoreError> {
        self.0
            .execute("DELETE FROM probes WHERE name = ?1", [name])?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Fleet

    fn set_session_owner(&mut self, name: &str, owner: Option<&str>) -> Result<(), StoreError> {
        self.0.execute(
            "UPDATE sessions SET owner = ?2 WHERE name = ?1",
            params![name, owner],
        )?;
        Ok(())
    }

    fn collectors(&mut self) -> Result<Vec<StoredCollector>, StoreError> {
        let mut st = self.0.prepare(&format!(
            "SELECT {COLLECTOR_COLS} FROM collectors ORDER BY name"
        ))?;
        let rows = st.query_map([], collector_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn put_collector(&mut self, c: &StoredCollector) -> Result<(), StoreError> {
        self.0.execute(
            &format!(
                "INSERT OR REPLACE INTO collectors ({COLLECTOR_COLS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
            ),
            params![
                c.name,
                c.incarnation,
                c.advertise,
                c.api_url,
                c.version,
                c.started_ns,
                c.heartbeat_ns,
                c.lease_until_ns,
                c.load.pps,
                clamp_i64(c.load.packets),
                clamp_i64(c.load.lost)
            ],
        )?;
        Ok(())
    }

    fn heartbeat(&mut self, b: &Heartbeat<'_>) -> Result<bool, StoreError> {
        let n = self.0.execute(
            "UPDATE collectors SET heartbeat_ns = ?3, lease_until_ns = ?4, pps = ?5, packets = ?6,
                 lost = ?7
             WHERE name = ?1 AND incarnation = ?2",
            params![
                b.name,
                b.incarnation,
                b.at_ns,
                b.lease_until_ns,
                b.load.pps,
                clamp_i64(b.load.packets),
                clamp_i64(b.load.lost)
            ],
        )?;
        Ok(n > 0)
    }

    // -----------------------------------------------------------------------------------------
    // Catalog

    fn catalog_put(&mut self, f: &CatalogFile) -> Result<(), StoreError> {
        self.0.execute(
            &format!(
                "INSERT INTO files ({FILE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (collector, path) DO UPDATE SET session = ?2, first_ns = ?4,
                     last_ns = ?5, packets = ?6, bytes = ?7, state = ?8, updated_ns = ?9"
            ),
            params![
                f.collector,
                f.session,
                f.path,
                f.first_ns,
                f.last_ns,
                clamp_i64(f.packets),
                clamp_i64(f.bytes),
                f.state.name(),
                f.updated_ns
            ],
        )?;
        Ok(())
    }

    fn catalog_mark(
        &mut self,
        collector: &str,
        path: &str,
        state: FileState,
        updated_ns: i64,
    ) -> Result<bool, StoreError> {
        let n = self.0.execute(
            "UPDATE files SET state = ?3, updated_ns = ?4 WHERE collector = ?1 AND path = ?2",
            params![collector, path, state.name(), updated_ns],
        )?;
        Ok(n > 0)
    }

    fn catalog_remove(&mut self, collector: &str, path: &str) -> Result<(), StoreError> {
        self.0.execute(
            "DELETE FROM files WHERE collector = ?1 AND path = ?2",
            params![collector, path],
        )?;
        Ok(())
    }

    fn catalog_of(&mut self, collector: &str) -> Result<Vec<CatalogFile>, StoreError> {
        let mut st = self.0.prepare(&format!(
            "SELECT {FILE_COLS} FROM files WHERE collector = ?1 ORDER BY id"
        ))?;
        let rows = st.query_map([collector], file_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn catalog_range(
        &mut self,
        session: &str,
        from_ns: i64,
        to_ns: i64,
    ) -> Result<Vec<CatalogFile>, StoreError> {
        let mut st = self.0.prepare(&format!(
            "SELECT {FILE_COLS} FROM files
             WHERE session = ?1 AND first_ns <= ?3 AND (last_ns >= ?2 OR state = 'open')
             ORDER BY first_ns, id"
        ))?;
        let rows = st.query_map(params![session, from_ns, to_ns], file_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn the_database_and_its_wal_and_shm_files_are_the_owners_alone() {
        let dir = std::env::temp_dir().join(format!("tapwire-store-mode-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let side = |db: &Path, suffix: &str| {
            let mut n = db.as_os_str().to_owned();
            n.push(suffix);
            PathBuf::from(n)
        };
        // A new database: created 0600, and SQLite makes its -wal and -shm files alike.
        let db = dir.join("new.db");
        let s = SqliteStore::open(&db).expect("create");
        for f in [db.clone(), side(&db, "-wal"), side(&db, "-shm")] {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
        drop(s);
        // One an earlier version left readable by everyone (its -wal and -shm too): tightened.
        let old = dir.join("old.db");
        drop(SqliteStore::open(&old).expect("create"));
        let keep_wal = Connection::open(&old).expect("second connection");
        keep_wal
            .pragma_update(None, "journal_mode", "WAL")
            .expect("wal");
        for f in [old.clone(), side(&old, "-wal"), side(&old, "-shm")] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        let s = SqliteStore::open(&old).expect("reopen");
        for f in [old.clone(), side(&old, "-wal"), side(&old, "-shm")] {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
        drop((s, keep_wal));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn migrations_run_once_in_order_and_a_newer_database_is_refused() {
        let mut conn = Connection::open_in_memory().expect("db");
        let steps = [
            "CREATE TABLE a (x INTEGER)",
            "ALTER TABLE a ADD COLUMN y INTEGER",
        ];
        assert_eq!(migrate(&mut conn, &steps[..1]).expect("step 1"), 1);
        conn.execute("INSERT INTO a (x) VALUES (1)", [])
            .expect("row");
        // Step 2 only: step 1 would fail ("table a already exists") if it ran again.
        assert_eq!(migrate(&mut conn, &steps).expect("step 2"), 2);
        assert_eq!(migrate(&mut conn, &steps).expect("nothing to do"), 2);
        let y: Option<i64> = conn
            .query_row("SELECT y FROM a", [], |r| r.get(0))
            .expect("column y");
        assert_eq!(y, None);
        match migrate(&mut conn, &steps[..1]) {
            Err(StoreError::TooNew { found: 2, known: 1 }) => {}
            other => panic!("expected TooNew, got {other:?}"),
        }
    }

    #[test]
    fn a_failing_migration_leaves_the_version_where_it_was() {
        let mut conn = Connection::open_in_memory().expect("db");
        let steps = ["CREATE TABLE a (x INTEGER)", "CREATE TABLE b (x); SELEC"];
        assert!(matches!(
            migrate(&mut conn, &steps),
            Err(StoreError::Migration { step: 2, .. })
        ));
        let v: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(v, 1);
        // Table b of the failed step was rolled back with it.
        assert!(conn.prepare("SELECT x FROM b").is_err());
    }

    #[test]
    fn the_real_schema_applies_and_a_file_database_reopens() {
        let dir = std::env::temp_dir().join(format!("tapwire-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("t.db");
        drop(SqliteStore::open(&path).expect("create"));
        let s = SqliteStore::open(&path).expect("reopen");
        let v: u32 = s
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(v as usize, MIGRATIONS.len());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
