//! Open vSwitch 3.1's userspace datapath as a real ERSPAN / GRE sender to `tapwire collect`.
//!
//! Three hosts hang off an OVS bridge; six mirrors copy their ports' traffic to tunnel ports:
//! ERSPAN II and III over IPv4 (three sessions on one shared sequence counter), ERSPAN II and
//! III over IPv6 (`ip6erspan`, two sessions on another shared counter) and GRE-TEB with its own
//! sequence. Real traffic (ping, iperf3 TCP) flows through all of them at once. The oracles:
//! tcpdump on each mirrored host port ("what was on the wire") and tcpdump on OVS's end of the
//! collector's link (what OVS sent: on the collector's end, an AF_XDP input takes the mirror
//! traffic before any tap sees it), both read with tshark.
//!
//! The facts about what OVS emits (tests/senders/OVS.md) are asserted here from the capture of
//! the collector's link, so a different OVS shows up as a failing test, not a stale note.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use tapwire_tests::collector::{self, Collector};
use tapwire_tests::oracle::{self, Key, assert_same_frames};
use tapwire_tests::ovs::{Ovs, Tunnel, host_ip};
use tapwire_tests::senders::Tcpdump;
use tapwire_tests::tshark::{self, num};
use tapwire_tests::{TempDir, bin, require, run_ok};

/// (tunnel port, mirrored host, tunnel).
const MIRRORS: [(&str, usize, Tunnel); 6] = [
    (
        "ers2a",
        1,
        Tunnel::ErspanII {
            key: 1,
            index: 0x7,
            v6: false,
        },
    ),
    (
        "ers3",
        2,
        Tunnel::ErspanIII {
            key: 2,
            hwid: 4,
            egress: true,
            v6: false,
        },
    ),
    (
        "ers2b",
        3,
        Tunnel::ErspanII {
            key: 3,
            index: 0x30,
            v6: false,
        },
    ),
    (
        "gre1",
        1,
        Tunnel::Gre {
            key: 4,
            seq: true,
            csum: false,
        },
    ),
    (
        "ers6a",
        2,
        Tunnel::ErspanIII {
            key: 5,
            hwid: 9,
            egress: false,
            v6: true,
        },
    ),
    (
        "ers6b",
        3,
        Tunnel::ErspanII {
            key: 6,
            index: 0x3,
            v6: true,
        },
    ),
];

fn key_of(t: &Tunnel) -> Key {
    let (kind, id) = t.kind_id();
    (t.src().to_string(), kind.to_string(), id)
}

/// Real traffic between the three hosts through the switch, all at once: pings of two sizes in
/// a ring and an iperf3 TCP stream h1 -> h2 at 4 Mbit/s for one second.
fn traffic(ovs: &Ovs) {
    require("iperf3");
    require("ping");
    let lab = &ovs.lab;
    let server = lab.spawn(ovs.host(2), &["iperf3", "-s", "-1", "-p", "5201"]);
    std::thread::sleep(Duration::from_millis(300));
    let mut pings = Vec::new();
    for (from, to, size) in [(1, 2, "56"), (2, 3, "1400"), (3, 1, "1472"), (1, 3, "200")] {
        pings.push(lab.spawn(
            ovs.host(from),
            &[
                "ping",
                "-q",
                "-c",
                "40",
                "-i",
                "0.02",
                "-s",
                size,
                &host_ip(to),
            ],
        ));
    }
    let mut client = lab.spawn(
        ovs.host(1),
        &[
            "iperf3",
            "-c",
            &host_ip(2),
            "-p",
            "5201",
            "-t",
            "1",
            "-b",
            "4M",
            "-M",
            "1400",
        ],
    );
    client.wait_ok(Duration::from_secs(15));
    for mut p in pings {
        let out = p.wait_ok(Duration::from_secs(15));
        assert!(
            out.contains(" 0% packet loss"),
            "ping through OVS lost packets: {out}"
        );
    }
    drop(server);
}

/// Sorted copy, for comparing captures taken at two different points as multisets.
fn sorted(v: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut v = v.to_vec();
    v.sort();
    v
}

#[test]
fn ovs_mirror_sessions_are_collected_exactly_without_phantom_loss() {
    let t0 = std::time::Instant::now();
    let phase = |what: &str| eprintln!("[{:5.1} s] {what}", t0.elapsed().as_secs_f64());
    let ovs = Ovs::start("ovs", 3);
    phase("OVS up");
    for (port, host, tunnel) in &MIRRORS {
        ovs.mirror(port, &[&format!("p{host}")], *tunnel);
    }
    let lab = &ovs.lab;
    let col = ovs.col().to_string();
    let out = lab.dir().join("out");
    let mut c = Collector::start(lab, &col, &out, &[]);

    let wire_pcap = lab.dir().join("col0.pcap");
    let wire = Tcpdump::start(
        lab,
        ovs.ns(),
        "up0",
        &wire_pcap,
        "ip proto 47 or ip6 proto 47",
    );
    let hosts: Vec<Tcpdump> = (1..=3)
        .map(|i| {
            Tcpdump::start(
                lab,
                ovs.host(i),
                "eth0",
                &lab.dir().join(format!("h{i}.pcap")),
                "",
            )
        })
        .collect();

    phase("collector and captures up");
    traffic(&ovs);
    phase("traffic done");
    std::thread::sleep(Duration::from_millis(500));
    for (i, h) in hosts.into_iter().enumerate() {
        let (_, dropped) = h.stop();
        assert_eq!(dropped, 0, "tcpdump on h{} dropped packets", i + 1);
    }
    let (_, dropped) = wire.stop();
    assert_eq!(dropped, 0, "tcpdump on col0 dropped packets");

    // What was on each mirrored port, and what OVS sent for it.
    let on_port: BTreeMap<usize, Vec<Vec<u8>>> = (1..=3)
        .map(|i| (i, oracle::frames(&lab.dir().join(format!("h{i}.pcap")))))
        .collect();
    let wire_packets = tshark::packets(&wire_pcap);
    let sent = oracle::from_packets(&wire_packets);
    let want: BTreeMap<Key, u64> = MIRRORS
        .iter()
        .map(|(_, host, t)| (key_of(t), on_port[host].len() as u64))
        .collect();
    eprintln!("frames per mirror: {want:?}");
    assert!(
        want.values().all(|n| *n >= 200),
        "too little traffic through the mirrors: {want:?}"
    );
    for (_, host, t) in &MIRRORS {
        let key = key_of(t);
        assert!(
            sorted(&sent[&key]) == sorted(&on_port[host]),
            "{key:?}: OVS did not send exactly the frames of p{host} ({} sent, {} on the port)",
            sent[&key].len(),
            on_port[host].len()
        );
    }
    assert_ovs_facts(&wire_packets);
    phase("oracles decoded");

    // The collector: every source, every packet, no loss although OVS numbers the sessions
    // from shared counters.
    let api = c.wait_for_packets(&want, Duration::from_secs(10));
    assert_eq!(
        collector::source_packets(&api),
        want,
        "per-source packets in /api/v1/sessions vs tcpdump on the mirrored ports"
    );
    for (key, s) in collector::sources(&api) {
        for field in ["lost", "duplicates", "reordered"] {
            assert_eq!(s[field], 0, "{key:?} {field} (OVS's shared counter): {s}");
        }
        let expected_seq = if key.1 == "gre" {
            "per-source"
        } else {
            "shared-by-sender"
        };
        assert_eq!(s["sequence"], expected_seq, "{key:?}: {s}");
    }
    c.stop("TERM", Duration::from_millis(2500));
    let got = c.session_frames(&api);
    phase("collector files read");
    // In the order OVS sent them, byte for byte.
    assert_same_frames("tapwire collect of OVS", &sent, &got);

    // The offline pipeline on the same wire reports no phantom loss either.
    let tmp = TempDir::new("ovs-decap");
    let report: Value = serde_json::from_str(&run_ok(
        std::process::Command::new(bin("tapwire"))
            .arg("decap")
            .arg(&wire_pcap)
            .arg("--out")
            .arg(tmp.path())
            .arg("--json"),
    ))
    .unwrap();
    for s in report["sources"].as_array().unwrap() {
        assert_eq!(s["lost"], 0, "tapwire decap of OVS's output: {s}");
    }
}

/// What OVS 3.1's userspace datapath puts on the wire, as documented in tests/senders/OVS.md.
fn assert_ovs_facts(packets: &[Value]) {
    let mut seqs: BTreeMap<Key, Vec<u64>> = BTreeMap::new();
    for l in packets {
        let Some((key, _)) = oracle::mirrored(l, packets) else {
            continue;
        };
        let f = |name: &str| tshark::field(l, name.split('.').next().unwrap(), name);
        let flags = num(&f("gre.flags_and_version").expect("GRE flags"));
        let ip = if key.0.contains(':') { "ipv6" } else { "ip" };
        if key.1 == "gre" {
            // K and S (options:seq=true), no checksum; the key is options:key.
            assert_eq!(flags, 0x3000, "{key:?} GRE flags");
            assert_eq!(f("gre.key").map(|k| num(&k)), Some(key.2));
        } else {
            // S only: OVS never sets K for ERSPAN; the session id is options:key.
            assert_eq!(flags, 0x1000, "{key:?} GRE flags");
        }
        if ip == "ip" {
            assert_eq!(f("ip.flags.df").as_deref(), Some("1"), "{key:?}: DF");
            assert_eq!(f("ip.id").map(|v| num(&v)), Some(0), "{key:?}: IP id");
        }
        let (_, _, tunnel) = MIRRORS.iter().find(|(_, _, t)| key_of(t) == key).unwrap();
        match *tunnel {
            Tunnel::ErspanII { index, .. } => {
                let e = |n: &str| f(n).map(|v| num(&v));
                assert_eq!(e("erspan.version"), Some(1));
                assert_eq!(e("erspan.index"), Some(u64::from(index)), "{key:?} index");
                assert_eq!(e("erspan.encap"), Some(0), "{key:?} En");
                assert_eq!(e("erspan.truncated"), Some(0), "{key:?} T");
            }
            Tunnel::ErspanIII { hwid, egress, .. } => {
                let e = |n: &str| f(n).map(|v| num(&v));
                assert_eq!(e("erspan.version"), Some(2));
                assert_eq!(e("erspan.hw"), Some(u64::from(hwid)), "{key:?} hw");
                assert_eq!(e("erspan.direction"), Some(u64::from(egress)), "{key:?} D");
                assert_eq!(e("erspan.gra"), Some(0), "{key:?}: granularity 100 µs");
                assert_eq!(e("erspan.o"), Some(0), "{key:?}: no platform sub-header");
                // Wall-clock time in 100 µs units, modulo 2^32: within a second of capture.
                let ts = e("erspan.timestamp").unwrap() as i64;
                let epoch: f64 = f("frame.time_epoch").unwrap().parse().unwrap();
                let now = ((epoch * 1e4) as u64 % (1 << 32)) as i64;
                let d = (now - ts).rem_euclid(1 << 32);
                assert!(
                    !(10_000..=(1 << 32) - 10_000).contains(&d),
                    "{key:?}: ERSPAN III timestamp {ts} is not wall-clock/100 µs ({now})"
                );
            }
            _ => {}
        }
        let seq = num(&f("gre.sequence_number").expect("sequence"));
        seqs.entry(key).or_default().push(seq);
    }
    // One counter per tunnel type: the ERSPAN sessions over IPv4 together count 0,1,2,... with
    // no gap, and so do the ip6erspan ones and the GRE port; alone, each ERSPAN session has gaps.
    fn family(k: &Key) -> &'static str {
        match (k.0.contains(':'), k.1.as_str()) {
            (_, "gre") => "gre",
            (true, _) => "ip6erspan",
            (false, _) => "erspan",
        }
    }
    for name in ["erspan", "ip6erspan", "gre"] {
        let mut all: Vec<u64> = seqs
            .iter()
            .filter(|(k, _)| family(k) == name)
            .flat_map(|(_, v)| v.iter().copied())
            .collect();
        all.sort_unstable();
        let first = all[0];
        assert!(
            all.iter().enumerate().all(|(i, s)| *s == first + i as u64),
            "{name} ports: the sequence numbers of all sessions together are not one counter"
        );
        if name != "gre" {
            for (k, v) in seqs.iter().filter(|(k, _)| family(k) == name) {
                let gaps = v.windows(2).filter(|w| w[1] != w[0] + 1).count();
                assert!(
                    gaps > 0,
                    "{k:?}: no gaps, so the shared counter was not exercised"
                );
            }
        }
    }
}

/// A mirror with `snaplen`: OVS 3.1 cuts the whole encapsulated frame, outer headers included,
/// and leaves the outer IPv4 total length and the ERSPAN T bit as they were (tests/senders/
/// OVS.md). A collector reading the link (AF_PACKET) must count such packets as malformed and
/// write nothing for them, while an untruncated session on the same switch is written whole.
#[test]
fn ovs_snaplen_truncation_is_counted_not_written() {
    let ovs = Ovs::start("ovs-snaplen", 2);
    let cut = Tunnel::ErspanII {
        key: 11,
        index: 1,
        v6: false,
    };
    let whole = Tunnel::ErspanIII {
        key: 12,
        hwid: 1,
        egress: false,
        v6: false,
    };
    ovs.mirror("cut", &["p1"], cut);
    ovs.mirror("whole", &["p2"], whole);
    ovs.vsctl(&["set", "mirror", "cut-mirror", "snaplen=100"]);
    let lab = &ovs.lab;
    let col = ovs.col().to_string();
    let out = lab.dir().join("out");
    let mut c = Collector::start(lab, &col, &out, &collector::AF_PACKET_ONLY);
    let wire_pcap = lab.dir().join("col0.pcap");
    let wire = Tcpdump::start(lab, &col, "col0", &wire_pcap, "ip proto 47");
    let h2_pcap = lab.dir().join("h2.pcap");
    let h2 = Tcpdump::start(lab, ovs.host(2), "eth0", &h2_pcap, "");
    let mut ping = lab.spawn(
        ovs.host(1),
        &[
            "ping",
            "-q",
            "-c",
            "20",
            "-i",
            "0.02",
            "-s",
            "1000",
            &host_ip(2),
        ],
    );
    ping.wait_ok(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    h2.stop();
    wire.stop();

    // The fact: 100-byte frames whose IPv4 header claims the untruncated length, T bit clear.
    let packets = tshark::packets(&wire_pcap);
    let mut n_cut = 0u64;
    for l in &packets {
        let spanid = tshark::field(l, "erspan", "erspan.spanid").map(|v| num(&v));
        if spanid != Some(11) {
            continue;
        }
        n_cut += 1;
        let frame_len = num(&tshark::field(l, "frame", "frame.len").unwrap());
        let ip_len = num(&tshark::field(l, "ip", "ip.len").unwrap());
        assert_eq!(frame_len, 100, "snaplen=100 cuts the whole frame");
        assert!(
            ip_len + 14 > frame_len,
            "outer IPv4 length was fixed up: {ip_len}"
        );
        assert_eq!(
            tshark::field(l, "erspan", "erspan.truncated").map(|v| num(&v)),
            Some(0),
            "T bit"
        );
    }
    assert_eq!(n_cut, 40, "20 requests and 20 replies mirrored from p1");

    // The collector: the cut packets counted as malformed, none written; the whole session
    // written exactly as the mirrored port saw it.
    let want_whole = oracle::frames(&h2_pcap);
    let whole_key = key_of(&whole);
    let want = BTreeMap::from([(whole_key.clone(), want_whole.len() as u64)]);
    let api = c.wait_for_packets(&want, Duration::from_secs(10));
    let malformed: u64 = api["totals"]["malformed"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        malformed, n_cut,
        "truncated outer datagrams not counted as malformed: {}",
        api["totals"]
    );
    assert_eq!(
        collector::source_packets(&api),
        want,
        "only the untruncated session is a source"
    );
    c.stop("TERM", Duration::from_millis(2500));
    let got = c.session_frames(&api);
    assert!(
        sorted(&got[&whole_key]) == sorted(&want_whole),
        "the untruncated session differs from the mirrored port"
    );
}

/// OVS's userspace VXLAN and GENEVE mirrors, over IPv4 and IPv6, are collected exactly. OVS
/// leaves the UDP checksum 0 over IPv4 and computes it over IPv6 (tests/senders/OVS.md).
#[test]
fn ovs_vxlan_and_geneve_mirrors_are_collected_exactly() {
    let ovs = Ovs::start("ovs-udp", 2);
    let tunnels = [
        ("vx6", 1, Tunnel::Vxlan { vni: 21, v6: true }),
        ("gen6", 2, Tunnel::Geneve { vni: 22, v6: true }),
        ("vx4", 1, Tunnel::Vxlan { vni: 23, v6: false }),
        ("gen4", 2, Tunnel::Geneve { vni: 24, v6: false }),
    ];
    for (port, host, t) in &tunnels {
        ovs.mirror(port, &[&format!("p{host}")], *t);
    }
    let lab = &ovs.lab;
    let col = ovs.col().to_string();
    let out = lab.dir().join("out");
    let mut c = Collector::start(lab, &col, &out, &[]);
    let wire_pcap = lab.dir().join("col0.pcap");
    let wire = Tcpdump::start(lab, ovs.ns(), "up0", &wire_pcap, "udp");
    let h: Vec<Tcpdump> = (1..=2)
        .map(|i| {
            Tcpdump::start(
                lab,
                ovs.host(i),
                "eth0",
                &lab.dir().join(format!("h{i}.pcap")),
                "",
            )
        })
        .collect();
    let mut ping = lab.spawn(
        ovs.host(1),
        &[
            "ping",
            "-q",
            "-c",
            "20",
            "-i",
            "0.02",
            "-s",
            "1400",
            &host_ip(2),
        ],
    );
    ping.wait_ok(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    for d in h {
        d.stop();
    }
    wire.stop();

    // The facts: UDP checksum 0 over IPv4, computed (and valid) over IPv6.
    let packets = tshark::packets(&wire_pcap);
    assert_eq!(
        packets.len(),
        160,
        "40 frames on each of two ports, four mirrors"
    );
    for l in &packets {
        let csum = tshark::field(l, "udp", "udp.checksum").map(|v| num(&v));
        if tshark::field(l, "ipv6", "ipv6.src").is_some() {
            assert_ne!(csum, Some(0), "OVS computes UDP checksums over IPv6");
        } else {
            assert_eq!(csum, Some(0), "OVS leaves the UDP checksum 0 over IPv4");
        }
    }
    let sent = oracle::from_packets(&packets);
    let want: BTreeMap<Key, u64> = tunnels
        .iter()
        .map(|(_, host, t)| {
            let port = oracle::frames(&lab.dir().join(format!("h{host}.pcap")));
            let key = key_of(t);
            assert!(
                sorted(&sent[&key]) == sorted(&port),
                "{key:?}: OVS did not send exactly the frames of p{host}"
            );
            (key, port.len() as u64)
        })
        .collect();
    let api = c.wait_for_packets(&want, Duration::from_secs(5));
    assert_eq!(
        collector::source_packets(&api),
        want,
        "per-source packets; inputs: {}",
        api["inputs"]
    );
    c.stop("TERM", Duration::from_millis(2500));
    assert_same_frames("OVS VXLAN/GENEVE", &sent, &c.session_frames(&api));
}

/// The one's-complement sum RFC 1071 checksums are verified with: 0xffff over data whose
/// checksum is right.
fn ones_complement_sum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// OVS 3.1's userspace `type=gre` port with `options:csum=true` and `options:seq=true`
/// computes the GRE checksum with the sequence field still 0 and writes the sequence number
/// after (tests/senders/OVS.md): every packet but the one numbered 0 carries a checksum that
/// does not verify, and tshark says so. tapwire keeps and writes every frame, notes it in its
/// comment and counts it per source; `tapwire decap` of the wire does the same, and with
/// `--strict-gre-checksum` drops and counts them.
#[test]
fn ovs_gre_checksum_with_sequence_is_kept_and_counted() {
    let ovs = Ovs::start("ovs-csum", 3);
    let tunnel = Tunnel::Gre {
        key: 31,
        seq: true,
        csum: true,
    };
    ovs.mirror("grec", &["p1"], tunnel);
    let lab = &ovs.lab;
    let col = ovs.col().to_string();
    let mut c = Collector::start(lab, &col, &lab.dir().join("out"), &[]);
    let wire_pcap = lab.dir().join("col0.pcap");
    let wire = Tcpdump::start(lab, ovs.ns(), "up0", &wire_pcap, "ip proto 47");
    let h1_pcap = lab.dir().join("h1.pcap");
    let h1 = Tcpdump::start(lab, ovs.host(1), "eth0", &h1_pcap, "");
    traffic(&ovs);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(h1.stop().1, 0, "tcpdump on h1 dropped packets");
    assert_eq!(wire.stop().1, 0, "tcpdump on col0 dropped packets");

    // The facts: C, K and S set; the checksum verifies once the sequence field is zeroed;
    // tshark finds it bad on every packet but the one numbered 0.
    let packets = tshark::packets(&wire_pcap);
    let key = key_of(&tunnel);
    let mut seqs = Vec::new();
    for l in &packets {
        let f = |name: &str| tshark::field(l, "gre", name).map(|v| num(&v));
        assert_eq!(f("gre.flags_and_version"), Some(0xb000), "GRE flags");
        assert_eq!(f("gre.key"), Some(31));
        let seq = f("gre.sequence_number").expect("sequence");
        let gre_raw = tshark::raws(l, "gre")
            .into_iter()
            .next()
            .expect("GRE bytes");
        let ip_raw = tshark::raws(l, "ip")
            .into_iter()
            .next()
            .expect("IPv4 bytes");
        let ip_len = num(&tshark::field(l, "ip", "ip.len").unwrap()) as usize;
        let mut gre = tshark::frame_bytes(l)[gre_raw.offset..ip_raw.offset + ip_len].to_vec();
        assert_eq!(
            ones_complement_sum(&gre) == 0xffff,
            seq == 0,
            "seq {seq}: the checksum verifies as sent only for seq 0"
        );
        gre[12..16].fill(0);
        assert_eq!(
            ones_complement_sum(&gre),
            0xffff,
            "seq {seq}: the checksum verifies with the sequence field zeroed"
        );
        seqs.push(seq);
    }
    let bad = oracle::gre_checksum_bad(&packets);
    let want_bad: Vec<bool> = seqs.iter().map(|s| *s != 0).collect();
    assert_eq!(bad[&key], want_bad, "tshark's verdict: bad unless seq 0");
    let n = seqs.len();
    assert!(n >= 200, "too little traffic: {n} packets");

    let sent = oracle::from_packets(&packets);
    assert!(
        sorted(&sent[&key]) == sorted(&oracle::frames(&h1_pcap)),
        "OVS did not send exactly the frames of p1"
    );
    let want = BTreeMap::from([(key.clone(), n as u64)]);
    let api = c.wait_for_packets(&want, Duration::from_secs(10));
    assert_eq!(collector::source_packets(&api), want, "every frame kept");
    collector::assert_gre_checksum_bad_counted(&c, &api, &bad);
    c.stop("TERM", Duration::from_millis(2500));
    assert_same_frames(
        "tapwire collect of OVS GRE with csum",
        &sent,
        &c.session_frames(&api),
    );
    assert_eq!(collector::gre_checksum_comments(&c, &api), bad, "comments");

    collector::assert_decap_gre_checksums(&wire_pcap, &sent, &bad);
}
