//! A realistic collector, second by second, for tests and screenshots: five sessions that
//! between them show every state (receiving, idle, disabled, error), several sources, loss,
//! truncation, policy and write drops, ERSPAN II and III fields, a protocol mix and talkers.
//! Deterministic: the same second gives the same snapshot.

use std::collections::BTreeMap;

use tapwire_api_types::{
    Drops, ErspanSeen, FileStats, InputStats, ProtocolMix, Rates, Sequence, SessionState,
    SessionStats, Snapshot, SourceStats, StreamStats, StreamSubscriber, Talker, Totals,
};

/// 2026-11-21T05:00:00Z, when the fixture collector started.
const STARTED_S: u64 = 1_795_237_200;
/// Uptime at second 0 of the fixture.
const UPTIME0_S: u64 = 3600;

/// A triangle wave in `0..=amp` with the given period: traffic that rises and falls.
fn wave(t: u64, period: u64, amp: u64) -> u64 {
    let x = t % period;
    let half = period / 2;
    let up = if x < half { x } else { period - x };
    up * amp / half.max(1)
}

/// Packets per second of each fixture source at second `t`: (edge-sw1 a, edge-sw1 b, vxlan).
fn pps_at(t: u64) -> [u64; 3] {
    [
        9000 + wave(t, 40, 6000),
        2500 + wave(t + 10, 16, 900),
        800 + wave(t, 10, 100),
    ]
}

fn rfc3339(secs: u64, millis: u64) -> String {
    // Days since the epoch to a civil date (Howard Hinnant), enough for the fixture's range.
    let days = (secs / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}000000Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn rates(pps: u64, avg_bytes: u64, pps_10s: u64) -> Rates {
    Rates {
        pps_1s: pps as f64,
        bps_1s: (pps * avg_bytes * 8) as f64,
        pps_10s: pps_10s as f64,
        bps_10s: (pps_10s * avg_bytes * 8) as f64,
    }
}

#[allow(clippy::too_many_arguments)]
fn source(
    src: &str,
    kind: &str,
    id: u32,
    packets: u64,
    avg: u64,
    rate: Rates,
    last_seen: String,
    erspan: Option<ErspanSeen>,
) -> SourceStats {
    let id_name = match kind {
        "vxlan" | "geneve" => "vni",
        "gre" => "key",
        _ => "session",
    };
    SourceStats {
        src: src.into(),
        kind: kind.into(),
        id,
        label: format!("{src} {kind} {id_name} {id}"),
        packets,
        bytes: packets * avg,
        lost: 0,
        duplicates: 0,
        reordered: 0,
        truncated: 0,
        gre_checksum_bad: 0,
        sequence: Sequence::PerSource,
        drops: Drops::default(),
        first_seen: Some(rfc3339(STARTED_S + 2, 0)),
        last_seen: Some(last_seen),
        rates: rate,
        erspan,
    }
}

/// The fixture collector `t` seconds into the fixture (uptime 1 h + `t`).
pub fn snapshot(t: u64) -> Snapshot {
    let uptime = UPTIME0_S + t;
    let now_s = STARTED_S + uptime;
    let now = rfc3339(now_s, 400);
    // Counters: a base plus the sum of the per-second rates so far.
    let mut n = [41_000_000u64, 9_100_000, 2_900_000];
    for s in 0..t {
        for (c, r) in n.iter_mut().zip(pps_at(s)) {
            *c += r;
        }
    }
    let p = pps_at(t);
    let p10 = {
        let from = t.saturating_sub(9);
        let mut acc = [0u64; 3];
        for s in from..=t {
            for (a, r) in acc.iter_mut().zip(pps_at(s)) {
                *a += r;
            }
        }
        acc.map(|a| a / (t - from + 1))
    };

    let mut a = source(
        "10.0.0.5",
        "erspan-ii",
        42,
        n[0],
        620,
        rates(p[0], 620, p10[0]),
        now.clone(),
        Some(ErspanSeen {
            vlans: BTreeMap::from([(100, n[0] * 3 / 4), (200, n[0] / 4)]),
            ingress: 0,
            egress: 0,
            hardware_ids: BTreeMap::new(),
        }),
    );
    a.lost = 17;
    a.truncated = 3;
    let mut b = source(
        "10.0.0.6",
        "erspan-iii",
        42,
        n[1],
        410,
        rates(p[1], 410, p10[1]),
        now.clone(),
        Some(ErspanSeen {
            vlans: BTreeMap::from([(100, n[1])]),
            ingress: n[1] * 3 / 5,
            egress: n[1] - n[1] * 3 / 5,
            hardware_ids: BTreeMap::from([(5, n[1])]),
        }),
    );
    b.reordered = 2;
    b.sequence = Sequence::SharedBySender;
    let edge_packets = n[0] + n[1];
    let edge_bytes = a.bytes + b.bytes;
    let edge = SessionStats {
        name: "edge-sw1".into(),
        state: SessionState::Receiving,
        enabled: true,
        auto: false,
        filter: None,
        packets: edge_packets,
        bytes: edge_bytes,
        written: edge_packets,
        pending: 0,
        lost: 17,
        truncated: 3,
        gre_checksum_bad: 0,
        drops: Drops::default(),
        rates: Rates {
            pps_1s: a.rates.pps_1s + b.rates.pps_1s,
            bps_1s: a.rates.bps_1s + b.rates.bps_1s,
            pps_10s: a.rates.pps_10s + b.rates.pps_10s,
            bps_10s: a.rates.bps_10s + b.rates.bps_10s,
        },
        last_seen: Some(now.clone()),
        files: Some(FileStats {
            dir: "/var/lib/tapwire/edge".into(),
            format: "pcapng".into(),
            current: Some("/var/lib/tapwire/edge/edge-sw1_20261121T060000Z.pcapng".into()),
            current_bytes: 431_000_000 + t * 6_000_000,
            files_finished: 11,
            error: None,
        }),
        sources: vec![a, b],
        n_sources: 2,
        sources_page: None,
        protocols: ProtocolMix {
            ipv4: edge_packets * 7 / 10,
            ipv6: edge_packets / 5,
            arp: edge_packets / 20,
            tcp: edge_packets * 6 / 10,
            udp: edge_packets * 27 / 100,
            icmp: edge_packets * 3 / 100,
            other: edge_packets - edge_packets * 7 / 10 - edge_packets / 5 - edge_packets / 20,
        },
        top_talkers: vec![
            Talker {
                addr: "192.0.2.10".into(),
                bytes: edge_bytes / 3,
                packets: edge_packets / 4,
            },
            Talker {
                addr: "2001:db8::20".into(),
                bytes: edge_bytes / 8,
                packets: edge_packets / 9,
            },
            Talker {
                addr: "198.51.100.7".into(),
                bytes: edge_bytes / 20,
                packets: edge_packets / 30,
            },
        ],
        tap: None,
        streams: StreamStats {
            delivered: 2 * edge_packets,
            dropped: 4_096 + 64 * t,
            subscribers: vec![
                StreamSubscriber {
                    peer: "192.0.2.50:51234".into(),
                    filter: Some("tcp port 443".into()),
                    since: now.clone(),
                    delivered: edge_packets,
                    dropped: 4_096 + 64 * t,
                    queued_bytes: 8 << 20,
                },
                StreamSubscriber {
                    peer: "127.0.0.1:40022".into(),
                    filter: None,
                    since: now.clone(),
                    delivered: edge_packets,
                    dropped: 0,
                    queued_bytes: 0,
                },
            ],
        },
    };

    let v = source(
        "10.0.0.7",
        "vxlan",
        100,
        n[2],
        1100,
        rates(p[2], 1100, p10[2]),
        now.clone(),
        None,
    );
    let vxlan = SessionStats {
        name: "10.0.0.7_vxlan_100".into(),
        state: SessionState::Receiving,
        enabled: true,
        auto: true,
        filter: None,
        packets: v.packets,
        bytes: v.bytes,
        written: v.packets,
        pending: 0,
        lost: 0,
        truncated: 0,
        gre_checksum_bad: 0,
        drops: Drops::default(),
        rates: v.rates,
        last_seen: Some(now.clone()),
        files: Some(FileStats {
            dir: "/var/lib/tapwire".into(),
            format: "pcapng".into(),
            current: Some("/var/lib/tapwire/10.0.0.7_vxlan_100_20261121T054500Z.pcapng".into()),
            current_bytes: 88_000_000 + t * 900_000,
            files_finished: 3,
            error: None,
        }),
        sources: vec![v],
        n_sources: 1,
        sources_page: None,
        protocols: ProtocolMix::default(),
        top_talkers: Vec::new(),
        tap: None,
        streams: StreamStats::default(),
    };

    let idle_seen = rfc3339(STARTED_S + UPTIME0_S - 42, 400);
    let d = source(
        "10.1.0.9",
        "erspan-iii",
        7,
        51_234,
        300,
        Rates::default(),
        idle_seen.clone(),
        Some(ErspanSeen {
            vlans: BTreeMap::from([(30, 51_234)]),
            ingress: 40_000,
            egress: 11_234,
            hardware_ids: BTreeMap::from([(1, 51_234)]),
        }),
    );
    let mut d = d;
    d.drops.filter = 1234;
    let dc2 = SessionStats {
        name: "dc2-span".into(),
        state: SessionState::Idle,
        enabled: true,
        auto: false,
        filter: Some("tcp port 443".into()),
        packets: 51_234,
        bytes: d.bytes,
        written: 50_000,
        pending: 0,
        lost: 0,
        truncated: 0,
        gre_checksum_bad: 0,
        drops: Drops {
            filter: 1234,
            ..Drops::default()
        },
        rates: Rates::default(),
        last_seen: Some(idle_seen),
        files: Some(FileStats {
            dir: "/var/lib/tapwire/dc2".into(),
            format: "pcap".into(),
            current: None,
            current_bytes: 0,
            files_finished: 4,
            error: None,
        }),
        sources: vec![d],
        n_sources: 1,
        sources_page: None,
        protocols: ProtocolMix::default(),
        top_talkers: Vec::new(),
        tap: None,
        streams: StreamStats::default(),
    };

    let mut l = source(
        "10.0.0.8",
        "gre",
        0,
        7000 + 50 * t,
        200,
        rates(50, 200, 50),
        now.clone(),
        None,
    );
    l.drops.disabled = 7000 + 50 * t;
    l.sequence = Sequence::None;
    let lab = SessionStats {
        name: "lab-tap".into(),
        state: SessionState::Disabled,
        enabled: false,
        auto: false,
        filter: None,
        packets: l.packets,
        bytes: l.bytes,
        written: 0,
        pending: 0,
        lost: 0,
        truncated: 0,
        gre_checksum_bad: 0,
        drops: l.drops,
        rates: l.rates,
        last_seen: Some(now.clone()),
        files: Some(FileStats {
            dir: "/var/lib/tapwire/lab".into(),
            format: "pcapng".into(),
            current: None,
            current_bytes: 0,
            files_finished: 1,
            error: None,
        }),
        sources: vec![l],
        n_sources: 1,
        sources_page: None,
        protocols: ProtocolMix::default(),
        top_talkers: Vec::new(),
        tap: None,
        streams: StreamStats::default(),
    };

    let mut c = source(
        "10.2.0.1",
        "erspan-ii",
        9,
        3000 + 20 * t,
        500,
        rates(20, 500, 20),
        now.clone(),
        Some(ErspanSeen::default()),
    );
    c.drops.write_error = 3000 + 20 * t;
    let core = SessionStats {
        name: "core-gw".into(),
        state: SessionState::Error,
        enabled: true,
        auto: false,
        filter: None,
        packets: c.packets,
        bytes: c.bytes,
        written: 0,
        pending: 0,
        lost: 0,
        truncated: 0,
        gre_checksum_bad: 0,
        drops: c.drops,
        rates: c.rates,
        last_seen: Some(now),
        files: Some(FileStats {
            dir: "/mnt/gone".into(),
            format: "pcapng".into(),
            current: None,
            current_bytes: 0,
            files_finished: 0,
            error: Some("open /mnt/gone: No such file or directory".into()),
        }),
        sources: vec![c],
        n_sources: 1,
        sources_page: None,
        protocols: ProtocolMix::default(),
        top_talkers: Vec::new(),
        tap: None,
        streams: StreamStats::default(),
    };

    let sessions = vec![edge, vxlan, dc2, lab, core];
    let packets: u64 = sessions.iter().map(|s| s.packets).sum();
    let bytes: u64 = sessions.iter().map(|s| s.bytes).sum();
    let pps: f64 = sessions.iter().map(|s| s.rates.pps_1s).sum();
    let bps: f64 = sessions.iter().map(|s| s.rates.bps_1s).sum();
    let mut drops = Drops::default();
    for s in &sessions {
        drops.disabled += s.drops.disabled;
        drops.filter += s.drops.filter;
        drops.write_error += s.drops.write_error;
    }
    Snapshot {
        version: "0.1.0".into(),
        started: rfc3339(STARTED_S, 0),
        uptime_s: uptime as f64,
        totals: Totals {
            packets,
            decapsulated: packets,
            written: sessions.iter().map(|s| s.written).sum(),
            pending: 0,
            lost: 17,
            kernel_drops: 12,
            drops,
            refusals: Default::default(),
            expired: Default::default(),
            not_mirror: BTreeMap::from([("icmp".into(), 4)]),
            malformed: BTreeMap::new(),
            refused: BTreeMap::new(),
            sources: 6,
            sessions: 5,
            rates: Rates {
                pps_1s: pps,
                bps_1s: bps,
                pps_10s: pps,
                bps_10s: bps,
            },
            defrag: Default::default(),
        },
        inputs: vec![
            InputStats {
                name: "gre-v4 0.0.0.0".into(),
                kind: "gre-v4".into(),
                interface: None,
                mode: None,
                reason: Some("--input auto: what no other input reads".into()),
                passed_to_kernel: 0,
                packets: packets - n[2],
                bytes: bytes - n[2] * 1100,
                kernel_drops: 12,
                refusals: Default::default(),
                error: None,
                rates: Rates {
                    pps_1s: pps - p[2] as f64,
                    ..Rates::default()
                },
            },
            InputStats {
                name: "udp 4789 [::]".into(),
                kind: "udp".into(),
                interface: None,
                mode: None,
                reason: Some("--input auto: what no other input reads".into()),
                passed_to_kernel: 0,
                packets: n[2],
                bytes: n[2] * 1100,
                kernel_drops: 0,
                refusals: Default::default(),
                error: None,
                rates: Rates {
                    pps_1s: p[2] as f64,
                    ..Rates::default()
                },
            },
        ],
        sessions,
        control: None,
        page: None,
    }
}

/// A fleet of three collectors as `GET /api/v1/fleet` on `edge-a` answers at second `t`:
/// `edge-a` and `edge-b` live with two sessions each, `edge-c` dead for `t + 9` seconds with
/// none (its sessions were moved), its last load kept.
pub fn fleet(t: u64) -> tapwire_api_types::control::Fleet {
    use tapwire_api_types::control::{CollectorState, ControlState, Fleet, FleetMember};
    let member = |name: &str, ip: &str, sessions: &[&str], pps: u64, lost: u64| FleetMember {
        name: name.into(),
        state: CollectorState::Live,
        lease_age_s: 0.4,
        advertise: Some(ip.into()),
        api_url: Some(format!("https://{ip}:9760")),
        version: "0.9.0".into(),
        started: "2026-11-21T05:00:00Z".into(),
        sessions: sessions.iter().map(|s| s.to_string()).collect(),
        pps: pps as f64,
        lost,
        packets: (UPTIME0_S + t) * pps,
    };
    let p = pps_at(t);
    let mut dead = member("edge-c", "10.0.9.3", &[], 2100, 0);
    dead.state = CollectorState::Dead;
    dead.lease_age_s = 9.0 + t as f64;
    dead.pps = 0.0;
    Fleet {
        collector: "edge-a".into(),
        control: ControlState::Connected,
        collectors: vec![
            member("edge-b", "10.0.9.2", &["dc1-span", "vm3-ingress"], p[2], 0),
            dead,
            member(
                "edge-a",
                "10.0.9.1",
                &["edge-sw1", "lab-tap"],
                p[0] + p[1],
                17,
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::parse_rfc3339;

    #[test]
    fn times_are_valid_and_consistent() {
        let s = snapshot(5);
        let started = parse_rfc3339(&s.started).unwrap();
        assert_eq!(started, STARTED_S as f64);
        let seen = parse_rfc3339(s.sessions[0].last_seen.as_deref().unwrap()).unwrap();
        assert!((started + s.uptime_s - seen - 0.0).abs() < 1.0);
    }

    #[test]
    fn counters_grow_by_the_rates() {
        let (a, b) = (snapshot(3), snapshot(4));
        let edge = |s: &Snapshot| s.sessions[0].packets;
        assert_eq!(
            edge(&b) - edge(&a),
            pps_at(3)[0] + pps_at(3)[1],
            "a second adds that second's packets"
        );
    }
}
