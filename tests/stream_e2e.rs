//! End-to-end: live sessions in Wireshark's tools. A collector in its own namespace, the
//! scapy sender (or tcpreplay of what it wrote) in another, and Wireshark's own programs as
//! the readers: `tapwire extcap install` into a temporary HOME (the folder Debian's Wireshark
//! 4.0 really loads: it ignores `WIRESHARK_EXTCAP_DIR` as root), then `tshark -D`,
//! `tshark -i tapwire-<session>`, `dumpcap` on the extcap's fifo, curl for the raw stream.
//! What tshark records is compared with the session's files as tshark reads them; statistics
//! blocks are read with tshark's pcapng file dissector (`-X read_format:"MIME Files
//! Format"`). Run as root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tapwire_tests::collector::{API, Collector};
use tapwire_tests::netns::{Lab, Proc, poll_until, wait_until};
use tapwire_tests::senders::{self, MirrorSend};
use tapwire_tests::{bin, oracle, require, run_ok, tshark, validate_capture};

const STOP_WITHIN: Duration = Duration::from_millis(2500);

/// One session `web` taking every ERSPAN II and III source of the sender's /24.
const WEB_CONFIG: &str = r#"
[[session]]
name = "web"
sources = [
  { src = "10.77.0.0/24", kind = "erspan-ii" },
  { src = "10.77.0.0/24", kind = "erspan-iii" },
]
"#;

/// A lab and the collector's configuration file holding `config`.
fn lab_with_config(tag: &str, config: &str) -> (Lab, PathBuf) {
    let lab = Lab::new(tag);
    let cfg = lab.dir().join("collector.toml");
    std::fs::write(&cfg, config).unwrap();
    (lab, cfg)
}

fn start_collector<'l>(lab: &'l Lab, cfg: &Path, extra: &[&str]) -> Collector<'l> {
    let col = lab.ns("col").to_string();
    let out = lab.dir().join("out");
    let mut args = vec!["--config", cfg.to_str().unwrap(), "--gre-v6", "off"];
    args.extend_from_slice(extra);
    Collector::start(lab, &col, &out, &args)
}

/// `tapwire extcap install` with HOME set to a fresh folder; checks that it chose the folder
/// the installed Wireshark loads (4.0: `~/.config/wireshark/extcap`; 4.2 and later:
/// `~/.local/lib/wireshark/extcap`) and returns the HOME.
fn install_extcap(lab: &Lab) -> PathBuf {
    for tool in ["tshark", "dumpcap", "curl"] {
        require(tool);
    }
    let home = lab.dir().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let printed = lab.exec_ok(
        lab.ns("col"),
        &[
            "env",
            &format!("HOME={}", home.display()),
            bin("tapwire").to_str().unwrap(),
            "extcap",
            "install",
        ],
    );
    let version = run_ok(Command::new("tshark").arg("-v"));
    let want = if version.contains(" 4.0.") || version.contains(" 3.") {
        home.join(".config/wireshark/extcap")
    } else {
        home.join(".local/lib/wireshark/extcap")
    };
    assert_eq!(Path::new(printed.trim()), want, "tshark -v: {version}");
    let link = want.join("tapwire-extcap");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        bin("tapwire").canonicalize().unwrap()
    );
    home
}

/// `env HOME=home cmd...` in the collector's namespace, as a spawned process.
fn spawn_with_home(lab: &Lab, home: &Path, cmd: &[&str]) -> Proc {
    let env_home = format!("HOME={}", home.display());
    let mut full = vec!["env", env_home.as_str()];
    full.extend_from_slice(cmd);
    lab.spawn(lab.ns("col"), &full)
}

fn exec_with_home(lab: &Lab, home: &Path, env: &[&str], cmd: &[&str]) -> std::process::Output {
    let env_home = format!("HOME={}", home.display());
    let mut full = vec!["env", env_home.as_str()];
    full.extend_from_slice(env);
    full.extend_from_slice(cmd);
    lab.exec(lab.ns("col"), &full)
}

/// Waits until `session` has `n` live streams (the API shows each subscriber).
fn wait_streams(c: &Collector<'_>, session: &str, n: usize) -> Value {
    let mut last = Value::Null;
    let got = poll_until(Duration::from_secs(20), || {
        last = c.sessions();
        let s = last["sessions"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == session)?
            .clone();
        (s["streams"]["subscribers"].as_array()?.len() == n).then_some(s)
    });
    got.unwrap_or_else(|| panic!("{session} never had {n} live streams: {last}"))
}

fn session<'a>(api: &'a Value, name: &str) -> &'a Value {
    api["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no session {name}: {api}"))
}

/// Each packet of a capture as tshark reads it: bytes, time, comment, direction and the
/// interface's name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Packet {
    bytes: Vec<u8>,
    time: String,
    comment: String,
    direction: String,
    interface: String,
}

fn packets(path: &Path) -> Vec<Packet> {
    let bytes = oracle::frames(path);
    let meta = tshark::fields(
        path,
        &[
            "frame.time_epoch",
            "frame.comment",
            "frame.packet_flags_direction",
            "frame.interface_name",
        ],
    );
    assert_eq!(bytes.len(), meta.len());
    bytes
        .into_iter()
        .zip(meta)
        .map(|(bytes, m)| Packet {
            bytes,
            time: m[0].clone(),
            comment: m[1].clone(),
            direction: m[2].clone(),
            interface: m[3].clone(),
        })
        .collect()
}

/// Every packet of a session's files, in order.
fn file_packets(c: &Collector<'_>, name: &str) -> Vec<Packet> {
    let files = c.files_of(name);
    assert!(!files.is_empty(), "no files of {name}");
    files
        .iter()
        .flat_map(|f| {
            validate_capture(f);
            packets(f)
        })
        .collect()
}

/// The Interface Statistics Blocks of a pcapng, as tshark's file dissector reads them: per
/// block its options by name (`received`, `dropped`, `dropped_by_os`, `delivered_to_user`).
fn statistics(path: &Path) -> Vec<std::collections::BTreeMap<String, u64>> {
    let names = ["received", "dropped", "dropped_by_os", "delivered_to_user"];
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(path)
        .args(["-X", "read_format:MIME Files Format", "-V"]);
    let text = run_ok(&mut cmd);
    // -V prints each block's options; one map per "Interface Statistics Block".
    let mut out = Vec::new();
    for block in text.split("Block: ").skip(1) {
        if !block.starts_with("Interface Statistics Block") {
            continue;
        }
        let mut m = std::collections::BTreeMap::new();
        for line in block.lines().map(str::trim) {
            for (label, name) in [
                ("Number of Received Packets: ", names[0]),
                ("Number of Dropped Packets: ", names[1]),
                ("Number of Dropped Packets by OS: ", names[2]),
                ("Number of Delivered to the User Packets: ", names[3]),
            ] {
                if let Some(v) = line.strip_prefix(label) {
                    m.insert(name.to_string(), v.trim().parse().unwrap());
                }
            }
        }
        out.push(m);
    }
    out
}

/// The scapy sender's options for sources of kinds `kinds` (IPv4 only).
fn mirror(kinds: &str, count: u32, start: u32) -> MirrorSend {
    MirrorSend {
        families: "4".into(),
        kinds: kinds.into(),
        count,
        start,
        ..MirrorSend::default()
    }
}

// ---------------------------------------------------------------------------------------------

/// `tshark -D` lists the collector's sessions through the installed extcap; `tshark -i
/// tapwire-web -a packets:N -w out.pcapng` records exactly the session's first N packets as its
/// files hold them (bytes, timestamps, comments, direction flags, an interface per source);
/// the files end with a statistics block per source whose loss is the sequence loss.
#[test]
fn tshark_lists_sessions_and_records_what_the_files_hold() {
    let (lab, cfg) = lab_with_config("stream-tshark", WEB_CONFIG);
    let mut c = start_collector(&lab, &cfg, &[]);
    let home = install_extcap(&lab);
    let listed = exec_with_home(&lab, &home, &[], &["tshark", "-D"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed
            .lines()
            .any(|l| l.contains(". tapwire-web (tapwire session web: ")),
        "tshark -D:\n{listed}"
    );
    // tshark asks the extcap for the interface's link types (--extcap-dlts).
    let dlts = exec_with_home(&lab, &home, &[], &["tshark", "-i", "tapwire-web", "-L"]);
    let dlts = String::from_utf8_lossy(&dlts.stdout).into_owned();
    assert!(dlts.contains("EN10MB"), "tshark -L:\n{dlts}");
    // The interface's options as Wireshark asks for them, and a filter checked as typed.
    let extcap = |args: &[&str]| {
        let mut cmd = vec![
            bin("tapwire").to_str().unwrap().to_string(),
            "extcap".into(),
        ];
        cmd.extend(args.iter().map(|a| a.to_string()));
        let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
        lab.exec(lab.ns("col"), &cmd)
    };
    let config = extcap(&["--extcap-interface", "tapwire-web", "--extcap-config"]);
    let config = String::from_utf8_lossy(&config.stdout).into_owned();
    assert!(
        config.contains("{call=--controller}")
            && config.contains("{call=--token}{display=API token}{type=password}"),
        "{config}"
    );
    let ok = extcap(&[
        "--extcap-interface",
        "tapwire-web",
        "--extcap-capture-filter",
        "udp port 53",
    ]);
    assert!(ok.status.success() && ok.stdout.is_empty(), "{ok:?}");
    let bad = extcap(&[
        "--extcap-interface",
        "tapwire-web",
        "--extcap-capture-filter",
        "tcp port",
    ]);
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stdout).contains("syntax error"),
        "{bad:?}"
    );

    // Two bursts with a gap of 5 in every source's sequence between them: 4 sources
    // (ERSPAN II from two switches, ERSPAN III with and without sub-header), 10 packets each.
    let n = 80;
    let out = lab.dir().join("live.pcapng");
    let mut t = spawn_with_home(
        &lab,
        &home,
        &[
            "tshark",
            "-i",
            "tapwire-web",
            "-a",
            &format!("packets:{n}"),
            "-w",
            out.to_str().unwrap(),
        ],
    );
    wait_streams(&c, "web", 1);
    let snd = lab.ns("snd").to_string();
    let kinds = "erspan-ii,erspan-iii";
    let a = senders::send_mirror(
        &lab,
        &snd,
        &mirror(kinds, 10, 0),
        &lab.dir().join("a.pcap"),
        false,
    );
    let b = senders::send_mirror(
        &lab,
        &snd,
        &mirror(kinds, 10, 15),
        &lab.dir().join("b.pcap"),
        false,
    );
    assert_eq!(a.total() + b.total(), n as u64);
    t.wait_ok(Duration::from_secs(30));
    let api = c.wait_written(Duration::from_secs(10));
    c.stop("TERM", STOP_WITHIN);

    validate_capture(&out);
    let live = packets(&out);
    let files = file_packets(&c, "web");
    assert_eq!(live.len(), n, "tshark recorded");
    assert_eq!(files.len(), n, "the files hold");
    assert_eq!(live, files, "the live capture differs from the files");
    // The metadata compared above is really there.
    assert!(live.iter().any(|p| p.comment.contains("sequence gap")));
    assert!(
        live.iter().any(|p| p.direction == "0x00000001")
            && live.iter().any(|p| p.direction == "0x00000002")
    );
    let ifaces: std::collections::BTreeSet<&str> =
        live.iter().map(|p| p.interface.as_str()).collect();
    assert_eq!(ifaces.len(), 4, "{ifaces:?}");

    // The file ends with one statistics block per source: its packets and its sequence loss
    // (5 per source), as the API counts them.
    let web = session(&api, "web");
    let files = c.files_of("web");
    let isbs = statistics(files.last().unwrap());
    assert_eq!(isbs.len(), 4, "{isbs:?}");
    let lost: u64 = isbs.iter().map(|m| m["dropped"]).sum();
    assert_eq!(lost, web["lost"].as_u64().unwrap());
    assert_eq!(lost, 20);
    assert!(isbs.iter().all(|m| m["received"] == 20), "{isbs:?}");
    let capinfos = run_ok(Command::new("capinfos").arg(files.last().unwrap()));
    assert_eq!(
        capinfos.matches("Number of stat entries = 1").count(),
        4,
        "{capinfos}"
    );
}

/// A capture filter reaches the collector and only matching packets come; SIGINT stops tshark
/// (and with it dumpcap and the extcap) cleanly; dumpcap reading the extcap's fifo stops on
/// SIGINT and the extcap follows at once, also while no packet flows.
#[test]
fn a_capture_filter_is_honoured_and_sigint_stops_cleanly() {
    let (lab, cfg) = lab_with_config("stream-filter", WEB_CONFIG);
    let mut c = start_collector(&lab, &cfg, &[]);
    let home = install_extcap(&lab);
    let out = lab.dir().join("udp.pcapng");
    let mut t = spawn_with_home(
        &lab,
        &home,
        &[
            "tshark",
            "-i",
            "tapwire-web",
            "-f",
            "udp",
            "-w",
            out.to_str().unwrap(),
        ],
    );
    let s = wait_streams(&c, "web", 1);
    assert_eq!(s["streams"]["subscribers"][0]["filter"], "udp");
    // dumpcap on a fifo the extcap writes, as Wireshark runs them.
    let fifo = lab.dir().join("fifo");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let mut extcap = lab.spawn(
        lab.ns("col"),
        &[
            bin("tapwire").to_str().unwrap(),
            "extcap",
            "--capture",
            "--extcap-interface",
            "tapwire-web",
            "--fifo",
            fifo.to_str().unwrap(),
        ],
    );
    let dumped = lab.dir().join("dumpcap.pcapng");
    let mut dumpcap = lab.spawn(
        lab.ns("col"),
        &[
            "dumpcap",
            "-i",
            fifo.to_str().unwrap(),
            "-w",
            dumped.to_str().unwrap(),
        ],
    );
    wait_streams(&c, "web", 2);

    let snd = lab.ns("snd").to_string();
    let sent = senders::send_mirror(
        &lab,
        &snd,
        &mirror("erspan-ii,erspan-iii", 20, 0),
        &lab.dir().join("sent.pcap"),
        false,
    );
    c.wait_for_packets(&sent.sources, Duration::from_secs(10));
    // Both streams have had every packet (delivered counts them before the filter).
    wait_until(
        Duration::from_secs(10),
        "both streams to have every packet",
        || {
            let api = c.sessions();
            let subs = session(&api, "web")["streams"]["subscribers"]
                .as_array()?
                .clone();
            subs.iter()
                .all(|s| s["delivered"].as_u64() == Some(sent.total()))
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(1500));

    dumpcap.signal("INT");
    let status = dumpcap
        .wait_timeout(Duration::from_secs(5))
        .expect("dumpcap stops");
    assert!(status.success(), "dumpcap: {}", dumpcap.stderr());
    let status = extcap
        .wait_timeout(Duration::from_secs(2))
        .expect("the extcap stops when dumpcap closes the fifo");
    assert!(status.success(), "extcap: {}", extcap.stderr());
    t.signal("INT");
    let status = t
        .wait_timeout(Duration::from_secs(10))
        .expect("tshark stops");
    assert!(status.success(), "tshark: {}", t.stderr());
    // No extcap is left behind: the collector serves no stream any more.
    wait_streams(&c, "web", 0);
    c.wait_written(Duration::from_secs(10));
    c.stop("TERM", STOP_WITHIN);

    // tshark's capture: exactly the file's UDP packets, as libpcap (tcpdump) filters them.
    let files = c.files_of("web");
    let filtered = lab.dir().join("files-udp.pcapng");
    let merged = lab.dir().join("files.pcapng");
    let mut cmd = Command::new("mergecap");
    cmd.args(["-a", "-F", "pcapng", "-w"])
        .arg(&merged)
        .args(&files);
    run_ok(&mut cmd);
    run_ok(
        Command::new("tcpdump")
            .args(["-r"])
            .arg(&merged)
            .arg("-w")
            .arg(&filtered)
            .arg("udp"),
    );
    let want = oracle::frames(&filtered);
    let got = oracle::frames(&out);
    assert!(!want.is_empty() && want.len() < sent.total() as usize);
    assert_eq!(got.len(), want.len());
    assert_eq!(
        got, want,
        "the filtered live capture differs from the filtered files"
    );
    // dumpcap's capture, unfiltered: everything.
    validate_capture(&dumped);
    assert_eq!(oracle::frames(&dumped), oracle::frames(&merged));

    // Quiet: no packet flows, dumpcap is stopped, the extcap notices the closed fifo anyway.
    let mut c = start_collector(&lab, &cfg, &[]);
    let fifo2 = lab.dir().join("fifo2");
    run_ok(Command::new("mkfifo").arg(&fifo2));
    let mut extcap = lab.spawn(
        lab.ns("col"),
        &[
            bin("tapwire").to_str().unwrap(),
            "extcap",
            "--capture",
            "--extcap-interface",
            "tapwire-web",
            "--fifo",
            fifo2.to_str().unwrap(),
        ],
    );
    let mut dumpcap = lab.spawn(
        lab.ns("col"),
        &[
            "dumpcap",
            "-i",
            fifo2.to_str().unwrap(),
            "-w",
            lab.dir().join("quiet.pcapng").to_str().unwrap(),
        ],
    );
    wait_streams(&c, "web", 1);
    dumpcap.signal("INT");
    assert!(
        dumpcap
            .wait_timeout(Duration::from_secs(5))
            .expect("dumpcap stops")
            .success()
    );
    let status = extcap
        .wait_timeout(Duration::from_secs(2))
        .expect("the extcap stops on a closed fifo while quiet");
    assert!(status.success(), "extcap: {}", extcap.stderr());
    wait_streams(&c, "web", 0);

    // SIGTERM (what Wireshark sends to stop a capture): the extcap ends at once, cleanly,
    // its output a valid capture.
    let fifo3 = lab.dir().join("fifo3");
    run_ok(Command::new("mkfifo").arg(&fifo3));
    let termed = lab.dir().join("termed.pcapng");
    let mut reader = lab.spawn(
        lab.ns("col"),
        &[
            "sh",
            "-c",
            &format!("cat '{}' > '{}'", fifo3.display(), termed.display()),
        ],
    );
    let mut extcap = lab.spawn(
        lab.ns("col"),
        &[
            bin("tapwire").to_str().unwrap(),
            "extcap",
            "--capture",
            "--extcap-interface",
            "tapwire-web",
            "--fifo",
            fifo3.to_str().unwrap(),
        ],
    );
    wait_streams(&c, "web", 1);
    extcap.signal("TERM");
    let status = extcap
        .wait_timeout(Duration::from_secs(2))
        .expect("the extcap stops on SIGTERM");
    assert!(status.success(), "extcap: {}", extcap.stderr());
    reader.wait_ok(Duration::from_secs(5));
    assert_eq!(validate_capture(&termed), 0);
    wait_streams(&c, "web", 0);
    c.stop("TERM", STOP_WITHIN);
}

/// A reader that stops reading for 15 s (longer than the API's idle timeout, which a live
/// stream is exempt from) loses stream packets, counted (by the API, in the
/// packet after the gap and in the stream's statistics), while the session's files lose none.
#[test]
fn a_stalled_reader_loses_stream_packets_and_the_files_none() {
    let config = r#"
[[session]]
name = "bulk"
sources = [{ src = "10.77.0.0/24", kind = "erspan-ii" }]
"#;
    let (lab, cfg) = lab_with_config("stream-stall", config);
    let mut c = start_collector(&lab, &cfg, &[]);
    require("tcpreplay");
    // 1000 frames of 1400 bytes from one source, replayed 30 times: 42 MB, well past what the
    // stream's queue (8 MiB) and the sockets between hold.
    let snd = lab.ns("snd").to_string();
    let opts = MirrorSend {
        families: "4".into(),
        kinds: "erspan-ii".into(),
        sources: 1,
        count: 1000,
        size: 1400,
        ..MirrorSend::default()
    };
    let pcap = lab.dir().join("bulk.pcap");
    let one = senders::send_mirror(&lab, &snd, &opts, &pcap, true);
    let loops = 30;
    let total = one.total() * loops;

    let out = lab.dir().join("stalled.pcapng");
    let url = format!("http://{API}/api/v1/sessions/bulk/stream");
    let mut reader = lab.spawn(
        lab.ns("col"),
        &[
            "sh",
            "-c",
            &format!("curl -sSN '{url}' | (sleep 15; cat) > '{}'", out.display()),
        ],
    );
    wait_streams(&c, "bulk", 1);
    let t0 = std::time::Instant::now();
    let mut replay = senders::tcpreplay_loop(&lab, &snd, "snd0", &pcap, 5000, loops as u32);
    replay.wait_ok(Duration::from_secs(60));
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "the traffic took {:?}, longer than the reader's pause",
        t0.elapsed()
    );
    let api = c.wait_written(Duration::from_secs(20));
    let bulk = session(&api, "bulk");
    assert_eq!(bulk["packets"], total, "{bulk}");
    assert_eq!(bulk["written"], total, "the files lose nothing: {bulk}");
    assert_eq!(bulk["drops"]["backlog"], 0);
    let dropped = bulk["streams"]["subscribers"][0]["dropped"]
        .as_u64()
        .unwrap();
    assert!(dropped > 0, "the stalled reader lost nothing: {bulk}");
    assert_eq!(bulk["streams"]["dropped"], dropped);
    // The reader reads again; the collector stops: the stream ends cleanly.
    std::thread::sleep(Duration::from_secs(16).saturating_sub(t0.elapsed()));
    wait_until(Duration::from_secs(20), "the reader to catch up", || {
        let api = c.sessions();
        let s = session(&api, "bulk")["streams"]["subscribers"][0].clone();
        (s["queued_bytes"] == 0).then_some(())
    });
    // Traffic again: the first packet the reader gets after the gap tells it what it lost.
    let after = MirrorSend { count: 5, ..opts };
    let more = senders::send_mirror(&lab, &snd, &after, &lab.dir().join("more.pcap"), false);
    let total = total + more.total();
    wait_until(
        Duration::from_secs(20),
        "the reader to get the last burst",
        || {
            let api = c.sessions();
            let s = session(&api, "bulk");
            let sub = &s["streams"]["subscribers"][0];
            (s["written"] == total
                && sub["delivered"].as_u64()? + dropped == total
                && sub["queued_bytes"] == 0)
                .then_some(())
        },
    );
    c.stop("TERM", STOP_WITHIN);
    reader.wait_ok(Duration::from_secs(10));

    // The files: every packet.
    let in_files: u64 = c.files_of("bulk").iter().map(|f| validate_capture(f)).sum();
    assert_eq!(in_files, total);
    // The stream: the packets it got and those it was told it lost add up to all of them.
    let got = validate_capture(&out);
    let told: u64 = tshark::fields(&out, &["frame.drop_count"])
        .iter()
        .filter_map(|r| r[0].parse::<u64>().ok())
        .sum();
    assert_eq!(told, dropped, "frame.drop_count");
    assert_eq!(got + told, total);
    let comments = tshark::fields(&out, &["frame.comment"]);
    assert!(
        comments
            .iter()
            .any(|r| r[0].contains("packets of this stream dropped before this one")),
        "no drop comment"
    );
    // Its last statistics block, written as the collector stopped, counts them too.
    let isbs = statistics(&out);
    let last = isbs.last().expect("statistics blocks in the stream");
    assert_eq!(last["dropped_by_os"], dropped, "{isbs:?}");
    assert_eq!(last["delivered_to_user"], got);
    assert_eq!(last["received"], total);
}

/// Bad input becomes an error Wireshark shows, never a hang: a wrong token (listing and
/// capture), no token from another host (401), an unknown session (404), a filter libpcap
/// refuses (400 with its message), the collector gone mid-stream.
#[test]
fn bad_input_gives_errors_wireshark_shows() {
    let (lab, cfg) = lab_with_config("stream-bad", WEB_CONFIG);
    let db = lab.dir().join("c.db");
    let listen = format!("{}:9751", tapwire_tests::netns::COL_V4);
    let mut c = start_collector(
        &lab,
        &cfg,
        &[
            "--db",
            db.to_str().unwrap(),
            "--listen",
            &listen,
            "--max-streams",
            "1",
        ],
    );
    let home = install_extcap(&lab);
    let tapwire = bin("tapwire");
    let tapwire = tapwire.to_str().unwrap();

    // No token from another host: 401.
    let curl = |ns: &str, url: &str| {
        let o = lab.exec(ns, &["curl", "-sS", "-w", "\n%{http_code}", url]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let remote = curl(
        lab.ns("snd"),
        &format!("http://{listen}/api/v1/sessions/web/stream"),
    );
    assert!(remote.ends_with("\n401"), "{remote}");
    // Unknown session: 404, and the extcap's error.
    let unknown = curl(
        lab.ns("col"),
        &format!("http://{API}/api/v1/sessions/nosuch/stream"),
    );
    assert!(
        unknown.contains("no session named \\\"nosuch\\\"") && unknown.ends_with("\n404"),
        "{unknown}"
    );
    let fifo = lab.dir().join("fifo");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let extcap = |args: &[&str]| {
        let mut cmd = vec![
            tapwire,
            "extcap",
            "--capture",
            "--fifo",
            fifo.to_str().unwrap(),
        ];
        cmd.extend_from_slice(args);
        lab.exec(lab.ns("col"), &cmd)
    };
    let o = extcap(&["--extcap-interface", "tapwire-nosuch"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("404: no session named \"nosuch\""), "{err}");
    // Wireshark's GUI starts dumpcap on the fifo after the extcap, which may have failed by
    // then: dumpcap must still end (an empty capture), or the GUI waits for ever and never
    // shows the error.
    let late = lab.dir().join("fifo-late");
    run_ok(Command::new("mkfifo").arg(&late));
    let mut failed = lab.spawn(
        lab.ns("col"),
        &[
            tapwire,
            "extcap",
            "--capture",
            "--extcap-interface",
            "tapwire-nosuch",
            "--fifo",
            late.to_str().unwrap(),
        ],
    );
    wait_until(Duration::from_secs(10), "the extcap's error", || {
        failed
            .stderr()
            .contains("404: no session named")
            .then_some(())
    });
    let mut dumpcap = lab.spawn(
        lab.ns("col"),
        &[
            "dumpcap",
            "-i",
            late.to_str().unwrap(),
            "-w",
            lab.dir().join("late.pcapng").to_str().unwrap(),
        ],
    );
    dumpcap
        .wait_timeout(Duration::from_secs(10))
        .expect("dumpcap ends on the fifo of an extcap that failed");
    let status = failed
        .wait_timeout(Duration::from_secs(5))
        .expect("the extcap ends");
    assert_eq!(status.code(), Some(1), "{}", failed.stderr());
    // A bad filter: 400 with libpcap's message, shown by tshark.
    let bad = curl(
        lab.ns("col"),
        &format!("http://{API}/api/v1/sessions/web/stream?filter=tcp%20port"),
    );
    assert!(
        bad.contains("syntax error") && bad.ends_with("\n400"),
        "{bad}"
    );
    let o = exec_with_home(
        &lab,
        &home,
        &[],
        &[
            "timeout",
            "30",
            "tshark",
            "-i",
            "tapwire-web",
            "-f",
            "tcp port",
            "-a",
            "duration:5",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Error by extcap pipe")
            && err.contains("400: filter: ")
            && err.contains("syntax error"),
        "tshark:\n{err}"
    );
    // Wrong token: the interface list says so, capturing it says so, and the extcap with the
    // token option (Wireshark's password field) says so.
    let o = exec_with_home(
        &lab,
        &home,
        &["TAPWIRE_API_TOKEN=tw_wrong"],
        &["tshark", "-D"],
    );
    let listed = String::from_utf8_lossy(&o.stdout);
    assert!(
        listed.contains("tapwire (tapwire: no sessions listed (http://127.0.0.1:9750: 401: "),
        "tshark -D:\n{listed}"
    );
    let o = exec_with_home(
        &lab,
        &home,
        &["TAPWIRE_API_TOKEN=tw_wrong"],
        &[
            "timeout",
            "30",
            "tshark",
            "-i",
            "tapwire",
            "-a",
            "duration:5",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "Error by extcap pipe: tapwire: the collector at http://127.0.0.1:9750 refused: 401"
        ),
        "tshark:\n{err}"
    );
    let o = extcap(&["--extcap-interface", "tapwire-web", "--token", "tw_wrong"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("401: the token is unknown or revoked"),
        "{err}"
    );

    // The collector goes away mid-stream: tshark stops with the extcap's message.
    let out = lab.dir().join("gone.pcapng");
    let mut t = spawn_with_home(
        &lab,
        &home,
        &["tshark", "-i", "tapwire-web", "-w", out.to_str().unwrap()],
    );
    wait_streams(&c, "web", 1);
    // One stream is the most this collector serves: a second is refused, and says why.
    let o = lab.exec(
        lab.ns("col"),
        &[
            "curl",
            "-sS",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{API}/api/v1/sessions/web/stream"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "503");
    let o = extcap(&["--extcap-interface", "tapwire-web"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("503: 1 live streams already, the most this collector serves"),
        "{err}"
    );
    let snd = lab.ns("snd").to_string();
    let sent = senders::send_mirror(
        &lab,
        &snd,
        &mirror("erspan-ii", 5, 0),
        &lab.dir().join("sent.pcap"),
        false,
    );
    c.wait_for_packets(&sent.sources, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    c.proc.kill();
    let status = t
        .wait_timeout(Duration::from_secs(10))
        .expect("tshark stops when the collector is gone");
    let err = t.stderr();
    assert!(status.code().is_some(), "{status}");
    assert!(
        err.contains("Error by extcap pipe: tapwire: capture of web stopped: the connection to the collector at http://127.0.0.1:9750 broke"),
        "tshark:\n{err}"
    );
    assert_eq!(validate_capture(&out), sent.total());
}

/// The nice value of each thread of process `pid`, by thread name.
fn thread_nice(pid: u32) -> std::collections::BTreeMap<String, i64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .flatten()
        .map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap();
            // After the parenthesised name: state is field 3, nice field 19.
            let (name, rest) = stat.split_once(" (").unwrap().1.rsplit_once(") ").unwrap();
            let nice = rest.split_whitespace().nth(16).unwrap().parse().unwrap();
            (name.to_string(), nice)
        })
        .collect()
}

/// The API's thread, which writes every live stream, runs at a lower priority than the
/// capture's threads, so that serving streams on the capture's CPU cannot take its time
/// (scripts/bench-stream.sh measures what it would cost).
#[test]
fn the_api_thread_yields_to_capture() {
    let (lab, cfg) = lab_with_config("stream-nice", WEB_CONFIG);
    let mut c = start_collector(&lab, &cfg, &[]);
    c.sessions();
    let nice = thread_nice(c.proc.pid());
    assert_eq!(nice.get("tapwire-api"), Some(&10), "{nice:?}");
    for capture in ["tapwire", "tapwire-in0", "tapwire-disk"] {
        assert_eq!(nice.get(capture), Some(&0), "{capture}: {nice:?}");
    }
    c.stop("TERM", STOP_WITHIN);
}

/// `tapwire stream` writes a valid capture and ends it cleanly, with its statistics, when
/// the session is deleted (the control plane) or the collector stops, saying which.
#[test]
fn tapwire_stream_ends_cleanly_when_the_session_goes_or_the_collector_stops() {
    let (lab, cfg) = lab_with_config("stream-end", WEB_CONFIG);
    let db = lab.dir().join("c.db");
    let mut c = start_collector(&lab, &cfg, &["--db", db.to_str().unwrap()]);
    let tapwire = bin("tapwire");
    let tapwire = tapwire.to_str().unwrap();
    let admin = std::fs::read_to_string(lab.dir().join("c.db.admin-token")).unwrap();
    let admin = admin.trim();
    lab.exec_ok(
        lab.ns("col"),
        &[
            tapwire,
            "session",
            "create",
            "api1",
            "--encap",
            "erspan-ii",
            "--mirror-id",
            "200",
            "--token",
            admin,
        ],
    );
    wait_until(Duration::from_secs(10), "session api1", || {
        c.try_get("/api/v1/sessions/api1").map(|_| ())
    });
    let deleted = lab.dir().join("api1.pcapng");
    let stopped = lab.dir().join("web.pcapng");
    let mut s1 = lab.spawn(
        lab.ns("col"),
        &[tapwire, "stream", "api1", "-w", deleted.to_str().unwrap()],
    );
    let mut s2 = lab.spawn(
        lab.ns("col"),
        &[
            tapwire,
            "stream",
            "web",
            "udp",
            "-w",
            stopped.to_str().unwrap(),
        ],
    );
    wait_streams(&c, "api1", 1);
    wait_streams(&c, "web", 1);
    let snd = lab.ns("snd").to_string();
    let mut to_api1 = mirror("erspan-ii", 6, 0);
    to_api1.session_base = 200;
    to_api1.sources = 1;
    let a = senders::send_mirror(&lab, &snd, &to_api1, &lab.dir().join("a.pcap"), false);
    let b = senders::send_mirror(
        &lab,
        &snd,
        &mirror("erspan-iii", 6, 0),
        &lab.dir().join("b.pcap"),
        false,
    );
    c.wait_for_packets(&a.sources, Duration::from_secs(10));
    c.wait_for_packets(&b.sources, Duration::from_secs(10));
    // While the stream lives, a statistics block comes once a second (one source: one block
    // each time), counting what the stream got, and more of them while nothing flows.
    let live = || {
        let isbs = statistics(&deleted);
        let last = isbs.last()?.clone();
        (last["received"] == a.total() && last["delivered_to_user"] == a.total())
            .then_some(isbs.len())
    };
    let first = poll_until(Duration::from_secs(10), &live)
        .unwrap_or_else(|| panic!("no statistics while live: {:?}", statistics(&deleted)));
    std::thread::sleep(Duration::from_millis(2500));
    let later = live().expect("statistics while live");
    assert!(
        later >= first + 2,
        "{first} statistics blocks, then {later} 2.5 s later"
    );
    assert_eq!(validate_capture(&deleted), a.total());

    lab.exec_ok(
        lab.ns("col"),
        &[tapwire, "session", "delete", "api1", "--token", admin],
    );
    let status = s1
        .wait_timeout(Duration::from_secs(10))
        .expect("stream ends");
    assert_eq!(status.code(), Some(1), "{}", s1.stderr());
    // The reason comes in the stream (its last statistics blocks), not from asking the API.
    assert!(
        s1.stderr()
            .contains("the collector ended the stream of api1: the session was deleted"),
        "{}",
        s1.stderr()
    );
    assert_eq!(validate_capture(&deleted), a.total());
    assert!(!statistics(&deleted).is_empty());

    c.stop("TERM", STOP_WITHIN);
    let status = s2
        .wait_timeout(Duration::from_secs(10))
        .expect("stream ends");
    assert_eq!(status.code(), Some(1), "{}", s2.stderr());
    assert!(
        s2.stderr()
            .contains("the collector ended the stream of web: the collector is stopping"),
        "{}",
        s2.stderr()
    );
    let udp = validate_capture(&stopped);
    let files: Vec<PathBuf> = c.files_of("web");
    let all: u64 = files.iter().map(|f| validate_capture(f)).sum();
    assert_eq!(all, b.total());
    assert!(udp > 0 && udp < all, "the filter: {udp} of {all}");
    // The stream's last block is a statistics block (written as the collector stopped).
    let blocks = run_ok(Command::new("tshark").arg("-r").arg(&stopped).args([
        "-X",
        "read_format:MIME Files Format",
        "-T",
        "fields",
        "-e",
        "pcapng.block.type",
    ]));
    assert!(blocks.trim_end().ends_with("0x00000005"), "{blocks}");
    let text = run_ok(Command::new("tshark").arg("-r").arg(&stopped).args([
        "-X",
        "read_format:MIME Files Format",
        "-V",
    ]));
    let last = text.rsplit("Block: ").next().unwrap();
    assert!(
        last.starts_with("Interface Statistics Block")
            && last.contains("tapwire: the stream ended: the collector is stopping"),
        "{last}"
    );
}
