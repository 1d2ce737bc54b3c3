//! End-to-end: the probe's fast path (complete frames through an AF_PACKET transmit ring, the
//! next hop's MAC address from rtnetlink) while the route and the next hop change under it,
//! and its fallbacks to the raw socket.
//!
//! The route tests build two ways from the probe's host to the collector:
//!
//! ```text
//!  vm ── vm0/tap1 ── host ── up0/ra0 ── ra ── ra1/ca0 ──┐
//!                         └─ up1/rb0 ── rb ── rb1/cb0 ──┴─ col (collector address on lo)
//! ```
//!
//! and capture both routers' sides with tcpdump: what reached `ra0`/`rb0` is what the probe
//! sent to each next hop (promiscuous: also frames addressed to a MAC address the router no
//! longer has); what left `ra1`/`rb1` is what each router forwarded. tshark decodes them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tapwire_tests::collector::{self, Collector};
use tapwire_tests::netns::{Lab, wait_until};
use tapwire_tests::oracle;
use tapwire_tests::probe::{Probe, STOP_WITHIN, SendPath};
use tapwire_tests::require;
use tapwire_tests::senders::Tcpdump;
use tapwire_tests::tshark::{self, num};

const SESSION: u64 = 11;
/// The MAC address router B takes in the middle of the run.
const NEW_MAC_B: &str = "02:80:00:00:0b:99";
const VM_V4: &str = "10.80.1.2";
const HOST_V4: &str = "10.80.1.1";

/// Addresses of one IP version in the two-router lab.
struct Plan {
    v6: bool,
    up0: &'static str,
    ra0: &'static str,
    up1: &'static str,
    rb0: &'static str,
    ra1: &'static str,
    ca0: &'static str,
    rb1: &'static str,
    cb0: &'static str,
    collector: &'static str,
    prefix: u8,
}

const V4: Plan = Plan {
    v6: false,
    up0: "10.80.3.1",
    ra0: "10.80.3.2",
    up1: "10.80.4.1",
    rb0: "10.80.4.2",
    ra1: "10.80.5.1",
    ca0: "10.80.5.2",
    rb1: "10.80.6.1",
    cb0: "10.80.6.2",
    collector: "10.80.9.2",
    prefix: 24,
};

const V6: Plan = Plan {
    v6: true,
    up0: "fd80:3::1",
    ra0: "fd80:3::2",
    up1: "fd80:4::1",
    rb0: "fd80:4::2",
    ra1: "fd80:5::1",
    ca0: "fd80:5::2",
    rb1: "fd80:6::1",
    cb0: "fd80:6::2",
    collector: "fd80:9::2",
    prefix: 64,
};

/// The namespaces of the two-router lab.
struct Routed {
    lab: Lab,
    vm: String,
    host: String,
    ra: String,
    rb: String,
    col: String,
    vm_mac: String,
    tap_mac: String,
}

impl Routed {
    fn new(tag: &str, p: &Plan) -> Routed {
        let mut lab = Lab::empty(&format!("fast-{tag}"));
        let vm = lab.add_ns("vm");
        let host = lab.add_ns("host");
        let ra = lab.add_ns("ra");
        let rb = lab.add_ns("rb");
        let col = lab.add_ns("col");
        lab.veth(&vm, "vm0", "", &host, "tap1", "");
        lab.veth(&host, "up0", "", &ra, "ra0", "");
        lab.veth(&host, "up1", "", &rb, "rb0", "");
        lab.veth(&ra, "ra1", "", &col, "ca0", "");
        lab.veth(&rb, "rb1", "", &col, "cb0", "");
        for (ns, ifname) in [
            (&host, "up0"),
            (&host, "up1"),
            (&ra, "ra0"),
            (&ra, "ra1"),
            (&rb, "rb0"),
            (&rb, "rb1"),
            (&col, "ca0"),
            (&col, "cb0"),
        ] {
            lab.exec_ok(ns, &["ip", "link", "set", ifname, "mtu", "9000"]);
        }
        lab.addr(&vm, "vm0", &format!("{VM_V4}/24"));
        lab.addr(&host, "tap1", &format!("{HOST_V4}/24"));
        let cidr = |a: &str| format!("{a}/{}", p.prefix);
        lab.addr(&host, "up0", &cidr(p.up0));
        lab.addr(&ra, "ra0", &cidr(p.ra0));
        lab.addr(&host, "up1", &cidr(p.up1));
        lab.addr(&rb, "rb0", &cidr(p.rb0));
        lab.addr(&ra, "ra1", &cidr(p.ra1));
        lab.addr(&col, "ca0", &cidr(p.ca0));
        lab.addr(&rb, "rb1", &cidr(p.rb1));
        lab.addr(&col, "cb0", &cidr(p.cb0));
        let host_len = if p.v6 { 128 } else { 32 };
        lab.addr(&col, "lo", &format!("{}/{host_len}", p.collector));
        let dst = format!("{}/{host_len}", p.collector);
        let ip = |v6: bool| if v6 { vec!["ip", "-6"] } else { vec!["ip"] };
        for (router, via) in [(&ra, p.ca0), (&rb, p.cb0)] {
            lab.exec_ok(
                router,
                &[
                    "sysctl",
                    "-qw",
                    "net.ipv4.ip_forward=1",
                    "net.ipv6.conf.all.forwarding=1",
                ],
            );
            let mut cmd = ip(p.v6);
            cmd.extend(["route", "add", &dst, "via", via]);
            lab.exec_ok(router, &cmd);
        }
        // Router B tells its neighbours when its MAC address changes (gratuitous ARP,
        // unsolicited neighbour advertisement), as hosts do.
        lab.exec_ok(
            &rb,
            &[
                "sysctl",
                "-qw",
                "net.ipv4.conf.rb0.arp_notify=1",
                "net.ipv6.conf.rb0.ndisc_notify=1",
            ],
        );
        let mut cmd = ip(p.v6);
        cmd.extend(["route", "add", &dst, "via", p.ra0, "dev", "up0"]);
        lab.exec_ok(&host, &cmd);
        let vm_mac = lab.mac(&vm, "vm0");
        let tap_mac = lab.mac(&host, "tap1");
        Routed {
            lab,
            vm,
            host,
            ra,
            rb,
            col,
            vm_mac,
            tap_mac,
        }
    }
}

/// One GRE packet of a capture, as tshark decodes it.
#[derive(Debug, Clone)]
struct Wire {
    time_ns: u128,
    dst_mac: String,
    src: String,
    seq: u64,
}

fn wire(path: &Path) -> Vec<Wire> {
    tshark::packets(path)
        .iter()
        .map(|l| {
            let ip = if tshark::field(l, "ipv6", "ipv6.src").is_some() {
                "ipv6"
            } else {
                "ip"
            };
            Wire {
                time_ns: epoch_ns(&tshark::field(l, "frame", "frame.time_epoch").unwrap()),
                dst_mac: tshark::field_nth(l, "eth", 0, "eth.dst").unwrap(),
                src: tshark::field_nth(l, ip, 0, &format!("{ip}.src")).unwrap(),
                seq: num(&tshark::field(l, "gre", "gre.sequence_number").expect("GRE sequence")),
            }
        })
        .collect()
}

fn epoch_ns(s: &str) -> u128 {
    let (secs, frac) = s.split_once('.').unwrap_or((s, "0"));
    secs.parse::<u128>().unwrap() * 1_000_000_000
        + format!("{frac:0<9}")[..9].parse::<u128>().unwrap()
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Waits until the probe's API says it sends fast with `key` = `want`; returns the time just
/// after that answer: every frame built for the path before was sent before it.
fn wait_for_fast(probe: &Probe<'_>, key: &str, want: &str) -> u128 {
    wait_until(
        Duration::from_secs(10),
        &format!("send.{key} = {want}"),
        || {
            let f = probe.flow();
            (f["send"]["path"] == "fast" && f["send"][key] == want).then_some(())
        },
    );
    now_ns()
}

/// The probe mirrors a VM's NIC to a collector reached through router A; during the run the
/// route moves to router B, and then B's MAC address changes. Checked on the routers' wires:
/// every frame went to the MAC address of the next hop it reached, none to A after the probe
/// took the new route, none to B's old address after it took the new MAC; sequence numbers
/// are contiguous across both next hops and both send paths; every frame decodes with good
/// checksums; the frames B's router dropped (sent to its old address before the probe heard
/// of the change) are exactly those the collector counts as lost.
fn route_and_next_hop_change(p: &Plan, tag: &str, extra: &[&str]) {
    require("trafgen");
    let t = Routed::new(tag, p);
    let dir = t.lab.dir().to_path_buf();
    let out = dir.join("out");
    let mut c = Collector::start(
        &t.lab,
        &t.col,
        &out,
        &["--vxlan", "off", "--geneve", "off", "--tzsp", "off"],
    );
    let gre = if p.v6 { "ip6 proto 47" } else { "ip proto 47" };
    let caps = [
        ("ra0", &t.ra),
        ("ra1", &t.ra),
        ("rb0", &t.rb),
        ("rb1", &t.rb),
    ]
    .map(|(ifname, ns)| {
        Tcpdump::start(&t.lab, ns, ifname, &dir.join(format!("{ifname}.pcap")), gre)
    });
    let nic = Tcpdump::start(&t.lab, &t.host, "tap1", &dir.join("nic.pcap"), "udp port 9");
    let session = SESSION.to_string();
    let mut args = vec![
        "--iface",
        "tap1",
        "--direction",
        "in",
        "--filter",
        "udp port 9",
        "--collector",
        p.collector,
        "--session",
        &session,
    ];
    args.extend_from_slice(extra);
    let probe = Probe::start(&t.lab, &t.host, SendPath::Auto, &args);
    let mac_a = t.lab.mac(&t.ra, "ra0");
    let mac_b = t.lab.mac(&t.rb, "rb0");

    // 12,000 frames 0.5 ms apart: 6 s of traffic.
    let cfg = dir.join("trafgen.cfg");
    std::fs::write(
        &cfg,
        format!(
            "{{ eth(da={}, sa={}), ipv4(saddr={VM_V4}, daddr={HOST_V4}), udp(sp=4000, dp=9), fill(0x41, 200) }}\n",
            t.tap_mac, t.vm_mac
        ),
    )
    .unwrap();
    let mut traffic = t.lab.spawn(
        &t.vm,
        &[
            "trafgen",
            "-o",
            "vm0",
            "-i",
            cfg.to_str().unwrap(),
            "-n",
            "12000",
            "-P",
            "1",
            "-q",
            "-C",
            "-t",
            "500us",
        ],
    );
    wait_for_fast(&probe, "next_hop", p.ra0);
    std::thread::sleep(Duration::from_millis(1500));
    let dst = format!("{}/{}", p.collector, if p.v6 { 128 } else { 32 });
    let mut cmd = if p.v6 { vec!["ip", "-6"] } else { vec!["ip"] };
    cmd.extend(["route", "replace", &dst, "via", p.rb0, "dev", "up1"]);
    t.lab.exec_ok(&t.host, &cmd);
    let t_route = wait_for_fast(&probe, "next_hop", p.rb0);
    assert_eq!(probe.flow()["send"]["interface"], "up1");
    std::thread::sleep(Duration::from_millis(1500));
    let t_mac_changing = now_ns();
    t.lab
        .exec_ok(&t.rb, &["ip", "link", "set", "rb0", "address", NEW_MAC_B]);
    let t_mac = wait_for_fast(&probe, "next_hop_mac", NEW_MAC_B);
    traffic.wait_ok(Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(200));

    let (n_nic, dropped) = nic.stop();
    assert_eq!(dropped, 0);
    let n = probe.settled("sent");
    let flow = probe.flow();
    let counters = &flow["counters"];
    assert_eq!(counters["captured"], n_nic, "{flow}");
    assert_eq!(n, n_nic, "{flow}");
    assert_eq!(counters["send_errors"], 0, "{flow}");
    let fast = counters["sent_fast"].as_u64().unwrap();
    // Through the kernel: the datagrams that resolve B and confirm its new address.
    assert!(fast > 0 && fast < n, "{fast} of {n} fast: {flow}");
    assert!(counters["path_changes"].as_u64().unwrap() >= 3, "{flow}");
    probe.stop();
    std::thread::sleep(Duration::from_millis(100));
    for cap in caps {
        let (_, dropped) = cap.stop();
        assert_eq!(dropped, 0);
    }
    let [to_a, from_a, to_b, from_b] =
        ["ra0", "ra1", "rb0", "rb1"].map(|i| wire(&dir.join(format!("{i}.pcap"))));

    // Every frame reached the next hop whose MAC address it carried.
    for w in &to_a {
        assert_eq!(
            w.dst_mac, mac_a,
            "router A got a frame for another MAC: {w:?}"
        );
        assert!(
            w.time_ns < t_route,
            "a frame to A after the probe took the route via B: {w:?}"
        );
    }
    for w in &to_b {
        assert!(w.dst_mac == mac_b || w.dst_mac == NEW_MAC_B, "{w:?}");
        if w.dst_mac == mac_b {
            assert!(
                w.time_ns < t_mac,
                "a frame to B's old MAC after the probe took the new one: {w:?}"
            );
        }
    }
    assert!(!to_a.is_empty() && !to_b.is_empty());
    // One switch each: A before B, B's old address before its new one.
    let max_a = to_a.iter().map(|w| w.seq).max().unwrap();
    assert!(
        to_b.iter().all(|w| w.seq > max_a),
        "A's frames all come first"
    );
    let old_b: Vec<u64> = to_b
        .iter()
        .filter(|w| w.dst_mac == mac_b)
        .map(|w| w.seq)
        .collect();
    let new_b: Vec<u64> = to_b
        .iter()
        .filter(|w| w.dst_mac == NEW_MAC_B)
        .map(|w| w.seq)
        .collect();
    assert!(!old_b.is_empty() && !new_b.is_empty());
    assert!(
        old_b.iter().max() < new_b.iter().min(),
        "B's old address before its new one"
    );

    // Contiguous across both next hops and both paths: each number once, none missing.
    let mut seqs: Vec<u64> = to_a.iter().chain(&to_b).map(|w| w.seq).collect();
    seqs.sort_unstable();
    let first = seqs[0];
    let want: Vec<u64> = (first..first + n).collect();
    assert_eq!(seqs, want, "sequence numbers of the frames to A and B");
    for i in ["ra0", "rb0"] {
        let bad = tshark::bad_checksums(&dir.join(format!("{i}.pcap")));
        assert!(bad.is_empty(), "{i}: bad checksums:\n{}", bad.join("\n"));
    }
    // Inner frames: what the VM's NIC carried, in order.
    let expected = oracle::frames(&dir.join("nic.pcap"));
    let mut inner: Vec<(u64, Vec<u8>)> = Vec::new();
    for (i, w) in [("ra0", &to_a), ("rb0", &to_b)] {
        let frames: Vec<Vec<u8>> = oracle::mirrored_frames(&dir.join(format!("{i}.pcap")))
            .into_values()
            .flatten()
            .collect();
        assert_eq!(
            frames.len(),
            w.len(),
            "{i}: tshark decapsulates every frame"
        );
        inner.extend(w.iter().map(|w| w.seq).zip(frames));
    }
    inner.sort_by_key(|(s, _)| *s);
    assert!(
        inner.iter().map(|(_, f)| f).eq(expected.iter()),
        "the mirrored frames are the VM NIC's, in order"
    );

    // What the routers passed on, and what B dropped: frames to its old address that arrived
    // after it changed (before the host heard of it).
    let fwd: BTreeSet<u64> = from_a.iter().chain(&from_b).map(|w| w.seq).collect();
    let lost: Vec<&Wire> = to_b.iter().filter(|w| !fwd.contains(&w.seq)).collect();
    for w in &lost {
        assert!(
            w.dst_mac == mac_b && w.time_ns >= t_mac_changing,
            "router B dropped a frame that was not for its old address: {w:?}"
        );
    }
    assert_eq!(fwd.len() as u64 + lost.len() as u64, n);

    // The collector: the route via B has another source address, so two sources; together
    // they are every forwarded frame, and the dropped ones are its only loss.
    let mut api = Value::Null;
    wait_until(
        Duration::from_secs(10),
        "the collector counts every frame",
        || {
            api = c.sessions();
            let total: u64 = collector::source_packets(&api).values().sum();
            (total == fwd.len() as u64).then_some(())
        },
    );
    let sources = collector::sources(&api);
    let srcs: BTreeSet<&str> = sources.keys().map(|k| k.0.as_str()).collect();
    assert_eq!(srcs, BTreeSet::from([p.up0, p.up1]), "{sources:?}");
    let lost_total: u64 = sources.values().map(|s| s["lost"].as_u64().unwrap()).sum();
    assert_eq!(lost_total, lost.len() as u64, "{sources:?}");
    c.stop("TERM", STOP_WITHIN);
}

#[test]
fn route_and_next_hop_change_ipv4() {
    route_and_next_hop_change(&V4, "route4", &[]);
}

/// The same over IPv6, GRE-TEB with a GRE checksum.
#[test]
fn route_and_next_hop_change_ipv6_gre_checksum() {
    route_and_next_hop_change(&V6, "route6", &["--encap", "gre", "--gre-checksum"]);
}

/// `ip neigh show ADDR dev IFNAME` in `ns`: the entry's state (`REACHABLE`, `STALE`, ...).
fn neigh_state(lab: &Lab, ns: &str, addr: &str, ifname: &str) -> String {
    let out = lab.exec_ok(ns, &["ip", "neigh", "show", addr, "dev", ifname]);
    out.split_whitespace().last().unwrap_or("").to_string()
}

/// The probe's flags for a flow of the VM's incoming pings to `collector`.
fn ping_flow<'a>(collector: &'a str, session: &'a str) -> Vec<&'a str> {
    vec![
        "--iface",
        "tap1",
        "--direction",
        "in",
        "--filter",
        "icmp",
        "--collector",
        collector,
        "--session",
        session,
    ]
}

fn ping(t: &Routed, n: u32) {
    ping_every(t, n, "0.02");
}

fn ping_every(t: &Routed, n: u32, interval_s: &str) {
    let count = n.to_string();
    t.lab.exec_ok(
        &t.vm,
        &["ping", "-c", &count, "-i", interval_s, "-q", HOST_V4],
    );
}

/// The next hop is not known when the probe starts: the stats say so, the first datagram goes
/// through the kernel (which resolves it) and the rest through the transmit ring. Later the
/// entry goes stale: the fast path, which never passes the kernel's neighbour code, sends one
/// datagram through the kernel so that it checks the entry again, and the entry leaves STALE.
#[test]
fn the_next_hop_is_resolved_and_a_stale_entry_confirmed_through_the_kernel() {
    let t = Routed::new("resolve", &V4);
    let dir = t.lab.dir().to_path_buf();
    let mut c = Collector::start(
        &t.lab,
        &t.col,
        &dir.join("out"),
        &["--vxlan", "off", "--geneve", "off", "--tzsp", "off"],
    );
    let to_a = Tcpdump::start(&t.lab, &t.ra, "ra0", &dir.join("ra0.pcap"), "ip proto 47");
    let session = SESSION.to_string();
    let probe = Probe::start(
        &t.lab,
        &t.host,
        SendPath::Auto,
        &ping_flow(V4.collector, &session),
    );
    let flow = probe.flow();
    assert_eq!(flow["send"]["path"], "raw", "{flow}");
    assert_eq!(flow["send"]["reason_code"], "next_hop_unresolved", "{flow}");
    let reason = flow["send"]["reason"].as_str().unwrap();
    assert!(reason.contains(V4.ra0), "{reason}");
    assert!(
        probe.metrics().contains(
            "tapwire_probe_send_path_info{flow=\"tap1\",mode=\"auto\",path=\"raw\",reason=\"next_hop_unresolved\""
        ),
        "{}",
        probe.metrics()
    );

    // 100 ms apart: the kernel resolves the next hop on the first and the probe learns it from
    // netlink before the last, also on a loaded machine (20 ms apart it once missed all ten).
    ping_every(&t, 10, "0.1");
    assert_eq!(probe.settled("sent"), 10);
    let flow = probe.flow();
    let mac_a = t.lab.mac(&t.ra, "ra0");
    assert_eq!(flow["send"]["path"], "fast", "{flow}");
    assert_eq!(flow["send"]["next_hop_mac"], mac_a.as_str(), "{flow}");
    let fast = flow["counters"]["sent_fast"].as_u64().unwrap();
    assert!(
        (1..10).contains(&fast),
        "the first through the kernel, then fast: {flow}"
    );

    t.lab.exec_ok(
        &t.host,
        &[
            "ip", "neigh", "change", V4.ra0, "dev", "up0", "lladdr", &mac_a, "nud", "stale",
        ],
    );
    assert_eq!(neigh_state(&t.lab, &t.host, V4.ra0, "up0"), "STALE");
    ping(&t, 10);
    // Only the kernel's own use of the entry moves it on (to DELAY, then a probe).
    wait_until(
        Duration::from_secs(5),
        "the stale entry to be checked",
        || (neigh_state(&t.lab, &t.host, V4.ra0, "up0") != "STALE").then_some(()),
    );
    assert_eq!(probe.settled("sent"), 20);
    let flow = probe.flow();
    let raw_after = 20 - flow["counters"]["sent_fast"].as_u64().unwrap();
    assert!(raw_after > 10 - fast, "one more through the kernel: {flow}");
    assert_eq!(flow["send"]["path"], "fast", "{flow}");
    probe.stop();
    std::thread::sleep(Duration::from_millis(100));
    to_a.stop();
    let frames = wire(&dir.join("ra0.pcap"));
    assert_eq!(frames.len(), 20);
    let first = frames[0].seq;
    for (i, w) in frames.iter().enumerate() {
        assert_eq!(w.seq, first + i as u64, "in order, contiguous: {w:?}");
        assert_eq!(w.dst_mac, mac_a);
        assert_eq!(w.src, V4.up0, "one source, whichever path: {w:?}");
    }
    let bad = tshark::bad_checksums(&dir.join("ra0.pcap"));
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    let api = c.wait_for_packets(
        &[((V4.up0.to_string(), "erspan-ii".to_string(), SESSION), 20)].into(),
        Duration::from_secs(10),
    );
    for (k, src) in collector::sources(&api) {
        assert_eq!(src["packets"], 20, "{k:?}: {src}");
        assert_eq!(src["lost"], 0, "{k:?}: {src}");
    }
    c.stop("TERM", STOP_WITHIN);
}

/// A lab with one uplink: `vm` -- `host` -- `col`, `up0` (10.80.2.1) <-> `col0` (10.80.2.2).
fn one_uplink(tag: &str) -> Routed {
    let mut lab = Lab::empty(&format!("fast-{tag}"));
    let vm = lab.add_ns("vm");
    let host = lab.add_ns("host");
    let col = lab.add_ns("col");
    lab.veth(&vm, "vm0", "", &host, "tap1", "");
    lab.veth(&host, "up0", "", &col, "col0", "");
    lab.addr(&vm, "vm0", &format!("{VM_V4}/24"));
    lab.addr(&host, "tap1", &format!("{HOST_V4}/24"));
    lab.addr(&host, "up0", "10.80.2.1/24");
    lab.addr(&col, "col0", "10.80.2.2/24");
    let vm_mac = lab.mac(&vm, "vm0");
    let tap_mac = lab.mac(&host, "tap1");
    Routed {
        lab,
        vm,
        // No routers here.
        ra: String::new(),
        rb: String::new(),
        host,
        col,
        vm_mac,
        tap_mac,
    }
}

/// Pings from the VM mirrored to `collector` with `args`: the probe's flow afterwards, and the
/// collector's count of them.
fn mirror_pings(t: &Routed, col_ns: &str, collector: &str, args: &[&str]) -> Value {
    let dir = t.lab.dir().join(format!("out-{col_ns}"));
    let mut c = Collector::start(
        &t.lab,
        col_ns,
        &dir,
        &["--vxlan", "off", "--geneve", "off", "--tzsp", "off"],
    );
    let session = SESSION.to_string();
    let mut all = ping_flow(collector, &session);
    all.extend_from_slice(args);
    let probe = Probe::start(&t.lab, &t.host, SendPath::Auto, &all);
    ping(t, 10);
    assert_eq!(probe.settled("sent"), 10);
    let flow = probe.flow();
    let metrics = probe.metrics();
    assert!(
        metrics.contains("tapwire_probe_sent_fast_packets_total{flow=\"tap1\"} 0"),
        "{metrics}"
    );
    let code = flow["send"]["reason_code"].as_str().unwrap().to_string();
    assert!(
        metrics.contains(&format!("path=\"raw\",reason=\"{code}\"")),
        "{metrics}"
    );
    let stderr = probe.stop();
    let reason = flow["send"]["reason"].as_str().unwrap();
    assert!(stderr.contains(reason), "the log says why:\n{stderr}");
    assert!(
        stderr.contains(&format!("path raw ({reason})")),
        "and the stats line:\n{stderr}"
    );
    let mut api = Value::Null;
    wait_until(
        Duration::from_secs(10),
        "the collector counts the pings",
        || {
            api = c.sessions();
            (collector::source_packets(&api).values().sum::<u64>() == 10).then_some(())
        },
    );
    for (k, src) in collector::sources(&api) {
        assert_eq!(src["lost"], 0, "{k:?}: {src}");
    }
    c.stop("TERM", STOP_WITHIN);
    flow
}

/// An uplink the fast path does not serve (a VXLAN tunnel): everything goes through the raw
/// socket, the stats say why, and everything arrives. With `--send-path fast` the same is
/// also the flow's error.
#[test]
fn a_tunnel_uplink_falls_back_to_the_raw_socket_and_says_why() {
    let t = one_uplink("vxlan");
    for (ns, remote) in [(&t.host, "10.80.2.2"), (&t.col, "10.80.2.1")] {
        t.lab.exec_ok(
            ns,
            &[
                "ip",
                "link",
                "add",
                "vx0",
                "type",
                "vxlan",
                "id",
                "42",
                "remote",
                remote,
                "dstport",
                "4789",
                "dev",
                if ns == &t.host { "up0" } else { "col0" },
            ],
        );
        t.lab.exec_ok(ns, &["ip", "link", "set", "vx0", "up"]);
    }
    t.lab.addr(&t.host, "vx0", "10.80.8.1/24");
    t.lab.addr(&t.col, "vx0", "10.80.8.2/24");
    for (args, strict) in [(&[][..], false), (&["--send-path", "fast"][..], true)] {
        let flow = mirror_pings(&t, &t.col, "10.80.8.2", args);
        let send = &flow["send"];
        assert_eq!(send["path"], "raw", "{flow}");
        assert_eq!(send["reason_code"], "tunnel", "{flow}");
        assert_eq!(send["reason"], "vx0 is a vxlan tunnel", "{flow}");
        assert_eq!(flow["counters"]["sent_fast"], 0, "{flow}");
        let error = flow["error"].as_str().unwrap_or("");
        assert_eq!(
            error.contains("fast path required but unavailable"),
            strict,
            "{flow}"
        );
    }
}

/// A collector on the probe's own host: the raw socket (over loopback) serves it.
#[test]
fn a_local_collector_is_served_by_the_raw_socket() {
    let t = one_uplink("local");
    let flow = mirror_pings(&t, &t.host, "10.80.2.1", &[]);
    assert_eq!(flow["send"]["reason_code"], "local", "{flow}");
    assert_eq!(
        flow["send"]["reason"], "the collector is an address of this host",
        "{flow}"
    );
}
