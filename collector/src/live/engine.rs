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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender, select};
use ipnet::IpNet;
use rustc_hash::FxHashMap;
use tapwire_api_types as api;
use tapwire_formats::capture::{LinkType, PacketInfo};
use tapwire_formats::decap::Kind;

use super::input::{Batch, InputCounters, InputKind, Payload};
use super::io::{self, Event, FileId, Loss, Shared, Tally};
use super::output::{Ctx, FLUSH_BYTES, FileOutput, Refusal, buffer_fits, format_name};
use super::rates::History;
use super::tap::{TapConfig, TapOutput};
use super::traffic::{Talkers, classify};
use crate::config::{Config, FileFlags, FilesConfig, RotateReason, SessionConfig, normalize};
use crate::demux::SequenceMode;
use crate::offline::Timestamps;
use crate::pipeline::{Delivery, Pipeline};
use crate::router::{Gate, Router, Skip, Verdict};
use tapwire_api_types::time::rfc3339_ns;

/// Memory for buffered output across all open files; each file's flush threshold is this
/// divided among them (between [`MIN_FLUSH_BYTES`] and [`FLUSH_BYTES`]).
const BUFFER_BUDGET_BYTES: usize = 64 << 20;
/// Distinct refused addresses remembered; the rest are counted under `other`.
const MAX_REFUSED_ADDRS: usize = 1024;
/// How often freed heap memory is given back to the kernel.
const TRIM_NS: u64 = 1_000_000_000;
/// A session with no packet for this long is idle.
const IDLE_NS: u64 = 5_000_000_000;

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
    refused: BTreeMap<IpAddr, u64>,
    refused_other: u64,
    totals_history: History,
    io: Sender<io::Cmd>,
    shared: Arc<Shared>,
    pool: Vec<Vec<u8>>,
    next_file_id: FileId,
    flush_bytes: usize,
    started_ns: u64,
    comment: String,
    snapshot: Arc<ArcSwap<api::Snapshot>>,
    /// Monitor interfaces created for auto-discovered sessions so far (names their next one).
    n_auto_taps: u32,
    control: Option<ControlInfoFn>,
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
}

#[derive(Default)]
struct SourceState {
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
        }
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
        let router = Router::new(settings.allow.clone(), settings.auto_discover);
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
            refused: BTreeMap::new(),
            refused_other: 0,
            totals_history: History::default(),
            io,
            shared,
            pool: Vec::new(),
            next_file_id: 1,
            flush_bytes: FLUSH_BYTES,
            started_ns: now,
            comment: String::new(),
            snapshot,
            n_auto_taps: 0,
            control: None,
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

    /// What each snapshot says of the control plane (read from memory once a second).
    pub fn set_control(&mut self, info: ControlInfoFn) {
        self.core.control = Some(info);
    }

    /// The configuration file as the engine last loaded it (replaced on each reload).
    pub fn file_config(&self) -> Arc<ArcSwap<Config>> {
        Arc::clone(&self.core.file)
    }

    /// Runs until `stop` is set; `reload` asks for the configuration file to be read again.
    pub fn run(
        mut self,
        batches: &Receiver<Batch>,
        events: &Receiver<Event>,
        buffers: &Receiver<Vec<u8>>,
        control: &Receiver<Control>,
        stop: &AtomicBool,
        reload: &AtomicBool,
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
            if now >= next_trim {
                next_trim = now + TRIM_NS;
                tapwire_netio::release_free_heap();
            }
            if reload.swap(false, Ordering::Relaxed) {
                self.reload(now);
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        // What the inputs already handed over is written, then every file is closed.
        let now = now_ns();
        while let Ok(b) = batches.try_recv() {
            self.batch(b, now);
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
                    if let Some(src) = src
                        && !core.router.allows(src)
                    {
                        core.refuse(src);
                        continue;
                    }
                    let d = match (&kind, src) {
                        (InputKind::GreV4(_), _) => pipeline.ip(m.data, ts),
                        (InputKind::GreV6(_), Some(src)) => pipeline.gre(src, m.data, ts),
                        (InputKind::Udp(addr), Some(src)) => {
                            pipeline.udp(src, addr.port(), m.data, ts)
                        }
                        _ => None,
                    };
                    if let Some(d) = d {
                        core.deliver(&d, ts, now);
                    }
                }
            }
            Payload::Frames(frames) => {
                for &(off, len, _wire_len, ts) in &frames.frames {
                    let Some(frame) = frames.data.get(off as usize..(off + len) as usize) else {
                        continue;
                    };
                    if let Some(d) = pipeline.link(LinkType::Ethernet, frame, ts) {
                        if !core.router.allows(normalize(d.key.src)) {
                            core.refuse(normalize(d.key.src));
                            continue;
                        }
                        core.deliver(&d, ts, now);
                    }
                }
            }
        }
        let _ = back.send(payload);
    }

    fn publish(&mut self, now: u64) {
        let snap = self.core.snapshot(&self.pipeline, now);
        self.core.snapshot.store(Arc::new(snap));
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
            c => self.core.control(c, now),
        }
    }

    /// Reads the configuration file again. A bad file is refused and the running configuration
    /// stays; sessions whose definition did not change keep their state and open files.
    fn reload(&mut self, now: u64) {
        let Some(path) = self.core.settings.config_path.clone() else {
            tracing::info!("SIGHUP: no configuration file to reload");
            return;
        };
        let config =
            match Config::load_with(&path, &self.core.settings.file_flags).and_then(|file| {
                crate::config::merged(&file, &self.core.api_sessions).map(|m| (file, m))
            }) {
                Ok((file, merged)) => {
                    self.core.file.store(Arc::new(file));
                    merged
                }
                Err(e) => {
                    tracing::error!(error = %e, "configuration refused; keeping the running one");
                    return;
                }
            };
        self.apply(config, now);
    }

    /// Runs `config`: sessions whose definition did not change keep their state and open
    /// files; changed ones keep their counters and start a new file.
    fn apply(&mut self, config: Config, now: u64) {
        let core = &mut self.core;
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
                        .is_some_and(|&id| config.session_for(&self.pipeline.key(id)).is_none())
            });
            match gate {
                Some(g) if keep => {
                    gates.push(g);
                    core.sessions.push(s);
                }
                _ => core.finish(&mut s, now),
            }
        }
        if core.settings.allow_from_config {
            core.settings.allow = config.collector.allow.clone();
            core.router.set_allow(config.collector.allow.clone());
        }
        core.config = config;
        let pipeline = &self.pipeline;
        for i in core
            .router
            .reset(gates, &core.config, |id| pipeline.key(id))
        {
            core.discovered(i);
        }
        tracing::info!(sessions = core.sessions.len(), "configuration reloaded");
    }
}

impl Core {
    fn recycle(&mut self, mut b: Vec<u8>) {
        if self.pool.len() < 64 && buffer_fits(b.capacity(), self.flush_bytes) {
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
            self.n_auto_taps += 1;
            TapConfig::named(&format!("{p}{}", self.n_auto_taps - 1))
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
        let id = d.source as usize;
        if self.sources.len() <= id {
            self.sources.resize_with(id + 1, SourceState::default);
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
        if matches!(d.key.kind, Kind::ErspanII | Kind::ErspanIII) {
            seen(st.erspan.get_or_insert_with(api::ErspanSeen::default), d);
        }
        let (si, skip) = match routed.verdict {
            Verdict::NoSession => {
                st.drops.no_session += 1;
                return;
            }
            Verdict::Skip(i, why) => (i, Some(why)),
            Verdict::Write(i) => (i, None),
        };
        let s = &mut self.sessions[si];
        s.packets += 1;
        s.bytes += d.frame.len() as u64;
        s.last_seen_ns = ts;
        if let Some(addr) = classify(&mut s.protocols, d.link, d.frame) {
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
        let Some(out) = s.output.as_mut() else { return };
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
        let mut ctx = Ctx {
            io: &self.io,
            shared: &self.shared,
            pool: &mut self.pool,
            next_file_id: &mut self.next_file_id,
            flush_bytes: self.flush_bytes,
        };
        match out.write(&mut ctx, d.source, &d.key, d.link, &packet, now) {
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
                if let Some(i) = self.router.index(&session) {
                    let s = &mut self.sessions[i];
                    let n = packets(&tally);
                    s.written += n;
                    s.pending = s.pending.saturating_sub(n);
                    if let Some(out) = s.output.as_mut() {
                        out.written(file);
                    }
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
            if let Some(st) = self.sources.get_mut(src as usize) {
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
            let (mut lost, mut truncated, mut gre_checksum_bad) = (0, 0, 0);
            for &id in &g.sources {
                let src = demux.source(id);
                let st = &mut self.sources[id as usize];
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
            });
        }
        for (id, r) in self.router.routes().iter().enumerate() {
            if r.is_none() {
                drops.no_session += self.sources[id].drops.no_session;
            }
        }

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
                packets: p,
                bytes: b,
                kernel_drops: k,
                queue_drops: 0,
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
        let mut malformed: BTreeMap<String, u64> = t
            .malformed
            .iter()
            .map(|(r, n)| (r.to_string(), *n))
            .collect();
        if t.source_table_full > 0 {
            malformed.insert("source_table_full".into(), t.source_table_full);
        }
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
                queue_drops: 0,
                drops,
                not_mirror: t
                    .not_mirror
                    .iter()
                    .map(|(k, n)| (k.to_string(), *n))
                    .collect(),
                malformed,
                refused,
                sources: demux.len() as u64,
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
