//! The TPACKET_V3 ring against a real kernel: a veth pair in a namespace of the test's own.
//! Frames go out of `a` (captured there as outgoing) and arrive on `b` (captured as incoming).

// Test code: a setup step that fails ends the run with its name.
#![allow(clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use tapwire_netio::ring::{Direction, Fanout, FanoutMode, Ring, RingConfig, VlanTag};

const WAIT: Duration = Duration::from_secs(3);

/// A small ring: 4 blocks of 64 KiB.
fn small() -> RingConfig {
    RingConfig {
        block_size_bytes: 64 << 10,
        block_count: 4,
        ..RingConfig::default()
    }
}

fn setup() -> Netns {
    let ns = Netns::new(false);
    ns.veth("twa", MAC_A, "twb", MAC_B);
    ns
}

#[test]
fn receives_frames_with_direction_length_and_time() {
    if !root_or_skip("receives_frames_with_direction_length_and_time") {
        return;
    }
    let ns = setup();
    let (mut ring_a, mut ring_b, sender, ifindex_a, ifindex_b) = ns.enter(|| {
        (
            Ring::open("twa", &small()).expect("ring a"),
            Ring::open("twb", &small()).expect("ring b"),
            PacketSender::new("twa"),
            tapwire_netio::ifindex("twa").expect("twa"),
            tapwire_netio::ifindex("twb").expect("twb"),
        )
    });
    assert_eq!(ring_a.ifindex(), ifindex_a);

    let before_ns = now_ns();
    let mut sent = Vec::new();
    for seq in 0..20u32 {
        let dst = if seq == 7 { BROADCAST } else { MAC_B };
        let frame = udp_frame(
            dst,
            MAC_A,
            &[],
            5000,
            &payload(1, seq, 18 + seq as usize * 50),
        );
        sender.send(&frame);
        sent.push(frame);
    }

    let got_b = capture_tagged(&mut ring_b, 1, sent.len(), WAIT);
    let got_a = capture_tagged(&mut ring_a, 1, sent.len(), WAIT);
    let after_ns = now_ns();
    assert_eq!(got_b.len(), sent.len(), "all frames arrive on b");
    assert_eq!(got_a.len(), sent.len(), "all frames are seen leaving a");

    let mut last_ts = 0;
    for (seq, (p, frame)) in got_b.iter().zip(&sent).enumerate() {
        assert_eq!(&p.data, frame, "frame {seq} intact, in order");
        assert_eq!(p.wire_len as usize, frame.len());
        assert!(!p.truncated);
        assert_eq!(p.vlan, None);
        assert_eq!(p.ifindex, ifindex_b);
        let want = if seq == 7 {
            Direction::Broadcast
        } else {
            Direction::Host
        };
        assert_eq!(p.direction, want, "frame {seq}");
        assert!(
            (before_ns..=after_ns).contains(&p.ts_ns),
            "timestamp {} outside [{before_ns}, {after_ns}]",
            p.ts_ns
        );
        assert!(p.ts_ns >= last_ts, "timestamps do not go back");
        last_ts = p.ts_ns;
    }
    for (p, frame) in got_a.iter().zip(&sent) {
        assert_eq!(&p.data, frame);
        assert_eq!(p.direction, Direction::Outgoing);
        assert_eq!(p.ifindex, ifindex_a);
        assert!((before_ns..=after_ns).contains(&p.ts_ns));
    }
    let stats = ring_b.stats().expect("stats");
    assert_eq!(stats.n_corrupt_blocks, 0);
    assert_eq!(stats.n_drops, 0);
}

#[test]
fn vlan_tags_come_back_byte_identical() {
    if !root_or_skip("vlan_tags_come_back_byte_identical") {
        return;
    }
    let ns = setup();
    let (mut ring_a, mut ring_b, sender) = ns.enter(|| {
        (
            Ring::open("twa", &small()).expect("ring a"),
            Ring::open("twb", &small()).expect("ring b"),
            PacketSender::new("twa"),
        )
    });
    let cases: [&[(u16, u16)]; 3] = [
        &[(0x8100, 0x2064)],                   // 802.1Q, PCP 1, VID 100
        &[(0x88a8, 0xe0c8), (0x8100, 0x000a)], // 802.1ad outer VID 200 over 802.1Q VID 10
        &[(0x8100, 0x0000)],                   // priority tag: VID 0
    ];
    let sent: Vec<Vec<u8>> = cases
        .iter()
        .enumerate()
        .map(|(i, tags)| udp_frame(MAC_B, MAC_A, tags, 5000, &payload(2, i as u32, 30)))
        .collect();
    for f in &sent {
        sender.send(f);
    }
    let got_b = capture_tagged(&mut ring_b, 2, sent.len(), WAIT);
    let got_a = capture_tagged(&mut ring_a, 2, sent.len(), WAIT);
    assert_eq!(got_b.len(), sent.len());
    assert_eq!(got_a.len(), sent.len());

    for ((p, frame), tags) in got_b.iter().zip(&sent).zip(cases) {
        // Receiving, the kernel moves the outer tag out of the frame into tp_vlan_tci.
        let (tpid, tci) = tags[0];
        eprintln!(
            "incoming {tags:x?}: vlan {:x?}, data {} bytes",
            p.vlan,
            p.data.len()
        );
        assert_eq!(p.vlan, Some(VlanTag { tci, tpid }), "incoming tag reported");
        assert_eq!(p.data.len() + 4, frame.len(), "tag stripped from the data");
        assert_eq!(&p.wire, frame, "write_with_vlan restores the wire bytes");
        assert_eq!(p.wire_len as usize, frame.len());
    }
    for (p, frame) in got_a.iter().zip(&sent) {
        // Sending from a packet socket, the tag stays in the frame.
        eprintln!("outgoing: vlan {:x?}, data {} bytes", p.vlan, p.data.len());
        assert_eq!(p.vlan, None, "outgoing tag left inline");
        assert_eq!(&p.data, frame);
        assert_eq!(&p.wire, frame);
        assert_eq!(p.wire_len as usize, frame.len());
    }
}

#[test]
fn filter_at_open_lets_nothing_else_through() {
    if !root_or_skip("filter_at_open_lets_nothing_else_through") {
        return;
    }
    let ns = setup();
    let filter = tcpdump_filter("udp dst port 9");
    assert!(filter.len() > 4, "tcpdump gave a program: {filter:?}");
    let sender = ns.enter(|| PacketSender::new("twa"));
    let mut control = ns.enter(|| Ring::open("twb", &small()).expect("control ring"));

    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Mixed traffic the whole time the filtered rings are being opened: 3 of 4 frames
        // must never show up in them.
        s.spawn(|| {
            let mut seq = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let port = [9, 10, 53, 9999][seq as usize % 4];
                sender.send(&udp_frame(MAC_B, MAC_A, &[], port, &payload(3, seq, 20)));
                seq += 1;
                if seq.is_multiple_of(1024) {
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for round in 0..40 {
                let mut ring = ns
                    .enter(|| Ring::open_with_filter("twb", &small(), &filter))
                    .expect("filtered ring");
                // Read until some port 9 frames came (a loaded machine may be slow to send).
                let got = capture(&mut ring, Duration::from_secs(1), |s| {
                    s.iter().filter(|p| ours(&p.data).is_some()).count() >= 8
                });
                let ours_n = got.iter().filter(|p| ours(&p.data).is_some()).count();
                assert!(ours_n > 0, "round {round}: the filter passes port 9");
                for p in &got {
                    assert_eq!(
                        udp_dst_port(&p.data),
                        Some(9),
                        "round {round}: unfiltered packet leaked: {:02x?}",
                        &p.data[..p.data.len().min(64)]
                    );
                }
            }
        }));
        stop.store(true, Ordering::Relaxed);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    });
    let all = capture(&mut control, Duration::from_millis(200), |_| false);
    let other_ports = all
        .iter()
        .filter(|p| ours(&p.data).is_some() && udp_dst_port(&p.data) != Some(9))
        .count();
    assert!(
        other_ports > 100,
        "the other ports were really sent ({other_ports})"
    );
}

#[test]
fn filter_attached_and_detached_after_open() {
    if !root_or_skip("filter_attached_and_detached_after_open") {
        return;
    }
    let ns = setup();
    let (mut ring, sender) = ns.enter(|| {
        (
            Ring::open("twb", &small()).expect("ring"),
            PacketSender::new("twa"),
        )
    });
    ring.attach_filter(&tcpdump_filter("udp dst port 9"))
        .expect("attach");
    for seq in 0..40u32 {
        let port = if seq % 2 == 0 { 9 } else { 10 };
        sender.send(&udp_frame(MAC_B, MAC_A, &[], port, &payload(4, seq, 20)));
    }
    let got = capture_tagged(&mut ring, 4, 20, WAIT);
    assert_eq!(got.len(), 20);
    assert!(got.iter().all(|p| udp_dst_port(&p.data) == Some(9)));
    let more = capture_tagged(&mut ring, 4, usize::MAX, Duration::from_millis(100));
    assert!(
        more.is_empty(),
        "no port 10 frame after the last port 9 one"
    );

    ring.detach_filter().expect("detach");
    for seq in 0..10u32 {
        sender.send(&udp_frame(MAC_B, MAC_A, &[], 10, &payload(5, seq, 20)));
    }
    assert_eq!(capture_tagged(&mut ring, 5, 10, WAIT).len(), 10);
}

#[test]
fn snaplen_truncates_with_and_without_a_filter() {
    if !root_or_skip("snaplen_truncates_with_and_without_a_filter") {
        return;
    }
    let ns = setup();
    let config = RingConfig {
        snaplen: Some(64),
        ..small()
    };
    let filter = tcpdump_filter("udp");
    let (mut plain, mut filtered, sender) = ns.enter(|| {
        (
            Ring::open("twb", &config).expect("ring"),
            Ring::open_with_filter("twb", &config, &filter).expect("filtered ring"),
            PacketSender::new("twa"),
        )
    });
    let frame = udp_frame(MAC_B, MAC_A, &[], 9, &payload(6, 0, 300));
    sender.send(&frame);
    for ring in [&mut plain, &mut filtered] {
        let got = capture(ring, WAIT, |s| !s.is_empty());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data, frame[..64]);
        assert!(got[0].truncated);
        assert_eq!(got[0].wire_len as usize, frame.len());
    }
}

#[test]
fn statistics_count_drops_and_stay_monotonic() {
    if !root_or_skip("statistics_count_drops_and_stay_monotonic") {
        return;
    }
    let ns = setup();
    // Two one-page blocks: room for about 30 of these frames.
    let tiny = RingConfig {
        block_size_bytes: 4096,
        block_count: 2,
        frame_size_hint: 2048,
        ..RingConfig::default()
    };
    let (mut ring, sender) = ns.enter(|| {
        (
            Ring::open("twb", &tiny).expect("ring"),
            PacketSender::new("twa"),
        )
    });
    let burst = 500u64;
    for seq in 0..burst as u32 {
        sender.send(&udp_frame(MAC_B, MAC_A, &[], 7, &payload(7, seq, 200)));
    }
    let first = ring.stats().expect("stats");
    eprintln!("after one burst: {first:?}");
    assert_eq!(
        first.n_packets, burst,
        "every frame passed the (absent) filter"
    );
    assert!(first.n_drops > burst / 2, "a tiny unread ring drops most");
    assert!(first.n_queue_freezes >= 1);

    let again = ring.stats().expect("stats");
    assert_eq!(again, first, "totals survive the kernel's reset-on-read");

    let kept = capture(&mut ring, Duration::from_millis(300), |_| false);
    assert_eq!(
        kept.len() as u64 + first.n_drops,
        burst,
        "each frame was either kept or counted as dropped"
    );

    for seq in 0..burst as u32 {
        sender.send(&udp_frame(MAC_B, MAC_A, &[], 7, &payload(7, seq, 200)));
    }
    let second = ring.stats().expect("stats");
    eprintln!("after two bursts: {second:?}");
    assert_eq!(second.n_packets, 2 * burst);
    assert!(second.n_drops > first.n_drops);
    assert!(second.n_queue_freezes >= first.n_queue_freezes);
    assert_eq!(second.n_corrupt_blocks, 0);
}

#[test]
fn lb_fanout_splits_packets_between_two_rings() {
    if !root_or_skip("lb_fanout_splits_packets_between_two_rings") {
        return;
    }
    let ns = setup();
    let config = RingConfig {
        fanout: Some(Fanout {
            group_id: 4242,
            mode: FanoutMode::Lb,
        }),
        ..small()
    };
    let (mut one, mut two, sender) = ns.enter(|| {
        (
            Ring::open("twb", &config).expect("ring 1"),
            Ring::open("twb", &config).expect("ring 2"),
            PacketSender::new("twa"),
        )
    });
    for seq in 0..100u32 {
        sender.send(&udp_frame(MAC_B, MAC_A, &[], 7, &payload(8, seq, 20)));
    }
    let got_one = capture_tagged(&mut one, 8, 50, WAIT);
    let got_two = capture_tagged(&mut two, 8, 50, WAIT);
    assert_eq!((got_one.len(), got_two.len()), (50, 50), "round robin");
    let mut seqs: Vec<u32> = got_one
        .iter()
        .chain(&got_two)
        .filter_map(|p| ours(&p.data).map(|(_, s)| s))
        .collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (0..100).collect::<Vec<_>>(),
        "each frame exactly once"
    );
}

#[test]
fn promiscuous_mode_lasts_as_long_as_the_ring() {
    if !root_or_skip("promiscuous_mode_lasts_as_long_as_the_ring") {
        return;
    }
    let ns = setup();
    let promiscuity = || {
        let out = ns.ip(&["-d", "link", "show", "twb"]);
        out.split_whitespace()
            .skip_while(|w| *w != "promiscuity")
            .nth(1)
            .and_then(|n| n.parse::<u32>().ok())
            .expect("promiscuity in ip -d link")
    };
    assert_eq!(promiscuity(), 0);
    let config = RingConfig {
        promiscuous: true,
        ..small()
    };
    let ring = ns.enter(|| Ring::open("twb", &config).expect("ring"));
    assert_eq!(promiscuity(), 1);
    drop(ring);
    assert_eq!(promiscuity(), 0, "closing the ring leaves promiscuous mode");
}

#[test]
fn ignore_outgoing_keeps_only_incoming() {
    if !root_or_skip("ignore_outgoing_keeps_only_incoming") {
        return;
    }
    let ns = setup();
    let config = RingConfig {
        ignore_outgoing: true,
        ..small()
    };
    let (mut ring, from_a, from_b) = ns.enter(|| {
        (
            Ring::open("twa", &config).expect("ring"),
            PacketSender::new("twa"),
            PacketSender::new("twb"),
        )
    });
    for seq in 0..10u32 {
        from_a.send(&udp_frame(MAC_B, MAC_A, &[], 7, &payload(9, seq, 20)));
        from_b.send(&udp_frame(MAC_A, MAC_B, &[], 7, &payload(10, seq, 20)));
    }
    let got = capture(&mut ring, Duration::from_millis(300), |_| false);
    let sent_by_a = got
        .iter()
        .filter(|p| matches!(ours(&p.data), Some((9, _))))
        .count();
    let to_a: Vec<_> = got
        .iter()
        .filter(|p| matches!(ours(&p.data), Some((10, _))))
        .collect();
    assert_eq!(sent_by_a, 0, "outgoing frames ignored");
    assert_eq!(to_a.len(), 10, "incoming frames kept");
    assert!(to_a.iter().all(|p| p.direction == Direction::Host));
}

#[test]
fn interface_down_and_gone_are_reported_and_recoverable() {
    if !root_or_skip("interface_down_and_gone_are_reported_and_recoverable") {
        return;
    }
    let ns = setup();
    let (mut ring, sender) = ns.enter(|| {
        (
            Ring::open("twb", &small()).expect("ring"),
            PacketSender::new("twa"),
        )
    });

    ns.ip(&["link", "set", "twb", "down"]);
    let err = ring
        .next_block(WAIT)
        .map(|b| b.is_some())
        .expect_err("link down is reported");
    eprintln!("link down: {err}");
    assert!(tapwire_netio::is_interface_gone(&err), "{err}");
    assert_eq!(tapwire_netio::raw_os_error(&err), Some(libc::ENETDOWN));
    assert!(
        err.to_string().contains("on twb"),
        "names the interface: {err}"
    );

    // The same interface back up: the ring resumes without reopening.
    ns.ip(&["link", "set", "twb", "up"]);
    let deadline = std::time::Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.is_empty() && std::time::Instant::now() < deadline {
        sender.send(&udp_frame(MAC_B, MAC_A, &[], 7, &payload(11, 0, 20)));
        got = capture_tagged(&mut ring, 11, 1, Duration::from_millis(100));
    }
    assert!(!got.is_empty(), "capture resumes after the link comes back");

    ns.ip(&["link", "del", "twa"]);
    let err = loop {
        // Frames sent before the delete may still be queued; drain them.
        match ring.next_block(WAIT) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("deleting the interface is reported"),
            Err(e) => break e,
        }
    };
    eprintln!("link deleted: {err}");
    assert!(tapwire_netio::is_interface_gone(&err), "{err}");
    drop(ring);
}

#[test]
fn missing_interface_is_a_clear_error() {
    let err = tapwire_netio::ifindex("tw-missing0").expect_err("no such interface");
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("\"tw-missing0\""), "{err}");
    assert_eq!(tapwire_netio::raw_os_error(&err), Some(libc::ENODEV));

    let err = Ring::open("tw-missing0", &small()).expect_err("no such interface");
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("tw-missing0"), "{err}");

    let bad = RingConfig {
        block_size_bytes: 3000,
        ..small()
    };
    let err = Ring::open("lo", &bad).expect_err("bad config");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("page size"), "{err}");
}

#[test]
fn outer_source_fanout_keeps_each_source_on_one_ring_in_order() {
    if !root_or_skip("outer_source_fanout_keeps_each_source_on_one_ring_in_order") {
        return;
    }
    let ns = setup();
    let config = RingConfig {
        fanout: Some(Fanout {
            group_id: 4343,
            mode: FanoutMode::OuterSource,
        }),
        ..small()
    };
    let (mut one, mut two, sender) = ns.enter(|| {
        (
            Ring::open("twb", &config).expect("ring 1"),
            Ring::open("twb", &config).expect("ring 2"),
            PacketSender::new("twa"),
        )
    });
    // Four sources (10.9.0.1 to .4: the last byte decides the ring), each sending frames to
    // ever-changing UDP ports, as a tunnel endpoint varies its source port per inner flow.
    for seq in 0..120u32 {
        let src = (seq % 4) as u8 + 1;
        let mut f = udp_frame(MAC_B, MAC_A, &[], 7000 + seq as u16, &payload(9, seq, 20));
        f[14 + 15] = src;
        f[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
        let sum = ip_checksum(&f[14..34]);
        f[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
        sender.send(&f);
    }
    let got_one = capture_tagged(&mut one, 9, 120, Duration::from_millis(500));
    let got_two = capture_tagged(&mut two, 9, 120 - got_one.len(), WAIT);
    assert_eq!(
        got_one.len() + got_two.len(),
        120,
        "each frame exactly once"
    );
    assert!(
        !got_one.is_empty() && !got_two.is_empty(),
        "sources spread over both rings"
    );
    for ring in [&got_one, &got_two] {
        let mut by_src: std::collections::BTreeMap<u8, Vec<u32>> = Default::default();
        for p in ring {
            let (_, seq) = ours(&p.data).expect("ours");
            by_src.entry(p.data[14 + 15]).or_default().push(seq);
        }
        for seqs in by_src.values() {
            assert_eq!(seqs.len(), 30, "a source split over rings: {by_src:?}");
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "out of order: {seqs:?}"
            );
        }
    }
}
