//! `tapwire extcap`: Wireshark's extcap protocol, so that every session of a collector is a
//! capture interface (`tapwire-<session>`) of Wireshark, tshark and dumpcap, streamed live
//! from the collector (`GET /api/v1/sessions/{name}/stream`).
//!
//! Wireshark runs the program it finds in its extcap folder with `--extcap-interfaces`,
//! `--extcap-dlts`, `--extcap-config`, `--extcap-capture-filter` (to check a filter) and
//! `--capture --fifo PATH`; `tapwire extcap install` links the `tapwire` binary there as
//! `tapwire-extcap` (a binary started under that name is `tapwire extcap`). The collector and
//! the token are the interface's options in Wireshark (`--controller`, `--token`, `--ca`);
//! without them, `TAPWIRE_CONTROLLER` and `TAPWIRE_API_TOKEN`, as for the other commands, else
//! `http://127.0.0.1:9750` and no token. Errors (a refused token, an unknown session, a bad
//! filter, a collector gone mid-capture) go to stderr with exit status 1: Wireshark shows
//! them.
//!
//! The sessions listed are what the collector's `GET /api/v1/sessions` answers: one
//! collector's (a fleet's shared listing is not built yet).

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::{Args, Subcommand};
use tapwire_api_types::control::{CollectorState, Fleet};
use tapwire_api_types::{SessionState, SessionStats, Snapshot};
use tapwire_client::Client;
use tapwire_netio::outln;

use crate::stream::{Ended, pump, stop_flag, why_it_ended};

/// The name a session's interface has in Wireshark.
pub const PREFIX: &str = "tapwire-";
/// The name of the link in the extcap folder; a binary started under it is `tapwire extcap`.
pub const LINK_NAME: &str = "tapwire-extcap";
const HELP_URL: &str = "https://github.com/tapwire/tapwire/blob/main/docs/wireshark.md";

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ExtcapArgs {
    #[command(subcommand)]
    pub cmd: Option<ExtcapCmd>,
    #[command(flatten)]
    pub protocol: Protocol,
}

#[derive(Subcommand, Debug)]
pub enum ExtcapCmd {
    /// Link this binary into Wireshark's extcap folder (as tapwire-extcap) and print the
    /// folder. Wireshark 4.0 (Debian bookworm) loads ~/.config/wireshark/extcap, 4.2 and later
    /// ~/.local/lib/wireshark/extcap: the version is asked of tshark.
    Install {
        /// Wireshark's global extcap folder instead of the personal one (as root).
        #[arg(long, conflicts_with = "dir")]
        global: bool,
        /// This folder instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// What Wireshark passes (the names are Wireshark's), and the interface's options.
#[derive(Args, Debug, Default)]
pub struct Protocol {
    /// List the interfaces: one per session of the collector.
    #[arg(long)]
    pub extcap_interfaces: bool,
    /// Wireshark's version (given with --extcap-interfaces).
    #[arg(long, value_name = "VERSION", num_args = 0..=1, default_missing_value = "")]
    pub extcap_version: Option<String>,
    /// The interface asked about.
    #[arg(long, value_name = "IFACE")]
    pub extcap_interface: Option<String>,
    /// List the link types of --extcap-interface.
    #[arg(long)]
    pub extcap_dlts: bool,
    /// List the options of --extcap-interface.
    #[arg(long)]
    pub extcap_config: bool,
    /// A capture filter: checked alone, passed to the collector with --capture.
    #[arg(long, value_name = "FILTER")]
    pub extcap_capture_filter: Option<String>,
    /// Capture --extcap-interface into --fifo.
    #[arg(long, requires_all = ["extcap_interface", "fifo"])]
    pub capture: bool,
    /// Where Wireshark reads the capture.
    #[arg(long, value_name = "PATH")]
    pub fifo: Option<PathBuf>,
    /// The collector's API: ADDR:PORT or a URL [default: $TAPWIRE_CONTROLLER, else
    /// http://127.0.0.1:9750].
    #[arg(long, value_name = "URL")]
    pub controller: Option<String>,
    /// A viewer's bearer token [default: $TAPWIRE_API_TOKEN, else none: enough on the
    /// collector's own host].
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Trust this CA certificate (PEM) for https.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Wireshark's debugging options, accepted and ignored.
    #[arg(long, hide = true)]
    pub debug: bool,
    #[arg(long, hide = true, value_name = "PATH")]
    pub debug_file: Option<PathBuf>,
}

/// The collector and the token: the options, else the environment, else the defaults.
fn endpoint(p: &Protocol) -> (String, Option<String>) {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let controller = p
        .controller
        .clone()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| env("TAPWIRE_CONTROLLER"))
        .unwrap_or_else(|| tapwire_client::base_url(tapwire_api_types::DEFAULT_ADDR));
    let token = p
        .token
        .clone()
        .filter(|t| !t.trim().is_empty())
        .or_else(|| env("TAPWIRE_API_TOKEN"));
    (controller, token)
}

fn client(p: &Protocol) -> Result<Client, String> {
    let (controller, token) = endpoint(p);
    Client::new(&controller, token, p.ca.as_deref(), Duration::from_secs(10))
}

/// Runs `tapwire extcap ...`.
pub fn run(args: ExtcapArgs) -> ExitCode {
    if let Some(ExtcapCmd::Install { global, dir }) = args.cmd {
        return install(global, dir);
    }
    let p = args.protocol;
    if p.extcap_interfaces {
        return interfaces(&p);
    }
    if p.extcap_dlts {
        outln!(
            "dlt {{number=1}}{{name=EN10MB}}{{display=Ethernet (inner frames; pcapng: an interface per source)}}"
        );
        return ExitCode::SUCCESS;
    }
    if p.extcap_config {
        let (controller, _) = endpoint(&p);
        tapwire_netio::stdout::write_all(&config_lines(&controller));
        return ExitCode::SUCCESS;
    }
    if p.capture {
        return capture(&p);
    }
    if let Some(f) = &p.extcap_capture_filter {
        // Wireshark checks a filter as it is typed: exit 0 when libpcap takes it, else its
        // message on stdout.
        return match tapwire_collector::filter::Filter::new(f) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                outln!("{e}");
                ExitCode::from(1)
            }
        };
    }
    eprintln!(
        "tapwire extcap: Wireshark runs this with --extcap-interfaces, --capture, ...; \
         `tapwire extcap install` puts it where Wireshark looks"
    );
    ExitCode::from(2)
}

/// `--extcap-interfaces`: one interface per session. When the collector cannot be listed,
/// one interface `tapwire` whose name says why (capturing it gives the error in full), so
/// that Wireshark shows the problem instead of nothing.
fn interfaces(p: &Protocol) -> ExitCode {
    let mut fleet = None;
    let listed = client(p).and_then(|c| {
        let snap = c
            .get::<Snapshot>(tapwire_api_types::SESSIONS_PATH)
            .map_err(|e| format!("{}: {}", c.base(), e.message))?;
        // With a control plane, the fleet's other collectors' sessions too (streamed from
        // their owner through this collector); a collector without one has no fleet.
        if snap.control.is_some() {
            fleet = c.get::<Fleet>("/api/v1/fleet").ok();
        }
        Ok(snap)
    });
    let mut out = interface_lines(&listed);
    if let (Ok(snap), Some(f)) = (&listed, &fleet) {
        out += &fleet_lines(snap, f);
    }
    tapwire_netio::stdout::write_all(&out);
    ExitCode::SUCCESS
}

/// One interface per session that another collector of the fleet runs (not in `snap`).
pub fn fleet_lines(snap: &Snapshot, fleet: &Fleet) -> String {
    let mut out = String::new();
    for c in fleet
        .collectors
        .iter()
        .filter(|c| c.name != fleet.collector)
    {
        let state = match c.state {
            CollectorState::Live => "live",
            CollectorState::Dead => "dead",
        };
        for s in &c.sessions {
            if snap.sessions.iter().any(|x| &x.name == s) {
                continue;
            }
            out += &format!(
                "interface {{value={PREFIX}{s}}}{{display={}}}\n",
                escape(&format!(
                    "tapwire session {s}: on collector {} ({state}), streamed through {}",
                    c.name, fleet.collector
                ))
            );
        }
    }
    out
}

/// The `--extcap-interfaces` answer for a listing (or the error listing it).
pub fn interface_lines(listed: &Result<Snapshot, String>) -> String {
    let mut out = format!(
        "extcap {{version={}}}{{help={HELP_URL}}}\n",
        env!("CARGO_PKG_VERSION")
    );
    match listed {
        Ok(snap) => {
            for s in &snap.sessions {
                out += &format!(
                    "interface {{value={PREFIX}{}}}{{display={}}}\n",
                    s.name,
                    escape(&describe(s))
                );
            }
        }
        Err(e) => {
            out += &format!(
                "interface {{value=tapwire}}{{display=tapwire: no sessions listed ({})}}\n",
                escape(e)
            );
        }
    }
    out
}

/// `tapwire session web: receiving, 2 sources, 1.2k pps, filter "udp"`.
fn describe(s: &SessionStats) -> String {
    let state = match s.state {
        SessionState::Receiving => "receiving",
        SessionState::Idle => "idle",
        SessionState::Disabled => "disabled",
        SessionState::Error => "error",
    };
    let mut d = format!(
        "tapwire session {}: {state}, {} source{}",
        s.name,
        s.sources.len(),
        if s.sources.len() == 1 { "" } else { "s" }
    );
    if s.rates.pps_10s > 0.0 {
        d += &format!(", {:.0} pps", s.rates.pps_10s);
    }
    if s.auto {
        d += ", auto-discovered";
    }
    if let Some(f) = &s.filter {
        d += &format!(", filter {f}");
    }
    d
}

/// Braces end a field of the extcap protocol: none may be inside one.
fn escape(s: &str) -> String {
    s.replace(['{', '}'], "").replace('\n', " ")
}

/// The interface's options, as Wireshark shows them.
pub fn config_lines(controller: &str) -> String {
    [
        format!(
            "arg {{number=0}}{{call=--controller}}{{display=Collector}}{{type=string}}\
             {{default={}}}{{tooltip=The collector's API: ADDR:PORT or a URL \
             (TAPWIRE_CONTROLLER)}}{{group=Collector}}",
            escape(controller)
        ),
        "arg {number=1}{call=--token}{display=API token}{type=password}{tooltip=A viewer's \
         bearer token; empty: TAPWIRE_API_TOKEN, else none (enough on the collector's own \
         host)}{group=Collector}"
            .to_string(),
        "arg {number=2}{call=--ca}{display=CA certificate}{type=fileselect}{mustexist=true}\
         {tooltip=PEM file to trust for an https collector}{group=Collector}"
            .to_string(),
    ]
    .join("\n")
        + "\n"
}

/// `--capture`: the session's stream into Wireshark's fifo until Wireshark stops it (SIGTERM,
/// or the fifo closed). Anything else that ends it is an error Wireshark shows.
fn capture(p: &Protocol) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("tapwire: {msg}");
        ExitCode::from(1)
    };
    let (Some(iface), Some(fifo)) = (&p.extcap_interface, &p.fifo) else {
        return fail("--capture needs --extcap-interface and --fifo".into());
    };
    // An error before the stream is there: said, then the fifo is let go of.
    let refused = |msg: String| {
        let code = fail(msg);
        release_fifo(fifo);
        code
    };
    let stop = match stop_flag() {
        Ok(s) => s,
        Err(e) => return refused(format!("signal handler: {e}")),
    };
    let client = match client(p) {
        Ok(c) => c,
        Err(e) => return refused(e),
    };
    let Some(session) = iface.strip_prefix(PREFIX) else {
        // The interface that stands for a collector that could not be listed: say why.
        return refused(
            match client.get::<Snapshot>(tapwire_api_types::SESSIONS_PATH) {
                Err(e) => format!("the collector at {} refused: {}", client.base(), e.message),
                Ok(_) => format!(
                    "the collector at {} lists its sessions now: capture one of the {PREFIX}<session> interfaces (Wireshark lists them again when restarted)",
                    client.base()
                ),
            },
        );
    };
    let stream = match client.stream(session, p.extcap_capture_filter.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            return refused(format!(
                "session {session} at {}: {}",
                client.base(),
                e.message
            ));
        }
    };
    // Opened once the stream is there: Wireshark waits on the fifo until then, and an
    // error above reaches it without a half-made capture.
    let out = match OpenOptions::new().write(true).open(fifo) {
        Ok(f) => f,
        Err(e) => return fail(format!("--fifo {}: {e}", fifo.display())),
    };
    let fd = out.try_clone();
    let mut out = io::BufWriter::with_capacity(256 << 10, out);
    let fd = fd.as_ref().ok().map(std::os::fd::AsFd::as_fd);
    match pump(stream, &mut out, fd, None, &stop) {
        Ended::Stopped | Ended::OutputClosed | Ended::Counted => ExitCode::SUCCESS,
        Ended::ByCollector(why) => fail(why_it_ended(&client, session, why)),
        Ended::Broken(e) => fail(format!(
            "capture of {session} stopped: the connection to the collector at {} broke ({e})",
            client.base()
        )),
        Ended::Output(e) => fail(format!("--fifo {}: {e}", fifo.display())),
    }
}

/// Opens Wireshark's fifo for writing once dumpcap has opened its end (waiting at most
/// [`RELEASE_WAIT`]) and closes it: dumpcap then reads an empty capture and ends, and
/// Wireshark's GUI shows the error the extcap printed. Otherwise dumpcap waits on a fifo no
/// writer ever opened, and the GUI with it, for ever (tshark notices the extcap's exit by
/// itself).
fn release_fifo(fifo: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let deadline = std::time::Instant::now() + RELEASE_WAIT;
    loop {
        // Non-blocking: ENXIO while nobody reads it yet.
        let opened = OpenOptions::new()
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(fifo);
        match opened {
            Ok(_) => return,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) => {}
            Err(_) => return,
        }
        if std::time::Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long an extcap that failed waits for dumpcap to open the fifo.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// What `tshark -G folders` and `tshark -v` say about where Wireshark loads extcaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folders {
    /// `4.0.17`.
    pub version: Option<(u32, u32)>,
    pub personal: Option<PathBuf>,
    pub global: Option<PathBuf>,
}

/// Reads `tshark -G folders` (`Name:\tpath` lines) and the first line of `tshark -v`.
/// Wireshark 4.2 and later print "Personal Extcap path" and "Global Extcap path"; 4.0 prints
/// only the global one, as "Extcap path", and loads personal extcaps from the `extcap` folder
/// of its personal configuration.
pub fn parse_folders(folders: &str, version: &str) -> Folders {
    let field = |name: &str| {
        folders.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| PathBuf::from(v.trim()))
        })
    };
    let version = version
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'))
        .and_then(|w| {
            let mut it = w.split('.').map(|n| n.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        });
    let personal = field("Personal Extcap path").or_else(|| {
        // 4.0 and before: no such line.
        let old = version.is_none_or(|v| v < (4, 2));
        old.then(|| field("Personal configuration").map(|c| c.join("extcap")))
            .flatten()
    });
    let global = field("Global Extcap path").or_else(|| field("Extcap path"));
    Folders {
        version,
        personal,
        global,
    }
}

fn tshark(args: &[&str]) -> Result<String, String> {
    let out = Command::new("tshark").args(args).output().map_err(|e| {
        format!(
            "tshark {}: {e} (is Wireshark's tshark installed?)",
            args.join(" ")
        )
    })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `tapwire extcap install`.
fn install(global: bool, dir: Option<PathBuf>) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("tapwire extcap install: {msg}");
        ExitCode::from(1)
    };
    let (dir, what) = match dir {
        Some(d) => (d, "the folder given".to_string()),
        None => {
            let found = tshark(&["-G", "folders"])
                .and_then(|f| tshark(&["-v"]).map(|v| parse_folders(&f, &v)));
            let folders = match found {
                Ok(f) => f,
                Err(e) => return fail(format!("{e}; or give --dir")),
            };
            let version = folders
                .version
                .map(|(a, b)| format!("Wireshark {a}.{b}"))
                .unwrap_or_else(|| "Wireshark".into());
            let (d, which) = if global {
                (folders.global, "global")
            } else {
                (folders.personal, "personal")
            };
            match d {
                Some(d) => (d, format!("{version}'s {which} extcap folder")),
                None => {
                    return fail(format!(
                        "tshark -G folders names no {which} extcap folder; give --dir"
                    ));
                }
            }
        }
    };
    let exe = match std::env::current_exe().and_then(|p| p.canonicalize()) {
        Ok(p) => p,
        Err(e) => return fail(format!("this program's path: {e}")),
    };
    match link(&dir, &exe) {
        Ok(link) => {
            eprintln!(
                "tapwire extcap install: {} -> {} ({what}); restart Wireshark to see the \
                 sessions",
                link.display(),
                exe.display()
            );
            outln!("{}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("{}: {e}", dir.display())),
    }
}

/// Makes `dir` and the link `dir/tapwire-extcap` to `exe`, replacing an older link (never
/// another kind of file).
fn link(dir: &Path, exe: &Path) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let link = dir.join(LINK_NAME);
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(&link)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a link; remove it first",
                    link.display()
                ),
            ));
        }
        Err(_) => {}
    }
    std::os::unix::fs::symlink(exe, &link)?;
    Ok(link)
}

/// Whether the program was started as the extcap link: then its arguments are
/// `tapwire extcap`'s.
pub fn started_as_extcap(argv0: &std::ffi::OsStr) -> bool {
    Path::new(argv0).file_name() == Some(std::ffi::OsStr::new(LINK_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapwire_api_types::control::FleetMember;

    const FOLDERS_4_0: &str = "Temp:                \t/tmp\n\
        Personal configuration:\t/home/u/.config/wireshark\n\
        Global configuration:\t/usr/share/wireshark\n\
        Extcap path:         \t/usr/lib/x86_64-linux-gnu/wireshark/extcap\n";
    const FOLDERS_4_2: &str = "Personal configuration:\t/home/u/.config/wireshark\n\
        Personal Extcap path:\t/home/u/.local/lib/wireshark/extcap\n\
        Global Extcap path:\t/usr/lib/x86_64-linux-gnu/wireshark/extcap\n";

    #[test]
    fn the_personal_folder_moved_in_4_2() {
        let f = parse_folders(
            FOLDERS_4_0,
            "TShark (Wireshark) 4.0.17 (Git v4.0.17 packaged as 4.0.17-0+deb12u3).",
        );
        assert_eq!(f.version, Some((4, 0)));
        assert_eq!(
            f.personal.as_deref(),
            Some(Path::new("/home/u/.config/wireshark/extcap"))
        );
        assert_eq!(
            f.global.as_deref(),
            Some(Path::new("/usr/lib/x86_64-linux-gnu/wireshark/extcap"))
        );
        let f = parse_folders(FOLDERS_4_2, "TShark (Wireshark) 4.2.2 (Git v4.2.2).");
        assert_eq!(f.version, Some((4, 2)));
        assert_eq!(
            f.personal.as_deref(),
            Some(Path::new("/home/u/.local/lib/wireshark/extcap"))
        );
        // A 4.2 that printed no personal line does not fall back to 4.0's folder.
        let f = parse_folders(FOLDERS_4_0, "TShark (Wireshark) 4.4.1.");
        assert_eq!(f.personal, None);
    }

    #[test]
    fn each_session_is_an_interface_and_a_failed_listing_says_why() {
        let snap: Snapshot = serde_json::from_str(
            &serde_json::to_string(&tapwire_tui::fixture::snapshot(0)).unwrap(),
        )
        .unwrap();
        let lines = interface_lines(&Ok(snap.clone()));
        let mut it = lines.lines();
        assert!(it.next().unwrap().starts_with("extcap {version="));
        let ifaces: Vec<&str> = it.collect();
        assert_eq!(ifaces.len(), snap.sessions.len());
        assert!(
            ifaces[0].starts_with("interface {value=tapwire-edge-sw1}{display=tapwire session edge-sw1: receiving, 2 sources"),
            "{}",
            ifaces[0]
        );
        let failed = interface_lines(&Err("http://127.0.0.1:9750: 401: {bad} token".into()));
        assert!(failed.ends_with(
            "interface {value=tapwire}{display=tapwire: no sessions listed (http://127.0.0.1:9750: 401: bad token)}\n"
        ));
        assert!(
            config_lines("http://x:1").contains("{call=--token}{display=API token}{type=password}")
        );
    }

    #[test]
    fn the_fleets_other_sessions_are_interfaces_too() {
        let snap: Snapshot = serde_json::from_str(
            &serde_json::to_string(&tapwire_tui::fixture::snapshot(0)).unwrap(),
        )
        .unwrap();
        let here = snap.sessions[0].name.clone();
        let member = |name: &str, state, sessions: Vec<String>| FleetMember {
            name: name.into(),
            state,
            lease_age_s: 0.0,
            advertise: None,
            api_url: None,
            version: String::new(),
            started: String::new(),
            sessions,
            pps: 0.0,
            lost: 0,
            packets: 0,
        };
        let fleet = Fleet {
            collector: "a".into(),
            control: tapwire_api_types::control::ControlState::Connected,
            collectors: vec![
                member("a", CollectorState::Live, vec![here.clone()]),
                member("b", CollectorState::Live, vec!["web".into(), here]),
                member("c", CollectorState::Dead, vec!["db".into()]),
            ],
        };
        assert_eq!(
            fleet_lines(&snap, &fleet),
            "interface {value=tapwire-web}{display=tapwire session web: on collector b (live), streamed through a}\n\
             interface {value=tapwire-db}{display=tapwire session db: on collector c (dead), streamed through a}\n"
        );
    }

    #[test]
    fn the_link_name_starts_the_extcap() {
        assert!(started_as_extcap(std::ffi::OsStr::new(
            "/root/.config/wireshark/extcap/tapwire-extcap"
        )));
        assert!(!started_as_extcap(std::ffi::OsStr::new("/usr/bin/tapwire")));
    }
}
