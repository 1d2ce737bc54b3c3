//! `tapwire stream SESSION [FILTER] -w FILE|-`: a session's live pcapng stream into a file or
//! a pipe (`| wireshark -k -i -`), and the copy loop it shares with `tapwire extcap`: whole
//! blocks only, so the output is a valid capture at every moment; a clean stop on SIGINT or
//! SIGTERM, when the reader closes its end, or after `-c` packets.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use clap::Args;
use tapwire_client::stream::{
    ENHANCED_PACKET, INTERFACE_STATISTICS, PacketStream, StreamError, end_reason,
};
use tapwire_client::{Client, segment};

use crate::control::Endpoint;

#[derive(Args, Debug)]
pub struct StreamArgs {
    /// The session.
    pub session: String,
    /// A capture filter in tcpdump's syntax on the inner frames (the words are joined, as
    /// tcpdump joins them), run by the collector.
    pub filter: Vec<String>,
    /// Where the pcapng goes: a file (replaced), or - for stdout.
    #[arg(short = 'w', value_name = "FILE|-")]
    pub write: PathBuf,
    /// Stop after this many packets.
    #[arg(short = 'c', long, value_name = "N")]
    pub count: Option<u64>,
    #[command(flatten)]
    pub client: Endpoint,
}

/// How a copy ended.
#[derive(Debug)]
pub enum Ended {
    /// SIGINT or SIGTERM.
    Stopped,
    /// The `-c` count was reached.
    Counted,
    /// The reader closed its end (a pipe, Wireshark's fifo).
    OutputClosed,
    /// The collector ended the stream (its session was deleted or it is stopping), with the
    /// reason its last blocks gave.
    ByCollector(Option<String>),
    /// The connection broke, or what came was not pcapng.
    Broken(StreamError),
    /// The output could not be written.
    Output(io::Error),
}

/// SIGINT and SIGTERM set the returned flag instead of ending the process.
pub fn stop_flag() -> io::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    Ok(stop)
}

/// Whether the reader of the pipe or fifo `fd` closed its end (`POLLERR` on the writing
/// end), which a quiet stream would otherwise notice only at its next write.
pub fn reader_gone(fd: BorrowedFd<'_>) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
    poll(&mut fds, PollTimeout::ZERO).is_ok()
        && fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP))
}

/// Copies whole blocks of `stream` to `out` until one of [`Ended`]. The stream is read on a
/// thread of its own, so that a stop (or `out_fd`'s reader going away) is noticed within
/// 100 ms whatever the collector sends; `out` is flushed whenever nothing more is waiting.
pub fn pump(
    mut stream: PacketStream,
    out: &mut dyn Write,
    out_fd: Option<BorrowedFd<'_>>,
    count: Option<u64>,
    stop: &AtomicBool,
) -> Ended {
    let (tx, rx) = mpsc::sync_channel::<Result<Option<(u32, Vec<u8>)>, StreamError>>(256);
    std::thread::spawn(move || {
        loop {
            let next = stream.next_block();
            let last = !matches!(next, Ok(Some(_)));
            if tx.send(next).is_err() || last {
                return;
            }
        }
    });
    let mut packets = 0u64;
    let mut reason = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            return flushed(out, Ended::Stopped);
        }
        let next = match rx.try_recv() {
            Ok(n) => n,
            Err(mpsc::TryRecvError::Empty) => {
                if let Err(e) = out.flush() {
                    return output_error(e);
                }
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(n) => n,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if out_fd.is_some_and(reader_gone) {
                            return Ended::OutputClosed;
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        return flushed(out, Ended::ByCollector(reason));
                    }
                }
            }
            Err(mpsc::TryRecvError::Disconnected) => {
                return flushed(out, Ended::ByCollector(reason));
            }
        };
        match next {
            Ok(Some((block_type, bytes))) => {
                if let Err(e) = out.write_all(&bytes) {
                    return output_error(e);
                }
                if block_type == INTERFACE_STATISTICS
                    && let Some(why) = end_reason(&bytes)
                {
                    reason = Some(why);
                }
                if block_type == ENHANCED_PACKET {
                    packets += 1;
                    if count.is_some_and(|c| packets >= c) {
                        return flushed(out, Ended::Counted);
                    }
                }
            }
            Ok(None) => return flushed(out, Ended::ByCollector(reason)),
            Err(e) => return flushed(out, Ended::Broken(e)),
        }
    }
}

fn flushed(out: &mut dyn Write, ended: Ended) -> Ended {
    match out.flush() {
        Ok(()) => ended,
        Err(e) => output_error(e),
    }
}

fn output_error(e: io::Error) -> Ended {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Ended::OutputClosed
    } else {
        Ended::Output(e)
    }
}

/// Why the collector ended a stream: the reason its last blocks gave, else what its API
/// tells (the session is gone, or the collector no longer answers).
pub fn why_it_ended(client: &Client, session: &str, reason: Option<String>) -> String {
    if let Some(why) = reason {
        return format!("the collector ended the stream of {session}: {why}");
    }
    match client.send::<()>(
        "GET",
        &format!("/api/v1/sessions/{}", segment(session)),
        None,
    ) {
        Ok(a) if a.status == 404 => format!("session {session} was deleted"),
        Ok(_) => "the collector ended the stream".into(),
        Err(f) => format!("the collector stopped ({})", f.reason),
    }
}

/// Runs `tapwire stream`. Exit status: 0 when stopped by a signal, `-c` or the reader; 1 when
/// the collector refused, ended or lost the stream; 2 for a bad flag.
pub fn run(args: StreamArgs) -> ExitCode {
    let fail = |msg: String, code: u8| {
        eprintln!("tapwire stream: {msg}");
        ExitCode::from(code)
    };
    let client = match Client::new(
        &args.client.controller,
        args.client.token.clone(),
        args.client.ca.as_deref(),
        Duration::from_secs(15),
    ) {
        Ok(c) => c,
        Err(e) => return fail(e, 2),
    };
    let stop = match stop_flag() {
        Ok(s) => s,
        Err(e) => return fail(format!("signal handler: {e}"), 1),
    };
    let filter = args.filter.join(" ");
    let stream = match client.stream(&args.session, Some(&filter)) {
        Ok(s) => s,
        Err(e) => return fail(e.message, 1),
    };
    let to_stdout = args.write == Path::new("-");
    let ended = if to_stdout {
        let stdout = io::stdout();
        let fd = stdout.as_fd();
        let mut out = io::BufWriter::with_capacity(256 << 10, stdout.lock());
        pump(stream, &mut out, Some(fd), args.count, &stop)
    } else {
        let file = match File::create(&args.write) {
            Ok(f) => f,
            Err(e) => return fail(format!("-w {}: {e}", args.write.display()), 1),
        };
        let fd = file.try_clone();
        let mut out = io::BufWriter::with_capacity(256 << 10, file);
        let fd = fd.as_ref().ok().map(AsFd::as_fd);
        pump(stream, &mut out, fd, args.count, &stop)
    };
    match ended {
        Ended::Stopped | Ended::Counted | Ended::OutputClosed => ExitCode::SUCCESS,
        Ended::ByCollector(why) => fail(why_it_ended(&client, &args.session, why), 1),
        Ended::Broken(e) => fail(format!("the stream from {} broke: {e}", client.base()), 1),
        Ended::Output(e) => fail(format!("-w {}: {e}", args.write.display()), 1),
    }
}
