//! End-to-end: a fleet of two collectors on one PostgreSQL (started by the test, reached over
//! its Unix socket from every namespace), one probe that knows both. Sessions are `auto`: the
//! fleet places them; the probe sends each flow to the collector that owns its session.
//!
//! ```text
//!  vm1 ── vm0 ═ tap1 ──┐             ┌── ua ═ ca ── col-a (10.90.1.2, --name a)
//!                      host1 (probe) ┤
//!  vm2 ── vm0 ═ tap2 ──┘             └── ub ═ cb ── col-b (10.90.2.2, --name b)
//! ```
//!
//! Oracles: tshark reads each collector's files (the ICMP payload size tells the VM), ping
//! counts what was sent, the fleet's API and the probe's own stats say who owns what.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tapwire_tests::collector::{self, Collector};
use tapwire_tests::netns::{Lab, Proc, poll_until, wait_until};
use tapwire_tests::pg::{self, Pg};
use tapwire_tests::query::{Packet, assert_same, packets, tcpdump_mergecap};
use tapwire_tests::{bin, require, run_ok};

const A: &str = "10.90.1.2";
const HA: &str = "10.90.1.1";
const B: &str = "10.90.2.2";
const HB: &str = "10.90.2.1";
const VM1: &str = "10.91.1.2";
const TAP1: &str = "10.91.1.1";
const VM2: &str = "10.91.2.2";
const TAP2: &str = "10.91.2.1";
const PROBE_API: &str = "127.0.0.1:9751";
const VM1_SIZE: u32 = 111;
const VM2_SIZE: u32 = 222;

struct Fleet {
    lab: Lab,
    host1: String,
    vm1: String,
    vm2: String,
    /// Namespace and output directory of collectors a and b.
    ns: [String; 2],
    out: [PathBuf; 2],
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    db: String,
}

impl Fleet {
    fn new(pg: &Pg) -> Fleet {
        require("tshark");
        require("curl");
        let mut lab = Lab::empty("fleet");
        let ca = lab.add_ns("col-a");
        let cb = lab.add_ns("col-b");
        let host1 = lab.add_ns("host1");
        let vm1 = lab.add_ns("vm1");
        let vm2 = lab.add_ns("vm2");
        for ns in [&vm1, &vm2, &host1] {
            lab.exec_ok(
                ns,
                &["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
            );
        }
        lab.veth(&vm1, "vm0", "", &host1, "tap1", "");
        lab.veth(&vm2, "vm0", "", &host1, "tap2", "");
        lab.veth(&host1, "ua", "", &ca, "ca", "");
        lab.veth(&host1, "ub", "", &cb, "cb", "");
        lab.addr(&vm1, "vm0", &format!("{VM1}/24"));
        lab.addr(&host1, "tap1", &format!("{TAP1}/24"));
        lab.addr(&vm2, "vm0", &format!("{VM2}/24"));
        lab.addr(&host1, "tap2", &format!("{TAP2}/24"));
        lab.addr(&host1, "ua", &format!("{HA}/24"));
        lab.addr(&ca, "ca", &format!("{A}/24"));
        lab.addr(&host1, "ub", &format!("{HB}/24"));
        lab.addr(&cb, "cb", &format!("{B}/24"));
        for (ns, dev) in [(&host1, "ua"), (&host1, "ub"), (&ca, "ca"), (&cb, "cb")] {
            lab.exec_ok(ns, &["ip", "link", "set", dev, "mtu", "9000"]);
        }
        let dir = lab.dir().to_path_buf();
        let out = [dir.join("out-a"), dir.join("out-b")];
        for o in &out {
            std::fs::create_dir_all(o).unwrap();
        }
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let c = rcgen::generate_simple_self_signed(vec![A.to_string(), B.to_string()]).unwrap();
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        // libpq's keyword form, over the Unix socket every namespace reaches.
        let db = format!(
            "host={} port={} user={} password={} dbname={}",
            pg.socket_dir().display(),
            pg.port(),
            pg::ROLE,
            pg::PASSWORD,
            pg.database("fleet")
        );
        Fleet {
            lab,
            host1,
            vm1,
            vm2,
            ns: [ca, cb],
            out,
            dir,
            cert,
            key,
            db,
        }
    }

    /// Collector `i` (0: a, 1: b).
    fn collector(&self, i: usize) -> Collector<'_> {
        let (name, addr) = [("a", A), ("b", B)][i];
        Collector::start(
            &self.lab,
            &self.ns[i],
            &self.out[i],
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
                &self.db,
                "--name",
                name,
                "--listen",
                "0.0.0.0:9760",
                "--advertise",
                addr,
                "--tls-cert",
                self.cert.to_str().unwrap(),
                "--tls-key",
                self.key.to_str().unwrap(),
                "--probe-report-interval",
                "1s",
            ],
        )
    }

    /// `tapwire ARGS... --controller https://ADDR:9760` from host1; (exit code, stdout, stderr).
    fn cli(&self, addr: &str, token: &str, args: &[&str]) -> (i32, String, String) {
        let tapwire = bin("tapwire");
        let url = format!("https://{addr}:9760");
        let mut cmd = vec![tapwire.to_str().unwrap()];
        cmd.extend_from_slice(args);
        cmd.extend_from_slice(&[
            "--controller",
            &url,
            "--ca",
            self.cert.to_str().unwrap(),
            "--token",
            token,
        ]);
        let out = self.lab.exec(&self.host1, &cmd);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn json(&self, addr: &str, token: &str, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let (code, out, err) = self.cli(addr, token, &a);
        assert_eq!(code, 0, "tapwire {args:?} on {addr}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    /// `GET path` on collector `i`'s loopback API (no token needed there).
    fn get(&self, i: usize, path: &str) -> Option<Value> {
        let out = self.lab.exec(
            &self.ns[i],
            &[
                "curl",
                "-sSf",
                "--max-time",
                "3",
                &format!("http://{}{path}", collector::API),
            ],
        );
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// Session name -> owner, as collector `i` answers `GET /api/v1/fleet`, live ones only.
    fn owners(&self, i: usize) -> Option<Vec<(String, String)>> {
        let f = self.get(i, "/api/v1/fleet")?;
        let mut v = Vec::new();
        for c in f["collectors"].as_array()? {
            if c["state"] != "live" {
                continue;
            }
            for s in c["sessions"].as_array()? {
                v.push((s.as_str()?.to_string(), c["name"].as_str()?.to_string()));
            }
        }
        v.sort();
        Some(v)
    }

    fn probe(&self, token: &str) -> Proc {
        let exe = bin("tapwire-probe");
        let state = self.dir.join("h1.state.json");
        self.lab.spawn(
            &self.host1,
            &[
                exe.to_str().unwrap(),
                "--controller",
                &format!("https://{A}:9760,https://{B}:9760"),
                "--ca",
                self.cert.to_str().unwrap(),
                "--token",
                token,
                "--name",
                "h1",
                "--state",
                state.to_str().unwrap(),
                "--stats",
                PROBE_API,
                "--stats-interval",
                "off",
            ],
        )
    }

    /// Flow name -> (collector it sends to, state), as the probe says.
    fn probe_flows(&self) -> Vec<(String, String, String)> {
        let out = self.lab.exec(
            &self.host1,
            &[
                "curl",
                "-sSf",
                "--max-time",
                "2",
                &format!("http://{PROBE_API}/api/v1/flows"),
            ],
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let mut f: Vec<(String, String, String)> = v["flows"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|f| {
                        (
                            f["name"].as_str().unwrap_or("").to_string(),
                            f["collector"].as_str().unwrap_or("").to_string(),
                            f["state"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        f.sort();
        f
    }

    /// Pings from `vm` to its tap address with payload `size`: (sent as ping counts it).
    fn ping(&self, vm: &str, size: u32, count: u32, interval: &str) -> u64 {
        let dst = if vm == self.vm1 { TAP1 } else { TAP2 };
        let out = self.lab.exec(
            vm,
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
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.split(" packets transmitted").next()?.trim().parse().ok())
            .unwrap_or_else(|| panic!("ping printed no count: {text}"))
    }
}

/// Echo requests of payload `size` in the files of `session` under `out`, by tshark.
fn requests(out: &Path, session: &str, size: u32) -> u64 {
    let mut n = 0;
    for f in collector::files_with_prefix(out, &format!("{session}_")) {
        let text = run_ok(Command::new("tshark").arg("-r").arg(&f).args([
            "-Y",
            &format!("icmp.type == 8 && ip.len == {}", size + 28),
            "-T",
            "fields",
            "-e",
            "frame.number",
        ]));
        n += text.lines().filter(|l| !l.trim().is_empty()).count() as u64;
    }
    n
}

/// `capinfos` accepts every file of `out` (valid captures).
fn all_valid(out: &Path) {
    for f in tapwire_tests::capture_files(out) {
        tapwire_tests::validate_capture(&f);
    }
}

#[test]
fn a_fleet_places_sessions_fails_over_survives_the_database_and_shares_tokens() {
    let pg = Pg::start("fleet").expect("PostgreSQL");
    let t = Fleet::new(&pg);

    // The first admin token of a fleet is made offline, on the database.
    let made = run_ok(Command::new(bin("tapwire")).args([
        "token", "create", "--db", &t.db, "--name", "root", "--role", "admin", "--json",
    ]));
    let admin: Value = serde_json::from_str(&made).unwrap();
    let admin = admin["token"].as_str().unwrap().to_string();

    let mut cols = vec![Some(t.collector(0)), Some(t.collector(1))];
    wait_until(Duration::from_secs(10), "both collectors live", || {
        let f = t.get(0, "/api/v1/fleet")?;
        let live = f["collectors"]
            .as_array()?
            .iter()
            .filter(|c| c["state"] == "live")
            .count();
        (live == 2).then_some(())
    });
    // `tapwire collectors` names both.
    let (code, table, err) = t.cli(A, &admin, &["collectors"]);
    assert_eq!(code, 0, "{err}");
    let live: Vec<&str> = table
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == "live"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(live, ["a", "b"], "{table}");
    assert!(
        !table.contains("-0"),
        "an idle collector's rate is 0: {table}"
    );

    // A token made on a works on b.
    let op = t.json(
        A,
        &admin,
        &["token", "create", "--name", "op", "--role", "operator"],
    );
    let op = op["token"].as_str().unwrap().to_string();
    let viewer = t.json(
        A,
        &admin,
        &["token", "create", "--name", "v", "--role", "viewer"],
    );
    let viewer = viewer["token"].as_str().unwrap().to_string();
    let h1 = t.json(
        A,
        &admin,
        &["token", "create", "--name", "h1", "--role", "probe"],
    );
    let h1 = h1["token"].as_str().unwrap().to_string();

    // Two auto sessions, made on b with a's token: one on each collector.
    for s in ["s1", "s2"] {
        t.json(B, &op, &["session", "create", s]);
    }
    let owners = wait_until(Duration::from_secs(5), "both sessions placed", || {
        let o = t.owners(0)?;
        (o.len() == 2).then_some(o)
    });
    // On a live collector: 0 for a, 1 for b.
    let owner_of = |o: &[(String, String)], s: &str| -> Option<usize> {
        let c = &o.iter().find(|(n, _)| n == s)?.1;
        Some(usize::from(c == "b"))
    };
    let (o1, o2) = (
        owner_of(&owners, "s1").unwrap(),
        owner_of(&owners, "s2").unwrap(),
    );
    assert_ne!(o1, o2, "auto sessions spread over the fleet: {owners:?}");

    // A viewer on b changes nothing.
    let (code, _, err) = t.cli(B, &viewer, &["session", "create", "s9"]);
    assert_ne!(code, 0, "a viewer made a session");
    assert!(err.contains("403") || err.contains("may not"), "{err}");
    let (code, _, err) = t.cli(B, &viewer, &["session", "delete", "s1"]);
    assert_ne!(code, 0, "a viewer deleted a session: {err}");
    assert_eq!(t.owners(1).unwrap(), owners, "the viewer changed nothing");

    for (name, iface, s) in [("vm1", "tap1", "s1"), ("vm2", "tap2", "s2")] {
        t.json(
            A,
            &op,
            &[
                "flow",
                "create",
                "--probe",
                "h1",
                "--name",
                name,
                "--interface",
                iface,
                "--session",
                s,
            ],
        );
    }
    let _probe = t.probe(&h1);
    let addr = [A, B];
    let expect = |o1: usize, o2: usize| {
        vec![
            (
                "vm1".to_string(),
                addr[o1].to_string(),
                "running".to_string(),
            ),
            (
                "vm2".to_string(),
                addr[o2].to_string(),
                "running".to_string(),
            ),
        ]
    };
    wait_until(
        Duration::from_secs(15),
        "the probe to send each flow to its session's owner",
        || (t.probe_flows() == expect(o1, o2)).then_some(()),
    );

    // Packets land in the owner's files.
    assert_eq!(t.ping(&t.vm1, VM1_SIZE, 20, "0.02"), 20);
    assert_eq!(t.ping(&t.vm2, VM2_SIZE, 20, "0.02"), 20);
    wait_until(
        Duration::from_secs(5),
        "the pings in the owners' files",
        || {
            (requests(&t.out[o1], "s1", VM1_SIZE) == 20
                && requests(&t.out[o2], "s2", VM2_SIZE) == 20)
                .then_some(())
        },
    );
    assert_eq!(requests(&t.out[1 - o1], "s1", VM1_SIZE), 0);
    assert_eq!(requests(&t.out[1 - o2], "s2", VM2_SIZE), 0);

    // Prometheus' http_sd: one target per live collector, its API.
    let sd = t.get(0, "/api/v1/fleet/sd").unwrap();
    let mut targets: Vec<&str> = sd
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["targets"][0].as_str())
        .collect();
    targets.sort();
    assert_eq!(targets, [format!("{A}:9760"), format!("{B}:9760")], "{sd}");

    // kill -9 of s1's owner: s1 moves to the other within 15 s and the probe follows. Ties
    // go by name, so s1 (made first) is on a, the probe's first controller: the probe also
    // has to turn to its second.
    assert_eq!(o1, 0, "{owners:?}");
    let dead = o1;
    let alive = 1 - o1;
    let before_kill = requests(&t.out[dead], "s1", VM1_SIZE);
    let pinger = {
        let (lab_vm, dst) = (t.vm1.clone(), TAP1);
        let exe = ["ping", "-q", "-c", "600", "-i", "0.05", "-s", "111", dst];
        t.lab.spawn(&lab_vm, &exe)
    };
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    cols[dead].as_mut().unwrap().proc.signal("KILL");
    cols[dead]
        .as_mut()
        .unwrap()
        .proc
        .wait_timeout(Duration::from_secs(5));
    let moved = wait_until(
        Duration::from_secs(15),
        "s1 to move to the live collector",
        || {
            let o = t.owners(alive)?;
            (owner_of(&o, "s1") == Some(alive)).then_some(killed.elapsed())
        },
    );
    let followed = wait_until(
        Duration::from_secs(15),
        "the probe to send s1's flow to its new owner",
        || {
            let f = t.probe_flows();
            (f.first().map(|x| x.1.as_str()) == Some(addr[alive])).then_some(killed.elapsed())
        },
    );
    eprintln!("failover: s1 moved after {moved:?}, the probe followed after {followed:?}");
    assert!(followed < Duration::from_secs(15), "{followed:?}");
    let mut pinger = pinger;
    let out = pinger.wait_ok(Duration::from_secs(60));
    let sent: u64 = out
        .lines()
        .find_map(|l| l.split(" packets transmitted").next()?.trim().parse().ok())
        .unwrap();
    let on_dead = requests(&t.out[dead], "s1", VM1_SIZE) - before_kill;
    let on_alive = requests(&t.out[alive], "s1", VM1_SIZE);
    let lost = sent - on_dead - on_alive;
    eprintln!(
        "failover loss: {sent} sent at 20/s, {on_dead} in the dead collector's files, {on_alive} in the new owner's, {lost} lost ({:.1} s of traffic)",
        lost as f64 / 20.0
    );
    assert!(on_alive > 0, "nothing reached the new owner");
    // Bounded by the failover time: at 20/s for at most `followed`.
    assert!(
        lost as f64 <= 20.0 * followed.as_secs_f64() + 20.0,
        "{lost} lost in {followed:?}"
    );
    all_valid(&t.out[dead]);

    // The dead collector comes back: nothing moves back, nothing flaps.
    cols[dead] = None;
    let audit_before = t.json(addr[alive], &admin, &["audit", "--limit", "1000"]);
    cols[dead] = Some(t.collector(dead));
    let settled = wait_until(
        Duration::from_secs(10),
        "the restarted collector live",
        || {
            let f = t.get(alive, "/api/v1/fleet")?;
            let live = f["collectors"]
                .as_array()?
                .iter()
                .filter(|c| c["state"] == "live")
                .count();
            (live == 2).then(|| t.owners(alive).unwrap())
        },
    );
    std::thread::sleep(Duration::from_secs(8));
    let after = t.owners(alive).unwrap();
    assert_eq!(after, settled, "nothing moved after the restart");
    assert!(
        after.iter().all(|(_, c)| *c == ["a", "b"][alive]),
        "both sessions stay on the collector that took them: {after:?}"
    );
    let audit_after = t.json(addr[alive], &admin, &["audit", "--limit", "1000"]);
    let places = |a: &Value| {
        a.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "session.place")
            .count()
    };
    assert_eq!(
        places(&audit_after),
        places(&audit_before),
        "no placement since"
    );
    assert!(
        places(&audit_after) >= 1,
        "the failover is in the audit log"
    );

    // A change made on one collector reaches the probe long-polling the other through
    // LISTEN/NOTIFY: the probe talks to the live one since the kill; the change is made on
    // the restarted one.
    let flows_now = t.probe_flows();
    let t0 = Instant::now();
    let (code, _, err) = t.cli(addr[dead], &op, &["flow", "disable", "h1/vm2"]);
    assert_eq!(code, 0, "{err}");
    let reached = wait_until(Duration::from_secs(10), "the probe to stop vm2", || {
        let f = t.probe_flows();
        (f.len() == 1 && f[0].0 == "vm1").then(|| t0.elapsed())
    });
    eprintln!("a change on the other collector reached the probe after {reached:?}");
    assert!(
        reached < Duration::from_secs(2),
        "the change took {reached:?} to reach the probe"
    );
    let (code, _, err) = t.cli(addr[dead], &op, &["flow", "enable", "h1/vm2"]);
    assert_eq!(code, 0, "{err}");
    wait_until(
        Duration::from_secs(10),
        "the probe to run vm2 again",
        || (t.probe_flows() == flows_now).then_some(()),
    );

    // PostgreSQL stopped for 30 s: capture of running sessions goes on, health says so.
    let before_s1 = requests(&t.out[alive], "s1", VM1_SIZE);
    let before_s2 = requests(&t.out[alive], "s2", VM2_SIZE);
    pg.stop();
    let down = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "health to say disconnected",
        || {
            let h = t.get(alive, "/api/v1/health")?;
            (h["control"] == "disconnected").then_some(())
        },
    );
    let p1 = t.lab.spawn(
        &t.vm1,
        &["ping", "-q", "-c", "500", "-i", "0.05", "-s", "111", TAP1],
    );
    let p2 = t.lab.spawn(
        &t.vm2,
        &["ping", "-q", "-c", "500", "-i", "0.05", "-s", "222", TAP2],
    );
    let count = |mut p: Proc| -> u64 {
        let out = p.wait_ok(Duration::from_secs(60));
        out.lines()
            .find_map(|l| l.split(" packets transmitted").next()?.trim().parse().ok())
            .unwrap()
    };
    let (sent1, sent2) = (count(p1), count(p2));
    let health = t.get(alive, "/api/v1/health").unwrap();
    assert_eq!(health["control"], "disconnected", "{health}");
    if let Some(left) = Duration::from_secs(30).checked_sub(down.elapsed()) {
        std::thread::sleep(left);
    }
    pg.restart();
    // Each collector reconnects on its own schedule: both must say so before changes go to either.
    wait_until(Duration::from_secs(15), "health to say connected", || {
        [alive, dead]
            .iter()
            .all(|&i| {
                t.get(i, "/api/v1/health")
                    .is_some_and(|h| h["control"] == "connected")
            })
            .then_some(())
    });
    wait_until(
        Duration::from_secs(5),
        "the outage's pings in the files",
        || {
            (requests(&t.out[alive], "s1", VM1_SIZE) - before_s1 == sent1
                && requests(&t.out[alive], "s2", VM2_SIZE) - before_s2 == sent2)
                .then_some(())
        },
    );
    // Changes go through again, on either collector, with no manual step.
    t.json(addr[dead], &op, &["session", "create", "s3"]);
    let placed = poll_until(Duration::from_secs(5), || {
        let o = t.owners(alive)?;
        o.iter().any(|(s, _)| s == "s3").then_some(o)
    });
    assert!(placed.is_some(), "s3 placed after the outage");
    // A session pinned with --collector runs there, whoever is least loaded.
    let pinned_to = ["a", "b"][alive];
    t.json(
        addr[dead],
        &op,
        &["session", "create", "s4", "--collector", pinned_to],
    );
    let pinned = wait_until(Duration::from_secs(5), "s4 on its collector", || {
        let o = t.owners(dead)?;
        o.iter().find(|(s, _)| s == "s4").map(|(_, c)| c.clone())
    });
    assert_eq!(pinned, pinned_to);
    all_valid(&t.out[alive]);
    drop(cols);
}

/// A database `collect` cannot use is a clear error at start and exit 2, and leaves the
/// database as it was: a wrong password, a database that does not exist, a schema newer than
/// the binary.
#[test]
fn a_database_collect_cannot_use_stops_it_at_start_with_exit_2() {
    let pg = Pg::start("fleet-bad").expect("PostgreSQL");
    let mut lab = Lab::empty("fleet-bad");
    let ns = lab.add_ns("col");
    let out = lab.dir().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let url = |user_pw: &str, db: &str| {
        format!(
            "host={} port={} {user_pw} dbname={db}",
            pg.socket_dir().display(),
            pg.port()
        )
    };
    let newer = pg.database("newer");
    let good = format!("user={} password={}", pg::ROLE, pg::PASSWORD);
    // Made by a newer tapwire: its schema version is past this binary's.
    run_ok(Command::new(bin("tapwire")).args([
        "token",
        "create",
        "--db",
        &url(&good, &newer),
        "--name",
        "root",
        "--role",
        "admin",
    ]));
    pg.psql(&newer, "UPDATE tapwire_schema SET version = version + 10");
    let version_before = pg.psql(&newer, "SELECT version FROM tapwire_schema");
    let cases = [
        (
            url(&format!("user={} password=wrong", pg::ROLE), &newer),
            "password authentication failed",
        ),
        (
            url(&good, "no_such_db"),
            "database \"no_such_db\" does not exist",
        ),
        (url(&good, &newer), "is newer than this tapwire knows"),
        ("mysql://x@y/z".to_string(), "not a database tapwire knows"),
    ];
    for (db, says) in &cases {
        let exe = bin("tapwire");
        let o = lab.exec(
            &ns,
            &[
                exe.to_str().unwrap(),
                "collect",
                "--no-tui",
                "--out",
                out.to_str().unwrap(),
                "--api",
                collector::API,
                "--db",
                db,
                "--name",
                "a",
            ],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{db}: {err}");
        assert!(err.contains(says), "{db}: {err}");
        assert!(!err.contains("wrong"), "the password is not shown: {err}");
    }
    assert_eq!(
        pg.psql(&newer, "SELECT version FROM tapwire_schema"),
        version_before,
        "the newer database was not touched"
    );
    drop(lab);
}

/// TLS to the database, against real servers: one that takes TCP clients only over TLS (its
/// certificate signed by a CA made here), one without TLS. `collect` refuses at start, exit 2,
/// saying why, when the server's certificate is not the CA's, when TLS is off but required by
/// the server, or required by the URL but the server has none; the CLI works over verified TLS.
#[test]
fn tls_to_the_database_is_verified_and_refusals_stop_collect_with_exit_2() {
    let ca = pg::TestCa::new("tapwire test CA");
    let tls = Pg::start_tls("fleet-tls", &ca, true).expect("PostgreSQL");
    let plain = Pg::start("fleet-notls").expect("PostgreSQL");
    let dir = tapwire_tests::TempDir::new("fleet-tls");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let other = dir.join("other-ca.pem");
    std::fs::write(&other, pg::TestCa::new("another CA").ca_pem).unwrap();
    let (tls_db, plain_db) = (tls.database("tls"), plain.database("notls"));
    let url = |pg: &Pg, db: &str, q: String| format!("{}?{q}", pg.url(db));
    let verified = url(
        &tls,
        &tls_db,
        format!("sslmode=verify-full&sslrootcert={}", ca_file.display()),
    );
    let made = run_ok(Command::new(bin("tapwire")).args([
        "token", "create", "--db", &verified, "--name", "root", "--role", "admin", "--json",
    ]));
    assert!(made.contains("\"token\""), "{made}");
    let listed = run_ok(Command::new(bin("tapwire")).args(["token", "list", "--db", &verified]));
    assert!(listed.contains("root"), "{listed}");
    // The server holds it: written over TLS (TCP clients cannot connect without it).
    assert_eq!(
        tls.psql(&tls_db, "SELECT name FROM tokens"),
        "root",
        "stored over TLS"
    );

    let cases = [
        (
            url(&tls, &tls_db, "sslmode=disable".into()),
            "no pg_hba.conf entry",
        ),
        (
            url(
                &tls,
                &tls_db,
                format!("sslmode=verify-full&sslrootcert={}", other.display()),
            ),
            "not signed by a CA in sslrootcert",
        ),
        (
            url(
                &plain,
                &plain_db,
                format!("sslmode=require&sslrootcert={}", ca_file.display()),
            ),
            "the server does not support TLS",
        ),
    ];
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .to_string()
    };
    for (db, says) in &cases {
        let out = dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        let o = Command::new(bin("tapwire"))
            .args(["collect", "--no-tui", "--out", out.to_str().unwrap()])
            .args([
                "--api",
                &free(),
                "--vxlan",
                &free(),
                "--db",
                db,
                "--name",
                "a",
            ])
            .args([
                "--gre-v4", "off", "--gre-v6", "off", "--geneve", "off", "--tzsp", "off",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{db}: {err}");
        assert!(err.contains(says), "{db}: {err}");
        assert!(
            !err.contains(pg::PASSWORD),
            "the password is not shown: {err}"
        );
    }
}

/// Nanoseconds since the epoch, now.
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// `t_ns` as RFC 3339 with nanoseconds.
fn rfc3339(t_ns: u64) -> String {
    run_ok(Command::new("date").args([
        "-u",
        "-d",
        &format!("@{}.{:09}", t_ns / 1_000_000_000, t_ns % 1_000_000_000),
        "+%Y-%m-%dT%H:%M:%S.%NZ",
    ]))
    .trim()
    .to_string()
}

/// Capture files (not indexes) of `session` in each of `outs`, a's first.
fn session_files(outs: &[&PathBuf], session: &str) -> Vec<PathBuf> {
    outs.iter()
        .flat_map(|o| collector::files_with_prefix(o, &format!("{session}_")))
        .filter(|p| p.extension().is_some_and(|e| e == "pcapng"))
        .collect()
}

impl Fleet {
    /// `tapwire query` asked of collector `addr` over HTTPS with `token`, from host1: its
    /// answer's packets and its stderr.
    fn query(&self, addr: &str, token: &str, args: &[&str], out: &Path) -> (Vec<Packet>, String) {
        let tapwire = bin("tapwire");
        let url = format!("https://{addr}:9760");
        let mut cmd = vec![tapwire.to_str().unwrap(), "query", "--api", &url];
        cmd.extend_from_slice(&["--ca", self.cert.to_str().unwrap(), "--token", token]);
        cmd.extend_from_slice(&["-w", out.to_str().unwrap()]);
        cmd.extend_from_slice(args);
        let o = self.lab.exec(&self.host1, &cmd);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "tapwire query on {addr}: {err}");
        tapwire_tests::validate_capture(out);
        (packets(out), err)
    }
}

/// Issues 17 and 18 in a fleet. A session owned by a receives traffic; a is killed; the
/// session moves to b and traffic goes on there; a comes back. One query for the range that
/// spans the failover, asked of b and of a (`tapwire query` and `GET /api/v1/packets`),
/// returns the packets of both collectors' files exactly as `tcpdump -r` over all of them
/// and `mergecap` do. With a stopped, b's answer names a (comment, trailer, the CLI's
/// stderr) and still holds b's part. `tshark -i tapwire-s1` through the extcap pointed at
/// a, which does not own the session, records its live packets (relayed from b).
#[test]
fn a_query_spans_a_failover_and_a_live_stream_comes_through_a_non_owner() {
    for tool in ["tcpdump", "mergecap", "tshark", "curl"] {
        require(tool);
    }
    let pg = Pg::start("fleet-query").expect("PostgreSQL");
    let t = Fleet::new(&pg);
    // The collectors reach each other's APIs through host1.
    t.lab
        .exec_ok(&t.host1, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    t.lab
        .exec_ok(&t.ns[0], &["ip", "route", "add", "10.90.2.0/24", "via", HA]);
    t.lab
        .exec_ok(&t.ns[1], &["ip", "route", "add", "10.90.1.0/24", "via", HB]);
    let made = run_ok(Command::new(bin("tapwire")).args([
        "token", "create", "--db", &t.db, "--name", "root", "--role", "admin", "--json",
    ]));
    let admin: Value = serde_json::from_str(&made).unwrap();
    let admin = admin["token"].as_str().unwrap().to_string();
    let mut cols = vec![Some(t.collector(0)), Some(t.collector(1))];
    let both_live = |from: usize| {
        wait_until(Duration::from_secs(15), "both collectors live", || {
            let f = t.get(from, "/api/v1/fleet")?;
            let live = f["collectors"]
                .as_array()?
                .iter()
                .filter(|c| c["state"] == "live")
                .count();
            (live == 2).then_some(())
        })
    };
    both_live(0);
    let token = |name: &str, role: &str| {
        let v = t.json(
            A,
            &admin,
            &["token", "create", "--name", name, "--role", role],
        );
        v["token"].as_str().unwrap().to_string()
    };
    let (op, viewer, h1) = (
        token("op", "operator"),
        token("v", "viewer"),
        token("h1", "probe"),
    );
    t.json(B, &op, &["session", "create", "s1"]);
    let owners = wait_until(Duration::from_secs(5), "s1 placed", || {
        let o = t.owners(0)?;
        (o.len() == 1).then_some(o)
    });
    // Ties go by name: a.
    assert_eq!(owners, [("s1".to_string(), "a".to_string())]);
    t.json(
        A,
        &op,
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
            "s1",
        ],
    );
    let _probe = t.probe(&h1);
    wait_until(Duration::from_secs(15), "the probe to send s1 to a", || {
        let f = t.probe_flows();
        (f.first().map(|x| (x.1.as_str(), x.2.as_str())) == Some((A, "running"))).then_some(())
    });
    let from_ns = now_ns();
    assert_eq!(t.ping(&t.vm1, VM1_SIZE, 20, "0.02"), 20);
    wait_until(Duration::from_secs(5), "the pings in a's files", || {
        (requests(&t.out[0], "s1", VM1_SIZE) == 20).then_some(())
    });
    // Traffic on while a is killed: s1 moves to b, the probe follows.
    let mut pinger = t.lab.spawn(
        &t.vm1,
        &["ping", "-q", "-c", "200", "-i", "0.05", "-s", "111", TAP1],
    );
    std::thread::sleep(Duration::from_millis(500));
    let killed_ns = now_ns();
    cols[0].as_mut().unwrap().proc.signal("KILL");
    cols[0]
        .as_mut()
        .unwrap()
        .proc
        .wait_timeout(Duration::from_secs(5));
    wait_until(Duration::from_secs(15), "the probe to send s1 to b", || {
        let f = t.probe_flows();
        (f.first().map(|x| x.1.as_str()) == Some(B)).then_some(())
    });
    pinger.wait_ok(Duration::from_secs(60));
    wait_until(Duration::from_secs(5), "pings in b's files", || {
        (requests(&t.out[1], "s1", VM1_SIZE) > 0).then_some(())
    });
    // a comes back (s1 stays on b).
    cols[0] = None;
    cols[0] = Some(t.collector(0));
    both_live(1);
    std::thread::sleep(Duration::from_secs(1));
    let to_ns = now_ns();
    let range = [
        "--session",
        "s1",
        "--from",
        &rfc3339(from_ns),
        "--to",
        &rfc3339(to_ns),
    ];
    let mut args = range.to_vec();
    args.push("icmp");

    let files = session_files(&[&t.out[0], &t.out[1]], "s1");
    let oracle = t.dir.join("oracle");
    std::fs::create_dir_all(&oracle).unwrap();
    let expected = tcpdump_mergecap(&files, "icmp", from_ns, to_ns, &oracle);
    let before = expected.iter().filter(|p| p.0 < killed_ns).count();
    assert!(
        before >= 40 && before < expected.len(),
        "packets on both sides of the failover: {before} of {}",
        expected.len()
    );
    for (addr, name) in [(B, "b"), (A, "a")] {
        let out = t.dir.join(format!("query-{name}.pcapng"));
        let (got, err) = t.query(addr, &viewer, &args, &out);
        assert!(!err.contains("could not be read"), "{err}");
        let comments = run_ok(Command::new("capinfos").arg("-k").arg(&out));
        assert!(
            comments.contains("parts from collectors a, b"),
            "{name}'s answer:\n{comments}\ncatalog: {:?}",
            t.get(1, "/api/v1/files?session=s1")
        );
        assert_same(&format!("tapwire query asked of {name}"), &expected, &got);
    }
    // The API itself, with curl: the same packets; the trailer, asked for, names nobody.
    let url = format!(
        "https://{B}:9760/api/v1/packets?session=s1&from={}&to={}&filter=icmp",
        rfc3339(from_ns),
        rfc3339(to_ns)
    );
    let curl = |out: &Path, raw: bool| {
        let auth = format!("Authorization: Bearer {viewer}");
        let mut cmd = vec!["curl", "-sSf", "--max-time", "30", "--cacert"];
        cmd.push(t.cert.to_str().unwrap());
        cmd.extend_from_slice(&[
            "-H",
            &auth,
            "-H",
            "TE: trailers",
            "-o",
            out.to_str().unwrap(),
        ]);
        if raw {
            cmd.push("--raw");
        }
        cmd.push(&url);
        let o = t.lab.exec(&t.host1, &cmd);
        assert!(
            o.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let api_out = t.dir.join("api.pcapng");
    curl(&api_out, false);
    let got = packets(&api_out);
    assert_same("GET /api/v1/packets on b", &expected, &got);
    // Without a token, from another host: 401 as before (the fleet adds no open path).
    let o = t.lab.exec(
        &t.host1,
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            t.cert.to_str().unwrap(),
            &url,
        ],
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "401");

    // Live: tshark through the extcap, pointed at a (its loopback API), records s1's packets,
    // which b runs.
    let home = t.dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let env_home = format!("HOME={}", home.display());
    t.lab.exec_ok(
        &t.ns[0],
        &[
            "env",
            &env_home,
            bin("tapwire").to_str().unwrap(),
            "extcap",
            "install",
        ],
    );
    let listed = t.lab.exec(&t.ns[0], &["env", &env_home, "tshark", "-D"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed
            .contains("tapwire-s1 (tapwire session s1: on collector b (live), streamed through a)"),
        "tshark -D on a:\n{listed}"
    );
    let live = t.dir.join("live.pcapng");
    let n = 10;
    let mut tshark = t.lab.spawn(
        &t.ns[0],
        &[
            "env",
            &env_home,
            "tshark",
            "-i",
            "tapwire-s1",
            "-a",
            &format!("packets:{n}"),
            "-a",
            "duration:60",
            "-w",
            live.to_str().unwrap(),
        ],
    );
    // Streaming once b has a subscriber (the relay).
    wait_until(
        Duration::from_secs(20),
        "b to serve the relayed stream",
        || {
            let s = t.get(1, "/api/v1/sessions")?;
            let s1 = s["sessions"]
                .as_array()?
                .iter()
                .find(|x| x["name"] == "s1")?
                .clone();
            (!s1["streams"]["subscribers"].as_array()?.is_empty()).then_some(())
        },
    );
    let before_live = now_ns();
    t.ping(&t.vm1, VM1_SIZE, 20, "0.05");
    tshark.wait_ok(Duration::from_secs(60));
    let recorded = packets(&live);
    assert_eq!(recorded.len(), n, "tshark through a recorded");
    let b_files = session_files(&[&t.out[1]], "s1");
    let in_b = tcpdump_mergecap(&b_files, "", before_live, now_ns(), &oracle);
    for p in &recorded {
        assert!(
            in_b.contains(p),
            "a live packet (t {}) not in b's files as recorded",
            p.0
        );
    }

    // a stopped: b answers with its part and names a, in the output, the trailer and on
    // tapwire query's stderr.
    cols[0].as_mut().unwrap().proc.signal("KILL");
    cols[0]
        .as_mut()
        .unwrap()
        .proc
        .wait_timeout(Duration::from_secs(5));
    let out = t.dir.join("query-without-a.pcapng");
    let (got, err) = t.query(B, &viewer, &args, &out);
    assert!(err.contains("collector a could not be read"), "{err}");
    let only_b = tcpdump_mergecap(&b_files, "icmp", from_ns, to_ns, &oracle);
    let only_b: Vec<Packet> = only_b.into_iter().filter(|p| p.0 <= to_ns).collect();
    assert_same("b's part without a", &only_b, &got);
    let comments = run_ok(Command::new("capinfos").arg("-k").arg(&out));
    assert!(
        comments.contains("collector a could not be read"),
        "{comments}"
    );
    let raw = t.dir.join("raw.txt");
    curl(&raw, true);
    let raw = std::fs::read(&raw).unwrap();
    let raw = String::from_utf8_lossy(&raw);
    assert!(
        raw.contains("x-tapwire-unreachable: a ("),
        "no trailer naming a in the raw response"
    );
    drop(cols);
}
