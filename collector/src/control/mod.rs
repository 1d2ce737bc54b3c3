//! The control plane (`tapwire collect --db PATH`): sessions and probe flows managed over the
//! HTTP API, stored in SQLite, pushed to the engine and to the probes.
//!
//! ```text
//!  CLI / HTTP client ──► api (axum) ──► Controller ──► Store (SQLite: one transaction per
//!                         auth: tokens      │            change, with its audit row)
//!                                           │ after commit
//!                     ┌─────────────────────┴──────────────────────┐
//!                     ▼                                            ▼
//!   engine: Control::Apply (merged with the file's       probes: flow set version bumped,
//!   sessions; unchanged sessions keep their files)       long-polls answered at once
//! ```
//!
//! Every change is validated first (names, filters compiled by libpcap, flow fields by the
//! probe's own checks, limits), then written in one transaction together with its audit row
//! and the probes' re-rendered flow sets, and only after the commit applied to the engine and
//! announced to the probes. A refused change leaves nothing behind.
//!
//! A session made here gets a mirror id (ERSPAN session id / GRE key, 1 to 1023, unique) and
//! one source rule: its encapsulation and that id, from any address. A flow names a probe, an
//! interface and a session; the probe receives it as a complete [`FlowSpec`] whose collector
//! is the address given with `--advertise` and whose session id is the session's mirror id.

pub mod auth;
pub mod cli;
pub mod http;
pub mod store;
pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::Sender;
use rusqlite::Transaction;
use serde_json::{Value, json};
use tapwire_api::control::{
    FlowCreate, FlowInfo, FlowSet, FlowStatus, ProbeInfo, ProbeLimits, ProbeReport, Register,
    Registered, Role, SessionCreate, SessionInfo, TokenCreate, TokenInfo,
};
use tapwire_api::probe::{Encapsulation, FlowSpec, FlowState};
use tapwire_formats::decap::Kind;
use tapwire_probe::config::FlowFields;

use crate::config::{self, Config, FilesConfig, SessionConfig, SourceMatch};
use crate::live::engine::Control;
use auth::{Caller, Need};
use store::{Store, StoredFlow, StoredSession};

/// Why a request was refused; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// 400: the request is malformed or a value is out of range; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no token where one is needed, or one that is unknown or revoked.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the token's role may not do this.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// 409: clashes with what exists (a name, a mirror id) or exceeds a limit.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
    /// 503: the engine did not answer.
    #[error("{0}")]
    Unavailable(String),
}

pub struct ControllerOptions {
    pub db: PathBuf,
    /// The collector's address as probes should send to it.
    pub advertise: Option<IpAddr>,
    /// Files settings API sessions start from (the file's defaults and the flags).
    pub default_files: FilesConfig,
    /// Limits of a probe first seen (each probe's own can be changed).
    pub max_flows_per_probe: u32,
    pub max_pps_per_probe: Option<u64>,
    /// How often probes report their stats.
    pub report_interval: Duration,
}

/// What the controller knows of a probe beyond the database: its last report and whether it
/// is connected. Lost on restart (probes report again within their interval).
#[derive(Default)]
struct Live {
    last_seen: Option<Instant>,
    last_seen_stored: Option<Instant>,
    polling: u32,
    report: Option<ProbeReport>,
}

pub struct Controller {
    store: Mutex<Store>,
    opts: ControllerOptions,
    /// The configuration file as the engine last loaded it.
    file: Arc<ArcSwap<Config>>,
    engine: Sender<Control>,
    /// The API sessions the engine was last given.
    applied: Mutex<Vec<SessionConfig>>,
    /// Bumped after every commit that changed a flow set or a token: long-polls wake up,
    /// look again, and re-check their token.
    changes: tokio::sync::watch::Sender<u64>,
    live: Mutex<HashMap<String, Live>>,
}

/// Probe names that would clash with a route.
const RESERVED_PROBE_NAMES: &[&str] = &["register"];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn kind_of(e: Encapsulation) -> Kind {
    match e {
        Encapsulation::ErspanIi => Kind::ErspanII,
        Encapsulation::ErspanIii => Kind::ErspanIII,
        Encapsulation::Gre => Kind::Gre,
    }
}

/// Whether probes can send to `ip`: a unicast address.
pub fn advertisable(ip: IpAddr) -> bool {
    !ip.is_unspecified() && !ip.is_multicast()
}

/// Where the first admin token is written: beside the database.
pub fn bootstrap_token_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".admin-token");
    db.with_file_name(name)
}

impl Controller {
    /// Opens the database (migrating it), makes the first admin token when there is none,
    /// brings the probes' flow sets up to date (`--advertise` may have changed) and queues the
    /// API's sessions for the engine, which applies them before its first packet.
    pub fn start(
        opts: ControllerOptions,
        file: Arc<ArcSwap<Config>>,
        engine: Sender<Control>,
    ) -> Result<Arc<Controller>, String> {
        let store = Store::open(&opts.db).map_err(|e| e.to_string())?;
        let (changes, _) = tokio::sync::watch::channel(0);
        let ctl = Arc::new(Controller {
            store: Mutex::new(store),
            opts,
            file,
            engine,
            applied: Mutex::new(Vec::new()),
            changes,
            live: Mutex::new(HashMap::new()),
        });
        ctl.bootstrap().map_err(|e| e.to_string())?;
        let sessions = {
            let mut store = lock(&ctl.store);
            let tx = store.conn.transaction().map_err(|e| e.to_string())?;
            let sessions = ctl.session_configs(&tx).map_err(|e| e.to_string())?;
            config::merged(&ctl.file.load(), &sessions).map_err(|e| {
                format!(
                    "{}: the database's sessions clash with the file's: {e}",
                    ctl.opts.db.display()
                )
            })?;
            ctl.render_flowsets(&tx).map_err(|e| e.to_string())?;
            tx.commit().map_err(|e| e.to_string())?;
            sessions
        };
        tracing::info!(
            db = %ctl.opts.db.display(),
            sessions = sessions.len(),
            "control plane ready"
        );
        let (reply, _) = crossbeam_channel::bounded(1);
        ctl.engine
            .send(Control::Apply {
                sessions: sessions.clone(),
                reply,
            })
            .map_err(|_| "the engine is not running".to_string())?;
        *lock(&ctl.applied) = sessions;
        Ok(ctl)
    }

    fn bootstrap(&self) -> Result<(), Refused> {
        let mut store = lock(&self.store);
        if store::has_admin(&store.conn)? {
            return Ok(());
        }
        let path = bootstrap_token_path(&self.opts.db);
        let token = auth::generate().map_err(Refused::Internal)?;
        let tx = store.conn.transaction()?;
        let name = unused_token_name(&tx, "bootstrap-admin")?;
        store::insert_token(
            &tx,
            &Caller::system("bootstrap"),
            &name,
            Role::Admin,
            &auth::hash(&token),
        )?;
        write_secret(&path, &token).map_err(|e| {
            Refused::Internal(format!(
                "write the first admin token to {}: {e}",
                path.display()
            ))
        })?;
        tx.commit()?;
        tracing::warn!(
            path = %path.display(),
            token = name,
            "no admin token: made one and wrote it to this file (mode 0600); create your own with `tapwire token create`, then revoke it and delete the file"
        );
        Ok(())
    }

    /// Who is asking, and may they: a bearer token, else `localhost` (a viewer) for a
    /// connection from the loopback.
    pub fn authenticate(
        &self,
        bearer: Option<&str>,
        loopback: bool,
        need: Need,
    ) -> Result<Caller, Refused> {
        let caller = match bearer {
            Some(t) => {
                let active = store::active_tokens(&lock(&self.store).conn)?;
                auth::find(t, &active).ok_or_else(|| {
                    Refused::Unauthorized("the token is unknown or revoked".into())
                })?
            }
            None if loopback => Caller::localhost(),
            None => {
                return Err(Refused::Unauthorized(format!(
                    "a token is needed from other hosts (Authorization: Bearer ...): {}",
                    need.describe()
                )));
            }
        };
        if !need.allows(caller.role) {
            return Err(Refused::Forbidden(format!(
                "{} ({}) may not do this: it needs {}",
                caller.name,
                caller.role.name(),
                need.describe()
            )));
        }
        Ok(caller)
    }

    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// One change: `f` in a transaction, then the checks of the whole (the sessions merge
    /// with the file's, the flow sets render), commit, and only then the engine and the
    /// probes hear of it.
    fn change<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, Refused>,
    ) -> Result<T, Refused> {
        let mut store = lock(&self.store);
        let tx = store.conn.transaction()?;
        let out = f(&tx)?;
        let sessions = self.session_configs(&tx)?;
        config::merged(&self.file.load(), &sessions).map_err(|e| Refused::Conflict(e.0))?;
        self.render_flowsets(&tx)?;
        tx.commit()?;
        let mut applied = lock(&self.applied);
        if *applied != sessions {
            let (reply, answer) = crossbeam_channel::bounded(1);
            self.engine
                .send(Control::Apply {
                    sessions: sessions.clone(),
                    reply,
                })
                .map_err(|_| Refused::Unavailable("the collector is stopping".into()))?;
            match answer.recv_timeout(Duration::from_secs(5)) {
                Ok(Ok(())) => *applied = sessions,
                Ok(Err(e)) => {
                    return Err(Refused::Internal(format!(
                        "stored, but the engine refused it (the configuration file changed?): {e}"
                    )));
                }
                Err(_) => {
                    return Err(Refused::Unavailable(
                        "stored; the engine did not answer within 5 s".into(),
                    ));
                }
            }
        }
        drop(applied);
        drop(store);
        self.changes.send_modify(|v| *v += 1);
        Ok(out)
    }

    /// The API's sessions as the engine runs them.
    fn session_configs(&self, conn: &rusqlite::Connection) -> Result<Vec<SessionConfig>, Refused> {
        store::sessions(conn)?
            .iter()
            .map(|s| self.session_config(s).map_err(Refused::Internal))
            .collect()
    }

    fn session_config(&self, s: &StoredSession) -> Result<SessionConfig, String> {
        config::api_session(
            &s.name,
            s.enabled,
            vec![SourceMatch {
                src: None,
                kind: Some(kind_of(s.encap)),
                ids: Some(s.mirror_id..=s.mirror_id),
            }],
            s.filter.clone(),
            s.files.as_ref(),
            s.tap.as_ref(),
            &self.opts.default_files,
        )
        .map_err(|e| e.0)
    }

    /// Renders every probe's enabled flows; a set that changed gets a new version.
    fn render_flowsets(&self, tx: &Transaction<'_>) -> Result<(), Refused> {
        let sessions: BTreeMap<String, StoredSession> = store::sessions(tx)?
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let mut by_probe: BTreeMap<String, Vec<FlowSpec>> = store::probes(tx)?
            .into_iter()
            .map(|p| (p.name, Vec::new()))
            .collect();
        for f in store::flows(tx)?.into_iter().filter(|f| f.enabled) {
            let Some(s) = sessions.get(&f.session) else {
                continue;
            };
            match self.render(&f, s) {
                Ok(spec) => by_probe.entry(f.probe.clone()).or_default().push(spec),
                Err(e) => {
                    tracing::error!(flow = f.name, probe = f.probe, error = %e, "flow not rendered")
                }
            }
        }
        for (probe, specs) in by_probe {
            let value =
                serde_json::to_value(&specs).map_err(|e| Refused::Internal(e.to_string()))?;
            store::set_flowset(tx, &probe, &value)?;
        }
        Ok(())
    }

    /// A stored flow as its probe runs it. The collector address, session id and encapsulation
    /// are not the flow's fields: a problem with them names where they come from.
    fn render(&self, f: &StoredFlow, s: &StoredSession) -> Result<FlowSpec, Refused> {
        let collector = match self.opts.advertise {
            Some(ip) if advertisable(ip) => ip,
            Some(ip) => {
                return Err(Refused::Conflict(format!(
                    "the collector advertises {ip} to probes, which is not a unicast address: restart it with --advertise ADDR"
                )));
            }
            None => {
                return Err(Refused::Conflict(
                    "the collector has no address for probes to send to: start it with --advertise ADDR"
                        .into(),
                ));
            }
        };
        let mut fields: FlowFields = serde_json::from_value(f.spec.clone())
            .map_err(|e| Refused::BadRequest(e.to_string()))?;
        fields.name = Some(f.name.clone());
        fields.session = Some(s.mirror_id as u16);
        fields.collector = Some(collector);
        fields.encap = Some(s.encap);
        fields
            .resolve(&format!("flow {:?}", f.name))
            .map_err(|e| Refused::BadRequest(e.0))
    }

    // -----------------------------------------------------------------------------------------
    // Sessions

    pub fn sessions(&self) -> Result<Vec<SessionInfo>, Refused> {
        let store = lock(&self.store);
        let flows = store::flows(&store.conn)?;
        Ok(store::sessions(&store.conn)?
            .into_iter()
            .map(|s| session_info(s, &flows))
            .collect())
    }

    pub fn session(&self, name: &str) -> Result<SessionInfo, Refused> {
        let store = lock(&self.store);
        let s = store::session(&store.conn, name)?.ok_or_else(|| self.no_session(name))?;
        Ok(session_info(s, &store::flows(&store.conn)?))
    }

    fn no_session(&self, name: &str) -> Refused {
        if self.file.load().sessions.iter().any(|s| s.name == name) {
            Refused::Conflict(format!(
                "session {name:?} is defined in the configuration file: change it there"
            ))
        } else {
            Refused::NotFound(format!("no session named {name:?}"))
        }
    }

    pub fn is_api_session(&self, name: &str) -> Result<bool, Refused> {
        Ok(store::session(&lock(&self.store).conn, name)?.is_some())
    }

    pub fn create_session(
        &self,
        caller: &Caller,
        req: SessionCreate,
    ) -> Result<SessionInfo, Refused> {
        config::validate_name(&req.name).map_err(|e| Refused::BadRequest(format!("name: {e}")))?;
        let encap = req.encap.unwrap_or_default();
        if let Some(id) = req.mirror_id
            && !(1..=1023).contains(&id)
        {
            return Err(Refused::BadRequest(format!(
                "mirror_id: {id} is not 1 to 1023 (a 10-bit ERSPAN session id)"
            )));
        }
        let at = store::now();
        let mut s = StoredSession {
            name: req.name.clone(),
            encap,
            mirror_id: req.mirror_id.unwrap_or(0),
            enabled: req.enabled.unwrap_or(true),
            filter: req.filter.filter(|f| !f.trim().is_empty()),
            files: req.files,
            tap: req.tap,
            created: at.clone(),
            updated: at,
        };
        // The definition alone, before anything is written: names the field at fault.
        self.session_config(&StoredSession {
            mirror_id: 1,
            ..s.clone()
        })
        .map_err(Refused::BadRequest)?;
        self.change(|tx| {
            if store::session(tx, &s.name)?.is_some() {
                return Err(Refused::Conflict(format!(
                    "a session named {:?} exists",
                    s.name
                )));
            }
            if self.file.load().sessions.iter().any(|f| f.name == s.name) {
                return Err(Refused::Conflict(format!(
                    "session {:?} is defined in the configuration file (names are shared)",
                    s.name
                )));
            }
            s.mirror_id = self.mirror_id(tx, req.mirror_id, encap, None)?;
            store::put_session(tx, &s)?;
            store::audit(tx, caller, "session.create", &s.name, &session_detail(&s))?;
            Ok(())
        })?;
        self.session(&s.name)
    }

    /// `wanted`, if free, else the lowest free id. Ids named by the file's rules for the
    /// same kind are not free either: API sessions are matched first and would take them.
    /// `own`: the id the session has now (an update may keep it).
    fn mirror_id(
        &self,
        tx: &Transaction<'_>,
        wanted: Option<u32>,
        encap: Encapsulation,
        own: Option<u32>,
    ) -> Result<u32, Refused> {
        let used: Vec<u32> = store::used_mirror_ids(tx)?
            .into_iter()
            .filter(|id| Some(*id) != own)
            .collect();
        let file = self.file.load();
        let kind = kind_of(encap);
        let file_user = |id: u32| {
            file.sessions.iter().find(|s| {
                s.sources.iter().any(|m| {
                    m.kind.is_none_or(|k| k == kind)
                        && m.ids.as_ref().is_some_and(|r| r.contains(&id))
                })
            })
        };
        if let Some(id) = wanted {
            if used.contains(&id) {
                return Err(Refused::Conflict(format!(
                    "mirror_id: {id} is used by another session"
                )));
            }
            if let Some(s) = file_user(id) {
                return Err(Refused::Conflict(format!(
                    "mirror_id: {id} is gathered by session {:?} of the configuration file",
                    s.name
                )));
            }
            return Ok(id);
        }
        (1..=1023)
            .find(|id| !used.contains(id) && file_user(*id).is_none())
            .ok_or_else(|| Refused::Conflict("every mirror id (1 to 1023) is taken".into()))
    }

    /// A JSON merge patch (RFC 7386) of the definition: `encap`, `mirror_id`, `enabled`,
    /// `filter`, `files`, `tap`; `null` removes an optional field.
    pub fn update_session(
        &self,
        caller: &Caller,
        name: &str,
        patch: Value,
    ) -> Result<SessionInfo, Refused> {
        let Value::Object(patch) = patch else {
            return Err(Refused::BadRequest(
                "body: a JSON object is expected".into(),
            ));
        };
        const FIELDS: &[&str] = &["encap", "mirror_id", "enabled", "filter", "files", "tap"];
        if let Some(k) = patch.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(Refused::BadRequest(format!(
                "unknown field `{k}`, expected one of {}",
                FIELDS.join(", ")
            )));
        }
        self.change(|tx| {
            let old = store::session(tx, name)?.ok_or_else(|| self.no_session(name))?;
            let mut s = old.clone();
            for (k, v) in &patch {
                let bad = |e: String| Refused::BadRequest(format!("{k}: {e}"));
                match k.as_str() {
                    "encap" => {
                        s.encap =
                            serde_json::from_value(v.clone()).map_err(|e| bad(e.to_string()))?
                    }
                    "mirror_id" => {
                        let id = v
                            .as_u64()
                            .filter(|id| (1..=1023).contains(id))
                            .ok_or_else(|| bad(format!("{v} is not 1 to 1023")))?;
                        s.mirror_id = id as u32;
                    }
                    "enabled" => {
                        s.enabled = v.as_bool().ok_or_else(|| bad("true or false".into()))?
                    }
                    "filter" => {
                        s.filter = match v {
                            Value::Null => None,
                            Value::String(f) => Some(f.clone()).filter(|f| !f.trim().is_empty()),
                            _ => return Err(bad("a string or null".into())),
                        }
                    }
                    "files" => s.files = (!v.is_null()).then(|| merge_patch(s.files.take(), v)),
                    "tap" => s.tap = (!v.is_null()).then(|| merge_patch(s.tap.take(), v)),
                    _ => {}
                }
            }
            self.session_config(&s).map_err(Refused::BadRequest)?;
            if s.mirror_id != old.mirror_id || s.encap != old.encap {
                self.mirror_id(tx, Some(s.mirror_id), s.encap, Some(old.mirror_id))?;
            }
            s.updated = store::now();
            store::put_session(tx, &s)?;
            let action = match (old.enabled, s.enabled, patch.len()) {
                (true, false, 1) => "session.disable",
                (false, true, 1) => "session.enable",
                _ => "session.update",
            };
            store::audit(tx, caller, action, name, &Value::Object(patch.clone()))?;
            Ok(())
        })?;
        self.session(name)
    }

    pub fn set_session_enabled(
        &self,
        caller: &Caller,
        name: &str,
        enabled: bool,
    ) -> Result<SessionInfo, Refused> {
        self.update_session(caller, name, json!({ "enabled": enabled }))
    }

    pub fn delete_session(&self, caller: &Caller, name: &str) -> Result<(), Refused> {
        self.change(|tx| {
            store::session(tx, name)?.ok_or_else(|| self.no_session(name))?;
            let users: Vec<String> = store::flows(tx)?
                .into_iter()
                .filter(|f| f.session == name)
                .map(|f| format!("{}/{}", f.probe, f.name))
                .collect();
            if !users.is_empty() {
                return Err(Refused::Conflict(format!(
                    "session {name:?} is the target of flows {}: delete them first",
                    users.join(", ")
                )));
            }
            store::delete_session(tx, name)?;
            store::audit(tx, caller, "session.delete", name, &Value::Null)
        })
    }

    /// An action on a session from the API or the collector's own terminal: enabling or
    /// disabling an API session is stored; anything else is carried out by the engine. Audited.
    pub fn session_action(
        &self,
        caller: &Caller,
        name: &str,
        action: tapwire_api::Action,
    ) -> Result<String, Refused> {
        use tapwire_api::Action;
        if matches!(action, Action::Enable | Action::Disable) && self.is_api_session(name)? {
            self.set_session_enabled(caller, name, action == Action::Enable)?;
            let done = if action == Action::Enable {
                "enabled"
            } else {
                "disabled"
            };
            return Ok(format!("session {name} {done}"));
        }
        self.runtime_action(caller, name, action)
    }

    /// An action on a session that is not the API's (file or auto-discovered), or a rotation:
    /// carried out by the engine, not stored, audited.
    pub fn runtime_action(
        &self,
        caller: &Caller,
        session: &str,
        action: tapwire_api::Action,
    ) -> Result<String, Refused> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.engine
            .send(Control::Action {
                session: session.to_string(),
                action,
                reply,
            })
            .map_err(|_| Refused::Unavailable("the collector is stopping".into()))?;
        let msg = match answer.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(m)) => m,
            Ok(Err(m)) => return Err(Refused::NotFound(m)),
            Err(_) => return Err(Refused::Unavailable("the collector did not answer".into())),
        };
        let name = match action {
            tapwire_api::Action::Enable => "session.enable",
            tapwire_api::Action::Disable => "session.disable",
            tapwire_api::Action::Rotate => "session.rotate",
        };
        self.change(|tx| store::audit(tx, caller, name, session, &json!({ "runtime": true })))?;
        Ok(msg)
    }

    // -----------------------------------------------------------------------------------------
    // Flows

    pub fn flows(&self) -> Result<Vec<FlowInfo>, Refused> {
        let flows = store::flows(&lock(&self.store).conn)?;
        Ok(flows.into_iter().map(|f| self.flow_info(f)).collect())
    }

    pub fn flow(&self, id: i64) -> Result<FlowInfo, Refused> {
        let f = store::flow(&lock(&self.store).conn, id)?
            .ok_or_else(|| Refused::NotFound(format!("no flow with id {id}")))?;
        Ok(self.flow_info(f))
    }

    fn flow_info(&self, f: StoredFlow) -> FlowInfo {
        let live = lock(&self.live);
        let probe = live.get(&f.probe);
        let online = probe.is_some_and(|p| self.online(p));
        let report = probe.and_then(|p| p.report.as_ref());
        let stats = report.and_then(|r| r.stats.flows.iter().find(|s| s.name == f.name).cloned());
        let refusal = report.and_then(|r| r.refused.iter().find(|x| x.name == f.name));
        let (status, error) = if !f.enabled {
            (FlowStatus::Disabled, None)
        } else if report.is_none() {
            (FlowStatus::Pending, None)
        } else if !online {
            (FlowStatus::Offline, None)
        } else if let Some(r) = refusal {
            (FlowStatus::Refused, Some(r.error.clone()))
        } else if let Some(s) = &stats {
            let status = match s.state {
                FlowState::Running => FlowStatus::Running,
                FlowState::Waiting => FlowStatus::Waiting,
                FlowState::Down => FlowStatus::Down,
                FlowState::Error => FlowStatus::Error,
                FlowState::Starting | FlowState::Stopped => FlowStatus::Pending,
            };
            (status, s.error.clone())
        } else {
            (FlowStatus::Pending, None)
        };
        FlowInfo {
            id: f.id,
            probe: f.probe,
            name: f.name,
            session: f.session,
            enabled: f.enabled,
            spec: f.spec,
            status,
            error,
            stats,
            created: f.created,
            updated: f.updated,
        }
    }

    pub fn create_flow(&self, caller: &Caller, req: FlowCreate) -> Result<FlowInfo, Refused> {
        check_probe_name(&req.probe)?;
        if req.name.is_empty()
            || req.name.len() > 100
            || req.name.chars().any(|c| c.is_control() || c == '/')
        {
            return Err(Refused::BadRequest(
                "name: 1 to 100 printable characters, no '/'".into(),
            ));
        }
        if let Some(f) = &req.filter {
            config::compile_check(f)
                .map_err(|e| Refused::BadRequest(format!("filter {f:?}: {e}")))?;
        }
        // A rate is a whole number or text ("10k"); anything else would fail later, in terms of
        // the probe's types rather than this field.
        for (field, v) in [("rate_pps", &req.rate_pps), ("rate_bps", &req.rate_bps)] {
            if let Some(v) = v
                && !(v.is_u64() || v.is_string())
            {
                return Err(Refused::BadRequest(format!(
                    "{field}: {v} is not a rate like 5000, \"100k\", \"1G\""
                )));
            }
        }
        let mut spec = serde_json::Map::new();
        spec.insert("interface".into(), json!(req.interface));
        macro_rules! opt {
            ($($f:ident),*) => { $( if let Some(v) = &req.$f { spec.insert(stringify!($f).into(), json!(v)); } )* };
        }
        opt!(
            direction,
            vlans,
            untagged,
            filter,
            snaplen,
            sample,
            rate_pps,
            rate_bps,
            burst,
            promiscuous
        );
        let at = store::now();
        let mut flow = StoredFlow {
            id: 0,
            probe: req.probe.clone(),
            name: req.name.clone(),
            session: req.session.clone(),
            enabled: req.enabled.unwrap_or(true),
            spec: Value::Object(spec),
            created: at.clone(),
            updated: at,
        };
        let id = self.change(|tx| {
            let session = store::session(tx, &flow.session)?.ok_or_else(|| {
                if self.file.load().sessions.iter().any(|s| s.name == flow.session) {
                    Refused::BadRequest(format!(
                        "session: {:?} is a session of the configuration file; flows target sessions made through the API (they own a mirror id)",
                        flow.session
                    ))
                } else {
                    Refused::BadRequest(format!("session: no session named {:?}", flow.session))
                }
            })?;
            // Every field checked by the probe's own rules, with the values it will get.
            let spec = self.render(&flow, &session)?;
            store::ensure_probe(
                tx,
                &flow.probe,
                self.opts.max_flows_per_probe,
                self.opts.max_pps_per_probe,
            )?;
            let existing: Vec<StoredFlow> = store::flows(tx)?
                .into_iter()
                .filter(|f| f.probe == flow.probe)
                .collect();
            if existing.iter().any(|f| f.name == flow.name) {
                return Err(Refused::Conflict(format!(
                    "probe {:?} has a flow named {:?}",
                    flow.probe, flow.name
                )));
            }
            let probe = store::probe(tx, &flow.probe)?
                .ok_or_else(|| Refused::Internal("probe row vanished".into()))?;
            if existing.len() as u32 >= probe.max_flows {
                return Err(Refused::Conflict(format!(
                    "probe {:?} has {} flows, its limit (max_flows {}): delete one or raise the limit (tapwire probe set {} --max-flows N)",
                    flow.probe,
                    existing.len(),
                    probe.max_flows,
                    flow.probe
                )));
            }
            if flow.enabled {
                self.check_pps(tx, &flow.probe, probe.max_pps, Some(&spec))?;
            }
            let id = store::insert_flow(tx, &flow)?;
            store::audit(
                tx,
                caller,
                "flow.create",
                &format!("{}/{}", flow.probe, flow.name),
                &json!({ "id": id, "session": flow.session, "enabled": flow.enabled, "spec": flow.spec }),
            )?;
            Ok(id)
        })?;
        flow.id = id;
        self.flow(id)
    }

    /// The probe's enabled flows (with `extra`, one about to be enabled) against its
    /// packets-per-second limit.
    fn check_pps(
        &self,
        tx: &Transaction<'_>,
        probe: &str,
        max_pps: Option<u64>,
        extra: Option<&FlowSpec>,
    ) -> Result<(), Refused> {
        let Some(max) = max_pps else {
            return Ok(());
        };
        let sessions: BTreeMap<String, StoredSession> = store::sessions(tx)?
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let mut specs = Vec::new();
        for f in store::flows(tx)?
            .into_iter()
            .filter(|f| f.probe == probe && f.enabled)
        {
            if let Some(s) = sessions.get(&f.session) {
                specs.push(self.render(&f, s)?);
            }
        }
        specs.extend(extra.cloned());
        let mut total = 0u64;
        for s in &specs {
            let Some(pps) = s.rate_pps else {
                return Err(Refused::Conflict(format!(
                    "probe {probe:?} may mirror at most {max} pps in all: flow {:?} needs a rate_pps",
                    s.name
                )));
            };
            total = total.saturating_add(pps);
        }
        if total > max {
            let list: Vec<String> = specs
                .iter()
                .map(|s| format!("{} {}", s.name, s.rate_pps.unwrap_or(0)))
                .collect();
            return Err(Refused::Conflict(format!(
                "probe {probe:?} would mirror up to {total} pps, above its limit of {max} pps (flows: {})",
                list.join(", ")
            )));
        }
        Ok(())
    }

    pub fn set_flow_enabled(
        &self,
        caller: &Caller,
        id: i64,
        enabled: bool,
    ) -> Result<FlowInfo, Refused> {
        self.change(|tx| {
            let f = store::flow(tx, id)?
                .ok_or_else(|| Refused::NotFound(format!("no flow with id {id}")))?;
            if enabled && !f.enabled {
                let probe = store::probe(tx, &f.probe)?
                    .ok_or_else(|| Refused::Internal("probe row vanished".into()))?;
                let session = store::session(tx, &f.session)?
                    .ok_or_else(|| Refused::Internal("session row vanished".into()))?;
                let spec = self.render(&f, &session)?;
                self.check_pps(tx, &f.probe, probe.max_pps, Some(&spec))?;
            }
            store::set_flow_enabled(tx, id, enabled)?;
            store::audit(
                tx,
                caller,
                if enabled {
                    "flow.enable"
                } else {
                    "flow.disable"
                },
                &format!("{}/{}", f.probe, f.name),
                &json!({ "id": id }),
            )
        })?;
        self.flow(id)
    }

    pub fn delete_flow(&self, caller: &Caller, id: i64) -> Result<(), Refused> {
        self.change(|tx| {
            let f = store::flow(tx, id)?
                .ok_or_else(|| Refused::NotFound(format!("no flow with id {id}")))?;
            store::delete_flow(tx, id)?;
            store::audit(
                tx,
                caller,
                "flow.delete",
                &format!("{}/{}", f.probe, f.name),
                &json!({ "id": id }),
            )
        })
    }

    // -----------------------------------------------------------------------------------------
    // Probes

    fn online(&self, live: &Live) -> bool {
        let window = (self.opts.report_interval * 3).max(Duration::from_secs(15));
        live.polling > 0 || live.last_seen.is_some_and(|t| t.elapsed() < window)
    }

    pub fn probes(&self) -> Result<Vec<ProbeInfo>, Refused> {
        let (probes, flows) = {
            let store = lock(&self.store);
            (store::probes(&store.conn)?, store::flows(&store.conn)?)
        };
        let live = lock(&self.live);
        Ok(probes
            .into_iter()
            .map(|p| {
                let l = live.get(&p.name);
                let report = l.and_then(|l| l.report.as_ref());
                let mine = flows.iter().filter(|f| f.probe == p.name);
                ProbeInfo {
                    online: l.is_some_and(|l| self.online(l)),
                    version: p.version,
                    interfaces: p.interfaces,
                    registered: p.registered,
                    last_seen: p.last_seen,
                    flows: mine.clone().count() as u32,
                    flows_enabled: mine.filter(|f| f.enabled).count() as u32,
                    flows_version: p.flowset_version,
                    applied_version: report.map(|r| r.applied_version),
                    drops: report.map_or(0, |r| {
                        r.stats
                            .flows
                            .iter()
                            .map(|f| f.counters.kernel_drops + f.counters.send_errors)
                            .sum()
                    }),
                    sent: report.map_or(0, |r| r.stats.flows.iter().map(|f| f.counters.sent).sum()),
                    max_flows: p.max_flows,
                    max_pps: p.max_pps,
                    name: p.name,
                }
            })
            .collect())
    }

    pub fn probe(&self, name: &str) -> Result<ProbeInfo, Refused> {
        self.probes()?
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Refused::NotFound(format!("no probe named {name:?}")))
    }

    pub fn set_probe_limits(
        &self,
        caller: &Caller,
        name: &str,
        limits: ProbeLimits,
    ) -> Result<ProbeInfo, Refused> {
        let max_pps = match &limits.max_pps {
            None => None,
            Some(v) => Some(match v {
                Value::Number(n) => n.as_u64().ok_or_else(|| {
                    Refused::BadRequest(format!("max_pps: {n} is not a whole number"))
                })?,
                Value::String(t) => tapwire_probe::config::parse_rate(t)
                    .map_err(|e| Refused::BadRequest(format!("max_pps: {e}")))?,
                _ => {
                    return Err(Refused::BadRequest(
                        "max_pps: a number or text like \"100k\"".into(),
                    ));
                }
            }),
        };
        if limits.max_flows == Some(0) {
            return Err(Refused::BadRequest("max_flows: must be at least 1".into()));
        }
        self.change(|tx| {
            let p = store::probe(tx, name)?
                .ok_or_else(|| Refused::NotFound(format!("no probe named {name:?}")))?;
            let max_flows = limits.max_flows.unwrap_or(p.max_flows);
            let max_pps = match max_pps {
                None => p.max_pps,
                Some(0) => None,
                Some(n) => Some(n),
            };
            let n = store::flows(tx)?.iter().filter(|f| f.probe == name).count() as u32;
            if n > max_flows {
                return Err(Refused::Conflict(format!(
                    "probe {name:?} has {n} flows, more than max_flows {max_flows}"
                )));
            }
            self.check_pps(tx, name, max_pps, None)?;
            store::set_probe_limits(tx, name, max_flows, max_pps)?;
            store::audit(
                tx,
                caller,
                "probe.limits",
                name,
                &json!({ "max_flows": max_flows, "max_pps": max_pps }),
            )
        })?;
        self.probe(name)
    }

    pub fn delete_probe(&self, caller: &Caller, name: &str) -> Result<(), Refused> {
        self.change(|tx| {
            store::probe(tx, name)?
                .ok_or_else(|| Refused::NotFound(format!("no probe named {name:?}")))?;
            if store::flows(tx)?.iter().any(|f| f.probe == name) {
                return Err(Refused::Conflict(format!(
                    "probe {name:?} has flows: delete them first"
                )));
            }
            store::delete_probe(tx, name)?;
            store::audit(tx, caller, "probe.delete", name, &Value::Null)
        })?;
        lock(&self.live).remove(name);
        Ok(())
    }

    /// A probe-role token acts only for the probe of its own name.
    fn check_acts_for(caller: &Caller, probe: &str) -> Result<(), Refused> {
        if caller.role == Role::Probe && caller.name != probe {
            return Err(Refused::Forbidden(format!(
                "token {:?} is a probe token: it may act only as probe {:?}",
                caller.name, caller.name
            )));
        }
        Ok(())
    }

    pub fn register(&self, caller: &Caller, req: Register) -> Result<Registered, Refused> {
        check_probe_name(&req.name)?;
        Self::check_acts_for(caller, &req.name)?;
        if req.version.len() > 100 || req.interfaces.len() > 4096 {
            return Err(Refused::BadRequest(
                "version or interfaces: too long".into(),
            ));
        }
        self.change(|tx| {
            let before = store::probe(tx, &req.name)?;
            store::ensure_probe(
                tx,
                &req.name,
                self.opts.max_flows_per_probe,
                self.opts.max_pps_per_probe,
            )?;
            store::register_probe(tx, &req.name, &req.version, &req.interfaces)?;
            let first = before.as_ref().is_none_or(|p| p.registered.is_none());
            let changed = before
                .as_ref()
                .is_some_and(|p| p.version.as_deref() != Some(&req.version));
            if first || changed {
                store::audit(
                    tx,
                    caller,
                    "probe.register",
                    &req.name,
                    &json!({ "version": req.version, "interfaces": req.interfaces.len() }),
                )?;
            }
            Ok(())
        })?;
        self.seen(&req.name, |_| {});
        let p = store::probe(&lock(&self.store).conn, &req.name)?
            .ok_or_else(|| Refused::Internal("probe row vanished".into()))?;
        tracing::info!(probe = req.name, version = req.version, "probe registered");
        Ok(Registered {
            flows_version: p.flowset_version,
            report_interval_s: self.opts.report_interval.as_secs().max(1),
        })
    }

    /// The probe's flow set now.
    pub fn flowset(&self, caller: &Caller, name: &str) -> Result<FlowSet, Refused> {
        Self::check_acts_for(caller, name)?;
        let p = store::probe(&lock(&self.store).conn, name)?
            .filter(|p| p.registered.is_some())
            .ok_or_else(|| Refused::NotFound(format!("probe {name:?} is not registered")))?;
        let flows: Vec<FlowSpec> = serde_json::from_value(p.flowset)
            .map_err(|e| Refused::Internal(format!("stored flow set: {e}")))?;
        self.seen(name, |_| {});
        Ok(FlowSet {
            version: p.flowset_version,
            flows,
        })
    }

    /// Marks a long-poll of `name` as in flight while the guard lives.
    pub fn polling(self: &Arc<Self>, name: &str) -> PollGuard {
        // Memory only (called on the API's runtime thread); the flow-set read before it has
        // recorded the visit.
        {
            let mut live = lock(&self.live);
            let l = live.entry(name.to_string()).or_default();
            l.polling += 1;
            l.last_seen = Some(Instant::now());
        }
        PollGuard {
            ctl: Arc::clone(self),
            name: name.to_string(),
        }
    }

    fn seen(&self, name: &str, f: impl FnOnce(&mut Live)) {
        let store_it = {
            let mut live = lock(&self.live);
            let l = live.entry(name.to_string()).or_default();
            l.last_seen = Some(Instant::now());
            f(l);
            let due = l
                .last_seen_stored
                .is_none_or(|t| t.elapsed() > Duration::from_secs(30));
            if due {
                l.last_seen_stored = Some(Instant::now());
            }
            due
        };
        if store_it {
            let _ = store::touch_probe(&lock(&self.store).conn, name);
        }
    }

    pub fn report(&self, caller: &Caller, name: &str, report: ProbeReport) -> Result<(), Refused> {
        Self::check_acts_for(caller, name)?;
        if store::probe(&lock(&self.store).conn, name)?.is_none_or(|p| p.registered.is_none()) {
            return Err(Refused::NotFound(format!(
                "probe {name:?} is not registered"
            )));
        }
        if report.stats.flows.len() > 10_000 || report.refused.len() > 10_000 {
            return Err(Refused::BadRequest("stats: too many flows".into()));
        }
        self.seen(name, |l| l.report = Some(report));
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Tokens and audit

    pub fn tokens(&self) -> Result<Vec<TokenInfo>, Refused> {
        store::list_tokens(&lock(&self.store).conn)
    }

    pub fn create_token(&self, caller: &Caller, req: TokenCreate) -> Result<TokenInfo, Refused> {
        let token = auth::generate().map_err(Refused::Internal)?;
        let mut info = self.change(|tx| {
            store::insert_token(tx, caller, &req.name, req.role, &auth::hash(&token))
        })?;
        info.token = Some(token);
        Ok(info)
    }

    pub fn revoke_token(&self, caller: &Caller, name: &str) -> Result<(), Refused> {
        self.change(|tx| store::revoke_token(tx, caller, name))
    }

    pub fn audit(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<tapwire_api::control::AuditEntry>, Refused> {
        store::list_audit(&lock(&self.store).conn, after, limit)
    }
}

pub struct PollGuard {
    ctl: Arc<Controller>,
    name: String,
}

impl Drop for PollGuard {
    /// Memory only: it runs on the API's runtime thread, which must not wait for the database.
    fn drop(&mut self) {
        let mut live = lock(&self.ctl.live);
        if let Some(l) = live.get_mut(&self.name) {
            l.polling = l.polling.saturating_sub(1);
            l.last_seen = Some(Instant::now());
        }
    }
}

fn check_probe_name(name: &str) -> Result<(), Refused> {
    config::validate_name(name).map_err(|e| Refused::BadRequest(format!("probe: {e}")))?;
    if RESERVED_PROBE_NAMES.contains(&name) {
        return Err(Refused::BadRequest(format!("probe: {name:?} is reserved")));
    }
    Ok(())
}

fn unused_token_name(tx: &Transaction<'_>, base: &str) -> Result<String, Refused> {
    let names: Vec<String> = store::list_tokens(tx)?
        .into_iter()
        .map(|t| t.name)
        .collect();
    Ok((0..)
        .map(|i| {
            if i == 0 {
                base.to_string()
            } else {
                format!("{base}-{i}")
            }
        })
        .find(|n| !names.contains(n))
        .unwrap_or_else(|| base.to_string()))
}

/// Writes a secret readable by its owner only (created with mode 0600, never widened).
pub fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{secret}")?;
    f.sync_all()
}

fn session_info(s: StoredSession, flows: &[StoredFlow]) -> SessionInfo {
    SessionInfo {
        flows: flows
            .iter()
            .filter(|f| f.session == s.name)
            .map(|f| format!("{}/{}", f.probe, f.name))
            .collect(),
        name: s.name,
        encap: s.encap,
        mirror_id: s.mirror_id,
        enabled: s.enabled,
        filter: s.filter,
        files: s.files,
        tap: s.tap,
        created: s.created,
        updated: s.updated,
    }
}

fn session_detail(s: &StoredSession) -> Value {
    json!({
        "encap": s.encap,
        "mirror_id": s.mirror_id,
        "enabled": s.enabled,
        "filter": s.filter,
        "files": s.files,
        "tap": s.tap,
    })
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
pub fn merge_patch(target: Option<Value>, patch: &Value) -> Value {
    match patch {
        Value::Object(p) => {
            let mut t = match target {
                Some(Value::Object(t)) => t,
                _ => serde_json::Map::new(),
            };
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    let merged = merge_patch(t.remove(k), v);
                    t.insert(k.clone(), merged);
                }
            }
            Value::Object(t)
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests;
