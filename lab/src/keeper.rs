//! The keeper: the parent of every process a lab starts, so that each one is reaped the moment
//! it ends. Without it, the processes are the children of `tapwire lab up`, which exits (or
//! returns from the UI) while the lab runs on; they then belong to init, and an init that reaps
//! only every couple of seconds (this project's machines': 1.8 s measured) left every process
//! `down` had stopped defunct for that long. The keeper is a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`), so the processes those start (a shell loop's `curl` and `sleep`)
//! come back to it too when their parent ends first.
//!
//! `up` starts it first, in the collector's namespace and a session of its own, asks it to
//! start each process of the lab (a JSON [`Request`] line on its stdin, a [`Reply`] line on
//! its stdout), and closes its stdin when the lab is built; from then on it only reaps, and it
//! exits when its last child has ended, which `down` waits for.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};

use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use serde::{Deserialize, Serialize};

/// The keeper's name in the lab's process records.
pub const NAME: &str = "keeper";

/// Start `argv` inside namespace `ns`, its stdout and stderr appended to these files.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub ns: String,
    pub argv: Vec<String>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// The started process's pid (also its process group and session), or why it did not start.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub pid: Option<u32>,
    pub error: Option<String>,
}

/// `up`'s handle on a running keeper.
pub struct Keeper {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

impl Keeper {
    /// Starts `tapwire lab keep` inside namespace `ns`, in a session of its own (it outlives
    /// `up` and ignores the terminal's signals), logging to `log`.
    pub fn start(tapwire: &Path, ns: &str, log: &Path) -> Result<Keeper> {
        let mut child = Command::new("setsid")
            .args(["ip", "netns", "exec", ns])
            .arg(tapwire)
            .args(["lab", "keep"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(append(log)?)
            .spawn()
            .with_context(|| format!("start the lab's keeper in {ns}"))?;
        let (Some(to), Some(from)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("the keeper's pipes");
        };
        Ok(Keeper {
            child,
            to,
            from: BufReader::new(from),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Has the keeper start `argv` in namespace `ns`; returns its pid.
    pub fn spawn(
        &mut self,
        ns: &str,
        argv: &[String],
        stdout: &Path,
        stderr: &Path,
    ) -> Result<u32> {
        let req = Request {
            ns: ns.to_string(),
            argv: argv.to_vec(),
            stdout: stdout.to_path_buf(),
            stderr: stderr.to_path_buf(),
        };
        let mut line = serde_json::to_string(&req)?;
        line.push('\n');
        self.to
            .write_all(line.as_bytes())
            .and_then(|()| self.to.flush())
            .context("ask the keeper")?;
        let mut answer = String::new();
        if self
            .from
            .read_line(&mut answer)
            .context("the keeper's answer")?
            == 0
        {
            bail!("the keeper exited");
        }
        let reply: Reply = serde_json::from_str(&answer).context("the keeper's answer")?;
        match (reply.pid, reply.error) {
            (Some(pid), _) => Ok(pid),
            (None, e) => Err(anyhow!(e.unwrap_or_default())),
        }
    }

    /// Every process is started: the keeper only reaps from now on. While `up` runs, a thread
    /// of it waits for the keeper, so the keeper itself is reaped at once too.
    pub fn finish(self) {
        let Keeper {
            mut child,
            to,
            from,
        } = self;
        drop(to);
        drop(from);
        std::thread::spawn(move || {
            let _ = child.wait();
        });
    }
}

fn append(p: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .with_context(|| format!("open log {}", p.display()))
}

/// `tapwire lab keep`: start what `up` asks for, reap every child as it ends, exit after the
/// last one once `up` has closed the pipe.
pub fn keep() -> Result<ExitCode> {
    // What `up`'s caller held (a `flock` lock, a harness's files) must not live on in the
    // keeper and every process of the lab.
    if let Err(e) = tapwire_netio::close_inherited_fds() {
        // A kernel before 5.9 has no close_range: the lab still works.
        eprintln!("tapwire lab keep: inherited descriptors stay open: {e}");
    }
    nix::sys::prctl::set_child_subreaper(true).context("become a child subreaper")?;
    if let Err(e) = serve() {
        // `up` went away half-way: what was started is still reaped below.
        eprintln!("tapwire lab keep: {e:#}");
    }
    reap(None);
    Ok(ExitCode::SUCCESS)
}

/// Answers `up`'s requests until it closes the pipe.
fn serve() -> Result<()> {
    let mut out = io::stdout().lock();
    for line in io::stdin().lock().lines() {
        let line = line.context("read a request")?;
        let reply = match serde_json::from_str::<Request>(&line)
            .map_err(|e| anyhow!("not a request: {e}"))
            .and_then(|req| start(&req))
        {
            Ok(pid) => Reply {
                pid: Some(pid),
                error: None,
            },
            Err(e) => Reply {
                pid: None,
                error: Some(format!("{e:#}")),
            },
        };
        writeln!(out, "{}", serde_json::to_string(&reply)?)
            .and_then(|()| out.flush())
            .context("answer")?;
        reap(Some(WaitPidFlag::WNOHANG));
    }
    Ok(())
}

/// Reaps ended children: those there are (`WNOHANG`), or, blocking, every one until none is
/// left.
fn reap(flags: Option<WaitPidFlag>) {
    loop {
        match waitpid(None, flags) {
            Ok(WaitStatus::StillAlive) => return,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// `setsid ip netns exec NS ARGV...`: setsid calls setsid() in place (a child is not a group
/// leader) and execs `ip`, which execs argv inside the namespace, so the pid stays the
/// command's and is its process group too.
fn start(r: &Request) -> Result<u32> {
    let stdout = append(&r.stdout)?;
    let stderr = if r.stderr == r.stdout {
        stdout.try_clone().context("log file")?
    } else {
        append(&r.stderr)?
    };
    let child = Command::new("setsid")
        .args(["ip", "netns", "exec", &r.ns])
        .args(&r.argv)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("start {:?} in {}", r.argv, r.ns))?;
    // Not waited for through `child`: `reap` collects every child.
    Ok(child.id())
}
