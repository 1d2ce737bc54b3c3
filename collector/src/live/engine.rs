//! The engine: one thread that owns the pipeline (decapsulation, source table, sequence
//! tracking), the sessions and their file outputs, and the counters. It takes filled batches
//! from the input threads, requests file-system work from the disk thread, and publishes a
//! stats snapshot every second. Owning all of this on one thread keeps the hot path free of
//! locks; the pipeline costs tens of nanoseconds per packet, far below what the kernel can
//! deliver to user space here.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender, select};
use ipnet::IpNet;
use rustc_hash::{FxHashMap, FxHashSet};
use tapwire_api_types as api;
use tapwire_formats::capture::{LinkType, PacketInfo};
use tapwire_formats::decap::Kind;
use tapwire_formats::index::Inner;

use super::input::{Batch, InputCounters, InputKind, Payload};
use super::io::{self, Event, FileId, Loss, Shared, Tally};
use super::output::{
    BUFFER_SLACK_BYTES, Counted, Ctx, FLUSH_BYTES, FileOutput, Refusal, SourceCounts, buffer_fits,
    format_name,
};
use super::rates::History;
use super::stream::{self, End, Streams};
use super::tap::{TapConfig, TapOutput};
use super::traffic::{Talkers, classify};
use crate::config::{Config, FileFlags, FilesConfig, RotateReason, SessionConfig, normalize};
use crate::demux::{Retired, SeqEvent, SequenceMode, SourceId};
use crate::offline::Timestamps;
use crate::pipeline::{self, Admission, Delivery, Fed, Pipeline};
use crate::router::{Gate, MAX_AUTO_SESSIONS, Router, Skip, Verdict};
use tapwire_api_types::time::rfc3339_ns;
use tapwire_formats::decap::SourceKey;

/// Memory for buffered output across all open files; each file's flush threshold is this
/// divided among them (between [`MIN_FLUSH_BYTES`] and [`FLUSH_BYTES`]).
const BUFFER_BUDGET_BYTES: usize = 64 << 20;
/// Output buffers kept for reuse at most.
const POOL_BUFFERS: usize = 64;
/// Distinct refused addresses remembered; the rest are counted under `other`.
const MAX_REFUSED_ADDRS: usize = 1024;
/// How often freed heap memory is given back to the kernel.
const TRIM_NS: u64 = 1_000_000_000;
/// A session with no packet for this long is idle.
const IDLE_NS: u64 = 5_000_000_000;
/// How often idle sources and auto-discovered sessions are looked for.
const EXPIRE_EVERY_NS: u64 = 1_000_000_000;

/// Default bound on the source table of `tapwire collect`: far beyond a real fleet (a sender
/// is one source per session it feeds), small enough that spoofed sources cost little.
pub const MAX_SOURCES: usize = 4096;
/// Default time without a packet after which a source, or an auto-discovered session, is
/// removed.
pub const IDLE_TIMEOUT_NS: u64 = 600_000_000_000;

/// What traffic may make the collector hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sources in the table at once; past it a new source takes the place of an idle one that
    /// no configured session takes, or is refused (`source_table_full`).
    pub max_sources: usize,
    /// Auto-discovered sessions at once; past it a source that would need one is refused
    /// (`auto_session_cap`).
    pub max_auto_sessions: usize,
    /// Sources, and auto-discovered sessions, with no packet for this long are removed: the
    /// session's file is closed, every counter stays in the totals.
    pub idle_timeout_ns: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sources: MAX_SOURCES,
            max_auto_sessions: MAX_AUTO_SESSIONS,
            idle_timeout_ns: IDLE_TIMEOUT_NS,
        }
    }
}

/// The smallest flush threshold: past 4096 open files the budget is exceeded rather than
/// writes made smaller than this.
const MIN_FLUSH_BYTES: usize = 16 << 10;
/// Each open file's flush threshold when `open` files share the budget.
fn flush_threshold(open: usize) -> usize {
    (BUFFER_BUDGET_BYTES / open.max(1)).clamp(MIN_FLUSH_BYTES, FLUSH_BYTES)
}

/// What the operator set on the command line, beside the configuration file.
#[derive(Debug, Clone)]
pub struct Settings {
    pub out: PathBuf,
    pub auto_discover: bool,
    pub allow: Vec<IpNet>,
    /// Files settings for auto-discovered sessions and sessions without their own.
    pub default_files: FilesConfig,
    pub timestamps: Timestamps,
    pub config_path: Option<PathBuf>,
    /// The command line's file flags, laid over `[defaults.files]` at every reload too.
    pub file_flags: FileFlags,
    /// Auto-discovered sessions get a monitor interface `<prefix><n>`.
    pub tap_prefix: Option<String>,
    /// The allow-list came from the configuration file, so a reload replaces it.
    pub allow_from_config: bool,
    /// Live streams served at once, across sessions.
    pub max_streams: usize,
    pub limits: Limits,
}

/// Requests from the API.
pub enum Control {
    Action {
        session: String,
        action: api::Action,
        reply: Sender<Result<String, String>>,
    },
    /// The control plane's sessions, all of them: merged with the file's (the API's first) and
    /// applied as a reload is (unchanged sessions keep their files and counters). Refused, with
    /// nothing changed, when a name or TAP clashes with the file's.
    Apply {
        sessions: Vec<SessionConfig>,
        reply: Sender<Result<(), String>>,
    },
    /// A live stream of a session's packets, from now on.
    Subscribe(stream::Request),
    /// The configuration file, read again (SIGHUP) and checked, its filters compiled, on
    /// another thread: merged with the control plane's sessions and applied. A clash is
    /// refused and the running configuration stays.
    Reload { file: Box<Config> },
}

pub struct Engine {
    pipeline: Pipeline,
    core: Core,
}

/// What one turn of the engine's loop received.
enum Got {
    Batch(Batch),
    Event(Event),
    Buffer(Vec<u8>),
    Control(Control),
}

/// The control plane's state as a snapshot shows it.
pub type ControlInfoFn = Arc<dyn Fn() -> api::ControlInfo + Send + Sync>;

/// Everything but the pipeline, so that a delivered frame (which borrows the pipeline) can be
/// handed to it.
struct Core {
    settings: Settings,
    /// What the engine runs: the API's sessions and the file's.
    config: Config,
    /// The configuration file as last loaded, published for the control plane's checks.
    file: Arc<ArcSwap<Config>>,
    /// The control plane's sessions, as last applied.
    api_sessions: Vec<SessionConfig>,
    sessions: Vec<Session>,
    /// Where each frame goes: session `i` there is `sessions[i]` here.
    router: Router,
    sources: Vec<SourceState>,
    inputs: Vec<(InputKind, Arc<InputCounters>)>,
    input_history: Vec<History>,
    /// Per input: what it read that was refused before a source was made.
    input_refusals: Vec<api::Refusals>,
    /// Frames of sources no session takes (refused, or known and routed nowhere).
    no_session: u64,
    refused: BTreeMap<IpAddr, u64>,
    refused_other: u64,
    expired: api::Expired,
    /// What sessions removed since (expired, or dropped by a reload) had counted.
    gone: Gone,
    totals_history: History,
    io: Sender<io::Cmd>,
    shared: Arc<Shared>,
    pool: Vec<Vec<u8>>,
    next_file_id: FileId,
    flush_bytes: usize,
    started_ns: u64,
    comment: String,
    snapshot: Arc<ArcSwap<api::Snapshot>>,
    control: Option<ControlInfoFn>,
    /// Streams being served (their bodies not yet dropped), for the stop.
    live_streams: Arc<AtomicUsize>,
    /// Sessions whose open stream chunk is sealed at the end of the batch.
    streaming: Vec<usize>,
}

/// The counters of sessions that no longer exist, kept for the totals.
#[derive(Debug, Default)]
struct Gone {
    written: u64,
    lost: u64,
    drops: api::Drops,
}

impl Gone {
    /// Keeps what `s` counted, for the totals, before it goes.
    fn add(&mut self, s: &Session) {
        self.written += s.written;
        self.lost += s.retirees.lost;
        add_drops(&mut self.drops, &s.drops);
    }
}

/// Counters of a session's sources that left the table, kept for the session's.
#[derive(Debug, Clone, Copy, Default)]
struct Retirees {
    lost: u64,
    truncated: u64,
    gre_checksum_bad: u64,
}

/// A session's outputs and counters (its routing is the [`Router`]'s [`Gate`]).
struct Session {
    name: String,
    config: Option<SessionConfig>,
    output: Option<FileOutput>,
    packets: u64,
    bytes: u64,
    /// Packets the disk thread reported on disk.
    written: u64,
    /// Packets encoded for a file whose buffer the disk thread has not reported on yet.
    pending: u64,
    drops: api::Drops,
    last_seen_ns: u64,
    history: History,
    tap: Option<TapOutput>,
    /// The TAP wanted but not available, and why.
    tap_error: Option<(TapConfig, String)>,
    protocols: api::ProtocolMix,
    talkers: Talkers,
    /// Its live streams, while it has subscribers.
    streams: Option<Streams>,
    stream_totals: stream::Totals,
    /// Of its sources that left the table.
    retirees: Retirees,
}

/// What the engine keeps per source beside the table, by slot; `id` says which source of the
/// slot it belongs to.
#[derive(Default)]
struct SourceState {
    /// Its packets and sequence loss so far, for the statistics blocks.
    counts: SourceCounts,
    id: Option<SourceId>,
    drops: api::Drops,
    history: History,
    last_seen_ns: u64,
    erspan: Option<api::ErspanSeen>,
}

/// Distinct values kept per ERSPAN field, so a hostile sender cannot grow the map.
const MAX_ERSPAN_VALUES: usize = 64;

impl Session {
    fn new(
        name: String,
        config: Option<SessionConfig>,
        tap: Option<TapConfig>,
        settings: &Settings,
        shared: &Shared,
    ) -> Session {
        let files = match &config {
            Some(c) => c.files.clone(),
            None => Some(settings.default_files.clone()),
        };
        let output = files.map(|f| FileOutput::new(&name, f, &settings.out, shared));
        let (tap, tap_error) = match tap {
            None => (None, None),
            Some(t) => match TapOutput::start(t.clone()) {
                Ok(o) => (Some(o), None),
                Err(e) => {
                    tracing::error!(
                        session = name,
                        tap = t.name,
                        error = e,
                        "monitor interface unavailable"
                    );
                    (None, Some((t, e)))
                }
            },
        };
        Session {
            name,
            config,
            output,
            packets: 0,
            bytes: 0,
            written: 0,
            pending: 0,
            drops: api::Drops::default(),
            last_seen_ns: 0,
            history: History::default(),
            tap,
            tap_error,
            protocols: api::ProtocolMix::default(),
            talkers: Talkers::default(),
            streams: None,
            stream_totals: stream::Totals::default(),
            retirees: Retirees::default(),
        }
    }
}

/// The engine's answer to the pipeline: the allow-list and the router's admission.
struct Gatekeeper<'a> {
    router: &'a Router,
    config: &'a Config,
}

impl Admission for Gatekeeper<'_> {
    #[inline]
    fn allows(&self, src: IpAddr) -> bool {
        self.router.allows(normalize(src))
    }

    fn admit(&mut self, key: &SourceKey) -> Result<bool, pipeline::Refusal> {
        self.router.admit(key, self.config)
    }
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Engine {
    pub fn new(
        pipeline: Pipeline,
        settings: Settings,
        config: Config,
        inputs: Vec<(InputKind, Arc<InputCounters>)>,
        io: Sender<io::Cmd>,
        shared: Arc<Shared>,
        snapshot: Arc<ArcSwap<api::Snapshot>>,
    ) -> Result<Engine, String> {
        let n_inputs = inputs.len();
        let now = now_ns();
        let router = Router::new(settings.allow.clone(), settings.auto_discover)
            .with_max_auto_sessions(settings.limits.max_auto_sessions);
        let mut core = Core {
            settings,
            file: Arc::new(ArcSwap::from_pointee(config.clone())),
            api_sessions: Vec::new(),
            config,
            sessions: Vec::new(),
            router,
            sources: Vec::new(),
            inputs,
            input_history: (0..n_inputs).map(|_| History::default()).collect(),
            input_refusals: vec![api::Refusals::default(); n_inputs],
            no_session: 0,
            refused: BTreeMap::new(),
            refused_other: 0,
            expired: api::Expired::default(),
            gone: Gone::default(),
            totals_history: History::default(),
            io,
            shared,
            pool: Vec::new(),
            next_file_id: 1,
            flush_bytes: FLUSH_BYTES,
            started_ns: now,
            comment: String::new(),
            snapshot,
            control: None,
            live_streams: Arc::new(AtomicUsize::new(0)),
            streaming: Vec::new(),
        };
        for c in core.config.sessions.clone() {
            let s = Session::new(
                c.name.clone(),
                Some(c.clone()),
                c.tap.clone(),
                &core.settings,
                &core.shared,
            );
            if let Some((t, e)) = &s.tap_error {
                return Err(format!("session {}: tap {}: {e}", c.name, t.name));
            }
            core.router.push(Gate::configured(&c));
            core.sessions.push(s);
        }
        let mut e = Engine { pipeline, core };
        e.publish(now);
        Ok(e)
    }

    /// Fills the output buffer pool with `n` buffers whose pages are touched now: the first
    /// burst then writes its records into resident memory instead of faulting in a page per
    /// 4 KiB (on a VM a host fault each) while the input's queue fills.
    pub fn prefault_output_buffers(&mut self, n: usize) {
        let bytes = self.core.flush_bytes + BUFFER_SLACK_BYTES;
        while self.core.pool.len() < n.min(POOL_BUFFERS) {
            let mut b = vec![0u8; bytes];
            b.clear();
            self.core.pool.push(b);
        }
    }

    /// What each snapshot says of the control plane (read from memory once a second).
    pub fn set_control(&mut self, info: ControlInfoFn) {
        self.core.control = Some(info);
    }

    /// The configuration file as the engine last loaded it (replaced on each reload).
    pub fn file_config(&self) -> Arc<ArcSwap<Config>> {
        Arc::clone(&self.core.file)
    }

    /// How many live streams are being served: a stopping collector lets them end first.
    pub fn live_streams(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.core.live_streams)
    }

    /// Runs until `stop` is set.
    pub fn run(
        mut self,
        batches: &Receiver<Batch>,
        events: &Receiver<Event>,
        buffers: &Receiver<Vec<u8>>,
        control: &Receiver<Control>,
        stop: &AtomicBool,
    ) {
        // What was asked before the engine ran (the control plane's sessions) comes before the
        // first packet, so that no packet of theirs is routed to an auto-discovered session.
        let start = now_ns();
        while let Ok(c) = control.try_recv() {
            self.control(c, start);
        }
        // Readers see the configured sessions from the start, not after the first second.
        self.publish(start);
        let mut next_tick = start;
        let mut next_snapshot = start + 1_000_000_000;
        let mut next_trim = start + TRIM_NS;
        let mut next_expire = start + EXPIRE_EVERY_NS;
        loop {
            let got = select! {
                recv(batches) -> b => b.map(Got::Batch).ok(),
                recv(events) -> e => e.map(Got::Event).ok(),
                recv(buffers) -> b => b.map(Got::Buffer).ok(),
                recv(control) -> c => c.map(Got::Control).ok(),
                default(Duration::from_millis(100)) => None,
            };
            // The clock is read once per turn: what arrived and the timers share it.
            let now = now_ns();
            match got {
                Some(Got::Batch(b)) => self.batch(b, now),
                Some(Got::Event(e)) => self.core.event(e, now),
                Some(Got::Buffer(b)) => self.core.recycle(b),
                Some(Got::Control(c)) => {
                    self.control(c, now);
                    // A change shows in the API at once (its caller reads it back next); the
                    // once-a-second samples behind the rates go on from here.
                    next_snapshot = now;
                }
                None => {}
            }
            if now >= next_tick {
                next_tick = now + 100_000_000;
                self.core.tick(now);
                // Incomplete outer datagrams time out even when no fragment follows them.
                self.pipeline.expire(now);
            }
            if now >= next_snapshot {
                next_snapshot = now + 1_000_000_000;
                self.publish(now);
            }
            if now >= next_expire {
                next_expire = now + EXPIRE_EVERY_NS;
                self.expire(now);
            }
            if now >= next_trim {
                next_trim = now + TRIM_NS;
                tapwire_netio::release_free_heap();
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        // What the inputs already handed over is written, then every file is closed and every
        // stream ended.
        let now = now_ns();
        while let Ok(b) = batches.try_recv() {
            self.batch(b, now);
        }
        for s in &mut self.core.sessions {
            if let Some(mut st) = s.streams.take() {
                st.close(End::CollectorStopping, &mut s.stream_totals);
            }
        }
        for i in 0..self.core.sessions.len() {
            self.core
                .with_output(i, |out, ctx| out.finish(ctx, RotateReason::Shutdown, now));
        }
        // The last buffers' reports, so that the final snapshot counts them written or lost;
        // the disk thread writes them now in any case.
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while self.core.sessions.iter().any(|s| s.pending > 0) {
            match events.recv_deadline(deadline) {
                Ok(e) => self.core.event(e, now_ns()),
                Err(_) => break,
            }
        }
        self.publish(now_ns());
    }

    /// One batch from an input; `now` is read once for all of it.
    fn batch(&mut self, b: Batch, now: u64) {
        let Batch {
            input,
            payload,
            back,
        } = b;
        let (pipeline, core) = (&mut self.pipeline, &mut self.core);
        match &payload {
            Payload::Socket(batch) => {
                let kind = core.inputs[input].0.clone();
                for m in batch.messages() {
                    let src = m.source.map(|s| normalize(s.ip()));
                    let ts = m.ts_ns.unwrap_or(now);
                    let mut gate = Gatekeeper {
                        router: &core.router,
                        config: &core.config,
                    };
                    let fed = match (&kind, src) {
                        (InputKind::GreV4(_), _) => pipeline.ip(&mut gate, m.data, ts),
                        (InputKind::GreV6(_), Some(src)) => {
                            pipeline.gre(&mut gate, src, m.data, ts)
                        }
                        (InputKind::Udp(addr), Some(src)) => {
                            pipeline.udp(&mut gate, src, addr.port(), m.data, ts)
                        }
                        _ => Fed::Other,
                    };
                    core.fed(input, fed, ts, now);
                }
            }
            Payload::Frames(frames) => {
                for &(off, len, _wire_len, ts) in &frames.frames {
                    let Some(frame) = frames.data.get(off as usize..(off + len) as usize) else {
                        continue;
                    };
                    let mut gate = Gatekeeper {
                        router: &core.router,
                        config: &core.config,
                    };
                    let fed = pipeline.link(&mut gate, LinkType::Ethernet, frame, ts);
                    core.fed(input, fed, ts, now);
                }
            }
        }
        let _ = back.send(payload);
        core.seal_streams();
    }

    fn publish(&mut self, now: u64) {
        let snap = self.core.snapshot(&self.pipeline, now);
        self.core.snapshot.store(Arc::new(snap));
    }

    /// Removes the sources, then the auto-discovered sessions, that had no packet for the idle
    /// timeout; their counters stay in their session's and in the totals.
    fn expire(&mut self, now: u64) {
        let idle = self.core.settings.limits.idle_timeout_ns;
        let gone = self.pipeline.expire_sources(now, idle);
        if !gone.is_empty() {
            tracing::debug!(n = gone.len(), "idle sources removed");
        }
        self.core.expired.sources += gone.len() as u64;
        self.core.retire(&gone);
        self.core.expire_sessions(now, idle);
    }

    fn control(&mut self, c: Control, now: u64) {
        match c {
            Control::Apply { sessions, reply } => {
                let file = self.core.file.load_full();
                match crate::config::merged(&file, &sessions) {
                    Ok(config) => {
                        self.core.api_sessions = sessions;
                        self.apply(config, now);
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            Control::Subscribe(req) => self.core.subscribe(req, now),
            Control::Reload { file } => self.reload(*file, now),
            c => self.core.control(c, now),
        }
    }

    /// The configuration file read again. One that clashes with the control plane's sessions
    /// is refused and the running configuration stays; sessions whose definition did not
    /// change keep their state and open files.
    fn reload(&mut self, file: Config, now: u64) {
        match crate::config::merged(&file, &self.core.api_sessions) {
            Ok(merged) => {
                self.core.file.store(Arc::new(file));
                self.apply(merged, now);
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration refused; keeping the running one");
            }
        }
    }

    /// Runs `config`: sessions whose definition did not change keep their state and open
    /// files; changed ones keep their counters and start a new file.
    fn apply(&mut self, config: Config, now: u64) {
        let (core, pipeline) = (&mut self.core, &mut self.pipeline);
        let mut old: FxHashMap<String, Session> = std::mem::take(&mut core.sessions)
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let mut old_gates = core.router.take_sessions();
        let mut gates = Vec::with_capacity(config.sessions.len());
        for c in &config.sessions {
            let (s, gate) = match (old.remove(&c.name), old_gates.remove(&c.name)) {
                // Unchanged: it keeps its state, the switch an action set included.
                (Some(s), Some(g)) if s.config.as_ref() == Some(c) => (s, g),
                (Some(mut s), _) => {
                    core.finish(&mut s, now);
                    // An unchanged TAP carries over; a changed one is closed before the new
                    // one (maybe of the same name) is created.
                    let same_tap = s.config.as_ref().and_then(|o| o.tap.as_ref()) == c.tap.as_ref();
                    let kept_tap = if same_tap { s.tap.take() } else { None };
                    s.tap = None;
                    let tap = if kept_tap.is_some() {
                        None
                    } else {
                        c.tap.clone()
                    };
                    let mut n = Session::new(
                        c.name.clone(),
                        Some(c.clone()),
                        tap,
                        &core.settings,
                        &core.shared,
                    );
                    if kept_tap.is_some() {
                        n.tap = kept_tap;
                    }
                    // The same session, reconfigured: its counters carry over.
                    n.packets = s.packets;
                    n.bytes = s.bytes;
                    n.written = s.written;
                    n.pending = s.pending;
                    n.drops = s.drops;
                    n.last_seen_ns = s.last_seen_ns;
                    n.history = s.history;
                    n.protocols = s.protocols;
                    n.talkers = s.talkers;
                    n.streams = s.streams.take();
                    n.stream_totals = s.stream_totals;
                    (n, Gate::configured(c))
                }
                (None, _) => (
                    Session::new(
                        c.name.clone(),
                        Some(c.clone()),
                        c.tap.clone(),
                        &core.settings,
                        &core.shared,
                    ),
                    Gate::configured(c),
                ),
            };
            gates.push(gate);
            core.sessions.push(s);
        }
        // Auto-discovered sessions stay while no configured session claims their source.
        let mut rest: Vec<Session> = old.into_values().collect();
        rest.sort_by(|a, b| a.name.cmp(&b.name));
        for mut s in rest {
            let gate = old_gates.remove(&s.name);
            let keep = gate.as_ref().is_some_and(|g| {
                g.auto
                    && g.sources
                        .first()
                        .and_then(|&id| pipeline.key(id))
                        .is_some_and(|k| config.session_for(&k).is_none())
            });
            match gate {
                Some(g) if keep => {
                    gates.push(g);
                    core.sessions.push(s);
                }
                _ => {
                    core.finish(&mut s, now);
                    core.gone.add(&s);
                }
            }
        }
        if core.settings.allow_from_config {
            core.settings.allow = config.collector.allow.clone();
            core.router.set_allow(config.collector.allow.clone());
        }
        core.config = config;
        let known = pipeline.demux().iter().map(|(id, s)| (id, s.key));
        let (discovered, pins) = core.router.reset(gates, &core.config, known);
        for (id, pinned) in pins {
            pipeline.set_pinned(id, pinned);
        }
        for i in discovered {
            core.discovered(i);
        }
        tracing::info!(sessions = core.sessions.len(), "configuration reloaded");
    }
}

impl Core {
    fn recycle(&mut self, mut b: Vec<u8>) {
        if self.pool.len() < POOL_BUFFERS && buffer_fits(b.capacity(), self.flush_bytes) {
            b.clear();
            self.pool.push(b);
        }
    }

    /// Runs `f` on session `i`'s output with the context it needs.
    fn with_output<R>(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut FileOutput, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        let out = self.sessions[i].output.as_mut()?;
        let mut ctx = Ctx {
            io: &self.io,
            shared: &self.shared,
            pool: &mut self.pool,
            next_file_id: &mut self.next_file_id,
            flush_bytes: self.flush_bytes,
        };
        Some(f(out, &mut ctx))
    }

    fn finish(&mut self, s: &mut Session, now: u64) {
        if let Some(out) = s.output.as_mut() {
            let mut ctx = Ctx {
                io: &self.io,
                shared: &self.shared,
                pool: &mut self.pool,
                next_file_id: &mut self.next_file_id,
                flush_bytes: self.flush_bytes,
            };
            out.finish(&mut ctx, RotateReason::Reconfigured, now);
        }
    }

    /// What the pipeline made of one packet read by input `input`.
    #[inline]
    fn fed(&mut self, input: usize, fed: Fed<'_>, ts: u64, now: u64) {
        match fed {
            Fed::Delivered(d) => self.deliver(&d, ts, now),
            Fed::Refused(r, src) => {
                r.count_in(&mut self.input_refusals[input]);
                match r {
                    pipeline::Refusal::NotAllowed => self.refuse(normalize(src)),
                    pipeline::Refusal::NoSession => self.no_session += 1,
                    pipeline::Refusal::AutoSessionCap | pipeline::Refusal::SourceTableFull => {}
                }
            }
            Fed::Other => {}
        }
    }

    /// Sources that left the table: their counters go to their session's, their id is
    /// forgotten.
    fn retire(&mut self, gone: &[Retired]) {
        if gone.is_empty() {
            return;
        }
        for r in gone {
            if let Some(&Some(i)) = self.router.routes().get(r.id.slot()) {
                let t = &mut self.sessions[i].retirees;
                t.lost += r.sequence.lost;
                t.truncated += r.truncated;
                t.gre_checksum_bad += r.gre_checksum_bad;
            }
            if let Some(st) = self.sources.get_mut(r.id.slot())
                && st.id == Some(r.id)
            {
                *st = SourceState::default();
            }
        }
        let ids: Vec<SourceId> = gone.iter().map(|r| r.id).collect();
        self.router.forget(&ids);
    }

    /// Auto-discovered sessions with no source left and no packet for `idle_ns`: the file is
    /// finished and the TAP closed; the session goes once the disk thread has reported every
    /// packet it was handed, so that none of its counts is lost (a packet for it meanwhile
    /// keeps it).
    fn expire_sessions(&mut self, now: u64, idle_ns: u64) {
        let mut remove = FxHashSet::default();
        for i in 0..self.sessions.len() {
            let g = self.router.session(i);
            if !g.auto
                || !g.sources.is_empty()
                || now.saturating_sub(self.sessions[i].last_seen_ns) < idle_ns
            {
                continue;
            }
            self.with_output(i, |out, ctx| out.finish(ctx, RotateReason::Idle, now));
            let s = &mut self.sessions[i];
            s.tap = None;
            if s.pending == 0 && !s.output.as_ref().is_some_and(FileOutput::is_open) {
                remove.insert(i);
            }
        }
        if remove.is_empty() {
            return;
        }
        for &i in &remove {
            let s = &self.sessions[i];
            tracing::info!(session = s.name, "auto-discovered session expired");
            self.gone.add(s);
        }
        self.expired.auto_sessions += remove.len() as u64;
        self.router.retain_sessions(|i| !remove.contains(&i));
        let mut i = 0;
        self.sessions.retain(|_| {
            i += 1;
            !remove.contains(&(i - 1))
        });
    }

    fn refuse(&mut self, src: IpAddr) {
        if let Some(n) = self.refused.get_mut(&src) {
            *n += 1;
        } else if self.refused.len() < MAX_REFUSED_ADDRS {
            self.refused.insert(src, 1);
        } else {
            self.refused_other += 1;
        }
    }

    /// Creates the outputs of the session the router made for a new source no configured
    /// session takes (auto-discovery): session `i`, the next one.
    fn discovered(&mut self, i: usize) {
        let name = self.router.session(i).name.clone();
        debug_assert_eq!(
            i,
            self.sessions.len(),
            "the router's sessions are the engine's"
        );
        tracing::info!(session = name, "new source: auto-discovered session");
        let tap = self.settings.tap_prefix.as_ref().map(|p| {
            // The lowest number free: names stay short however many sessions came and went.
            let taken: FxHashSet<&str> = self
                .sessions
                .iter()
                .filter_map(|s| {
                    let t = s.tap.as_ref().map(|t| &t.config);
                    t.or(s.tap_error.as_ref().map(|(c, _)| c))
                })
                .map(|c| c.name.as_str())
                .collect();
            let n = (0..)
                .find(|n| !taken.contains(format!("{p}{n}").as_str()))
                .unwrap_or(0);
            TapConfig::named(&format!("{p}{n}"))
        });
        self.sessions
            .push(Session::new(name, None, tap, &self.settings, &self.shared));
        // Many sessions can appear within a second: lower the threshold now, not at the tick,
        // or each would fill a buffer sized for few.
        self.flush_bytes = self.flush_bytes.min(flush_threshold(self.sessions.len()));
    }

    /// Routes one delivered frame to its session (the router's verdict), counts it and
    /// writes it.
    fn deliver(&mut self, d: &Delivery<'_>, ts: u64, now: u64) {
        if let Some(gone) = &d.evicted {
            tracing::debug!(source = %gone.key, new = %d.key, "idle source evicted from a full table");
            self.expired.sources_evicted += 1;
            self.retire(&[**gone]);
        }
        let id = d.source.slot();
        if self.sources.len() <= id {
            self.sources.resize_with(id + 1, SourceState::default);
        }
        if self.sources[id].id != Some(d.source) {
            self.sources[id] = SourceState {
                id: Some(d.source),
                ..SourceState::default()
            };
        }
        if d.new_source {
            tracing::info!(source = %d.key, "new source");
        }
        let routed = self.router.deliver(d, &self.config);
        if let Some(i) = routed.discovered {
            self.discovered(i);
        }
        let st = &mut self.sources[id];
        st.last_seen_ns = ts;
        let gap = match d.seq_event {
            Some(SeqEvent::Gap { lost, .. }) => u64::from(lost),
            _ => 0,
        };
        let before = st.counts;
        st.counts.packets += 1;
        st.counts.lost += gap;
        let counted = Counted {
            before,
            after: st.counts,
        };
        if matches!(d.key.kind, Kind::ErspanII | Kind::ErspanIII) {
            seen(st.erspan.get_or_insert_with(api::ErspanSeen::default), d);
        }
        let (si, skip) = match routed.verdict {
            Verdict::NoSession => {
                st.drops.no_session += 1;
                self.no_session += 1;
                return;
            }
            Verdict::Skip(i, why) => (i, Some(why)),
            Verdict::Write(i) => (i, None),
        };
        let s = &mut self.sessions[si];
        s.packets += 1;
        s.bytes += d.frame.len() as u64;
        s.last_seen_ns = ts;
        // One parse of the inner headers serves the traffic mix and the file's index.
        let inner = Inner::parse(d.link, d.frame);
        if let Some(addr) = classify(&mut s.protocols, &inner.class) {
            s.talkers.add(addr, d.frame.len() as u64);
        }
        match skip {
            Some(Skip::Disabled) => {
                s.drops.disabled += 1;
                st.drops.disabled += 1;
                return;
            }
            Some(Skip::Filter) => {
                s.drops.filter += 1;
                st.drops.filter += 1;
                return;
            }
            None => {}
        }
        if let Some(tap) = &s.tap {
            tap.send(d.link, d.frame, d.meta.vlan, d.meta.cos);
        }
        if s.output.is_none() && s.streams.is_none() {
            return;
        }
        self.comment.clear();
        d.comment(&mut self.comment);
        let packet = PacketInfo {
            ts_ns: match self.settings.timestamps {
                Timestamps::Erspan => d.meta.erspan_time_ns.unwrap_or(ts),
                Timestamps::Input => ts,
            },
            orig_len: d.frame.len() as u32,
            data: d.frame,
            direction: d.meta.direction,
            comment: (!self.comment.is_empty()).then_some(self.comment.as_str()),
        };
        if let Some(streams) = s.streams.as_mut()
            && streams.push(
                d.source,
                &d.key,
                d.link,
                &packet,
                counted,
                &mut s.stream_totals,
            )
        {
            self.streaming.push(si);
        }
        let Some(out) = s.output.as_mut() else { return };
        let mut ctx = Ctx {
            io: &self.io,
            shared: &self.shared,
            pool: &mut self.pool,
            next_file_id: &mut self.next_file_id,
            flush_bytes: self.flush_bytes,
        };
        match out.write(
            &mut ctx,
            d.source,
            &d.key,
            d.link,
            &packet,
            &inner.keys,
            counted,
            now,
        ) {
            Ok(()) => s.pending += 1,
            Err(Refusal::DiskGuard) => {
                s.drops.disk_guard += 1;
                st.drops.disk_guard += 1;
            }
            Err(Refusal::WriteError) => {
                s.drops.write_error += 1;
                st.drops.write_error += 1;
            }
            Err(Refusal::Backlog) => {
                s.drops.backlog += 1;
                st.drops.backlog += 1;
            }
        }
    }

    /// What the disk thread did. Events are routed by session name: a session reconfigured
    /// in the meantime is the same session, and counts its old file's packets.
    fn event(&mut self, e: Event, now: u64) {
        match e {
            Event::Opened {
                session,
                file,
                path,
            } => {
                if let Some(out) = self.output_of(&session) {
                    out.opened(file, path);
                }
            }
            Event::OpenFailed {
                session,
                file,
                error,
            } => {
                // Records handed over for it come back as failed writes and are counted then;
                // those still in its buffer are counted here.
                let Some(i) = self.router.index(&session) else {
                    return;
                };
                let s = &mut self.sessions[i];
                tracing::warn!(session = s.name, error, "output unavailable");
                let lost = s
                    .output
                    .as_mut()
                    .map(|out| out.open_failed(file, error, now))
                    .unwrap_or_default();
                self.lost(Some(i), &lost, Loss::WriteError);
            }
            Event::Written {
                session,
                file,
                tally,
            } => {
                let n = packets(&tally);
                match self.router.index(&session) {
                    Some(i) => {
                        let s = &mut self.sessions[i];
                        s.written += n;
                        s.pending = s.pending.saturating_sub(n);
                        if let Some(out) = s.output.as_mut() {
                            out.written(file);
                        }
                    }
                    // A reload dropped the session: its last packets still count.
                    None => self.gone.written += n,
                }
            }
            Event::WriteFailed {
                session,
                file,
                tally,
                loss,
                error,
            } => {
                let i = self.router.index(&session);
                if let Some(out) = i.and_then(|i| self.sessions[i].output.as_mut()) {
                    out.write_failed(file, loss, error, now);
                }
                if i.is_none() {
                    count_loss(&mut self.gone.drops, loss, packets(&tally));
                }
                self.lost(i, &tally, loss);
            }
            Event::Vanished { session, file } => {
                if let Some(i) = self.router.index(&session) {
                    self.with_output(i, |out, ctx| out.vanished(ctx, file, now));
                }
            }
            Event::Closed { .. } => {}
        }
    }

    fn output_of(&mut self, session: &str) -> Option<&mut FileOutput> {
        let i = self.router.index(session)?;
        self.sessions[i].output.as_mut()
    }

    /// Counts pending packets that were not written as dropped, per source and for session
    /// `si` (if it still exists).
    fn lost(&mut self, si: Option<usize>, tally: &Tally, loss: Loss) {
        for &(src, n) in tally {
            if let Some(st) = self.sources.get_mut(src.slot())
                && st.id == Some(src)
            {
                count_loss(&mut st.drops, loss, n);
            }
        }
        if let Some(s) = si.map(|i| &mut self.sessions[i]) {
            let n = packets(tally);
            count_loss(&mut s.drops, loss, n);
            s.pending = s.pending.saturating_sub(n);
        }
    }

    fn tick(&mut self, now: u64) {
        let open = self
            .sessions
            .iter()
            .filter(|s| s.output.as_ref().is_some_and(FileOutput::is_open))
            .count()
            .max(1);
        self.flush_bytes = flush_threshold(open);
        for i in 0..self.sessions.len() {
            self.with_output(i, |out, ctx| out.tick(ctx, now));
        }
        for s in &mut self.sessions {
            if let Some(st) = s.streams.as_mut() {
                st.tick();
                if st.is_empty() {
                    s.streams = None;
                }
            }
        }
    }

    /// Hands each session's packets of this batch to its streams.
    fn seal_streams(&mut self) {
        for i in self.streaming.drain(..) {
            if let Some(s) = self.sessions.get_mut(i)
                && let Some(st) = s.streams.as_mut()
            {
                st.seal(&mut s.stream_totals);
            }
        }
    }

    /// A new live stream of a session, if the session exists and the cap allows.
    fn subscribe(&mut self, req: stream::Request, now: u64) {
        let Some(i) = self.router.index(&req.session) else {
            let _ = req.reply.send(Err(stream::Refusal::NoSession(req.session)));
            return;
        };
        let n: usize = self
            .sessions
            .iter()
            .filter_map(|s| s.streams.as_ref())
            .map(Streams::len)
            .sum();
        if n >= self.settings.max_streams {
            let _ = req
                .reply
                .send(Err(stream::Refusal::Full(self.settings.max_streams)));
            return;
        }
        let baseline = self
            .router
            .session(i)
            .sources
            .iter()
            .map(|&id| {
                let counts = self
                    .sources
                    .get(id.slot())
                    .filter(|st| st.id == Some(id))
                    .map(|st| st.counts)
                    .unwrap_or_default();
                (id, counts)
            })
            .collect();
        let s = &mut self.sessions[i];
        let streams = s.streams.get_or_insert_with(Streams::new);
        let sub = streams.subscribe(
            &req,
            baseline,
            &self.live_streams,
            now,
            &mut s.stream_totals,
        );
        tracing::info!(session = req.session, peer = req.peer, filter = ?req.filter, "live stream started");
        let _ = req.reply.send(Ok(sub));
    }

    fn control(&mut self, c: Control, now: u64) {
        let Control::Action {
            session,
            action,
            reply,
        } = c
        else {
            return;
        };
        let Some(i) = self.router.index(&session) else {
            let _ = reply.send(Err(format!("no session named {session:?}")));
            return;
        };
        let msg = match action {
            api::Action::Enable => {
                self.router.set_enabled(i, true);
                format!("session {session} enabled")
            }
            api::Action::Disable => {
                self.router.set_enabled(i, false);
                self.with_output(i, |out, ctx| out.finish(ctx, RotateReason::Requested, now));
                format!("session {session} disabled")
            }
            api::Action::Rotate => {
                if self
                    .with_output(i, |out, ctx| out.finish(ctx, RotateReason::Requested, now))
                    .is_none()
                {
                    let _ = reply.send(Err(format!("session {session} writes no files")));
                    return;
                }
                format!("session {session} rotated")
            }
        };
        tracing::info!(session, ?action, "action from the API");
        let _ = reply.send(Ok(msg));
    }

    fn snapshot(&mut self, pipeline: &Pipeline, now: u64) -> api::Snapshot {
        let demux = pipeline.demux();
        let mut sessions = Vec::with_capacity(self.sessions.len());
        let (mut total_lost, mut total_written, mut total_pending) = (0, 0, 0);
        let mut drops = api::Drops::default();
        for (s, g) in self.sessions.iter_mut().zip(self.router.sessions()) {
            let mut sources = Vec::with_capacity(g.sources.len());
            let r = s.retirees;
            let (mut lost, mut truncated, mut gre_checksum_bad) =
                (r.lost, r.truncated, r.gre_checksum_bad);
            for &id in &g.sources {
                let (Some(src), Some(st)) = (demux.source(id), self.sources.get_mut(id.slot()))
                else {
                    continue;
                };
                let seq = demux.sequence(id);
                lost += seq.lost;
                truncated += src.truncated;
                gre_checksum_bad += src.gre_checksum_bad;
                sources.push(api::SourceStats {
                    src: src.key.src.to_string(),
                    kind: src.key.kind.to_string(),
                    id: src.key.id,
                    label: src.key.to_string(),
                    packets: src.packets,
                    bytes: src.bytes,
                    lost: seq.lost,
                    duplicates: seq.duplicates,
                    reordered: seq.reordered,
                    truncated: src.truncated,
                    gre_checksum_bad: src.gre_checksum_bad,
                    sequence: match seq.mode {
                        SequenceMode::None => api::Sequence::None,
                        SequenceMode::PerSource => api::Sequence::PerSource,
                        SequenceMode::SharedBySender => api::Sequence::SharedBySender,
                    },
                    drops: st.drops,
                    first_seen: src.first_ts_ns.map(rfc3339_ns),
                    last_seen: (st.last_seen_ns > 0).then(|| rfc3339_ns(st.last_seen_ns)),
                    rates: st.history.push(now, src.packets, src.bytes),
                    erspan: st.erspan.clone(),
                });
            }
            // The order pages are cut in (`after` is a cursor into it).
            sources.sort_by_cached_key(api::source_cursor);
            total_lost += lost;
            total_written += s.written;
            total_pending += s.pending;
            add_drops(&mut drops, &s.drops);
            let error = s
                .output
                .as_ref()
                .and_then(|o| o.error.clone())
                .or_else(|| s.tap_error.as_ref().map(|(_, e)| e.clone()));
            let state = if !g.enabled {
                api::SessionState::Disabled
            } else if error.is_some() {
                api::SessionState::Error
            } else if s.last_seen_ns > 0 && now.saturating_sub(s.last_seen_ns) < IDLE_NS {
                api::SessionState::Receiving
            } else {
                api::SessionState::Idle
            };
            sessions.push(api::SessionStats {
                name: s.name.clone(),
                state,
                enabled: g.enabled,
                auto: g.auto,
                filter: g.filter.as_ref().map(|f| f.expr().to_string()),
                packets: s.packets,
                bytes: s.bytes,
                written: s.written,
                pending: s.pending,
                lost,
                truncated,
                gre_checksum_bad,
                drops: s.drops,
                rates: s.history.push(now, s.packets, s.bytes),
                last_seen: (s.last_seen_ns > 0).then(|| rfc3339_ns(s.last_seen_ns)),
                n_sources: sources.len() as u64,
                sources_page: None,
                files: s.output.as_ref().map(|o| api::FileStats {
                    dir: o.dir().display().to_string(),
                    format: format_name(o.cfg.format).to_string(),
                    current: o.current_path().map(|p| p.display().to_string()),
                    current_bytes: o.current_bytes(),
                    files_finished: o.files_finished,
                    error,
                }),
                sources,
                protocols: s.protocols,
                top_talkers: s.talkers.top(),
                tap: tap_stats(s),
                streams: api::StreamStats {
                    delivered: s.stream_totals.delivered,
                    dropped: s.stream_totals.dropped,
                    subscribers: s.streams.as_ref().map(Streams::stats).unwrap_or_default(),
                },
            });
        }
        sessions.sort_by(|a, b| a.name.cmp(&b.name));
        total_written += self.gone.written;
        total_lost += self.gone.lost;
        add_drops(&mut drops, &self.gone.drops);
        drops.no_session = self.no_session;

        let mut inputs = Vec::with_capacity(self.inputs.len());
        let (mut kernel_drops, mut packets, mut bytes) = (0, 0, 0);
        for (i, (kind, c)) in self.inputs.iter().enumerate() {
            let p = c.packets.load(Ordering::Relaxed);
            let b = c.bytes.load(Ordering::Relaxed);
            let k = c.kernel_drops.load(Ordering::Relaxed);
            packets += p;
            bytes += b;
            kernel_drops += k;
            inputs.push(api::InputStats {
                name: kind.name(),
                kind: kind.kind().to_string(),
                interface: kind.interface().map(str::to_string),
                mode: c.mode(),
                reason: c.reason(),
                passed_to_kernel: c.passed.load(Ordering::Relaxed),
                packets: p,
                bytes: b,
                kernel_drops: k,
                refusals: self.input_refusals[i],
                error: c.error(),
                rates: self.input_history[i].push(now, p, b),
            });
        }
        let t = pipeline.totals();
        let mut refused: BTreeMap<String, u64> = self
            .refused
            .iter()
            .map(|(a, n)| (a.to_string(), *n))
            .collect();
        if self.refused_other > 0 {
            refused.insert("other".into(), self.refused_other);
        }
        let malformed: BTreeMap<String, u64> = t
            .malformed
            .iter()
            .map(|(r, n)| (r.to_string(), *n))
            .collect();
        let d = pipeline.defrag_stats();
        api::Snapshot {
            version: env!("CARGO_PKG_VERSION").to_string(),
            started: rfc3339_ns(self.started_ns),
            uptime_s: now.saturating_sub(self.started_ns) as f64 / 1e9,
            totals: api::Totals {
                packets,
                decapsulated: t.decapsulated,
                written: total_written,
                pending: total_pending,
                lost: total_lost,
                kernel_drops,
                drops,
                refusals: t.refused,
                expired: self.expired,
                not_mirror: t
                    .not_mirror
                    .iter()
                    .map(|(k, n)| (k.to_string(), *n))
                    .collect(),
                malformed,
                refused,
                sources: demux.len() as u64,
                sessions: sessions.len() as u64,
                rates: self.totals_history.push(now, packets, bytes),
                defrag: api::Defrag {
                    fragments: d.fragments,
                    held: t.held_fragments,
                    reassembled: d.reassembled,
                    evicted_timeout: d.evicted_timeout,
                    evicted_memory: d.evicted_memory,
                    invalid: d.invalid,
                    pending_datagrams: pipeline.pending_datagrams() as u64,
                },
            },
            inputs,
            sessions,
            control: self.control.as_ref().map(|f| f()),
            page: None,
        }
    }
}

fn tap_stats(s: &Session) -> Option<api::TapStats> {
    if let Some(t) = &s.tap {
        let c = &t.counters;
        return Some(api::TapStats {
            name: t.config.name.clone(),
            netns: t.config.netns.clone(),
            written: c.written.load(Ordering::Relaxed),
            tap_dropped: c.dropped.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            filtered: c.filtered.load(Ordering::Relaxed),
            error: None,
        });
    }
    s.tap_error.as_ref().map(|(cfg, e)| api::TapStats {
        name: cfg.name.clone(),
        netns: cfg.netns.clone(),
        error: Some(e.clone()),
        ..api::TapStats::default()
    })
}

/// Records the ERSPAN fields a frame carried.
fn seen(e: &mut api::ErspanSeen, d: &Delivery<'_>) {
    if let Some(v) = d.meta.vlan
        && (e.vlans.len() < MAX_ERSPAN_VALUES || e.vlans.contains_key(&v))
    {
        *e.vlans.entry(v).or_default() += 1;
    }
    match d.meta.direction {
        Some(tapwire_formats::wire::erspan::Direction::Ingress) => e.ingress += 1,
        Some(tapwire_formats::wire::erspan::Direction::Egress) => e.egress += 1,
        None => {}
    }
    if let Some(h) = d.meta.hardware_id
        && (e.hardware_ids.len() < MAX_ERSPAN_VALUES || e.hardware_ids.contains_key(&h))
    {
        *e.hardware_ids.entry(h).or_default() += 1;
    }
}

fn packets(tally: &Tally) -> u64 {
    tally.iter().map(|t| t.1).sum()
}

fn count_loss(d: &mut api::Drops, loss: Loss, n: u64) {
    match loss {
        Loss::DiskFull => d.disk_full += n,
        Loss::WriteError => d.write_error += n,
    }
}

fn add_drops(a: &mut api::Drops, b: &api::Drops) {
    a.disabled += b.disabled;
    a.filter += b.filter;
    a.disk_guard += b.disk_guard;
    a.disk_full += b.disk_full;
    a.write_error += b.write_error;
    a.backlog += b.backlog;
    a.no_session += b.no_session;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_budget_is_shared_by_the_open_files() {
        assert_eq!(flush_threshold(0), FLUSH_BYTES);
        assert_eq!(flush_threshold(64), FLUSH_BYTES);
        assert_eq!(flush_threshold(256), 256 << 10);
        assert_eq!(flush_threshold(4096), 16 << 10);
        // Never below 16 KiB, so writes stay large enough; memory is then 16 KiB per open file.
        assert_eq!(flush_threshold(65_536), 16 << 10);
    }
}
