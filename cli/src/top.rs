//! `tapwire top` and the inline UI of `tapwire collect`: the real terminal, clock and HTTP
//! client plugged into [`tapwire_tui::start`], plus the two script-friendly modes (`--json`,
//! `--raw`).

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use clap::Args;
use tapwire_api_types::{SessionStats, Snapshot};

use tapwire_tui::client::{self, HttpActions, HttpSource, Source};
use tapwire_tui::fleet::HttpFleet;
use tapwire_tui::input::{SystemClock, Terminal};
use tapwire_tui::logs::LogBuffer;
use tapwire_tui::state::state_name;
use tapwire_tui::{Actions, Options};

/// `tapwire top`: attach to a running collector.
#[derive(Args, Debug, Clone)]
pub struct TopArgs {
    /// The collector's stats API: ADDR:PORT or a URL.
    #[arg(long, value_name = "URL", default_value = tapwire_api_types::DEFAULT_ADDR)]
    pub connect: String,
    /// Token: for actions when not on the collector's localhost, and for reads from other
    /// hosts of a collector with a control plane (a viewer's is enough).
    #[arg(long, env = "TAPWIRE_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print one snapshot (with --json) or one round of --raw lines, then exit.
    #[arg(long)]
    pub once: bool,
    /// Print snapshots as JSON (one per line; pretty with --once) instead of the UI.
    #[arg(long, conflicts_with = "raw")]
    pub json: bool,
    /// Print one plain line per session per poll instead of the UI (for scripts and logs).
    #[arg(long)]
    pub raw: bool,
    /// Seconds between polls.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0, value_parser = interval)]
    pub interval: f64,
    /// Show every collector of the fleet `--connect` belongs to (`GET /api/v1/fleet`); Enter
    /// shows one collector's sessions (on its API URL, with the same token), Esc comes back.
    #[arg(long, conflicts_with_all = ["json", "raw", "once"])]
    pub fleet: bool,
}

fn interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: give seconds between 0.1 and 3600")),
    }
}

/// Runs `tapwire top`.
pub fn top(args: TopArgs) -> ExitCode {
    let base = client::base_url(&args.connect);
    let every = Duration::from_secs_f64(args.interval);
    let mut source = HttpSource::new(&base).with_token(args.token.clone());
    if args.json || args.raw || args.once {
        let out = io::stdout();
        return match print_loop(&mut source, &mut out.lock(), &args, every) {
            Ok(code) => code,
            // stdout closed (`| head`): a normal end for a script mode.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tapwire top: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if !io::stdout().is_terminal() {
        eprintln!("tapwire top: stdout is not a terminal; use --raw or --json for scripts");
        return ExitCode::from(2);
    }
    let mut opts = Options::new(base.clone());
    opts.poll_every = every;
    let result = if args.fleet {
        fleet(&base, args.token, opts)
    } else {
        let mut actions = HttpActions::new(&base, args.token);
        interactive(&mut source, &mut actions, opts)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: the terminal may be the thing that went away.
            let _ = writeln!(io::stderr(), "tapwire top: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The UI on the real terminal (alternate screen, raw mode; restored on exit and on panic).
pub fn interactive(
    source: &mut dyn Source,
    actions: &mut dyn Actions,
    opts: Options,
) -> io::Result<()> {
    on_terminal(|terminal| {
        tapwire_tui::start(
            terminal,
            source,
            actions,
            &mut Terminal,
            &SystemClock::new(),
            opts,
        )
        .map(|_| ())
    })
}

/// Runs `ui` on the real terminal, restored afterwards.
fn on_terminal(ui: impl FnOnce(&mut ratatui::DefaultTerminal) -> io::Result<()>) -> io::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let result = ui(&mut terminal);
    let restored = ratatui::try_restore();
    // A terminal that went away cannot show its cursor again, and ratatui's Drop would then
    // eprintln! to it, which panics: leave it be.
    if terminal.show_cursor().is_err() {
        std::mem::forget(terminal);
    }
    result?;
    restored
}

/// `tapwire top --fleet` on the real terminal: each collector opened with the same token.
fn fleet(base: &str, token: Option<String>, opts: Options) -> io::Result<()> {
    let mut source = HttpFleet::new(base, token.clone());
    let mut opener = move |url: &str| -> (Box<dyn Source>, Box<dyn Actions>) {
        (
            Box::new(HttpSource::new(url).with_token(token.clone())),
            Box::new(HttpActions::new(url, token.clone())),
        )
    };
    on_terminal(|terminal| {
        tapwire_tui::fleet::start(
            terminal,
            &mut source,
            &mut opener,
            &mut Terminal,
            &SystemClock::new(),
            opts,
        )
        .map(|_| ())
    })
}

/// The inline UI of `tapwire collect`: the engine's snapshot and control come in as closures,
/// logs from the buffer the collector's logger fills; `stop` ends it when the collector stops.
pub fn inline(
    mut source: impl Source,
    mut actions: impl Actions,
    logs: Option<LogBuffer>,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    let mut opts = Options::new("in-process");
    opts.logs = logs;
    opts.inline = true;
    opts.stop = Some(stop);
    interactive(&mut source, &mut actions, opts)
}

/// `--json` and `--raw`: poll and print until `--once` is satisfied or stdout closes.
fn print_loop(
    source: &mut dyn Source,
    out: &mut dyn Write,
    args: &TopArgs,
    every: Duration,
) -> io::Result<ExitCode> {
    loop {
        let started = Instant::now();
        match source.fetch() {
            Ok(snap) if args.json && args.once => {
                serde_json::to_writer_pretty(&mut *out, &*snap)?;
                writeln!(out)?;
            }
            Ok(snap) if args.json => {
                serde_json::to_writer(&mut *out, &*snap)?;
                writeln!(out)?;
            }
            Ok(snap) => {
                for line in raw_lines(&snap) {
                    writeln!(out, "{line}")?;
                }
            }
            Err(e) if args.once => {
                eprintln!("tapwire top: {}: {e}", args.connect);
                return Ok(ExitCode::FAILURE);
            }
            Err(e) if args.json => eprintln!("tapwire top: {}: {e}", args.connect),
            Err(e) => writeln!(out, "disconnected error={}", quote(&e))?,
        }
        out.flush()?;
        if args.once {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(every.saturating_sub(started.elapsed()));
    }
}

/// One line per session, `key=value` pairs in a fixed order (bandwhich's raw mode in spirit):
/// `session=NAME state=receiving sources=1 pps=... bps=... pps_10s=... bps_10s=... packets=...
/// bytes=... lost=... dropped=... disabled=... truncated=... last_seen=... file=... file_bytes=...`
pub fn raw_lines(snap: &Snapshot) -> Vec<String> {
    snap.sessions.iter().map(raw_line).collect()
}

fn raw_line(s: &SessionStats) -> String {
    let (file, file_bytes) = match &s.files {
        Some(f) => (f.current.as_deref().unwrap_or("-"), f.current_bytes),
        None => ("-", 0),
    };
    format!(
        "session={} state={} sources={} pps={:.1} bps={:.0} pps_10s={:.1} bps_10s={:.0} \
         packets={} bytes={} lost={} dropped={} disabled={} truncated={} last_seen={} file={} \
         file_bytes={}",
        quote(&s.name),
        state_name(s.state),
        s.source_count(),
        s.rates.pps_1s,
        s.rates.bps_1s,
        s.rates.pps_10s,
        s.rates.bps_10s,
        s.packets,
        s.bytes,
        s.lost,
        s.drops.total(),
        s.drops.disabled,
        s.truncated,
        s.last_seen.as_deref().unwrap_or("-"),
        quote(file),
        file_bytes
    )
}

/// A value as one token: as it is when it has no space, quote or `=`, else JSON-quoted.
fn quote(v: &str) -> String {
    if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c == '"' || c == '=') {
        serde_json::to_string(v).unwrap_or_default()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_with_spaces_are_quoted() {
        assert_eq!(quote("edge-1"), "edge-1");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote(""), "\"\"");
    }

    #[test]
    fn raw_mode_prints_one_parsable_line_per_session() {
        let snap = tapwire_tui::fixture::snapshot(0);
        let lines = raw_lines(&snap);
        assert_eq!(lines.len(), snap.sessions.len());
        let lab = lines
            .iter()
            .find(|l| l.starts_with("session=lab-tap "))
            .unwrap();
        let fields: std::collections::BTreeMap<&str, &str> = lab
            .split(' ')
            .map(|kv| kv.split_once('=').unwrap())
            .collect();
        assert_eq!(fields["state"], "disabled");
        assert_eq!(fields["packets"], "7000");
        assert_eq!(fields["disabled"], "7000");
        assert_eq!(fields["dropped"], "7000");
        assert_eq!(fields["file"], "-");
        assert_eq!(fields.len(), 16, "{lab}");
        let edge = lines
            .iter()
            .find(|l| l.starts_with("session=edge-sw1 "))
            .unwrap();
        assert!(
            edge.contains(" lost=17 dropped=0 disabled=0 truncated=3 "),
            "{edge}"
        );
        assert!(
            edge.ends_with(
                "file=/var/lib/tapwire/edge/edge-sw1_20261121T060000Z.pcapng file_bytes=431000000"
            ),
            "{edge}"
        );
    }

    #[test]
    fn intervals_are_bounded() {
        assert_eq!(interval("0.5"), Ok(0.5));
        assert!(interval("0").is_err());
        assert!(interval("x").is_err());
    }
}
