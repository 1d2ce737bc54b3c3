//! `tapwire collect`: the live collector put together. [`run`] opens the inputs, starts the
//! disk thread, the input threads, the engine ([`crate::live`]), the control plane when asked
//! for and the API ([`crate::http`]), and stops them in order.
//!
//! Threads: one per input (receive into batches), one engine (decapsulate, demultiplex, route
//! to sessions, encode), one disk thread (all file-system work), one API thread. Batches and
//! buffers move between them by ownership, never by copy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use crossbeam_channel::{Sender, bounded, unbounded};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use tapwire_control::Controller;
use tapwire_control::auth::Caller;

use crate::config::Config;
use crate::http;
use crate::live::catalog;
use crate::live::control_plane::{EngineLink, SystemClock};
use crate::live::coverage::{self, Covered, coverages, describe};
use crate::live::engine::{self, Engine, Settings};
use crate::live::input::{Input, InputKind, xdp_dests};
use crate::live::io;
use crate::live::select::{self, Host, InputMode, Outcome, Pick, Request};
use crate::pipeline::Pipeline;

pub struct CollectOptions {
    pub settings: Settings,
    pub config: Config,
    /// The socket inputs and the interfaces the command line names (`--xdp`, `--interface`).
    pub inputs: Vec<InputKind>,
    /// What reads the other interfaces holding a listen address (`--input`).
    pub input_mode: InputMode,
    /// AF_PACKET capture threads per interface (`--workers`), for the rings `--input` picks.
    pub workers: u16,
    /// UMEM per AF_XDP interface that `--input` picks (`--xdp-umem`).
    pub xdp_umem_bytes: u64,
    pub decap: tapwire_formats::decap::Config,
    pub api: Option<SocketAddr>,
    pub api_token: Option<String>,
    /// The control plane (`--db`): sessions and flows managed over the API.
    pub controller: Option<tapwire_control::ControllerOptions>,
    /// A second API listener for probes and remote clients (TLS when configured).
    pub listen: Option<http::Listen>,
    pub min_free_disk_bytes: Option<u64>,
    /// Write a packet index beside each capture file.
    pub index: bool,
    /// `GET /api/v1/packets` refuses a query whose estimate exceeds this.
    pub query_max_bytes: Option<u64>,
}

/// Output buffers (1 MiB each) made resident at start: one per session of an 8-session
/// burst and as many on their way to the disk.
const PREFAULT_OUTPUT_BUFFERS: usize = 16;

/// An error that should end `collect` with exit status 2 (bad flag, configuration, address).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// What an in-process client (the inline terminal UI of `collect`) gets of a running collector.
pub struct Handles {
    /// The latest stats snapshot, the one the API serves (replaced once a second).
    pub snapshot: Arc<ArcSwap<tapwire_api_types::Snapshot>>,
    /// Actions on sessions, as the API sends them.
    pub control: Sender<engine::Control>,
    /// Set it to stop the collector (as SIGINT does); the collector sets it when it stops.
    pub stop: Arc<AtomicBool>,
    /// Acts on a session as its owner: through the controller when there is one (stored and
    /// audited as `terminal`, as an API call would be), else on the engine directly.
    pub actions: Actions,
}

pub type Actions =
    Arc<dyn Fn(&str, tapwire_api_types::Action) -> Result<String, String> + Send + Sync>;

fn actions(control: Sender<engine::Control>, controller: Option<Arc<http::Ctl>>) -> Actions {
    Arc::new(move |session: &str, action| match &controller {
        Some(c) => c
            .session_action(&Caller::system("terminal"), session, action)
            .map_err(|e| e.to_string()),
        None => {
            let (reply, answer) = crossbeam_channel::bounded(1);
            control
                .send(engine::Control::Action {
                    session: session.to_string(),
                    action,
                    reply,
                })
                .map_err(|_| "the collector is stopping".to_string())?;
            answer
                .recv_timeout(Duration::from_secs(5))
                .map_err(|_| "the collector did not answer".to_string())?
        }
    })
}

/// Runs the collector until SIGINT or SIGTERM; SIGHUP reloads the configuration file.
pub fn run(opts: CollectOptions) -> anyhow::Result<()> {
    run_with(opts, None::<fn(Handles)>)
}

/// [`run`], with `ui` on its own thread once the collector has started. The collector stops
/// when `ui` returns (or panics), and returns only after `ui` has, so that the terminal is
/// restored before anything else is printed.
pub fn run_with<F>(opts: CollectOptions, ui: Option<F>) -> anyhow::Result<()>
where
    F: FnOnce(Handles) + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    // A second SIGINT/SIGTERM while shutting down ends the process at once.
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone())
            .context("signal handler")?;
        signal_hook::flag::register(sig, stop.clone()).context("signal handler")?;
    }
    signal_hook::flag::register(SIGHUP, reload.clone()).context("signal handler")?;

    // The faster inputs `--input` picks, tried first; then what an input reads below the IP
    // stack, the socket inputs leave unread (one packet, one copy), known before any socket
    // opens so that none reads a copy meanwhile.
    let covered = Arc::new(Covered::new(Vec::new()));
    let (picked, outcomes) = pick_inputs(&opts, &covered);
    let kinds: Vec<InputKind> = opts
        .inputs
        .iter()
        .chain(picked.iter().map(|i| &i.kind))
        .cloned()
        .collect();
    covered.replace(coverages(&kinds, |name| tapwire_netio::ifindex(name).ok()));
    let mut opened = Vec::new();
    for kind in &opts.inputs {
        let input = Input::open(kind.clone(), Arc::clone(&covered))
            .map_err(|e| StartError(format!("input {}: {e}", kind.name())))?;
        input.counters.set_reason(match kind {
            InputKind::Xdp { name, .. } => format!("named on the command line (--xdp {name})"),
            InputKind::Interface { name, .. } => {
                format!("named on the command line (--interface {name})")
            }
            _ => sockets_reason(opts.input_mode, &outcomes),
        });
        opened.push(input);
    }
    opened.extend(picked);
    if opened.iter().any(|i| i.kind.covers().is_none()) {
        for c in covered.list() {
            tracing::info!(interface = c.interface, "{}", describe(&c));
        }
    }
    if opened.is_empty() {
        return Err(StartError("no inputs: every input is turned off".into()).into());
    }

    io::raise_fd_limit();
    let shared = Arc::new(io::Shared::new(opts.min_free_disk_bytes, opts.index));
    let (io_tx, io_rx) = unbounded();
    let (ev_tx, ev_rx) = unbounded();
    let (buf_tx, buf_rx) = unbounded();
    let mut disk = io::DiskThread::new(io_rx, ev_tx, buf_tx, shared.clone());
    // The catalog of capture files (with --db): the disk thread tells it, never waits for it.
    let mut catalog = None;
    let mut catalog_counters = None;
    if opts.controller.is_some() {
        let (tx, rx, counters) = catalog::channel();
        disk = disk.with_catalog(tx);
        catalog_counters = Some(Arc::clone(&counters));
        catalog = Some((rx, counters));
    }
    let disk = std::thread::Builder::new()
        .name("tapwire-disk".into())
        .spawn(move || disk.run())?;

    let snapshot = Arc::new(ArcSwap::from_pointee(empty_snapshot()));
    let (ctl_tx, ctl_rx) = unbounded();
    let (batch_tx, batch_rx) = bounded(256);
    let counters: Vec<_> = opened
        .iter()
        .map(|i| (i.kind.clone(), i.counters.clone()))
        .collect();
    let mut threads = Vec::new();
    for (index, input) in opened.into_iter().enumerate() {
        let name = input.kind.name();
        tracing::info!(input = name, "receiving");
        let (tx, stop) = (batch_tx.clone(), stop.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("tapwire-in{index}"))
                .spawn(move || input.run(index, tx, stop))?,
        );
    }
    drop(batch_tx);

    let default_files = opts.settings.default_files.clone();
    let out_dir = opts.settings.out.clone();
    let config_path = opts.settings.config_path.clone();
    let file_flags = opts.settings.file_flags.clone();
    let ctl_tx_reload = ctl_tx.clone();
    let pipeline = Pipeline::new(opts.decap, opts.settings.limits.max_sources);
    let mut engine = Engine::new(
        pipeline,
        opts.settings,
        opts.config,
        counters,
        io_tx.clone(),
        shared,
        snapshot.clone(),
    )
    .map_err(StartError)?;
    engine.prefault_output_buffers(PREFAULT_OUTPUT_BUFFERS);
    // The controller queues the API's sessions before the engine runs: they are in place
    // before the first packet is routed.
    let mut catalog_thread = None;
    let controller = match opts.controller {
        Some(c) => {
            let store = tapwire_control::store::open(&c.db)
                .map_err(|e| StartError(format!("--db {}: {e}", c.db.display())))?;
            let link = EngineLink::new(ctl_tx.clone(), engine.file_config(), default_files)
                .with_snapshot(snapshot.clone());
            let ctl =
                Controller::start(c, store, link, Box::new(SystemClock)).map_err(StartError)?;
            let info = Arc::clone(&ctl);
            engine.set_control(Arc::new(move || tapwire_api_types::ControlInfo {
                state: info.control_state(),
                collector: info.name().to_string(),
            }));
            // Heartbeats, the fleet's changes, failover: never on the packet path.
            ctl.spawn_fleet(stop.clone())?;
            if let Some((rx, counters)) = catalog.take() {
                catalog_thread = Some(catalog::spawn(
                    Arc::clone(&ctl),
                    rx,
                    out_dir.clone(),
                    counters,
                )?);
            }
            Some(ctl)
        }
        None => None,
    };
    let leave = controller.clone();
    let ui = match ui {
        Some(ui) => {
            let handles = Handles {
                snapshot: snapshot.clone(),
                control: ctl_tx.clone(),
                stop: stop.clone(),
                actions: actions(ctl_tx.clone(), controller.clone()),
            };
            let stop = StopOnDrop(stop.clone());
            let thread = std::thread::Builder::new()
                .name("tapwire-ui".into())
                .spawn(move || {
                    let _stop = stop;
                    ui(handles)
                })?;
            Some(thread)
        }
        None => None,
    };
    if opts.api.is_some() || opts.listen.is_some() {
        let what = format!(
            "API on {}",
            opts.api
                .iter()
                .chain(opts.listen.as_ref().map(|l| &l.addr))
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" and ")
        );
        let tls = opts.listen.as_ref().is_some_and(|l| l.tls.is_some());
        if let Some(api) = opts.api
            && !api.ip().to_canonical().is_loopback()
            && controller.is_none()
        {
            // The flags allowed it: say what it means.
            if opts.api_token.is_some() {
                tracing::info!(%api, "API reachable from other hosts: reads and actions from them need the API token");
            } else {
                tracing::warn!(%api, "API reachable from other hosts without authentication (--allow-unauthenticated-api): anyone who reaches it reads the stats; actions only from localhost");
            }
        }
        let nofile = crate::fds::limit();
        let limits = http::serve::Limits::for_descriptor_limit(nofile);
        let (local, _) = http::spawn(
            opts.api,
            opts.listen,
            http::ApiState::new(
                snapshot.clone(),
                ctl_tx,
                opts.api_token.as_deref().map(http::ApiToken::new),
                controller,
            )
            .with_query(Arc::new(http::packets::QueryState::new(
                out_dir,
                opts.query_max_bytes,
            )))
            .with_catalog(catalog_counters),
            limits,
        )
        .map_err(|e| StartError(format!("{what}: {e}")))?;
        tracing::info!(
            ?local,
            tls,
            max_connections = limits.max_connections,
            per_client = limits.max_per_client,
            nofile,
            "API listening"
        );
    }
    let live_streams = engine.live_streams();
    let reloader = reloader(config_path, file_flags, reload, stop.clone(), ctl_tx_reload)?;
    engine.run(&batch_rx, &ev_rx, &buf_rx, &ctl_rx, &stop);
    if let Some(c) = leave {
        c.leave();
    }
    let _ = reloader.join();

    let deadline = Instant::now() + Duration::from_millis(1800);
    let _ = io_tx.send(io::Cmd::Shutdown { deadline });
    let _ = disk.join();
    // The disk thread told the catalog of the files it closed: written if the database
    // answers soon; otherwise the next start reconciles them.
    if let Some(t) = catalog_thread {
        let until = Instant::now() + Duration::from_secs(2);
        while !t.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        if t.is_finished() {
            let _ = t.join();
        }
    }
    // The engine ended every live stream; their last statistics and the end of each response
    // are written before the process exits (a reader that stopped reading is not waited for
    // past the deadline).
    let streamed = live_streams.load(Ordering::Relaxed) > 0;
    while live_streams.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if streamed {
        // The body is dropped just before its response's last bytes are flushed.
        std::thread::sleep(Duration::from_millis(20));
    }
    // Input threads notice `stop` within their poll interval; the process may exit before.
    for t in threads {
        if Instant::now() >= deadline {
            break;
        }
        let _ = t.join();
    }
    if let Some(ui) = ui {
        stop.store(true, Ordering::Relaxed);
        // The UI notices within its poll interval; one stuck on its terminal must not keep a
        // stopped collector alive.
        let deadline = Instant::now() + Duration::from_secs(3);
        while !ui.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if ui.is_finished() {
            let _ = ui.join();
        } else {
            tracing::warn!("the terminal UI did not stop; exiting without it");
        }
    }
    tracing::info!("stopped; files closed");
    Ok(())
}

/// Tries, on each interface holding a listen address that the command line does not name,
/// the inputs `--input` calls for, fastest first, and keeps the first that opens; logs the
/// outcome in one line and gives each input (the socket inputs too) its reason.
fn pick_inputs(opts: &CollectOptions, covered: &Arc<Covered>) -> (Vec<Input>, Vec<Outcome>) {
    let dests = xdp_dests(&opts.inputs);
    if dests.is_empty() {
        // Every GRE and UDP input is off: nothing to read faster.
        return (Vec::new(), Vec::new());
    }
    let interfaces = tapwire_netio::xdp::interfaces().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot list the interfaces; the sockets receive everything");
        Vec::new()
    });
    let host = Host {
        interfaces,
        xdp_program: tapwire_netio::xdp::available(),
        caps: select::own_caps(),
    };
    let named = opts
        .inputs
        .iter()
        .filter_map(|k| k.interface().map(str::to_string))
        .collect();
    let plan = select::plan(
        &host,
        &Request {
            mode: opts.input_mode,
            dests: dests.clone(),
            named,
        },
    );
    // What the sockets would receive there and leave to the ring, and nothing else.
    let udp_ports: Vec<u16> = dests
        .iter()
        .filter_map(|d| match d {
            tapwire_netio::xdp::Dest::Udp(_, p) => Some(*p),
            tapwire_netio::xdp::Dest::Gre(_) => None,
        })
        .collect();
    let Some(ring_filter) = coverage::ring_program(&udp_ports) else {
        tracing::error!("the rings' filter does not assemble; the sockets receive everything");
        return (Vec::new(), Vec::new());
    };
    let mut picked = Vec::new();
    let mut outcomes = Vec::new();
    for choice in plan {
        let name = &choice.interface;
        let mut not = choice.skipped.clone();
        for pick in &choice.tries {
            let got = match pick {
                Pick::Xdp => Input::try_xdp(name, &dests, opts.xdp_umem_bytes, Arc::clone(covered))
                    .map(|i| vec![i]),
                Pick::Ring => (0..opts.workers)
                    .map(|worker| {
                        let kind = InputKind::Interface {
                            name: name.clone(),
                            worker,
                            workers: opts.workers,
                        };
                        Input::open_filtered(kind, Some(ring_filter.clone()), Arc::clone(covered))
                            .map_err(|e| e.to_string())
                    })
                    .collect(),
                Pick::Sockets => Ok(Vec::new()),
            };
            match got {
                Ok(inputs) => {
                    let outcome = Outcome {
                        interface: name.clone(),
                        pick: *pick,
                        mode: inputs.first().and_then(|i| i.counters.mode()),
                        not: not.clone(),
                    };
                    for i in &inputs {
                        i.counters.set_reason(outcome.reason(opts.input_mode));
                    }
                    picked.extend(inputs);
                    outcomes.push(outcome);
                    break;
                }
                Err(e) => not.push((Some(*pick), e)),
            }
        }
    }
    let line = select::start_line(opts.input_mode, &outcomes);
    if outcomes
        .iter()
        .any(|o| o.not.iter().any(|(p, _)| p.is_some()))
    {
        tracing::warn!(mode = %opts.input_mode, "{line}");
    } else {
        tracing::info!(mode = %opts.input_mode, "{line}");
    }
    (picked, outcomes)
}

/// Why the socket inputs read what they read: the rest, and the interfaces left to them.
fn sockets_reason(mode: InputMode, outcomes: &[Outcome]) -> String {
    let left: Vec<String> = outcomes
        .iter()
        .filter(|o| o.pick == Pick::Sockets)
        .map(|o| format!("{} {}", o.interface, o.describe()))
        .collect();
    let mut s = format!(
        "--input {mode}: what no other input reads (loopback, interfaces that appear later, what a faster input passes on)"
    );
    if !left.is_empty() {
        s.push_str(&format!("; {}", left.join(", ")));
    }
    s
}

/// The thread that reads the configuration file again on SIGHUP and hands it to the engine:
/// reading it compiles its filters, which must not stall the engine. The command line's file
/// flags are laid over `[defaults.files]` again.
fn reloader(
    path: Option<std::path::PathBuf>,
    file_flags: crate::config::FileFlags,
    reload: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    control: Sender<engine::Control>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("tapwire-reload".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if !reload.swap(false, Ordering::Relaxed) {
                    continue;
                }
                let Some(path) = &path else {
                    tracing::info!("SIGHUP: no configuration file to reload");
                    continue;
                };
                match Config::load_with(path, &file_flags) {
                    Ok(file) => {
                        let file = Box::new(file);
                        let _ = control.send(engine::Control::Reload { file });
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "configuration refused; keeping the running one")
                    }
                }
            }
        })
}

/// Stops the collector when its UI thread ends, however it ends.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn empty_snapshot() -> tapwire_api_types::Snapshot {
    tapwire_api_types::Snapshot {
        version: env!("CARGO_PKG_VERSION").to_string(),
        started: String::new(),
        uptime_s: 0.0,
        totals: tapwire_api_types::Totals::default(),
        inputs: Vec::new(),
        sessions: Vec::new(),
        control: None,
        page: None,
    }
}
