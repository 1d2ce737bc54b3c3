//! `tapwire lab` as the tests drive it: a lab of the test's, brought down (and whatever `down`
//! left removed by its namespace prefix) when dropped, also on panic; and the checks that
//! `down` left no process behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::{bin, run};

/// A lab brought up by the test, brought down (and, if `down` left anything, removed by its
/// namespace prefix) when dropped, also on panic.
pub struct LabRun {
    pub name: String,
    pub tapwire: PathBuf,
}

impl LabRun {
    pub fn new(tag: char) -> LabRun {
        LabRun {
            name: format!("{tag}{}", std::process::id() % 100_000_000),
            tapwire: bin("tapwire"),
        }
    }

    pub fn ns(&self, role: &str) -> String {
        format!("tw-{}-{role}", self.name)
    }

    pub fn state(&self) -> PathBuf {
        Path::new("/run/tapwire-lab").join(&self.name)
    }

    /// `tapwire lab <args> --name NAME`.
    pub fn lab(&self, args: &[&str]) -> Output {
        run(Command::new(&self.tapwire)
            .arg("lab")
            .args(args)
            .args(["--name", &self.name])
            .stdin(Stdio::null()))
    }

    /// Its namespaces as `ip netns list` shows them.
    pub fn namespaces(&self) -> Vec<String> {
        let out = run(Command::new("ip").args(["netns", "list"]));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("tw-{}-", self.name)))
            .map(String::from)
            .collect()
    }

    /// Every process inside its namespaces, with its start time.
    pub fn processes(&self) -> Vec<(u32, u64)> {
        self.namespaces()
            .iter()
            .flat_map(|ns| {
                let out = run(Command::new("ip").args(["netns", "pids", ns]));
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok())
                    .collect::<Vec<_>>()
            })
            .filter_map(|pid| start_time(pid).map(|s| (pid, s)))
            .collect()
    }

    pub fn exec(&self, role: &str, argv: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.ns(role)])
            .args(argv)
            .stdin(Stdio::null()))
    }
}

impl Drop for LabRun {
    fn drop(&mut self) {
        let _ = self.lab(&["down"]);
        // Whatever `down` left (the test failed on it, or it was never reached).
        for ns in self.namespaces() {
            let _ = Command::new("sh")
                .args(["-c", &format!("ip netns pids {ns} | xargs -r kill -9")])
                .status();
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let _ = std::fs::remove_dir_all(self.state());
    }
}

/// `/proc/PID/stat` start time (field 22), `None` once the process is gone or a zombie.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f.first() != Some(&"Z"))
        .then(|| f.get(19)?.parse().ok())
        .flatten()
}

/// Every process of `procs` (pid, start time) has exited and been reaped: not even a zombie is
/// left (its parent waited for it).
pub fn assert_reaped(procs: &[(u32, u64)]) {
    let defunct: Vec<String> = procs
        .iter()
        .filter_map(|(pid, start)| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            (f.get(19)?.parse::<u64>().ok()? == *start).then(|| format!("{pid} {}", f[0]))
        })
        .collect();
    assert!(
        defunct.is_empty(),
        "processes not reaped after down (pid, state): {defunct:?}"
    );
}

/// Every process of `procs` (pid, start time) has exited.
pub fn assert_gone(procs: &[(u32, u64)]) {
    let left: Vec<u32> = procs
        .iter()
        .filter(|(pid, start)| start_time(*pid) == Some(*start))
        .map(|(pid, _)| *pid)
        .collect();
    assert!(left.is_empty(), "processes left after down: {left:?}");
}
