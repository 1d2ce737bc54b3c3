//! The lab's only contact with the system: `ip`, `sh` and `kill` commands, processes started
//! inside namespaces and recorded so that `down` can find them again, and the namespace list.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::keeper::Keeper;

/// Where `ip netns add` puts its namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Runs a command that must succeed; returns its stdout. The error names the command and
/// carries its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {}", show(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `ip -batch -` with `lines` on its stdin; stops at the first failing line.
pub fn ip_batch(lines: &[String]) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("run ip -batch")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(lines.join("\n").as_bytes())
            .context("write to ip -batch")?;
    }
    let out = child.wait_with_output().context("wait for ip -batch")?;
    if !out.status.success() {
        bail!(
            "ip -batch failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `script` with `sh -e` inside namespace `ns`.
pub fn ns_script(ns: &str, script: &str) -> Result<()> {
    run(Command::new("ip").args(["netns", "exec", ns, "sh", "-ec", script]))
        .with_context(|| format!("set up namespace {ns}"))?;
    Ok(())
}

/// `ip netns exec ns argv...`, which must succeed; returns stdout.
pub fn ns_exec(ns: &str, argv: &[&str]) -> Result<String> {
    run(Command::new("ip").args(["netns", "exec", ns]).args(argv))
}

/// The namespaces whose names start with `prefix`, sorted.
pub fn namespaces(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The processes inside namespace `ns`.
pub fn ns_pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A process the lab started, as recorded in `<state>/procs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub pid: u32,
    /// Its start time (clock ticks since boot, `/proc/PID/stat` field 22): a pid that was
    /// reused by another process does not match.
    pub start: u64,
    pub ns: String,
    pub name: String,
}

impl Record {
    fn line(&self) -> String {
        format!("{} {} {} {}\n", self.pid, self.start, self.ns, self.name)
    }

    fn parse(line: &str) -> Option<Record> {
        let mut f = line.split_whitespace();
        Some(Record {
            pid: f.next()?.parse().ok()?,
            start: f.next()?.parse().ok()?,
            ns: f.next()?.to_string(),
            name: f.next()?.to_string(),
        })
    }

    /// Whether the recorded process is still the one running under its pid (and not a
    /// zombie).
    pub fn alive(&self) -> bool {
        proc_stat(self.pid).is_some_and(|(state, start)| start == self.start && state != 'Z')
    }

    /// Whether the recorded process has ended and been reaped (not even a zombie is left).
    pub fn reaped(&self) -> bool {
        proc_stat(self.pid).is_none_or(|(_, start)| start != self.start)
    }
}

/// Every recorded process of a lab, in start order.
pub fn records(state: &Path) -> Vec<Record> {
    std::fs::read_to_string(state.join("procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(Record::parse)
        .collect()
}

/// (state, start time) of `pid` from `/proc/PID/stat`.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised command name: state is field 3, starttime field 22.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.first()?.chars().next()?, f.get(19)?.parse().ok()?))
}

/// How a started process's output is kept.
pub enum Output {
    /// stdout and stderr appended to this file.
    Log(PathBuf),
    /// stdout to the first file, stderr to the second.
    Split(PathBuf, PathBuf),
}

/// Has the keeper start `argv` inside namespace `ns` in a session of its own (no terminal: it
/// outlives `tapwire lab up` and ignores the terminal's signals), records it in
/// `<state>/procs` and returns its pid, which is also its process group.
pub fn spawn(
    keeper: &mut Keeper,
    state: &Path,
    ns: &str,
    name: &str,
    argv: &[String],
    output: Output,
) -> Result<u32> {
    let (stdout, stderr) = match output {
        Output::Log(p) => (p.clone(), p),
        Output::Split(o, e) => (o, e),
    };
    let pid = keeper
        .spawn(ns, argv, &stdout, &stderr)
        .with_context(|| format!("start {name} in {ns}"))?;
    record(state, pid, ns, name)?;
    Ok(pid)
}

/// Appends process `pid` to `<state>/procs`.
pub fn record(state: &Path, pid: u32, ns: &str, name: &str) -> Result<()> {
    let start = proc_stat(pid).map(|(_, s)| s).unwrap_or(0);
    let rec = Record {
        pid,
        start,
        ns: ns.to_string(),
        name: name.to_string(),
    };
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(state.join("procs"))
        .and_then(|mut f| f.write_all(rec.line().as_bytes()))
        .context("record the process in the lab's state")
}

/// Sends `signal` (`TERM`, `KILL`) to process group `pgid`.
pub fn kill_group(pgid: u32, signal: &str) {
    if pgid > 1 {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
    }
}

/// Kills every process inside `ns` (SIGKILL, repeated until none is left or `within`) and
/// waits until each has exited. Returns the ones still there at the deadline.
pub fn kill_all_in(ns: &str, within: Duration) -> Vec<u32> {
    let deadline = Instant::now() + within;
    let mut killed: Vec<u32> = Vec::new();
    loop {
        let left = ns_pids(ns);
        if !left.is_empty() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .args(left.iter().map(u32::to_string))
                .stderr(Stdio::null())
                .status();
            killed.extend(&left);
        }
        // A killed process leaves the namespace before it has finished exiting.
        killed.retain(|pid| proc_stat(*pid).is_some_and(|(state, _)| state != 'Z'));
        if (left.is_empty() && killed.is_empty()) || Instant::now() >= deadline {
            let mut all = left;
            all.extend(killed);
            all.sort_unstable();
            all.dedup();
            return all;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether we run as root (the lab makes namespaces).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Whether `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            std::fs::metadata(d.join(tool)).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = Record {
            pid: 42,
            start: 123456,
            ns: "tw-lab-col".into(),
            name: "collector".into(),
        };
        assert_eq!(Record::parse(&r.line()), Some(r));
        assert_eq!(Record::parse("x 1 a b"), None);
        assert_eq!(Record::parse("1 2 ns"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let pid = std::process::id();
        let (state, start) = proc_stat(pid).unwrap();
        assert_ne!(state, 'Z');
        let me = Record {
            pid,
            start,
            ns: "-".into(),
            name: "test".into(),
        };
        assert!(me.alive());
        assert!(
            !Record {
                start: start + 1,
                ..me
            }
            .alive()
        );
    }

    #[test]
    fn finds_tools_on_the_path() {
        assert!(have("sh"));
        assert!(!have("no-such-tool-tapwire"));
    }
}
