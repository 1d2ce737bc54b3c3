//! End-to-end: `tapwire collect` when its output cannot be written, and after it can again.
//!
//! - a small tmpfs filled up under several sessions with the default disk guard, then freed;
//! - the output tmpfs remounted read-only under the running collector, then read-write;
//! - `--out` naming a regular file, then replaced by a directory.
//!
//! In each: every file passes captype, capinfos and `tshark -r` with no error; each session's
//! `written` equals the packets tshark reads from its files; every packet received is written,
//! pending or dropped with its reason (`disk_full`, `write_error`), per session and per source,
//! in the API and `/metrics`; the session shows the error while it lasts; and packets sent
//! once the output is writable again all land. Senders: the scapy mirror sender and tcpreplay
//! of its pcaps. Run as root (namespaces, mounts).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tapwire_tests::collector::{self, Collector};
use tapwire_tests::netns::{Lab, poll_until, wait_until};
use tapwire_tests::oracle::{self, Frames};
use tapwire_tests::senders::{self, MirrorSend};
use tapwire_tests::{require, run, run_ok, tshark};

const STOP_WITHIN: Duration = Duration::from_millis(2500);
const MIB: u64 = 1 << 20;

#[test]
fn a_full_disk_leaves_every_file_readable_and_every_packet_counted() {
    require("fallocate");
    let mut lab = Lab::new("disk-full");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    // 16 MiB: the default guard is 5 % (0.8 MiB), less than one 1 MiB buffer: a buffer that
    // finds the disk full is cut back, and what that frees could lift a guard without
    // hysteresis.
    let out = lab.mount_tmpfs("16m");
    let (total, _) = space(&out);
    let guard = total / 20;
    // Leave 0.1 MiB above the guard: the nine sessions' first buffers (up to 1 MiB each) do
    // not fit, and most of the files' first writes fail.
    let filler = out.join("filler");
    let (_, free) = space(&out);
    run_ok(
        Command::new("fallocate")
            .args(["-l", &(free - guard - MIB / 10).to_string()])
            .arg(&filler),
    );
    let mut c = Collector::start(&lab, &col, &out, &[]);

    // Nine sources of every encapsulation, 1400-byte frames, 8000 pps for 0.9 s: 1.2 MB a
    // second per session, so buffers go out full (1 MiB).
    let fill = MirrorSend {
        families: "4".into(),
        count: 800,
        size: 1400,
        ..MirrorSend::default()
    };
    let fill_pcap = lab.dir().join("fill.pcap");
    let fill_sent = senders::send_mirror(&lab, &snd, &fill, &fill_pcap, true);
    assert_eq!(fill_sent.sources.len(), 9, "{:?}", fill_sent.sources);
    senders::tcpreplay(&lab, &snd, "snd0", &fill_pcap, 8000);
    let full = settle(&c, fill_sent.total());
    eprintln!("disk full: {}", summary(&full));
    assert_accounted(&c, &full);
    let drops = &full["totals"]["drops"];
    assert!(
        drops["disk_full"].as_u64() > Some(0),
        "no write found the disk full (the test must fill it): {drops}"
    );
    assert!(c.proc.try_wait().is_none(), "the collector exited");
    for s in sessions(&full) {
        if s["drops"]["disk_full"].as_u64() > Some(0) {
            let error = s["files"]["error"].as_str().unwrap_or_default();
            assert!(
                error.contains("No space left"),
                "{}: error {error:?}",
                s["name"]
            );
        }
    }

    // Still full: what the cut-backs freed does not lift the guard, checked every 0.5 s.
    // Packets now are held (`disk_guard`), neither written nor failed.
    std::thread::sleep(Duration::from_millis(1500));
    let held = MirrorSend {
        count: 20,
        start: 50_000,
        ..fill.clone()
    };
    let held_pcap = lab.dir().join("held.pcap");
    let held_sent = senders::send_mirror(&lab, &snd, &held, &held_pcap, true);
    senders::tcpreplay(&lab, &snd, "snd0", &held_pcap, 1000);
    let still = settle(&c, fill_sent.total() + held_sent.total());
    eprintln!("still full: {}", summary(&still));
    for (a, b) in sessions(&full).iter().zip(sessions(&still)) {
        let name = &b["name"];
        let n = |s: &Value, k: &str| s["drops"][k].as_u64().unwrap();
        assert_eq!(
            b["written"], a["written"],
            "{name}: written while full: {b}"
        );
        assert_eq!(n(&b, "disk_full"), n(a, "disk_full"), "{name}: {b}");
        assert_eq!(n(&b, "disk_guard") - n(a, "disk_guard"), 20, "{name}: {b}");
    }
    let full = still;

    // Space returns; the guard lets writing go on within its 0.5 s check.
    std::fs::remove_file(&filler).unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    let more = MirrorSend {
        count: 60,
        start: 100_000,
        ..fill.clone()
    };
    let more_pcap = lab.dir().join("more.pcap");
    let more_sent = senders::send_mirror(&lab, &snd, &more, &more_pcap, true);
    senders::tcpreplay(&lab, &snd, "snd0", &more_pcap, 1000);
    let after = settle(
        &c,
        fill_sent.total() + held_sent.total() + more_sent.total(),
    );
    eprintln!("after freeing: {}", summary(&after));
    assert_accounted(&c, &after);
    for (a, b) in sessions(&full).iter().zip(sessions(&after)) {
        let name = &b["name"];
        assert_eq!(a["name"], *name);
        assert_eq!(
            b["written"].as_u64().unwrap() - a["written"].as_u64().unwrap(),
            60,
            "{name}: every packet sent after the space returned is written; {b}"
        );
        assert_eq!(drops_total(&b), drops_total(a), "{name}: {}", b["drops"]);
        assert!(b["files"]["error"].is_null(), "{name}: {}", b["files"]);
    }
    c.stop("TERM", STOP_WITHIN);

    let first = oracle::mirrored_frames(&fill_pcap);
    let second = oracle::mirrored_frames(&more_pcap);
    let files = read_session_files(&c, &after);
    for s in sessions(&after) {
        let key = collector::source_key(&s["sources"][0]);
        let got = &files[s["name"].as_str().unwrap()];
        let sent: Vec<Vec<u8>> = first[&key].iter().chain(&second[&key]).cloned().collect();
        assert!(
            is_subsequence(got, &sent),
            "{key:?}: the files hold frames that were not sent, or out of order"
        );
        assert!(
            got.ends_with(&second[&key]),
            "{key:?}: the frames sent after the space returned are not all at the end"
        );
    }
}

#[test]
fn a_read_only_output_counts_nothing_written_and_writing_resumes_read_write() {
    let mut lab = Lab::new("disk-ro");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.mount_tmpfs("16m");
    let mut c = Collector::start(&lab, &col, &out, &[]);
    let kinds = MirrorSend {
        families: "4".into(),
        kinds: "erspan-ii,gre,vxlan".into(),
        count: 30,
        ..MirrorSend::default()
    };
    let a = senders::send_mirror(&lab, &snd, &kinds, &lab.dir().join("a.pcap"), false);
    assert_eq!(a.sources.len(), 4, "{:?}", a.sources);
    let before = settle(&c, a.total());
    for s in sessions(&before) {
        assert_eq!(s["written"], 30, "{s}");
    }

    // Files open for writing keep a file system from going read-only: rotate (which closes
    // them; the next packet opens the next file), then remount.
    for s in sessions(&before) {
        let name = s["name"].as_str().unwrap();
        post(&lab, &col, &format!("/api/v1/sessions/{name}/rotate"));
    }
    let dir = out.to_str().unwrap();
    wait_until(
        Duration::from_secs(10),
        "the tmpfs remounted read-only",
        || {
            run(Command::new("mount").args(["-o", "remount,ro", dir]))
                .status
                .success()
                .then_some(())
        },
    );
    let b = senders::send_mirror(
        &lab,
        &snd,
        &MirrorSend {
            start: 1000,
            ..kinds.clone()
        },
        &lab.dir().join("b.pcap"),
        false,
    );
    let ro = settle(&c, a.total() + b.total());
    eprintln!("read-only: {}", summary(&ro));
    assert_accounted(&c, &ro);
    for s in sessions(&ro) {
        let name = &s["name"];
        assert_eq!(s["written"], 30, "{name}: nothing more written: {s}");
        assert_eq!(s["drops"]["write_error"], 30, "{name}: {}", s["drops"]);
        assert_eq!(
            s["sources"][0]["drops"]["write_error"], 30,
            "{name}: per source"
        );
        assert_eq!(s["state"], "error", "{name}");
        let error = s["files"]["error"].as_str().unwrap_or_default();
        assert!(error.contains("Read-only"), "{name}: error {error:?}");
    }

    run_ok(Command::new("mount").args(["-o", "remount,rw", dir]));
    resume_and_check(&lab, &mut c, &kinds, &[&a.pcap]);
}

#[test]
fn an_out_that_is_a_file_counts_every_packet_dropped_until_it_is_a_directory() {
    let lab = Lab::new("disk-notdir");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.dir().join("out");
    std::fs::write(&out, b"not a directory").unwrap();
    let mut c = Collector::start(&lab, &col, &out, &[]);
    let kinds = MirrorSend {
        families: "4".into(),
        kinds: "erspan-ii,vxlan".into(),
        count: 50,
        ..MirrorSend::default()
    };
    let a = senders::send_mirror(&lab, &snd, &kinds, &lab.dir().join("a.pcap"), false);
    let api = settle(&c, a.total());
    eprintln!("--out is a file: {}", summary(&api));
    assert_accounted(&c, &api);
    for s in sessions(&api) {
        let name = &s["name"];
        assert_eq!(s["written"], 0, "{name}: {s}");
        assert_eq!(s["drops"]["write_error"], 50, "{name}: {}", s["drops"]);
        assert_eq!(s["sources"][0]["drops"]["write_error"], 50, "{name}");
        assert_eq!(s["state"], "error", "{name}");
        let error = s["files"]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(out.to_str().unwrap()),
            "{name}: error {error:?}"
        );
    }

    std::fs::remove_file(&out).unwrap();
    std::fs::create_dir(&out).unwrap();
    resume_and_check(&lab, &mut c, &kinds, &[]);
}

/// After the output became writable: a trickle of packets until every session has opened a
/// file again (the retry waits out its backoff; what arrives meanwhile is dropped and
/// counted), then 20 more per session, all of which must be written. Then the collector is
/// stopped and every file read back: `written` is what tshark reads, the files hold the
/// frames of `earlier` pcaps first, in order, and the last 20 at the end.
fn resume_and_check(lab: &Lab, c: &mut Collector<'_>, kinds: &MirrorSend, earlier: &[&Path]) {
    let snd = lab.ns("snd");
    let one = MirrorSend {
        count: 1,
        start: 3000,
        ..kinds.clone()
    };
    let trickle_pcap = lab.dir().join("trickle.pcap");
    senders::send_mirror(lab, snd, &one, &trickle_pcap, true);
    let trickle = senders::tcpreplay_loop(lab, snd, "snd0", &trickle_pcap, 20, 10_000);
    let resumed = wait_until(
        Duration::from_secs(30),
        "every session writing again",
        || {
            let api = c.sessions();
            sessions(&api)
                .iter()
                .all(|s| s["files"]["error"].is_null() && s["state"] != "error")
                .then_some(api)
        },
    );
    drop(trickle);
    let n = sessions(&resumed)
        .iter()
        .map(|s| s["packets"].as_u64().unwrap())
        .sum::<u64>();
    let api = settle(c, n);
    let last = MirrorSend {
        count: 20,
        start: 5000,
        ..kinds.clone()
    };
    let last_pcap = lab.dir().join("last.pcap");
    let sent = senders::send_mirror(lab, snd, &last, &last_pcap, false);
    let end = settle(c, n + sent.total());
    eprintln!("writing again: {}", summary(&end));
    assert_accounted(c, &end);
    for (a, b) in sessions(&api).iter().zip(sessions(&end)) {
        let name = &b["name"];
        assert_eq!(
            b["written"].as_u64().unwrap() - a["written"].as_u64().unwrap(),
            20,
            "{name}: all 20 packets sent once writable are written; {b}"
        );
        assert_eq!(drops_total(&b), drops_total(a), "{name}: {}", b["drops"]);
    }
    c.stop("TERM", STOP_WITHIN);

    let files = read_session_files(c, &end);
    let trickled = oracle::mirrored_frames(&trickle_pcap);
    let last_frames = oracle::mirrored_frames(&last_pcap);
    let mut first = Frames::new();
    for p in earlier {
        for (k, v) in oracle::mirrored_frames(p) {
            first.entry(k).or_default().extend(v);
        }
    }
    for s in sessions(&end) {
        let key = collector::source_key(&s["sources"][0]);
        let got = &files[s["name"].as_str().unwrap()];
        let head = first.get(&key).map_or(&[][..], Vec::as_slice);
        let tail = &last_frames[&key];
        assert!(
            got.starts_with(head) && got.ends_with(tail) && got.len() >= head.len() + tail.len(),
            "{key:?}: the files do not hold the earlier frames first and the last ones at the end"
        );
        let middle = &got[head.len()..got.len() - tail.len()];
        assert!(
            middle.iter().all(|f| trickled[&key].contains(f)),
            "{key:?}: frames that were not sent"
        );
    }
}

/// Polls the API until the sessions have received `packets` in all and none has packets
/// pending (everything encoded has been reported written or lost by the disk thread).
fn settle(c: &Collector<'_>, packets: u64) -> Value {
    let mut last = Value::Null;
    let done = poll_until(Duration::from_secs(20), || {
        last = c.sessions();
        let s = sessions(&last);
        let received: u64 = s.iter().map(|s| s["packets"].as_u64().unwrap()).sum();
        let pending = s.iter().any(|s| s["pending"].as_u64() != Some(0));
        (received >= packets && !pending).then_some(())
    });
    assert!(
        done.is_some(),
        "the collector did not settle at {packets} packets within 20 s: {}\n{}",
        summary(&last),
        c.proc.stderr()
    );
    last
}

fn sessions(api: &Value) -> Vec<Value> {
    let mut v = api["sessions"].as_array().expect("sessions").clone();
    v.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    v
}

fn drops_total(s: &Value) -> u64 {
    s["drops"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum()
}

/// Every packet a session received is written, pending or dropped; the sources' drops add up
/// to the session's; `/metrics` says what the JSON says.
fn assert_accounted(c: &Collector<'_>, api: &Value) {
    let metrics = c.metrics();
    for s in sessions(api) {
        let name = s["name"].as_str().unwrap();
        let written = s["written"].as_u64().unwrap();
        let pending = s["pending"].as_u64().unwrap_or(0);
        assert_eq!(
            s["packets"].as_u64().unwrap(),
            written + pending + drops_total(&s),
            "{name}: packets = written + pending + drops: {s}"
        );
        for (reason, n) in s["drops"].as_object().unwrap() {
            if reason == "no_session" {
                continue;
            }
            let by_source: u64 = s["sources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["drops"][reason].as_u64().unwrap_or(0))
                .sum();
            assert_eq!(Some(by_source), n.as_u64(), "{name}: {reason} per source");
            let line = format!(
                "tapwire_session_dropped_packets_total{{session=\"{name}\",reason=\"{reason}\"}} {n}"
            );
            assert!(metrics.lines().any(|l| l == line), "/metrics lacks {line}");
        }
        let line = format!("tapwire_session_written_packets_total{{session=\"{name}\"}} {written}");
        assert!(metrics.lines().any(|l| l == line), "/metrics lacks {line}");
    }
}

/// Each session's files read back, once the collector has stopped: every file passes captype
/// and capinfos, and `tshark -r` reads it with no error (exit 0, nothing on stderr); the
/// frames are in the order written (file names sort that way). Each session's `written` must
/// equal the frames read.
fn read_session_files(c: &Collector<'_>, api: &Value) -> BTreeMap<String, Vec<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for s in sessions(api) {
        let name = s["name"].as_str().unwrap();
        let mut frames = Vec::new();
        for file in c.files_of(name) {
            seen.insert(file.clone());
            let n = tapwire_tests::validate_capture(&file);
            let got = tshark_read(&file);
            assert_eq!(
                got.len() as u64,
                n,
                "{}: capinfos and tshark",
                file.display()
            );
            frames.extend(got);
        }
        eprintln!(
            "{name}: {} files, {} frames read, written {}",
            c.files_of(name).len(),
            frames.len(),
            s["written"]
        );
        assert_eq!(
            Some(frames.len() as u64),
            s["written"].as_u64(),
            "{name}: the API's written count is not what tshark reads from its files"
        );
        out.insert(name.to_string(), frames);
    }
    // Nothing else was left behind (an empty file is not a capture).
    for f in collector::files_with_prefix(&c.out, "") {
        assert!(seen.contains(&f), "{} belongs to no session", f.display());
    }
    out
}

/// `tshark -r`: it must read the whole file without a word on stderr (but the warning about
/// running as root).
fn tshark_read(file: &Path) -> Vec<Vec<u8>> {
    require("tshark");
    let out = run(Command::new("tshark").arg("-r").arg(file).args([
        "-T",
        "json",
        "-x",
        "--no-duplicate-keys",
    ]));
    // The one line tshark always prints as root is not about the file.
    let stderr: String = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("Running as user \"root\""))
        .collect();
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "tshark -r {} ({}): {stderr}",
        file.display(),
        out.status
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("tshark JSON");
    v.as_array()
        .into_iter()
        .flatten()
        .map(|p| tshark::frame_bytes(&p["_source"]["layers"]))
        .collect()
}

/// (total, available) bytes of the file system holding `dir`, as statvfs reports them.
fn space(dir: &Path) -> (u64, u64) {
    let out = run_ok(Command::new("stat").args(["-f", "-c", "%S %b %a"]).arg(dir));
    let v: Vec<u64> = out.split_whitespace().map(|n| n.parse().unwrap()).collect();
    (v[0] * v[1], v[0] * v[2])
}

fn post(lab: &Lab, ns: &str, path: &str) {
    lab.exec_ok(
        ns,
        &[
            "curl",
            "-sSf",
            "--max-time",
            "3",
            "-X",
            "POST",
            &format!("http://{}{path}", collector::API),
        ],
    );
}

fn is_subsequence(got: &[Vec<u8>], want: &[Vec<u8>]) -> bool {
    let mut it = want.iter();
    got.iter().all(|g| it.any(|w| w == g))
}

/// Per session: received, written, pending, drops by reason, error.
fn summary(api: &Value) -> String {
    sessions(api)
        .iter()
        .map(|s| {
            let drops: Vec<String> = s["drops"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, n)| n.as_u64() > Some(0))
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            format!(
                "\n  {}: packets {} written {} pending {} drops [{}] error {}",
                s["name"],
                s["packets"],
                s["written"],
                s["pending"],
                drops.join(", "),
                s["files"]["error"]
            )
        })
        .collect()
}
