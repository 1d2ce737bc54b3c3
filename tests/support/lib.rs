//! Shared helpers for tapwire's end-to-end tests: the binaries under test, the public captures,
//! temporary directories, and tshark as the independent oracle.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod collector;
pub mod netns;
pub mod oracle;
#[path = "../senders/ovs.rs"]
pub mod ovs;
pub mod pg;
pub mod probe;
pub mod query;
pub mod senders;
pub mod spoof;
pub mod tmux;
pub mod tshark;
pub mod xdp;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The path of one of the workspace's binaries, built (once per test process) with the same
/// profile as the tests so that a test never runs a stale binary.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        // target/<profile>/deps/<test>-<hash>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_path_buf();
        let profile = profile_dir
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("debug");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace_root())
            .args([
                "build",
                "--quiet",
                "--bins",
                "--profile",
                if profile == "debug" { "dev" } else { profile },
            ])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --bins failed");
        profile_dir
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// `../shared/captures` beside the checkout (or `$TAPWIRE_CAPTURES`); `None`, with a message,
/// when it is absent so interop tests skip instead of failing.
pub fn captures_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("TAPWIRE_CAPTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/captures"));
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP: no public captures at {} (set TAPWIRE_CAPTURES)",
            dir.display()
        );
        None
    }
}

/// Every pcap/pcapng under `dir`, sorted.
pub fn capture_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("pcap" | "pcapng")
            ) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Fails the test with an install hint when a tool the test relies on is missing.
pub fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is required: run the README's test command, which installs it (apt-get install ...)"
    );
}

/// Runs a command and returns its output; panics with stderr when it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A directory removed when dropped, also when the test panics.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("tapwire-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Validates a capture file with captype (first: capinfos alone accepts some garbage) and
/// capinfos; returns the packet count capinfos reports.
pub fn validate_capture(path: &Path) -> u64 {
    let t = run_ok(Command::new("captype").arg(path));
    let kind = t.rsplit(": ").next().unwrap_or("").trim();
    assert!(
        matches!(kind, "pcap" | "pcapng" | "nsecpcap"),
        "captype does not recognise {}: {t}",
        path.display()
    );
    let out = run_ok(
        Command::new("capinfos")
            .args(["-M", "-c", "-T", "-r"])
            .arg(path),
    );
    out.split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("capinfos: {out}"))
}
