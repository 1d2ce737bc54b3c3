//! End-to-end: `tapwire collect --xdp col0`, the AF_XDP input, in a lab namespace.
//!
//! - every encapsulation (ERSPAN I/II/III, GRE-TEB, VXLAN, GENEVE, TZSP over IPv4 and IPv6,
//!   outer fragments included) from the scapy sender is written exactly once, byte-identical
//!   to tshark's decode of what was sent and to what the raw-socket input writes of the same
//!   packets replayed, in the order sent; every frame took the XDP path and the IP stack saw
//!   none (nstat) and answered no sender with ICMP;
//! - ping and TCP to the collector's namespace work while the program is attached, and the
//!   program is gone after the collector exits (SIGTERM and kill -9: `ip link`, bpftool);
//! - a flood of non-mirror traffic is passed by the program and never counted as mirror;
//! - an interface that vanishes is reported and survived, and taken again when it is back;
//! - an interface whose XDP slot is taken falls back to the sockets with a log line.
//!
//! Run as root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tapwire_tests::collector::{self, Collector};
use tapwire_tests::netns::{COL_V4, Lab, poll_until, wait_until};
use tapwire_tests::oracle::assert_same_frames;
use tapwire_tests::senders::{self, MirrorSend};
use tapwire_tests::xdp::{delta, host_reachable, input, nstat, xdp_on};

const STOP_WITHIN: Duration = Duration::from_millis(2500);
const ATTACHED: &str = "XDP input: mirror traffic on col0 is read before the IP stack";

/// `tapwire collect --xdp col0` in `col`, once its XDP input says it is attached.
fn start_xdp<'l>(lab: &'l Lab, col: &str, out: &std::path::Path) -> Collector<'l> {
    let c = Collector::start(lab, col, out, &["--xdp", "col0"]);
    wait_until(Duration::from_secs(5), "the XDP input's start line", || {
        c.proc.stderr().contains(ATTACHED).then_some(())
    });
    c
}

#[test]
fn every_packet_is_written_once_byte_identical_to_the_raw_sockets_and_the_stack_never_sees_it() {
    let lab = Lab::new("xdp-once");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.dir().join("xdp");
    let mut c = start_xdp(&lab, &col, &out);
    let log = c.proc.stderr();
    assert!(log.contains("native mode"), "veth has native XDP:\n{log}");
    assert!(xdp_on(&lab, &col, "col0"));

    let before = nstat(&lab, &col);
    let sent = senders::send_mirror(
        &lab,
        &snd,
        &MirrorSend::default(),
        &lab.dir().join("sent.pcap"),
        false,
    );
    // Nothing else talks in the namespace until `after` (the API polls below go over lo).
    std::thread::sleep(Duration::from_millis(500));
    let after = nstat(&lab, &col);
    let expected = sent.oracle();
    let api = c.wait_for_packets(&sent.sources, Duration::from_secs(10));
    assert_eq!(collector::source_packets(&api), sent.sources, "per source");
    let xdp = input(&api, "xdp col0");
    assert!(xdp["error"].is_null(), "{xdp}");
    assert_eq!(xdp["kernel_drops"], 0, "{xdp}");
    // Every frame, outer fragments included, took the XDP path; the stack saw none of them (a
    // few frames of the namespace's own IPv6 housekeeping may come in the same window).
    assert_eq!(xdp["packets"], sent.frames, "{xdp}");
    let stack = delta(&before, &after, "IpInReceives") + delta(&before, &after, "Ip6InReceives");
    assert!(stack <= 4, "the stack saw {stack} frames");
    for key in ["IpReasmReqds", "Ip6ReasmReqds"] {
        assert_eq!(
            delta(&before, &after, key),
            0,
            "{key}: the kernel reassembled"
        );
    }
    for key in [
        "IcmpOutDestUnreachs",
        "Icmp6OutDestUnreachs",
        "IpInUnknownProtos",
        "UdpNoPorts",
        "Udp6NoPorts",
    ] {
        assert_eq!(delta(&before, &after, key), 0, "{key}");
    }
    host_reachable(&lab, &snd, &col);
    std::thread::sleep(Duration::from_millis(1500));
    c.stop("TERM", STOP_WITHIN);
    assert!(!xdp_on(&lab, &col, "col0"), "program left after SIGTERM");
    let files = c.session_frames(&api);
    // In order: a sender's packets, fragmented or not, all came through the one input.
    assert_same_frames("the XDP input's files", &expected, &files);

    // The same packets replayed into the raw-socket input: the same files, byte for byte.
    let raw_out = lab.dir().join("raw");
    let mut raw = Collector::start(&lab, &col, &raw_out, &["--input", "sockets"]);
    senders::tcpreplay(&lab, &snd, "snd0", &sent.pcap, 2000);
    let raw_api = raw.wait_for_packets(&sent.sources, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1500));
    raw.stop("TERM", STOP_WITHIN);
    let raw_files = raw.session_frames(&raw_api);
    assert_eq!(collector::source_packets(&raw_api), sent.sources);
    assert_same_frames("raw sockets against tshark", &expected, &raw_files);
    assert_same_frames("raw sockets against the XDP input", &files, &raw_files);
}

#[test]
fn after_kill_9_the_program_is_gone_and_the_host_reachable() {
    let lab = Lab::new("xdp-kill");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.dir().join("out");
    let mut c = start_xdp(&lab, &col, &out);
    assert!(xdp_on(&lab, &col, "col0"));
    host_reachable(&lab, &snd, &col);
    c.proc.signal("KILL");
    c.proc.wait_timeout(Duration::from_secs(5)).expect("killed");
    let gone = poll_until(Duration::from_secs(5), || {
        (!xdp_on(&lab, &col, "col0")).then_some(())
    });
    assert!(gone.is_some(), "program still attached after kill -9");
    host_reachable(&lab, &snd, &col);
}

#[test]
fn a_non_mirror_flood_is_passed_and_never_counted() {
    let lab = Lab::new("xdp-flood");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.dir().join("out");
    let mut c = start_xdp(&lab, &col, &out);
    // 20,000 UDP datagrams to a port no input has, and to the collector's address.
    let flood = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for i in range(20000):\n    s.sendto(b'x' * 64, ('{COL_V4}', 9999))\n"
    );
    lab.exec_ok(&snd, &["/usr/bin/python3", "-c", &flood]);
    std::thread::sleep(Duration::from_millis(1500));
    let api = c.sessions();
    assert_eq!(input(&api, "xdp col0")["packets"], 0, "{}", api["inputs"]);
    assert_eq!(api["totals"]["packets"], 0, "{}", api["totals"]);
    assert_eq!(api["totals"]["not_mirror"], serde_json::json!({}));
    c.stop("TERM", STOP_WITHIN);
    // The program's own count, logged at exit: it passed them all.
    let log = c.proc.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("XDP program counters at exit"))
        .unwrap_or_else(|| panic!("no counters line:\n{log}"));
    let passed: u64 = line
        .split("passed: ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no passed count: {line}"));
    assert!(passed >= 20_000, "{line}");
    assert!(line.contains("steered: 0,"), "{line}");
}

#[test]
fn an_interface_that_vanishes_is_reported_survived_and_taken_again() {
    let lab = Lab::new("xdp-vanish");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    // A second link, made inside the namespaces (never in the test's own).
    let add_mir = |lab: &Lab| {
        lab.exec_ok(
            &snd,
            &[
                "ip", "link", "add", "snd1", "type", "veth", "peer", "name", "mir0", "netns", &col,
            ],
        );
        lab.exec_ok(&snd, &["ip", "link", "set", "snd1", "up"]);
        lab.exec_ok(&col, &["ip", "link", "set", "mir0", "up"]);
        lab.addr(&snd, "snd1", "10.78.0.1/24");
        lab.addr(&col, "mir0", "10.78.0.2/24");
    };
    add_mir(&lab);
    let out = lab.dir().join("out");
    let c = Collector::start(&lab, &col, &out, &["--xdp", "col0", "--xdp", "mir0"]);
    wait_until(Duration::from_secs(5), "both XDP inputs", || {
        let e = c.proc.stderr();
        (e.contains(ATTACHED) && e.contains("mirror traffic on mir0")).then_some(())
    });
    lab.exec_ok(&snd, &["ip", "link", "del", "snd1"]);
    let api = wait_until(
        Duration::from_secs(10),
        "the vanished interface reported",
        || {
            let api = c.sessions();
            let e = input(&api, "xdp mir0")["error"]
                .as_str()
                .unwrap_or("")
                .to_string();
            e.contains("gone").then_some(api)
        },
    );
    assert!(input(&api, "xdp col0")["error"].is_null());
    // The collector goes on through col0.
    let via_col0 = MirrorSend::erspan_ii(20);
    let sent = senders::send_mirror(&lab, &snd, &via_col0, &lab.dir().join("a.pcap"), false);
    let api = c.wait_for_packets(&sent.sources, Duration::from_secs(10));
    // Every frame, outer fragments included, through col0's XDP input.
    assert_eq!(
        input(&api, "xdp col0")["packets"],
        sent.frames,
        "{}",
        api["inputs"]
    );
    for (k, n) in &sent.sources {
        assert_eq!(collector::source_packets(&api)[k], *n, "{k:?}: once each");
    }

    // Back: taken again, and what it carries is steered.
    add_mir(&lab);
    wait_until(Duration::from_secs(10), "mir0 taken again", || {
        input(&c.sessions(), "xdp mir0")["error"]
            .is_null()
            .then_some(())
    });
    let via_mir0 = MirrorSend {
        iface: "snd1".into(),
        dst4: "10.78.0.2".into(),
        dst_mac: lab.mac(&col, "mir0"),
        src4: "10.78.0.1x".into(),
        session_base: 300,
        ..via_col0
    };
    let sent = senders::send_mirror(&lab, &snd, &via_mir0, &lab.dir().join("b.pcap"), false);
    let api = c.wait_for_packets(&sent.sources, Duration::from_secs(10));
    assert!(
        input(&api, "xdp mir0")["packets"].as_u64().unwrap() > 0,
        "{}",
        api["inputs"]
    );
    for (k, n) in &sent.sources {
        assert_eq!(collector::source_packets(&api)[k], *n, "{k:?}: once each");
    }
}

#[test]
fn an_interface_whose_xdp_is_taken_falls_back_to_the_sockets() {
    let lab = Lab::new("xdp-busy");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let first = Collector::start(&lab, &col, &lab.dir().join("first"), &["--xdp", "col0"]);
    wait_until(
        Duration::from_secs(5),
        "the first collector's XDP input",
        || first.proc.stderr().contains(ATTACHED).then_some(()),
    );
    let tapwire = tapwire_tests::bin("tapwire");
    let second_out = lab.dir().join("second");
    let mut second = lab.spawn(
        &col,
        &[
            tapwire.to_str().unwrap(),
            "collect",
            "--no-tui",
            "--out",
            second_out.to_str().unwrap(),
            "--api",
            "127.0.0.1:9751",
            "--xdp",
            "col0",
        ],
    );
    let log = wait_until(
        Duration::from_secs(10),
        "the second collector's fallback",
        || {
            let e = second.stderr();
            e.contains("XDP refused on col0").then_some(e)
        },
    );
    assert!(
        log.contains("sockets receive its mirror traffic instead"),
        "{log}"
    );
    assert!(
        second.try_wait().is_none(),
        "the second collector exited:\n{log}"
    );
    second.signal("TERM");
    second
        .wait_timeout(STOP_WITHIN)
        .expect("second collector stops");
    // The first one's program is untouched.
    assert!(xdp_on(&lab, &col, "col0"));
    host_reachable(&lab, &snd, &col);
}

/// `--xdp IF` on an interface whose MTU passes frames longer than the program steers would
/// split a source over two inputs (the long frames reach the sockets, out of order with the
/// rest): refused at start, naming the MTU and the fix, and nothing is left attached.
#[test]
fn a_named_interface_whose_mtu_passes_longer_frames_than_steered_is_refused_at_start() {
    let lab = Lab::new("xdp-mtu");
    lab.jumbo();
    let col = lab.ns("col").to_string();
    let tapwire = tapwire_tests::bin("tapwire");
    let out = lab.dir().join("out");
    let mut p = lab.spawn(
        &col,
        &[
            tapwire.to_str().unwrap(),
            "collect",
            "--no-tui",
            "--out",
            out.to_str().unwrap(),
            "--api",
            "off",
            "--xdp",
            "col0",
        ],
    );
    let status = p.wait_timeout(Duration::from_secs(10));
    let err = p.stderr();
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{err}");
    assert!(err.contains("input xdp col0: col0 has MTU 9500"), "{err}");
    assert!(err.contains("ip link set col0 mtu 3822"), "{err}");
    assert!(!xdp_on(&lab, &col, "col0"));
}

/// An MTU raised past what the program steers while the XDP input runs: it lets go of the
/// interface (the sockets then receive all of it, long frames and short, in order) and says
/// why; lowered again, it is taken again. A bridge (no ports) runs the program in generic mode,
/// where the kernel lets the MTU change (on veth a native program caps it).
#[test]
fn an_mtu_raised_past_what_is_steered_leaves_the_interface_to_the_sockets() {
    let lab = Lab::new("xdp-mtu-up");
    let col = lab.ns("col").to_string();
    lab.exec_ok(&col, &["ip", "link", "add", "dum0", "type", "bridge"]);
    lab.exec_ok(&col, &["ip", "link", "set", "dum0", "up"]);
    lab.addr(&col, "dum0", "10.79.0.2/24");
    let out = lab.dir().join("out");
    let c = Collector::start(&lab, &col, &out, &["--xdp", "dum0"]);
    let attached = "XDP input: mirror traffic on dum0 is read before the IP stack";
    wait_until(Duration::from_secs(5), "the XDP input on dum0", || {
        c.proc.stderr().contains(attached).then_some(())
    });
    assert!(xdp_on(&lab, &col, "dum0"));
    lab.exec_ok(&col, &["ip", "link", "set", "dum0", "mtu", "9000"]);
    let log = wait_until(Duration::from_secs(10), "the MTU change noticed", || {
        let e = c.proc.stderr();
        e.contains("XDP refused on dum0").then_some(e)
    });
    assert!(
        log.contains("MTU of dum0 changed from 1500 to 9000"),
        "{log}"
    );
    assert!(log.contains("dum0 has MTU 9000"), "{log}");
    assert!(!xdp_on(&lab, &col, "dum0"));
    // The API's snapshot is published once a second.
    wait_until(Duration::from_secs(5), "the refusal in the API", || {
        input(&c.sessions(), "xdp dum0")["error"]
            .as_str()
            .is_some_and(|e| e.contains("dum0 has MTU 9000"))
            .then_some(())
    });
    lab.exec_ok(&col, &["ip", "link", "set", "dum0", "mtu", "1500"]);
    wait_until(Duration::from_secs(10), "dum0 taken again", || {
        (c.proc.stderr().matches(attached).count() == 2).then_some(())
    });
    assert!(xdp_on(&lab, &col, "dum0"));
}

/// Without CAP_IPC_LOCK the kernel charges the UMEM to RLIMIT_MEMLOCK: a limit below the
/// default 64 MiB (6 MiB, under the usual 8 MiB hard limit, which only CAP_SYS_RESOURCE may
/// raise) cuts the UMEM to what fits (halved down to 4 MiB), says so, and the input runs.
#[test]
fn a_locked_memory_limit_cuts_the_umem_and_says_so() {
    for tool in ["setpriv", "prlimit"] {
        tapwire_tests::require(tool);
    }
    let lab = Lab::new("xdp-memlock");
    let col = lab.ns("col").to_string();
    let tapwire = tapwire_tests::bin("tapwire");
    let out = lab.dir().join("out");
    let mut p = lab.spawn(
        &col,
        &[
            "setpriv",
            "--bounding-set=-ipc_lock",
            "--inh-caps=-ipc_lock",
            "prlimit",
            "--memlock=6291456:6291456",
            tapwire.to_str().unwrap(),
            "collect",
            "--no-tui",
            "--out",
            out.to_str().unwrap(),
            "--api",
            "off",
            "--xdp",
            "col0",
        ],
    );
    let log = wait_until(
        Duration::from_secs(10),
        "the XDP input's start line",
        || {
            let e = p.stderr();
            e.contains(ATTACHED).then_some(e)
        },
    );
    assert!(
        log.contains("XDP UMEM on col0 cut to 4 MiB by the locked-memory limit"),
        "{log}"
    );
    assert!(log.contains("4 MiB of UMEM in 2048-byte chunks"), "{log}");
    assert!(xdp_on(&lab, &col, "col0"));
    p.signal("TERM");
    p.wait_timeout(STOP_WITHIN).expect("collector stops");
}
