//! The `tapwire-probe` command.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use tapwire_api_types::probe::{Direction, Encapsulation, ErspanTime, FlowCounters, ProbeStats};
use tapwire_netio::outln;
use tapwire_probe::config::{self, FlowFields, NumOrText, ProbeConfig, Settings};
use tapwire_probe::link::{self, LinkOptions};
use tapwire_probe::manager::{FlowManager, Prepared};
use tapwire_probe::path::SendMode;
use tapwire_probe::send_path::SendOptions;
use tapwire_probe::{api, privs, stats};

#[derive(Parser)]
#[command(
    name = "tapwire-probe",
    version,
    about = "Mirrors selected traffic of this host's interfaces to a tapwire collector (ERSPAN II/III, GRE-TEB)",
    after_help = "Needs CAP_NET_RAW only (root, or: setcap cap_net_raw+ep tapwire-probe); every other capability is dropped at start."
)]
struct Cli {
    /// Flows from a controller (`tapwire collect --db`): register as --name, receive every
    /// flow and change, report stats. Flows are not given here then. Several URLs, comma
    /// separated, are the collectors of one fleet: any live one is used.
    #[arg(long, value_name = "URL", conflicts_with_all = ["config", "iface", "direction", "vlan", "untagged", "filter", "snaplen", "sample", "rate_pps", "rate_bps", "burst", "session", "collector", "encap", "hardware_id", "erspan_time", "promisc", "threads", "block_size", "block_count", "block_timeout_ms"])]
    controller: Option<String>,
    /// The probe's token (`tapwire token create --role probe --name HOST`).
    #[arg(
        long,
        env = "TAPWIRE_PROBE_TOKEN",
        hide_env_values = true,
        requires = "controller"
    )]
    token: Option<String>,
    /// Trust this CA (PEM) for an https:// controller instead of the system's roots.
    #[arg(long, value_name = "FILE", requires = "controller")]
    ca: Option<PathBuf>,
    /// With --controller: where the last flow set is kept, to run it across controller
    /// outages and restarts [default: /var/lib/tapwire/probe-NAME.json].
    #[arg(long, value_name = "FILE", requires = "controller")]
    state: Option<PathBuf>,

    /// Flows from a TOML file (see dist/probe.toml) instead of the flow flags below.
    #[arg(long, short, conflicts_with_all = ["iface", "name", "direction", "vlan", "untagged", "filter", "snaplen", "sample", "rate_pps", "rate_bps", "burst", "session", "collector", "encap", "hardware_id", "erspan_time", "promisc", "threads", "block_size", "block_count", "block_timeout_ms"])]
    config: Option<PathBuf>,

    /// Interface to mirror (a VM tap, a bridge, a NIC).
    #[arg(
        long,
        alias = "interface",
        value_name = "IF",
        required_unless_present_any = ["config", "controller"]
    )]
    iface: Option<String>,
    /// Name of the flow in logs and stats [default: the interface]. With --controller: the
    /// probe's name [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// Which packets of the interface to mirror [default: both].
    #[arg(long, value_enum)]
    direction: Option<DirectionArg>,
    /// Only frames tagged with these VLAN ids (repeatable or comma-separated).
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    vlan: Vec<u16>,
    /// With --vlan: also untagged frames.
    #[arg(long)]
    untagged: bool,
    /// tcpdump-syntax filter, run in the kernel.
    #[arg(long, value_name = "EXPR")]
    filter: Option<String>,
    /// Keep at most this many bytes of each frame (sets the ERSPAN T bit).
    #[arg(long, value_name = "BYTES")]
    snaplen: Option<u32>,
    /// Mirror one packet in N.
    #[arg(long, value_name = "N")]
    sample: Option<u32>,
    /// At most this many packets per second (e.g. 10000, 10k).
    #[arg(long, value_name = "RATE")]
    rate_pps: Option<String>,
    /// At most this many bits per second of encapsulated traffic (e.g. 100M, 1G).
    #[arg(long, value_name = "RATE")]
    rate_bps: Option<String>,
    /// Token bucket depth as time at the rate [default: 100ms].
    #[arg(long, value_name = "DURATION")]
    burst: Option<String>,
    /// ERSPAN session id or GRE key (0-1023).
    #[arg(long, value_name = "ID", required_unless_present_any = ["config", "controller"])]
    session: Option<u16>,
    /// The collector's address (IPv4 or IPv6).
    #[arg(long, value_name = "ADDR", required_unless_present_any = ["config", "controller"])]
    collector: Option<IpAddr>,
    /// Encapsulation towards the collector [default: erspan-ii].
    #[arg(long, value_enum)]
    encap: Option<EncapArg>,
    /// ERSPAN III hardware id (0-63).
    #[arg(long, value_name = "ID")]
    hardware_id: Option<u8>,
    /// ERSPAN III time format [default: 100ns].
    #[arg(long, value_enum)]
    erspan_time: Option<TimeArg>,
    /// Put the interface in promiscuous mode while mirroring it.
    #[arg(long)]
    promisc: bool,
    /// Capture threads (PACKET_FANOUT by flow hash).
    #[arg(long, value_name = "N")]
    threads: Option<u16>,
    /// Ring block size (e.g. 1MiB).
    #[arg(long, value_name = "SIZE")]
    block_size: Option<String>,
    /// Ring blocks per capture thread, 2 or more; the ring (blocks × block size) is at most
    /// 4 GiB [default: 16].
    #[arg(long, value_name = "N", value_parser = block_count)]
    block_count: Option<u32>,
    /// A block is handed over at the latest this long after its first packet.
    #[arg(long, value_name = "MS")]
    block_timeout_ms: Option<u32>,

    /// Path MTU towards the collector [default: from the route]; applies to every flow.
    #[arg(long, value_name = "BYTES")]
    mtu: Option<u32>,
    /// Stats API address, or "off" [default: 127.0.0.1:9751].
    #[arg(long, value_name = "ADDR|off")]
    stats: Option<String>,
    /// Print a line per flow this often, or "off" [default: 10s].
    #[arg(long, value_name = "DURATION|off")]
    stats_interval: Option<String>,
    /// When started as root: run as this user (keeping CAP_NET_RAW).
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// How datagrams leave: "auto" sends complete frames through an AF_PACKET transmit ring
    /// where the route allows (and through the raw socket otherwise); "raw" always through the
    /// raw socket; "fast" as auto, with every fallback reported as the flow's error
    /// [default: auto].
    #[arg(long, value_name = "auto|fast|raw")]
    send_path: Option<String>,
    /// Put a GRE checksum in every datagram.
    #[arg(long)]
    gre_checksum: bool,
    /// Check the flows (and compile their filters), print them, and exit.
    #[arg(long)]
    check: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DirectionArg {
    /// Received on the interface (ERSPAN ingress).
    In,
    /// Sent on the interface (ERSPAN egress).
    Out,
    /// Both ways.
    Both,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum EncapArg {
    /// ERSPAN Type II: session id, VLAN, index = ifindex << 1 | egress.
    ErspanIi,
    /// ERSPAN Type III: also the direction, a hardware id and the capture time.
    ErspanIii,
    /// GRE transparent Ethernet bridging: key = session id, with sequence numbers.
    Gre,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TimeArg {
    /// 100 ns ticks since the epoch (upper bits in platform sub-header 3).
    #[value(name = "100ns")]
    Nanos100,
    /// IEEE 1588: nanoseconds in the header, seconds in platform sub-header 5.
    Ieee1588,
}

/// Exit status when the controller refused the probe's token.
const EXIT_REVOKED: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.controller.is_some() {
        return controlled(&cli);
    }
    let (config, prepared, manager) = match setup(&cli) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("tapwire-probe: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        for p in &prepared {
            let s = p.spec();
            outln!(
                "flow {}: {} {} -> {} {} session {}, kernel filter of {} instructions",
                s.name,
                s.interface,
                direction_name(s.direction),
                s.collector,
                s.encap.name(),
                s.session,
                p.program_len()
            );
        }
        return ExitCode::SUCCESS;
    }
    init_logs();
    match run(config, prepared, manager, None) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("tapwire-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--controller`: the flows come from the controller (and, until it answers, from the state
/// file).
fn controlled(cli: &Cli) -> ExitCode {
    let setup = || -> Result<(ProbeConfig, Link), String> {
        let name = match &cli.name {
            Some(n) => n.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .ok_or("--name: no host name to default to; give one")?,
        };
        let mut settings = Settings::default();
        if let Some(v) = &cli.stats {
            settings.stats = config::stats_addr(v).map_err(|e| format!("--stats: {e}"))?;
        }
        if let Some(v) = &cli.stats_interval {
            settings.stats_interval =
                config::interval(v).map_err(|e| format!("--stats-interval: {e}"))?;
        }
        settings.user = cli.user.clone();
        send_flags(cli, &mut settings)?;
        if let Some(u) = &settings.user {
            privs::lookup_user(u).map_err(|e| format!("--user {u}: {e}"))?;
        }
        let state = cli
            .state
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/var/lib/tapwire/probe-{name}.json")));
        let urls: Vec<String> = cli
            .controller
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect();
        if urls.is_empty() {
            return Err("--controller: give a URL (or several, comma separated)".into());
        }
        // The clients are built once here so that a bad --ca or URL is a start-up error.
        for url in &urls {
            tapwire_client::Client::new(
                url,
                cli.token.clone(),
                cli.ca.as_deref(),
                Duration::from_secs(1),
            )
            .map_err(|e| format!("--controller {url}: {e}"))?;
        }
        Ok((
            ProbeConfig {
                settings,
                flows: Vec::new(),
            },
            Link {
                opts: LinkOptions {
                    urls,
                    token: cli.token.clone(),
                    ca: cli.ca.clone(),
                    name,
                },
                state,
            },
        ))
    };
    let (config, link) = match setup() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("tapwire-probe: {e}");
            return ExitCode::from(2);
        }
    };
    init_logs();
    match run(config, Vec::new(), FlowManager::new(Vec::new()), Some(link)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("tapwire-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Link {
    opts: LinkOptions,
    state: PathBuf,
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn block_count(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if n >= 2 => Ok(n),
        Ok(_) => Err("a ring needs at least 2 blocks (one filled while another is read)".into()),
        Err(_) => Err(format!("{s:?} is not a number of blocks")),
    }
}

/// The name a user writes for a direction (`--direction both`, `direction = "both"`).
fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::In => "in",
        Direction::Out => "out",
        Direction::Both => "both",
    }
}

/// Flags and file to checked flows with compiled filters; every error is one line (exit 2).
fn setup(cli: &Cli) -> Result<(ProbeConfig, Vec<Prepared>, FlowManager), String> {
    let mut config = match &cli.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => ProbeConfig {
            settings: Settings::default(),
            flows: vec![config::resolve(&flow_from_flags(cli)?, "--iface").map_err(|e| e.0)?],
        },
    };
    if let Some(mtu) = cli.mtu {
        for f in &mut config.flows {
            f.mtu = Some(mtu);
        }
    }
    if let Some(v) = &cli.stats {
        config.settings.stats = config::stats_addr(v).map_err(|e| format!("--stats: {e}"))?;
    }
    if let Some(v) = &cli.stats_interval {
        config.settings.stats_interval =
            config::interval(v).map_err(|e| format!("--stats-interval: {e}"))?;
    }
    if cli.user.is_some() {
        config.settings.user = cli.user.clone();
    }
    send_flags(cli, &mut config.settings)?;
    if let Some(u) = &config.settings.user {
        let flag = match (&cli.user, &cli.config) {
            (None, Some(path)) => format!("{}: [probe] user", path.display()),
            _ => "--user".to_string(),
        };
        privs::lookup_user(u).map_err(|e| format!("{flag} {u}: {e}"))?;
    }
    let mut collectors: Vec<IpAddr> = config.flows.iter().map(|f| f.collector).collect();
    collectors.sort();
    collectors.dedup();
    let manager = FlowManager::new(collectors);
    let prepared = config
        .flows
        .iter()
        .map(|f| manager.prepare(f.clone()).map_err(|e| e.0))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((config, prepared, manager))
}

/// `--send-path` and `--gre-checksum` over the file's settings.
fn send_flags(cli: &Cli, settings: &mut Settings) -> Result<(), String> {
    if let Some(v) = &cli.send_path {
        settings.send_path = SendMode::parse(v).map_err(|e| format!("--send-path: {e}"))?;
    }
    settings.gre_checksum |= cli.gre_checksum;
    Ok(())
}

fn flow_from_flags(cli: &Cli) -> Result<FlowFields, String> {
    let text = |v: &Option<String>| v.clone().map(NumOrText::Text);
    Ok(FlowFields {
        name: cli.name.clone(),
        interface: cli.iface.clone(),
        direction: cli.direction.map(|d| match d {
            DirectionArg::In => Direction::In,
            DirectionArg::Out => Direction::Out,
            DirectionArg::Both => Direction::Both,
        }),
        vlans: (!cli.vlan.is_empty()).then(|| cli.vlan.clone()),
        untagged: cli.untagged.then_some(true),
        filter: cli.filter.clone(),
        snaplen: cli.snaplen,
        sample: cli.sample,
        rate_pps: text(&cli.rate_pps),
        rate_bps: text(&cli.rate_bps),
        burst: cli.burst.clone(),
        session: cli.session,
        collector: cli.collector,
        encap: cli.encap.map(|e| match e {
            EncapArg::ErspanIi => Encapsulation::ErspanIi,
            EncapArg::ErspanIii => Encapsulation::ErspanIii,
            EncapArg::Gre => Encapsulation::Gre,
        }),
        hardware_id: cli.hardware_id,
        erspan_time: cli.erspan_time.map(|t| match t {
            TimeArg::Nanos100 => ErspanTime::Nanos100,
            TimeArg::Ieee1588 => ErspanTime::Ieee1588,
        }),
        promiscuous: cli.promisc.then_some(true),
        threads: cli.threads,
        block_size: text(&cli.block_size),
        block_count: cli.block_count,
        block_timeout_ms: cli.block_timeout_ms,
        mtu: cli.mtu,
    })
}

/// Runs the flows until SIGINT or SIGTERM (or, with a controller, until it refuses the
/// token: [`EXIT_REVOKED`]).
fn run(
    config: ProbeConfig,
    prepared: Vec<Prepared>,
    mut manager: FlowManager,
    link: Option<Link>,
) -> Result<u8, String> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // A second signal while stopping ends the process at once.
        signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone())
            .map_err(|e| format!("signal handler: {e}"))?;
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    // Bound before privileges are dropped, so a port below 1024 would work too.
    let listener = match config.settings.stats {
        Some(addr) => Some(api::bind(addr).map_err(|e| format!("stats API on {addr}: {e}"))?),
        None => None,
    };
    let kept = privs::drop_privileges(config.settings.user.as_deref())?;
    tracing::info!(
        uid = kept.uid,
        gid = kept.gid,
        kept = ?kept.effective,
        dropped = ?kept.dropped,
        "privileges reduced"
    );

    manager.set_send_options(SendOptions {
        mode: config.settings.send_path,
        gre_checksum: config.settings.gre_checksum,
    });
    let started = SystemTime::now();
    let t0 = Instant::now();
    let snapshot = Arc::new(ArcSwap::from_pointee(ProbeStats {
        version: env!("CARGO_PKG_VERSION").to_string(),
        started: humantime::format_rfc3339_seconds(started).to_string(),
        uptime_s: 0.0,
        flows: Vec::new(),
    }));
    if let Some(l) = listener {
        let local = l.local_addr().ok();
        api::spawn(l, snapshot.clone()).map_err(|e| format!("stats API thread: {e}"))?;
        tracing::info!(addr = ?local, "stats API listening");
    }
    for p in prepared {
        let name = p.spec().name.clone();
        manager
            .start(p)
            .map_err(|e| format!("flow {name:?}: {e}"))?;
    }
    let applied = Arc::new(ArcSwap::from_pointee(link::Applied::default()));
    let (events_tx, events) = std::sync::mpsc::channel();
    let state = link.as_ref().map(|l| l.state.clone());
    if let Some(l) = link {
        // The last flow set runs at once: the controller may be away.
        let known = link::load_state(&l.state);
        if let Some(set) = &known {
            tracing::info!(path = %l.state.display(), version = set.version, flows = set.flows.len(), "running the saved flow set");
            let refused = link::apply(&mut manager, set);
            applied.store(Arc::new(link::Applied {
                version: set.version,
                refused,
            }));
        }
        link::spawn(
            l.opts,
            known.map(|s| s.version),
            snapshot.clone(),
            applied.clone(),
            stop.clone(),
            events_tx,
        )?;
    }

    let publish = |manager: &FlowManager| {
        let flows = manager.stats();
        let mut s = ProbeStats::clone(&snapshot.load());
        s.uptime_s = t0.elapsed().as_secs_f64();
        s.flows = flows;
        snapshot.store(Arc::new(s));
    };
    let mut last_line = Instant::now();
    let mut prev: Vec<(String, FlowCounters)> = Vec::new();
    let print = |manager: &FlowManager, secs: f64, prev: &mut Vec<(String, FlowCounters)>| {
        let flows = manager.stats();
        for f in &flows {
            let before = prev.iter().find(|(n, _)| *n == f.name).map(|(_, c)| c);
            // Not eprintln!: a daemon whose stderr went away keeps mirroring.
            let _ = writeln!(std::io::stderr(), "{}", stats::line(f, before, secs));
        }
        *prev = flows.into_iter().map(|f| (f.name, f.counters)).collect();
    };
    let mut code = 0;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        match events.try_recv() {
            Ok(link::Event::FlowSet(set)) => {
                tracing::info!(
                    version = set.version,
                    flows = set.flows.len(),
                    "new flow set from the controller"
                );
                let refused = link::apply(&mut manager, &set);
                applied.store(Arc::new(link::Applied {
                    version: set.version,
                    refused,
                }));
                if let Some(path) = &state
                    && let Err(e) = link::save_state(path, &set)
                {
                    tracing::warn!(path = %path.display(), error = %e, "flow set not saved: a restart without the controller would start without it");
                }
            }
            Ok(link::Event::Revoked(why)) => {
                tracing::error!(
                    reason = why,
                    "token refused by the controller: stopping every flow and exiting"
                );
                if let Some(path) = &state {
                    let _ = std::fs::remove_file(path);
                }
                code = EXIT_REVOKED;
                break;
            }
            Err(_) => {}
        }
        publish(&manager);
        if let Some(every) = config.settings.stats_interval
            && last_line.elapsed() >= every
        {
            let secs = last_line.elapsed().as_secs_f64();
            last_line = Instant::now();
            print(&manager, secs, &mut prev);
        }
    }
    tracing::info!("stopping");
    let stop_started = Instant::now();
    for f in manager.stop_all() {
        let _ = writeln!(std::io::stderr(), "{}", stats::line(&f, None, 0.0));
    }
    tracing::info!(
        took_ms = stop_started.elapsed().as_millis() as u64,
        "stopped"
    );
    Ok(code)
}
