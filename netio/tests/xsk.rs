//! tapwire's XDP program and AF_XDP sockets against a real kernel: a veth pair in a namespace
//! of the test's own; frames go out of `twa` and arrive on `twb`, where the program runs.
#![allow(clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tapwire_netio::ring::{Ring, RingConfig};
use tapwire_netio::xdp::{Dest, XdpMode, XdpProgram};
use tapwire_netio::xsk::{Xsk, XskConfig, rx_queues};

const WAIT: Duration = Duration::from_secs(3);
const COLLECTOR: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);

/// A veth pair whose receiving end `twb` has `queues` receive queues (and `twa` as many
/// transmit queues, so that flows spread over them).
fn setup(queues: u32) -> Netns {
    let ns = Netns::new(false);
    let q = queues.to_string();
    ns.ip(&[
        "link",
        "add",
        "twa",
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "type",
        "veth",
        "peer",
        "name",
        "twb",
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
    ]);
    ns.ip(&["link", "set", "twa", "address", &mac_str(MAC_A), "up"]);
    ns.ip(&["link", "set", "twb", "address", &mac_str(MAC_B), "up"]);
    ns
}

/// A small UMEM: 256 chunks.
fn small() -> XskConfig {
    XskConfig {
        chunk_count: 256,
        rx_ring_size: 256,
        fill_ring_size: 256,
        ..XskConfig::default()
    }
}

/// The program on `twb` steering UDP 4789 and GRE to 10.9.0.2 and fd00::2, one socket per
/// queue; and a sender on `twa`.
fn attach(ns: &Netns, queues: u32) -> (XdpProgram, Vec<Xsk>, PacketSender) {
    ns.enter(|| {
        let mut prog = XdpProgram::attach("twb").expect("attach");
        let v6: IpAddr = "fd00::2".parse::<Ipv6Addr>().expect("v6").into();
        prog.set_dests(&[
            Dest::Udp(COLLECTOR.into(), 4789),
            Dest::Gre(COLLECTOR.into()),
            Dest::Gre(v6),
            Dest::Udp(v6, 4789),
        ])
        .expect("dests");
        assert_eq!(rx_queues("twb").expect("channels"), queues);
        let xsks: Vec<Xsk> = (0..queues)
            .map(|q| {
                let x = Xsk::open("twb", q, &small()).expect("xsk");
                prog.register(&x).expect("register");
                x
            })
            .collect();
        (prog, xsks, PacketSender::new("twa"))
    })
}

/// Reads every socket until `want` frames came or `timeout`; (queue, frame, time, kernel time).
fn receive(xsks: &mut [Xsk], want: usize, timeout: Duration) -> Vec<(u32, Vec<u8>, u64, bool)> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        let mut any = false;
        for x in xsks.iter_mut() {
            let q = x.queue();
            let n = x
                .receive(64, |f| {
                    got.push((q, f.data.to_vec(), f.ts_ns, f.kernel_time))
                })
                .expect("receive");
            any |= n > 0;
        }
        if !any {
            xsks[0].wait(Duration::from_millis(10)).expect("wait");
        }
    }
    got
}

/// `udp_frame` from 10.9.0.1 to 10.9.0.2 with source port `sport`.
fn udp(tags: &[(u16, u16)], sport: u16, dport: u16, p: &[u8]) -> Vec<u8> {
    let mut f = udp_frame(MAC_B, MAC_A, tags, dport, p);
    let at = 14 + 4 * tags.len() + 20;
    f[at..at + 2].copy_from_slice(&sport.to_be_bytes());
    f
}

/// An IPv4 GRE frame (GRE-TEB, the payload as the "inner frame") to `dst`, optionally a
/// first fragment (MF set).
fn gre4(dst: Ipv4Addr, p: &[u8], more_fragments: bool) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 4 + p.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 7, 0, 0, 64, 47, 0, 0, 10, 9, 0, 1];
    ip.extend_from_slice(&dst.octets());
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    if more_fragments {
        ip[6] = 0x20;
    }
    let sum = ip_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0, 0, 0x65, 0x58]);
    f.extend_from_slice(p);
    f
}

/// An IPv4 fragment from 10.9.0.1 to `dst` of a `proto` datagram with IP id `id`: `body` at
/// `offset_bytes` (a multiple of 8), MF as `more`.
fn frag4(dst: Ipv4Addr, proto: u8, id: u16, offset_bytes: u16, more: bool, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0, 10, 9, 0, 1];
    ip.extend_from_slice(&dst.octets());
    ip[2..4].copy_from_slice(&((20 + body.len()) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    let flags_offset = (offset_bytes / 8) | if more { 0x2000 } else { 0 };
    ip[6..8].copy_from_slice(&flags_offset.to_be_bytes());
    let sum = ip_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(body);
    f
}

/// An IPv6 fragment from fd00::1 to `dst` of a `proto` datagram with id `id` (fragment header).
fn frag6(dst: Ipv6Addr, proto: u8, id: u32, offset_bytes: u16, more: bool, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&((8 + body.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[44, 64]);
    f.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().expect("v6").octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&[proto, 0]);
    f.extend_from_slice(&(offset_bytes | u16::from(more)).to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// A UDP header to `dport` followed by `p`: the body of a first fragment.
fn udp_head(dport: u16, p: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&40000u16.to_be_bytes());
    b.extend_from_slice(&dport.to_be_bytes());
    b.extend_from_slice(&(8 + 2 * p.len() as u16).to_be_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(p);
    b
}

/// The two fragments (first, last) of an IPv4 UDP datagram to `dport` with id `id`: 72 bytes
/// (UDP header and 64 of payload), then 64 more.
fn udp_frags4(dport: u16, id: u16, tag: u8, seq: u32) -> [Vec<u8>; 2] {
    let p = payload(tag, seq, 64);
    [
        frag4(COLLECTOR, 17, id, 0, true, &udp_head(dport, &p)),
        frag4(COLLECTOR, 17, id, 72, false, &p),
    ]
}

/// `frame` (untagged IPv4) as a first fragment: MF set, checksum redone.
fn udp_fragment(mut frame: Vec<u8>) -> Vec<u8> {
    frame[14 + 6] = 0x20;
    frame[14 + 10..14 + 12].fill(0);
    let sum = ip_checksum(&frame[14..34]);
    frame[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
    frame
}

/// An IPv6 GRE frame to `dst`.
fn gre6(dst: Ipv6Addr, p: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&((4 + p.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[47, 64]);
    f.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().expect("v6").octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&[0, 0, 0x65, 0x58]);
    f.extend_from_slice(p);
    f
}

/// Equal lists of frames; on a difference, says where (without printing every frame).
fn same_frames(what: &str, got: &[&Vec<u8>], want: &[Vec<u8>]) {
    let first = got.iter().zip(want).position(|(g, w)| *g != w);
    let show = |f: &[u8]| format!("{:02x?}", &f[..f.len().min(64)]);
    assert!(
        got.len() == want.len() && first.is_none(),
        "{what}: got {} frames, want {}; first difference at {first:?}: got {} want {}",
        got.len(),
        want.len(),
        first.map_or(String::new(), |i| show(got[i])),
        first.map_or(String::new(), |i| show(&want[i])),
    );
}

/// An AF_PACKET ring on `twb`: it sees what the program passed to the kernel.
fn kernel_ring(ns: &Netns) -> Ring {
    ns.enter(|| {
        Ring::open(
            "twb",
            &RingConfig {
                block_size_bytes: 64 << 10,
                block_count: 4,
                ..RingConfig::default()
            },
        )
        .expect("ring")
    })
}

/// `ring` sees exactly `want` among the frames tagged `tag`, in order.
fn reached_the_kernel(ring: &mut Ring, tag: u8, want: &[Vec<u8>]) {
    let seen = capture_tagged(ring, tag, want.len(), WAIT);
    let seen: Vec<&Vec<u8>> = seen.iter().map(|p| &p.wire).collect();
    same_frames("passed to the kernel", &seen, want);
}

fn xdp_attached(ns: &Netns, ifname: &str) -> bool {
    ns.ip(&["link", "show", ifname]).contains("xdp")
}

#[test]
fn mirror_traffic_is_steered_and_the_rest_passes_to_the_kernel() {
    if !root_or_skip("mirror_traffic_is_steered_and_the_rest_passes_to_the_kernel") {
        return;
    }
    let ns = setup(1);
    let (prog, mut xsks, sender) = attach(&ns, 1);
    // veth has native XDP.
    assert_eq!(prog.mode(), XdpMode::Native);
    assert!(
        xdp_attached(&ns, "twb"),
        "{}",
        ns.ip(&["link", "show", "twb"])
    );
    // What reaches the kernel: an AF_PACKET ring sees frames after XDP passed them.
    let mut ring = kernel_ring(&ns);

    let v6: Ipv6Addr = "fd00::2".parse().expect("v6");
    let other6: Ipv6Addr = "fd00::3".parse().expect("v6");
    let mut steered = Vec::new();
    let mut passed = Vec::new();
    for seq in 0..10u32 {
        steered.push(udp(&[], 40000, 4789, &payload(1, seq, 60)));
        steered.push(udp(
            &[(0x8100, 0x0064)],
            40000,
            4789,
            &payload(1, 100 + seq, 60),
        ));
        steered.push(udp(
            &[(0x88a8, 0x00c8), (0x8100, 0x000a)],
            40000,
            4789,
            &payload(1, 200 + seq, 60),
        ));
        steered.push(gre4(COLLECTOR, &payload(1, 300 + seq, 80), false));
        steered.push(gre6(v6, &payload(1, 400 + seq, 80)));
        // Outer fragments are steered (user space reassembles them).
        steered.push(gre4(COLLECTOR, &payload(1, 800 + seq, 80), true));
        steered.push(udp_fragment(udp(
            &[],
            40000,
            4789,
            &payload(1, 900 + seq, 60),
        )));
        // Not mirror traffic: another port, another address.
        passed.push(udp(&[], 40000, 5000, &payload(1, 500 + seq, 60)));
        passed.push(gre4(
            Ipv4Addr::new(10, 9, 0, 3),
            &payload(1, 600 + seq, 80),
            false,
        ));
        passed.push(gre6(other6, &payload(1, 700 + seq, 80)));
    }
    let before_ns = now_ns();
    for f in steered.iter().chain(&passed) {
        sender.send(f);
    }
    let got = receive(&mut xsks, steered.len(), WAIT);
    let after_ns = now_ns();
    let frames: Vec<&Vec<u8>> = got.iter().map(|(_, f, _, _)| f).collect();
    same_frames("steered, intact, in order", &frames, &steered);
    for (_, _, ts, kernel) in &got {
        assert!(kernel, "the program timed every frame");
        assert!((before_ns..=after_ns).contains(ts), "{ts} outside the send");
    }
    reached_the_kernel(&mut ring, 1, &passed);

    let c = prog.counters().expect("counters");
    assert_eq!(c.steered, steered.len() as u64, "{c:?}");
    // 10 GRE and 10 UDP first fragments.
    assert_eq!(c.fragments, 20, "{c:?}");
    assert_eq!((c.too_big, c.no_socket), (0, 0), "{c:?}");
    assert!(c.passed >= 30, "{c:?}");
    let s = xsks[0].stats().expect("stats");
    assert_eq!((s.drops(), s.n_bad_descs), (0, 0), "{s:?}");

    drop(xsks);
    drop(prog);
    assert!(!xdp_attached(&ns, "twb"), "program left attached");
}

/// A datagram's fragments take one path, chosen by the first of them to arrive: a UDP first
/// fragment to a steered port takes its datagram to the socket; a later fragment arriving
/// first, or a first fragment to another port, leaves the whole datagram to the kernel (even
/// when a datagram with the same id was steered just before); GRE fragments are steered in
/// any order.
#[test]
fn a_datagrams_fragments_follow_the_first_of_them_to_arrive() {
    if !root_or_skip("a_datagrams_fragments_follow_the_first_of_them_to_arrive") {
        return;
    }
    let ns = setup(1);
    let (prog, mut xsks, sender) = attach(&ns, 1);
    let mut ring = kernel_ring(&ns);
    let v6: Ipv6Addr = "fd00::2".parse().expect("v6");
    let [a1, a2] = udp_frags4(4789, 1, 5, 0);
    let [b1, b2] = udp_frags4(4789, 2, 5, 1);
    let [c1, c2] = udp_frags4(5000, 3, 5, 2);
    // Id 4 steered, then at once id 4 again to another port: that one passes.
    let [d1, d2] = udp_frags4(4789, 4, 5, 3);
    let [e1, e2] = udp_frags4(5000, 4, 5, 4);
    let p = payload(5, 5, 64);
    let (f1, f2) = (
        frag6(v6, 17, 0x1_0001, 0, true, &udp_head(4789, &p)),
        frag6(v6, 17, 0x1_0001, 72, false, &p),
    );
    let p = payload(5, 6, 64);
    let (g1, g2) = (
        frag4(COLLECTOR, 47, 7, 0, true, &p),
        frag4(COLLECTOR, 47, 7, 64, false, &p),
    );
    // (frame, steered), in the order sent.
    let sent = [
        (&a1, true),
        (&a2, true),
        (&b2, false),
        (&b1, false),
        (&c1, false),
        (&c2, false),
        (&d1, true),
        (&d2, true),
        (&e1, false),
        (&e2, false),
        (&f1, true),
        (&f2, true),
        (&g2, true),
        (&g1, true),
    ];
    for (f, _) in &sent {
        sender.send(f);
    }
    let steered: Vec<Vec<u8>> = sent
        .iter()
        .filter(|(_, s)| *s)
        .map(|(f, _)| (*f).clone())
        .collect();
    let passed: Vec<Vec<u8>> = sent
        .iter()
        .filter(|(_, s)| !*s)
        .map(|(f, _)| (*f).clone())
        .collect();
    let got = receive(&mut xsks, steered.len(), WAIT);
    let frames: Vec<&Vec<u8>> = got.iter().map(|(_, f, _, _)| f).collect();
    same_frames("steered datagrams, whole and in order", &frames, &steered);
    reached_the_kernel(&mut ring, 5, &passed);
    let c = prog.counters().expect("counters");
    assert_eq!(c.steered, steered.len() as u64, "{c:?}");
    assert_eq!(c.fragments, sent.len() as u64, "{c:?}");
    assert_eq!(c.passed, passed.len() as u64, "{c:?}");
}

/// veth refuses native XDP (for programs without multi-buffer support) when the peer's MTU
/// exceeds a page less its overheads; the program then runs in generic mode, and frames
/// longer than a UMEM chunk holds pass to the kernel.
#[test]
fn with_a_jumbo_mtu_the_program_runs_generic_and_passes_long_frames() {
    if !root_or_skip("with_a_jumbo_mtu_the_program_runs_generic_and_passes_long_frames") {
        return;
    }
    let ns = setup(1);
    for ifname in ["twa", "twb"] {
        ns.ip(&["link", "set", ifname, "mtu", "9000"]);
    }
    let (prog, mut xsks, sender) = attach(&ns, 1);
    assert_eq!(prog.mode(), XdpMode::Generic);
    let mut ring = kernel_ring(&ns);
    let short = udp(&[], 40000, 4789, &payload(4, 0, 3000));
    let long = udp(&[], 40000, 4789, &payload(4, 1, 3900));
    // A GRE datagram whose first fragment is too long and whose last one is short: both pass,
    // or neither half could be reassembled.
    let big = payload(4, 2, 3896);
    let tail = payload(4, 3, 64);
    let frags = [
        frag4(COLLECTOR, 47, 9, 0, true, &big),
        frag4(COLLECTOR, 47, 9, 3896, false, &tail),
    ];
    sender.send(&short);
    sender.send(&long);
    for f in &frags {
        sender.send(f);
    }
    let got = receive(&mut xsks, 2, Duration::from_millis(500));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, short);
    reached_the_kernel(&mut ring, 4, &[long, frags[0].clone(), frags[1].clone()]);
    let c = prog.counters().expect("counters");
    assert_eq!((c.steered, c.too_big, c.fragments), (1, 1, 2), "{c:?}");
}

#[test]
fn one_socket_per_queue_gets_its_queues_frames() {
    if !root_or_skip("one_socket_per_queue_gets_its_queues_frames") {
        return;
    }
    let ns = setup(4);
    let (prog, mut xsks, sender) = attach(&ns, 4);
    // 64 flows: the sender's queue choice (by flow hash) spreads them over twb's 4 queues.
    let sent: Vec<Vec<u8>> = (0..256u32)
        .map(|i| udp(&[], 40000 + (i % 64) as u16, 4789, &payload(2, i, 60)))
        .collect();
    for f in &sent {
        sender.send(f);
    }
    let got = receive(&mut xsks, sent.len(), WAIT);
    let mut frames: Vec<Vec<u8>> = got.iter().map(|(_, f, _, _)| f.clone()).collect();
    frames.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(frames.len(), sent.len(), "every frame once");
    assert_eq!(frames, want);
    let queues: std::collections::BTreeSet<u32> = got.iter().map(|(q, ..)| *q).collect();
    assert!(queues.len() >= 2, "frames on queues {queues:?} only");
    assert_eq!(prog.counters().expect("counters").no_socket, 0);
}

#[test]
fn a_queue_without_socket_passes_to_the_kernel() {
    if !root_or_skip("a_queue_without_socket_passes_to_the_kernel") {
        return;
    }
    let ns = setup(1);
    let (prog, xsks, sender) = attach(&ns, 1);
    drop(xsks); // the socket leaves the XSKMAP when it closes
    for seq in 0..5 {
        sender.send(&udp(&[], 40000, 4789, &payload(3, seq, 60)));
    }
    let deadline = Instant::now() + WAIT;
    while prog.counters().expect("counters").no_socket < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(prog.counters().expect("counters").no_socket, 5);
}

#[test]
fn the_program_is_gone_when_its_process_is_killed() {
    if !root_or_skip("the_program_is_gone_when_its_process_is_killed") {
        return;
    }
    let ns = setup(1);
    // A child process (this test binary, running the helper below) attaches and waits; kill -9.
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(exe)
        .args([
            "--exact",
            "attach_and_wait_helper",
            "--nocapture",
            "--ignored",
        ])
        .env("TAPWIRE_XSK_HELPER", "1")
        .spawn()
        .expect("spawn helper");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !xdp_attached(&ns, "twb") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(xdp_attached(&ns, "twb"), "helper never attached");
    child.kill().expect("kill -9");
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    while xdp_attached(&ns, "twb") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !xdp_attached(&ns, "twb"),
        "program still attached after kill -9: {}",
        ns.ip(&["link", "show", "twb"])
    );
}

#[test]
#[ignore = "run by the_program_is_gone_when_its_process_is_killed"]
fn attach_and_wait_helper() {
    if std::env::var_os("TAPWIRE_XSK_HELPER").is_none() {
        return;
    }
    let _prog = XdpProgram::attach("twb").expect("attach");
    let _xsk = Xsk::open("twb", 0, &small()).expect("xsk");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_second_program_is_refused_not_replaced() {
    if !root_or_skip("a_second_program_is_refused_not_replaced") {
        return;
    }
    let ns = setup(1);
    let first = ns.enter(|| XdpProgram::attach("twb").expect("first"));
    let second = ns.enter(|| XdpProgram::attach("twb"));
    let e = second.expect_err("a second attach must fail");
    assert!(e.to_string().contains("twb"), "{e}");
    drop(first);
    assert!(!xdp_attached(&ns, "twb"));
}
