//! End-to-end: `tapwire lab up --fleet` (a throw-away PostgreSQL, collectors col1, col2 and
//! col3 on it, auto sessions, probes that take their flows from the fleet), a failover with
//! `lab fail`, `lab revive`, and `lab down` leaving no namespace, process or database behind.
//!
//! Oracles: the fleet's API says who owns what; tshark counts the test's own pings (a payload
//! size of their own) in each collector's files; capinfos accepts every file, also those of the
//! collector killed with SIGKILL; `ip netns` and /proc say what is left after `down`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tapwire_tests::labrun::{LabRun, assert_gone};
use tapwire_tests::netns::{Lab, wait_until};
use tapwire_tests::tmux::{Tmux, row};
use tapwire_tests::{capture_files, require, run, run_ok, validate_capture};

const VM1: &str = "10.10.0.11";
/// The session the test follows: traffic out of vm3 (mirrored by host2's probe).
const SESSION: &str = "vm3-egress";
const COLLECTORS: [&str; 3] = ["col1", "col2", "col3"];
/// ICMP payload sizes of the test's pings, before and after the failover (the lab's own
/// pings are 56 bytes).
const BEFORE: u32 = 1101;
const AFTER: u32 = 1102;
const N: u64 = 5;

/// One lab at a time: each is a dozen namespaces, PostgreSQL and twenty processes.
static ONE_LAB: Mutex<()> = Mutex::new(());

/// Without PostgreSQL's binaries: a skip when TAPWIRE_SKIP_POSTGRES is set, else a failure
/// (scripts/setup.sh installs them and CI runs this).
fn have_postgres() -> bool {
    if tapwire_lab::pg::bin_dir().is_some() {
        return true;
    }
    if std::env::var_os("TAPWIRE_SKIP_POSTGRES").is_some() {
        eprintln!("SKIP: no PostgreSQL binaries, and TAPWIRE_SKIP_POSTGRES is set");
        return false;
    }
    panic!("{}", tapwire_lab::pg::missing());
}

/// `GET /api/v1/fleet` on the loopback API of the first collector that answers.
fn fleet(l: &LabRun) -> Option<Value> {
    COLLECTORS.iter().find_map(|c| {
        let out = l.exec(
            c,
            &[
                "curl",
                "-sSf",
                "--max-time",
                "2",
                "http://127.0.0.1:9750/api/v1/fleet",
            ],
        );
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    })
}

/// Session -> owner, live collectors only; and collector -> state.
fn owners(f: &Value) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let (mut own, mut state) = (BTreeMap::new(), BTreeMap::new());
    for c in f["collectors"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap().to_string();
        state.insert(name.clone(), c["state"].as_str().unwrap().to_string());
        if c["state"] == "live" {
            for s in c["sessions"].as_array().unwrap() {
                own.insert(s.as_str().unwrap().to_string(), name.clone());
            }
        }
    }
    (own, state)
}

/// Echo requests of payload `size` from vm3 to vm1 in `collector`'s files of [`SESSION`].
fn requests(out: &Path, collector: &str, size: u32) -> u64 {
    let dir = out.join(collector);
    capture_files(&dir)
        .iter()
        .filter(|f| {
            f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{SESSION}_")) && n.ends_with(".pcapng"))
        })
        .map(|f| {
            let text = run_ok(Command::new("tshark").arg("-r").arg(f).args([
                "-Y",
                &format!(
                    "icmp.type == 8 && ip.src == 10.10.0.13 && ip.dst == {VM1} && ip.len == {}",
                    size + 28
                ),
                "-T",
                "fields",
                "-e",
                "frame.number",
            ]));
            text.lines().filter(|l| !l.trim().is_empty()).count() as u64
        })
        .sum()
}

/// `N` pings of payload `size` from vm3 to vm1; all must be answered.
fn ping(l: &LabRun, size: u32) {
    let out = l.exec(
        "vm3",
        &[
            "ping",
            "-q",
            "-c",
            &N.to_string(),
            "-i",
            "0.2",
            "-s",
            &size.to_string(),
            VM1,
        ],
    );
    assert!(
        out.status.success(),
        "ping: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_fleet_lab_fails_over_live_revives_without_flapping_and_goes_down_whole() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    if !have_postgres() {
        return;
    }
    require("tshark");
    require("capinfos");
    let scratch = Lab::empty("lab-fleet");
    let l = LabRun::new('f');
    let out = scratch.dir().join("captures");

    let t0 = Instant::now();
    let up = l.lab(&[
        "up",
        "--fleet",
        "--detach",
        "--wait",
        "40",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(up.status.success(), "lab up --fleet:\n{}", text(&up));
    eprintln!("lab up --fleet: {:.1?}", t0.elapsed());

    // Every collector live; the six sessions spread over all three.
    let f = fleet(&l).expect("the fleet's API");
    let (own, state) = owners(&f);
    assert_eq!(state.values().filter(|s| *s == "live").count(), 3, "{f}");
    assert_eq!(own.len(), 6, "{own:?}");
    let used: std::collections::BTreeSet<&String> = own.values().collect();
    assert_eq!(used.len(), 3, "auto sessions on every collector: {own:?}");
    let victim = own[SESSION].clone();

    // The test's pings land in the owner's files.
    ping(&l, BEFORE);
    wait_until(
        Duration::from_secs(10),
        "the pings before the failover in the owner's files",
        || (requests(&out, &victim, BEFORE) == N).then_some(()),
    );

    // SIGKILL to the owner: the session moves within the lease, the probe follows.
    let t_fail = Instant::now();
    let failed = l.lab(&["fail", &victim]);
    let said = text(&failed);
    assert!(failed.status.success(), "lab fail:\n{said}");
    assert!(said.contains(&format!("{SESSION} → ")), "{said}");
    eprintln!("lab fail {victim}: {:.1?}\n{said}", t_fail.elapsed());
    let f = fleet(&l).expect("the fleet's API after the failover");
    let (own, state) = owners(&f);
    assert_eq!(state[&victim], "dead", "{f}");
    let heir = own[SESSION].clone();
    assert_ne!(heir, victim);
    assert_eq!(own.len(), 6, "every session on a live collector: {own:?}");
    let st = l.lab(&["status"]);
    assert_eq!(st.status.code(), Some(1), "not whole:\n{}", text(&st));
    let st = text(&st);
    assert!(
        st.lines()
            .any(|r| r.starts_with(&victim) && r.contains(" dead ")),
        "{st}"
    );

    // New packets land in the new owner's files, none in the dead one's.
    let t_after = Instant::now();
    wait_until(
        Duration::from_secs(15),
        "the pings after the failover in the new owner's files",
        || {
            ping(&l, AFTER);
            (requests(&out, &heir, AFTER) >= N).then_some(())
        },
    );
    eprintln!(
        "after the failover, pings reached {heir}'s files within {:.1?}",
        t_after.elapsed()
    );
    assert_eq!(requests(&out, &victim, AFTER), 0);

    // `lab top` is `top --fleet`: the dead collector shown dead; Enter shows a collector's
    // sessions (the session that moved among them), Esc comes back.
    let tui = Tmux::start(
        scratch.dir(),
        "fleet",
        140,
        30,
        &[l.tapwire.to_str().unwrap(), "lab", "top", "--name", &l.name],
    );
    tui.wait_for(
        "the fleet with a dead collector",
        Duration::from_secs(10),
        |s| {
            row(s, &victim).is_some_and(|r| r.contains("DEAD"))
                && row(s, &heir).is_some_and(|r| r.contains("live"))
        },
    );
    let below = COLLECTORS.iter().position(|c| *c == heir).unwrap();
    for _ in 0..below {
        tui.key("Down");
    }
    tui.key("Enter");
    tui.wait_for("the new owner's sessions", Duration::from_secs(10), |s| {
        s.contains(&format!("collector {heir}  control: connected"))
            && row(s, SESSION).is_some_and(|r| r.contains("receiving"))
    });
    tui.key("Escape");
    tui.wait_for("the fleet again", Duration::from_secs(10), |s| {
        s.contains("tapwire fleet")
    });
    tui.key("q");
    assert_eq!(tui.wait_exit(Duration::from_secs(5)), 0);

    // Revived: live again, and the session stays where it moved.
    let revived = l.lab(&["revive", &victim]);
    assert!(revived.status.success(), "lab revive:\n{}", text(&revived));
    std::thread::sleep(Duration::from_secs(3));
    let f = fleet(&l).unwrap();
    let (own, state) = owners(&f);
    assert_eq!(state[&victim], "live", "{f}");
    assert_eq!(own[SESSION], heir, "no flapping back: {own:?}");
    let st = l.lab(&["status", "--json"]);
    let json: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(json["whole"], true, "{json}");

    // Down: no namespace, process or database left; the captures stay, valid.
    let procs = l.processes();
    let pg_dir = l.state().join("pg");
    assert!(pg_dir.join("data/PG_VERSION").exists());
    let down = l.lab(&["down"]);
    assert!(down.status.success(), "lab down:\n{}", text(&down));
    assert_eq!(l.namespaces(), Vec::<String>::new());
    assert_gone(&procs);
    assert!(!l.state().exists(), "state (and PostgreSQL's data) removed");
    let postgres = run(Command::new("pgrep")
        .args(["-f", &pg_dir.display().to_string()])
        .stdin(Stdio::null()));
    assert!(
        postgres.stdout.is_empty(),
        "a PostgreSQL of the lab still runs: {}",
        String::from_utf8_lossy(&postgres.stdout)
    );
    let files = capture_files(&out);
    assert!(files.len() >= 7, "{files:?}");
    for f in &files {
        validate_capture(f);
    }
}

#[test]
fn down_stops_the_database_of_a_fleet_lab_whose_up_was_killed_half_way() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    if !have_postgres() {
        return;
    }
    let scratch = Lab::empty("lab-fleet-crash");
    let l = LabRun::new('g');
    let out = scratch.dir().join("captures");
    let mut up = Command::new(&l.tapwire)
        .args([
            "lab", "up", "--fleet", "--detach", "--name", &l.name, "--out",
        ])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once PostgreSQL runs: the server and the keeper are detached and outlive `up`.
    let procs = l.state().join("procs");
    wait_until(
        Duration::from_secs(30),
        "lab up to start PostgreSQL",
        || {
            std::fs::read_to_string(&procs)
                .ok()
                .filter(|p| p.contains(" postgres"))
                .map(|_| ())
        },
    );
    up.kill().unwrap();
    up.wait().unwrap();
    let pg_dir = l.state().join("pg");
    let postgres = || {
        let o = run(Command::new("pgrep")
            .args(["-f", &pg_dir.display().to_string()])
            .stdin(Stdio::null()));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    wait_until(Duration::from_secs(10), "PostgreSQL running", || {
        (!postgres().is_empty()).then_some(())
    });
    let running = l.processes();
    let down = l.lab(&["down"]);
    assert!(down.status.success(), "lab down:\n{}", text(&down));
    assert_eq!(l.namespaces(), Vec::<String>::new());
    assert_gone(&running);
    assert_eq!(postgres(), "", "PostgreSQL survived down");
    assert!(!l.state().exists(), "state (and PostgreSQL's data) removed");
}
