//! The disk thread: everything that touches the file system for the live collector, so that a
//! slow or full disk never stalls packet processing. The engine sends whole-record buffers and
//! open/close requests; this thread writes them, keeps each file a valid capture (a failed write
//! is cut back to the last good length), watches free space for the disk guard, notices files
//! whose directory vanished, prunes old files and runs the on-finish command.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

pub type FileId = u64;

/// Free-space state of one output directory, shared with the engine.
#[derive(Debug)]
pub struct DirState {
    pub dir: PathBuf,
    /// Writing is held: free space is below the guard (or the last write hit ENOSPC).
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
}

impl Shared {
    pub fn new(min_free_bytes: Option<u64>) -> Self {
        Shared {
            min_free_bytes,
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
        dir: PathBuf,
        stem: String,
        ext: &'static str,
        prune: Option<Prune>,
    },
    /// Append whole records.
    Write {
        file: FileId,
        buf: Vec<u8>,
        packets: u64,
    },
    Close {
        file: FileId,
        session: String,
        on_finish: Option<String>,
    },
    /// Finish what is queued, wait for on-finish commands until `deadline`, and stop.
    Shutdown { deadline: Instant },
}

#[derive(Debug)]
pub enum Event {
    Opened {
        file: FileId,
        path: PathBuf,
    },
    OpenFailed {
        file: FileId,
        error: String,
    },
    /// `packets` records were not written; the file was cut back to its last good length.
    WriteFailed {
        file: FileId,
        packets: u64,
        error: String,
    },
    /// The file's path no longer exists (its directory was removed).
    Vanished {
        file: FileId,
    },
    Closed {
        file: FileId,
        path: PathBuf,
        bytes: u64,
    },
}

struct OpenFile {
    path: PathBuf,
    /// `None` while closed to stay under the open-files bound; reopened for appending.
    file: Option<File>,
    len: u64,
    failed: bool,
    last_use: u64,
    /// Writes go out with RWF_DONTCACHE until the kernel or the file system refuses it.
    dontcache: bool,
}

pub struct DiskThread {
    cmds: Receiver<Cmd>,
    events: Sender<Event>,
    buffers: Sender<Vec<u8>>,
    shared: Arc<Shared>,
    files: HashMap<FileId, OpenFile>,
    children: Vec<(Child, PathBuf)>,
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
            last_check: Instant::now(),
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
                dir,
                stem,
                ext,
                prune,
            } => {
                if let Some(p) = &prune {
                    prune_old(&dir, p);
                }
                self.make_room();
                match create_unique(&dir, &stem, ext) {
                    Ok((f, path)) => {
                        self.n_open += 1;
                        self.tick += 1;
                        self.files.insert(
                            file,
                            OpenFile {
                                path: path.clone(),
                                file: Some(f),
                                len: 0,
                                failed: false,
                                last_use: self.tick,
                                dontcache: true,
                            },
                        );
                        let _ = self.events.send(Event::Opened { file, path });
                    }
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot open capture file");
                        let _ = self.events.send(Event::OpenFailed {
                            file,
                            error: format!("{}: {e}", dir.display()),
                        });
                    }
                }
            }
            Cmd::Write { file, buf, packets } => {
                let n = buf.len() as u64;
                self.write(file, &buf, packets);
                self.shared.backlog_bytes.fetch_sub(n, Ordering::Relaxed);
                let _ = self.buffers.send(buf);
            }
            Cmd::Close {
                file,
                session,
                on_finish,
            } => {
                if let Some(f) = self.files.remove(&file) {
                    if f.file.is_some() {
                        self.n_open -= 1;
                    }
                    drop(f.file);
                    if let Some(cmd) = on_finish
                        && f.len > 0
                    {
                        self.spawn_on_finish(&cmd, &session, &f.path);
                    }
                    let _ = self.events.send(Event::Closed {
                        file,
                        path: f.path,
                        bytes: f.len,
                    });
                }
            }
            Cmd::Shutdown { .. } => {}
        }
    }

    fn write(&mut self, id: FileId, buf: &[u8], packets: u64) {
        let Some(closed) = self.files.get(&id).map(|f| f.file.is_none()) else {
            return;
        };
        if closed {
            self.reopen(id);
        }
        self.tick += 1;
        let tick = self.tick;
        let Some(of) = self.files.get_mut(&id) else {
            return;
        };
        of.last_use = tick;
        let Some(file) = of.file.as_mut() else {
            let _ = self.events.send(Event::WriteFailed {
                file: id,
                packets,
                error: "file not open".into(),
            });
            return;
        };
        match write_all(file, of.len, buf, &mut of.dontcache) {
            Ok(()) => {
                of.len += buf.len() as u64;
                of.failed = false;
            }
            Err(e) => {
                // Cut back to the last whole record so the file stays a valid capture.
                let cut = file.set_len(of.len);
                if tapwire_netio::raw_os_error(&e) == Some(libc::ENOSPC) {
                    let parent = of.path.parent().unwrap_or(Path::new("."));
                    self.shared.dir(parent).low.store(true, Ordering::Relaxed);
                }
                if !of.failed {
                    tracing::warn!(path = %of.path.display(), error = %e, "write failed");
                }
                of.failed = true;
                let error = match cut {
                    Ok(()) => format!("{}: {e}", of.path.display()),
                    Err(c) => format!("{}: {e} (and cutting back failed: {c})", of.path.display()),
                };
                let _ = self.events.send(Event::WriteFailed {
                    file: id,
                    packets,
                    error,
                });
            }
        }
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
            self.n_open -= 1;
        }
    }

    fn reopen(&mut self, id: FileId) {
        self.make_room();
        let Some(f) = self.files.get_mut(&id) else {
            return;
        };
        match OpenOptions::new().append(true).open(&f.path) {
            Ok(h) => {
                f.file = Some(h);
                self.n_open += 1;
            }
            Err(e) => {
                tracing::warn!(path = %f.path.display(), error = %e, "cannot reopen capture file")
            }
        }
    }

    fn periodic(&mut self) {
        self.last_check = Instant::now();
        for d in self.shared.all_dirs() {
            check_space(&d, self.shared.min_free_bytes);
        }
        for (id, f) in &self.files {
            if !f.path.exists() {
                let _ = self.events.send(Event::Vanished { file: *id });
            }
        }
        self.children.retain_mut(|(c, path)| match c.try_wait() {
            Ok(Some(status)) => {
                if !status.success() {
                    tracing::warn!(file = %path.display(), %status, "on-finish command failed");
                }
                false
            }
            Ok(None) => true,
            Err(_) => false,
        });
    }

    fn spawn_on_finish(&mut self, cmd: &str, session: &str, path: &Path) {
        let child = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .arg("tapwire-on-finish")
            .arg(path)
            .env("TAPWIRE_FILE", path)
            .env("TAPWIRE_SESSION", session)
            .stdin(Stdio::null())
            .spawn();
        match child {
            Ok(c) => self.children.push((c, path.to_path_buf())),
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
            drop(f.file);
            let _ = self.events.send(Event::Closed {
                file: id,
                path: f.path,
                bytes: f.len,
            });
        }
        while !self.children.is_empty() && Instant::now() < deadline {
            self.children
                .retain_mut(|(c, _)| matches!(c.try_wait(), Ok(None)));
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
/// sockets, rings, TAPs, the API's connections and on-finish commands.
fn max_open_files() -> usize {
    const RESERVED: u64 = 256;
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    (soft.saturating_sub(RESERVED) as usize).clamp(16, 16_384)
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
            let low = free < min;
            if d.low.swap(low, Ordering::Relaxed) != low {
                if low {
                    tracing::warn!(dir = %d.dir.display(), free, min, "free disk below the guard: holding writes");
                } else {
                    tracing::info!(dir = %d.dir.display(), free, "free disk back above the guard: writing again");
                }
            }
        }
        Err(e) => tracing::debug!(dir = %d.dir.display(), error = %e, "statvfs failed"),
    }
}

/// Creates `dir/stem.ext`, or `stem_1.ext`, `stem_2.ext`... if taken. Creates `dir` if needed.
/// Writes all of `buf` at the end of `file`. Capture files are written once and read later,
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

fn create_unique(dir: &Path, stem: &str, ext: &str) -> io::Result<(File, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    for n in 0..1000 {
        // Zero-padded so that names still sort in the order written.
        let name = if n == 0 {
            format!("{stem}.{ext}")
        } else {
            format!("{stem}_{n:03}.{ext}")
        };
        let path = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "1000 files with the same name",
    ))
}

/// Whether `name` is one of `session`'s files:
/// `<session>_<YYYYmmddTHHMMSS>[.mmm]Z[_NNN].pcap[ng]`.
pub fn is_session_file(name: &str, session: &str) -> bool {
    let Some(rest) = name.strip_prefix(session).and_then(|r| r.strip_prefix('_')) else {
        return false;
    };
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

/// Deletes the oldest of a session's files so that, with the one about to be opened, at most
/// `max_files` remain. Names sort in time order.
fn prune_old(dir: &Path, p: &Prune) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_session_file(n, &p.session))
        .collect();
    names.sort();
    let keep = p.max_files.saturating_sub(1) as usize;
    if names.len() > keep {
        for n in &names[..names.len() - keep] {
            match std::fs::remove_file(dir.join(n)) {
                Ok(()) => tracing::info!(
                    file = n,
                    session = p.session,
                    "removed: more than max_files"
                ),
                Err(e) => tracing::warn!(file = n, error = %e, "cannot remove old file"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (_, a) = create_unique(&dir, "s_20260101T000000Z", "pcapng").unwrap();
        let (_, b) = create_unique(&dir, "s_20260101T000000Z", "pcapng").unwrap();
        assert_ne!(a, b);
        assert!(
            b.to_string_lossy()
                .ends_with("s_20260101T000000Z_001.pcapng")
        );
        create_unique(&dir, "s_20260101T000001Z", "pcapng").unwrap();
        create_unique(&dir, "other_20260101T000000Z", "pcapng").unwrap();
        prune_old(
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
}
