//! `tapwire decap` output as tshark, captype and capinfos see it: interface names, nanosecond
//! and ERSPAN timestamps, direction flags, comments on gaps and truncation, pcap variants,
//! `--single`, and the exit codes for bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv6Addr;
use std::path::Path;
use std::process::Command;

use tapwire_formats::capture::{Encoder, Format, InterfaceInfo, LinkType, PacketInfo};
use tapwire_formats::wire::erspan::{
    Bso, Cos, Direction, Encap, FrameType, Granularity, HardwareId, Index, PacketII, PacketIII,
    Platform, ReprII, ReprIII, SessionId, VlanId,
};
use tapwire_formats::wire::ip::Protocol;
use tapwire_formats::wire::{ethernet, gre, ipv4, ipv6, udp, vxlan};
use tapwire_tests::tshark::fields;
use tapwire_tests::{TempDir, bin, run, run_ok, validate_capture};

const BASE_NS: u64 = 1_700_000_000_000_000_000;

fn inner(n: u8) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, n, 0x02, 0, 0, 0, 0, 0xee, 0x08, 0x00];
    f.extend_from_slice(&[
        0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 1, 1, 1, 10, 1, 1, 2,
    ]);
    f.extend_from_slice(&[0, 9, 0, 9, 0, 8, 0, 0]);
    f.resize(60, n);
    f
}

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 14];
    ethernet::Repr {
        dst_addr: [2, 0, 0, 0, 0, 1],
        src_addr: [2, 0, 0, 0, 0, 2],
        ethertype: ethertype.into(),
    }
    .emit(&mut ethernet::Frame::new_unchecked(&mut f[..]));
    f.extend_from_slice(payload);
    f
}

fn over_ipv4(src: [u8; 4], protocol: Protocol, payload: &[u8]) -> Vec<u8> {
    let repr = ipv4::Repr {
        src_addr: src.into(),
        dst_addr: [10, 0, 0, 100].into(),
        protocol,
        payload_len: payload.len(),
        ttl: 64,
        ident: 0,
        dont_frag: true,
    };
    let mut b = vec![0u8; 20];
    repr.emit(&mut ipv4::Packet::new_unchecked(&mut b[..]));
    b.extend_from_slice(payload);
    eth(0x0800, &b)
}

fn over_ipv6(src: Ipv6Addr, protocol: Protocol, payload: &[u8]) -> Vec<u8> {
    let repr = ipv6::Repr {
        src_addr: src,
        dst_addr: "2001:db8::100".parse().unwrap(),
        next_header: protocol,
        payload_len: payload.len(),
        hop_limit: 64,
    };
    let mut b = vec![0u8; 40];
    repr.emit(&mut ipv6::Packet::new_unchecked(&mut b[..]));
    b.extend_from_slice(payload);
    eth(0x86dd, &b)
}

fn gre_hdr(protocol: gre::Protocol, key: Option<u32>, sequence: Option<u32>) -> Vec<u8> {
    let repr = gre::Repr {
        protocol,
        checksum: false,
        key,
        sequence,
    };
    let mut b = vec![0u8; repr.buffer_len()];
    repr.emit(&mut gre::Packet::new_unchecked(&mut b[..]));
    b
}

fn erspan_iii(seq: u32, dir: Direction, truncated: bool, ts_100ns: u64, frame: &[u8]) -> Vec<u8> {
    let r = ReprIII {
        vlan: VlanId::try_new(0).unwrap(),
        cos: Cos::default(),
        bso: Bso::Good,
        truncated,
        session_id: SessionId::try_new(5).unwrap(),
        timestamp: ts_100ns as u32,
        sgt: 0,
        pdu: false,
        frame_type: FrameType::Ethernet,
        hardware_id: HardwareId::try_new(1).unwrap(),
        direction: dir,
        granularity: Granularity::Nanos100,
        platform: Some(Platform::UpperTimestamp {
            port_index: 1,
            timestamp_upper: (ts_100ns >> 32) as u32,
        }),
    };
    let mut b = gre_hdr(gre::Protocol::ErspanIII, None, Some(seq));
    let at = b.len();
    b.resize(at + r.buffer_len(), 0);
    r.emit(&mut PacketIII::new_unchecked(&mut b[at..]));
    b.extend_from_slice(frame);
    over_ipv4([10, 0, 0, 5], Protocol::Gre, &b)
}

fn erspan_ii(seq: u32, frame: &[u8]) -> Vec<u8> {
    let r = ReprII {
        vlan: VlanId::try_new(7).unwrap(),
        cos: Cos::default(),
        encap: Encap::Dot1q,
        truncated: false,
        session_id: SessionId::try_new(5).unwrap(),
        index: Index::try_new(1).unwrap(),
    };
    let mut b = gre_hdr(gre::Protocol::Erspan, None, Some(seq));
    let at = b.len();
    b.resize(at + 8, 0);
    r.emit(&mut PacketII::new_unchecked(&mut b[at..]));
    b.extend_from_slice(frame);
    over_ipv4([10, 0, 0, 5], Protocol::Gre, &b)
}

fn vxlan_v6(frame: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 8];
    vxlan::Repr {
        vni: vxlan::Vni::try_new(100).unwrap(),
    }
    .emit(&mut vxlan::Packet::new_unchecked(&mut v[..]));
    v.extend_from_slice(frame);
    let mut u = vec![0u8; 8];
    udp::Repr {
        src_port: 5555,
        dst_port: 4789,
        payload_len: v.len(),
    }
    .emit(&mut udp::Packet::new_unchecked(&mut u[..]));
    u.extend_from_slice(&v);
    over_ipv6("2001:db8::6".parse().unwrap(), Protocol::Udp, &u)
}

fn teb_v6(frame: &[u8]) -> Vec<u8> {
    let mut b = gre_hdr(gre::Protocol::TransparentEthernet, Some(9), Some(1));
    b.extend_from_slice(frame);
    over_ipv6("2001:db8::6".parse().unwrap(), Protocol::Gre, &b)
}

/// The packets of the synthetic input: (capture time, bytes).
fn input_packets() -> Vec<(u64, Vec<u8>)> {
    let mut p = Vec::new();
    let mut t = BASE_NS;
    // ERSPAN III: seq 1, 2, 3, then 6 (4 and 5 lost), 7 truncated by the sender.
    for (i, seq) in [1u32, 2, 3, 6, 7].into_iter().enumerate() {
        let dir = if i % 2 == 0 {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        // ERSPAN time: 1.5 s before capture, 100 ns units since the epoch.
        let ts_100ns = (t - 1_500_000_000) / 100 + u64::from(seq);
        p.push((
            t,
            erspan_iii(seq, dir, seq == 7, ts_100ns, &inner(seq as u8)),
        ));
        t += 1_000;
    }
    for seq in 100..104 {
        p.push((t, erspan_ii(seq, &inner(seq as u8))));
        t += 1_000;
    }
    for n in 0..3 {
        p.push((t, vxlan_v6(&inner(200 + n))));
        p.push((t, teb_v6(&inner(210 + n))));
        t += 1_000;
    }
    p
}

fn write_input(path: &Path, packets: &[(u64, Vec<u8>)]) {
    let mut enc = Encoder::new(Format::Pcap { nanos: false });
    let id = enc
        .add_interface(&InterfaceInfo {
            link: LinkType::Ethernet,
            name: "in".into(),
            description: String::new(),
            snaplen: 65535,
        })
        .unwrap();
    for (ts, data) in packets {
        enc.packet(
            id,
            &PacketInfo {
                ts_ns: *ts,
                orig_len: data.len() as u32,
                data,
                direction: None,
                comment: None,
            },
        )
        .unwrap();
    }
    std::fs::write(path, enc.take_bytes()).unwrap();
}

fn decap(args: &[&str]) -> std::process::Output {
    run(Command::new(bin("tapwire")).arg("decap").args(args))
}

#[test]
fn pcapng_carries_names_directions_comments_and_nanoseconds() {
    let tmp = TempDir::new("out");
    let input = tmp.join("in.pcap");
    write_input(&input, &input_packets());
    let out = tmp.join("d");
    let o = decap(&[
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["sources"].as_array().unwrap().len(), 4);

    let iii = out.join("10.0.0.5_erspan-iii_5.pcapng");
    assert_eq!(validate_capture(&iii), 5);
    let rows = fields(
        &iii,
        &[
            "frame.interface_name",
            "frame.time_epoch",
            "frame.packet_flags_direction",
            "frame.comment",
            "frame.len",
        ],
    );
    assert!(
        rows.iter().all(|r| r[0] == "10.0.0.5 erspan-iii session 5"),
        "{rows:?}"
    );
    // Nanosecond timestamps from the input (microsecond pcap: ...000 at the end).
    assert_eq!(rows[1][1], "1700000000.000001000");
    assert_eq!(
        rows.iter().map(|r| r[2].as_str()).collect::<Vec<_>>(),
        [
            "0x00000001",
            "0x00000002",
            "0x00000001",
            "0x00000002",
            "0x00000001"
        ]
    );
    assert_eq!(rows[0][3], "");
    assert!(
        rows[3][3].contains("2 lost") && rows[3][3].contains("seq 4-5"),
        "{:?}",
        rows[3]
    );
    assert!(
        rows[4][3].contains("truncated by the sender"),
        "{:?}",
        rows[4]
    );

    let src = report["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "erspan-iii")
        .unwrap()
        .clone();
    assert_eq!(src["lost"], 2);
    assert_eq!(src["truncated"], 1);
    assert_eq!(src["first_ts"], "2023-11-14T22:13:20.000000000Z");

    // Same session id, another kind: its own file. IPv6 outer sources too.
    assert_eq!(
        validate_capture(&out.join("10.0.0.5_erspan-ii_5.pcapng")),
        4
    );
    assert_eq!(
        validate_capture(&out.join("2001:db8::6_vxlan_100.pcapng")),
        3
    );
    let teb = out.join("2001:db8::6_gre_9.pcapng");
    assert_eq!(validate_capture(&teb), 3);
    assert_eq!(
        fields(&teb, &["frame.interface_name"])[0][0],
        "2001:db8::6 gre key 9"
    );
}

#[test]
fn erspan_timestamps_are_restored_to_the_nanosecond() {
    let tmp = TempDir::new("ts");
    let input = tmp.join("in.pcap");
    write_input(&input, &input_packets());
    let out = tmp.join("d");
    let o = decap(&[
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--timestamps",
        "erspan",
    ]);
    assert!(o.status.success());
    let rows = fields(
        &out.join("10.0.0.5_erspan-iii_5.pcapng"),
        &["frame.time_epoch"],
    );
    // Capture time - 1.5 s + seq * 100 ns, for seq 1.
    assert_eq!(rows[0][0], "1699999998.500000100");
    // ERSPAN II carries no absolute time: the input's is kept.
    let rows = fields(
        &out.join("10.0.0.5_erspan-ii_5.pcapng"),
        &["frame.time_epoch"],
    );
    assert_eq!(rows[0][0], "1700000000.000005000");
}

#[test]
fn pcap_variants_and_single_file() {
    let tmp = TempDir::new("fmt");
    let input = tmp.join("in.pcap");
    write_input(&input, &input_packets());
    for (format, expect) in [("pcap", "pcap"), ("pcap-ns", "nsecpcap")] {
        let out = tmp.join(format);
        assert!(
            decap(&[
                input.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--format",
                format
            ])
            .status
            .success()
        );
        let f = out.join("10.0.0.5_erspan-iii_5.pcap");
        let t = run_ok(Command::new("captype").arg(&f));
        assert!(t.trim_end().ends_with(&format!(": {expect}")), "{t}");
        assert_eq!(validate_capture(&f), 5);
    }
    let single = tmp.join("all.pcapng");
    assert!(
        decap(&[
            input.to_str().unwrap(),
            "--single",
            single.to_str().unwrap()
        ])
        .status
        .success()
    );
    assert_eq!(validate_capture(&single), 15);
    let mut names: Vec<String> = fields(&single, &["frame.interface_name"])
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(
        names,
        [
            "10.0.0.5 erspan-ii session 5",
            "10.0.0.5 erspan-iii session 5",
            "2001:db8::6 gre key 9",
            "2001:db8::6 vxlan vni 100"
        ]
    );
    let o = decap(&[
        input.to_str().unwrap(),
        "--single",
        single.to_str().unwrap(),
        "--format",
        "pcap",
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bad_input_exits_2_with_one_line() {
    let tmp = TempDir::new("bad");
    let garbage = tmp.join("garbage.pcap");
    std::fs::write(&garbage, b"this is not a capture file at all").unwrap();
    let good = tmp.join("in.pcap");
    write_input(&good, &input_packets());
    let out = tmp.join("d");
    let cases: [(&[&str], &str); 3] = [
        (
            &[garbage.to_str().unwrap(), "--out", out.to_str().unwrap()],
            "not a pcap or pcapng file",
        ),
        (
            &["/nonexistent/x.pcap", "--out", out.to_str().unwrap()],
            "No such file",
        ),
        (
            &[good.to_str().unwrap(), "--out", "/dev/null/sub"],
            "/dev/null/sub",
        ),
    ];
    for (args, needle) in cases {
        let o = decap(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err}");
    }
    // A bad input among good ones fails before any output is written.
    let o = decap(&[
        good.to_str().unwrap(),
        garbage.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().count() == 0);
}

#[test]
fn capture_cut_short_and_hostile_packets_are_counted() {
    let tmp = TempDir::new("cut");
    let mut packets = input_packets();
    // Hostile packets: a GRE header that claims options it does not have, an ERSPAN II
    // header cut in half, an IPv4 length that lies, a GRE routing header.
    packets.push((
        BASE_NS,
        over_ipv4([6, 6, 6, 6], Protocol::Gre, &[0x30, 0x00, 0x88, 0xbe, 0, 0]),
    ));
    packets.push((
        BASE_NS,
        over_ipv4(
            [6, 6, 6, 6],
            Protocol::Gre,
            &[0x10, 0x00, 0x88, 0xbe, 0, 0, 0, 1, 0x10, 0],
        ),
    ));
    let mut lying = over_ipv4([6, 6, 6, 6], Protocol::Gre, &[0; 8]);
    lying[16..18].copy_from_slice(&2000u16.to_be_bytes());
    packets.push((BASE_NS, lying));
    packets.push((
        BASE_NS,
        over_ipv4(
            [6, 6, 6, 6],
            Protocol::Gre,
            &[0x40, 0x00, 0x65, 0x58, 0, 0, 0, 0],
        ),
    ));
    let input = tmp.join("in.pcap");
    write_input(&input, &packets);
    let bytes = std::fs::read(&input).unwrap();
    std::fs::write(&input, &bytes[..bytes.len() - 7]).unwrap();
    let o = decap(&[
        input.to_str().unwrap(),
        "--out",
        tmp.join("d").to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success());
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let m = &r["totals"]["malformed"];
    assert_eq!(m["capture_truncated_record"], 1, "{m}");
    assert_eq!(m["gre_truncated"], 1, "{m}");
    assert_eq!(m["erspan_ii_truncated"], 1, "{m}");
    assert_eq!(m["ipv4_truncated"], 1, "{m}");
    assert_eq!(r["totals"]["decapsulated"], 15);
    // The last (routing) packet was cut off by the truncation.
    assert_eq!(r["totals"]["packets_read"], 18);
}
