//! Command output on stdout that ends quietly when its reader goes away (`tapwire ... | head
//! -1`), as coreutils do. Rust ignores SIGPIPE, so a write to a closed pipe fails with
//! `EPIPE`, on which `println!` panics; every command of `tapwire` and `tapwire-probe` prints
//! through [`outln!`](crate::outln) or [`write_all`] instead.

use std::fmt;
use std::io::{self, Write};

/// One line of command output (`println!`'s arguments). A closed pipe ends the process at
/// once with status 0: nobody reads the rest, and commands print once their work is done.
/// Any other error (a full disk behind `>`) is reported on stderr and ends it with status 1.
pub fn line(args: fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    let r = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
    exit_on_error(r.and_then(|()| out.flush()));
}

/// `text` as it is (no newline added), ended as [`line()`] ends.
pub fn write_all(text: &str) {
    let mut out = io::stdout().lock();
    exit_on_error(out.write_all(text.as_bytes()).and_then(|()| out.flush()));
}

/// One line of progress that must not stop the work when nobody reads it any more: the
/// error is returned for the caller to ignore.
pub fn try_line(args: fmt::Arguments<'_>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_fmt(args)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Whether `e` means the reader of stdout went away.
pub fn is_closed_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

fn exit_on_error(r: io::Result<()>) {
    match r {
        Ok(()) => {}
        Err(e) if is_closed_pipe(&e) => std::process::exit(0),
        Err(e) => {
            let _ = writeln!(io::stderr(), "stdout: {e}");
            std::process::exit(1);
        }
    }
}

/// `println!` for command output: see [`line()`].
#[macro_export]
macro_rules! outln {
    () => {
        $crate::stdout::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::stdout::line(format_args!($($arg)*))
    };
}
