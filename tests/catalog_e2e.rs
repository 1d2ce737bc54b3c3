//! The catalog of capture files (`GET /api/v1/files`) against the files on disk, with SQLite
//! and with PostgreSQL: a collector rotating by size, keeping 3 files per session
//! (`--max-files`), compressing each finished file (`--on-finish 'gzip "$1"'`), killed with
//! SIGKILL and started again; with PostgreSQL also while the database is stopped and started.
//! Every row must say what the file says: its packets are capinfos' count, its first and last
//! packet times tshark's, its bytes the file's size; deleted files are `deleted`; compressed
//! files are catalogued under their `.gz` name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tapwire_tests::collector::{Collector, read_captures};
use tapwire_tests::netns::{Lab, poll_until};
use tapwire_tests::oracle::Key;
use tapwire_tests::pg::{self, Pg};
use tapwire_tests::require;
use tapwire_tests::senders::{self, MirrorSend};

/// What the catalog said, once it agreed with the disk.
#[derive(Debug, Default)]
struct Seen {
    closed: usize,
    deleted: usize,
    open: usize,
    open_path: Option<String>,
    packets_closed: u64,
}

/// The session's capture files on disk (relative to `out`), a capture beside its compressed
/// copy (gzip at work) counted once.
fn on_disk(out: &Path, session: &str) -> BTreeSet<String> {
    let names: BTreeSet<String> = std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            n.starts_with(&format!("{session}_"))
                && (n.ends_with(".pcapng") || n.ends_with(".pcapng.gz"))
        })
        .collect();
    names
        .iter()
        .filter(|n| {
            !n.strip_suffix(".gz")
                .is_some_and(|plain| names.contains(plain))
        })
        .cloned()
        .collect()
}

/// Compares the catalog's rows of `session` with the files in `out`; `Err` says what does not
/// agree (yet: compression and the catalog's writes lag the files by up to a few seconds).
/// `plain`: the files that stay uncompressed (cut by a kill: no on-finish command ran).
fn agrees(
    c: &Collector<'_>,
    out: &Path,
    session: &str,
    plain: &BTreeSet<String>,
) -> Result<Seen, String> {
    let body = c
        .try_get(&format!("/api/v1/files?session={session}"))
        .ok_or("GET /api/v1/files failed")?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    assert_eq!(v["truncated"], false);
    let rows = v["files"]
        .as_array()
        .ok_or(format!("no files: {v}"))?
        .clone();
    let mut seen = Seen::default();
    let mut listed = BTreeSet::new();
    let mut counted: Vec<(PathBuf, &Value)> = Vec::new();
    for r in &rows {
        let path = r["path"].as_str().unwrap();
        assert!(
            !path.starts_with('/') && !path.split('/').any(|p| p == ".."),
            "a path relative to the output directory: {r}"
        );
        assert_eq!(r["collector"], NAME, "{r}");
        assert_eq!(r["session"], session, "{r}");
        let file = out.join(path);
        match r["state"].as_str().unwrap() {
            "deleted" => {
                if file.exists() {
                    return Err(format!("{path} is deleted in the catalog but on disk"));
                }
                seen.deleted += 1;
            }
            "open" => {
                if !file.exists() {
                    return Err(format!("{path} is open in the catalog but not on disk"));
                }
                listed.insert(path.to_string());
                seen.open += 1;
                seen.open_path = Some(path.to_string());
                // Its counters are refreshed about every second: compared like the others.
                counted.push((file, r));
            }
            "closed" => {
                // Every finished file is compressed: a plain one is being compressed.
                if !path.ends_with(".gz") && !plain.contains(path) {
                    return Err(format!("{path}: not compressed yet"));
                }
                if !file.exists() {
                    return Err(format!("{path} is closed in the catalog but not on disk"));
                }
                listed.insert(path.to_string());
                seen.closed += 1;
                counted.push((file, r));
            }
            s => panic!("state {s:?}: {r}"),
        }
    }
    let disk = on_disk(out, session);
    if disk != listed {
        return Err(format!(
            "on disk but not in the catalog (or not as a file that is there): {:?}; in the catalog only: {:?}",
            disk.difference(&listed).collect::<Vec<_>>(),
            listed.difference(&disk).collect::<Vec<_>>()
        ));
    }
    let files: Vec<PathBuf> = counted.iter().map(|(f, _)| f.clone()).collect();
    for ((file, r), (_, times)) in counted.iter().zip(read_captures(&files)) {
        // read_captures counts with capinfos -c and checks tshark reads as many.
        let want = (
            Some(times.len() as u64),
            times.iter().min().copied(),
            times.iter().max().copied(),
            Some(std::fs::metadata(file).unwrap().len()),
        );
        let got = (
            r["packets"].as_u64(),
            r["first_ns"].as_u64(),
            r["last_ns"].as_u64(),
            r["bytes"].as_u64(),
        );
        if got != want {
            return Err(format!(
                "{}: (packets, first_ns, last_ns, bytes) {got:?} in the catalog, {want:?} by capinfos, tshark and its size",
                file.display()
            ));
        }
        if r["state"] == "closed" {
            seen.packets_closed += times.len() as u64;
        }
    }
    Ok(seen)
}

/// Polls [`agrees`] until it holds and `enough` accepts what it saw.
fn wait_agrees(
    c: &Collector<'_>,
    out: &Path,
    session: &str,
    plain: &BTreeSet<String>,
    within: Duration,
    enough: impl Fn(&Seen) -> bool,
) -> Seen {
    let mut last = String::new();
    let got = poll_until(within, || match agrees(c, out, session, plain) {
        Ok(s) if enough(&s) => Some(s),
        Ok(s) => {
            last = format!("agrees, but not yet as expected: {s:?}");
            None
        }
        Err(e) => {
            last = e;
            None
        }
    });
    got.unwrap_or_else(|| {
        panic!(
            "the catalog does not agree with {} within {within:?}: {last}\n{}",
            out.display(),
            c.proc.stderr()
        )
    })
}

const NAME: &str = "cat1";

fn start<'l>(lab: &'l Lab, out: &Path, db: &str) -> Collector<'l> {
    let col = lab.ns("col").to_string();
    Collector::start(
        lab,
        &col,
        out,
        &[
            "--db",
            db,
            "--name",
            NAME,
            "--rotate-size",
            "4KiB",
            "--max-files",
            "3",
            "--on-finish",
            "gzip \"$1\"",
        ],
    )
}

/// Sends `count` ERSPAN II packets of one source (frame numbers from `start`) and waits until
/// the collector has written `total` of them (its count since it started).
fn send(lab: &Lab, c: &Collector<'_>, start: u32, count: u32, total: u64) {
    let opts = MirrorSend {
        start,
        ..MirrorSend::erspan_ii(count)
    };
    let snd = lab.ns("snd").to_string();
    let sent = senders::send_mirror(
        lab,
        &snd,
        &opts,
        &lab.dir().join(format!("sent{start}.pcap")),
        false,
    );
    assert_eq!(sent.total(), u64::from(count));
    let expected: BTreeMap<Key, u64> = sent.sources.keys().map(|k| (k.clone(), total)).collect();
    c.wait_for_packets(&expected, Duration::from_secs(20));
    c.wait_written(Duration::from_secs(10));
}

fn session_of(c: &Collector<'_>) -> String {
    let api = c.sessions();
    let s = api["sessions"].as_array().unwrap();
    assert_eq!(s.len(), 1, "{api}");
    s[0]["name"].as_str().unwrap().to_string()
}

/// Rotation, `max_files`, gzip and `kill -9`, checked against the disk after each step;
/// returns the running collector for more.
fn rotate_delete_compress_and_kill<'l>(lab: &'l Lab, out: &Path, db: &str) -> Collector<'l> {
    for tool in ["tshark", "capinfos", "captype", "mergecap", "gzip"] {
        require(tool);
    }
    let mut c = start(lab, out, db);
    // About 30 packets per 4 KiB file: several files, the oldest removed by max_files.
    send(lab, &c, 0, 200, 200);
    let session = session_of(&c);
    let none = BTreeSet::new();
    let s = wait_agrees(&c, out, &session, &none, Duration::from_secs(20), |s| {
        s.open == 1 && s.closed == 2 && s.deleted >= 2
    });
    eprintln!("running: {s:?}");
    let cut: BTreeSet<String> = s.open_path.into_iter().collect();

    // Killed: the open file stays open in the catalog until the next start says what it holds.
    c.proc.signal("KILL");
    assert!(c.proc.wait_timeout(Duration::from_secs(10)).is_some());
    // The on-finish commands it started finish on their own; its lease in the fleet (6 s)
    // runs out before the same --name may start again.
    std::thread::sleep(Duration::from_secs(7));
    let c = start(lab, out, db);
    // The file open at the kill is closed, with what it holds on disk (not compressed: no
    // on-finish command ran for it).
    let s = wait_agrees(&c, out, &session, &cut, Duration::from_secs(20), |s| {
        s.open == 0 && s.closed == 3
    });
    eprintln!("after kill -9 and restart: {s:?}");
    send(lab, &c, 200, 120, 120);
    let s = wait_agrees(&c, out, &session, &cut, Duration::from_secs(20), |s| {
        s.open == 1 && s.closed == 2
    });
    eprintln!("after more traffic: {s:?}");
    c
}

#[test]
fn the_catalog_follows_rotation_deletion_compression_and_kill_with_sqlite() {
    let lab = Lab::new("catalog-sqlite");
    let out = lab.dir().join("out");
    let db = lab.dir().join("control.db");
    let mut c = rotate_delete_compress_and_kill(&lab, &out, db.to_str().unwrap());
    c.stop("TERM", Duration::from_secs(10));
}

#[test]
fn the_catalog_follows_rotation_deletion_compression_kill_and_an_absent_database_with_postgres() {
    let Some(pg) = Pg::start("catalog") else {
        return;
    };
    let lab = Lab::new("catalog-pg");
    let out = lab.dir().join("out");
    // libpq's keyword form, over the Unix socket the collector's namespace reaches.
    let db = format!(
        "host={} port={} user={} password={} dbname={}",
        pg.socket_dir().display(),
        pg.port(),
        pg::ROLE,
        pg::PASSWORD,
        pg.database("catalog")
    );
    let mut c = rotate_delete_compress_and_kill(&lab, &out, &db);
    let session = session_of(&c);

    // The database stops while files rotate, are compressed and removed; capture goes on.
    pg.stop();
    send(&lab, &c, 320, 200, 320);
    let health = c.get_json("/api/v1/health");
    assert_eq!(health["control"], "disconnected", "{health}");
    // The files' changes wait, one per file.
    assert!(health["catalog"]["pending"].as_u64() > Some(0), "{health}");
    assert_eq!(health["catalog"]["overflowed"], 0, "{health}");
    let missing = on_disk(&out, &session);
    pg.restart();
    // No manual step: the catalog catches up by itself.
    let s = wait_agrees(
        &c,
        &out,
        &session,
        &BTreeSet::new(),
        Duration::from_secs(30),
        |s| s.open == 1 && s.closed == 2,
    );
    eprintln!("after the database came back: {s:?} (files on disk while it was away: {missing:?})");
    let health = c.get_json("/api/v1/health");
    assert_eq!(health["catalog"]["pending"], 0, "{health}");
    c.stop("TERM", Duration::from_secs(10));
}
