//! Real senders for the end-to-end tests, run inside a lab namespace: the scapy mirror sender
//! (`tests/senders/send_mirror.py`), tcprewrite + tcpreplay of public captures, and tcpdump as
//! the "what was on the wire" capture.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::netns::{COL_MAC, COL_V4, COL_V6, Lab, Proc, SND_MAC, wait_until};
use crate::oracle::{self, Frames, Key};
use crate::{require, run_ok, workspace_root};

/// What the scapy sender sent: the pcap of every frame (the oracle's input) and its count of
/// mirrored packets per source.
#[derive(Debug)]
pub struct Sent {
    pub pcap: PathBuf,
    pub frames: u64,
    pub sources: BTreeMap<Key, u64>,
}

impl Sent {
    pub fn total(&self) -> u64 {
        self.sources.values().sum()
    }

    /// tshark's decode of what was sent, each source's frames in order; checked against the
    /// sender's own count per source first.
    pub fn oracle(&self) -> Frames {
        let expected = oracle::mirrored_frames(&self.pcap);
        let counts: BTreeMap<Key, u64> = expected
            .iter()
            .map(|(k, v)| (k.clone(), v.len() as u64))
            .collect();
        assert_eq!(
            counts,
            self.sources,
            "send_mirror.py's summary disagrees with tshark's decode of {}",
            self.pcap.display()
        );
        expected
    }
}

/// Options of one run of the scapy sender.
#[derive(Debug, Clone)]
pub struct MirrorSend {
    /// "4", "6" or "4,6".
    pub families: String,
    /// Comma-separated kinds; empty: all.
    pub kinds: String,
    pub count: u32,
    /// First frame number (sequence numbers continue from it).
    pub start: u32,
    /// Every inner frame this long (0: the usual mix of sizes and protocols).
    pub size: u32,
    /// Only the first N sources of each family (0: all nine).
    pub sources: u32,
    pub session_base: u32,
    /// UDP checksum 0 over IPv6 (allowed for tunnels by RFC 6935).
    pub udp6_zero_checksum: bool,
    /// Instead of the usual sources: ERSPAN II sessions 0..N-1 from the x1 address.
    pub many_sessions: u32,
    /// Instead of the usual sources: the first fragments of N GRE datagrams from the x7 address
    /// whose other fragments never come.
    pub incomplete_fragments: u32,
    /// GRE-TEB carries a checksum: each source's first packet's, repeated on every packet
    /// while the sequence grows (Open vSwitch's userspace datapath with `csum=true`).
    pub gre_stale_checksum: bool,
    /// Outer source templates, `x` replaced by 1..6 (for example `10.77.0.1x`).
    pub src4: String,
    pub src6: String,
    pub dst4: String,
    pub dst6: String,
    pub dst_mac: String,
    pub iface: String,
}

impl Default for MirrorSend {
    fn default() -> Self {
        MirrorSend {
            families: "4,6".into(),
            kinds: String::new(),
            count: 30,
            start: 0,
            size: 0,
            sources: 0,
            session_base: 100,
            udp6_zero_checksum: false,
            many_sessions: 0,
            incomplete_fragments: 0,
            gre_stale_checksum: false,
            src4: "10.77.0.1x".into(),
            src6: "fd77::1x".into(),
            dst4: COL_V4.into(),
            dst6: COL_V6.into(),
            dst_mac: COL_MAC.into(),
            iface: "snd0".into(),
        }
    }
}

impl MirrorSend {
    /// `count` ERSPAN II packets from one IPv4 source.
    pub fn erspan_ii(count: u32) -> MirrorSend {
        MirrorSend {
            families: "4".into(),
            kinds: "erspan-ii".into(),
            count,
            sources: 1,
            ..MirrorSend::default()
        }
    }
}

pub fn send_mirror_script() -> PathBuf {
    workspace_root().join("tests/senders/send_mirror.py")
}

/// The send_mirror.py command line for `opts`, writing `pcap`.
fn mirror_args(opts: &MirrorSend, pcap: &Path) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "/usr/bin/python3".into(),
        send_mirror_script().to_string_lossy().into_owned(),
        "--iface".into(),
        opts.iface.clone(),
        "--dst-mac".into(),
        opts.dst_mac.clone(),
        "--src-mac".into(),
        SND_MAC.into(),
        "--src4".into(),
        opts.src4.clone(),
        "--dst4".into(),
        opts.dst4.clone(),
        "--src6".into(),
        opts.src6.clone(),
        "--dst6".into(),
        opts.dst6.clone(),
        "--families".into(),
        opts.families.clone(),
        "--count".into(),
        opts.count.to_string(),
        "--start".into(),
        opts.start.to_string(),
        "--size".into(),
        opts.size.to_string(),
        "--sources".into(),
        opts.sources.to_string(),
        "--session-base".into(),
        opts.session_base.to_string(),
        "--pcap".into(),
        pcap.to_string_lossy().into_owned(),
    ];
    if !opts.kinds.is_empty() {
        v.extend(["--kinds".into(), opts.kinds.clone()]);
    }
    if opts.udp6_zero_checksum {
        v.push("--udp6-zero-csum".into());
    }
    if opts.many_sessions > 0 {
        v.extend(["--many-sessions".into(), opts.many_sessions.to_string()]);
    }
    if opts.incomplete_fragments > 0 {
        v.extend([
            "--incomplete-fragments".into(),
            opts.incomplete_fragments.to_string(),
        ]);
    }
    if opts.gre_stale_checksum {
        v.push("--gre-stale-csum".into());
    }
    v
}

/// Runs the scapy sender in `ns` (or, with `dry_run`, only writes the pcap); `pcap` receives
/// exactly what it sent.
pub fn send_mirror(lab: &Lab, ns: &str, opts: &MirrorSend, pcap: &Path, dry_run: bool) -> Sent {
    require_scapy();
    let mut cmd = mirror_args(opts, pcap);
    if dry_run {
        cmd.push("--dry-run".into());
    }
    let out = lab.exec_ok(ns, &as_strs(&cmd));
    parse_summary(&out, pcap)
}

/// What [`flood`] wrote: frames in all, malformed ones, valid ones from the foreign source.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    pub frames: u64,
    pub malformed: u64,
    pub foreign: u64,
}

/// Writes (does not send) the flood set of send_mirror.py: malformed mirror packets of every
/// kind from the x1 source and valid ERSPAN II from the x6 source.
pub fn flood(lab: &Lab, ns: &str, opts: &MirrorSend, pcap: &Path) -> Flood {
    require_scapy();
    let mut cmd = mirror_args(opts, pcap);
    cmd.extend(["--flood".into(), "--dry-run".into()]);
    let out = lab.exec_ok(ns, &as_strs(&cmd));
    let v: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("send_mirror.py --flood summary ({e}): {out}"));
    let n = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("flood summary {k}: {v}"))
    };
    Flood {
        frames: n("frames"),
        malformed: n("malformed"),
        foreign: n("foreign"),
    }
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn parse_summary(out: &str, pcap: &Path) -> Sent {
    let v: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("send_mirror.py summary ({e}): {out}"));
    let mut sources = BTreeMap::new();
    for s in v["sources"].as_array().expect("sources") {
        sources.insert(
            (
                s["src"].as_str().expect("src").to_string(),
                s["kind"].as_str().expect("kind").to_string(),
                s["id"].as_u64().expect("id"),
            ),
            s["packets"].as_u64().expect("packets"),
        );
    }
    Sent {
        pcap: pcap.to_path_buf(),
        frames: v["frames"].as_u64().expect("frames"),
        sources,
    }
}

pub fn require_scapy() {
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", "import scapy.contrib.erspan"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "python3-scapy is required (/usr/bin/python3 -c 'import scapy'): run scripts/setup.sh"
    );
}

/// tcpdump writing everything on one interface to a file, packet-buffered; stop with
/// [`Tcpdump::stop`].
pub struct Tcpdump {
    proc: Proc,
    pub path: PathBuf,
}

impl Tcpdump {
    /// Starts tcpdump in `ns` on `iface` (`filter` in tcpdump syntax, may be empty) and waits
    /// until it is listening.
    pub fn start(lab: &Lab, ns: &str, iface: &str, path: &Path, filter: &str) -> Tcpdump {
        require("tcpdump");
        let mut cmd = vec![
            "tcpdump",
            "-i",
            iface,
            "-n",
            "-U",
            // Without it libpcap hands over packets only when a ring block fills or times out
            // (1 s), and a stop loses the ones in the open block.
            "--immediate-mode",
            "-s",
            "0",
            "-B",
            "8192",
            "-w",
            path.to_str().expect("utf-8"),
        ];
        if !filter.is_empty() {
            cmd.push(filter);
        }
        let proc = lab.spawn(ns, &cmd);
        wait_until(
            Duration::from_secs(10),
            &format!("tcpdump listening on {iface}"),
            || proc.stderr().contains("listening on").then_some(()),
        );
        Tcpdump {
            proc,
            path: path.to_path_buf(),
        }
    }

    /// Stops it (SIGINT) and returns how many packets it says it captured and dropped.
    pub fn stop(mut self) -> (u64, u64) {
        self.proc.signal("INT");
        self.proc
            .wait_timeout(Duration::from_secs(5))
            .expect("tcpdump exits on SIGINT");
        let err = self.proc.stderr();
        let count = |what: &str| {
            err.lines()
                .find(|l| l.ends_with(what))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (
            count("packets captured"),
            count("packets dropped by kernel"),
        )
    }
}

/// Rewrites a capture's outer headers so that it reaches the collector: every outer IPv4
/// destination becomes `dst4` and every source is moved into `src_net` (a /16, keeping the
/// host's low 16 bits, so senders stay distinct); IPv6 likewise into `src_net6` (a /64) and
/// `dst6`; MAC addresses become the lab link's; outer VLAN tags are removed; checksums are
/// recomputed. Inner frames are not touched (tcprewrite does not look inside tunnels).
pub fn rewrite_for_lab(input: &Path, output: &Path, src_net: &str, src_net6: &str) {
    require("tcprewrite");
    run_ok(
        Command::new("tcprewrite")
            .arg("-i")
            .arg(input)
            .arg("-o")
            .arg(output)
            .arg(format!(
                "--srcipmap=0.0.0.0/0:{src_net},[::/0]:[{src_net6}]"
            ))
            .arg(format!(
                "--dstipmap=0.0.0.0/0:{COL_V4}/32,[::/0]:[{COL_V6}/128]"
            ))
            .args([
                &format!("--enet-dmac={COL_MAC}"),
                &format!("--enet-smac={SND_MAC}"),
                "--enet-vlan=del",
                "--fixcsum",
            ]),
    );
}

/// Starts replaying `pcap` `loops` times out of `iface` in `ns` at `pps`; returns at once.
pub fn tcpreplay_loop(lab: &Lab, ns: &str, iface: &str, pcap: &Path, pps: u32, loops: u32) -> Proc {
    require("tcpreplay");
    lab.spawn(
        ns,
        &[
            "tcpreplay",
            "-q",
            // nanosleep between packets instead of spinning on the clock: the default timer
            // burns a whole core, which starves the collector and the other tests.
            "--timer=nano",
            "-i",
            iface,
            &format!("--pps={pps}"),
            &format!("--loop={loops}"),
            pcap.to_str().expect("utf-8"),
        ],
    )
}

/// Replays `pcap` out of `iface` in `ns` at `pps` packets per second; waits for it.
pub fn tcpreplay(lab: &Lab, ns: &str, iface: &str, pcap: &Path, pps: u32) -> String {
    require("tcpreplay");
    lab.exec_ok(
        ns,
        &[
            "tcpreplay",
            "-q",
            // nanosleep between packets instead of spinning on the clock: the default timer
            // burns a whole core, which starves the collector and the other tests.
            "--timer=nano",
            "-i",
            iface,
            &format!("--pps={pps}"),
            pcap.to_str().expect("utf-8"),
        ],
    )
}
