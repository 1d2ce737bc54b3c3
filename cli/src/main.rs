//! The `tapwire` command: a thin binary over the library crates (see the crate map in
//! ARCHITECTURE.md). Each subcommand's flags are here; the work is the libraries'.

// The doc comments of the flags are clap's help text, written for a terminal: `[ADDR:]PORT`
// and `<src>_<kind>_<id>` mean what they say there, not links or HTML.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

mod control;
mod extcap;
mod lab;
mod query;
mod stream;
mod top;

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tapwire_collector::collect::{self, CollectOptions, Handles, StartError};
use tapwire_collector::config::{self, Config};
use tapwire_collector::live::engine::{Limits, Settings};
use tapwire_collector::live::input::InputKind;
use tapwire_collector::live::select::InputMode;
use tapwire_collector::offline::{self, DecapOptions, Report, Timestamps};
use tapwire_formats::capture::Format;
use tapwire_formats::decap;
use tapwire_netio::outln;
use tapwire_tui::logs::LogBuffer;

#[derive(Parser)]
#[command(
    name = "tapwire",
    version,
    about = "Collects mirrored traffic (ERSPAN, GRE, VXLAN, GENEVE, TZSP) into per-session captures"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decapsulate mirrored traffic recorded in pcap/pcapng files into one capture per source.
    Decap(DecapArgs),
    /// Receive mirrored traffic and write per-session captures (the collector's main job).
    Collect(Box<CollectArgs>),
    /// Watch a running collector: sessions, rates, loss, files (a terminal UI; --raw or
    /// --json for scripts).
    Top(top::TopArgs),
    /// The packets of a time range (a session, a source, a tcpdump filter) across rotated
    /// files, as one pcapng: from the local collector, or --dir a folder of captures.
    Query(query::QueryArgs),
    /// The whole system on this machine: hosts, VMs, probes, a collector (or with `up
    /// --fleet` three on PostgreSQL) and traffic in network namespaces (`tapwire lab up`,
    /// `status`, `top`, `fail`, `revive`, `down`; as root).
    Lab(lab::LabArgs),
    /// Sessions of the control plane (collect --db): create, list, show, update, enable,
    /// disable, delete.
    Session(control::Sessions),
    /// Probe flows: create, list, show, enable, disable, delete.
    Flow(control::Flows),
    /// Probes known to the controller: list, show, set limits, delete.
    Probe(control::Probes),
    /// Who changed what, when (the controller's audit log).
    Audit(control::Audit),
    /// API tokens: create, list, revoke (through the API, or --db on the database).
    Token(control::Tokens),
    /// The collectors of a fleet sharing one PostgreSQL (collect --db postgres://...): live or
    /// dead, lease, the sessions each runs, load.
    Collectors(control::Collectors),
    /// A session's packets, live from the collector, as pcapng into a file or a pipe
    /// (`tapwire stream web -w - | wireshark -k -i -`).
    Stream(stream::StreamArgs),
    /// Wireshark's extcap: every session of the collector a capture interface
    /// (`tapwire extcap install` links it into Wireshark's extcap folder).
    Extcap(extcap::ExtcapArgs),
}

#[derive(Args)]
struct CollectArgs {
    /// Session configuration (TOML). The file flags (--format, --rotate-*, --max-files,
    /// --on-finish) override its [defaults.files]. SIGHUP reloads it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Directory for auto-discovered sessions and sessions without their own [default: ./captures].
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Do not create a session for sources no configured session takes; count them as dropped.
    #[arg(long)]
    no_auto: bool,
    /// Accept mirror traffic only from these outer source CIDRs (repeatable).
    #[arg(long, value_name = "CIDR")]
    allow: Vec<String>,
    /// Sources (outer address, kind, id) held at once; past it a new source takes the place of
    /// an idle one that no configured session takes, or is refused (source_table_full)
    /// [default: 4096].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_sources: Option<u32>,
    /// Auto-discovered sessions held at once; past it a source that would need one is
    /// refused (auto_session_cap) [default: 256].
    #[arg(long, value_name = "N")]
    max_auto_sessions: Option<u32>,
    /// Remove sources and auto-discovered sessions after this long without a packet: the
    /// session's file is closed, its counters stay in the totals [default: 10m].
    #[arg(long, value_name = "DURATION")]
    idle_timeout: Option<String>,
    /// Raw GRE over IPv4 (ERSPAN I/II/III, GRE-TEB): local address, or "off".
    #[arg(long, value_name = "ADDR|off", default_value = "0.0.0.0")]
    gre_v4: String,
    /// Raw GRE over IPv6: local address, or "off".
    #[arg(long, value_name = "ADDR|off", default_value = "::")]
    gre_v6: String,
    /// VXLAN over UDP: [ADDR:]PORT, or "off".
    #[arg(long, value_name = "[ADDR:]PORT|off", default_value = "4789")]
    vxlan: String,
    /// GENEVE over UDP: [ADDR:]PORT, or "off".
    #[arg(long, value_name = "[ADDR:]PORT|off", default_value = "6081")]
    geneve: String,
    /// TZSP over UDP: [ADDR:]PORT, or "off".
    #[arg(long, value_name = "[ADDR:]PORT|off", default_value = "37008")]
    tzsp: String,
    /// Capture on a SPAN/monitor NIC with AF_PACKET (repeatable).
    #[arg(long, value_name = "IF")]
    interface: Vec<String>,
    /// Read the mirror traffic that arrives on this interface for the GRE and UDP inputs above
    /// with AF_XDP, before the IP stack (repeatable). Falls back to those inputs, with a log
    /// line, where the driver refuses XDP; refused at start by a build made without clang.
    #[arg(long, value_name = "IF")]
    xdp: Vec<String>,
    /// UMEM of each AF_XDP interface (--xdp and --input's picks), shared by its queues: frames
    /// wait there while tapwire is busy, one per 2 KiB chunk (MTU up to 1774) or 4 KiB chunk.
    /// The kernel pins it; without CAP_IPC_LOCK it is cut to fit RLIMIT_MEMLOCK, with a log
    /// line [default: 64MiB].
    #[arg(long, value_name = "SIZE")]
    xdp_umem: Option<String>,
    /// What reads the mirror traffic on each interface holding an address the GRE and UDP
    /// inputs listen on (loopback excepted), other than those --xdp and --interface name:
    /// auto tries AF_XDP, then an AF_PACKET ring, then leaves it to the sockets; xdp and ring
    /// try only that one; sockets leaves every interface to the sockets. The choice is logged
    /// at start and shown in the API and the UI.
    #[arg(long, value_enum, default_value_t = InputArg::Auto)]
    input: InputArg,
    /// Capture threads per interface (PACKET_FANOUT).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// Stats API address, or "off".
    #[arg(long, value_name = "ADDR|off", default_value = tapwire_api_types::DEFAULT_ADDR)]
    api: String,
    /// Live streams (`GET /api/v1/sessions/NAME/stream`, `tapwire stream`, the Wireshark
    /// extcap) served at once, across sessions; past it a new one gets 503. 0: none.
    #[arg(long, value_name = "N", default_value_t = tapwire_collector::live::stream::DEFAULT_MAX_STREAMS)]
    max_streams: usize,
    /// Token that lets API clients other than localhost act on sessions.
    #[arg(long, env = "TAPWIRE_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Serve --api on an address other hosts reach without --db or --api-token: anyone who
    /// reaches it reads the stats (actions stay localhost-only). Without it, that is refused.
    #[arg(long, conflicts_with = "db")]
    allow_unauthenticated_api: bool,
    /// Run as a service: no terminal UI, logs only. Without it, a terminal on stdout gets the
    /// `tapwire top` UI inline.
    #[arg(long)]
    no_tui: bool,
    /// Write logs to this file (appended) instead of stderr or the UI's log pane.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// File format of the sessions' files [default: pcapng, or the format of
    /// [defaults.files]].
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// Rotate files at this size (e.g. 1GiB; 0: not by size).
    #[arg(long, value_name = "SIZE")]
    rotate_size: Option<String>,
    /// Rotate files this long after they were opened (e.g. 15m).
    #[arg(long, value_name = "DURATION")]
    rotate_duration: Option<String>,
    /// Rotate on wall-clock boundaries (UTC) of this interval (1h: on the hour).
    #[arg(long, value_name = "DURATION")]
    rotate_interval: Option<String>,
    /// Rotate files after this many packets.
    #[arg(long, value_name = "N")]
    rotate_packets: Option<u64>,
    /// Keep at most this many files per session; the oldest are removed.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_files: Option<u32>,
    /// Shell command run on each finished file, with its path as $1.
    #[arg(long, value_name = "CMD")]
    on_finish: Option<String>,
    /// Stop writing (and count drops) below this much free disk [default: min(256MiB, 5% of the disk)].
    #[arg(long, value_name = "SIZE")]
    min_free_disk: Option<String>,
    /// Write no packet index (`<file>.twidx`) beside the capture files; `tapwire query` then
    /// scans them.
    #[arg(long)]
    no_index: bool,
    /// Refuse a query of the API (`tapwire query`, /api/v1/packets) that would read more than
    /// this much capture, by the index's estimate ("0": no limit).
    #[arg(long, value_name = "SIZE", default_value = "4GiB")]
    query_max_bytes: String,
    /// Which time each packet is written with.
    #[arg(long, value_enum, default_value_t = TimestampsArg::Input)]
    timestamps: TimestampsArg,
    /// Give every auto-discovered session a monitor TAP named <PREFIX><n>.
    #[arg(long, value_name = "PREFIX")]
    tap_prefix: Option<String>,
    /// Drop frames whose GRE checksum does not verify (counted as malformed gre_checksum).
    /// By default they are written, noted in their pcapng comment and counted per source as
    /// gre_checksum_bad: Open vSwitch's userspace datapath sends stale checksums.
    #[arg(long)]
    strict_gre_checksum: bool,
    /// Check the configuration file and flags, print what each session will get (files,
    /// rotation, TAP) once they are merged, and exit.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    control: control::ControlArgs,
}

#[derive(Args)]
struct DecapArgs {
    /// Capture files (pcap or pcapng, any link type carrying IP), read in the order given.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Directory for one file per source, named <src>_<kind>_<id>.pcapng.
    #[arg(long, short, required_unless_present = "single")]
    out: Option<PathBuf>,
    /// Write one pcapng with one interface per source instead.
    #[arg(long, conflicts_with = "out")]
    single: Option<PathBuf>,
    /// File format of the output.
    #[arg(long, value_enum, default_value_t = FormatArg::Pcapng)]
    format: FormatArg,
    /// Timestamps to write: the input's, or the ERSPAN Type III header's where it is absolute.
    #[arg(long, value_enum, default_value_t = TimestampsArg::Input)]
    timestamps: TimestampsArg,
    /// Print a JSON report on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Drop frames whose GRE checksum does not verify (counted as malformed gre_checksum)
    /// instead of writing them with a comment and counting them per source.
    #[arg(long)]
    strict_gre_checksum: bool,
    #[command(flatten)]
    ports: PortArgs,
}

#[derive(Args, Clone)]
struct PortArgs {
    /// UDP port(s) carrying VXLAN.
    #[arg(long = "vxlan-port", value_name = "PORT", default_values_t = [4789])]
    vxlan: Vec<u16>,
    /// UDP port(s) carrying GENEVE.
    #[arg(long = "geneve-port", value_name = "PORT", default_values_t = [6081])]
    geneve: Vec<u16>,
    /// UDP port(s) carrying TZSP.
    #[arg(long = "tzsp-port", value_name = "PORT", default_values_t = [37008])]
    tzsp: Vec<u16>,
}

impl PortArgs {
    fn ports(&self) -> decap::Ports {
        decap::Ports {
            vxlan: self.vxlan.clone(),
            geneve: self.geneve.clone(),
            tzsp: self.tzsp.clone(),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    /// An interface per source, nanosecond timestamps, direction flags and comments.
    Pcapng,
    /// Classic pcap, microsecond timestamps.
    Pcap,
    /// Classic pcap, nanosecond timestamps.
    PcapNs,
}

#[derive(Clone, Copy, ValueEnum)]
enum InputArg {
    /// AF_XDP, else an AF_PACKET ring, else the sockets.
    Auto,
    /// AF_XDP, else the sockets.
    Xdp,
    /// An AF_PACKET ring, else the sockets.
    Ring,
    /// The raw GRE and UDP sockets only.
    Sockets,
}

#[derive(Clone, Copy, ValueEnum)]
enum TimestampsArg {
    /// The input's: the kernel's receive time (collect), the capture file's (decap).
    Input,
    /// The ERSPAN Type III header's, where it is absolute; the input's otherwise.
    Erspan,
}

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Started by Wireshark through the link `tapwire extcap install` made.
    if args.first().is_some_and(|a| extcap::started_as_extcap(a)) {
        args.insert(1, "extcap".into());
    }
    let cli = Cli::parse_from(args);
    match cli.command {
        Command::Decap(args) => decap(args),
        Command::Collect(args) => collect(*args),
        Command::Top(args) => top::top(args),
        Command::Query(args) => query::query(args),
        Command::Lab(args) => lab::run(args),
        Command::Session(cmd) => control::session(cmd),
        Command::Flow(cmd) => control::flow(cmd),
        Command::Probe(cmd) => control::probe(cmd),
        Command::Audit(args) => control::audit(args),
        Command::Token(cmd) => control::token(cmd),
        Command::Collectors(cmd) => control::collectors(cmd),
        Command::Stream(args) => stream::run(args),
        Command::Extcap(args) => extcap::run(args),
    }
}

/// Log lines the inline UI keeps for its pane.
const LOG_PANE_LINES: usize = 1000;

/// Logs go to `file` when given, else to the UI's pane when there is a UI (never over the
/// screen), else to stderr. Returns the pane's buffer.
fn init_logs(file: Option<&Path>, ui: bool) -> Result<Option<LogBuffer>, String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match (file, ui) {
        (Some(path), _) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("--log-file {}: {e}", path.display()))?;
            logs.with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .init();
            Ok(None)
        }
        (None, true) => {
            let buf = LogBuffer::new(LOG_PANE_LINES);
            logs.with_ansi(false)
                .with_target(false)
                .with_writer(buf.clone())
                .init();
            Ok(Some(buf))
        }
        (None, false) => {
            // Colours only for a person at a terminal, not for journald or a file.
            use std::io::IsTerminal;
            logs.with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .init();
            Ok(None)
        }
    }
}

fn collect(args: CollectArgs) -> ExitCode {
    let opts = match collect_options(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("tapwire collect: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        tapwire_netio::stdout::write_all(&tapwire_collector::check::describe(&opts));
        return ExitCode::SUCCESS;
    }
    let ui = !args.no_tui && std::io::stdout().is_terminal();
    let logs = match init_logs(args.log_file.as_deref(), ui) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tapwire collect: {e}");
            return ExitCode::from(2);
        }
    };
    let result = if ui {
        let pane = logs.clone();
        let result = collect::run_with(opts, Some(move |h: Handles| inline_ui(h, pane)));
        // The screen is back: show how it ended (if the terminal is still there).
        if let Some(l) = &logs {
            let mut err = std::io::stderr().lock();
            for line in l.tail(10) {
                let _ = writeln!(err, "{line}");
            }
        }
        result
    } else {
        collect::run(opts)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<StartError>() => {
            eprintln!("tapwire collect: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("tapwire collect: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The `tapwire top` UI inside `collect`: it reads the engine's snapshot directly and sends
/// actions on the engine's control channel, as the API would.
fn inline_ui(h: Handles, logs: Option<LogBuffer>) {
    let snapshot = h.snapshot.clone();
    let source = move || Ok::<_, String>(snapshot.load_full());
    let act = h.actions.clone();
    let actions = move |session: &str, action| act(session, action);
    if let Err(e) = top::inline(source, actions, logs, Arc::clone(&h.stop)) {
        tracing::error!(error = %e, "terminal UI failed");
    }
}

/// Turns flags and the configuration file into options; any error is one line for exit 2.
fn collect_options(a: &CollectArgs) -> Result<CollectOptions, String> {
    let flags = file_flags(a)?;
    let config = match &a.config {
        Some(p) => Config::load_with(p, &flags).map_err(|e| e.to_string())?,
        None => Config {
            collector: config::CollectorConfig {
                out: None,
                auto_discover: None,
                allow: Vec::new(),
                min_free_disk_bytes: None,
                default_files: flags.over(&config::FilesConfig::default()),
                tap_prefix: None,
                limits: Default::default(),
            },
            sessions: Vec::new(),
            hooks: Default::default(),
        },
    };
    let files = config.collector.default_files.clone();
    let allow = if a.allow.is_empty() {
        config.collector.allow.clone()
    } else {
        a.allow
            .iter()
            .map(|s| config::cidr(s).map_err(|e| format!("--allow: {e}")))
            .collect::<Result<_, _>>()?
    };
    let min_free_disk_bytes = match &a.min_free_disk {
        Some(v) => Some(size_flag("min-free-disk", v)?),
        None => config.collector.min_free_disk_bytes,
    };

    let mut inputs = Vec::new();
    let mut ports = decap::Ports {
        vxlan: Vec::new(),
        geneve: Vec::new(),
        tzsp: Vec::new(),
    };
    if let Some(ip) = addr_or_off("gre-v4", &a.gre_v4)? {
        match ip {
            IpAddr::V4(v4) => inputs.push(InputKind::GreV4(v4)),
            IpAddr::V6(_) => return Err("--gre-v4: give an IPv4 address".into()),
        }
    }
    if let Some(ip) = addr_or_off("gre-v6", &a.gre_v6)? {
        match ip {
            IpAddr::V6(v6) => inputs.push(InputKind::GreV6(v6)),
            IpAddr::V4(_) => return Err("--gre-v6: give an IPv6 address".into()),
        }
    }
    for (flag, value, list) in [
        ("vxlan", &a.vxlan, &mut ports.vxlan),
        ("geneve", &a.geneve, &mut ports.geneve),
        ("tzsp", &a.tzsp, &mut ports.tzsp),
    ] {
        if let Some(sa) = udp_or_off(flag, value)? {
            list.push(sa.port());
            inputs.push(InputKind::Udp(sa));
        }
    }
    let all: Vec<u16> = ports
        .vxlan
        .iter()
        .chain(&ports.geneve)
        .chain(&ports.tzsp)
        .copied()
        .collect();
    if (1..all.len()).any(|i| all[..i].contains(&all[i])) {
        return Err("--vxlan, --geneve and --tzsp must use different ports".into());
    }
    let dests = tapwire_collector::live::input::xdp_dests(&inputs);
    let xdp_umem_bytes = match &a.xdp_umem {
        Some(v) => match size_flag("xdp-umem", v)? {
            n if n >= 4 << 20 => n,
            _ => return Err(format!("--xdp-umem: {v:?} is below the 4MiB minimum")),
        },
        None => tapwire_collector::live::input::DEFAULT_XDP_UMEM_BYTES,
    };
    for name in &a.xdp {
        if dests.is_empty() {
            return Err(
                "--xdp: every GRE and UDP input is off, so there is nothing to steer".into(),
            );
        }
        if a.xdp.iter().filter(|n| *n == name).count() > 1 {
            return Err(format!("--xdp {name}: given twice"));
        }
        if !tapwire_netio::xdp::available() {
            return Err(format!("--xdp {name}: {}", tapwire_netio::xdp::UNAVAILABLE));
        }
        inputs.push(InputKind::Xdp {
            name: name.clone(),
            dests: dests.clone(),
            umem_bytes: xdp_umem_bytes,
        });
    }
    let input_mode = match a.input {
        InputArg::Auto => InputMode::Auto,
        InputArg::Xdp => InputMode::Xdp,
        InputArg::Ring => InputMode::Ring,
        InputArg::Sockets => InputMode::Sockets,
    };
    if matches!(input_mode, InputMode::Xdp | InputMode::Ring) && dests.is_empty() {
        return Err(format!(
            "--input {input_mode}: every GRE and UDP input is off, so no interface holds a listen address"
        ));
    }
    if input_mode == InputMode::Xdp && !tapwire_netio::xdp::available() {
        return Err(format!("--input xdp: {}", tapwire_netio::xdp::UNAVAILABLE));
    }
    for name in &a.interface {
        if a.xdp.contains(name) {
            return Err(format!(
                "--interface {name} and --xdp {name}: one input per interface; give one of them"
            ));
        }
        if a.interface.iter().filter(|n| *n == name).count() > 1 {
            return Err(format!("--interface {name}: given twice"));
        }
    }
    for name in &a.interface {
        for worker in 0..a.workers {
            inputs.push(InputKind::Interface {
                name: name.clone(),
                worker,
                workers: a.workers,
            });
        }
    }
    // Mirror traffic seen on a monitor interface uses the standard ports too.
    for (list, port) in [
        (&mut ports.vxlan, 4789),
        (&mut ports.geneve, 6081),
        (&mut ports.tzsp, 37008),
    ] {
        if list.is_empty() && !a.interface.is_empty() {
            list.push(port);
        }
    }
    let api = match a.api.as_str() {
        "off" => None,
        v => Some(
            v.parse::<SocketAddr>()
                .map_err(|_| format!("--api: {v:?} is not ADDR:PORT or off"))?,
        ),
    };
    let out = a
        .out
        .clone()
        .or(config.collector.out.clone())
        .unwrap_or_else(|| PathBuf::from("captures"));
    let settings = Settings {
        out,
        auto_discover: !a.no_auto && config.collector.auto_discover.unwrap_or(true),
        allow,
        default_files: files,
        timestamps: match a.timestamps {
            TimestampsArg::Input => Timestamps::Input,
            TimestampsArg::Erspan => Timestamps::Erspan,
        },
        config_path: a.config.clone(),
        file_flags: flags,
        tap_prefix: a.tap_prefix.clone().or(config.collector.tap_prefix.clone()),
        allow_from_config: a.allow.is_empty(),
        max_streams: a.max_streams,
        limits: limits(a, &config.collector.limits)?,
    };
    if let Some(p) = &settings.tap_prefix {
        config::validate_tap_name(&format!("{p}999")).map_err(|e| format!("--tap-prefix: {e}"))?;
    }
    let (controller, listen) = control::collect_options(&a.control, api)?;
    if controller.is_some() && a.api_token.is_some() {
        return Err(
            "--api-token: with --db, tokens come from the database (tapwire token create)".into(),
        );
    }
    if let Some(addr) = api
        && !addr.ip().to_canonical().is_loopback()
        && controller.is_none()
        && a.api_token.is_none()
        && !a.allow_unauthenticated_api
    {
        return Err(format!(
            "--api {addr}: other hosts can reach it and nothing authenticates them (anyone could read the stats): give --api-token TOKEN or --db, or --allow-unauthenticated-api to serve it so"
        ));
    }
    Ok(CollectOptions {
        controller,
        listen,
        settings,
        config,
        inputs,
        input_mode,
        workers: a.workers,
        xdp_umem_bytes,
        decap: decap::Config {
            ports,
            strict_gre_checksum: a.strict_gre_checksum,
            ..decap::Config::default()
        },
        api,
        api_token: a.api_token.clone(),
        min_free_disk_bytes,
        index: !a.no_index,
        query_max_bytes: match size_flag("query-max-bytes", &a.query_max_bytes)? {
            0 => None,
            n => Some(n),
        },
    })
}

/// The flags over the configuration file's `[collector]` keys over the defaults.
fn limits(a: &CollectArgs, file: &config::LimitsConfig) -> Result<Limits, String> {
    let d = Limits::default();
    let idle = match &a.idle_timeout {
        Some(v) => Some(config::duration(v).map_err(|e| format!("--idle-timeout: {e}"))?),
        None => file.idle_timeout,
    };
    Ok(Limits {
        max_sources: a
            .max_sources
            .map(|n| n as usize)
            .or(file.max_sources)
            .unwrap_or(d.max_sources),
        max_auto_sessions: a
            .max_auto_sessions
            .map(|n| n as usize)
            .or(file.max_auto_sessions)
            .unwrap_or(d.max_auto_sessions),
        idle_timeout_ns: idle.map_or(d.idle_timeout_ns, |t| {
            u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)
        }),
    })
}

/// The file flags, which override `[defaults.files]` (also at every reload).
fn file_flags(a: &CollectArgs) -> Result<config::FileFlags, String> {
    let dur = |flag: &str, v: &Option<String>| {
        v.as_deref()
            .map(|v| config::duration(v).map_err(|e| format!("--{flag}: {e}")))
            .transpose()
    };
    if a.rotate_packets == Some(0) {
        return Err("--rotate-packets: must be above 0".into());
    }
    Ok(config::FileFlags {
        format: a.format.map(format_of),
        rotate_size_bytes: a
            .rotate_size
            .as_deref()
            .map(|v| size_flag("rotate-size", v))
            .transpose()?,
        rotate_duration: dur("rotate-duration", &a.rotate_duration)?,
        rotate_interval: dur("rotate-interval", &a.rotate_interval)?,
        rotate_packets: a.rotate_packets,
        max_files: a.max_files,
        on_finish: a.on_finish.clone(),
    })
}

pub(crate) fn size_flag(flag: &str, v: &str) -> Result<u64, String> {
    v.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("--{flag}: {v:?} is not a size like 100MiB"))
}

fn addr_or_off(flag: &str, v: &str) -> Result<Option<IpAddr>, String> {
    if v == "off" {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|_| format!("--{flag}: {v:?} is not an address or off"))
}

/// `4789` (all addresses, IPv4 and IPv6), `ADDR:PORT`, `[V6]:PORT`, or `off`.
fn udp_or_off(flag: &str, v: &str) -> Result<Option<SocketAddr>, String> {
    if v == "off" {
        return Ok(None);
    }
    if let Ok(port) = v.parse::<u16>() {
        return Ok(Some(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            port,
        )));
    }
    let sa: SocketAddr = v
        .parse()
        .map_err(|_| format!("--{flag}: {v:?} is not PORT, ADDR:PORT or off"))?;
    if sa.ip() == IpAddr::V4(Ipv4Addr::UNSPECIFIED) || sa.port() != 0 {
        return Ok(Some(sa));
    }
    Err(format!("--{flag}: port 0"))
}

fn format_of(f: FormatArg) -> Format {
    match f {
        FormatArg::Pcapng => Format::Pcapng,
        FormatArg::Pcap => Format::Pcap { nanos: false },
        FormatArg::PcapNs => Format::Pcap { nanos: true },
    }
}

fn decap(args: DecapArgs) -> ExitCode {
    let opts = DecapOptions {
        inputs: args.inputs,
        out_dir: args.out,
        single: args.single,
        format: format_of(args.format),
        timestamps: match args.timestamps {
            TimestampsArg::Input => Timestamps::Input,
            TimestampsArg::Erspan => Timestamps::Erspan,
        },
        config: decap::Config {
            ports: args.ports.ports(),
            strict_gre_checksum: args.strict_gre_checksum,
            ..decap::Config::default()
        },
        ..DecapOptions::default()
    };
    let report = match offline::run(&opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tapwire decap: {e}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => outln!("{s}"),
            Err(e) => {
                eprintln!("tapwire decap: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print_table(&report);
    }
    for e in &report.errors {
        eprintln!("tapwire decap: {e}");
    }
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_table(r: &Report) {
    let mut rows = vec![
        [
            "SOURCE", "KIND", "ID", "PACKETS", "BYTES", "LOST", "DUP", "REORD", "TRUNC",
            "SEQUENCE", "FILE",
        ]
        .map(String::from),
    ];
    for s in &r.sources {
        rows.push([
            s.src.clone(),
            s.kind.to_string(),
            s.id.to_string(),
            s.packets.to_string(),
            s.bytes.to_string(),
            s.lost.to_string(),
            s.duplicates.to_string(),
            s.reordered.to_string(),
            s.truncated.to_string(),
            serde_json::to_value(s.sequence)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            s.file.clone().unwrap_or_default(),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        outln!("{}", line.join("  ").trim_end());
    }
    let t = &r.totals;
    outln!();
    outln!(
        "read {} packets, decapsulated {} from {} sources",
        t.packets_read,
        t.decapsulated,
        r.sources.len()
    );
    if !t.not_mirror.is_empty() {
        outln!("not mirror traffic: {}", join_counts(&t.not_mirror));
    }
    if !t.malformed.is_empty() {
        outln!("malformed: {}", join_counts(&t.malformed));
    }
    let bad_checksums: u64 = r.sources.iter().map(|s| s.gre_checksum_bad).sum();
    if bad_checksums > 0 {
        println!(
            "bad GRE checksums: {bad_checksums} frames written with a comment (--strict-gre-checksum drops them)"
        );
    }
    if t.defrag.fragments > 0 {
        outln!(
            "outer fragments: {} ({} datagrams reassembled, {} incomplete, {} invalid)",
            t.defrag.fragments,
            t.defrag.reassembled,
            t.defrag.incomplete_at_end,
            t.defrag.invalid
        );
    }
}

fn join_counts(m: &std::collections::BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
