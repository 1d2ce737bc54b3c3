//! End-to-end: sessions delivered live to TAP devices inside a monitoring namespace, read by
//! tcpdump standing in for an IDS. The frames on each TAP must be byte-identical to the inner
//! frames tshark decodes from what was sent, with the ERSPAN header's VLAN put back into frames
//! that lost their tag. A TAP that cannot keep up drops (and counts) only its own frames: the
//! session's files stay complete.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tapwire_formats::wire::ethernet::insert_vlan_tag;
use tapwire_tests::collector::{Collector, source_packets};
use tapwire_tests::netns::{Lab, poll_until, wait_until};
use tapwire_tests::oracle::{self, Key};
use tapwire_tests::senders::{self, MirrorSend, Tcpdump};
use tapwire_tests::{require, run_ok, validate_capture};

/// One session per source the sender makes for these kinds over IPv4 (outer source, kind,
/// id), each with its own TAP. The sender's other ERSPAN II source (10.77.0.15, same id) is
/// left to auto-discovery.
const SESSIONS: [(&str, &str, &str, u32, &str); 4] = [
    ("tap-ii", "10.77.0.11", "erspan-ii", 100, "twt-ii"),
    ("tap-iii", "10.77.0.11", "erspan-iii", 200, "twt-iii"),
    ("tap-iiio", "10.77.0.11", "erspan-iii", 201, "twt-iiio"),
    ("tap-gre", "10.77.0.13", "gre", 107, "twt-gre"),
];

fn config(mon: &str, queue: Option<usize>) -> String {
    let mut c = String::new();
    for (name, src, kind, id, tap) in SESSIONS {
        let q = queue.map(|q| format!(", queue = {q}")).unwrap_or_default();
        c.push_str(&format!(
            "[[session]]\nname = \"{name}\"\nsources = [{{ src = \"{src}\", kind = \"{kind}\", id = {id} }}]\n\
             tap = {{ name = \"{tap}\", netns = \"{mon}\"{q} }}\n\n"
        ));
    }
    c
}

/// tshark's (vlan, encap, cos) of every ERSPAN II packet from `src` in `pcap`, in order.
fn erspan_ii_headers(pcap: &Path, src: &str) -> Vec<(u16, u8, u8)> {
    let filter = format!("erspan.version == 1 && ip.src == {src}");
    let out = run_ok(Command::new("tshark").arg("-r").arg(pcap).args([
        "-Y",
        &filter,
        "-T",
        "fields",
        "-e",
        "erspan.vlan",
        "-e",
        "erspan.encap",
        "-e",
        "erspan.cos",
    ]));
    out.lines()
        .map(|l| {
            let f: Vec<u16> = l.split('\t').map(|x| x.parse().unwrap()).collect();
            (f[0], f[1] as u8, f[2] as u8)
        })
        .collect()
}

/// The frames tcpdump recorded on a TAP, read back with tshark.
fn tap_frames(path: &Path) -> Vec<Vec<u8>> {
    validate_capture(path);
    oracle::frames(path)
}

#[test]
fn sessions_reach_taps_in_a_namespace_with_vlans_restored() {
    require("tcpdump");
    let mut lab = Lab::new("tap");
    let mon = quiet_ns(&mut lab);
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let cfg = lab.dir().join("tap.toml");
    std::fs::write(&cfg, config(&mon, None)).unwrap();
    let out = lab.dir().join("out");
    let c = Collector::start(&lab, &col, &out, &["--config", cfg.to_str().unwrap()]);

    // The TAPs exist inside the monitoring namespace and nowhere else.
    let links = lab.exec_ok(&mon, &["ip", "-br", "link"]);
    for (_, _, _, _, tap) in SESSIONS {
        assert!(links.contains(tap), "{tap} missing in {mon}: {links}");
        assert!(!lab.exec_ok(&col, &["ip", "-br", "link"]).contains(tap));
    }
    let dumps: Vec<Tcpdump> = SESSIONS
        .iter()
        .map(|(_, _, _, _, tap)| {
            Tcpdump::start(&lab, &mon, tap, &lab.dir().join(format!("{tap}.pcap")), "")
        })
        .collect();

    let opts = MirrorSend {
        families: "4".into(),
        kinds: "erspan-ii,erspan-iii,gre".into(),
        count: 36,
        ..MirrorSend::default()
    };
    let sent = senders::send_mirror(&lab, &snd, &opts, &lab.dir().join("sent.pcap"), false);
    let expected = oracle::mirrored_frames(&sent.pcap);
    let want: BTreeMap<Key, u64> = expected
        .iter()
        .map(|(k, v)| (k.clone(), v.len() as u64))
        .collect();
    let sessions = c.wait_for_packets(&want, Duration::from_secs(20));
    assert_eq!(source_packets(&sessions), want);
    // Every TAP wrote every frame of its session and dropped none.
    let s_by_name = |name: &str| {
        sessions["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    wait_until(Duration::from_secs(10), "TAP writes counted", || {
        let now = c.sessions();
        let all = now["sessions"].as_array().unwrap();
        all.iter()
            .filter(|s| !s["tap"].is_null())
            .all(|s| s["tap"]["written"] == s["written"] && s["written"].as_u64() > Some(0))
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut recorded = Vec::new();
    for d in dumps {
        let path = d.path.clone();
        let (_, dropped) = d.stop();
        assert_eq!(dropped, 0);
        recorded.push(tap_frames(&path));
    }

    let ii_headers = erspan_ii_headers(&sent.pcap, "10.77.0.11");
    let mut n_restored = 0;
    for ((name, src, kind, id, tap), got) in SESSIONS.iter().zip(&recorded) {
        let s = s_by_name(name);
        assert_eq!(s["tap"]["tap_dropped"], 0, "{name}: {s}");
        assert_eq!(s["tap"]["name"], *tap);
        let key = expected
            .keys()
            .find(|k| k.0 == *src && k.1 == *kind && k.2 == u64::from(*id))
            .unwrap_or_else(|| panic!("{kind} {id} not sent"));
        let mut frames = expected[key].clone();
        if *kind == "erspan-ii" {
            // The sender puts VLAN 10 in the header of frames it sends untagged (En 0): the TAP
            // must carry them tagged, priority from the header's COS.
            assert_eq!(frames.len(), ii_headers.len());
            for (f, (vlan, encap, cos)) in frames.iter_mut().zip(&ii_headers) {
                if *vlan != 0 && *encap != 3 {
                    let mut tagged = Vec::new();
                    insert_vlan_tag(f, (u16::from(*cos) << 13) | vlan, &mut tagged).unwrap();
                    *f = tagged;
                    n_restored += 1;
                }
            }
        }
        assert_eq!(got.len(), frames.len(), "{tap}: frame count");
        for (n, (a, b)) in got.iter().zip(&frames).enumerate() {
            assert!(
                a == b,
                "{tap} frame {n} differs\n tap      {}\n expected {}",
                hex::encode(a),
                hex::encode(b)
            );
        }
    }
    assert!(
        n_restored > 10,
        "only {n_restored} frames had a VLAN to restore"
    );

    // Files and TAPs together: the session files hold the frames as received (no tag added).
    let mut c = c;
    c.stop("TERM", Duration::from_millis(2500));
    let files = c.files_of("tap-ii");
    assert_eq!(files.len(), 1);
    let ii = expected
        .keys()
        .find(|k| k.0 == "10.77.0.11" && k.1 == "erspan-ii")
        .unwrap();
    assert_eq!(oracle::frames(&files[0]), expected[ii]);
    // The collector created the TAPs, so they are gone after it exits.
    let links = lab.exec_ok(&mon, &["ip", "-br", "link"]);
    assert!(!links.contains("twt-"), "TAPs left behind: {links}");
}

#[test]
fn a_tap_that_cannot_keep_up_drops_only_its_own_frames() {
    require("tcpdump");
    require("tcpreplay");
    let mut lab = Lab::new("tapq");
    let mon = quiet_ns(&mut lab);
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let cfg = lab.dir().join("tap.toml");
    // A four-frame queue: every burst the socket hands over at once overflows it.
    std::fs::write(&cfg, config(&mon, Some(4))).unwrap();
    let out = lab.dir().join("out");
    // The sockets: the accounting below adds the kernel's drops, which a socket input counts
    // in the datagrams the session counts. An AF_XDP input counts frames (outer fragments
    // each) over both senders, and a debug build's engine let a top-speed burst overflow its
    // ring (6,517 frames dropped in one run).
    let c = Collector::start(
        &lab,
        &col,
        &out,
        &["--config", cfg.to_str().unwrap(), "--input", "sockets"],
    );

    // The reader (the IDS stand-in) is stopped.
    let dump = Tcpdump::start(&lab, &mon, "twt-ii", &lab.dir().join("reader.pcap"), "");
    lab.exec_ok(&mon, &["kill", "-STOP", &dump_pid(&lab, &mon)]);

    // Build a burst of ERSPAN II only, then replay it at top speed, 40 times over.
    let opts = MirrorSend {
        families: "4".into(),
        kinds: "erspan-ii".into(),
        count: 250,
        ..MirrorSend::default()
    };
    let burst = senders::send_mirror(&lab, &snd, &opts, &lab.dir().join("burst.pcap"), true);
    let out_replay = lab.exec_ok(
        &snd,
        &[
            "tcpreplay",
            "-i",
            "snd0",
            "--topspeed",
            "--loop",
            "40",
            burst.pcap.to_str().unwrap(),
        ],
    );
    // Two ERSPAN II sources; the session takes one of them.
    let sent: u64 = 250 * 40;
    assert!(out_replay.contains("Successful packets:"), "{out_replay}");

    // Everything the collector received is written to the session's file; the TAP dropped.
    let mut last = serde_json::Value::Null;
    let settled = poll_until(Duration::from_secs(20), || {
        last = c.sessions();
        let s = last["sessions"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == "tap-ii")?
            .clone();
        let tap = &s["tap"];
        let accounted =
            tap["written"].as_u64()? + tap["tap_dropped"].as_u64()? + tap["filtered"].as_u64()?;
        let pending = s["pending"].as_u64()?;
        (s["packets"].as_u64()? > 0 && accounted == s["packets"].as_u64()? && pending == 0)
            .then_some(s)
    })
    .unwrap_or_else(|| panic!("TAP counters never settled: {last}"));
    let received = settled["packets"].as_u64().unwrap();
    let kernel_drops: u64 = last["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kernel_drops"].as_u64().unwrap())
        .sum();
    assert_eq!(received + kernel_drops, sent, "{last}");
    assert_eq!(
        settled["written"], received,
        "files must get every frame received: {settled}"
    );
    assert_eq!(settled["drops"]["backlog"], 0);
    let tap_dropped = settled["tap"]["tap_dropped"].as_u64().unwrap();
    assert!(
        tap_dropped > 0,
        "the four-frame queue never overflowed: {settled}"
    );
    eprintln!("burst of {sent}: received {received}, files {received}, TAP dropped {tap_dropped}");

    // The reader returns: frames flow again.
    lab.exec_ok(&mon, &["kill", "-CONT", &dump_pid(&lab, &mon)]);
    let before = settled["tap"]["written"].as_u64().unwrap();
    let later = MirrorSend {
        start: 250,
        count: 20,
        ..opts
    };
    // Paced, so that each frame arrives on its own and the four-frame queue has room.
    let later_sent = senders::send_mirror(&lab, &snd, &later, &lab.dir().join("later.pcap"), true);
    lab.exec_ok(
        &snd,
        &[
            "tcpreplay",
            "-i",
            "snd0",
            "--pps",
            "100",
            later_sent.pcap.to_str().unwrap(),
        ],
    );
    let mut last = serde_json::Value::Null;
    poll_until(Duration::from_secs(10), || {
        last = c.sessions();
        let s = last["sessions"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == "tap-ii")?
            .clone();
        (s["tap"]["written"].as_u64()? >= before + 20).then_some(())
    })
    .unwrap_or_else(|| {
        panic!("no TAP writes after the reader came back (before {before}): {last}")
    });
    let reader = dump.path.clone();
    dump.stop();
    let frames = tap_frames(&reader);
    // The last frames the reader saw are the 20 sent after it came back (marker TWE2E + n).
    let tail = &frames[frames.len() - 20..];
    let later_expected = oracle::mirrored_frames(&lab.dir().join("later.pcap"));
    let key = later_expected.keys().find(|k| k.0 == "10.77.0.11").unwrap();
    let untagged: Vec<Vec<u8>> = later_expected[key].clone();
    for (got, want) in tail.iter().zip(&untagged) {
        // Frames may have gained a tag; compare the payload after the MAC header and tag.
        assert!(
            got.ends_with(&want[14..]),
            "{} vs {}",
            hex::encode(got),
            hex::encode(want)
        );
    }
    let mut c = c;
    c.stop("TERM", Duration::from_millis(2500));
    let files = c.files_of("tap-ii");
    let total: u64 = files.iter().map(|f| validate_capture(f)).sum();
    assert_eq!(total, received + 20);
}

/// The monitoring namespace, with IPv6 off so that the TAPs send nothing of their own (router
/// solicitations, MLD): what tcpdump records there is only what the collector wrote.
fn quiet_ns(lab: &mut Lab) -> String {
    let mon = lab.add_ns("mon");
    for key in [
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
    ] {
        lab.exec_ok(&mon, &["sysctl", "-qw", key]);
    }
    mon
}

fn dump_pid(lab: &Lab, ns: &str) -> String {
    let out = lab.exec_ok(ns, &["pgrep", "-f", "tcpdump -i twt-ii"]);
    out.lines().next().expect("tcpdump pid").to_string()
}
