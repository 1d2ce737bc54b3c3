//! Where the capture files of a query are: "the files of session S that may hold packets
//! between `from` and `to`". [`LocalDirs`] answers it from the output directories of this
//! collector (or a folder given to `tapwire query --dir`); a fleet catalog (the shared
//! store's table of capture files, each file with its collector) and files held by other
//! collectors plug in behind the same [`Catalog`] trait.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::live::io::is_session_file;

/// One capture file a query may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// The collector that holds it; `None`: this one.
    pub collector: Option<String>,
    /// Its session, when its name says.
    pub session: Option<String>,
    /// Where it is (on the collector that holds it).
    pub path: PathBuf,
    /// Packet times it holds, when the catalog knows them (else its index tells).
    pub first_ns: Option<u64>,
    /// The latest.
    pub last_ns: Option<u64>,
    /// Still being written: read up to its last whole record; never re-indexed by a query.
    pub live: bool,
}

impl FileRef {
    /// Its file name.
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Compressed by an on-finish command.
    pub fn compressed(&self) -> bool {
        self.path.extension().is_some_and(|e| e == "gz")
    }
}

/// Where the files of a query are.
pub trait Catalog {
    /// The files of `session` (every session's with `None`) that may hold packets in
    /// `from_ns..=to_ns`, in the order the query merges equal timestamps by (file order).
    fn files(&self, session: Option<&str>, from_ns: u64, to_ns: u64) -> io::Result<Vec<FileRef>>;
}

/// Capture files in local directories.
#[derive(Debug, Clone, Default)]
pub struct LocalDirs {
    /// Directories searched (not recursively).
    pub dirs: Vec<PathBuf>,
    /// Files known to be open for writing (the collector's current files).
    pub live: HashSet<PathBuf>,
    /// Without a session, take every capture file (a folder given to `--dir`); else only
    /// files named as a session's (`<session>_<time>Z.pcapng`).
    pub any_name: bool,
}

/// A capture file name's extension: `.pcap`, `.pcapng`, either with `.gz`.
fn is_capture_name(name: &str) -> bool {
    let n = name.strip_suffix(".gz").unwrap_or(name);
    n.ends_with(".pcapng") || n.ends_with(".pcap")
}

/// The session a file belongs to, by its name (`web_2_20261206T140200Z.pcapng` -> `web_2`).
pub fn session_of(name: &str) -> Option<&str> {
    name.match_indices('_')
        .map(|(i, _)| &name[..i])
        .find(|s| !s.is_empty() && is_session_file(name, s))
}

impl Catalog for LocalDirs {
    fn files(&self, session: Option<&str>, _from_ns: u64, _to_ns: u64) -> io::Result<Vec<FileRef>> {
        let mut found: Vec<(String, PathBuf)> = Vec::new();
        let mut seen = HashSet::new();
        for dir in &self.dirs {
            let rd = match std::fs::read_dir(dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
            };
            for e in rd.flatten() {
                let Ok(name) = e.file_name().into_string() else {
                    continue;
                };
                let wanted = match session {
                    Some(s) => is_session_file(&name, s),
                    None => {
                        is_capture_name(&name) && (self.any_name || session_of(&name).is_some())
                    }
                };
                let path = dir.join(&name);
                if wanted && e.file_type().is_ok_and(|t| t.is_file()) && seen.insert(path.clone()) {
                    found.push((name, path));
                }
            }
        }
        // A capture beside its compressed copy (an on-finish command at work): the copy may be
        // partial, the capture is whole.
        let names: HashSet<String> = found.iter().map(|(n, _)| n.clone()).collect();
        found.retain(|(n, _)| {
            !n.strip_suffix(".gz")
                .is_some_and(|plain| names.contains(plain))
        });
        // File order: by name, which is by session and time for a collector's files.
        found.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        // A session's last file may still be written (a newer one exists only once it closed).
        let mut last_of: std::collections::HashMap<(PathBuf, String), usize> = Default::default();
        for (i, (name, path)) in found.iter().enumerate() {
            if let Some(s) = session_of(name) {
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                last_of.insert((dir, s.to_string()), i);
            }
        }
        let lasts: HashSet<usize> = last_of.into_values().collect();
        Ok(found
            .into_iter()
            .enumerate()
            .map(|(i, (name, path))| FileRef {
                collector: None,
                session: session_of(&name).map(str::to_string),
                live: self.live.contains(&path) || (lasts.contains(&i) && !name.ends_with(".gz")),
                path,
                first_ns: None,
                last_ns: None,
            })
            .collect())
    }
}

/// Where a path the fleet's catalog names (relative to the collector's output root) is on
/// this machine: `None` for an absolute path, one that climbs (`..`) or one that leads out
/// of `root` through a symbolic link. The catalog is shared by every collector of a fleet:
/// what it says is not trusted with a path outside the output root.
pub fn confined(root: &Path, relative: &str) -> Option<PathBuf> {
    use std::path::Component;
    let rel = Path::new(relative);
    if relative.is_empty()
        || !rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return None;
    }
    let root = root.canonicalize().ok()?;
    let real = root.join(rel).canonicalize().ok()?;
    (real.starts_with(&root) && real.is_file()).then_some(real)
}

/// This collector's files: those in its directories, and those the fleet's catalog names
/// for it that the directories do not hold (confined to the output root).
#[derive(Debug, Clone, Default)]
pub struct WithCatalog {
    pub local: LocalDirs,
    pub extra: Vec<FileRef>,
}

impl Catalog for WithCatalog {
    fn files(&self, session: Option<&str>, from_ns: u64, to_ns: u64) -> io::Result<Vec<FileRef>> {
        let mut files = self.local.files(session, from_ns, to_ns)?;
        let known: HashSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.path.canonicalize().ok())
            .collect();
        for f in &self.extra {
            if session.is_none_or(|s| f.session.as_deref() == Some(s)) && !known.contains(&f.path) {
                files.push(f.clone());
            }
        }
        files.sort_by_key(FileRef::name);
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_paths_stay_inside_the_output_root() {
        let base = std::env::temp_dir().join(format!("tapwire-confined-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("out");
        std::fs::create_dir_all(root.join("web")).unwrap();
        std::fs::write(root.join("web/web_20260101T000000Z.pcapng"), b"x").unwrap();
        std::fs::write(base.join("secret.pcapng"), b"x").unwrap();
        std::os::unix::fs::symlink(base.join("secret.pcapng"), root.join("link.pcapng")).unwrap();
        std::os::unix::fs::symlink(&base, root.join("up")).unwrap();
        assert_eq!(
            confined(&root, "web/web_20260101T000000Z.pcapng"),
            Some(
                root.canonicalize()
                    .unwrap()
                    .join("web/web_20260101T000000Z.pcapng")
            )
        );
        for bad in [
            "../secret.pcapng",
            "web/../../secret.pcapng",
            "/etc/passwd",
            &base.join("secret.pcapng").display().to_string(),
            "link.pcapng",
            "up/secret.pcapng",
            "web",
            "",
            "missing.pcapng",
        ] {
            assert_eq!(confined(&root, bad), None, "{bad}");
        }
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn sessions_files_in_order_and_the_last_one_live() {
        let dir = std::env::temp_dir().join(format!("tapwire-catalog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for n in [
            "web_20260101T000001Z.pcapng",
            "web_20260101T000000Z.pcapng.gz",
            "web_20260101T000002Z.pcapng",
            "web_20260101T000002Z.pcapng.gz",
            "web_20260101T000002Z.pcapng.twidx",
            "web_2_20260101T000000Z.pcap",
            "notes.txt",
            "other.pcapng",
        ] {
            std::fs::write(dir.join(n), b"x").unwrap();
        }
        let local = LocalDirs {
            dirs: vec![dir.clone(), dir.join("missing")],
            ..LocalDirs::default()
        };
        let names = |files: Vec<FileRef>| -> Vec<(String, bool)> {
            files.into_iter().map(|f| (f.name(), f.live)).collect()
        };
        assert_eq!(
            names(local.files(Some("web"), 0, u64::MAX).unwrap()),
            [
                ("web_20260101T000000Z.pcapng.gz".to_string(), false),
                ("web_20260101T000001Z.pcapng".into(), false),
                ("web_20260101T000002Z.pcapng".into(), true),
            ]
        );
        assert_eq!(local.files(None, 0, u64::MAX).unwrap().len(), 4);
        let any = LocalDirs {
            any_name: true,
            ..local
        };
        assert_eq!(any.files(None, 0, u64::MAX).unwrap().len(), 5);
        assert_eq!(session_of("web_2_20260101T000000Z.pcap"), Some("web_2"));
        assert_eq!(session_of("other.pcapng"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
