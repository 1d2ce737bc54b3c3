//! End-to-end: real senders in one network namespace, `tapwire collect` in another.
//!
//! Each test builds its own [`Lab`] (namespaces `snd` and `col` joined by a veth pair; removed
//! with everything in them when the test ends, also on failure) and checks the collector's
//! session files with tshark (`-x`), never with tapwire's own reader: the inner frames must be
//! byte-identical, source by source and in order, to what tshark decodes from the pcap of what
//! was sent (the scapy sender writes it; for replays it is the rewritten capture), and the
//! per-source counts of `/api/v1/sessions` must equal what was sent.
//!
//! - scapy, every encapsulation over IPv4 and IPv6 (outer fragments included): raw sockets,
//!   AF_PACKET with rotation and pcap-ns, AF_PACKET with two fanout workers, zero UDP checksums
//!   over IPv6, `--timestamps erspan`; the API, `/metrics` and record times checked too;
//! - the public captures, rewritten into the lab and replayed (sockets and AF_PACKET), with
//!   live sequence accounting equal to `tapwire decap`'s;
//! - files: rotation names, `--max-files`, `--on-finish`, more sessions than descriptors;
//! - robustness: kill -9 and SIGTERM under load, a full 20 MiB tmpfs, a malformed flood with
//!   sources outside `--allow`.
//!
//! The `*_reach_*_intact` tests check the harness itself without the collector: what tcpdump
//! sees arriving in the collector namespace, decapsulated by `tapwire decap` (the same
//! pipeline), equals the oracle. They keep the senders honest. Run as root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tapwire_tests::collector::{self, Collector};
use tapwire_tests::netns::{Lab, poll_until, wait_until};
use tapwire_tests::oracle::{self, Frames, Key, assert_same_frames};
use tapwire_tests::senders::{self, MirrorSend, Tcpdump};
use tapwire_tests::tshark;
use tapwire_tests::{
    TempDir, bin, capture_files, captures_dir, require, run, run_ok, validate_capture,
};

/// SIGINT/SIGTERM must flush and close every file within 2 s; the extra half second is for
/// process start-up noise on a loaded 2-core machine.
const STOP_WITHIN: Duration = Duration::from_millis(2500);

/// `tapwire decap` of a capture: frames per source as tshark reads the files, and the report.
fn decap(input: &Path, dir: &Path) -> (Frames, Value) {
    let out = run_ok(
        Command::new(bin("tapwire"))
            .arg("decap")
            .arg(input)
            .arg("--out")
            .arg(dir)
            .arg("--json"),
    );
    let report: Value = serde_json::from_str(&out).expect("decap --json");
    let mut got = BTreeMap::new();
    for s in report["sources"].as_array().expect("sources") {
        let key = collector::source_key(s);
        let file = Path::new(s["file"].as_str().expect("file"));
        validate_capture(file);
        got.insert(key, oracle::frames(file));
    }
    (got, report)
}

fn counts(frames: &Frames) -> BTreeMap<Key, u64> {
    frames
        .iter()
        .map(|(k, v)| (k.clone(), v.len() as u64))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Scapy: every encapsulation, IPv4 and IPv6 outer headers.

#[test]
fn scapy_senders_reach_the_collector_namespace_intact() {
    let lab = Lab::new("scapy-wire");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let wire = lab.dir().join("wire.pcap");
    let dump = Tcpdump::start(&lab, &col, "col0", &wire, "ip or ip6");
    let sent = senders::send_mirror(
        &lab,
        &snd,
        &MirrorSend::default(),
        &lab.dir().join("sent.pcap"),
        false,
    );
    wait_for_capture(&wire, sent.frames);
    let (_, dropped) = dump.stop();
    assert_eq!(dropped, 0, "tcpdump dropped packets");

    let expected = sent.oracle();
    assert_eq!(
        expected.len(),
        18,
        "9 sources per family: {:?}",
        expected.keys()
    );
    assert_same_frames("on the wire", &expected, &oracle::mirrored_frames(&wire));
    let out = TempDir::new("scapy-wire-decap");
    let (got, report) = decap(&wire, out.path());
    assert_same_frames("tapwire decap of the wire", &expected, &got);
    for s in report["sources"].as_array().unwrap() {
        assert_eq!(s["lost"], 0, "{s}");
    }
}

#[test]
fn scapy_ipv4_and_ipv6_are_collected_byte_identical() {
    scapy_collect("scapy-collect", &[], "TERM");
}

/// The same through the AF_PACKET input (the collector's own outer defragmentation), with
/// rotation every 12 packets, classic pcap with nanoseconds, stopped with SIGINT.
#[test]
fn scapy_via_af_packet_with_rotation_and_pcap_ns_is_collected_byte_identical() {
    scapy_collect(
        "scapy-afpacket",
        &[
            &collector::AF_PACKET_ONLY[..],
            &["--rotate-packets", "12", "--format", "pcap-ns"],
        ]
        .concat(),
        "INT",
    );
}

/// Two AF_PACKET workers (PACKET_FANOUT): each source must still be written in arrival order,
/// with no phantom reordering.
#[test]
fn scapy_via_af_packet_with_two_workers_keeps_each_source_in_order() {
    scapy_collect(
        "scapy-workers",
        &[&collector::AF_PACKET_ONLY[..], &["--workers", "2"]].concat(),
        "TERM",
    );
}

/// Rotated files of one session, listed by name (as `ls` and shell globs list them), are in
/// the order they were written.
#[test]
fn rotated_file_names_sort_in_write_order() {
    let lab = Lab::new("rotate-names");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.dir().join("out");
    let mut c = Collector::start(&lab, &col, &out, &["--rotate-packets", "2"]);
    let opts = MirrorSend::erspan_ii(25);
    let sent = senders::send_mirror(&lab, &snd, &opts, &lab.dir().join("sent.pcap"), false);
    let api = c.wait_for_packets(&sent.sources, Duration::from_secs(10));
    c.stop("TERM", STOP_WITHIN);
    let (_, in_write_order) = c.session_files(&api).pop_first().unwrap();
    assert_eq!(in_write_order.len(), 13, "25 packets, 2 per file");
    let by_write: Vec<PathBuf> = in_write_order.into_iter().map(|f| f.path).collect();
    let mut by_name = by_write.clone();
    by_name.sort();
    let names = |v: &[PathBuf]| {
        v.iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&by_name),
        names(&by_write),
        "file names sorted as text are not in the order the files were written"
    );
}

/// VXLAN and GENEVE over IPv6 with UDP checksum 0, which RFC 6935 allows for tunnels (Linux
/// `vxlan ... udp6zerocsumtx`, hardware VTEPs): the UDP inputs must take them as they take
/// zero checksums over IPv4.
#[test]
fn vxlan_and_geneve_over_ipv6_with_zero_udp_checksum_are_collected() {
    let lab = Lab::new("udp6-zero");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.dir().join("out");
    let mut c = Collector::start(&lab, &col, &out, &[]);
    let opts = MirrorSend {
        families: "6".into(),
        kinds: "vxlan,geneve".into(),
        udp6_zero_checksum: true,
        ..MirrorSend::default()
    };
    let sent = senders::send_mirror(&lab, &snd, &opts, &lab.dir().join("sent.pcap"), false);
    let expected = sent.oracle();
    let api = c.wait_for_packets(&sent.sources, Duration::from_secs(5));
    assert_eq!(
        collector::source_packets(&api),
        sent.sources,
        "per-source packets; inputs {}",
        api["inputs"]
    );
    c.stop("TERM", STOP_WITHIN);
    assert_same_frames(
        "zero-checksum UDP over IPv6",
        &expected,
        &c.session_frames(&api),
    );
}

/// GRE-TEB whose checksum is each source's first packet's, repeated while the sequence grows
/// (Open vSwitch's userspace datapath with `csum=true` and `seq=true` gets its checksums
/// wrong the same way; tests/collect_ovs.rs has the real thing), over IPv4 (raw socket, outer
/// fragments included) and IPv6 (raw GRE socket): every frame is written, its pcapng comment
/// says so, and the bad ones are counted per source. With `--strict-gre-checksum` the bad ones
/// are dropped and counted as malformed `gre_checksum`. `tapwire decap` of what was sent does
/// the same.
#[test]
fn stale_gre_checksums_are_kept_and_counted_unless_strict() {
    let lab = Lab::new("gre-csum");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let opts = MirrorSend {
        kinds: "gre".into(),
        gre_stale_checksum: true,
        ..MirrorSend::default()
    };
    let mut c = Collector::start(&lab, &col, &lab.dir().join("kept"), &[]);
    let sent = senders::send_mirror(&lab, &snd, &opts, &lab.dir().join("sent.pcap"), false);
    let expected = sent.oracle();
    let bad = oracle::gre_checksum_bad(&tshark::packets(&sent.pcap));
    assert_eq!(bad.len(), 2, "one GRE source per family: {:?}", bad.keys());
    for (k, v) in &bad {
        // Bad: all but the first, whose checksum was computed for it.
        assert!(!v[0] && v[1..].iter().all(|b| *b), "{k:?}: tshark: {v:?}");
    }

    let api = c.wait_for_packets(&sent.sources, Duration::from_secs(10));
    assert_api_matches(&api, &sent.sources);
    collector::assert_gre_checksum_bad_counted(&c, &api, &bad);
    c.stop("TERM", STOP_WITHIN);
    assert_same_frames(
        "stale GRE checksums, kept",
        &expected,
        &c.session_frames(&api),
    );
    assert_eq!(
        collector::gre_checksum_comments(&c, &api),
        bad,
        "the frames whose checksum tshark finds bad, and only those, carry the comment"
    );

    // Strict: only each source's first packet is written; the rest is malformed.
    let mut c = Collector::start(
        &lab,
        &col,
        &lab.dir().join("strict"),
        &["--strict-gre-checksum"],
    );
    senders::send_mirror(&lab, &snd, &opts, &lab.dir().join("sent2.pcap"), false);
    let n_bad: u64 = bad.values().flatten().filter(|b| **b).count() as u64;
    let api = poll_until(Duration::from_secs(10), || {
        let api = c.sessions();
        (api["totals"]["malformed"]["gre_checksum"] == n_bad).then_some(api)
    })
    .unwrap_or_else(|| {
        panic!(
            "strict: {n_bad} bad checksums not counted: {}",
            c.sessions()
        )
    });
    let first: BTreeMap<Key, u64> = bad.keys().map(|k| (k.clone(), 1)).collect();
    assert_eq!(
        collector::source_packets(&api),
        first,
        "strict: per-source packets"
    );
    for s in collector::sources(&api).values() {
        assert_eq!(s["gre_checksum_bad"], 0, "strict: {s}");
    }
    let metrics = c.metrics();
    let line = format!("tapwire_malformed_packets_total{{reason=\"gre_checksum\"}} {n_bad}");
    assert!(metrics.lines().any(|l| l == line), "{line:?} in\n{metrics}");
    c.stop("TERM", STOP_WITHIN);
    let firsts: Frames = expected
        .iter()
        .map(|(k, v)| (k.clone(), v[..1].to_vec()))
        .collect();
    assert_same_frames(
        "stale GRE checksums, strict",
        &firsts,
        &c.session_frames(&api),
    );

    collector::assert_decap_gre_checksums(&sent.pcap, &expected, &bad);
}

/// Outer fragments (IPv4 and IPv6), as tshark finds them in `pcap`: (fragments, datagrams
/// they complete). Every datagram's fragments are sent in order, so each complete one has
/// exactly one last fragment.
fn fragment_counts(pcap: &Path) -> (u64, u64) {
    let rows = run_ok(Command::new("tshark").arg("-r").arg(pcap).args([
        "-Y",
        "ip.flags.mf == 1 or ip.frag_offset > 0 or ipv6.fraghdr",
        "-T",
        "fields",
        "-E",
        "occurrence=f",
        "-e",
        "ip.frag_offset",
        "-e",
        "ipv6.fraghdr.offset",
        "-e",
        "ip.flags.mf",
        "-e",
        "ipv6.fraghdr.more",
    ]));
    let mut counts = (0, 0);
    for l in rows.lines() {
        let f: Vec<&str> = l.split('\t').collect();
        let offset = |i: usize| f[i].parse::<u64>().unwrap_or(0);
        let last = offset(0) + offset(1) > 0 && f[2] != "1" && f[3] != "1";
        counts.0 += 1;
        counts.1 += u64::from(last);
    }
    counts
}

/// Live outer reassembly (AF_PACKET) in the snapshot and `/metrics`: datagrams completed from
/// fragments, fragments held, the first fragments of 1030 datagrams that never complete (the
/// table keeps 1024: 6 evicted for memory, 1024 pending), then, with no further fragment, the
/// 1024 evicted by the 30 s timeout.
#[test]
fn live_defragmentation_is_counted_in_the_snapshot_and_metrics() {
    let lab = Lab::new("defrag");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let c = Collector::start(
        &lab,
        &col,
        &lab.dir().join("out"),
        &collector::AF_PACKET_ONLY,
    );
    let whole = MirrorSend {
        kinds: "gre".into(),
        ..MirrorSend::default()
    };
    let sent = senders::send_mirror(&lab, &snd, &whole, &lab.dir().join("whole.pcap"), false);
    let incomplete = MirrorSend {
        incomplete_fragments: 1030,
        ..MirrorSend::default()
    };
    let part = senders::send_mirror(&lab, &snd, &incomplete, &lab.dir().join("part.pcap"), false);
    let (frags, reassembled) = fragment_counts(&sent.pcap);
    assert!(
        reassembled >= 4,
        "fragmented datagrams in both families: {reassembled}"
    );
    let (part_frags, part_done) = fragment_counts(&part.pcap);
    assert_eq!(
        (part_frags, part_done),
        (1030, 0),
        "tshark on the incomplete ones"
    );
    let fragments = frags + part_frags;

    let api = poll_until(Duration::from_secs(10), || {
        let api = c.sessions();
        (api["totals"]["defrag"]["fragments"] == fragments).then_some(api)
    })
    .unwrap_or_else(|| {
        panic!(
            "{fragments} fragments not counted: {}",
            c.sessions()["totals"]
        )
    });
    assert_eq!(
        collector::source_packets(&api),
        sent.sources,
        "whole datagrams decapsulated"
    );
    let want = serde_json::json!({
        "fragments": fragments,
        "held": fragments - reassembled,
        "reassembled": reassembled,
        "evicted_timeout": 0,
        "evicted_memory": 6,
        "invalid": 0,
        "pending_datagrams": 1024,
    });
    assert_eq!(api["totals"]["defrag"], want, "snapshot");
    let metrics = c.metrics();
    for line in [
        format!("tapwire_defrag_fragments_total {fragments}"),
        format!(
            "tapwire_defrag_held_fragments_total {}",
            fragments - reassembled
        ),
        format!("tapwire_defrag_reassembled_total {reassembled}"),
        "tapwire_defrag_evicted_datagrams_total{reason=\"memory\"} 6".into(),
        "tapwire_defrag_evicted_datagrams_total{reason=\"timeout\"} 0".into(),
        "tapwire_defrag_invalid_fragments_total 0".into(),
        "tapwire_defrag_pending_datagrams 1024".into(),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line:?} in\n{metrics}");
    }

    // No fragment follows: the engine's own clock expires them (30 s after they arrived).
    let api = poll_until(Duration::from_secs(45), || {
        let api = c.sessions();
        (api["totals"]["defrag"]["pending_datagrams"] == 0).then_some(api)
    })
    .unwrap_or_else(|| {
        panic!(
            "incomplete datagrams never expired: {}",
            c.sessions()["totals"]
        )
    });
    assert_eq!(
        api["totals"]["defrag"]["evicted_timeout"], 1024,
        "{}",
        api["totals"]
    );
    let metrics = c.metrics();
    let line = "tapwire_defrag_evicted_datagrams_total{reason=\"timeout\"} 1024";
    assert!(metrics.lines().any(|l| l == line), "{line:?} in\n{metrics}");
}

/// More sessions than the process may open files (600 sessions, RLIMIT_NOFILE 256, as under a
/// systemd unit's default soft limit of 1024 with a few thousand sessions): every packet is
/// still written and the API keeps answering.
#[test]
fn more_sessions_than_file_descriptors_are_written_and_the_api_answers() {
    require("prlimit");
    let lab = Lab::new("nofile");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.dir().join("out");
    // 600 auto-discovered sessions: past the default cap, so it is lifted.
    let mut c = Collector::start_wrapped(
        &lab,
        &col,
        &out,
        &["--max-auto-sessions", "1000"],
        &["prlimit", "--nofile=256:256", "--"],
    );
    let opts = MirrorSend {
        many_sessions: 600,
        count: 2,
        ..MirrorSend::default()
    };
    let sent = senders::send_mirror(&lab, &snd, &opts, &lab.dir().join("sent.pcap"), false);
    assert_eq!(sent.sources.len(), 600);
    std::thread::sleep(Duration::from_millis(1500));
    let api = c.try_get("/api/v1/sessions");
    assert!(
        api.is_some(),
        "the API stopped answering with 600 sessions under RLIMIT_NOFILE 256:\n{}",
        c.proc
            .stderr()
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    );
    c.wait_for_packets(&sent.sources, Duration::from_secs(5));
    let api = c.wait_written(Duration::from_secs(5));
    let written: u64 = api["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["written"].as_u64().unwrap())
        .sum();
    assert_eq!(
        written, 1200,
        "packets written; drops: {}",
        api["totals"]["drops"]
    );
    c.stop("TERM", STOP_WITHIN);
    // 600 files: one captype and one capinfos over all of them (tshark per file is minutes).
    let files = collector::files_in(&out);
    let mut per_session: BTreeMap<String, u64> = BTreeMap::new();
    for (path, n) in files.iter().zip(collector::pcapng_packets(&files)) {
        let name = path.file_name().unwrap().to_string_lossy();
        // <src>_erspan-ii_<id>_<time>...: the session is the first three fields.
        let session = name.splitn(4, '_').take(3).collect::<Vec<_>>().join("_");
        *per_session.entry(session).or_default() += n;
    }
    assert_eq!(per_session.len(), 600, "sessions with files");
    assert!(
        per_session.values().all(|n| *n == 2),
        "every session's files hold its 2 packets: {:?}",
        per_session
            .iter()
            .filter(|(_, n)| **n != 2)
            .take(5)
            .collect::<Vec<_>>()
    );
}

/// `--max-files 3` with rotation every 2 packets: the three newest files are kept, so the
/// session's files hold exactly its last five packets, in order.
#[test]
fn max_files_keeps_the_newest_files() {
    let lab = Lab::new("max-files");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.dir().join("out");
    let mut c = Collector::start(
        &lab,
        &col,
        &out,
        &["--rotate-packets", "2", "--max-files", "3"],
    );
    let opts = MirrorSend::erspan_ii(25);
    let sent = senders::send_mirror(&lab, &snd, &opts, &lab.dir().join("sent.pcap"), false);
    let expected = sent.oracle();
    let api = c.wait_for_packets(&sent.sources, Duration::from_secs(10));
    c.stop("TERM", STOP_WITHIN);
    let (key, files) = c.session_files(&api).pop_first().unwrap();
    let kept: Vec<Vec<u8>> = files.iter().flat_map(|f| f.frames.clone()).collect();
    let want = &expected[&key][20..];
    assert!(
        kept == want,
        "{key:?}: kept {} files holding {} frames, which are not the last 5 sent ({:?})",
        files.len(),
        kept.len(),
        files
            .iter()
            .map(|f| f.path.file_name().unwrap())
            .collect::<Vec<_>>()
    );
}

/// The file flags reach the sessions of a configuration file that do not set the field
/// themselves (flags override `[defaults.files]`), a session's own `files` setting wins, the
/// auto sessions get them too, and a SIGHUP reload keeps them: a session added by the reload
/// rotates by the flag. Every file is read with captype and capinfos.
#[test]
fn file_flags_reach_configured_sessions_and_survive_a_reload() {
    let lab = Lab::new("file-flags");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.dir().join("out");
    let cfg = lab.dir().join("collector.toml");
    let config = |extra: &str| {
        format!(
            r#"
[defaults.files]
rotate = {{ packets = 1000 }}
max_files = 100

[[session]]
name = "inherits"
sources = [{{ kind = "erspan-ii", id = 0 }}]

[[session]]
name = "own-rotate"
sources = [{{ kind = "erspan-ii", id = 1 }}]
files = {{ rotate = {{ packets = 5 }} }}
{extra}"#
        )
    };
    std::fs::write(&cfg, config("")).unwrap();
    let mut c = Collector::start(
        &lab,
        &col,
        &out,
        &["--config", cfg.to_str().unwrap(), "--rotate-packets", "3"],
    );
    // 12 packets to each of ERSPAN II sessions 0, 1 and 2 (2: no session takes it, auto).
    let first = MirrorSend {
        families: "4".into(),
        many_sessions: 3,
        count: 12,
        ..MirrorSend::default()
    };
    let sent = senders::send_mirror(&lab, &snd, &first, &lab.dir().join("sent1.pcap"), false);
    c.wait_for_packets(&sent.sources, Duration::from_secs(10));

    // The reload adds a session that sets no files, for session 3.
    std::fs::write(
        &cfg,
        config("\n[[session]]\nname = \"added\"\nsources = [{ kind = \"erspan-ii\", id = 3 }]\n"),
    )
    .unwrap();
    c.proc.signal("HUP");
    wait_until(
        Duration::from_secs(10),
        "the reload to add session added",
        || {
            c.sessions()["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["name"] == "added")
                .then_some(())
        },
    );
    let second = MirrorSend {
        many_sessions: 4,
        count: 6,
        start: 12,
        ..first
    };
    let sent2 = senders::send_mirror(&lab, &snd, &second, &lab.dir().join("sent2.pcap"), false);
    let mut total = sent.sources.clone();
    for (k, n) in sent2.sources {
        *total.entry(k).or_default() += n;
    }
    let api = c.wait_for_packets(&total, Duration::from_secs(10));
    c.stop("TERM", STOP_WITHIN);

    let auto = api["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .find(|n| n.ends_with("_erspan-ii_2"))
        .expect("the auto session of ERSPAN II session 2");
    let sizes = |name: &str| -> Vec<u64> {
        c.files_of(name)
            .iter()
            .map(|f| validate_capture(f))
            .collect()
    };
    // 18 packets rotated every 3 (the flag, not [defaults.files]' 1000).
    assert_eq!(sizes("inherits"), [3; 6], "inherits");
    assert_eq!(sizes(&auto), [3; 6], "{auto}");
    // The session's own rotate = { packets = 5 } wins over the flag.
    assert_eq!(sizes("own-rotate"), [5, 5, 5, 3], "own-rotate");
    // Added by the reload: the flags were laid over the reloaded file too.
    assert_eq!(sizes("added"), [3, 3], "added");
}

/// `--on-finish` runs once for every finished file: the ones rotation closes and the ones
/// SIGTERM closes.
#[test]
fn on_finish_runs_for_every_file_including_those_closed_at_shutdown() {
    let lab = Lab::new("on-finish");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.dir().join("out");
    let log = lab.dir().join("finished.txt");
    let cmd = format!("echo \"$1\" >> {}", log.display());
    let mut c = Collector::start(
        &lab,
        &col,
        &out,
        &["--rotate-packets", "5", "--on-finish", &cmd],
    );
    // Two sources, 12 packets each: files of 5, 5 and 2 packets per source.
    let opts = MirrorSend {
        families: "4".into(),
        kinds: "erspan-iii".into(),
        count: 12,
        ..MirrorSend::default()
    };
    let sent = senders::send_mirror(&lab, &snd, &opts, &lab.dir().join("sent.pcap"), false);
    let api = c.wait_for_packets(&sent.sources, Duration::from_secs(10));
    c.stop("TERM", STOP_WITHIN);
    let files = c.session_files(&api);
    let mut written: Vec<PathBuf> = files.values().flatten().map(|f| f.path.clone()).collect();
    written.sort();
    assert_eq!(written.len(), 6);
    let mut finished: Vec<PathBuf> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(PathBuf::from)
        .collect();
    finished.sort();
    assert_eq!(
        finished, written,
        "--on-finish ran for these files, not for every file written"
    );
}

/// `--timestamps erspan`: records of the ERSPAN III session with the platform sub-header (100 ns
/// granularity, upper 32 bits in platform id 3) carry the sender's time exactly (the sender
/// stamps frame n at 1_700_000_000 s + n ms); the session without it keeps receive times.
#[test]
fn erspan_timestamps_are_written_where_they_are_absolute() {
    let lab = Lab::new("erspan-ts");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.dir().join("out");
    let mut c = Collector::start(&lab, &col, &out, &["--timestamps", "erspan"]);
    let t_start = now_ns();
    let opts = MirrorSend {
        families: "4".into(),
        kinds: "erspan-iii".into(),
        count: 12,
        ..MirrorSend::default()
    };
    let sent = senders::send_mirror(&lab, &snd, &opts, &lab.dir().join("sent.pcap"), false);
    let api = c.wait_for_packets(&sent.sources, Duration::from_secs(10));
    let t_end = now_ns();
    c.stop("TERM", STOP_WITHIN);
    let files = c.session_files(&api);
    let times = |id: u64| -> Vec<u64> {
        files[&("10.77.0.11".to_string(), "erspan-iii".to_string(), id)]
            .iter()
            .flat_map(|f| f.times_ns.iter().copied())
            .collect()
    };
    let sender: Vec<u64> = (0..12)
        .map(|n| 1_700_000_000_000_000_000 + n * 1_000_000)
        .collect();
    assert_eq!(
        times(201),
        sender,
        "session 201 (O=1, gra 100 ns): ERSPAN time"
    );
    assert!(
        times(200).iter().all(|t| (t_start..=t_end).contains(t)),
        "session 200 (no sub-header): receive time expected, got {:?}",
        times(200)
    );
}

fn scapy_collect(tag: &str, args: &[&str], stop_signal: &str) {
    let lab = Lab::new(tag);
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.dir().join("out");
    let mut c = Collector::start(&lab, &col, &out, args);
    let t_start = now_ns();
    let sent = senders::send_mirror(
        &lab,
        &snd,
        &MirrorSend::default(),
        &lab.dir().join("sent.pcap"),
        false,
    );
    let expected = sent.oracle();

    c.wait_for_packets(&sent.sources, Duration::from_secs(10));
    let t_end = now_ns();
    let api = c.wait_written(Duration::from_secs(5));
    assert_api_matches(&api, &sent.sources);
    assert_sessions_and_metrics(&c, &api, &expected);
    // Files are flushed at least once per second while the collector runs: 1.5 s after the API
    // counted the packets they are on disk (a further 2 s of polling absorbs a loaded machine).
    std::thread::sleep(Duration::from_millis(1500));
    wait_for_files_to_hold(&c, &api, &sent.sources, Duration::from_secs(2));
    c.stop(stop_signal, STOP_WITHIN);
    let files = c.session_files(&api);
    // Receive times: in order within each session, and taken while the test ran.
    for (key, f) in &files {
        let times: Vec<u64> = f.iter().flat_map(|f| f.times_ns.iter().copied()).collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "{key:?}: record timestamps go backwards"
        );
        assert!(
            times.iter().all(|t| (t_start..=t_end).contains(t)),
            "{key:?}: record timestamps outside the test's run ({t_start}..{t_end}): {times:?}"
        );
    }
    if let Some(at) = args.iter().position(|a| *a == "--rotate-packets") {
        let per_file: usize = args[at + 1].parse().unwrap();
        for (key, f) in &files {
            let sizes: Vec<usize> = f.iter().map(|f| f.frames.len()).collect();
            let n = expected[key].len();
            assert_eq!(
                sizes.len(),
                n.div_ceil(per_file),
                "{key:?}: {n} packets rotated every {per_file}: files {sizes:?}"
            );
            assert!(sizes.iter().all(|s| *s <= per_file), "{key:?}: {sizes:?}");
        }
    }
    let got: Frames = files
        .into_iter()
        .map(|(k, f)| (k, f.into_iter().flat_map(|f| f.frames).collect()))
        .collect();
    assert_same_frames("tapwire collect", &expected, &got);
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Each session wrote every packet it received and counted the inner frames' bytes; the totals
/// add up; `/metrics` says the same as the JSON.
fn assert_sessions_and_metrics(c: &Collector<'_>, api: &Value, expected: &Frames) {
    let metrics = c.metrics();
    let metric = |name: &str, session: &str| -> Option<u64> {
        let prefix = format!("tapwire_{name}{{session=\"{session}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
    };
    let mut total = 0;
    for s in api["sessions"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        let key = collector::source_key(&s["sources"][0]);
        let frames = &expected[&key];
        let n = frames.len() as u64;
        let bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();
        total += n;
        assert_eq!(s["packets"], n, "{name}: packets");
        assert_eq!(s["written"], n, "{name}: written");
        assert_eq!(s["bytes"], bytes, "{name}: inner-frame bytes");
        assert_eq!(s["lost"], 0, "{name}: lost");
        // "receiving" lasts 5 s after the last packet; a loaded machine may read it later.
        assert!(
            matches!(s["state"].as_str(), Some("receiving" | "idle")),
            "{name}: state {}",
            s["state"]
        );
        assert!(s["last_seen"].is_string(), "{name}: last_seen");
        let current = s["files"]["current"].as_str().unwrap_or_default();
        let current_name = Path::new(current)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert!(
            current_name.starts_with(&format!("{name}_")) && Path::new(current).exists(),
            "{name}: files.current {current:?} is not an existing file of the session"
        );
        let drops: u64 = s["drops"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(drops, 0, "{name}: drops {}", s["drops"]);
        assert_eq!(
            metric("session_packets_total", name),
            Some(n),
            "/metrics {name}"
        );
        assert_eq!(
            metric("session_written_packets_total", name),
            Some(n),
            "/metrics {name}"
        );
        assert_eq!(
            metric("session_bytes_total", name),
            Some(bytes),
            "/metrics {name}"
        );
    }
    let t = &api["totals"];
    assert_eq!(t["decapsulated"], total, "totals: {t}");
    assert_eq!(t["written"], total, "totals: {t}");
    assert_eq!(t["malformed"], serde_json::json!({}), "totals: {t}");
    assert_eq!(t["kernel_drops"], 0, "totals: {t}");
}

/// Every source of the API has exactly the packets sent, and no loss, duplicate or reordering.
fn assert_api_matches(api: &Value, sent: &BTreeMap<Key, u64>) {
    let sources = collector::sources(api);
    let got: BTreeMap<Key, u64> = collector::source_packets(api);
    assert_eq!(&got, sent, "per-source packets in /api/v1/sessions");
    for (key, s) in &sources {
        for field in ["lost", "duplicates", "reordered"] {
            assert_eq!(s[field], 0, "{key:?} {field}: {s}");
        }
    }
}

/// Polls (while the collector runs) until each session's files hold its packets.
fn wait_for_files_to_hold(c: &Collector<'_>, api: &Value, want: &BTreeMap<Key, u64>, t: Duration) {
    let names: Vec<(Key, String)> = api["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                collector::source_key(&s["sources"][0]),
                s["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut last = BTreeMap::new();
    let ok = poll_until(t, || {
        last = names
            .iter()
            .map(|(k, n)| {
                let count: u64 = c.files_of(n).iter().map(|f| count_records(f)).sum();
                (k.clone(), count)
            })
            .collect::<BTreeMap<_, _>>();
        (&last == want).then_some(())
    });
    assert!(
        ok.is_some(),
        "files not flushed 1.5 s + {t:?} after the API counted the packets:\n want {want:?}\n have {last:?}"
    );
}

/// Records in a capture that may still be being written (0 when unreadable).
fn count_records(path: &Path) -> u64 {
    let out = run(Command::new("capinfos")
        .args(["-M", "-c", "-T", "-r"])
        .arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn wait_for_capture(path: &Path, frames: u64) {
    // tcpdump -U writes each packet as it comes; give the last ones a moment.
    let _ = poll_until(Duration::from_secs(3), || {
        (count_records(path) >= frames).then_some(())
    });
}

// ---------------------------------------------------------------------------------------------
// tcpreplay of the public captures, outer addresses rewritten into the lab.

/// The public captures that carry mirror traffic, rewritten for the lab (file k's senders moved
/// into 10.(100+k).0.0/16) and concatenated into one pcap, with its oracle; `None` (skipped,
/// with a message) without the captures. Captures with packets cut short by their snap length
/// are left out: a kernel drops a datagram shorter than its IP header says, so no receiver
/// could get them.
fn rewritten_public_captures() -> Option<(&'static Path, &'static Frames)> {
    // Built once per test process (both replay tests use it) under cargo's target tmp dir, which
    // outlives the tests; the next run rebuilds it.
    static REPLAY: OnceLock<Option<(PathBuf, Frames)>> = OnceLock::new();
    REPLAY
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-replay");
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            rewrite_public_captures(&dir)
        })
        .as_ref()
        .map(|(pcap, frames)| (pcap.as_path(), frames))
}

fn rewrite_public_captures(dir: &Path) -> Option<(PathBuf, Frames)> {
    let captures = captures_dir()?;
    require("mergecap");
    let mut parts = Vec::new();
    let mut originals: Vec<Vec<u8>> = Vec::new();
    let mut n_sources = 0;
    // tshark is the slow part: decode the captures on two threads, keeping their order.
    let inputs = capture_files(&captures);
    let half = inputs.len().div_ceil(2).max(1);
    let decoded: Vec<(PathBuf, (Frames, usize))> = std::thread::scope(|s| {
        let handles: Vec<_> = inputs
            .chunks(half)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|i| (i.clone(), oracle::decode(i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    for (input, (original, cut)) in decoded {
        let name = input.strip_prefix(&captures).unwrap().display().to_string();
        if original.is_empty() {
            continue;
        }
        if cut > 0 {
            eprintln!("replay: leaving out {name}: {cut} packets cut short by the capture");
            continue;
        }
        let linktype = run_ok(
            Command::new("capinfos")
                .args(["-T", "-E", "-r"])
                .arg(&input),
        );
        if !linktype.contains("ether") {
            eprintln!("replay: leaving out {name}: not Ethernet");
            continue;
        }
        parts.push(dir.join(format!("rewritten-{}.pcap", parts.len() + 1)));
        let k = parts.len();
        senders::rewrite_for_lab(
            &input,
            &parts[k - 1],
            &format!("10.{}.0.0/16", 100 + k),
            &format!("fd78:{k}::/64"),
        );
        n_sources += original.len();
        originals.extend(original.into_values().flatten());
    }
    let merged = dir.join("replay.pcap");
    run_ok(
        Command::new("mergecap")
            .args(["-a", "-F", "pcap", "-w"])
            .arg(&merged)
            .args(&parts),
    );
    let expected = oracle::mirrored_frames(&merged);
    // Only outer headers changed: the senders stayed distinct and the inner frames are the same.
    assert_eq!(
        expected.len(),
        n_sources,
        "rewriting merged distinct senders: {:?}",
        expected.keys()
    );
    let mut after: Vec<&Vec<u8>> = expected.values().flatten().collect();
    let mut before: Vec<&Vec<u8>> = originals.iter().collect();
    after.sort();
    before.sort();
    assert!(after == before, "tcprewrite changed inner frames");
    assert!(
        expected.len() >= 15,
        "only {} sources in the replayed captures",
        expected.len()
    );
    Some((merged, expected))
}

#[test]
fn public_captures_replayed_reach_the_collector_namespace_intact() {
    let lab = Lab::new("replay-wire");
    lab.jumbo();
    let Some((pcap, expected)) = rewritten_public_captures() else {
        eprintln!("SKIP: no public captures to replay");
        return;
    };
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let wire = lab.dir().join("wire.pcap");
    let dump = Tcpdump::start(&lab, &col, "col0", &wire, "");
    senders::tcpreplay(&lab, &snd, "snd0", pcap, 5000);
    let n = count_records(pcap);
    wait_for_capture(&wire, n);
    let (captured, dropped) = dump.stop();
    assert_eq!(dropped, 0);
    assert!(
        captured >= n,
        "tcpdump saw {captured} of {n} replayed packets"
    );
    let out = TempDir::new("replay-wire-decap");
    let (got, _) = decap(&wire, out.path());
    assert_same_frames("tapwire decap of the replay", expected, &got);
}

#[test]
fn public_captures_replayed_are_collected_byte_identical() {
    replay_collect("replay-collect", &[]);
}

/// The same through the AF_PACKET input: the collector reassembles the outer fragments itself
/// and sees every frame the captures hold, not only what the kernel delivers to its sockets.
#[test]
fn public_captures_replayed_via_af_packet_are_collected_byte_identical() {
    replay_collect("replay-afpacket", &collector::AF_PACKET_ONLY);
}

fn replay_collect(tag: &str, args: &[&str]) {
    let lab = Lab::new(tag);
    lab.jumbo();
    let Some((pcap, expected)) = rewritten_public_captures() else {
        eprintln!("SKIP: no public captures to replay");
        return;
    };
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.dir().join("out");
    let mut c = Collector::start(&lab, &col, &out, args);
    senders::tcpreplay(&lab, &snd, "snd0", pcap, 5000);
    let want = counts(expected);
    let api = c.wait_for_packets(&want, Duration::from_secs(10));
    assert_eq!(
        collector::source_packets(&api),
        want,
        "per-source packets in /api/v1/sessions vs tshark's decode of the replayed pcap"
    );
    // Sequence accounting live is what the offline pipeline reports for the same packets
    // (two senders sharing a session id, counters stuck at 0, gaps in the originals).
    let tmp = TempDir::new("replay-offline");
    let (_, offline) = decap(pcap, tmp.path());
    let live = collector::sources(&api);
    for s in offline["sources"].as_array().unwrap() {
        let key = collector::source_key(s);
        for field in ["lost", "duplicates", "reordered", "truncated", "sequence"] {
            assert_eq!(
                live[&key][field], s[field],
                "{key:?} {field}: live {} vs tapwire decap {}",
                live[&key], s
            );
        }
    }
    c.stop("TERM", STOP_WITHIN);
    assert_same_frames(
        "tapwire collect of the replay",
        expected,
        &c.session_frames(&api),
    );
}

// ---------------------------------------------------------------------------------------------
// Robustness.

/// Frames of a capture written by a process that was killed: the records tshark can read and
/// whether the file ended inside a record. Anything worse than a cut-short last record fails.
fn read_after_crash(path: &Path) -> (Vec<Vec<u8>>, bool) {
    let t = run_ok(Command::new("captype").arg(path));
    assert!(
        t.trim_end().ends_with("pcapng") || t.trim_end().ends_with("pcap"),
        "captype does not recognise {} after kill -9: {t}",
        path.display()
    );
    let out = run(Command::new("capinfos").args(["-M", "-c"]).arg(path));
    let cut = if out.status.success() {
        false
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cut short in the middle of a packet"),
            "capinfos cannot read {} after kill -9: {err}",
            path.display()
        );
        true
    };
    let json = run(Command::new("tshark").arg("-r").arg(path).args([
        "-T",
        "json",
        "-x",
        "--no-duplicate-keys",
    ]));
    let text = String::from_utf8_lossy(&json.stdout);
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("tshark JSON of {} after kill -9: {e}", path.display()));
    let frames = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| tapwire_tests::tshark::frame_bytes(&p["_source"]["layers"]))
        .collect();
    (frames, cut)
}

/// Whether `got` is `want`'s frames in order with some left out.
fn is_subsequence(got: &[Vec<u8>], want: &[Vec<u8>]) -> bool {
    let mut it = want.iter();
    got.iter().all(|g| it.any(|w| w == g))
}

#[test]
fn kill_9_during_load_leaves_readable_files() {
    signal_during_load("kill9", "KILL");
}

#[test]
fn sigterm_during_load_flushes_everything_counted_within_2_s() {
    signal_during_load("sigterm", "TERM");
}

/// Three ERSPAN sources under load (5000 pps); after 2 s the collector gets `signal`. Every
/// file must then be a valid capture whose frames are the sent frames of its source, in
/// order. KILL: at most a cut-short last record, and every packet the API had counted 1.5 s
/// earlier is in the files (flushed at least once per second). TERM/INT: exit 0 within 2 s,
/// no cut record, and every packet the API had counted before the signal is in the files.
fn signal_during_load(tag: &str, signal: &str) {
    let lab = Lab::new(tag);
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.dir().join("out");
    // Three ERSPAN sources, 300 frames each (350 packets with the outer fragments), replayed
    // up to 40 times at 5000 pps (8.4 s); the signal comes after 2 s.
    let opts = MirrorSend {
        families: "4".into(),
        count: 300,
        sources: 3,
        ..MirrorSend::default()
    };
    let loops = 40;
    let sent = senders::send_mirror(&lab, &snd, &opts, &lab.dir().join("load.pcap"), true);
    let expected: Frames = oracle::mirrored_frames(&sent.pcap)
        .into_iter()
        .map(|(k, v)| {
            let n = v.len() * loops;
            (k, v.into_iter().cycle().take(n).collect())
        })
        .collect();
    let mut c = Collector::start(&lab, &col, &out, &[]);
    let mut replay = senders::tcpreplay_loop(&lab, &snd, "snd0", &sent.pcap, 5000, loops as u32);
    // Let it write, then signal it mid-stream. Files are flushed at least once per second, so
    // what the API counted 1.5 s before the signal must be on disk even after kill -9.
    std::thread::sleep(Duration::from_millis(500));
    let counted_early = collector::source_packets(&c.sessions());
    std::thread::sleep(Duration::from_millis(1500));
    let counted = collector::source_packets(&c.sessions());
    assert!(
        replay.try_wait().is_none(),
        "the load ended before the signal"
    );
    if signal == "KILL" {
        c.proc.signal("KILL");
        c.proc.wait_timeout(Duration::from_secs(2)).expect("killed");
    } else {
        c.stop(signal, STOP_WITHIN);
    }
    replay.kill();

    // Captures only: their indexes (.twidx) are no capture files.
    let files: Vec<PathBuf> = collector::files_with_prefix(&out, "");
    assert!(!files.is_empty(), "no file written before SIG{signal}");
    let mut per_source: BTreeMap<Key, usize> = BTreeMap::new();
    for f in &files {
        let (frames, cut) = read_after_crash(f);
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let (key, want) = expected
            .iter()
            .find(|((src, kind, id), _)| name.starts_with(&format!("{src}_{kind}_{id}_")))
            .unwrap_or_else(|| panic!("{name}: no such source was sent"));
        assert!(
            is_subsequence(&frames, want),
            "{name}: the frames read after SIG{signal} are not the sent frames of {key:?} in order"
        );
        if signal != "KILL" {
            assert!(!cut, "{name}: last record cut after SIG{signal}");
        }
        eprintln!(
            "{name}: {} frames readable, last record cut: {cut}",
            frames.len()
        );
        *per_source.entry(key.clone()).or_default() += frames.len();
    }
    let total: usize = per_source.values().sum();
    assert!(
        total > 0,
        "nothing readable after SIG{signal} of a collector that ran 2 s under load"
    );
    let (must_hold, when) = if signal == "KILL" {
        (&counted_early, "1.5 s before")
    } else {
        (&counted, "just before")
    };
    for (key, n) in must_hold {
        let written = per_source.get(key).copied().unwrap_or(0) as u64;
        assert!(
            written >= *n,
            "{key:?}: the API had counted {n} packets {when} SIG{signal}, the files hold {written}"
        );
    }
}

#[test]
fn full_disk_is_counted_and_writing_resumes_after_space_is_freed() {
    require("mount");
    let mut lab = Lab::new("diskfull");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.mount_tmpfs("20m");
    // One source, 1400-byte frames: 30,000 of them are ~42 MiB, twice the disk.
    let fill = MirrorSend {
        size: 1400,
        ..MirrorSend::erspan_ii(3000)
    };
    let fill_pcap = lab.dir().join("fill.pcap");
    senders::send_mirror(&lab, &snd, &fill, &fill_pcap, true);
    let mut c = Collector::start(
        &lab,
        &col,
        &out,
        &["--rotate-size", "2MiB", "--min-free-disk", "1MiB"],
    );
    let _filler = senders::tcpreplay_loop(&lab, &snd, "snd0", &fill_pcap, 20000, 10);

    let api = wait_until(
        Duration::from_secs(10),
        "drops counted for the full disk",
        || {
            let a = c.sessions();
            (disk_drops(&a) > 0).then_some(a)
        },
    );
    eprintln!("disk full: drops {}", api["sessions"][0]["drops"]);
    assert!(
        c.proc.try_wait().is_none(),
        "the collector exited on a full disk:\n{}",
        c.proc.stderr()
    );

    // Free the space: delete every closed file.
    let current = api["sessions"][0]["files"]["current"]
        .as_str()
        .map(PathBuf::from);
    for e in std::fs::read_dir(&out).unwrap().flatten() {
        if Some(e.path()) != current {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    // New frames (numbers from 100000 up) from the same source must reach a file.
    drop(_filler);
    let more = MirrorSend {
        count: 200,
        start: 100_000,
        ..fill.clone()
    };
    let more_pcap = lab.dir().join("more.pcap");
    std::thread::sleep(Duration::from_millis(1500));
    senders::send_mirror(&lab, &snd, &more, &more_pcap, false);
    let new_frames: Vec<Vec<u8>> = oracle::mirrored_frames(&more_pcap)
        .into_values()
        .flatten()
        .collect();
    let written = poll_until(Duration::from_secs(5), || {
        let n = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .map(|e| count_new(&e.path(), &new_frames))
            .sum::<usize>();
        (n > 0).then_some(n)
    });
    let api = c.sessions();
    assert!(
        written.is_some(),
        "after freeing space no new packet reached a file; drops {}; files {:?}\n{}",
        api["sessions"][0]["drops"],
        std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect::<Vec<_>>(),
        c.proc.stderr()
    );
    eprintln!(
        "after freeing space: {} of 200 new frames written",
        written.unwrap()
    );
    c.stop("TERM", STOP_WITHIN);
}

/// disk_guard + disk_full + write_error drops over every session.
fn disk_drops(api: &Value) -> u64 {
    api["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            ["disk_guard", "disk_full", "write_error"]
                .iter()
                .map(|k| s["drops"][k].as_u64().unwrap_or(0))
                .sum::<u64>()
        })
        .sum()
}

/// How many of `frames` a (possibly still open) capture holds.
fn count_new(path: &Path, frames: &[Vec<u8>]) -> usize {
    let out = run(Command::new("tshark").arg("-r").arg(path).args([
        "-T",
        "json",
        "-x",
        "--no-duplicate-keys",
    ]));
    let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) else {
        return 0;
    };
    v.as_array()
        .into_iter()
        .flatten()
        .map(|p| tapwire_tests::tshark::frame_bytes(&p["_source"]["layers"]))
        .filter(|f| frames.contains(f))
        .count()
}

#[test]
fn malformed_flood_and_disallowed_sources_do_not_disturb_a_valid_session() {
    let lab = Lab::new("flood");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.dir().join("out");
    let flood_pcap = lab.dir().join("flood.pcap");
    let flood = senders::flood(&lab, &snd, &MirrorSend::default(), &flood_pcap);
    // What one copy of the flood is, per reason, by the offline pipeline.
    let decap_dir = TempDir::new("flood-decap");
    let (_, offline) = decap(&flood_pcap, decap_dir.path());
    let foreign_src = "10.77.0.16";
    let mut c = Collector::start(&lab, &col, &out, &["--allow", "10.77.0.11/32"]);

    let valid = MirrorSend::erspan_ii(300);
    let valid_pcap = lab.dir().join("valid.pcap");
    let sent = senders::send_mirror(&lab, &snd, &valid, &valid_pcap, true);
    let key: Key = ("10.77.0.11".into(), "erspan-ii".into(), 100);
    let want = BTreeMap::from([(key.clone(), 300u64)]);
    assert_eq!(sent.sources, want);

    // 1500 copies of the flood set (31,500 packets) at 12 kpps; the valid session (300 packets
    // at 1000 pps) in the middle of it.
    let loops = 1500;
    let mut flooder = senders::tcpreplay_loop(&lab, &snd, "snd0", &flood_pcap, 12000, loops);
    std::thread::sleep(Duration::from_millis(500));
    senders::tcpreplay(&lab, &snd, "snd0", &valid_pcap, 1000);
    assert!(
        flooder.try_wait().is_none(),
        "the flood ended before the valid session was sent"
    );
    flooder.wait_ok(Duration::from_secs(15));

    // Every flood packet accounted for: malformed by the same reasons as offline, the foreign
    // source's packets refused, nothing dropped by the kernel.
    let expected_malformed: BTreeMap<String, u64> = offline["totals"]["malformed"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap() * u64::from(loops)))
        .collect();
    let refused_want = flood.foreign * u64::from(loops);
    let mut api = Value::Null;
    let settled = poll_until(Duration::from_secs(5), || {
        api = c.sessions();
        let m: BTreeMap<String, u64> =
            serde_json::from_value(api["totals"]["malformed"].clone()).unwrap_or_default();
        (m == expected_malformed && api["totals"]["refused"][foreign_src] == refused_want)
            .then_some(())
    });
    let totals = &api["totals"];
    assert_eq!(
        totals["kernel_drops"].as_u64(),
        Some(0),
        "the collector could not keep up with 12 kpps: {totals}"
    );
    assert!(
        settled.is_some(),
        "flood not accounted for: want malformed {expected_malformed:?} and {refused_want} refused from {foreign_src}; totals {totals}"
    );
    let sources = collector::sources(&api);
    assert_eq!(
        sources.get(&key).map(|s| s["packets"].clone()),
        Some(300.into()),
        "the valid session under the flood: {sources:?}"
    );
    assert_eq!(sources[&key]["lost"], 0, "{}", sources[&key]);
    assert!(
        sources.keys().all(|(src, _, _)| src == "10.77.0.11"),
        "a source outside --allow became a session: {:?}",
        sources.keys()
    );
    assert!(
        c.proc.try_wait().is_none(),
        "collector died under the flood"
    );
    c.stop("TERM", STOP_WITHIN);

    let expected = oracle::mirrored_frames(&valid_pcap);
    let got = c.session_frames(&api);
    assert_same_frames(
        "valid session under flood",
        &expected,
        &got.into_iter().filter(|(k, _)| k == &key).collect(),
    );
    let foreign = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(foreign_src))
        .count();
    assert_eq!(foreign, 0, "files written for a source outside --allow");
}
