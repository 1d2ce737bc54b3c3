//! End-to-end: `tapwire lab up --detach` builds the whole system (two Linux hosts with probes,
//! an Open vSwitch host when OVS is installed, a monitoring VM, a collector, steady traffic),
//! and each named session holds what the workflow it reproduces implies.
//!
//! Known traffic is sent during the test, one ICMP payload size per check (the lab's own
//! pings are 56 bytes), so every session can be checked by exact counts: tshark reads the
//! session files, tcpdump the monitoring VM's NIC (the TAP) and, as the oracle for the filtered
//! session, the VM port itself. The UI is read in tmux; `down` must leave no namespace, link,
//! process or state behind, also after `up` was killed half-way.
//!
//! The topology is written out here from the README, not imported from the lab's code: the
//! test checks the lab against its documentation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tapwire_tests::labrun::{LabRun, assert_gone, assert_reaped};
use tapwire_tests::netns::{Lab, Proc, wait_until};
use tapwire_tests::tmux::{Tmux, row};
use tapwire_tests::{require, run, validate_capture};

/// One lab at a time: each is a dozen namespaces and twenty processes on a two-core machine.
static ONE_LAB: Mutex<()> = Mutex::new(());

const VM1: &str = "10.10.0.11";
const VM2: &str = "10.10.0.12";
const VM3: &str = "10.10.0.13";
const VM4: &str = "10.10.0.14";
const VM5: &str = "10.30.0.15";
const VM6: &str = "10.30.0.16";
const VM2_MAC: &str = "02:10:00:00:00:12";
const VM3_MAC: &str = "02:10:00:00:00:13";
const OUTSIDE: &str = "10.10.1.1";
const GROUP: &str = "239.1.1.1";
const BROADCAST: &str = "10.10.0.255";

/// (session, outer source, kind, id) as the README's lab section lists them.
const SESSIONS: [(&str, &str, &str, u64); 6] = [
    ("ovirt-host1", "10.99.0.1", "erspan-iii", 10),
    ("midonet-vm2", "10.99.0.1", "erspan-ii", 11),
    ("vm3-ingress", "10.99.0.2", "erspan-iii", 21),
    ("vm3-egress", "10.99.0.2", "erspan-iii", 22),
    ("vm3-both", "10.99.0.2", "erspan-iii", 23),
    ("ahv-host2", "10.99.0.2", "gre", 30),
];
const OVS_SESSION: (&str, &str, &str, u64) = ("ovs-host3", "10.99.0.3", "erspan-ii", 40);

/// ICMP payload sizes of the test's pings: frame length = size + 42.
const SAME_HOST: u32 = 1001; // vm1 -> vm2, on host1
const CROSS_HOST: u32 = 1002; // vm3 -> vm1, host2 -> host1
const LOCAL: u32 = 1003; // vm2 -> vm1, local to the subnet
const NOT_LOCAL: u32 = 1004; // vm2 -> 10.10.1.1 through the gateway
const MULTICAST: u32 = 1005; // vm4 -> 239.1.1.1
const BCAST: u32 = 1006; // vm1 -> 10.10.0.255, crossing to host2
const OVS_PING: u32 = 1007; // vm5 -> vm6 on the OVS host
const N: usize = 5;

fn ovs_installed() -> bool {
    Command::new("sh")
        .args(["-c", "command -v ovs-vswitchd"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `GET /api/v1/sessions` of the lab's collector.
fn api(l: &LabRun) -> Value {
    let out = l.exec(
        "col",
        &[
            "curl",
            "-sSf",
            "--max-time",
            "3",
            "http://127.0.0.1:9750/api/v1/sessions",
        ],
    );
    assert!(
        out.status.success(),
        "the lab's API: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Link names in the test's own namespace.
fn root_links() -> BTreeSet<String> {
    let out = run(Command::new("ip").args(["-o", "link", "show"]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// One frame as tshark decodes it.
#[derive(Debug, Clone)]
struct Frame {
    len: u32,
    src_mac: String,
    dst_mac: String,
    eth_type: String,
    ip_src: String,
    ip_dst: String,
    icmp_type: Option<u8>,
}

impl Frame {
    fn echo(&self, size: u32, kind: u8, src: &str, dst: &str) -> bool {
        self.len == size + 42
            && self.icmp_type == Some(kind)
            && self.ip_src == src
            && self.ip_dst == dst
    }

    /// Broadcast or multicast: the I/G bit of the destination.
    fn group(&self) -> bool {
        u8::from_str_radix(&self.dst_mac[..2], 16).unwrap() & 1 == 1
    }

    fn local_ipv4(&self) -> bool {
        self.eth_type == "0x0800"
            && self.ip_src.starts_with("10.10.0.")
            && self.ip_dst.starts_with("10.10.0.")
    }
}

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;

fn frames(path: &Path) -> Vec<Frame> {
    require("tshark");
    let out = run(Command::new("tshark").arg("-r").arg(path).args([
        "-T",
        "fields",
        "-E",
        "separator=|",
        "-e",
        "frame.len",
        "-e",
        "eth.src",
        "-e",
        "eth.dst",
        "-e",
        "eth.type",
        "-e",
        "ip.src",
        "-e",
        "ip.dst",
        "-e",
        "icmp.type",
    ]));
    assert!(
        out.status.success(),
        "tshark -r {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // Fields that occur twice (an ICMP error's inner IP header) come comma-separated.
    let first = |s: &str| s.split(',').next().unwrap_or("").to_string();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            Frame {
                len: f[0].parse().unwrap(),
                src_mac: first(f[1]),
                dst_mac: first(f[2]),
                eth_type: first(f[3]),
                ip_src: first(f[4]),
                ip_dst: first(f[5]),
                icmp_type: first(f[6]).parse().ok(),
            }
        })
        .collect()
}

/// Every frame of session `name`'s files (checked with captype and capinfos), in file order.
fn session_frames(out: &Path, name: &str) -> Vec<Frame> {
    // Capture files only: the packet indexes (`.twidx`) beside them are not captures.
    let files = tapwire_tests::collector::files_with_prefix(out, &format!("{name}_"));
    assert!(
        !files.is_empty(),
        "session {name} wrote no file in {}",
        out.display()
    );
    files
        .iter()
        .flat_map(|f| {
            let n = validate_capture(f);
            let frames = frames(f);
            assert_eq!(n, frames.len() as u64, "{}", f.display());
            frames
        })
        .collect()
}

fn count(frames: &[Frame], f: impl Fn(&Frame) -> bool) -> usize {
    frames.iter().filter(|x| f(x)).count()
}

/// tcpdump writing `path` in `ns`, started through the scratch lab (killed with it).
fn tcpdump(scratch: &Lab, ns: &str, args: &[&str], path: &Path) -> Proc {
    // A short snapshot: the checks need only the headers (tshark's frame.len is the original
    // length). With the default 262144 bytes, tcpdump in immediate mode dropped 90 to 180
    // packets in 8 s on the monitoring TAP at the lab's rate (measured); with 256, none.
    let mut cmd = vec![
        "tcpdump",
        "-n",
        "-p",
        "-U",
        "--immediate-mode",
        "-s",
        "256",
        "-B",
        "16384",
        "-w",
        path.to_str().unwrap(),
    ];
    cmd.extend_from_slice(args);
    let p = scratch.spawn(ns, &cmd);
    wait_until(Duration::from_secs(10), "tcpdump listening", || {
        p.stderr().contains("listening on").then_some(())
    });
    p
}

/// Stops tcpdump; it must have lost nothing (or its file is no oracle).
fn stop(mut p: Proc) {
    p.signal("INT");
    assert!(
        p.wait_timeout(Duration::from_secs(5)).is_some(),
        "tcpdump did not stop"
    );
    let err = p.stderr();
    assert!(
        err.lines()
            .any(|l| l.trim() == "0 packets dropped by kernel"),
        "{err}"
    );
}

/// A lab brought up by one test (they run one at a time), with a scratch [`Lab`] for the
/// test's own processes and files. Field order: the lab goes down before the next test may
/// start.
struct Up {
    l: LabRun,
    scratch: Lab,
    out: PathBuf,
    ovs: bool,
    names: Vec<&'static str>,
    _one: MutexGuard<'static, ()>,
}

/// `tapwire lab up --detach`: every session receiving within the README's 10 seconds, and the
/// collector has exactly the lab's sessions, each fed by its one planned sender.
fn up(tag: char) -> Up {
    let one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    for tool in [
        "tshark", "captype", "capinfos", "tcpdump", "curl", "iperf3", "ethtool", "tmux",
    ] {
        require(tool);
    }
    let ovs = ovs_installed();
    let mut expected: Vec<(&'static str, &str, &str, u64)> = SESSIONS.to_vec();
    if ovs {
        expected.push(OVS_SESSION);
    } else {
        eprintln!("note: Open vSwitch is not installed; the lab has no host3");
    }
    let scratch = Lab::empty(&format!("lab-{tag}"));
    let out = scratch.dir().join("captures");
    let l = LabRun::new(tag);
    let t0 = Instant::now();
    let up = l.lab(&["up", "--detach", "--out", out.to_str().unwrap()]);
    let took = t0.elapsed();
    let text = String::from_utf8_lossy(&up.stdout).into_owned();
    assert!(
        up.status.success(),
        "lab up failed ({}):\n{text}\n{}",
        up.status,
        String::from_utf8_lossy(&up.stderr)
    );
    eprintln!("tapwire lab up --detach: every session receiving after {took:.1?}");
    assert!(
        text.contains(&format!("all {} sessions receiving", expected.len())),
        "{text}"
    );
    assert!(
        took < Duration::from_secs(10),
        "lab up took {took:?}:\n{text}"
    );

    let api = api(&l);
    let sessions = api["sessions"].as_array().unwrap();
    let got: BTreeSet<&str> = sessions
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    let names: Vec<&'static str> = expected.iter().map(|s| s.0).collect();
    assert_eq!(got, names.iter().copied().collect(), "{api}");
    for (name, src, kind, id) in &expected {
        let s = sessions.iter().find(|s| s["name"] == *name).unwrap();
        let srcs = s["sources"].as_array().unwrap();
        assert_eq!(srcs.len(), 1, "{name}: {s}");
        assert_eq!(
            (
                srcs[0]["src"].as_str(),
                srcs[0]["kind"].as_str(),
                srcs[0]["id"].as_u64()
            ),
            (Some(*src), Some(*kind), Some(*id)),
            "{name}"
        );
    }
    Up {
        l,
        scratch,
        out,
        ovs,
        names,
        _one: one,
    }
}

impl Up {
    /// Runs `ping -c 5 -i 0.2 -s SIZE [EXTRA] DST` from each `(vm, size, dst, extra)` at once.
    fn pings(&self, list: &[(&str, u32, &str, &[&str])]) {
        let runs: Vec<_> = list
            .iter()
            .map(|(vm, size, dst, extra)| {
                let mut cmd: Vec<String> = [
                    "netns",
                    "exec",
                    &self.l.ns(vm),
                    "ping",
                    "-q",
                    "-c",
                    "5",
                    "-i",
                    "0.2",
                    "-W",
                    "1",
                    "-s",
                    &size.to_string(),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                cmd.extend(extra.iter().map(|s| s.to_string()));
                cmd.push(dst.to_string());
                std::thread::spawn(move || run(Command::new("ip").args(&cmd)))
            })
            .collect();
        for r in runs {
            // Pings to a group or a broadcast address get no answer: only that they ran matters.
            let out = r.join().unwrap();
            assert!(
                out.status.code().is_some_and(|c| c <= 1),
                "ping: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // A probe hands a packet over within its 10 ms block timeout; the TAP gets it at once.
        std::thread::sleep(Duration::from_millis(500));
    }

    /// `tapwire lab down`, which must succeed: the collector has closed every file.
    fn down(&self) {
        let down = self.l.lab(&["down"]);
        assert!(
            down.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&down.stdout),
            String::from_utf8_lossy(&down.stderr)
        );
    }

    /// Every frame of session `name`'s files (read after `down`).
    fn frames(&self, name: &str) -> Vec<Frame> {
        session_frames(&self.out, name)
    }
}

#[test]
fn ovirt_session_holds_host1s_network_both_ways_in_files_and_on_the_monitor_tap() {
    let u = up('o');
    let tap_pcap = u.scratch.dir().join("tap.pcap");
    let ids_log = u.l.state().join("logs/ids.log");
    let ids_before = std::fs::read_to_string(&ids_log).unwrap_or_default();
    let tap = tcpdump(&u.scratch, &u.l.ns("mon"), &["-i", "mirror0"], &tap_pcap);
    u.pings(&[("vm1", SAME_HOST, VM2, &[]), ("vm3", CROSS_HOST, VM1, &[])]);
    stop(tap);
    let ids = std::fs::read_to_string(&ids_log).unwrap();
    u.down();

    // Same-host and cross-host pings, requests and replies, in the files and on the
    // monitoring VM's NIC.
    let files = u.frames("ovirt-host1");
    let on_tap = frames(&tap_pcap);
    for (what, f) in [("files", &files), ("TAP", &on_tap)] {
        for (size, a, b) in [(SAME_HOST, VM1, VM2), (CROSS_HOST, VM3, VM1)] {
            assert_eq!(
                count(f, |x| x.echo(size, ECHO_REQUEST, a, b)),
                N,
                "ovirt-host1 {what}: {a} -> {b}"
            );
            assert_eq!(
                count(f, |x| x.echo(size, ECHO_REPLY, b, a)),
                N,
                "ovirt-host1 {what}: {b} -> {a}"
            );
        }
    }
    // The IDS stand-in on the monitoring VM logged vm3's new HTTP connections to vm2.
    assert!(
        ids.len() > ids_before.len(),
        "the IDS log did not grow:\n{ids}"
    );
    assert!(
        ids.lines()
            .any(|x| x.contains(&format!("{VM3}.")) && x.contains(&format!("> {VM2}.8080"))),
        "{ids}"
    );
}

#[test]
fn midonet_session_holds_only_ipv4_local_to_the_subnet_entering_from_vm2() {
    let u = up('m');
    let port_pcap = u.scratch.dir().join("tap-vm2-in.pcap");
    let port = tcpdump(
        &u.scratch,
        &u.l.ns("host1"),
        &["-i", "tap-vm2", "-Q", "in"],
        &port_pcap,
    );
    // vm2 forgets its neighbours first: its next packets start with ARP requests, which the
    // session must leave out.
    let flushed = u.l.exec("vm2", &["ip", "neigh", "flush", "dev", "eth0"]);
    assert!(flushed.status.success());
    u.pings(&[
        ("vm2", LOCAL, VM1, &[]),
        ("vm2", NOT_LOCAL, OUTSIDE, &[]),
        ("vm1", SAME_HOST, VM2, &[]),
    ]);
    stop(port);
    u.down();

    let f = u.frames("midonet-vm2");
    assert!(!f.is_empty());
    for x in &f {
        assert!(
            x.src_mac == VM2_MAC && x.local_ipv4(),
            "midonet-vm2 holds {x:?}"
        );
    }
    assert_eq!(count(&f, |x| x.echo(LOCAL, ECHO_REQUEST, VM2, VM1)), N);
    assert_eq!(count(&f, |x| x.len == NOT_LOCAL + 42), 0);
    // Inbound only: vm2's replies to vm1's pings, never vm1's requests to vm2.
    assert_eq!(count(&f, |x| x.echo(SAME_HOST, ECHO_REPLY, VM2, VM1)), N);
    assert_eq!(count(&f, |x| x.echo(SAME_HOST, ECHO_REQUEST, VM1, VM2)), 0);
    assert_eq!(
        count(&f, |x| x.len == LOCAL + 42
            && x.icmp_type == Some(ECHO_REPLY)),
        0
    );
    // What the filter had to leave out was there on the port.
    let port = frames(&port_pcap);
    assert_eq!(
        count(&port, |x| x.echo(NOT_LOCAL, ECHO_REQUEST, VM2, OUTSIDE)),
        N
    );
    assert!(
        count(&port, |x| x.eth_type == "0x0806") > 0,
        "vm2 sent no ARP after its neighbours were flushed"
    );
    assert_eq!(count(&port, |x| x.echo(LOCAL, ECHO_REQUEST, VM2, VM1)), N);
}

#[test]
fn vm3_sessions_hold_ingress_only_egress_only_and_both() {
    let u = up('c');
    u.pings(&[("vm3", CROSS_HOST, VM1, &[]), ("vm1", SAME_HOST, VM2, &[])]);
    u.down();

    let ingress = u.frames("vm3-ingress");
    let egress = u.frames("vm3-egress");
    let both = u.frames("vm3-both");
    assert!(
        ingress.iter().all(|f| f.src_mac != VM3_MAC),
        "vm3-ingress holds vm3's own frames"
    );
    assert!(
        egress.iter().all(|f| f.src_mac == VM3_MAC),
        "vm3-egress holds frames vm3 did not send"
    );
    assert!(both.iter().any(|f| f.src_mac == VM3_MAC) && both.iter().any(|f| f.src_mac != VM3_MAC));
    for (name, frames, requests, replies) in [
        ("vm3-ingress", &ingress, 0, N),
        ("vm3-egress", &egress, N, 0),
        ("vm3-both", &both, N, N),
    ] {
        assert_eq!(
            count(frames, |x| x.echo(CROSS_HOST, ECHO_REQUEST, VM3, VM1)),
            requests,
            "{name}: echo requests from vm3"
        );
        assert_eq!(
            count(frames, |x| x.echo(CROSS_HOST, ECHO_REPLY, VM1, VM3)),
            replies,
            "{name}: echo replies to vm3"
        );
        // Traffic between other VMs never crossed vm3's port.
        assert_eq!(count(frames, |x| x.len == SAME_HOST + 42), 0, "{name}");
    }
}

#[test]
fn ahv_session_holds_only_broadcast_and_multicast_of_host2s_bridge() {
    let u = up('a');
    u.pings(&[
        ("vm4", MULTICAST, GROUP, &["-t", "1"]),
        ("vm1", BCAST, BROADCAST, &["-b"]),
        ("vm3", CROSS_HOST, VM1, &[]),
    ]);
    // host2 never joined the group and has no address on the VM network: what the session
    // gets from its bridge is not addressed to host2.
    let maddr = u.l.exec("host2", &["ip", "maddr", "show", "dev", "br0"]);
    assert!(!String::from_utf8_lossy(&maddr.stdout).contains(GROUP));
    let addrs =
        u.l.exec("host2", &["ip", "-4", "addr", "show", "dev", "br0"]);
    assert!(String::from_utf8_lossy(&addrs.stdout).trim().is_empty());
    u.down();

    let f = u.frames("ahv-host2");
    for x in &f {
        assert!(x.group(), "ahv-host2 holds a unicast frame: {x:?}");
    }
    assert_eq!(
        count(&f, |x| x.echo(MULTICAST, ECHO_REQUEST, VM4, GROUP)),
        N
    );
    // Broadcasts from host1's vm1, across the trunk.
    assert_eq!(
        count(&f, |x| x.echo(BCAST, ECHO_REQUEST, VM1, BROADCAST)),
        N
    );
    assert_eq!(count(&f, |x| x.len == CROSS_HOST + 42), 0);
}

#[test]
fn ovs_session_holds_the_ovs_hosts_frames_sent_by_open_vswitch() {
    if !ovs_installed() {
        eprintln!("SKIP: Open vSwitch is not installed (scripts/setup.sh installs it)");
        return;
    }
    let u = up('v');
    assert!(u.ovs);
    u.pings(&[("vm5", OVS_PING, VM6, &[])]);
    u.down();

    let f = u.frames("ovs-host3");
    assert_eq!(count(&f, |x| x.echo(OVS_PING, ECHO_REQUEST, VM5, VM6)), N);
    assert_eq!(count(&f, |x| x.echo(OVS_PING, ECHO_REPLY, VM6, VM5)), N);
    assert!(
        f.iter().all(|x| x.src_mac.starts_with("02:30:00:00:00:")),
        "ovs-host3 holds frames not from host3's VMs"
    );
}

#[test]
fn ui_and_status_show_every_session_and_down_leaves_nothing_behind() {
    let links_before = root_links();
    let u = up('u');
    let (l, names) = (&u.l, &u.names);

    // A second `up` of the same lab is refused and changes nothing.
    let again = l.lab(&["up", "--detach", "--out", u.out.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already up"));

    // vm2's web server answers at once (Python's own server first waited ~10 s for a name
    // server the lab cannot reach, and reset the first connections).
    let http = l.exec(
        "vm3",
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{time_total}",
            "--max-time",
            "2",
            &format!("http://{VM2}:8080/"),
        ],
    );
    let answer = String::from_utf8_lossy(&http.stdout);
    assert!(
        http.status.success() && answer.starts_with("200 "),
        "vm2's web server right after up: {answer} {}",
        String::from_utf8_lossy(&http.stderr)
    );
    eprintln!("vm2's web server answered right after up: {answer}");

    // Every session receiving, nothing lost or dropped.
    for s in api(l)["sessions"].as_array().unwrap() {
        assert_eq!(s["state"], "receiving", "{s}");
        assert_eq!(s["lost"], 0, "{s}");
        // Traffic flows on: what is not on disk yet is pending, none of it dropped.
        let (written, pending) = (s["written"].as_u64(), s["pending"].as_u64());
        assert_eq!(
            written.zip(pending).map(|(w, p)| w + p),
            s["packets"].as_u64(),
            "{s}"
        );
    }

    // The UI shows every session receiving.
    let tui = Tmux::start(
        u.scratch.dir(),
        "lab",
        160,
        40,
        &[l.tapwire.to_str().unwrap(), "lab", "top", "--name", &l.name],
    );
    let t_ui = Instant::now();
    tui.wait_for(
        "every lab session receiving",
        Duration::from_secs(10),
        |s| {
            s.contains("● connected")
                && names
                    .iter()
                    .all(|n| row(s, n).is_some_and(|r| r.contains("receiving")))
        },
    );
    eprintln!(
        "tapwire lab top: every session receiving on screen after {:.1?}",
        t_ui.elapsed()
    );
    tui.key("q");
    assert_eq!(tui.wait_exit(Duration::from_secs(5)), 0);

    // Status: whole, with counts.
    let st = l.lab(&["status"]);
    let text = String::from_utf8_lossy(&st.stdout).into_owned();
    assert!(st.status.success(), "{text}");
    assert!(text.contains("up, every session receiving"), "{text}");
    for n in names {
        assert!(
            row(&text, n).is_some_and(|r| r.contains("receiving")),
            "{n}:\n{text}"
        );
    }
    let st = l.lab(&["status", "--json"]);
    let json: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(json["whole"], true, "{json}");
    assert!(
        json["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["packets"].as_u64() > Some(0))
    );

    // Down: no namespace, process, lab link or state left; every file complete.
    let procs = l.processes();
    assert!(procs.len() >= 15, "{procs:?}");
    u.down();
    assert_eq!(l.namespaces(), Vec::<String>::new());
    assert_gone(&procs);
    assert_reaped(&procs);
    assert!(!l.state().exists());
    let new_links: Vec<String> = root_links().difference(&links_before).cloned().collect();
    for lab_link in [
        "br0", "sw0", "trunk0", "up0", "mirror0", "tap-vm1", "h1", "col",
    ] {
        assert!(!new_links.iter().any(|n| n == lab_link), "{new_links:?}");
    }
    for n in names {
        assert!(!u.frames(n).is_empty(), "{n}");
    }
    assert_eq!(l.lab(&["status"]).status.code(), Some(3));
}

#[test]
fn down_removes_a_lab_whose_up_was_killed_half_way() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = Lab::empty("lab-crash");
    let l = LabRun::new('k');
    let out = scratch.dir().join("captures");
    // Its stdout is a pipe nobody reads any more (`| head -1` after head exited): progress
    // that cannot be shown must not stop it.
    let (reader, closed) = std::io::pipe().unwrap();
    drop(reader);
    let mut up = Command::new(&l.tapwire)
        .args(["lab", "up", "--detach", "--name", &l.name, "--out"])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(closed)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed right after it started the collector: namespaces, links and a detached process
    // exist, and `up` never finishes.
    let procs = l.state().join("procs");
    wait_until(
        Duration::from_secs(20),
        "lab up to start its collector",
        || {
            std::fs::read_to_string(&procs)
                .ok()
                .filter(|p| p.contains(" collector"))
                .map(|_| ())
        },
    );
    up.kill().unwrap();
    up.wait().unwrap();
    // A process the lab did not start (as when one runs tcpdump on the monitoring VM's NIC,
    // as the README suggests) goes too.
    let mut stray = scratch.spawn(&l.ns("mon"), &["sleep", "600"]);
    let running = l.processes();
    assert!(running.len() >= 2, "nothing was left running to clean up");
    assert!(l.namespaces().len() >= 10, "{:?}", l.namespaces());
    let st = l.lab(&["status"]);
    assert_ne!(
        st.status.code(),
        Some(3),
        "status should see the half-made lab"
    );

    // `down` into a closed pipe too: it does its work and ends quietly.
    let (reader, closed) = std::io::pipe().unwrap();
    drop(reader);
    let down = Command::new(&l.tapwire)
        .args(["lab", "down", "--name", &l.name])
        .stdin(Stdio::null())
        .stdout(closed)
        .output()
        .unwrap();
    assert!(
        down.status.success() && down.stderr.is_empty(),
        "{}: {}",
        down.status,
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(l.namespaces(), Vec::<String>::new());
    assert_gone(&running);
    assert!(
        stray.wait_timeout(Duration::from_secs(2)).is_some(),
        "a process the lab did not start survived down"
    );
    assert!(!l.state().exists());
}
