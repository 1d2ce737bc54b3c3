//! `tapwire lab down`: stop every process of a lab and remove its namespaces, from what `up`
//! recorded and from the namespace prefix, so it works after `up` crashed half-way too.

use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tapwire_netio::outln;

use crate::plan;
use crate::record::Info;
use crate::{keeper, sys};

/// What `down` removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub processes: usize,
    pub namespaces: usize,
}

pub fn run(name: &str) -> Result<ExitCode> {
    if !sys::is_root() {
        return Err(crate::Refused("removing namespaces needs root".into()).into());
    }
    let out = Info::load(name).map(|i| i.out);
    let removed = down(name)?;
    if removed.namespaces == 0 && removed.processes == 0 {
        outln!("lab {name:?} was not up; nothing to remove");
    } else {
        outln!(
            "lab {name:?} down: {} processes stopped, {} namespaces removed",
            removed.processes,
            removed.namespaces
        );
        if let Some(out) = out {
            outln!("its captures stay in {}", out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Removes lab `name`: the collector first and gently (SIGTERM: it closes every file within
/// 2 s), then every recorded process group, then anything still inside the lab's namespaces,
/// then the namespaces (and with them every link and the TAP), then the state directory. The
/// keeper reaps each process as it ends and exits after the last; `down` returns once it is
/// gone too, so that no process of the lab is left, not even a defunct one.
pub fn down(name: &str) -> Result<Removed> {
    let state = plan::state_dir(name);
    let prefix = plan::prefix(name);
    let all = sys::records(&state);
    let (keepers, records): (Vec<_>, Vec<_>) =
        all.into_iter().partition(|r| r.name == keeper::NAME);
    let mut removed = Removed {
        processes: records.iter().filter(|r| r.alive()).count(),
        namespaces: 0,
    };

    let collector = || {
        records
            .iter()
            .filter(|r| r.name.starts_with("collector") && r.alive())
    };
    for r in collector() {
        sys::kill_group(r.pid, "TERM");
    }
    wait(Duration::from_secs(5), || collector().next().is_none());
    // A fleet's PostgreSQL after its clients: a fast shutdown (SIGINT) leaves no shared memory.
    let database = || records.iter().filter(|r| r.name == "postgres" && r.alive());
    for r in database() {
        sys::kill_group(r.pid, "INT");
    }
    wait(Duration::from_secs(5), || database().next().is_none());
    for r in records.iter().filter(|r| r.alive()) {
        sys::kill_group(r.pid, "TERM");
    }
    wait(Duration::from_secs(1), || {
        records.iter().all(|r| !r.alive())
    });
    for r in records.iter().filter(|r| r.alive()) {
        sys::kill_group(r.pid, "KILL");
    }
    // With its children gone the keeper exits by itself; the sweep below ends it otherwise.
    wait(Duration::from_secs(2), || {
        keepers.iter().all(|r| !r.alive())
    });

    let namespaces = sys::namespaces(&prefix);
    let mut stuck = Vec::new();
    for ns in &namespaces {
        let left = sys::kill_all_in(ns, Duration::from_secs(5));
        if !left.is_empty() {
            stuck.push(format!("{ns}: pids {left:?}"));
        }
    }
    for ns in &namespaces {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
    removed.namespaces = namespaces.len();
    let left = sys::namespaces(&prefix);
    let running: Vec<String> = records
        .iter()
        .filter(|r| r.alive())
        .map(|r| format!("{} (pid {})", r.name, r.pid))
        .collect();
    if !left.is_empty() || !running.is_empty() || !stuck.is_empty() {
        bail!(
            "lab {name:?} not fully removed: namespaces {left:?}, processes {running:?} {stuck:?}"
        );
    }
    // The keeper's own exit is reaped by its parent: `up` while it runs, else init, which
    // may take a moment (1.8 s on this project's machines).
    wait(Duration::from_secs(5), || {
        keepers.iter().all(|r| r.reaped())
    });
    if state.exists() {
        std::fs::remove_dir_all(&state)
            .map_err(|e| anyhow::anyhow!("remove {}: {e}", state.display()))?;
    }
    Ok(removed)
}

fn wait(timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}
