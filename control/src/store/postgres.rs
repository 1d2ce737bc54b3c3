//! The control plane's state in PostgreSQL, shared by a fleet of collectors.
//!
//! Migrations are an ordered list, step for step the same as SQLite's ([`super::sqlite`]);
//! `tapwire_schema.version` counts those applied. Opening applies the missing ones in ONE
//! transaction that first takes a transaction-level advisory lock
//! (`pg_advisory_xact_lock`): two collectors starting together migrate once (the second
//! waits, then finds nothing to do), a failing step leaves nothing of any step behind, and a
//! database newer than this binary is refused. Transaction-level locks only (here and in
//! [`Transaction::lock_fleet`]): a pooler in transaction mode (PgBouncer) hands each
//! transaction any server connection, which breaks session-level locks.
//!
//! The connection is made again when it was lost, at most once a second
//! ([`RECONNECT_EVERY`]); meanwhile every call fails at once with
//! [`StoreError::Unavailable`]. TLS (rustls, ring) when the URL asks for it with `sslmode`
//! (`prefer`, `require`, `verify-ca`, `verify-full`): the server's certificate is always
//! verified, against `sslrootcert` when given, else the public roots.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use postgres::types::ToSql;
use serde_json::Value;
use tapwire_api_types::control::{AuditEntry, Role, TokenInfo};
use tokio_postgres::config::SslMode;

use super::sqlite::{encap_name, parse_encap};
use super::{
    ActiveToken, AuditRow, CatalogFile, FileState, Heartbeat, Listener, Load, NewToken, Store,
    StoreError, StoredCollector, StoredFlow, StoredProbe, StoredSession, Transaction,
};

/// The schema, one step per entry, in the same order as [`super::sqlite::MIGRATIONS`]; never
/// edit a released step, add one.
pub const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE tokens (
        id BIGSERIAL PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL CHECK (role IN ('probe', 'viewer', 'operator', 'admin')),
        hash BYTEA NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        created_by TEXT NOT NULL,
        revoked_at TEXT
    );
    CREATE TABLE sessions (
        name TEXT PRIMARY KEY,
        mirror_id BIGINT NOT NULL UNIQUE CHECK (mirror_id BETWEEN 1 AND 1023),
        encap TEXT NOT NULL,
        enabled BOOLEAN NOT NULL,
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
        max_flows BIGINT NOT NULL,
        max_pps BIGINT,
        flowset TEXT NOT NULL DEFAULT '[]',
        flowset_version BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE flows (
        id BIGSERIAL PRIMARY KEY,
        probe TEXT NOT NULL REFERENCES probes(name),
        name TEXT NOT NULL,
        session TEXT NOT NULL REFERENCES sessions(name),
        enabled BOOLEAN NOT NULL,
        spec TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (probe, name)
    );
    CREATE TABLE audit (
        id BIGSERIAL PRIMARY KEY,
        at TEXT NOT NULL,
        token TEXT NOT NULL,
        role TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL
    );",
    // 2: a probe token is bound to one probe. (SQLite's step 2 also takes commands and paths
    // out of stored sessions; no PostgreSQL database held sessions before this step.)
    "ALTER TABLE tokens ADD COLUMN probe TEXT;",
    // 3: the fleet.
    "ALTER TABLE sessions ADD COLUMN pin TEXT;
    ALTER TABLE sessions ADD COLUMN owner TEXT;
    ALTER TABLE audit ADD COLUMN collector TEXT;
    CREATE TABLE collectors (
        name TEXT PRIMARY KEY,
        incarnation TEXT NOT NULL,
        advertise TEXT,
        api_url TEXT,
        version TEXT NOT NULL,
        started_ns BIGINT NOT NULL,
        heartbeat_ns BIGINT NOT NULL,
        lease_until_ns BIGINT NOT NULL,
        pps DOUBLE PRECISION NOT NULL DEFAULT 0,
        packets BIGINT NOT NULL DEFAULT 0,
        lost BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE fleet (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version BIGINT NOT NULL
    );
    INSERT INTO fleet (id, version) VALUES (1, 0);",
    // 4: the catalog of capture files.
    "CREATE TABLE files (
        id BIGSERIAL PRIMARY KEY,
        collector TEXT NOT NULL,
        session TEXT NOT NULL,
        path TEXT NOT NULL,
        first_ns BIGINT,
        last_ns BIGINT,
        packets BIGINT NOT NULL DEFAULT 0,
        bytes BIGINT NOT NULL DEFAULT 0,
        state TEXT NOT NULL CHECK (state IN ('open', 'closed', 'deleted')),
        updated_ns BIGINT NOT NULL,
        UNIQUE (collector, path)
    );
    CREATE INDEX files_session_time ON files (session, first_ns);",
    // 5: the fleet's secret, from which collectors sign their short-lived peer tokens.
    "CREATE TABLE fleet_secret (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        secret BYTEA NOT NULL
    );",
];

/// The key of the advisory lock migrations run under ("tapwire" in ASCII).
const MIGRATION_LOCK: i64 = 0x0074_6170_7769_7265;
/// The channel commits are announced on; the payload is the fleet's change number only.
pub const CHANNEL: &str = "tapwire";
/// A lost connection is tried again at most this often.
pub const RECONNECT_EVERY: Duration = Duration::from_secs(1);
/// Unless the URL says otherwise: how long a connection attempt may take, and how long sent
/// data may stay unacknowledged before the connection counts as lost.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// The URL with its password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .map(|r| ("postgres://", r))
        .or_else(|| {
            url.strip_prefix("postgresql://")
                .map(|r| ("postgresql://", r))
        })
    {
        let (scheme, rest) = rest;
        let (auth, tail) = match rest.find('@') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => return url.to_string(),
        };
        let auth = match auth.split_once(':') {
            Some((user, _)) => format!("{user}:***"),
            None => auth.to_string(),
        };
        let tail = redact_params(tail, '&');
        return format!("{scheme}{auth}{tail}");
    }
    redact_params(url, ' ')
}

/// `password=...` in a query string or keyword list, replaced.
fn redact_params(s: &str, sep: char) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("password=") {
        let before_ok = i == 0 || matches!(rest.as_bytes()[i - 1], b'?' | b'&' | b' ');
        out.push_str(&rest[..i + "password=".len()]);
        rest = &rest[i + "password=".len()..];
        if before_ok {
            let end = rest.find(sep).unwrap_or(rest.len());
            out.push_str("***");
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

/// The connection settings: the URL as tokio-postgres reads it, and how to do TLS.
#[derive(Clone)]
pub struct Settings {
    /// `sslrootcert`, for the errors that concern it.
    rootcert: Option<String>,
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// The URL without its password.
    shown: String,
}

impl Settings {
    /// Reads a `postgres://` URL or keyword list. `sslmode` (libpq's values) and
    /// `sslrootcert` are taken out and handled here: tokio-postgres knows only `disable`,
    /// `prefer` and `require`, and not `sslrootcert`.
    pub fn parse(url: &str) -> Result<Settings, StoreError> {
        let shown = redact(url);
        let bad = |e: String| StoreError::Open {
            path: shown.clone(),
            source: e.into(),
        };
        let (rest, mode, rootcert) = take_tls_params(url);
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| bad(e.to_string()))?;
        if config.get_hosts().is_empty() {
            return Err(bad("no host: postgres://USER@HOST:PORT/DB".into()));
        }
        if config.get_dbname().is_none() {
            return Err(bad("no database name: postgres://USER@HOST:PORT/DB".into()));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
        config.keepalives_idle(Duration::from_secs(10));
        if config.get_application_name().is_none() {
            config.application_name("tapwire");
        }
        let tls = match mode.as_deref() {
            None | Some("disable") | Some("allow") => {
                config.ssl_mode(SslMode::Disable);
                None
            }
            Some(m @ ("prefer" | "require" | "verify-ca" | "verify-full")) => {
                config.ssl_mode(if m == "prefer" {
                    SslMode::Prefer
                } else {
                    SslMode::Require
                });
                Some(tls_connector(rootcert.as_deref()).map_err(bad)?)
            }
            Some(other) => {
                return Err(bad(format!(
                    "sslmode={other}: use disable, prefer, require, verify-ca or verify-full"
                )));
            }
        };
        Ok(Settings {
            config,
            tls,
            shown,
            rootcert,
        })
    }

    /// The URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Why a connection could not be made, with what to do for the TLS problems whose own
    /// words (rustls', tokio-postgres') do not say it.
    fn describe_connect(&self, e: &postgres::Error) -> String {
        let text = describe(e);
        let hint = if text.contains("UnknownIssuer") {
            match &self.rootcert {
                Some(p) => format!(
                    "the server's certificate is not signed by a CA in sslrootcert={p}"
                ),
                None => "the server's certificate is not signed by a public CA: give its CA with sslrootcert=FILE".into(),
            }
        } else if text.contains("NotValidForName") {
            "the server's certificate does not name the host in the URL (verify-full and verify-ca both check it)".into()
        } else if text.contains("server does not support TLS") {
            "the server does not support TLS, which this URL's sslmode requires: turn ssl on in the server, or use sslmode=prefer or disable".into()
        } else {
            return text;
        };
        format!("{text} ({hint})")
    }

    fn connect(&self) -> Result<postgres::Client, postgres::Error> {
        let config = postgres::Config::from(self.config.clone());
        match &self.tls {
            Some(tls) => config.connect(tls.clone()),
            None => config.connect(tokio_postgres::NoTls),
        }
    }
}

/// Splits libpq's TLS parameters off a URL's query string or a keyword list.
fn take_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let (mut mode, mut rootcert) = (None, None);
    let mut take = |k: &str, v: &str| match k {
        "sslmode" => {
            mode = Some(v.to_string());
            true
        }
        "sslrootcert" => {
            rootcert = Some(v.to_string());
            true
        }
        _ => false,
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_string(), None, None);
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                !take(k, v)
            })
            .collect();
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        (rest, mode, rootcert)
    } else {
        let kept: Vec<&str> = url
            .split_whitespace()
            .filter(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                !take(k, v)
            })
            .collect();
        (kept.join(" "), mode, rootcert)
    }
}

/// rustls over ring, trusting `rootcert` (PEM) or else the public roots.
fn tls_connector(
    rootcert: Option<&str>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match rootcert {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("sslrootcert={path}: {e}"))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("sslrootcert={path}: {e}"))?;
            if certs.is_empty() {
                return Err(format!("sslrootcert={path}: no certificate in it"));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("sslrootcert={path}: {e}"))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// A PostgreSQL error as the store's: the connection's problems are
/// [`StoreError::Unavailable`] (it may come back), the server's refusals are queries'.
fn pg_err(e: postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        // Class 08 (connection exception), 57 (operator intervention: the server shuts
        // down, restarts or ends the session) and 53 (out of connections, memory, disk) are
        // the server being away, not the request being wrong.
        let class = &db.code().code()[..2];
        if matches!(class, "08" | "57" | "53") || e.is_closed() {
            return StoreError::Unavailable(describe(&e));
        }
        return StoreError::Query(describe(&e).into());
    }
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io || e.to_string().contains("timed out") {
        StoreError::Unavailable(describe(&e))
    } else {
        StoreError::Query(describe(&e).into())
    }
}

/// The server's message (and its detail) or the client's, with its cause.
pub fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return match db.detail() {
            Some(d) => format!("{}: {d}", db.message()),
            None => db.message().to_string(),
        };
    }
    match std::error::Error::source(e) {
        Some(s) if !e.to_string().contains(&s.to_string()) => format!("{e}: {s}"),
        _ => e.to_string(),
    }
}

pub struct PgStore {
    settings: Settings,
    client: Option<postgres::Client>,
    /// When the last connection attempt failed.
    failed_at: Option<Instant>,
}

impl PgStore {
    /// Connects and brings the schema up to date. Every failure here is final (a wrong URL,
    /// password, an unreachable server, a schema too new or a step that fails).
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let settings = Settings::parse(url)?;
        let mut client = settings.connect().map_err(|e| StoreError::Open {
            path: settings.shown.clone(),
            source: settings.describe_connect(&e).into(),
        })?;
        migrate(&mut client, MIGRATIONS)?;
        Ok(PgStore {
            settings,
            client: Some(client),
            failed_at: None,
        })
    }

    /// The connection, made again if it was lost (at most once per [`RECONNECT_EVERY`]).
    fn client(&mut self) -> Result<&mut postgres::Client, StoreError> {
        if self
            .client
            .as_ref()
            .is_some_and(postgres::Client::is_closed)
        {
            tracing::warn!(db = self.settings.shown, "lost the database connection");
            self.client = None;
        }
        if self.client.is_none() {
            if self
                .failed_at
                .is_some_and(|t| t.elapsed() < RECONNECT_EVERY)
            {
                return Err(StoreError::Unavailable(
                    "not connected; trying again shortly".into(),
                ));
            }
            match self.settings.connect() {
                Ok(c) => {
                    tracing::info!(db = self.settings.shown, "connected to the database");
                    self.failed_at = None;
                    self.client = Some(c);
                }
                Err(e) => {
                    self.failed_at = Some(Instant::now());
                    return Err(StoreError::Unavailable(self.settings.describe_connect(&e)));
                }
            }
        }
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("not connected".into()))
    }
}

/// Applies the steps of `migrations` the database does not have, all in one transaction
/// under the migration lock; returns the schema version.
pub fn migrate(client: &mut postgres::Client, migrations: &[&str]) -> Result<u32, StoreError> {
    let known = migrations.len() as u32;
    let fail = |step: u32| {
        move |e: postgres::Error| StoreError::Migration {
            step,
            source: describe(&e).into(),
        }
    };
    let mut tx = client.transaction().map_err(fail(0))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(fail(0))?;
    // `IF NOT EXISTS` of a table that exists is a NOTICE, logged at every start otherwise.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .map_err(fail(0))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tapwire_schema (version INTEGER NOT NULL);
         INSERT INTO tapwire_schema (version)
             SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM tapwire_schema);",
    )
    .map_err(fail(0))?;
    let found: i32 = tx
        .query_one("SELECT version FROM tapwire_schema", &[])
        .map_err(fail(0))?
        .get(0);
    let found = found.max(0) as u32;
    if found > known {
        return Err(StoreError::TooNew { found, known });
    }
    for (i, sql) in migrations.iter().enumerate().skip(found as usize) {
        let step = i as u32 + 1;
        tx.batch_execute(sql).map_err(fail(step))?;
        tx.execute("UPDATE tapwire_schema SET version = $1", &[&(step as i32)])
            .map_err(fail(step))?;
    }
    tx.commit().map_err(fail(known))?;
    if found < known {
        tracing::info!(from = found, to = known, "database migrated");
    }
    Ok(known)
}

impl Store for PgStore {
    fn begin(&mut self) -> Result<Box<dyn Transaction + '_>, StoreError> {
        let client = self.client()?;
        let tx = client.transaction().map_err(pg_err)?;
        Ok(Box::new(PgTx(tx)))
    }

    fn listener(&self) -> Option<Box<dyn Listener>> {
        Some(Box::new(PgListener::spawn(self.settings.clone())))
    }
}

/// LISTEN on its own connection and thread (a small tokio runtime): notifications are
/// handed over a channel as they arrive; a lost connection is made again, and counts as a
/// notification (changes may have been missed meanwhile).
struct PgListener {
    rx: mpsc::Receiver<()>,
}

impl PgListener {
    fn spawn(settings: Settings) -> PgListener {
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("tapwire-listen".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "database listener: no runtime");
                        return;
                    }
                };
                rt.block_on(listen(settings, tx));
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "database listener thread");
        }
        PgListener { rx }
    }
}

impl Listener for PgListener {
    fn wait(&mut self, timeout: Duration) -> Result<bool, StoreError> {
        match self.rx.recv_timeout(timeout) {
            Ok(()) => {
                // Several at once are one wake-up.
                while self.rx.try_recv().is_ok() {}
                Ok(true)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(false),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(StoreError::Unavailable(
                "the database listener stopped".into(),
            )),
        }
    }
}

async fn listen(settings: Settings, wake: mpsc::Sender<()>) {
    let mut first = true;
    loop {
        let connected = match &settings.tls {
            Some(tls) => listen_once(&settings.config, tls.clone(), &wake, first).await,
            None => listen_once(&settings.config, tokio_postgres::NoTls, &wake, first).await,
        };
        if wake.send(()).is_err() {
            return;
        }
        match connected {
            Ok(()) => tracing::warn!(db = settings.shown, "database listener: connection lost"),
            Err(e) => {
                tracing::debug!(db = settings.shown, error = %e, "database listener: cannot connect")
            }
        }
        first = false;
        tokio::time::sleep(RECONNECT_EVERY).await;
    }
}

/// One connection: LISTEN, then every notification until it ends. `Err` when it could not
/// be made.
async fn listen_once<T>(
    config: &tokio_postgres::Config,
    tls: T,
    wake: &mpsc::Sender<()>,
    first: bool,
) -> Result<(), String>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut conn) = config.connect(tls).await.map_err(|e| e.to_string())?;
    let (msgs_tx, mut msgs) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                    if msgs_tx.send(()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
        driver.abort();
        return Err(e.to_string());
    }
    if !first {
        tracing::info!("database listener: connected again");
        // Changes committed while it was away were not announced to it.
        let _ = wake.send(());
    }
    while msgs.recv().await.is_some() {
        if wake.send(()).is_err() {
            break;
        }
    }
    driver.abort();
    Ok(())
}

struct PgTx<'a>(postgres::Transaction<'a>);

impl PgTx<'_> {
    fn exec(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        self.0.execute(sql, params).map_err(pg_err)
    }

    fn rows(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, StoreError> {
        self.0.query(sql, params).map_err(pg_err)
    }

    fn row(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<postgres::Row>, StoreError> {
        self.0.query_opt(sql, params).map_err(pg_err)
    }
}

fn get<'a, T: postgres::types::FromSql<'a>>(
    r: &'a postgres::Row,
    i: usize,
) -> Result<T, StoreError> {
    r.try_get(i).map_err(pg_err)
}

fn u64_of(n: i64) -> u64 {
    n.max(0) as u64
}

fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn json_col(v: Option<String>) -> Option<Value> {
    v.and_then(|s| serde_json::from_str(&s).ok())
}

const SESSION_COLS: &str =
    "name, encap, mirror_id, enabled, filter, files, tap, created_at, updated_at, pin, owner";

fn session_row(r: &postgres::Row) -> Result<StoredSession, StoreError> {
    let encap: String = get(r, 1)?;
    Ok(StoredSession {
        name: get(r, 0)?,
        encap: parse_encap(&encap),
        mirror_id: get::<i64>(r, 2)?.clamp(0, u32::MAX.into()) as u32,
        enabled: get(r, 3)?,
        filter: get(r, 4)?,
        files: json_col(get(r, 5)?),
        tap: json_col(get(r, 6)?),
        created: get(r, 7)?,
        updated: get(r, 8)?,
        pin: get(r, 9)?,
        owner: get(r, 10)?,
    })
}

const FLOW_COLS: &str = "id, probe, name, session, enabled, spec, created_at, updated_at";

fn flow_row(r: &postgres::Row) -> Result<StoredFlow, StoreError> {
    let spec: String = get(r, 5)?;
    Ok(StoredFlow {
        id: get(r, 0)?,
        probe: get(r, 1)?,
        name: get(r, 2)?,
        session: get(r, 3)?,
        enabled: get(r, 4)?,
        spec: serde_json::from_str(&spec).unwrap_or(Value::Null),
        created: get(r, 6)?,
        updated: get(r, 7)?,
    })
}

const PROBE_COLS: &str = "name, version, interfaces, registered_at, last_seen, max_flows, max_pps, flowset, flowset_version";

fn probe_row(r: &postgres::Row) -> Result<StoredProbe, StoreError> {
    let interfaces: String = get(r, 2)?;
    let flowset: String = get(r, 7)?;
    Ok(StoredProbe {
        name: get(r, 0)?,
        version: get(r, 1)?,
        interfaces: serde_json::from_str(&interfaces).unwrap_or_default(),
        registered: get(r, 3)?,
        last_seen: get(r, 4)?,
        max_flows: get::<i64>(r, 5)?.clamp(0, u32::MAX.into()) as u32,
        max_pps: get::<Option<i64>>(r, 6)?.map(u64_of),
        flowset: serde_json::from_str(&flowset).unwrap_or(Value::Null),
        flowset_version: u64_of(get(r, 8)?),
    })
}

const COLLECTOR_COLS: &str = "name, incarnation, advertise, api_url, version, started_ns, heartbeat_ns, lease_until_ns, pps, packets, lost";

fn collector_row(r: &postgres::Row) -> Result<StoredCollector, StoreError> {
    Ok(StoredCollector {
        name: get(r, 0)?,
        incarnation: get(r, 1)?,
        advertise: get(r, 2)?,
        api_url: get(r, 3)?,
        version: get(r, 4)?,
        started_ns: get(r, 5)?,
        heartbeat_ns: get(r, 6)?,
        lease_until_ns: get(r, 7)?,
        load: Load {
            pps: get(r, 8)?,
            packets: u64_of(get(r, 9)?),
            lost: u64_of(get(r, 10)?),
        },
    })
}

const FILE_COLS: &str =
    "collector, session, path, first_ns, last_ns, packets, bytes, state, updated_ns";

fn file_row(r: &postgres::Row) -> Result<CatalogFile, StoreError> {
    let state: String = get(r, 7)?;
    Ok(CatalogFile {
        collector: get(r, 0)?,
        session: get(r, 1)?,
        path: get(r, 2)?,
        first_ns: get(r, 3)?,
        last_ns: get(r, 4)?,
        packets: u64_of(get(r, 5)?),
        bytes: u64_of(get(r, 6)?),
        state: FileState::parse(&state),
        updated_ns: get(r, 8)?,
    })
}

fn all<T>(
    rows: Vec<postgres::Row>,
    f: impl Fn(&postgres::Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(f).collect()
}

impl Transaction for PgTx<'_> {
    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.0.commit().map_err(pg_err)
    }

    fn lock_fleet(&mut self, wait: bool) -> Result<bool, StoreError> {
        let sql = if wait {
            "SELECT version FROM fleet WHERE id = 1 FOR UPDATE"
        } else {
            "SELECT version FROM fleet WHERE id = 1 FOR UPDATE SKIP LOCKED"
        };
        Ok(self.row(sql, &[])?.is_some())
    }

    fn fleet_version(&mut self) -> Result<i64, StoreError> {
        let r = self.row("SELECT version FROM fleet WHERE id = 1", &[])?;
        r.map_or(Ok(0), |r| get(&r, 0))
    }

    fn bump_fleet_version(&mut self) -> Result<i64, StoreError> {
        let r = self.row(
            "UPDATE fleet SET version = version + 1 WHERE id = 1 RETURNING version",
            &[],
        )?;
        let v: i64 = r.map_or(Ok(0), |r| get(&r, 0))?;
        // Delivered at commit, to every listening collector (this one too).
        self.exec("SELECT pg_notify($1, $2)", &[&CHANNEL, &v.to_string()])?;
        Ok(v)
    }

    // -----------------------------------------------------------------------------------------
    // Audit

    fn audit(&mut self, row: &AuditRow<'_>) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO audit (at, token, role, action, target, detail, collector)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &row.at,
                &row.token,
                &row.role.name(),
                &row.action,
                &row.target,
                &row.detail.to_string(),
                &row.collector,
            ],
        )?;
        Ok(())
    }

    fn list_audit(&mut self, after: i64, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = self.rows(
            "SELECT id, at, token, role, action, target, detail, collector FROM audit
             WHERE id > $1 ORDER BY id LIMIT $2",
            &[&after, &i64::from(limit)],
        )?;
        all(rows, |r| {
            let role: String = get(r, 3)?;
            let detail: String = get(r, 6)?;
            Ok(AuditEntry {
                id: get(r, 0)?,
                at: get(r, 1)?,
                token: get(r, 2)?,
                role: Role::parse(&role).unwrap_or(Role::Viewer),
                action: get(r, 4)?,
                target: get(r, 5)?,
                detail: serde_json::from_str(&detail).unwrap_or(Value::Null),
                collector: get(r, 7)?,
            })
        })
    }

    // -----------------------------------------------------------------------------------------
    // Tokens

    fn active_tokens(&mut self) -> Result<Vec<ActiveToken>, StoreError> {
        let rows = self.rows(
            "SELECT name, role, hash, probe FROM tokens WHERE revoked_at IS NULL",
            &[],
        )?;
        let mut out = Vec::new();
        for r in &rows {
            let role: String = get(r, 1)?;
            if let Some(role) = Role::parse(&role) {
                out.push(ActiveToken {
                    name: get(r, 0)?,
                    role,
                    hash: get(r, 2)?,
                    probe: get(r, 3)?,
                });
            }
        }
        Ok(out)
    }

    fn list_tokens(&mut self) -> Result<Vec<TokenInfo>, StoreError> {
        let rows = self.rows(
            "SELECT name, role, created_at, created_by, revoked_at, probe FROM tokens ORDER BY id",
            &[],
        )?;
        all(rows, |r| {
            let role: String = get(r, 1)?;
            Ok(TokenInfo {
                name: get(r, 0)?,
                role: Role::parse(&role).unwrap_or(Role::Viewer),
                created: get(r, 2)?,
                created_by: get(r, 3)?,
                revoked: get(r, 4)?,
                probe: get(r, 5)?,
                token: None,
            })
        })
    }

    fn has_admin(&mut self) -> Result<bool, StoreError> {
        Ok(self
            .row(
                "SELECT 1 FROM tokens WHERE role = 'admin' AND revoked_at IS NULL LIMIT 1",
                &[],
            )?
            .is_some())
    }

    fn fleet_secret(&mut self, fresh: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.exec(
            "INSERT INTO fleet_secret (id, secret) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
            &[&fresh],
        )?;
        let row = self.row("SELECT secret FROM fleet_secret WHERE id = 1", &[])?;
        match row {
            Some(r) => get(&r, 0),
            None => Err(StoreError::Query("the fleet secret was not stored".into())),
        }
    }

    fn token_exists(&mut self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .row("SELECT 1 FROM tokens WHERE name = $1", &[&name])?
            .is_some())
    }

    fn insert_token(&mut self, t: &NewToken<'_>) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO tokens (name, role, hash, created_at, created_by, probe) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&t.name, &t.role.name(), &t.hash, &t.created, &t.created_by, &t.probe],
        )?;
        Ok(())
    }

    fn revoke_token(&mut self, name: &str, at: &str) -> Result<bool, StoreError> {
        let n = self.exec(
            "UPDATE tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL",
            &[&at, &name],
        )?;
        Ok(n > 0)
    }

    // -----------------------------------------------------------------------------------------
    // Sessions

    fn sessions(&mut self) -> Result<Vec<StoredSession>, StoreError> {
        let rows = self.rows(
            &format!("SELECT {SESSION_COLS} FROM sessions ORDER BY name"),
            &[],
        )?;
        all(rows, session_row)
    }

    fn session(&mut self, name: &str) -> Result<Option<StoredSession>, StoreError> {
        self.row(
            &format!("SELECT {SESSION_COLS} FROM sessions WHERE name = $1"),
            &[&name],
        )?
        .as_ref()
        .map(session_row)
        .transpose()
    }

    fn put_session(&mut self, s: &StoredSession) -> Result<(), StoreError> {
        let js = |v: &Option<Value>| v.as_ref().map(Value::to_string);
        self.exec(
            "INSERT INTO sessions (name, encap, mirror_id, enabled, filter, files, tap, created_at,
                 updated_at, pin, owner)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (name) DO UPDATE SET encap = $2, mirror_id = $3, enabled = $4,
                 filter = $5, files = $6, tap = $7, updated_at = $9, pin = $10, owner = $11",
            &[
                &s.name,
                &encap_name(s.encap),
                &i64::from(s.mirror_id),
                &s.enabled,
                &s.filter,
                &js(&s.files),
                &js(&s.tap),
                &s.created,
                &s.updated,
                &s.pin,
                &s.owner,
            ],
        )?;
        Ok(())
    }

    fn delete_session(&mut self, name: &str) -> Result<(), StoreError> {
        self.exec("DELETE FROM sessions WHERE name = $1", &[&name])?;
        Ok(())
    }

    fn used_mirror_ids(&mut self) -> Result<Vec<u32>, StoreError> {
        let rows = self.rows("SELECT mirror_id FROM sessions", &[])?;
        all(rows, |r| {
            Ok(get::<i64>(r, 0)?.clamp(0, u32::MAX.into()) as u32)
        })
    }

    // -----------------------------------------------------------------------------------------
    // Flows

    fn flows(&mut self) -> Result<Vec<StoredFlow>, StoreError> {
        let rows = self.rows(
            &format!("SELECT {FLOW_COLS} FROM flows ORDER BY probe, name"),
            &[],
        )?;
        all(rows, flow_row)
    }

    fn flow(&mut self, id: i64) -> Result<Option<StoredFlow>, StoreError> {
        self.row(
            &format!("SELECT {FLOW_COLS} FROM flows WHERE id = $1"),
            &[&id],
        )?
        .as_ref()
        .map(flow_row)
        .transpose()
    }

    fn insert_flow(&mut self, f: &StoredFlow) -> Result<i64, StoreError> {
        let r = self.row(
            "INSERT INTO flows (probe, name, session, enabled, spec, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            &[
                &f.probe,
                &f.name,
                &f.session,
                &f.enabled,
                &f.spec.to_string(),
                &f.created,
                &f.updated,
            ],
        )?;
        r.map_or(Ok(0), |r| get(&r, 0))
    }

    fn set_flow_enabled(&mut self, id: i64, enabled: bool, at: &str) -> Result<(), StoreError> {
        self.exec(
            "UPDATE flows SET enabled = $1, updated_at = $2 WHERE id = $3",
            &[&enabled, &at, &id],
        )?;
        Ok(())
    }

    fn delete_flow(&mut self, id: i64) -> Result<(), StoreError> {
        self.exec("DELETE FROM flows WHERE id = $1", &[&id])?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Probes

    fn probes(&mut self) -> Result<Vec<StoredProbe>, StoreError> {
        let rows = self.rows(
            &format!("SELECT {PROBE_COLS} FROM probes ORDER BY name"),
            &[],
        )?;
        all(rows, probe_row)
    }

    fn probe(&mut self, name: &str) -> Result<Option<StoredProbe>, StoreError> {
        self.row(
            &format!("SELECT {PROBE_COLS} FROM probes WHERE name = $1"),
            &[&name],
        )?
        .as_ref()
        .map(probe_row)
        .transpose()
    }

    fn ensure_probe(
        &mut self,
        name: &str,
        max_flows: u32,
        max_pps: Option<u64>,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO probes (name, max_flows, max_pps) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING",
            &[&name, &i64::from(max_flows), &max_pps.map(i64_of)],
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
        let interfaces = serde_json::to_string(interfaces).unwrap_or_default();
        self.exec(
            "UPDATE probes SET version = $2, interfaces = $3, registered_at = $4, last_seen = $4
             WHERE name = $1",
            &[&name, &version, &interfaces, &at],
        )?;
        Ok(())
    }

    fn touch_probe(&mut self, name: &str, at: &str) -> Result<(), StoreError> {
        self.exec(
            "UPDATE probes SET last_seen = $2 WHERE name = $1",
            &[&name, &at],
        )?;
        Ok(())
    }

    fn set_probe_limits(
        &mut self,
        name: &str,
        max_flows: u32,
        max_pps: Option<u64>,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE probes SET max_flows = $2, max_pps = $3 WHERE name = $1",
            &[&name, &i64::from(max_flows), &max_pps.map(i64_of)],
        )?;
        Ok(())
    }

    fn set_flowset(&mut self, name: &str, flowset: &Value) -> Result<bool, StoreError> {
        let n = self.exec(
            "UPDATE probes SET flowset = $2, flowset_version = flowset_version + 1
             WHERE name = $1 AND flowset IS DISTINCT FROM $2",
            &[&name, &flowset.to_string()],
        )?;
        Ok(n > 0)
    }

    fn delete_probe(&mut self, name: &str) -> Result<(), StoreError> {
        self.exec("DELETE FROM probes WHERE name = $1", &[&name])?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Fleet

    fn set_session_owner(&mut self, name: &str, owner: Option<&str>) -> Result<(), StoreError> {
        self.exec(
            "UPDATE sessions SET owner = $2 WHERE name = $1",
            &[&name, &owner],
        )?;
        Ok(())
    }

    fn collectors(&mut self) -> Result<Vec<StoredCollector>, StoreError> {
        let rows = self.rows(
            &format!("SELECT {COLLECTOR_COLS} FROM collectors ORDER BY name"),
            &[],
        )?;
        all(rows, collector_row)
    }

    fn put_collector(&mut self, c: &StoredCollector) -> Result<(), StoreError> {
        self.exec(
            &format!(
                "INSERT INTO collectors ({COLLECTOR_COLS})
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (name) DO UPDATE SET incarnation = $2, advertise = $3, api_url = $4,
                     version = $5, started_ns = $6, heartbeat_ns = $7, lease_until_ns = $8,
                     pps = $9, packets = $10, lost = $11"
            ),
            &[
                &c.name,
                &c.incarnation,
                &c.advertise,
                &c.api_url,
                &c.version,
                &c.started_ns,
                &c.heartbeat_ns,
                &c.lease_until_ns,
                &c.load.pps,
                &i64_of(c.load.packets),
                &i64_of(c.load.lost),
            ],
        )?;
        Ok(())
    }

    fn heartbeat(&mut self, b: &Heartbeat<'_>) -> Result<bool, StoreError> {
        let n = self.exec(
            "UPDATE collectors SET heartbeat_ns = $3, lease_until_ns = $4, pps = $5, packets = $6,
                 lost = $7
             WHERE name = $1 AND incarnation = $2",
            &[
                &b.name,
                &b.incarnation,
                &b.at_ns,
                &b.lease_until_ns,
                &b.load.pps,
                &i64_of(b.load.packets),
                &i64_of(b.load.lost),
            ],
        )?;
        Ok(n > 0)
    }

    // -----------------------------------------------------------------------------------------
    // Catalog

    fn catalog_put(&mut self, f: &CatalogFile) -> Result<(), StoreError> {
        self.exec(
            &format!(
                "INSERT INTO files ({FILE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (collector, path) DO UPDATE SET session = $2, first_ns = $4,
                     last_ns = $5, packets = $6, bytes = $7, state = $8, updated_ns = $9"
            ),
            &[
                &f.collector,
                &f.session,
                &f.path,
                &f.first_ns,
                &f.last_ns,
                &i64_of(f.packets),
                &i64_of(f.bytes),
                &f.state.name(),
                &f.updated_ns,
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
        let n = self.exec(
            "UPDATE files SET state = $3, updated_ns = $4 WHERE collector = $1 AND path = $2",
            &[&collector, &path, &state.name(), &updated_ns],
        )?;
        Ok(n > 0)
    }

    fn catalog_remove(&mut self, collector: &str, path: &str) -> Result<(), StoreError> {
        self.exec(
            "DELETE FROM files WHERE collector = $1 AND path = $2",
            &[&collector, &path],
        )?;
        Ok(())
    }

    fn catalog_of(&mut self, collector: &str) -> Result<Vec<CatalogFile>, StoreError> {
        let rows = self.rows(
            &format!("SELECT {FILE_COLS} FROM files WHERE collector = $1 ORDER BY id"),
            &[&collector],
        )?;
        all(rows, file_row)
    }

    fn catalog_range(
        &mut self,
        session: &str,
        from_ns: i64,
        to_ns: i64,
    ) -> Result<Vec<CatalogFile>, StoreError> {
        let rows = self.rows(
            &format!(
                "SELECT {FILE_COLS} FROM files
                 WHERE session = $1 AND first_ns <= $3 AND (last_ns >= $2 OR state = 'open')
                 ORDER BY first_ns, id"
            ),
            &[&session, &from_ns, &to_ns],
        )?;
        all(rows, file_row)
    }
}
