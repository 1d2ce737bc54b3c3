//! End-to-end: the collector's API under abuse. A real `tapwire collect --db` in namespace
//! `col` serves `--api` on its loopback (plain HTTP) and `--listen` on `col0` (TLS, a
//! certificate made by the test); clients flood, stall and half-open connections from inside
//! the lab (`tests/senders/hold_connections.py`), while curl asks `/api/v1/health` as a second
//! client and the scapy sender mirrors traffic into a capture that tshark reads back.
//!
//! ```text
//!  snd (10.77.0.1 flooder, .8 half-open TLS, .9 second client) ── col0 10.77.0.2:9760 (TLS)
//!  col: 127.0.0.2-.11 flooders, 127.0.0.1 second client ──────── lo 127.0.0.1:9750
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tapwire_tests::collector::{self, Collector};
use tapwire_tests::netns::{COL_V4, Lab, Proc, poll_until};
use tapwire_tests::oracle::{self, assert_same_frames};
use tapwire_tests::senders::{self, MirrorSend, Sent};
use tapwire_tests::{bin, require, workspace_root};

const LISTEN_PORT: u16 = 9760;
/// Every answer to `/api/v1/health` must come within this, also during a flood.
const HEALTH_WITHIN: Duration = Duration::from_secs(1);
const STOP_WITHIN: Duration = Duration::from_secs(10);
/// The collector's descriptor limit in the flood test: its API may hold a quarter (128), an
/// eighth of that (16) per client.
const NOFILE: u64 = 512;
const API_MAX: usize = 128;
const PER_CLIENT: usize = 16;
/// The server's timeouts (`collector/src/http/serve.rs`).
const HEADER_READ_S: f64 = 10.0;
const IDLE_S: f64 = 10.0;
const TLS_HANDSHAKE_S: f64 = 5.0;
/// How late a cut may come: the reaper runs every 250 ms, the holder polls every 100 ms, the
/// machine is shared.
const LATE_S: f64 = 2.5;

/// A lab with a certificate for `COL_V4` and more addresses on `snd0` for more clients.
struct Topo {
    lab: Lab,
    snd: String,
    col: String,
    cert: PathBuf,
    key: PathBuf,
}

impl Topo {
    fn new(tag: &str) -> Topo {
        require("curl");
        require("tshark");
        let lab = Lab::new(tag);
        let snd = lab.ns("snd").to_string();
        let col = lab.ns("col").to_string();
        for a in ["10.77.0.8/24", "10.77.0.9/24"] {
            lab.addr(&snd, "snd0", a);
        }
        let (cert, key) = (lab.dir().join("cert.pem"), lab.dir().join("key.pem"));
        let c = rcgen::generate_simple_self_signed(vec![COL_V4.to_string()]).unwrap();
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        Topo {
            lab,
            snd,
            col,
            cert,
            key,
        }
    }

    /// `tapwire collect --db` with `--listen` TLS on `col0`, under `wrapper`, logging to
    /// `log` with the filter compiler's debug lines.
    fn collector(&self, out: &Path, wrapper: &[&str]) -> (Collector<'_>, PathBuf) {
        let db = self.lab.dir().join("control.db");
        let log = self.lab.dir().join("collector.log");
        let listen = format!("{COL_V4}:{LISTEN_PORT}");
        let mut w = vec!["env", "RUST_LOG=info,tapwire_collector::filter=debug"];
        w.extend_from_slice(wrapper);
        let c = Collector::start_wrapped(
            &self.lab,
            &self.col,
            out,
            &[
                "--db",
                db.to_str().unwrap(),
                "--listen",
                &listen,
                "--tls-cert",
                self.cert.to_str().unwrap(),
                "--tls-key",
                self.key.to_str().unwrap(),
                "--log-file",
                log.to_str().unwrap(),
            ],
            &w,
        );
        (c, log)
    }

    /// `GET /api/v1/health` on the plain `--api` (from `col`'s 127.0.0.1) or the TLS
    /// `--listen` (from `snd`'s 10.77.0.9): its status and how long it took.
    fn health(&self, tls: bool) -> (String, Duration) {
        let t0 = Instant::now();
        let url_tls = format!("https://{COL_V4}:{LISTEN_PORT}/api/v1/health");
        let cert = self.cert.to_str().unwrap();
        let mut args = vec!["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"];
        args.extend(["--max-time", "3"]);
        let ns = if tls {
            args.extend(["--interface", "10.77.0.9", "--cacert", cert, &url_tls]);
            &self.snd
        } else {
            args.push("http://127.0.0.1:9750/api/v1/health");
            &self.col
        };
        let out = self.lab.exec(ns, &args);
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            t0.elapsed(),
        )
    }
}

/// `hold_connections.py` in `ns` (see its docstring).
#[allow(clippy::too_many_arguments)]
fn hold(
    lab: &Lab,
    ns: &str,
    to: (&str, u16),
    count: usize,
    seconds: f64,
    src: &str,
    send: &[u8],
    trickle: bool,
) -> Proc {
    let script = workspace_root().join("tests/senders/hold_connections.py");
    let (port, count, seconds) = (to.1.to_string(), count.to_string(), seconds.to_string());
    let send = hex::encode(send);
    let mut cmd = vec![
        "/usr/bin/python3",
        script.to_str().unwrap(),
        to.0,
        &port,
        &count,
        &seconds,
        "--src",
        src,
        "--send",
        &send,
    ];
    if trickle {
        cmd.push("--trickle");
    }
    lab.spawn(ns, &cmd)
}

/// What a holder saw: per connection, when it connected (from the holder's start) and how
/// long until the server closed it (`None`: still open at the end).
struct Held {
    opened: Vec<f64>,
    closed_after: Vec<Option<f64>>,
    connect_failed: u64,
}

impl Held {
    fn of(mut p: Proc, within: Duration) -> Held {
        let out = p.wait_ok(within);
        let v: Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("hold_connections.py ({e}): {out}"));
        Held {
            opened: v["opened"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect(),
            closed_after: v["closed_after"]
                .as_array()
                .unwrap()
                .iter()
                .map(Value::as_f64)
                .collect(),
            connect_failed: v["connect_failed"].as_u64().unwrap(),
        }
    }

    /// The most connections open at once, as the client saw them.
    fn max_open(&self) -> usize {
        let mut edges: Vec<(f64, i32)> = Vec::new();
        for (o, c) in self.opened.iter().zip(&self.closed_after) {
            edges.push((*o, 1));
            edges.push((o + c.unwrap_or(f64::INFINITY), -1));
        }
        // A close at the same instant as an open counts first.
        edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let (mut open, mut max) = (0i32, 0i32);
        for (_, d) in edges {
            open += d;
            max = max.max(open);
        }
        max as usize
    }

    /// Connections the server closed at least `from` seconds after their connect.
    fn closed_late(&self, from: f64) -> Vec<f64> {
        self.closed_after
            .iter()
            .flatten()
            .copied()
            .filter(|c| *c >= from)
            .collect()
    }
}

/// The peers of the API connections the process `pid` holds now, as the server's sockets
/// show them (`ss` in `ns`): established, on `--api` or `--listen`, with a descriptor of
/// `pid` (connections in the accept queue or closed by the server are not its).
fn server_peers(lab: &Lab, ns: &str, pid: u32) -> Vec<String> {
    let filter = format!("( sport = :9750 or sport = :{LISTEN_PORT} )");
    let out = lab.exec_ok(ns, &["ss", "-Htnp", "state", "established", &filter]);
    let owner = format!("pid={pid},");
    out.lines()
        .filter(|l| l.contains(&owner))
        .filter_map(|l| {
            // Recv-Q Send-Q Local:Port Peer:Port Process
            let peer = l.split_whitespace().nth(3)?;
            Some(peer.rsplit_once(':')?.0.to_string())
        })
        .collect()
}

/// Descriptors the process `pid` holds.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The value of an unlabelled sample in Prometheus text.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// The sender's count per source must be what tshark decodes from its pcap.
fn oracle_of(sent: &Sent) -> oracle::Frames {
    let expected = oracle::mirrored_frames(&sent.pcap);
    let counts: std::collections::BTreeMap<_, _> = expected
        .iter()
        .map(|(k, v)| (k.clone(), v.len() as u64))
        .collect();
    assert_eq!(counts, sent.sources, "send_mirror.py's summary vs tshark");
    expected
}

/// The auto-discovered sessions of an answer (API sessions have no source of their own).
fn auto_sessions(api: &Value) -> Value {
    let mut v = api.clone();
    let auto: Vec<Value> = api["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["auto"] == true)
        .cloned()
        .collect();
    v["sessions"] = Value::Array(auto);
    v
}

/// One client holding far more idle connections than its share, nine more beside it past the
/// total cap, and a TLS client doing the same on `--listen`, against a collector whose
/// descriptor limit is 512: `/api/v1/health` answers within 1 s throughout on both listeners
/// to a second client, the API holds at most its share of descriptors, idle connections are
/// closed at the idle timeout and silent TLS ones at the handshake timeout, and a capture
/// started during the flood holds every packet sent.
#[test]
fn a_flood_of_idle_connections_leaves_the_api_answering_and_the_capture_whole() {
    require("prlimit");
    let t = Topo::new("http-flood");
    let out = t.lab.dir().join("out");
    let nofile = format!("--nofile={NOFILE}:{NOFILE}");
    let (mut c, _log) = t.collector(&out, &["prlimit", &nofile, "--"]);
    let pid = c.proc.pid();
    let baseline = fds(pid);
    let metrics = c.metrics();
    assert_eq!(
        sample(&metrics, "tapwire_api_connections_max"),
        Some(API_MAX as f64),
        "{metrics}"
    );

    let flooders: Vec<String> = (2..=11).map(|i| format!("127.0.0.{i}")).collect();
    let hold_s = 16.0;
    let plain = hold(
        &t.lab,
        &t.col,
        ("127.0.0.1", 9750),
        300,
        hold_s,
        &flooders.join(","),
        b"",
        false,
    );
    let tls = hold(
        &t.lab,
        &t.snd,
        (COL_V4, LISTEN_PORT),
        300,
        hold_s,
        "10.77.0.1",
        b"",
        false,
    );
    let t0 = Instant::now();
    let mut slowest = Duration::ZERO;
    let (mut asked, mut most_fds, mut most_held, mut most_per_client) = (0, 0, 0, 0);
    let mut sent = None;
    while t0.elapsed() < Duration::from_secs_f64(hold_s - 1.0) {
        let peers = server_peers(&t.lab, &t.col, pid);
        most_held = most_held.max(peers.len());
        let mut per_client = std::collections::HashMap::new();
        for p in &peers {
            *per_client.entry(p.as_str()).or_insert(0usize) += 1;
        }
        most_per_client = most_per_client.max(per_client.values().copied().max().unwrap_or(0));
        for over_tls in [false, true] {
            let (code, took) = t.health(over_tls);
            assert_eq!(
                code,
                "200",
                "health over {} at {:?} of the flood: {took:?}\n{}",
                if over_tls { "TLS --listen" } else { "--api" },
                t0.elapsed(),
                c.proc.stderr()
            );
            assert!(took < HEALTH_WITHIN, "health took {took:?}");
            slowest = slowest.max(took);
            asked += 1;
        }
        most_fds = most_fds.max(fds(pid));
        if sent.is_none() && t0.elapsed() > Duration::from_secs(2) {
            // A capture started in the middle of the flood: new sources, new files.
            let opts = MirrorSend {
                families: "4".into(),
                kinds: "erspan-ii,gre".into(),
                sources: 3,
                count: 50,
                ..MirrorSend::default()
            };
            sent = Some(senders::send_mirror(
                &t.lab,
                &t.snd,
                &opts,
                &t.lab.dir().join("sent.pcap"),
                false,
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "health: {asked} answers during the flood, slowest {slowest:?}; descriptors {baseline} at rest, {most_fds} at most; API connections held at most {most_held}, {most_per_client} of one client"
    );
    // An evicted connection's socket is closed by its own task a moment after the new one is
    // admitted: a few over the cap for that moment.
    const EVICTING: usize = 8;
    assert!(
        most_fds <= baseline + API_MAX + EVICTING,
        "the collector held {most_fds} descriptors ({baseline} before the flood)"
    );
    assert!(
        most_held <= API_MAX + EVICTING,
        "{most_held} connections held"
    );
    assert!(
        most_per_client <= PER_CLIENT + EVICTING,
        "{most_per_client} connections of one client held"
    );
    let plain = Held::of(plain, Duration::from_secs(30));
    let tls = Held::of(tls, Duration::from_secs(30));
    let metrics = c.metrics();
    eprintln!(
        "plain: {} connected, at most {} open at once; TLS: {} connected, at most {} open\n{}",
        plain.opened.len(),
        plain.max_open(),
        tls.opened.len(),
        tls.max_open(),
        metrics
            .lines()
            .filter(|l| l.starts_with("tapwire_api"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(plain.connect_failed + tls.connect_failed, 0);
    // Every connection was closed: to make room, or at its timeout, never later. (TLS ones
    // may all have made room for later plain ones; the slowloris test times their handshake.)
    for (what, held, limit) in [("plain", &plain, IDLE_S), ("TLS", &tls, TLS_HANDSHAKE_S)] {
        let open = held.closed_after.iter().filter(|c| c.is_none()).count();
        assert_eq!(open, 0, "{what}: {open} connections never closed");
        let late = held.closed_late(limit - 1.0);
        assert!(
            late.iter().all(|s| *s <= limit + LATE_S),
            "{what}: closed after {late:?} s, the timeout is {limit} s"
        );
    }
    assert!(
        !plain.closed_late(IDLE_S - 1.0).is_empty(),
        "plain: none lasted to its timeout"
    );
    let evicted = metrics
        .lines()
        .find(|l| l.starts_with("tapwire_api_connections_closed_total{reason=\"evicted\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(evicted >= 300, "evicted {evicted}");

    let sent = sent.expect("the capture was sent during the flood");
    let expected = oracle_of(&sent);
    c.wait_for_packets(&sent.sources, Duration::from_secs(10));
    let api = c.wait_written(Duration::from_secs(10));
    let stderr = c.proc.stderr();
    c.stop("TERM", STOP_WITHIN);
    assert!(
        !stderr.contains("Too many open files"),
        "the collector ran out of descriptors:\n{stderr}"
    );
    assert_eq!(
        collector::source_packets(&auto_sessions(&api)),
        sent.sources,
        "packets per source"
    );
    assert_same_frames(
        "capture during the flood",
        &expected,
        &c.session_frames(&auto_sessions(&api)),
    );
}

/// A slowloris (a request head that never ends, one header line a second), a silent connection
/// and TLS handshakes that never finish are each cut at their timeout.
#[test]
fn slowloris_silent_and_unfinished_tls_connections_are_cut_at_their_timeouts() {
    let t = Topo::new("http-slow");
    let out = t.lab.dir().join("out");
    let (mut c, _log) = t.collector(&out, &[]);
    let hold_s = 16.0;
    let loris = hold(
        &t.lab,
        &t.col,
        ("127.0.0.1", 9750),
        4,
        hold_s,
        "127.0.0.2",
        b"GET /api/v1/health HTTP/1.1\r\nhost: t\r\n",
        true,
    );
    let silent = hold(
        &t.lab,
        &t.col,
        ("127.0.0.1", 9750),
        4,
        hold_s,
        "127.0.0.3",
        b"",
        false,
    );
    // The first bytes of a TLS record carrying a ClientHello, then nothing.
    let half_tls = hold(
        &t.lab,
        &t.snd,
        (COL_V4, LISTEN_PORT),
        4,
        hold_s,
        "10.77.0.8",
        &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01],
        false,
    );
    // Meanwhile both listeners answer.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(12) {
        for over_tls in [false, true] {
            let (code, took) = t.health(over_tls);
            assert_eq!(code, "200", "{:?}", t0.elapsed());
            assert!(took < HEALTH_WITHIN, "{took:?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let loris = Held::of(loris, Duration::from_secs(30));
    let silent = Held::of(silent, Duration::from_secs(30));
    let half_tls = Held::of(half_tls, Duration::from_secs(30));
    eprintln!(
        "closed after: slowloris {:?}, silent {:?}, TLS {:?}",
        loris.closed_after, silent.closed_after, half_tls.closed_after
    );
    for (what, held, limit) in [
        ("slowloris", &loris, HEADER_READ_S),
        ("silent", &silent, IDLE_S.min(HEADER_READ_S)),
        ("unfinished TLS handshake", &half_tls, TLS_HANDSHAKE_S),
    ] {
        assert_eq!(held.closed_after.len(), 4, "{what}");
        for c in &held.closed_after {
            let c = c.unwrap_or_else(|| panic!("{what}: never closed"));
            assert!(
                c >= limit - 0.5 && c <= limit + LATE_S,
                "{what}: closed after {c} s, the timeout is {limit} s"
            );
        }
    }
    let metrics = c.metrics();
    let closed = |reason: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "tapwire_api_connections_closed_total{{reason=\"{reason}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(closed("header_timeout") >= 4, "{metrics}");
    assert_eq!(closed("tls_handshake"), 4, "{metrics}");
    c.stop("TERM", STOP_WITHIN);
}

/// A 300-term filter is refused with 400 at once, naming the limit, while the engine keeps
/// writing what arrives; a filter compiled for one session is not compiled again when others
/// change.
#[test]
fn a_300_term_filter_is_refused_at_once_and_unchanged_filters_are_compiled_once() {
    let t = Topo::new("http-filter");
    let out = t.lab.dir().join("out");
    let (mut c, log) = t.collector(&out, &[]);
    let admin = std::fs::read_to_string(t.lab.dir().join("control.db.admin-token"))
        .unwrap()
        .trim()
        .to_string();
    let call = |method: &str, path: &str, body: &str| -> (u16, Value, Duration) {
        let auth = format!("Authorization: Bearer {admin}");
        let url = format!("http://127.0.0.1:9750{path}");
        let mut args = vec!["curl", "-s", "-w", "\n%{http_code}", "--max-time", "60"];
        args.extend([
            "-X",
            method,
            "-H",
            &auth,
            "-H",
            "content-type: application/json",
        ]);
        if !body.is_empty() {
            args.extend(["--data-binary", body]);
        }
        args.push(&url);
        let t0 = Instant::now();
        let o = t.lab.exec(&t.col, &args);
        let took = t0.elapsed();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let v = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
        (code.trim().parse().unwrap_or(0), v, took)
    };
    let kept = "udp port 5555";
    let (s, v, _) = call(
        "POST",
        "/api/v1/sessions",
        &serde_json::json!({"name": "kept", "filter": kept}).to_string(),
    );
    assert_eq!(s, 201, "{v}");

    // Traffic arrives while the filters are refused and other sessions change.
    let opts = MirrorSend {
        families: "4".into(),
        kinds: "erspan-ii,gre".into(),
        sources: 3,
        count: 100,
        ..MirrorSend::default()
    };
    let (sent, refused) = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            senders::send_mirror(&t.lab, &t.snd, &opts, &t.lab.dir().join("sent.pcap"), false)
        });
        let many = (1..=300)
            .map(|p| format!("port {p}"))
            .collect::<Vec<_>>()
            .join(" or ");
        let mut refused = Vec::new();
        for (name, f) in [
            ("many", many),
            ("long", format!("len > {}", "1".repeat(5000))),
        ] {
            let body = serde_json::json!({"name": name, "filter": f}).to_string();
            refused.push(call("POST", "/api/v1/sessions", &body));
        }
        for (method, path, body) in [
            (
                "POST",
                "/api/v1/sessions",
                r#"{"name":"other","filter":"tcp port 80"}"#,
            ),
            ("PATCH", "/api/v1/sessions/other", r#"{"enabled":false}"#),
            (
                "PATCH",
                "/api/v1/sessions/other",
                r#"{"filter":"tcp port 81"}"#,
            ),
            ("DELETE", "/api/v1/sessions/other", ""),
        ] {
            let (s, v, _) = call(method, path, body);
            assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
        }
        (sender.join().unwrap(), refused)
    });
    for ((s, v, took), needle) in refused.iter().zip([
        "300 terms: filters are limited to 64 terms",
        "filters are limited to 4096 bytes",
    ]) {
        eprintln!("refused in {took:?}: {v}");
        assert_eq!(*s, 400, "{v}");
        assert!(v["message"].as_str().unwrap().contains(needle), "{v}");
        assert!(*took < Duration::from_secs(1), "refused after {took:?}");
    }
    let expected = oracle_of(&sent);
    c.wait_for_packets(&sent.sources, Duration::from_secs(10));
    let api = c.wait_written(Duration::from_secs(10));
    c.stop("TERM", STOP_WITHIN);
    assert_same_frames(
        "capture while filters were refused",
        &expected,
        &c.session_frames(&auto_sessions(&api)),
    );
    // The kept session's filter was compiled once, when it was created; "other"'s twice
    // (two texts).
    let log = std::fs::read_to_string(&log).unwrap();
    let compiled = |f: &str| {
        log.lines()
            .filter(|l| l.contains("filter compiled") && l.contains(&format!("{f:?}")))
            .count()
    };
    assert_eq!(compiled(kept), 1, "compilations of {kept:?}:\n{log}");
    assert_eq!(compiled("tcp port 80"), 1);
    assert_eq!(compiled("tcp port 81"), 1);
}

/// A non-loopback `--api` with neither `--db` nor `--api-token` is a usage error naming the
/// flag; with `--allow-unauthenticated-api` it is served to other hosts, with a warning.
#[test]
fn an_unauthenticated_api_for_other_hosts_needs_its_flag_and_is_logged() {
    let lab = Lab::new("http-open");
    let (snd, col) = (lab.ns("snd").to_string(), lab.ns("col").to_string());
    let tapwire = bin("tapwire");
    let out = lab.dir().join("out");
    let mut args: Vec<&str> = vec![
        "timeout",
        "10",
        tapwire.to_str().unwrap(),
        "collect",
        "--out",
        out.to_str().unwrap(),
        "--no-tui",
        "--api",
        "0.0.0.0:9750",
    ];
    let o = lab.exec(&col, &args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--allow-unauthenticated-api"), "{err}");
    assert!(err.contains("--api-token"), "{err}");

    let log = lab.dir().join("open.log");
    args.drain(..2);
    args.extend([
        "--allow-unauthenticated-api",
        "--log-file",
        log.to_str().unwrap(),
    ]);
    let mut p = lab.spawn(&col, &args);
    let url = format!("http://{COL_V4}:9750/api/v1/health");
    let answered = poll_until(Duration::from_secs(15), || {
        let o = lab.exec(&snd, &["curl", "-sf", "--max-time", "1", &url]);
        o.status.success().then_some(())
    });
    assert!(
        answered.is_some(),
        "not served to other hosts:\n{}",
        p.stderr()
    );
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged.contains("without authentication") && logged.contains("WARN"),
        "{logged}"
    );
    p.signal("TERM");
    assert!(p.wait_timeout(STOP_WITHIN).is_some_and(|s| s.success()));
}
