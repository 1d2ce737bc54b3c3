//! `tapwire lab status`: namespaces, processes, and the sessions as the collector's API
//! counts them.

use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tapwire_api_types::control::CollectorState;
use tapwire_api_types::{SessionState, Snapshot};
use tapwire_netio::outln;

use crate::plan::{self, API, Plan};
use crate::record::{Info, invoked_as, sender};
use crate::sys;

/// The collector's snapshot, read with `tapwire top --once --json` inside its namespace.
pub fn snapshot(plan: &Plan, tapwire: &Path) -> Result<Snapshot> {
    snapshot_in(&plan.ns(plan.home_role()), tapwire)
}

/// The snapshot of the collector in namespace `ns` (its API on [`API`]).
pub fn snapshot_in(ns: &str, tapwire: &Path) -> Result<Snapshot> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(tapwire)
        .args(["top", "--once", "--json", "--connect", API])
        .output()
        .context("run tapwire top --once --json")?;
    if !out.status.success() {
        bail!(
            "the collector's API: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("the collector's API answer")
}

#[derive(Debug, Serialize)]
struct Status {
    name: String,
    up: bool,
    /// Every namespace present, every process running, every session receiving.
    whole: bool,
    state_dir: String,
    captures: Option<String>,
    namespaces: Vec<NsStatus>,
    processes: Vec<ProcStatus>,
    sessions: Vec<SessionStatus>,
    api_error: Option<String>,
    /// `lab up --fleet`: each collector as the fleet sees it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    fleet: Vec<MemberStatus>,
}

#[derive(Debug, Serialize)]
struct MemberStatus {
    name: String,
    /// `live` or `dead`.
    state: String,
    lease_age_s: f64,
    sessions: Vec<String>,
    api_url: Option<String>,
}

#[derive(Debug, Serialize)]
struct NsStatus {
    name: String,
    present: bool,
}

#[derive(Debug, Serialize)]
struct ProcStatus {
    name: String,
    pid: u32,
    namespace: String,
    running: bool,
}

#[derive(Debug, Serialize)]
struct SessionStatus {
    name: String,
    workflow: String,
    sender: String,
    /// `receiving`, `idle`, `disabled`, `error`, or `missing` when the collector does not
    /// have it.
    state: String,
    packets: u64,
    bytes: u64,
    written: u64,
    lost: u64,
    file: Option<String>,
    /// With a fleet: the collector that owns it.
    #[serde(skip_serializing_if = "Option::is_none")]
    collector: Option<String>,
}

pub fn run(name: &str, json: bool) -> Result<ExitCode> {
    let st = collect(name);
    if json {
        outln!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print(&st);
    }
    Ok(ExitCode::from(if !st.up {
        3
    } else if st.whole {
        0
    } else {
        1
    }))
}

fn collect(name: &str) -> Status {
    let info = Info::load(name);
    let present = sys::namespaces(&plan::prefix(name));
    // A collector started again (`lab revive`) is recorded again: its last record counts.
    let mut records = sys::records(&plan::state_dir(name));
    let mut seen = std::collections::BTreeSet::new();
    records.reverse();
    records.retain(|r| r.name == crate::keeper::NAME || seen.insert(r.name.clone()));
    records.reverse();
    let mut st = Status {
        name: name.to_string(),
        up: info.is_some() || !present.is_empty(),
        whole: false,
        state_dir: plan::state_dir(name).display().to_string(),
        captures: info.as_ref().map(|i| i.out.display().to_string()),
        namespaces: Vec::new(),
        processes: records
            .iter()
            .map(|r| ProcStatus {
                name: r.name.clone(),
                pid: r.pid,
                namespace: r.ns.clone(),
                running: r.alive(),
            })
            .collect(),
        sessions: Vec::new(),
        api_error: None,
        fleet: Vec::new(),
    };
    let Some(info) = info else {
        st.namespaces = present
            .into_iter()
            .map(|n| NsStatus {
                name: n,
                present: true,
            })
            .collect();
        return st;
    };
    let plan = info.plan();
    st.namespaces = plan
        .roles()
        .iter()
        .map(|r| {
            let n = plan.ns(r);
            NsStatus {
                present: present.contains(&n),
                name: n,
            }
        })
        .collect();
    if plan.fleet {
        fleet_sessions(&plan, &info.tapwire, &mut st);
        return st;
    }
    let snap = snapshot(&plan, &info.tapwire);
    if let Err(e) = &snap {
        st.api_error = Some(format!("{e:#}"));
    }
    for s in plan.sessions() {
        let live = snap
            .as_ref()
            .ok()
            .and_then(|snap| snap.sessions.iter().find(|x| x.name == s.name));
        st.sessions.push(SessionStatus {
            name: s.name.to_string(),
            workflow: s.workflow.to_string(),
            sender: sender(s),
            state: live.map_or("missing".into(), |l| state_name(l.state).into()),
            packets: live.map_or(0, |l| l.packets),
            bytes: live.map_or(0, |l| l.bytes),
            written: live.map_or(0, |l| l.written),
            lost: live.map_or(0, |l| l.lost),
            file: live
                .and_then(|l| l.files.as_ref())
                .and_then(|f| f.current.clone()),
            collector: None,
        });
    }
    whole(&mut st);
    st
}

fn whole(st: &mut Status) {
    st.whole = st.namespaces.iter().all(|n| n.present)
        && st.processes.iter().all(|p| p.running)
        && st.sessions.iter().all(|s| s.state == "receiving");
}

/// The sessions of a fleet lab on their owners, and the fleet.
fn fleet_sessions(plan: &Plan, tapwire: &Path, st: &mut Status) {
    match crate::fleet::fleet(plan) {
        Ok(f) => {
            st.fleet = f
                .collectors
                .iter()
                .map(|c| MemberStatus {
                    name: c.name.clone(),
                    state: match c.state {
                        CollectorState::Live => "live".into(),
                        CollectorState::Dead => "dead".into(),
                    },
                    lease_age_s: c.lease_age_s,
                    sessions: c.sessions.clone(),
                    api_url: c.api_url.clone(),
                })
                .collect();
        }
        Err(e) => st.api_error = Some(format!("{e:#}")),
    }
    let placed = crate::fleet::sessions(plan, tapwire).unwrap_or_default();
    for s in plan.sessions() {
        let p = placed.iter().find(|p| p.session == s.name);
        st.sessions.push(SessionStatus {
            name: s.name.to_string(),
            workflow: s.workflow.to_string(),
            sender: sender(s),
            state: p
                .and_then(|p| p.state)
                .map_or("missing".into(), |x| state_name(x).into()),
            packets: p.map_or(0, |p| p.packets),
            bytes: p.map_or(0, |p| p.bytes),
            written: p.map_or(0, |p| p.written),
            lost: p.map_or(0, |p| p.lost),
            file: p.and_then(|p| p.file.clone()),
            collector: p.and_then(|p| p.owner.clone()),
        });
    }
    whole(st);
}

fn state_name(s: SessionState) -> &'static str {
    match s {
        SessionState::Receiving => "receiving",
        SessionState::Idle => "idle",
        SessionState::Disabled => "disabled",
        SessionState::Error => "error",
    }
}

fn print(st: &Status) {
    if !st.up {
        outln!("lab {:?} is not up ({} lab up)", st.name, invoked_as());
        return;
    }
    let present = st.namespaces.iter().filter(|n| n.present).count();
    let running = st.processes.iter().filter(|p| p.running).count();
    outln!(
        "lab {:?}: {}",
        st.name,
        if st.whole {
            "up, every session receiving"
        } else {
            "NOT WHOLE (see below)"
        }
    );
    outln!("state      {}", st.state_dir);
    if let Some(c) = &st.captures {
        outln!("captures   {c}");
    }
    outln!(
        "namespaces {present} of {} present{}",
        st.namespaces.len(),
        missing(st.namespaces.iter().filter(|n| !n.present).map(|n| &n.name))
    );
    outln!(
        "processes  {running} of {} running{}",
        st.processes.len(),
        missing(st.processes.iter().filter(|p| !p.running).map(|p| &p.name))
    );
    if let Some(e) = &st.api_error {
        outln!("collector  API not answering: {e}");
    }
    if !st.fleet.is_empty() {
        outln!();
        outln!(
            "{:<10} {:<5} {:>7}  {:<24} SESSIONS",
            "COLLECTOR",
            "STATE",
            "LEASE",
            "API"
        );
        for c in &st.fleet {
            outln!(
                "{:<10} {:<5} {:>6.1}s  {:<24} {}",
                c.name,
                c.state,
                c.lease_age_s,
                c.api_url.as_deref().unwrap_or("-"),
                c.sessions.join(", ")
            );
        }
    }
    if st.sessions.is_empty() {
        return;
    }
    outln!();
    outln!(
        "{:<12} {:<10} {:>10} {:>12} {:>6}  SENDER",
        "SESSION",
        "STATE",
        "PACKETS",
        "BYTES",
        "LOST"
    );
    for s in &st.sessions {
        let sender = match &s.collector {
            Some(c) => format!("{} → {c}", s.sender),
            None => s.sender.clone(),
        };
        outln!(
            "{:<12} {:<10} {:>10} {:>12} {:>6}  {}",
            s.name,
            s.state,
            s.packets,
            s.bytes,
            s.lost,
            sender
        );
    }
}

fn missing<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = names.map(String::as_str).collect();
    if v.is_empty() {
        String::new()
    } else {
        format!(" (not: {})", v.join(", "))
    }
}
