//! The oracle of packet retrieval: `tcpdump -r FILTER` over every capture file at
//! nanosecond precision, then `mergecap`, then the time range; and the comparison of a
//! query's answer with it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::collector::read_captures;
use crate::run_ok;

/// One packet as tshark reads it: nanoseconds since the epoch and the frame's bytes.
pub type Packet = (u64, Vec<u8>);

/// The packets of `files`, each file cut with `tcpdump -r FILE -w PART FILTER` at nanosecond
/// precision, the parts merged by `mergecap`, and then kept in `from_ns..=to_ns`.
pub fn tcpdump_mergecap(
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
pub fn packets(path: &Path) -> Vec<Packet> {
    let (frames, times) = read_captures(&[path.to_path_buf()]).pop().unwrap();
    times.into_iter().zip(frames).collect()
}

/// The query's answer is the oracle's: the same packets with the same timestamps, in time
/// order (mergecap's order up to packets with equal timestamps).
pub fn assert_same(what: &str, expected: &[Packet], got: &[Packet]) {
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
