//! The catalog of capture files (with `--db`): a row per file this collector writes, in the
//! store the fleet shares, kept true through rotation, `max_files` deletion, on-finish
//! compression and restarts. Packet retrieval reads it to find a session's files.
//!
//! The disk thread, which opens, writes, closes and removes the files, tells of each change
//! with a small [`FileEvent`] over a bounded channel ([`CatalogTx`]; a full channel drops the
//! event, counts it and asks for a reconcile). The catalog thread turns events into row
//! changes, keeps only the latest per file ([`Pending`], bounded and counted) and writes them
//! through the controller, so the data path never waits for the database; while the database
//! is away they wait and are written on reconnection. Open files' counters are refreshed by
//! the disk thread about once a second, not per packet.
//!
//! At start (and after an overflow) it reconciles the rows with the output directory
//! ([`plan`], a pure function of the rows and a listing): rows left `open` by a process that
//! died become `closed` with their packets counted from the file's index (or a scan), rows of
//! files that are gone become `deleted`, and capture files the catalog lacks are added. Paths
//! are relative to the output root (`--out`); a path read from the database is only ever
//! compared with the listing, never opened.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use tapwire_control::CatalogChange;
use tapwire_control::store::{CatalogFile, FileState, StoreError};

use super::engine::now_ns;
use crate::query::catalog::{FileRef, session_of};

/// Events the channel from the disk thread holds before it drops (and counts) them.
pub const CHANNEL_EVENTS: usize = 4096;
/// Files whose latest change waits for the database, at most; past it changes are dropped,
/// counted, and a reconcile follows the reconnection.
pub const MAX_PENDING: usize = 65_536;
/// Row changes per transaction.
const BATCH: usize = 1000;
/// Files a reconcile reads the packets of (index or scan), at most; the rest wait for the
/// next start.
const MAX_SCANS: usize = 10_000;
/// Entries a reconcile lists beneath the output root, at most, and how deep.
const MAX_LISTED: usize = 200_000;
const MAX_DEPTH: usize = 4;
/// After a failed write, wait this long before trying again.
const RETRY: Duration = Duration::from_secs(1);

/// What a capture file holds so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileStats {
    /// Capture time of its earliest and latest packet.
    pub first_ns: Option<u64>,
    pub last_ns: Option<u64>,
    pub packets: u64,
    /// Bytes of the file.
    pub bytes: u64,
}

impl FileStats {
    /// Counts `packets` more, their times within `ts` (earliest, latest).
    pub fn add(&mut self, packets: u64, ts: Option<(u64, u64)>) {
        self.packets += packets;
        if let Some((lo, hi)) = ts {
            self.first_ns = Some(self.first_ns.map_or(lo, |f| f.min(lo)));
            self.last_ns = Some(self.last_ns.map_or(hi, |l| l.max(hi)));
        }
    }
}

/// What the disk thread tells of a file.
#[derive(Debug, Clone, PartialEq)]
pub enum FileEvent {
    /// The file as it is now.
    Now {
        path: PathBuf,
        session: Arc<str>,
        stats: FileStats,
        state: FileState,
    },
    /// Removed (`max_files`, or an on-finish command moved it away): its row keeps what it
    /// says of the packets.
    Deleted { path: PathBuf },
    /// Gone without being a capture of its own: renamed (compressed, the new name follows as
    /// [`FileEvent::Now`]), or removed because nothing could be written to it.
    Dropped { path: PathBuf },
}

/// The catalog's counters, shared with the API.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events dropped: the channel or the pending map was full.
    pub overflowed: AtomicU64,
    /// Files whose change waits for the database.
    pub pending: AtomicU64,
    /// Files outside the output root, not catalogued.
    pub unrooted: AtomicU64,
    /// An event was dropped: reconcile with the directory before going on.
    resync: AtomicBool,
}

impl Counters {
    pub fn backlog(&self) -> tapwire_api_types::control::CatalogBacklog {
        tapwire_api_types::control::CatalogBacklog {
            pending: self.pending.load(Ordering::Relaxed),
            overflowed: self.overflowed.load(Ordering::Relaxed),
        }
    }
}

/// The disk thread's end of the channel: never blocks.
#[derive(Debug, Clone)]
pub struct CatalogTx {
    tx: Sender<FileEvent>,
    counters: Arc<Counters>,
}

impl CatalogTx {
    pub fn send(&self, e: FileEvent) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(e) {
            self.counters.overflowed.fetch_add(1, Ordering::Relaxed);
            self.counters.resync.store(true, Ordering::Relaxed);
        }
    }
}

/// A bounded channel for the disk thread's events, and the counters both ends share.
pub fn channel() -> (CatalogTx, Receiver<FileEvent>, Arc<Counters>) {
    let (tx, rx) = crossbeam_channel::bounded(CHANNEL_EVENTS);
    let counters = Arc::new(Counters::default());
    (
        CatalogTx {
            tx,
            counters: Arc::clone(&counters),
        },
        rx,
        counters,
    )
}

fn path_of(c: &CatalogChange) -> &str {
    match c {
        CatalogChange::Put(f) => &f.path,
        CatalogChange::Mark { path, .. } | CatalogChange::Remove { path } => path,
    }
}

/// `old` followed by `new`, as one change.
fn merge(old: &CatalogChange, new: CatalogChange) -> CatalogChange {
    match (old, new) {
        // The state changes; what the row says of the packets is the last put's.
        (CatalogChange::Put(f), CatalogChange::Mark { state, at_ns, .. }) => {
            CatalogChange::Put(CatalogFile {
                state,
                updated_ns: at_ns,
                ..f.clone()
            })
        }
        // No row to mark.
        (CatalogChange::Remove { .. }, CatalogChange::Mark { .. }) => old.clone(),
        (_, new) => new,
    }
}

/// Row changes not yet written: the latest of each file, at most `max` files.
#[derive(Debug)]
pub struct Pending {
    changes: BTreeMap<String, CatalogChange>,
    max: usize,
    /// Changes dropped because `max` files were waiting.
    pub overflowed: u64,
}

impl Pending {
    pub fn new(max: usize) -> Pending {
        Pending {
            changes: BTreeMap::new(),
            max,
            overflowed: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Adds `c`, folded into the file's waiting change; false (counted) when `max` other files
    /// wait.
    pub fn push(&mut self, c: CatalogChange) -> bool {
        if let Some(old) = self.changes.get_mut(path_of(&c)) {
            *old = merge(old, c);
            return true;
        }
        if self.changes.len() >= self.max {
            self.overflowed += 1;
            return false;
        }
        self.changes.insert(path_of(&c).to_string(), c);
        true
    }

    /// Up to `n` changes to write.
    pub fn take(&mut self, n: usize) -> Vec<CatalogChange> {
        let keys: Vec<String> = self.changes.keys().take(n).cloned().collect();
        keys.iter().filter_map(|k| self.changes.remove(k)).collect()
    }

    /// Puts back changes that could not be written, before those that came since.
    pub fn restore(&mut self, batch: Vec<CatalogChange>) {
        for c in batch {
            match self.changes.remove(path_of(&c)) {
                Some(newer) => {
                    let merged = merge(&c, newer);
                    self.changes.insert(path_of(&merged).to_string(), merged);
                }
                None => {
                    self.push(c);
                }
            }
        }
    }
}

/// A capture file found beneath the output root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnDisk {
    /// Relative to the root.
    pub path: String,
    pub session: String,
}

/// What a reconcile does to one file's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fix {
    /// Count its packets from its index (or a scan) and store it `closed`.
    Restat { path: String, session: String },
    /// It is gone: `deleted`.
    Delete { path: String },
}

/// The fixes that make `rows` (this collector's) agree with the capture files on `disk`;
/// files being written now (`open_now`) are the disk thread's to report. At most `max_scans`
/// restats; the number left out is returned too.
pub fn plan(
    rows: &[CatalogFile],
    disk: &[OnDisk],
    open_now: &HashSet<String>,
    max_scans: usize,
) -> (Vec<Fix>, usize) {
    let on_disk: HashMap<&str, &OnDisk> = disk.iter().map(|d| (d.path.as_str(), d)).collect();
    let known: HashSet<&str> = rows.iter().map(|r| r.path.as_str()).collect();
    let mut fixes = Vec::new();
    let mut restats = Vec::new();
    for r in rows.iter().filter(|r| !open_now.contains(&r.path)) {
        match (on_disk.contains_key(r.path.as_str()), r.state) {
            (true, FileState::Closed) => {}
            (true, _) => restats.push(Fix::Restat {
                path: r.path.clone(),
                session: r.session.clone(),
            }),
            (false, FileState::Deleted) => {}
            (false, _) => fixes.push(Fix::Delete {
                path: r.path.clone(),
            }),
        }
    }
    for d in disk {
        if !known.contains(d.path.as_str()) && !open_now.contains(&d.path) {
            restats.push(Fix::Restat {
                path: d.path.clone(),
                session: d.session.clone(),
            });
        }
    }
    let skipped = restats.len().saturating_sub(max_scans);
    restats.truncate(max_scans);
    fixes.extend(restats);
    (fixes, skipped)
}

/// The capture files beneath `root` (sessions' names, `.pcap`/`.pcapng`, maybe `.gz`), at
/// most `max` entries looked at, `depth` directories deep, symlinks not followed. A capture
/// beside its compressed copy (a compression at work, or cut by a crash) counts as the capture.
pub fn list(root: &Path, max: usize, depth: usize) -> Vec<OnDisk> {
    let mut found = Vec::new();
    let mut seen = 0usize;
    let mut dirs = vec![(PathBuf::new(), 0usize)];
    while let Some((rel, d)) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(root.join(&rel)) else {
            continue;
        };
        let mut names = HashSet::new();
        let mut here = Vec::new();
        for e in rd.flatten() {
            seen += 1;
            if seen > max {
                tracing::warn!(root = %root.display(), max, "catalog: too many entries beneath the output root; the rest is not reconciled");
                break;
            }
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() && d < depth {
                dirs.push((rel.join(&name), d + 1));
            } else if t.is_file()
                && let Some(session) = session_of(&name)
            {
                here.push((name.clone(), session.to_string()));
                names.insert(name);
            }
        }
        for (name, session) in here {
            if name
                .strip_suffix(".gz")
                .is_some_and(|plain| names.contains(plain))
            {
                continue;
            }
            if let Some(path) = rel.join(&name).to_str() {
                found.push(OnDisk {
                    path: path.to_string(),
                    session,
                });
            }
        }
        if seen > max {
            break;
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

/// What the capture at `path` holds: its index, completed by a scan.
pub fn stat(path: &Path, session: &str) -> io::Result<FileStats> {
    let bytes = std::fs::metadata(path)?.len();
    let ix = crate::query::indexed::load(&FileRef {
        collector: None,
        session: Some(session.to_string()),
        path: path.to_path_buf(),
        first_ns: None,
        last_ns: None,
        live: false,
    })?;
    let mut s = FileStats {
        bytes,
        ..FileStats::default()
    };
    for r in ix.ranges.iter().filter(|r| r.n_packets > 0) {
        s.add(u64::from(r.n_packets), Some((r.ts_min_ns, r.ts_max_ns)));
    }
    Ok(s)
}

/// A relative path made only of names (no root, no `..`): what the catalog stores.
pub fn relative(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    if rel.as_os_str().is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    rel.to_str().map(str::to_string)
}

fn i64_of(ns: Option<u64>) -> Option<i64> {
    ns.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

fn row(path: String, session: &str, s: &FileStats, state: FileState, at_ns: i64) -> CatalogFile {
    CatalogFile {
        collector: String::new(),
        session: session.to_string(),
        path,
        first_ns: i64_of(s.first_ns),
        last_ns: i64_of(s.last_ns),
        packets: s.packets,
        bytes: s.bytes,
        state,
        updated_ns: at_ns,
    }
}

/// Where the catalog thread writes: the controller, or a fake in tests.
pub trait Sink: Send {
    fn write(&self, changes: &[CatalogChange]) -> Result<(), StoreError>;
    /// This collector's rows.
    fn rows(&self) -> Result<Vec<CatalogFile>, StoreError>;
}

impl<E: tapwire_control::Engine> Sink for Arc<tapwire_control::Controller<E>> {
    fn write(&self, changes: &[CatalogChange]) -> Result<(), StoreError> {
        self.catalog_write(changes)
    }

    fn rows(&self) -> Result<Vec<CatalogFile>, StoreError> {
        self.catalog_mine()
    }
}

/// The catalog thread's state.
pub struct Catalog<S: Sink> {
    sink: S,
    rx: Receiver<FileEvent>,
    root: PathBuf,
    counters: Arc<Counters>,
    pending: Pending,
    /// Files the disk thread has open (relative paths).
    open: HashSet<String>,
    /// Reconcile before writing what is pending.
    resync: bool,
    /// The last write failed (logged once until one works).
    failing: bool,
}

impl<S: Sink> Catalog<S> {
    pub fn new(sink: S, rx: Receiver<FileEvent>, root: PathBuf, counters: Arc<Counters>) -> Self {
        Catalog {
            sink,
            rx,
            root,
            counters,
            pending: Pending::new(MAX_PENDING),
            open: HashSet::new(),
            resync: true,
            failing: false,
        }
    }

    /// Runs until the disk thread's end of the channel is gone (it has closed every file),
    /// then writes what is left once.
    pub fn run(mut self) {
        let mut next_try = Instant::now();
        loop {
            let done = match self.rx.recv_timeout(Duration::from_millis(200)) {
                Ok(e) => {
                    self.take(e);
                    false
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            self.drain();
            if done || Instant::now() >= next_try {
                next_try = match self.flush() {
                    Ok(()) => Instant::now(),
                    Err(_) => Instant::now() + RETRY,
                };
            }
            if done {
                if !self.pending.is_empty() {
                    tracing::warn!(
                        files = self.pending.len(),
                        "catalog: changes not written at exit; the next start reconciles them"
                    );
                }
                return;
            }
        }
    }

    /// Takes every event waiting in the channel.
    fn drain(&mut self) {
        while let Ok(e) = self.rx.try_recv() {
            self.take(e);
        }
        if self.counters.resync.swap(false, Ordering::Relaxed) {
            self.resync = true;
        }
        self.counters
            .pending
            .store(self.pending.len() as u64, Ordering::Relaxed);
    }

    fn take(&mut self, e: FileEvent) {
        let at = i64_of(Some(now_ns())).unwrap_or(i64::MAX);
        let (path, change) = match e {
            FileEvent::Now {
                path,
                session,
                stats,
                state,
            } => {
                let Some(rel) = self.relative(&path) else {
                    return;
                };
                if state == FileState::Open {
                    self.open.insert(rel.clone());
                } else {
                    self.open.remove(&rel);
                }
                let r = row(rel.clone(), &session, &stats, state, at);
                (rel, CatalogChange::Put(r))
            }
            FileEvent::Deleted { path } => {
                let Some(rel) = self.relative(&path) else {
                    return;
                };
                let change = CatalogChange::Mark {
                    path: rel.clone(),
                    state: FileState::Deleted,
                    at_ns: at,
                };
                (rel, change)
            }
            FileEvent::Dropped { path } => {
                let Some(rel) = self.relative(&path) else {
                    return;
                };
                (rel.clone(), CatalogChange::Remove { path: rel })
            }
        };
        if !self.pending.push(change) {
            self.counters.overflowed.fetch_add(1, Ordering::Relaxed);
            self.open.remove(&path);
            self.resync = true;
        }
    }

    fn relative(&self, path: &Path) -> Option<String> {
        let rel = relative(&self.root, path);
        if rel.is_none() && self.counters.unrooted.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(path = %path.display(), root = %self.root.display(), "catalog: a capture file outside the output root is not catalogued");
        }
        rel
    }

    /// Reconciles if asked to, then writes what is pending.
    fn flush(&mut self) -> Result<(), StoreError> {
        let r = self.flush_inner();
        match &r {
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::warn!(error = %e, files = self.pending.len(), "catalog: not written; kept (latest state per file) until the database answers");
            }
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!("catalog: written again");
            }
            _ => {}
        }
        self.counters
            .pending
            .store(self.pending.len() as u64, Ordering::Relaxed);
        r
    }

    fn flush_inner(&mut self) -> Result<(), StoreError> {
        if self.resync {
            self.reconcile()?;
            self.resync = false;
        }
        while !self.pending.is_empty() {
            let batch = self.pending.take(BATCH);
            if let Err(e) = self.sink.write(&batch) {
                self.pending.restore(batch);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Makes this collector's rows agree with the files beneath the root. Events that come
    /// meanwhile are taken (and written after: they are newer).
    fn reconcile(&mut self) -> Result<(), StoreError> {
        let started = Instant::now();
        let rows = self.sink.rows()?;
        let disk = list(&self.root, MAX_LISTED, MAX_DEPTH);
        let (fixes, skipped) = plan(&rows, &disk, &self.open, MAX_SCANS);
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "catalog: more files to count than one reconcile reads; the rest at the next start"
            );
        }
        let n = fixes.len();
        let mut batch = Vec::new();
        for fix in fixes {
            let at = i64_of(Some(now_ns())).unwrap_or(i64::MAX);
            match fix {
                Fix::Delete { path } => batch.push(CatalogChange::Mark {
                    path,
                    state: FileState::Deleted,
                    at_ns: at,
                }),
                Fix::Restat { path, session } => {
                    match stat(&self.root.join(&path), &session) {
                        Ok(s) => batch.push(CatalogChange::Put(row(
                            path,
                            &session,
                            &s,
                            FileState::Closed,
                            at,
                        ))),
                        // Gone meanwhile (max_files, an on-finish command).
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            batch.push(CatalogChange::Mark {
                                path,
                                state: FileState::Deleted,
                                at_ns: at,
                            })
                        }
                        Err(e) => {
                            tracing::warn!(path, error = %e, "catalog: cannot read a capture file")
                        }
                    }
                    self.drain();
                }
            }
            if batch.len() >= BATCH {
                self.sink.write(&batch)?;
                batch.clear();
            }
        }
        self.sink.write(&batch)?;
        tracing::info!(
            rows = rows.len(),
            files = disk.len(),
            fixed = n,
            ms = started.elapsed().as_millis() as u64,
            "catalog: reconciled with the output directory"
        );
        Ok(())
    }
}

/// Starts the catalog thread.
pub fn spawn<S: Sink + 'static>(
    sink: S,
    rx: Receiver<FileEvent>,
    root: PathBuf,
    counters: Arc<Counters>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let c = Catalog::new(sink, rx, root, counters);
    std::thread::Builder::new()
        .name("tapwire-catalog".into())
        .spawn(move || c.run())
}

#[cfg(test)]
mod tests;
