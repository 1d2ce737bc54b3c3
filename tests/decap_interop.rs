//! Interop: for every public capture, the inner frames `tapwire decap` writes are byte-identical
//! to the ones tshark decodes from the same input, source by source and in order, and
//! captures without mirror traffic produce no session files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tapwire_tests::tshark;
use tapwire_tests::{TempDir, bin, capture_files, captures_dir, require, run_ok, validate_capture};

use tapwire_tests::oracle::{Key, mirrored_frames as oracle};

/// What `tapwire decap` wrote, grouped by source, read back with tshark.
fn tapwire(input: &Path, dir: &Path) -> (BTreeMap<Key, Vec<Vec<u8>>>, Value) {
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
        let key = (
            s["src"].as_str().unwrap().to_string(),
            s["kind"].as_str().unwrap().to_string(),
            s["id"].as_u64().unwrap(),
        );
        let file = Path::new(s["file"].as_str().expect("file"));
        let n = validate_capture(file);
        let frames: Vec<Vec<u8>> = tshark::packets(file)
            .iter()
            .map(tshark::frame_bytes)
            .collect();
        assert_eq!(n, frames.len() as u64);
        assert_eq!(
            s["packets"].as_u64(),
            Some(n),
            "{key:?}: report and file disagree"
        );
        got.insert(key, frames);
    }
    (got, report)
}

#[test]
fn inner_frames_match_tshark_for_every_public_capture() {
    let Some(dir) = captures_dir() else { return };
    require("captype");
    let mut checked = 0;
    let mut with_mirror = 0;
    for input in capture_files(&dir) {
        let tmp = TempDir::new("interop");
        let expected = oracle(&input);
        let (got, report) = tapwire(&input, tmp.path());
        let name = input.strip_prefix(&dir).unwrap().display().to_string();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{name}: sources differ from tshark's"
        );
        for (key, frames) in &expected {
            let ours = &got[key];
            assert_eq!(
                ours.len(),
                frames.len(),
                "{name} {key:?}: packet count differs from tshark's"
            );
            for (n, (a, b)) in ours.iter().zip(frames).enumerate() {
                assert!(
                    a == b,
                    "{name} {key:?} packet {n}: inner frame differs\n ours {}\n tshark {}",
                    hex::encode(a),
                    hex::encode(b)
                );
            }
        }
        if expected.is_empty() {
            let files = std::fs::read_dir(tmp.path()).unwrap().count();
            assert_eq!(
                files, 0,
                "{name}: no mirror traffic, yet session files were written"
            );
            assert_eq!(report["totals"]["decapsulated"], 0);
        } else {
            with_mirror += 1;
        }
        checked += 1;
        eprintln!(
            "{name}: {} sources, {} frames match",
            expected.len(),
            expected.values().map(Vec::len).sum::<usize>()
        );
    }
    assert!(
        checked >= 30,
        "only {checked} captures found in {}",
        dir.display()
    );
    assert!(
        with_mirror >= 15,
        "only {with_mirror} captures carried mirror traffic"
    );
}

#[test]
fn two_senders_with_one_session_id_stay_apart() {
    let Some(dir) = captures_dir() else { return };
    let tmp = TempDir::new("ii2");
    let (_, report) = tapwire(&dir.join("tcpdump/erspan-type-ii-2.pcap"), tmp.path());
    let sources = report["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 2);
    let srcs: Vec<&str> = sources.iter().map(|s| s["src"].as_str().unwrap()).collect();
    assert_eq!(srcs, ["192.168.195.67", "192.168.195.73"]);
    for s in sources {
        assert_eq!(s["id"], 1);
        assert_eq!(s["kind"], "erspan-ii");
        assert_eq!(s["packets"], 8);
        assert_eq!(s["lost"], 0);
        assert_eq!(s["sequence"], "per-source");
    }
}

#[test]
fn contiguous_and_unnumbered_sequences_report_no_loss() {
    let Some(dir) = captures_dir() else { return };
    let tmp = TempDir::new("seq");
    // Contiguous 106954-107061.
    let (_, r) = tapwire(&dir.join("tcpdump/erspan-type-ii-3.pcap"), tmp.path());
    assert_eq!(r["sources"][0]["packets"], 108);
    assert_eq!(r["sources"][0]["lost"], 0);
    assert_eq!(r["sources"][0]["sequence"], "per-source");
    // Sequence always 0: "no sequence", not loss.
    let tmp = TempDir::new("seq0");
    let (_, r) = tapwire(&dir.join("arkime/gre-erspan-vxlan.pcap"), tmp.path());
    assert_eq!(r["sources"][0]["sequence"], "none");
    assert_eq!(r["sources"][0]["lost"], 0);
}

#[test]
fn non_mirror_traffic_is_counted_by_kind() {
    let Some(dir) = captures_dir() else { return };
    let tmp = TempDir::new("nonmirror");
    let (_, r) = tapwire(&dir.join("tcpdump/erspan-type-i-4.pcap"), tmp.path());
    let t = &r["totals"];
    assert_eq!(t["packets_read"], 119);
    assert_eq!(t["decapsulated"], 88);
    let not_mirror: u64 = t["not_mirror"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(not_mirror, 119 - 88);
    assert!(t["not_mirror"]["gre_l3"].as_u64().unwrap() > 0);

    let tmp = TempDir::new("malformed");
    let (_, r) = tapwire(&dir.join("tcpdump/erspan-type-iii-pb-1.pcap"), tmp.path());
    assert_eq!(r["totals"]["malformed"]["ipv6_truncated"], 1);
}

#[test]
fn outer_fragments_are_reassembled() {
    let Some(dir) = captures_dir() else { return };
    let tmp = TempDir::new("frag");
    let (_, r) = tapwire(&dir.join("zeek/erspan.pcap"), tmp.path());
    let t = &r["totals"];
    assert_eq!(t["packets_read"], 287);
    assert_eq!(t["decapsulated"], 248);
    assert_eq!(t["defrag"]["reassembled"], 16);
    assert_eq!(t["defrag"]["incomplete_at_end"], 0);
}
