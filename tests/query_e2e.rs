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
use tapwire_tests::query::{Packet, assert_same, packets, tcpdump_mergecap};
use tapwire_tests::senders::{self, MirrorSend};
use tapwire_tests::{
    TempDir, bin, capture_files as public_files, captures_dir, require, run, run_ok,
    validate_capture,
};

/// Packets per file: 60 per session leave 4 in the file still being written.
const ROTATE: usize = 7;
const PER_SESSION: u32 = 60;
/// The second API listener, reached from the sender's namespace (not the loopback, so a
/// request without a token is refused).
const LISTEN_PORT: u16 = 9760;

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
        // tcpdump's meaning: `host X` does not look inside an 802.1Q tag, `vlan and host X`
        // looks only inside one (the sender tags the frames of one direction).
        let tagged = |p: &Packet| p.1.get(12..14) == Some(&[0x81, 0x00][..]);
        match filter {
            "host 192.0.2.1" => assert!(!got.iter().any(tagged), "host X matched a tagged frame"),
            "vlan and host 192.0.2.1" => assert!(got.iter().all(tagged), "an untagged frame"),
            _ => {}
        }
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

    // With no --api: the local collector's API (on the collector's host, no token needed).
    let w = lab.dir().join("cli-local.pcapng");
    lab.exec_ok(
        &col,
        &[
            tapwire.to_str().unwrap(),
            "query",
            "--from",
            &from,
            "--to",
            &to,
            "-w",
            w.to_str().unwrap(),
            filter,
        ],
    );
    assert_same("tapwire query (local API)", &expected, &packets(&w));
}

/// The public captures (`../shared/captures`: pcap and pcapng, Ethernet and raw IP, from
/// tcpdump, Zeek, Suricata, Arkime and a Cisco lab), put in one folder as an analyst would and
/// read with `tapwire query --dir`: each filter's answer is, frame for frame and in the same
/// order, `tcpdump -r` over every file and then `mergecap` of the parts. A file whose link
/// type cannot take the filter (tcpdump refuses it: `vlan` on raw IP) gives nothing.
#[test]
fn query_over_the_public_captures_equals_tcpdump_and_mergecap() {
    let Some(src) = captures_dir() else { return };
    for tool in ["tcpdump", "tshark", "mergecap", "capinfos", "captype"] {
        require(tool);
    }
    let tmp = TempDir::new("query-public");
    let dir = tmp.join("captures");
    std::fs::create_dir_all(&dir).unwrap();
    // Copies in a temporary folder (the query writes indexes beside them), named by origin:
    // two origins have a vxlan.pcap.
    let mut files = Vec::new();
    for f in public_files(&src) {
        let rel = f
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('/', "-");
        let to = dir.join(rel);
        std::fs::copy(&f, &to).unwrap();
        files.push(to);
    }
    files.sort();
    assert!(files.len() >= 30, "{} public captures", files.len());
    let links: std::collections::BTreeSet<String> = run_ok(
        Command::new("capinfos")
            .args(["-T", "-E", "-r"])
            .args(&files),
    )
    .lines()
    .filter_map(|l| l.rsplit('\t').next().map(str::to_string))
    .collect();
    assert!(
        links.contains("ether") && links.contains("rawip"),
        "link types: {links:?}"
    );
    let (from, to) = ("0", "4102444800");
    for (i, filter) in [
        "",
        "udp",
        "vlan",
        "ip6 or icmp",
        "ip proto 47 and len > 200",
    ]
    .into_iter()
    .enumerate()
    {
        let parts_dir = tmp.join(format!("parts{i}"));
        std::fs::create_dir_all(&parts_dir).unwrap();
        let mut parts = Vec::new();
        for (k, f) in files.iter().enumerate() {
            let part = parts_dir.join(format!("{k:02}.pcap"));
            let mut cmd = Command::new("tcpdump");
            cmd.args(["-Z", "root", "--time-stamp-precision=nano", "-r"])
                .arg(f)
                .arg("-w")
                .arg(&part);
            if !filter.is_empty() {
                cmd.arg(filter);
            }
            let o = run(&mut cmd);
            if o.status.success() {
                parts.push(part);
            } else {
                let err = String::from_utf8_lossy(&o.stderr);
                assert!(
                    err.contains("no VLAN support"),
                    "tcpdump -r {} {filter:?}: {err}",
                    f.display()
                );
            }
        }
        let merged = parts_dir.join("merged.pcapng");
        run_ok(
            Command::new("mergecap")
                .args(["-F", "pcapng", "-w"])
                .arg(&merged)
                .args(&parts),
        );
        let expected = packets(&merged);
        assert!(!expected.is_empty(), "{filter:?}: tcpdump found nothing");
        let w = tmp.join(format!("q{i}.pcapng"));
        query_dir(&dir, &["--from", from, "--to", to], filter, &w);
        // Some files are not in time order themselves: mergecap keeps each file's order, and so
        // must the query.
        let got = packets(&w);
        if got != expected {
            let at = got
                .iter()
                .zip(&expected)
                .take_while(|(g, e)| g == e)
                .count();
            panic!(
                "public captures {filter:?}: {} packets expected (tcpdump -r + mergecap), {} returned; the first difference at packet {at}: expected {:?}, got {:?}",
                expected.len(),
                got.len(),
                expected.get(at).map(|p| p.0),
                got.get(at).map(|p| p.0)
            );
        }
    }
    // Every file was indexed after the fact (none is a session's file still being written),
    // and the second pass, from the indexes, gives the same.
    for f in &files {
        assert!(
            Path::new(&format!("{}.twidx", f.display())).exists(),
            "no index written for {}",
            f.display()
        );
    }
    let w = tmp.join("again.pcapng");
    query_dir(&dir, &["--from", from, "--to", to], "udp", &w);
    assert_eq!(packets(&w), packets(&tmp.join("q1.pcapng")));
    // Over the limit: refused before anything is written, with the index's estimate.
    let o = run(Command::new(bin("tapwire"))
        .arg("query")
        .arg("--dir")
        .arg(&dir)
        .args(["--from", from, "--to", to, "--max-bytes", "1000"])
        .arg("-w")
        .arg(tmp.join("refused.pcapng")));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("would read up to") && err.contains("more than the limit of 1000 bytes"),
        "{err}"
    );
    assert!(!tmp.join("refused.pcapng").exists(), "nothing written");
}

/// After `kill -9`, with an on-finish command that compresses each finished file: the
/// compressed files (read by a full scan of their decompressed stream) and the file the kill
/// cut are answered as `tcpdump -r` + `mergecap` answers them (the compressed ones
/// decompressed first with `gzip -dc`); once the restarted collector has written newer files,
/// the cut file is no session's newest any more and gets a whole index after the fact.
#[test]
fn after_kill_9_compressed_and_cut_files_are_answered_and_indexed() {
    for tool in [
        "tcpdump", "tshark", "mergecap", "capinfos", "captype", "gzip",
    ] {
        require(tool);
    }
    let lab = Lab::new("query-kill9");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.dir().join("out");
    let gzip = r#"gzip "$1""#;
    let args = ["--rotate-packets", &ROTATE.to_string(), "--on-finish", gzip];
    let mut c = Collector::start(&lab, &col, &out, &args);
    let opts = MirrorSend {
        families: "4".into(),
        kinds: "erspan-ii".into(),
        sources: 2,
        count: PER_SESSION,
        ..MirrorSend::default()
    };
    let sent = senders::send_mirror(&lab, &snd, &opts, &lab.dir().join("sent.pcap"), false);
    c.wait_for_packets(&sent.sources, Duration::from_secs(15));
    c.wait_written(Duration::from_secs(10));
    // Every finished file compressed (the hook ran), the newest of each session still open.
    let finished = 2 * (PER_SESSION as usize / ROTATE);
    let names = |dir: &Path| -> Vec<PathBuf> { tapwire_tests::collector::files_in(dir) };
    let mut waited = 0;
    while names(&out)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "gz"))
        .count()
        < finished
        || names(&out).len() != finished + 2
    {
        assert!(
            waited < 100,
            "the on-finish gzip did not run: {:?}",
            names(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    c.proc.signal("KILL");
    c.proc.wait_timeout(Duration::from_secs(5)).expect("killed");
    let files = names(&out);
    let cut: Vec<PathBuf> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pcapng"))
        .cloned()
        .collect();
    assert_eq!(cut.len(), 2, "{files:?}");
    // The kill may come between a buffer of the capture and its index records: the first
    // file's index is cut here to half (the second keeps what the kill left).
    let ix0 = PathBuf::from(format!("{}.twidx", cut[0].display()));
    let b = std::fs::read(&ix0).unwrap();
    std::fs::write(&ix0, &b[..b.len() / 2]).unwrap();

    let tmp = TempDir::new("query-kill9");
    // The oracle reads plain captures: the compressed ones decompressed by gzip.
    let plain: Vec<PathBuf> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if f.extension().is_some_and(|e| e == "gz") {
                let to = tmp.join(format!("{i:02}.pcapng"));
                let o = run(Command::new("gzip").arg("-dc").arg(f));
                assert!(o.status.success(), "gzip -dc {}", f.display());
                std::fs::write(&to, o.stdout).unwrap();
                to
            } else {
                f.clone()
            }
        })
        .collect();
    let (from_ns, to_ns) = (0, u64::MAX / 2);
    let range = ["--from", "0", "--to", "4102444800"];
    for (i, filter) in ["", "host 192.0.2.1", "vlan and host 192.0.2.1"]
        .into_iter()
        .enumerate()
    {
        let oracle = tmp.join(format!("oracle{i}"));
        std::fs::create_dir_all(&oracle).unwrap();
        let expected = tcpdump_mergecap(&plain, filter, from_ns, to_ns, &oracle);
        if filter.is_empty() {
            assert_eq!(expected.len(), 2 * PER_SESSION as usize);
        }
        let w = tmp.join(format!("q{i}.pcapng"));
        query_dir(&out, &range, filter, &w);
        assert_same(
            &format!("after kill -9 {filter:?}"),
            &expected,
            &packets(&w),
        );
    }
    // The compressed files' indexes were written whole by the collector before the hook ran:
    // the query rewrote none of them.
    for f in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "gz"))
    {
        let name = f.file_name().unwrap().to_string_lossy();
        let ix = out.join(format!("{}.twidx", name.strip_suffix(".gz").unwrap()));
        let parsed = tapwire_formats::index::parse(&std::fs::read(&ix).unwrap());
        assert!(
            parsed.stop.is_none()
                && matches!(
                    parsed.records.last(),
                    Some(tapwire_formats::index::Record::End { .. })
                ),
            "{}: not a whole index",
            ix.display()
        );
    }

    // Restarted, with newer files: the cut files are finished now and get whole indexes.
    let c2 = Collector::start(&lab, &col, &out, &args);
    let again = MirrorSend {
        start: PER_SESSION,
        count: 3,
        ..opts
    };
    let sent = senders::send_mirror(&lab, &snd, &again, &lab.dir().join("again.pcap"), false);
    c2.wait_for_packets(&sent.sources, Duration::from_secs(15));
    c2.wait_written(Duration::from_secs(10));
    let w = tmp.join("after-restart.pcapng");
    let summary = query_dir(&out, &range, "", &w);
    assert_eq!(
        packets(&w).len(),
        2 * (PER_SESSION + 3) as usize,
        "{summary}"
    );
    for f in &cut {
        let ix = tapwire_formats::index::parse(
            &std::fs::read(format!("{}.twidx", f.display())).unwrap(),
        );
        let len = std::fs::metadata(f).unwrap().len();
        assert!(
            matches!(
                ix.records.last(),
                Some(tapwire_formats::index::Record::End { capture_len }) if *capture_len == len
            ),
            "{}: no whole index after the fact ({} records, stop {:?})",
            f.display(),
            ix.records.len(),
            ix.stop
        );
    }
}
