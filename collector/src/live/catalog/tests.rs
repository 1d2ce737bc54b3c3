use std::sync::Mutex;

use tapwire_formats::capture::{Encoder, Format, InterfaceInfo, LinkType, PacketInfo};

use super::*;

fn put(path: &str, packets: u64, state: FileState, at: i64) -> CatalogChange {
    CatalogChange::Put(CatalogFile {
        collector: String::new(),
        session: "web".into(),
        path: path.into(),
        first_ns: Some(10),
        last_ns: Some(10 + packets as i64),
        packets,
        bytes: 100 * packets,
        state,
        updated_ns: at,
    })
}

fn mark(path: &str, at: i64) -> CatalogChange {
    CatalogChange::Mark {
        path: path.into(),
        state: FileState::Deleted,
        at_ns: at,
    }
}

fn remove(path: &str) -> CatalogChange {
    CatalogChange::Remove { path: path.into() }
}

#[test]
fn pending_keeps_the_latest_change_of_each_file() {
    let mut p = Pending::new(10);
    assert!(p.push(put("a", 1, FileState::Open, 1)));
    assert!(p.push(put("a", 5, FileState::Open, 2)));
    assert!(p.push(put("a", 9, FileState::Closed, 3)));
    // Deleted afterwards: the packets of the last put stay.
    assert!(p.push(mark("a", 4)));
    assert!(p.push(put("b", 2, FileState::Open, 5)));
    // Renamed away: no row to mark.
    assert!(p.push(remove("b")));
    assert!(p.push(mark("b", 6)));
    assert_eq!(p.len(), 2);
    let mut a = put("a", 9, FileState::Deleted, 4);
    if let CatalogChange::Put(f) = &mut a {
        f.updated_ns = 4;
    }
    assert_eq!(p.take(10), vec![a, remove("b")]);
    assert!(p.is_empty());
}

#[test]
fn pending_is_bounded_and_counts_what_it_drops() {
    let mut p = Pending::new(2);
    assert!(p.push(put("a", 1, FileState::Open, 1)));
    assert!(p.push(put("b", 1, FileState::Open, 1)));
    assert!(!p.push(put("c", 1, FileState::Open, 1)));
    assert_eq!((p.len(), p.overflowed), (2, 1));
    // A file already waiting still takes its newer state.
    assert!(p.push(put("a", 7, FileState::Closed, 2)));
    assert_eq!((p.len(), p.overflowed), (2, 1));
}

#[test]
fn a_batch_that_failed_goes_back_under_the_changes_that_came_since() {
    let mut p = Pending::new(10);
    p.push(put("a", 1, FileState::Open, 1));
    p.push(put("b", 1, FileState::Closed, 1));
    let failed = p.take(10);
    // Meanwhile: "a" was closed with more packets, "b" deleted by max_files.
    p.push(put("a", 3, FileState::Closed, 2));
    p.push(mark("b", 3));
    p.restore(failed);
    let got = p.take(10);
    let mut b = put("b", 1, FileState::Deleted, 3);
    if let CatalogChange::Put(f) = &mut b {
        f.updated_ns = 3;
    }
    assert_eq!(got, vec![put("a", 3, FileState::Closed, 2), b]);
}

fn stored(path: &str, state: FileState) -> CatalogFile {
    match put(path, 1, state, 1) {
        CatalogChange::Put(f) => f,
        _ => unreachable!(),
    }
}

fn on_disk(path: &str) -> OnDisk {
    OnDisk {
        path: path.into(),
        session: "web".into(),
    }
}

#[test]
fn reconcile_plan_closes_the_left_open_deletes_the_gone_and_adds_the_unknown() {
    let rows = vec![
        // Open when the last process died; its file is there.
        stored("web_1.pcapng", FileState::Open),
        // Closed, and gone since (removed while the collector was down).
        stored("web_2.pcapng", FileState::Closed),
        // Open and gone.
        stored("web_3.pcapng", FileState::Open),
        // Already deleted: nothing to do.
        stored("web_4.pcapng", FileState::Deleted),
        // Closed and there: nothing to do.
        stored("web_5.pcapng", FileState::Closed),
        // Being written by this process: its events tell.
        stored("web_6.pcapng", FileState::Open),
    ];
    let disk = vec![
        on_disk("web_1.pcapng"),
        on_disk("web_5.pcapng"),
        on_disk("web_6.pcapng"),
        on_disk("sub/web_7.pcapng.gz"),
        on_disk("web_8.pcapng"),
    ];
    let open: HashSet<String> = ["web_6.pcapng".to_string(), "web_8.pcapng".to_string()].into();
    let restat = |p: &str| Fix::Restat {
        path: p.into(),
        session: "web".into(),
    };
    let delete = |p: &str| Fix::Delete { path: p.into() };
    let (fixes, skipped) = plan(&rows, &disk, &open, 100);
    assert_eq!(
        fixes,
        vec![
            delete("web_2.pcapng"),
            delete("web_3.pcapng"),
            restat("web_1.pcapng"),
            restat("sub/web_7.pcapng.gz"),
        ]
    );
    assert_eq!(skipped, 0);
    // Bounded: the files to read past the limit wait; deletions cost nothing and all go.
    let (fixes, skipped) = plan(&rows, &disk, &open, 1);
    assert_eq!(
        fixes,
        vec![
            delete("web_2.pcapng"),
            delete("web_3.pcapng"),
            restat("web_1.pcapng")
        ]
    );
    assert_eq!(skipped, 1);
}

#[test]
fn only_plain_relative_paths_beneath_the_root_are_catalogued() {
    let root = Path::new("/srv/cap");
    assert_eq!(
        relative(root, Path::new("/srv/cap/web_1.pcapng")).as_deref(),
        Some("web_1.pcapng")
    );
    assert_eq!(
        relative(root, Path::new("/srv/cap/s/web_1.pcapng")).as_deref(),
        Some("s/web_1.pcapng")
    );
    assert_eq!(relative(root, Path::new("/srv/other/web_1.pcapng")), None);
    assert_eq!(
        relative(root, Path::new("/srv/cap/../x/web_1.pcapng")),
        None
    );
    assert_eq!(relative(root, Path::new("/srv/cap")), None);
}

/// A store that can be taken away, as the catalog thread sees it.
#[derive(Clone, Default)]
struct FakeStore(Arc<Mutex<(bool, BTreeMap<String, CatalogFile>)>>);

impl FakeStore {
    fn set_up(&self, up: bool) {
        self.0.lock().unwrap().0 = up;
    }

    fn rows_now(&self) -> BTreeMap<String, CatalogFile> {
        self.0.lock().unwrap().1.clone()
    }
}

impl Sink for FakeStore {
    fn write(&self, changes: &[CatalogChange]) -> Result<(), StoreError> {
        let mut g = self.0.lock().unwrap();
        if !g.0 {
            return Err(StoreError::Unavailable("down".into()));
        }
        for c in changes {
            match c {
                CatalogChange::Put(f) => {
                    g.1.insert(f.path.clone(), f.clone());
                }
                CatalogChange::Mark { path, state, at_ns } => {
                    if let Some(f) = g.1.get_mut(path) {
                        f.state = *state;
                        f.updated_ns = *at_ns;
                    }
                }
                CatalogChange::Remove { path } => {
                    g.1.remove(path);
                }
            }
        }
        Ok(())
    }

    fn rows(&self) -> Result<Vec<CatalogFile>, StoreError> {
        let g = self.0.lock().unwrap();
        if !g.0 {
            return Err(StoreError::Unavailable("down".into()));
        }
        Ok(g.1.values().cloned().collect())
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("tapwire-catalog-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pcapng capture of `times` (one 60-byte frame each).
fn capture(path: &Path, times: &[u64]) {
    let mut enc = Encoder::new(Format::Pcapng);
    let iface = enc
        .add_interface(&InterfaceInfo {
            link: LinkType::Ethernet,
            name: "test".into(),
            description: String::new(),
            snaplen: 65535,
        })
        .unwrap();
    let frame = [0u8; 60];
    for &ts_ns in times {
        enc.packet(
            iface,
            &PacketInfo {
                ts_ns,
                orig_len: 60,
                data: &frame,
                direction: None,
                comment: None,
            },
        )
        .unwrap();
    }
    std::fs::write(path, enc.into_buffer()).unwrap();
}

fn event(root: &Path, name: &str, packets: u64, state: FileState) -> FileEvent {
    let mut stats = FileStats::default();
    stats.add(packets, Some((100, 100 + packets)));
    FileEvent::Now {
        path: root.join(name),
        session: "web".into(),
        stats,
        state,
    }
}

/// While the database is away events pile up as one change per file; once it is back, the
/// thread reconciles with the directory and writes the latest state of each, by itself.
#[test]
fn the_thread_catches_up_when_the_database_comes_back() {
    let dir = TempDir::new("catch-up");
    let root = dir.0.clone();
    // Left open by a process that died: three packets on disk.
    let t0 = 1_700_000_000_000_000_000u64;
    capture(
        &root.join("web_20231114T221320.000Z.pcapng"),
        &[t0 + 5, t0, t0 + 9],
    );
    // Deleted while nobody watched.
    let store = FakeStore::default();
    store.set_up(true);
    store
        .write(&[
            put("web_20231114T221320.000Z.pcapng", 1, FileState::Open, 1),
            put("web_20231114T000000.000Z.pcapng", 4, FileState::Closed, 1),
        ])
        .unwrap();
    store.set_up(false);
    let (tx, rx, counters) = channel();
    let thread = spawn(store.clone(), rx, root.clone(), Arc::clone(&counters)).unwrap();
    for n in 1..=50 {
        tx.send(event(
            &root,
            "web_20231114T221321.000Z.pcapng",
            n,
            FileState::Open,
        ));
    }
    tx.send(event(
        &root,
        "web_20231114T221321.000Z.pcapng",
        60,
        FileState::Closed,
    ));
    tx.send(FileEvent::Deleted {
        path: root.join("web_20231114T221321.000Z.pcapng"),
    });
    tx.send(event(
        &root,
        "web_20231114T221322.000Z.pcapng",
        3,
        FileState::Open,
    ));
    // Outside the root: never stored.
    tx.send(event(
        Path::new("/elsewhere"),
        "web_x.pcapng",
        3,
        FileState::Open,
    ));
    wait_for("two files pending", || {
        counters.pending.load(Ordering::Relaxed) == 2
    });
    assert_eq!(counters.unrooted.load(Ordering::Relaxed), 1);
    assert_eq!(store.rows_now().len(), 2, "nothing written while away");
    store.set_up(true);
    wait_for("the catalog caught up", || {
        counters.pending.load(Ordering::Relaxed) == 0 && store.rows_now().len() == 4
    });
    let rows = store.rows_now();
    let left = &rows["web_20231114T221320.000Z.pcapng"];
    assert_eq!(left.state, FileState::Closed);
    assert_eq!(left.packets, 3);
    assert_eq!(
        (left.first_ns, left.last_ns),
        (Some(t0 as i64), Some(t0 as i64 + 9))
    );
    let len = std::fs::metadata(root.join("web_20231114T221320.000Z.pcapng"))
        .unwrap()
        .len();
    assert_eq!(left.bytes, len);
    assert_eq!(
        rows["web_20231114T000000.000Z.pcapng"].state,
        FileState::Deleted
    );
    let gone = &rows["web_20231114T221321.000Z.pcapng"];
    assert_eq!((gone.state, gone.packets), (FileState::Deleted, 60));
    let open = &rows["web_20231114T221322.000Z.pcapng"];
    assert_eq!((open.state, open.packets), (FileState::Open, 3));
    assert_eq!(counters.overflowed.load(Ordering::Relaxed), 0);
    drop(tx);
    thread.join().unwrap();
}
