//! The planner against libpcap (no false negatives), the parser, and whole queries over
//! files written here, against a reference merge.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use proptest::prelude::*;
use tapwire_formats::capture::walk::{Step, Walker};
use tapwire_formats::capture::{Encoder, Format, InterfaceInfo, LinkType, PacketInfo};
use tapwire_formats::index::{self, BlockRecord, FrameKeys, KeyLog, Record};

use super::catalog::LocalDirs;
use super::plan::{Atom, Plan, Pred};
use super::*;
use crate::filter::Filter;

// ---------------------------------------------------------------------------------------------
// The planner against libpcap

/// A range holding exactly `frames`, as the index would describe it.
fn range_of(frames: &[(LinkType, Vec<u8>)]) -> BlockRecord {
    let mut log = KeyLog::new(0);
    for (i, (link, f)) in frames.iter().enumerate() {
        log.packet(100 * (i + 1), 1, 0, &FrameKeys::of(*link, f), None);
    }
    log.finish(100 * (frames.len() + 1));
    let mut b = index::file::header().to_vec();
    log.encode(0, None, &mut b);
    match index::parse(&b).records.into_iter().next() {
        Some(Record::Block(r)) => r,
        other => panic!("no range: {other:?}"),
    }
}

const V4: [[u8; 4]; 4] = [
    [10, 0, 0, 1],
    [10, 0, 0, 2],
    [10, 0, 0, 3],
    [192, 168, 1, 1],
];
const V6: [u8; 3] = [1, 2, 3];
const PORTS: [u16; 5] = [53, 80, 443, 1000, 65535];

fn v6(last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[15] = last;
    a
}

/// Frames of every shape libpcap's programs look into, cut and damaged at random.
fn frame_strategy() -> impl Strategy<Value = (LinkType, Vec<u8>)> {
    let ip4 = (
        prop_oneof![8 => Just(4u8), 1 => 0u8..16],
        prop_oneof![6 => Just(5u8), 2 => 6u8..8, 1 => 0u8..16],
        prop_oneof![Just(0u16), Just(0x2000), Just(0x0001), any::<u16>()],
        prop_oneof![
            Just(6u8),
            Just(17),
            Just(132),
            Just(1),
            Just(2),
            Just(47),
            any::<u8>()
        ],
        0usize..4,
        0usize..4,
        0usize..5,
        0usize..5,
    )
        .prop_map(|(ver, ihl, frag, proto, s, d, sp, dp)| {
            let mut ip = vec![ver << 4 | ihl, 0, 0, 0, 0, 0];
            ip.extend_from_slice(&frag.to_be_bytes());
            ip.extend_from_slice(&[64, proto, 0, 0]);
            ip.extend_from_slice(&V4[s]);
            ip.extend_from_slice(&V4[d]);
            ip.resize(ip.len().max(4 * usize::from(ihl)), 0);
            ip.extend_from_slice(&PORTS[sp].to_be_bytes());
            ip.extend_from_slice(&PORTS[dp].to_be_bytes());
            ip.extend_from_slice(&[0; 8]);
            ip
        });
    let ip6 = (
        prop_oneof![8 => Just(6u8), 1 => 0u8..16],
        prop_oneof![
            Just(6u8),
            Just(17),
            Just(132),
            Just(58),
            Just(44),
            Just(0),
            any::<u8>()
        ],
        prop_oneof![Just(6u8), Just(17), Just(58), any::<u8>()],
        0usize..3,
        0usize..3,
        0usize..5,
        0usize..5,
    )
        .prop_map(|(ver, nh, frag_nh, s, d, sp, dp)| {
            let mut ip = vec![ver << 4, 0, 0, 0, 0, 20, nh, 64];
            ip.extend_from_slice(&v6(V6[s]));
            ip.extend_from_slice(&v6(V6[d]));
            if nh == 44 {
                ip.extend_from_slice(&[frag_nh, 0, 0, 0, 0, 0, 0, 1]);
            }
            ip.extend_from_slice(&PORTS[sp].to_be_bytes());
            ip.extend_from_slice(&PORTS[dp].to_be_bytes());
            ip.extend_from_slice(&[0; 8]);
            ip
        });
    let arp = (0usize..4, 0usize..4).prop_map(|(s, d)| {
        let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1];
        a.extend_from_slice(&V4[s]);
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&V4[d]);
        a
    });
    let eth = |ethertype: u16, payload: Vec<u8>| {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(&payload);
        f
    };
    let framed = prop_oneof![
        4 => ip4.clone().prop_map(move |ip| (LinkType::Ethernet, eth(0x0800, ip))),
        3 => ip6.clone().prop_map(move |ip| (LinkType::Ethernet, eth(0x86dd, ip))),
        1 => arp.clone().prop_map(move |a| (LinkType::Ethernet, eth(0x0806, a))),
        1 => arp.prop_map(move |a| (LinkType::Ethernet, eth(0x8035, a))),
        1 => ip4.clone().prop_map(move |ip| {
            let mut t = vec![0, 100, 0x08, 0];
            t.extend_from_slice(&ip);
            (LinkType::Ethernet, eth(0x8100, t))
        }),
        1 => proptest::collection::vec(any::<u8>(), 0..80).prop_map(|b| (LinkType::Ethernet, b)),
        2 => ip4.prop_map(|ip| (LinkType::Raw, ip)),
        1 => ip6.prop_map(|ip| (LinkType::Raw, ip)),
    ];
    (
        framed,
        0usize..120,
        proptest::option::of((0usize..80, any::<u8>())),
    )
        .prop_map(|((link, mut f), cut, flip)| {
            if cut < f.len() && cut % 3 == 0 {
                f.truncate(cut);
            }
            if let Some((at, x)) = flip
                && at < f.len()
            {
                f[at] ^= x;
            }
            (link, f)
        })
}

/// Filters from a grammar of what the planner reads, and some of what it does not.
fn filter_strategy() -> impl Strategy<Value = String> {
    let a4 =
        (0usize..4).prop_map(|i| format!("{}.{}.{}.{}", V4[i][0], V4[i][1], V4[i][2], V4[i][3]));
    let a6 = (0usize..3).prop_map(|i| format!("fe80::{}", V6[i]));
    let port = (0usize..5).prop_map(|i| PORTS[i].to_string());
    let atom = prop_oneof![
        (
            prop_oneof![
                Just(""),
                Just("src "),
                Just("dst "),
                Just("ip "),
                Just("arp "),
                Just("src or dst "),
                Just("ip src ")
            ],
            a4.clone()
        )
            .prop_map(|(q, a)| format!("{q}host {a}")),
        (
            prop_oneof![Just(""), Just("ip6 "), Just("dst ")],
            a6.clone()
        )
            .prop_map(|(q, a)| format!("{q}host {a}")),
        a4.clone().prop_map(|a| format!("src {a}")),
        prop_oneof![
            Just("net 10.0.0.0/30"),
            Just("net 10.0.0.0/8"),
            Just("dst net 192.168.0.0/16"),
            Just("net fe80::/64"),
            Just("ip6 net fe80::/126")
        ]
        .prop_map(String::from),
        (
            prop_oneof![
                Just(""),
                Just("tcp "),
                Just("udp "),
                Just("sctp "),
                Just("src "),
                Just("tcp dst "),
                Just("ip ")
            ],
            port.clone()
        )
            .prop_map(|(q, p)| format!("{q}port {p}")),
        prop_oneof![
            Just("portrange 50-100"),
            Just("tcp portrange 400-1000"),
            Just("udp portrange 1-60")
        ]
        .prop_map(String::from),
        prop_oneof![
            Just("tcp"),
            Just("udp"),
            Just("icmp"),
            Just("icmp6"),
            Just("igmp"),
            Just("sctp"),
            Just("ip"),
            Just("ip6"),
            Just("arp"),
            Just("rarp"),
            Just("ip proto 47"),
            Just("ip6 proto 17"),
            Just("proto 6"),
            Just("ip proto 1")
        ]
        .prop_map(String::from),
        prop_oneof![
            Just("vlan"),
            Just("ether host 02:00:00:00:00:01"),
            Just("less 60"),
            Just("ip[9] = 6")
        ]
        .prop_map(String::from),
    ];
    let bare = prop_oneof![a4.prop_map(|a| a), port];
    atom.prop_recursive(3, 12, 3, move |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} and {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} or {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) && ({b})")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(a, b, c)| format!("{a} or {b} and {c}")),
            inner.clone().prop_map(|a| format!("not {a}")),
            inner.clone().prop_map(|a| format!("!({a})")),
            (inner.clone(), bare.clone()).prop_map(|(a, b)| format!("{a} or {b}")),
            (inner.clone(), bare.clone()).prop_map(|(a, b)| format!("{a} and not {b}")),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// No false negatives: whenever libpcap's program matches a frame, the planner says a range
    /// holding it (alone, or among the others) may match.
    #[test]
    fn the_planner_never_prunes_a_frame_libpcap_matches(
        filter in filter_strategy(),
        frames in proptest::collection::vec(frame_strategy(), 1..12),
    ) {
        let Ok(bpf) = Filter::new(&filter) else {
            // libpcap refuses it (`arp host fe80::1`...): the query is refused too.
            return Ok(());
        };
        let plan = Plan::of(Some(&filter));
        let whole = range_of(&frames);
        for f in &frames {
            if bpf.matches(f.0, &f.1) {
                prop_assert!(plan.may_match(&range_of(std::slice::from_ref(f))), "{filter:?} matches {:?} {:02x?} alone; plan {plan:?}", f.0, f.1);
                prop_assert!(plan.may_match(&whole), "{filter:?} among others; plan {plan:?}");
            }
        }
    }
}

#[test]
fn the_planner_prunes_what_it_can() {
    let frames = |hosts: &[[u8; 4]]| -> BlockRecord {
        let fs: Vec<(LinkType, Vec<u8>)> = hosts
            .iter()
            .map(|h| {
                let mut f = vec![0u8; 12];
                f.extend_from_slice(&[8, 0, 0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0]);
                f.extend_from_slice(h);
                f.extend_from_slice(&[10, 9, 9, 9, 0x30, 0x39, 0, 80]);
                f.extend_from_slice(&[0; 16]);
                (LinkType::Ethernet, f)
            })
            .collect();
        range_of(&fs)
    };
    let r = frames(&[[10, 0, 0, 1], [10, 0, 0, 2]]);
    let yes = |f: &str| Plan::of(Some(f)).may_match(&r);
    assert!(yes("host 10.0.0.1"));
    assert!(!yes("host 10.0.0.7"));
    assert!(
        yes("host 10.0.0.7 or 10.0.0.2"),
        "a bare value takes the last qualifiers"
    );
    assert!(!yes("host 10.0.0.7 or 10.0.0.8"));
    assert!(!yes("tcp port 81"));
    assert!(yes("tcp port 80 and net 10.0.0.0/30"));
    assert!(!yes("udp"));
    assert!(!yes("host 10.0.0.1 and udp"));
    // Same precedence, from the left: (a or b) and c.
    assert!(!yes("host 10.0.0.1 or host 10.0.0.2 and udp"));
    assert!(yes("host 10.0.0.1 or (host 10.0.0.2 and udp)"));
    // Negations prune nothing; what the index cannot read is time only.
    assert!(yes("not host 10.0.0.1"));
    assert!(yes("not tcp"));
    assert!(matches!(
        Plan::of(Some("vlan and host 10.0.0.7")),
        Plan::TimeOnly(_)
    ));
    assert!(matches!(
        Plan::of(Some("host example.com")),
        Plan::TimeOnly(_)
    ));
    assert!(matches!(
        Plan::of(Some("tcp[13] & 2 != 0")),
        Plan::TimeOnly(_)
    ));
    assert_eq!(Plan::of(Some("  ")), Plan::Everything);
    assert_eq!(
        Plan::of(Some("src or dst host 10.0.0.1")),
        Plan::Index(Pred::Atom(Atom::V4(0x0a00_0001, 0x0a00_0001)))
    );
    // A range without packets matches nothing.
    assert!(!Plan::Everything.may_match(&range_of(&[])));
}

// ---------------------------------------------------------------------------------------------
// Whole queries

static N: AtomicU32 = AtomicU32::new(0);

fn temp_dir(what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "tapwire-query-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A packet: (time, interface name, source host byte, frame).
type Pkt = (u64, &'static str, u8, Vec<u8>);

fn frame(host: u8, port: u16, n: u32) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0];
    f.extend_from_slice(&[
        0x45, 0, 0, 40, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, host, 10, 9, 9, 9,
    ]);
    f.extend_from_slice(&[0x30, 0x39]);
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&n.to_be_bytes());
    f.extend_from_slice(&[0; 12]);
    f
}

/// Writes a session file of `packets` as the collector would (its index written the way the
/// disk thread writes it, or none).
fn write_capture(path: &Path, format: Format, packets: &[Pkt], with_index: bool, gap_every: usize) {
    let mut enc = Encoder::new(format);
    let mut log = KeyLog::new(0);
    let mut ifaces: Vec<&str> = Vec::new();
    let mut metas = Vec::new();
    metas.push(0..enc.pending_len());
    for (i, (ts, iface, _, f)) in packets.iter().enumerate() {
        let id = match ifaces.iter().position(|n| n == iface) {
            Some(id) => id,
            None => {
                let start = enc.pending_len();
                enc.add_interface(&InterfaceInfo {
                    link: LinkType::Ethernet,
                    name: iface.to_string(),
                    description: "test".into(),
                    snaplen: 65535,
                })
                .unwrap();
                if enc.pending_len() > start {
                    metas.push(start..enc.pending_len());
                }
                ifaces.push(iface);
                ifaces.len() - 1
            }
        } as u32;
        let id = if matches!(format, Format::Pcap { .. }) {
            0
        } else {
            id
        };
        let comment = (gap_every > 0 && i % gap_every == gap_every - 1)
            .then(|| format!("tapwire: sequence gap, 1 lost before this packet (seq {i})"));
        enc.packet(
            id,
            &PacketInfo {
                ts_ns: *ts,
                orig_len: f.len() as u32,
                data: f,
                direction: None,
                comment: comment.as_deref(),
            },
        )
        .unwrap();
        log.packet(
            enc.pending_len(),
            *ts,
            id,
            &FrameKeys::of(LinkType::Ethernet, f),
            comment.as_deref(),
        );
    }
    let bytes = enc.take_bytes();
    std::fs::write(path, &bytes).unwrap();
    if with_index {
        log.finish(bytes.len());
        let mut ix = index::file::header().to_vec();
        for m in metas {
            index::file::put_meta(&mut ix, m.start as u64, &bytes[m]);
        }
        log.encode(0, None, &mut ix);
        index::file::put_end(&mut ix, bytes.len() as u64);
        std::fs::write(crate::live::io::sidecar_path(path), ix).unwrap();
    }
}

/// A packet read back: (time, interface name, data).
type Got = (u64, String, Vec<u8>);

/// The packets of a pcapng, and its section comments.
fn read_out(b: &[u8]) -> (Vec<Got>, Vec<String>) {
    let mut w = Walker::new();
    let mut at = 0;
    let mut got = Vec::new();
    let mut comments = Vec::new();
    loop {
        match w.step(&b[at..]) {
            Step::Packet(n, p) => {
                let name = w.interfaces()[p.iface as usize]
                    .name
                    .clone()
                    .unwrap_or_default();
                got.push((p.ts_ns, name, p.data.to_vec()));
                at += n;
            }
            Step::Meta(n) => {
                if b[at..at + 4] == [0x0a, 0x0d, 0x0d, 0x0a] {
                    let shb = &b[at..at + n];
                    comments.extend(
                        pcapng::options(&shb[24..n - 4], Endian::native())
                            .filter(|(c, _)| *c == 1)
                            .map(|(_, v)| String::from_utf8_lossy(v).into_owned()),
                    );
                }
                at += n;
            }
            Step::Other(n) => at += n,
            Step::Incomplete(_) if at == b.len() => return (got, comments),
            s => panic!("output damaged at {at}: {s:?}"),
        }
    }
}

/// What mergecap does with what `tcpdump -r FILTER` leaves of each file: the earliest head
/// first; of equal times, the later file's (Wireshark's merge takes the last of the earliest).
fn reference(files: &[Vec<Pkt>], filter: Option<&str>, from: u64, to: u64) -> Vec<Got> {
    let bpf = filter.map(|f| Filter::new(f).unwrap());
    let kept: Vec<Vec<&Pkt>> = files
        .iter()
        .map(|f| {
            f.iter()
                .filter(|p| {
                    bpf.as_ref()
                        .is_none_or(|b| b.matches(LinkType::Ethernet, &p.3))
                })
                .collect()
        })
        .collect();
    let mut at = vec![0; kept.len()];
    let mut out = Vec::new();
    loop {
        let mut best: Option<usize> = None;
        for (i, k) in kept.iter().enumerate() {
            if let Some(p) = k.get(at[i])
                && best.is_none_or(|b| p.0 <= kept[b][at[b]].0)
            {
                best = Some(i);
            }
        }
        let Some(b) = best else { break };
        let p = kept[b][at[b]];
        at[b] += 1;
        if p.0 >= from && p.0 <= to {
            out.push((p.0, p.1.to_string(), p.3.clone()));
        }
    }
    out
}

fn run(dir: &Path, req: &Request) -> (Vec<Got>, Vec<String>, Summary) {
    let local = LocalDirs {
        dirs: vec![dir.to_path_buf()],
        ..LocalDirs::default()
    };
    let p = prepare(&local, req, None).unwrap();
    let mut out = Vec::new();
    let s = p.write(&mut out).unwrap();
    let (pkts, comments) = read_out(&out);
    assert_eq!(pkts.len() as u64, s.packets);
    (pkts, comments, s)
}

fn packets_strategy() -> impl Strategy<Value = Vec<Vec<Pkt>>> {
    let pkt = (
        0u64..40,
        prop_oneof![
            Just("10.0.0.5 erspan-ii session 1"),
            Just("10.0.0.6 erspan-ii session 2")
        ],
        1u8..6,
        prop_oneof![Just(53u16), Just(80)],
    );
    proptest::collection::vec(proptest::collection::vec(pkt, 0..300), 1..4).prop_map(|files| {
        let mut n = 0u32;
        let mut base = 1_700_000_000_000_000_000u64;
        files
            .into_iter()
            .map(|f| {
                let mut t = base;
                let v: Vec<Pkt> = f
                    .into_iter()
                    .map(|(dt, iface, host, port)| {
                        // Mostly increasing, with ties, and the files overlapping in time.
                        t += dt.saturating_sub(5) * 1000;
                        n += 1;
                        (t, iface, host, frame(host, port, n))
                    })
                    .collect();
                base += 100_000;
                v
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A query over rotated files equals the reference merge of the filtered files, whether
    /// the files have an index, none (built after the fact), or the one built then.
    #[test]
    fn queries_equal_the_reference_merge(
        files in packets_strategy(),
        filter in prop_oneof![Just(None), Just(Some("host 10.0.0.3")), Just(Some("udp port 80")), Just(Some("vlan or host 10.0.0.1")), Just(Some("not host 10.0.0.2"))],
        indexed in any::<bool>(),
        window in proptest::option::of((0u64..200_000, 0u64..400_000)),
    ) {
        let dir = temp_dir("merge");
        for (i, f) in files.iter().enumerate() {
            let path = dir.join(format!("s_20260101T00000{i}Z.pcapng"));
            write_capture(&path, Format::Pcapng, f, indexed, 7);
        }
        let base = 1_700_000_000_000_000_000u64;
        let (from, to) = window.map_or((0, u64::MAX), |(a, b)| (base + a, base + a + b));
        let req = Request {
            session: Some("s".into()),
            from_ns: from,
            to_ns: to,
            filter: filter.map(String::from),
            ..Request::default()
        };
        let want = reference(&files, filter, from, to);
        for round in 0..2 {
            let (got, comments, _) = run(&dir, &req);
            prop_assert_eq!(&got, &want, "round {}", round);
            prop_assert!(comments[0].starts_with("tapwire query: from"));
            // Every gap comment in the range is listed, whether its packet matched or not.
            let n_gaps = files.iter().flatten().enumerate().filter(|(_, p)| p.0 >= from && p.0 <= to).count();
            let listed = comments.iter().filter(|c| c.contains("sequence gap")).count();
            prop_assert!(listed <= n_gaps);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn gap_comments_of_the_range_are_listed_and_interfaces_carried_once() {
    let dir = temp_dir("gaps");
    let a: Vec<Pkt> = (0..50u32)
        .map(|i| {
            (
                1_000 + u64::from(i),
                "10.0.0.5 erspan-ii session 1",
                1,
                frame(1, 53, i),
            )
        })
        .collect();
    let b: Vec<Pkt> = (50..100u32)
        .map(|i| {
            (
                1_000 + u64::from(i),
                "10.0.0.5 erspan-ii session 1",
                2,
                frame(2, 53, i),
            )
        })
        .collect();
    write_capture(
        &dir.join("s_20260101T000000Z.pcapng"),
        Format::Pcapng,
        &a,
        false,
        10,
    );
    write_capture(
        &dir.join("s_20260101T000001Z.pcapng"),
        Format::Pcapng,
        &b,
        true,
        10,
    );
    let req = Request {
        session: Some("s".into()),
        from_ns: 1_000,
        to_ns: 1_079,
        filter: Some("host 10.0.0.1".into()),
        ..Request::default()
    };
    let (got, comments, s) = run(&dir, &req);
    assert_eq!(got.len(), 50);
    // Gaps on packets 9, 19, ... 79 (the first file's found by its scan): eight, although
    // only the first file's packets match.
    assert_eq!(
        comments
            .iter()
            .filter(|c| c.contains("sequence gap"))
            .count(),
        8,
        "{comments:?}"
    );
    assert!(comments[1].contains("10.0.0.5 erspan-ii session 1: tapwire: sequence gap"));
    assert_eq!(s.estimate.files, 1, "the second file holds no 10.0.0.1");
    assert!(
        s.bytes_read
            < std::fs::metadata(dir.join("s_20260101T000000Z.pcapng"))
                .unwrap()
                .len()
                + 1
    );
    // One interface block for the source, whatever the number of files.
    let mut out = Vec::new();
    let local = LocalDirs {
        dirs: vec![dir.clone()],
        ..LocalDirs::default()
    };
    prepare(
        &local,
        &Request {
            filter: None,
            ..req.clone()
        },
        None,
    )
    .unwrap()
    .write(&mut out)
    .unwrap();
    let mut w = Walker::new();
    let mut at = 0;
    while let Step::Packet(n, _) | Step::Meta(n) | Step::Other(n) = w.step(&out[at..]) {
        at += n;
    }
    assert_eq!(w.interfaces().len(), 1);
    // The scanned file (finished: a later one exists) got its index written after the fact.
    assert!(dir.join("s_20260101T000000Z.pcapng.twidx").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sources_classic_pcap_and_compressed_files() {
    use std::io::Write as _;
    let dir = temp_dir("kinds");
    let a: Vec<Pkt> = (0..40u32)
        .map(|i| {
            (
                5_000 + 2 * u64::from(i),
                if i % 2 == 0 {
                    "10.0.0.5 x"
                } else {
                    "10.0.0.6 x"
                },
                1,
                frame(1, 80, i),
            )
        })
        .collect();
    let b: Vec<Pkt> = (0..40u32)
        .map(|i| {
            (
                5_001 + 2 * u64::from(i),
                "10.0.0.7 x",
                1,
                frame(1, 80, 100 + i),
            )
        })
        .collect();
    write_capture(
        &dir.join("s_20260101T000000Z.pcapng"),
        Format::Pcapng,
        &a,
        true,
        0,
    );
    write_capture(
        &dir.join("s_20260101T000001Z.pcap"),
        Format::Pcap { nanos: true },
        &b,
        false,
        0,
    );
    let req = Request {
        session: Some("s".into()),
        from_ns: 0,
        to_ns: u64::MAX,
        ..Request::default()
    };
    let (all, _, _) = run(&dir, &req);
    assert_eq!(all.len(), 80);
    assert!(all.windows(2).all(|w| w[0].0 <= w[1].0), "merged by time");
    let (one, _, _) = run(
        &dir,
        &Request {
            source: Some("10.0.0.6".parse().unwrap()),
            ..req.clone()
        },
    );
    assert_eq!(one.len(), 20);
    assert!(one.iter().all(|p| p.1 == "10.0.0.6 x"));
    // Compressed by an on-finish command: the same packets, its index kept under the
    // uncompressed name (here: none, so scanned and written).
    let plain = dir.join("s_20260101T000000Z.pcapng");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&std::fs::read(&plain).unwrap()).unwrap();
    std::fs::write(
        dir.join("s_20260101T000000Z.pcapng.gz"),
        gz.finish().unwrap(),
    )
    .unwrap();
    std::fs::remove_file(&plain).unwrap();
    std::fs::remove_file(crate::live::io::sidecar_path(&plain)).unwrap();
    let (again, _, _) = run(&dir, &req);
    assert_eq!(again, all);
    assert!(crate::live::io::sidecar_path(&plain).exists());
    let (again, _, _) = run(&dir, &req);
    assert_eq!(again, all, "with the index written after the fact");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn damage_is_served_up_to_where_it_starts_and_named() {
    let dir = temp_dir("damage");
    let pk = |k: u32| -> Vec<Pkt> {
        (0..200u32)
            .map(|i| {
                (
                    10_000 * u64::from(k) + u64::from(i),
                    "10.0.0.5 x",
                    1,
                    frame(1, 80, i),
                )
            })
            .collect()
    };
    let first = dir.join("s_20260101T000000Z.pcapng");
    let second = dir.join("s_20260101T000001Z.pcapng");
    let third = dir.join("s_20260101T000002Z.pcapng");
    write_capture(&first, Format::Pcapng, &pk(1), true, 0);
    write_capture(&second, Format::Pcapng, &pk(2), false, 0);
    write_capture(&third, Format::Pcapng, &pk(3), true, 0);
    // The first: cut in the middle of a record (its index says more).
    let b = std::fs::read(&first).unwrap();
    std::fs::write(&first, &b[..b.len() / 2 + 3]).unwrap();
    // The second: a block's length overwritten in the middle.
    let mut b = std::fs::read(&second).unwrap();
    let mut w = Walker::new();
    let (mut at, mut n) = (0, 0);
    while n < 100 {
        let (Step::Packet(k, _) | Step::Meta(k) | Step::Other(k)) = w.step(&b[at..]) else {
            panic!()
        };
        at += k;
        n += 1;
    }
    b[at + 4..at + 8].copy_from_slice(&[0xff, 0xff, 0xff, 0x7f]);
    std::fs::write(&second, &b).unwrap();
    // The third: its index damaged.
    let ix = crate::live::io::sidecar_path(&third);
    let mut x = std::fs::read(&ix).unwrap();
    let at = x.len() / 2;
    x[at] ^= 0x55;
    std::fs::write(&ix, &x).unwrap();
    let req = Request {
        session: Some("s".into()),
        from_ns: 0,
        to_ns: u64::MAX,
        ..Request::default()
    };
    let (got, comments, s) = run(&dir, &req);
    let count = |k: u64| got.iter().filter(|p| p.0 / 10_000 == k).count();
    assert!((90..100).contains(&count(1)), "first: {}", count(1));
    assert!((90..100).contains(&count(2)), "second: {}", count(2));
    assert_eq!(count(3), 200, "a damaged index: the file is scanned");
    assert!(
        comments
            .iter()
            .any(|c| c.contains("s_20260101T000001Z.pcapng: damaged at byte")),
        "{comments:?}"
    );
    assert!(
        comments
            .iter()
            .any(|c| c.contains("s_20260101T000002Z.pcapng: index damaged")),
        "{comments:?}"
    );
    assert!(
        comments
            .iter()
            .any(|c| c.contains("s_20260101T000000Z.pcapng")),
        "{comments:?}"
    );
    assert!(!s.notes.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn refusals_before_anything_is_read() {
    let dir = temp_dir("refuse");
    let a: Vec<Pkt> = (0..100u32)
        .map(|i| (100 + u64::from(i), "10.0.0.5 x", 1, frame(1, 80, i)))
        .collect();
    write_capture(
        &dir.join("s_20260101T000000Z.pcapng"),
        Format::Pcapng,
        &a,
        true,
        0,
    );
    let local = LocalDirs {
        dirs: vec![dir.clone()],
        ..LocalDirs::default()
    };
    let req = Request {
        session: Some("s".into()),
        from_ns: 0,
        to_ns: u64::MAX,
        ..Request::default()
    };
    match prepare(&local, &req, Some(1000)) {
        Err(QueryError::TooLarge {
            estimate,
            limit_bytes: 1000,
        }) => {
            assert_eq!(estimate.packets, 100);
            assert!(estimate.bytes > 1000);
        }
        other => panic!("{:?}", other.map(|p| p.estimate())),
    }
    let bad = prepare(
        &local,
        &Request {
            filter: Some("tcp port".into()),
            ..req.clone()
        },
        None,
    );
    assert!(
        matches!(&bad, Err(QueryError::Filter(m)) if m.contains("syntax error")),
        "{:?}",
        bad.err()
    );
    let bad = prepare(
        &local,
        &Request {
            session: Some("../etc".into()),
            ..req.clone()
        },
        None,
    );
    assert!(matches!(bad, Err(QueryError::BadRequest(_))));
    let bad = prepare(
        &local,
        &Request {
            from_ns: 5,
            to_ns: 4,
            ..req.clone()
        },
        None,
    );
    assert!(matches!(bad, Err(QueryError::BadRequest(_))));
    // No data in the range: an empty, valid pcapng.
    let (got, comments, _) = run(
        &dir,
        &Request {
            from_ns: 10_000,
            to_ns: 20_000,
            ..req.clone()
        },
    );
    assert!(got.is_empty());
    assert_eq!(comments.len(), 1);
    let (got, _, _) = run(
        &dir,
        &Request {
            session: Some("nothing".into()),
            ..req
        },
    );
    assert!(got.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// An index damaged anywhere (bytes changed, or cut) costs a scan, never a packet: the
    /// answer is every packet of the file, and the damage is named. A capture damaged anywhere
    /// gives a valid pcapng of what could be read (never a panic), at most its packets.
    #[test]
    fn damage_anywhere_never_panics_and_an_index_never_loses_a_packet(
        n in 1u32..400,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        in_capture in any::<bool>(),
        filter in prop_oneof![Just(None), Just(Some("host 10.0.0.2"))],
    ) {
        let dir = temp_dir("fuzzed");
        let pk: Vec<Pkt> = (0..n)
            .map(|i| (1_000 + u64::from(i), "10.0.0.5 x", 1, frame(1 + (i % 3) as u8, 80, i)))
            .collect();
        // A later file: the damaged one is finished (its index is rewritten after the fact).
        let path = dir.join("s_20260101T000000Z.pcapng");
        write_capture(&path, Format::Pcapng, &pk, true, 7);
        write_capture(&dir.join("s_20260101T000001Z.pcapng"), Format::Pcapng, &[], true, 0);
        let target = if in_capture { path.clone() } else { crate::live::io::sidecar_path(&path) };
        let mut b = std::fs::read(&target).unwrap();
        let keep = cut.map_or(b.len(), |c| c.index(b.len()));
        // A cut at a record's end looks like an index whose writer stopped (not named): damage
        // is a changed byte that is kept.
        let mut damaged = false;
        for (at, x) in &flips {
            let i = at.index(b.len());
            b[i] ^= x;
            damaged |= i < keep;
        }
        b.truncate(keep);
        std::fs::write(&target, &b).unwrap();
        let req = Request {
            session: Some("s".into()),
            from_ns: 0,
            to_ns: u64::MAX,
            filter: filter.map(str::to_string),
            ..Request::default()
        };
        let (got, comments, _) = run(&dir, &req);
        let want = reference(std::slice::from_ref(&pk), filter, 0, u64::MAX);
        if in_capture {
            // Never more packets than the file holds (the output is checked whole by read_out).
            prop_assert!(got.len() <= n as usize, "{} of {}", got.len(), n);
        } else {
            prop_assert_eq!(&got, &want);
            if damaged {
                prop_assert!(comments.iter().any(|c| c.contains("s_20260101T000000Z.pcapng")), "{:?}", comments);
            }
            // The index written after the fact is whole: a second query reads it, and agrees.
            let (again, _, _) = run(&dir, &req);
            prop_assert_eq!(&again, &want);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Fleet queries: parts merged

/// A query's answer over `dir`, as the pieces a part's channel carries.
fn part_of(dir: &Path, req: &Request, collector: &str, piece_bytes: usize) -> fleet::Part {
    let local = LocalDirs {
        dirs: vec![dir.to_path_buf()],
        ..LocalDirs::default()
    };
    let mut out = Vec::new();
    prepare(&local, req, None).unwrap().write(&mut out).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(out.len() / piece_bytes + 2);
    for piece in out.chunks(piece_bytes) {
        tx.try_send(Ok(piece.to_vec())).unwrap();
    }
    fleet::Part {
        collector: collector.into(),
        chunks: rx,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// One session's files split over two collectors: their parts merged equal one query
    /// over all the files (and so the reference merge: mergecap of tcpdump's output), ties
    /// and all, however the parts arrive in pieces.
    #[test]
    fn parts_merged_equal_the_reference_merge_of_all_files(
        files in packets_strategy(),
        split in 0usize..4,
        filter in prop_oneof![Just(None), Just(Some("host 10.0.0.3")), Just(Some("udp port 80"))],
        piece_bytes in prop_oneof![Just(7usize), Just(100), Just(1 << 20)],
    ) {
        let split = split.min(files.len());
        let (a, b) = (temp_dir("part-a"), temp_dir("part-b"));
        for (i, f) in files.iter().enumerate() {
            let dir = if i < split { &a } else { &b };
            let path = dir.join(format!("s_20260101T00000{i}Z.pcapng"));
            write_capture(&path, Format::Pcapng, f, true, 7);
        }
        let req = Request {
            session: Some("s".into()),
            from_ns: 0,
            to_ns: u64::MAX,
            filter: filter.map(String::from),
            ..Request::default()
        };
        let parts = vec![
            part_of(&a, &req, "a", piece_bytes),
            part_of(&b, &req, "b", piece_bytes),
        ];
        let mut out = Vec::new();
        let m = fleet::merge(parts, Vec::new(), describe(&req), &mut out).unwrap();
        let (got, comments) = read_out(&out);
        prop_assert_eq!(&got, &reference(&files, filter, 0, u64::MAX));
        prop_assert_eq!(m.packets, got.len() as u64);
        prop_assert!(m.missing.is_empty());
        prop_assert!(comments[0].starts_with("tapwire query: from"));
        prop_assert_eq!(&comments[1], "tapwire query: parts from collectors a, b");
        // Interfaces carried once each, whichever part they came from.
        let idbs = count_idbs(&out);
        prop_assert!(idbs <= 2, "{} interface blocks", idbs);
        std::fs::remove_dir_all(&a).unwrap();
        std::fs::remove_dir_all(&b).unwrap();
    }
}

fn count_idbs(b: &[u8]) -> usize {
    let mut at = 0;
    let mut n = 0;
    while at + 8 <= b.len() {
        let kind = u32::from_ne_bytes(b[at..at + 4].try_into().unwrap());
        let len = u32::from_ne_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize;
        n += usize::from(kind == pcapng::IDB);
        at += len;
    }
    n
}

/// A part that breaks off mid-stream and a collector that could not be asked are both named
/// in the output (its last section header); the packets that did arrive are kept.
#[test]
fn a_part_that_breaks_off_and_a_collector_not_asked_are_named() {
    let dir = temp_dir("part-broken");
    let pkts: Vec<Pkt> = (0..50u32)
        .map(|i| {
            (
                1_000 + u64::from(i),
                "10.0.0.5 erspan-ii session 1",
                1,
                frame(1, 80, i),
            )
        })
        .collect();
    write_capture(
        &dir.join("s_20260101T000000Z.pcapng"),
        Format::Pcapng,
        &pkts,
        true,
        0,
    );
    let req = Request {
        session: Some("s".into()),
        from_ns: 0,
        to_ns: u64::MAX,
        ..Request::default()
    };
    let whole = part_of(&dir, &req, "b", 1 << 20);
    // "a" sends its first 1000 bytes, then its connection breaks.
    let mut local = Vec::new();
    let l = LocalDirs {
        dirs: vec![dir.clone()],
        ..LocalDirs::default()
    };
    prepare(&l, &req, None).unwrap().write(&mut local).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.try_send(Ok(local[..1000].to_vec())).unwrap();
    tx.try_send(Err("the connection broke: reset".into()))
        .unwrap();
    let broken = fleet::Part {
        collector: "a".into(),
        chunks: rx,
    };
    let not_asked = fleet::Missing {
        collector: "c".into(),
        why: "its lease ran out (it is not live)".into(),
    };
    let mut out = Vec::new();
    let m = fleet::merge(
        vec![broken, whole],
        vec![not_asked],
        describe(&req),
        &mut out,
    )
    .unwrap();
    let (got, comments) = read_out(&out);
    let from_a = m.by_collector[0].1;
    assert_eq!(m.by_collector[1], ("b".to_string(), 50));
    assert!(from_a > 0 && from_a < 50, "{from_a}");
    assert_eq!(got.len() as u64, 50 + from_a);
    let missing: Vec<&str> = m.missing.iter().map(|x| x.collector.as_str()).collect();
    assert_eq!(missing, ["c", "a"]);
    assert!(
        comments
            .iter()
            .any(|c| c.starts_with("collector c could not be read: its lease ran out")),
        "{comments:?}"
    );
    assert!(
        comments.iter().any(|c| c
            .starts_with("collector a could not be read: its part broke off after")
            && c.contains("reset")),
        "{comments:?}"
    );
    // The output stays a valid capture: capinfos-like reading above went to its end.
    std::fs::remove_dir_all(&dir).unwrap();
}
