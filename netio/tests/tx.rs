//! The TPACKET_V2 transmit ring against a real kernel: frames pushed into a ring on `twa` of a
//! veth pair in a namespace of the test's own arrive on `twb` (captured with the receive ring).

// Test code: a setup step that fails ends the run with its name.
#![allow(clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tapwire_netio::ring::{Direction, Ring, RingConfig};
use tapwire_netio::tx::{TxConfig, TxRing};
use tapwire_netio::{is_interface_gone, raw_os_error};

const WAIT: Duration = Duration::from_secs(3);

fn small_rx() -> RingConfig {
    RingConfig {
        block_size_bytes: 256 << 10,
        block_count: 8,
        ..RingConfig::default()
    }
}

fn setup() -> Netns {
    let ns = Netns::new(false);
    ns.veth("twa", MAC_A, "twb", MAC_B);
    ns
}

fn push(tx: &mut TxRing, frame: &[u8]) -> bool {
    tx.push(|room| {
        room[..frame.len()].copy_from_slice(frame);
        frame.len()
    })
}

fn frames(tag: u8, n: u32) -> Vec<Vec<u8>> {
    (0..n)
        .map(|seq| {
            // 60 to 1514 bytes.
            let len = 18 + (seq as usize * 97) % (1472 - 18 + 1);
            udp_frame(MAC_B, MAC_A, &[], 5000, &payload(tag, seq, len))
        })
        .collect()
}

/// Both ways the kernel takes a frame: pointing the skb at the ring (zero copy) or copying it
/// into the skb (`linear`, through the virtio-net header).
#[test]
fn frames_pushed_and_kicked_arrive_byte_identical_in_order() {
    if !root_or_skip("frames_pushed_and_kicked_arrive_byte_identical_in_order") {
        return;
    }
    let ns = setup();
    for (tag, linear) in [(1u8, false), (6, true)] {
        let (mut tx, mut rx) = ns.enter(|| {
            (
                TxRing::open(
                    "twa",
                    &TxConfig {
                        min_frames: 64,
                        linear,
                        ..TxConfig::default()
                    },
                )
                .expect("tx ring"),
                Ring::open("twb", &small_rx()).expect("rx ring"),
            )
        });
        assert!(tx.frame_count() >= 64);
        assert!(tx.frame_capacity() >= 1514);
        let want = frames(tag, 300);
        // Several rounds round the ring: push what fits, one kick each.
        let mut next = 0;
        let mut n_kicks = 0;
        while next < want.len() {
            let mut n = 0;
            while next < want.len() && push(&mut tx, &want[next]) {
                next += 1;
                n += 1;
            }
            assert!(n > 0, "a frame is free after a kick on veth");
            let k = tx.kick();
            n_kicks += 1;
            assert!(k.error.is_none(), "linear {linear}: {:?}", k.error);
            assert!(!k.stuck);
            assert_eq!(k.n_taken, n, "every queued frame taken");
            assert_eq!(tx.queued(), 0);
        }
        assert!(n_kicks < want.len() / 10, "batches, not one kick per frame");
        let got = capture_tagged(&mut rx, tag, want.len(), WAIT);
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(&g.data, w, "linear {linear}: frame {i}");
            assert_eq!(g.direction, Direction::Host);
        }
        // Nothing is queued: a kick does nothing.
        let k = tx.kick();
        assert_eq!((k.n_taken, k.error.is_none()), (0, true));
    }
}

/// With PACKET_QDISC_BYPASS the frames skip the sending interface's packet taps (the probe's
/// own capture of its uplink never sees them); without it they pass them.
#[test]
fn qdisc_bypass_frames_skip_the_sending_interfaces_taps() {
    if !root_or_skip("qdisc_bypass_frames_skip_the_sending_interfaces_taps") {
        return;
    }
    let ns = setup();
    for (tag, bypass) in [(2u8, true), (3, false)] {
        let (mut tx, mut tap_a, mut rx_b) = ns.enter(|| {
            (
                TxRing::open(
                    "twa",
                    &TxConfig {
                        min_frames: 16,
                        qdisc_bypass: bypass,
                        ..TxConfig::default()
                    },
                )
                .expect("tx ring"),
                Ring::open("twa", &small_rx()).expect("tap on a"),
                Ring::open("twb", &small_rx()).expect("rx ring"),
            )
        });
        let want = frames(tag, 10);
        for f in &want {
            assert!(push(&mut tx, f));
        }
        assert_eq!(tx.kick().n_taken, 10);
        assert_eq!(capture_tagged(&mut rx_b, tag, 10, WAIT).len(), 10);
        let seen_on_a = capture_tagged(&mut tap_a, tag, 10, Duration::from_millis(300));
        let expected = if bypass { 0 } else { 10 };
        assert_eq!(seen_on_a.len(), expected, "bypass {bypass}");
    }
}

/// A frame longer than the interface allows stops the ring at that frame; discarding takes it
/// and the frames behind it back, and the ring goes on.
#[test]
fn a_malformed_frame_stops_the_ring_until_discarded() {
    if !root_or_skip("a_malformed_frame_stops_the_ring_until_discarded") {
        return;
    }
    let ns = setup();
    let (mut tx, mut rx) = ns.enter(|| {
        (
            TxRing::open(
                "twa",
                &TxConfig {
                    max_frame_bytes: 9014,
                    min_frames: 16,
                    // The socket checks the MTU only for frames it does not copy.
                    linear: false,
                    ..TxConfig::default()
                },
            )
            .expect("tx ring"),
            Ring::open("twb", &small_rx()).expect("rx ring"),
        )
    });
    let ok = frames(4, 4);
    let big = udp_frame(MAC_B, MAC_A, &[], 5000, &payload(4, 99, 3000));
    assert!(push(&mut tx, &ok[0]));
    assert!(push(&mut tx, &big), "the ring takes it: the kernel judges");
    assert!(push(&mut tx, &ok[1]));
    let k = tx.kick();
    assert!(k.stuck, "{k:?}");
    assert_eq!(k.n_taken, 1);
    assert_eq!(
        raw_os_error(k.error.as_ref().expect("error")),
        Some(libc::EMSGSIZE)
    );
    assert_eq!(tx.queued(), 2);
    assert_eq!(tx.discard(), 2);
    for f in &ok[2..] {
        assert!(push(&mut tx, f));
    }
    let k = tx.kick();
    assert_eq!((k.n_taken, k.stuck), (2, false), "{k:?}");
    let got: Vec<u32> = capture_tagged(&mut rx, 4, 3, WAIT)
        .iter()
        .filter_map(|s| ours(&s.data).map(|(_, seq)| seq))
        .collect();
    assert_eq!(got, [0, 2, 3]);
}

/// The interface down: nothing is taken (`ENETDOWN`) and the frames wait. The peer down (no
/// carrier): the device refuses each frame (`ENOBUFS`), it stays queued, and goes once the
/// carrier is back.
#[test]
fn down_interfaces_keep_frames_queued() {
    if !root_or_skip("down_interfaces_keep_frames_queued") {
        return;
    }
    let ns = setup();
    let (mut tx, rx) = ns.enter(|| {
        (
            TxRing::open(
                "twa",
                &TxConfig {
                    min_frames: 16,
                    ..TxConfig::default()
                },
            )
            .expect("tx ring"),
            Ring::open("twb", &small_rx()).expect("rx ring"),
        )
    });
    let want = frames(5, 6);
    ns.ip(&["link", "set", "twa", "down"]);
    for f in &want[..3] {
        assert!(push(&mut tx, f));
    }
    let k = tx.kick();
    assert_eq!(k.n_taken, 0);
    assert!(is_interface_gone(k.error.as_ref().expect("down")), "{k:?}");
    assert_eq!(tx.queued(), 3);
    ns.ip(&["link", "set", "twa", "up"]);
    ns.ip(&["link", "set", "twb", "down"]);
    let k = tx.kick();
    assert_eq!(k.n_taken, 0, "{k:?}");
    assert_eq!(
        raw_os_error(k.error.as_ref().expect("no carrier")),
        Some(libc::ENOBUFS)
    );
    assert_eq!(tx.queued(), 3);
    ns.ip(&["link", "set", "twb", "up"]);
    // A receive ring that saw its interface go down reports it once; take a fresh one.
    drop(rx);
    let mut rx = ns.enter(|| Ring::open("twb", &small_rx()).expect("rx ring"));
    // The carrier comes back asynchronously.
    let mut taken = 0;
    for _ in 0..200 {
        taken += tx.kick().n_taken;
        if tx.queued() == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(taken, 3);
    for f in &want[3..] {
        assert!(push(&mut tx, f));
    }
    assert_eq!(tx.kick().n_taken, 3);
    let got: Vec<u32> = capture_tagged(&mut rx, 5, 6, WAIT)
        .iter()
        .filter_map(|s| ours(&s.data).map(|(_, seq)| seq))
        .collect();
    assert_eq!(got, [0, 1, 2, 3, 4, 5], "in order, none lost");
}

#[test]
fn bad_shapes_and_missing_interfaces_are_clear_errors() {
    let e = TxRing::open(
        "lo",
        &TxConfig {
            min_frames: 1,
            ..TxConfig::default()
        },
    )
    .expect_err("one frame");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("transmit ring on lo"), "{e}");
    let e = TxRing::open("twnone0", &TxConfig::default()).expect_err("missing");
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
}
