//! `tapwire collect` run inside a lab namespace: started with its API on the namespace's
//! loopback, queried with curl from inside the namespace, stopped with a signal, its session
//! files read back with tshark (never with tapwire's own reader).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::netns::{Lab, Proc, poll_until, wait_until};
use crate::oracle::{Frames, Key};
use crate::{bin, require, run_ok, tshark};

/// One capture file of a session, as tshark reads it.
#[derive(Debug, Clone)]
pub struct SessionFile {
    pub path: PathBuf,
    pub frames: Vec<Vec<u8>>,
    /// Each record's timestamp, nanoseconds since the epoch.
    pub times_ns: Vec<u64>,
}

/// Each session's files, in the order written.
pub type SessionFiles = BTreeMap<Key, Vec<SessionFile>>;

/// Where the collector's API listens inside its namespace.
pub const API: &str = "127.0.0.1:9750";

/// Flags for a collector that reads only the lab link `col0` with AF_PACKET (its own outer
/// reassembly), every socket input off.
pub const AF_PACKET_ONLY: [&str; 12] = [
    "--interface",
    "col0",
    "--gre-v4",
    "off",
    "--gre-v6",
    "off",
    "--vxlan",
    "off",
    "--geneve",
    "off",
    "--tzsp",
    "off",
];

/// A running `tapwire collect`.
pub struct Collector<'l> {
    lab: &'l Lab,
    ns: String,
    pub proc: Proc,
    pub out: PathBuf,
}

impl<'l> Collector<'l> {
    /// Starts `tapwire collect --out OUT --api 127.0.0.1:9750 --no-tui ARGS...` in `ns` and
    /// waits until its API answers (panics with its stderr if it exits or stays silent).
    pub fn start(lab: &'l Lab, ns: &str, out: &Path, args: &[&str]) -> Collector<'l> {
        Collector::start_wrapped(lab, ns, out, args, &[])
    }

    /// [`Collector::start`] under a wrapper command (`prlimit --nofile=256 --`).
    pub fn start_wrapped(
        lab: &'l Lab,
        ns: &str,
        out: &Path,
        args: &[&str],
        wrapper: &[&str],
    ) -> Collector<'l> {
        require("curl");
        let tapwire = bin("tapwire");
        let out_s = out.to_str().expect("utf-8 path");
        let mut cmd = wrapper.to_vec();
        cmd.extend([
            tapwire.to_str().expect("utf-8 path"),
            "collect",
            "--out",
            out_s,
            "--api",
            API,
            "--no-tui",
        ]);
        cmd.extend_from_slice(args);
        let mut c = Collector {
            lab,
            ns: ns.to_string(),
            proc: lab.spawn(ns, &cmd),
            out: out.to_path_buf(),
        };
        let ready = poll_until(Duration::from_secs(15), || {
            if let Some(status) = c.proc.try_wait() {
                panic!(
                    "tapwire collect exited at start-up ({status}): {cmd:?}\n{}",
                    c.proc.stderr()
                );
            }
            c.try_get("/api/v1/sessions")
        });
        assert!(
            ready.is_some(),
            "tapwire collect's API did not answer on {API} within 15 s: {cmd:?}\n{}",
            c.proc.stderr()
        );
        c
    }

    /// GET `path` on the API; `None` when it does not answer.
    pub fn try_get(&self, path: &str) -> Option<String> {
        let out = self.lab.exec(
            &self.ns,
            &[
                "curl",
                "-sSf",
                "--max-time",
                "3",
                &format!("http://{API}{path}"),
            ],
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `GET /api/v1/sessions` as JSON, every page of it: the first page's snapshot with the
    /// sessions of the pages that follow (each with up to 1000 sources).
    pub fn sessions(&self) -> Value {
        let mut all = self.sessions_page(None);
        let mut next = all["page"]["next"].as_str().map(String::from);
        while let Some(after) = next {
            let more = self.sessions_page(Some(&after));
            next = more["page"]["next"].as_str().map(String::from);
            let listed = more["sessions"].as_array().cloned().unwrap_or_default();
            all["sessions"]
                .as_array_mut()
                .expect("sessions is a list")
                .extend(listed);
        }
        all
    }

    /// One page of `GET /api/v1/sessions`: 1000 sessions after `after`.
    pub fn sessions_page(&self, after: Option<&str>) -> Value {
        let mut path = "/api/v1/sessions?limit=1000&sources=1000".to_string();
        if let Some(a) = after {
            path.push_str("&after=");
            path.push_str(a);
        }
        self.get_json(&path)
    }

    /// GET `path` as JSON; panics with the collector's stderr when it fails.
    pub fn get_json(&self, path: &str) -> Value {
        let body = self.try_get(path).unwrap_or_else(|| {
            panic!(
                "GET {path} failed; collector stderr:\n{}",
                self.proc.stderr()
            )
        });
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"))
    }

    /// `GET /metrics` (Prometheus text).
    pub fn metrics(&self) -> String {
        self.try_get("/metrics")
            .unwrap_or_else(|| panic!("GET /metrics failed:\n{}", self.proc.stderr()))
    }

    /// Polls the API until every source in `expected` has at least its packet count (or
    /// `timeout`); returns the last answer.
    pub fn wait_for_packets(&self, expected: &BTreeMap<Key, u64>, timeout: Duration) -> Value {
        let mut last = Value::Null;
        let done = poll_until(timeout, || {
            last = self.sessions();
            let got = source_packets(&last);
            expected
                .iter()
                .all(|(k, n)| got.get(k).is_some_and(|g| g >= n))
                .then_some(())
        });
        if done.is_none() {
            eprintln!(
                "collector did not count every packet within {timeout:?}:\n expected {expected:?}\n got {:?}",
                source_packets(&last)
            );
        }
        last
    }

    /// Polls the API until no session has packets pending (encoded for a file but not yet
    /// reported written or lost by the disk thread, which happens at least once a second), so
    /// that `written` and the drops are final for what was received; returns the last answer.
    pub fn wait_written(&self, timeout: Duration) -> Value {
        let mut last = Value::Null;
        let done = poll_until(timeout, || {
            last = self.sessions();
            last["sessions"]
                .as_array()?
                .iter()
                .all(|s| s["pending"].as_u64() == Some(0))
                .then_some(())
        });
        assert!(
            done.is_some(),
            "packets still pending after {timeout:?}: {last}\n{}",
            self.proc.stderr()
        );
        last
    }

    /// SIGTERM (or `signal`), then it must exit successfully within `within`.
    pub fn stop(&mut self, signal: &str, within: Duration) {
        self.proc.signal(signal);
        let status = self.proc.wait_timeout(within).unwrap_or_else(|| {
            panic!(
                "tapwire collect still running {within:?} after SIG{signal}:\n{}",
                self.proc.stderr()
            )
        });
        assert!(
            status.success(),
            "tapwire collect exited with {status} after SIG{signal}:\n{}",
            self.proc.stderr()
        );
    }

    /// The frames of every session's files, in order, read with tshark, keyed by the
    /// session's one source as the API names it.
    pub fn session_frames(&self, sessions: &Value) -> Frames {
        self.session_files(sessions)
            .into_iter()
            .map(|(k, files)| (k, files.into_iter().flat_map(|f| f.frames).collect()))
            .collect()
    }

    /// Every session's files (named `<session>_...`) with their frames, in the order they were
    /// written: by first packet time (file names within one second are not in that order when
    /// sorted as text), keyed by the session's one source. Every file is checked with captype
    /// and capinfos first.
    pub fn session_files(&self, sessions: &Value) -> SessionFiles {
        let mut owners = Vec::new();
        let mut all = Vec::new();
        for s in sessions["sessions"].as_array().expect("sessions array") {
            let name = s["name"].as_str().expect("session name");
            let sources = s["sources"].as_array().expect("sources array");
            assert_eq!(
                sources.len(),
                1,
                "auto session {name} should have exactly one source: {s}"
            );
            let key = source_key(&sources[0]);
            for file in self.files_of(name) {
                owners.push(key.clone());
                all.push(file);
            }
        }
        let mut out: SessionFiles = BTreeMap::new();
        for ((key, path), (frames, times_ns)) in
            owners.into_iter().zip(all.clone()).zip(read_captures(&all))
        {
            out.entry(key).or_default().push(SessionFile {
                path,
                frames,
                times_ns,
            });
        }
        for files in out.values_mut() {
            files.sort_by_key(|f| f.times_ns.first().copied());
        }
        out
    }

    /// The files written for session `name`, in name order.
    pub fn files_of(&self, name: &str) -> Vec<PathBuf> {
        files_with_prefix(&self.out, &format!("{name}_"))
    }
}

/// Every file in `dir` but the packet indexes (`.twidx`), sorted by name.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    captures(dir, "").unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// The packets in each pcapng file of `files`, as capinfos counts them; captype first (every
/// one must be pcapng). One run of each for all of them: per file would take minutes.
pub fn pcapng_packets(files: &[PathBuf]) -> Vec<u64> {
    if files.is_empty() {
        return Vec::new();
    }
    let types = run_ok(Command::new("captype").args(files));
    assert_eq!(
        types.lines().filter(|l| l.ends_with(": pcapng")).count(),
        files.len(),
        "captype: {types}"
    );
    let counts = run_ok(
        Command::new("capinfos")
            .args(["-M", "-c", "-T", "-r"])
            .args(files),
    );
    counts
        .lines()
        .map(|l| {
            let n = l.rsplit_once('\t').map_or(l, |(_, n)| n);
            n.trim().parse().unwrap_or_else(|_| panic!("capinfos: {l}"))
        })
        .collect()
}

/// The frames and record times (ns) of capture files, each checked with captype and capinfos
/// first, and read with tshark. One captype, one capinfos and one tshark for all of them (over
/// `mergecap -a` of the files, cut back apart by capinfos' counts): tshark's start-up per file
/// would cost seconds per test.
pub fn read_captures(files: &[PathBuf]) -> Vec<(Vec<Vec<u8>>, Vec<u64>)> {
    if files.is_empty() {
        return Vec::new();
    }
    for tool in ["captype", "capinfos", "mergecap"] {
        require(tool);
    }
    let types = run_ok(Command::new("captype").args(files));
    for (file, line) in files.iter().zip(types.lines()) {
        let kind = line.rsplit(": ").next().unwrap_or("").trim();
        assert!(
            matches!(kind, "pcap" | "pcapng" | "nsecpcap"),
            "captype does not recognise {}: {line}",
            file.display()
        );
    }
    let counts: Vec<usize> = run_ok(
        Command::new("capinfos")
            .args(["-M", "-c", "-T", "-r"])
            .args(files),
    )
    .lines()
    .map(|l| {
        l.rsplit('\t')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("capinfos: {l}"))
    })
    .collect();
    assert_eq!(counts.len(), files.len(), "capinfos: one line per file");
    let tmp = crate::TempDir::new("read-captures");
    let merged = tmp.join("all.pcapng");
    run_ok(
        Command::new("mergecap")
            .args(["-a", "-F", "pcapng", "-w"])
            .arg(&merged)
            .args(files),
    );
    let packets = tshark::packets(&merged);
    assert_eq!(
        packets.len(),
        counts.iter().sum::<usize>(),
        "capinfos and tshark disagree on {} files",
        files.len()
    );
    let mut it = packets.iter();
    counts
        .iter()
        .map(|n| {
            let mine: Vec<&Value> = it.by_ref().take(*n).collect();
            (
                mine.iter().map(|l| tshark::frame_bytes(l)).collect(),
                mine.iter()
                    .map(|l| {
                        epoch_ns(&tshark::field(l, "frame", "frame.time_epoch").unwrap_or_default())
                    })
                    .collect(),
            )
        })
        .collect()
}

/// tshark's `frame.time_epoch` ("1795240795.779593000") in nanoseconds.
pub fn epoch_ns(t: &str) -> u64 {
    let (sec, frac) = t.split_once('.').unwrap_or((t, "0"));
    let frac: String = format!("{frac:0<9}").chars().take(9).collect();
    sec.parse::<u64>().unwrap_or(0) * 1_000_000_000 + frac.parse::<u64>().unwrap_or(0)
}

/// Files in `dir` whose names start with `prefix`, sorted by name; packet indexes
/// (`.twidx`, beside each capture) are not capture files and are left out. None when `dir`
/// cannot be read.
pub fn files_with_prefix(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    captures(dir, prefix).unwrap_or_default()
}

fn captures(dir: &Path, prefix: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && !n.ends_with(".twidx"))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// A source object of the API as an oracle key.
pub fn source_key(s: &Value) -> Key {
    (
        s["src"].as_str().expect("src").to_string(),
        s["kind"].as_str().expect("kind").to_string(),
        s["id"].as_u64().expect("id"),
    )
}

/// Every source in a `/api/v1/sessions` answer, with the whole source object.
pub fn sources(sessions: &Value) -> BTreeMap<Key, Value> {
    let mut out = BTreeMap::new();
    for s in sessions["sessions"].as_array().into_iter().flatten() {
        for src in s["sources"].as_array().into_iter().flatten() {
            out.insert(source_key(src), src.clone());
        }
    }
    out
}

/// Packets per source in a `/api/v1/sessions` answer.
pub fn source_packets(sessions: &Value) -> BTreeMap<Key, u64> {
    sources(sessions)
        .into_iter()
        .map(|(k, v)| (k, v["packets"].as_u64().unwrap_or(0)))
        .collect()
}

/// Waits until `path` exists and is non-empty.
pub fn wait_for_file(path: &Path, timeout: Duration) {
    wait_until(
        timeout,
        &format!("{} to be written", path.display()),
        || {
            std::fs::metadata(path)
                .ok()
                .filter(|m| m.len() > 0)
                .map(|_| ())
        },
    );
}

/// What tapwire's pcapng comment says of a frame whose GRE checksum did not verify.
pub const GRE_CHECKSUM_COMMENT: &str = "GRE checksum does not verify";

/// The count of `true` in each source's list.
fn n_true(flags: &BTreeMap<Key, Vec<bool>>) -> BTreeMap<Key, u64> {
    flags
        .iter()
        .map(|(k, v)| (k.clone(), v.iter().filter(|b| **b).count() as u64))
        .collect()
}

/// A stream whose GRE checksums tshark found bad (`bad`: per source, per packet) as the live
/// collector must report it when not strict: each source and its session counts its bad ones
/// as `gre_checksum_bad`, in the JSON and in `/metrics`; nothing is malformed.
pub fn assert_gre_checksum_bad_counted(
    c: &Collector<'_>,
    api: &Value,
    bad: &BTreeMap<Key, Vec<bool>>,
) {
    let want = n_true(bad);
    let metrics = c.metrics();
    for s in api["sessions"].as_array().expect("sessions") {
        let name = s["name"].as_str().expect("name");
        let key = source_key(&s["sources"][0]);
        let n = want[&key];
        assert_eq!(s["sources"][0]["gre_checksum_bad"], n, "{key:?}: {s}");
        assert_eq!(s["gre_checksum_bad"], n, "session {name}");
        let line =
            format!("tapwire_session_gre_checksum_bad_packets_total{{session=\"{name}\"}} {n}");
        assert!(
            metrics.lines().any(|l| l == line),
            "/metrics lacks {line:?}:\n{metrics}"
        );
    }
    assert_eq!(
        api["totals"]["malformed"],
        serde_json::json!({}),
        "bad checksums are not malformed"
    );
}

/// Per source, whether each frame in the session's files (in order) carries the bad-checksum
/// comment, as tshark reads `frame.comment`.
pub fn gre_checksum_comments(c: &Collector<'_>, api: &Value) -> BTreeMap<Key, Vec<bool>> {
    let mut out = BTreeMap::new();
    for s in api["sessions"].as_array().expect("sessions") {
        let key = source_key(&s["sources"][0]);
        let mut flags = Vec::new();
        for f in c.files_of(s["name"].as_str().expect("name")) {
            flags.extend(
                tshark::fields(&f, &["frame.comment"])
                    .iter()
                    .map(|r| r[0].contains(GRE_CHECKSUM_COMMENT)),
            );
        }
        out.insert(key, flags);
    }
    out
}

/// `tapwire decap --json` of `input`, with `args`; returns the report and the frames per
/// source as tshark reads the files.
pub fn decap(input: &Path, args: &[&str]) -> (Value, Frames) {
    let tmp = crate::TempDir::new("decap");
    let out = run_ok(
        Command::new(bin("tapwire"))
            .arg("decap")
            .arg(input)
            .arg("--out")
            .arg(tmp.path())
            .arg("--json")
            .args(args),
    );
    let report: Value = serde_json::from_str(&out).expect("decap --json");
    let mut frames = Frames::new();
    for s in report["sources"].as_array().expect("sources") {
        let file = Path::new(s["file"].as_str().expect("file"));
        crate::validate_capture(file);
        frames.insert(source_key(s), crate::oracle::frames(file));
    }
    (report, frames)
}

/// `tapwire decap` of a capture whose GRE checksums tshark found bad (`bad`), the frames of
/// which are `expected`: without a flag every frame is written and the bad ones counted per
/// source; with `--strict-gre-checksum` only the good ones are written and the bad ones are
/// counted as malformed `gre_checksum`.
pub fn assert_decap_gre_checksums(input: &Path, expected: &Frames, bad: &BTreeMap<Key, Vec<bool>>) {
    let want = n_true(bad);
    let (report, got) = decap(input, &[]);
    crate::oracle::assert_same_frames("tapwire decap", expected, &got);
    for s in report["sources"].as_array().expect("sources") {
        assert_eq!(s["gre_checksum_bad"], want[&source_key(s)], "decap: {s}");
    }
    assert!(
        report["totals"]["malformed"].get("gre_checksum").is_none(),
        "{}",
        report["totals"]
    );

    let (report, got) = decap(input, &["--strict-gre-checksum"]);
    let good: Frames = expected
        .iter()
        .map(|(k, frames)| {
            let kept = frames
                .iter()
                .zip(&bad[k])
                .filter(|(_, b)| !**b)
                .map(|(f, _)| f.clone())
                .collect::<Vec<_>>();
            (k.clone(), kept)
        })
        .filter(|(_, v)| !v.is_empty())
        .collect();
    crate::oracle::assert_same_frames("tapwire decap --strict-gre-checksum", &good, &got);
    assert_eq!(
        report["totals"]["malformed"]["gre_checksum"],
        want.values().sum::<u64>(),
        "{}",
        report["totals"]
    );
    for s in report["sources"].as_array().expect("sources") {
        assert_eq!(s["gre_checksum_bad"], 0, "strict decap: {s}");
    }
}
