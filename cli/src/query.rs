//! `tapwire query`: the packets of a time range (a session, a source, a tcpdump filter) as one
//! pcapng, from the local collector's API, or with `--dir` straight from a folder of capture
//! files with no collector.
//!
//! Exit status: 0 written; 1 the collector refused or could not be reached, or the output
//! could not be written; 2 a bad flag, time or filter.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tapwire_api_types::time::{parse_time, rfc3339_ns};
use tapwire_client::{Client, query_string};
use tapwire_collector::live::engine::now_ns;
use tapwire_collector::query::catalog::LocalDirs;
use tapwire_collector::query::fleet::LeftOutScan;
use tapwire_collector::query::{self, QueryError, Request};

#[derive(Args, Debug)]
pub struct QueryArgs {
    /// Only this session's files [default: every session's].
    #[arg(long, value_name = "NAME")]
    pub session: Option<String>,
    /// Only the packets of this mirroring source (its outer IP address).
    #[arg(long, value_name = "IP")]
    pub source: Option<IpAddr>,
    /// Start of the time range: RFC 3339 (2026-12-06T14:02:00Z), before now (-15m), or seconds
    /// since the epoch (1765029720.5).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub from: String,
    /// End of the time range, included (the same forms) [default: now].
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub to: Option<String>,
    /// A tcpdump filter on the inner frames ("host 10.0.0.5 and port 443"; its words may also
    /// be given unquoted).
    #[arg(
        value_name = "FILTER",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub filter: Vec<String>,
    /// Where the pcapng goes: a file, or - for stdout (`-w - | wireshark -k -i -`).
    #[arg(short = 'w', value_name = "FILE|-")]
    pub write: String,
    /// Read the capture files (.pcap, .pcapng, .gz) of this folder directly, with no collector
    /// (--api, --token and --ca are then not used).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The collector's API: ADDR:PORT or a URL [default: the local collector].
    #[arg(
        long,
        value_name = "URL",
        env = "TAPWIRE_CONTROLLER",
        visible_alias = "controller"
    )]
    pub api: Option<String>,
    /// Bearer token (none is needed from the collector's own host).
    #[arg(long, env = "TAPWIRE_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Trust this CA certificate (PEM) for https.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// With --dir: refuse a query that would read more than this much capture (by the index's
    /// estimate), e.g. 10GiB.
    #[arg(long, value_name = "SIZE", requires = "dir")]
    pub max_bytes: Option<String>,
    /// Print nothing on stderr when done.
    #[arg(long, short)]
    pub quiet: bool,
}

fn usage(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("tapwire query: {e}");
    ExitCode::from(2)
}

fn failed(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("tapwire query: {e}");
    ExitCode::FAILURE
}

/// Runs `tapwire query`.
pub fn query(a: QueryArgs) -> ExitCode {
    let now = now_ns();
    let from_ns = match parse_time(&a.from, now) {
        Ok(t) => t,
        Err(e) => return usage(format!("--from: {e}")),
    };
    let to_ns = match a.to.as_deref().map(|t| parse_time(t, now)).transpose() {
        Ok(t) => t.unwrap_or(now),
        Err(e) => return usage(format!("--to: {e}")),
    };
    let filter = Some(a.filter.join(" ")).filter(|f| !f.trim().is_empty());
    let to_stdout = a.write == "-";
    if to_stdout && io::stdout().is_terminal() {
        return usage("-w -: stdout is a terminal; pipe it (| wireshark -k -i -) or give a file");
    }
    let req = Request {
        session: a.session.clone(),
        source: a.source,
        from_ns,
        to_ns,
        filter,
    };
    let done = match &a.dir {
        Some(dir) => from_dir(dir, &req, &a),
        None => from_api(&req, &a),
    };
    match done {
        Ok(line) => {
            if !a.quiet {
                eprintln!("tapwire query: {line}");
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// The output: the file (created or emptied) or stdout.
fn output(a: &QueryArgs) -> Result<Box<dyn Write>, ExitCode> {
    if a.write == "-" {
        return Ok(Box::new(io::stdout().lock()));
    }
    File::create(&a.write)
        .map(|f| Box::new(f) as Box<dyn Write>)
        .map_err(|e| failed(format!("-w {}: {e}", a.write)))
}

fn from_dir(dir: &std::path::Path, req: &Request, a: &QueryArgs) -> Result<String, ExitCode> {
    if !dir.is_dir() {
        return Err(usage(format!("--dir {}: not a directory", dir.display())));
    }
    let max_bytes = match &a.max_bytes {
        Some(v) => Some(crate::size_flag("max-bytes", v).map_err(usage)?),
        None => None,
    };
    let local = LocalDirs {
        dirs: vec![dir.to_path_buf()],
        any_name: true,
        ..LocalDirs::default()
    };
    let prepared = query::prepare(&local, req, max_bytes).map_err(|e| match e {
        QueryError::BadRequest(_) | QueryError::Filter(_) => usage(e),
        e => failed(e),
    })?;
    let mut out = output(a)?;
    match prepared.write(&mut out) {
        Ok(s) => {
            let mut line = format!(
                "{} packets, {} bytes written from {} files ({} of their bytes read)",
                s.packets, s.bytes, s.estimate.files, s.bytes_read
            );
            if let Some(why) = &s.time_only {
                line.push_str(&format!("; the index narrowed by time only ({why})"));
            }
            for n in &s.notes {
                line.push_str(&format!("\n  {n}"));
            }
            Ok(line)
        }
        // A reader that went away (`| head`, Wireshark closed): nothing more to say.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            Ok("the reader closed the output".into())
        }
        Err(e) => Err(failed(format!("-w {}: {e}", a.write))),
    }
}

/// The output, with the answer looked through for collectors left out.
struct Scanned {
    out: Box<dyn Write>,
    scan: LeftOutScan,
}

impl Write for Scanned {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.scan.feed(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn from_api(req: &Request, a: &QueryArgs) -> Result<String, ExitCode> {
    let base = a
        .api
        .clone()
        .unwrap_or_else(|| tapwire_api_types::DEFAULT_ADDR.to_string());
    // The whole transfer is under this timeout: a day of packets is a long one.
    let client = Client::builder(&base)
        .token(a.token.clone())
        .ca(a.ca.as_deref())
        .timeout(Duration::from_secs(24 * 3600))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(usage)?;
    let (from, to) = (rfc3339_ns(req.from_ns), rfc3339_ns(req.to_ns));
    let source = req.source.map(|s| s.to_string());
    let path = format!(
        "/api/v1/packets{}",
        query_string(&[
            ("session", req.session.as_deref()),
            ("source", source.as_deref()),
            ("from", Some(&from)),
            ("to", Some(&to)),
            ("filter", req.filter.as_deref()),
        ])
    );
    let mut answer = client.get_stream(&path).map_err(|e| match e.status {
        400 => usage(e),
        _ => failed(e),
    })?;
    let estimate = answer
        .header("x-tapwire-estimate-bytes")
        .map(str::to_string);
    let mut out = Scanned {
        out: output(a)?,
        scan: LeftOutScan::default(),
    };
    let copied = io::copy(&mut answer.body, &mut out).and_then(|n| out.flush().map(|()| n));
    // Collectors of a fleet the answer had to leave out: said whatever happened after.
    for c in &out.scan.found {
        eprintln!("tapwire query: {c}");
    }
    match copied {
        Ok(n) => Ok(format!(
            "{n} bytes written (the index estimated at most {} bytes of capture to read)",
            estimate.as_deref().unwrap_or("?")
        )),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            Ok("the reader closed the output".into())
        }
        Err(e) => Err(failed(format!("{base}: {e}"))),
    }
}
