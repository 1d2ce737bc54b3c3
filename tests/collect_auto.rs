//! End-to-end: which input `tapwire collect` picks by itself (`--input auto`, the default) in a
//! lab namespace whose link `col0` holds the collector's addresses.
//!
//! - with no input flag it reads `col0` with AF_XDP and writes every packet exactly once
//!   (against tshark's decode of what was sent); loopback senders still arrive, on the sockets;
//! - with the XDP slot taken by another program it falls back to an AF_PACKET ring, says so in
//!   one start line and in the API, and still writes every packet exactly once; `--input ring`
//!   does the same by request;
//! - a flood of non-mirror traffic (UDP to another port, ICMP) is left to the kernel (counted
//!   by the XDP program; filtered out of a ring in the kernel), and the host stays reachable;
//! - after kill -9 no program is left on `col0`, and the next start takes it again;
//! - flags that contradict each other are usage errors (exit 2).
//!
//! Run as root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;
use tapwire_tests::collector::{self, Collector};
use tapwire_tests::netns::{COL_V4, Lab, poll_until, wait_until};
use tapwire_tests::oracle::assert_same_frames;
use tapwire_tests::senders::{self, MirrorSend};
use tapwire_tests::xdp::{host_reachable, input, xdp_on};

const STOP_WITHIN: Duration = Duration::from_millis(2500);

/// The start line's words for each outcome on the lab's link and on loopback.
const PICKED_XDP: &str = "col0 AF_XDP (native, copy)";
const PICKED_RING: &str = "col0 ring";
const LOOPBACK: &str = "lo sockets (loopback: its traffic stays on the sockets)";

/// `tapwire collect ARGS` in `col`, once its start line names what `col0` got.
fn start<'l>(lab: &'l Lab, col: &str, out: &std::path::Path, args: &[&str]) -> Collector<'l> {
    let c = Collector::start(lab, col, out, args);
    wait_until(Duration::from_secs(5), "the inputs' start line", || {
        c.proc.stderr().contains("inputs (--input ").then_some(())
    });
    c
}

/// The start line.
fn start_line(c: &Collector<'_>) -> String {
    let log = c.proc.stderr();
    log.lines()
        .find(|l| l.contains("inputs (--input "))
        .unwrap_or_else(|| panic!("no start line:\n{log}"))
        .to_string()
}

/// Sends every encapsulation (outer fragments too) from `snd` over the link and checks that
/// each frame was read by input `by` and written exactly once, as tshark decodes what was sent;
/// the socket inputs read none of it.
fn sent_once_through(lab: &Lab, snd: &str, c: &mut Collector<'_>, by: &str) {
    let sent = senders::send_mirror(
        lab,
        snd,
        &MirrorSend::default(),
        &lab.dir().join("sent.pcap"),
        false,
    );
    let api = c.wait_for_packets(&sent.sources, Duration::from_secs(10));
    assert_eq!(collector::source_packets(&api), sent.sources, "per source");
    // What else a ring's filter lets through (IPv6 with a hop-by-hop header: MLD) is counted
    // as not mirror.
    let not_mirror: u64 = api["totals"]["not_mirror"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(
        input(&api, by)["packets"].as_u64().unwrap(),
        sent.frames + not_mirror,
        "{}",
        api["inputs"]
    );
    for i in api["inputs"].as_array().unwrap() {
        if i["interface"].is_null() {
            assert_eq!(i["packets"], 0, "a socket input read a copy: {i}");
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    c.stop("TERM", STOP_WITHIN);
    assert_same_frames(by, &sent.oracle(), &c.session_frames(&api));
}

/// Ten VXLAN datagrams (VNI 4242) to 127.0.0.1:4789 from inside `col`.
fn send_on_loopback(lab: &Lab, col: &str) {
    let script = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         inner = bytes.fromhex('02000000000102000000000208004500001c000100004011f97d0a0000010a000002')\n\
         inner += bytes(8)\n\
         for i in range(10):\n    s.sendto(bytes.fromhex('0800000000109200') + inner, ('127.0.0.1', 4789))\n";
    lab.exec_ok(col, &["/usr/bin/python3", "-c", script]);
}

#[test]
fn by_default_the_link_is_read_with_af_xdp_once_and_loopback_stays_on_the_sockets() {
    let lab = Lab::new("auto-xdp");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let mut c = start(&lab, &col, &lab.dir().join("out"), &[]);
    let line = start_line(&c);
    assert!(
        line.contains(PICKED_XDP) && line.contains(LOOPBACK),
        "{line}"
    );
    assert!(line.contains(" INFO "), "nothing was refused: {line}");
    assert!(xdp_on(&lab, &col, "col0"));
    let api = c.sessions();
    let xdp = input(&api, "xdp col0");
    assert_eq!(xdp["kind"], "xdp", "{xdp}");
    assert_eq!(xdp["interface"], "col0", "{xdp}");
    assert_eq!(xdp["mode"], "native, copy", "{xdp}");
    assert_eq!(xdp["reason"], "--input auto: AF_XDP", "{xdp}");
    let udp = input(&api, "udp [::]:4789");
    assert_eq!(udp["kind"], "udp");
    assert!(udp["reason"].as_str().unwrap().contains(LOOPBACK), "{udp}");

    // Loopback: the sockets.
    send_on_loopback(&lab, &col);
    let key = ("127.0.0.1".to_string(), "vxlan".to_string(), 4242);
    let api = c.wait_for_packets(&[(key.clone(), 10)].into(), Duration::from_secs(5));
    assert_eq!(
        collector::source_packets(&api).get(&key),
        Some(&10),
        "{}",
        api["inputs"]
    );
    assert_eq!(input(&api, "udp [::]:4789")["packets"], 10);
    assert_eq!(input(&api, "xdp col0")["packets"], 0);
    c.stop("TERM", STOP_WITHIN);
    assert!(!xdp_on(&lab, &col, "col0"), "program left after SIGTERM");

    // The link: AF_XDP, each packet once.
    let mut c = start(&lab, &col, &lab.dir().join("link"), &[]);
    sent_once_through(&lab, &snd, &mut c, "xdp col0");
}

/// A program that passes every frame, attached to `col0` with a netlink attachment (it stays
/// until removed or until the namespace goes), so that tapwire's XDP is refused.
fn take_the_xdp_slot(lab: &Lab, col: &str) {
    tapwire_tests::require("clang");
    let src = lab.dir().join("pass.c");
    let obj = lab.dir().join("pass.o");
    std::fs::write(
        &src,
        "#define SEC(n) __attribute__((section(n), used))\nstruct xdp_md { unsigned int data; };\n\
         SEC(\"xdp\") int pass(struct xdp_md *ctx) { return 2; }\n\
         char _license[] SEC(\"license\") = \"GPL\";\n",
    )
    .unwrap();
    tapwire_tests::run_ok(std::process::Command::new("clang").args([
        "-O2",
        "-target",
        "bpf",
        "-c",
        src.to_str().unwrap(),
        "-o",
        obj.to_str().unwrap(),
    ]));
    lab.exec_ok(
        col,
        &[
            "ip",
            "link",
            "set",
            "dev",
            "col0",
            "xdpdrv",
            "obj",
            obj.to_str().unwrap(),
            "sec",
            "xdp",
        ],
    );
    assert!(xdp_on(lab, col, "col0"));
}

#[test]
fn with_the_xdp_slot_taken_it_falls_back_to_the_ring_and_says_why() {
    let lab = Lab::new("auto-ring");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    take_the_xdp_slot(&lab, &col);
    let mut c = start(&lab, &col, &lab.dir().join("out"), &[]);
    let line = start_line(&c);
    assert!(
        line.contains(" WARN ")
            && line.contains(&format!(
                "{PICKED_RING} (AF_XDP: attach XDP to col0 (another XDP program is attached)"
            )),
        "{line}"
    );
    let api = c.sessions();
    let ring = input(&api, "af_packet col0");
    assert_eq!(ring["kind"], "af_packet", "{ring}");
    let reason = ring["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("--input auto: ring (AF_XDP: attach XDP to col0"),
        "{reason}"
    );
    assert!(
        api["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["kind"] != "xdp"),
        "{}",
        api["inputs"]
    );
    sent_once_through(&lab, &snd, &mut c, "af_packet col0");
}

#[test]
fn input_ring_reads_the_link_with_a_ring_once() {
    let lab = Lab::new("input-ring");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let mut c = start(&lab, &col, &lab.dir().join("out"), &["--input", "ring"]);
    let line = start_line(&c);
    assert!(
        line.contains("inputs (--input ring): ")
            && line.contains(&format!("{PICKED_RING}, lo"))
            && line.contains(LOOPBACK),
        "{line}"
    );
    assert!(!xdp_on(&lab, &col, "col0"));
    assert_eq!(
        input(&c.sessions(), "af_packet col0")["reason"],
        "--input ring: ring"
    );
    sent_once_through(&lab, &snd, &mut c, "af_packet col0");
}

/// 20,000 UDP datagrams to a port no input has and 2,000 pings, to the collector's address.
fn flood(lab: &Lab, snd: &str) {
    let udp = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for i in range(20000):\n    s.sendto(b'x' * 64, ('{COL_V4}', 9999))\n"
    );
    lab.exec_ok(snd, &["/usr/bin/python3", "-c", &udp]);
    lab.exec_ok(snd, &["ping", "-f", "-c", "2000", "-W", "1", "-q", COL_V4]);
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn a_non_mirror_flood_is_left_to_the_kernel_counted_and_the_host_stays_reachable() {
    let lab = Lab::new("auto-flood");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let c = start(&lab, &col, &lab.dir().join("out"), &[]);
    assert!(start_line(&c).contains(PICKED_XDP));
    flood(&lab, &snd);
    host_reachable(&lab, &snd, &col);
    let api = wait_until(
        Duration::from_secs(5),
        "the program's counters read",
        || {
            let api = c.sessions();
            (u(&input(&api, "xdp col0")["passed_to_kernel"]) >= 22_000).then_some(api)
        },
    );
    // Nothing of it reached tapwire: the program passed it to the kernel, which answered.
    assert_eq!(
        u(&input(&api, "xdp col0")["packets"]),
        0,
        "{}",
        api["inputs"]
    );
    assert_eq!(u(&api["totals"]["packets"]), 0, "{}", api["totals"]);

    // A ring's kernel filter leaves it to the kernel too: tapwire reads none of it.
    drop(c);
    let lab = Lab::new("ring-flood");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let c = start(&lab, &col, &lab.dir().join("out"), &["--input", "ring"]);
    flood(&lab, &snd);
    host_reachable(&lab, &snd, &col);
    std::thread::sleep(Duration::from_millis(1500));
    let api = c.sessions();
    // Only what the filter keeps for the pipeline to judge reached tapwire (IPv6 with a
    // hop-by-hop header: the namespace's MLD reports, ICMPv6), each counted as not mirror;
    // none of the 2,000 pings and 20,000 datagrams.
    let not_mirror = api["totals"]["not_mirror"].as_object().unwrap();
    let n: u64 = not_mirror.values().map(u).sum();
    assert_eq!(
        u(&input(&api, "af_packet col0")["packets"]),
        n,
        "{}",
        api["inputs"]
    );
    assert!(n < 20, "{not_mirror:?}");
    for kind in ["udp_other", "tcp", "non_ip"] {
        assert!(!not_mirror.contains_key(kind), "{not_mirror:?}");
    }
}

#[test]
fn after_kill_9_no_program_is_left_and_the_next_start_takes_the_link_again() {
    let lab = Lab::new("auto-kill");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let mut c = start(&lab, &col, &lab.dir().join("out"), &[]);
    assert!(start_line(&c).contains(PICKED_XDP));
    assert!(xdp_on(&lab, &col, "col0"));
    c.proc.signal("KILL");
    c.proc.wait_timeout(Duration::from_secs(5)).expect("killed");
    let gone = poll_until(Duration::from_secs(5), || {
        (!xdp_on(&lab, &col, "col0")).then_some(())
    });
    assert!(gone.is_some(), "program still attached after kill -9");
    host_reachable(&lab, &snd, &col);
    let c = start(&lab, &col, &lab.dir().join("again"), &[]);
    assert!(start_line(&c).contains(PICKED_XDP), "{}", start_line(&c));
}

#[test]
fn contradicting_input_flags_are_usage_errors() {
    let tapwire = tapwire_tests::bin("tapwire");
    let off = [
        "--gre-v4", "off", "--gre-v6", "off", "--vxlan", "off", "--geneve", "off", "--tzsp", "off",
    ];
    let cases: [(Vec<&str>, &str); 4] = [
        (
            vec!["--interface", "eth9", "--xdp", "eth9"],
            "--interface eth9 and --xdp eth9: one input per interface",
        ),
        (
            vec!["--interface", "eth9", "--interface", "eth9"],
            "--interface eth9: given twice",
        ),
        (
            [&["--input", "xdp"][..], &off].concat(),
            "--input xdp: every GRE and UDP input is off",
        ),
        (vec!["--input", "fastest"], "invalid value 'fastest'"),
    ];
    for (args, want) in cases {
        let out = std::process::Command::new(&tapwire)
            .args(["collect", "--no-tui", "--api", "off"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
