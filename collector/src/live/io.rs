//! The disk thread: everything that touches the file system for the live collector, so that a
//! slow or full disk never stalls packet processing. The engine sends whole-record buffers and
//! open/close requests; this thread writes them, keeps each file a valid capture (a failed write
//! is cut back to the last good length and the next one goes exactly there, preceded by the
//! header and interface blocks that did not make it), reports per buffer which packets were
//! written and which were lost, watches free space for the disk guard, notices files whose
//! directory vanished, prunes old files and runs the on-finish command.
//!
//! A session's directory is an [`OutDir`]: a root trusted as given (`--out`, or an absolute
//! directory of the configuration file) and a relative path beneath it, which every open,
//! create and remove resolves again with openat2 `RESOLVE_BENEATH`, so that neither `..` nor
//! a symlink (planted before the session was defined or after) leads a write out of the root.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tapwire_formats::index::{self, KeyLog};

use super::catalog::{CatalogTx, FileEvent, FileStats};
use crate::demux::SourceId;
use tapwire_control::store::FileState;

pub type FileId = u64;

/// Packets in one buffer, per source. It travels with the buffer to the disk thread and back,
/// so the engine counts them written (or dropped, and why) only once the disk thread knows.
pub type Tally = Vec<(SourceId, u64)>;

/// Why the packets of a buffer were not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// The file system is full (ENOSPC, or EDQUOT: the user's quota is).
    DiskFull,
    /// Any other failure to open or write the file.
    WriteError,
}

impl Loss {
    pub fn of(e: &io::Error) -> Loss {
        match tapwire_netio::raw_os_error(e) {
            Some(libc::ENOSPC | libc::EDQUOT) => Loss::DiskFull,
            _ => Loss::WriteError,
        }
    }
}

/// The smallest distance between where the disk guard holds writing and where it lets writing
/// go on again. It must exceed the largest single write (a buffer of at most 1 MiB plus one
/// record): a write that finds the disk full is cut back, which frees what it had written, and
/// that alone must not lift the guard.
pub const GUARD_MARGIN_BYTES: u64 = 4 << 20;

/// The disk guard with hysteresis, pure: whether writing is held after measuring `free_bytes`,
/// given whether it was held before. Writing stops below `min_free_bytes` and goes on again
/// only at `min_free_bytes` plus a margin (the guard itself, at least [`GUARD_MARGIN_BYTES`]).
pub fn guard_holds(was_held: bool, free_bytes: u64, min_free_bytes: u64) -> bool {
    if was_held {
        free_bytes < resume_free_bytes(min_free_bytes)
    } else {
        free_bytes < min_free_bytes
    }
}

/// Free space at which a held guard lets writing go on again.
pub fn resume_free_bytes(min_free_bytes: u64) -> u64 {
    min_free_bytes.saturating_add(min_free_bytes.max(GUARD_MARGIN_BYTES))
}

/// Free-space state of one output directory, shared with the engine.
#[derive(Debug)]
pub struct DirState {
    pub dir: PathBuf,
    /// Writing is held: free space went below the guard (or a write found the disk full) and
    /// has not yet come back above [`resume_free_bytes`].
    pub low: AtomicBool,
    pub free_bytes: AtomicU64,
    pub min_free_bytes: AtomicU64,
}

/// State shared between the engine and the disk thread.
#[derive(Debug, Default)]
pub struct Shared {
    /// Bytes handed to the disk thread and not yet written.
    pub backlog_bytes: AtomicU64,
    dirs: Mutex<HashMap<PathBuf, Arc<DirState>>>,
    /// The guard when none is configured: min(256 MiB, 5 % of the file system).
    pub min_free_bytes: Option<u64>,
    /// Capture files get an index beside them (`<file>.twidx`).
    pub index: bool,
}

impl Shared {
    pub fn new(min_free_bytes: Option<u64>, index: bool) -> Self {
        Shared {
            min_free_bytes,
            index,
            ..Shared::default()
        }
    }

    /// The state of `dir`, created (and checked once) on first use.
    pub fn dir(&self, dir: &Path) -> Arc<DirState> {
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = dirs.get(dir) {
            return d.clone();
        }
        let d = Arc::new(DirState {
            dir: dir.to_path_buf(),
            low: AtomicBool::new(false),
            free_bytes: AtomicU64::new(u64::MAX),
            min_free_bytes: AtomicU64::new(0),
        });
        check_space(&d, self.min_free_bytes);
        dirs.insert(dir.to_path_buf(), d.clone());
        d
    }

    fn all_dirs(&self) -> Vec<Arc<DirState>> {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// Where a session's files go: `root` as given (created if missing: it is `--out` or the
/// configuration file's choice), then `beneath` it, resolved by the kernel so that it never
/// leaves `root` (openat2 `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`), whatever symlinks or
/// `..` it meets, on every open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutDir {
    pub root: PathBuf,
    /// Relative; empty for `root` itself.
    pub beneath: PathBuf,
}

impl OutDir {
    /// A session's directory from its `dir` setting: none is `out`; an absolute one (only the
    /// configuration file can give one) is its own root; a relative one is beneath `out`.
    pub fn of(dir: Option<&Path>, out: &Path) -> OutDir {
        match dir {
            None => OutDir {
                root: out.to_path_buf(),
                beneath: PathBuf::new(),
            },
            Some(d) if d.is_absolute() => OutDir {
                root: d.to_path_buf(),
                beneath: PathBuf::new(),
            },
            Some(rel) => OutDir {
                root: out.to_path_buf(),
                beneath: rel.to_path_buf(),
            },
        }
    }

    /// The directory as a path, for messages, statvfs and on-finish commands.
    pub fn path(&self) -> PathBuf {
        if self.beneath.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(&self.beneath)
        }
    }

    /// Opens the directory (creating what is missing when `create`), never outside `root`.
    pub fn open(&self, create: bool) -> io::Result<OwnedFd> {
        use nix::fcntl::{OFlag, open};
        use nix::sys::stat::Mode;
        if create {
            std::fs::create_dir_all(&self.root)?;
        }
        let root = open(
            &self.root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        if self.beneath.as_os_str().is_empty() {
            return Ok(root);
        }
        match self.beneath_of(&root, &self.beneath) {
            Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => {}
            r => return r,
        }
        // Each missing directory is made in its parent, itself opened beneath the root: a
        // symlink put in the way is resolved (and refused if it leads out) by the next open.
        let parts: Vec<&std::ffi::OsStr> = self.beneath.iter().collect();
        for i in 0..parts.len() {
            let prefix: PathBuf = parts[..=i].iter().collect();
            match self.beneath_of(&root, &prefix) {
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
            let parent: PathBuf = parts[..i].iter().collect();
            let parent = if parent.as_os_str().is_empty() {
                root.try_clone()?
            } else {
                self.beneath_of(&root, &parent)?
            };
            match nix::sys::stat::mkdirat(&parent, parts[i], Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.beneath_of(&root, &self.beneath)
    }

    /// `rel` opened as a directory beneath `root`; a path that would leave it is refused.
    fn beneath_of(&self, root: &OwnedFd, rel: &Path) -> io::Result<OwnedFd> {
        use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        openat2(root, rel, how).map_err(|e| match e {
            nix::errno::Errno::EXDEV | nix::errno::Errno::ELOOP => io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} leads out of {} (a symlink or '..'): refused",
                    rel.display(),
                    self.root.display()
                ),
            ),
            nix::errno::Errno::ENOSYS => io::Error::other(
                "openat2 is not available: a directory beneath the output root needs Linux 5.6 or later",
            ),
            e => e.into(),
        })
    }
}

/// Keep at most `max_files` of a session's files, counting the one about to be opened.
#[derive(Debug, Clone)]
pub struct Prune {
    pub session: String,
    pub max_files: u32,
}

#[derive(Debug)]
pub enum Cmd {
    /// Create `dir/stem.ext` (or `stem_N.ext` if taken); never overwrite.
    Open {
        file: FileId,
        session: Arc<str>,
        dir: OutDir,
        stem: String,
        ext: &'static str,
        prune: Option<Prune>,
    },
    /// Append whole records.
    Write {
        file: FileId,
        session: Arc<str>,
        buf: Vec<u8>,
        /// The packets in `buf`, returned in [`Event::Written`] or [`Event::WriteFailed`].
        tally: Tally,
        /// The file header and interface blocks in `buf`: later records may need them, so
        /// they are kept until written.
        blocks: Vec<Range<usize>>,
        /// The keys of `buf`'s packets by range, for the file's index.
        index: Option<Box<KeyLog>>,
        /// The earliest and latest packet time in `buf`, for the catalog.
        ts: Option<(u64, u64)>,
    },
    Close {
        file: FileId,
        session: String,
        on_finish: Option<String>,
    },
    /// Finish what is queued, wait for on-finish commands until `deadline`, and stop.
    Shutdown { deadline: Instant },
}

/// What the disk thread did. Each names the session whose file it concerns.
#[derive(Debug)]
pub enum Event {
    Opened {
        session: Arc<str>,
        file: FileId,
        path: PathBuf,
    },
    OpenFailed {
        session: Arc<str>,
        file: FileId,
        error: String,
    },
    /// A buffer's records are on disk.
    Written {
        session: Arc<str>,
        file: FileId,
        tally: Tally,
    },
    /// A buffer's records were not written; the file was cut back to its last good length
    /// (or, if it was never opened, does not exist).
    WriteFailed {
        session: Arc<str>,
        file: FileId,
        tally: Tally,
        loss: Loss,
        error: String,
    },
    /// The file's path no longer exists (its directory was removed).
    Vanished { session: Arc<str>, file: FileId },
    Closed {
        session: Arc<str>,
        file: FileId,
        path: PathBuf,
        bytes: u64,
    },
}

/// Where a file can be written, as [`Extent`] needs it: the real file, or a fake in tests.
pub trait Storage {
    /// Writes all of `buf` at `pos`; on error some of it may have been written.
    fn write_at(&mut self, pos: u64, buf: &[u8]) -> io::Result<()>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// A capture file's length bookkeeping, pure: how much of it is on disk (whole blocks only)
/// and which header and interface blocks were handed over in buffers that were not written.
/// A buffer always goes exactly at the end of what is on disk, after those blocks, so a failed
/// write leaves no hole and no record whose interface is missing.
#[derive(Debug, Default)]
pub struct Extent {
    /// Bytes on disk: the file is a valid capture up to here.
    len: u64,
    /// Header and interface blocks of buffers that were not written, in order.
    missing: Vec<u8>,
    /// Cutting back the last failed write failed too: the file may be longer than `len`.
    cut_pending: bool,
}

impl Extent {
    /// Bytes on disk, all of them whole blocks.
    pub fn len_bytes(&self) -> u64 {
        self.len
    }

    /// Header and interface blocks handed over in buffers that were not written: they go
    /// before the next buffer.
    pub fn missing(&self) -> &[u8] {
        &self.missing
    }

    /// Writes the missing blocks and `buf` at the end of the good part. On failure the file is
    /// cut back to it (or will be before the next write) and `buf`'s `blocks` are kept.
    pub fn append(
        &mut self,
        s: &mut impl Storage,
        buf: &[u8],
        blocks: &[Range<usize>],
    ) -> io::Result<()> {
        let r = self.try_append(s, buf);
        if r.is_err() {
            self.lost(buf, blocks);
            if self.cut_pending || s.set_len(self.len).is_err() {
                self.cut_pending = true;
            }
        }
        r
    }

    fn try_append(&mut self, s: &mut impl Storage, buf: &[u8]) -> io::Result<()> {
        if self.cut_pending {
            s.set_len(self.len)?;
            self.cut_pending = false;
        }
        if !self.missing.is_empty() {
            s.write_at(self.len, &self.missing)?;
        }
        s.write_at(self.len + self.missing.len() as u64, buf)?;
        self.len += (self.missing.len() + buf.len()) as u64;
        self.missing.clear();
        Ok(())
    }

    /// `buf` was not written at all: keep its header and interface blocks for the next write.
    pub fn lost(&mut self, buf: &[u8], blocks: &[Range<usize>]) {
        for b in blocks {
            if let Some(bytes) = buf.get(b.clone()) {
                self.missing.extend_from_slice(bytes);
            }
        }
    }
}

/// Why a buffer was not written.
struct Failure {
    loss: Loss,
    error: String,
    /// The file was removed: the engine should start a new one now.
    vanished: bool,
}

struct OpenFile {
    path: PathBuf,
    /// Where it is, to reopen or remove it beneath the same root.
    dir: OutDir,
    name: String,
    session: Arc<str>,
    /// `None` while closed to stay under the open-files bound; reopened when written again.
    file: Option<File>,
    /// The handle's file offset, when known; after an error or a reopen it is sought.
    pos: Option<u64>,
    extent: Extent,
    failed: bool,
    last_use: u64,
    /// Writes go out with RWF_DONTCACHE until the kernel or the file system refuses it.
    dontcache: bool,
    /// The index beside it.
    index: Option<Sidecar>,
    /// What is on disk, and what the catalog was last told.
    stats: FileStats,
    told: FileStats,
}

/// A capture file's index (`<file>.twidx`), appended after each buffer of the capture is on
/// disk, in whole records, so it never describes bytes a reader cannot find.
struct Sidecar {
    path: PathBuf,
    /// Closed with the capture's handle, to stay under the open-files bound.
    file: Option<File>,
    /// Bytes of header and whole records on disk.
    len: u64,
    /// A write failed: nothing more is appended. Readers scan what it does not cover.
    failed: bool,
}

impl Sidecar {
    /// Creates the index of `capture` with its header.
    fn create(capture: &Path) -> Option<Sidecar> {
        let path = sidecar_path(capture);
        let header = index::file::header();
        let made = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&header).map(|()| f));
        match made {
            Ok(f) => Some(Sidecar {
                path,
                file: Some(f),
                len: header.len() as u64,
                failed: false,
            }),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot create the capture's index; queries will scan it");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Appends whole records; on failure the file is cut back to its last whole record and
    /// left as it is.
    fn append(&mut self, records: &[u8]) {
        use std::os::unix::fs::FileExt;
        if self.failed || records.is_empty() {
            return;
        }
        if self.file.is_none() {
            match OpenOptions::new().write(true).open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) => return self.fail(&e),
            }
        }
        let Some(f) = self.file.as_ref() else { return };
        match f.write_all_at(records, self.len) {
            Ok(()) => self.len += records.len() as u64,
            Err(e) => {
                let _ = f.set_len(self.len);
                self.fail(&e);
            }
        }
    }

    fn fail(&mut self, e: &io::Error) {
        tracing::warn!(path = %self.path.display(), error = %e, "index write failed; it stops here and queries scan the rest of the capture");
        self.failed = true;
        self.file = None;
    }
}

/// `dir/x.pcapng` -> `dir/x.pcapng.twidx`.
pub fn sidecar_path(capture: &Path) -> PathBuf {
    let name = capture
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    capture.with_file_name(index::sidecar_name(&name))
}

/// The header and interface blocks in `b` (a run of them, as [`Extent::missing`] holds).
fn meta_blocks(b: &[u8]) -> Vec<Range<usize>> {
    use tapwire_formats::capture::pcapng::{self, Endian, Framed};
    let mut v = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let len = if tapwire_formats::capture::is_pcap(&b[at..]) {
            tapwire_formats::capture::PcapFraming::FILE_HEADER
        } else {
            match pcapng::frame(&b[at..], Endian::native()) {
                Framed::Block { len, .. } => len,
                _ => break,
            }
        };
        v.push(at..(at + len).min(b.len()));
        at += len;
    }
    v
}

/// The real file as [`Storage`]: sequential writes from the known offset (an `lseek` only
/// when the offset is not known), with RWF_DONTCACHE for whole pages.
struct FileStorage<'a> {
    file: &'a mut File,
    pos: &'a mut Option<u64>,
    dontcache: &'a mut bool,
}

impl Storage for FileStorage<'_> {
    fn write_at(&mut self, pos: u64, buf: &[u8]) -> io::Result<()> {
        if *self.pos != Some(pos) {
            *self.pos = None;
            self.file.seek(SeekFrom::Start(pos))?;
        }
        *self.pos = None;
        write_all(self.file, pos, buf, self.dontcache)?;
        *self.pos = Some(pos + buf.len() as u64);
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

/// A finished file whose on-finish command runs.
struct Finishing {
    child: Child,
    path: PathBuf,
    session: Arc<str>,
    stats: FileStats,
}

pub struct DiskThread {
    cmds: Receiver<Cmd>,
    events: Sender<Event>,
    buffers: Sender<Vec<u8>>,
    shared: Arc<Shared>,
    files: HashMap<FileId, OpenFile>,
    children: Vec<Finishing>,
    /// Where the catalog hears of each file (with `--db`).
    catalog: Option<CatalogTx>,
    last_check: Instant,
    /// Files kept open at once: every session has one, and sessions can outnumber descriptors.
    max_open: usize,
    n_open: usize,
    tick: u64,
}

impl DiskThread {
    pub fn new(
        cmds: Receiver<Cmd>,
        events: Sender<Event>,
        buffers: Sender<Vec<u8>>,
        shared: Arc<Shared>,
    ) -> Self {
        DiskThread {
            cmds,
            events,
            buffers,
            shared,
            files: HashMap::new(),
            max_open: max_open_files(),
            n_open: 0,
            tick: 0,
            children: Vec::new(),
            catalog: None,
            last_check: Instant::now(),
        }
    }

    /// Tells `catalog` of every file opened, written, closed, compressed or removed.
    pub fn with_catalog(mut self, catalog: CatalogTx) -> Self {
        self.catalog = Some(catalog);
        self
    }

    fn tell(&self, e: FileEvent) {
        if let Some(c) = &self.catalog {
            c.send(e);
        }
    }

    pub fn run(mut self) {
        loop {
            match self.cmds.recv_timeout(Duration::from_millis(200)) {
                Ok(Cmd::Shutdown { deadline }) => return self.shutdown(deadline),
                Ok(cmd) => self.handle(cmd),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return self.shutdown(Instant::now() + Duration::from_secs(1));
                }
            }
            if self.last_check.elapsed() >= Duration::from_millis(500) {
                self.periodic();
            }
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Open {
                file,
                session,
                dir,
                stem,
                ext,
                prune,
            } => {
                self.make_room();
                let mut pruned = Vec::new();
                let created = dir.open(true).and_then(|handle| {
                    if let Some(p) = &prune {
                        pruned = prune_old(&handle, &dir.path(), p);
                    }
                    create_unique(&handle, &stem, ext)
                });
                for name in pruned {
                    self.tell(FileEvent::Deleted {
                        path: dir.path().join(name),
                    });
                }
                match created {
                    Ok((f, name)) => {
                        let path = dir.path().join(&name);
                        self.n_open += 1;
                        self.tick += 1;
                        let index = if self.shared.index {
                            Sidecar::create(&path)
                        } else {
                            None
                        };
                        self.files.insert(
                            file,
                            OpenFile {
                                path: path.clone(),
                                dir: dir.clone(),
                                name,
                                session: session.clone(),
                                file: Some(f),
                                pos: Some(0),
                                extent: Extent::default(),
                                failed: false,
                                last_use: self.tick,
                                dontcache: true,
                                index,
                                stats: FileStats::default(),
                                told: FileStats::default(),
                            },
                        );
                        self.tell(FileEvent::Now {
                            path: path.clone(),
                            session: session.clone(),
                            stats: FileStats::default(),
                            state: FileState::Open,
                        });
                        let _ = self.events.send(Event::Opened {
                            session,
                            file,
                            path,
                        });
                    }
                    Err(e) => {
                        let shown = dir.path();
                        tracing::warn!(dir = %shown.display(), error = %e, "cannot open capture file");
                        let _ = self.events.send(Event::OpenFailed {
                            session,
                            file,
                            error: format!("{}: {e}", shown.display()),
                        });
                    }
                }
            }
            Cmd::Write {
                file,
                session,
                buf,
                tally,
                blocks,
                index,
                ts,
            } => {
                let n = buf.len() as u64;
                match self.write(file, &buf, &blocks, index) {
                    Ok(()) => {
                        if let Some(f) = self.files.get_mut(&file) {
                            f.stats.add(tally.iter().map(|t| t.1).sum(), ts);
                            f.stats.bytes = f.extent.len_bytes();
                        }
                        let _ = self.events.send(Event::Written {
                            session,
                            file,
                            tally,
                        });
                    }
                    Err(f) => {
                        let _ = self.events.send(Event::WriteFailed {
                            session: session.clone(),
                            file,
                            tally,
                            loss: f.loss,
                            error: f.error,
                        });
                        if f.vanished {
                            let _ = self.events.send(Event::Vanished { session, file });
                        }
                    }
                }
                self.shared.backlog_bytes.fetch_sub(n, Ordering::Relaxed);
                let _ = self.buffers.send(buf);
            }
            Cmd::Close {
                file,
                session,
                on_finish,
            } => {
                if let Some(f) = self.files.remove(&file) {
                    self.close(file, f, on_finish.as_deref(), &session);
                }
            }
            Cmd::Shutdown { .. } => {}
        }
    }

    /// Closes a file for good. One that holds nothing (every write failed) gets its header
    /// if it can, or is removed: an empty file is not a capture.
    fn close(&mut self, id: FileId, mut f: OpenFile, on_finish: Option<&str>, session: &str) {
        if f.extent.len_bytes() == 0 {
            if let Some(file) = f.file.as_mut() {
                let mut s = FileStorage {
                    file,
                    pos: &mut f.pos,
                    dontcache: &mut f.dontcache,
                };
                let _ = f.extent.append(&mut s, &[], &[]);
            }
            if f.extent.len_bytes() == 0 {
                if let Some(ix) = f.index.take() {
                    let _ = std::fs::remove_file(&ix.path);
                }
                let removed = f.dir.open(false).and_then(|d| {
                    nix::unistd::unlinkat(
                        &d,
                        f.name.as_str(),
                        nix::unistd::UnlinkatFlags::NoRemoveDir,
                    )
                    .map_err(io::Error::from)
                });
                match removed {
                    Ok(()) => {
                        tracing::info!(path = %f.path.display(), "removed: nothing could be written to it")
                    }
                    Err(e) => {
                        tracing::warn!(path = %f.path.display(), error = %e, "cannot remove an empty capture file")
                    }
                }
            }
        }
        if let Some(ix) = f.index.as_mut() {
            let mut end = Vec::new();
            index::file::put_end(&mut end, f.extent.len_bytes());
            ix.append(&end);
            ix.file = None;
        }
        if f.file.take().is_some() {
            self.n_open -= 1;
        }
        f.stats.bytes = f.extent.len_bytes();
        if self.catalog.is_some() {
            let path = f.path.clone();
            self.tell(if f.extent.len_bytes() == 0 {
                FileEvent::Dropped { path }
            } else if path.exists() {
                FileEvent::Now {
                    path,
                    session: f.session.clone(),
                    stats: f.stats,
                    state: FileState::Closed,
                }
            } else {
                // Its directory was removed meanwhile.
                FileEvent::Deleted { path }
            });
        }
        if let Some(cmd) = on_finish
            && f.extent.len_bytes() > 0
        {
            let index = f
                .index
                .as_ref()
                .filter(|ix| !ix.failed)
                .map(|ix| ix.path.as_path());
            self.spawn_on_finish(cmd, session, &f.path, index, f.stats);
        }
        let _ = self.events.send(Event::Closed {
            session: f.session,
            file: id,
            path: f.path,
            bytes: f.extent.len_bytes(),
        });
    }

    /// Writes `buf` to file `id` right after its last good byte; on failure, why and what
    /// happened. A disk found full holds writing in that directory until the guard sees space
    /// again.
    fn write(
        &mut self,
        id: FileId,
        buf: &[u8],
        blocks: &[Range<usize>],
        keys: Option<Box<KeyLog>>,
    ) -> Result<(), Failure> {
        let never = || Failure {
            loss: Loss::WriteError,
            error: "the file could not be created".into(),
            vanished: false,
        };
        let Some(closed) = self.files.get(&id).map(|f| f.file.is_none()) else {
            return Err(never());
        };
        let reopened = if closed { self.reopen(id) } else { Ok(()) };
        self.tick += 1;
        let tick = self.tick;
        let Some(of) = self.files.get_mut(&id) else {
            return Err(never());
        };
        of.last_use = tick;
        let mut unlinked = false;
        let r = match (reopened, of.file.as_mut()) {
            (Ok(()), Some(file)) => {
                let mut s = FileStorage {
                    file,
                    pos: &mut of.pos,
                    dontcache: &mut of.dontcache,
                };
                let before = of.extent.len_bytes();
                let missing = of.extent.missing().to_vec();
                let r = of.extent.append(&mut s, buf, blocks);
                // Records written to a file removed meanwhile (its directory was deleted) are
                // on no reader's disk: lost, not written.
                unlinked = r.is_ok() && file.metadata().is_ok_and(|m| m.nlink() == 0);
                if r.is_ok()
                    && !unlinked
                    && let Some(ix) = of.index.as_mut()
                {
                    match keys {
                        Some(keys) => {
                            ix.append(&index_records(before, &missing, buf, blocks, keys))
                        }
                        // A buffer without keys cannot be described: the index stops here.
                        None => ix.fail(&io::Error::other("a buffer came without its keys")),
                    }
                }
                if unlinked {
                    Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        "removed while being written",
                    ))
                } else {
                    r
                }
            }
            (Err(e), _) => {
                of.extent.lost(buf, blocks);
                Err(e)
            }
            (Ok(()), None) => {
                of.extent.lost(buf, blocks);
                Err(io::Error::other("file not open"))
            }
        };
        let Err(e) = r else {
            if of.failed {
                tracing::info!(path = %of.path.display(), "writing again");
            }
            of.failed = false;
            return Ok(());
        };
        if !of.failed {
            tracing::warn!(path = %of.path.display(), error = %e, "write failed; the file is cut back to its last whole record");
        }
        of.failed = true;
        let loss = Loss::of(&e);
        let error = format!("{}: {e}", of.path.display());
        if loss == Loss::DiskFull {
            let parent = of.path.parent().unwrap_or(Path::new("."));
            let d = self.shared.dir(parent);
            if !d.low.swap(true, Ordering::Relaxed) {
                tracing::warn!(dir = %d.dir.display(), "disk full: holding writes");
            }
        }
        Err(Failure {
            loss,
            error,
            vanished: unlinked,
        })
    }

    /// Closes the least recently written file when the open-files bound is reached; it is
    /// reopened for appending when written again.
    fn make_room(&mut self) {
        while self.n_open >= self.max_open {
            let victim = self
                .files
                .iter()
                .filter(|(_, f)| f.file.is_some())
                .min_by_key(|(_, f)| f.last_use)
                .map(|(id, _)| *id);
            let Some(f) = victim.and_then(|id| self.files.get_mut(&id)) else {
                break;
            };
            f.file = None;
            if let Some(ix) = f.index.as_mut() {
                ix.file = None;
            }
            self.n_open -= 1;
        }
    }

    /// Opens a file closed by [`Self::make_room`] again. Not for appending: writes go at the
    /// file's good length, which may be short of its end after a failed cut-back.
    fn reopen(&mut self, id: FileId) -> io::Result<()> {
        self.make_room();
        let Some(f) = self.files.get_mut(&id) else {
            return Ok(());
        };
        let dir = f.dir.open(false)?;
        let h = nix::fcntl::openat(
            &dir,
            f.name.as_str(),
            nix::fcntl::OFlag::O_WRONLY
                | nix::fcntl::OFlag::O_NOFOLLOW
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        f.file = Some(File::from(h));
        f.pos = None;
        self.n_open += 1;
        Ok(())
    }

    fn periodic(&mut self) {
        self.last_check = Instant::now();
        for d in self.shared.all_dirs() {
            check_space(&d, self.shared.min_free_bytes);
        }
        for (id, f) in &self.files {
            if !f.path.exists() {
                let _ = self.events.send(Event::Vanished {
                    session: f.session.clone(),
                    file: *id,
                });
            }
        }
        // The catalog's open files: what they hold now, when it changed.
        let mut changed = Vec::new();
        for f in self.files.values_mut() {
            if f.stats != f.told {
                f.told = f.stats;
                changed.push(FileEvent::Now {
                    path: f.path.clone(),
                    session: f.session.clone(),
                    stats: f.stats,
                    state: FileState::Open,
                });
            }
        }
        for e in changed {
            self.tell(e);
        }
        let mut done = Vec::new();
        self.children.retain_mut(|c| match c.child.try_wait() {
            Ok(Some(status)) => {
                if !status.success() {
                    tracing::warn!(file = %c.path.display(), %status, "on-finish command failed");
                }
                drop_orphan_index(&c.path);
                done.push((c.path.clone(), c.session.clone(), c.stats));
                false
            }
            Ok(None) => true,
            Err(_) => false,
        });
        for (path, session, stats) in done {
            self.finished(path, session, stats);
        }
    }

    /// Tells the catalog what an on-finish command left of a file: itself, its compressed
    /// copy (`.gz`, the name the catalog keeps), or nothing.
    fn finished(&self, path: PathBuf, session: Arc<str>, mut stats: FileStats) {
        if self.catalog.is_none() {
            return;
        }
        let gz = compressed_path(&path);
        if let Ok(m) = std::fs::metadata(&path) {
            stats.bytes = m.len();
            self.tell(FileEvent::Now {
                path,
                session,
                stats,
                state: FileState::Closed,
            });
        } else if let Ok(m) = std::fs::metadata(&gz) {
            stats.bytes = m.len();
            self.tell(FileEvent::Dropped { path });
            self.tell(FileEvent::Now {
                path: gz,
                session,
                stats,
                state: FileState::Closed,
            });
        } else {
            self.tell(FileEvent::Deleted { path });
        }
    }

    fn spawn_on_finish(
        &mut self,
        cmd: &str,
        session: &str,
        path: &Path,
        index: Option<&Path>,
        stats: FileStats,
    ) {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(cmd)
            .arg("tapwire-on-finish")
            .arg(path)
            .env("TAPWIRE_FILE", path)
            .env("TAPWIRE_SESSION", session)
            .stdin(Stdio::null());
        if let Some(ix) = index {
            command.env("TAPWIRE_INDEX", ix);
        }
        let child = command.spawn();
        match child {
            Ok(child) => self.children.push(Finishing {
                child,
                path: path.to_path_buf(),
                session: session.into(),
                stats,
            }),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot run on-finish command")
            }
        }
    }

    fn shutdown(mut self, deadline: Instant) {
        while let Ok(cmd) = self.cmds.try_recv() {
            if !matches!(cmd, Cmd::Shutdown { .. }) {
                self.handle(cmd);
            }
        }
        for (id, f) in std::mem::take(&mut self.files) {
            let session = f.session.clone();
            self.close(id, f, None, &session);
        }
        while !self.children.is_empty() && Instant::now() < deadline {
            let mut done = Vec::new();
            self.children.retain_mut(|c| match c.child.try_wait() {
                Ok(None) => true,
                Ok(Some(_)) => {
                    done.push((c.path.clone(), c.session.clone(), c.stats));
                    false
                }
                Err(_) => false,
            });
            for (path, session, stats) in done {
                self.finished(path, session, stats);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !self.children.is_empty() {
            tracing::info!(
                n = self.children.len(),
                "on-finish commands still running at exit"
            );
        }
    }
}

/// How many capture files the disk thread keeps open: the descriptor limit less room for
/// sockets, rings, TAPs, on-finish commands and the API's share ([`crate::fds`]).
fn max_open_files() -> usize {
    crate::fds::capture_files(crate::fds::limit())
}

/// Raises the soft descriptor limit to the hard one: a collector with many sessions needs
/// them, and the default soft limit (1024) is a compatibility relic.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::debug!(error = %e, "cannot raise the open-files limit");
    }
}

/// Updates a directory's free space and its guard state.
fn check_space(d: &DirState, configured: Option<u64>) {
    // The directory may not exist yet: ask its nearest existing ancestor.
    let mut p = d.dir.as_path();
    while !p.exists() {
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => {
                p = Path::new(".");
                break;
            }
        }
    }
    match nix::sys::statvfs::statvfs(p) {
        Ok(s) => {
            let frsize = s.fragment_size();
            let free = s.blocks_available() * frsize;
            let total = s.blocks() * frsize;
            let min = configured.unwrap_or_else(|| (256 << 20).min(total / 20));
            d.free_bytes.store(free, Ordering::Relaxed);
            d.min_free_bytes.store(min, Ordering::Relaxed);
            // Only this thread (and the engine, once per new directory) changes `low`.
            let was = d.low.load(Ordering::Relaxed);
            let low = guard_holds(was, free, min);
            if was != low {
                d.low.store(low, Ordering::Relaxed);
                if low {
                    tracing::warn!(dir = %d.dir.display(), free, min, "free disk below the guard: holding writes");
                } else {
                    tracing::info!(dir = %d.dir.display(), free, resume = resume_free_bytes(min), "free disk back above the guard: writing again");
                }
            }
        }
        Err(e) => tracing::debug!(dir = %d.dir.display(), error = %e, "statvfs failed"),
    }
}

/// Writes all of `buf` at `file`'s offset, which is `len`. Capture files are written once and read later,
/// if at all: with RWF_DONTCACHE (Linux 6.14+) their pages leave the page cache once on disk,
/// so a collector writing hundreds of MB/s neither pushes everything else out of the cache nor
/// pays for fresh pages (in a VM, often a host page fault per 4 KiB: measured here, buffered
/// 1 MiB writes of new data cost 0.7-2.6 ns of CPU per byte, RWF_DONTCACHE 0.25). Only whole
/// pages go out that way: a last page left partly written would be dropped too, and the next
/// append would wait for the disk to read it back (measured: at 100 kpps of 1414-byte frames
/// the writer spent its time in `ext4_block_write_begin` and the inputs dropped half). The
/// partial tail is written plainly and stays cached until the next write completes it. A
/// kernel or file system (tmpfs) that refuses the flag gets plain writes from then on. `len`:
/// the file's length, where `buf` goes.
fn write_all(file: &mut File, len: u64, mut buf: &[u8], dontcache: &mut bool) -> io::Result<()> {
    use std::os::fd::AsFd;
    if *dontcache {
        let page = u64::from(tapwire_netio::page_size_bytes());
        let whole = whole_pages_len(len, buf.len(), page);
        let (mut head, tail) = buf.split_at(whole);
        while *dontcache && !head.is_empty() {
            match tapwire_netio::write_dontcache(file.as_fd(), head) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => head = &head[n..],
                Err(e) if tapwire_netio::raw_os_error(&e) == Some(libc::EOPNOTSUPP) => {
                    tracing::debug!("RWF_DONTCACHE refused; plain buffered writes");
                    *dontcache = false;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        file.write_all(head)?;
        buf = tail;
    }
    file.write_all(buf)
}

/// How many of `len` bytes written at file offset `pos` end on the last page boundary they
/// reach: those fill whole pages; the rest would leave the last page partly written.
fn whole_pages_len(pos: u64, len: usize, page: u64) -> usize {
    let end = pos + len as u64;
    let boundary = end - end % page;
    boundary.saturating_sub(pos) as usize
}

/// Creates `stem.ext`, or `stem_001.ext`, `stem_002.ext`... if taken, in the directory `dir`;
/// returns the file and its name. Never follows a symlink of that name (`O_EXCL`).
fn create_unique(dir: &OwnedFd, stem: &str, ext: &str) -> io::Result<(File, String)> {
    use nix::fcntl::{OFlag, openat};
    for n in 0..1000 {
        // Zero-padded so that names still sort in the order written.
        let name = if n == 0 {
            format!("{stem}.{ext}")
        } else {
            format!("{stem}_{n:03}.{ext}")
        };
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC;
        match openat(
            dir,
            name.as_str(),
            flags,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
        ) {
            Ok(fd) => return Ok((File::from(fd), name)),
            Err(nix::errno::Errno::EEXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "1000 files with the same name",
    ))
}

/// Whether `name` is one of `session`'s files:
/// `<session>_<YYYYmmddTHHMMSS>[.mmm]Z[_NNN].pcap[ng][.gz]`.
pub fn is_session_file(name: &str, session: &str) -> bool {
    let Some(rest) = name.strip_prefix(session).and_then(|r| r.strip_prefix('_')) else {
        return false;
    };
    // An on-finish command may have compressed it.
    let rest = rest.strip_suffix(".gz").unwrap_or(rest);
    let Some(rest) = rest
        .strip_suffix(".pcapng")
        .or_else(|| rest.strip_suffix(".pcap"))
    else {
        return false;
    };
    let b = rest.as_bytes();
    let digits = |r: &[u8]| !r.is_empty() && r.iter().all(u8::is_ascii_digit);
    if b.len() < 16 || !digits(&b[..8]) || b[8] != b'T' || !digits(&b[9..15]) {
        return false;
    }
    let mut tail = &b[15..];
    if let Some(t) = tail.strip_prefix(b".") {
        if t.len() < 4 || !digits(&t[..3]) {
            return false;
        }
        tail = &t[3..];
    }
    let Some(tail) = tail.strip_prefix(b"Z") else {
        return false;
    };
    // `_NNN` from files opened within one millisecond, and again if a name was taken on disk.
    tail.is_empty()
        || tail
            .strip_prefix(b"_")
            .is_some_and(|t| t.split(|c| *c == b'_').all(digits))
}

/// Deletes the oldest of a session's files in the directory `dir` (shown as `shown`) so that,
/// with the one about to be opened, at most `max_files` remain. Names sort in time order. A
/// capture, its compressed copy (an on-finish hook at work) and its index are one file; indexes
/// left without their capture go too.
/// Returns the names of the captures it removed.
fn prune_old(dir: &OwnedFd, shown: &Path, p: &Prune) -> Vec<String> {
    use nix::fcntl::OFlag;
    let mut removed = Vec::new();
    let Ok(mut listing) = nix::dir::Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) else {
        return removed;
    };
    let mut present: std::collections::HashSet<String> = listing
        .iter()
        .flatten()
        .filter_map(|e| e.file_name().to_str().ok().map(str::to_string))
        .collect();
    let mut stems: Vec<String> = present
        .iter()
        .filter(|n| is_session_file(n, &p.session))
        .map(|n| n.strip_suffix(".gz").unwrap_or(n).to_string())
        .collect();
    stems.sort_unstable();
    stems.dedup();
    let unlink =
        |name: &str| nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
    let keep = p.max_files.saturating_sub(1) as usize;
    if stems.len() > keep {
        for stem in &stems[..stems.len() - keep] {
            for name in [stem.clone(), format!("{stem}.gz")] {
                if !present.contains(&name) {
                    continue;
                }
                match unlink(&name) {
                    Ok(()) => {
                        present.remove(&name);
                        removed.push(name.clone());
                        tracing::info!(
                            file = name,
                            dir = %shown.display(),
                            session = p.session,
                            "removed: more than max_files"
                        )
                    }
                    Err(e) => {
                        tracing::warn!(file = name, dir = %shown.display(), error = %e, "cannot remove old file")
                    }
                }
            }
        }
    }
    for name in present.iter() {
        if let Some(stem) = name.strip_suffix(".twidx")
            && is_session_file(stem, &p.session)
            && !present.contains(stem)
            && !present.contains(&format!("{stem}.gz"))
            && unlink(name).is_ok()
        {
            tracing::debug!(index = name, dir = %shown.display(), "removed the index of a capture that is gone");
        }
    }
    removed
}

/// `dir/x.pcapng` -> `dir/x.pcapng.gz`: where a compressing on-finish command leaves it.
fn compressed_path(capture: &Path) -> PathBuf {
    capture.with_file_name(format!(
        "{}.gz",
        capture.file_name().unwrap_or_default().to_string_lossy()
    ))
}

/// Removes the index of `capture` when neither the capture nor its compressed copy exists
/// (max_files removed it, or an on-finish command moved or deleted it).
fn drop_orphan_index(capture: &Path) {
    let gz = compressed_path(capture);
    let index = sidecar_path(capture);
    if !capture.exists() && !gz.exists() && std::fs::remove_file(&index).is_ok() {
        tracing::debug!(index = %index.display(), "removed the index of a capture that is gone");
    }
}

/// The index records of a buffer written at `before` (after the `missing` header and interface
/// blocks of buffers that failed): their metadata blocks, then `keys`' ranges.
fn index_records(
    before: u64,
    missing: &[u8],
    buf: &[u8],
    blocks: &[Range<usize>],
    mut keys: Box<KeyLog>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let base = before + missing.len() as u64;
    for r in meta_blocks(missing) {
        index::file::put_meta(&mut out, before + r.start as u64, &missing[r]);
    }
    for r in blocks {
        if let Some(b) = buf.get(r.clone()) {
            index::file::put_meta(&mut out, base + r.start as u64, b);
        }
    }
    keys.encode(base, (!missing.is_empty()).then_some(before), &mut out);
    out
}

#[cfg(test)]
// Lists of one header or interface block are lists, not ranges to expand.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    /// A file as [`Extent`] sees it: bytes written past the end leave a zero-filled hole, as a
    /// real file's would; writes past `room` bytes stop there with ENOSPC after writing what
    /// fits; `failing_cuts` cut-backs fail.
    #[derive(Default)]
    struct Disk {
        data: Vec<u8>,
        room: usize,
        failing_cuts: u32,
    }

    impl Disk {
        fn with_room(room: usize) -> Disk {
            Disk {
                room,
                ..Disk::default()
            }
        }
    }

    impl Storage for Disk {
        fn write_at(&mut self, pos: u64, buf: &[u8]) -> io::Result<()> {
            let pos = pos as usize;
            if self.data.len() < pos {
                self.data.resize(pos, 0);
            }
            let fit = self.room.saturating_sub(pos).min(buf.len());
            let end = pos + fit;
            if self.data.len() < end {
                self.data.resize(end, 0);
            }
            self.data[pos..end].copy_from_slice(&buf[..fit]);
            if fit < buf.len() {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            Ok(())
        }

        fn set_len(&mut self, len: u64) -> io::Result<()> {
            if self.failing_cuts > 0 {
                self.failing_cuts -= 1;
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            self.data.resize(len as usize, 0);
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_is_cut_back_and_the_next_goes_exactly_there() {
        let mut disk = Disk::with_room(10);
        let mut x = Extent::default();
        x.append(&mut disk, b"aaaa", &[]).unwrap();
        // 6 bytes fit of 8: written, then cut back.
        let e = x.append(&mut disk, b"bbbbbbbb", &[]).unwrap_err();
        assert_eq!(Loss::of(&e), Loss::DiskFull);
        assert_eq!(disk.data, b"aaaa");
        assert_eq!(x.len_bytes(), 4);
        // Space returns: the next buffer follows the last good byte, no hole.
        disk.room = 100;
        x.append(&mut disk, b"cc", &[]).unwrap();
        assert_eq!(disk.data, b"aaaacc");
        assert_eq!(x.len_bytes(), 6);
    }

    #[test]
    fn the_blocks_of_a_lost_buffer_go_before_the_next_one() {
        // The first buffer (header H, interface I0, two records) does not fit at all.
        let mut disk = Disk::with_room(3);
        let mut x = Extent::default();
        let first = b"HHHHI0I0r1r2";
        assert!(x.append(&mut disk, first, &[0..4, 4..8]).is_err());
        assert!(
            disk.data.is_empty(),
            "a file whose first write failed is empty, not zeros"
        );
        // The second (interface I1, a record) goes after the header and I0 it may refer to.
        disk.room = 100;
        x.append(&mut disk, b"I1I1r3", &[0..4]).unwrap();
        assert_eq!(disk.data, b"HHHHI0I0I1I1r3");
        assert_eq!(x.len_bytes(), 14);
        // Once written they are not written again.
        x.append(&mut disk, b"r4", &[]).unwrap();
        assert_eq!(disk.data, b"HHHHI0I0I1I1r3r4");
        // Nothing but the missing blocks (a file closed after every write failed).
        let mut empty = Extent::default();
        let mut disk = Disk::with_room(0);
        assert!(empty.append(&mut disk, b"HHHHr1", &[0..4]).is_err());
        disk.room = 100;
        empty.append(&mut disk, &[], &[]).unwrap();
        assert_eq!(disk.data, b"HHHH");
    }

    #[test]
    fn a_failed_cut_back_is_done_before_the_next_write() {
        let mut disk = Disk::with_room(6);
        let mut x = Extent::default();
        x.append(&mut disk, b"aaaa", &[]).unwrap();
        disk.failing_cuts = 2;
        assert!(x.append(&mut disk, b"bbbb", &[]).is_err());
        assert_eq!(disk.data, b"aaaabb", "the cut-back failed");
        // The retried cut fails too: nothing is written behind the partial record.
        disk.room = 100;
        assert!(x.append(&mut disk, b"c", &[]).is_err());
        assert_eq!(disk.data, b"aaaabb");
        // Then it works: cut, then written at the good length.
        x.append(&mut disk, b"c", &[]).unwrap();
        assert_eq!(disk.data, b"aaaac");
    }

    /// Encodes buffers as the engine does (header and interface blocks recorded), writes them
    /// through an [`Extent`] onto a disk that fills up and empties again, and reads the result
    /// back after every write: always a valid capture holding exactly the records of the
    /// buffers reported written, in order, each with its interface.
    #[test]
    fn the_file_reads_back_after_every_write_whatever_failed() {
        use tapwire_formats::capture::{
            CaptureReader, Encoder, Format, InterfaceInfo, LinkType, PacketInfo,
        };
        for format in [Format::Pcapng, Format::Pcap { nanos: true }] {
            // Per buffer: room on the disk beyond what it holds (None: plenty), new interfaces.
            let plan: [(Option<usize>, u32); 8] = [
                (Some(30), 1), // the first buffer, header included, fails part-way
                (None, 1),
                (Some(0), 1),
                (Some(100), 0),
                (None, 0),
                (Some(5), 1),
                (None, 0),
                (None, 1),
            ];
            let mut enc = Encoder::new(format);
            let mut blocks = vec![0..enc.pending_len()];
            let mut disk = Disk::default();
            let mut x = Extent::default();
            let (mut n_ifaces, mut n) = (0u32, 0u32);
            let mut want: Vec<Vec<u8>> = Vec::new();
            for (step, (room, new_ifaces)) in plan.into_iter().enumerate() {
                for _ in 0..new_ifaces {
                    let start = enc.pending_len();
                    enc.add_interface(&InterfaceInfo {
                        link: LinkType::Ethernet,
                        snaplen: 65_535,
                        name: format!("source{n_ifaces}"),
                        description: String::new(),
                    })
                    .unwrap();
                    if enc.pending_len() > start {
                        blocks.push(start..enc.pending_len());
                    }
                    n_ifaces += 1;
                }
                let mut frames = Vec::new();
                for _ in 0..3 {
                    let frame = vec![n as u8; 60 + n as usize];
                    let iface = if format == Format::Pcapng {
                        n % n_ifaces
                    } else {
                        0
                    };
                    enc.packet(
                        iface,
                        &PacketInfo {
                            ts_ns: 1_700_000_000_000_000_000 + u64::from(n),
                            orig_len: frame.len() as u32,
                            data: &frame,
                            direction: None,
                            comment: None,
                        },
                    )
                    .unwrap();
                    frames.push(frame);
                    n += 1;
                }
                let buf = std::mem::take(enc.buffer());
                disk.room = room.map_or(usize::MAX, |r| disk.data.len() + r);
                let ok = x
                    .append(&mut disk, &buf, &std::mem::take(&mut blocks))
                    .is_ok();
                assert_eq!(ok, room.is_none(), "{format:?} step {step}");
                if ok {
                    want.extend(frames);
                }
                assert_eq!(
                    disk.data.len() as u64,
                    x.len_bytes(),
                    "{format:?} step {step}"
                );
                if want.is_empty() {
                    assert!(
                        disk.data.is_empty(),
                        "{format:?} step {step}: cut back to nothing"
                    );
                    continue;
                }
                let mut r = CaptureReader::new(&disk.data[..]).unwrap();
                let mut got = Vec::new();
                while let Some(rec) = r.next_record().unwrap() {
                    assert_eq!(rec.link, LinkType::Ethernet, "{format:?} step {step}");
                    got.push(rec.data.to_vec());
                }
                assert_eq!(r.stopped(), None, "{format:?} step {step}");
                assert!(r.take_skipped().is_empty(), "{format:?} step {step}");
                assert_eq!(got, want, "{format:?} step {step}");
            }
            assert_eq!(want.len(), 12, "{format:?}: four buffers written");
        }
    }

    /// The disk thread with real files: a buffer is reported written once on disk; one for a
    /// file never created, or written after the file was removed, is reported lost (a removed
    /// file also vanishes at once); a file closed before anything reached it is removed.
    #[test]
    fn the_disk_thread_reports_each_buffer_written_or_lost() {
        let dir = std::env::temp_dir().join(format!("tapwire-io-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let (ev_tx, ev_rx) = crossbeam_channel::unbounded();
        let (buf_tx, _buf_rx) = crossbeam_channel::unbounded();
        let mut disk = DiskThread::new(cmd_rx, ev_tx, buf_tx, Arc::new(Shared::default()));
        drop(cmd_tx);
        let session: Arc<str> = "s".into();
        let open = |file| Cmd::Open {
            file,
            session: session.clone(),
            dir: OutDir::of(Some(&dir), Path::new("/nonexistent")),
            stem: format!("s_2026010{file}T000000Z"),
            ext: "pcap",
            prune: None,
        };
        let write = |file, buf: &[u8], blocks: Vec<Range<usize>>| Cmd::Write {
            file,
            session: session.clone(),
            buf: buf.to_vec(),
            tally: vec![(SourceId::new(3, 0), 2)],
            blocks,
            index: None,
            ts: None,
        };
        disk.handle(open(1));
        let Ok(Event::Opened { path, .. }) = ev_rx.try_recv() else {
            panic!("not opened");
        };
        disk.handle(write(1, b"HHHHr1r2", vec![0..4]));
        assert!(matches!(
            ev_rx.try_recv(),
            Ok(Event::Written { file: 1, ref tally, .. }) if *tally == vec![(SourceId::new(3, 0), 2)]
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"HHHHr1r2");
        // Removed while open: the records would be on no reader's disk.
        std::fs::remove_file(&path).unwrap();
        disk.handle(write(1, b"r3", Vec::new()));
        assert!(matches!(
            ev_rx.try_recv(),
            Ok(Event::WriteFailed {
                file: 1,
                loss: Loss::WriteError,
                ..
            })
        ));
        assert!(matches!(
            ev_rx.try_recv(),
            Ok(Event::Vanished { file: 1, .. })
        ));
        // A file that was never created.
        disk.handle(write(7, b"HHHH", vec![0..4]));
        assert!(matches!(
            ev_rx.try_recv(),
            Ok(Event::WriteFailed { file: 7, loss: Loss::WriteError, ref tally, .. })
                if *tally == vec![(SourceId::new(3, 0), 2)]
        ));
        // Closed with nothing on disk and nothing to write: not left behind as an empty file.
        disk.handle(open(2));
        let Ok(Event::Opened { path, .. }) = ev_rx.try_recv() else {
            panic!("not opened");
        };
        disk.handle(Cmd::Close {
            file: 2,
            session: "s".into(),
            on_finish: None,
        });
        assert!(matches!(
            ev_rx.try_recv(),
            Ok(Event::Closed { bytes: 0, .. })
        ));
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The catalog hears of each file's life: opened, its packets and times as written
    /// (refreshed periodically, not per buffer), closed, compressed by its on-finish command
    /// (the row moves to the `.gz`), and removed by `max_files`.
    #[test]
    fn the_disk_thread_tells_the_catalog_of_each_file() {
        use super::super::catalog::{self, FileEvent, FileStats};
        let dir = std::env::temp_dir().join(format!("tapwire-io-catalog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("s_20260101T000000Z.pcap"), b"x").unwrap();
        std::fs::write(dir.join("s_20260101T000001Z.pcap.gz"), b"x").unwrap();
        let (_cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let (ev_tx, _ev_rx) = crossbeam_channel::unbounded();
        let (buf_tx, _buf_rx) = crossbeam_channel::unbounded();
        let (tx, rx, _) = catalog::channel();
        let mut disk =
            DiskThread::new(cmd_rx, ev_tx, buf_tx, Arc::new(Shared::default())).with_catalog(tx);
        let session: Arc<str> = "s".into();
        disk.handle(Cmd::Open {
            file: 1,
            session: session.clone(),
            dir: OutDir::of(Some(&dir), Path::new("/nonexistent")),
            stem: "s_20260101T000002Z".into(),
            ext: "pcap",
            prune: Some(Prune {
                session: "s".into(),
                max_files: 1,
            }),
        });
        let path = dir.join("s_20260101T000002Z.pcap");
        let now = |stats, state| FileEvent::Now {
            path: path.clone(),
            session: session.clone(),
            stats,
            state,
        };
        let deleted = |name: &str| FileEvent::Deleted {
            path: dir.join(name),
        };
        let events: Vec<FileEvent> = rx.try_iter().collect();
        assert_eq!(
            events,
            vec![
                deleted("s_20260101T000000Z.pcap"),
                deleted("s_20260101T000001Z.pcap.gz"),
                now(FileStats::default(), FileState::Open)
            ]
        );
        for (buf, n, ts) in [(&b"HHHHr1r2"[..], 2, (50, 70)), (b"r3", 1, (40, 45))] {
            disk.handle(Cmd::Write {
                file: 1,
                session: session.clone(),
                buf: buf.to_vec(),
                tally: vec![(SourceId::new(3, 0), n)],
                blocks: if n == 2 { vec![0..4] } else { Vec::new() },
                index: None,
                ts: Some(ts),
            });
        }
        assert!(rx.is_empty(), "not per buffer");
        let written = FileStats {
            first_ns: Some(40),
            last_ns: Some(70),
            packets: 3,
            bytes: 10,
        };
        disk.periodic();
        assert_eq!(rx.try_recv(), Ok(now(written, FileState::Open)));
        disk.periodic();
        assert!(rx.is_empty(), "unchanged: not told again");
        disk.handle(Cmd::Close {
            file: 1,
            session: "s".into(),
            on_finish: Some("gzip \"$1\"".into()),
        });
        assert_eq!(rx.try_recv(), Ok(now(written, FileState::Closed)));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !disk.children.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            disk.periodic();
        }
        let gz = dir.join("s_20260101T000002Z.pcap.gz");
        let gz_bytes = std::fs::metadata(&gz).unwrap().len();
        assert_eq!(
            rx.try_iter().collect::<Vec<_>>(),
            vec![
                FileEvent::Dropped { path: path.clone() },
                FileEvent::Now {
                    path: gz,
                    session: session.clone(),
                    stats: FileStats {
                        bytes: gz_bytes,
                        ..written
                    },
                    state: FileState::Closed,
                }
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Encodes `n` packets (and, first, `ifaces` new interfaces) into `enc`, logging their
    /// keys as the engine does; returns the buffer, its metadata blocks and its keys.
    fn indexed_buffer(
        enc: &mut tapwire_formats::capture::Encoder,
        ifaces: u32,
        n: u8,
    ) -> (Vec<u8>, Vec<Range<usize>>, Box<KeyLog>) {
        use tapwire_formats::capture::{InterfaceInfo, LinkType, PacketInfo};
        use tapwire_formats::index::FrameKeys;
        let mut blocks = Vec::new();
        if enc.pending_len() > 0 {
            blocks.push(0..enc.pending_len());
        }
        let mut log = Box::new(KeyLog::new(0));
        for _ in 0..ifaces {
            let start = enc.pending_len();
            enc.add_interface(&InterfaceInfo {
                link: LinkType::Ethernet,
                name: "i".into(),
                description: String::new(),
                snaplen: 65535,
            })
            .unwrap();
            blocks.push(start..enc.pending_len());
        }
        for i in 0..n {
            let mut frame = vec![0u8; 60];
            frame[12..14].copy_from_slice(&[8, 0]);
            frame[26..30].copy_from_slice(&[10, 0, 0, i]);
            enc.packet(
                0,
                &PacketInfo {
                    ts_ns: 1_000 + u64::from(i),
                    orig_len: 60,
                    data: &frame,
                    direction: None,
                    comment: None,
                },
            )
            .unwrap();
            let keys = FrameKeys::of(LinkType::Ethernet, &frame);
            log.packet(enc.pending_len(), 1_000 + u64::from(i), 0, &keys, None);
        }
        let buf = std::mem::take(enc.buffer());
        log.finish(buf.len());
        (buf, blocks, log)
    }

    /// The disk thread writes each buffer's index records once the buffer is on disk: they
    /// cover the file from its first byte to its last, name each header and interface block
    /// where it is, and end with the capture's length when it is closed.
    #[test]
    fn the_index_follows_the_capture_written() {
        use tapwire_formats::capture::{Encoder, Format};
        use tapwire_formats::index::{Record, parse};
        let dir = std::env::temp_dir().join(format!("tapwire-io-index-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let (ev_tx, ev_rx) = crossbeam_channel::unbounded();
        let (buf_tx, _buf_rx) = crossbeam_channel::unbounded();
        let mut disk = DiskThread::new(cmd_rx, ev_tx, buf_tx, Arc::new(Shared::new(None, true)));
        drop(cmd_tx);
        let session: Arc<str> = "s".into();
        disk.handle(Cmd::Open {
            file: 1,
            session: session.clone(),
            dir: OutDir::of(Some(&dir), Path::new("/nonexistent")),
            stem: "s_20260101T000000Z".into(),
            ext: "pcapng",
            prune: None,
        });
        let Ok(Event::Opened { path, .. }) = ev_rx.try_recv() else {
            panic!("not opened");
        };
        let mut enc = Encoder::new(Format::Pcapng);
        for (ifaces, n) in [(1, 3), (0, 200), (1, 2)] {
            let (buf, blocks, log) = indexed_buffer(&mut enc, ifaces, n);
            disk.handle(Cmd::Write {
                file: 1,
                session: session.clone(),
                buf,
                tally: vec![(SourceId::new(0, 0), u64::from(n))],
                blocks,
                index: Some(log),
                ts: None,
            });
        }
        disk.handle(Cmd::Close {
            file: 1,
            session: "s".into(),
            on_finish: None,
        });
        let capture = std::fs::read(&path).unwrap();
        let parsed = parse(&std::fs::read(sidecar_path(&path)).unwrap());
        assert_eq!(parsed.stop, None);
        let mut covered = 0;
        let (mut metas, mut packets) = (0, 0);
        for r in &parsed.records {
            match r {
                Record::Meta { offset, bytes } => {
                    let at = *offset as usize;
                    assert_eq!(&capture[at..at + bytes.len()], &bytes[..]);
                    metas += 1;
                }
                Record::Block(b) => {
                    assert_eq!(b.offset, covered, "ranges follow each other");
                    covered = b.end();
                    packets += b.n_packets;
                }
                Record::End { capture_len } => assert_eq!(*capture_len, capture.len() as u64),
            }
        }
        assert_eq!(covered, capture.len() as u64);
        assert_eq!((metas, packets), (3, 205));
        assert!(matches!(parsed.records.last(), Some(Record::End { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Header and interface blocks of a buffer that failed go before the next one: its index
    /// records name them where they landed, and its first range starts there.
    #[test]
    fn index_records_cover_the_blocks_of_a_failed_buffer() {
        use tapwire_formats::capture::{Encoder, Format};
        use tapwire_formats::index::{Record, parse};
        let mut enc = Encoder::new(Format::Pcapng);
        let (first, first_blocks, _) = indexed_buffer(&mut enc, 1, 2);
        let mut x = Extent::default();
        x.lost(&first, &first_blocks);
        let (buf, blocks, log) = indexed_buffer(&mut enc, 1, 4);
        let mut out = index::file::header().to_vec();
        out.extend(index_records(0, x.missing(), &buf, &blocks, log));
        let file = [x.missing(), &buf[..]].concat();
        let parsed = parse(&out);
        let metas: Vec<u64> = parsed
            .records
            .iter()
            .filter_map(|r| match r {
                Record::Meta { offset, bytes } => {
                    let at = *offset as usize;
                    assert_eq!(&file[at..at + bytes.len()], &bytes[..]);
                    Some(*offset)
                }
                _ => None,
            })
            .collect();
        assert_eq!(metas.len(), 3, "section header and the two interfaces");
        let Some(Record::Block(b)) = parsed
            .records
            .iter()
            .find(|r| matches!(r, Record::Block(_)))
        else {
            panic!("no range");
        };
        assert_eq!((b.offset, b.end(), b.n_packets), (0, file.len() as u64, 4));
    }

    #[test]
    fn pruning_removes_indexes_with_their_captures() {
        let dir = std::env::temp_dir().join(format!("tapwire-io-prune-ix-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            "s_20260101T000000Z.pcapng.gz",
            "s_20260101T000000Z.pcapng.twidx",
            "s_20260101T000001Z.pcapng",
            "s_20260101T000001Z.pcapng.gz",
            "s_20260101T000001Z.pcapng.twidx",
            "s_20260101T000002Z.pcapng",
            "s_20260101T000002Z.pcapng.twidx",
            // An index whose capture an on-finish command moved away.
            "s_20251231T000000Z.pcapng.twidx",
        ] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        let h = OutDir::of(Some(&dir), Path::new("/nonexistent"))
            .open(true)
            .unwrap();
        prune_old(
            &h,
            &dir,
            &Prune {
                session: "s".into(),
                max_files: 2,
            },
        );
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        left.sort();
        // A capture and its compressed copy are one file: two files are removed, not three.
        assert_eq!(
            left,
            [
                "s_20260101T000002Z.pcapng",
                "s_20260101T000002Z.pcapng.twidx"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_guard_holds_below_the_minimum_and_resumes_only_past_the_margin() {
        const MIB: u64 = 1 << 20;
        // 32 MiB file system, default guard 5 %: held below 1.6 MiB, resumes at 5.6 MiB.
        let min = 32 * MIB / 20;
        assert_eq!(resume_free_bytes(min), min + GUARD_MARGIN_BYTES);
        assert!(!guard_holds(false, min, min));
        assert!(guard_holds(false, min - 1, min));
        // A full disk (held) whose failed write was cut back: that freed at most one buffer,
        // which does not lift the guard.
        assert!(guard_holds(true, min + MIB + 16 * 1024, min));
        assert!(guard_holds(true, resume_free_bytes(min) - 1, min));
        assert!(!guard_holds(true, resume_free_bytes(min), min));
        // A large guard is its own margin: 256 MiB holds until 512 MiB are free.
        assert_eq!(resume_free_bytes(256 * MIB), 512 * MIB);
        assert!(guard_holds(true, 511 * MIB, 256 * MIB));
        // No guard (0): only a full disk holds, until 4 MiB are free.
        assert!(!guard_holds(false, 0, 0));
        assert!(guard_holds(true, MIB, 0));
        assert!(!guard_holds(true, GUARD_MARGIN_BYTES, 0));
        assert_eq!(resume_free_bytes(u64::MAX), u64::MAX);
    }

    #[test]
    fn losses_are_told_apart_by_errno() {
        assert_eq!(
            Loss::of(&io::Error::from_raw_os_error(libc::ENOSPC)),
            Loss::DiskFull
        );
        assert_eq!(
            Loss::of(&io::Error::from_raw_os_error(libc::EDQUOT)),
            Loss::DiskFull
        );
        assert_eq!(
            Loss::of(&io::Error::from_raw_os_error(libc::EROFS)),
            Loss::WriteError
        );
        assert_eq!(
            Loss::of(&io::Error::other("file not open")),
            Loss::WriteError
        );
    }

    #[test]
    fn only_whole_pages_are_written_uncached() {
        // (offset, length) -> bytes that end on a page boundary
        for (pos, len, want) in [
            (0, 4096, 4096),
            (0, 10_000, 8192),
            (0, 100, 0),
            (100, 3996, 3996),
            (100, 3995, 0),
            (100, 10_000, 8092),
            (8192, 0, 0),
        ] {
            assert_eq!(whole_pages_len(pos, len, 4096), want, "{pos} + {len}");
        }
    }

    #[test]
    fn appends_keep_every_byte_across_page_boundaries() {
        let dir = std::env::temp_dir().join(format!("tapwire-io-append-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("append.bin");
        let mut file = File::create(&path).unwrap();
        let mut dontcache = true;
        let mut want = Vec::new();
        for (i, len) in [1000usize, 5000, 3096, 1, 12_288, 777]
            .into_iter()
            .enumerate()
        {
            let chunk = vec![i as u8 + 1; len];
            write_all(&mut file, want.len() as u64, &chunk, &mut dontcache).unwrap();
            want.extend_from_slice(&chunk);
        }
        drop(file);
        let got = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "file content differs from what was appended");
    }

    #[test]
    fn session_file_names() {
        assert!(is_session_file("web_20261121T054100Z.pcapng", "web"));
        assert!(is_session_file("web_20261121T054100.123Z.pcapng", "web"));
        assert!(is_session_file(
            "web_20261121T054100.123Z_003.pcapng",
            "web"
        ));
        assert!(!is_session_file("web_20261121T054100.12Z.pcapng", "web"));
        assert!(is_session_file("web_20261121T054100Z_3.pcap", "web"));
        assert!(!is_session_file("web_2_20261121T054100Z.pcapng", "web"));
        assert!(is_session_file("web_2_20261121T054100Z.pcapng", "web_2"));
        assert!(!is_session_file("web_20261121T054100Z.txt", "web"));
        assert!(is_session_file("web_20261121T054100Z.pcapng.gz", "web"));
        assert!(!is_session_file("web_20261121T054100Z.pcapng.twidx", "web"));
        assert!(!is_session_file("webx_20261121T054100Z.pcapng", "web"));
        assert!(is_session_file(
            "10.0.0.5_erspan-ii_42_20261121T054100Z.pcapng",
            "10.0.0.5_erspan-ii_42"
        ));
    }

    #[test]
    fn unique_names_and_pruning() {
        let dir = std::env::temp_dir().join(format!("tapwire-io-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let h = OutDir::of(Some(&dir), Path::new("/nonexistent"))
            .open(true)
            .unwrap();
        let (_, a) = create_unique(&h, "s_20260101T000000Z", "pcapng").unwrap();
        let (_, b) = create_unique(&h, "s_20260101T000000Z", "pcapng").unwrap();
        assert_eq!(a, "s_20260101T000000Z.pcapng");
        assert_eq!(b, "s_20260101T000000Z_001.pcapng");
        create_unique(&h, "s_20260101T000001Z", "pcapng").unwrap();
        create_unique(&h, "other_20260101T000000Z", "pcapng").unwrap();
        prune_old(
            &h,
            &dir,
            &Prune {
                session: "s".into(),
                max_files: 2,
            },
        );
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["other_20260101T000000Z.pcapng", "s_20260101T000001Z.pcapng"]
        );
        // Rotated within one second: still written order as text.
        let mut names = vec![
            "s_20260101T000002.001Z.pcapng",
            "s_20260101T000002.001Z_002.pcapng",
            "s_20260101T000002.001Z_010.pcapng",
            "s_20260101T000002.012Z.pcapng",
        ];
        let sorted = names.clone();
        names.sort();
        assert_eq!(names, sorted);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A directory beneath the output root stays beneath it: `..` and symlinks that lead out
    /// are refused when the directory is made and on every later open, also a symlink put in
    /// place of a directory after files were written there; one that stays inside is fine.
    #[test]
    fn files_are_created_beneath_the_root_whatever_symlinks_appear() {
        use std::os::unix::fs::symlink;
        let tmp = std::env::temp_dir().join(format!("tapwire-io-beneath-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let (out, outside) = (tmp.join("out"), tmp.join("outside"));
        std::fs::create_dir_all(&outside).unwrap();
        let at = |rel: &str| OutDir::of(Some(Path::new(rel)), &out);
        // Relative means beneath the root, never the working directory.
        assert_eq!(at("web/in").path(), out.join("web/in"));
        assert_eq!(OutDir::of(Some(&outside), &out).path(), outside);
        assert_eq!(OutDir::of(None, &out).path(), out);
        at("web/in").open(true).unwrap();
        assert!(out.join("web/in").is_dir());
        symlink(&outside, out.join("abs")).unwrap();
        symlink("../outside", out.join("rel")).unwrap();
        symlink("web", out.join("alias")).unwrap();
        for rel in ["abs", "rel", "abs/x", "rel/x/y", "web/../../outside"] {
            let e = at(rel).open(true).unwrap_err();
            assert!(e.to_string().contains("leads out of"), "{rel}: {e}");
        }
        at("alias/in").open(true).unwrap();

        // The disk thread: a file is made in `late`, which is then replaced by a symlink out,
        // with a file of the next name waiting there.
        let (_cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let (ev_tx, ev_rx) = crossbeam_channel::unbounded();
        let (buf_tx, _buf_rx) = crossbeam_channel::unbounded();
        let mut disk = DiskThread::new(cmd_rx, ev_tx, buf_tx, Arc::new(Shared::default()));
        disk.max_open = 1;
        let session: Arc<str> = "s".into();
        let open = |file: FileId, rel: &str| Cmd::Open {
            file,
            session: session.clone(),
            dir: at(rel),
            stem: format!("s_2026010{file}T000000Z"),
            ext: "pcap",
            prune: Some(Prune {
                session: "s".into(),
                max_files: 1,
            }),
        };
        disk.handle(open(1, "late"));
        assert!(matches!(
            ev_rx.try_recv(),
            Ok(Event::Opened { file: 1, .. })
        ));
        // A second file in the root closes the first's handle (max_open 1): it is reopened by
        // name when written again.
        disk.handle(open(2, ""));
        assert!(matches!(
            ev_rx.try_recv(),
            Ok(Event::Opened { file: 2, .. })
        ));
        std::fs::rename(out.join("late"), tmp.join("late-moved")).unwrap();
        symlink(&outside, out.join("late")).unwrap();
        std::fs::write(outside.join("s_20260101T000000Z.pcap"), b"").unwrap();
        std::fs::write(outside.join("s_20260109T000000Z.pcap"), b"keep").unwrap();
        disk.handle(Cmd::Write {
            file: 1,
            session: session.clone(),
            buf: b"HHHH".to_vec(),
            tally: vec![(SourceId::new(0, 0), 1)],
            blocks: vec![0..4],
            index: None,
            ts: None,
        });
        match ev_rx.try_recv() {
            Ok(Event::WriteFailed { file: 1, error, .. }) => {
                assert!(error.contains("leads out of"), "{error}")
            }
            other => panic!("write through the symlink: {other:?}"),
        }
        disk.handle(open(3, "late"));
        match ev_rx.try_recv() {
            Ok(Event::OpenFailed { file: 3, error, .. }) => {
                assert!(error.contains("leads out of"), "{error}")
            }
            other => panic!("open through the symlink: {other:?}"),
        }
        // Nothing was written, created or pruned outside.
        let mut names: Vec<String> = std::fs::read_dir(&outside)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["s_20260101T000000Z.pcap", "s_20260109T000000Z.pcap"]
        );
        assert_eq!(
            std::fs::read(outside.join("s_20260101T000000Z.pcap")).unwrap(),
            b""
        );
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
