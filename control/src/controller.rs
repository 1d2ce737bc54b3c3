//! The [`Controller`]: every operation of the control plane, from a caller's token to the
//! stored change, the engine and the probes.
//!
//! Every change is validated first (names, filters compiled by libpcap, flow fields by the
//! probe's own checks, limits), then written in one transaction together with its audit row,
//! the placement of new sessions and the probes' re-rendered flow sets, and only after the
//! commit applied to the engine and announced to the probes (and, through the database, to
//! the other collectors of the fleet). A refused change leaves nothing behind.
//!
//! A session made here gets a mirror id (ERSPAN session id / GRE key, 1 to 1023, unique) and
//! one source rule: its encapsulation and that id, from any address. It runs on one collector
//! of the fleet ([`crate::fleet`]): the one it is pinned to, or the least loaded live one. A
//! flow names a probe, an interface and a session; the probe receives it as a complete
//! [`FlowSpec`] whose collector is the `--advertise` address of the collector that runs the
//! session, and whose session id is the session's mirror id.
//!
//! What the API reads most (tokens, the probes' flow sets, sessions, collectors) is kept in a
//! [`View`] read after every change the collector hears of: a long-poll wakes, checks its
//! token and its probe's version in memory, and the probes keep being served while the
//! database is away.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tapwire_api_types::control::{
    AUTO, AuditEntry, CollectorState, ControlState, Fleet, FleetMember, FlowCreate, FlowInfo,
    FlowSet, FlowStatus, MAX_INTERFACES, ProbeInfo, ProbeLimits, ProbeReport, Register, Registered,
    Role, SdTarget, SessionCreate, SessionInfo, TokenCreate, TokenInfo, merge_patch, validate_name,
};
use tapwire_api_types::flow::FlowFields;
use tapwire_api_types::probe::{Encapsulation, FlowSpec, FlowState};
use tapwire_api_types::time::rfc3339_ns;

use crate::auth::{self, Caller, Need};
use crate::engine::{Clock, Engine, EngineError};
use crate::fleet::{self, Move};
use crate::peer::{self, PeerKey};
use crate::store::{
    ActiveToken, CatalogFile, FileState, Heartbeat, Listener, Location, Store, StoreError,
    StoredCollector, StoredFlow, StoredProbe, StoredSession, Transaction,
};
use crate::tokens;

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
    /// 503: the engine did not answer, or the database is away.
    #[error("{0}")]
    Unavailable(String),
}

/// Why a probe's request (or a name for a new probe) was refused, each counted
/// ([`Controller::probe_refusals`]): what a misbehaving probe or an attacker sends is dropped,
/// never kept, and shows up here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeRefusal {
    /// A registration or report over the body limit (413).
    BodyTooLarge,
    /// A probe token speaking for a probe it is not bound to (403).
    OtherProbe,
    /// A new probe name past `--max-probes` (409), from a probe or a flow.
    TooManyProbes,
    /// A report of more flows or refusals than the probe may have (400).
    TooManyFlows,
    /// A name, version or interface list out of bounds (400).
    Invalid,
}

impl ProbeRefusal {
    pub const ALL: [ProbeRefusal; 5] = [
        ProbeRefusal::BodyTooLarge,
        ProbeRefusal::OtherProbe,
        ProbeRefusal::TooManyProbes,
        ProbeRefusal::TooManyFlows,
        ProbeRefusal::Invalid,
    ];

    /// Its name as a metric label.
    pub fn name(self) -> &'static str {
        match self {
            ProbeRefusal::BodyTooLarge => "body_too_large",
            ProbeRefusal::OtherProbe => "other_probe",
            ProbeRefusal::TooManyProbes => "too_many_probes",
            ProbeRefusal::TooManyFlows => "too_many_flows",
            ProbeRefusal::Invalid => "invalid",
        }
    }
}

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Refused {
        match e {
            StoreError::Unavailable(m) => Refused::Unavailable(format!(
                "control: disconnected: the database is unreachable ({m}); capture goes on with the last state, changes wait"
            )),
            e => Refused::Internal(format!("database: {e}")),
        }
    }
}

/// How the control plane runs.
pub struct ControllerOptions {
    pub db: Location,
    /// This collector's name in the fleet (unique among live collectors).
    pub name: String,
    /// The collector's address as probes should send to it.
    pub advertise: Option<IpAddr>,
    /// Where other collectors, clients and Prometheus reach its API.
    pub api_url: Option<String>,
    /// Probes the controller knows at most (registered, or named by a flow): a name past it
    /// is refused, so that invented names cannot grow the database and the reports kept.
    pub max_probes: u32,
    /// Limits of a probe first seen (each probe's own can be changed).
    pub max_flows_per_probe: u32,
    pub max_pps_per_probe: Option<u64>,
    /// How often probes report their stats.
    pub report_interval: Duration,
    /// How long the collector stays live without a heartbeat, and how often it beats.
    pub lease: Duration,
    pub heartbeat: Duration,
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

/// The database as of the last change this collector heard of: what the API reads most.
#[derive(Debug, Default)]
pub struct View {
    /// The fleet's change counter when it was read.
    pub version: i64,
    tokens: Vec<ActiveToken>,
    probes: HashMap<String, StoredProbe>,
    sessions: Vec<StoredSession>,
    collectors: Vec<StoredCollector>,
}

impl View {
    fn load(tx: &mut dyn Transaction) -> Result<View, StoreError> {
        Ok(View {
            version: tx.fleet_version()?,
            tokens: tx.active_tokens()?,
            probes: tx
                .probes()?
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect(),
            sessions: tx.sessions()?,
            collectors: tx.collectors()?,
        })
    }
}

/// This process as a member of the fleet.
struct Member {
    incarnation: String,
    started_ns: i64,
}

pub struct Controller<E: Engine> {
    store: Mutex<Box<dyn Store>>,
    opts: ControllerOptions,
    engine: E,
    clock: Box<dyn Clock>,
    me: Member,
    /// The API sessions the engine was last given (those this collector runs).
    applied: Mutex<Vec<E::Session>>,
    view: Mutex<Arc<View>>,
    /// When (monotonic, the [`Clock`]'s) the [`View`] was last known to hold every change:
    /// the fleet's change counter read at or after this instant equalled the view's. Tokens
    /// are checked against the view while this is younger than [`fleet::TOKEN_CACHE`].
    view_current_at: Mutex<Option<Instant>>,
    /// Whether the last use of the database worked, and since when it has (monotonic).
    connected: AtomicBool,
    connected_since: Mutex<Option<Instant>>,
    /// Bumped after every change this collector heard of: long-polls wake up, look again,
    /// and re-check their token.
    changes: tokio::sync::watch::Sender<u64>,
    live: Mutex<HashMap<String, Live>>,
    /// Probe requests refused, by [`ProbeRefusal`] (indexed as [`ProbeRefusal::ALL`]).
    probe_refusals: [AtomicU64; 5],
    /// Signs and checks peer tokens; derived from the fleet's secret.
    peer_key: PeerKey,
}

/// Probe names that would clash with a route.
const RESERVED_PROBE_NAMES: &[&str] = &["register"];

/// The default of [`ControllerOptions::max_probes`]: more hypervisors than one collector
/// serves, few enough that their reports (at most [`MAX_PROBE_BODY_BYTES`] each) stay
/// within 128 MiB.
///
/// [`MAX_PROBE_BODY_BYTES`]: tapwire_api_types::control::MAX_PROBE_BODY_BYTES
pub const DEFAULT_MAX_PROBES: u32 = 1024;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

/// Each collector's address for probes (`--advertise`), by name.
type Destinations = BTreeMap<String, Option<String>>;

fn ns_i64(ns: u64) -> i64 {
    i64::try_from(ns).unwrap_or(i64::MAX)
}

impl<E: Engine> Controller<E> {
    /// Takes the opened database, makes the first admin token when there is none (SQLite;
    /// a fleet's first is made with `tapwire token create --db URL`), joins the fleet (a
    /// live collector of the same name refuses it), places sessions nobody runs, brings the
    /// probes' flow sets up to date (`--advertise` may have changed) and queues the sessions
    /// this collector runs for the engine, which applies them before its first packet.
    pub fn start(
        opts: ControllerOptions,
        store: Box<dyn Store>,
        engine: E,
        clock: Box<dyn Clock>,
    ) -> Result<Arc<Controller<E>>, String> {
        validate_name(&opts.name).map_err(|e| format!("--name {:?}: {e}", opts.name))?;
        let mut store = store;
        let peer_key = Self::fleet_key(&mut *store).map_err(|e| e.to_string())?;
        let (changes, _) = tokio::sync::watch::channel(0);
        let me = Member {
            incarnation: fleet::incarnation()?,
            started_ns: ns_i64(clock.now_ns()),
        };
        let ctl = Arc::new(Controller {
            store: Mutex::new(store),
            opts,
            engine,
            clock,
            me,
            applied: Mutex::new(Vec::new()),
            view: Mutex::new(Arc::new(View::default())),
            view_current_at: Mutex::new(None),
            connected: AtomicBool::new(true),
            connected_since: Mutex::new(None),
            changes,
            live: Mutex::new(HashMap::new()),
            probe_refusals: Default::default(),
            peer_key,
        });
        ctl.bootstrap().map_err(|e| e.to_string())?;
        ctl.join().map_err(|e| e.to_string())?;
        *lock(&ctl.connected_since) = Some(ctl.clock.monotonic());
        let read_at = ctl.clock.monotonic();
        let view = ctl.read(View::load).map_err(|e| e.to_string())?;
        let view = Arc::new(view);
        *lock(&ctl.view) = Arc::clone(&view);
        *lock(&ctl.view_current_at) = Some(read_at);
        let sessions = ctl.owned_configs(&view.sessions);
        ctl.engine.check(&sessions).map_err(|e| {
            format!(
                "{}: the database's sessions clash with the file's: {e}",
                ctl.opts.db.display()
            )
        })?;
        tracing::info!(
            db = %ctl.opts.db.display(),
            collector = ctl.opts.name,
            sessions = sessions.len(),
            fleet = view.collectors.iter().filter(|c| fleet::is_live(c, ctl.now_ns())).count(),
            "control plane ready"
        );
        ctl.engine
            .queue(sessions.clone())
            .map_err(|_| "the engine is not running".to_string())?;
        *lock(&ctl.applied) = sessions;
        Ok(ctl)
    }

    /// The key of the fleet's peer tokens: its secret made by the first collector to ask.
    fn fleet_key(store: &mut dyn Store) -> Result<PeerKey, StoreError> {
        let fresh = peer::new_secret().map_err(|e| StoreError::Query(e.into()))?;
        let mut tx = store.begin()?;
        let secret = tx.fleet_secret(&fresh)?;
        tx.commit()?;
        Ok(PeerKey::derive(&secret))
    }

    /// A peer token of this collector's, good for [`peer::TTL`]: what it presents to another
    /// collector of the fleet when it asks for a query's part or relays a stream.
    pub fn peer_token(&self) -> String {
        self.peer_key.sign(&self.opts.name, self.clock.now_ns())
    }

    /// The API URL each collector of the fleet registered, and whether its lease is live, by
    /// name (as last read when the database is away).
    pub fn peers(&self) -> BTreeMap<String, (Option<String>, bool)> {
        let collectors = match self.read(|tx| tx.collectors()) {
            Ok(c) => c,
            Err(_) => lock(&self.view).collectors.clone(),
        };
        let now = self.now_ns();
        collectors
            .into_iter()
            .map(|c| {
                let live = fleet::is_live(&c, now);
                (c.name, (c.api_url, live))
            })
            .collect()
    }

    /// The catalog's files of `session` that overlap `[from_ns, to_ns]`, on any collector,
    /// those deleted left out.
    pub fn catalog_range(
        &self,
        session: &str,
        from_ns: u64,
        to_ns: u64,
    ) -> Result<Vec<CatalogFile>, Refused> {
        let files = self.read(|tx| tx.catalog_range(session, ns_i64(from_ns), ns_i64(to_ns)))?;
        Ok(files
            .into_iter()
            .filter(|f| f.state != FileState::Deleted)
            .collect())
    }

    /// This collector's name in the fleet.
    pub fn name(&self) -> &str {
        &self.opts.name
    }

    /// Now, as stored and shown.
    fn now(&self) -> String {
        rfc3339_ns(self.clock.now_ns())
    }

    fn now_ns(&self) -> i64 {
        ns_i64(self.clock.now_ns())
    }

    /// Notes whether the database answered: the health route and the TUI show it, and a
    /// collector that was cut off waits a lease before it moves anything.
    fn note<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        match &r {
            Err(e) if e.is_unavailable() => {
                if self.connected.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "control: disconnected from the database; capture goes on with the last state");
                }
                *lock(&self.connected_since) = None;
            }
            _ => {
                if !self.connected.swap(true, Ordering::Relaxed) {
                    tracing::info!("control: connected to the database again");
                }
                lock(&self.connected_since).get_or_insert_with(|| self.clock.monotonic());
            }
        }
        r
    }

    /// `f` in a transaction that is then dropped (rolled back): reads.
    fn read<T>(
        &self,
        f: impl FnOnce(&mut dyn Transaction) -> Result<T, StoreError>,
    ) -> Result<T, Refused> {
        Ok(self.read_store(f)?)
    }

    /// [`Controller::read`] with the store's error, which tells an absent database apart.
    fn read_store<T>(
        &self,
        f: impl FnOnce(&mut dyn Transaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut store = lock(&self.store);
        let r = store.begin().and_then(|mut tx| f(&mut *tx));
        self.note(r)
    }

    /// `f` in a transaction that is committed: a write that needs no checks.
    fn write(
        &self,
        f: impl FnOnce(&mut dyn Transaction) -> Result<(), StoreError>,
    ) -> Result<(), Refused> {
        let mut store = lock(&self.store);
        let r = store.begin().and_then(|mut tx| {
            f(&mut *tx)?;
            tx.commit()
        });
        Ok(self.note(r)?)
    }

    /// Writes one audit row (in the caller's transaction), stamped now, naming this collector.
    fn audit_row(
        &self,
        tx: &mut dyn Transaction,
        caller: &Caller,
        action: &str,
        target: &str,
        detail: &Value,
    ) -> Result<(), Refused> {
        tokens::audit(
            tx,
            caller,
            Some(&self.opts.name),
            &self.now(),
            action,
            target,
            detail,
        )
    }

    fn bootstrap(&self) -> Result<(), Refused> {
        let mut store = lock(&self.store);
        let mut tx = store.begin()?;
        if tx.has_admin()? {
            return Ok(());
        }
        let Location::Sqlite(db) = &self.opts.db else {
            tracing::warn!(
                "no admin token in the fleet's database: make one with `tapwire token create --db URL --name NAME --role admin`"
            );
            return Ok(());
        };
        let path = bootstrap_token_path(db);
        let token = auth::generate().map_err(Refused::Internal)?;
        let name = unused_token_name(&mut *tx, "bootstrap-admin")?;
        tokens::insert(
            &mut *tx,
            &Caller::system("bootstrap"),
            Some(&self.opts.name),
            &TokenCreate {
                name: name.clone(),
                role: Role::Admin,
                probe: None,
            },
            &auth::hash(&token),
            &self.now(),
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

    /// This collector as its row in the collectors table, its lease running from now.
    fn member_row(&self) -> StoredCollector {
        let now = self.now_ns();
        StoredCollector {
            name: self.opts.name.clone(),
            incarnation: self.me.incarnation.clone(),
            advertise: self.opts.advertise.map(|a| a.to_string()),
            api_url: self.opts.api_url.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_ns: self.me.started_ns,
            heartbeat_ns: now,
            lease_until_ns: now.saturating_add(self.opts.lease.as_nanos() as i64),
            load: self.engine.load(),
        }
    }

    /// Registers this collector; refused while another process holds the name with a live
    /// lease. SQLite's database is one collector's, so there the name is taken over.
    fn join(&self) -> Result<(), Refused> {
        let mut store = lock(&self.store);
        let mut tx = store.begin()?;
        tx.lock_fleet(true)?;
        let now = self.now_ns();
        if self.opts.db.is_postgres()
            && let Some(c) = tx
                .collectors()?
                .into_iter()
                .find(|c| c.name == self.opts.name && fleet::is_live(c, now))
        {
            let left_s = (c.lease_until_ns - now) as f64 / 1e9;
            return Err(Refused::Conflict(format!(
                "collector {:?} is live in this fleet (its lease was renewed {:.1} s ago, at {}): another collector runs under this name; give this one another --name, or, if that one has just died, start again in {left_s:.0} s",
                c.name,
                (now - c.heartbeat_ns) as f64 / 1e9,
                c.advertise.as_deref().unwrap_or("no address"),
            )));
        }
        tx.put_collector(&self.member_row())?;
        self.place(&mut *tx, false)?;
        self.render_flowsets(&mut *tx)?;
        tx.bump_fleet_version()?;
        tx.commit()?;
        tracing::info!(
            collector = self.opts.name,
            incarnation = self.me.incarnation,
            "joined the fleet"
        );
        Ok(())
    }

    /// Gives up the lease at a clean stop: the fleet moves this collector's sessions at once
    /// instead of after the lease, and a restart under the same name is not refused.
    pub fn leave(&self) {
        let beat = Heartbeat {
            name: &self.opts.name,
            incarnation: &self.me.incarnation,
            at_ns: self.now_ns(),
            lease_until_ns: self.now_ns(),
            load: self.engine.load(),
        };
        match self.write(|tx| tx.heartbeat(&beat).map(drop)) {
            Ok(()) => tracing::info!(collector = self.opts.name, "left the fleet"),
            Err(e) => tracing::warn!(error = %e, "could not give up the lease"),
        }
    }

    /// Places what [`fleet::plan`] says in `tx`, each move audited as the placer's.
    /// `move_from_dead`: also the sessions of dead collectors (the placer's tick only).
    fn place(&self, tx: &mut dyn Transaction, move_from_dead: bool) -> Result<Vec<Move>, Refused> {
        let moves = fleet::plan(
            &tx.sessions()?,
            &tx.collectors()?,
            self.now_ns(),
            move_from_dead,
        );
        for m in &moves {
            tx.set_session_owner(&m.session, Some(&m.to))?;
            // A session placed in the change that makes it: that change's own audit row says
            // so (`collector: auto`); every later move has a row of its own.
            let first = m.from.is_none() && !move_from_dead;
            if !first {
                self.audit_row(
                    tx,
                    &Caller::system("placer"),
                    "session.place",
                    &m.session,
                    &json!({ "from": m.from, "to": m.to, "reason": m.reason.describe() }),
                )?;
            }
            tracing::info!(
                session = m.session,
                from = m.from.as_deref().unwrap_or("-"),
                to = m.to,
                reason = m.reason.describe(),
                "session placed"
            );
        }
        Ok(moves)
    }

    /// One heartbeat: renews the lease with the engine's load, takes the changes this
    /// collector missed, and (once connected for a whole lease) moves the sessions of dead
    /// collectors, if no other collector is placing. The fleet thread calls it every
    /// [`ControllerOptions::heartbeat`]; tests call it with their clock.
    pub fn tick(&self) {
        let beat = Heartbeat {
            name: &self.opts.name,
            incarnation: &self.me.incarnation,
            at_ns: self.now_ns(),
            lease_until_ns: self
                .now_ns()
                .saturating_add(self.opts.lease.as_nanos() as i64),
            load: self.engine.load(),
        };
        let was_connected = self.connected.load(Ordering::Relaxed);
        let read_at = self.clock.monotonic();
        let beat = {
            let mut store = lock(&self.store);
            let r = store.begin().and_then(|mut tx| {
                let mine = tx.heartbeat(&beat)?;
                let v = tx.fleet_version()?;
                tx.commit()?;
                Ok((mine, v))
            });
            self.note(r)
        };
        let (mine, version) = match beat {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %e, "heartbeat not stored");
                return;
            }
        };
        if !mine {
            self.rejoin();
        }
        if !was_connected || version != lock(&self.view).version {
            self.refresh_logged();
        } else {
            // Nothing changed since the view was read: its tokens stay trusted.
            *lock(&self.view_current_at) = Some(read_at);
        }
        let settled = lock(&self.connected_since)
            .is_some_and(|t| self.clock.monotonic().duration_since(t) >= self.opts.lease);
        if settled {
            self.place_dead();
        }
    }

    /// The row under this name is not this process's: taken over by another collector, or
    /// gone. Registers again unless a live collector holds the name.
    fn rejoin(&self) {
        match self.join() {
            Ok(()) => tracing::warn!(collector = self.opts.name, "registered again"),
            Err(e) => tracing::error!(error = %e, "this collector's name was taken over"),
        }
    }

    /// The placer's part of a tick: moves the sessions of dead collectors, if this collector
    /// holds the fleet's lock (else another is placing now).
    fn place_dead(&self) {
        let r = (|| -> Result<usize, Refused> {
            let mut store = lock(&self.store);
            let mut tx = self.note(store.begin())?;
            if !tx.lock_fleet(false)? {
                return Ok(0);
            }
            let moves = self.place(&mut *tx, true)?;
            if moves.is_empty() {
                return Ok(0);
            }
            self.render_flowsets(&mut *tx)?;
            tx.bump_fleet_version()?;
            tx.commit()?;
            Ok(moves.len())
        })();
        match r {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(moved = n, "moved the sessions of dead collectors");
                self.refresh_logged();
            }
            Err(e) => tracing::warn!(error = %e, "placement failed"),
        }
    }

    /// Reads the [`View`] again, gives the engine the sessions this collector runs now, and
    /// wakes the long-polls.
    fn refresh(&self) -> Result<(), Refused> {
        let read_at = self.clock.monotonic();
        let view = Arc::new(self.read(View::load)?);
        *lock(&self.view) = Arc::clone(&view);
        *lock(&self.view_current_at) = Some(read_at);
        let r = self.apply_owned(&view);
        self.changes.send_modify(|v| *v += 1);
        r
    }

    fn refresh_logged(&self) {
        if let Err(e) = self.refresh() {
            tracing::warn!(error = %e, "control: could not take the fleet's changes");
        }
    }

    /// Takes the changes other collectors announce (PostgreSQL's NOTIFY) as they come, and
    /// ticks every heartbeat, until `stop` is set. Without a listener (SQLite), ticks only.
    pub fn spawn_fleet(
        self: &Arc<Self>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let ctl = Arc::clone(self);
        let mut listener: Option<Box<dyn Listener>> = lock(&self.store).listener();
        std::thread::Builder::new()
            .name("tapwire-fleet".into())
            .spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now >= next {
                        ctl.tick();
                        next = now + ctl.opts.heartbeat;
                        continue;
                    }
                    let wait = (next - now).min(Duration::from_millis(250));
                    match listener.as_mut() {
                        Some(l) => {
                            if let Ok(true) = l.wait(wait) {
                                ctl.refresh_logged();
                            }
                        }
                        None => std::thread::sleep(wait),
                    }
                }
            })
    }

    /// The engine's sessions for the API sessions this collector runs.
    fn owned_configs(&self, sessions: &[StoredSession]) -> Vec<E::Session> {
        sessions
            .iter()
            .filter(|s| s.owner.as_deref() == Some(self.opts.name.as_str()))
            .filter_map(|s| match self.engine.session(s) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(session = s.name, error = e, "stored session not usable");
                    None
                }
            })
            .collect()
    }

    /// Gives the engine the sessions this collector runs per `view`, if they changed.
    fn apply_owned(&self, view: &View) -> Result<(), Refused> {
        let sessions = self.owned_configs(&view.sessions);
        let mut applied = lock(&self.applied);
        if *applied == sessions {
            return Ok(());
        }
        match self.engine.apply(sessions.clone()) {
            Ok(()) => {
                *applied = sessions;
                Ok(())
            }
            Err(EngineError::Stopped) => {
                Err(Refused::Unavailable("the collector is stopping".into()))
            }
            Err(EngineError::Refused(e)) => Err(Refused::Internal(format!(
                "stored, but the engine refused it (the configuration file changed?): {e}"
            ))),
            Err(EngineError::NoAnswer) => Err(Refused::Unavailable(
                "stored; the engine did not answer within 5 s".into(),
            )),
        }
    }

    /// Whether the database answered last time, for `/api/v1/health`: memory only.
    pub fn control_state(&self) -> ControlState {
        if self.connected.load(Ordering::Relaxed) {
            ControlState::Connected
        } else {
            ControlState::Disconnected
        }
    }

    /// Who is asking, and may they: a bearer token, else `localhost` (a viewer) for a
    /// connection from the loopback. Tokens are looked up in the [`View`] while it is known
    /// to be current (read, or its version confirmed by a heartbeat, less than
    /// [`fleet::TOKEN_CACHE`] ago; every change this collector hears of reads it again), and
    /// in the database when the view does not hold them (a token just made elsewhere works at
    /// once) or is older: a revocation anywhere in the fleet holds on every connected
    /// collector within that bound. While the database is away, the view is used however old
    /// (probes and viewers are served with the last state).
    pub fn authenticate(
        &self,
        bearer: Option<&str>,
        loopback: bool,
        need: Need,
    ) -> Result<Caller, Refused> {
        self.authenticate_as(bearer, loopback, need, false)
    }

    /// [`Self::authenticate`], with `peers`: a peer token of a collector of the fleet is a
    /// caller too (a viewer), for the routes that take them (query parts, live streams).
    /// Elsewhere a peer token is refused like an unknown one.
    pub fn authenticate_as(
        &self,
        bearer: Option<&str>,
        loopback: bool,
        need: Need,
        peers: bool,
    ) -> Result<Caller, Refused> {
        let caller = match bearer {
            Some(t) if peer::is_peer_token(t) => {
                if !peers {
                    return Err(Refused::Unauthorized(
                        "a peer token is good for query parts and live streams only".into(),
                    ));
                }
                let issuer = self
                    .peer_key
                    .verify(t, self.clock.now_ns())
                    .map_err(|e| Refused::Unauthorized(e.to_string()))?;
                let known = lock(&self.view).collectors.iter().any(|c| c.name == issuer);
                if !known && !self.peers().contains_key(&issuer) {
                    return Err(Refused::Unauthorized(format!(
                        "a peer token of {issuer:?}, which is no collector of this fleet"
                    )));
                }
                Caller::peer(&issuer)
            }
            Some(t) => {
                // Disconnected: the view at once, not a wait on the store's lock behind a
                // reconnection that may take its whole timeout.
                let disconnected = !self.connected.load(Ordering::Relaxed);
                let cached = if disconnected || self.view_is_current() {
                    auth::find(t, &lock(&self.view).tokens)
                } else {
                    None
                };
                // Not in the view: the database, where a token made on another collector a
                // moment ago already is.
                let found = match cached {
                    Some(c) => Some(c),
                    None if disconnected => None,
                    None => match self.read_store(|tx| tx.active_tokens()) {
                        Ok(active) => auth::find(t, &active),
                        Err(e) if e.is_unavailable() => auth::find(t, &lock(&self.view).tokens),
                        Err(e) => return Err(e.into()),
                    },
                };
                found.ok_or_else(|| {
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

    /// Whether the [`View`] was known to hold every change less than [`fleet::TOKEN_CACHE`]
    /// ago.
    fn view_is_current(&self) -> bool {
        let now = self.clock.monotonic();
        lock(&self.view_current_at)
            .is_some_and(|t| now.saturating_duration_since(t) < fleet::TOKEN_CACHE)
    }

    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// One change: `f` in a transaction that holds the fleet's lock, then the placement of
    /// sessions nobody runs, the checks of the whole (the sessions this collector runs merge
    /// with the file's, the flow sets render), commit, and only then the engine and the
    /// probes hear of it (and the fleet, through the database).
    fn change<T>(
        &self,
        f: impl FnOnce(&mut dyn Transaction) -> Result<T, Refused>,
    ) -> Result<T, Refused> {
        let mut store = lock(&self.store);
        let mut tx = self.note(store.begin())?;
        tx.lock_fleet(true)?;
        // Live for its own placement, whatever the last heartbeat managed.
        tx.heartbeat(&Heartbeat {
            name: &self.opts.name,
            incarnation: &self.me.incarnation,
            at_ns: self.now_ns(),
            lease_until_ns: self
                .now_ns()
                .saturating_add(self.opts.lease.as_nanos() as i64),
            load: self.engine.load(),
        })?;
        let out = f(&mut *tx)?;
        self.place(&mut *tx, false)?;
        let sessions = self.owned_configs(&tx.sessions()?);
        self.engine.check(&sessions).map_err(Refused::Conflict)?;
        self.render_flowsets(&mut *tx)?;
        tx.bump_fleet_version()?;
        let committed = tx.commit();
        self.note(committed)?;
        drop(store);
        self.refresh()?;
        Ok(out)
    }

    /// Every collector's address for probes, by name.
    fn destinations(tx: &mut dyn Transaction) -> Result<Destinations, Refused> {
        Ok(tx
            .collectors()?
            .into_iter()
            .map(|c| (c.name, c.advertise))
            .collect())
    }

    /// Renders every probe's enabled flows; a set that changed gets a new version.
    fn render_flowsets(&self, tx: &mut dyn Transaction) -> Result<(), Refused> {
        let dest = Self::destinations(tx)?;
        let sessions: BTreeMap<String, StoredSession> = tx
            .sessions()?
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let mut by_probe: BTreeMap<String, Vec<FlowSpec>> = tx
            .probes()?
            .into_iter()
            .map(|p| (p.name, Vec::new()))
            .collect();
        for f in tx.flows()?.into_iter().filter(|f| f.enabled) {
            let Some(s) = sessions.get(&f.session) else {
                continue;
            };
            match self.render(&f, s, &dest) {
                Ok(spec) => by_probe.entry(f.probe.clone()).or_default().push(spec),
                Err(e) => {
                    tracing::error!(flow = f.name, probe = f.probe, error = %e, "flow not rendered")
                }
            }
        }
        for (probe, specs) in by_probe {
            let value =
                serde_json::to_value(&specs).map_err(|e| Refused::Internal(e.to_string()))?;
            tx.set_flowset(&probe, &value)?;
        }
        Ok(())
    }

    /// A stored flow as its probe runs it: sent to the collector that runs the session. The
    /// collector address, session id and encapsulation are not the flow's fields: a problem
    /// with them names where they come from.
    fn render(
        &self,
        f: &StoredFlow,
        s: &StoredSession,
        dest: &Destinations,
    ) -> Result<FlowSpec, Refused> {
        let Some(owner) = s.owner.as_deref() else {
            return Err(Refused::Conflict(format!(
                "session {:?} runs on no collector yet (none is live)",
                s.name
            )));
        };
        let collector = match dest.get(owner).cloned().flatten() {
            Some(text) => match text.parse::<IpAddr>() {
                Ok(ip) if advertisable(ip) => ip,
                _ => {
                    return Err(Refused::Conflict(format!(
                        "session {:?} runs on {owner}, which advertises {text} to probes, not a unicast address: restart it with --advertise ADDR",
                        s.name
                    )));
                }
            },
            None => {
                return Err(Refused::Conflict(format!(
                    "session {:?} runs on {owner}, which has no address for probes to send to: start it with --advertise ADDR",
                    s.name
                )));
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
    // The fleet

    /// Every collector of the fleet with its state, lease and sessions: from the database
    /// when it answers, else as last read (`control` says which).
    pub fn fleet(&self) -> Fleet {
        let fresh = self.read(|tx| Ok((tx.collectors()?, tx.sessions()?)));
        let (collectors, sessions) = match fresh {
            Ok(v) => v,
            Err(_) => {
                let view = Arc::clone(&lock(&self.view));
                (view.collectors.clone(), view.sessions.clone())
            }
        };
        let now = self.now_ns();
        Fleet {
            collector: self.opts.name.clone(),
            control: self.control_state(),
            collectors: collectors
                .into_iter()
                .map(|c| FleetMember {
                    state: if fleet::is_live(&c, now) {
                        CollectorState::Live
                    } else {
                        CollectorState::Dead
                    },
                    lease_age_s: (now - c.heartbeat_ns).max(0) as f64 / 1e9,
                    sessions: sessions
                        .iter()
                        .filter(|s| s.owner.as_deref() == Some(c.name.as_str()))
                        .map(|s| s.name.clone())
                        .collect(),
                    advertise: c.advertise,
                    api_url: c.api_url,
                    version: c.version,
                    started: rfc3339_ns(c.started_ns.max(0) as u64),
                    pps: c.load.pps,
                    lost: c.load.lost,
                    packets: c.load.packets,
                    name: c.name,
                })
                .collect(),
        }
    }

    /// Prometheus' HTTP service discovery: one target per live collector with an API URL.
    pub fn service_discovery(&self) -> Vec<SdTarget> {
        self.fleet()
            .collectors
            .into_iter()
            .filter(|c| c.state == CollectorState::Live)
            .filter_map(|c| {
                let url = c.api_url?;
                let (scheme, rest) = url.split_once("://")?;
                let host = rest.split('/').next()?.to_string();
                let labels = BTreeMap::from([
                    ("collector".to_string(), c.name),
                    ("__scheme__".to_string(), scheme.to_string()),
                ]);
                Some(SdTarget {
                    targets: vec![host],
                    labels,
                })
            })
            .collect()
    }

    // -----------------------------------------------------------------------------------------
    // Sessions

    pub fn sessions(&self) -> Result<Vec<SessionInfo>, Refused> {
        let (sessions, flows) = self.read(|tx| Ok((tx.sessions()?, tx.flows()?)))?;
        Ok(sessions
            .into_iter()
            .map(|s| session_info(s, &flows))
            .collect())
    }

    pub fn session(&self, name: &str) -> Result<SessionInfo, Refused> {
        let (s, flows) = self.read(|tx| Ok((tx.session(name)?, tx.flows()?)))?;
        let s = s.ok_or_else(|| self.no_session(name))?;
        Ok(session_info(s, &flows))
    }

    fn no_session(&self, name: &str) -> Refused {
        if self.engine.file_session(name) {
            Refused::Conflict(format!(
                "session {name:?} is defined in the configuration file: change it there"
            ))
        } else {
            Refused::NotFound(format!("no session named {name:?}"))
        }
    }

    pub fn is_api_session(&self, name: &str) -> Result<bool, Refused> {
        self.read(|tx| Ok(tx.session(name)?.is_some()))
    }

    pub fn create_session(
        &self,
        caller: &Caller,
        req: SessionCreate,
    ) -> Result<SessionInfo, Refused> {
        validate_name(&req.name).map_err(|e| Refused::BadRequest(format!("name: {e}")))?;
        let encap = req.encap.unwrap_or_default();
        if let Some(id) = req.mirror_id
            && !(1..=1023).contains(&id)
        {
            return Err(Refused::BadRequest(format!(
                "mirror_id: {id} is not 1 to 1023 (a 10-bit ERSPAN session id)"
            )));
        }
        let at = self.now();
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
            pin: pin_of(req.collector.as_deref())?,
            owner: None,
        };
        // The definition alone, before anything is written: names the field at fault.
        self.engine
            .session(&StoredSession {
                mirror_id: 1,
                ..s.clone()
            })
            .map_err(Refused::BadRequest)?;
        self.change(|tx| {
            if tx.session(&s.name)?.is_some() {
                return Err(Refused::Conflict(format!(
                    "a session named {:?} exists",
                    s.name
                )));
            }
            if self.engine.file_session(&s.name) {
                return Err(Refused::Conflict(format!(
                    "session {:?} is defined in the configuration file (names are shared)",
                    s.name
                )));
            }
            s.mirror_id = self.mirror_id(tx, req.mirror_id, encap, None)?;
            check_pin(tx, s.pin.as_deref())?;
            tx.put_session(&s)?;
            self.audit_row(tx, caller, "session.create", &s.name, &session_detail(&s))?;
            Ok(())
        })?;
        self.session(&s.name)
    }

    /// `wanted`, if free, else the lowest free id. Ids named by the file's rules for the
    /// same kind are not free either: API sessions are matched first and would take them.
    /// `own`: the id the session has now (an update may keep it).
    fn mirror_id(
        &self,
        tx: &mut dyn Transaction,
        wanted: Option<u32>,
        encap: Encapsulation,
        own: Option<u32>,
    ) -> Result<u32, Refused> {
        let used: Vec<u32> = tx
            .used_mirror_ids()?
            .into_iter()
            .filter(|id| Some(*id) != own)
            .collect();
        let file_user = |id: u32| self.engine.file_session_gathering(encap, id);
        if let Some(id) = wanted {
            if used.contains(&id) {
                return Err(Refused::Conflict(format!(
                    "mirror_id: {id} is used by another session"
                )));
            }
            if let Some(s) = file_user(id) {
                return Err(Refused::Conflict(format!(
                    "mirror_id: {id} is gathered by session {s:?} of the configuration file"
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
        const FIELDS: &[&str] = &[
            "encap",
            "mirror_id",
            "enabled",
            "filter",
            "files",
            "tap",
            "collector",
        ];
        if let Some(k) = patch.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(Refused::BadRequest(format!(
                "unknown field `{k}`, expected one of {}",
                FIELDS.join(", ")
            )));
        }
        // New filters are compiled now, before the database is locked: the collector keeps
        // each result, so the check inside the change finds it (errors too, with their
        // message) and a slow filter holds up no one else's change.
        let tap_filter = patch.get("tap").and_then(|t| t.get("filter"));
        for f in [patch.get("filter"), tap_filter].into_iter().flatten() {
            if let Some(f) = f.as_str() {
                let _ = self.engine.check_filter(f);
            }
        }
        self.change(|tx| {
            let old = tx.session(name)?.ok_or_else(|| self.no_session(name))?;
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
                    "collector" => {
                        s.pin = match v {
                            Value::Null => None,
                            Value::String(c) => pin_of(Some(c))?,
                            _ => return Err(bad("a collector's name or \"auto\"".into())),
                        };
                        check_pin(tx, s.pin.as_deref())?;
                    }
                    "tap" => s.tap = (!v.is_null()).then(|| merge_patch(s.tap.take(), v)),
                    _ => {}
                }
            }
            self.engine.session(&s).map_err(Refused::BadRequest)?;
            if s.mirror_id != old.mirror_id || s.encap != old.encap {
                self.mirror_id(tx, Some(s.mirror_id), s.encap, Some(old.mirror_id))?;
            }
            s.updated = self.now();
            tx.put_session(&s)?;
            let action = match (old.enabled, s.enabled, patch.len()) {
                (true, false, 1) => "session.disable",
                (false, true, 1) => "session.enable",
                _ => "session.update",
            };
            self.audit_row(tx, caller, action, name, &Value::Object(patch.clone()))?;
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
            tx.session(name)?.ok_or_else(|| self.no_session(name))?;
            let users: Vec<String> = tx
                .flows()?
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
            tx.delete_session(name)?;
            self.audit_row(tx, caller, "session.delete", name, &Value::Null)
        })
    }

    /// An action on a session from the API or the collector's own terminal: enabling or
    /// disabling an API session is stored; anything else is carried out by the engine. Audited.
    pub fn session_action(
        &self,
        caller: &Caller,
        name: &str,
        action: tapwire_api_types::Action,
    ) -> Result<String, Refused> {
        use tapwire_api_types::Action;
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
        action: tapwire_api_types::Action,
    ) -> Result<String, Refused> {
        let msg = match self.engine.action(session, action) {
            Ok(m) => m,
            Err(EngineError::Refused(m)) => return Err(Refused::NotFound(m)),
            Err(EngineError::Stopped) => {
                return Err(Refused::Unavailable("the collector is stopping".into()));
            }
            Err(EngineError::NoAnswer) => {
                return Err(Refused::Unavailable("the collector did not answer".into()));
            }
        };
        let name = match action {
            tapwire_api_types::Action::Enable => "session.enable",
            tapwire_api_types::Action::Disable => "session.disable",
            tapwire_api_types::Action::Rotate => "session.rotate",
        };
        self.change(|tx| self.audit_row(tx, caller, name, session, &json!({ "runtime": true })))?;
        Ok(msg)
    }

    // -----------------------------------------------------------------------------------------
    // Flows

    pub fn flows(&self) -> Result<Vec<FlowInfo>, Refused> {
        let flows = self.read(|tx| tx.flows())?;
        Ok(flows.into_iter().map(|f| self.flow_info(f)).collect())
    }

    pub fn flow(&self, id: i64) -> Result<FlowInfo, Refused> {
        let f = self
            .read(|tx| tx.flow(id))?
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
            self.engine
                .check_filter(f)
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
        let at = self.now();
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
            let session = tx.session(&flow.session)?.ok_or_else(|| {
                if self.engine.file_session(&flow.session) {
                    Refused::BadRequest(format!(
                        "session: {:?} is a session of the configuration file; flows target sessions made through the API (they own a mirror id)",
                        flow.session
                    ))
                } else {
                    Refused::BadRequest(format!("session: no session named {:?}", flow.session))
                }
            })?;
            // Every field checked by the probe's own rules, with the values it will get.
            let dest = Self::destinations(tx)?;
            let spec = self.render(&flow, &session, &dest)?;
            self.ensure_probe(tx, &flow.probe)?;
            let existing: Vec<StoredFlow> = tx.flows()?
                .into_iter()
                .filter(|f| f.probe == flow.probe)
                .collect();
            if existing.iter().any(|f| f.name == flow.name) {
                return Err(Refused::Conflict(format!(
                    "probe {:?} has a flow named {:?}",
                    flow.probe, flow.name
                )));
            }
            let probe = tx.probe(&flow.probe)?
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
            let id = tx.insert_flow(&flow)?;
            self.audit_row(
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
        tx: &mut dyn Transaction,
        probe: &str,
        max_pps: Option<u64>,
        extra: Option<&FlowSpec>,
    ) -> Result<(), Refused> {
        let Some(max) = max_pps else {
            return Ok(());
        };
        let sessions: BTreeMap<String, StoredSession> = tx
            .sessions()?
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let dest = Self::destinations(tx)?;
        let mut specs = Vec::new();
        for f in tx
            .flows()?
            .into_iter()
            .filter(|f| f.probe == probe && f.enabled)
        {
            if let Some(s) = sessions.get(&f.session) {
                specs.push(self.render(&f, s, &dest)?);
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
            let f = tx
                .flow(id)?
                .ok_or_else(|| Refused::NotFound(format!("no flow with id {id}")))?;
            if enabled && !f.enabled {
                let probe = tx
                    .probe(&f.probe)?
                    .ok_or_else(|| Refused::Internal("probe row vanished".into()))?;
                let session = tx
                    .session(&f.session)?
                    .ok_or_else(|| Refused::Internal("session row vanished".into()))?;
                let dest = Self::destinations(tx)?;
                let spec = self.render(&f, &session, &dest)?;
                self.check_pps(tx, &f.probe, probe.max_pps, Some(&spec))?;
            }
            tx.set_flow_enabled(id, enabled, &self.now())?;
            self.audit_row(
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
            let f = tx
                .flow(id)?
                .ok_or_else(|| Refused::NotFound(format!("no flow with id {id}")))?;
            tx.delete_flow(id)?;
            self.audit_row(
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
        let now = self.clock.monotonic();
        live.polling > 0
            || live
                .last_seen
                .is_some_and(|t| now.duration_since(t) < window)
    }

    pub fn probes(&self) -> Result<Vec<ProbeInfo>, Refused> {
        let (probes, flows) = { self.read(|tx| Ok((tx.probes()?, tx.flows()?)))? };
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
                Value::String(t) => tapwire_api_types::flow::parse_rate(t)
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
            let p = tx
                .probe(name)?
                .ok_or_else(|| Refused::NotFound(format!("no probe named {name:?}")))?;
            let max_flows = limits.max_flows.unwrap_or(p.max_flows);
            let max_pps = match max_pps {
                None => p.max_pps,
                Some(0) => None,
                Some(n) => Some(n),
            };
            let n = tx.flows()?.iter().filter(|f| f.probe == name).count() as u32;
            if n > max_flows {
                return Err(Refused::Conflict(format!(
                    "probe {name:?} has {n} flows, more than max_flows {max_flows}"
                )));
            }
            self.check_pps(tx, name, max_pps, None)?;
            tx.set_probe_limits(name, max_flows, max_pps)?;
            self.audit_row(
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
            tx.probe(name)?
                .ok_or_else(|| Refused::NotFound(format!("no probe named {name:?}")))?;
            if tx.flows()?.iter().any(|f| f.probe == name) {
                return Err(Refused::Conflict(format!(
                    "probe {name:?} has flows: delete them first"
                )));
            }
            tx.delete_probe(name)?;
            self.audit_row(tx, caller, "probe.delete", name, &Value::Null)
        })?;
        lock(&self.live).remove(name);
        Ok(())
    }

    /// Counts a refused probe request (the 413s the API answers itself, for one).
    pub fn count_probe_refusal(&self, why: ProbeRefusal) {
        self.probe_refusals[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Probe requests refused since start, by reason, every reason listed.
    pub fn probe_refusals(&self) -> Vec<(ProbeRefusal, u64)> {
        ProbeRefusal::ALL
            .iter()
            .map(|&r| (r, self.probe_refusals[r as usize].load(Ordering::Relaxed)))
            .collect()
    }

    /// `r`, counted as `why`.
    fn refuse(&self, why: ProbeRefusal, r: Refused) -> Refused {
        self.count_probe_refusal(why);
        r
    }

    /// A probe token acts only as the probe it is bound to.
    fn check_acts_for(&self, caller: &Caller, probe: &str) -> Result<(), Refused> {
        if caller.role == Role::Probe && caller.probe.as_deref() != Some(probe) {
            self.count_probe_refusal(ProbeRefusal::OtherProbe);
            return Err(Refused::Forbidden(format!(
                "token {:?} is bound to probe {:?}: it may not act as probe {probe:?}",
                caller.name,
                caller.probe.as_deref().unwrap_or("")
            )));
        }
        Ok(())
    }

    /// Makes sure the controller knows probe `name`; a new name past `max_probes` is refused.
    fn ensure_probe(&self, tx: &mut dyn Transaction, name: &str) -> Result<(), Refused> {
        if tx.probe(name)?.is_some() {
            return Ok(());
        }
        let known = tx.probes()?.len();
        if known >= self.opts.max_probes as usize {
            self.count_probe_refusal(ProbeRefusal::TooManyProbes);
            return Err(Refused::Conflict(format!(
                "probe {name:?} is new and the controller knows {known} probes, its limit (--max-probes {}): delete one that is gone (tapwire probe delete NAME) or raise the limit",
                self.opts.max_probes
            )));
        }
        tx.ensure_probe(
            name,
            self.opts.max_flows_per_probe,
            self.opts.max_pps_per_probe,
        )?;
        Ok(())
    }

    pub fn register(&self, caller: &Caller, req: Register) -> Result<Registered, Refused> {
        check_probe_name(&req.name).map_err(|r| self.refuse(ProbeRefusal::Invalid, r))?;
        self.check_acts_for(caller, &req.name)?;
        check_registration(&req).map_err(|r| self.refuse(ProbeRefusal::Invalid, r))?;
        self.change(|tx| {
            let before = tx.probe(&req.name)?;
            self.ensure_probe(tx, &req.name)?;
            tx.register_probe(&req.name, &req.version, &req.interfaces, &self.now())?;
            let first = before.as_ref().is_none_or(|p| p.registered.is_none());
            let changed = before
                .as_ref()
                .is_some_and(|p| p.version.as_deref() != Some(&req.version));
            if first || changed {
                self.audit_row(
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
        let p = self
            .read(|tx| tx.probe(&req.name))?
            .ok_or_else(|| Refused::Internal("probe row vanished".into()))?;
        tracing::info!(probe = req.name, version = req.version, "probe registered");
        Ok(Registered {
            flows_version: p.flowset_version,
            report_interval_s: self.opts.report_interval.as_secs().max(1),
        })
    }

    /// The probe's flow set now.
    /// From the [`View`]: answered while the database is away.
    pub fn flowset(&self, caller: &Caller, name: &str) -> Result<FlowSet, Refused> {
        self.check_acts_for(caller, name)?;
        let p = lock(&self.view)
            .probes
            .get(name)
            .cloned()
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
    pub fn polling(self: &Arc<Self>, name: &str) -> PollGuard<E> {
        // Memory only (called on the API's runtime thread); the flow-set read before it has
        // recorded the visit.
        {
            let mut live = lock(&self.live);
            let l = live.entry(name.to_string()).or_default();
            l.polling += 1;
            l.last_seen = Some(self.clock.monotonic());
        }
        PollGuard {
            ctl: Arc::clone(self),
            name: name.to_string(),
        }
    }

    fn seen(&self, name: &str, f: impl FnOnce(&mut Live)) {
        let now = self.clock.monotonic();
        let store_it = {
            let mut live = lock(&self.live);
            let l = live.entry(name.to_string()).or_default();
            l.last_seen = Some(now);
            f(l);
            let due = l
                .last_seen_stored
                .is_none_or(|t| now.duration_since(t) > Duration::from_secs(30));
            if due {
                l.last_seen_stored = Some(now);
            }
            due
        };
        if store_it && self.connected.load(Ordering::Relaxed) {
            let at = self.now();
            let _ = self.write(|tx| tx.touch_probe(name, &at));
        }
    }

    /// Keeps the probe's last report (one per probe, replaced by the next), of at most as many
    /// flows as the probe may have.
    pub fn report(&self, caller: &Caller, name: &str, report: ProbeReport) -> Result<(), Refused> {
        self.check_acts_for(caller, name)?;
        // From the view, which every change refreshes: a report is taken while the database
        // is away.
        let p = lock(&self.view)
            .probes
            .get(name)
            .cloned()
            .filter(|p| p.registered.is_some())
            .ok_or_else(|| Refused::NotFound(format!("probe {name:?} is not registered")))?;
        let max = p.max_flows as usize;
        for (field, n) in [
            ("stats.flows", report.stats.flows.len()),
            ("refused", report.refused.len()),
        ] {
            if n > max {
                self.count_probe_refusal(ProbeRefusal::TooManyFlows);
                return Err(Refused::BadRequest(format!(
                    "{field}: {n} flows, more than probe {name:?} may have (max_flows {max})"
                )));
            }
        }
        self.seen(name, |l| l.report = Some(report));
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Tokens and audit

    pub fn tokens(&self) -> Result<Vec<TokenInfo>, Refused> {
        self.read(|tx| tx.list_tokens())
    }

    pub fn create_token(&self, caller: &Caller, req: TokenCreate) -> Result<TokenInfo, Refused> {
        let token = auth::generate().map_err(Refused::Internal)?;
        let mut info = self.change(|tx| {
            tokens::insert(
                tx,
                caller,
                Some(&self.opts.name),
                &req,
                &auth::hash(&token),
                &self.now(),
            )
        })?;
        info.token = Some(token);
        Ok(info)
    }

    pub fn revoke_token(&self, caller: &Caller, name: &str) -> Result<(), Refused> {
        self.change(|tx| tokens::revoke(tx, caller, Some(&self.opts.name), name, &self.now()))
    }

    /// Audit entries after `after`. Only an admin sees the on-finish commands that entries
    /// made before the API refused them may hold; everyone else sees them hidden.
    pub fn audit(
        &self,
        caller: &Caller,
        after: i64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, Refused> {
        let mut entries = self.read(|tx| tx.list_audit(after, limit))?;
        if caller.role != Role::Admin {
            for e in &mut entries {
                hide_commands(&mut e.detail);
            }
        }
        Ok(entries)
    }

    /// Writes catalog changes of this collector's files in one transaction.
    pub fn catalog_write(&self, changes: &[CatalogChange]) -> Result<(), StoreError> {
        let me = self.opts.name.as_str();
        let mut store = lock(&self.store);
        let r = store.begin().and_then(|mut tx| {
            for c in changes {
                match c {
                    CatalogChange::Put(f) => tx.catalog_put(&CatalogFile {
                        collector: me.to_string(),
                        ..f.clone()
                    })?,
                    CatalogChange::Mark { path, state, at_ns } => {
                        tx.catalog_mark(me, path, *state, *at_ns)?;
                    }
                    CatalogChange::Remove { path } => tx.catalog_remove(me, path)?,
                }
            }
            tx.commit()
        });
        self.note(r)
    }

    /// This collector's rows of the catalog.
    pub fn catalog_mine(&self) -> Result<Vec<CatalogFile>, StoreError> {
        self.read_store(|tx| tx.catalog_of(&self.opts.name))
    }

    /// The files of `session` (any collector's) whose packets overlap `from_ns..=to_ns`,
    /// oldest first, at most `limit`; the flag says more matched.
    pub fn catalog_files(
        &self,
        session: &str,
        from_ns: i64,
        to_ns: i64,
        limit: usize,
    ) -> Result<(Vec<CatalogFile>, bool), Refused> {
        validate_name(session).map_err(|e| Refused::BadRequest(format!("session: {e}")))?;
        let mut files = self.read(|tx| tx.catalog_range(session, from_ns, to_ns))?;
        let more = files.len() > limit;
        files.truncate(limit);
        Ok((files, more))
    }
}

/// One change to this collector's rows of the catalog of capture files.
#[derive(Debug, Clone, PartialEq)]
pub enum CatalogChange {
    /// The row as it is now (its `collector` is set to this collector's name).
    Put(CatalogFile),
    /// Only the state changes: what the row says of the file's packets stays.
    Mark {
        path: String,
        state: FileState,
        at_ns: i64,
    },
    /// The row goes (the file was renamed, or never held a capture).
    Remove { path: String },
}

/// A long-poll in flight: the probe counts as online while one lives.
pub struct PollGuard<E: Engine> {
    ctl: Arc<Controller<E>>,
    name: String,
}

impl<E: Engine> Drop for PollGuard<E> {
    /// Memory only: it runs on the API's runtime thread, which must not wait for the database.
    fn drop(&mut self) {
        let now = self.ctl.clock.monotonic();
        let mut live = lock(&self.ctl.live);
        if let Some(l) = live.get_mut(&self.name) {
            l.polling = l.polling.saturating_sub(1);
            l.last_seen = Some(now);
        }
    }
}

/// What an audit entry shows in place of a command.
pub const HIDDEN: &str = "(hidden: admins only)";

/// Replaces every `on_finish` value in `v` (a command, in entries written before the API
/// refused them) with [`HIDDEN`].
fn hide_commands(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == "on_finish" && !x.is_null() {
                    *x = Value::String(HIDDEN.into());
                } else {
                    hide_commands(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(hide_commands),
        _ => {}
    }
}

/// A registration's version and interfaces, within their bounds.
fn check_registration(req: &Register) -> Result<(), Refused> {
    if req.version.len() > 100 {
        return Err(Refused::BadRequest("version: longer than 100 bytes".into()));
    }
    if req.interfaces.len() > MAX_INTERFACES {
        return Err(Refused::BadRequest(format!(
            "interfaces: {} of them, more than {MAX_INTERFACES}",
            req.interfaces.len()
        )));
    }
    if let Some(i) = req.interfaces.iter().find(|i| i.is_empty() || i.len() > 15) {
        return Err(Refused::BadRequest(format!(
            "interfaces: {i:?} is not an interface name (1 to 15 bytes)"
        )));
    }
    Ok(())
}

pub(crate) fn check_probe_name(name: &str) -> Result<(), Refused> {
    validate_name(name).map_err(|e| Refused::BadRequest(format!("probe: {e}")))?;
    if RESERVED_PROBE_NAMES.contains(&name) {
        return Err(Refused::BadRequest(format!("probe: {name:?} is reserved")));
    }
    Ok(())
}

fn unused_token_name(tx: &mut dyn Transaction, base: &str) -> Result<String, Refused> {
    let names: Vec<String> = tx.list_tokens()?.into_iter().map(|t| t.name).collect();
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
        collector: s.pin.unwrap_or_else(|| AUTO.to_string()),
        owner: s.owner,
    }
}

/// A session's `collector` as stored: `None` for `auto`.
fn pin_of(collector: Option<&str>) -> Result<Option<String>, Refused> {
    match collector {
        None | Some(AUTO) => Ok(None),
        Some(c) => {
            validate_name(c).map_err(|e| Refused::BadRequest(format!("collector: {e}")))?;
            Ok(Some(c.to_string()))
        }
    }
}

/// A session is pinned only to a collector the fleet knows (live or not).
fn check_pin(tx: &mut dyn Transaction, pin: Option<&str>) -> Result<(), Refused> {
    let Some(pin) = pin else {
        return Ok(());
    };
    let known = tx.collectors()?;
    if known.iter().any(|c| c.name == pin) {
        return Ok(());
    }
    let names: Vec<String> = known.into_iter().map(|c| c.name).collect();
    Err(Refused::BadRequest(format!(
        "collector: no collector named {pin:?} in the fleet (known: {}; `tapwire collectors` lists them), or \"auto\"",
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    )))
}

fn session_detail(s: &StoredSession) -> Value {
    json!({
        "collector": s.pin.as_deref().unwrap_or(AUTO),
        "encap": s.encap,
        "mirror_id": s.mirror_id,
        "enabled": s.enabled,
        "filter": s.filter,
        "files": s.files,
        "tap": s.tap,
    })
}
