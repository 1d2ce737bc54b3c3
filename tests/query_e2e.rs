//! `tapwire query` and `GET /api/v1/packets` against a running collector that rotates its
//! files: the answer must equal what `tcpdump -r FILTER` over every capture file, then
//! `mergecap`, then the time range gives (same frames, same nanosecond timestamps, merged by
//! time), read back with tshark, checked with captype and capinfos.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tapwire_tests::collector::{API, Collector, read_captures};
use tapwire_tests::netns::{COL_V4, Lab};
use tapwire_tests::senders::{self, MirrorSend};
use tapwire_tests::{TempDir, bin, require, run_ok, validate_capture};

/// Packets per file: 60 per session leave 4 in the file still being written.
const ROTATE: usize = 7;
const PER_SESSION: u32 = 60;
/// The second API listener, reached from the sender's namespace (not the loopback, so a
/// request without a token is refused).
const LISTEN_PORT: u16 = 9760;

/// One packet as tshark reads it: nanoseconds since the epoch and the frame's bytes.
type Packet = (u64, Vec<u8>);

/// The packets of `files`, each file cut with `tcpdump -r FILE -w PART FILTER` at nanosecond
/// precision, the parts merged by `mergecap`, and then kept in `from_ns..=to_ns`.
fn tcpdump_mergecap(
    files: &[PathBuf],
    filter: &str,
    from_ns: u64,
    to_ns: u64,
    tmp: &Path,
) -> Vec<Packet> {
    let mut parts = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let part = tmp.join(format!("part{i}.pcap"));
        let mut cmd = Command::new("tcpdump");
        cmd.args(["-Z", "root", "--time-stamp-precision=nano", "-r"])
            .arg(f)
            .arg("-w")
            .arg(&part);
        if !filter.is_empty() {
            cmd.arg(filter);
        }
        run_ok(&mut cmd);
        parts.push(part);
    }
    let merged = tmp.join("merged.pcapng");
    run_ok(
        Command::new("mergecap")
            .args(["-F", "pcapng", "-w"])
            .arg(&merged)
            .args(&parts),
    );
    packets(&merged)
        .into_iter()
        .filter(|(t, _)| (from_ns..=to_ns).contains(t))
        .collect()
}

/// The packets of one capture (checked with captype and capinfos, read with tshark).
fn packets(path: &Path) -> Vec<Packet> {
    let (frames, times) = read_captures(&[path.to_path_buf()]).pop().unwrap();
    times.into_iter().zip(frames).collect()
}

/// The query's answer is the oracle's: the same packets with the same timestamps, in time
/// order (mergecap's order up to packets with equal timestamps).
fn assert_same(what: &str, expected: &[Packet], got: &[Packet]) {
    assert!(
        got.windows(2).all(|w| w[0].0 <= w[1].0),
        "{what}: not in time order: {:?}",
        got.iter().map(|p| p.0).collect::<Vec<_>>()
    );
    let sorted = |v: &[Packet]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    let (e, g) = (sorted(expected), sorted(got));
    if e != g {
        let times = |v: &[Packet]| v.iter().map(|p| p.0).collect::<Vec<_>>();
        panic!(
            "{what}: {} packets expected (tcpdump -r + mergecap), {} returned\n expected times {:?}\n got times      {:?}",
            e.len(),
            g.len(),
            times(&e),
            times(&g)
        );
    }
}

/// `tapwire query --dir OUT ... -w FILE`; its stderr summary.
fn query_dir(out: &Path, args: &[&str], filter: &str, w: &Path) -> String {
    let mut cmd = Command::new(bin("tapwire"));
    cmd.arg("query").arg("--dir").arg(out).args(args);
    cmd.arg("-w").arg(w);
    if !filter.is_empty() {
        cmd.arg(filter);
    }
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        o.status.success(),
        "tapwire query {args:?} {filter:?}: {err}"
    );
    err
}

/// `[from, to]` as RFC 3339 with nanoseconds, as `--from`/`--to` and the API take them.
fn rfc3339(t_ns: u64) -> String {
    run_ok(Command::new("date").args([
        "-u",
        "-d",
        &format!("@{}.{:09}", t_ns / 1_000_000_000, t_ns % 1_000_000_000),
        "+%Y-%m-%dT%H:%M:%S.%NZ",
    ]))
    .trim()
    .to_string()
}

fn capture_files(files: Vec<PathBuf>) -> Vec<PathBuf> {
    files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pcapng"))
        .collect()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn query_by_time_and_filter_equals_tcpdump_and_mergecap_over_the_rotated_files() {
    for tool in [
        "tcpdump", "tshark", "mergecap", "capinfos", "captype", "curl",
    ] {
        require(tool);
    }
    let lab = Lab::new("query");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.dir().join("out");
    let db = lab.dir().join("control.db");
    let listen = format!("0.0.0.0:{LISTEN_PORT}");
    let c = Collector::start(
        &lab,
        &col,
        &out,
        &[
            "--rotate-packets",
            &ROTATE.to_string(),
            "--db",
            db.to_str().unwrap(),
            "--listen",
            &listen,
        ],
    );
    // Two sources, their packets interleaved: two sessions whose files overlap in time.
    let opts = MirrorSend {
        families: "4".into(),
        kinds: "erspan-ii".into(),
        sources: 2,
        count: PER_SESSION,
        ..MirrorSend::default()
    };
    let sent = senders::send_mirror(&lab, &snd, &opts, &lab.dir().join("sent.pcap"), false);
    assert_eq!(
        sent.sources.len(),
        2,
        "two sources sent: {:?}",
        sent.sources
    );
    c.wait_for_packets(&sent.sources, Duration::from_secs(15));
    let api = c.wait_written(Duration::from_secs(10));

    // The collector keeps running: each session's newest file is still being written.
    let names: Vec<String> = api["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 2, "{api}");
    let per_session: Vec<Vec<PathBuf>> =
        names.iter().map(|n| capture_files(c.files_of(n))).collect();
    let all: Vec<PathBuf> = per_session.iter().flatten().cloned().collect();
    let per_file = read_captures(&all);
    let mut times: Vec<u64> = per_file.iter().flat_map(|(_, t)| t.clone()).collect();
    times.sort_unstable();
    assert_eq!(times.len(), 2 * PER_SESSION as usize);
    for files in &per_session {
        let expected_files = (PER_SESSION as usize).div_ceil(ROTATE);
        assert_eq!(files.len(), expected_files, "{files:?}");
        for f in files {
            let index = PathBuf::from(format!("{}.twidx", f.display()));
            assert!(index.exists(), "no index beside {}", f.display());
        }
    }
    // The open file's packets are the newest: the range's end is the very last packet.
    let open: Vec<u64> = per_session
        .iter()
        .map(|files| {
            let i = all.iter().position(|f| f == files.last().unwrap()).unwrap();
            let t = &per_file[i].1;
            assert_eq!(t.len(), PER_SESSION as usize % ROTATE, "{:?}", files.last());
            *t.last().unwrap()
        })
        .collect();
    let (from_ns, to_ns) = (times[25], *times.last().unwrap());
    let (from, to) = (rfc3339(from_ns), rfc3339(to_ns));
    let range = ["--from", from.as_str(), "--to", to.as_str()];

    let tmp = TempDir::new("query-e2e");
    let mut total = 0;
    for (i, filter) in [
        "",
        "host 192.0.2.1",
        "udp port 2000",
        "vlan and host 192.0.2.1",
        "ip6 and udp",
    ]
    .into_iter()
    .enumerate()
    {
        let oracle_dir = tmp.join(format!("oracle{i}"));
        std::fs::create_dir_all(&oracle_dir).unwrap();
        let expected = tcpdump_mergecap(&all, filter, from_ns, to_ns, &oracle_dir);
        assert!(!expected.is_empty(), "{filter:?}: the oracle found nothing");
        if filter.is_empty() {
            total = expected.len();
            // Both open files' last packets are in the range.
            for t in &open {
                assert!(expected.iter().any(|p| p.0 == *t));
            }
        } else {
            assert!(expected.len() < total, "{filter:?} leaves some out");
        }
        let w = tmp.join(format!("q{i}.pcapng"));
        query_dir(&out, &range, filter, &w);
        let got = packets(&w);
        assert_same(&format!("--dir {filter:?}"), &expected, &got);
        if filter.is_empty() {
            for t in &open {
                assert!(got.iter().any(|p| p.0 == *t), "the open files' packets");
            }
        }
    }

    // One session only.
    let expected = tcpdump_mergecap(
        &per_session[1],
        "host 192.0.2.1",
        from_ns,
        to_ns,
        &tmp.join("."),
    );
    let w = tmp.join("session.pcapng");
    let mut args = range.to_vec();
    args.extend(["--session", &names[1]]);
    query_dir(&out, &args, "host 192.0.2.1", &w);
    assert_same("--session", &expected, &packets(&w));

    // -w - streams the same bytes as -w FILE.
    let w_file = tmp.join("file.pcapng");
    query_dir(&out, &range, "host 192.0.2.1", &w_file);
    let piped = Command::new(bin("tapwire"))
        .arg("query")
        .arg("--dir")
        .arg(&out)
        .args(range)
        .args(["-w", "-", "host 192.0.2.1"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(piped.status.success());
    assert_eq!(
        piped.stdout,
        std::fs::read(&w_file).unwrap(),
        "-w - and -w FILE differ"
    );

    // A file without its index (an older file, or one cut by kill -9) is still answered.
    let middle = &per_session[0][per_session[0].len() / 2];
    std::fs::remove_file(format!("{}.twidx", middle.display())).unwrap();
    let expected = tcpdump_mergecap(&all, "", from_ns, to_ns, &tmp.join("."));
    let w = tmp.join("noindex.pcapng");
    query_dir(&out, &range, "", &w);
    assert_same("a file without index", &expected, &packets(&w));
    assert!(
        Path::new(&format!("{}.twidx", middle.display())).exists(),
        "the closed file's index is written after the fact"
    );

    // A filter libpcap rejects: a usage error naming it, nothing written.
    let bad = Command::new(bin("tapwire"))
        .arg("query")
        .arg("--dir")
        .arg(&out)
        .args(range)
        .args(["-w", "-", "host and port"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(err.contains("syntax error"), "libpcap's message: {err}");
    assert!(bad.stdout.is_empty());

    // The API: a viewer's token from another host gets the same pcapng; no token, 401.
    let admin = std::fs::read_to_string(format!("{}.admin-token", db.display()))
        .expect("the admin token beside the database")
        .trim()
        .to_string();
    let tapwire = bin("tapwire");
    let v = lab.exec_ok(
        &col,
        &[
            tapwire.to_str().unwrap(),
            "token",
            "create",
            "--name",
            "viewer1",
            "--role",
            "viewer",
            "--json",
            "--controller",
            &format!("http://{API}"),
            "--token",
            &admin,
        ],
    );
    let viewer = serde_json::from_str::<serde_json::Value>(&v).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let filter = "vlan and host 192.0.2.1";
    let url = format!(
        "http://{COL_V4}:{LISTEN_PORT}/api/v1/packets?from={}&to={}&filter={}",
        urlencode(&from),
        urlencode(&to),
        urlencode(filter)
    );
    let body = lab.dir().join("api.pcapng");
    let curl = |url: &str, token: Option<&str>| {
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        let mut cmd = vec!["curl", "-sS", "--max-time", "20", "-o"];
        cmd.push(body.to_str().unwrap());
        cmd.extend(["-w", "%{http_code}"]);
        if let Some(a) = &auth {
            cmd.extend(["-H", a.as_str()]);
        }
        cmd.push(url);
        lab.exec_ok(&snd, &cmd)
    };
    assert_eq!(curl(&url, None), "401", "no token from another host");
    let bad_url = url.replace(&urlencode(filter), &urlencode("host and port"));
    assert_eq!(
        curl(&bad_url, Some(&viewer)),
        "400",
        "a filter libpcap rejects"
    );
    let refusal = std::fs::read_to_string(&body).unwrap();
    assert!(refusal.contains("syntax error"), "{refusal}");
    assert_eq!(curl(&url, Some(&viewer)), "200", "a viewer's token");
    let expected = tcpdump_mergecap(&all, filter, from_ns, to_ns, &tmp.join("."));
    assert_eq!(validate_capture(&body), expected.len() as u64);
    assert_same("GET /api/v1/packets", &expected, &packets(&body));

    // tapwire query through the API (from the sender's namespace, with the viewer's token).
    let w = lab.dir().join("cli-api.pcapng");
    lab.exec_ok(
        &snd,
        &[
            tapwire.to_str().unwrap(),
            "query",
            "--api",
            &format!("http://{COL_V4}:{LISTEN_PORT}"),
            "--token",
            &viewer,
            "--from",
            &from,
            "--to",
            &to,
            "-w",
            w.to_str().unwrap(),
            filter,
        ],
    );
    assert_same("tapwire query --api", &expected, &packets(&w));
}
