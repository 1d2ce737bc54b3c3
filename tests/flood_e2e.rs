//! End-to-end: what hostile or careless traffic can make the collector hold, and one copy of
//! each packet whatever the inputs.
//!
//! - 100,000 spoofed outer sources: sessions and sources stay within their caps, the rest is
//!   counted by reason per input, RSS stays under 256 MiB, `/api/v1/health` answers within
//!   1 s throughout, a configured session's files hold every packet sent meanwhile, the list
//!   endpoints are paged, and idle auto-discovered sessions expire with their counters kept;
//! - 10,000 random VXLAN VNIs from one sender: auto sessions capped and the rest counted on
//!   the UDP input, the configured VNI's every packet written, idle ones expire;
//! - a full source table: new sources are refused (`source_table_full`), known ones go on,
//!   idle ones expire and make room again;
//! - `--interface` on the link that holds the collector's address, beside the socket inputs:
//!   each packet written once;
//! - the allow-list on an AF_PACKET ring: refused sources never enter the table, so a flood
//!   of them never locks the allowed sender out.
//!
//! The packets are built byte by byte (`support/spoof.rs`) and replayed with tcpreplay; files
//! are read back with captype, capinfos and tshark. Run as root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tapwire_tests::collector::{
    AF_PACKET_ONLY, Collector, files_in, pcapng_packets, read_captures,
};
use tapwire_tests::netns::{COL_MAC, COL_V4, Lab, SND_MAC, SND_V4, poll_until};
use tapwire_tests::require;
use tapwire_tests::senders::{tcpreplay, tcpreplay_loop};
use tapwire_tests::spoof::{Link, inner_frame, mac, spoofed, write_pcap};

const STOP_WITHIN: Duration = Duration::from_millis(2500);

fn link() -> Link {
    Link {
        src_mac: mac(SND_MAC),
        dst_mac: mac(COL_MAC),
        dst: COL_V4.parse().unwrap(),
    }
}

fn real_sender() -> Ipv4Addr {
    SND_V4.parse().unwrap()
}

/// `n` ERSPAN II packets of session `session` from `src`, sequence and inner frame `from..`.
fn erspan_run(src: Ipv4Addr, session: u16, from: u32, n: u32) -> Vec<Vec<u8>> {
    (from..from + n)
        .map(|i| link().erspan_ii(src, session, i, &inner_frame(i)))
        .collect()
}

/// One ERSPAN II packet (session `session`) from each of `n` spoofed sources, from the
/// `first`th on.
fn spoofed_run(first: u32, n: u32, session: u16) -> impl Iterator<Item = Vec<u8>> {
    (first..first + n).map(move |i| link().erspan_ii(spoofed(i), session, 0, &inner_frame(i)))
}

fn pcap(lab: &Lab, name: &str, frames: impl IntoIterator<Item = Vec<u8>>) -> PathBuf {
    let path = lab.dir().join(name);
    write_pcap(&path, frames);
    path
}

fn config(lab: &Lab, text: &str) -> PathBuf {
    let path = lab.dir().join("collector.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// The named input's JSON.
fn input<'a>(api: &'a Value, prefix: &str) -> &'a Value {
    api["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"].as_str().unwrap().starts_with(prefix))
        .unwrap_or_else(|| panic!("no input {prefix}: {}", api["inputs"]))
}

fn session<'a>(api: &'a Value, name: &str) -> &'a Value {
    api["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no session {name}"))
}

/// Sets its flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Asks `/api/v1/health` every 100 ms until `stop`; returns the slowest answer and the
/// failures (no answer within 1 s).
fn watch_health(lab: &Lab, ns: &str, stop: &AtomicBool) -> (Duration, Vec<String>) {
    let (mut slowest, mut failures) = (Duration::ZERO, Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        let out = lab.exec(
            ns,
            &[
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{time_total}",
                "--max-time",
                "1",
                "http://127.0.0.1:9750/api/v1/health",
            ],
        );
        let took = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<f64>()
            .map_or(t0.elapsed(), Duration::from_secs_f64);
        if !out.status.success() {
            failures.push(format!(
                "after {:?}: {}",
                t0.elapsed(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        slowest = slowest.max(took);
        std::thread::sleep(Duration::from_millis(100));
    }
    (slowest, failures)
}

/// 100,000 spoofed outer sources (one ERSPAN II packet each) while a configured session
/// receives 3,000 packets from the real sender, with the default caps.
#[test]
fn a_flood_of_spoofed_sources_is_bounded_and_the_real_session_keeps_every_packet() {
    const FLOOD: u32 = 100_000;
    const REAL: u32 = 3_000;
    const AUTO_CAP: u64 = 256;
    let lab = Lab::new("flood");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.dir().join("out");
    let cfg = config(
        &lab,
        &format!(
            "[[session]]\nname = \"real\"\nsources = [{{ src = \"{SND_V4}\", kind = \"erspan-ii\", id = 5 }}]\n"
        ),
    );
    let flood = pcap(&lab, "flood.pcap", spoofed_run(0, FLOOD, 7));
    let real = pcap(&lab, "real.pcap", erspan_run(real_sender(), 5, 0, REAL));
    let mut c = Collector::start(
        &lab,
        &col,
        &out,
        &["--config", cfg.to_str().unwrap(), "--idle-timeout", "8s"],
    );
    let pid = c.proc.pid();
    let rss_idle = vm_kib(pid, "VmRSS:");

    let stop = AtomicBool::new(false);
    let ((slowest, failures), rss_max, settled) = std::thread::scope(|s| {
        // The watchers stop however this ends, a panic included, or the scope would wait.
        let _stop = SetOnDrop(&stop);
        let health = s.spawn(|| watch_health(&lab, &col, &stop));
        let rss = s.spawn(|| {
            let mut max = 0;
            while !stop.load(Ordering::Relaxed) {
                max = max.max(vm_kib(pid, "VmRSS:"));
                std::thread::sleep(Duration::from_millis(50));
            }
            max
        });
        // The real sender at 1000 pps for 3 s; the flood starts after it, at 25,000 pps.
        let mut sender = tcpreplay_loop(&lab, &snd, "snd0", &real, 1000, 1);
        std::thread::sleep(Duration::from_millis(300));
        tcpreplay(&lab, &snd, "snd0", &flood, 25_000);
        sender.wait_ok(Duration::from_secs(15));
        // Everything accounted for: the real session's packets on disk, the flood's counted.
        let settled = poll_until(Duration::from_secs(15), || {
            let api = c.sessions_page(None);
            let refused = api["totals"]["refusals"]["auto_session_cap"].as_u64();
            let real = api["sessions"]
                .as_array()?
                .iter()
                .find(|s| s["name"] == "real")?
                .clone();
            (real["written"].as_u64() == Some(u64::from(REAL))
                && refused == Some(u64::from(FLOOD) - AUTO_CAP))
            .then_some(())
        });
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        (health.join().unwrap(), rss.join().unwrap(), settled)
    });
    let hwm = vm_kib(pid, "VmHWM:");
    eprintln!(
        "RSS idle {rss_idle} KiB, highest sampled {rss_max} KiB, VmHWM {hwm} KiB; slowest health answer {slowest:?}"
    );
    assert!(
        hwm < 256 << 10,
        "VmHWM {hwm} KiB under a flood of {FLOOD} spoofed sources: not under 256 MiB"
    );
    assert!(
        failures.is_empty(),
        "/api/v1/health did not answer within 1 s: {failures:?}"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "slowest health {slowest:?}"
    );
    assert!(
        settled.is_some(),
        "the flood was not accounted for within 15 s: {}",
        c.sessions_page(None)["totals"]
    );

    // Capped, and counted by reason, per input and in all.
    let api = c.sessions();
    let t = &api["totals"];
    let auto: Vec<&Value> = api["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["auto"] == true)
        .collect();
    assert_eq!(auto.len() as u64, AUTO_CAP, "auto-discovered sessions");
    assert!(auto.iter().all(|s| u(&s["packets"]) == 1));
    assert_eq!(
        (u(&t["sessions"]), u(&t["sources"])),
        (AUTO_CAP + 1, AUTO_CAP + 1)
    );
    let gre = input(&api, "gre-v4");
    assert_eq!(
        u(&gre["refusals"]["auto_session_cap"]),
        u64::from(FLOOD) - AUTO_CAP,
        "{gre}"
    );
    assert_eq!(u(&t["kernel_drops"]), 0, "{t}");
    let real_api = session(&api, "real");
    assert_eq!(
        (
            u(&real_api["packets"]),
            u(&real_api["written"]),
            u(&real_api["lost"])
        ),
        (u64::from(REAL), u64::from(REAL), 0)
    );
    let metrics = c.metrics();
    let line = format!(
        "tapwire_input_refused_packets_total{{input=\"{}\",reason=\"auto_session_cap\"}} {}",
        gre["name"].as_str().unwrap(),
        u64::from(FLOOD) - AUTO_CAP
    );
    assert!(metrics.lines().any(|l| l == line), "{line:?} in /metrics");

    // Pages: a bounded default, a cursor that visits every session once, in name order.
    let first = c.get_json("/api/v1/sessions");
    assert_eq!(first["sessions"].as_array().unwrap().len(), 100);
    assert_eq!(u(&first["page"]["total"]), AUTO_CAP + 1);
    let mut names = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/api/v1/sessions?limit=60&after={a}"),
            None => "/api/v1/sessions?limit=60".into(),
        };
        let page = c.get_json(&path);
        let listed = page["sessions"].as_array().unwrap();
        assert!(listed.len() <= 60);
        names.extend(
            listed
                .iter()
                .map(|s| s["name"].as_str().unwrap().to_string()),
        );
        match page["page"]["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(names, sorted, "pages in name order, each session once");
    assert_eq!(names.len() as u64, AUTO_CAP + 1);

    // Idle for 8 s: the auto sessions and every source expire; nothing is lost from the
    // totals, and the configured session stays.
    let mut api = Value::Null;
    let expired = poll_until(Duration::from_secs(30), || {
        api = c.sessions();
        let t = &api["totals"];
        (u(&t["sessions"]) == 1 && u(&t["sources"]) == 0).then_some(())
    });
    assert!(expired.is_some(), "not expired: {}", api["totals"]);
    let t = &api["totals"];
    assert_eq!(u(&t["expired"]["auto_sessions"]), AUTO_CAP);
    assert_eq!(u(&t["expired"]["sources"]), AUTO_CAP + 1);
    assert_eq!(u(&t["written"]), u64::from(REAL) + AUTO_CAP, "{t}");
    let real_api = session(&api, "real");
    assert_eq!(
        (u(&real_api["written"]), real_api["n_sources"].clone()),
        (u64::from(REAL), 0.into())
    );
    c.stop("TERM", STOP_WITHIN);

    // On disk: the real session's every packet, in order; one valid file per auto session,
    // closed when it expired, holding its one packet.
    let real_files = c.files_of("real");
    let frames: Vec<Vec<u8>> = read_captures(&real_files)
        .into_iter()
        .flat_map(|(f, _)| f)
        .collect();
    let want: Vec<Vec<u8>> = (0..REAL).map(inner_frame).collect();
    assert!(
        frames == want,
        "the real session's files: {} frames, not the {REAL} sent",
        frames.len()
    );
    let auto_files: Vec<PathBuf> = files_in(&out)
        .into_iter()
        .filter(|p| {
            !p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("real_")
        })
        .collect();
    assert_eq!(auto_files.len() as u64, AUTO_CAP);
    assert!(pcapng_packets(&auto_files).iter().all(|n| *n == 1));
}

/// VNI `i` of many, spread over the 24 bits (odd multiplier: distinct for every `i`), never
/// the configured 42.
fn random_vni(i: u32) -> u32 {
    match i.wrapping_mul(0x9e37_79b1) & 0x00ff_ffff {
        42 => 43,
        v => v,
    }
}

/// One sender, 10,000 random VXLAN VNIs among 1,000 packets of its configured VNI 42, with
/// `--max-auto-sessions 50`: 50 auto sessions, the rest refused and counted on the UDP input;
/// every packet of VNI 42 written; once idle the auto sessions expire and make room again.
#[test]
fn random_vxlan_vnis_are_capped_and_the_configured_vni_keeps_every_packet() {
    const VNIS: u32 = 10_000;
    const REAL: u32 = 1_000;
    const CAP: u64 = 50;
    let lab = Lab::new("vni-flood");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.dir().join("out");
    let cfg = config(
        &lab,
        &format!(
            "[[session]]\nname = \"real\"\nsources = [{{ src = \"{SND_V4}\", kind = \"vxlan\", id = 42 }}]\n"
        ),
    );
    let mut c = Collector::start(
        &lab,
        &col,
        &out,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--max-auto-sessions",
            "50",
            "--idle-timeout",
            "3s",
        ],
    );
    let src = real_sender();
    // A packet of VNI 42 after every ten random ones.
    let frames = (0..VNIS).flat_map(|i| {
        let random = link().vxlan(src, random_vni(i), &inner_frame(100_000 + i));
        let real = (i % 10 == 9).then(|| link().vxlan(src, 42, &inner_frame(i / 10)));
        std::iter::once(random).chain(real)
    });
    tcpreplay(&lab, &snd, "snd0", &pcap(&lab, "vnis.pcap", frames), 10_000);

    let mut api = Value::Null;
    let settled = poll_until(Duration::from_secs(15), || {
        api = c.sessions();
        (u(&session(&api, "real")["written"]) == u64::from(REAL)
            && u(&api["totals"]["refusals"]["auto_session_cap"]) == u64::from(VNIS) - CAP)
            .then_some(())
    });
    assert!(settled.is_some(), "{}", api["totals"]);
    let t = &api["totals"];
    assert_eq!((u(&t["sessions"]), u(&t["sources"])), (CAP + 1, CAP + 1));
    assert_eq!(u(&t["kernel_drops"]), 0, "{t}");
    let udp = input(&api, "udp [::]:4789");
    assert_eq!(
        u(&udp["refusals"]["auto_session_cap"]),
        u64::from(VNIS) - CAP,
        "{udp}"
    );
    let line = format!(
        "tapwire_input_refused_packets_total{{input=\"{}\",reason=\"auto_session_cap\"}} {}",
        udp["name"].as_str().unwrap(),
        u64::from(VNIS) - CAP
    );
    assert!(
        c.metrics().lines().any(|l| l == line),
        "{line:?} in /metrics"
    );

    // Idle 3 s: the auto sessions expire, and new VNIs find room again.
    let expired = poll_until(Duration::from_secs(15), || {
        api = c.sessions();
        (u(&api["totals"]["sessions"]) == 1).then_some(())
    });
    assert!(expired.is_some(), "{}", api["totals"]);
    assert_eq!(u(&api["totals"]["expired"]["auto_sessions"]), CAP);
    let more = (0..5).map(|i| link().vxlan(src, 1_000_000 + i, &inner_frame(200_000 + i)));
    tcpreplay(&lab, &snd, "snd0", &pcap(&lab, "more.pcap", more), 100);
    let room = poll_until(Duration::from_secs(5), || {
        api = c.sessions();
        (u(&api["totals"]["sessions"]) == 6).then_some(())
    });
    assert!(room.is_some(), "{}", api["totals"]);
    c.stop("TERM", STOP_WITHIN);

    // On disk: VNI 42's every packet, once and in order, as tshark reads them.
    let got: Vec<Vec<u8>> = read_captures(&c.files_of("real"))
        .into_iter()
        .flat_map(|(f, _)| f)
        .collect();
    let want: Vec<Vec<u8>> = (0..REAL).map(inner_frame).collect();
    assert!(got == want, "VNI 42's files: {} frames", got.len());
}

/// `--max-sources 100` with a configured session that takes ERSPAN II session 9 from any
/// address: spoofed sources fill the table and the rest are refused; the known sender goes on;
/// once idle, every source expires and room is made again.
#[test]
fn a_full_source_table_refuses_new_sources_and_never_locks_out_known_ones() {
    let lab = Lab::new("table-full");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.dir().join("out");
    let cfg = config(
        &lab,
        "[[session]]\nname = \"wide\"\nsources = [{ kind = \"erspan-ii\", id = 9 }]\n",
    );
    let mut c = Collector::start(
        &lab,
        &col,
        &out,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--max-sources",
            "100",
            "--idle-timeout",
            "4s",
        ],
    );
    let first = pcap(&lab, "first.pcap", erspan_run(real_sender(), 9, 0, 100));
    tcpreplay(&lab, &snd, "snd0", &first, 2000);
    // 500 spoofed sources of the same session (99 fit), then one no session takes.
    let spoofed_500 = pcap(&lab, "spoofed.pcap", spoofed_run(0, 500, 9));
    tcpreplay(&lab, &snd, "snd0", &spoofed_500, 5000);
    let stranger = pcap(&lab, "stranger.pcap", spoofed_run(1000, 1, 3));
    tcpreplay(&lab, &snd, "snd0", &stranger, 100);
    let second = pcap(&lab, "second.pcap", erspan_run(real_sender(), 9, 100, 100));
    tcpreplay(&lab, &snd, "snd0", &second, 2000);

    let mut api = Value::Null;
    let settled = poll_until(Duration::from_secs(10), || {
        api = c.sessions();
        (u(&session(&api, "wide")["written"]) == 299).then_some(())
    });
    assert!(settled.is_some(), "{}", api);
    let t = &api["totals"];
    assert_eq!(u(&t["sources"]), 100);
    assert_eq!(u(&t["refusals"]["source_table_full"]), 401 + 1, "{t}");
    assert_eq!(
        u(&input(&api, "gre-v4")["refusals"]["source_table_full"]),
        402
    );
    let wide = session(&api, "wide");
    let known = wide["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["src"] == SND_V4)
        .expect("the known sender");
    assert_eq!((u(&known["packets"]), u(&known["lost"])), (200, 0));
    assert_eq!(u(&wide["n_sources"]), 100);

    // Idle 4 s: every source expires, the session keeps its counts, and there is room again.
    let expired = poll_until(Duration::from_secs(15), || {
        api = c.sessions();
        (u(&api["totals"]["sources"]) == 0).then_some(())
    });
    assert!(expired.is_some(), "{}", api["totals"]);
    assert_eq!(u(&api["totals"]["expired"]["sources"]), 100);
    let wide = session(&api, "wide");
    assert_eq!(
        (u(&wide["packets"]), u(&wide["written"]), u(&wide["lost"])),
        (299, 299, 0)
    );
    let third = pcap(&lab, "third.pcap", spoofed_run(2000, 5, 9));
    tcpreplay(&lab, &snd, "snd0", &third, 100);
    let room = poll_until(Duration::from_secs(5), || {
        api = c.sessions();
        (u(&api["totals"]["sources"]) == 5).then_some(())
    });
    assert!(room.is_some(), "{}", api["totals"]);
    c.stop("TERM", STOP_WITHIN);
    let n: u64 = pcapng_packets(&c.files_of("wide")).iter().sum();
    assert_eq!(n, 304, "packets in the session's files");
}

/// `--interface col0` beside the default socket inputs, on the link that holds the
/// collector's address: 10,000 ERSPAN II and 1,000 VXLAN packets, each written once.
#[test]
fn an_interface_beside_the_socket_inputs_writes_each_packet_once() {
    require("nstat");
    let lab = Lab::new("one-copy");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.dir().join("out");
    let mut c = Collector::start(&lab, &col, &out, &["--interface", "col0"]);
    lab.exec_ok(&col, &["nstat", "-n"]);
    let src = real_sender();
    let mut frames = erspan_run(src, 5, 0, 10_000);
    frames.extend((0..1_000).map(|i| link().vxlan(src, 42, &inner_frame(50_000 + i))));
    let sent = pcap(&lab, "sent.pcap", frames);
    tcpreplay(&lab, &snd, "snd0", &sent, 5000);

    let mut api = Value::Null;
    let settled = poll_until(Duration::from_secs(15), || {
        api = c.sessions();
        (u(&api["totals"]["written"]) >= 11_000 && u(&api["totals"]["pending"]) == 0).then_some(())
    });
    assert!(settled.is_some(), "{}", api["totals"]);
    // Read by the ring; the sockets, open and bound, queued none of it.
    assert!(u(&input(&api, "af_packet col0")["packets"]) >= 11_000);
    assert_eq!(u(&input(&api, "gre-v4")["packets"]), 0);
    assert_eq!(u(&input(&api, "udp [::]:4789")["packets"]), 0);
    // ...and the kernel answered no sender with ICMP unreachable.
    let icmp = lab.exec_ok(&col, &["nstat", "-az", "IcmpOutDestUnreachs"]);
    let n: u64 = icmp
        .lines()
        .find(|l| l.starts_with("IcmpOutDestUnreachs"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("nstat: {icmp}"));
    assert_eq!(
        n, 0,
        "ICMP destination unreachable sent by the collector's host"
    );
    // Nothing more arrives later.
    std::thread::sleep(Duration::from_millis(1500));
    c.stop("TERM", STOP_WITHIN);
    let erspan = c.files_of("10.77.0.1_erspan-ii_5");
    let vxlan = c.files_of("10.77.0.1_vxlan_42");
    let count = |f: &[PathBuf]| pcapng_packets(f).iter().sum::<u64>();
    assert_eq!((count(&erspan), count(&vxlan)), (10_000, 1_000));
    assert_eq!(count(&files_in(&out)), 11_000, "frames in all the files");
    let got: Vec<Vec<u8>> = read_captures(&vxlan)
        .into_iter()
        .flat_map(|(f, _)| f)
        .collect();
    let want: Vec<Vec<u8>> = (0..1_000).map(|i| inner_frame(50_000 + i)).collect();
    assert!(
        got == want,
        "the VXLAN session's frames, once each and in order"
    );
    assert!(
        c.proc.stderr().contains(
            "the socket inputs leave every packet arriving on col0 to its AF_PACKET input"
        ),
        "the collector says at start what it does:\n{}",
        c.proc.stderr()
    );
}

/// The allow-list on an AF_PACKET ring: 500 refused spoofed sources leave the allowed sender
/// alone in the table; after 70,000 more, a new source of the allowed sender is still taken.
#[test]
fn the_allow_list_on_a_ring_keeps_refused_sources_out_of_the_table() {
    let lab = Lab::new("ring-allow");
    let snd = lab.ns("snd").to_string();
    let col = lab.ns("col").to_string();
    let out = lab.dir().join("out");
    let mut args = AF_PACKET_ONLY.to_vec();
    args.extend(["--allow", "10.77.0.1/32"]);
    let mut c = Collector::start(&lab, &col, &out, &args);
    let mut frames: Vec<Vec<u8>> = spoofed_run(0, 500, 1).collect();
    frames.extend(erspan_run(real_sender(), 1, 0, 10));
    tcpreplay(&lab, &snd, "snd0", &pcap(&lab, "500.pcap", frames), 5000);
    let mut api = Value::Null;
    let settled = poll_until(Duration::from_secs(10), || {
        api = c.sessions();
        (u(&api["totals"]["written"]) == 10).then_some(())
    });
    assert!(settled.is_some(), "{}", api["totals"]);
    assert_eq!(u(&api["totals"]["sources"]), 1, "sources in the table");
    assert_eq!(
        u(&input(&api, "af_packet col0")["refusals"]["not_allowed"]),
        500
    );

    let flood = pcap(&lab, "70k.pcap", spoofed_run(1000, 70_000, 1));
    tcpreplay(&lab, &snd, "snd0", &flood, 25_000);
    // A source of the allowed sender not seen before: session 2.
    let after = pcap(&lab, "after.pcap", erspan_run(real_sender(), 2, 0, 100));
    tcpreplay(&lab, &snd, "snd0", &after, 2000);
    let settled = poll_until(Duration::from_secs(15), || {
        api = c.sessions();
        (u(&api["totals"]["written"]) == 110).then_some(())
    });
    assert!(settled.is_some(), "{}", api["totals"]);
    let t = &api["totals"];
    assert_eq!(u(&t["sources"]), 2);
    assert_eq!(u(&t["refusals"]["not_allowed"]), 70_500);
    assert_eq!(u(&t["refusals"]["source_table_full"]), 0);
    c.stop("TERM", STOP_WITHIN);
    let n: u64 = pcapng_packets(&c.files_of("10.77.0.1_erspan-ii_2"))
        .iter()
        .sum();
    assert_eq!(n, 100);
}
