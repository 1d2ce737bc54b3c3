//! recvmmsg/sendmmsg batches against real sockets on loopback (127.0.0.1 and ::1), and raw GRE
//! sockets inside a namespace of the test's own.

// Test code: a setup step that fails ends the run with its name.
#![allow(clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::io::IoSlice;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use tapwire_netio::batch::{
    Datagram, RecvBatch, SendBatch, enable_rxq_ovfl, enable_timestamps, gre_socket_v4,
    gre_socket_v6, set_recv_buffer,
};

fn receiver(addr: &str) -> Option<UdpSocket> {
    let sock = UdpSocket::bind(addr).ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    Some(sock)
}

/// Receives until `n` datagrams came or the socket's timeout passes; returns (source, bytes).
fn recv_n(batch: &mut RecvBatch, sock: &UdpSocket, n: usize) -> Vec<(Option<SocketAddr>, Vec<u8>)> {
    let mut got = Vec::new();
    while got.len() < n {
        match batch.recv(sock) {
            Ok(_) => got.extend(batch.messages().map(|m| (m.source, m.data.to_vec()))),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("recv: {e}"),
        }
    }
    got
}

#[test]
fn recvmmsg_reports_sources_payloads_and_truncation() {
    let rx = receiver("127.0.0.1:0").expect("bind 127.0.0.1");
    let to = rx.local_addr().expect("addr");
    let senders = [
        UdpSocket::bind("127.0.0.1:0").expect("s1"),
        UdpSocket::bind("127.0.0.2:0").expect("s2"),
    ];
    let mut want = HashMap::new();
    for i in 0..40u32 {
        let s = &senders[i as usize % 2];
        let data = format!("datagram {i}").into_bytes();
        s.send_to(&data, to).expect("send");
        want.insert(data, s.local_addr().expect("addr"));
    }
    let mut batch = RecvBatch::new(16, 2048);
    let mut n_calls = 0;
    let mut got = Vec::new();
    while got.len() < 40 {
        let n = batch.recv(&rx).expect("recv");
        assert!((1..=16).contains(&n));
        assert_eq!(batch.len(), n);
        n_calls += 1;
        for m in batch.messages() {
            assert!(!m.truncated);
            assert_eq!(m.len_bytes, m.data.len());
            assert_eq!(m.rxq_drops, None, "SO_RXQ_OVFL is off");
            got.push((m.data.to_vec(), m.source.expect("IPv4 source")));
        }
    }
    assert!(n_calls < 40, "several datagrams per call ({n_calls} calls)");
    assert_eq!(got.len(), 40);
    for (data, source) in got {
        assert_eq!(
            want.get(&data),
            Some(&source),
            "{:?}",
            String::from_utf8_lossy(&data)
        );
    }

    // A datagram larger than the buffer: cut, flagged, full length reported.
    senders[0].send_to(&[0x5a; 3000], to).expect("send big");
    assert_eq!(batch.recv(&rx).expect("recv"), 1);
    let m = batch.message(0).expect("message");
    assert!(m.truncated);
    assert_eq!(m.data.len(), 2048);
    assert_eq!(m.len_bytes, 3000);
    assert!(batch.message(1).is_none());

    // Non-blocking and empty: WouldBlock, not an error with context.
    rx.set_nonblocking(true).expect("nonblocking");
    let e = batch.recv(&rx).expect_err("empty");
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
}

#[test]
fn recvmmsg_reports_ipv6_sources() {
    let Some(rx) = receiver("[::1]:0") else {
        eprintln!("skipping recvmmsg_reports_ipv6_sources: no ::1 here");
        return;
    };
    let tx = UdpSocket::bind("[::1]:0").expect("bind ::1");
    for i in 0..5u8 {
        tx.send_to(&[i; 10], rx.local_addr().expect("addr"))
            .expect("send");
    }
    let mut batch = RecvBatch::new(8, 1500);
    let got = recv_n(&mut batch, &rx, 5);
    assert_eq!(got.len(), 5);
    for (i, (source, data)) in got.iter().enumerate() {
        assert_eq!(*source, Some(tx.local_addr().expect("addr")));
        assert_eq!(data, &[i as u8; 10]);
    }
}

#[test]
fn rxq_ovfl_counts_what_an_overflowing_socket_dropped() {
    let rx = receiver("127.0.0.1:0").expect("bind");
    let to = rx.local_addr().expect("addr");
    // The smallest buffer the kernel allows: a handful of datagrams fit.
    let grant = set_recv_buffer(&rx, 1).expect("small buffer");
    eprintln!("tiny buffer: {grant:?}");
    enable_rxq_ovfl(&rx).expect("SO_RXQ_OVFL");
    let tx = UdpSocket::bind("127.0.0.1:0").expect("tx");
    let n_sent = 2000u32;
    for i in 0..n_sent {
        tx.send_to(&i.to_be_bytes(), to).expect("send");
    }
    rx.set_nonblocking(true).expect("nonblocking");
    let mut batch = RecvBatch::new(64, 64);
    let mut n_kept = 0u32;
    loop {
        match batch.recv(&rx) {
            Ok(_) => {
                for m in batch.messages() {
                    // Queued before the first drop: the kernel attaches no count yet.
                    assert_eq!(m.rxq_drops, None);
                    n_kept += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("recv: {e}"),
        }
    }
    assert!(n_kept > 0 && n_kept < n_sent, "kept {n_kept} of {n_sent}");

    // The next datagram carries the socket's cumulative drop count.
    tx.send_to(b"after", to).expect("send");
    rx.set_nonblocking(false).expect("blocking");
    assert_eq!(batch.recv(&rx).expect("recv"), 1);
    let m = batch.message(0).expect("message");
    assert_eq!(m.data, b"after");
    let drops = m.rxq_drops.expect("drop count attached");
    eprintln!("kept {n_kept}, kernel counted {drops} drops");
    assert_eq!(n_kept + drops, n_sent, "every datagram kept or counted");
}

#[test]
fn recv_buffer_reports_what_the_kernel_granted() {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let want = 8 << 20;
    let grant = set_recv_buffer(&sock, want).expect("set");
    eprintln!("asked for {want} bytes: {grant:?}");
    assert_eq!(grant.requested_bytes, want);
    // Without CAP_NET_ADMIN the fallback SO_RCVBUF is capped by rmem_max.
    let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .expect("rmem_max")
        .trim()
        .parse()
        .expect("number");
    if grant.forced {
        assert_eq!(grant.granted_bytes, 2 * want, "forced: doubled, not capped");
    } else {
        assert_eq!(
            grant.granted_bytes,
            2 * want.min(rmem_max),
            "capped by rmem_max"
        );
    }
}

#[test]
fn sendmmsg_sends_a_whole_batch_from_two_part_datagrams() {
    let rx1 = receiver("127.0.0.1:0").expect("rx1");
    let rx2 = receiver("127.0.0.1:0").expect("rx2");
    let tx = UdpSocket::bind("127.0.0.1:0").expect("tx");
    let dests = [rx1.local_addr().expect("a"), rx2.local_addr().expect("b")];

    let headers: Vec<[u8; 8]> = (0..64u64).map(|i| i.to_be_bytes()).collect();
    let frame = vec![0xc3u8; 1200];
    let parts: Vec<[IoSlice<'_>; 2]> = headers
        .iter()
        .map(|h| [IoSlice::new(h), IoSlice::new(&frame)])
        .collect();
    let datagrams: Vec<Datagram<'_>> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| Datagram {
            destination: Some(dests[i % 2]),
            parts: p,
        })
        .collect();
    let mut batch = SendBatch::new();
    let out = batch.send(&tx, &datagrams);
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.n_sent, 64);

    let mut rb = RecvBatch::new(64, 2048);
    for (k, rx) in [&rx1, &rx2].into_iter().enumerate() {
        let got = recv_n(&mut rb, rx, 32);
        assert_eq!(got.len(), 32, "receiver {k}");
        for (j, (source, data)) in got.iter().enumerate() {
            assert_eq!(*source, Some(tx.local_addr().expect("addr")));
            let i = (2 * j + k) as u64;
            assert_eq!(data.len(), 8 + frame.len());
            assert_eq!(data[..8], i.to_be_bytes(), "in order, header first");
            assert_eq!(data[8..], frame[..]);
        }
    }
}

#[test]
fn sendmmsg_stops_at_the_first_refused_datagram() {
    let rx = receiver("127.0.0.1:0").expect("rx");
    let tx = UdpSocket::bind("127.0.0.1:0").expect("tx");
    let to = rx.local_addr().expect("addr");
    let small = [1u8; 10];
    let huge = vec![2u8; 70_000];
    let ok = [IoSlice::new(&small)];
    let too_big = [IoSlice::new(&huge)];
    let datagrams: Vec<Datagram<'_>> = (0..6)
        .map(|i| Datagram {
            destination: Some(to),
            parts: if i == 3 { &too_big } else { &ok },
        })
        .collect();
    let out = SendBatch::new().send(&tx, &datagrams);
    assert_eq!(out.n_sent, 3);
    let e = out.error.expect("EMSGSIZE");
    assert_eq!(tapwire_netio::raw_os_error(&e), Some(libc::EMSGSIZE), "{e}");
    assert!(e.to_string().contains("datagram 3"), "{e}");
    assert_eq!(recv_n(&mut RecvBatch::new(8, 64), &rx, 3).len(), 3);

    // Connected socket, no destination.
    tx.connect(to).expect("connect");
    let out = SendBatch::new().send(
        &tx,
        &[Datagram {
            destination: None,
            parts: &ok,
        }],
    );
    assert_eq!(out.n_sent, 1);
    assert_eq!(recv_n(&mut RecvBatch::new(8, 64), &rx, 1)[0].1, small);
}

#[test]
fn sendmmsg_to_ipv6() {
    let Some(rx) = receiver("[::1]:0") else {
        eprintln!("skipping sendmmsg_to_ipv6: no ::1 here");
        return;
    };
    let tx = UdpSocket::bind("[::1]:0").expect("tx");
    let body = [7u8; 100];
    let parts = [IoSlice::new(&body[..40]), IoSlice::new(&body[40..])];
    let d = Datagram {
        destination: Some(rx.local_addr().expect("addr")),
        parts: &parts,
    };
    let out = SendBatch::new().send(&tx, &[d; 10]);
    assert_eq!(out.n_sent, 10);
    let got = recv_n(&mut RecvBatch::new(16, 256), &rx, 10);
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|(_, data)| data == &body));
}

/// GRE carrying transparent Ethernet (0x6558), with a recognisable frame.
fn gre_packet(seq: u32) -> Vec<u8> {
    let mut p = vec![0x00, 0x00, 0x65, 0x58];
    p.extend(udp_frame(MAC_B, MAC_A, &[], 9, &payload(20, seq, 30)));
    p
}

#[test]
fn raw_gre_sockets_ipv4_and_ipv6() {
    if !root_or_skip("raw_gre_sockets_ipv4_and_ipv6") {
        return;
    }
    // Its own namespace: a raw GRE socket sees every GRE packet of its namespace.
    let ns = Netns::new(true);
    let (rx4, tx4, rx6, tx6) = ns.enter(|| {
        (
            gre_socket_v4().expect("rx v4"),
            gre_socket_v4().expect("tx v4"),
            gre_socket_v6().expect("rx v6"),
            gre_socket_v6().expect("tx v6"),
        )
    });
    for s in [&rx4, &rx6] {
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
    }
    let packets: Vec<Vec<u8>> = (0..8).map(gre_packet).collect();
    let slices: Vec<[IoSlice<'_>; 1]> = packets.iter().map(|p| [IoSlice::new(p)]).collect();
    let mut sb = SendBatch::new();
    let mut rb = RecvBatch::new(16, 2048);

    let to4: SocketAddr = "127.0.0.1:0".parse().expect("v4");
    let d4: Vec<Datagram<'_>> = slices
        .iter()
        .map(|p| Datagram {
            destination: Some(to4),
            parts: p,
        })
        .collect();
    let out = sb.send(&tx4, &d4);
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.n_sent, 8);
    let mut got = Vec::new();
    while got.len() < 8 {
        rb.recv(&rx4).expect("recv v4");
        got.extend(rb.messages().map(|m| (m.source, m.data.to_vec())));
    }
    for ((source, data), sent) in got.iter().zip(&packets) {
        assert_eq!(*source, Some(to4), "raw sockets report port 0");
        assert_eq!(data[0] >> 4, 4, "AF_INET: starts with the IPv4 header");
        assert_eq!(data[9], libc::IPPROTO_GRE as u8);
        let ihl = usize::from(data[0] & 0x0f) * 4;
        assert_eq!(&data[ihl..], &sent[..], "GRE follows the IPv4 header");
    }

    let to6: SocketAddr = "[::1]:0".parse().expect("v6");
    let d6: Vec<Datagram<'_>> = slices
        .iter()
        .map(|p| Datagram {
            destination: Some(to6),
            parts: p,
        })
        .collect();
    let out = sb.send(&tx6, &d6);
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.n_sent, 8);
    let mut got = Vec::new();
    while got.len() < 8 {
        rb.recv(&rx6).expect("recv v6");
        got.extend(rb.messages().map(|m| (m.source, m.data.to_vec())));
    }
    for ((source, data), sent) in got.iter().zip(&packets) {
        assert_eq!(source.map(|s| s.ip()), Some(to6.ip()));
        assert_eq!(data, sent, "AF_INET6: starts at the GRE header");
    }
}

#[test]
fn timestamps_are_the_kernel_receive_time() {
    let Some(rx) = receiver("127.0.0.1:0") else {
        return;
    };
    enable_timestamps(&rx).expect("SO_TIMESTAMPNS");
    let tx = UdpSocket::bind("127.0.0.1:0").expect("sender");
    let now_ns = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64
    };
    let before = now_ns();
    for i in 0..3u8 {
        tx.send_to(&[i; 10], rx.local_addr().expect("addr"))
            .expect("send");
    }
    let mut batch = RecvBatch::new(8, 2048);
    let mut stamps = Vec::new();
    while stamps.len() < 3 {
        batch.recv(&rx).expect("recv");
        stamps.extend(batch.messages().map(|m| m.ts_ns.expect("timestamp")));
    }
    let after = now_ns();
    assert!(
        stamps.iter().all(|t| (before..=after).contains(t)),
        "{stamps:?} not in {before}..={after}"
    );
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]));
}
