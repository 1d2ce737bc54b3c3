//! End-to-end: the control plane. `tapwire collect --db` in namespace `col` serves its API
//! over TLS (a certificate made by the test) to two probes, `h1` and `h2`, each in its own
//! hypervisor namespace with one VM NIC. Sessions, tokens and flows are made with the
//! `tapwire` command line only; the probes are started with `--controller --token --name`
//! and nothing else.
//!
//! ```text
//!  vm1 ── vm0 ═ tap1 ── host1 ── up0 ═ c1 ──┐
//!                                            col (10.80.0.2 on lo; GRE in, API on :9760 TLS)
//!  vm2 ── vm0 ═ tap2 ── host2 ── up0 ═ c2 ──┘
//! ```
//!
//! Oracles: tshark reads the session files (ICMP sizes and capture times tell which VM and
//! when); the probes' own stats API tells which flows run and whether one was restarted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tapwire_tests::collector::{self, Collector};
use tapwire_tests::netns::{Lab, Proc, poll_until, wait_until};
use tapwire_tests::{bin, require, run_ok};

const COL: &str = "10.80.0.2";
const H1_UP: &str = "10.80.1.1";
const C1: &str = "10.80.1.2";
const H2_UP: &str = "10.80.2.1";
const C2: &str = "10.80.2.2";
const VM1: &str = "10.81.1.2";
const TAP1: &str = "10.81.1.1";
const VM2: &str = "10.81.2.2";
const TAP2: &str = "10.81.2.1";
const PROBE_API: &str = "127.0.0.1:9751";
/// ICMP payload sizes that tell the VMs' pings apart in the files.
const VM1_SIZE: u32 = 111;
const VM2_SIZE: u32 = 222;

struct Topo {
    lab: Lab,
    col: String,
    host1: String,
    host2: String,
    vm1: String,
    vm2: String,
    dir: PathBuf,
    out: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Topo {
    fn new() -> Topo {
        require("tshark");
        require("curl");
        let mut lab = Lab::empty("control");
        let col = lab.add_ns("col");
        let host1 = lab.add_ns("host1");
        let host2 = lab.add_ns("host2");
        let vm1 = lab.add_ns("vm1");
        let vm2 = lab.add_ns("vm2");
        for ns in [&vm1, &vm2, &host1, &host2] {
            lab.exec_ok(
                ns,
                &["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
            );
        }
        lab.veth(&vm1, "vm0", "", &host1, "tap1", "");
        lab.veth(&vm2, "vm0", "", &host2, "tap2", "");
        lab.veth(&host1, "up0", "", &col, "c1", "");
        lab.veth(&host2, "up0", "", &col, "c2", "");
        lab.addr(&vm1, "vm0", &format!("{VM1}/24"));
        lab.addr(&host1, "tap1", &format!("{TAP1}/24"));
        lab.addr(&vm2, "vm0", &format!("{VM2}/24"));
        lab.addr(&host2, "tap2", &format!("{TAP2}/24"));
        lab.addr(&host1, "up0", &format!("{H1_UP}/24"));
        lab.addr(&col, "c1", &format!("{C1}/24"));
        lab.addr(&host2, "up0", &format!("{H2_UP}/24"));
        lab.addr(&col, "c2", &format!("{C2}/24"));
        // The collector's one address, reached from both hosts.
        lab.addr(&col, "lo", &format!("{COL}/32"));
        lab.exec_ok(
            &host1,
            &["ip", "route", "add", &format!("{COL}/32"), "via", C1],
        );
        lab.exec_ok(
            &host2,
            &["ip", "route", "add", &format!("{COL}/32"), "via", C2],
        );
        for (ns, dev) in [(&host1, "up0"), (&host2, "up0"), (&col, "c1"), (&col, "c2")] {
            lab.exec_ok(ns, &["ip", "link", "set", dev, "mtu", "9000"]);
        }
        let dir = lab.dir().to_path_buf();
        let out = dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let c = rcgen::generate_simple_self_signed(vec![COL.to_string()]).unwrap();
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        Topo {
            lab,
            col,
            host1,
            host2,
            vm1,
            vm2,
            dir,
            out,
            cert,
            key,
        }
    }

    fn db(&self) -> PathBuf {
        self.dir.join("control.db")
    }

    fn collector(&self) -> Collector<'_> {
        let db = self.db();
        let (cert, key) = (self.cert.to_str().unwrap(), self.key.to_str().unwrap());
        Collector::start(
            &self.lab,
            &self.col,
            &self.out,
            &[
                "--vxlan",
                "off",
                "--geneve",
                "off",
                "--tzsp",
                "off",
                "--gre-v6",
                "off",
                "--db",
                db.to_str().unwrap(),
                "--listen",
                "0.0.0.0:9760",
                "--advertise",
                COL,
                "--tls-cert",
                cert,
                "--tls-key",
                key,
                "--probe-report-interval",
                "1s",
            ],
        )
    }

    /// `tapwire ARGS...` in `ns` against the controller over TLS; (exit code, stdout, stderr).
    fn cli(&self, ns: &str, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
        let tapwire = bin("tapwire");
        let url = format!("https://{COL}:9760");
        let mut cmd = vec![tapwire.to_str().unwrap()];
        cmd.extend_from_slice(args);
        cmd.extend_from_slice(&["--controller", &url, "--ca", self.cert.to_str().unwrap()]);
        if let Some(t) = token {
            cmd.extend_from_slice(&["--token", t]);
        }
        let out = self.lab.exec(ns, &cmd);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A command that must succeed; its stdout.
    fn ok(&self, token: &str, args: &[&str]) -> String {
        let (code, out, err) = self.cli(&self.host1, Some(token), args);
        assert_eq!(code, 0, "tapwire {args:?}: {err}");
        out
    }

    fn json(&self, token: &str, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.ok(token, &a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    fn probe(&self, ns: &str, name: &str, token: &str) -> Proc {
        let exe = bin("tapwire-probe");
        let state = self.dir.join(format!("{name}.state.json"));
        self.lab.spawn(
            ns,
            &[
                exe.to_str().unwrap(),
                "--controller",
                &format!("https://{COL}:9760"),
                "--ca",
                self.cert.to_str().unwrap(),
                "--token",
                token,
                "--name",
                name,
                "--state",
                state.to_str().unwrap(),
                "--stats",
                PROBE_API,
                "--stats-interval",
                "off",
            ],
        )
    }

    /// The probe's own view of its flows (`GET /api/v1/flows` on its stats API).
    fn probe_flows(&self, ns: &str) -> Option<Value> {
        let out = self.lab.exec(
            ns,
            &[
                "curl",
                "-sSf",
                "--max-time",
                "2",
                &format!("http://{PROBE_API}/api/v1/flows"),
            ],
        );
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    fn ping(&self, ns: &str, dst: &str, size: u32, count: u32, interval: &str) {
        self.lab.exec_ok(
            ns,
            &[
                "ping",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                interval,
                "-s",
                &size.to_string(),
                dst,
            ],
        );
    }
}

/// The flow named `name` in a `flow list --json` answer.
fn flow<'a>(flows: &'a Value, probe: &str, name: &str) -> &'a Value {
    flows
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["probe"] == probe && f["name"] == name)
        .unwrap_or_else(|| panic!("no flow {probe}/{name} in {flows}"))
}

/// (capture time in ns, ICMP payload size) of every ICMP packet in `files`, by tshark.
fn icmp(files: &[PathBuf]) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    for f in files {
        let text = run_ok(Command::new("tshark").arg("-r").arg(f).args([
            "-Y",
            "icmp",
            "-T",
            "fields",
            "-e",
            "frame.time_epoch",
            "-e",
            "ip.len",
        ]));
        for line in text.lines() {
            let mut it = line.split('\t');
            let t = collector::epoch_ns(it.next().unwrap_or(""));
            let len: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            // ip.len = 20 (IP) + 8 (ICMP) + payload.
            out.push((t, len.saturating_sub(28)));
        }
    }
    out
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn session_files(out: &Path, name: &str) -> Vec<PathBuf> {
    collector::files_with_prefix(out, &format!("{name}_"))
}

#[test]
fn sessions_and_flows_made_with_the_cli_reach_the_probes_survive_a_restart_and_are_audited() {
    let t = Topo::new();
    let mut col = t.collector();
    let admin_file = PathBuf::from(format!("{}.admin-token", t.db().display()));
    let admin = std::fs::read_to_string(&admin_file)
        .expect("the collector writes the first admin token beside its database")
        .trim()
        .to_string();

    // Tokens: an operator, a viewer, and one per probe.
    let token = |name: &str, role: &str| {
        let v = t.json(&admin, &["token", "create", "--name", name, "--role", role]);
        v["token"].as_str().unwrap().to_string()
    };
    let alice = token("alice", "operator");
    let bob = token("bob", "viewer");
    let h1 = token("h1", "probe");
    let h2 = token("h2", "probe");

    // Sessions and flows, before any probe exists.
    let web = t.json(&alice, &["session", "create", "web"]);
    let db = t.json(
        &alice,
        &["session", "create", "db", "--encap", "erspan-iii"],
    );
    assert_eq!(
        (web["mirror_id"].as_u64(), db["mirror_id"].as_u64()),
        (Some(1), Some(2))
    );
    t.ok(
        &alice,
        &[
            "flow",
            "create",
            "--probe",
            "h1",
            "--name",
            "vm1",
            "--interface",
            "tap1",
            "--session",
            "web",
        ],
    );
    t.ok(
        &alice,
        &[
            "flow",
            "create",
            "--probe",
            "h2",
            "--name",
            "vm2",
            "--interface",
            "tap2",
            "--session",
            "db",
        ],
    );
    // An interface h1 does not have: reported on that flow only.
    t.ok(
        &alice,
        &[
            "flow",
            "create",
            "--probe",
            "h1",
            "--name",
            "ghost",
            "--interface",
            "nope0",
            "--session",
            "web",
        ],
    );

    let started = Instant::now();
    let p1 = t.probe(&t.host1, "h1", &h1);
    let mut p2 = t.probe(&t.host2, "h2", &h2);
    let flows = wait_until(
        Duration::from_secs(15),
        "the probes to run their flows",
        || {
            let f = t.json(&bob, &["flow", "list"]);
            let ok = flow(&f, "h1", "vm1")["status"] == "running"
                && flow(&f, "h2", "vm2")["status"] == "running"
                && flow(&f, "h1", "ghost")["status"] == "waiting";
            ok.then_some(f)
        },
    );
    eprintln!(
        "probes started and reported their flows running after {:?}",
        started.elapsed()
    );
    let ghost = flow(&flows, "h1", "ghost");
    assert!(
        ghost["error"].as_str().unwrap_or("").contains("nope0"),
        "the missing interface is named on its flow: {ghost}"
    );
    assert!(flow(&flows, "h1", "vm1")["error"].is_null());
    let probes = t.json(&bob, &["probe", "list"]);
    for p in probes.as_array().unwrap() {
        assert_eq!(p["online"], true, "{p}");
        assert_eq!(p["version"], env!("CARGO_PKG_VERSION"), "{p}");
    }
    // `tapwire top` on the collector's host still reads without a token.
    let top = t.lab.exec_ok(
        &t.col,
        &[
            bin("tapwire").to_str().unwrap(),
            "top",
            "--once",
            "--json",
            "--connect",
            collector::API,
        ],
    );
    let top: Value = serde_json::from_str(&top).unwrap();
    let mut names: Vec<&str> = top["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["db", "web"], "{top}");
    // The table form names both probes.
    let (_, table, _) = t.cli(&t.host1, Some(&bob), &["probe", "list"]);
    assert!(
        table.contains("h1") && table.contains("h2") && table.contains("ONLINE"),
        "{table}"
    );

    // Traffic reaches the session files: vm1's pings in web, vm2's in db.
    t.ping(&t.vm1, TAP1, VM1_SIZE, 10, "0.02");
    t.ping(&t.vm2, TAP2, VM2_SIZE, 10, "0.02");
    let seen = wait_until(
        Duration::from_secs(10),
        "mirrored pings in the session files",
        || {
            let w = icmp(&session_files(&t.out, "web"));
            let d = icmp(&session_files(&t.out, "db"));
            let n = |v: &[(u64, u32)], s| v.iter().filter(|x| x.1 == s).count();
            (n(&w, VM1_SIZE) >= 20 && n(&d, VM2_SIZE) >= 20).then_some((w, d))
        },
    );
    assert!(
        seen.0.iter().all(|x| x.1 == VM1_SIZE),
        "only vm1's traffic in web: {:?}",
        seen.0
    );
    assert!(
        seen.1.iter().all(|x| x.1 == VM2_SIZE),
        "only vm2's traffic in db"
    );
    // Requests and replies: both directions, 10 each.
    assert_eq!(seen.0.len(), 20);
    assert_eq!(seen.1.len(), 20);

    // Disabling vm1's flow stops its traffic within a second, and vm2's flow is not touched.
    let vm2_before = t.probe_flows(&t.host2).unwrap()["flows"][0]["counters"]["captured"]
        .as_u64()
        .unwrap();
    let mut pinger = t.lab.spawn(
        &t.vm1,
        &[
            "ping",
            "-q",
            "-c",
            "150",
            "-i",
            "0.02",
            "-s",
            &VM1_SIZE.to_string(),
            TAP1,
        ],
    );
    std::thread::sleep(Duration::from_millis(800));
    t.ok(&alice, &["flow", "disable", "h1/vm1"]);
    let disabled_at = now_ns();
    let stopped = wait_until(Duration::from_secs(3), "h1 to stop vm1", || {
        let f = t.probe_flows(&t.host1)?;
        let names: Vec<&str> = f["flows"]
            .as_array()?
            .iter()
            .filter_map(|x| x["name"].as_str())
            .collect();
        (!names.contains(&"vm1")).then(|| now_ns() - disabled_at)
    });
    eprintln!(
        "vm1 stopped on its probe {} ms after the CLI returned",
        stopped / 1_000_000
    );
    assert!(stopped < 1_000_000_000, "{stopped} ns");
    pinger.wait_ok(Duration::from_secs(10));
    t.ping(&t.vm2, TAP2, VM2_SIZE, 5, "0.02");
    // Everything received is on disk within the 1 s flush.
    std::thread::sleep(Duration::from_millis(2500));
    let web_times: Vec<u64> = icmp(&session_files(&t.out, "web"))
        .into_iter()
        .map(|x| x.0)
        .collect();
    let last = *web_times.iter().max().unwrap();
    let first_new = web_times
        .iter()
        .filter(|x| **x > seen.0.iter().map(|y| y.0).max().unwrap())
        .count();
    assert!(
        first_new > 20,
        "the background ping was mirrored before the disable: {first_new}"
    );
    let after_ms = (last as i64 - disabled_at as i64) / 1_000_000;
    eprintln!("last vm1 packet captured {after_ms} ms after the disable returned");
    assert!(
        after_ms < 1000,
        "vm1 traffic went on {after_ms} ms after its flow was disabled"
    );
    let h2_flows = t.probe_flows(&t.host2).unwrap();
    let vm2 = &h2_flows["flows"][0];
    assert_eq!(vm2["state"], "running");
    assert!(
        vm2["counters"]["captured"].as_u64().unwrap() >= vm2_before + 10,
        "vm2's counters went on (not restarted): {vm2}"
    );
    assert_eq!(icmp(&session_files(&t.out, "db")).len(), 30);

    // A viewer can read but change nothing; no token from another host is refused.
    let before = t.json(&bob, &["flow", "list"]);
    for args in [
        vec!["flow", "enable", "h1/vm1"],
        vec!["flow", "delete", "h2/vm2"],
        vec!["session", "disable", "db"],
        vec!["session", "create", "x"],
        vec!["token", "create", "--name", "mallory", "--role", "admin"],
    ] {
        let (code, _, err) = t.cli(&t.host1, Some(&bob), &args);
        assert_eq!(code, 1, "{args:?} as a viewer: {err}");
        assert!(err.contains("403"), "{args:?}: {err}");
    }
    let (code, _, err) = t.cli(&t.host1, None, &["flow", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let after = t.json(&bob, &["flow", "list"]);
    let defs = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|f| (f["id"].clone(), f["enabled"].clone(), f["spec"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(defs(&before), defs(&after));

    // A restart keeps every session and flow; the probes reconnect and go on.
    let sessions_before = t.json(&bob, &["session", "list"]);
    col.stop("TERM", Duration::from_secs(3));
    // Meanwhile the probes keep their flows.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        t.probe_flows(&t.host2).unwrap()["flows"][0]["state"],
        "running"
    );
    // And a probe restarted while the controller is away runs its saved flow set.
    p2.signal("TERM");
    assert_eq!(
        p2.proc_wait(Duration::from_secs(3)),
        Some(0),
        "{}",
        p2.stderr()
    );
    drop(p2);
    let mut p2 = t.probe(&t.host2, "h2", &h2);
    wait_until(
        Duration::from_secs(5),
        "h2 to run vm2 from its state file",
        || {
            let f = t.probe_flows(&t.host2)?;
            (f["flows"][0]["name"] == "vm2" && f["flows"][0]["state"] == "running").then_some(())
        },
    );
    let col = t.collector();
    let flows_after = t.json(&bob, &["flow", "list"]);
    assert_eq!(defs(&after), defs(&flows_after));
    let sessions_after = t.json(&bob, &["session", "list"]);
    let names = |v: &Value| {
        let mut n: Vec<(String, String)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["name"].as_str().unwrap().into(), s["mirror"].to_string()))
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&sessions_before), names(&sessions_after));
    assert_eq!(names(&sessions_after).len(), 2, "{sessions_after}");
    let restarted = Instant::now();
    wait_until(Duration::from_secs(40), "both probes back online", || {
        let p = t.json(&bob, &["probe", "list"]);
        p.as_array()
            .unwrap()
            .iter()
            .all(|p| p["online"] == true)
            .then_some(())
    });
    eprintln!(
        "both probes online {:?} after the collector restarted",
        restarted.elapsed()
    );
    // A change after the restart still reaches the probe.
    t.ok(&alice, &["flow", "enable", "h1/vm1"]);
    wait_until(Duration::from_secs(3), "h1 to run vm1 again", || {
        let f = t.probe_flows(&t.host1)?;
        f["flows"]
            .as_array()?
            .iter()
            .any(|x| x["name"] == "vm1" && x["state"] == "running")
            .then_some(())
    });
    let web_before = icmp(&session_files(&t.out, "web")).len();
    t.ping(&t.vm1, TAP1, VM1_SIZE, 5, "0.02");
    wait_until(
        Duration::from_secs(5),
        "vm1's traffic after the restart",
        || (icmp(&session_files(&t.out, "web")).len() >= web_before + 10).then_some(()),
    );

    // Revoking a probe's token disconnects it: its flows stop and it exits with status 3.
    t.ok(&admin, &["token", "revoke", "h2"]);
    let status = p2.proc_wait(Duration::from_secs(5));
    assert_eq!(
        status,
        Some(3),
        "h2 after its token was revoked:\n{}",
        p2.stderr()
    );
    drop(p1);

    // The audit log lists every change with its token's name.
    let audit = t.json(&bob, &["audit"]);
    let entries: Vec<(String, String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["token"].as_str().unwrap().into(),
                e["action"].as_str().unwrap().into(),
                e["target"].as_str().unwrap().into(),
            )
        })
        .collect();
    for (who, action, target) in [
        ("bootstrap", "token.create", "bootstrap-admin"),
        ("bootstrap-admin", "token.create", "alice"),
        ("bootstrap-admin", "token.create", "bob"),
        ("bootstrap-admin", "token.create", "h1"),
        ("bootstrap-admin", "token.create", "h2"),
        ("alice", "session.create", "web"),
        ("alice", "session.create", "db"),
        ("alice", "flow.create", "h1/vm1"),
        ("alice", "flow.create", "h2/vm2"),
        ("alice", "flow.create", "h1/ghost"),
        ("h1", "probe.register", "h1"),
        ("h2", "probe.register", "h2"),
        ("alice", "flow.disable", "h1/vm1"),
        ("alice", "flow.enable", "h1/vm1"),
        ("bootstrap-admin", "token.revoke", "h2"),
    ] {
        assert!(
            entries.contains(&(who.into(), action.into(), target.into())),
            "audit lacks {who} {action} {target}: {entries:?}"
        );
    }
    assert!(
        !entries.iter().any(|e| e.0 == "bob"),
        "the viewer changed nothing: {entries:?}"
    );
    // The changes, and nothing else: 15 above (registrations once each: same version).
    assert_eq!(entries.len(), 15, "{entries:?}");
    drop(col);
}

trait WaitExit {
    fn proc_wait(&mut self, timeout: Duration) -> Option<i32>;
}

impl WaitExit for Proc {
    fn proc_wait(&mut self, timeout: Duration) -> Option<i32> {
        poll_until(timeout, || self.try_wait()).and_then(|s| s.code())
    }
}
